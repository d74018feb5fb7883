//! A scripted keel server for client tests: each call asks a script what to answer, so a test can
//! say "Unavailable twice, then OK" and count what the client actually sent.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use keel_client::proto::{
    cluster_server::{Cluster, ClusterServer},
    kv_server::{Kv, KvServer},
    DeleteRangeRequest, DeleteRangeResponse, KeyValue, Member, MemberListRequest, MemberListResponse, PutRequest,
    PutResponse, RangeRequest, RangeResponse, ResponseHeader, StatusRequest, StatusResponse, TxnRequest, TxnResponse,
};
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic::{Code, Request, Response, Status};

/// What the fake answers to one call.
#[derive(Debug, Clone)]
pub enum Reply {
    Ok,
    Fail(Code, &'static str),
    /// Never answer.
    Hang,
}

pub type Script = Arc<dyn Fn(usize) -> Reply + Send + Sync>;

pub fn always(reply: Reply) -> Script {
    Arc::new(move |_| reply.clone())
}

/// `reply` for the first `n` calls, then OK.
pub fn first(n: usize, reply: Reply) -> Script {
    Arc::new(move |call| if call < n { reply.clone() } else { Reply::Ok })
}

#[derive(Default, Clone)]
pub struct Options {
    pub member_id: u64,
    /// Header `leader_id` on every answer.
    pub leader_id: u64,
    /// `keel-leader` metadata on every answer, success or error.
    pub leader_hint: Option<String>,
    /// Members for MemberList.
    pub members: Vec<Member>,
}

#[derive(Clone)]
struct Fake {
    script: Script,
    calls: Arc<AtomicUsize>,
    options: Options,
}

pub struct Server {
    pub addr: SocketAddr,
    pub calls: Arc<AtomicUsize>,
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

/// Starts a fake on 127.0.0.1:0; it runs until the test's runtime ends.
pub async fn start(script: Script, options: Options) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("local addr");
    let calls = Arc::new(AtomicUsize::new(0));
    let connections = Arc::new(AtomicUsize::new(0));
    let fake = Fake {
        script,
        calls: calls.clone(),
        options,
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

impl Fake {
    async fn answer<T>(&self, body: impl FnOnce(ResponseHeader) -> T) -> Result<Response<T>, Status> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        let hint = self.options.leader_hint.as_deref().and_then(|h| h.parse().ok());
        match (self.script)(call) {
            Reply::Ok => {
                let header = ResponseHeader {
                    cluster_id: "fake".into(),
                    member_id: self.options.member_id,
                    revision: 7,
                    raft_term: 2,
                    leader_id: self.options.leader_id,
                };
                let mut resp = Response::new(body(header));
                if let Some(hint) = hint {
                    resp.metadata_mut().insert(keel_proto::wire::LEADER_HEADER, hint);
                }
                Ok(resp)
            }
            Reply::Fail(code, message) => {
                let mut status = Status::new(code, message);
                if let Some(hint) = hint {
                    status.metadata_mut().insert(keel_proto::wire::LEADER_HEADER, hint);
                }
                Err(status)
            }
            Reply::Hang => std::future::pending().await,
        }
    }
}

#[tonic::async_trait]
impl Kv for Fake {
    async fn range(&self, req: Request<RangeRequest>) -> Result<Response<RangeResponse>, Status> {
        let key = req.into_inner().key;
        self.answer(|header| RangeResponse {
            header: Some(header),
            kvs: vec![KeyValue {
                key,
                value: b"v".to_vec(),
                create_revision: 1,
                mod_revision: 7,
                version: 3,
            }],
            count: 1,
            more: false,
        })
        .await
    }

    async fn put(&self, _req: Request<PutRequest>) -> Result<Response<PutResponse>, Status> {
        self.answer(|header| PutResponse {
            header: Some(header),
            prev_kv: None,
        })
        .await
    }

    async fn delete_range(&self, _req: Request<DeleteRangeRequest>) -> Result<Response<DeleteRangeResponse>, Status> {
        self.answer(|header| DeleteRangeResponse {
            header: Some(header),
            deleted: 1,
            prev_kvs: vec![],
        })
        .await
    }

    async fn txn(&self, _req: Request<TxnRequest>) -> Result<Response<TxnResponse>, Status> {
        self.answer(|header| TxnResponse {
            header: Some(header),
            succeeded: true,
            responses: vec![],
        })
        .await
    }
}

#[tonic::async_trait]
impl Cluster for Fake {
    async fn member_list(&self, _req: Request<MemberListRequest>) -> Result<Response<MemberListResponse>, Status> {
        let members = self.options.members.clone();
        self.answer(|header| MemberListResponse {
            header: Some(header),
            members,
        })
        .await
    }

    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        let id = self.options.member_id;
        self.answer(|header| StatusResponse {
            header: Some(header),
            id,
            role: "follower".into(),
            ..StatusResponse::default()
        })
        .await
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
