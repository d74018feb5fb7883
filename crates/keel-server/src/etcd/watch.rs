//! etcd's Watch service over keel's: the same stream of many watches, with etcd's messages and
//! its answers where they differ from keel's:
//! - a refused create is `watch_id -1, created, canceled` with the reason; a start that was
//!   compacted is a created watch followed at once by its cancel with `compact_revision` and
//!   etcd's "required revision has been compacted". `compact_revision` is the first revision a
//!   watch can start at, one above keel's compaction point: etcd keeps the compaction revision
//!   itself watchable, keel does not, and clients watch again from `compact_revision`;
//! - a cancel is answered without a reason, a cancel of an unknown watch not at all;
//! - a progress request on a stream without watches is answered with `watch_id -1` at the
//!   current revision (with watches, each answers with the revision up to which it has sent
//!   everything, a promise the broadcast form could not keep for a watch still catching up).

use std::collections::HashSet;
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use futures::{Stream, StreamExt};
use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::watch_server::Watch;
use keel_proto::etcd::mvccpb;
use keel_proto::v1;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use super::{convert, error, header, leader};
use crate::node::Node;
use crate::service::watch::{open_stream, CANCELLED_BY_CLIENT, NO_SUCH_WATCH};

/// etcd's progress notification period for watches that ask for one.
const PROGRESS_MS: u64 = 10 * 60 * 1000;
const EMPTY_RANGE: &str = "mvcc: watcher range is empty";
const DUPLICATE_ID: &str = "mvcc: duplicate watch ID provided on the WatchStream";

pub struct EtcdWatch {
    pub node: Arc<Node>,
}

type WatchStream = Pin<Box<dyn Stream<Item = Result<pb::WatchResponse, Status>> + Send>>;

/// A keel create request for an etcd one; `Err` is the etcd answer of a create refused here.
fn create(c: pb::WatchCreateRequest) -> Result<v1::WatchCreateRequest, String> {
    use pb::watch_create_request::FilterType;
    // etcd reads an empty key as "\0": with a range end, from the first key on.
    let key = if c.key.is_empty() { vec![0] } else { c.key };
    if convert::key_range(&key, &c.range_end).is_none() {
        return Err(EMPTY_RANGE.to_string());
    }
    Ok(v1::WatchCreateRequest {
        key,
        range_end: c.range_end,
        prefix: false,
        start_revision: c.start_revision.max(0) as u64,
        prev_kv: c.prev_kv,
        no_put: c.filters.contains(&(FilterType::Noput as i32)),
        no_delete: c.filters.contains(&(FilterType::Nodelete as i32)),
        progress_ms: if c.progress_notify { PROGRESS_MS } else { 0 },
        watch_id: c.watch_id.max(0),
    })
}

fn event(e: v1::Event) -> mvccpb::Event {
    let kv = |kv| convert::from_keel(kv, 0);
    mvccpb::Event {
        r#type: if e.r#type == v1::event::EventType::Delete as i32 {
            mvccpb::event::EventType::Delete as i32
        } else {
            mvccpb::event::EventType::Put as i32
        },
        kv: e.kv.map(kv),
        prev_kv: e.prev_kv.map(kv),
    }
}

