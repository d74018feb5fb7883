//! Hooks through which the node measures storage work, without this crate knowing about any
//! metrics library.

use std::time::Duration;

/// Told about storage work as it happens. Every method has a no-op default; implementations must
/// be cheap and must not block (they run on the apply and snapshot paths).
pub trait Observer: Send + Sync {
    /// `entries` log entries were applied to the state machine in one call, taking `took`.
    fn applied(&self, entries: usize, took: Duration) {
        let _ = (entries, took);
    }
    /// A snapshot of `bytes` bytes was built in `took`.
    fn snapshot_built(&self, bytes: u64, took: Duration) {
        let _ = (bytes, took);
    }
    /// A snapshot received from the leader was installed in `took`.
    fn snapshot_installed(&self, took: Duration) {
        let _ = took;
    }
    /// An applied entry changed these leases (see `sm::leases`); called after it is applied.
    fn leases_changed(&self, events: &[crate::sm::LeaseEvent]) {
        let _ = events;
    }
    /// The whole state was replaced (a snapshot was installed): these are every lease now.
    fn leases_reloaded(&self, leases: &[crate::sm::LeaseInfo]) {
        let _ = leases;
    }
}

/// The observer used when none is set.
pub(crate) struct Ignore;

impl Observer for Ignore {}
