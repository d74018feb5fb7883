//! Tests for recording and checking.

use std::collections::BTreeMap;
use std::time::Instant;

use super::*;

fn s(v: &str) -> String {
    v.to_string()
}

fn put(h: &mut History, p: u64, key: &str, v: &str, t: (u64, u64)) -> OpId {
    h.push(p, key, Op::Put(s(v)), t.0, Some(t.1), Outcome::PutOk)
}

fn put_unknown(h: &mut History, p: u64, key: &str, v: &str, invoke: u64) -> OpId {
    h.push(p, key, Op::Put(s(v)), invoke, None, Outcome::Unknown)
}

fn get(h: &mut History, p: u64, key: &str, v: Option<&str>, t: (u64, u64)) -> OpId {
    h.push(p, key, Op::Get, t.0, Some(t.1), Outcome::GetOk(v.map(s)))
}

fn cas(h: &mut History, p: u64, key: &str, expect: Option<&str>, new: &str, swapped: bool, t: (u64, u64)) -> OpId {
    let op = Op::Cas {
        expect: expect.map(s),
        new: s(new),
    };
    h.push(p, key, op, t.0, Some(t.1), Outcome::CasOk(swapped))
}

fn assert_not_linearizable(h: &History, key: &str) {
    match check_linearizable(h) {
        Err(Violation::NotLinearizable {
            key: k, explanation, ..
        }) => {
            assert_eq!(k, key);
            assert!(!explanation.is_empty());
        }
        other => panic!("expected a violation on {key:?}, got {other:?}"),
    }
}

#[test]
fn accepts_sequential() {
    let mut h = History::new();
    get(&mut h, 1, "k", None, (1, 2));
    put(&mut h, 1, "k", "a", (3, 4));
    get(&mut h, 2, "k", Some("a"), (5, 6));
    cas(&mut h, 2, "k", Some("a"), "b", true, (7, 8));
    cas(&mut h, 1, "k", Some("a"), "c", false, (9, 10));
    get(&mut h, 1, "k", Some("b"), (11, 12));
    put(&mut h, 3, "other", "x", (13, 14));
    assert_eq!(check_linearizable(&h), Ok(()));
    let state = BTreeMap::from([(s("k"), Some(s("b"))), (s("other"), Some(s("x")))]);
    assert_eq!(check_no_lost_writes(&h, &state), Ok(()));
}

#[test]
fn accepts_concurrent() {
    // Two overlapping puts; readers during the overlap see them in either order, as long as
    // everyone agrees on one order.
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 10));
    put(&mut h, 2, "k", "b", (2, 11));
    get(&mut h, 3, "k", Some("b"), (3, 4));
    get(&mut h, 3, "k", Some("a"), (5, 6));
    get(&mut h, 4, "k", Some("a"), (12, 13));
    // A cas overlapping everything, swapping from the value it must have seen.
    cas(&mut h, 5, "k", None, "z", false, (0, 20));
    assert_eq!(check_linearizable(&h), Ok(()));
    // Either put may have been last.
    assert_eq!(
        check_no_lost_writes(&h, &BTreeMap::from([(s("k"), Some(s("a")))])),
        Ok(())
    );
    assert_eq!(
        check_no_lost_writes(&h, &BTreeMap::from([(s("k"), Some(s("b")))])),
        Ok(())
    );
}

#[test]
fn accepts_unknown_put_that_took_effect_late() {
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    put_unknown(&mut h, 2, "k", "u", 3);
    get(&mut h, 3, "k", Some("a"), (10, 11));
    // Long after it "failed", the unknown put shows up.
    get(&mut h, 3, "k", Some("u"), (20, 21));
    get(&mut h, 3, "k", Some("u"), (22, 23));
    assert_eq!(check_linearizable(&h), Ok(()));
    assert_eq!(
        check_no_lost_writes(&h, &BTreeMap::from([(s("k"), Some(s("u")))])),
        Ok(())
    );
}

