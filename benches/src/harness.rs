//! What every scenario shares: the Redis server, figures, the table.

use std::fmt::Write as _;
use std::time::Duration;

use cached_tests::RedisServer;

use serde_json::{Map, Value};

/// A `redis-server` for the run (or the one `REDIS_URL` names).
pub struct Redis {
    pub url: String,
    /// The server this run started (the tests' own support), if any.
    own: Option<RedisServer>,
}

impl Redis {
    /// Uses `REDIS_URL` if set, else starts a server on a free loopback port.
    ///
    /// # Panics
    ///
    /// When `redis-server` is not installed (the message says how to install
    /// it) or does not come up.
    pub fn start() -> Redis {
        match std::env::var("REDIS_URL") {
            Ok(url) => Redis { url, own: None },
            Err(_) => Redis::start_own(),
        }
    }

    /// Starts a server of this run's own on a free loopback port (for
    /// scenarios that freeze it), whatever `REDIS_URL` says.
    pub fn start_own() -> Redis {
        let own = RedisServer::start();
        Redis {
            url: own.url(),
            own: Some(own),
        }
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url.as_str()).expect("a valid URL")
    }

    /// SIGSTOP (a server of this run's own): connections stay open, nothing
    /// answers.
    pub fn freeze(&mut self) {
        if let Some(own) = &mut self.own {
            own.freeze();
        }
    }

    /// SIGCONT.
    pub fn thaw(&mut self) {
        if let Some(own) = &mut self.own {
            own.thaw();
        }
    }

    /// SIGKILL (a server of this run's own), waiting for it to exit: its
    /// connections are closed and new ones refused.
    pub fn kill(&mut self) {
        if let Some(own) = &mut self.own {
            own.kill();
        }
    }

    /// Starts a killed server again on its port, empty; returns once it
    /// answers PING.
    pub fn restart(&mut self) {
        if let Some(own) = &mut self.own {
            own.restart();
        }
    }

    /// Runs one command (for setup: FLUSHALL, CONFIG SET, SLOWLOG ...).
    pub fn cmd<T: redis::FromRedisValue>(&self, args: &[&str]) -> T {
        let mut conn = self.client().get_connection().expect("connects");
        let mut cmd = redis::cmd(args[0]);
        for a in &args[1..] {
            cmd.arg(*a);
        }
        cmd.query(&mut conn)
            .unwrap_or_else(|e| panic!("{args:?}: {e}"))
    }
}

/// One measurement: a scenario, a system, and its figures.
pub struct Row {
    pub scenario: &'static str,
    pub system: String,
    pub figures: Vec<(&'static str, Value)>,
}

impl Row {
    pub fn new(scenario: &'static str, system: impl Into<String>) -> Row {
        Row {
            scenario,
            system: system.into(),
            figures: Vec::new(),
        }
    }

    pub fn with(mut self, name: &'static str, value: impl Into<Value>) -> Row {
        self.figures.push((name, value.into()));
        self
    }

    /// One JSON object per measurement, on stdout.
    pub fn json(&self) -> String {
        let mut map = Map::new();
        map.insert("scenario".into(), self.scenario.into());
        map.insert("system".into(), self.system.clone().into());
        for (k, v) in &self.figures {
            map.insert((*k).into(), v.clone());
        }
        Value::Object(map).to_string()
    }
}

/// A readable table of rows, for stderr.
pub fn table(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut scenario = "";
    for row in rows {
        if row.scenario != scenario {
            scenario = row.scenario;
            let _ = writeln!(out, "\n{scenario}");
        }
        let figures = row
            .figures
            .iter()
            .map(|(k, v)| match v.as_f64() {
                Some(f) if v.is_f64() => format!("{k}={}", round(f)),
                _ => format!("{k}={v}"),
            })
            .collect::<Vec<_>>()
            .join("  ");
        let _ = writeln!(out, "  {:<16} {figures}", row.system);
    }
    out
}

fn round(f: f64) -> String {
    if f.abs() >= 100.0 {
        format!("{f:.0}")
    } else if f.abs() >= 1.0 {
        format!("{f:.2}")
    } else {
        format!("{f:.3}")
    }
}

/// The median of some samples.
pub fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    if xs.is_empty() {
        f64::NAN
    } else {
        xs[xs.len() / 2]
    }
}

/// Latency percentiles, in ms.
pub struct Percentiles {
    pub p50: f64,
    pub p99: f64,
    pub max: f64,
}

pub fn percentiles(latencies: &[Duration]) -> Percentiles {
    let mut ms: Vec<f64> = latencies.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    let at = |q: f64| {
        if ms.is_empty() {
            return f64::NAN;
        }
        let i = ((ms.len() as f64 * q).ceil() as usize).clamp(1, ms.len()) - 1;
        ms[i]
    };
    Percentiles {
        p50: at(0.50),
        p99: at(0.99),
        max: ms.last().copied().unwrap_or(f64::NAN),
    }
}
