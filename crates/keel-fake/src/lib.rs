//! # keel-fake: a stand-in for a keel member's client port, for tests
//!
//! One fake serves the tests of `keel-client` and of `keelctl`: an in-memory store behind the KV
//! and Cluster services (revisions, ranges by key, prefix or range end with a limit, keys-only and
//! count-only, deletes, txns whose compares test value or version for equality), and a [`Script`]
//! that each call asks first what to do: answer from the store, fail with a status, or never
//! answer. A client test says "Unavailable twice, then answer" and counts what the client sent;
//! keelctl's tests drive every verb against answers a store gave. Every answer carries a header
//! (cluster `fake`, the member id, the store's revision, term 2, the leader id) and, if set, the
//! `keel-leader` hint, on errors too.
//!
//! It depends on the proto crate alone, so the client's tests do not build the node.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use keel_proto::v1::{
    cluster_server::{Cluster, ClusterServer},
    compare,
    kv_server::{Kv, KvServer},
    request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, KeyValue, LeaderTransferRequest,
    LeaderTransferResponse, Member, MemberAddRequest, MemberAddResponse, MemberListRequest, MemberListResponse,
    MemberPromoteRequest, MemberPromoteResponse, MemberRemoveRequest, MemberRemoveResponse, PutRequest, PutResponse,
    RangeRequest, RangeResponse, ResponseHeader, ResponseOp, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status};

/// What the fake does with one call.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answer from the store.
    Ok,
    Fail(Code, &'static str),
    /// Never answer.
    Hang,
}

/// Decides each call's [`Reply`] from its number (0, 1, 2…, counted over every method).
pub type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

pub fn always(reply: Reply) -> Script {
    Arc::new(move |_| reply.clone())
}

/// `reply` for the first `n` calls, then answer.
pub fn first(n: usize, reply: Reply) -> Script {
    Arc::new(move |call| if call < n { reply.clone() } else { Reply::Ok })
}

#[derive(Default, Clone)]
pub struct Options {
    pub member_id: u64,
    /// Header `leader_id` on every answer, and the leader in Status.
    pub leader_id: u64,
    /// `keel-leader` metadata on every answer, success or error.
    pub leader_hint: Option<String>,
    /// Members for MemberList.
    pub members: Vec<Member>,
    /// The role Status reports ("follower" if empty).
    pub role: String,
    /// Keys and values the store holds at the start, written at revision `revision`.
    pub seed: Vec<(String, String)>,
    /// The store's revision at the start.
    pub revision: u64,
}

/// A running fake.
pub struct Server {
    pub addr: SocketAddr,
    /// Calls answered or failed so far, over every method.
    pub calls: Arc<AtomicUsize>,
    /// Connections accepted so far.
    pub connections: Arc<AtomicUsize>,
}

impl Server {
    pub fn endpoint(&self) -> String {
        self.addr.to_string()
    }

    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
}

/// Start a fake on 127.0.0.1:0; it runs until the test's runtime ends.
pub async fn start(script: Script, options: Options) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    start_on(listener, script, options)
}

/// Start a fake on `listener` (for members lists that name the fake's own address).
pub fn start_on(listener: TcpListener, script: Script, options: Options) -> Server {
    let addr = listener.local_addr().expect("local addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let mut state = State {
        revision: options.revision,
        kvs: BTreeMap::new(),
    };
    for (k, v) in &options.seed {
        put(
            &mut state,
            PutRequest {
                key: k.clone().into_bytes(),
                value: v.clone().into_bytes(),
                ..Default::default()
            },
            options.revision,
        );
    }
    let fake = Fake {
        script,
        calls: calls.clone(),
        options,
        state: Arc::new(Mutex::new(state)),
    };
    let counter = connections.clone();
    let incoming = TcpListenerStream::new(listener).map(move |conn| {
        counter.fetch_add(1, Ordering::SeqCst);
        conn
    });
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(fake.clone()))
            .add_service(ClusterServer::new(fake))
            .serve_with_incoming(incoming),
    );
    Server {
        addr,
        calls,
        connections,
    }
}

