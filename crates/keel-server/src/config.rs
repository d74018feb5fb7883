//! Node configuration: command-line flags, `KEEL_*` environment variables and an optional TOML
//! file, in that order of precedence, over built-in defaults.
//!
//! Every flag has an environment variable (`--heartbeat-ms` ↔ `KEEL_HEARTBEAT_MS`) and a key of the
//! same name with underscores in the file given by `--config` (`heartbeat_ms = 50`). The commented
//! template `deploy/keel.toml` lists every key and is parsed by a test.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use keel_storage::NodeId;
use serde::Deserialize;

/// Command-line flags (and their environment variables). `None` means "not given here".
#[derive(Debug, Clone, Default, Parser)]
#[command(
    name = "keel",
    version,
    about = "A keel node: one replica of a Raft-replicated key-value store"
)]
pub struct Flags {
    /// This node's id (a positive integer, unique in the cluster).
    #[arg(long, env = "KEEL_ID")]
    pub id: Option<NodeId>,
    /// Where the node keeps its Raft log, state and snapshots.
    #[arg(long, env = "KEEL_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// Address to listen on for the Raft peer service. [default: 127.0.0.1:7101]
    #[arg(long, env = "KEEL_PEER_ADDR")]
    pub peer_addr: Option<SocketAddr>,
    /// Address to listen on for clients (KV, Cluster, health, reflection). [default: 127.0.0.1:7001]
    #[arg(long, env = "KEEL_CLIENT_ADDR")]
    pub client_addr: Option<SocketAddr>,
    /// Address for HTTP /metrics, /livez and /readyz. [default: 127.0.0.1:9001]
    #[arg(long, env = "KEEL_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
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
    /// accept each other's nodes. [default: keel]
    #[arg(long, env = "KEEL_CLUSTER_TOKEN")]
    pub cluster_token: Option<String>,
    /// Leader heartbeat interval in milliseconds. [default: 50]
    #[arg(long, env = "KEEL_HEARTBEAT_MS")]
    pub heartbeat_ms: Option<u64>,
    /// Election timeout range in milliseconds, `MIN-MAX`. [default: 60-120]
    #[arg(long, env = "KEEL_ELECTION_TIMEOUT_MS")]
    pub election_timeout_ms: Option<String>,
    /// Log entries between snapshots. [default: 10000]
    #[arg(long, env = "KEEL_SNAPSHOT_LOGS")]
    pub snapshot_logs: Option<u64>,
    /// Most client writes the leader proposes in one log entry; 1 turns batching off. [default: 256]
    #[arg(long, env = "KEEL_MAX_BATCH")]
    pub max_batch: Option<usize>,
    /// Most client writes the leader holds at once (waiting to be proposed, or proposed and not
    /// yet committed); more are refused with Unavailable, to be retried. [default: 10000]
    #[arg(long, env = "KEEL_MAX_QUEUED_WRITES")]
    pub max_queued_writes: Option<usize>,
    /// Revisions of change history kept. [default: 10000]
    #[arg(long, env = "KEEL_HISTORY_REVISIONS")]
    pub history_revisions: Option<u64>,
    /// sled page cache in MiB. [default: 256]
    #[arg(long, env = "KEEL_CACHE_MB")]
    pub cache_mb: Option<u64>,
    /// Free space (MiB) kept on the data dir's filesystem: below it, this member takes no new
    /// entries (writes get ResourceExhausted) until twice as much is free again; 0 turns the
    /// check off. [default: 64]
    #[arg(long, env = "KEEL_MIN_FREE_MB")]
    pub min_free_mb: Option<u64>,
    /// Largest key in bytes. [default: 4096]
    #[arg(long, env = "KEEL_MAX_KEY_BYTES")]
    pub max_key_bytes: Option<usize>,
    /// Largest value in bytes. [default: 1048576]
    #[arg(long, env = "KEEL_MAX_VALUE_BYTES")]
    pub max_value_bytes: Option<usize>,
    /// Largest request (put, delete or txn) in bytes, encoded. [default: 1572864, or room for
    /// one value at --max-value-bytes if that is more]
    #[arg(long, env = "KEEL_MAX_REQUEST_BYTES")]
    pub max_request_bytes: Option<usize>,
    /// Directory for scheduled backups, taken by the leader (none if not set).
    #[arg(long, env = "KEEL_BACKUP_DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Time between scheduled backups, e.g. `1h`, `30m`. [default: 1h]
    #[arg(long, env = "KEEL_BACKUP_INTERVAL")]
    pub backup_interval: Option<String>,
    /// Scheduled backups kept; older ones are deleted. [default: 24]
    #[arg(long, env = "KEEL_BACKUP_RETAIN")]
    pub backup_retain: Option<usize>,
    /// Log format: text or json. [default: text]
    #[arg(long, env = "KEEL_LOG_FORMAT")]
    pub log_format: Option<String>,
    /// Log filter, e.g. `info` or `keel_server=debug,openraft=warn`. [default: info]
    #[arg(long, env = "KEEL_LOG_LEVEL")]
    pub log_level: Option<String>,
    /// TOML file with any of the settings above (flags and environment take precedence).
    #[arg(long, env = "KEEL_CONFIG")]
    pub config: Option<PathBuf>,
}

