//! Node configuration, defined once: [`Settings`] names every setting with its flag, its
//! `KEEL_*` environment variable, its key in the TOML file given by `--config`, its help text and
//! its default. Flags and variables take precedence over the file, and the file over the
//! defaults; [`Config::resolve`] then checks the settings and turns them into the typed
//! [`Config`] the node runs with.
//!
//! Every flag has an environment variable (`--heartbeat-ms` ↔ `KEEL_HEARTBEAT_MS`) and a key of
//! the same name with underscores in the file (`heartbeat_ms = 50`). The commented template
//! `deploy/keel.toml` lists every key and is parsed by a test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::parser::ValueSource;
use clap::{ArgMatches, CommandFactory, FromArgMatches, Parser};
use keel_storage::NodeId;
use serde::{Deserialize, Serialize};

/// Every setting of a node. Options without a default are `None` when not given.
#[derive(Debug, Clone, Parser, Serialize, Deserialize)]
#[command(
    name = "keel",
    version,
    about = "A keel node: one replica of a Raft-replicated key-value store"
)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// This node's id (a positive integer, unique in the cluster). Required.
    #[arg(long, env = "KEEL_ID")]
    pub id: Option<NodeId>,
    /// Where the node keeps its Raft log, state and snapshots. Required.
    #[arg(long, env = "KEEL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on for the Raft peer service.
    #[arg(long, env = "KEEL_PEER_ADDR", default_value = "127.0.0.1:7101")]
    pub peer_addr: SocketAddr,
    /// Address to listen on for clients (KV, Cluster, health, reflection).
    #[arg(long, env = "KEEL_CLIENT_ADDR", default_value = "127.0.0.1:7001")]
    pub client_addr: SocketAddr,
    /// Address for HTTP /metrics, /livez and /readyz.
    #[arg(long, env = "KEEL_METRICS_ADDR", default_value = "127.0.0.1:9001")]
    pub metrics_addr: SocketAddr,
    /// Peer address other members use to reach this node. [default: --peer-addr]
    #[arg(long, env = "KEEL_ADVERTISE_PEER_ADDR")]
    pub advertise_peer_addr: Option<String>,
    /// Client address published to clients and other members. [default: --client-addr]
    #[arg(long, env = "KEEL_ADVERTISE_CLIENT_ADDR")]
    pub advertise_client_addr: Option<String>,
    /// Members of a new cluster, `ID=PEER_ADDR,...`. Used once, on the first start; ignored when
    /// the data directory already holds a node.
    #[arg(long, env = "KEEL_INITIAL_CLUSTER")]
    pub initial_cluster: Option<String>,
    /// Start empty and wait to be added to an existing cluster (`keelctl member add`).
    #[arg(long, env = "KEEL_JOIN")]
    pub join: bool,
    /// Name of the cluster; part of the cluster id, so two clusters with different tokens never
    /// accept each other's nodes.
    #[arg(long, env = "KEEL_CLUSTER_TOKEN", default_value = "keel")]
    pub cluster_token: String,
    /// Leader heartbeat interval in milliseconds.
    #[arg(long, env = "KEEL_HEARTBEAT_MS", default_value_t = 50)]
    pub heartbeat_ms: u64,
    /// Election timeout range in milliseconds, `MIN-MAX`. Short, because openraft adds its
    /// leader lease (= MAX) before a follower may campaign.
    #[arg(long, env = "KEEL_ELECTION_TIMEOUT_MS", default_value = "60-120")]
    pub election_timeout_ms: String,
    /// Log entries between snapshots.
    #[arg(long, env = "KEEL_SNAPSHOT_LOGS", default_value_t = 10_000)]
    pub snapshot_logs: u64,
    /// Most client writes the leader proposes in one log entry; 1 turns batching off.
    #[arg(long, env = "KEEL_MAX_BATCH", default_value_t = BatchLimits::DEFAULT.max_requests)]
    pub max_batch: usize,
    /// Most client writes the leader holds at once (waiting to be proposed, or proposed and not
    /// yet committed); more are refused with Unavailable, to be retried.
    #[arg(long, env = "KEEL_MAX_QUEUED_WRITES", default_value_t = BatchLimits::DEFAULT.max_queued)]
    pub max_queued_writes: usize,
    /// Revisions of change history kept (at least; old ones are dropped in chunks of a
    /// sixteenth of this, at most 256).
    #[arg(long, env = "KEEL_HISTORY_REVISIONS", default_value_t = 10_000)]
    pub history_revisions: u64,
    /// sled page cache in MiB.
    #[arg(long, env = "KEEL_CACHE_MB", default_value_t = 256)]
    pub cache_mb: u64,
    /// Free space (MiB) kept on the data dir's filesystem: below it, this member takes no new
    /// entries (writes get ResourceExhausted) until twice as much is free again; 0 turns the
    /// check off.
    #[arg(long, env = "KEEL_MIN_FREE_MB", default_value_t = 64)]
    pub min_free_mb: u64,
    /// Largest key in bytes.
    #[arg(long, env = "KEEL_MAX_KEY_BYTES", default_value_t = keel_storage::Limits::default().max_key_bytes)]
    pub max_key_bytes: usize,
    /// Largest value in bytes.
    #[arg(long, env = "KEEL_MAX_VALUE_BYTES", default_value_t = keel_storage::Limits::default().max_value_bytes)]
    pub max_value_bytes: usize,
    /// Largest request (put, delete or txn) in bytes, encoded. [default: 1572864, or room for
    /// one value at --max-value-bytes if that is more]
    #[arg(long, env = "KEEL_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Leases the cluster holds at most; grants beyond are refused with ResourceExhausted.
    #[arg(long, env = "KEEL_MAX_LEASES", default_value_t = ServiceLimits::default().max_leases)]
    pub max_leases: usize,
    /// Leases one user holds at most (with auth enabled); grants beyond are refused with
    /// ResourceExhausted.
    #[arg(long, env = "KEEL_MAX_LEASES_PER_USER", default_value_t = ServiceLimits::default().max_leases_per_user)]
    pub max_leases_per_user: usize,
    /// Calls (HTTP/2 streams) in progress at once on one client connection; one more is refused
    /// with ResourceExhausted.
    #[arg(long, env = "KEEL_MAX_CONCURRENT_STREAMS", default_value_t = ServiceLimits::default().max_concurrent_streams)]
    pub max_concurrent_streams: u32,
    /// Watch streams this member serves at once (each carries up to 1024 watches).
    #[arg(long, env = "KEEL_MAX_WATCH_STREAMS", default_value_t = ServiceLimits::default().max_watch_streams)]
    pub max_watch_streams: i64,
    /// Lockers and campaigners waiting on this member at once.
    #[arg(long, env = "KEEL_MAX_LOCK_WAITERS", default_value_t = ServiceLimits::default().max_lock_waiters)]
    pub max_lock_waiters: i64,
    /// Lockers and campaigners of one user waiting on this member at once (with auth enabled).
    #[arg(long, env = "KEEL_MAX_LOCK_WAITERS_PER_USER", default_value_t = ServiceLimits::default().max_lock_waiters_per_user)]
    pub max_lock_waiters_per_user: u32,
    /// Lease keep-alive streams this member serves at once (each can renew many leases).
    #[arg(long, env = "KEEL_MAX_KEEPALIVE_STREAMS", default_value_t = ServiceLimits::default().max_keepalive_streams)]
    pub max_keepalive_streams: i64,
    /// How long a token from `Authenticate` names its user, e.g. `10m`, `1h` (1s to 30d).
    #[arg(long, env = "KEEL_AUTH_TOKEN_TTL", default_value = "10m")]
    pub auth_token_ttl: String,
    /// Directory for scheduled backups, taken by the leader (none if not set).
    #[arg(long, env = "KEEL_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Time between scheduled backups, e.g. `1h`, `30m`.
    #[arg(long, env = "KEEL_BACKUP_INTERVAL", default_value = "1h")]
    pub backup_interval: String,
    /// Scheduled backups kept; older ones are deleted.
    #[arg(long, env = "KEEL_BACKUP_RETAIN", default_value_t = 24)]
    pub backup_retain: usize,
    /// Client port TLS: this member's certificate (PEM; the chain, leaf first). Reloaded when
    /// the file changes. Without it, the client port is plain text.
    #[arg(long, env = "KEEL_CERT_FILE")]
    pub cert_file: Option<PathBuf>,
    /// Client port TLS: the private key of --cert-file (PEM).
    #[arg(long, env = "KEEL_KEY_FILE")]
    pub key_file: Option<PathBuf>,
    /// CA certificates (PEM) that client certificates must chain to (with --client-cert-auth).
    #[arg(long, env = "KEEL_TRUSTED_CA_FILE")]
    pub trusted_ca_file: Option<PathBuf>,
    /// Require a client certificate that chains to --trusted-ca-file on the client port.
    #[arg(long, env = "KEEL_CLIENT_CERT_AUTH")]
    pub client_cert_auth: bool,
    /// Peer port mutual TLS: this member's certificate, presented to peers both ways; it must
    /// name the member's advertised peer address (IP or DNS SAN). Needs --peer-key-file and
    /// --peer-trusted-ca-file.
    #[arg(long, env = "KEEL_PEER_CERT_FILE")]
    pub peer_cert_file: Option<PathBuf>,
    /// Peer port mutual TLS: the private key of --peer-cert-file.
    #[arg(long, env = "KEEL_PEER_KEY_FILE")]
    pub peer_key_file: Option<PathBuf>,
    /// Peer port mutual TLS: CA certificates that peers' certificates must chain to.
    #[arg(long, env = "KEEL_PEER_TRUSTED_CA_FILE")]
    pub peer_trusted_ca_file: Option<PathBuf>,
    /// Metrics port (HTTPS): a certificate for /metrics, /livez and /readyz. Needs
    /// --metrics-key-file. Without it, the metrics port is plain HTTP.
    #[arg(long, env = "KEEL_METRICS_CERT_FILE")]
    pub metrics_cert_file: Option<PathBuf>,
    /// Metrics port (HTTPS): the private key of --metrics-cert-file.
    #[arg(long, env = "KEEL_METRICS_KEY_FILE")]
    pub metrics_key_file: Option<PathBuf>,
    /// Log format: text or json.
    #[arg(long, env = "KEEL_LOG_FORMAT", default_value = "text")]
    pub log_format: String,
    /// Log filter, e.g. `info` or `keel_server=debug,openraft=warn`.
    #[arg(long, env = "KEEL_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// TOML file with any of the settings above (flags and environment take precedence).
    #[arg(long, env = "KEEL_CONFIG")]
    #[serde(skip)]
    pub config: Option<PathBuf>,
}

