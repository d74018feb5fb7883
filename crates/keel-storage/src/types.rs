//! The types that cross the Raft boundary: what is proposed, what comes back, and who the members
//! are.
//!
//! Everything that reaches the log is a [`Request`]: one union of every internal command, in the
//! spirit of etcd's `InternalRaftRequest`. New commands are added as new enum variants *at the end*
//! (postcard encodes a variant by its index, so old log entries keep decoding), never by changing an
//! existing variant.

use std::fmt;

use serde::{Deserialize, Serialize};

pub use keel_datadir::{KeyValue, Member, NodeId};

openraft::declare_raft_types!(
    /// The openraft type configuration of keel.
    pub TypeConfig:
        D = Request,
        R = Response,
        NodeId = NodeId,
        Node = Member,
        AsyncRuntime = openraft_rt_tokio::TokioRuntime,
);

/// Shorthands for the openraft types instantiated with [`TypeConfig`].
///
/// The leader id is openraft's "advanced" one (a term and the node that leads it), the same that
/// openraft 0.9 used, so votes and log ids written by keel before the 0.10 port decode unchanged.
pub type LeaderId = openraft::impls::leader_id_adv::LeaderId<u64, NodeId>;
pub type LogId = openraft::LogId<LeaderId>;
pub type Vote = openraft::impls::Vote<LeaderId>;
pub type EntryPayload = openraft::EntryPayload<Request, NodeId, Member>;
pub type Entry = openraft::Entry<LeaderId, EntryPayload>;
pub type Membership = openraft::Membership<NodeId, Member>;
pub type StoredMembership = openraft::StoredMembership<LeaderId, NodeId, Member>;
pub type SnapshotMeta = openraft::SnapshotMeta<LeaderId, NodeId, Member>;
pub type StorageError = openraft::StorageError<TypeConfig>;

/// The log id of entry `index` written by `node_id` as leader of `term`.
pub fn log_id_at(term: u64, node_id: NodeId, index: u64) -> LogId {
    LogId::new(LeaderId { term, node_id }, index)
}

/// The one thing proposed to Raft.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Client session for exactly-once retries: the state machine remembers the newest result per
    /// client and answers a repeated `(client_id, seq)` from memory instead of executing it again
    /// (see `sm::sessions` for the rules). `None` for plain writes.
    pub session: Option<SessionRef>,
    pub command: Command,
}

impl Request {
    /// A request without a client session.
    pub fn new(command: Command) -> Self {
        Request { session: None, command }
    }
}

/// Log lines name a request by its command kind and its session, never by its keys and values
/// (openraft requires `Display` of what it replicates).
impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (user, command) = self.command.unwrap_user();
        if let Command::Batch(b) = command {
            return write!(f, "batch of {}", b.len());
        }
        f.write_str(command.kind())?;
        if user.is_some() {
            f.write_str(" as a user")?;
        }
        match self.session {
            Some(s) => write!(f, " (session {}:{})", s.client_id, s.seq),
            None => Ok(()),
        }
    }
}

/// Identifies one write of one client session.
///
/// A client picks a random `client_id` and numbers its writes 1, 2, 3, …; a retry of a write whose
/// outcome is unknown carries the same `seq`. The first write of a session must have `seq` 1: a
/// request for a client the state machine has no session for is executed only if its `seq` is 1,
/// otherwise it is answered with [`CommandResult::SessionExpired`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRef {
    pub client_id: u64,
    /// Sequence number of the write within the session, starting at 1.
    pub seq: u64,
}