/// etcd's answers to one of keel's.
fn answers(node: &Node, live: &Mutex<HashSet<i64>>, r: v1::WatchResponse) -> Vec<pb::WatchResponse> {
    let h = Some(header(node, r.header.map_or(0, |h| h.revision)));
    let base = pb::WatchResponse {
        header: h,
        watch_id: r.watch_id,
        ..Default::default()
    };
    let mut live = live.lock().expect("watch ids");
    if r.canceled {
        live.remove(&r.watch_id);
        return match (r.created, r.compact_revision, r.cancel_reason.as_str()) {
            (_, _, NO_SUCH_WATCH) => Vec::new(),
            (_, _, CANCELLED_BY_CLIENT) => vec![pb::WatchResponse { canceled: true, ..base }],
            (created, c, _) if c > 0 => {
                let cancel = pb::WatchResponse {
                    canceled: true,
                    // keel's compaction point c (its history holds revisions above c) as etcd's
                    // "minimum index" a watch may start at, where clients watch again.
                    compact_revision: c as i64 + 1,
                    cancel_reason: error::COMPACTED.to_string(),
                    ..base.clone()
                };
                if created {
                    vec![pb::WatchResponse { created: true, ..base }, cancel]
                } else {
                    vec![cancel]
                }
            }
            (true, _, reason) => vec![pb::WatchResponse {
                watch_id: -1,
                created: true,
                canceled: true,
                cancel_reason: if reason.contains("is in use") {
                    DUPLICATE_ID.to_string()
                } else {
                    reason.to_string()
                },
                ..base
            }],
            (false, _, reason) => vec![pb::WatchResponse {
                canceled: true,
                cancel_reason: reason.to_string(),
                ..base
            }],
        };
    }
    if r.created {
        live.insert(r.watch_id);
    }
    vec![pb::WatchResponse {
        created: r.created,
        events: r.events.into_iter().map(event).collect(),
        ..base
    }]
}

#[tonic::async_trait]
impl Watch for EtcdWatch {
    type WatchStream = WatchStream;

    async fn watch(&self, req: Request<Streaming<pb::WatchRequest>>) -> Result<Response<WatchStream>, Status> {
        use pb::watch_request::RequestUnion as In;
        use v1::watch_request::Request as Out;
        let node = self.node.clone();
        let metadata = req.metadata().clone();
        let live = Arc::new(Mutex::new(HashSet::new()));
        // Answers given here rather than by keel's watch service.
        let (local_tx, local_rx) = mpsc::unbounded_channel::<pb::WatchResponse>();
        let requests = {
            let (node, live) = (node.clone(), live.clone());
            req.into_inner().filter_map(move |item| {
                let out = match item {
                    Err(e) => Some(Err(e)),
                    Ok(pb::WatchRequest { request_union: None }) => None,
                    Ok(pb::WatchRequest {
                        request_union: Some(In::CreateRequest(c)),
                    }) => match create(c) {
                        Ok(c) => Some(Ok(Out::Create(c))),
                        Err(reason) => {
                            let _ = local_tx.send(pb::WatchResponse {
                                header: Some(header(&node, node.reader.revision())),
                                watch_id: -1,
                                created: true,
                                canceled: true,
                                cancel_reason: reason,
                                ..Default::default()
                            });
                            None
                        }
                    },
                    Ok(pb::WatchRequest {
                        request_union: Some(In::CancelRequest(c)),
                    }) => Some(Ok(Out::Cancel(v1::WatchCancelRequest { watch_id: c.watch_id }))),
                    Ok(pb::WatchRequest {
                        request_union: Some(In::ProgressRequest(_)),
                    }) => {
                        if live.lock().expect("watch ids").is_empty() {
                            let _ = local_tx.send(pb::WatchResponse {
                                header: Some(header(&node, node.reader.revision())),
                                watch_id: -1,
                                ..Default::default()
                            });
                        }
                        Some(Ok(Out::Progress(v1::WatchProgressRequest {})))
                    }
                };
                std::future::ready(out.map(|r| r.map(|r| v1::WatchRequest { request: Some(r) })))
            })
        };
        let keel = open_stream(node.clone(), Box::pin(requests)).map_err(error::node)?;
        let ender = node.clone();
        let answered = keel.flat_map(move |item| {
            let out: Vec<Result<pb::WatchResponse, Status>> = match item {
                Ok(r) => answers(&node, &live, r).into_iter().map(Ok).collect(),
                Err(e) => vec![Err(error::from_keel(e))],
            };
            futures::stream::iter(out)
        });
        let local = tokio_stream::wrappers::UnboundedReceiverStream::new(local_rx).map(Ok);
        let both = futures::stream::select(answered, local);
        Ok(Response::new(leader::end_without_leader(ender, &metadata, both)))
    }
}