impl Settings {
    /// The settings `matches` gives (flags and environment), over those of the `--config` file
    /// if one is named, over the defaults.
    pub fn from_matches(matches: &ArgMatches) -> Result<Settings, ConfigError> {
        let given = Settings::from_arg_matches(matches).map_err(|e| err(e.to_string()))?;
        let Some(path) = given.config.clone() else {
            return Ok(given);
        };
        let file = read_file(&path)?;
        let command = Settings::command();
        let mut merged = serde_json::to_value(&given).map_err(|e| err(e.to_string()))?;
        let mut settings = given;
        for (key, value) in file {
            let from_file = err_in(&path, &key);
            let known = command.get_arguments().any(|a| a.get_id() == key.as_str());
            if key == "config" || !known {
                return Err(from_file("not a setting"));
            }
            // The file gives what neither a flag nor a variable did.
            if !matches!(matches.value_source(&key), None | Some(ValueSource::DefaultValue)) {
                continue;
            }
            let value = serde_json::to_value(value).map_err(|e| from_file(&e.to_string()))?;
            let mut candidate = merged.clone();
            candidate[key.as_str()] = value;
            // One key at a time, so that a value of the wrong type is named.
            settings = Settings::deserialize(&candidate).map_err(|e| from_file(&e.to_string()))?;
            merged = candidate;
        }
        settings.config = Some(path);
        Ok(settings)
    }
}

