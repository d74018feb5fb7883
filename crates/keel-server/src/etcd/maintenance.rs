//! etcd's Maintenance service: what each call means for keel.
//!
//! - `Status`: this member's view, with etcd's fields (`dbSize` is the data directory's bytes on
//!   disk, log and state; `raftIndex` the last log index).
//! - `Alarm`: keel's alarms are per member and raised by the member itself (a full disk, see
//!   `disk/`); GET lists this member's, as NOSPACE. They clear themselves once space is freed, so
//!   ACTIVATE and DEACTIVATE are refused.
//! - `Defragment`: sled reclaims the space of rewritten segments itself, in the background; there
//!   is nothing to do, and the call answers at once.
//! - `HashKV`: a hash of every live key with its value and revisions as of the revision asked
//!   (0: the current one), the same on every member at the same revision, whatever history each
//!   has compacted away (not etcd's values, which hash its own files). `Hash`: the member's
//!   stored versions, history included (`KvReader::hash_kv`), which members agree on when their
//!   compaction points do.
//! - `Snapshot`: keel's snapshot of the state (the backup that `keelctl backup` takes), in etcd's
//!   stream shape: chunks with the bytes remaining, then the SHA-256 of everything sent, which
//!   `etcdctl snapshot save` appends to the file as etcd's does. The file is keel's, not bbolt's,
//!   padded with zeros to whole 512-byte pages (which etcd's client checks for).
//! - `MoveLeader`: keel's leader transfer, from any member.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::maintenance_server::Maintenance;
use keel_storage::{KeyRange, RangeOp, ReadError};
use sha2::Digest;
use tokio::io::AsyncReadExt;
use tonic::{Code, Request, Response, Status};

use super::{error, header, ETCD_VERSION};
use crate::node::Node;
use crate::service::deadline;

/// Bytes per snapshot message (etcd sends 32 KiB; larger is fewer messages for the same data).
const CHUNK: usize = 1024 * 1024;
/// etcd's client checks that the bytes before the SHA-256 are whole 512-byte pages (as a bbolt
/// file is): the stream pads keel's snapshot with zeros to a multiple of this.
const PAGE: u64 = 512;
/// Bytes of pairs per read of the hash's scan.
const HASH_PAGE_BYTES: usize = 4 * 1024 * 1024;

pub struct EtcdMaintenance {
    node: Arc<Node>,
}

impl EtcdMaintenance {
    pub fn new(node: Arc<Node>) -> Self {
        EtcdMaintenance { node }
    }
}

type SnapshotStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotResponse, Status>> + Send>>;

/// The hash of every live pair as of revision `rev`: key, value, create and mod revision and
/// version of each, in key order. A read in the past is the same whenever it runs, so members
/// at different points of their own (node-local) history compaction agree.
fn hash_live(node: &Node, rev: u64) -> Result<u32, ReadError> {
    let mut hasher = sha2::Sha256::new();
    let mut start = Vec::new();
    loop {
        let op = RangeOp::new(KeyRange::From(start.clone()));
        let (page, _) = node.reader.range_at(&op, rev, HASH_PAGE_BYTES)?;
        for kv in &page.kvs {
            for part in [&kv.key, &kv.value] {
                hasher.update((part.len() as u64).to_be_bytes());
                hasher.update(part);
            }
            for n in [kv.create_revision, kv.mod_revision, kv.version] {
                hasher.update(n.to_be_bytes());
            }
        }
        match (page.more, page.kvs.last()) {
            (true, Some(last)) => {
                start = last.key.clone();
                start.push(0);
            }
            _ => {
                let d = hasher.finalize();
                return Ok(u32::from_be_bytes(d[..4].try_into().expect("4 bytes")));
            }
        }
    }
}

/// A read error in etcd's words.
fn read_error(node: &Node, e: ReadError) -> Status {
    match e {
        ReadError::Compacted { .. } => error::status(Code::OutOfRange, error::COMPACTED),
        ReadError::FutureRevision { .. } => error::status(Code::OutOfRange, error::FUTURE_REV),
        e => error::node(crate::service::kv::read_failed(node, e)),
    }
}

impl EtcdMaintenance {
    /// Run `f` on a blocking thread (a hash reads the whole store).
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Node) -> Result<T, ReadError> + Send + 'static,
    ) -> Result<T, Status> {
        let node = self.node.clone();
        tokio::task::spawn_blocking(move || f(&node).map_err(|e| read_error(&node, e)))
            .await
            .map_err(|e| Status::internal(format!("hash failed: {e}")))?
    }
}

#[tonic::async_trait]
impl Maintenance for EtcdMaintenance {
    async fn alarm(&self, req: Request<pb::AlarmRequest>) -> Result<Response<pb::AlarmResponse>, Status> {
        use pb::alarm_request::AlarmAction;
        crate::auth::Caller::current().require_user(&self.node)?;
        let r = req.into_inner();
        if AlarmAction::try_from(r.action) != Ok(AlarmAction::Get) {
            return Err(Status::unimplemented(
                "keel's alarms are raised and cleared by the member itself (a full disk clears once space is freed)",
            ));
        }
        let node = &self.node;
        let alarms = node
            .disk
            .alarm()
            .map(|_| pb::AlarmMember {
                member_id: node.id,
                alarm: pb::AlarmType::Nospace as i32,
            })
            .into_iter()
            .filter(|a| r.member_id == 0 || r.member_id == a.member_id)
            .collect();
        Ok(Response::new(pb::AlarmResponse {
            header: Some(header(node, node.reader.revision())),
            alarms,
        }))
    }

