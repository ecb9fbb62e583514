//! A private PKI made fresh for each TLS test, so that no private key is
//! ever committed: a CA, a server certificate for `127.0.0.1` and
//! `localhost`, and a client certificate, all signed by that CA.

use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// Whether a TLS server asks for client certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientAuth {
    /// Any client that trusts the server may connect.
    Optional,
    /// Mutual TLS: only clients with a certificate from the CA.
    Required,
}

/// Certificates and keys, PEM.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The CA's certificate: what clients and the server trust.
    pub ca_pem: String,
    /// The server's certificate and key.
    pub server_cert: String,
    /// The server's private key.
    pub server_key: String,
    /// A client certificate, for mutual TLS.
    pub client_cert: String,
    /// The client's private key.
    pub client_key: String,
}

impl Pki {
    /// A new CA with a server and a client certificate.
    ///
    /// # Panics
    ///
    /// When rcgen cannot make a key or sign (it does not, on a working
    /// machine).
    pub fn generate() -> Pki {
        Pki::generate_named("cached test CA")
    }

    /// [`Pki::generate`], with the CA named `ca_name` (two PKIs with
    /// different names trust nothing of each other).
    ///
    /// # Panics
    ///
    /// As [`Pki::generate`].
    pub fn generate_named(ca_name: &str) -> Pki {
        let mut ca = CertificateParams::new(Vec::<String>::new()).expect("CA params");
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name.push(DnType::CommonName, ca_name);
        ca.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let ca_key = KeyPair::generate().expect("a CA key");
        let ca_cert = ca.self_signed(&ca_key).expect("a self-signed CA");
        let issuer = Issuer::new(ca, ca_key);

        let leaf = |name: &str, purpose: ExtendedKeyUsagePurpose| {
            let mut params = CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
            params
                .subject_alt_names
                .push(SanType::IpAddress([127, 0, 0, 1].into()));
            params.distinguished_name.push(DnType::CommonName, name);
            params.use_authority_key_identifier_extension = true;
            params.key_usages = vec![
                KeyUsagePurpose::DigitalSignature,
                KeyUsagePurpose::KeyEncipherment,
            ];
            params.extended_key_usages = vec![purpose];
            let key = KeyPair::generate().expect("a key");
            let cert = params.signed_by(&key, &issuer).expect("signed by the CA");
            (cert.pem(), key.serialize_pem())
        };
        let (server_cert, server_key) = leaf("redis server", ExtendedKeyUsagePurpose::ServerAuth);
        let (client_cert, client_key) = leaf("cache client", ExtendedKeyUsagePurpose::ClientAuth);
        Pki {
            ca_pem: ca_cert.pem(),
            server_cert,
            server_key,
            client_cert,
            client_key,
        }
    }

    /// Writes every file into `dir`; returns the CA, client certificate
    /// and client key paths (for `REDIS_TLS_*_FILE`).
    ///
    /// # Panics
    ///
    /// When `dir` cannot be written.
    pub fn write(&self, dir: &Path) -> (PathBuf, PathBuf, PathBuf) {
        let file = |name: &str, pem: &str| {
            let path = dir.join(name);
            std::fs::write(&path, pem).expect("writes a PEM file");
            path
        };
        file("server.crt", &self.server_cert);
        file("server.key", &self.server_key);
        (
            file("ca.crt", &self.ca_pem),
            file("client.crt", &self.client_cert),
            file("client.key", &self.client_key),
        )
    }

    /// `redis-server` arguments for a TLS-only cluster node on `port`
    /// (its files written into `dir`): [`Pki::server_args`], the cluster
    /// bus and replication over TLS too, and the client certificate for
    /// the node's own connections to the others (whose servers may require
    /// one: the server certificate is for servers only).
    pub(crate) fn cluster_node_args(
        &self,
        dir: &Path,
        port: u16,
        clients: ClientAuth,
    ) -> Vec<String> {
        let mut args = self.server_args(dir, port, clients);
        let path = |name: &str| dir.join(name).display().to_string();
        args.extend([
            "--tls-cluster".into(),
            "yes".into(),
            "--tls-replication".into(),
            "yes".into(),
            "--tls-client-cert-file".into(),
            path("client.crt"),
            "--tls-client-key-file".into(),
            path("client.key"),
        ]);
        args
    }

    /// `redis-server` arguments for TLS on `port`, its files written into
    /// `dir`.
    pub(crate) fn server_args(&self, dir: &Path, port: u16, clients: ClientAuth) -> Vec<String> {
        self.write(dir);
        let path = |name: &str| dir.join(name).display().to_string();
        vec![
            "--tls-port".into(),
            port.to_string(),
            "--tls-cert-file".into(),
            path("server.crt"),
            "--tls-key-file".into(),
            path("server.key"),
            "--tls-ca-cert-file".into(),
            path("ca.crt"),
            "--tls-auth-clients".into(),
            match clients {
                ClientAuth::Optional => "optional".into(),
                ClientAuth::Required => "yes".into(),
            },
        ]
    }
}