/// An error about `key` in the config file at `path`.
fn err_in<'a>(path: &'a Path, key: &'a str) -> impl Fn(&str) -> ConfigError + 'a {
    move |what| err(format!("config file {}: {key}: {what}", path.display()))
}

/// Read a TOML config file as a table.
fn read_file(path: &Path) -> Result<toml::Table, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| err(format!("config file {}: {e}", path.display())))
}

/// How the node logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

/// The resolved configuration of a node.
#[derive(Debug, Clone)]
pub struct Config {
    pub id: NodeId,
    pub data_dir: PathBuf,
    pub peer_addr: SocketAddr,
    pub client_addr: SocketAddr,
    pub metrics_addr: SocketAddr,
    pub advertise_peer_addr: String,
    pub advertise_client_addr: String,
    /// Members of a new cluster: id → peer address.
    pub initial_cluster: Option<BTreeMap<NodeId, String>>,
    pub join: bool,
    pub cluster_token: String,
    pub heartbeat: Duration,
    pub election_timeout: (Duration, Duration),
    pub snapshot_logs: u64,
    pub batch: BatchLimits,
    pub history_revisions: u64,
    pub cache_bytes: u64,
    /// Free bytes kept on the data dir's filesystem (see `disk/`); 0: not checked.
    pub min_free_bytes: u64,
    pub limits: keel_storage::Limits,
    pub service_limits: ServiceLimits,
    pub backup: Option<BackupConfig>,
    /// TLS per port (all None: plain text).
    pub tls: crate::tls::TlsConfig,
    pub log_format: LogFormat,
    pub log_level: String,
}

