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
    /// FailedPrecondition: a member with this id exists already (`member add` run again).
    MemberExists,
    /// FailedPrecondition: the learner to promote has not caught up with the leader yet (or has
    /// acknowledged nothing so far); promoting it later may succeed.
    LearnerCatchingUp,
}

impl Outcome {
    pub const ALL: [Outcome; 6] = [
        Outcome::SessionExpired,
        Outcome::SessionResultDropped,
        Outcome::StaleSession,
        Outcome::DiskFull,
        Outcome::MemberExists,
        Outcome::LearnerCatchingUp,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Outcome::SessionExpired => "session-expired",
            Outcome::SessionResultDropped => "session-result-dropped",
            Outcome::StaleSession => "stale-session",
            Outcome::DiskFull => "disk-full",
            Outcome::MemberExists => "member-exists",
            Outcome::LearnerCatchingUp => "learner-catching-up",
        }
    }

    /// The outcome with this [`Outcome::name`].
    pub fn named(name: &str) -> Option<Outcome> {
        Outcome::ALL.into_iter().find(|o| o.name() == name)
    }

    /// Is this the cluster's answer about an exactly-once session?
    pub fn is_session(self) -> bool {
        matches!(
            self,
            Outcome::SessionExpired | Outcome::SessionResultDropped | Outcome::StaleSession
        )
    }

    /// The outcome `status` names, if any.
    pub fn of(status: &tonic::Status) -> Option<Outcome> {
        Outcome::named(status.metadata().get(OUTCOME_HEADER)?.to_str().ok()?)
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