    async fn status(&self, _req: Request<pb::StatusRequest>) -> Result<Response<pb::StatusResponse>, Status> {
        crate::auth::Caller::current().require_user(&self.node)?;
        let node = &self.node;
        let m = node.metrics();
        let leader = m.current_leader.unwrap_or(0);
        let mut errors = Vec::new();
        if leader == 0 {
            errors.push(error::NO_LEADER.to_string());
        }
        errors.extend(
            node.disk
                .alarm()
                .map(|_| format!("memberID:{} alarm:NOSPACE ", node.id)),
        );
        let voter = m.membership_config.membership().voter_ids().any(|id| id == node.id);
        let size = node.reader.db_size() as i64;
        Ok(Response::new(pb::StatusResponse {
            header: Some(header(node, node.reader.revision())),
            version: ETCD_VERSION.to_string(),
            db_size: size,
            leader,
            raft_index: m.last_log_index.unwrap_or(0),
            raft_term: m.current_term,
            raft_applied_index: node.applied_index(&m),
            errors,
            db_size_in_use: size,
            is_learner: !voter,
        }))
    }

    async fn defragment(
        &self,
        _req: Request<pb::DefragmentRequest>,
    ) -> Result<Response<pb::DefragmentResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        Ok(Response::new(pb::DefragmentResponse {
            header: Some(header(&self.node, self.node.reader.revision())),
        }))
    }

    async fn hash(&self, _req: Request<pb::HashRequest>) -> Result<Response<pb::HashResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let rev = self.node.reader.revision();
        let (hash, _) = self.blocking(move |node| node.reader.hash_kv(rev)).await?;
        Ok(Response::new(pb::HashResponse {
            header: Some(header(&self.node, rev)),
            hash,
        }))
    }

    async fn hash_kv(&self, req: Request<pb::HashKvRequest>) -> Result<Response<pb::HashKvResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let rev = match req.into_inner().revision {
            r if r > 0 => r as u64,
            _ => self.node.reader.revision(),
        };
        let hash = self.blocking(move |node| hash_live(node, rev)).await?;
        Ok(Response::new(pb::HashKvResponse {
            header: Some(header(&self.node, rev)),
            hash,
            compact_revision: self.node.reader.compacted() as i64,
        }))
    }

    type SnapshotStream = SnapshotStream;

    async fn snapshot(&self, req: Request<pb::SnapshotRequest>) -> Result<Response<SnapshotStream>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let node = &self.node;
        let deadline = deadline(req.metadata());
        // etcd snapshots the member asked; keel does too, once it has applied what the cluster
        // had committed when the request came.
        node.read_barrier(deadline).await.map_err(error::node)?;
        let (revision, file) = node.snapshot_here(deadline).await.map_err(error::node)?;
        let total = file.metadata().map_err(|e| Status::internal(e.to_string()))?.len();
        let header = header(node, revision);
        let mut file = tokio::fs::File::from_std(file);
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        node.spawn(async move {
            let mut digest = sha2::Sha256::new();
            let mut left = total.div_ceil(PAGE) * PAGE;
            let mut unread = total;
            while left > 0 {
                let mut buf = vec![0u8; CHUNK.min(left as usize)];
                // The file, then zeros up to the padded size.
                let n = (unread as usize).min(buf.len());
                unread -= n as u64;
                if let Err(e) = file.read_exact(&mut buf[..n]).await {
                    let _ = tx
                        .send(Err(Status::internal(format!("reading the snapshot: {e}"))))
                        .await;
                    return;
                }
                digest.update(&buf);
                left -= buf.len() as u64;
                let msg = pb::SnapshotResponse {
                    header: Some(header),
                    remaining_bytes: left,
                    blob: buf,
                };
                if tx.send(Ok(msg)).await.is_err() {
                    return;
                }
            }
            // etcd's client appends this to the file; `snapshot restore` checks it there.
            let msg = pb::SnapshotResponse {
                header: Some(header),
                remaining_bytes: 0,
                blob: digest.finalize().to_vec(),
            };
            let _ = tx.send(Ok(msg)).await;
        });
        Ok(Response::new(
            Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx)) as SnapshotStream
        ))
    }

    async fn move_leader(
        &self,
        req: Request<pb::MoveLeaderRequest>,
    ) -> Result<Response<pb::MoveLeaderResponse>, Status> {
        crate::auth::Caller::current().require_root(&self.node)?;
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let target = req.into_inner().target_id;
        let member = node
            .metrics()
            .membership_config
            .membership()
            .voter_ids()
            .any(|id| id == target);
        if !member {
            return Err(error::status(Code::FailedPrecondition, error::BAD_TRANSFEREE));
        }
        node.transfer_leader(Some(target), deadline)
            .await
            .map_err(error::node)?;
        Ok(Response::new(pb::MoveLeaderResponse {
            header: Some(header(node, node.reader.revision())),
        }))
    }
}
