//! Reloading certificates, keys and CA bundles without a restart.
//!
//! Every second, each port's files are read again and compared with what was last read. When
//! they changed, a whole new rustls configuration is built from them and swapped in (an
//! [`ArcSwap`]): the next connection accepted or dialled uses it, connections already open carry
//! on with the session they have. Files that fail to load (a key that does not match its
//! certificate yet, because only one of the two was replaced so far; garbage; a file missing
//! during a copy) leave the old configuration in use and are logged once, and counted; the next
//! change is tried again. Contents, not modification times, are compared: a copy within the same
//! second, or a rename of an older file into place, is a change too, and the files are small.
//! SIGHUP makes the node read them at once.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use super::{Contents, Files, NodeTls, TlsError};
use crate::metrics::Metrics;

/// How often the files are read.
pub const POLL: Duration = Duration::from_secs(1);

type Build<T> = Box<dyn Fn(&Files, &Contents) -> Result<T, TlsError> + Send + Sync>;

/// One port's TLS configuration, rebuilt when its files change.
pub struct Reloadable<T> {
    /// The port, for logs and metrics.
    pub port: &'static str,
    files: Files,
    build: Build<T>,
    current: ArcSwap<T>,
    /// What the files held when last read (or why they could not be read), so that a change is
    /// tried and reported once.
    seen: Mutex<Result<Contents, String>>,
}

/// What one look at the files found.
#[derive(Debug, PartialEq, Eq)]
pub enum Polled {
    Unchanged,
    Reloaded,
    Failed(String),
}

impl<T> Reloadable<T> {
    /// Read the files and build the first configuration.
    pub fn load(
        port: &'static str,
        files: Files,
        build: impl Fn(&Files, &Contents) -> Result<T, TlsError> + Send + Sync + 'static,
    ) -> Result<Reloadable<T>, TlsError> {
        let contents = read(&files)?;
        let built = build(&files, &contents)?;
        Ok(Reloadable {
            port,
            files,
            build: Box::new(build),
            current: ArcSwap::from_pointee(built),
            seen: Mutex::new(Ok(contents)),
        })
    }

    /// The configuration in use.
    pub fn current(&self) -> Arc<T> {
        self.current.load_full()
    }

    /// The files this port reads.
    pub fn files(&self) -> &Files {
        &self.files
    }

    /// Read the files; if they changed, build and swap in a new configuration.
    pub fn poll(&self) -> Polled {
        let now = read(&self.files).map_err(|e| e.0);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return Polled::Unchanged;
        }
        *seen = now.clone();
        drop(seen);
        let built = now.and_then(|contents| (self.build)(&self.files, &contents).map_err(|e| e.0));
        match built {
            Ok(config) => {
                self.current.store(Arc::new(config));
                Polled::Reloaded
            }
            Err(why) => Polled::Failed(why),
        }
    }
}

/// The files' contents; an error names the file.
fn read(files: &Files) -> Result<Contents, TlsError> {
    let read = |path: &std::path::Path| {
        std::fs::read(path).map_err(|e| TlsError(format!("cannot read {}: {e}", path.display())))
    };
    Ok(Contents {
        cert: read(&files.cert)?,
        key: read(&files.key)?,
        ca: files.ca.as_deref().map(read).transpose()?,
    })
}

/// Look at every port's files every [`POLL`] and at once on SIGHUP, until dropped.
pub async fn watch(tls: NodeTls, metrics: Arc<Metrics>) {
    let mut hangup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        let hup = async {
            match hangup.as_mut() {
                Some(s) => {
                    s.recv().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(POLL) => {}
            _ = hup => tracing::info!("SIGHUP: reading the TLS files again"),
        }
        if let Some(r) = &tls.client {
            report(r.port, r.files(), r.poll(), &metrics);
        }
        if let Some(r) = &tls.peer {
            report(r.port, r.files(), r.poll(), &metrics);
        }
        if let Some(r) = &tls.metrics {
            report(r.port, r.files(), r.poll(), &metrics);
        }
    }
}

fn report(port: &'static str, files: &Files, polled: Polled, metrics: &Metrics) {
    match polled {
        Polled::Unchanged => {}
        Polled::Reloaded => {
            metrics.tls_reloads.with_label_values(&[port, "success"]).inc();
            tracing::info!(
                port,
                cert = %files.cert.display(),
                "TLS files changed: new connections use the new certificate, key and CA"
            );
        }
        Polled::Failed(why) => {
            metrics.tls_reloads.with_label_values(&[port, "failure"]).inc();
            tracing::error!(
                port,
                "TLS files changed but cannot be used; keeping the previous ones: {why}"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
        let path = dir.join(name);
        keel_certs::write_atomic(&path, text.as_bytes(), 0o600).unwrap();
        path
    }

    #[test]
    fn a_change_is_built_once_and_a_bad_one_keeps_the_old() {
        let dir = tempfile::tempdir().unwrap();
        let ca = keel_certs::new_ca("ca", keel_certs::Validity::days(1)).unwrap();
        let issue = || {
            keel_certs::issue(
                &ca,
                &keel_certs::Request {
                    name: "m".into(),
                    sans: vec!["127.0.0.1".into()],
                    client_only: false,
                    validity: keel_certs::Validity::days(1),
                },
            )
            .unwrap()
        };
        let first = issue();
        let files = Files {
            cert: write(dir.path(), "cert.pem", &first.cert_pem),
            key: write(dir.path(), "key.pem", &first.key_pem),
            ca: Some(write(dir.path(), "ca.pem", &ca.cert_pem)),
        };
        let r = Reloadable::load("client", files.clone(), |f, c| {
            super::super::server_config(f, c, super::super::H2)
        })
        .unwrap();
        let before = r.current();
        assert_eq!(r.poll(), Polled::Unchanged);
        // Only the certificate replaced: it does not match the key, the old pair stays.
        let second = issue();
        write(dir.path(), "cert.pem", &second.cert_pem);
        assert!(matches!(r.poll(), Polled::Failed(why) if why.contains("key")));
        assert!(Arc::ptr_eq(&before, &r.current()));
        assert_eq!(r.poll(), Polled::Unchanged, "a failure is reported once");
        write(dir.path(), "key.pem", &second.key_pem);
        assert_eq!(r.poll(), Polled::Reloaded);
        assert!(!Arc::ptr_eq(&before, &r.current()));
        write(dir.path(), "ca.pem", "garbage");
        assert!(matches!(r.poll(), Polled::Failed(why) if why.contains("ca.pem")));
        std::fs::remove_file(&files.key).unwrap();
        assert!(matches!(r.poll(), Polled::Failed(why) if why.contains("cannot read")));
    }
}
