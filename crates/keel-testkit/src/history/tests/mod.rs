//! Tests for recording and checking.

use std::collections::BTreeMap;
use std::time::Instant;

use super::*;

mod brute;
mod generate;

use generate::{generate, generate_bursty, generate_with_state};

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
