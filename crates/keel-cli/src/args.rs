//! Command-line arguments.

use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgGroup, Args, Parser, Subcommand, ValueEnum};

/// keelctl: read and write keys in a keel cluster, and inspect its members.
#[derive(Debug, Parser)]
#[command(name = "keelctl", version, about, propagate_version = true)]
pub struct Cli {
    /// Client addresses of cluster members (host:port), comma-separated.
    #[arg(
        long,
        global = true,
        env = "KEEL_ENDPOINTS",
        value_delimiter = ',',
        default_value = "127.0.0.1:7001"
    )]
    pub endpoints: Vec<String>,

    /// Output format.
    #[arg(short, long, global = true, value_enum, default_value_t = Format::Table)]
    pub output: Format,

    /// Log in as this user (`NAME` or `NAME:PASSWORD`; the password is asked for when absent)
    /// when the cluster has authentication enabled.
    #[arg(long, global = true, env = "KEEL_USER")]
    pub user: Option<String>,

    /// Deadline of each request, retries included (e.g. 500ms, 3s).
    #[arg(long, global = true, value_parser = parse_timeout, default_value = "5s")]
    pub timeout: Duration,

    /// Reach the cluster over TLS, checking servers against these CA certificates (PEM).
    /// Endpoints without a scheme then use TLS; https:// endpoints need it.
    #[arg(long, global = true, env = "KEEL_CACERT")]
    pub cacert: Option<PathBuf>,

    /// This client's certificate (PEM), for clusters started with --client-cert-auth.
    #[arg(
        long = "cert",
        id = "client_cert",
        global = true,
        env = "KEEL_CERT",
        requires = "client_key"
    )]
    pub cert: Option<PathBuf>,

    /// The private key of --cert (PEM).
    #[arg(
        long = "key",
        id = "client_key",
        global = true,
        env = "KEEL_KEY",
        requires = "client_cert"
    )]
    pub key: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

