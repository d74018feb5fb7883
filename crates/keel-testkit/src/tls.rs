//! TLS for test clusters ([`crate::Options::tls`]): a development CA and certificates under the
//! cluster's directory, the flags that point every member at them, and client channels that
//! speak TLS to the members.
//!
//! Layout, under `DIR/tls/`: `ca/` (the CA), `trusted.pem` (the CA bundle members and test
//! clients trust: a copy of the CA's certificate at first; a rotation test writes old + new
//! there), `node{id}/` (each member's certificate, naming its IP and `localhost`, used on the
//! client and the peer port), `client/` (a client certificate). Every file can be replaced while
//! the cluster runs: members reload them.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use keel_storage::NodeId;
use tonic::transport::{Certificate, Channel, ClientTlsConfig, Endpoint, Identity};

/// How a test cluster uses TLS.
#[derive(Debug, Clone, Default)]
pub struct TlsOptions {
    /// Require client certificates on the client port (`--client-cert-auth`).
    pub client_cert_auth: bool,
    /// Serve the metrics port over HTTPS too, with the member's certificate.
    pub metrics: bool,
}

/// A test cluster's TLS files.
#[derive(Debug, Clone)]
pub struct TestTls {
    pub dir: PathBuf,
    pub options: TlsOptions,
}

impl TestTls {
    /// A new CA and client certificate under `cluster_dir/tls`.
    pub fn new(cluster_dir: &Path, options: TlsOptions) -> anyhow::Result<TestTls> {
        let dir = cluster_dir.join("tls");
        let ca = keel_certs::new_ca("keel test CA", keel_certs::Validity::days(2))?;
        keel_certs::write_pair(&dir.join("ca"), &ca, keel_certs::CA_CERT, keel_certs::CA_KEY)?;
        keel_certs::write_atomic(&dir.join("trusted.pem"), ca.cert_pem.as_bytes(), 0o644)?;
        let tls = TestTls { dir, options };
        tls.issue_client(&ca)?;
        Ok(tls)
    }

    /// The CA certificates were issued with.
    pub fn ca(&self) -> anyhow::Result<keel_certs::Pair> {
        Ok(keel_certs::read_ca(&self.dir.join("ca"))?)
    }

    /// The bundle members and test clients trust.
    pub fn trusted(&self) -> PathBuf {
        self.dir.join("trusted.pem")
    }

    /// Member `id`'s certificate directory.
    pub fn node_dir(&self, id: NodeId) -> PathBuf {
        self.dir.join(format!("node{id}"))
    }

    /// The client certificate's directory.
    pub fn client_dir(&self) -> PathBuf {
        self.dir.join("client")
    }

    /// (Re)issue member `id`'s certificate with `ca`, naming `ip` and `localhost`.
    pub fn issue_node(&self, ca: &keel_certs::Pair, id: NodeId, ip: IpAddr) -> anyhow::Result<()> {
        let pair = keel_certs::issue(
            ca,
            &keel_certs::Request {
                name: format!("member-{id}"),
                sans: vec![ip.to_string(), "localhost".into()],
                client_only: false,
                validity: keel_certs::Validity::days(2),
            },
        )?;
        // The key first: a member that reads the pair between the two renames sees a
        // mismatch, keeps its old pair and tries again a second later.
        keel_certs::write_pair(&self.node_dir(id), &pair, keel_certs::CERT, keel_certs::KEY)?;
        Ok(())
    }

    /// (Re)issue the client certificate with `ca`.
    pub fn issue_client(&self, ca: &keel_certs::Pair) -> anyhow::Result<()> {
        let pair = keel_certs::issue(
            ca,
            &keel_certs::Request {
                name: "test-client".into(),
                sans: vec![],
                client_only: true,
                validity: keel_certs::Validity::days(2),
            },
        )?;
        keel_certs::write_pair(&self.client_dir(), &pair, keel_certs::CERT, keel_certs::KEY)?;
        Ok(())
    }

    /// Member `id`'s TLS flags.
    pub fn flags(&self, id: NodeId) -> Vec<String> {
        let node = self.node_dir(id);
        let cert = node.join(keel_certs::CERT).display().to_string();
        let key = node.join(keel_certs::KEY).display().to_string();
        let trusted = self.trusted().display().to_string();
        let mut flags = vec![
            "--cert-file".into(),
            cert.clone(),
            "--key-file".into(),
            key.clone(),
            "--peer-cert-file".into(),
            cert.clone(),
            "--peer-key-file".into(),
            key.clone(),
            "--peer-trusted-ca-file".into(),
            trusted.clone(),
        ];
        if self.options.metrics {
            flags.extend(["--metrics-cert-file".into(), cert, "--metrics-key-file".into(), key]);
        }
        if self.options.client_cert_auth {
            flags.extend(["--trusted-ca-file".into(), trusted, "--client-cert-auth".into()]);
        }
        flags
    }

    /// keel-client's TLS settings: the trusted bundle and the client certificate.
    pub fn client_config(&self) -> anyhow::Result<keel_client::TlsConfig> {
        let dir = self.client_dir();
        Ok(keel_client::TlsConfig::from_files(
            &self.trusted(),
            Some(&dir.join(keel_certs::CERT)),
            Some(&dir.join(keel_certs::KEY)),
        )?)
    }

    /// A lazily connecting TLS channel to `addr`, trusting the bundle as it is now.
    pub fn channel(&self, addr: std::net::SocketAddr) -> Channel {
        let mut tls = ClientTlsConfig::new().domain_name(addr.ip().to_string());
        if let Ok(ca) = std::fs::read(self.trusted()) {
            tls = tls.ca_certificate(Certificate::from_pem(ca));
        }
        let dir = self.client_dir();
        if let (Ok(cert), Ok(key)) = (
            std::fs::read(dir.join(keel_certs::CERT)),
            std::fs::read(dir.join(keel_certs::KEY)),
        ) {
            tls = tls.identity(Identity::from_pem(cert, key));
        }
        Endpoint::from_shared(format!("https://{addr}"))
            .expect("valid uri")
            .tls_config(tls)
            .expect("valid TLS settings")
            .connect_timeout(Duration::from_secs(1))
            .connect_lazy()
    }
}