/// An address nothing listens on: bound, then released.
pub fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("local addr");
    drop(listener);
    addr.to_string()
}

#[derive(Default)]
struct State {
    revision: u64,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
}

#[derive(Clone)]
struct Fake {
    script: Script,
    calls: Arc<AtomicUsize>,
    options: Options,
    state: Arc<Mutex<State>>,
}

impl Fake {
    /// Ask the script, then (to answer) run `body` on the store; the header carries the
    /// revision after it.
    async fn answer<T>(
        &self,
        body: impl FnOnce(&mut State) -> Result<T, Status>,
        header_of: impl FnOnce(&mut T, ResponseHeader),
    ) -> Result<Response<T>, Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let hint = self.options.leader_hint.as_deref().and_then(|h| h.parse().ok());
        let result = match (self.script)(call) {
            Reply::Ok => {
                let mut state = self.state.lock().expect("lock");
                body(&mut state).map(|mut msg| {
                    header_of(&mut msg, self.header(state.revision));
                    msg
                })
            }
            Reply::Fail(code, message) => Err(Status::new(code, message)),
            Reply::Hang => std::future::pending().await,
        };
        match result {
            Ok(msg) => {
                let mut resp = Response::new(msg);
                if let Some(hint) = hint {
                    resp.metadata_mut().insert(keel_proto::wire::LEADER_HEADER, hint);
                }
                Ok(resp)
            }
            Err(mut status) => {
                if let Some(hint) = hint {
                    status.metadata_mut().insert(keel_proto::wire::LEADER_HEADER, hint);
                }
                Err(status)
            }
        }
    }

    fn header(&self, revision: u64) -> ResponseHeader {
        ResponseHeader {
            cluster_id: "fake".into(),
            member_id: self.options.member_id,
            revision,
            raft_term: 2,
            leader_id: self.options.leader_id,
        }
    }
}

fn selected(state: &State, key: &[u8], range_end: &[u8], prefix: bool) -> Vec<Vec<u8>> {
    state
        .kvs
        .keys()
        .filter(|k| match (prefix, range_end) {
            (true, _) => k.starts_with(key),
            (false, []) => k.as_slice() == key,
            (false, [0]) => k.as_slice() >= key,
            (false, end) => k.as_slice() >= key && k.as_slice() < end,
        })
        .cloned()
        .collect()
}

fn range(state: &State, req: &RangeRequest) -> Result<RangeResponse, Status> {
    if req.key.is_empty() && !req.prefix && req.range_end.is_empty() {
        return Err(Status::invalid_argument("key is empty"));
    }
    let keys = selected(state, &req.key, &req.range_end, req.prefix);
    let limit = if req.limit == 0 { usize::MAX } else { req.limit as usize };
    let kvs: Vec<KeyValue> = if req.count_only {
        vec![]
    } else {
        keys.iter()
            .take(limit)
            .filter_map(|k| state.kvs.get(k).cloned())
            .map(|mut kv| {
                if req.keys_only {
                    kv.value.clear();
                }
                kv
            })
            .collect()
    };
    // As keel: a full count only with count_only, otherwise the number returned.
    Ok(RangeResponse {
        header: None,
        count: if req.count_only { keys.len() } else { kvs.len() } as u64,
        more: !req.count_only && keys.len() > limit,
        kvs,
    })
}

fn put(state: &mut State, req: PutRequest, revision: u64) {
    let kv = state.kvs.entry(req.key.clone()).or_insert_with(|| KeyValue {
        key: req.key,
        create_revision: revision,
        ..KeyValue::default()
    });
    kv.value = req.value;
    kv.mod_revision = revision;
    kv.version += 1;
}

