//! keel's errors in etcd's words.
//!
//! etcd's Go client turns a status into a typed error by its *message*, not its code (rpctypes'
//! `errStringToError`), and other clients test codes; so each refusal that has an etcd
//! counterpart goes out with etcd's exact text and code. What has none keeps keel's own text,
//! under the code that keeps its promise (Unavailable: surely not applied, safe to retry).
//! FailedPrecondition is kept for etcd's own texts only: the 3.4 Go client reports any other
//! FailedPrecondition as "the client connection is closing".

use keel_storage::InvalidRequest;
use tonic::{Code, Status};

use crate::error::NodeError;

pub const EMPTY_KEY: &str = "etcdserver: key is not provided";
pub const KEY_NOT_FOUND: &str = "etcdserver: key not found";
pub const VALUE_PROVIDED: &str = "etcdserver: value is provided";
pub const LEASE_PROVIDED: &str = "etcdserver: lease is provided";
pub const TOO_MANY_OPS: &str = "etcdserver: too many operations in txn request";
pub const DUPLICATE_KEY: &str = "etcdserver: duplicate key given in txn request";
pub const COMPACTED: &str = "etcdserver: mvcc: required revision has been compacted";
pub const FUTURE_REV: &str = "etcdserver: mvcc: required revision is a future revision";
pub const NO_SPACE: &str = "etcdserver: mvcc: database space exceeded";
pub const LEASE_NOT_FOUND: &str = "etcdserver: requested lease not found";
pub const LEASE_EXISTS: &str = "etcdserver: lease already exists";
pub const LEASE_TTL_TOO_LARGE: &str = "etcdserver: too large lease TTL";
pub const MEMBER_NOT_FOUND: &str = "etcdserver: member not found";
pub const MEMBER_NOT_LEARNER: &str = "etcdserver: can only promote a learner member";
pub const LEARNER_NOT_READY: &str = "etcdserver: can only promote a learner member which is in sync with leader";
pub const MEMBER_BAD_URLS: &str = "etcdserver: given member URLs are invalid";
pub const PEER_URL_EXISTS: &str = "etcdserver: Peer URLs already exists";
pub const REQUEST_TOO_LARGE: &str = "etcdserver: request is too large";
pub const TOO_MANY_REQUESTS: &str = "etcdserver: too many requests";
pub const AUTH_NOT_ENABLED: &str = "etcdserver: authentication is not enabled";
pub const NO_LEADER: &str = "etcdserver: no leader";
pub const NOT_LEADER: &str = "etcdserver: not leader";
pub const TIMEOUT: &str = "etcdserver: request timed out";
pub const BAD_TRANSFEREE: &str = "etcdserver: bad leader transferee";
pub const ELECTION_NOT_LEADER: &str = "election: not leader";
pub const ELECTION_NO_LEADER: &str = "election: no leader";

/// An etcd error: one of the texts above with its code.
pub fn status(code: Code, text: &str) -> Status {
    Status::new(code, text)
}

pub fn empty_key() -> Status {
    status(Code::InvalidArgument, EMPTY_KEY)
}

/// A refusal of keel's validation, in etcd's words where etcd has them.
pub fn invalid(e: &InvalidRequest) -> Status {
    match e {
        InvalidRequest::EmptyKey => empty_key(),
        InvalidRequest::KeyTooLarge { .. }
        | InvalidRequest::ValueTooLarge { .. }
        | InvalidRequest::RequestTooLarge { .. } => status(Code::InvalidArgument, REQUEST_TOO_LARGE),
        InvalidRequest::TooManyTxnOps { .. } => status(Code::InvalidArgument, TOO_MANY_OPS),
        InvalidRequest::DuplicateTxnKey { .. } => status(Code::InvalidArgument, DUPLICATE_KEY),
        InvalidRequest::LeaseId(_) => status(Code::NotFound, LEASE_NOT_FOUND),
        InvalidRequest::ValueProvided => status(Code::InvalidArgument, VALUE_PROVIDED),
        InvalidRequest::LeaseProvided => status(Code::InvalidArgument, LEASE_PROVIDED),
        InvalidRequest::LeaseTtl(_) => status(Code::OutOfRange, LEASE_TTL_TOO_LARGE),
        other => Status::invalid_argument(other.to_string()),
    }
}

/// A node's refusal, in etcd's words where etcd has them.
pub fn node(e: NodeError) -> Status {
    match e {
        NodeError::NotLeader { .. } => status(Code::Unavailable, NO_LEADER),
        NodeError::Unavailable(m) => Status::unavailable(m),
        // etcd answers a proposal that did not finish in time so; the outcome is unknown.
        NodeError::DeadlineExceeded(_) => status(Code::Unavailable, TIMEOUT),
        NodeError::ResourceExhausted(_) => status(Code::ResourceExhausted, NO_SPACE),
        NodeError::NotFound(_) => status(Code::NotFound, LEASE_NOT_FOUND),
        NodeError::AlreadyExists(_) => status(Code::FailedPrecondition, LEASE_EXISTS),
        NodeError::LimitReached(_) => status(Code::ResourceExhausted, TOO_MANY_REQUESTS),
        NodeError::InvalidArgument(m) => Status::invalid_argument(m),
        NodeError::FailedPrecondition(m) | NodeError::Refused { message: m, .. } => Status::unknown(m),
        NodeError::Unknown(m) => Status::unknown(m),
        NodeError::Internal(m) => Status::internal(m),
        NodeError::Auth(e) => crate::auth::status(e),
    }
}

/// A status from one of keel's own services, in etcd's words: the services keel's etcd API
/// reuses answer in keel's, whose codes already say what happened.
pub fn from_keel(s: Status) -> Status {
    // Already etcd's own words (the auth errors).
    if s.message().starts_with("etcdserver: ") {
        return s;
    }
    let text = match s.code() {
        Code::NotFound if s.message().contains("lease") => LEASE_NOT_FOUND,
        Code::AlreadyExists if s.message().contains("lease") => LEASE_EXISTS,
        Code::ResourceExhausted if s.message().contains("disk") => NO_SPACE,
        Code::ResourceExhausted => TOO_MANY_REQUESTS,
        Code::DeadlineExceeded => return status(Code::Unavailable, TIMEOUT),
        Code::FailedPrecondition => return Status::unknown(s.message()),
        _ => return s,
    };
    status(
        match text {
            LEASE_EXISTS => Code::FailedPrecondition,
            _ => s.code(),
        },
        text,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_carry_etcds_texts_and_codes() {
        let s = invalid(&InvalidRequest::EmptyKey);
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, EMPTY_KEY));
        let s = invalid(&InvalidRequest::TooManyTxnOps {
            what: "compares",
            len: 200,
            max: 128,
        });
        assert_eq!((s.code(), s.message()), (Code::InvalidArgument, TOO_MANY_OPS));
        let s = node(NodeError::NotLeader { leader: None });
        assert_eq!((s.code(), s.message()), (Code::Unavailable, NO_LEADER));
        let s = node(NodeError::NotFound("lease 7 not found".into()));
        assert_eq!((s.code(), s.message()), (Code::NotFound, LEASE_NOT_FOUND));
        // No FailedPrecondition with a text etcd's client does not know.
        let s = node(NodeError::FailedPrecondition("something keel-specific".into()));
        assert_eq!(s.code(), Code::Unknown);
        let s = from_keel(Status::already_exists("lease 5 already exists"));
        assert_eq!((s.code(), s.message()), (Code::FailedPrecondition, LEASE_EXISTS));
    }
}
