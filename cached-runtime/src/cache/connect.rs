//! The builder's Redis settings made into a client: the URL checked part by
//! part (so that an error says which part is wrong), the credentials that
//! override it, and TLS (a private CA, a client certificate).

use std::path::PathBuf;

use redis::IntoConnectionInfo;

use crate::error::BuildError;
use crate::redact::{Secret, mask_url};

/// Where a setting came from, for its error message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A builder method (its name).
    Builder(&'static str),
    /// An environment variable (its name).
    Env(&'static str),
}

impl Origin {
    fn name(self) -> &'static str {
        match self {
            Origin::Builder(name) | Origin::Env(name) => name,
        }
    }
}

/// PEM text for TLS: given to the builder, or a file an environment
/// variable names (read when the cache is built). `Debug` never shows the
/// text (a private key is a secret).
#[derive(Clone)]
pub(crate) enum Pem {
    Given(Vec<u8>, &'static str),
    File(PathBuf, &'static str),
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Pem::Given(pem, from) => write!(f, "<{} bytes from {from}>", pem.len()),
            Pem::File(path, var) => write!(f, "<{var}={}>", path.display()),
        }
    }
}

impl Pem {
    fn origin(&self) -> String {
        match self {
            Pem::Given(_, from) => (*from).to_owned(),
            Pem::File(path, var) => format!("{var} (file {})", path.display()),
        }
    }

    /// The PEM text, read from its file if it names one.
    #[cfg_attr(not(feature = "tls"), allow(dead_code))]
    fn load(&self) -> Result<Vec<u8>, BuildError> {
        let pem = match self {
            Pem::Given(pem, _) => pem.clone(),
            Pem::File(path, var) if path.as_os_str().is_empty() => {
                return Err(BuildError::InvalidTls {
                    origin: (*var).to_owned(),
                    reason: "not set: REDIS_TLS_CERT_FILE and REDIS_TLS_KEY_FILE go together"
                        .into(),
                });
            }
            Pem::File(path, _) => std::fs::read(path).map_err(|e| BuildError::InvalidTls {
                origin: self.origin(),
                reason: format!("cannot read the file: {e}"),
            })?,
        };
        if !pem.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(BuildError::InvalidTls {
                origin: self.origin(),
                reason: "not PEM: expected text with a `-----BEGIN ...-----` block".into(),
            });
        }
        Ok(pem)
    }
}

/// Everything the builder knows about the Redis it is to use. `Debug` shows
/// the URL with its password masked, and no secret.
#[derive(Clone, Default)]
pub(crate) struct RedisSettings {
    /// `None` (and no `cluster`): the memory backend.
    pub(crate) url: Option<(String, Origin)>,
    /// A Redis Cluster's seed nodes, instead of `url`.
    pub(crate) cluster: Option<(Vec<String>, Origin)>,
    pub(crate) username: Option<String>,
    pub(crate) password: Option<(Secret, Origin)>,
    pub(crate) tls_ca: Option<Pem>,
    /// The client's certificate (with its chain), and its private key.
    pub(crate) tls_client: Option<(Pem, Pem)>,
}

impl std::fmt::Debug for RedisSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisSettings")
            .field("url", &self.url.as_ref().map(|(url, _)| mask_url(url)))
            .field(
                "cluster",
                &self
                    .cluster
                    .as_ref()
                    .map(|(urls, _)| urls.iter().map(|u| mask_url(u)).collect::<Vec<_>>()),
            )
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|(p, _)| p))
            .field("tls_ca", &self.tls_ca)
            .field("tls_client", &self.tls_client)
            .finish()
    }
}

/// A client for the same server, credentials and TLS as `client`, speaking
/// RESP3: the near tier's tracking connection receives its invalidations as
/// RESP3 pushes.
pub(crate) fn resp3(client: &redis::Client) -> redis::RedisResult<redis::Client> {
    let info = client.get_connection_info().clone();
    let settings = info
        .redis_settings()
        .clone()
        .set_protocol(redis::ProtocolVersion::RESP3);
    redis::Client::open(info.set_redis_settings(settings))
}

const EXPECTED: &str = "expected redis://[user:password@]host[:port][/db], \
                        rediss://... (TLS), or redis+unix:///path/to/socket";

impl RedisSettings {
    /// The connection details of `url` with the settings' credentials,
    /// checked part by part.
    fn connection_info(
        &self,
        url: &str,
        origin: Origin,
    ) -> Result<redis::ConnectionInfo, BuildError> {
        let invalid = |reason: String| BuildError::InvalidUrl {
            origin: origin.name(),
            url: mask_url(url),
            reason,
        };
        check_url(url).map_err(invalid)?;
        let info = url
            .into_connection_info()
            .map_err(|e| invalid(format!("{e}; {EXPECTED}")))?;
        // No `CLIENT SETINFO` on connecting: the ACL rule (`redis_acl_rule`)
        // then names every command the cache sends, on every server version.
        let mut redis = info.redis_settings().clone().set_skip_set_lib_name();
        if let Some(user) = &self.username {
            redis = redis.set_username(user);
        }
        if let Some((password, _)) = &self.password {
            redis = redis.set_password(&password.0);
        }
        Ok(info.set_redis_settings(redis))
    }

