//! Watches that outlive the member serving them.
//!
//! A [`Watch`] holds one watch on one member's Watch stream. If the stream breaks (the member
//! died, was cut off or stopped), it opens the watch again on the next endpoint, from the
//! revision after the last one it delivered, so the caller sees every change once, in revision
//! order, with no gap. A start revision the cluster no longer holds ends the watch with
//! [`Error::Compacted`]: read the current state and watch from after it.
//!
//! A member that is paused or cut off keeps its stream open and says nothing. With
//! `progress_ms` set, the member owes a progress notification on every quiet stretch of that
//! length, so a watch that hears nothing for three of them moves to another member.

use std::time::Duration;

use keel_proto::v1::watch_client::WatchClient;
use keel_proto::v1::watch_request::Request as Req;
use keel_proto::v1::{Event, ResponseHeader, WatchCreateRequest, WatchRequest, WatchResponse};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::retry::Backoff;
use crate::{Client, Error};

/// What a watch delivers: the changes of whole revisions, or (with no events) a progress
/// notification that everything up to `header.revision` has been delivered.
#[derive(Debug, Clone)]
pub struct WatchBatch {
    pub header: ResponseHeader,
    pub events: Vec<Event>,
}

/// A watch on a key, prefix or range; see the module docs.
pub struct Watch {
    client: Client,
    create: WatchCreateRequest,
    /// The next revision to deliver; 0 until the first member has said where "now" is.
    next: u64,
    /// Endpoints tried since the last successful connection, for rotation.
    attempt: usize,
    /// Times the watch was opened again after its stream broke.
    moves: u64,
    stream: Option<Open>,
}

struct Open {
    endpoint: String,
    responses: Streaming<WatchResponse>,
    /// Keeps the request side of the stream open.
    _requests: mpsc::Sender<WatchRequest>,
}

impl Client {
    /// Watch the keys `create` names from `create.start_revision` (0: changes after now). The
    /// watch is opened on a member at once; a member that cannot watch (a bad range, a compacted
    /// start) makes this fail.
    pub async fn watch(&self, create: WatchCreateRequest) -> Result<Watch, Error> {
        let mut watch = Watch {
            client: self.clone(),
            next: create.start_revision,
            create,
            attempt: 0,
            moves: 0,
            stream: None,
        };
        watch.reopen().await?;
        Ok(watch)
    }
}

impl Watch {
    /// The next changes, or progress notification. Waits as long as it takes for a change; a
    /// broken stream is reopened elsewhere within the client's timeout, or this fails with
    /// `Unavailable`.
    pub async fn next(&mut self) -> Result<WatchBatch, Error> {
        let silence = self.silence_limit();
        loop {
            let Some(open) = self.stream.as_mut() else {
                self.reopen().await?;
                self.moves += 1;
                continue;
            };
            let resp = match tokio::time::timeout(silence, open.responses.message()).await {
                Ok(Ok(Some(resp))) => resp,
                // The member went away (or ended the stream), or fell silent past the progress
                // notifications it owes (paused, or its host is gone): carry on elsewhere.
                Ok(Ok(None) | Err(_)) | Err(_) => {
                    self.stream = None;
                    continue;
                }
            };
            if resp.canceled {
                self.stream = None;
                match ended(&resp) {
                    // This member's history no longer reaches `next` (it fell behind, or it
                    // caught up from a snapshot, which holds no history): another may still.
                    Error::Compacted(_) => continue,
                    e => return Err(e),
                }
            }
            let header = resp.header.unwrap_or_default();
            let mut events = resp.events;
            // A member resumed from `next` sends nothing older, but say so rather than trust it.
            events.retain(|e| e.kv.as_ref().is_some_and(|kv| kv.mod_revision >= self.next));
            match events.last().and_then(|e| e.kv.as_ref()) {
                Some(kv) => self.next = kv.mod_revision + 1,
                None => self.next = self.next.max(header.revision + 1),
            }
            if !events.is_empty() || !resp.created {
                return Ok(WatchBatch { header, events });
            }
        }
    }

    /// How long the stream may stay silent: with progress notifications asked for every `p`,
    /// three of them missed (at least 3 s); without, for ever (a quiet range is not a fault).
    fn silence_limit(&self) -> Duration {
        match self.create.progress_ms {
            0 => Duration::MAX,
            p => (Duration::from_millis(p) * 3).max(Duration::from_secs(3)),
        }
    }

