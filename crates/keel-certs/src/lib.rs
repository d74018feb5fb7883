//! Development certificates for keel, made with rcgen: a CA, and member or client certificates
//! signed by it.
//!
//! Why a crate of its own: `keelctl cert` (scripts and people), `scripts/cluster.sh up --tls` (through
//! keelctl) and the TLS tests (through keel-testkit) all need the same certificates, and neither
//! should depend on openssl being installed. These are for development and tests: keys are
//! ECDSA P-256 in PKCS#8 PEM, written without a passphrase. Production clusters bring their own
//! PKI; keel reads any PEM certificates and keys rustls accepts.
//!
//! Layout of a directory (what [`write_pair`] writes and keel's flags point at):
//! - a CA: `ca.pem` (certificate) and `ca-key.pem` (its key);
//! - a certificate: `cert.pem` and `key.pem`.
//!
//! A member's certificate carries both TLS usages (server and client authentication), because a
//! member presents the same certificate when it serves its peer port and when it calls its
//! peers (as etcd's peer certificates do). A client certificate carries client authentication
//! only.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::{Duration, OffsetDateTime};

/// Why a certificate could not be made or written.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    #[error("{0}")]
    Rcgen(#[from] rcgen::Error),
    #[error("{}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0}")]
    Invalid(String),
}

/// A certificate and its private key, both PEM.
#[derive(Debug, Clone)]
pub struct Pair {
    pub cert_pem: String,
    pub key_pem: String,
}

/// When a certificate is valid.
#[derive(Debug, Clone, Copy)]
pub struct Validity {
    pub not_before: OffsetDateTime,
    pub not_after: OffsetDateTime,
}

impl Validity {
    /// From an hour ago (clocks of members differ a little) for `days` days.
    pub fn days(days: i64) -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::hours(1),
            not_after: now + Duration::days(days),
        }
    }

    /// Valid two days ago until yesterday: an expired certificate, for tests.
    pub fn expired() -> Validity {
        let now = OffsetDateTime::now_utc();
        Validity {
            not_before: now - Duration::days(2),
            not_after: now - Duration::days(1),
        }
    }
}

/// What a new certificate is for.
#[derive(Debug, Clone)]
pub struct Request {
    /// The subject's common name (a client certificate's user name, once keel has users).
    pub name: String,
    /// Subject alternative names: IP addresses, or DNS names. A member needs one naming the
    /// address others reach it by (its peer and client addresses' hosts).
    pub sans: Vec<String>,
    /// A client certificate (client authentication only) rather than a member's (both).
    pub client_only: bool,
    pub validity: Validity,
}

/// A new self-signed CA named `name`.
pub fn new_ca(name: &str, validity: Validity) -> Result<Pair, CertError> {
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.not_before = validity.not_before;
    params.not_after = validity.not_after;
    let cert = params.self_signed(&key)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// A certificate for `request`, signed by the CA `ca`.
pub fn issue(ca: &Pair, request: &Request) -> Result<Pair, CertError> {
    let ca_key = KeyPair::from_pem(&ca.key_pem)?;
    let issuer = Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key)?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::default();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::CommonName, request.name.as_str());
    params.subject_alt_names = request.sans.iter().map(|s| san(s)).collect::<Result<Vec<_>, _>>()?;
    if !request.client_only && params.subject_alt_names.is_empty() {
        return Err(CertError::Invalid(
            "a member certificate needs at least one SAN (the member's IP address or DNS name)".into(),
        ));
    }
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = if request.client_only {
        vec![ExtendedKeyUsagePurpose::ClientAuth]
    } else {
        vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth]
    };
    params.use_authority_key_identifier_extension = true;
    params.not_before = request.validity.not_before;
    params.not_after = request.validity.not_after;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Pair {
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

/// One SAN: an IP address if it parses as one, a DNS name otherwise.
fn san(text: &str) -> Result<SanType, CertError> {
    let text = text.trim();
    if let Ok(ip) = text.parse::<IpAddr>() {
        return Ok(SanType::IpAddress(ip));
    }
    let name = text
        .try_into()
        .map_err(|_| CertError::Invalid(format!("SAN {text:?} is neither an IP address nor a DNS name")))?;
    Ok(SanType::DnsName(name))
}

/// The file names of a CA in a directory.
pub const CA_CERT: &str = "ca.pem";
pub const CA_KEY: &str = "ca-key.pem";
/// The file names of a certificate in a directory.
pub const CERT: &str = "cert.pem";
pub const KEY: &str = "key.pem";

/// Write `pair` into `dir` (created if needed) as `cert_name` and `key_name`; the key is
/// readable by its owner only. Each file is written beside its place and renamed into it, so a
/// running keel that reloads it never reads half a file.
pub fn write_pair(dir: &Path, pair: &Pair, cert_name: &str, key_name: &str) -> Result<(), CertError> {
    std::fs::create_dir_all(dir).map_err(|source| CertError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    write_atomic(&dir.join(key_name), pair.key_pem.as_bytes(), 0o600)?;
    write_atomic(&dir.join(cert_name), pair.cert_pem.as_bytes(), 0o644)
}

/// Write `bytes` to `path` through a temporary file and a rename.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let io = |source| CertError::Io {
        path: path.to_path_buf(),
        source,
    };
    let tmp = path.with_extension("tmp");
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(&tmp)
        .map_err(io)?;
    file.write_all(bytes).map_err(io)?;
    file.sync_all().map_err(io)?;
    std::fs::rename(&tmp, path).map_err(io)
}

/// Read a CA written by [`write_pair`] with [`CA_CERT`] and [`CA_KEY`].
pub fn read_ca(dir: &Path) -> Result<Pair, CertError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read_to_string(&path).map_err(|source| CertError::Io { path, source })
    };
    Ok(Pair {
        cert_pem: read(CA_CERT)?,
        key_pem: read(CA_KEY)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_member_and_client_certificates() {
        let ca = new_ca("test CA", Validity::days(1)).unwrap();
        let member = Request {
            name: "member-1".into(),
            sans: vec!["127.0.0.1".into(), "localhost".into()],
            client_only: false,
            validity: Validity::days(1),
        };
        let pair = issue(&ca, &member).unwrap();
        assert!(pair.cert_pem.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(pair.key_pem.contains("PRIVATE KEY"));
        let client = Request {
            sans: vec![],
            client_only: true,
            ..member.clone()
        };
        issue(&ca, &client).unwrap();
        let no_san = Request { sans: vec![], ..member };
        assert!(matches!(issue(&ca, &no_san), Err(CertError::Invalid(_))));
    }

    #[test]
    fn pairs_round_trip_through_a_directory() {
        let dir = tempfile::tempdir().unwrap();
        let ca = new_ca("test CA", Validity::expired()).unwrap();
        write_pair(dir.path(), &ca, CA_CERT, CA_KEY).unwrap();
        let back = read_ca(dir.path()).unwrap();
        assert_eq!(back.cert_pem, ca.cert_pem);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(CA_KEY)).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
    }
}
