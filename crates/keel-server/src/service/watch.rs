//! The Watch service: one bidirectional stream per client carries many watches.
//!
//! Each watch is a task that reads the change history of its range from its next revision
//! (`KvReader::changes`: from memory while it keeps up, else from sled), sends what it read, and
//! waits for the store revision to move past it.
//! Nothing is buffered per watch beyond one read: the responses of a stream go through one
//! bounded channel, and a watch whose client reads slowly waits on it and reads on from the
//! history later, as etcd's unsynced watchers do. A watch that falls behind the retained history
//! ends with the compaction point, so the client knows to read the state again.
//!
//! Any member serves watches from its own applied state, so a watch on a follower sees a change
//! once that follower has applied it. Events come in revision order, each once; the events of one
//! revision come in one response.
//!
//! ## Implementation caveats
//! - A snapshot holds the state, not the history: a member that caught up from one has no
//!   history from before it, and a watch that needs it there ends with the compaction point.
//!   keel-client then takes the watch to another member, which may still hold it (the chaos
//!   runs' watchers hit this when a member came back by snapshot).
//! - Progress notifications name the revision up to which the watch has sent everything, which
//!   may be below the member's revision while the watch catches up.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use keel_proto::v1::watch_request::Request as Req;
use keel_proto::v1::watch_server::Watch;
use keel_proto::v1::{event, Event, WatchCreateRequest, WatchRequest, WatchResponse};
use keel_storage::{Change, ChangesError, KeyRange, RangeOp};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::fail;
use crate::convert;
use crate::error::NodeError;
use crate::metrics::Gauge;
use crate::node::Node;

/// Responses a stream holds for a client that does not read; past them, watches wait.
const OUT_BUFFER: usize = 64;
/// Changes, and bytes of their keys and values, one read takes from the history at most (whole
/// revisions: a txn may add more). With the stream's bounded channel this bounds what a stream
/// holds for a client that does not read: about 64 × 64 KiB.
const READ_BATCH: usize = 256;
const READ_BYTES: usize = 64 * 1024;
/// The reason of the answer to a cancel request.
pub(crate) const CANCELLED_BY_CLIENT: &str = "cancelled by the client";
/// The reason of the answer to a cancel request for a watch the stream does not hold.
pub(crate) const NO_SUCH_WATCH: &str = "no such watch";
/// Watches one stream may hold.
pub const MAX_WATCHES_PER_STREAM: usize = 1024;

pub struct WatchService {
    pub node: Arc<Node>,
}

type Out = mpsc::Sender<Result<WatchResponse, Status>>;

#[tonic::async_trait]
impl Watch for WatchService {
    type WatchStream = ReceiverStream<Result<WatchResponse, Status>>;

    async fn watch(&self, req: Request<Streaming<WatchRequest>>) -> Result<Response<Self::WatchStream>, Status> {
        let stream = open_stream(self.node.clone(), req.into_inner()).map_err(|e| fail(&self.node, e))?;
        Ok(Response::new(stream))
    }
}

/// Serve a stream of watch requests; its responses come out of the returned stream. Shared by
/// keel's Watch service and etcd's (which maps the messages on either side).
pub(crate) fn open_stream<S>(
    node: Arc<Node>,
    requests: S,
) -> Result<ReceiverStream<Result<WatchResponse, Status>>, NodeError>
where
    S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
{
    let max = node.service_limits.max_watch_streams;
    let open = Gauge::up_within(&node.metrics.watch_streams, max).ok_or_else(|| {
        node.metrics.refused(
            "watch_streams",
            NodeError::LimitReached(format!(
                "member {} serves {max} watch streams already (--max-watch-streams); put more watches on one stream, or use another member",
                node.id
            )),
        )
    })?;
    let (tx, rx) = mpsc::channel(OUT_BUFFER);
    // The stream's watches are created as the caller's (see `crate::auth`).
    node.spawn(crate::auth::Caller::current().scope(serve_stream(node.clone(), requests, tx, open)));
    Ok(ReceiverStream::new(rx))
}

/// One watch of a stream, as its requests see it.
struct Handle {
    cancel: CancellationToken,
    progress: mpsc::Sender<()>,
}