fn holds(state: &State, c: &Compare) -> Result<bool, Status> {
    if c.op != compare::Op::Equal as i32 {
        return Err(Status::unimplemented("the fake only compares with Equal"));
    }
    let kv = state.kvs.get(&c.key);
    Ok(match &c.target {
        Some(compare::Target::Value(v)) => kv.is_some_and(|kv| &kv.value == v),
        Some(compare::Target::Version(n)) => kv.map_or(0, |kv| kv.version) == *n,
        _ => return Err(Status::unimplemented("the fake only compares value and version")),
    })
}

fn txn(state: &mut State, req: TxnRequest) -> Result<TxnResponse, Status> {
    let mut succeeded = true;
    for c in &req.compare {
        succeeded &= holds(state, c)?;
    }
    let ops = if succeeded { req.success } else { req.failure };
    let revision = state.revision + 1;
    let mut wrote = false;
    let mut responses = vec![];
    for op in ops {
        let response = match op.request {
            Some(request_op::Request::Put(p)) => {
                put(state, p, revision);
                wrote = true;
                response_op::Response::Put(PutResponse::default())
            }
            Some(request_op::Request::Range(r)) => response_op::Response::Range(range(state, &r)?),
            _ => return Err(Status::unimplemented("the fake txn does puts and ranges")),
        };
        responses.push(ResponseOp {
            response: Some(response),
        });
    }
    if wrote {
        state.revision = revision;
    }
    Ok(TxnResponse {
        header: None,
        succeeded,
        responses,
    })
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let req = req.into_inner();
        self.answer(|s| range(s, &req), |m, h| m.header = Some(h)).await
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        let body = |s: &mut State| {
            if req.key.is_empty() {
                return Err(Status::invalid_argument("key is empty"));
            }
            s.revision += 1;
            let revision = s.revision;
            put(s, req, revision);
            Ok(PutResponse::default())
        };
        self.answer(body, |m, h| m.header = Some(h)).await
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        let body = |s: &mut State| {
            let keys = selected(s, &req.key, &req.range_end, req.prefix);
            if !keys.is_empty() {
                s.revision += 1;
            }
            for k in &keys {
                s.kvs.remove(k);
            }
            Ok(DeleteRangeResponse {
                deleted: keys.len() as u64,
                ..Default::default()
            })
        };
        self.answer(body, |m, h| m.header = Some(h)).await
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        self.answer(|s| txn(s, req), |m, h| m.header = Some(h)).await
    }
}

fn unimplemented<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented("not in this fake"))
}

#[tonic::async_trait]
impl Cluster for Fake {
    async fn member_list(&self, _req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let members = self.options.members.clone();
        let body = |_: &mut State| Ok(MemberListResponse { header: None, members });
        self.answer(body, |m, h| m.header = Some(h)).await
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let o = &self.options;
        let body = |s: &mut State| {
            Ok(StatusResponse {
                id: o.member_id,
                role: if o.role.is_empty() {
                    "follower".into()
                } else {
                    o.role.clone()
                },
                term: 2,
                leader_id: o.leader_id,
                last_log_index: 20,
                applied_index: 20,
                db_size: 3 * 1024 * 1024,
                key_count: s.kvs.len() as u64,
                version: "0.1.0".into(),
                pid: 4242,
                ..StatusResponse::default()
            })
        };
        self.answer(body, |m, h| m.header = Some(h)).await
    }

    async fn member_add(&self, _: Request<MemberAddRequest>) -> Result<Response<MemberAddResponse>, Status> {
        unimplemented()
    }

    async fn member_promote(
        &self,
        _: Request<MemberPromoteRequest>,
    ) -> Result<Response<MemberPromoteResponse>, Status> {
        unimplemented()
    }

    async fn member_remove(&self, _: Request<MemberRemoveRequest>) -> Result<Response<MemberRemoveResponse>, Status> {
        unimplemented()
    }

    async fn leader_transfer(
        &self,
        _: Request<LeaderTransferRequest>,
    ) -> Result<Response<LeaderTransferResponse>, Status> {
        unimplemented()
    }
}
