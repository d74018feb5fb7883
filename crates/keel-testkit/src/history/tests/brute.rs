//! The checker against exhaustive enumeration, on small random histories.

use super::super::*;
use super::generate::Rng;

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
