//! The client's error type.

use tonic::Code;

/// Why a request failed.
///
/// The variants separate what a caller can act on: fix the input ([`Error::InvalidArgument`]), wait
/// for the cluster ([`Error::Unavailable`]), or find out what happened before writing again
/// ([`Error::OutcomeUnknown`]).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server rejected the request as malformed (an empty key, a value too large, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The request is well formed but not allowed in the cluster's state (an invalid membership
    /// change).
    #[error("{0}")]
    FailedPrecondition(String),
    /// No leader, no quorum, or no endpoint reachable, until the deadline. A write that failed this
    /// way was not applied.
    #[error("{0}")]
    Unavailable(String),
    /// A write may or may not have been applied: the connection broke or the deadline passed after
    /// the request was sent. It was not retried, because retrying could apply it twice.
    #[error("outcome unknown: {0}")]
    OutcomeUnknown(String),
    /// A read did not complete before the request deadline.
    #[error("deadline exceeded")]
    DeadlineExceeded,
    /// The client was given no endpoints.
    #[error("no endpoints given")]
    NoEndpoints,
    /// A read failed on the connection (not by a server answer) until the deadline.
    #[error("transport error: {0}")]
    Transport(String),
    /// The cluster's answer about the request's exactly-once session (FailedPrecondition):
    /// expired, its result dropped, or a request older than the session's last. The client handles
    /// the first two itself (a new session; an unknown outcome).
    #[error("{1}")]
    Session(keel_proto::wire::Outcome, String),
    /// FailedPrecondition naming another condition a caller acts on: the member exists already,
    /// the learner to promote is still catching up.
    #[error("{1}")]
    Refused(keel_proto::wire::Outcome, String),
    /// A watch's start revision is older than the history the cluster keeps (compacted up to
    /// this revision): read the current state, then watch from after it.
    #[error("required revision has been compacted (history kept from {} on)", .0 + 1)]
    Compacted(u64),
    /// What the request names does not exist (a lease).
    #[error("{0}")]
    NotFound(String),
    /// What the request would create exists already (a lease id in use).
    #[error("{0}")]
    AlreadyExists(String),
    /// Any other status the server answered with.
    #[error("{}: {}", .0.code(), .0.message())]
    Other(tonic::Status),
}

impl Error {
    /// The gRPC code closest to this error, for callers that map errors onward.
    pub fn code(&self) -> Code {
        match self {
            Error::InvalidArgument(_) | Error::NoEndpoints => Code::InvalidArgument,
            Error::FailedPrecondition(_) | Error::Session(..) | Error::Refused(..) => Code::FailedPrecondition,
            Error::Unavailable(_) | Error::Transport(_) => Code::Unavailable,
            Error::OutcomeUnknown(_) => Code::Unknown,
            Error::DeadlineExceeded => Code::DeadlineExceeded,
            Error::Compacted(_) => Code::OutOfRange,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::Other(status) => status.code(),
        }
    }

    /// True when a write that failed with this error surely did not take effect, so the caller may
    /// send it again.
    pub fn is_write_safe_to_retry(&self) -> bool {
        !matches!(self, Error::OutcomeUnknown(_))
    }

    /// True when the error is transient: the same request may succeed later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            Error::Unavailable(_) | Error::DeadlineExceeded | Error::Transport(_) | Error::OutcomeUnknown(_)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_name_the_cause_without_noise() {
        assert_eq!(
            Error::InvalidArgument("key is empty".into()).to_string(),
            "key is empty"
        );
        assert_eq!(Error::Unavailable("no leader".into()).to_string(), "no leader");
        assert_eq!(
            Error::OutcomeUnknown("connection reset".into()).to_string(),
            "outcome unknown: connection reset"
        );
        let other = Error::Other(tonic::Status::internal("boom"));
        assert_eq!(other.code(), Code::Internal);
        assert!(other.to_string().ends_with(": boom"), "{other}");
        assert!(!Error::OutcomeUnknown(String::new()).is_write_safe_to_retry());
        assert!(Error::Unavailable(String::new()).is_write_safe_to_retry());
    }
}