/// Limits on what one member holds for its clients, beyond the input limits of each request.
/// Each refusal is ResourceExhausted, naming the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceLimits {
    pub max_leases: usize,
    pub max_leases_per_user: usize,
    pub max_concurrent_streams: u32,
    pub max_watch_streams: i64,
    pub max_keepalive_streams: i64,
    pub max_lock_waiters: i64,
    pub max_lock_waiters_per_user: u32,
    /// How long an authentication token lasts from its issue.
    pub auth_token_ttl: Duration,
}

impl Default for ServiceLimits {
    fn default() -> Self {
        ServiceLimits {
            max_leases: 100_000,
            max_leases_per_user: 10_000,
            max_concurrent_streams: 1_000,
            max_watch_streams: 10_000,
            max_keepalive_streams: 10_000,
            max_lock_waiters: 10_000,
            max_lock_waiters_per_user: 1_000,
            auth_token_ttl: Duration::from_secs(600),
        }
    }
}

/// Scheduled backups.
#[derive(Debug, Clone)]
pub struct BackupConfig {
    pub dir: PathBuf,
    pub interval: Duration,
    pub retain: usize,
}

/// A configuration error, shown to the operator as one line.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(pub String);

fn err(msg: impl Into<String>) -> ConfigError {
    ConfigError(msg.into())
}

/// Parse `ID=ADDR,ID=ADDR` (see [`keel_datadir::identity::parse_initial_cluster`]).
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    keel_datadir::identity::parse_initial_cluster(s).map_err(ConfigError)
}

/// Parse `MIN-MAX` milliseconds.
pub fn parse_timeout_range(s: &str) -> Result<(Duration, Duration), ConfigError> {
    let bad = || err(format!("--election-timeout-ms: {s:?} is not MIN-MAX in milliseconds"));
    let (min, max) = s.split_once('-').ok_or_else(bad)?;
    let min: u64 = min.trim().parse().map_err(|_| bad())?;
    let max: u64 = max.trim().parse().map_err(|_| bad())?;
    if min == 0 || max <= min {
        return Err(err(format!("--election-timeout-ms: need 0 < MIN < MAX, got {s}")));
    }
    Ok((Duration::from_millis(min), Duration::from_millis(max)))
}

