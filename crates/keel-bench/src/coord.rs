//! The coordination operations of the closed loop (leases and locks), for keel and etcd, beside
//! the KV ones in `target.rs`. keel is driven over raw `keel.v1` gRPC, etcd through the
//! `etcd-client` crate, as for KV.

use keel_proto::v1::lease_client::LeaseClient;
use keel_proto::v1::lock_client::LockClient;
use keel_proto::v1::{LeaseGrantRequest, LeaseRevokeRequest, LockRequest, UnlockRequest};

use crate::target::Target;

impl Target {
    /// Grant a lease of `ttl` seconds; its id.
    pub async fn lease_grant(&self, conn: usize, ttl: i64) -> anyhow::Result<i64> {
        match self {
            Target::Keel { channels } => {
                let ch = channels[conn % channels.len()].clone();
                let resp = LeaseClient::new(ch)
                    .grant(LeaseGrantRequest { ttl, id: 0 })
                    .await?
                    .into_inner();
                Ok(resp.id)
            }
            #[cfg(feature = "etcd")]
            Target::Etcd { clients } => {
                let resp = clients[conn % clients.len()].lease_client().grant(ttl, None).await?;
                Ok(resp.id())
            }
        }
    }

    pub async fn lease_revoke(&self, conn: usize, id: i64) -> anyhow::Result<()> {
        match self {
            Target::Keel { channels } => {
                let ch = channels[conn % channels.len()].clone();
                LeaseClient::new(ch).revoke(LeaseRevokeRequest { id }).await?;
            }
            #[cfg(feature = "etcd")]
            Target::Etcd { clients } => {
                clients[conn % clients.len()].lease_client().revoke(id).await?;
            }
        }
        Ok(())
    }

    /// One round of lease churn: grant a lease, put `key` attached to it, revoke it.
    pub async fn lease_cycle(&self, conn: usize, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        let id = self.lease_grant(conn, 60).await?;
        match self {
            Target::Keel { channels } => {
                let ch = channels[conn % channels.len()].clone();
                crate::target::keel_put(ch, key, value, id).await?;
            }
            #[cfg(feature = "etcd")]
            Target::Etcd { clients } => {
                let options = etcd_client::PutOptions::new().with_lease(id);
                clients[conn % clients.len()]
                    .kv_client()
                    .put(key, value, Some(options))
                    .await?;
            }
        }
        self.lease_revoke(conn, id).await
    }

    /// Take the lock `name` as the owner of `lease` (waiting while another holds it), then
    /// release it.
    pub async fn lock_cycle(&self, conn: usize, name: &[u8], lease: i64) -> anyhow::Result<()> {
        match self {
            Target::Keel { channels } => {
                let mut locks = LockClient::new(channels[conn % channels.len()].clone());
                let held = locks
                    .lock(LockRequest {
                        name: name.to_vec(),
                        lease,
                    })
                    .await?
                    .into_inner();
                locks.unlock(UnlockRequest { key: held.key }).await?;
            }
            #[cfg(feature = "etcd")]
            Target::Etcd { clients } => {
                let mut locks = clients[conn % clients.len()].lock_client();
                let options = etcd_client::LockOptions::new().with_lease(lease);
                let held = locks.lock(name.to_vec(), Some(options)).await?;
                locks.unlock(held.key().to_vec()).await?;
            }
        }
        Ok(())
    }
}