    /// A cluster client for the seed nodes `urls` (any of the cluster's
    /// nodes; one is enough, more survive one being down when the cache
    /// starts), with the settings' credentials and TLS; no connection is
    /// made.
    pub(crate) fn cluster_client(
        &self,
        urls: &[String],
        origin: Origin,
    ) -> Result<redis::cluster::ClusterClient, BuildError> {
        let Some(first) = urls.first() else {
            return Err(BuildError::InvalidUrl {
                origin: origin.name(),
                url: String::new(),
                reason: "no seed node: give the redis:// URL of one or more of the cluster's nodes"
                    .into(),
            });
        };
        let mut infos = Vec::with_capacity(urls.len());
        for url in urls {
            let info = self.connection_info(url, origin)?;
            if matches!(info.addr(), redis::ConnectionAddr::Unix(_)) {
                return Err(BuildError::InvalidUrl {
                    origin: origin.name(),
                    url: mask_url(url),
                    reason: "a cluster's nodes are reached over TCP: redis:// or rediss://".into(),
                });
            }
            infos.push(info);
        }
        let builder = redis::cluster::ClusterClientBuilder::new(infos);
        let builder = self.cluster_tls(builder)?;
        builder.build().map_err(|e| BuildError::InvalidUrl {
            origin: origin.name(),
            url: mask_url(first),
            reason: e.to_string(),
        })
    }

    #[cfg(feature = "tls")]
    fn cluster_tls(
        &self,
        builder: redis::cluster::ClusterClientBuilder,
    ) -> Result<redis::cluster::ClusterClientBuilder, BuildError> {
        if self.tls_ca.is_none() && self.tls_client.is_none() {
            return Ok(builder);
        }
        Ok(builder.certs(self.tls_certificates()?))
    }

    /// The CA and client certificate given, read from their PEM, for
    /// redis-rs (one server or every node of a cluster).
    #[cfg(feature = "tls")]
    fn tls_certificates(&self) -> Result<redis::TlsCertificates, BuildError> {
        // rustls needs a crypto provider; one the application installed
        // first stays.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let root_cert = self.tls_ca.as_ref().map(Pem::load).transpose()?;
        let client_tls = match &self.tls_client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: cert.load()?,
                client_key: key.load()?,
            }),
            None => None,
        };
        Ok(redis::TlsCertificates {
            client_tls,
            root_cert,
        })
    }

    #[cfg(not(feature = "tls"))]
    fn cluster_tls(
        &self,
        builder: redis::cluster::ClusterClientBuilder,
    ) -> Result<redis::cluster::ClusterClientBuilder, BuildError> {
        match self
            .tls_ca
            .as_ref()
            .or(self.tls_client.as_ref().map(|(c, _)| c))
        {
            None => Ok(builder),
            Some(pem) => Err(BuildError::InvalidTls {
                origin: pem.origin(),
                reason: "TLS needs the `tls` feature of cached-runtime".into(),
            }),
        }
    }

    /// A client for these settings; no connection is made.
    pub(crate) fn client(&self, url: &str, origin: Origin) -> Result<redis::Client, BuildError> {
        let invalid = |reason: String| BuildError::InvalidUrl {
            origin: origin.name(),
            url: mask_url(url),
            reason,
        };
        let info = self.connection_info(url, origin)?;
        let tls = matches!(info.addr(), redis::ConnectionAddr::TcpTls { .. });
        if self.tls_ca.is_none() && self.tls_client.is_none() {
            return redis::Client::open(info).map_err(|e| invalid(e.to_string()));
        }
        let origin_of_tls = self
            .tls_ca
            .as_ref()
            .or(self.tls_client.as_ref().map(|(cert, _)| cert))
            .map(Pem::origin)
            .unwrap_or_default();
        if !tls {
            return Err(BuildError::InvalidTls {
                origin: origin_of_tls,
                reason: format!(
                    "TLS certificates are set, but the URL (`{}`, from {}) is not rediss://",
                    mask_url(url),
                    origin.name()
                ),
            });
        }
        self.tls_client_for(info, origin_of_tls)
    }

    #[cfg(feature = "tls")]
    fn tls_client_for(
        &self,
        info: redis::ConnectionInfo,
        origin: String,
    ) -> Result<redis::Client, BuildError> {
        redis::Client::build_with_tls(info, self.tls_certificates()?)
            // rustls's messages name the part that failed; none holds the key.
            .map_err(|e| BuildError::InvalidTls {
                origin,
                reason: e.to_string(),
            })
    }

    #[cfg(not(feature = "tls"))]
    fn tls_client_for(
        &self,
        _info: redis::ConnectionInfo,
        origin: String,
    ) -> Result<redis::Client, BuildError> {
        Err(BuildError::InvalidTls {
            origin,
            reason: "TLS needs the `tls` feature of cached-runtime".into(),
        })
    }
}

