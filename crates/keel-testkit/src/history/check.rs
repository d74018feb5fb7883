//! The checks: per-key linearizability search and the final-state check.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::{History, Op, OpId, Operation, Outcome, Violation};

/// Limits for [`check_linearizable_with`].
#[derive(Debug, Clone)]
pub struct CheckOptions {
    /// Search steps (attempts to linearize one operation) allowed per key before giving up with
    /// [`Violation::Inconclusive`]. Memory grows with it too: roughly one memo entry per step.
    pub max_steps_per_key: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            max_steps_per_key: 1_000_000,
        }
    }
}

/// [`check_linearizable_with`] with default limits.
pub fn check_linearizable(history: &History) -> Result<(), Violation> {
    check_linearizable_with(history, &CheckOptions::default())
}

/// Check that the operations on every key are linearizable, i.e. that there is a total order of
/// them that respects real time (an operation that returned before another was invoked comes
/// first) in which each read sees the latest write and each compare-and-swap's result matches
/// the value at that point. Failed operations and failed or unknown reads are ignored; unknown
/// writes may take effect at any point after their invocation, or never.
///
/// A definite violation on any key is reported in preference to a search that gave up on
/// another key, so [`Violation::Inconclusive`] means no key was found to be wrong.
pub fn check_linearizable_with(history: &History, options: &CheckOptions) -> Result<(), Violation> {
    validate(history)?;
    let mut inconclusive = None;
    for (key, ops) in by_key(history) {
        match check_key(key, &ops, options.max_steps_per_key) {
            Ok(()) => {}
            Err(v @ Violation::Inconclusive { .. }) => {
                inconclusive.get_or_insert(v);
            }
            Err(v) => return Err(v),
        }
    }
    inconclusive.map_or(Ok(()), Err)
}

/// Check the final state of the store against the history. `final_state` maps keys to their
/// final values; a key missing from it is taken to be absent (as a scan of the store would
/// report). Exactly this is checked, for every key in the history or in `final_state`:
///
/// - If the key is absent, no write to it was acknowledged (there is no delete).
/// - If it holds `v`, some put or compare-and-swap that may have taken effect (acknowledged, or
///   unknown) wrote `v`, and at least one such writer `w` "may have been last": no acknowledged
///   write was invoked after `w` returned (unknown writes never return). Otherwise an
///   acknowledged write that surely came after every writer of `v` was lost.
///
/// This catches lost acknowledged writes and phantom values; anything subtler (a stale value
/// that some read already proved overwritten) is [`check_linearizable`]'s job.
pub fn check_no_lost_writes(
    history: &History,
    final_state: &BTreeMap<String, Option<String>>,
) -> Result<(), Violation> {
    validate(history)?;
    let groups = by_key(history);
    let mut keys: Vec<&str> = groups.keys().copied().collect();
    keys.extend(
        final_state
            .keys()
            .map(String::as_str)
            .filter(|k| !groups.contains_key(k)),
    );
    for key in keys {
        let ops = groups.get(key).map(Vec::as_slice).unwrap_or_default();
        // Writes that may have taken effect, and whether each was acknowledged.
        let writes: Vec<(&Operation, &str, bool)> = ops
            .iter()
            .filter_map(|o| match (&o.op, &o.outcome) {
                (Op::Put(v), Outcome::PutOk) | (Op::Cas { new: v, .. }, Outcome::CasOk(true)) => {
                    Some((*o, v.as_str(), true))
                }
                (Op::Put(v), Outcome::Unknown) | (Op::Cas { new: v, .. }, Outcome::Unknown) => {
                    Some((*o, v.as_str(), false))
                }
                _ => None,
            })
            .collect();
        let acked: Vec<&Operation> = writes.iter().filter(|w| w.2).map(|w| w.0).collect();
        match final_state.get(key).and_then(Option::as_deref) {
            None => {
                if !acked.is_empty() {
                    let list: Vec<String> = acked.iter().map(|o| o.to_string()).collect();
                    return Err(Violation::BadFinalState {
                        key: key.to_string(),
                        explanation: format!(
                            "the key is absent but these writes were acknowledged: {}",
                            list.join("; ")
                        ),
                        ops: acked.iter().map(|o| o.id).collect(),
                    });
                }
            }
            Some(v) => {
                let writers: Vec<&Operation> = writes.iter().filter(|w| w.1 == v).map(|w| w.0).collect();
                if writers.is_empty() {
                    return Err(Violation::BadFinalState {
                        key: key.to_string(),
                        explanation: format!("the value {v:?} was never written"),
                        ops: Vec::new(),
                    });
                }
                // For each writer, an acknowledged write that surely came after it.
                let mut superseded = Vec::new();
                for w in &writers {
                    let later = match (&w.outcome, w.complete) {
                        (Outcome::Unknown, _) | (_, None) => None,
                        (_, Some(ret)) => acked.iter().find(|a| a.invoke > ret),
                    };
                    match later {
                        None => {
                            superseded.clear();
                            break;
                        }
                        Some(a) => superseded.push((*w, *a)),
                    }
                }
                if let Some((w, a)) = superseded.first() {
                    return Err(Violation::BadFinalState {
                        key: key.to_string(),
                        explanation: format!(
                            "the value {v:?} was written by {w}, but the acknowledged {a} was invoked after that \
                             returned, so its write was lost"
                        ),
                        ops: vec![w.id, a.id],
                    });
                }
            }
        }
    }
    Ok(())
}

