//! The client: requests, leader preference, and the retry loop.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use keel_proto::v1::{
    cluster_client::ClusterClient, kv_client::KvClient, request_op, DeleteRangeRequest, DeleteRangeResponse, KeyValue,
    LeaderTransferRequest, LeaderTransferResponse, MemberAddRequest, MemberAddResponse, MemberListRequest,
    MemberListResponse, MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse,
    PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusRequest, StatusResponse, TxnRequest,
    TxnResponse, WriteSession,
};
use keel_proto::wire::Outcome;
use tokio::time::Instant;
use tonic::metadata::MetadataMap;
use tonic::transport::Channel;
use tonic::{Response, Status};

use crate::endpoint::{self, Target};
use crate::retry::{Attempts, Backoff, Failure, Kind};
use crate::{ClientConfig, Error};

/// Response metadata key in which a server names the leader's client address.
pub const LEADER_METADATA_KEY: &str = keel_proto::wire::LEADER_HEADER;

/// A client for a keel cluster.
///
/// Cloning is cheap and clones share channels and what was learned about the leader, so one
/// client can serve many tasks. Each request runs until it succeeds, fails for good, or its
/// deadline ([`ClientConfig::timeout`]) passes; see the crate docs for what is retried.
#[derive(Debug, Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    config: ClientConfig,
    targets: Vec<Target>,
    /// Index into `targets` of the endpoint to try first: the leader when known, else the last
    /// endpoint that answered.
    preferred: AtomicUsize,
    /// Member id → index into `targets`, learned from member lists, so a header's `leader_id`
    /// can be followed.
    members: Mutex<HashMap<u64, usize>>,
    /// Channels to addresses outside the endpoint list (for [`Client::status_of`]).
    others: Mutex<HashMap<String, Channel>>,
    /// Idle write sessions, (client id, next seq). A session carries one request at a time, so
    /// concurrent writes through clones of this client each take their own.
    sessions: Mutex<Vec<(u64, u64)>>,
    /// The user to log in as ([`ClientConfig::user`]), and its token.
    login: Option<crate::auth::Login>,
}

/// Responses that carry a [`ResponseHeader`].
pub(crate) trait HasHeader {
    fn header(&self) -> Option<&ResponseHeader>;
}

/// A stream's header comes in its first message, not in the response itself.
impl<T> HasHeader for tonic::Streaming<T> {
    fn header(&self) -> Option<&ResponseHeader> {
        None
    }
}

macro_rules! has_header {
    ($($t:ty),*) => {$(
        impl HasHeader for $t {
            fn header(&self) -> Option<&ResponseHeader> {
                self.header.as_ref()
            }
        }
    )*};
}
has_header!(
    RangeResponse,
    PutResponse,
    DeleteRangeResponse,
    TxnResponse,
    MemberListResponse,
    StatusResponse,
    MemberAddResponse,
    MemberPromoteResponse,
    MemberRemoveResponse,
    LeaderTransferResponse,
    keel_proto::v1::LeaseGrantResponse,
    keel_proto::v1::LeaseRevokeResponse,
    keel_proto::v1::LeaseKeepAliveResponse,
    keel_proto::v1::LeaseTimeToLiveResponse,
    keel_proto::v1::LeaseLeasesResponse,
    keel_proto::v1::LockResponse,
    keel_proto::v1::UnlockResponse,
    keel_proto::v1::CampaignResponse,
    keel_proto::v1::ProclaimResponse,
    keel_proto::v1::LeaderResponse,
    keel_proto::v1::ResignResponse
);

impl Client {
    /// A client for the cluster reachable at `endpoints` ("host:port", or "http://host:port").
    ///
    /// Nothing is dialled yet: connections are made on first use and kept for the life of the
    /// client, so this only fails for an empty list or an unparsable address. It must be called
    /// within a tokio runtime.
    pub async fn connect(endpoints: Vec<String>, mut config: ClientConfig) -> Result<Client, Error> {
        // A deadline past the clock's range cannot be computed (or sent as a gRPC timeout).
        config.timeout = config.timeout.min(crate::config::MAX_TIMEOUT);
        let mut targets: Vec<Target> = Vec::with_capacity(endpoints.len());
        for raw in endpoints.iter().filter(|e| !e.trim().is_empty()) {
            let target = endpoint::target(raw, &config)?;
            // A repeated endpoint would only make rotation try the same server twice in a row.
            if !targets.iter().any(|t| t.authority == target.authority) {
                targets.push(target);
            }
        }
        if targets.is_empty() {
            return Err(Error::NoEndpoints);
        }
        let login = config
            .user
            .clone()
            .map(|(user, password)| crate::auth::Login::new(user, password));
        Ok(Client {
            inner: Arc::new(Inner {
                login,
                config,
                targets,
                preferred: AtomicUsize::new(0),
                members: Mutex::new(HashMap::new()),
                others: Mutex::new(HashMap::new()),
                sessions: Mutex::new(Vec::new()),
            }),
        })
    }