/// Serve one stream's requests until the client closes it or the node begins to shut down;
/// every watch of the stream ends with it (through `stream`'s token).
async fn serve_stream<S>(node: Arc<Node>, mut requests: S, tx: Out, _open: Gauge)
where
    S: Stream<Item = Result<WatchRequest, Status>> + Send + Unpin + 'static,
{
    let stream = node.stopping.child_token();
    let _stop_all = stream.clone().drop_guard();
    let mut watches: HashMap<i64, Handle> = HashMap::new();
    let mut next_id: i64 = 0;
    loop {
        let req = tokio::select! {
            _ = stream.cancelled() => break,
            req = requests.next() => match req {
                Some(Ok(req)) => req,
                _ => break,
            },
        };
        watches.retain(|_, h| !h.cancel.is_cancelled());
        let sent = match req.request {
            Some(Req::Create(create)) => {
                let id = if create.watch_id != 0 {
                    create.watch_id
                } else {
                    next_id += 1;
                    while watches.contains_key(&next_id) {
                        next_id += 1;
                    }
                    next_id
                };
                match create_watch(&node, &create, id, &watches) {
                    Err((reason, compacted)) => send_until(&tx, refused(&node, id, compacted, reason), &stream).await,
                    Ok((range, start)) => {
                        let cancel = stream.child_token();
                        let (progress, progress_rx) = mpsc::channel(1);
                        watches.insert(
                            id,
                            Handle {
                                cancel: cancel.clone(),
                                progress,
                            },
                        );
                        // "From now" is the revision before the start, so that a client that
                        // opens the watch again elsewhere knows where to resume.
                        let at = match create.start_revision {
                            0 => start - 1,
                            _ => node.reader.revision(),
                        };
                        let created = WatchResponse {
                            header: Some(node.header(at)),
                            watch_id: id,
                            created: true,
                            ..Default::default()
                        };
                        let ok = send_until(&tx, created, &stream).await;
                        let w = Watcher {
                            node: node.clone(),
                            id,
                            range,
                            next: start,
                            prev_kv: create.prev_kv,
                            no_put: create.no_put,
                            no_delete: create.no_delete,
                            progress_every: (create.progress_ms > 0).then(|| Duration::from_millis(create.progress_ms)),
                            tx: tx.clone(),
                        };
                        node.spawn(w.run(cancel, progress_rx));
                        ok
                    }
                }
            }
            Some(Req::Cancel(c)) => match watches.remove(&c.watch_id) {
                Some(h) => {
                    h.cancel.cancel();
                    send_until(&tx, ended(&node, c.watch_id, 0, CANCELLED_BY_CLIENT), &stream).await
                }
                None => send_until(&tx, ended(&node, c.watch_id, 0, NO_SUCH_WATCH), &stream).await,
            },
            Some(Req::Progress(_)) => {
                for h in watches.values() {
                    // A request already pending answers this one too.
                    let _ = h.progress.try_send(());
                }
                true
            }
            None => true,
        };
        if !sent {
            break;
        }
    }
}

/// Check a create request: the range, the start revision and the stream's room. A refusal
/// says why, and the compaction point if the start is older than the history.
fn create_watch(
    node: &Node,
    c: &WatchCreateRequest,
    id: i64,
    watches: &HashMap<i64, Handle>,
) -> Result<(KeyRange, u64), (String, u64)> {
    if watches.contains_key(&id) {
        return Err((format!("watch id {id} is in use on this stream"), 0));
    }
    if watches.len() >= MAX_WATCHES_PER_STREAM {
        let why = format!("a stream holds at most {MAX_WATCHES_PER_STREAM} watches");
        return Err((node.metrics.refused("watches_per_stream", why), 0));
    }
    let range = convert::key_range(&c.key, &c.range_end, c.prefix).map_err(|e| (e.to_string(), 0))?;
    keel_storage::validate_range(&RangeOp::new(range.clone()), &node.limits).map_err(|e| (e.to_string(), 0))?;
    crate::auth::Caller::current()
        .check(node, keel_storage::auth::check::Need::Read, &range)
        .map_err(|s| (s.message().to_string(), 0))?;
    let start = match c.start_revision {
        0 => node.reader.revision() + 1,
        r => r,
    };
    // Checked again by every read; this answers the create itself.
    let oldest = node.reader.oldest_change();
    if start < oldest {
        let why = format!("revision {start} has been compacted; the history starts at {oldest}");
        return Err((why, oldest - 1));
    }
    Ok((range, start))
}

/// One watch's loop: read the history from `next`, send, wait for more.
struct Watcher {
    node: Arc<Node>,
    id: i64,
    range: KeyRange,
    next: u64,
    prev_kv: bool,
    no_put: bool,
    no_delete: bool,
    progress_every: Option<Duration>,
    tx: Out,
}

impl Watcher {
    /// Serve the watch until it is cancelled or ends; then say so to the stream's bookkeeping.
    async fn run(self, cancel: CancellationToken, progress: mpsc::Receiver<()>) {
        let _open = Gauge::up(&self.node.metrics.watchers);
        self.serve(&cancel, progress).await;
        cancel.cancel();
    }