/// Reject operations whose outcome does not fit, or that were acknowledged without a sane
/// return time: the search relies on both.
fn validate(history: &History) -> Result<(), Violation> {
    for o in &history.ops {
        let fits = matches!(
            (&o.op, &o.outcome),
            (_, Outcome::Failed | Outcome::Unknown)
                | (Op::Put(_), Outcome::PutOk)
                | (Op::Get, Outcome::GetOk(_))
                | (Op::Cas { .. }, Outcome::CasOk(_))
        );
        if !fits {
            return Err(Violation::Malformed {
                op: o.id,
                explanation: format!("outcome {:?} does not fit operation {:?}", o.outcome, o.op),
            });
        }
        let acknowledged = !matches!(o.outcome, Outcome::Failed | Outcome::Unknown);
        if acknowledged && o.complete.is_none_or(|c| c < o.invoke) {
            return Err(Violation::Malformed {
                op: o.id,
                explanation: format!(
                    "acknowledged but completed at {:?}, invoked at {}",
                    o.complete, o.invoke
                ),
            });
        }
    }
    Ok(())
}

fn by_key(history: &History) -> BTreeMap<&str, Vec<&Operation>> {
    let mut groups: BTreeMap<&str, Vec<&Operation>> = BTreeMap::new();
    for o in &history.ops {
        groups.entry(o.key.as_str()).or_default().push(o);
    }
    groups
}

/// A register value, interned: 0 is "absent", others index `Interner::names`.
type Val = u32;

#[derive(Default)]
struct Interner<'a> {
    ids: HashMap<&'a str, Val>,
    names: Vec<&'a str>,
}

impl<'a> Interner<'a> {
    fn id(&mut self, v: Option<&'a str>) -> Val {
        let Some(v) = v else { return 0 };
        let next = self.names.len() as Val + 1;
        let id = *self.ids.entry(v).or_insert(next);
        if id == next {
            self.names.push(v);
        }
        id
    }

    fn show(&self, v: Val) -> String {
        match v.checked_sub(1).and_then(|i| self.names.get(i as usize)) {
            None => "absent".to_string(),
            Some(s) => format!("{s:?}"),
        }
    }
}

/// What an operation does to the register, once its outcome is known.
#[derive(Clone, Copy, Debug)]
enum Effect {
    /// A get that returned this value.
    Read(Val),
    /// A put (acknowledged or unknown).
    Write(Val),
    /// A compare-and-swap that swapped.
    Swapped { expect: Val, new: Val },
    /// A compare-and-swap that did not swap: the value was not `expect`.
    NotSwapped { expect: Val },
    /// A compare-and-swap with unknown outcome.
    MaybeSwap { expect: Val, new: Val },
}

/// An operation on one key, prepared for the search.
struct KOp<'a> {
    src: &'a Operation,
    invoke: u64,
    /// `None`: optional (unknown outcome, never returns): it may be linearized or not.
    ret: Option<u64>,
    effect: Effect,
}

