//! Leases: grant, revoke, look at, and keep alive.
//!
//! A lease lives while its holder keeps it alive; the keys put with it are deleted, in one
//! revision, when it expires or is revoked. [`KeepAlive`] renews one lease from a task of its
//! own, moving to another member whenever the one it talks to stops answering.
//!
//! # The holder's deadline
//! The cluster renews a lease when it applies a keep-alive, which is after the client sent it.
//! So the lease surely lives until the instant the last acknowledged keep-alive was *sent*, plus
//! the TTL its acknowledgement carried ([`LeaseState::Alive`]'s `deadline`). A holder acting on
//! the lease (as the owner of a lock, say) must stop before that instant unless a newer
//! acknowledgement moves it. Once it passes with no acknowledgement, [`KeepAlive`] reports the
//! lease [`LeaseState::Lost`] and stops: the cluster may still hold it for a little longer, but
//! the holder can no longer count on it.
//!
//! # Retries
//! A grant without an id gets one drawn by the client, so the grant can be retried wherever its
//! outcome is unknown: if an earlier attempt applied, the retry meets the id in use and the
//! client knows the grant is its own. Revoking is retried the same way; a revoke that meets no
//! lease fails with [`Error::NotFound`], whether it was never there or an earlier attempt
//! removed it.

use std::time::Duration;

use keel_proto::v1::lease_client::LeaseClient;
use keel_proto::v1::{
    LeaseGrantRequest, LeaseGrantResponse, LeaseKeepAliveRequest, LeaseKeepAliveResponse, LeaseLeasesRequest,
    LeaseLeasesResponse, LeaseRevokeRequest, LeaseRevokeResponse, LeaseTimeToLiveRequest, LeaseTimeToLiveResponse,
};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

use crate::retry::{Backoff, Kind};
use crate::{Client, Error};

/// Where a kept-alive lease stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LeaseState {
    /// No keep-alive has been acknowledged yet.
    Starting,
    /// Acknowledged: the lease lives at least until `deadline`. `ttl` is its granted TTL.
    Alive { ttl: Duration, deadline: Instant },
    /// The cluster answered that the lease does not exist: it expired or was revoked.
    Gone,
    /// No acknowledgement came before the deadline (or, before the first one, within the
    /// client's timeout): count the lease as expired. The text says what went wrong last.
    Lost(String),
}

impl LeaseState {
    /// Is the lease known to live now?
    pub fn is_alive(&self) -> bool {
        matches!(self, LeaseState::Alive { deadline, .. } if Instant::now() < *deadline)
    }
}