#[test]
fn accepts_unknown_put_that_never_took_effect() {
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    put_unknown(&mut h, 2, "k", "u", 3);
    h.push(2, "k", Op::Put(s("f")), 4, Some(5), Outcome::Failed);
    get(&mut h, 3, "k", Some("a"), (10, 11));
    // An unknown cas that cannot have swapped (the value was never "zz").
    let op = Op::Cas {
        expect: Some(s("zz")),
        new: s("c"),
    };
    h.push(4, "k", op, 12, None, Outcome::Unknown);
    get(&mut h, 3, "k", Some("a"), (20, 21));
    // A failed read constrains nothing, whatever it claims.
    h.push(5, "k", Op::Get, 22, Some(23), Outcome::Failed);
    assert_eq!(check_linearizable(&h), Ok(()));
    assert_eq!(
        check_no_lost_writes(&h, &BTreeMap::from([(s("k"), Some(s("a")))])),
        Ok(())
    );
}

#[test]
fn accepts_unknown_put_needed_to_explain_failed_cas() {
    // No read saw "u", but only "u" explains why the cas from "a" did not swap.
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    put_unknown(&mut h, 2, "k", "u", 3);
    cas(&mut h, 3, "k", Some("a"), "b", false, (5, 6));
    assert_eq!(check_linearizable(&h), Ok(()));
}

#[test]
fn accepts_unknown_cas_in_either_case() {
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    let op = Op::Cas {
        expect: Some(s("a")),
        new: s("b"),
    };
    h.push(2, "k", op, 3, None, Outcome::Unknown);
    get(&mut h, 3, "k", Some("a"), (4, 5));
    get(&mut h, 3, "k", Some("b"), (6, 7));
    assert_eq!(check_linearizable(&h), Ok(()));
}

#[test]
fn rejects_stale_read() {
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    put(&mut h, 1, "k", "b", (3, 4));
    get(&mut h, 2, "k", Some("a"), (5, 6));
    assert_not_linearizable(&h, "k");
}

#[test]
fn rejects_read_of_failed_put() {
    let mut h = History::new();
    h.push(1, "k", Op::Put(s("a")), 1, Some(2), Outcome::Failed);
    get(&mut h, 2, "k", Some("a"), (3, 4));
    assert_not_linearizable(&h, "k");
}

#[test]
fn rejects_lost_write() {
    // Read of absent after an acknowledged put…
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    get(&mut h, 2, "k", None, (3, 4));
    assert_not_linearizable(&h, "k");
    // …and a final state that lost it, with and without a later read.
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    put(&mut h, 1, "k", "b", (3, 4));
    put_unknown(&mut h, 2, "k", "u", 0);
    assert_eq!(check_linearizable(&h), Ok(()));
    assert!(matches!(
        check_no_lost_writes(&h, &BTreeMap::new()),
        Err(Violation::BadFinalState { .. })
    ));
    let old = BTreeMap::from([(s("k"), Some(s("a")))]);
    match check_no_lost_writes(&h, &old) {
        Err(Violation::BadFinalState { key, ops, .. }) => {
            assert_eq!(key, "k");
            assert_eq!(ops, vec![OpId(0), OpId(1)]);
        }
        other => panic!("expected a lost write, got {other:?}"),
    }
    // The unknown put may have been applied last; a value never written may not be there.
    assert_eq!(
        check_no_lost_writes(&h, &BTreeMap::from([(s("k"), Some(s("u")))])),
        Ok(())
    );
    let phantom = BTreeMap::from([(s("k"), Some(s("b"))), (s("new"), Some(s("x")))]);
    assert!(matches!(
        check_no_lost_writes(&h, &phantom),
        Err(Violation::BadFinalState { key, .. }) if key == "new"
    ));
}

#[test]
fn rejects_duplicated_write() {
    // "a" shows up again after "b" overwrote it: "a" was applied twice.
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    get(&mut h, 2, "k", Some("a"), (3, 4));
    put(&mut h, 1, "k", "b", (5, 6));
    get(&mut h, 2, "k", Some("b"), (7, 8));
    get(&mut h, 2, "k", Some("a"), (9, 10));
    assert_not_linearizable(&h, "k");
    // Same with the first write unknown: it may apply late, but only once.
    let mut h = History::new();
    put_unknown(&mut h, 1, "k", "a", 1);
    get(&mut h, 2, "k", Some("a"), (3, 4));
    put(&mut h, 3, "k", "b", (5, 6));
    get(&mut h, 2, "k", Some("b"), (7, 8));
    get(&mut h, 2, "k", Some("a"), (9, 10));
    assert_not_linearizable(&h, "k");
}