impl KOp<'_> {
    /// The value after this operation, if it can take effect when the value is `state`.
    fn apply(&self, state: Val) -> Option<Val> {
        match self.effect {
            Effect::Read(v) => (v == state).then_some(state),
            Effect::Write(v) => Some(v),
            Effect::Swapped { expect, new } => (expect == state).then_some(new),
            Effect::NotSwapped { expect } => (expect != state).then_some(state),
            // Taking effect without swapping changes nothing, which is the same as not taking
            // effect at all; so only the swapping case is worth exploring.
            Effect::MaybeSwap { expect, new } => (expect == state).then_some(new),
        }
    }

    /// Operations that leave the value unchanged. If one can take effect now, linearizing it
    /// now loses nothing (see `candidates`).
    fn is_read_only(&self) -> bool {
        matches!(self.effect, Effect::Read(_) | Effect::NotSwapped { .. })
    }

    /// The value whose presence this operation tests, if any: it needs (or, for a swap that
    /// did not happen, rules out) that value at its linearization point.
    fn observes(&self) -> Option<Val> {
        match self.effect {
            Effect::Read(v) => Some(v),
            Effect::Swapped { expect, .. } | Effect::NotSwapped { expect } | Effect::MaybeSwap { expect, .. } => {
                Some(expect)
            }
            Effect::Write(_) => None,
        }
    }

    /// For an optional (unknown) write, the value it would write.
    fn optional_write(&self) -> Option<Val> {
        match (self.ret, self.effect) {
            (None, Effect::Write(v) | Effect::MaybeSwap { new: v, .. }) => Some(v),
            _ => None,
        }
    }
}

/// Prepare the operations of one key: drop what constrains nothing and intern values.
fn prepare<'a>(ops: &[&'a Operation], names: &mut Interner<'a>) -> Vec<KOp<'a>> {
    let mut kops = Vec::new();
    for o in ops {
        let effect = match (&o.op, &o.outcome) {
            (Op::Get, Outcome::GetOk(v)) => Effect::Read(names.id(v.as_deref())),
            (Op::Put(v), Outcome::PutOk | Outcome::Unknown) => Effect::Write(names.id(Some(v))),
            (Op::Cas { expect, new }, Outcome::CasOk(true)) => Effect::Swapped {
                expect: names.id(expect.as_deref()),
                new: names.id(Some(new)),
            },
            (Op::Cas { expect, .. }, Outcome::CasOk(false)) => Effect::NotSwapped {
                expect: names.id(expect.as_deref()),
            },
            (Op::Cas { expect, new }, Outcome::Unknown) => Effect::MaybeSwap {
                expect: names.id(expect.as_deref()),
                new: names.id(Some(new)),
            },
            // Failed operations surely did not apply; failed or unknown reads say nothing.
            _ => continue,
        };
        let ret = if o.outcome == Outcome::Unknown {
            None
        } else {
            o.complete
        };
        kops.push(KOp {
            src: o,
            invoke: o.invoke,
            ret,
            effect,
        });
    }
    // The search walks operations in invocation order.
    kops.sort_by_key(|k| k.invoke);
    kops
}

/// Two doubly linked lists over the operations not yet linearized ("dancing links": removal is
/// undone in reverse order when the search backtracks, which makes both O(1)): all of them in
/// invocation order, and the required ones in return order. Index `n` is both lists' sentinel.
struct Links {
    n: usize,
    next: Vec<usize>,
    prev: Vec<usize>,
    rnext: Vec<usize>,
    rprev: Vec<usize>,
}

