//! Txns, as etcd runs them: compares choose a path, then the ops along it run, all at the
//! txn's one revision.
//!
//! ## Deciding first
//! Every compare of the txn and of the txns nested in it is evaluated before any op runs,
//! against the state before the txn (plus the earlier commands of the same batch entry, which
//! are earlier revisions). So a nested txn's compares do *not* see the writes of the ops before
//! it in its branch: etcd decides the whole path up front (`compareToPath`) and so does keel,
//! which keeps keel's answers the same as etcd's for the same txn. Ranges inside the txn do see
//! earlier writes of the txn (as in etcd).
//!
//! ## Refusals
//! Before anything runs, a txn is refused whole, taking no revision:
//! - with [`CommandResult::LeaseNotFound`] if a put anywhere in it (either branch, any level)
//!   names a lease that does not exist: keel's rule for flat txns, kept for nested ones (etcd
//!   checks only the taken path);
//! - with [`CommandResult::KeyNotFound`] if a put on the taken path keeps the value or lease of
//!   a key that does not exist before the txn (etcd's `checkRequestPut`, which also runs before
//!   any op on the decided path).
//!
//! Validation keeps every key written at most once on any path (`validate.rs`), so no key has
//! two versions at the txn's revision.

use super::apply::Apply;
use super::mvcc::MvccError;
use crate::types::{
    CommandResult, Compare, CompareOp, CompareTarget, KeyRange, KeyValue, LeaseId, OpResult, PutOp, PutResult, PutWith,
    Txn, TxnOp, TxnResult,
};

impl Apply<'_> {
    pub(super) fn txn(&mut self, txn: &Txn) -> Result<CommandResult, MvccError> {
        if let Some(id) = self.missing_txn_lease(txn)? {
            return Ok(CommandResult::LeaseNotFound { id });
        }
        let mut path = Vec::new();
        self.decide(txn, &mut path)?;
        if let Some(key) = self.missing_put_key(txn, &mut path.iter().copied())? {
            return Ok(CommandResult::KeyNotFound { key });
        }
        Ok(CommandResult::Txn(self.run(txn, &mut path.into_iter())?))
    }

    /// The branches taken, in the order [`Apply::run`] meets the txns: this one's, then those of
    /// the txns nested in its taken branch, depth first.
    fn decide(&self, txn: &Txn, path: &mut Vec<bool>) -> Result<(), MvccError> {
        let mut succeeded = true;
        for cmp in &txn.compares {
            if !self.holds(cmp)? {
                succeeded = false;
                break;
            }
        }
        path.push(succeeded);
        for op in branch(txn, succeeded) {
            if let TxnOp::Txn(nested) = op {
                self.decide(nested, path)?;
            }
        }
        Ok(())
    }

    fn missing_put_key(&self, txn: &Txn, path: &mut impl Iterator<Item = bool>) -> Result<Option<Vec<u8>>, MvccError> {
        let succeeded = path.next().unwrap_or(false);
        for op in branch(txn, succeeded) {
            match op {
                TxnOp::Txn(nested) => {
                    if let Some(key) = self.missing_put_key(nested, path)? {
                        return Ok(Some(key));
                    }
                }
                TxnOp::PutWith(p) if keeps_something(p) && self.get(&p.put.key)?.is_none() => {
                    return Ok(Some(p.put.key.clone()));
                }
                _ => {}
            }
        }
        Ok(None)
    }

    fn run(&mut self, txn: &Txn, path: &mut impl Iterator<Item = bool>) -> Result<TxnResult, MvccError> {
        let succeeded = path.next().unwrap_or(false);
        let ops = branch(txn, succeeded);
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            responses.push(match op {
                TxnOp::Put(put) => OpResult::Put(self.put(put, 0)?),
                TxnOp::LeasedPut(p) => OpResult::Put(self.put(&p.put, p.lease)?),
                TxnOp::Delete(del) => OpResult::Delete(self.delete(del)?),
                TxnOp::Range(range) => OpResult::Range(self.read(range)?),
                TxnOp::Txn(nested) => OpResult::Txn(self.run(nested, path)?),
                TxnOp::PutWith(p) => OpResult::Put(self.put_with(p)?),
            });
        }
        Ok(TxnResult { succeeded, responses })
    }

    /// [`crate::Command::PutWith`]: etcd checks the key before the lease.
    pub(super) fn put_with_command(&mut self, p: &PutWith) -> Result<CommandResult, MvccError> {
        if keeps_something(p) && self.get(&p.put.key)?.is_none() {
            return Ok(CommandResult::KeyNotFound { key: p.put.key.clone() });
        }
        if !p.ignore_lease && p.lease != 0 && self.lease(p.lease)?.is_none() {
            return Ok(CommandResult::LeaseNotFound { id: p.lease });
        }
        Ok(CommandResult::Put(self.put_with(p)?))
    }

    /// The put, with the value and lease it keeps filled in. A missing key (only an entry that
    /// skipped validation and the checks above can get here with one) keeps an empty value and
    /// no lease, so apply stays a function of the entry whatever it holds.
    fn put_with(&mut self, p: &PutWith) -> Result<PutResult, MvccError> {
        if !keeps_something(p) {
            return self.put(&p.put, p.lease);
        }
        let current = self.get(&p.put.key)?;
        let lease = match (p.ignore_lease, &current) {
            (false, _) => p.lease,
            (true, Some(_)) => self.key_lease(&p.put.key)?,
            (true, None) => 0,
        };
        if !p.ignore_value {
            return self.put(&p.put, lease);
        }
        let put = PutOp {
            key: p.put.key.clone(),
            value: current.map(|kv| kv.value).unwrap_or_default(),
            prev_kv: p.put.prev_kv,
        };
        self.put(&put, lease)
    }

    fn holds(&self, cmp: &Compare) -> Result<bool, MvccError> {
        let CompareTarget::Range { end, target } = &cmp.target else {
            let kv = self.get(&cmp.key)?;
            let lease = self.lease_for(kv.as_ref(), &cmp.target)?;
            return Ok(compare(kv.as_ref(), lease, cmp.op, &cmp.target));
        };
        let range = match end.is_empty() {
            true => KeyRange::From(cmp.key.clone()),
            // etcd reads an inverted range as an empty one; sled must not be asked for it.
            false if end.as_slice() <= cmp.key.as_slice() => return Ok(compare(None, 0, cmp.op, target)),
            false => KeyRange::Between {
                start: cmp.key.clone(),
                end: end.clone(),
            },
        };
        let mut any = false;
        for kv in self.live(&range) {
            let kv = kv?;
            any = true;
            let lease = self.lease_for(Some(&kv), target)?;
            if !compare(Some(&kv), lease, cmp.op, target) {
                return Ok(false);
            }
        }
        // etcd: a range with no key compares as one missing key.
        Ok(any || compare(None, 0, cmp.op, target))
    }

    /// The lease of a live key, when the compare looks at leases (a lookup otherwise skipped).
    fn lease_for(&self, kv: Option<&KeyValue>, target: &CompareTarget) -> Result<LeaseId, MvccError> {
        match (kv, target) {
            (Some(kv), CompareTarget::Lease(_)) => self.key_lease(&kv.key),
            _ => Ok(0),
        }
    }
}

