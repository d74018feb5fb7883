//! Sharing one round of work among concurrent callers: the read index of linearizable reads.
//!
//! A linearizable read needs a read index obtained *after* the read arrived: the leader confirms
//! with a quorum that it still leads and names its commit index. One confirmation serves every
//! read that arrived before it started, so concurrent reads need not each pay a quorum round (or,
//! on a follower, a forward to the leader). [`Coalescer::run`] gives that: a caller either starts
//! a round, or joins the next round, which starts when the running one ends, and shares its
//! result. It never shares a round that had already started when it arrived, which is what keeps
//! the reads linearizable.
//!
//! Each round runs on a task of its own, so no caller has to keep polling for the others: a
//! caller may be dropped at any moment (its client reset the stream, its deadline passed) and the
//! rounds go on for everyone else. A round is given the latest deadline of the callers that share
//! it, and each caller waits for it only until its own deadline: a caller with a short deadline
//! neither ends a round early for the others nor waits past its own.
//!
//! Caveat: a round that panics ends its task; the callers waiting on it and on the next round
//! are answered `None` at once (not hung), and the next caller starts afresh.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use tokio::sync::watch;

type Round<T> = Pin<Box<dyn Future<Output = T> + Send>>;
type MakeRound<T> = Box<dyn FnOnce(Instant) -> Round<T> + Send>;

/// The round that starts when the running one ends, with the callers that joined it so far.
struct Next<T> {
    /// The latest deadline among those callers: the round's own deadline.
    deadline: Instant,
    make: MakeRound<T>,
    result: watch::Sender<Option<T>>,
}

struct State<T> {
    /// A round's task is running.
    running: bool,
    next: Option<Next<T>>,
}

/// Shares rounds of an operation among concurrent callers (see the module docs).
pub struct Coalescer<T> {
    state: Arc<Mutex<State<T>>>,
}

impl<T> Default for Coalescer<T> {
    fn default() -> Self {
        Coalescer {
            state: Arc::new(Mutex::new(State {
                running: false,
                next: None,
            })),
        }
    }
}

fn lock<T>(state: &Mutex<State<T>>) -> std::sync::MutexGuard<'_, State<T>> {
    // The state is consistent between statements; a panic elsewhere does not spoil it.
    state.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T: Clone + Send + Sync + 'static> Coalescer<T> {
    /// The result of a round that starts after this call, or `None` if none finished before
    /// `deadline`. `round` is called with the round's deadline (which may be later than this
    /// caller's) if this caller is the one whose round runs.
    pub async fn run<F, Fut>(&self, deadline: Instant, round: F) -> Option<T>
    where
        F: FnOnce(Instant) -> Fut + Send + 'static,
        Fut: Future<Output = T> + Send + 'static,
    {
        // Boxed only by the caller whose round runs: most callers join one (on the read path).
        let boxed = move || -> MakeRound<T> { Box::new(move |d| Box::pin(round(d))) };
        let mut rx = {
            let mut s = lock(&self.state);
            if !s.running {
                s.running = true;
                let (tx, rx) = watch::channel(None);
                tokio::spawn(drive(self.state.clone(), deadline, boxed(), tx));
                rx
            } else if let Some(next) = &mut s.next {
                next.deadline = next.deadline.max(deadline);
                next.result.subscribe()
            } else {
                let (tx, rx) = watch::channel(None);
                s.next = Some(Next {
                    deadline,
                    make: boxed(),
                    result: tx,
                });
                rx
            }
        };
        let result = tokio::time::timeout_at(deadline.into(), rx.wait_for(Option::is_some)).await;
        match result {
            Ok(Ok(v)) => v.clone(),
            // Deadline passed, or the round ended without a result (it passed the deadline of
            // everyone sharing it, or panicked).
            _ => None,
        }
    }
}

/// Run rounds one after another until none is waiting.
async fn drive<T: Clone + Send + Sync + 'static>(
    state: Arc<Mutex<State<T>>>,
    deadline: Instant,
    make: MakeRound<T>,
    result: watch::Sender<Option<T>>,
) {
    let mut guard = Driving {
        state: state.clone(),
        done: false,
    };
    let mut round = Some((deadline, make, result));
    while let Some((deadline, make, result)) = round.take() {
        // Past `deadline` every caller sharing this round has stopped waiting.
        if let Ok(v) = tokio::time::timeout_at(deadline.into(), make(deadline)).await {
            result.send_replace(Some(v));
        }
        let mut s = lock(&state);
        match s.next.take() {
            Some(next) => round = Some((next.deadline, next.make, next.result)),
            None => {
                s.running = false;
                guard.done = true;
            }
        }
    }
}

/// If a round's task ends abnormally (a panic, or the runtime shutting down), the next caller
/// must be able to start a round, and those waiting for the next one must not wait in vain.
struct Driving<T> {
    state: Arc<Mutex<State<T>>>,
    done: bool,
}

