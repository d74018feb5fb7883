//! Deciding, after a failed attempt, whether the request may be sent again, and what to tell the
//! caller when it may not.
//!
//! The rule that matters: a write is retried only when it surely did not apply, which is when the
//! server answered `Unavailable` (keel guarantees such a write was not applied) or when no
//! connection could be made. Everything else after the request left the client (a timeout, a reset
//! connection, an `Unknown` answer) makes the outcome unknown, and retrying could apply the write
//! twice. Reads have no such risk and are retried on any transient failure.

use std::error::Error as StdError;
use std::time::Duration;

use rand::Rng;
use tonic::{Code, Status};

use crate::Error;

/// Whether a request changes the store, which decides what is safe to retry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Read,
    Write,
    /// A write with a client session: the server applies it at most once, so it is retried like
    /// a read, but still reported like a write when the retries run out.
    Idempotent,
}

impl Kind {
    /// May an attempt whose outcome is unknown be sent again?
    fn retries_unknown(self) -> bool {
        self != Kind::Write
    }

    /// Is an unknown outcome an unknown *write*?
    fn writes(self) -> bool {
        self != Kind::Read
    }
}

/// How one attempt failed.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The server answered with this status.
    Answered(Status),
    /// No connection could be made, so the request never left the client.
    NotSent(String),
    /// The request may have reached the server, but no answer came back.
    Lost { message: String, timed_out: bool },
}

impl Failure {
    /// Sorts a failed call by where it failed. tonic builds a status on the client side (with the
    /// underlying error as its source) when the transport fails; a status decoded from the server's
    /// answer has no source.
    pub(crate) fn from_status(status: Status) -> Failure {
        let Some(source) = status.source() else {
            return Failure::Answered(status);
        };
        let mut connect = false;
        let mut timed_out = status.code() == Code::DeadlineExceeded;
        let mut next: Option<&(dyn StdError + 'static)> = Some(source);
        while let Some(err) = next {
            connect |= err.is::<tonic::ConnectError>();
            timed_out |= err.is::<tonic::TimeoutExpired>();
            next = err.source();
        }
        let message = describe(&status);
        if connect {
            Failure::NotSent(message)
        } else {
            Failure::Lost { message, timed_out }
        }
    }

    /// The failure as the caller sees it when the request is not retried after it.
    pub(crate) fn final_error(self, kind: Kind) -> Error {
        match self {
            Failure::Answered(status) => answered_error(status, kind),
            Failure::NotSent(message) => Error::Unavailable(message),
            Failure::Lost { message, .. } if kind.writes() => Error::OutcomeUnknown(message),
            Failure::Lost { timed_out: true, .. } => Error::DeadlineExceeded,
            Failure::Lost { message, .. } => Error::Transport(message),
        }
    }

    /// True when sending the request again is safe and may help.
    pub(crate) fn is_retryable(&self, kind: Kind) -> bool {
        match self {
            Failure::Answered(status) => match status.code() {
                Code::Unavailable => true,
                Code::DeadlineExceeded | Code::Unknown | Code::Cancelled => kind.retries_unknown(),
                _ => false,
            },
            Failure::NotSent(_) => true,
            Failure::Lost { .. } => kind.retries_unknown(),
        }
    }
}

/// Maps a server's answer to the error the caller gets.
fn answered_error(status: Status, kind: Kind) -> Error {
    let message = status.message().to_string();
    match status.code() {
        Code::InvalidArgument => Error::InvalidArgument(message),
        Code::FailedPrecondition => match keel_proto::wire::Outcome::of(&status) {
            Some(outcome) if outcome.is_session() => Error::Session(outcome, message),
            Some(outcome) => Error::Refused(outcome, message),
            None => Error::FailedPrecondition(message),
        },
        Code::Unavailable => Error::Unavailable(message),
        Code::NotFound => Error::NotFound(message),
        Code::AlreadyExists => Error::AlreadyExists(message),
        Code::DeadlineExceeded | Code::Unknown | Code::Cancelled if kind.writes() => {
            Error::OutcomeUnknown(format!("{}: {message}", status.code()))
        }
        Code::DeadlineExceeded => Error::DeadlineExceeded,
        _ => Error::Other(status),
    }
}

/// The status message followed by its source chain, without the repetitions tonic's wrapping
/// produces ("transport error: transport error: ...").
pub(crate) fn describe(status: &Status) -> String {
    let mut out = status.message().to_string();
    let mut next = status.source();
    while let Some(err) = next {
        let part = err.to_string();
        // tonic wraps every transport failure in an error that says only "transport error".
        if !part.is_empty() && part != "transport error" && !out.contains(&part) {
            if !out.is_empty() {
                out.push_str(": ");
            }
            out.push_str(&part);
        }
        next = err.source();
    }
    if out.is_empty() {
        out = status.code().to_string();
    }
    out
}

/// Everything that went wrong during one request, to explain the give-up.
#[derive(Debug)]
pub(crate) struct Attempts {
    /// Endpoint indexes tried since the last backoff pause.
    pub(crate) tried_this_round: Vec<bool>,
    /// Per endpoint: the last failure (as text) and whether the server answered at all.
    failures: Vec<Option<(String, bool)>>,
    last_unavailable: Option<String>,
    timed_out: bool,
    last_answer: Option<Status>,
    last_lost: Option<String>,
    /// An attempt reached the server, or may have, without an answer saying it failed: a write
    /// may have applied, whatever later attempts answer.
    maybe_applied: Option<String>,
}

impl Attempts {
    pub(crate) fn new(endpoints: usize) -> Self {
        Attempts {
            tried_this_round: vec![false; endpoints],
            failures: vec![None; endpoints],
            last_unavailable: None,
            timed_out: false,
            last_answer: None,
            last_lost: None,
            maybe_applied: None,
        }
    }