#[test]
fn rejects_cas_success_without_match() {
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    cas(&mut h, 2, "k", Some("b"), "c", true, (3, 4));
    assert_not_linearizable(&h, "k");
    // Expecting absence when the key is present.
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    cas(&mut h, 2, "k", None, "c", true, (3, 4));
    assert_not_linearizable(&h, "k");
    // And a cas that reports failure although its expectation held.
    let mut h = History::new();
    put(&mut h, 1, "k", "a", (1, 2));
    cas(&mut h, 2, "k", Some("a"), "c", false, (3, 4));
    assert_not_linearizable(&h, "k");
}

#[test]
fn other_keys_do_not_hide_a_violation() {
    let mut h = History::new();
    put(&mut h, 1, "good", "x", (1, 2));
    put(&mut h, 1, "bad", "a", (1, 2));
    put(&mut h, 1, "bad", "b", (3, 4));
    get(&mut h, 2, "bad", Some("a"), (5, 6));
    assert_not_linearizable(&h, "bad");
}

#[test]
fn malformed_input_is_reported_not_panicked_on() {
    let mut h = History::new();
    h.push(1, "k", Op::Get, 1, Some(2), Outcome::PutOk);
    assert!(matches!(
        check_linearizable(&h),
        Err(Violation::Malformed { op: OpId(0), .. })
    ));
    let mut h = History::new();
    h.push(1, "k", Op::Put(s("a")), 5, Some(2), Outcome::PutOk);
    assert!(matches!(check_linearizable(&h), Err(Violation::Malformed { .. })));
    let mut h = History::new();
    h.push(1, "k", Op::Get, 5, None, Outcome::GetOk(None));
    assert!(matches!(
        check_no_lost_writes(&h, &BTreeMap::new()),
        Err(Violation::Malformed { .. })
    ));
    assert_eq!(check_linearizable(&History::new()), Ok(()));
}

#[test]
fn budget_gives_inconclusive() {
    let h = generate(7, 5, 50, 1, false);
    let options = CheckOptions { max_steps_per_key: 10 };
    let result = check_linearizable_with(&h, &options);
    assert!(result.as_ref().is_err_and(Violation::is_inconclusive), "{result:?}");
}