/// The same settings, from a TOML file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub id: Option<NodeId>,
    pub data_dir: Option<PathBuf>,
    pub peer_addr: Option<SocketAddr>,
    pub client_addr: Option<SocketAddr>,
    pub metrics_addr: Option<SocketAddr>,
    pub advertise_peer_addr: Option<String>,
    pub advertise_client_addr: Option<String>,
    pub initial_cluster: Option<String>,
    pub join: Option<bool>,
    pub cluster_token: Option<String>,
    pub heartbeat_ms: Option<u64>,
    pub election_timeout_ms: Option<String>,
    pub snapshot_logs: Option<u64>,
    pub max_batch: Option<usize>,
    pub max_queued_writes: Option<usize>,
    pub history_revisions: Option<u64>,
    pub cache_mb: Option<u64>,
    pub min_free_mb: Option<u64>,
    pub max_key_bytes: Option<usize>,
    pub max_value_bytes: Option<usize>,
    pub max_request_bytes: Option<usize>,
    pub backup_dir: Option<PathBuf>,
    pub backup_interval: Option<String>,
    pub backup_retain: Option<usize>,
    pub log_format: Option<String>,
    pub log_level: Option<String>,
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
    pub backup: Option<BackupConfig>,
    pub log_format: LogFormat,
    pub log_level: String,
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

/// Read a TOML config file.
pub fn read_file(path: &Path) -> Result<FileConfig, ConfigError> {
    let text =
        std::fs::read_to_string(path).map_err(|e| err(format!("cannot read config file {}: {e}", path.display())))?;
    toml::from_str(&text).map_err(|e| err(format!("config file {}: {e}", path.display())))
}

