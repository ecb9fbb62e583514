//! The seed guide's placement service, end to end: axum over a real
//! database (SQLite by default, PostgreSQL by `DATABASE_URL`), cached in
//! Redis (`REDIS_URL`) or in memory, with HTTP caching and `/metrics`.
//!
//! `cargo run --release --example placements` runs it; the end-to-end tests
//! start it in process on a free port.

pub mod api;
pub mod db;
pub mod service;

use std::net::SocketAddr;
use std::sync::OnceLock;

use cached_runtime::Cache;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::AppState;
use crate::db::Db;
use crate::service::PlacementService;

/// Where the service listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// What the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// Redis when set, memory otherwise.
    pub redis_url: Option<String>,
    /// Every read from the database: the baseline for the load test.
    pub bypass: bool,
}

impl Config {
    /// From the command line (`--listen ADDR`, `--no-cache`) and the
    /// environment (`LISTEN_ADDR`, `DATABASE_URL`, `REDIS_URL`).
    pub fn from_args_and_env(args: &[String]) -> Result<Config, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut listen = env("LISTEN_ADDR").unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let mut bypass = false;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--listen" => {
                    listen = args.next().ok_or("--listen needs an address")?.clone();
                }
                "--no-cache" => bypass = true,
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; usage: placements [--listen ADDR] [--no-cache]"
                    ));
                }
            }
        }
        let listen = listen
            .parse()
            .map_err(|e| format!("--listen {listen:?}: {e}"))?;
        let database_url = env("DATABASE_URL").unwrap_or_else(default_database_url);
        Ok(Config {
            listen,
            database_url,
            redis_url: env("REDIS_URL"),
            bypass,
        })
    }
}

/// A SQLite file in the temporary directory, created on first run.
pub fn default_database_url() -> String {
    let path = std::env::temp_dir().join("cached-placements.db");
    format!("sqlite://{}?mode=rwc", path.display())
}

/// The process's Prometheus recorder, installed on first use: before any
/// cache is used, since metric handles made earlier record nothing.
pub fn metrics() -> PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE
        .get_or_init(|| match PrometheusBuilder::new().install_recorder() {
            Ok(handle) => handle,
            // Another recorder is installed: render an empty page rather
            // than refuse to start.
            Err(e) => {
                tracing::warn!(error = %e, "no Prometheus recorder; /metrics will be empty");
                PrometheusBuilder::new().build_recorder().handle()
            }
        })
        .clone()
}

/// A service running on a task of its own.
#[derive(Debug)]
pub struct Running {
    /// Where it listens (the real port when asked for port 0).
    pub addr: SocketAddr,
    pub service: PlacementService,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
    upkeep: JoinHandle<()>,
}

impl Running {
    /// `http://{addr}`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Stops accepting, finishes what is in flight, and waits.
    pub async fn stop(mut self) -> std::io::Result<()> {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.upkeep.abort();
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }

    /// Runs until the task ends (it does not, unless it fails).
    pub async fn wait(self) -> std::io::Result<()> {
        let _keep_running = self.stop;
        self.task
            .await
            .unwrap_or_else(|e| Err(std::io::Error::other(e)))
    }
}

/// Opens the database, builds the cache, binds and serves.
pub async fn start(config: &Config) -> Result<Running, Box<dyn std::error::Error + Send + Sync>> {
    let metrics = metrics();
    // The recorder keeps histogram samples until upkeep folds them in;
    // without a scraper they would pile up.
    let upkeep_handle = metrics.clone();
    let upkeep = tokio::spawn(async move {
        let mut every = tokio::time::interval(std::time::Duration::from_secs(5));
        loop {
            every.tick().await;
            upkeep_handle.run_upkeep();
        }
    });
    let db = Db::open(&config.database_url).await?;
    // `--no-cache`: the same service with the cache switched off, the
    // baseline for the load test.
    let mut cache = Cache::builder()
        .namespace("placements")
        .enabled(!config.bypass);
    if let Some(url) = &config.redis_url {
        cache = cache.redis(url.clone());
    }
    let service = PlacementService::new(cache.build()?, db);
    let app = api::router(AppState {
        service: service.clone(),
        metrics,
    });
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = stopped.await;
            })
            .await
    });
    Ok(Running {
        addr,
        service,
        stop: Some(stop),
        task,
        upkeep,
    })
}