    /// A request carrying `body` and, when the client logs in, its token (for the streams that
    /// do not go through [`Client::call`]).
    pub(crate) async fn request<T>(&self, channel: &Channel, body: T) -> Result<tonic::Request<T>, Status> {
        let mut request = tonic::Request::new(body);
        if let Some(login) = &self.inner.login {
            login.authorize(channel, &mut request).await?;
        }
        Ok(request)
    }

    /// The endpoints this client uses, as `host:port`.
    pub fn endpoints(&self) -> Vec<String> {
        self.inner.targets.iter().map(|t| t.authority.clone()).collect()
    }

    /// The client's configuration.
    pub fn config(&self) -> &ClientConfig {
        &self.inner.config
    }

    /// Reads a key range. Linearizable unless `req.serializable` is set.
    pub async fn range(&self, req: RangeRequest) -> Result<RangeResponse, Error> {
        let limit = self.inner.config.max_response_bytes;
        self.call(
            Kind::Read,
            req,
            move |ch, r| async move { kv(ch, limit).range(r).await },
        )
        .await
    }

    /// Reads one key with a linearizable read; `None` when it does not exist.
    pub async fn get(&self, key: impl Into<Vec<u8>>) -> Result<Option<KeyValue>, Error> {
        let resp = self
            .range(RangeRequest {
                key: key.into(),
                ..RangeRequest::default()
            })
            .await?;
        Ok(resp.kvs.into_iter().next())
    }