/// Parse `ID=ADDR,ID=ADDR` (see [`keel_storage::datadir::parse_initial_cluster`]).
pub fn parse_initial_cluster(s: &str) -> Result<BTreeMap<NodeId, String>, ConfigError> {
    keel_storage::datadir::parse_initial_cluster(s).map_err(ConfigError)
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
    /// Resolve flags over the file over defaults, and check the result.
    pub fn resolve(flags: Flags, file: FileConfig) -> Result<Config, ConfigError> {
        let id = flags.id.or(file.id).ok_or_else(|| err("--id is required"))?;
        if id == 0 {
            return Err(err("--id must be a positive integer"));
        }
        let data_dir = flags
            .data_dir
            .or(file.data_dir)
            .ok_or_else(|| err("--data-dir is required"))?;
        let peer_addr = flags
            .peer_addr
            .or(file.peer_addr)
            .unwrap_or(([127, 0, 0, 1], 7101).into());
        let client_addr = flags
            .client_addr
            .or(file.client_addr)
            .unwrap_or(([127, 0, 0, 1], 7001).into());
        let metrics_addr = flags
            .metrics_addr
            .or(file.metrics_addr)
            .unwrap_or(([127, 0, 0, 1], 9001).into());
        let join = flags.join || file.join.unwrap_or(false);
        let initial_cluster = match flags.initial_cluster.or(file.initial_cluster) {
            Some(s) => Some(parse_initial_cluster(&s)?),
            None => None,
        };
        if join && initial_cluster.is_some() {
            return Err(err("--join and --initial-cluster exclude each other"));
        }
        if let Some(members) = &initial_cluster {
            if !members.contains_key(&id) {
                return Err(err(format!("--initial-cluster does not list this node (--id {id})")));
            }
        }
        let election_timeout = match flags.election_timeout_ms.or(file.election_timeout_ms) {
            Some(s) => parse_timeout_range(&s)?,
            // Short, because openraft 0.9 adds its leader lease (= MAX) before a follower may
            // campaign: a follower starts an election after MAX + its own random timeout in
            // [MIN, MAX) of silence (180-240 ms, 3.6-4.8 heartbeats), rounded up to its next tick
            // (every 1.5 heartbeats), and members refuse votes while their lease runs.
            None => (Duration::from_millis(60), Duration::from_millis(120)),
        };
        let heartbeat = Duration::from_millis(flags.heartbeat_ms.or(file.heartbeat_ms).unwrap_or(50));
        if heartbeat.is_zero() || heartbeat >= election_timeout.0 {
            return Err(err(format!(
                "--heartbeat-ms ({} ms) must be positive and below the election timeout ({} ms)",
                heartbeat.as_millis(),
                election_timeout.0.as_millis()
            )));
        }
        let log_format = match flags.log_format.or(file.log_format).as_deref() {
            None | Some("text") => LogFormat::Text,
            Some("json") => LogFormat::Json,
            Some(other) => return Err(err(format!("--log-format: {other:?} is not text or json"))),
        };
        let defaults = keel_storage::Limits::default();
        let limits = keel_storage::Limits {
            max_key_bytes: flags
                .max_key_bytes
                .or(file.max_key_bytes)
                .unwrap_or(defaults.max_key_bytes),
            max_value_bytes: flags
                .max_value_bytes
                .or(file.max_value_bytes)
                .unwrap_or(defaults.max_value_bytes),
            max_txn_ops: defaults.max_txn_ops,
            max_request_bytes: defaults.max_request_bytes,
        };
        if limits.max_key_bytes == 0 || limits.max_value_bytes > 64 * 1024 * 1024 {
            return Err(err(
                "--max-key-bytes must be positive and --max-value-bytes at most 64 MiB",
            ));
        }
        // One put of the largest key and value must fit.
        let one_put = limits.max_key_bytes + limits.max_value_bytes + 64;
        let limits = keel_storage::Limits {
            max_request_bytes: match flags.max_request_bytes.or(file.max_request_bytes) {
                None => defaults.max_request_bytes.max(one_put),
                Some(n) if n >= one_put && n <= 256 * 1024 * 1024 => n,
                Some(n) => {
                    return Err(err(format!(
                        "--max-request-bytes {n}: must hold one put of the largest key and value ({one_put}) and be at most 256 MiB"
                    )))
                }
            },
            ..limits
        };
        let backup_interval = match flags.backup_interval.or(file.backup_interval) {
            None => Duration::from_secs(3600),
            Some(s) => humantime::parse_duration(&s).map_err(|e| err(format!("--backup-interval: {s:?}: {e}")))?,
        };
        let backup_retain = flags.backup_retain.or(file.backup_retain).unwrap_or(24);
        if backup_interval < Duration::from_secs(1) || backup_retain == 0 {
            return Err(err(
                "--backup-interval must be at least 1s and --backup-retain at least 1",
            ));
        }
        let backup = flags.backup_dir.or(file.backup_dir).map(|dir| BackupConfig {
            dir,
            interval: backup_interval,
            retain: backup_retain,
        });
        let snapshot_logs = flags.snapshot_logs.or(file.snapshot_logs).unwrap_or(10_000);
        if snapshot_logs == 0 {
            return Err(err("--snapshot-logs must be positive"));
        }
        let max_batch = flags
            .max_batch
            .or(file.max_batch)
            .unwrap_or(BatchLimits::default().max_requests);
        if !(1..=4096).contains(&max_batch) {
            return Err(err(format!("--max-batch must be between 1 and 4096, got {max_batch}")));
        }
        let max_queued = flags
            .max_queued_writes
            .or(file.max_queued_writes)
            .unwrap_or(BatchLimits::default().max_queued);
        if !(1..=1_000_000).contains(&max_queued) {
            return Err(err(format!(
                "--max-queued-writes must be between 1 and 1000000, got {max_queued}"
            )));
        }
        let batch = BatchLimits {
            max_requests: max_batch,
            max_queued,
            ..Default::default()
        };
        Ok(Config {
            id,
            data_dir,
            peer_addr,
            client_addr,
            metrics_addr,
            advertise_peer_addr: flags
                .advertise_peer_addr
                .or(file.advertise_peer_addr)
                .unwrap_or_else(|| peer_addr.to_string()),
            advertise_client_addr: flags
                .advertise_client_addr
                .or(file.advertise_client_addr)
                .unwrap_or_else(|| client_addr.to_string()),
            initial_cluster,
            join,
            cluster_token: flags
                .cluster_token
                .or(file.cluster_token)
                .unwrap_or_else(|| "keel".into()),
            heartbeat,
            election_timeout,
            snapshot_logs,
            batch,
            history_revisions: flags.history_revisions.or(file.history_revisions).unwrap_or(10_000),
            cache_bytes: flags
                .cache_mb
                .or(file.cache_mb)
                .unwrap_or(256)
                .saturating_mul(1024 * 1024),
            min_free_bytes: flags
                .min_free_mb
                .or(file.min_free_mb)
                .unwrap_or(64)
                .saturating_mul(1024 * 1024),
            limits,
            backup,
            log_format,
            log_level: flags.log_level.or(file.log_level).unwrap_or_else(|| "info".into()),
        })
    }

    /// Parse flags from `args` (and the environment), read `--config` if given, and resolve.
    pub fn from_args<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let flags = Flags::try_parse_from(args).map_err(|e| err(e.to_string()))?;
        let file = match &flags.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        Config::resolve(flags, file)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn resolve(args: &[&str]) -> Result<Config, ConfigError> {
        let flags = Flags::try_parse_from(std::iter::once("keel").chain(args.iter().copied())).unwrap();
        Config::resolve(flags, FileConfig::default())
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
        let file: FileConfig = toml::from_str("id = 2\ndata_dir = \"/f\"\nheartbeat_ms = 20\n").unwrap();
        let flags = Flags::try_parse_from(["keel", "--heartbeat-ms", "30"]).unwrap();
        let c = Config::resolve(flags, file).unwrap();
        assert_eq!((c.id, c.heartbeat), (2, Duration::from_millis(30)));
        assert!(
            toml::from_str::<FileConfig>("no_such_key = 1").is_err(),
            "unknown keys are refused"
        );
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
        let flags = Flags::try_parse_from(&args).unwrap_or_else(|e| panic!("{e}"));
        let c = Config::resolve(flags, FileConfig::default()).expect("valid settings");
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
        let file: FileConfig = toml::from_str(&uncommented).expect("template with every key uncommented parses");
        let c = Config::resolve(Flags::default(), file).expect("template values are valid");
        assert_eq!(c.id, 1);
        for key in [
            "id",
            "data_dir",
            "peer_addr",
            "client_addr",
            "metrics_addr",
            "advertise_peer_addr",
            "advertise_client_addr",
            "initial_cluster",
            "join",
            "cluster_token",
            "heartbeat_ms",
            "election_timeout_ms",
            "snapshot_logs",
            "max_queued_writes",
            "history_revisions",
            "cache_mb",
            "min_free_mb",
            "max_key_bytes",
            "max_value_bytes",
            "max_request_bytes",
            "backup_dir",
            "backup_interval",
            "backup_retain",
            "log_format",
            "log_level",
        ] {
            assert!(text.contains(&format!("{key} = ")), "template does not document {key}");
        }
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

impl Default for BatchLimits {
    fn default() -> Self {
        BatchLimits {
            max_requests: 256,
            max_bytes: 64 * 1024,
            max_queued: 10_000,
        }
    }
}
