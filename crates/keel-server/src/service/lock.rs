//! The Lock service (`lock.proto`): a lock is a queue of keys under its name (see `queue`), held
//! by the oldest. The holder's fencing token is its key's create revision.

use std::sync::Arc;

use keel_proto::v1::lock_server::Lock;
use keel_proto::v1::{LockRequest, LockResponse, UnlockRequest, UnlockResponse};
use tonic::Status;

use super::queue::{self, LeaveOnDrop};
use super::{deadline, fail, respond};
use crate::error::NodeError;
use crate::metrics::Gauge;
use crate::node::Node;

pub struct LockService {
    pub node: Arc<Node>,
}

/// A waiter counted (see [`waiter`]), until dropped.
pub struct Waiting {
    _gauge: Gauge,
    /// The member and the user it is counted against.
    user: Option<(Arc<Node>, String)>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some((node, user)) = &self.user {
            let mut by_user = node.waiters_by_user.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(n) = by_user.get_mut(user) {
                *n -= 1;
                if *n == 0 {
                    by_user.remove(user);
                }
            }
        }
    }
}

/// Count a waiter (a locker, a campaigner) for as long as it waits, unless this member holds
/// `--max-lock-waiters` already, or the caller's user `--max-lock-waiters-per-user`.
pub fn waiter(node: &Node) -> Result<Waiting, NodeError> {
    let max = node.service_limits.max_lock_waiters;
    let gauge = Gauge::up_within(&node.metrics.lock_waiters, max).ok_or_else(|| {
        node.metrics.refused(
            "lock_waiters",
            NodeError::LimitReached(format!(
                "member {} has {max} lockers and campaigners waiting already (--max-lock-waiters); try another member or later",
                node.id
            )),
        )
    })?;
    let Some(user) = crate::auth::Caller::current().user else {
        return Ok(Waiting {
            _gauge: gauge,
            user: None,
        });
    };
    let max = node.service_limits.max_lock_waiters_per_user;
    {
        let mut by_user = node.waiters_by_user.lock().unwrap_or_else(|e| e.into_inner());
        let n = by_user.entry(user.clone()).or_default();
        if *n >= max {
            return Err(node.metrics.refused(
                "lock_waiters_per_user",
                NodeError::LimitReached(format!(
                    "user {user} has {max} lockers and campaigners waiting on member {} already (--max-lock-waiters-per-user)",
                    node.id
                )),
            ));
        }
        *n += 1;
    }
    Ok(Waiting {
        _gauge: gauge,
        user: Some((node.shared()?, user)),
    })
}

#[tonic::async_trait]
impl Lock for LockService {
    async fn lock(&self, req: tonic::Request<LockRequest>) -> Result<tonic::Response<LockResponse>, Status> {
        let node = &self.node;
        let deadline = queue::wait_deadline(req.metadata());
        let req = req.into_inner();
        let held = async {
            queue::check(&req.name, req.lease)?;
            let _waiting = waiter(node)?;
            let key = queue::key_of(&req.name, req.lease);
            let place = queue::join(node, &key, &[], req.lease, deadline).await?;
            let leave = LeaveOnDrop::new(node, &place);
            let at = queue::wait_turn(node, &req.name, &place, deadline).await?;
            leave.keep();
            Ok::<_, NodeError>((place, at))
        };
        let (place, at) = held.await.map_err(|e| fail(node, e))?;
        Ok(respond(
            node,
            LockResponse {
                header: Some(node.header(at)),
                key: place.key,
                fencing_token: place.rev,
            },
        ))
    }

    async fn unlock(&self, req: tonic::Request<UnlockRequest>) -> Result<tonic::Response<UnlockResponse>, Status> {
        let node = &self.node;
        let deadline = deadline(req.metadata());
        let req = req.into_inner();
        if req.key.is_empty() {
            return Err(fail(node, NodeError::InvalidArgument("the key is empty".into())));
        }
        let revision = queue::leave(node, &req.key, 0, Some(deadline))
            .await
            .map_err(|e| fail(node, e))?;
        Ok(respond(
            node,
            UnlockResponse {
                header: Some(node.header(revision)),
            },
        ))
    }
}