impl Config {
    /// Check `s` and turn it into the configuration the node runs with.
    pub fn resolve(s: Settings) -> Result<Config, ConfigError> {
        let tls = crate::tls::from_settings(&s).map_err(|e| err(e.0))?;
        let id = s.id.ok_or_else(|| err("--id is required"))?;
        if id == 0 {
            return Err(err("--id must be a positive integer"));
        }
        let data_dir = s.data_dir.ok_or_else(|| err("--data-dir is required"))?;
        let initial_cluster = match &s.initial_cluster {
            Some(text) => Some(parse_initial_cluster(text)?),
            None => None,
        };
        if s.join && initial_cluster.is_some() {
            return Err(err("--join and --initial-cluster exclude each other"));
        }
        if let Some(members) = &initial_cluster {
            if !members.contains_key(&id) {
                return Err(err(format!("--initial-cluster does not list this node (--id {id})")));
            }
        }
        let election_timeout = parse_timeout_range(&s.election_timeout_ms)?;
        let heartbeat = Duration::from_millis(s.heartbeat_ms);
        if heartbeat.is_zero() || heartbeat >= election_timeout.0 {
            return Err(err(format!(
                "--heartbeat-ms ({} ms) must be positive and below the election timeout ({} ms)",
                heartbeat.as_millis(),
                election_timeout.0.as_millis()
            )));
        }
        let log_format = match s.log_format.as_str() {
            "text" => LogFormat::Text,
            "json" => LogFormat::Json,
            other => return Err(err(format!("--log-format: {other:?} is not text or json"))),
        };
        // Bounded both, so that the sum below cannot overflow (keel-fuzz: `--max-key-bytes
        // 18446744073709551615` panicked there).
        if !(1..=64 * 1024 * 1024).contains(&s.max_key_bytes) || s.max_value_bytes > 64 * 1024 * 1024 {
            return Err(err(
                "--max-key-bytes must be between 1 and 64 MiB and --max-value-bytes at most 64 MiB",
            ));
        }
        // One put of the largest key and value must fit.
        let one_put = s.max_key_bytes + s.max_value_bytes + 64;
        let defaults = keel_storage::Limits::default();
        let limits = keel_storage::Limits {
            max_key_bytes: s.max_key_bytes,
            max_value_bytes: s.max_value_bytes,
            max_txn_ops: defaults.max_txn_ops,
            max_request_bytes: match s.max_request_bytes {
                None => defaults.max_request_bytes.max(one_put),
                Some(n) if n >= one_put && n <= 256 * 1024 * 1024 => n,
                Some(n) => {
                    return Err(err(format!(
                        "--max-request-bytes {n}: must hold one put of the largest key and value ({one_put}) and be at most 256 MiB"
                    )))
                }
            },
        };
        let auth_token_ttl = humantime::parse_duration(&s.auth_token_ttl)
            .map_err(|e| err(format!("--auth-token-ttl: {:?}: {e}", s.auth_token_ttl)))?;
        if !(Duration::from_secs(1)..=Duration::from_secs(30 * 86_400)).contains(&auth_token_ttl) {
            return Err(err("--auth-token-ttl must be between 1s and 30d"));
        }
        let backup_interval = humantime::parse_duration(&s.backup_interval)
            .map_err(|e| err(format!("--backup-interval: {:?}: {e}", s.backup_interval)))?;
        if backup_interval < Duration::from_secs(1) || s.backup_retain == 0 {
            return Err(err(
                "--backup-interval must be at least 1s and --backup-retain at least 1",
            ));
        }
        let backup = s.backup_dir.map(|dir| BackupConfig {
            dir,
            interval: backup_interval,
            retain: s.backup_retain,
        });
        if s.snapshot_logs == 0 {
            return Err(err("--snapshot-logs must be positive"));
        }
        if !(1..=4096).contains(&s.max_batch) {
            return Err(err(format!(
                "--max-batch must be between 1 and 4096, got {}",
                s.max_batch
            )));
        }
        if s.max_concurrent_streams == 0 {
            return Err(err("--max-concurrent-streams must be positive"));
        }
        if !(1..=1_000_000).contains(&s.max_queued_writes) {
            return Err(err(format!(
                "--max-queued-writes must be between 1 and 1000000, got {}",
                s.max_queued_writes
            )));
        }
        let batch = BatchLimits {
            max_requests: s.max_batch,
            max_queued: s.max_queued_writes,
            ..BatchLimits::DEFAULT
        };
        Ok(Config {
            id,
            data_dir,
            peer_addr: s.peer_addr,
            client_addr: s.client_addr,
            metrics_addr: s.metrics_addr,
            advertise_peer_addr: s.advertise_peer_addr.unwrap_or_else(|| s.peer_addr.to_string()),
            advertise_client_addr: s.advertise_client_addr.unwrap_or_else(|| s.client_addr.to_string()),
            initial_cluster,
            join: s.join,
            cluster_token: s.cluster_token,
            heartbeat,
            election_timeout,
            snapshot_logs: s.snapshot_logs,
            batch,
            history_revisions: s.history_revisions,
            cache_bytes: s.cache_mb.saturating_mul(1024 * 1024),
            min_free_bytes: s.min_free_mb.saturating_mul(1024 * 1024),
            limits,
            service_limits: ServiceLimits {
                max_leases: s.max_leases,
                max_leases_per_user: s.max_leases_per_user,
                max_concurrent_streams: s.max_concurrent_streams,
                max_watch_streams: s.max_watch_streams,
                max_keepalive_streams: s.max_keepalive_streams,
                max_lock_waiters: s.max_lock_waiters,
                max_lock_waiters_per_user: s.max_lock_waiters_per_user,
                auth_token_ttl,
            },
            backup,
            tls,
            log_format,
            log_level: s.log_level,
        })
    }

