//! The caches tests run on, built one way: the memory backend, or Redis on a
//! [`RedisServer`] of the test's own, both under the namespace [`NAMESPACE`];
//! and [`on_both_backends!`](crate::on_both_backends), the one way to run a
//! test on both.

#![deny(missing_docs)]

use cached_runtime::{Cache, CacheBuilder};

use crate::{RedisCluster, RedisServer, free_port};

/// The namespace of every cache built here: Redis keys start with `t:`.
pub const NAMESPACE: &str = "t";

/// The ACL user that every cache of [`Backend::redis`] connects as: it may
/// do exactly what [`cached_runtime::redis_acl_rule`] allows for
/// [`NAMESPACE`], so a command the runtime starts to send without adding it
/// to the rule fails every Redis case of the suite.
pub const ACL_USER: &str = "cache";

/// [`ACL_USER`]'s password.
pub const ACL_PASSWORD: &str = "acl-test-password";

/// `redis-server` arguments that create [`ACL_USER`] with the rule for
/// `namespace` (the default user stays unrestricted, for the tests' own
/// commands).
pub fn acl_user_args(namespace: &str) -> Vec<String> {
    let mut args = vec![
        "--user".to_owned(),
        ACL_USER.to_owned(),
        "on".to_owned(),
        format!(">{ACL_PASSWORD}"),
    ];
    args.extend(
        cached_runtime::redis_acl_rule(namespace)
            .split(' ')
            .map(str::to_owned),
    );
    args
}

/// A builder for a memory cache, namespace [`NAMESPACE`].
pub fn memory_builder() -> CacheBuilder {
    Cache::builder().memory().namespace(NAMESPACE)
}

/// A builder for a cache on `server`, namespace [`NAMESPACE`].
pub fn redis_builder(server: &RedisServer) -> CacheBuilder {
    redis_builder_at(server.url())
}

/// A builder for a cache on the Redis at `url` (a server that another
/// process started, say), namespace [`NAMESPACE`].
pub fn redis_builder_at(url: impl Into<String>) -> CacheBuilder {
    Cache::builder().redis(url).namespace(NAMESPACE)
}

/// A Redis server of the test's own, a fault-injecting proxy in front of
/// it, and a builder for a cache through the proxy with `op_timeout` and a
/// circuit breaker that `failures` in a row open, probing again after
/// `backoff` (doubling up to it, as `min_backoff` and `max_backoff` of
/// one value; the default's when `None`).
pub fn behind_a_proxy(
    op_timeout: std::time::Duration,
    failures: u32,
    backoff: Option<std::time::Duration>,
) -> (RedisServer, crate::Proxy, CacheBuilder) {
    let server = RedisServer::start();
    let proxy = crate::Proxy::start(server.port());
    let mut breaker = cached_runtime::CircuitBreaker {
        failures,
        ..cached_runtime::CircuitBreaker::default()
    };
    if let Some(backoff) = backoff {
        (breaker.min_backoff, breaker.max_backoff) = (backoff, backoff);
    }
    let builder = redis_builder_at(proxy.url())
        .op_timeout(op_timeout)
        .circuit_breaker(breaker);
    (server, proxy, builder)
}

/// A builder for a cache on a loopback port nothing listens on (every
/// connection is refused), namespace [`NAMESPACE`].
pub fn unreachable_redis_builder() -> CacheBuilder {
    redis_builder_at(format!("redis://127.0.0.1:{}", free_port()))
}

/// A cache on `server` with the default settings ([`redis_builder`]).
///
/// # Panics
///
/// When the cache does not build.
pub fn redis_cache(server: &RedisServer) -> Cache {
    redis_cache_with(server, |b| b)
}

/// A cache on `server` whose [`redis_builder`] is adjusted by `adjust`
/// (`|b| b.op_timeout(…)`, say).
///
/// # Panics
///
/// When the cache does not build.
pub fn redis_cache_with(
    server: &RedisServer,
    adjust: impl FnOnce(CacheBuilder) -> CacheBuilder,
) -> Cache {
    build(adjust(redis_builder(server)))
}

fn build(builder: CacheBuilder) -> Cache {
    builder.build().expect("the test's cache builds")
}

/// The backend of one run of a test: memory, or Redis on a server that
/// lives as long as this value. Every cache it builds uses the same store
/// (on memory, each cache is a store of its own).
#[derive(Debug)]
pub struct Backend {
    server: Option<RedisServer>,
    /// With the near tier in front of Redis.
    near: bool,
    /// A Redis Cluster instead of one server.
    cluster: Option<RedisCluster>,
}

impl Backend {
    /// The memory backend.
    pub fn memory() -> Backend {
        Backend {
            server: None,
            near: false,
            cluster: None,
        }
    }

