//! Sharing one round of work among concurrent callers: the read index of linearizable reads.
//!
//! A linearizable read needs a read index obtained *after* the read arrived: the leader confirms
//! with a quorum that it still leads and names its commit index. One confirmation serves every
//! read that arrived before it started, so concurrent reads need not each pay a quorum round (or,
//! on a follower, a forward to the leader). [`Coalescer::run`] gives that: a caller either starts
//! a round, or waits for the next round to start and shares its result. It never shares a round
//! that had already started when it arrived, which is what keeps the reads linearizable.
//!
//! No task is spawned: the caller that starts a round drives it in its own future, and when it
//! finishes it hands the next round to one of the callers that arrived meanwhile. If a driving
//! caller is dropped mid-round (its deadline passed), the hand-off still happens.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Mutex;

use tokio::sync::oneshot;

enum Turn<T> {
    /// The round you joined finished with this.
    Done(T),
    /// Start the next round yourself.
    Drive,
}

struct State<T> {
    /// A round is running (or its driver is being chosen).
    driving: bool,
    /// Callers waiting for the next round.
    waiting: VecDeque<oneshot::Sender<Turn<T>>>,
}

/// Shares rounds of an operation among concurrent callers (see the module docs).
pub struct Coalescer<T> {
    state: Mutex<State<T>>,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            state: Mutex::new(State {
                driving: false,
                waiting: VecDeque::new(),
            }),
        }
    }
}

impl<T: Clone> Coalescer<T> {
    /// Get the result of a round that starts after this call: run `round` now, or share the next
    /// round another caller runs.
    pub async fn run<F, Fut>(&self, round: F) -> T
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = T>,
    {
        let mut turn = None;
        {
            let mut s = self.state.lock().expect("coalescer lock");
            if s.driving {
                let (tx, rx) = oneshot::channel();
                s.waiting.push_back(tx);
                turn = Some(rx);
            } else {
                s.driving = true;
            }
        }
        if let Some(rx) = turn {
            match rx.await {
                Ok(Turn::Done(result)) => return result,
                // Our turn to drive; `driving` stays set for us. (A dropped sender cannot happen
                // while the coalescer lives: every waiter is answered or handed the drive.)
                Ok(Turn::Drive) | Err(_) => {}
            }
        }
        // Everyone queued now arrived before this round starts: they share it.
        let joined: Vec<_> = {
            let mut s = self.state.lock().expect("coalescer lock");
            s.waiting.drain(..).collect()
        };
        let mut handoff = Handoff {
            coalescer: self,
            joined,
        };
        let result = round().await;
        for tx in handoff.joined.drain(..) {
            let _ = tx.send(Turn::Done(result.clone()));
        }
        drop(handoff);
        result
    }
}

/// Passes the drive on when a round ends, or is abandoned: first to a caller that joined the
/// abandoned round, else to the next caller waiting; with nobody left, the coalescer goes idle.
struct Handoff<'a, T> {
    coalescer: &'a Coalescer<T>,
    joined: Vec<oneshot::Sender<Turn<T>>>,
}

impl<T> Drop for Handoff<'_, T> {
    fn drop(&mut self) {
        let mut s = self.coalescer.state.lock().expect("coalescer lock");
        let mut candidates = self.joined.drain(..).chain(std::mem::take(&mut s.waiting));
        for tx in candidates.by_ref() {
            if tx.send(Turn::Drive).is_ok() {
                // The rest wait for the new driver's round.
                s.waiting.extend(candidates);
                return;
            }
        }
        s.driving = false;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    /// Rounds return the round number; each caller records when it arrived and what it got.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn callers_share_only_rounds_that_start_after_they_arrive() {
        let c = Arc::new(Coalescer::default());
        let started = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for i in 0..200u64 {
            let (c, started) = (c.clone(), started.clone());
            tasks.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_micros(i * 50)).await;
                // Rounds that had started before this caller arrived.
                let before = started.load(Ordering::SeqCst);
                let got = c
                    .run(|| async {
                        let round = started.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        round
                    })
                    .await;
                (before, got)
            }));
        }
        let mut rounds = std::collections::BTreeSet::new();
        for t in tasks {
            let (before, got) = t.await.unwrap();
            assert!(
                got > before,
                "a caller that arrived after {before} rounds got round {got}"
            );
            rounds.insert(got);
        }
        let n = started.load(Ordering::SeqCst);
        assert_eq!(rounds.len() as u64, n, "every round answered someone");
        assert!(n < 200, "rounds were shared: {n} rounds for 200 callers");
    }

    /// A driver dropped mid-round hands the drive on: nobody waits forever.
    #[tokio::test]
    async fn an_abandoned_round_is_handed_on() {
        let c = Arc::new(Coalescer::<u32>::default());
        let (c1, c2) = (c.clone(), c.clone());
        let stuck = tokio::spawn(async move { c1.run(std::future::pending).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = tokio::spawn(async move { c2.run(|| async { 7 }).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        stuck.abort();
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(got.expect("the waiter was handed the drive").unwrap(), 7);
        // And the coalescer is usable afterwards.
        assert_eq!(c.run(|| async { 8 }).await, 8);
    }
}