/// Keeps one lease alive until dropped (or until the lease is gone or lost); see the module docs.
pub struct KeepAlive {
    id: i64,
    state: watch::Receiver<LeaseState>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for KeepAlive {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl KeepAlive {
    /// The lease kept alive.
    pub fn id(&self) -> i64 {
        self.id
    }

    /// Where the lease stands now.
    pub fn state(&self) -> LeaseState {
        self.state.borrow().clone()
    }

    /// Waits for the first acknowledgement; fails if the lease is gone or lost first.
    pub async fn started(&mut self) -> Result<(Duration, Instant), Error> {
        loop {
            match self.state() {
                LeaseState::Alive { ttl, deadline } => return Ok((ttl, deadline)),
                LeaseState::Gone => return Err(Error::NotFound(format!("lease {} not found", self.id))),
                LeaseState::Lost(why) => return Err(Error::Unavailable(why)),
                LeaseState::Starting => {}
            }
            if self.state.changed().await.is_err() {
                return Err(Error::Unavailable("the keep-alive task ended".into()));
            }
        }
    }

    /// Waits until the lease is gone or lost, and says which.
    pub async fn ended(&mut self) -> LeaseState {
        loop {
            let state = self.state();
            if matches!(state, LeaseState::Gone | LeaseState::Lost(_)) {
                return state;
            }
            if self.state.changed().await.is_err() {
                return self.state();
            }
        }
    }

    /// Waits for the next change of state.
    pub async fn changed(&mut self) -> LeaseState {
        let _ = self.state.changed().await;
        self.state()
    }
}

impl Client {
    /// Grant a lease of `ttl` seconds (the cluster may raise it to its minimum); see
    /// [`Client::lease_grant_request`].
    pub async fn lease_grant(&self, ttl: i64) -> Result<LeaseGrantResponse, Error> {
        self.lease_grant_request(LeaseGrantRequest { ttl, id: 0 }).await
    }

    /// Grant a lease. With `id` 0 the client draws one (see the module docs on retries); a
    /// chosen id already in use fails with [`Error::AlreadyExists`].
    pub async fn lease_grant_request(&self, mut req: LeaseGrantRequest) -> Result<LeaseGrantResponse, Error> {
        let drawn = req.id == 0;
        if drawn {
            req.id = (rand::random::<u64>() >> 1).max(1) as i64;
        }
        let id = req.id;
        let kind = if drawn { Kind::Idempotent } else { Kind::Write };
        let result = self
            .call(kind, req, |ch, r| async move { LeaseClient::new(ch).grant(r).await })
            .await;
        match result {
            // 63 random bits do not collide: an earlier attempt of this very grant applied.
            Err(Error::AlreadyExists(_)) if drawn => {
                let ttl = self.lease_time_to_live(id, false).await?;
                Ok(LeaseGrantResponse {
                    header: ttl.header,
                    id,
                    ttl: ttl.granted_ttl,
                })
            }
            other => other,
        }
    }

    /// Revoke a lease, deleting its keys.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, Error> {
        self.call(Kind::Idempotent, LeaseRevokeRequest { id }, |ch, r| async move {
            LeaseClient::new(ch).revoke(r).await
        })
        .await
    }

    /// A lease's TTL left (-1: no such lease), its granted TTL and, with `keys`, its keys.
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseTimeToLiveResponse, Error> {
        self.call(Kind::Read, LeaseTimeToLiveRequest { id, keys }, |ch, r| async move {
            LeaseClient::new(ch).time_to_live(r).await
        })
        .await
    }

    /// Every lease's id.
    pub async fn leases(&self) -> Result<LeaseLeasesResponse, Error> {
        self.call(Kind::Read, LeaseLeasesRequest {}, |ch, r| async move {
            LeaseClient::new(ch).leases(r).await
        })
        .await
    }

    /// Renew a lease once; returns its TTL in seconds (0: it does not exist). Renewing twice is
    /// harmless, so this is retried like a read.
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64, Error> {
        let resp = self
            .call(Kind::Idempotent, id, |ch, id| async move {
                let (metadata, _, id) = id.into_parts();
                let (tx, rx) = mpsc::channel(1);
                let _ = tx.send(LeaseKeepAliveRequest { id }).await;
                drop(tx);
                let request = tonic::Request::from_parts(metadata, Default::default(), ReceiverStream::new(rx));
                let mut stream = LeaseClient::new(ch).keep_alive(request).await?;
                let metadata = stream.metadata().clone();
                match stream.get_mut().message().await? {
                    Some(resp) => Ok(tonic::Response::from_parts(metadata, resp, Default::default())),
                    None => Err(tonic::Status::unavailable("the keep-alive stream ended unanswered")),
                }
            })
            .await?;
        Ok(resp.ttl)
    }

    /// Keep lease `id` alive from a task of its own until the returned handle is dropped.
    pub fn keep_alive(&self, id: i64) -> KeepAlive {
        let (tx, rx) = watch::channel(LeaseState::Starting);
        let task = tokio::spawn(keep_alive_loop(self.clone(), id, tx));
        KeepAlive { id, state: rx, task }
    }
}

/// Renew every third of the TTL, over one stream at a time; move to the next member when the
/// stream breaks or an acknowledgement is late; stop when the lease is gone or lost.
async fn keep_alive_loop(client: Client, id: i64, state: watch::Sender<LeaseState>) {
    if id <= 0 {
        let _ = state.send(LeaseState::Lost(format!("lease id {id} is out of range")));
        return;
    }
    let keeper = Keeper {
        give_up_unacked: Instant::now() + client.config().timeout,
        client,
        id,
        state,
    };
    let fresh = || Backoff::new(Duration::from_millis(25), Duration::from_millis(500));
    let mut backoff = fresh();
    let mut attempt = 0usize;
    let mut last_error = String::from("no member answered");
    loop {
        if Instant::now() >= keeper.give_up() {
            let _ = keeper.state.send(LeaseState::Lost(format!(
                "no keep-alive of lease {id} was acknowledged in time ({last_error})"
            )));
            return;
        }
        let channels = keeper.client.channels();
        let (endpoint, channel) = channels[attempt % channels.len()].clone();
        attempt += 1;
        match Stream::open(&keeper.client, channel, keeper.give_up()).await {
            Ok(mut stream) => {
                let (acked, ended) = keeper.renew_on(&mut stream).await;
                match ended {
                    Ended::Gone => {
                        let _ = keeper.state.send(LeaseState::Gone);
                        return;
                    }
                    Ended::Failed(e) => last_error = format!("{endpoint}: {e}"),
                }
                if acked {
                    // It answered before it failed: the next member gets a fresh round.
                    backoff = fresh();
                }
            }
            Err(e) => last_error = format!("{endpoint}: {e}"),
        }
        // A round of members tried with no success: pause before the next (a cluster without a
        // leader answers at once, and would be asked again at once).
        if attempt.is_multiple_of(channels.len()) {
            let left = keeper.give_up().saturating_duration_since(Instant::now());
            tokio::time::sleep(backoff.pause().min(left)).await;
        }
    }
}

/// Why renewing over one stream stopped.
enum Ended {
    Gone,
    Failed(String),
}

/// One lease's keeper: what it reports is also what it goes by (the TTL, the deadline).
struct Keeper {
    client: Client,
    id: i64,
    state: watch::Sender<LeaseState>,
    /// Before the first acknowledgement there is no deadline: give up after the client's timeout.
    give_up_unacked: Instant,
}

impl Keeper {
    /// When to count the lease lost: its deadline, once one is known.
    fn give_up(&self) -> Instant {
        match *self.state.borrow() {
            LeaseState::Alive { deadline, .. } => deadline,
            _ => self.give_up_unacked,
        }
    }

