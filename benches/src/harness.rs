//! What every scenario shares: the Redis server, figures, the table.

use std::fmt::Write as _;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};

/// A `redis-server` for the run (or the one `REDIS_URL` names).
pub struct Redis {
    pub url: String,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Redis {
    /// Uses `REDIS_URL` if set, else starts a server on a free loopback port.
    pub fn start() -> Result<Redis, String> {
        if let Ok(url) = std::env::var("REDIS_URL") {
            return Ok(Redis {
                url,
                child: None,
                _dir: None,
            });
        }
        Redis::start_own()
    }

    /// Starts a server of this run's own on a free loopback port (for
    /// scenarios that freeze it), whatever `REDIS_URL` says.
    pub fn start_own() -> Result<Redis, String> {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("no free port: {e}"))?
            .port();
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let child = Command::new("redis-server")
            .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot run redis-server ({e}); install it (apt-get install redis-server) or set REDIS_URL"))?;
        let url = format!("redis://127.0.0.1:{port}");
        let redis = Redis {
            url,
            child: Some(child),
            _dir: Some(dir),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if redis.client().get_connection().is_ok() {
                return Ok(redis);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err("redis-server did not come up".into())
    }

    pub fn client(&self) -> redis::Client {
        redis::Client::open(self.url.as_str()).expect("a valid URL")
    }

    fn signal(&self, sig: &str) {
        if let Some(child) = &self.child {
            let _ = Command::new("kill")
                .args([sig, &child.id().to_string()])
                .status();
        }
    }

    /// SIGSTOP: connections stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// SIGCONT.
    pub fn thaw(&self) {
        self.signal("-CONT");
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

impl Drop for Redis {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
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