    pub(crate) fn record(&mut self, index: usize, endpoint: &str, failure: Failure) {
        let (text, answered) = match failure {
            Failure::Answered(status) => {
                let text = format!("{}: {}", status.code(), status.message());
                if matches!(status.code(), Code::DeadlineExceeded | Code::Unknown | Code::Cancelled) {
                    self.maybe_applied = Some(format!("{endpoint}: {text}"));
                }
                match status.code() {
                    Code::Unavailable => self.last_unavailable = Some(status.message().to_string()),
                    Code::DeadlineExceeded => self.timed_out = true,
                    _ => self.last_answer = Some(status),
                }
                (text, true)
            }
            Failure::NotSent(message) => (message, false),
            Failure::Lost { message, timed_out } => {
                self.maybe_applied = Some(message.clone());
                self.timed_out |= timed_out;
                self.last_lost = Some(message.clone());
                (message, false)
            }
        };
        if let Some(slot) = self.failures.get_mut(index) {
            *slot = Some((format!("{endpoint}: {text}"), answered));
        }
    }

    /// The error for a request whose deadline passed while it was being retried.
    ///
    /// A write of which some attempt may have applied ends as [`Error::OutcomeUnknown`], whatever
    /// the later attempts answered: a session write lost in a failover and then refused with
    /// "no leader" until the deadline may still be committed by the next leader. Otherwise an
    /// `Unavailable` answer wins: it names the cluster's problem ("no leader"), which matters
    /// more than which endpoints were down.
    pub(crate) fn give_up(self, kind: Kind) -> Error {
        if let Some(attempt) = self.maybe_applied.filter(|_| kind.writes()) {
            return Error::OutcomeUnknown(format!(
                "an attempt may have applied ({attempt}); later attempts failed"
            ));
        }
        let tried = self.failures.iter().flatten().count();
        let answered = self.failures.iter().flatten().filter(|(_, answered)| *answered).count();
        if let Some(message) = self.last_unavailable {
            let message = if message.is_empty() {
                "unavailable".to_string()
            } else {
                message
            };
            return if answered < tried {
                Error::Unavailable(format!("{message} ({answered} of {tried} endpoints reachable)"))
            } else {
                Error::Unavailable(message)
            };
        }
        if self.timed_out {
            return Error::DeadlineExceeded;
        }
        if let Some(status) = self.last_answer {
            return Error::Other(status);
        }
        if let Some(message) = self.last_lost {
            return Error::Transport(message);
        }
        if tried == 0 {
            return Error::DeadlineExceeded;
        }
        let details: Vec<&str> = self.failures.iter().flatten().map(|(text, _)| text.as_str()).collect();
        Error::Unavailable(format!("cannot reach any endpoint ({})", details.join("; ")))
    }
}

/// Exponential backoff with jitter, so that clients that failed together do not retry together.
#[derive(Debug)]
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, max: Duration) -> Self {
        Backoff {
            next: initial.max(Duration::from_millis(1)),
            max: max.max(initial),
        }
    }

    /// The next pause: half of the current step plus a random part of the other half.
    pub(crate) fn pause(&mut self) -> Duration {
        let step = self.next;
        self.next = step.saturating_mul(2).min(self.max);
        let half = step / 2;
        let jitter_nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(rand::rng().random_range(0..=jitter_nanos))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut backoff = Backoff::new(Duration::from_millis(25), Duration::from_secs(1));
        let first = backoff.pause();
        assert!(
            first >= Duration::from_micros(12_500) && first <= Duration::from_millis(25),
            "{first:?}"
        );
        let pauses: Vec<Duration> = (0..20).map(|_| backoff.pause()).collect();
        assert!(pauses.iter().all(|p| *p <= Duration::from_secs(1)), "{pauses:?}");
        assert!(pauses[19] >= Duration::from_millis(500), "{pauses:?}");
    }

    #[test]
    fn server_answers_decide_write_retries() {
        let retry = |code, kind| Failure::Answered(Status::new(code, "x")).is_retryable(kind);
        assert!(retry(Code::Unavailable, Kind::Write));
        assert!(!retry(Code::DeadlineExceeded, Kind::Write));
        assert!(!retry(Code::Unknown, Kind::Write));
        assert!(retry(Code::DeadlineExceeded, Kind::Read));
        assert!(retry(Code::Unknown, Kind::Read));
        assert!(!retry(Code::InvalidArgument, Kind::Read));
        let unknown = Failure::Answered(Status::deadline_exceeded("slow")).final_error(Kind::Write);
        assert!(matches!(unknown, Error::OutcomeUnknown(_)), "{unknown:?}");
        let lost = Failure::Lost {
            message: "reset".into(),
            timed_out: false,
        };
        assert!(!lost.is_retryable(Kind::Write));
        assert!(matches!(lost.final_error(Kind::Write), Error::OutcomeUnknown(_)));
    }

    #[test]
    fn give_up_reports_the_cluster_problem_and_reachability() {
        let mut attempts = Attempts::new(3);
        attempts.record(0, "a:1", Failure::NotSent("connection refused".into()));
        attempts.record(1, "b:1", Failure::Answered(Status::unavailable("no leader")));
        attempts.record(2, "c:1", Failure::NotSent("connection refused".into()));
        let err = attempts.give_up(Kind::Read);
        assert_eq!(err.to_string(), "no leader (1 of 3 endpoints reachable)");

        let mut attempts = Attempts::new(2);
        attempts.record(0, "a:1", Failure::NotSent("connection refused".into()));
        attempts.record(1, "b:1", Failure::NotSent("timed out".into()));
        let err = attempts.give_up(Kind::Read);
        assert_eq!(
            err.to_string(),
            "cannot reach any endpoint (a:1: connection refused; b:1: timed out)"
        );
        assert!(matches!(Attempts::new(1).give_up(Kind::Read), Error::DeadlineExceeded));
    }

    #[test]
    fn a_write_that_may_have_applied_stays_unknown_whatever_follows() {
        let lost = || Failure::Lost {
            message: "a:1: connection reset".into(),
            timed_out: false,
        };
        let mut attempts = Attempts::new(2);
        attempts.record(0, "a:1", lost());
        attempts.record(1, "b:1", Failure::Answered(Status::unavailable("no leader")));
        let err = attempts.give_up(Kind::Idempotent);
        assert!(
            matches!(err, Error::OutcomeUnknown(ref m) if m.contains("connection reset")),
            "{err:?}"
        );
        assert!(!err.is_write_safe_to_retry());
        // A read that saw the same failures reports the cluster's problem.
        let mut attempts = Attempts::new(2);
        attempts.record(0, "a:1", lost());
        attempts.record(1, "b:1", Failure::Answered(Status::unavailable("no leader")));
        assert!(matches!(attempts.give_up(Kind::Read), Error::Unavailable(_)));
        // Surely-unapplied failures alone leave a write retryable.
        let mut attempts = Attempts::new(2);
        attempts.record(0, "a:1", Failure::NotSent("connection refused".into()));
        attempts.record(1, "b:1", Failure::Answered(Status::unavailable("no leader")));
        assert!(attempts.give_up(Kind::Idempotent).is_write_safe_to_retry());
    }
}