/// The write commands of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put(PutOp),
    Delete(DeleteOp),
    Txn(Txn),
    /// Several client requests in one log entry, applied one after the other as if each were
    /// its own entry: each takes its own revision, sees the effects of the ones before it, and
    /// is decided against its own session. Only the leader's proposer builds batches (to share
    /// one log append and one fsync among concurrent writes); clients cannot send one. The whole
    /// entry is applied in one atomic sled batch, like any other. A batch never holds another:
    /// one inside a batch is a decode error (see `flat` in this module).
    Batch(#[serde(deserialize_with = "flat::requests")] Vec<Request>),
    /// A put that attaches its key to a lease (see `sm::leases`).
    LeasedPut(LeasedPut),
    LeaseGrant(LeaseGrant),
    LeaseRevoke(LeaseRef),
    /// A keep-alive: the lease's remaining time is its whole TTL again.
    LeaseRenew(LeaseRef),
    /// The leader's record of leases' remaining times, so a restarted member does not grant
    /// them a whole TTL again.
    LeaseCheckpoint(Vec<LeaseCheckpoint>),
    /// The leader found the lease's time up: revoke it, unless it was renewed or checkpointed
    /// after the state the leader decided on (its `epoch` moved).
    LeaseExpire(LeaseExpire),
    /// etcd's Compact: raise the history floor to this revision. Every member then compacts its
    /// history up to at least the floor, in the usual bounded steps per apply (see `sm`, "The
    /// history floor"). Answered with [`CommandResult::None`], or [`CommandResult::Compacted`] /
    /// [`CommandResult::FutureRevision`] without effect.
    Compact(u64),
    /// A put with etcd's options (`ignore_value`, `ignore_lease`, a lease): see [`PutWith`].
    PutWith(PutWith),
    /// A change of users, roles, permissions or tokens (see [`crate::auth`]). Answered with
    /// [`CommandResult::None`], or [`CommandResult::AuthRefused`] without effect.
    Auth(crate::auth::AuthCommand),
    /// A client's command with the user its member authenticated: while auth is enabled, the
    /// command is applied only if the user may do it then (see [`crate::auth::check`]), else it is
    /// answered with [`CommandResult::AuthRefused`]. Never inside another `AsUser` and never
    /// around a batch: either fails to decode (see `flat`).
    AsUser(AsUser),
}

impl Command {
    /// The name of the command for log lines.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Put(_) | Command::PutWith(_) => "put",
            Command::Delete(_) => "delete",
            Command::Txn(_) => "txn",
            Command::Batch(_) => "batch",
            Command::LeasedPut(_) => "put with lease",
            Command::LeaseGrant(_) => "lease grant",
            Command::LeaseRevoke(_) => "lease revoke",
            Command::LeaseRenew(_) => "lease renew",
            Command::LeaseCheckpoint(_) => "lease checkpoint",
            Command::LeaseExpire(_) => "lease expiry",
            Command::Compact(_) => "compact",
            Command::Auth(a) => a.kind(),
            Command::AsUser(_) => "as user",
        }
    }

    /// The command as the user `user` asks it (see [`Command::AsUser`]), authenticated other
    /// than by a token (a client certificate).
    pub fn as_user(self, user: impl Into<String>) -> Command {
        self.as_user_with(user, None)
    }

    /// The command as the user `user` asks it, with the hash of the token the user presented.
    pub fn as_user_with(self, user: impl Into<String>, token: Option<[u8; 32]>) -> Command {
        Command::AsUser(AsUser {
            user: user.into(),
            token,
            command: Box::new(self),
        })
    }

    /// The command without its user, and the user.
    pub fn unwrap_user(&self) -> (Option<&str>, &Command) {
        match self {
            Command::AsUser(a) => (Some(&a.user), &a.command),
            other => (None, other),
        }
    }

    /// The hash of the token its user presented, if any.
    pub fn user_token(&self) -> Option<&[u8; 32]> {
        match self {
            Command::AsUser(a) => a.token.as_ref(),
            _ => None,
        }
    }
}

/// See [`Command::AsUser`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AsUser {
    pub user: String,
    /// The SHA-256 of the token the user presented: the command is refused if the token is no
    /// longer in the token table when it is applied (its user was deleted or changed its
    /// password meanwhile). `None`: authenticated otherwise (a client certificate).
    pub token: Option<[u8; 32]>,
    #[serde(deserialize_with = "flat::user_command")]
    pub command: Box<Command>,
}

/// A lease id: positive, at most `i64::MAX` (etcd's lease ids are signed).
pub type LeaseId = u64;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeasedPut {
    pub put: PutOp,
    pub lease: LeaseId,
}