    async fn serve(mut self, cancel: &CancellationToken, mut progress: mpsc::Receiver<()>) {
        let mut revisions = self.node.reader.revisions();
        loop {
            let caught_up = tokio::select! {
                _ = cancel.cancelled() => return,
                step = self.step() => match step {
                    Some(caught_up) => caught_up,
                    None => return,
                },
            };
            if !caught_up {
                continue;
            }
            let next = self.next;
            let quiet = async {
                match self.progress_every {
                    Some(d) => tokio::time::sleep(d).await,
                    None => std::future::pending().await,
                }
            };
            let notify = tokio::select! {
                _ = cancel.cancelled() => return,
                moved = revisions.wait_for(|r| *r >= next) => {
                    if moved.is_err() {
                        return;
                    }
                    false
                }
                Some(()) = progress.recv() => true,
                _ = quiet => true,
            };
            if notify && !self.send_progress().await {
                return;
            }
        }
    }

    /// Read and send one batch of changes. `Some(true)`: every applied change has been sent;
    /// `Some(false)`: more to read now; `None`: the watch ended.
    async fn step(&mut self) -> Option<bool> {
        let (from, prev_kv) = (self.next, self.prev_kv);
        // A watch that keeps up finds its changes in memory; one that fell behind reads sled,
        // off the async threads.
        let read = match self
            .node
            .reader
            .recent_changes(&self.range, from, READ_BATCH, READ_BYTES, prev_kv)
        {
            Some(read) => Ok(read),
            None => {
                let (reader, range) = (self.node.reader.clone(), self.range.clone());
                tokio::task::spawn_blocking(move || {
                    reader.history_changes(&range, from, READ_BATCH, READ_BYTES, prev_kv)
                })
                .await
            }
        };
        let changes = match read {
            Ok(Ok(c)) => c,
            Ok(Err(ChangesError::Compacted(c))) => {
                let why = format!("revision {from} has been compacted; the history starts after {c}");
                send(&self.tx, ended(&self.node, self.id, c, &why)).await;
                return None;
            }
            Ok(Err(ChangesError::Read(e))) => {
                // A snapshot install or compaction moved under the read: read again.
                tracing::debug!(error = %e, watch = self.id, "watch read interrupted; reading again");
                tokio::time::sleep(Duration::from_millis(10)).await;
                return Some(false);
            }
            Err(e) => {
                send(
                    &self.tx,
                    ended(&self.node, self.id, 0, &format!("watch read failed: {e}")),
                )
                .await;
                return None;
            }
        };
        let events: Vec<Event> = changes
            .changes
            .into_iter()
            .filter(|c| !(c.deleted && self.no_delete || !c.deleted && self.no_put))
            .map(event)
            .collect();
        self.next = changes.next;
        if !events.is_empty() {
            let sent = events.len() as u64;
            let resp = WatchResponse {
                header: Some(self.node.header(changes.revision)),
                watch_id: self.id,
                events,
                ..Default::default()
            };
            let ok = match self.tx.try_reserve() {
                Ok(permit) => {
                    permit.send(Ok(resp));
                    true
                }
                Err(mpsc::error::TrySendError::Full(())) => {
                    // The client reads slower than changes come: wait, reading nothing meanwhile.
                    let _slow = Gauge::up(&self.node.metrics.slow_watchers);
                    send(&self.tx, resp).await
                }
                Err(mpsc::error::TrySendError::Closed(())) => false,
            };
            if !ok {
                return None;
            }
            self.node.metrics.watch_events.inc_by(sent);
        }
        Some(changes.next > changes.revision)
    }

    async fn send_progress(&self) -> bool {
        let resp = WatchResponse {
            header: Some(self.node.header(self.next - 1)),
            watch_id: self.id,
            ..Default::default()
        };
        send(&self.tx, resp).await
    }
}

fn event(c: Change) -> Event {
    Event {
        r#type: if c.deleted {
            event::EventType::Delete
        } else {
            event::EventType::Put
        } as i32,
        kv: Some(convert::key_value(c.kv)),
        prev_kv: c.prev_kv.map(convert::key_value),
    }
}

/// A create that was refused: created and ended at once, with the reason.
fn refused(node: &Node, id: i64, compact_revision: u64, reason: String) -> WatchResponse {
    WatchResponse {
        created: true,
        ..ended(node, id, compact_revision, &reason)
    }
}

fn ended(node: &Node, id: i64, compact_revision: u64, reason: &str) -> WatchResponse {
    WatchResponse {
        header: Some(node.header(node.reader.revision())),
        watch_id: id,
        canceled: true,
        compact_revision,
        cancel_reason: reason.to_string(),
        ..Default::default()
    }
}

/// Send on the stream unless `stop` comes first; false once the client has gone or `stop` came.
async fn send_until(tx: &Out, resp: WatchResponse, stop: &CancellationToken) -> bool {
    tokio::select! {
        _ = stop.cancelled() => false,
        sent = send(tx, resp) => sent,
    }
}

/// Send on the stream; false once the client has gone.
async fn send(tx: &Out, resp: WatchResponse) -> bool {
    tx.send(Ok(resp)).await.is_ok()
}
