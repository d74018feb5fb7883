//! What client and server share beyond the generated messages: metadata names, and the
//! conditions a client acts on, named in an error's metadata so that no client parses messages.

/// Response and error metadata naming the leader's client address (a hint for the next request).
pub const LEADER_HEADER: &str = "keel-leader";

/// Error metadata naming an [`Outcome`].
pub const OUTCOME_HEADER: &str = "keel-outcome";

/// A condition a client tells apart by more than the status code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// FailedPrecondition: the exactly-once session is unknown to the cluster (expired or
    /// evicted); nothing was applied, and a new session may send the request again.
    SessionExpired,
    /// FailedPrecondition: the request was applied once, but its result was too large to keep
    /// for a retry; the outcome is known only to have happened.
    SessionResultDropped,
    /// FailedPrecondition: the request's sequence number is older than the session's last.
    StaleSession,
    /// ResourceExhausted: a member's disk is full; nothing was proposed, retry once space is back.
    DiskFull,
}

impl Outcome {
    pub const ALL: [Outcome; 4] = [
        Outcome::SessionExpired,
        Outcome::SessionResultDropped,
        Outcome::StaleSession,
        Outcome::DiskFull,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::SessionExpired => "session-expired",
            Outcome::SessionResultDropped => "session-result-dropped",
            Outcome::StaleSession => "stale-session",
            Outcome::DiskFull => "disk-full",
        }
    }

    /// The outcome `status` names, if any.
    pub fn of(status: &tonic::Status) -> Option<Outcome> {
        let name = status.metadata().get(OUTCOME_HEADER)?.to_str().ok()?;
        Outcome::ALL.into_iter().find(|o| o.name() == name)
    }

    /// Name this outcome in `status`.
    pub fn tag(self, status: &mut tonic::Status) {
        status
            .metadata_mut()
            .insert(OUTCOME_HEADER, tonic::metadata::MetadataValue::from_static(self.name()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_outcome_survives_the_metadata() {
        for o in Outcome::ALL {
            let mut status = tonic::Status::failed_precondition("m");
            assert_eq!(Outcome::of(&status), None);
            o.tag(&mut status);
            assert_eq!(Outcome::of(&status), Some(o));
        }
    }
}
