//! The Maintenance service: streaming a point-in-time snapshot (a backup) off the leader.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_proto::v1::maintenance_server::Maintenance;
use keel_proto::v1::{SnapshotRequest, SnapshotResponse};
use tokio::io::AsyncReadExt;
use tonic::{Request, Response, Status};

use super::{deadline, fail, respond};
use crate::node::Node;

/// Bytes per streamed message.
const CHUNK: usize = 1024 * 1024;

pub struct MaintenanceService {
    pub node: Arc<Node>,
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<SnapshotResponse, Status>> + Send>>;

#[tonic::async_trait]
impl Maintenance for MaintenanceService {
    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, req: Request<SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let (revision, file) = node.fresh_snapshot(deadline).await.map_err(|e| fail(node, e))?;
        let total = file.metadata().map_err(|e| Status::internal(e.to_string()))?.len();
        let header = node.header(revision);
        let mut file = tokio::fs::File::from_std(file);
        let stream = async_stream(move |tx| async move {
            let mut first = Some(header);
            loop {
                let mut buf = vec![0u8; CHUNK];
                let n = match file.read(&mut buf).await {
                    Ok(n) => n,
                    Err(e) => {
                        let _ = tx
                            .send(Err(Status::internal(format!("reading the snapshot: {e}"))))
                            .await;
                        return;
                    }
                };
                if n == 0 && first.is_none() {
                    return;
                }
                buf.truncate(n);
                let msg = SnapshotResponse {
                    header: first.take(),
                    total_bytes: total,
                    blob: buf,
                };
                if tx.send(Ok(msg)).await.is_err() || n == 0 {
                    return;
                }
            }
        });
        Ok(respond(node, stream))
    }
}

/// A stream fed by a task through a small channel (back-pressure: the task reads the file only
/// as fast as the client takes it).
fn async_stream<F, Fut>(f: F) -> SnapshotStream
where
    F: FnOnce(tokio::sync::mpsc::Sender<Result<SnapshotResponse, Status>>) -> Fut,
    Fut: std::future::Future<Output = ()> + Send + 'static,
{
    let (tx, rx) = tokio::sync::mpsc::channel(4);
    tokio::spawn(f(tx));
    Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))
}
