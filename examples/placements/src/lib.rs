//! The seed guide's placement service, end to end: axum over a real
//! database (SQLite by default, PostgreSQL by `DATABASE_URL`), cached in
//! Redis (`REDIS_URL`, or a Redis Cluster by `REDIS_CLUSTER_URLS`, with
//! TLS and an ACL user from the other `REDIS_*` variables: see
//! [`RedisVars`]) or in memory, with HTTP caching and `/metrics`.
//!
//! `cargo run --release --example placements` runs it; the end-to-end tests
//! start it in process on a free port.

pub mod api;
pub mod db;
pub mod service;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::OnceLock;

use cached_runtime::Cache;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::api::AppState;
use crate::db::Db;
use crate::service::PlacementService;

/// The cache's namespace: the first segment of every key, and what the
/// ACL rule of its Redis user names (`cached_runtime::redis_acl_rule`).
pub const NAMESPACE: &str = "placements";

/// Where the service listens unless told otherwise.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8080";

/// What the service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    /// `sqlite://...` or `postgres://...`.
    pub database_url: String,
    /// Redis when `REDIS_URL` is among them, a Redis Cluster when
    /// `REDIS_CLUSTER_URLS` is, memory otherwise.
    pub redis: RedisVars,
    /// Every read from the database: the baseline for the load test.
    pub bypass: bool,
    /// The near tier in front of Redis (`--near`; also on when
    /// `CACHE_NEAR_MAX_BYTES` is among the [`RedisVars`]).
    pub near: bool,
}

impl Config {
    /// From the command line (`--listen ADDR`, `--no-cache`, `--near`) and the
    /// environment (`LISTEN_ADDR`, `DATABASE_URL`, and the cache's
    /// [`RedisVars`]).
    pub fn from_args_and_env(args: &[String]) -> Result<Config, String> {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let mut listen = env("LISTEN_ADDR").unwrap_or_else(|| DEFAULT_LISTEN.to_owned());
        let mut bypass = false;
        let mut near = false;
        let mut args = args.iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--listen" => {
                    listen = args.next().ok_or("--listen needs an address")?.clone();
                }
                "--no-cache" => bypass = true,
                "--near" => near = true,
                other => {
                    return Err(format!(
                        "unknown argument {other:?}; usage: placements [--listen ADDR] [--no-cache] [--near]"
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
            redis: RedisVars::from_env(),
            bypass,
            near,
        })
    }
}

/// The cache's Redis settings, by the names `CacheBuilder::from_env`
/// reads: `REDIS_URL` (Redis, else memory), `REDIS_CLUSTER_URLS` (a Redis
/// Cluster instead: seed nodes, comma-separated), `REDIS_USERNAME` and
/// `REDIS_PASSWORD` (an ACL user; see `cached_runtime::redis_acl_rule` for
/// the rule it needs, namespace `placements`), `REDIS_TLS_CA_FILE` (a
/// private CA, PEM) and `REDIS_TLS_CERT_FILE` with `REDIS_TLS_KEY_FILE`
/// (mutual TLS), `CACHE_NEAR_MAX_BYTES` and `CACHE_NEAR_MAX_TTL` (the near
/// tier). `Debug` shows which are set, never their values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct RedisVars(BTreeMap<String, String>);

impl std::fmt::Debug for RedisVars {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl RedisVars {
    /// The names read.
    pub const NAMES: [&'static str; 9] = [
        "REDIS_URL",
        "REDIS_CLUSTER_URLS",
        "REDIS_USERNAME",
        "REDIS_PASSWORD",
        "REDIS_TLS_CA_FILE",
        "REDIS_TLS_CERT_FILE",
        "REDIS_TLS_KEY_FILE",
        "CACHE_NEAR_MAX_BYTES",
        "CACHE_NEAR_MAX_TTL",
    ];

    /// Those of [`RedisVars::NAMES`] set (and not empty) in the environment.
    pub fn from_env() -> RedisVars {
        let mut vars = RedisVars::default();
        for name in RedisVars::NAMES {
            if let Ok(value) = std::env::var(name)
                && !value.trim().is_empty()
            {
                vars = vars.with(name, value);
            }
        }
        vars
    }

    /// These settings with `name` set to `value`.
    pub fn with(mut self, name: &str, value: impl Into<String>) -> RedisVars {
        self.0.insert(name.to_owned(), value.into());
        self
    }

    fn get(&self, name: &str) -> Option<String> {
        self.0.get(name).cloned()
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
    let mut builder = Cache::builder()
        .from_vars(|name| config.redis.get(name))
        .namespace(NAMESPACE)
        .enabled(!config.bypass);
    if config.near {
        builder = builder.near_cache(cached_runtime::NearCache::new());
    }
    let cache = builder.build()?;
    let service = PlacementService::new(cache, db);
    let app = api::router(AppState {
        service: service.clone(),
        metrics,
    });
    // Around the whole router, so that they see its answers as sent
    // (axum sets Content-Length inside it): every answer states its
    // cacheability, and no 304 claims an empty representation.
    let app = tower::ServiceBuilder::new()
        .layer(axum::middleware::map_response(
            cached_runtime::http::without_304_length,
        ))
        .layer(axum::middleware::map_response(api::no_store_unless_stated))
        .service(app);
    let listener = tokio::net::TcpListener::bind(config.listen).await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(async move {
        axum::serve(
            listener,
            axum::ServiceExt::<axum::extract::Request>::into_make_service(app),
        )
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