    /// Parse flags from `args` (and the environment), read `--config` if given, and resolve.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let matches = Settings::command()
            .try_get_matches_from(args)
            .map_err(|e| err(e.to_string()))?;
        Config::resolve(Settings::from_matches(&matches)?)
    }
}

/// How large batches may grow, and how many writes may wait for them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Requests per entry; 1 turns batching off.
    pub max_requests: usize,
    /// Encoded bytes per entry (a single larger request is proposed alone), so that one entry
    /// stays small beside the 1 MiB that one AppendEntries carries (peer/client.rs).
    pub max_bytes: usize,
    /// Writes the proposer holds at once, queued or proposed and not yet answered; more are
    /// refused. The default is some 40 full batches: far more than a leader commits while a
    /// client waits, and a bound on the memory writes can take when commits stall.
    pub max_queued: usize,
}

impl BatchLimits {
    pub const DEFAULT: BatchLimits = BatchLimits {
        max_requests: 256,
        max_bytes: 64 * 1024,
        max_queued: 10_000,
    };
}

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits::DEFAULT
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &[&str]) -> Result<Config, ConfigError> {
        Config::from_args(std::iter::once("keel").chain(args.iter().copied()))
    }

    /// `text` as a config file, in a directory that lives as long as the result.
    fn file(text: &str) -> (tempfile::TempDir, String) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("keel.toml");
        std::fs::write(&path, text).unwrap();
        (dir, path.display().to_string())
    }

    #[test]
    fn defaults_and_required_flags() {
        let c = resolve(&["--id", "1", "--data-dir", "/tmp/x"]).unwrap();
        assert_eq!(c.peer_addr.to_string(), "127.0.0.1:7101");
        assert_eq!(c.advertise_client_addr, "127.0.0.1:7001");
        assert_eq!(c.heartbeat, Duration::from_millis(50));
        assert_eq!(
            c.election_timeout,
            (Duration::from_millis(60), Duration::from_millis(120))
        );
        assert!(resolve(&["--data-dir", "/tmp/x"]).unwrap_err().0.contains("--id"));
        assert!(resolve(&["--id", "1"]).unwrap_err().0.contains("--data-dir"));
        assert!(resolve(&["--id", "0", "--data-dir", "d"]).is_err());
    }

    #[test]
    fn the_request_limit_holds_one_put_of_the_largest_value() {
        let base = ["--id", "1", "--data-dir", "d"];
        let with = |extra: &[&str]| resolve(&[&base[..], extra].concat());
        // Found by keel-fuzz: a key limit near usize::MAX overflowed the sum of the limits.
        let huge = with(&["--max-key-bytes", "18446744073709551615"]).unwrap_err();
        assert!(huge.0.contains("--max-key-bytes"), "{huge}");
        assert_eq!(with(&[]).unwrap().limits.max_request_bytes, 3 * 512 * 1024);
        let big = with(&["--max-value-bytes", "4194304"]).unwrap().limits;
        assert!(big.max_request_bytes >= 4194304 + 4096, "{big:?}");
        assert_eq!(
            with(&["--max-request-bytes", "8388608"])
                .unwrap()
                .limits
                .max_request_bytes,
            8388608
        );
        assert!(with(&["--max-request-bytes", "1000"]).is_err(), "smaller than one put");
        assert!(with(&["--max-request-bytes", "999999999999"]).is_err(), "over 256 MiB");
    }

    #[test]
    fn initial_cluster_is_checked() {
        let ok = parse_initial_cluster("1=127.0.0.1:7101, 2=127.0.0.1:7102,3=h:7103").unwrap();
        assert_eq!(ok.len(), 3);
        for bad in [
            "",
            "1",
            "1=",
            "x=a:1",
            "1=a:1,1=b:2",
            "1=a:1,2=a:1",
            "0=a:1",
            "1=nohostport",
        ] {
            assert!(parse_initial_cluster(bad).is_err(), "{bad:?} accepted");
        }
        let not_me = resolve(&["--id", "4", "--data-dir", "d", "--initial-cluster", "1=a:1"]);
        assert!(not_me.unwrap_err().0.contains("does not list this node"));
        let both = resolve(&["--id", "1", "--data-dir", "d", "--initial-cluster", "1=a:1", "--join"]);
        assert!(both.is_err());
    }

    #[test]
    fn timing_is_checked() {
        assert!(parse_timeout_range("300-150").is_err());
        assert!(parse_timeout_range("abc").is_err());
        assert!(resolve(&["--id", "1", "--data-dir", "d", "--heartbeat-ms", "200"]).is_err());
        assert!(resolve(&["--id", "1", "--data-dir", "d", "--max-batch", "0"]).is_err());
        assert!(resolve(&["--id", "1", "--data-dir", "d", "--max-batch", "5000"]).is_err());
        let c = resolve(&["--id", "1", "--data-dir", "d", "--max-batch", "1"]).unwrap();
        assert_eq!(c.batch.max_requests, 1);
        assert_eq!(c.batch.max_queued, 10_000);
        assert!(resolve(&["--id", "1", "--data-dir", "d", "--max-queued-writes", "0"]).is_err());
        let c = resolve(&["--id", "1", "--data-dir", "d", "--max-queued-writes", "64"]).unwrap();
        assert_eq!(c.batch.max_queued, 64);
        let c = resolve(&["--id", "1", "--data-dir", "d", "--election-timeout-ms", "500-1000"]).unwrap();
        assert_eq!(c.election_timeout.1, Duration::from_millis(1000));
    }

    #[test]
    fn flags_override_the_file() {
        let (_dir, path) = file("id = 2\ndata_dir = \"/f\"\nheartbeat_ms = 20\njoin = true\n");
        let c = resolve(&["--config", &path, "--heartbeat-ms", "30"]).unwrap();
        assert_eq!((c.id, c.heartbeat, c.join), (2, Duration::from_millis(30), true));
        assert_eq!(c.data_dir, PathBuf::from("/f"));
        // A default is not a flag: the file's value stands.
        let c = resolve(&["--config", &path]).unwrap();
        assert_eq!(c.heartbeat, Duration::from_millis(20));
        for (text, named) in [
            ("no_such_key = 1", "no_such_key: not a setting"),
            ("config = \"/x\"", "config: not a setting"),
            ("heartbeat_ms = \"fast\"", "heartbeat_ms: invalid type"),
            ("peer_addr = \"nowhere\"", "peer_addr: invalid socket address"),
        ] {
            let (_dir, path) = file(text);
            let e = resolve(&["--config", &path, "--id", "1", "--data-dir", "d"]).unwrap_err();
            assert!(e.0.contains(named), "{text}: {e}");
        }
    }

    #[test]
    fn tls_flags_go_together() {
        let base = ["--id", "1", "--data-dir", "d"];
        let with = |extra: &[&str]| resolve(&[&base[..], extra].concat());
        assert_eq!(with(&[]).unwrap().tls, crate::tls::TlsConfig::default());
        let c = with(&["--cert-file", "c", "--key-file", "k"]).unwrap();
        assert_eq!(c.tls.client.unwrap().ca, None);
        let c = with(&[
            "--cert-file",
            "c",
            "--key-file",
            "k",
            "--trusted-ca-file",
            "ca",
            "--client-cert-auth",
        ])
        .unwrap();
        assert_eq!(c.tls.client.unwrap().ca, Some(PathBuf::from("ca")));
        for (bad, named) in [
            (&["--cert-file", "c"][..], "--cert-file needs --key-file"),
            (&["--key-file", "k"][..], "--key-file needs --cert-file"),
            (
                &["--cert-file", "c", "--key-file", "k", "--client-cert-auth"][..],
                "needs --trusted-ca-file",
            ),
            (
                &["--client-cert-auth", "--trusted-ca-file", "ca"][..],
                "need --cert-file",
            ),
            (
                &["--peer-cert-file", "c", "--peer-key-file", "k"][..],
                "peer TLS is mutual",
            ),
            (&["--metrics-cert-file", "c"][..], "go together"),
        ] {
            let e = with(bad).unwrap_err();
            assert!(e.0.contains(named), "{bad:?}: {e}");
        }
        let c = with(&[
            "--peer-cert-file",
            "c",
            "--peer-key-file",
            "k",
            "--peer-trusted-ca-file",
            "ca",
        ])
        .unwrap();
        assert!(c.tls.peer.is_some());
    }

    /// The systemd environment file holds only real KEEL_* variables with valid values.
    #[test]
    fn systemd_env_file_resolves() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/systemd/keel.env");
        let text = std::fs::read_to_string(&path).unwrap();
        let mut args = vec!["keel".to_string()];
        for line in text
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with('#'))
        {
            let (key, value) = line.split_once('=').expect("KEY=VALUE");
            let flag = key
                .strip_prefix("KEEL_")
                .expect("a KEEL_ variable")
                .to_lowercase()
                .replace('_', "-");
            args.push(format!("--{flag}={value}"));
        }
        let c = Config::from_args(&args).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(c.id, 1);
        assert_eq!(c.advertise_client_addr, "10.0.0.1:7001");
    }

    /// The shipped template parses and names every key the file understands.
    #[test]
    fn deploy_template_parses() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../deploy/keel.toml");
        let text = std::fs::read_to_string(&path).unwrap();
        let uncommented: String = text
            .lines()
            .map(|l| l.strip_prefix("# ").filter(|l| l.contains(" = ")).unwrap_or(l))
            .collect::<Vec<_>>()
            .join("\n");
        let (_dir, path) = file(&uncommented);
        let c = resolve(&["--config", &path]).expect("template with every key uncommented is valid");
        assert_eq!(c.id, 1);
        for arg in Settings::command().get_arguments() {
            let key = arg.get_id().as_str();
            if ["config", "help", "version"].contains(&key) {
                continue;
            }
            assert!(text.contains(&format!("{key} = ")), "template does not document {key}");
        }
    }
}
