//! Lock users and lease holders of a chaos run (issue 15's proof under faults).
//!
//! *Lock users* take the lock `coord/lock` on a lease they keep alive, read a counter, and write
//! it plus one in a txn fenced by their token (`create_revision(lock key) == token`), then
//! unlock. A holder that lost its lock unawares (its lease ran out while it was cut off) has its
//! write refused by the fence. At the end:
//! - the counter equals the acknowledged increments (plus at most the increments whose outcome
//!   is unknown);
//! - in token order, each acknowledged increment wrote the value after the one before, and was
//!   applied before the next holder took the lock (revisions): no two holders overlap.
//!
//! *Lease holders* put a key on a lease they keep alive, and read it back all the while: a read
//! answered before the keeper's deadline (send time of the last acknowledged keep-alive plus the
//! TTL, as known when the read was invoked) must find the key. Then they abandon the lease; at the end
//! every abandoned lease must have expired, its key with it.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use keel_client::proto::{RangeRequest, ResponseHeader};
use keel_client::{fenced_put, Client, ClientConfig, Error, LeaseState};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::time::Instant;

const LOCK: &str = "coord/lock";
const COUNTER: &str = "coord/counter";
/// Requested TTL of every lease (the cluster may raise it to its minimum).
const TTL_SECS: i64 = 3;
/// A request's deadline, retries included.
const TIMEOUT: Duration = Duration::from_secs(3);

/// One acknowledged increment: the holder's token, the revision at which it held the lock, the
/// revision of its write, and the value written.
#[derive(Debug, Clone, Copy)]
pub struct Increment {
    pub token: u64,
    pub held_at: u64,
    pub wrote_at: u64,
    pub value: u64,
}

/// What one lock user recorded.
#[derive(Debug, Default)]
pub struct LockLog {
    pub acquisitions: u64,
    pub increments: Vec<Increment>,
    /// Fenced writes refused: the holder had lost the lock.
    pub fenced_off: u64,
    /// Fenced writes whose outcome is unknown.
    pub unknown: u64,
}

/// What one lease holder recorded.
#[derive(Debug, Default)]
pub struct LeaseLog {
    /// Leases kept alive for their whole stint.
    pub kept: u64,
    /// Leases whose keeper gave up (no acknowledgement before the deadline), or found gone.
    pub lost: u64,
    /// Reads of the key while it had to exist.
    pub checks: u64,
    /// A key found gone before its deadline (must stay empty).
    pub early: Vec<String>,
    /// Keys of leases abandoned (left to expire).
    pub abandoned: Vec<String>,
}