/// etcd's PutRequest whole. A put that keeps the key's current value (`ignore_value`, with an
/// empty `put.value`) or its current lease (`ignore_lease`, with `lease` 0) needs the key to
/// exist: otherwise [`CommandResult::KeyNotFound`] and nothing is applied, in a txn too. Without
/// `ignore_lease`, the key is attached to `lease` (0: detached), which must exist, as for
/// [`Command::LeasedPut`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutWith {
    pub put: PutOp,
    pub lease: LeaseId,
    pub ignore_value: bool,
    pub ignore_lease: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseGrant {
    /// Chosen by the member that proposes the grant; a grant of an id in use is refused.
    pub id: LeaseId,
    pub ttl_ms: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseRef {
    pub id: LeaseId,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseCheckpoint {
    pub id: LeaseId,
    pub remaining_ms: u64,
    /// The lease's epoch in the table the leader computed `remaining_ms` from: a renewal
    /// applied since (a newer epoch) makes this point stale, and it is skipped.
    pub epoch: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseExpire {
    pub id: LeaseId,
    /// The lease's epoch the leader saw when it found the time up.
    pub epoch: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutOp {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// Return the previous key-value pair, if any.
    pub prev_kv: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteOp {
    pub range: KeyRange,
    /// Return the deleted key-value pairs.
    pub prev_kv: bool,
}

/// A read: used inside a [`Txn`] and by the read API of the state machine.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeOp {
    pub range: KeyRange,
    /// At most this many pairs are returned; 0 means no limit.
    pub limit: u64,
    /// Return keys and metadata, but empty values.
    pub keys_only: bool,
    /// Return only the count.
    pub count_only: bool,
}

impl RangeOp {
    /// A plain read of `range` with no limit.
    pub fn new(range: KeyRange) -> Self {
        RangeOp {
            range,
            limit: 0,
            keys_only: false,
            count_only: false,
        }
    }
}

/// A set of keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum KeyRange {
    /// Exactly one key.
    Key(#[serde(with = "serde_bytes")] Vec<u8>),
    /// Every key that starts with these bytes (an empty prefix is every key).
    Prefix(#[serde(with = "serde_bytes")] Vec<u8>),
    /// `[start, end)`.
    Between {
        #[serde(with = "serde_bytes")]
        start: Vec<u8>,
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
    },
    /// Every key `>= start`.
    From(#[serde(with = "serde_bytes")] Vec<u8>),
}

impl KeyRange {
    /// Does `key` lie in this range?
    pub fn contains(&self, key: &[u8]) -> bool {
        match self {
            KeyRange::Key(k) => key == k.as_slice(),
            KeyRange::Prefix(p) => key.starts_with(p),
            KeyRange::Between { start, end } => key >= start.as_slice() && key < end.as_slice(),
            KeyRange::From(start) => key >= start.as_slice(),
        }
    }
}

/// Compare-and-swap generalised: if every compare holds, `success` runs, else `failure`. Applied
/// atomically as one revision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub compares: Vec<Compare>,
    pub success: Vec<TxnOp>,
    pub failure: Vec<TxnOp>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compare {
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    pub op: CompareOp,
    pub target: CompareTarget,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    Equal,
    NotEqual,
    Less,
    Greater,
}

/// What a [`Compare`] looks at, and the operand. A missing key has version, create revision,
/// mod revision and lease 0; a value compare on a missing key is always false (as in etcd).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareTarget {
    Value(#[serde(with = "serde_bytes")] Vec<u8>),
    Version(u64),
    CreateRevision(u64),
    ModRevision(u64),
    /// The lease the key is attached to; 0 for a key without one, and for a missing key.
    Lease(LeaseId),
    /// etcd's `Compare.range_end`: `target` must hold for every live key in `[key, end)`, or
    /// every key `>= key` when `end` is empty (etcd's `"\0"`). A range with no live key
    /// compares as one missing key (etcd's rule): a value compare fails, the others compare 0.
    /// An `end` at or below `key` is such an empty range. `target` is never itself a `Range`: one
    /// inside another fails to decode (see `nest`).
    ///
    /// A wrapper variant rather than a field because [`Compare`], a postcard struct, cannot gain
    /// one without breaking the compares of old log entries.
    Range {
        #[serde(with = "serde_bytes")]
        end: Vec<u8>,
        #[serde(deserialize_with = "nest::flat_target")]
        target: Box<CompareTarget>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum TxnOp {
    Put(PutOp),
    Delete(DeleteOp),
    Range(RangeOp),
    LeasedPut(LeasedPut),
    /// etcd's nested txn: decided with the outer txn's compares, against the state before the
    /// outer txn, and written at its one revision (see `sm::txn`). At most [`MAX_TXN_NESTING`]
    /// levels deep; deeper fails to decode.
    Txn(#[serde(deserialize_with = "nest::txn")] Txn),
    PutWith(PutWith),
}

/// Txns nested in a txn, at most, on any path (the outer txn is not counted).
pub const MAX_TXN_NESTING: u32 = 32;

/// The outcome of applying one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// The store revision after the entry was applied.
    pub revision: u64,
    pub result: CommandResult,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    None,
    Put(PutResult),
    Delete(DeleteResult),
    Txn(TxnResult),
    /// The request's session has already moved past `seq`, or `seq` is the session's newest write
    /// but its response was too large to remember. Nothing was executed now; the response's
    /// revision is the current one. `last_seq` is the newest sequence number the session executed,
    /// so `last_seq == seq` means that this very write was applied, exactly once, earlier; with
    /// `last_seq > seq` a later write of the session was applied. (Server: FailedPrecondition.)
    StaleSession {
        client_id: u64,
        seq: u64,
        last_seq: u64,
    },
    /// There is no session for `client_id` and `seq` is not 1: the session expired (or was evicted)
    /// or never existed. Nothing was executed now. If this answers a retry, the earlier attempt may
    /// or may not have been applied; the client must start a new session (a new client id, seq 1)
    /// for further writes. (Server: FailedPrecondition.)
    SessionExpired {
        client_id: u64,
        seq: u64,
    },
    /// The responses of a [`Command::Batch`], one per request, in order. The batch's own
    /// `Response::revision` is the revision after its last request.
    Batch(#[serde(deserialize_with = "flat::responses")] Vec<Response>),
    /// The command names a lease that does not exist (never granted, revoked or expired). Nothing
    /// was executed. (Server: NotFound.)
    LeaseNotFound {
        id: LeaseId,
    },
    /// A grant of an id that is in use. Nothing was executed. (Server: AlreadyExists.)
    LeaseExists {
        id: LeaseId,
    },
    /// What a lease command did.
    Lease(LeaseResult),
    /// A compaction to a revision at or below the history floor: nothing was done. `compacted`
    /// is the floor. (etcd: "required revision has been compacted"; Server: OutOfRange.)
    Compacted {
        compacted: u64,
    },
    /// A compaction to a revision above the current one: nothing was done. (etcd: "required
    /// revision is a future revision"; Server: OutOfRange.)
    FutureRevision {
        current: u64,
    },
    /// A put that keeps the current value or lease of `key`, which does not exist (before the
    /// txn, for a put in a txn's taken path). Nothing was executed. (etcd: "key not found";
    /// Server: InvalidArgument.)
    KeyNotFound {
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// An auth command that etcd's rules refuse, or a command its user may not do (see
    /// [`crate::auth`]). Nothing was executed. (Server: etcd's code for the error.)
    AuthRefused(crate::auth::AuthError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LeaseResult {
    Granted {
        id: LeaseId,
        ttl_ms: u64,
    },
    /// Revoked (or expired): the lease is gone and its keys were deleted at the response's revision.
    Revoked {
        id: LeaseId,
        deleted: u64,
    },
    Renewed {
        id: LeaseId,
        ttl_ms: u64,
    },
    Checkpointed,
    /// An expiry that did not apply: the lease was renewed or checkpointed meanwhile, or is gone.
    NotExpired {
        id: LeaseId,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PutResult {
    pub prev_kv: Option<KeyValue>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeleteResult {
    pub deleted: u64,
    pub prev_kvs: Vec<KeyValue>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeResult {
    pub kvs: Vec<KeyValue>,
    /// Number of keys in the range (not limited by `limit`).
    pub count: u64,
    /// More keys matched than were returned.
    pub more: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnResult {
    pub succeeded: bool,
    pub responses: Vec<OpResult>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    Put(PutResult),
    Delete(DeleteResult),
    Range(RangeResult),
    Txn(#[serde(deserialize_with = "nest::txn_result")] TxnResult),
}

/// Batches are flat: decoding a batch inside a batch fails at once. `Command::Batch` holds
/// requests, which hold commands, so without this a message nested a million levels deep (three
/// bytes a level) would recurse through the decoder until the stack overflowed and the process
/// aborted; such messages can come from the peer port and from snapshot files.
mod flat {
    use std::cell::Cell;

    use serde::{Deserialize, Deserializer};

    thread_local! {
        /// Batches being decoded on this thread, one inside the other.
        static DEPTH: Cell<u32> = const { Cell::new(0) };
    }

    struct Level;

    impl Level {
        fn enter<E: serde::de::Error>() -> Result<Level, E> {
            if DEPTH.get() > 0 {
                return Err(E::custom("a batch inside a batch"));
            }
            DEPTH.set(DEPTH.get() + 1);
            Ok(Level)
        }
    }

    impl Drop for Level {
        fn drop(&mut self) {
            DEPTH.set(DEPTH.get() - 1);
        }
    }

    pub fn requests<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<super::Request>, D::Error> {
        let _level = Level::enter()?;
        Vec::deserialize(d)
    }

    pub fn responses<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<super::Response>, D::Error> {
        let _level = Level::enter()?;
        Vec::deserialize(d)
    }

    thread_local! {
        /// An `AsUser` command is being decoded on this thread.
        static IN_USER: Cell<bool> = const { Cell::new(false) };
    }

    struct UserLevel;

    impl Drop for UserLevel {
        fn drop(&mut self) {
            IN_USER.set(false);
        }
    }

    /// The command inside `AsUser`: never another `AsUser` (refused before it is decoded, so
    /// nesting cannot recurse) and never a batch.
    pub fn user_command<'de, D: Deserializer<'de>>(d: D) -> Result<Box<super::Command>, D::Error> {
        if IN_USER.get() {
            return Err(serde::de::Error::custom("a user's command inside another"));
        }
        IN_USER.set(true);
        let _level = UserLevel;
        let command = Box::<super::Command>::deserialize(d)?;
        if matches!(*command, super::Command::Batch(_)) {
            return Err(serde::de::Error::custom("a batch inside a user's command"));
        }
        Ok(command)
    }
}

/// Nested txns are bounded: `TxnOp::Txn` holds a txn, which holds ops, so without a bound a
/// hostile message nested a million levels deep (a few bytes a level) would recurse through the
/// decoder until the stack overflowed, as for batches (`flat`). Decoding counts the levels on this
/// thread and fails past [`MAX_TXN_NESTING`]; a range compare inside a range compare fails at
/// once (it has no meaning, and `CompareTarget::Range` holds a `CompareTarget`).
mod nest {
    use std::cell::Cell;

    use serde::{Deserialize, Deserializer};

    thread_local! {
        /// Nested txns (or their results) being decoded on this thread, one inside the other.
        static TXNS: Cell<u32> = const { Cell::new(0) };
        /// A range compare is being decoded on this thread.
        static IN_RANGE: Cell<bool> = const { Cell::new(false) };
    }

    struct TxnLevel;

    impl TxnLevel {
        fn enter<E: serde::de::Error>() -> Result<TxnLevel, E> {
            if TXNS.get() >= super::MAX_TXN_NESTING {
                return Err(E::custom("txns nested too deep"));
            }
            TXNS.set(TXNS.get() + 1);
            Ok(TxnLevel)
        }
    }

    impl Drop for TxnLevel {
        fn drop(&mut self) {
            TXNS.set(TXNS.get() - 1);
        }
    }

    pub fn txn<'de, D: Deserializer<'de>>(d: D) -> Result<super::Txn, D::Error> {
        let _level = TxnLevel::enter()?;
        super::Txn::deserialize(d)
    }

    pub fn txn_result<'de, D: Deserializer<'de>>(d: D) -> Result<super::TxnResult, D::Error> {
        let _level = TxnLevel::enter()?;
        super::TxnResult::deserialize(d)
    }

    struct RangeLevel;

    impl Drop for RangeLevel {
        fn drop(&mut self) {
            IN_RANGE.set(false);
        }
    }

    pub fn flat_target<'de, D: Deserializer<'de>>(d: D) -> Result<Box<super::CompareTarget>, D::Error> {
        if IN_RANGE.get() {
            return Err(serde::de::Error::custom("a range compare inside a range compare"));
        }
        IN_RANGE.set(true);
        let _level = RangeLevel;
        Box::<super::CompareTarget>::deserialize(d)
    }
}