impl Cli {
    /// Whether keelctl reaches the members over TLS.
    pub fn speaks_tls(&self) -> bool {
        self.cacert.is_some() || self.endpoints.iter().any(|e| e.starts_with("https://"))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    /// Aligned columns for people.
    Table,
    /// Stable JSON, one document per command (see the README).
    Json,
    /// Plain lines for scripts.
    Simple,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write a key.
    Put(PutArgs),
    /// Read a key or a range of keys.
    Get(GetArgs),
    /// Delete a key or a range of keys; prints how many were deleted.
    Del(DelArgs),
    /// Write a key only if it is as expected (exit 3 if it is not).
    Cas(CasArgs),
    /// Print every change to a key or a range of keys, one line each, until interrupted.
    Watch(WatchArgs),
    /// Cluster membership.
    #[command(subcommand)]
    Member(MemberCommand),
    /// The state of every member, one row each.
    Status(StatusArgs),
    /// Leadership.
    #[command(subcommand)]
    Leader(LeaderCommand),
    /// Backups: save a snapshot from the leader, inspect one, restore a new cluster from one.
    #[command(subcommand)]
    Snapshot(SnapshotCommand),
    /// Leases: keys put with a lease are deleted when it expires or is revoked. Lease ids are
    /// printed and read in hexadecimal, as etcdctl does.
    #[command(subcommand)]
    Lease(LeaseCommand),
    /// Take the lock NAME (waiting for it), print its key and fencing token, and hold it while
    /// COMMAND runs (its exit code is keelctl's) or, without COMMAND, until interrupted. The
    /// lock is attached to a lease of --ttl seconds kept alive meanwhile; if the lease is lost,
    /// COMMAND is killed and keelctl exits 1. COMMAND gets KEEL_LOCK_KEY and KEEL_LOCK_TOKEN.
    Lock(LockArgs),
    /// Campaign in election NAME with PROPOSAL, print each leader as it changes, and resign when
    /// interrupted; with --listen, only print the leaders.
    Elect(ElectArgs),
    /// Users: each logs in with a password and holds roles.
    #[command(subcommand)]
    User(UserCommand),
    /// Roles: each grants read, write or read-write permission on keys.
    #[command(subcommand)]
    Role(RoleCommand),
    /// Authentication: while enabled, every request needs a user (`--user`) with the permission.
    #[command(subcommand)]
    Auth(AuthCommand),
    /// Development certificates: a CA, and member or client certificates signed by it (for
    /// trying TLS out and for tests; production clusters bring their own PKI).
    #[command(subcommand)]
    Cert(CertCommand),
}

#[derive(Debug, Subcommand)]
pub enum UserCommand {
    /// Add a user (the password is asked for unless given or --no-password).
    Add {
        name: String,
        #[arg(long, conflicts_with = "no_password")]
        password: Option<String>,
        /// A user without a password (it can log in only by client certificate).
        #[arg(long)]
        no_password: bool,
    },
    Delete {
        name: String,
    },
    List,
    /// A user's roles.
    Get {
        name: String,
    },
    /// Change a user's password (asked for unless given); its tokens end at once.
    Passwd {
        name: String,
        #[arg(long)]
        password: Option<String>,
    },
    GrantRole {
        name: String,
        role: String,
    },
    RevokeRole {
        name: String,
        role: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum RoleCommand {
    Add {
        name: String,
    },
    Delete {
        name: String,
    },
    List,
    /// A role's permissions.
    Get {
        name: String,
    },
    /// Grant KIND (read, write, readwrite) on KEY, [KEY, RANGE_END), --prefix KEY or
    /// --from-key KEY.
    GrantPermission {
        role: String,
        #[arg(value_enum)]
        kind: PermissionKindArg,
        #[command(flatten)]
        keys: PermissionKeys,
    },
    /// Revoke the permission on exactly this key or range.
    RevokePermission {
        role: String,
        #[command(flatten)]
        keys: PermissionKeys,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PermissionKindArg {
    Read,
    Write,
    Readwrite,
}

#[derive(Debug, Args)]
pub struct PermissionKeys {
    pub key: String,
    /// The end of the range (exclusive).
    #[arg(conflicts_with_all = ["prefix", "from_key"])]
    pub range_end: Option<String>,
    /// Every key that starts with KEY.
    #[arg(long, conflicts_with = "from_key")]
    pub prefix: bool,
    /// Every key from KEY on.
    #[arg(long)]
    pub from_key: bool,
}

#[derive(Debug, Subcommand)]
pub enum AuthCommand {
    /// Enable authentication (needs the user root with the role root).
    Enable,
    Disable,
    /// Whether authentication is enabled, and the auth revision.
    Status,
}

#[derive(Debug, Subcommand)]
pub enum CertCommand {
    /// Make a new CA: DIR/ca.pem and DIR/ca-key.pem.
    Ca {
        /// Directory to write into (created if needed).
        #[arg(long)]
        out: PathBuf,
        /// The CA's common name.
        #[arg(long, default_value = "keel development CA")]
        name: String,
        /// Days the CA is valid.
        #[arg(long, default_value_t = 3650, value_parser = clap::value_parser!(i64).range(1..=36500))]
        days: i64,
    },
    /// Issue a certificate signed by the CA in --ca: DIR/cert.pem and DIR/key.pem. A member's
    /// certificate (the default) is for both TLS server and client use and needs --san naming
    /// the addresses it is reached at; --client makes a client-only certificate.
    Issue {
        /// The CA's directory (ca.pem, ca-key.pem).
        #[arg(long)]
        ca: PathBuf,
        /// The common name (a client certificate's user, once keel has users).
        #[arg(long)]
        name: String,
        /// Subject alternative names, comma-separated: IP addresses or DNS names.
        #[arg(long, value_delimiter = ',')]
        san: Vec<String>,
        /// A client certificate (client authentication only).
        #[arg(long)]
        client: bool,
        /// Days the certificate is valid.
        #[arg(long, default_value_t = 365, value_parser = clap::value_parser!(i64).range(1..=36500))]
        days: i64,
        /// Make it already expired (valid from two days ago until yesterday), for tests.
        #[arg(long, conflicts_with = "days")]
        expired: bool,
        /// Directory to write into (created if needed).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Args)]
pub struct LockArgs {
    /// The lock's name (a key prefix).
    pub name: String,
    /// The lease's TTL in seconds: how long the lock outlives keelctl if it dies.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i64).range(1..=i64::from(u32::MAX)))]
    pub ttl: i64,
    /// How long to wait for the lock (default: for ever).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub wait: Option<Duration>,
    /// The command to run while holding the lock.
    #[arg(last = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ElectArgs {
    /// The election's name (a key prefix).
    pub name: String,
    /// The value to lead with.
    #[arg(required_unless_present = "listen")]
    pub proposal: Option<String>,
    /// Only print the leaders as they change.
    #[arg(long, conflicts_with = "proposal")]
    pub listen: bool,
    /// The lease's TTL in seconds: how long leadership outlives keelctl if it dies.
    #[arg(long, default_value_t = 60, value_parser = clap::value_parser!(i64).range(1..=i64::from(u32::MAX)))]
    pub ttl: i64,
}

#[derive(Debug, Subcommand)]
pub enum LeaseCommand {
    /// Grant a lease of TTL seconds (the cluster may raise it to its minimum); prints its id.
    Grant {
        /// Seconds.
        #[arg(value_parser = clap::value_parser!(i64).range(1..=i64::from(u32::MAX)))]
        ttl: i64,
    },
    /// Revoke a lease: its keys are deleted at once.
    Revoke {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
    },
    /// Keep a lease alive until interrupted, printing each renewal; exits 1 once it is gone
    /// (expired or revoked) or cannot be renewed before it runs out.
    KeepAlive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// Renew once and exit.
        #[arg(long)]
        once: bool,
    },
    /// A lease's granted TTL, the time it has left, and (with --keys) its keys. Exits 1 if it
    /// does not exist.
    Timetolive {
        #[arg(value_parser = parse_lease_id)]
        id: i64,
        /// List the keys attached to it.
        #[arg(long)]
        keys: bool,
    },
    /// Every lease's id.
    List,
}

/// A lease id in hexadecimal (as etcdctl prints and reads them), with or without `0x`.
pub fn parse_lease_id(raw: &str) -> Result<i64, String> {
    let digits = raw.strip_prefix("0x").unwrap_or(raw);
    match i64::from_str_radix(digits, 16) {
        Ok(id) if id > 0 => Ok(id),
        Ok(_) => Err("a lease id is greater than zero".into()),
        Err(e) => Err(format!("not a hexadecimal lease id: {e}")),
    }
}

#[derive(Debug, Subcommand)]
pub enum SnapshotCommand {
    /// Stream a consistent point-in-time snapshot from the leader into FILE (written to
    /// FILE.part, synced, verified, then renamed).
    Save { file: std::path::PathBuf },
    /// Verify FILE (every block's CRC and the SHA-256) and print its header.
    Inspect { file: std::path::PathBuf },
    /// Seed the empty data directory of one member of a new cluster from FILE. Restore every
    /// member from the same file with the same --initial-cluster, then start them without it.
    Restore(RestoreArgs),
}

#[derive(Debug, Args)]
pub struct RestoreArgs {
    pub file: std::path::PathBuf,
    /// The new member's data directory; must not exist or be empty.
    #[arg(long)]
    pub data_dir: std::path::PathBuf,
    /// The new member's id.
    #[arg(long)]
    pub id: u64,
    /// The new cluster's members, `1=host:7101,2=host:7101,...` (peer addresses), as given to
    /// `keel --initial-cluster` for a new cluster.
    #[arg(long)]
    pub initial_cluster: String,
    /// The new cluster's token (`keel --cluster-token`).
    #[arg(long, default_value = "keel")]
    pub cluster_token: String,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Refresh every INTERVAL (default 2s) until interrupted.
    #[arg(long, value_name = "INTERVAL", num_args = 0..=1, default_missing_value = "2s", value_parser = humantime::parse_duration)]
    pub watch: Option<std::time::Duration>,
}

#[derive(Debug, Args)]
pub struct PutArgs {
    pub key: String,
    pub value: String,
    /// Attach the key to this lease (hexadecimal id): it is deleted when the lease ends.
    #[arg(long, value_name = "ID", value_parser = parse_lease_id)]
    pub lease: Option<i64>,
}

/// Which keys a get or a watch addresses: KEY alone, or a range starting at KEY.
#[derive(Debug, Args)]
pub struct KeyRangeArgs {
    /// The key, or the start of the range.
    pub key: String,
    /// Every key that starts with KEY (with an empty KEY: every key).
    #[arg(long, conflicts_with_all = ["from_key", "range_end"])]
    pub prefix: bool,
    /// Every key >= KEY.
    #[arg(long, conflicts_with = "range_end")]
    pub from_key: bool,
    /// Keys in [KEY, END).
    #[arg(long, value_name = "END")]
    pub range_end: Option<String>,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    #[command(flatten)]
    pub range: KeyRangeArgs,
    /// At most N keys (0: no limit).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub limit: u64,
    /// Answer from the contacted member without a quorum round (fast, may be stale).
    #[arg(long)]
    pub serializable: bool,
    /// Print only the values (table and simple output).
    #[arg(long, conflicts_with_all = ["keys_only", "count_only"])]
    pub print_value_only: bool,
    /// Fetch keys and revisions without values.
    #[arg(long, conflicts_with = "count_only")]
    pub keys_only: bool,
    /// Print only how many keys are in the range.
    #[arg(long)]
    pub count_only: bool,
}

#[derive(Debug, Args)]
pub struct WatchArgs {
    #[command(flatten)]
    pub range: KeyRangeArgs,
    /// Start at revision N (the history the cluster keeps); default: changes from now on.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub rev: u64,
    /// Print each key's previous value too.
    #[arg(long)]
    pub prev_kv: bool,
    /// Stop after N events (0: run until interrupted).
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_events: u64,
}

#[derive(Debug, Args)]
pub struct DelArgs {
    pub key: String,
    /// Every key that starts with KEY (with an empty KEY: every key).
    #[arg(long)]
    pub prefix: bool,
}

#[derive(Debug, Args)]
#[command(group(ArgGroup::new("expectation").required(true).multiple(false)))]
pub struct CasArgs {
    pub key: String,
    /// The value to write.
    pub new: String,
    /// Write only if the current value is V.
    #[arg(long, value_name = "V", group = "expectation")]
    pub expect_value: Option<String>,
    /// Write only if the key's version (writes since creation) is N; 0 means absent.
    #[arg(long, value_name = "N", group = "expectation")]
    pub expect_version: Option<u64>,
    /// Write only if the key does not exist.
    #[arg(long, group = "expectation")]
    pub expect_absent: bool,
}

#[derive(Debug, Subcommand)]
pub enum MemberCommand {
    /// List the members: id, addresses, voter or learner, and which is leader.
    List,
    /// Add a member. It joins as a learner, receives the log or a snapshot, and is promoted to
    /// voter once it has caught up (unless --learner).
    Add(MemberAddArgs),
    /// Make a caught-up learner a voter.
    Promote {
        /// The learner's id.
        id: u64,
    },
    /// Remove a member. Refused for the last voter, or when the remaining voters would not
    /// include a reachable majority (unless --force).
    Remove {
        /// The member's id.
        id: u64,
        /// Remove it even if the remaining voters do not include a reachable majority.
        #[arg(long)]
        force: bool,
    },
}

#[derive(Debug, Args)]
pub struct MemberAddArgs {
    /// The new member's id (its `keel --id`).
    pub id: u64,
    /// Address other members reach it on (its --peer-addr or --advertise-peer-addr).
    #[arg(long)]
    pub peer_addr: String,
    /// Address clients reach it on (its --client-addr or --advertise-client-addr).
    #[arg(long, default_value = "")]
    pub client_addr: String,
    /// Add it as a learner only; promote it later with `member promote`.
    #[arg(long, conflicts_with = "promote_when_caught_up")]
    pub learner: bool,
    /// Promote it once it has caught up, reporting progress (the default without --learner).
    #[arg(long)]
    pub promote_when_caught_up: bool,
    /// How long to wait for it to catch up (or to answer at all) before giving up on the
    /// promotion; keelctl then exits 4: added as a learner, not promoted.
    #[arg(long, value_parser = parse_timeout, default_value = "10m")]
    pub catch_up_timeout: Duration,
}

#[derive(Debug, Subcommand)]
pub enum LeaderCommand {
    /// Hand leadership to another voter (--to ID, or the most up-to-date one). Clients see a
    /// short pause while the target takes over.
    Transfer {
        /// The voter to hand leadership to.
        #[arg(long)]
        to: Option<u64>,
    },
}

/// A humantime duration that is not zero: a zero deadline would fail every request unsent.
/// Not longer than [`MAX_TIMEOUT`] either: a deadline past the clock's range cannot be computed.
fn parse_timeout(raw: &str) -> Result<Duration, String> {
    match humantime::parse_duration(raw) {
        Ok(d) if d.is_zero() => Err("must be greater than zero".into()),
        Ok(d) if d > MAX_TIMEOUT => Err("must be at most 24h".into()),
        Ok(d) => Ok(d),
        Err(e) => Err(e.to_string()),
    }
}

/// The longest `--timeout` or `--catch-up-timeout` accepted.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(24 * 3600);

#[cfg(test)]
mod tests {
    use clap::error::ErrorKind;

    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("keelctl").chain(args.iter().copied()))
    }

    #[test]
    fn defaults_and_globals() {
        let cli = parse(&["get", "k"]).expect("parses");
        assert_eq!(cli.timeout, Duration::from_secs(5));
        assert_eq!(cli.output, Format::Table);
        // KEEL_ENDPOINTS could be set in the environment running the tests.
        if std::env::var_os("KEEL_ENDPOINTS").is_none() {
            assert_eq!(cli.endpoints, vec!["127.0.0.1:7001"]);
        }
        let cli = parse(&["get", "k", "-o", "json", "--timeout", "500ms", "--endpoints", "a:1,b:2"]).expect("parses");
        assert_eq!(cli.timeout, Duration::from_millis(500));
        assert_eq!(cli.output, Format::Json);
        assert_eq!(cli.endpoints, vec!["a:1", "b:2"]);
    }

    #[test]
    fn tls_flags_and_cert_verbs() {
        let cli = parse(&["get", "k", "--cacert", "ca.pem", "--cert", "c.pem", "--key", "k.pem"]).expect("parses");
        assert_eq!(cli.cacert, Some(PathBuf::from("ca.pem")));
        assert!(
            parse(&["get", "k", "--cert", "c.pem"]).is_err(),
            "a certificate needs its key"
        );
        let cli = parse(&[
            "cert",
            "issue",
            "--ca",
            "d",
            "--name",
            "n",
            "--san",
            "127.0.0.1,localhost",
            "--out",
            "o",
        ])
        .expect("parses");
        match cli.command {
            Command::Cert(CertCommand::Issue { san, client, .. }) => {
                assert_eq!(san, vec!["127.0.0.1", "localhost"]);
                assert!(!client);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn bad_flags_are_usage_errors() {
        for args in [
            &["get"][..],
            &["get", "k", "--bogus"],
            &["get", "k", "--limit", "-1"],
            &["get", "k", "--prefix", "--from-key"],
            &["get", "k", "--prefix", "--range-end", "z"],
            &["get", "k", "--keys-only", "--print-value-only"],
            &["get", "k", "-o", "xml"],
            &["put", "k"],
            &["--timeout", "soon", "status"],
            &["--timeout", "0s", "status"],
            &["--timeout", "500000000000y", "get", "k"],
            &["--timeout", "20000y", "put", "k", "v"],
            &[
                "member",
                "add",
                "4",
                "--peer-addr",
                "a:1",
                "--catch-up-timeout",
                "500000000000y",
            ],
            &["member"],
            &["frobnicate"],
        ] {
            let err = parse(args).expect_err(&format!("{args:?} parsed"));
            assert_eq!(err.exit_code(), 2, "{args:?}: {err}");
        }
    }

    #[test]
    fn cas_requires_exactly_one_expectation() {
        let err = parse(&["cas", "k", "new"]).expect_err("no expectation");
        assert_eq!(err.kind(), ErrorKind::MissingRequiredArgument);
        let err = parse(&["cas", "k", "new", "--expect-absent", "--expect-version", "2"]).expect_err("two");
        assert_eq!(err.kind(), ErrorKind::ArgumentConflict);
        let cli = parse(&["cas", "k", "new", "--expect-version", "2"]).expect("one");
        match cli.command {
            Command::Cas(cas) => {
                assert_eq!(cas.expect_version, Some(2));
                assert!(cas.expect_value.is_none() && !cas.expect_absent);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn get_flags_parse() {
        let cli = parse(&[
            "get",
            "a",
            "--range-end",
            "c",
            "--limit",
            "10",
            "--serializable",
            "--keys-only",
        ])
        .expect("parses");
        match cli.command {
            Command::Get(get) => {
                assert_eq!(get.range.range_end.as_deref(), Some("c"));
                assert_eq!(get.limit, 10);
                assert!(get.serializable && get.keys_only && !get.range.prefix);
            }
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_command_definition_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