/// A client of the current members: `client`, or a new one when membership changed them (a
/// fault replaced a member). None, after a pause, if none can be made.
async fn current(client: &mut Option<Client>, endpoints: &mut watch::Receiver<Vec<String>>) -> Option<Client> {
    if client.is_none() || endpoints.has_changed().unwrap_or(false) {
        let list = endpoints.borrow_and_update().clone();
        *client = Client::connect(list, ClientConfig::with_timeout(TIMEOUT)).await.ok();
    }
    if client.is_none() {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    client.clone()
}

fn revision(header: &Option<ResponseHeader>) -> u64 {
    header.as_ref().map_or(0, |h| h.revision)
}

/// A lock user's loop, until `stop`.
pub async fn lock_user(mut endpoints: watch::Receiver<Vec<String>>, stop: Arc<AtomicBool>) -> LockLog {
    let mut log = LockLog::default();
    let mut client = None;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = current(&mut client, &mut endpoints).await else {
            continue;
        };
        if let Err(e) = one_increment(&c, &mut log).await {
            tracing::debug!(error = %e, "lock user: round failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    log
}

/// Grant, keep alive, lock, read, fenced write, unlock, revoke.
async fn one_increment(c: &Client, log: &mut LockLog) -> Result<(), Error> {
    let lease = c.lease_grant(TTL_SECS).await?.id;
    let keeper = c.keep_alive(lease);
    let result = async {
        let held = c.lock(LOCK, lease, TIMEOUT).await?;
        log.acquisitions += 1;
        let n: u64 = c
            .get(COUNTER)
            .await?
            .map_or(0, |kv| String::from_utf8_lossy(&kv.value).parse().unwrap_or(0));
        let write = c
            .txn(fenced_put(&held.key, held.fencing_token, COUNTER, (n + 1).to_string()))
            .await;
        match write {
            Ok(w) if w.succeeded => log.increments.push(Increment {
                token: held.fencing_token,
                held_at: revision(&held.header),
                wrote_at: revision(&w.header),
                value: n + 1,
            }),
            Ok(_) => log.fenced_off += 1,
            Err(e) if !e.is_write_safe_to_retry() => log.unknown += 1,
            Err(e) => return Err(e),
        }
        let _ = c.unlock(held.key).await;
        Ok(())
    }
    .await;
    drop(keeper);
    let _ = c.lease_revoke(lease).await;
    result
}

/// A lease holder's loop, until `stop`: keep a lease for a few seconds while checking its key,
/// then abandon it; again.
pub async fn lease_holder(
    holder: u64,
    seed: u64,
    mut endpoints: watch::Receiver<Vec<String>>,
    stop: Arc<AtomicBool>,
) -> LeaseLog {
    let mut rng = StdRng::seed_from_u64(seed ^ holder.wrapping_mul(0x2545_f491_4f6c_dd1d));
    let mut log = LeaseLog::default();
    let started = Instant::now();
    let mut client = None;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(c) = current(&mut client, &mut endpoints).await else {
            continue;
        };
        round += 1;
        let key = format!("coord/lease/{holder}/{round}");
        let stint = Duration::from_millis(rng.random_range(2_000..6_000));
        if let Err(e) = one_stint(&c, &key, stint, &stop, started, &mut log).await {
            tracing::debug!(error = %e, "lease holder: stint failed");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    log
}

async fn one_stint(
    c: &Client,
    key: &str,
    stint: Duration,
    stop: &AtomicBool,
    started: Instant,
    log: &mut LeaseLog,
) -> Result<(), Error> {
    let lease = c.lease_grant(TTL_SECS).await?.id;
    let put = keel_client::proto::PutRequest {
        key: key.as_bytes().to_vec(),
        value: b"held".to_vec(),
        lease,
        ..Default::default()
    };
    if let Err(e) = c.put_request(put).await {
        let _ = c.lease_revoke(lease).await;
        return Err(e);
    }
    let keeper = c.keep_alive(lease);
    let until = Instant::now() + stint;
    let mut lost = false;
    while Instant::now() < until && !stop.load(Ordering::Relaxed) {
        // The deadline known before the read is invoked. The read takes effect at some instant
        // between its invocation and its answer, so only a read answered before the deadline
        // must find the key (under faults a read may wait seconds for a leader).
        let deadline = match keeper.state() {
            LeaseState::Alive { deadline, .. } => Some(deadline),
            LeaseState::Starting => None,
            LeaseState::Gone | LeaseState::Lost(_) => {
                lost = true;
                break;
            }
        };
        let invoked = Instant::now();
        match c.get(key).await {
            Ok(found) => {
                let answered = Instant::now();
                if let Some(deadline) = deadline.filter(|d| answered < *d) {
                    log.checks += 1;
                    if found.is_none() {
                        log.early.push(format!(
                            "{key} (lease {lease:x}): gone at a read invoked {:.2} s into the run and answered \
                             {:?} later, {:?} before the keeper's deadline",
                            (invoked - started).as_secs_f64(),
                            answered - invoked,
                            deadline - answered
                        ));
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, "lease holder: read failed"),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(keeper);
    if lost {
        log.lost += 1;
        // Its key may still be there for a while: it must go, like an abandoned one's.
    } else {
        log.kept += 1;
    }
    log.abandoned.push(key.to_string());
    Ok(())
}

/// The outcome of the coordination checks.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub acquisitions: u64,
    pub increments: usize,
    pub fenced_off: u64,
    pub unknown: u64,
    pub counter: u64,
    pub leases_kept: u64,
    pub leases_lost: u64,
    pub lease_checks: u64,
    pub abandoned: usize,
}

/// The lock users' increments, against the final counter: it counts every acknowledged
/// increment (and at most the unknown ones besides); in token order each wrote the next value,
/// and was applied before the next holder held the lock.
pub fn check_increments(increments: &mut [Increment], unknown: u64, counter: u64) -> Result<(), String> {
    increments.sort_by_key(|i| i.token);
    let acked = increments.len() as u64;
    if counter < acked || counter > acked + unknown {
        return Err(format!(
            "the counter is {counter}, but {acked} increments were acknowledged ({unknown} unknown)"
        ));
    }
    for pair in increments.windows(2) {
        let (a, b) = (pair[0], pair[1]);
        if b.value <= a.value || b.wrote_at <= a.wrote_at {
            return Err(format!("increments out of token order: {a:?} then {b:?}"));
        }
        if b.held_at < a.wrote_at {
            return Err(format!(
                "two holders overlapped: {b:?} held the lock before {a:?}'s write"
            ));
        }
    }
    Ok(())
}

/// Check the lock users' increments against the final counter, and the lease holders' logs;
/// then wait (up to `expire_within`) for every abandoned lease's key to go.
pub async fn check(
    locks: &[LockLog],
    leases: &[LeaseLog],
    endpoints: Vec<String>,
    expire_within: Duration,
) -> Result<Summary, String> {
    let client = Client::connect(endpoints, ClientConfig::with_timeout(Duration::from_secs(10)))
        .await
        .map_err(|e| e.to_string())?;
    let counter = client
        .get(COUNTER)
        .await
        .map_err(|e| format!("reading the counter: {e}"))?
        .map_or(0, |kv| String::from_utf8_lossy(&kv.value).parse().unwrap_or(0));
    let mut increments: Vec<Increment> = locks.iter().flat_map(|l| l.increments.iter().copied()).collect();
    let unknown: u64 = locks.iter().map(|l| l.unknown).sum();
    check_increments(&mut increments, unknown, counter)?;
    if let Some(early) = leases.iter().flat_map(|l| l.early.iter()).next() {
        return Err(format!("a lease expired early: {early}"));
    }
    let abandoned: Vec<&String> = leases.iter().flat_map(|l| l.abandoned.iter()).collect();
    let waited = Instant::now();
    loop {
        let left = client
            .range(RangeRequest {
                key: b"coord/lease/".to_vec(),
                prefix: true,
                keys_only: true,
                ..Default::default()
            })
            .await
            .map_err(|e| format!("reading the lease keys: {e}"))?;
        if left.kvs.is_empty() {
            break;
        }
        if waited.elapsed() >= expire_within {
            let keys: Vec<String> = left
                .kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(&kv.key).into_owned())
                .collect();
            return Err(format!(
                "abandoned leases outlived their TTL by {expire_within:?}: {keys:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(Summary {
        acquisitions: locks.iter().map(|l| l.acquisitions).sum(),
        increments: increments.len(),
        fenced_off: locks.iter().map(|l| l.fenced_off).sum(),
        unknown,
        counter,
        leases_kept: leases.iter().map(|l| l.kept).sum(),
        leases_lost: leases.iter().map(|l| l.lost).sum(),
        lease_checks: leases.iter().map(|l| l.checks).sum(),
        abandoned: abandoned.len(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inc(token: u64, held_at: u64, wrote_at: u64, value: u64) -> Increment {
        Increment {
            token,
            held_at,
            wrote_at,
            value,
        }
    }

    #[test]
    fn increments_in_token_order_pass() {
        let mut ok = vec![inc(9, 10, 12, 2), inc(5, 5, 7, 1), inc(14, 15, 16, 3)];
        assert_eq!(check_increments(&mut ok, 0, 3), Ok(()));
        assert_eq!(check_increments(&mut ok, 1, 4), Ok(()), "one unknown increment applied");
    }

    #[test]
    fn overlapping_holders_and_lost_increments_fail() {
        // Both read 1 and wrote 2: the second held the lock before the first's write applied.
        let mut overlap = vec![inc(5, 5, 9, 2), inc(7, 8, 10, 2)];
        assert!(check_increments(&mut overlap, 0, 2)
            .unwrap_err()
            .contains("out of token order"));
        let mut early = vec![inc(5, 5, 9, 1), inc(7, 8, 10, 2)];
        assert!(check_increments(&mut early, 0, 2).unwrap_err().contains("overlapped"));
        let mut lost = vec![inc(5, 5, 7, 1), inc(9, 10, 12, 2)];
        assert!(check_increments(&mut lost, 0, 1).unwrap_err().contains("counter is 1"));
        assert!(check_increments(&mut lost, 0, 3).unwrap_err().contains("counter is 3"));
    }
}