    fn ttl(&self) -> Duration {
        match *self.state.borrow() {
            LeaseState::Alive { ttl, .. } => ttl,
            _ => Duration::ZERO,
        }
    }

    /// Renew over `stream` every third of the TTL until it fails or the lease is gone; says
    /// whether the stream acknowledged anything, and why it stopped.
    async fn renew_on(&self, stream: &mut Stream) -> (bool, Ended) {
        let mut acked = false;
        loop {
            let sent = Instant::now();
            // A late acknowledgement is as good as none: try elsewhere while the lease still
            // lives, rather than wait out a member that is paused or cut off.
            let patience = (self.ttl() / 3).max(Duration::from_secs(1));
            let resp = match stream.renew(self.id, (sent + patience).min(self.give_up())).await {
                Ok(resp) => resp,
                Err(e) => return (acked, Ended::Failed(e)),
            };
            if resp.ttl <= 0 {
                return (acked, Ended::Gone);
            }
            acked = true;
            let ttl = Duration::from_secs(resp.ttl as u64);
            // Kept even with no one watching: the keeper goes by it.
            self.state.send_replace(LeaseState::Alive {
                ttl,
                deadline: sent + ttl,
            });
            tokio::time::sleep_until(sent + ttl / 3).await;
        }
    }
}

/// One keep-alive stream on one member.
struct Stream {
    requests: mpsc::Sender<LeaseKeepAliveRequest>,
    responses: tonic::Streaming<LeaseKeepAliveResponse>,
}

impl Stream {
    async fn open(client: &Client, channel: Channel, until: Instant) -> Result<Stream, String> {
        let (requests, rx) = mpsc::channel(1);
        let request = client
            .request(&channel, ReceiverStream::new(rx))
            .await
            .map_err(|status| status.message().to_string())?;
        let mut lease = LeaseClient::new(channel);
        match tokio::time::timeout_at(until, lease.keep_alive(request)).await {
            Ok(Ok(resp)) => Ok(Stream {
                requests,
                responses: resp.into_inner(),
            }),
            Ok(Err(status)) => Err(status.message().to_string()),
            Err(_) => Err("no answer".into()),
        }
    }

    async fn renew(&mut self, id: i64, until: Instant) -> Result<LeaseKeepAliveResponse, String> {
        if self.requests.send(LeaseKeepAliveRequest { id }).await.is_err() {
            return Err("the stream closed".into());
        }
        match tokio::time::timeout_at(until, self.responses.message()).await {
            Ok(Ok(Some(resp))) => Ok(resp),
            Ok(Ok(None)) => Err("the stream ended".into()),
            Ok(Err(status)) => Err(format!("{}: {}", status.code(), status.message())),
            Err(_) => Err("no acknowledgement in time".into()),
        }
    }
}
