//! Generated histories: clients against a simulated linearizable register store.

use std::collections::BTreeMap;

use super::super::*;

/// splitmix64: a deterministic generator, so failures reproduce (the crate has no `rand`).
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub(super) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    pub(super) fn chance(&mut self, percent: u64) -> bool {
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
pub(super) fn generate(seed: u64, processes: usize, ops_each: usize, keys: u64, faults: bool) -> History {
    generate_with_state(seed, processes, ops_each, keys, faults).0
}

pub(super) fn generate_with_state(
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

/// A history shaped like a chaos run's on one key: calm stretches alternate with faults, in
/// which odd processes (those without sessions, in the chaos workload) time out, so their writes
/// end unknown, and most of those take effect much later, where later reads observe them.
/// Clients compare-and-swap against the value they last saw.
pub(super) fn generate_bursty(seed: u64, processes: usize, total: usize) -> History {
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