impl<T> Drop for Driving<T> {
    fn drop(&mut self) {
        if !self.done {
            let mut s = lock(&self.state);
            s.running = false;
            // Dropping the next round's sender answers its callers `None`.
            s.next = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use tokio::sync::oneshot;

    use super::*;

    fn in_secs(s: u64) -> Instant {
        Instant::now() + Duration::from_secs(s)
    }

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
                let round = started.clone();
                let got = c
                    .run(in_secs(10), |_| async move {
                        let n = round.fetch_add(1, Ordering::SeqCst) + 1;
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        n
                    })
                    .await
                    .expect("answered within 10 s");
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

    /// The caller that started a round goes away mid-round: the round still answers the callers
    /// of the next one, and the coalescer stays usable.
    #[tokio::test]
    async fn an_abandoned_caller_does_not_stop_the_rounds() {
        let c = Arc::new(Coalescer::<u32>::default());
        let (c1, c2) = (c.clone(), c.clone());
        let (release, released) = oneshot::channel::<()>();
        let first = tokio::spawn(async move {
            c1.run(in_secs(10), |_| async move {
                let _ = released.await;
                1
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let waiter = tokio::spawn(async move { c2.run(in_secs(10), |_| async { 7 }).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        release.send(()).expect("the first round is still running");
        let got = tokio::time::timeout(Duration::from_secs(5), waiter).await;
        assert_eq!(got.expect("the waiter was answered").unwrap(), Some(7));
        assert_eq!(c.run(in_secs(10), |_| async { 8 }).await, Some(8));
    }

    /// A round that never ends answers nobody past their deadline, and the next caller after it
    /// is not stuck behind it forever: rounds end at the latest deadline of their callers.
    #[tokio::test]
    async fn a_round_that_hangs_ends_at_its_deadline() {
        let c = Arc::new(Coalescer::<u32>::default());
        let soon = Instant::now() + Duration::from_millis(100);
        assert_eq!(c.run(soon, |_| std::future::pending()).await, None);
        let got = tokio::time::timeout(Duration::from_secs(5), c.run(in_secs(10), |_| async { 9 })).await;
        assert_eq!(got.expect("the hung round ended at its deadline"), Some(9));
    }

    /// A round that panics answers its callers and the next round's at once, and the coalescer
    /// stays usable.
    #[tokio::test]
    async fn a_round_that_panics_is_not_a_hang() {
        let c = Arc::new(Coalescer::<u32>::default());
        let c1 = c.clone();
        let (go, gone) = oneshot::channel::<()>();
        let first = tokio::spawn(async move {
            c1.run(in_secs(10), |_| async move {
                let _ = gone.await;
                panic!("a round that panics (expected in this test)")
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        let c2 = c.clone();
        let next = tokio::spawn(async move { c2.run(in_secs(10), |_| async { 5 }).await });
        tokio::time::sleep(Duration::from_millis(10)).await;
        go.send(()).expect("the round waits");
        let answered = tokio::time::timeout(Duration::from_secs(5), async { (first.await, next.await) }).await;
        let (first, next) = answered.expect("no caller hangs");
        assert_eq!(first.unwrap(), None);
        assert_eq!(next.unwrap(), None);
        assert_eq!(c.run(in_secs(10), |_| async { 6 }).await, Some(6));
    }

    /// Issue 11.2: a caller that queued for the next round and is then dropped without being
    /// polled again must not leave the coalescer without a driver. (Failed before the fix: the
    /// drive was handed to the dropped caller's channel and the third caller waited forever.)
    #[tokio::test]
    async fn a_waiter_dropped_unpolled_does_not_stall_later_callers() {
        let c = Arc::new(Coalescer::<u32>::default());
        let (release, released) = oneshot::channel::<()>();
        let (started_tx, started) = oneshot::channel::<()>();
        let c1 = c.clone();
        let driver = tokio::spawn(async move {
            c1.run(in_secs(10), |_| async move {
                let _ = started_tx.send(());
                let _ = released.await;
                1
            })
            .await
        });
        started.await.expect("the driver's round started");
        let mut second = Box::pin(c.run(in_secs(10), |_| async { 2 }));
        assert!(futures::poll!(&mut second).is_pending(), "the second caller queues");
        release.send(()).expect("release the driver");
        assert_eq!(driver.await.unwrap(), Some(1));
        // `second` is never polled again.
        drop(second);
        let third = tokio::time::timeout(Duration::from_secs(1), c.run(in_secs(10), |_| async { 3 })).await;
        assert_eq!(third.expect("a later caller is not stuck behind a lost drive"), Some(3));
    }

    /// Issue 11.10: a caller that joins a round gets an answer within its own deadline, not the
    /// deadline of the caller whose round it joined. Rounds take 200 ms and fail if their
    /// deadline passes first. (Failed before the fix: the joiner got "deadline passed" at the
    /// short caller's deadline.)
    #[tokio::test]
    async fn a_joiner_is_not_failed_by_the_drivers_deadline() {
        let c = Arc::new(Coalescer::<Result<u32, &'static str>>::default());
        async fn round(deadline: Instant) -> Result<u32, &'static str> {
            match tokio::time::timeout_at(deadline.into(), tokio::time::sleep(Duration::from_millis(200))).await {
                Ok(()) => Ok(7),
                Err(_) => Err("deadline passed"),
            }
        }
        // A first round is running; the short- and then the long-deadline caller queue behind it,
        // so they share the next round, which the short one's call set up.
        let c0 = c.clone();
        let first = tokio::spawn(async move { c0.run(in_secs(5), round).await });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let c1 = c.clone();
        let short = tokio::spawn(async move {
            let deadline = Instant::now() + Duration::from_millis(250);
            c1.run(deadline, round).await
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        let joiner = c.run(in_secs(5), round).await;
        assert_eq!(joiner, Some(Ok(7)), "the joiner had 5 s");
        assert_eq!(first.await.unwrap(), Some(Ok(7)));
        // The short caller stopped waiting at its own deadline.
        assert_eq!(short.await.unwrap(), None);
    }
}