impl Links {
    fn new(kops: &[KOp<'_>]) -> Links {
        let n = kops.len();
        let ring = |order: &[usize]| {
            let mut next = vec![n; n + 1];
            let mut prev = vec![n; n + 1];
            let mut last = n;
            for &i in order {
                next[last] = i;
                prev[i] = last;
                last = i;
            }
            next[last] = n;
            prev[n] = last;
            (next, prev)
        };
        let by_invoke: Vec<usize> = (0..n).collect();
        let mut by_ret: Vec<(u64, usize)> = kops
            .iter()
            .enumerate()
            .filter_map(|(i, k)| k.ret.map(|r| (r, i)))
            .collect();
        by_ret.sort_unstable();
        let by_ret: Vec<usize> = by_ret.into_iter().map(|(_, i)| i).collect();
        let (next, prev) = ring(&by_invoke);
        let (rnext, rprev) = ring(&by_ret);
        Links {
            n,
            next,
            prev,
            rnext,
            rprev,
        }
    }

    fn remove(&mut self, i: usize, required: bool) {
        let (p, q) = (self.prev[i], self.next[i]);
        self.next[p] = q;
        self.prev[q] = p;
        if required {
            let (p, q) = (self.rprev[i], self.rnext[i]);
            self.rnext[p] = q;
            self.rprev[q] = p;
        }
    }

    fn restore(&mut self, i: usize, required: bool) {
        if required {
            let (p, q) = (self.rprev[i], self.rnext[i]);
            self.rnext[p] = i;
            self.rprev[q] = i;
        }
        let (p, q) = (self.prev[i], self.next[i]);
        self.next[p] = i;
        self.prev[q] = i;
    }

    /// The required operation that returns first, if any is left.
    fn first_return(&self) -> Option<usize> {
        let i = self.rnext[self.n];
        (i != self.n).then_some(i)
    }
}

/// Operations that can be linearized next from `state`: those in the window (invoked before
/// the earliest return among the required operations left, which must precede anything invoked
/// after it returned) that can take effect. Required ones come first, optional (unknown) ones
/// last, so that histories where unknown writes did not apply are found quickly.
///
/// If a read-only operation can take effect now, it is the only candidate: linearizing it now
/// rather than later changes no value and only removes a constraint, and it cannot have to
/// follow any operation left (it was invoked before they all returned), so no linearization is
/// lost.
///
/// **Unknown writes wait until they are needed.** Since values are written once, an unknown
/// write of `v` in a linearization is followed, up to the first operation that needs `v` (a
/// read of it, a compare-and-swap expecting it), only by swaps that did not happen. So it can
/// be moved to just before that first operation, or to just before the first of those swaps
/// that needs the value it replaced (a swap whose `expect` is the value before the write): the
/// operations it passes see the old value, which none of them rules out. Either operation is in
/// the window at that point, since it comes next. So an unknown write is offered only while an
/// operation in the window needs its value, or a swap that did not happen is blocked by the
/// current value. Without this rule, every unknown write that some later read observed made
/// "linearized yet or not" a choice at every step from its invocation to that read, and the
/// states to explore doubled with each (a 30-minute soak's histories ran out of steps).
///
/// **Dead writes.** An unknown write whose value no operation left tests (`observers` is 0) can
/// only ever matter to a blocked swap, and two of them are interchangeable once both are
/// candidates (they stay candidates, the limit only grows, and nothing tells their values
/// apart). So only the first dead put is offered, and the first dead unknown compare-and-swap
/// that can take effect (at most one whose `expect` is the current value ever can).
fn candidates(kops: &[KOp<'_>], links: &Links, state: Val, observers: &[u32]) -> Vec<usize> {
    let limit = links.first_return().and_then(|i| kops[i].ret).unwrap_or(u64::MAX);
    // The operations in the window that can take effect now.
    let mut window = Vec::new();
    // Values that some operation in the window needs present.
    let mut needed = Vec::new();
    let mut blocked = false;
    let mut i = links.next[links.n];
    while i != links.n {
        let k = &kops[i];
        // Equal ticks count as concurrent: the lenient choice for hand-made histories.
        if k.invoke > limit {
            break;
        }
        let applies = k.apply(state).is_some();
        match (applies, k.effect) {
            (true, _) if k.is_read_only() => return vec![i],
            (false, Effect::NotSwapped { .. }) => blocked = true,
            (_, Effect::Read(v) | Effect::Swapped { expect: v, .. } | Effect::MaybeSwap { expect: v, .. }) => {
                needed.push(v)
            }
            _ => {}
        }
        if applies {
            window.push(i);
        }
        i = links.next[i];
    }
    let (mut required, mut optional) = (Vec::new(), Vec::new());
    let (mut dead_put, mut dead_swap) = (None, None);
    for i in window {
        let k = &kops[i];
        let Some(v) = k.optional_write() else {
            required.push(i);
            continue;
        };
        let dead = observers[v as usize] == 0;
        match (needed.contains(&v), blocked, dead) {
            (true, _, _) | (false, true, false) => optional.push(i),
            (false, true, true) if matches!(k.effect, Effect::Write(_)) => {
                dead_put.get_or_insert(i);
            }
            (false, true, true) => {
                dead_swap.get_or_insert(i);
            }
            (false, false, _) => {}
        }
    }
    required.extend(optional.into_iter().chain(dead_put).chain(dead_swap));
    required
}

struct Frame {
    candidates: Vec<usize>,
    next: usize,
    /// The operation linearized to enter this frame, and the value before it.
    entered_by: Option<(usize, Val)>,
}

/// The deepest point the search reached, for the report.
struct Deepest {
    required_done: usize,
    state: Val,
    path_tail: Vec<usize>,
    stuck: Option<usize>,
}

/// Wing & Gong's search with Lowe's memoization, for one key: depth-first, linearizing one
/// candidate at a time and backtracking when none is left, while remembering every (set of
/// linearized operations, value) already explored, since the rest of the search depends on
/// nothing else. Values that no operation left tests are all one value to the rest of the
/// search, so the memo does not tell them apart.
fn check_key(key: &str, ops: &[&Operation], max_steps: u64) -> Result<(), Violation> {
    let mut names = Interner::default();
    let kops = prepare(ops, &mut names);
    let total_required = kops.iter().filter(|k| k.ret.is_some()).count();
    if total_required == 0 {
        return Ok(());
    }
    // How many operations left test each value.
    let mut observers = vec![0u32; names.names.len() + 1];
    for k in &kops {
        if let Some(v) = k.observes() {
            observers[v as usize] += 1;
        }
    }
    let untested = Val::MAX;
    let mut links = Links::new(&kops);
    let mut linearized = vec![0u64; kops.len().div_ceil(64)];
    let mut seen: HashSet<(Vec<u64>, Val)> = HashSet::new();
    let mut state: Val = 0;
    let mut required_done = 0;
    let mut steps = 0u64;
    let mut frames = vec![Frame {
        candidates: candidates(&kops, &links, state, &observers),
        next: 0,
        entered_by: None,
    }];
    let mut deepest = Deepest {
        required_done: 0,
        state,
        path_tail: Vec::new(),
        stuck: links.first_return(),
    };
    while let Some(frame) = frames.last_mut() {
        let Some(&c) = frame.candidates.get(frame.next) else {
            // Every candidate here failed: undo the operation that led here and try the next.
            let Some((undo, before)) = frames.pop().and_then(|f| f.entered_by) else {
                break;
            };
            let required = kops[undo].ret.is_some();
            links.restore(undo, required);
            linearized[undo / 64] &= !(1 << (undo % 64));
            if let Some(v) = kops[undo].observes() {
                observers[v as usize] += 1;
            }
            required_done -= usize::from(required);
            state = before;
            continue;
        };
        frame.next += 1;
        steps += 1;
        if steps > max_steps {
            return Err(Violation::Inconclusive {
                key: key.to_string(),
                steps: max_steps,
            });
        }
        let Some(after) = kops[c].apply(state) else { continue };
        linearized[c / 64] |= 1 << (c % 64);
        let observed = kops[c].observes();
        if let Some(v) = observed {
            observers[v as usize] -= 1;
        }
        let memo = if observers[after as usize] == 0 {
            untested
        } else {
            after
        };
        if !seen.insert((linearized.clone(), memo)) {
            linearized[c / 64] &= !(1 << (c % 64));
            if let Some(v) = observed {
                observers[v as usize] += 1;
            }
            continue;
        }
        let required = kops[c].ret.is_some();
        links.remove(c, required);
        required_done += usize::from(required);
        let before = state;
        state = after;
        if required_done == total_required {
            return Ok(());
        }
        frames.push(Frame {
            candidates: candidates(&kops, &links, state, &observers),
            next: 0,
            entered_by: Some((c, before)),
        });
        if required_done > deepest.required_done {
            let tail = frames.iter().rev().filter_map(|f| f.entered_by.map(|e| e.0)).take(3);
            deepest = Deepest {
                required_done,
                state,
                path_tail: tail.collect::<Vec<_>>().into_iter().rev().collect(),
                stuck: links.first_return(),
            };
        }
    }
    Err(explain(key, &kops, &names, &deepest, total_required))
}

fn explain(key: &str, kops: &[KOp<'_>], names: &Interner<'_>, deepest: &Deepest, total: usize) -> Violation {
    let mut ops: Vec<OpId> = deepest.path_tail.iter().map(|&i| kops[i].src.id).collect();
    let mut explanation = format!(
        "at best {} of {total} acknowledged operations can be ordered, leaving the value {}",
        deepest.required_done,
        names.show(deepest.state)
    );
    if !deepest.path_tail.is_empty() {
        let tail: Vec<String> = deepest.path_tail.iter().map(|&i| kops[i].src.to_string()).collect();
        explanation += &format!(" after {}", tail.join("; "));
    }
    if let Some(i) = deepest.stuck {
        explanation += &format!("; then {} cannot take effect", kops[i].src);
        ops.push(kops[i].src.id);
    }
    Violation::NotLinearizable {
        key: key.to_string(),
        explanation,
        ops,
    }
}