    /// Writes one key.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<PutResponse, Error> {
        self.put_request(PutRequest {
            key: key.into(),
            value: value.into(),
            prev_kv: false,
            lease: 0,
            session: None,
        })
        .await
    }

    /// Writes one key, with every option of [`PutRequest`] (such as `prev_kv`).
    pub async fn put_request(&self, req: PutRequest) -> Result<PutResponse, Error> {
        let limit = self.inner.config.max_response_bytes;
        self.session_write(
            req,
            |r, s| r.session = s,
            move |ch, r| async move { kv(ch, limit).put(r).await },
        )
        .await
    }

    /// A write with a session from the pool (see [`ClientConfig::exactly_once`]): retried, with
    /// the same session, wherever its outcome is unknown.
    async fn session_write<Req, Resp, S, F, Fut>(&self, mut req: Req, set: S, send: F) -> Result<Resp, Error>
    where
        Req: Clone,
        Resp: HasHeader,
        S: Fn(&mut Req, Option<WriteSession>),
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        if !self.inner.config.exactly_once {
            return self.call(Kind::Write, req, send).await;
        }
        let (client_id, seq) = self.take_session();
        set(&mut req, Some(WriteSession { client_id, seq }));
        let result = self.call(Kind::Idempotent, req.clone(), &send).await;
        match result {
            // The cluster no longer knows this session (expired or evicted): nothing was applied.
            // Start a new one. (A retry whose first attempt applied just before the session was
            // evicted, among more than the cluster's max_sessions others, would apply again.)
            Err(Error::Session(Outcome::SessionExpired, _)) => {
                let (client_id, seq) = new_session();
                set(&mut req, Some(WriteSession { client_id, seq }));
                let result = self.call(Kind::Idempotent, req, &send).await;
                self.put_session(client_id, seq + 1);
                result
            }
            Err(Error::Session(Outcome::SessionResultDropped, m)) => {
                self.put_session(client_id, seq + 1);
                Err(Error::OutcomeUnknown(m))
            }
            other => {
                // Whether or not seq applied, seq + 1 is the next free number of this session.
                self.put_session(client_id, seq + 1);
                other
            }
        }
    }

    fn take_session(&self) -> (u64, u64) {
        let mut pool = self.inner.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        pool.pop().unwrap_or_else(new_session)
    }

    fn put_session(&self, client_id: u64, next_seq: u64) {
        let mut pool = self.inner.sessions.lock().unwrap_or_else(PoisonError::into_inner);
        pool.push((client_id, next_seq));
    }

    /// Deletes a key range.
    pub async fn delete_range(&self, req: DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        let limit = self.inner.config.max_response_bytes;
        self.session_write(
            req,
            |r, s| r.session = s,
            move |ch, r| async move { kv(ch, limit).delete_range(r).await },
        )
        .await
    }

    /// Runs a transaction. One whose branches only read is retried like a read.
    pub async fn txn(&self, req: TxnRequest) -> Result<TxnResponse, Error> {
        let read_only = req
            .success
            .iter()
            .chain(&req.failure)
            .all(|op| matches!(op.request, Some(request_op::Request::Range(_))));
        let limit = self.inner.config.max_response_bytes;
        let send = move |ch, r| async move { kv(ch, limit).txn(r).await };
        if read_only {
            return self.call(Kind::Read, req, send).await;
        }
        self.session_write(req, |r, s| r.session = s, send).await
    }

    /// The cluster's members. Also teaches the client which endpoint each member id is, so later
    /// responses' `leader_id` can route writes straight to the leader.
    pub async fn member_list(&self) -> Result<MemberListResponse, Error> {
        let resp = self
            .call(Kind::Read, MemberListRequest {}, |ch, r| async move {
                cluster(ch).member_list(r).await
            })
            .await?;
        let learned: HashMap<u64, usize> = resp
            .members
            .iter()
            .filter_map(|m| Some((m.id, self.index_of(&endpoint::authority_of(&m.client_addr)?)?)))
            .collect();
        *self.inner.members.lock().unwrap_or_else(PoisonError::into_inner) = learned;
        Ok(resp)
    }

    /// The status of whichever member answers first.
    /// Add a learner (see `MemberAddRequest`). Retried only where it surely did not apply.
    pub async fn member_add(&self, req: MemberAddRequest) -> Result<MemberAddResponse, Error> {
        self.call(Kind::Write, req, |ch, r| async move { cluster(ch).member_add(r).await })
            .await
    }

    /// Make a caught-up learner a voter.
    pub async fn member_promote(&self, id: u64) -> Result<MemberPromoteResponse, Error> {
        self.call(Kind::Write, MemberPromoteRequest { id }, |ch, r| async move {
            cluster(ch).member_promote(r).await
        })
        .await
    }

    /// Remove a member; `force` skips the check that a majority of the remaining voters is
    /// reachable.
    pub async fn member_remove(&self, id: u64, force: bool) -> Result<MemberRemoveResponse, Error> {
        self.call(Kind::Write, MemberRemoveRequest { id, force }, |ch, r| async move {
            cluster(ch).member_remove(r).await
        })
        .await
    }

    /// Hand leadership to `to` (None: the most up-to-date other voter).
    pub async fn leader_transfer(&self, to: Option<u64>) -> Result<LeaderTransferResponse, Error> {
        let req = LeaderTransferRequest { to: to.unwrap_or(0) };
        self.call(
            Kind::Write,
            req,
            |ch, r| async move { cluster(ch).leader_transfer(r).await },
        )
        .await
    }

    /// A point-in-time snapshot of the whole store, streamed from the leader (a backup). The
    /// request is sent to the leader (following leader hints) and retried until it starts
    /// streaming; the stream's messages carry the file's bytes in order, the first one also its
    /// total size.
    pub async fn snapshot(&self) -> Result<tonic::Streaming<keel_proto::v1::SnapshotResponse>, Error> {
        self.call(Kind::Read, keel_proto::v1::SnapshotRequest {}, |ch, r| async move {
            keel_proto::v1::maintenance_client::MaintenanceClient::new(ch)
                .max_decoding_message_size(usize::MAX)
                .snapshot(r)
                .await
        })
        .await
    }

    pub async fn status(&self) -> Result<StatusResponse, Error> {
        self.call(Kind::Read, StatusRequest {}, |ch, r| async move {
            cluster(ch).status(r).await
        })
        .await
    }

    /// The status of the member at `endpoint` (which need not be in the endpoint list). One
    /// attempt, no retries: a caller polling every member wants a dead one reported at once.
    pub async fn status_of(&self, endpoint: &str) -> Result<StatusResponse, Error> {
        let channel = self.channel_for(endpoint)?;
        let timeout = self.inner.config.timeout;
        let status = async {
            let mut request = self.request(&channel, StatusRequest {}).await?;
            request.set_timeout(timeout);
            cluster(channel.clone()).status(request).await
        };
        match tokio::time::timeout(timeout, status).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => Err(match Failure::from_status(status) {
                Failure::NotSent(message) => Error::Unavailable(format!("cannot reach {endpoint}: {message}")),
                failure => failure.final_error(Kind::Read),
            }),
            Err(_) => Err(Error::DeadlineExceeded),
        }
    }

    /// Every endpoint's address and channel, the preferred one (the leader, when known) first.
    pub(crate) fn channels(&self) -> Vec<(String, Channel)> {
        let inner = &self.inner;
        let first = inner.preferred.load(Ordering::Relaxed);
        (0..inner.targets.len())
            .map(|i| &inner.targets[(first + i) % inner.targets.len()])
            .map(|t| (t.authority.clone(), t.channel.clone()))
            .collect()
    }

    fn channel_for(&self, raw: &str) -> Result<Channel, Error> {
        let (_, authority) = endpoint::parse(raw, self.inner.config.tls.is_some())?;
        if let Some(index) = self.index_of(&authority) {
            return Ok(self.inner.targets[index].channel.clone());
        }
        let mut others = self.inner.others.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(channel) = others.get(&authority) {
            return Ok(channel.clone());
        }
        let target = endpoint::target(raw, &self.inner.config)?;
        others.insert(authority, target.channel.clone());
        Ok(target.channel)
    }

    fn index_of(&self, authority: &str) -> Option<usize> {
        self.inner.targets.iter().position(|t| t.authority == authority)
    }

    /// The endpoint a server named as leader, from the `keel-leader` metadata or, failing that,
    /// from the header's `leader_id` and a member list seen earlier.
    fn leader_hint(&self, metadata: &MetadataMap, header: Option<&ResponseHeader>) -> Option<usize> {
        let from_metadata = metadata
            .get(LEADER_METADATA_KEY)
            .and_then(|v| v.to_str().ok())
            .and_then(endpoint::authority_of)
            .and_then(|authority| self.index_of(&authority));
        from_metadata.or_else(|| {
            let leader = header?.leader_id;
            let members = self.inner.members.lock().unwrap_or_else(PoisonError::into_inner);
            members.get(&leader).copied()
        })
    }

    /// Sends `req` until it succeeds, fails in a way that must not be retried, or the deadline
    /// passes.
    ///
    /// Within one round every endpoint is tried at most once, without pausing, starting with the
    /// preferred one and following leader hints; between rounds the loop backs off.
    pub(crate) async fn call<Req, Resp, F, Fut>(&self, kind: Kind, req: Req, send: F) -> Result<Resp, Error>
    where
        Req: Clone,
        Resp: HasHeader,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        self.call_for(kind, self.inner.config.timeout, req, send).await
    }

    /// [`Client::call`] with a deadline of its own (a lock may be waited for longer than any
    /// other request takes).
    pub(crate) async fn call_for<Req, Resp, F, Fut>(
        &self,
        kind: Kind,
        timeout: Duration,
        req: Req,
        send: F,
    ) -> Result<Resp, Error>
    where
        Req: Clone,
        Resp: HasHeader,
        F: Fn(Channel, tonic::Request<Req>) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let inner = &*self.inner;
        let n = inner.targets.len();
        let timeout = timeout.min(crate::config::MAX_TIMEOUT);
        let deadline = Instant::now() + timeout;
        let mut backoff = Backoff::new(inner.config.backoff_initial, inner.config.backoff_max);
        let mut attempts = Attempts::new(n);
        let mut index = inner.preferred.load(Ordering::Relaxed) % n;
        // A member that does not know the client's token is answered by logging in again, once.
        let mut logged_in_again = false;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(attempts.give_up(kind));
            }
            let attempt_timeout = attempt_timeout(kind, n, remaining, timeout);
            let mut request = tonic::Request::new(req.clone());
            request.set_timeout(attempt_timeout);
            let target = &inner.targets[index];
            attempts.tried_this_round[index] = true;
            // Fails with the status and, when the member refused the credential sent, that
            // credential (`Some(None)`: none was sent).
            let attempt = async {
                let sent = match &inner.login {
                    Some(login) => Some(
                        login
                            .authorize(&target.channel, &mut request)
                            .await
                            .map_err(|status| (status, None))?,
                    ),
                    None => None,
                };
                send(target.channel.clone(), request).await.map_err(|status| {
                    let refused = sent.filter(|token| match token {
                        Some(_) => crate::auth::is_invalid_token(&status),
                        None => crate::auth::is_missing_user(&status),
                    });
                    (status, refused)
                })
            };
            let failure = match tokio::time::timeout(attempt_timeout, attempt).await {
                Ok(Ok(resp)) => {
                    let leader = self.leader_hint(resp.metadata(), resp.get_ref().header());
                    inner.preferred.store(leader.unwrap_or(index), Ordering::Relaxed);
                    return Ok(resp.into_inner());
                }
                Ok(Err((_, Some(stale)))) if !logged_in_again => {
                    if let Some(login) = &inner.login {
                        login.forget(stale.as_deref()).await;
                    }
                    logged_in_again = true;
                    attempts.tried_this_round[index] = false;
                    continue;
                }
                Ok(Err((status, _))) => match Failure::from_status(status) {
                    // tonic's own wording ("Timeout expired: transport error") names neither the
                    // server nor the time.
                    Failure::Lost { timed_out: true, .. } => no_answer(&target.authority, attempt_timeout),
                    Failure::Lost { message, timed_out } => Failure::Lost {
                        message: format!("{}: {message}", target.authority),
                        timed_out,
                    },
                    failure => failure,
                },
                Err(_) => no_answer(&target.authority, attempt_timeout),
            };
            if !failure.is_retryable(kind) {
                return Err(failure.final_error(kind));
            }
            tracing::debug!(endpoint = %target.authority, ?failure, "keel request failed; retrying");
            let hint = match &failure {
                Failure::Answered(status) => self.leader_hint(status.metadata(), None),
                _ => None,
            };
            attempts.record(index, &target.authority, failure);

            // A hint naming the endpoint that just failed, or one that failed this round, is stale.
            let next = hint
                .filter(|&h| h != index && !attempts.tried_this_round[h])
                .or_else(|| (1..n).map(|k| (index + k) % n).find(|&i| !attempts.tried_this_round[i]));
            let next = match next {
                Some(next) => next,
                None => {
                    let pause = backoff.pause().min(deadline.saturating_duration_since(Instant::now()));
                    tokio::time::sleep(pause).await;
                    attempts.tried_this_round.fill(false);
                    hint.filter(|&h| h != index).unwrap_or((index + 1) % n)
                }
            };
            // Move other requests off a failing endpoint too, unless one has since learned better.
            let _ = inner
                .preferred
                .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
            index = next;
        }
    }
}

/// How long one attempt may take. Reads get a share of the deadline when there are other
/// endpoints to try, so a frozen server (SIGSTOP, a partition) cannot use up the whole deadline;
/// writes get all of it, because a write that times out is not retried anyway.
fn attempt_timeout(kind: Kind, endpoints: usize, remaining: Duration, timeout: Duration) -> Duration {
    if kind == Kind::Read && endpoints > 1 {
        remaining.min((timeout / 3).max(Duration::from_millis(500)))
    } else {
        remaining
    }
}

fn no_answer(authority: &str, waited: Duration) -> Failure {
    Failure::Lost {
        message: format!("no answer from {authority} within {}ms", waited.as_millis()),
        timed_out: true,
    }
}

fn kv(channel: Channel, max_response_bytes: usize) -> KvClient<Channel> {
    KvClient::new(channel).max_decoding_message_size(max_response_bytes)
}

fn cluster(channel: Channel) -> ClusterClient<Channel> {
    ClusterClient::new(channel)
}

/// A new session: a random client id (64 bits, so two clients never meet) at seq 1.
fn new_session() -> (u64, u64) {
    (rand::random::<u64>() | 1, 1)
}
