//! The client-facing gRPC services (KV, Cluster, Maintenance, Watch, Lease, Lock, Election) and what they
//! share: deadlines and leader hints.

pub mod cluster;
pub mod election;
pub mod kv;
pub mod lease;
pub mod lock;
pub mod maintenance;
pub mod queue;
pub mod watch;

use std::time::{Duration, Instant};

use tonic::metadata::{MetadataMap, MetadataValue};

use crate::error::NodeError;
use crate::node::Node;

/// Response metadata naming the leader's client address, so clients can go there directly.
pub const LEADER_HINT: &str = keel_proto::wire::LEADER_HEADER;

/// Used when a client sends no deadline.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// The longest wait honoured for one request. gRPC allows timeouts of up to 8 digits of hours,
/// and a client (or a peer's forwarded request) may send anything; a deadline past the clock's
/// range would overflow `Instant + Duration`. No unary request needs more than this.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// The request's deadline: the client's `grpc-timeout` (at most [`MAX_TIMEOUT`]), less a margin
/// so that our own precise error reaches the client before its deadline expires.
pub fn deadline(metadata: &MetadataMap) -> Instant {
    let timeout = metadata
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_TIMEOUT);
    deadline_in(timeout.min(MAX_TIMEOUT).mul_f64(0.95))
}

/// The instant `timeout` from now, with `timeout` clamped to [`MAX_TIMEOUT`].
pub fn deadline_in(timeout: Duration) -> Instant {
    Instant::now() + timeout.min(MAX_TIMEOUT)
}

/// Parse the gRPC wire format of a timeout: digits and a unit (H, M, S, m, u, n).
fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.saturating_mul(3600)),
        "M" => Duration::from_secs(n.saturating_mul(60)),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn add_hint(node: &Node, metadata: &mut MetadataMap) {
    if let Some(addr) = node.leader_client_addr() {
        if let Ok(v) = MetadataValue::try_from(addr.as_str()) {
            metadata.insert(LEADER_HINT, v);
        }
    }
}

/// A successful response, with the leader hint.
pub fn respond<T>(node: &Node, msg: T) -> tonic::Response<T> {
    let mut resp = tonic::Response::new(msg);
    add_hint(node, resp.metadata_mut());
    resp
}

/// A failed response, with the leader hint.
pub fn fail(node: &Node, e: NodeError) -> tonic::Status {
    let mut status = e.to_status();
    add_hint(node, status.metadata_mut());
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse() {
        assert_eq!(parse_grpc_timeout("500m"), Some(Duration::from_millis(500)));
        assert_eq!(parse_grpc_timeout("3S"), Some(Duration::from_secs(3)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout(""), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("m"), None);
        assert_eq!(parse_grpc_timeout("-5S"), None);
    }

    #[test]
    fn absurd_timeouts_are_clamped() {
        for header in ["9999999999999999999S", "18446744073709551615H", "99999999H"] {
            let mut metadata = MetadataMap::new();
            metadata.insert("grpc-timeout", header.parse().unwrap());
            let left = deadline(&metadata).saturating_duration_since(Instant::now());
            assert!(left <= MAX_TIMEOUT, "{header}: {left:?}");
        }
        assert!(deadline_in(Duration::MAX) <= Instant::now() + MAX_TIMEOUT);
    }
}