    /// The next revision this watch will deliver.
    pub fn next_revision(&self) -> u64 {
        self.next
    }

    /// Times the watch moved to a member (the same or another) after its stream broke.
    pub fn moves(&self) -> u64 {
        self.moves
    }

    /// The member serving the watch now, if any.
    pub fn endpoint(&self) -> Option<&str> {
        self.stream.as_ref().map(|o| o.endpoint.as_str())
    }

    /// Open the watch on the next endpoint that takes it, from `next`, within the client's
    /// timeout. Members keep different amounts of history (one that caught up from a snapshot
    /// has none from before it), so a member that no longer holds `next` sends the watch on to
    /// the others. When every endpoint answered so, this fails with [`Error::Compacted`], naming
    /// the oldest compaction point among them; when the others could not be reached in time,
    /// with `Unavailable` (one of them may hold the history).
    async fn reopen(&mut self) -> Result<(), Error> {
        let give_up = Instant::now() + self.client.config().timeout;
        let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_secs(1));
        let mut compacted: std::collections::HashMap<String, u64> = std::collections::HashMap::new();
        loop {
            let channels = self.client.channels();
            let (endpoint, channel) = channels[self.attempt % channels.len()].clone();
            self.attempt += 1;
            match self.open(channel, &endpoint).await {
                Ok(open) => {
                    self.stream = Some(open);
                    self.attempt = 0;
                    return Ok(());
                }
                Err(Error::Compacted(c)) => {
                    compacted.insert(endpoint, c);
                    if compacted.len() >= channels.len() {
                        return Err(Error::Compacted(compacted.values().min().copied().unwrap_or(c)));
                    }
                    continue;
                }
                Err(e @ Error::InvalidArgument(_)) => return Err(e),
                Err(e) if Instant::now() >= give_up => {
                    // Some members lack the history, and the others cannot be reached now: one
                    // of those may hold it, so this is for later, not a compaction.
                    let lacking = compacted.keys().cloned().collect::<Vec<_>>().join(", ");
                    return Err(Error::Unavailable(format!(
                        "cannot open the watch on any endpoint (the last, {endpoint}: {e}; without the history: [{lacking}])"
                    )));
                }
                Err(_) => {}
            }
            if self.attempt.is_multiple_of(channels.len()) {
                let pause = backoff.pause().min(give_up.saturating_duration_since(Instant::now()));
                tokio::time::sleep(pause).await;
            }
        }
    }

    /// Create the watch on one member and wait for its answer.
    async fn open(&mut self, channel: tonic::transport::Channel, endpoint: &str) -> Result<Open, Error> {
        let (tx, rx) = mpsc::channel(4);
        let create = WatchCreateRequest {
            start_revision: self.next,
            ..self.create.clone()
        };
        let _ = tx
            .send(WatchRequest {
                request: Some(Req::Create(create)),
            })
            .await;
        let timeout = self.client.config().timeout;
        let request = self
            .client
            .request(&channel, ReceiverStream::new(rx))
            .await
            .map_err(|status| Error::Unavailable(status.message().to_string()))?;
        let mut responses = match tokio::time::timeout(timeout, WatchClient::new(channel).watch(request)).await {
            Ok(Ok(r)) => r.into_inner(),
            Ok(Err(status)) => return Err(Error::Unavailable(status.message().to_string())),
            Err(_) => return Err(Error::Unavailable("no answer".into())),
        };
        let created = match tokio::time::timeout(timeout, responses.message()).await {
            Ok(Ok(Some(resp))) => resp,
            Ok(Ok(None)) => return Err(Error::Unavailable("the stream ended".into())),
            Ok(Err(status)) => return Err(Error::Unavailable(status.message().to_string())),
            Err(_) => return Err(Error::Unavailable("no answer".into())),
        };
        if created.canceled {
            return Err(ended(&created));
        }
        if self.next == 0 {
            // "From now": the member says where now is.
            self.next = created.header.map_or(0, |h| h.revision) + 1;
        }
        Ok(Open {
            endpoint: endpoint.to_string(),
            responses,
            _requests: tx,
        })
    }
}

/// The error a cancelled watch ends with.
fn ended(resp: &WatchResponse) -> Error {
    match resp.compact_revision {
        0 => Error::InvalidArgument(resp.cancel_reason.clone()),
        c => Error::Compacted(c),
    }
}
