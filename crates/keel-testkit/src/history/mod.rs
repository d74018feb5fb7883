//! # Operation histories and their checks, for chaos tests
//!
//! Clients record every request they send to keel with a [`Recorder`]: [`Recorder::invoke`]
//! before the request goes out, [`Recorder::complete`] once its outcome is known. The resulting
//! [`History`] is then checked:
//! - [`check_linearizable`]: is there an order of the operations, consistent with real time, in
//!   which every key behaves like a single register? Keys are independent registers, so each key
//!   is checked on its own (linearizability is compositional), which keeps the search small.
//! - [`check_no_lost_writes`]: is the final state of the store one that the history can explain?
//!
//! ## Model
//! Every key is a register holding `Option<String>` (`None`: absent); all keys start absent.
//! There is no delete. Operations and their outcomes:
//! - [`Op::Put`]: [`Outcome::PutOk`], or [`Outcome::Failed`] (surely not applied), or
//!   [`Outcome::Unknown`] (maybe applied, at any time after its invocation: it never returns).
//! - [`Op::Get`]: [`Outcome::GetOk`]; a failed or unknown read constrains nothing and is dropped.
//! - [`Op::Cas`]: [`Outcome::CasOk`] (whether it swapped), `Failed` or `Unknown` (maybe applied;
//!   if so it set `new` only if the value equalled `expect`).
//!
//! Values written by puts and compare-and-swaps must be unique within a test: that is what lets
//! a read name the write it observed, and so detect stale, lost and duplicated writes.
//!
//! Times are ticks of one logical clock (the recorder's), not wall-clock instants: a tick is
//! taken under the recorder's lock, so if one call to `complete` happens before a call to
//! `invoke`, its tick is smaller, which is all real-time order needs.

mod check;
mod file;
mod record;
#[cfg(test)]
mod tests;

use std::fmt;

use serde::{Deserialize, Serialize};

pub use check::{check_linearizable, check_linearizable_with, check_no_lost_writes, CheckOptions};
pub use record::Recorder;

/// A client or thread issuing operations. Only used in reports: the checks rely on times alone.
pub type ProcessId = u64;

/// Identifies an operation; the recorder numbers operations 0, 1, 2… in invocation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct OpId(pub usize);

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "op#{}", self.0)
    }
}

/// What a client asked for, on one key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    Put(String),
    Get,
    /// Set `new` if the current value equals `expect` (`None`: the key is absent).
    Cas {
        expect: Option<String>,
        new: String,
    },
}

/// How an operation ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    /// A put was acknowledged.
    PutOk,
    /// A get returned this value.
    GetOk(Option<String>),
    /// A compare-and-swap was acknowledged; `true` if it swapped.
    CasOk(bool),
    /// Surely not applied (e.g. rejected before it reached the log).
    Failed,
    /// May or may not have been applied, at any time after invocation (timeouts, crashes).
    Unknown,
}

/// One recorded operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Operation {
    pub id: OpId,
    pub process: ProcessId,
    pub key: String,
    pub op: Op,
    /// Tick at which the request was (about to be) sent.
    pub invoke: u64,
    /// Tick at which the outcome was known. `None` for operations that never returned; ignored
    /// for [`Outcome::Unknown`], which is treated as returning never.
    pub complete: Option<u64>,
    pub outcome: Outcome,
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (process {}, ", self.id, self.process)?;
        match &self.op {
            Op::Put(v) => write!(f, "put {v:?}")?,
            Op::Get => write!(f, "get")?,
            Op::Cas { expect, new } => write!(f, "cas {expect:?} -> {new:?}")?,
        }
        match &self.outcome {
            Outcome::PutOk => write!(f, ": ok")?,
            Outcome::GetOk(v) => write!(f, ": {v:?}")?,
            Outcome::CasOk(swapped) => write!(f, ": {}", if *swapped { "swapped" } else { "not swapped" })?,
            Outcome::Failed => write!(f, ": failed")?,
            Outcome::Unknown => write!(f, ": unknown")?,
        }
        match (&self.outcome, self.complete) {
            (Outcome::Unknown, _) | (_, None) => write!(f, ", ticks {}..)", self.invoke),
            (_, Some(c)) => write!(f, ", ticks {}..{c})", self.invoke),
        }
    }
}

/// Everything that happened in a test, in no particular order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    pub ops: Vec<Operation>,
}

impl History {
    pub fn new() -> History {
        History::default()
    }

    /// Append an operation with the next id (for histories built by hand).
    pub fn push(
        &mut self,
        process: ProcessId,
        key: &str,
        op: Op,
        invoke: u64,
        complete: Option<u64>,
        outcome: Outcome,
    ) -> OpId {
        let id = OpId(self.ops.len());
        self.ops.push(Operation {
            id,
            process,
            key: key.to_string(),
            op,
            invoke,
            complete,
            outcome,
        });
        id
    }
}

/// Why a check did not pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Violation {
    /// The operations on `key` have no linearization.
    NotLinearizable {
        key: String,
        explanation: String,
        ops: Vec<OpId>,
    },
    /// The final value of `key` cannot be explained by the history.
    BadFinalState {
        key: String,
        explanation: String,
        ops: Vec<OpId>,
    },
    /// The search for `key` gave up after `steps` steps: neither proved nor refuted.
    Inconclusive { key: String, steps: u64 },
    /// An operation makes no sense (e.g. a get with a compare-and-swap outcome, or an
    /// acknowledged operation without a return time).
    Malformed { op: OpId, explanation: String },
}

impl Violation {
    /// True if the check gave up rather than found a real problem.
    pub fn is_inconclusive(&self) -> bool {
        matches!(self, Violation::Inconclusive { .. })
    }
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Violation::NotLinearizable { key, explanation, .. } => {
                write!(f, "key {key:?} is not linearizable: {explanation}")
            }
            Violation::BadFinalState { key, explanation, .. } => {
                write!(f, "final value of key {key:?} is wrong: {explanation}")
            }
            Violation::Inconclusive { key, steps } => {
                write!(f, "key {key:?}: linearizability search gave up after {steps} steps")
            }
            Violation::Malformed { op, explanation } => write!(f, "malformed history at {op}: {explanation}"),
        }
    }
}

impl std::error::Error for Violation {}
