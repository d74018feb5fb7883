//! The closed loop: C clients, each sending its next request as soon as the last one answered,
//! until the duration or the operation count runs out. Latencies go into one HDR histogram per
//! client, merged at the end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use crate::target::{Scan, Target};

/// What each operation is.
#[derive(Debug, Clone)]
pub enum Workload {
    Put,
    Get {
        serializable: bool,
    },
    /// Range reads (the same range every time), linearizable unless `serializable`.
    Scan {
        scan: Scan,
        serializable: bool,
    },
    /// `read_percent` % gets (linearizable unless `serializable`), the rest puts.
    Mixed {
        read_percent: u32,
        serializable: bool,
    },
    Txn,
    /// Lease churn: grant a lease, put a key attached to it, revoke it (which deletes the key);
    /// one operation is the three calls.
    LeaseChurn,
    /// Lock hand-off: every client locks the same lock with its own lease, then unlocks it at
    /// once; one operation is the wait for the lock plus the unlock.
    Lock {
        name: Vec<u8>,
    },
    /// Puts of every key of the key space, each exactly once, in order (for `--preload`).
    Fill,
}

/// The load's shape.
#[derive(Debug, Clone)]
pub struct Shape {
    pub workload: Workload,
    pub clients: usize,
    pub key_space: u64,
    pub key_size: usize,
    pub value_size: usize,
    pub duration: Duration,
    pub max_ops: u64,
}

/// What a run measured.
pub struct Outcome {
    pub ops: u64,
    pub errors: u64,
    pub elapsed: Duration,
    pub latency_us: Histogram<u64>,
    pub first_error: Option<String>,
}

/// A key of exactly `size` bytes for index `i`.
fn key(i: u64, size: usize) -> Vec<u8> {
    let digits = format!("{i:0width$}", width = size.max(1));
    digits.as_bytes()[digits.len() - size.max(1)..].to_vec()
}

/// Run the load; `progress` is told the operation count as it grows.
pub async fn run(target: &Target, shape: &Shape, progress: impl Fn(u64) + Send + Sync) -> Outcome {
    let done = Arc::new(AtomicU64::new(0));
    let deadline = Instant::now() + shape.duration;
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..shape.clients {
        let target = target.clone();
        let shape = shape.clone();
        let done = done.clone();
        tasks.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(c as u64);
            let mut hist = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
            let (mut errors, mut first_error) = (0u64, None);
            let value = vec![b'v'; shape.value_size];
            // A lock's owner is a lease, one per client, held for the whole run (its TTL
            // outlasts the run, so no keep-alive is needed) and revoked at the end.
            let lease = match &shape.workload {
                Workload::Lock { .. } => {
                    let ttl = shape.duration.as_secs() as i64 + 60;
                    match target.lease_grant(c, ttl).await {
                        Ok(id) => Some(id),
                        Err(e) => return (hist, 1, Some(format!("lease grant: {e:#}"))),
                    }
                }
                _ => None,
            };
            loop {
                let n = done.fetch_add(1, Ordering::Relaxed);
                if Instant::now() >= deadline || n >= shape.max_ops {
                    break;
                }
                let i = match &shape.workload {
                    Workload::Fill if n >= shape.key_space => break,
                    Workload::Fill => n,
                    Workload::Scan { .. } => 0,
                    _ => rng.random_range(0..shape.key_space),
                };
                let k = key(i, shape.key_size);
                let t = Instant::now();
                let result = match &shape.workload {
                    Workload::Put | Workload::Fill => target.put(c, k, value.clone()).await,
                    Workload::Get { serializable } => target.get(c, k, *serializable).await,
                    Workload::Scan { scan, serializable } => target.scan(c, scan, *serializable).await.map(drop),
                    Workload::Mixed {
                        read_percent,
                        serializable,
                    } => {
                        if rng.random_range(0..100) < *read_percent {
                            target.get(c, k, *serializable).await
                        } else {
                            target.put(c, k, value.clone()).await
                        }
                    }
                    Workload::Txn => target.txn(c, k, value.clone()).await,
                    Workload::LeaseChurn => target.lease_cycle(c, k, value.clone()).await,
                    Workload::Lock { name } => target.lock_cycle(c, name, lease.unwrap_or_default()).await,
                };
                match result {
                    Ok(()) => {
                        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
                    }
                    Err(e) => {
                        errors += 1;
                        first_error.get_or_insert_with(|| format!("{e:#}"));
                    }
                }
            }
            if let Some(id) = lease {
                let _ = target.lease_revoke(c, id).await;
            }
            (hist, errors, first_error)
        }));
    }
    let ticker = async {
        loop {
            tokio::time::sleep(Duration::from_millis(200)).await;
            progress(done.load(Ordering::Relaxed));
        }
    };
    let joined = async {
        let mut results = Vec::new();
        for t in tasks {
            results.push(t.await);
        }
        results
    };
    let results = tokio::select! {
        r = joined => r,
        _ = ticker => unreachable!("the ticker never ends"),
    };
    let elapsed = started.elapsed();
    let mut latency_us = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).expect("valid bounds");
    let (mut errors, mut first_error) = (0, None);
    for (hist, e, first) in results.into_iter().flatten() {
        let _ = latency_us.add(&hist);
        errors += e;
        if first_error.is_none() {
            first_error = first;
        }
    }
    Outcome {
        ops: latency_us.len(),
        errors,
        elapsed,
        latency_us,
        first_error,
    }
}

#[cfg(test)]
mod tests {
    use super::key;

    #[test]
    fn keys_have_the_requested_size() {
        assert_eq!(key(42, 8), b"00000042");
        assert_eq!(key(123_456_789, 4), b"6789");
        assert_eq!(key(7, 1), b"7");
    }
}