    /// Redis, on a server started for this backend and stopped with it;
    /// its caches connect as [`ACL_USER`], with least privilege.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn redis() -> Backend {
        let args = acl_user_args(NAMESPACE);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Backend {
            server: Some(RedisServer::start_with(&args)),
            near: false,
            cluster: None,
        }
    }

    /// A local Redis Cluster (three primaries, three replicas, see
    /// [`RedisCluster`]) started for this backend and stopped with it; its
    /// caches connect as [`ACL_USER`], as on one server.
    ///
    /// # Panics
    ///
    /// As [`RedisCluster::start`].
    pub fn cluster() -> Backend {
        let args = acl_user_args(NAMESPACE);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        Backend {
            server: None,
            near: false,
            cluster: Some(RedisCluster::start_with(&args)),
        }
    }

    /// The cluster, on [`Backend::cluster`].
    pub fn redis_cluster(&self) -> Option<&RedisCluster> {
        self.cluster.as_ref()
    }

    /// The cluster, on [`Backend::cluster`], to change (add a node, kill
    /// one).
    pub fn redis_cluster_mut(&mut self) -> Option<&mut RedisCluster> {
        self.cluster.as_mut()
    }

    /// Redis as [`Backend::redis`], with the near tier in front of it
    /// (every cache built here has an L1 of its own, kept by `CLIENT
    /// TRACKING`): the same tests, the same assertions.
    ///
    /// # Panics
    ///
    /// As [`RedisServer::start`].
    pub fn near() -> Backend {
        Backend {
            near: true,
            ..Backend::redis()
        }
    }

    /// Whether caches built here have the near tier.
    pub fn is_near(&self) -> bool {
        self.near
    }

    /// Panics if the Redis server refused any command of [`ACL_USER`]'s
    /// (its `ACL LOG`): the runtime sent something its ACL rule does not
    /// allow. The cache hides such failures from callers (they are served
    /// from their loaders), so the test itself may have passed.
    ///
    /// # Panics
    ///
    /// As said, naming what was refused.
    pub fn assert_nothing_refused(&self) {
        let cluster = self.cluster.iter().flat_map(|c| c.nodes().iter());
        for server in self.server.iter().chain(cluster).filter(|s| s.answers()) {
            let log: redis::Value = server.cmd(&["ACL", "LOG"]);
            let redis::Value::Array(entries) = &log else {
                panic!("ACL LOG answered {log:?}");
            };
            assert!(
                entries.is_empty(),
                "the server refused commands of the cache's ACL user: redis_acl_rule lacks \
                 something the runtime sends:\n{log:#?}"
            );
        }
    }

    /// The Redis server, or `None` on memory: for checks that only Redis
    /// can make (what is left under a key, say).
    pub fn server(&self) -> Option<&RedisServer> {
        self.server.as_ref()
    }

    /// A builder for a cache on this backend, namespace [`NAMESPACE`].
    pub fn builder(&self) -> CacheBuilder {
        if let Some(cluster) = &self.cluster {
            return Cache::builder()
                .redis_cluster(cluster.urls())
                .namespace(NAMESPACE)
                .redis_username(ACL_USER)
                .redis_password(ACL_PASSWORD);
        }
        match &self.server {
            Some(server) if self.near => redis_builder(server)
                .redis_username(ACL_USER)
                .redis_password(ACL_PASSWORD)
                .near_cache(cached_runtime::NearCache::new()),
            Some(server) => redis_builder(server)
                .redis_username(ACL_USER)
                .redis_password(ACL_PASSWORD),
            None => memory_builder(),
        }
    }

    /// A cache on this backend with the default settings.
    ///
    /// # Panics
    ///
    /// When the cache does not build.
    pub fn cache(&self) -> Cache {
        self.cache_with(|b| b)
    }

    /// A cache on this backend whose [`Backend::builder`] is adjusted by
    /// `adjust` (`|b| b.ttl_jitter(0.0)`, say).
    ///
    /// # Panics
    ///
    /// When the cache does not build.
    pub fn cache_with(&self, adjust: impl FnOnce(CacheBuilder) -> CacheBuilder) -> Cache {
        build(adjust(self.builder()))
    }
}

/// Runs each named `async fn(&Backend)` as three tests, `{name}::on_memory`,
/// `{name}::on_redis` and `{name}::on_near` (Redis with the near tier; the
/// last two each on a `redis-server` of its own, as the least-privileged
/// [`ACL_USER`], failing if the server refused any of its commands), on a
/// multi-threaded runtime with two workers.
///
/// ```no_run
/// use cached_tests::Backend;
///
/// async fn a_value_set_is_read_back(backend: &Backend) {
///     let cache = backend.cache();
///     cache.set("k", &1u32, std::time::Duration::from_secs(60)).await;
///     assert_eq!(cache.get::<u32>("k").await, Some(1));
/// }
///
/// cached_tests::on_both_backends!(a_value_set_is_read_back);
/// # fn main() {}
/// ```
#[macro_export]
macro_rules! on_both_backends {
    ($($name:ident),+ $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_memory() {
                    super::$name(&$crate::Backend::memory()).await;
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_redis() {
                    let backend = $crate::Backend::redis();
                    super::$name(&backend).await;
                    backend.assert_nothing_refused();
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_near() {
                    let backend = $crate::Backend::near();
                    super::$name(&backend).await;
                    backend.assert_nothing_refused();
                }
            }
        )+
    };
}

/// Runs each named `async fn(&Backend)` once more, as the test
/// `on_cluster::{name}`, on a local Redis Cluster of its own
/// ([`Backend::cluster`]), failing if a node refused any command of
/// [`ACL_USER`]'s. For the key cases of a suite that already runs
/// [`on_both_backends!`](crate::on_both_backends): each cluster is six
/// processes and a few seconds to form.
#[macro_export]
macro_rules! on_cluster {
    ($($name:ident),+ $(,)?) => {
        mod on_cluster {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let backend = $crate::Backend::cluster();
                    super::$name(&backend).await;
                    backend.assert_nothing_refused();
                }
            )+
        }
    };
}
