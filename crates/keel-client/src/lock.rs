//! Locks and elections, served by the cluster (`lock.proto`).
//!
//! A lock (or a campaign) is attached to a lease: keep the lease alive ([`Client::keep_alive`])
//! for as long as you hold it, and the lock goes when the lease does. Every call here is safe to
//! repeat (locking again with the same lease finds the same key and token), so each is retried
//! wherever its outcome is unknown.
//!
//! # Fencing
//! A holder can lose its lock without noticing at once: its process pauses, its lease expires,
//! another takes the lock. So guard each write made under the lock with the token in a txn:
//! `compare create_revision(KEY) == TOKEN`. Once the key is gone, the guarded write does
//! nothing, whatever the old holder believes. [`fenced_put`] builds such a txn.

use std::time::Duration;

use keel_proto::v1::election_client::ElectionClient;
use keel_proto::v1::lock_client::LockClient;
use keel_proto::v1::{
    compare, request_op, CampaignRequest, CampaignResponse, Compare, LeaderKey, LeaderRequest, LeaderResponse,
    LockRequest, LockResponse, ProclaimRequest, ProclaimResponse, PutRequest, RequestOp, ResignRequest, ResignResponse,
    TxnRequest, UnlockRequest, UnlockResponse,
};
use tokio::time::Instant;

use crate::retry::{Backoff, Kind};
use crate::{Client, Error};

impl Client {
    /// Wait up to `timeout` for the lock `name`, attached to `lease`; returns its key (for
    /// [`Client::unlock`]) and fencing token.
    pub async fn lock(&self, name: impl Into<Vec<u8>>, lease: i64, timeout: Duration) -> Result<LockResponse, Error> {
        let req = LockRequest {
            name: name.into(),
            lease,
        };
        self.call_for(Kind::Idempotent, timeout, req, |ch, r| async move {
            LockClient::new(ch).lock(r).await
        })
        .await
    }

    /// Release a lock (delete its key).
    pub async fn unlock(&self, key: impl Into<Vec<u8>>) -> Result<UnlockResponse, Error> {
        self.call(
            Kind::Idempotent,
            UnlockRequest { key: key.into() },
            |ch, r| async move { LockClient::new(ch).unlock(r).await },
        )
        .await
    }

    /// Campaign in election `name` with `value` as the proposal, attached to `lease`; returns
    /// once this lease leads (within `timeout`).
    pub async fn campaign(
        &self,
        name: impl Into<Vec<u8>>,
        lease: i64,
        value: impl Into<Vec<u8>>,
        timeout: Duration,
    ) -> Result<CampaignResponse, Error> {
        let req = CampaignRequest {
            name: name.into(),
            lease,
            value: value.into(),
        };
        self.call_for(Kind::Idempotent, timeout, req, |ch, r| async move {
            ElectionClient::new(ch).campaign(r).await
        })
        .await
    }

    /// As leader, change the proposal.
    pub async fn proclaim(&self, leader: LeaderKey, value: impl Into<Vec<u8>>) -> Result<ProclaimResponse, Error> {
        let req = ProclaimRequest {
            leader: Some(leader),
            value: value.into(),
        };
        self.call(Kind::Idempotent, req, |ch, r| async move {
            ElectionClient::new(ch).proclaim(r).await
        })
        .await
    }

    /// The leader of election `name` (FailedPrecondition "no leader" if none).
    pub async fn election_leader(&self, name: impl Into<Vec<u8>>) -> Result<LeaderResponse, Error> {
        self.call(Kind::Read, LeaderRequest { name: name.into() }, |ch, r| async move {
            ElectionClient::new(ch).leader(r).await
        })
        .await
    }

    /// Give up leadership.
    pub async fn resign(&self, leader: LeaderKey) -> Result<ResignResponse, Error> {
        let req = ResignRequest { leader: Some(leader) };
        self.call(Kind::Idempotent, req, |ch, r| async move {
            ElectionClient::new(ch).resign(r).await
        })
        .await
    }

    /// Follow election `name`'s leaders; see [`Observe`].
    pub fn observe(&self, name: impl Into<Vec<u8>>) -> Observe {
        Observe {
            client: self.clone(),
            name: name.into(),
            stream: None,
            last: None,
            attempt: 0,
        }
    }
}

/// A txn that puts `key` = `value` only while the lock key `lock_key` is the one created at
/// `token` (see the module docs on fencing).
pub fn fenced_put(lock_key: &[u8], token: u64, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> TxnRequest {
    TxnRequest {
        compare: vec![Compare {
            key: lock_key.to_vec(),
            op: compare::Op::Equal as i32,
            target: Some(compare::Target::CreateRevision(token)),
        }],
        success: vec![RequestOp {
            request: Some(request_op::Request::Put(PutRequest {
                key: key.into(),
                value: value.into(),
                ..Default::default()
            })),
        }],
        failure: vec![],
        session: None,
    }
}

/// An election's leaders, as they change: the leader when it is opened (if any), then each new
/// leader or proclamation. A member that fails is left for another, and a leader seen already
/// is not reported again.
pub struct Observe {
    client: Client,
    name: Vec<u8>,
    stream: Option<tonic::Streaming<LeaderResponse>>,
    /// The revision at which the last leader was reported, and its (key, mod revision).
    last: Option<(u64, (Vec<u8>, u64))>,
    attempt: usize,
}

impl Observe {
    /// The next leader (or proclamation). Waits as long as it takes; fails with `Unavailable`
    /// when no member can be reached within the client's timeout.
    pub async fn next(&mut self) -> Result<LeaderResponse, Error> {
        let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_secs(1));
        let mut give_up = Instant::now() + self.client.config().timeout;
        loop {
            let Some(stream) = self.stream.as_mut() else {
                let channels = self.client.channels();
                let (endpoint, channel) = channels[self.attempt % channels.len()].clone();
                self.attempt += 1;
                let req = LeaderRequest {
                    name: self.name.clone(),
                };
                let opened = tokio::time::timeout_at(give_up, ElectionClient::new(channel).observe(req)).await;
                match opened {
                    Ok(Ok(resp)) => {
                        self.stream = Some(resp.into_inner());
                        give_up = Instant::now() + self.client.config().timeout;
                    }
                    Ok(Err(status)) if status.code() == tonic::Code::InvalidArgument => {
                        return Err(Error::InvalidArgument(status.message().to_string()))
                    }
                    _ if Instant::now() >= give_up => {
                        return Err(Error::Unavailable(format!(
                            "cannot observe election on any endpoint (the last: {endpoint})"
                        )))
                    }
                    _ => {
                        if self.attempt.is_multiple_of(channels.len()) {
                            tokio::time::sleep(backoff.pause()).await;
                        }
                    }
                }
                continue;
            };
            match stream.message().await {
                Ok(Some(resp)) => {
                    let at = resp.header.as_ref().map_or(0, |h| h.revision);
                    let leader = resp.kv.as_ref().map(|kv| (kv.key.clone(), kv.mod_revision));
                    // After a move, the new member repeats the leader it sees; one that lags
                    // may see an older state than was reported: report only a different leader
                    // (or proclamation) at a later revision.
                    let newer = match &self.last {
                        Some((seen_at, seen)) => at > *seen_at && leader.as_ref() != Some(seen),
                        None => true,
                    };
                    if newer {
                        if let Some(leader) = leader {
                            self.last = Some((at, leader));
                        }
                        return Ok(resp);
                    }
                }
                Ok(None) | Err(_) => {
                    self.stream = None;
                    give_up = Instant::now() + self.client.config().timeout;
                }
            }
        }
    }
}