fn keeps_something(p: &PutWith) -> bool {
    p.ignore_value || p.ignore_lease
}

fn branch(txn: &Txn, succeeded: bool) -> &[TxnOp] {
    match succeeded {
        true => &txn.success,
        false => &txn.failure,
    }
}

/// Does `kv` (None: the key is missing), attached to `lease` (0: none), satisfy `op target`?
pub fn compare(kv: Option<&KeyValue>, lease: LeaseId, op: CompareOp, target: &CompareTarget) -> bool {
    use std::cmp::Ordering;
    let ordering: Ordering = match (target, kv) {
        // etcd: a value compare on a missing key fails, whatever the operator.
        (CompareTarget::Value(_), None) => return false,
        (CompareTarget::Value(v), Some(kv)) => kv.value.as_slice().cmp(v.as_slice()),
        (CompareTarget::Version(n), kv) => kv.map_or(0, |kv| kv.version).cmp(n),
        (CompareTarget::CreateRevision(n), kv) => kv.map_or(0, |kv| kv.create_revision).cmp(n),
        (CompareTarget::ModRevision(n), kv) => kv.map_or(0, |kv| kv.mod_revision).cmp(n),
        (CompareTarget::Lease(n), _) => lease.cmp(n),
        // A range compare inside a range compare does not decode and is refused by validation;
        // built in memory, it holds nowhere.
        (CompareTarget::Range { .. }, _) => return false,
    };
    match op {
        CompareOp::Equal => ordering == Ordering::Equal,
        CompareOp::NotEqual => ordering != Ordering::Equal,
        CompareOp::Less => ordering == Ordering::Less,
        CompareOp::Greater => ordering == Ordering::Greater,
    }
}
