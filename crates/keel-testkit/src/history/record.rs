//! The thread-safe [`Recorder`].

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use super::{History, Op, OpId, Operation, Outcome, ProcessId};

/// Records operations from any number of threads or tasks. Cloning is cheap and every clone
/// records into the same history.
///
/// Call [`invoke`](Recorder::invoke) before sending a request and
/// [`complete`](Recorder::complete) after its outcome is known, never the other way around:
/// the checks trust that the request was in flight between the two ticks.
#[derive(Debug, Clone, Default)]
pub struct Recorder {
    inner: Arc<Mutex<Inner>>,
}

#[derive(Debug, Default)]
struct Inner {
    /// The logical clock; both invoke and complete advance it, so all ticks are distinct.
    tick: u64,
    ops: Vec<Operation>,
    /// Whether `complete` was called for each operation (an unknown outcome leaves no trace in
    /// `Operation::complete`, so it is tracked here).
    completed: Vec<bool>,
}

impl Recorder {
    pub fn new() -> Recorder {
        Recorder::default()
    }

    /// A panic in another recording thread must not hide the history from the checker, and the
    /// data stays consistent (every update is a single push or field write), so poisoning is
    /// ignored.
    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Record that `process` is about to send `op` on `key`.
    pub fn invoke(&self, process: ProcessId, key: impl Into<String>, op: Op) -> OpId {
        let mut inner = self.lock();
        inner.tick += 1;
        let id = OpId(inner.ops.len());
        let invoke = inner.tick;
        inner.ops.push(Operation {
            id,
            process,
            key: key.into(),
            op,
            invoke,
            complete: None,
            // Until completed, the operation is in flight: it may or may not take effect.
            outcome: Outcome::Unknown,
        });
        inner.completed.push(false);
        id
    }

    /// Record the outcome of `id`. Only the first call counts, and unknown ids are ignored:
    /// recording must never disturb the test itself.
    pub fn complete(&self, id: OpId, outcome: Outcome) {
        let mut inner = self.lock();
        inner.tick += 1;
        let tick = inner.tick;
        if inner.completed.get(id.0) != Some(&false) {
            return;
        }
        inner.completed[id.0] = true;
        if let Some(op) = inner.ops.get_mut(id.0) {
            // An unknown outcome means "may take effect at any later time": no return time.
            op.complete = (outcome != Outcome::Unknown).then_some(tick);
            op.outcome = outcome;
        }
    }

    /// A snapshot of everything recorded so far. Operations not yet completed appear as
    /// [`Outcome::Unknown`].
    pub fn history(&self) -> History {
        History {
            ops: self.lock().ops.clone(),
        }
    }
}