#[test]
fn recorder_is_shared_across_threads() {
    let recorder = Recorder::new();
    let threads: Vec<_> = (0..4u64)
        .map(|p| {
            let r = recorder.clone();
            std::thread::spawn(move || {
                for i in 0..50 {
                    let id = r.invoke(p, format!("k{p}"), Op::Put(format!("{p}-{i}")));
                    r.complete(id, Outcome::PutOk);
                    let id = r.invoke(p, format!("k{p}"), Op::Get);
                    r.complete(id, Outcome::GetOk(Some(format!("{p}-{i}"))));
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("recording thread");
    }
    let h = recorder.history();
    assert_eq!(h.ops.len(), 400);
    assert_eq!(check_linearizable(&h), Ok(()));
    let last: BTreeMap<String, Option<String>> = (0..4).map(|p| (format!("k{p}"), Some(format!("{p}-49")))).collect();
    assert_eq!(check_no_lost_writes(&h, &last), Ok(()));
}

#[test]
fn recorder_marks_unfinished_and_ignores_bad_completions() {
    let r = Recorder::new();
    let a = r.invoke(1, "k", Op::Put(s("a")));
    let b = r.invoke(2, "k", Op::Get);
    r.complete(b, Outcome::Unknown);
    r.complete(b, Outcome::GetOk(None)); // too late: the first completion counts
    r.complete(OpId(99), Outcome::PutOk); // no such operation
    let h = r.history();
    assert_eq!(h.ops[a.0].outcome, Outcome::Unknown);
    assert_eq!(h.ops[a.0].complete, None);
    assert_eq!(h.ops[b.0].outcome, Outcome::Unknown);
    assert!(h.ops[a.0].invoke < h.ops[b.0].invoke);
    assert_eq!(check_linearizable(&h), Ok(()));
}

/// splitmix64: a deterministic generator, so failures reproduce (the crate has no `rand`).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

enum Client {
    Idle,
    /// Sent, not yet applied.
    Sent {
        id: OpId,
        key: String,
        op: Op,
    },
    /// Applied with this result, not yet answered.
    Applied {
        id: OpId,
        outcome: Outcome,
    },
}

/// Apply `op` to the simulated store atomically: this instant is its linearization point.
fn apply(store: &mut BTreeMap<String, Option<String>>, key: &str, op: &Op) -> Outcome {
    let slot = store.entry(key.to_string()).or_default();
    match op {
        Op::Put(v) => {
            *slot = Some(v.clone());
            Outcome::PutOk
        }
        Op::Get => Outcome::GetOk(slot.clone()),
        Op::Cas { expect, new } => {
            let swapped = slot == expect;
            if swapped {
                *slot = Some(new.clone());
            }
            Outcome::CasOk(swapped)
        }
    }
}

/// A history of `processes` clients doing `ops_each` operations on `keys` keys against a
/// simulated linearizable store, with random overlaps. With `faults`, some operations fail
/// (not applied) or end unknown (applied at once, later, or never). Returns the history; the
/// store's final state is checked by the callers through `generate_with_state`.
fn generate(seed: u64, processes: usize, ops_each: usize, keys: u64, faults: bool) -> History {
    generate_with_state(seed, processes, ops_each, keys, faults).0
}

fn generate_with_state(
    seed: u64,
    processes: usize,
    ops_each: usize,
    keys: u64,
    faults: bool,
) -> (History, BTreeMap<String, Option<String>>) {
    let mut rng = Rng(seed);
    let recorder = Recorder::new();
    let mut store: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut clients: Vec<(Client, usize)> = (0..processes).map(|_| (Client::Idle, 0)).collect();
    // Unknown operations that may still be applied later.
    let mut limbo: Vec<(String, Op)> = Vec::new();
    let mut written = 0u64;
    loop {
        let busy: Vec<usize> = (0..processes)
            .filter(|&p| clients[p].1 < ops_each || !matches!(clients[p].0, Client::Idle))
            .collect();
        if busy.is_empty() {
            break;
        }
        if !limbo.is_empty() && rng.chance(3) {
            let (key, op) = limbo.swap_remove(rng.below(limbo.len() as u64) as usize);
            if rng.chance(50) {
                apply(&mut store, &key, &op);
            }
        }
        let p = busy[rng.below(busy.len() as u64) as usize];
        let (client, done) = &mut clients[p];
        *client = match std::mem::replace(client, Client::Idle) {
            Client::Idle => {
                *done += 1;
                let key = format!("key{}", rng.below(keys));
                let op = match rng.below(10) {
                    0..=3 => {
                        written += 1;
                        Op::Put(format!("v{written}"))
                    }
                    4..=7 => Op::Get,
                    _ => {
                        written += 1;
                        // Usually expect the current value, so that some swaps succeed.
                        let current = store.get(&key).cloned().flatten();
                        let expect = if rng.chance(60) {
                            current
                        } else {
                            Some(format!("v{}", rng.below(written)))
                        };
                        Op::Cas {
                            expect,
                            new: format!("v{written}"),
                        }
                    }
                };
                let id = recorder.invoke(p as u64, key.clone(), op.clone());
                Client::Sent { id, key, op }
            }
            Client::Sent { id, key, op } => {
                if faults && rng.chance(5) {
                    recorder.complete(id, Outcome::Failed);
                    Client::Idle
                } else if faults && rng.chance(5) {
                    match rng.below(3) {
                        0 => {
                            apply(&mut store, &key, &op);
                        }
                        1 => limbo.push((key, op)),
                        _ => {}
                    }
                    recorder.complete(id, Outcome::Unknown);
                    Client::Idle
                } else {
                    let outcome = apply(&mut store, &key, &op);
                    Client::Applied { id, outcome }
                }
            }
            Client::Applied { id, outcome } => {
                recorder.complete(id, outcome);
                Client::Idle
            }
        };
    }
    (recorder.history(), store)
}

#[test]
fn accepts_large_generated_histories() {
    // A deterministic budget rather than a wall-clock assertion (CI machines are noisy); the
    // time is printed for reference and is well under a second per history in debug builds.
    let options = CheckOptions {
        max_steps_per_key: 200_000,
    };
    for seed in 0..4 {
        for faults in [false, true] {
            let (h, state) = generate_with_state(seed, 5, 200, 3, faults);
            assert_eq!(h.ops.len(), 1000);
            let start = Instant::now();
            assert_eq!(
                check_linearizable_with(&h, &options),
                Ok(()),
                "seed {seed}, faults {faults}"
            );
            assert_eq!(check_no_lost_writes(&h, &state), Ok(()), "seed {seed}, faults {faults}");
            println!("seed {seed} faults {faults}: checked in {:?}", start.elapsed());
        }
    }
}

#[test]
fn accepts_histories_whose_unknown_writes_take_effect_late() {
    // The search before unknown writes waited for their readers gave up after 3,000,000 steps
    // on seed 0 (2,000 operations); a 30-minute soak's key gave up the same way.
    let options = CheckOptions {
        max_steps_per_key: 200_000,
    };
    for seed in 0..4 {
        let h = generate_bursty(seed, 8, 2000);
        let unknown = h.ops.iter().filter(|o| o.outcome == Outcome::Unknown).count();
        assert!(unknown > 100, "seed {seed}: only {unknown} unknown operations");
        assert_eq!(check_linearizable_with(&h, &options), Ok(()), "seed {seed}");
    }
}

/// Make a read at or after operation `from` return the value of an acknowledged put `w` that an
/// acknowledged put `x` had surely overwritten (w returned before x was invoked, x returned
/// before the read was invoked; values are written only once). Returns the read's key.
fn inject_stale_read(h: &mut History, from: usize) -> String {
    let acked_put = |o: &Operation| matches!((&o.op, &o.outcome), (Op::Put(_), Outcome::PutOk));
    let ops = h.ops.clone();
    let found = ops[from..]
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::GetOk(_)))
        .find_map(|r| {
            let writes: Vec<&Operation> = ops.iter().filter(|o| o.key == r.key && acked_put(o)).collect();
            writes.iter().find_map(|w| {
                let w_ret = w.complete?;
                let overwritten = writes
                    .iter()
                    .any(|x| x.invoke > w_ret && x.complete.is_some_and(|c| c < r.invoke));
                match (&w.op, overwritten) {
                    (Op::Put(v), true) => Some((r.id, v.clone(), r.key.clone())),
                    _ => None,
                }
            })
        });
    let (r, v, key) = found.expect("the generated history has a read after two puts");
    h.ops[r.0].outcome = Outcome::GetOk(Some(v));
    key
}

#[test]
fn rejects_large_generated_histories_with_a_stale_read() {
    let options = CheckOptions {
        max_steps_per_key: 200_000,
    };
    // Early in a calm history, and late in one full of unknown writes (the search has to rule
    // out every place where each of them may have taken effect).
    for (mut h, from) in [(generate(11, 5, 200, 3, false), 0), (generate_bursty(1, 8, 2000), 1500)] {
        let key = inject_stale_read(&mut h, from);
        match check_linearizable_with(&h, &options) {
            Err(Violation::NotLinearizable { key: k, .. }) => assert_eq!(k, key),
            other => panic!("expected a violation, got {other:?}"),
        }
    }
}

/// Linearizability by exhaustive enumeration, for tiny histories: try every subset of the
/// unknown operations and every order of what is included.
fn brute_force(h: &History) -> bool {
    let ops: Vec<&Operation> = h
        .ops
        .iter()
        .filter(|o| !matches!((&o.op, &o.outcome), (_, Outcome::Failed) | (Op::Get, Outcome::Unknown)))
        .collect();
    let optional: Vec<usize> = (0..ops.len()).filter(|&i| ops[i].outcome == Outcome::Unknown).collect();
    let ret = |o: &Operation| {
        if o.outcome == Outcome::Unknown {
            None
        } else {
            o.complete
        }
    };
    fn orders(rest: &mut Vec<usize>, acc: &mut Vec<usize>, f: &mut dyn FnMut(&[usize]) -> bool) -> bool {
        if rest.is_empty() {
            return f(acc);
        }
        for i in 0..rest.len() {
            let x = rest.remove(i);
            acc.push(x);
            let found = orders(rest, acc, f);
            acc.pop();
            rest.insert(i, x);
            if found {
                return true;
            }
        }
        false
    }
    (0..1u32 << optional.len()).any(|mask| {
        let mut included: Vec<usize> = (0..ops.len())
            .filter(|i| {
                optional
                    .iter()
                    .position(|o| o == i)
                    .is_none_or(|b| mask & (1 << b) != 0)
            })
            .collect();
        orders(&mut included, &mut Vec::new(), &mut |order: &[usize]| {
            for (a, &x) in order.iter().enumerate() {
                for &y in &order[a + 1..] {
                    // y comes after x, so y must not have returned before x was invoked.
                    if ret(ops[y]).is_some_and(|r| r < ops[x].invoke) {
                        return false;
                    }
                }
            }
            let mut state: Option<String> = None;
            order.iter().all(|&i| match (&ops[i].op, &ops[i].outcome) {
                (Op::Get, Outcome::GetOk(v)) => *v == state,
                (Op::Put(v), _) => {
                    state = Some(v.clone());
                    true
                }
                (Op::Cas { expect, new }, Outcome::CasOk(swapped)) => {
                    let matched = *expect == state;
                    if matched {
                        state = Some(new.clone());
                    }
                    matched == *swapped
                }
                (Op::Cas { expect, new }, _) => {
                    if *expect == state {
                        state = Some(new.clone());
                    }
                    true
                }
                _ => false,
            })
        })
    })
}

/// Check `cases` histories from `generate` both ways; each verdict must come up at least
/// `at_least` times for the comparison to mean anything.
fn agrees_with_brute_force(seed: u64, cases: usize, at_least: usize, mut generate: impl FnMut(&mut Rng) -> History) {
    let mut rng = Rng(seed);
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..cases {
        let h = generate(&mut rng);
        let expected = brute_force(&h);
        let got = check_linearizable(&h);
        assert_eq!(got.is_ok(), expected, "case {case}: {got:?}\n{h:#?}");
        if expected {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    assert!(
        accepted > at_least && rejected > at_least,
        "{accepted} accepted, {rejected} rejected"
    );
}

#[test]
fn agrees_with_brute_force_on_small_random_histories() {
    let value = |rng: &mut Rng| ["a", "b", "c"][rng.below(3) as usize].to_string();
    let maybe = |rng: &mut Rng| if rng.chance(30) { None } else { Some(value(rng)) };
    agrees_with_brute_force(42, 3000, 300, |rng| {
        let mut h = History::new();
        for p in 0..1 + rng.below(6) {
            let invoke = rng.below(10);
            let complete = Some(invoke + rng.below(6));
            let op = match rng.below(3) {
                0 => Op::Put(value(rng)),
                1 => Op::Get,
                _ => Op::Cas {
                    expect: maybe(rng),
                    new: value(rng),
                },
            };
            let outcome = match (rng.below(8), &op) {
                (0, _) => Outcome::Failed,
                (1 | 2, _) => Outcome::Unknown,
                (_, Op::Put(_)) => Outcome::PutOk,
                (_, Op::Get) => Outcome::GetOk(maybe(rng)),
                (_, Op::Cas { .. }) => Outcome::CasOk(rng.chance(50)),
            };
            h.push(p, "k", op, invoke, complete, outcome);
        }
        h
    });
}

#[test]
fn histories_survive_a_round_trip_through_a_file() {
    let h = generate(7, 4, 50, 2, true);
    let mut buf = Vec::new();
    h.write_jsonl(&mut buf).unwrap();
    assert_eq!(buf.iter().filter(|&&b| b == b'\n').count(), h.ops.len());
    assert_eq!(History::read_jsonl(&buf[..]), Ok(h));
}

#[test]
fn a_damaged_history_file_is_refused_with_its_line() {
    let mut h = History::new();
    put(&mut h, 0, "k", "a", (1, 2));
    get(&mut h, 1, "k", Some("a"), (3, 4));
    let mut buf = Vec::new();
    h.write_jsonl(&mut buf).unwrap();
    let text = String::from_utf8(buf).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let garbage = format!("{}\n{{\"id\": 1, \"process\"\n", lines[0]);
    let err = History::read_jsonl(garbage.as_bytes()).unwrap_err();
    assert!(err.starts_with("line 2:"), "{err}");
    let reordered = format!("{}\n{}\n", lines[1], lines[0]);
    let err = History::read_jsonl(reordered.as_bytes()).unwrap_err();
    assert_eq!(err, "line 1: operation op#1 where op#0 was expected");
}

#[test]
fn agrees_with_brute_force_on_small_histories_with_unique_values() {
    // The chaos workload writes every value once, and the search's rules for unknown writes
    // lean on that; so compare on such histories too, with many unknown writes and swaps that
    // did not happen, the cases those rules are about.
    agrees_with_brute_force(7, 4000, 400, |rng| {
        let mut h = History::new();
        let n = 2 + rng.below(6);
        let mut written: Vec<String> = Vec::new();
        let pick = |rng: &mut Rng, written: &[String]| match rng.below(written.len() as u64 + 1) {
            0 => None,
            i => Some(written[i as usize - 1].clone()),
        };
        for p in 0..n {
            let invoke = rng.below(12);
            let complete = Some(invoke + rng.below(6));
            let op = match rng.below(3) {
                0 => {
                    written.push(format!("w{p}"));
                    Op::Put(format!("w{p}"))
                }
                1 => Op::Get,
                _ => {
                    let expect = pick(rng, &written);
                    written.push(format!("w{p}"));
                    Op::Cas {
                        expect,
                        new: format!("w{p}"),
                    }
                }
            };
            let outcome = match (rng.below(6), &op) {
                (0 | 1, Op::Put(_) | Op::Cas { .. }) => Outcome::Unknown,
                (_, Op::Put(_)) => Outcome::PutOk,
                (_, Op::Get) => Outcome::GetOk(pick(rng, &written)),
                (_, Op::Cas { .. }) => Outcome::CasOk(rng.chance(40)),
            };
            h.push(p, "k", op, invoke, complete, outcome);
        }
        h
    });
}

/// A history shaped like a chaos run's on one key: calm stretches alternate with faults, in
/// which odd processes (those without sessions, in the chaos workload) time out, so their writes
/// end unknown, and most of those take effect much later, where later reads observe them.
/// Clients compare-and-swap against the value they last saw.
fn generate_bursty(seed: u64, processes: usize, total: usize) -> History {
    let mut rng = Rng(seed * 7 + 3);
    let recorder = Recorder::new();
    let mut value: Option<String> = None;
    // Unknown writes that will take effect at some later moment.
    let mut limbo: Vec<Op> = Vec::new();
    let mut in_flight: Vec<Option<(OpId, Op)>> = vec![None; processes];
    let mut seen: Vec<Option<String>> = vec![None; processes];
    let mut invoked = 0;
    while invoked < total {
        let fault = (invoked / 200) % 3 == 1;
        if !limbo.is_empty() && rng.chance(if fault { 50 } else { 5 }) {
            let op = limbo.swap_remove(rng.below(limbo.len() as u64) as usize);
            apply_one(&mut value, &op);
        }
        let p = rng.below(processes as u64) as usize;
        let Some((id, op)) = in_flight[p].take() else {
            invoked += 1;
            let v = format!("v{invoked}");
            let op = match rng.below(10) {
                0..=3 => Op::Put(v),
                4..=7 => Op::Get,
                _ => Op::Cas {
                    expect: seen[p].clone(),
                    new: v,
                },
            };
            in_flight[p] = Some((recorder.invoke(p as u64, "k", op.clone()), op));
            continue;
        };
        if fault && p % 2 == 1 && rng.chance(60) {
            if op != Op::Get && rng.chance(70) {
                limbo.push(op);
            }
            recorder.complete(id, Outcome::Unknown);
        } else if fault && rng.chance(30) {
            recorder.complete(id, Outcome::Failed);
        } else {
            let outcome = apply_one(&mut value, &op);
            seen[p] = match (&op, &outcome) {
                (Op::Put(v), _) | (Op::Cas { new: v, .. }, Outcome::CasOk(true)) => Some(v.clone()),
                (Op::Get, Outcome::GetOk(v)) => v.clone(),
                _ => None,
            };
            recorder.complete(id, outcome);
        }
    }
    recorder.history()
}

/// Apply `op` to a single register; its outcome.
fn apply_one(value: &mut Option<String>, op: &Op) -> Outcome {
    match op {
        Op::Put(v) => {
            *value = Some(v.clone());
            Outcome::PutOk
        }
        Op::Get => Outcome::GetOk(value.clone()),
        Op::Cas { expect, new } => {
            let ok = value == expect;
            if ok {
                *value = Some(new.clone());
            }
            Outcome::CasOk(ok)
        }
    }
}
