//! An in-memory stand-in for a keel member, just enough of the KV and Cluster services to drive
//! keelctl end to end: revisions, ranges, txn compares on value and version.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use keel_client::proto::{
    cluster_server::{Cluster, ClusterServer},
    compare,
    kv_server::{Kv, KvServer},
    request_op, response_op, DeleteRangeRequest, DeleteRangeResponse, KeyValue, Member, MemberListRequest,
    MemberListResponse, PutRequest, PutResponse, RangeRequest, RangeResponse, ResponseHeader, ResponseOp,
    StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic::{Request, Response, Status};

#[derive(Default)]
struct State {
    revision: u64,
    kvs: BTreeMap<Vec<u8>, KeyValue>,
}

#[derive(Clone)]
struct Store {
    state: Arc<Mutex<State>>,
    addr: String,
    /// A second member that is listed but not running.
    dead_member: String,
}

/// Starts the fake on 127.0.0.1:0 and returns its address; it runs until the runtime ends.
pub async fn start(dead_member: String) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let store = Store {
        state: Arc::default(),
        addr: addr.to_string(),
        dead_member,
    };
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_service(KvServer::new(store.clone()))
            .add_service(ClusterServer::new(store))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    addr
}

fn header(revision: u64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        cluster_id: "fake".into(),
        member_id: 1,
        revision,
        raft_term: 2,
        leader_id: 1,
    })
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
        header: header(state.revision),
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

fn holds(state: &State, c: &keel_client::proto::Compare) -> Result<bool, Status> {
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

#[tonic::async_trait]
impl Kv for Store {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let state = self.state.lock().expect("lock");
        range(&state, req.get_ref()).map(Response::new)
    }

    async fn put(&self, req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(Status::invalid_argument("key is empty"));
        }
        let mut state = self.state.lock().expect("lock");
        state.revision += 1;
        let revision = state.revision;
        put(&mut state, req, revision);
        Ok(Response::new(PutResponse {
            header: header(revision),
            prev_kv: None,
        }))
    }

    async fn delete_range(&self, req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        let req = req.into_inner();
        let mut state = self.state.lock().expect("lock");
        let keys = selected(&state, &req.key, &req.range_end, req.prefix);
        if !keys.is_empty() {
            state.revision += 1;
        }
        for k in &keys {
            state.kvs.remove(k);
        }
        Ok(Response::new(DeleteRangeResponse {
            header: header(state.revision),
            deleted: keys.len() as u64,
            prev_kvs: vec![],
        }))
    }

    async fn txn(&self, req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        let req = req.into_inner();
        let mut state = self.state.lock().expect("lock");
        let mut succeeded = true;
        for c in &req.compare {
            succeeded &= holds(&state, c)?;
        }
        let ops = if succeeded { req.success } else { req.failure };
        let revision = state.revision + 1;
        let mut wrote = false;
        let mut responses = vec![];
        for op in ops {
            let response = match op.request {
                Some(request_op::Request::Put(p)) => {
                    put(&mut state, p, revision);
                    wrote = true;
                    response_op::Response::Put(PutResponse::default())
                }
                Some(request_op::Request::Range(r)) => response_op::Response::Range(range(&state, &r)?),
                _ => return Err(Status::unimplemented("the fake txn does puts and ranges")),
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        if wrote {
            state.revision = revision;
        }
        Ok(Response::new(TxnResponse {
            header: header(state.revision),
            succeeded,
            responses,
        }))
    }
}

#[tonic::async_trait]
impl Cluster for Store {
    async fn member_list(&self, _req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let revision = self.state.lock().expect("lock").revision;
        Ok(Response::new(MemberListResponse {
            header: header(revision),
            members: vec![
                Member {
                    id: 2,
                    peer_addr: "127.0.0.1:1".into(),
                    client_addr: self.dead_member.clone(),
                    is_learner: false,
                },
                Member {
                    id: 1,
                    peer_addr: "127.0.0.1:1".into(),
                    client_addr: self.addr.clone(),
                    is_learner: false,
                },
            ],
        }))
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let state = self.state.lock().expect("lock");
        Ok(Response::new(StatusResponse {
            header: header(state.revision),
            id: 1,
            role: "leader".into(),
            term: 2,
            leader_id: 1,
            last_log_index: 20,
            applied_index: 20,
            db_size: 3 * 1024 * 1024,
            key_count: state.kvs.len() as u64,
            version: "0.1.0".into(),
            replication: vec![],
            pid: 4242,
            purged_index: 0,
            alarms: Vec::new(),
        }))
    }

    async fn member_add(
        &self,
        _: tonic::Request<keel_client::proto::MemberAddRequest>,
    ) -> Result<tonic::Response<keel_client::proto::MemberAddResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    async fn member_promote(
        &self,
        _: tonic::Request<keel_client::proto::MemberPromoteRequest>,
    ) -> Result<tonic::Response<keel_client::proto::MemberPromoteResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    async fn member_remove(
        &self,
        _: tonic::Request<keel_client::proto::MemberRemoveRequest>,
    ) -> Result<tonic::Response<keel_client::proto::MemberRemoveResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }

    async fn leader_transfer(
        &self,
        _: tonic::Request<keel_client::proto::LeaderTransferRequest>,
    ) -> Result<tonic::Response<keel_client::proto::LeaderTransferResponse>, tonic::Status> {
        Err(tonic::Status::unimplemented("not in this fake"))
    }
}