/// Checks the parts of a Redis URL that redis-rs reports only as "did not
/// parse", and says which part is wrong.
fn check_url(url: &str) -> Result<(), String> {
    if url.trim().is_empty() {
        return Err(format!("it is empty; {EXPECTED}"));
    }
    let parsed = url::Url::parse(url).map_err(|e| format!("not a URL ({e}); {EXPECTED}"))?;
    match parsed.scheme() {
        "redis" | "valkey" => {}
        "rediss" | "valkeys" => {
            if !cfg!(feature = "tls") {
                return Err("rediss:// (TLS) needs the `tls` feature of cached-runtime".into());
            }
        }
        "redis+unix" | "unix" | "valkey+unix" => return Ok(()),
        other => {
            return Err(format!(
                "the scheme `{other}://` is not a Redis scheme; {EXPECTED}"
            ));
        }
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(format!("no host; {EXPECTED}"));
    }
    let db = parsed.path().trim_start_matches('/');
    if !db.is_empty() && db.parse::<u16>().is_err() {
        return Err(format!(
            "the path names database `{db}`, which is not a number (0 to 15 on a default server)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(url: &str) -> String {
        RedisSettings::default()
            .client(url, Origin::Env("REDIS_URL"))
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn each_mistake_is_named_with_the_password_masked() {
        let cases = [
            ("", "it is empty"),
            ("   ", "it is empty"),
            (
                "localhost:6379",
                "the scheme `localhost://` is not a Redis scheme",
            ),
            ("127.0.0.1:6379", "not a URL (relative URL without a base)"),
            ("http://u:hunter2@host:6379", "the scheme `http://`"),
            (
                "redis://u:hunter2@host:63a9",
                "not a URL (invalid port number)",
            ),
            ("redis://u:hunter2@:6379", "not a URL (empty host)"),
            (
                "redis://u:hunter2@host:6379/cache",
                "database `cache`, which is not a number",
            ),
        ];
        for (url, says) in cases {
            let e = error(url);
            assert!(e.starts_with("invalid Redis URL in REDIS_URL (`"), "{e}");
            assert!(e.contains(says), "{url}: {e}");
            assert!(!e.contains("hunter2"), "{e}");
        }
        assert!(error("redis://u:hunter2@host:63a9").contains("`redis://u:***@host:63a9`"));
    }

    #[test]
    fn good_urls_build() {
        for url in [
            "redis://127.0.0.1:6379",
            "redis://127.0.0.1",
            "redis://:pw@127.0.0.1:6379/3",
            "redis://user:pw@localhost/",
            "redis+unix:///run/redis.sock",
        ] {
            RedisSettings::default()
                .client(url, Origin::Builder("CacheBuilder::redis"))
                .unwrap_or_else(|e| panic!("{url}: {e}"));
        }
    }

    #[test]
    fn credentials_given_apart_override_the_url() {
        let settings = RedisSettings {
            username: Some("app".into()),
            password: Some((Secret("s3cret".into()), Origin::Env("REDIS_PASSWORD"))),
            ..RedisSettings::default()
        };
        let client = settings
            .client("redis://old:pw@127.0.0.1:6379", Origin::Env("REDIS_URL"))
            .expect("builds");
        let redis = client.get_connection_info().redis_settings();
        assert_eq!(redis.username(), Some("app"));
        assert_eq!(redis.password(), Some("s3cret"));
    }

    #[test]
    fn tls_settings_need_a_rediss_url() {
        let settings = RedisSettings {
            tls_ca: Some(Pem::Given(
                b"-----BEGIN CERTIFICATE-----".to_vec(),
                "CacheBuilder::redis_tls_ca",
            )),
            ..RedisSettings::default()
        };
        let e = settings
            .client("redis://:hunter2@127.0.0.1:6379", Origin::Env("REDIS_URL"))
            .expect_err("refused")
            .to_string();
        assert!(e.contains("CacheBuilder::redis_tls_ca"), "{e}");
        assert!(e.contains("is not rediss://"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn a_pem_file_that_cannot_be_read_or_is_not_pem_is_named() {
        let missing = Pem::File("/nonexistent/ca.pem".into(), "REDIS_TLS_CA_FILE");
        let e = missing.load().expect_err("no file").to_string();
        assert!(
            e.starts_with("invalid Redis TLS setting in REDIS_TLS_CA_FILE (file /nonexistent/ca.pem): cannot read the file"),
            "{e}"
        );
        let garbage = Pem::Given(b"hunter2".to_vec(), "CacheBuilder::redis_tls_client");
        let e = garbage.load().expect_err("not PEM").to_string();
        assert!(e.contains("not PEM"), "{e}");
        assert!(!e.contains("hunter2"), "{e}");
        assert_eq!(
            format!("{garbage:?}"),
            "<7 bytes from CacheBuilder::redis_tls_client>"
        );
    }
}
