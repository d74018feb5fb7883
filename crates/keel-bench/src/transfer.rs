//! `keel-bench transfer`: hand leadership from member to member under a steady write load and
//! measure what the writers see: for each round, the longest gap between acknowledged writes
//! around the transfer, and how long the `LeaderTransfer` call took.
//!
//! C closed-loop writers (puts of unique small keys, spread over every endpoint; followers
//! forward them) run for the whole bench and note when each write is acknowledged. Each round
//! waits `settle`, finds the leader (`Status`), picks the next voter in turn as the target and
//! calls `Cluster.LeaderTransfer` on the leader.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use keel_proto::v1::cluster_client::ClusterClient;
use keel_proto::v1::LeaderTransferRequest;
use tokio::task::JoinHandle;

use crate::target::{keel_channel, keel_leader, keel_statuses, keel_voters, Target};

/// Each write's deadline; a write that misses it counts as an error and is sent again.
const PUT_TIMEOUT: Duration = Duration::from_secs(2);
/// Pause after a failed write, so a member refusing writes is not asked in a tight loop.
const RETRY_PAUSE: Duration = Duration::from_millis(10);
/// The `LeaderTransfer` call's deadline.
const TRANSFER_TIMEOUT: Duration = Duration::from_secs(5);
/// How long to look for a leader before giving up.
const FIND_LEADER_WITHIN: Duration = Duration::from_secs(10);
/// The window whose longest write gap a round reports: from this long before the transfer
/// call...
const WINDOW_BEFORE: Duration = Duration::from_millis(200);
/// ...to this long after it returned.
const WINDOW_AFTER: Duration = Duration::from_millis(500);
/// The value of every write.
const VALUE: &[u8] = b"keel-bench-transfer";

pub struct Transfer {
    pub endpoints: Vec<String>,
    pub rounds: usize,
    pub clients: usize,
    pub settle: Duration,
}

/// What one round measured.
#[derive(Debug, Clone)]
pub struct Round {
    pub from: u64,
    pub to: u64,
    /// How long the `LeaderTransfer` call took (until it answered, failed or timed out).
    pub rpc: Duration,
    /// The call's error, if it failed.
    pub error: Option<String>,
    /// The longest time without an acknowledged write in the round's window.
    pub gap: Duration,
    /// When that gap began, relative to the start of the transfer call (negative: before).
    pub gap_at_ms: f64,
    /// Writes acknowledged in the window.
    pub acks: usize,
    /// The leader after the window (None: none found).
    pub new_leader: Option<u64>,
}

/// What the whole run measured.
pub struct Outcome {
    pub rounds: Vec<Round>,
    /// Acknowledged writes.
    pub writes: u64,
    /// Failed or timed-out writes (each was sent again).
    pub errors: u64,
    pub first_error: Option<String>,
}

/// The longest time in the window [`start`, `end`] without an acknowledged write: between two
/// consecutive acknowledgements in it, or between an edge of the window and the nearest
/// acknowledgement (so writes that have not resumed by the end show as a gap reaching it, and
/// a window without any is one gap). Returns the gap and when it began. `acks` need not be
/// sorted.
pub fn longest_gap(acks: &[Instant], start: Instant, end: Instant) -> (Duration, Instant) {
    let mut inside: Vec<Instant> = acks.iter().copied().filter(|t| (start..=end).contains(t)).collect();
    inside.sort_unstable();
    let mut prev = start;
    let mut longest = (Duration::ZERO, start);
    for t in inside.into_iter().chain([end]) {
        if t - prev > longest.0 {
            longest = (t - prev, prev);
        }
        prev = t;
    }
    longest
}

/// The transfer target: the voter after `leader` in id order, wrapping around (so leadership
/// visits every voter in turn: 1 → 2 → 3 → 1 ...). `voters` must be sorted.
pub fn pick_target(voters: &[u64], leader: u64) -> Option<u64> {
    voters
        .iter()
        .find(|v| **v > leader)
        .or_else(|| voters.iter().find(|v| **v != leader))
        .copied()
}

/// The writers: shared counters, the acknowledgement times, and their tasks.
struct Writers {
    stop: Arc<AtomicBool>,
    acks: Arc<Mutex<Vec<Instant>>>,
    written: Arc<AtomicU64>,
    tasks: Vec<JoinHandle<(u64, Option<String>)>>,
}

impl Writers {
    /// Start `clients` writers, client `c` writing through endpoint `c mod endpoints`.
    async fn start(endpoints: &[String], clients: usize) -> anyhow::Result<Writers> {
        let stop = Arc::new(AtomicBool::new(false));
        let acks = Arc::new(Mutex::new(Vec::new()));
        let written = Arc::new(AtomicU64::new(0));
        // Keys are unique per run too, so runs do not overwrite each other's keys.
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let mut tasks = Vec::new();
        for c in 0..clients {
            let target = Target::connect_to("keel", &endpoints[c % endpoints.len()], 1).await?;
            let (stop, acks, written) = (stop.clone(), acks.clone(), written.clone());
            tasks.push(tokio::spawn(async move {
                let (mut errors, mut first_error) = (0u64, None);
                let mut seq = 0u64;
                'writes: while !stop.load(Ordering::Relaxed) {
                    let key = format!("keel-bench/transfer/{run}/{c}/{seq}").into_bytes();
                    seq += 1;
                    // The same key until it is acknowledged (or the bench ends).
                    loop {
                        let put = target.put(0, key.clone(), VALUE.to_vec());
                        let failure = match tokio::time::timeout(PUT_TIMEOUT, put).await {
                            Ok(Ok(())) => {
                                let now = Instant::now();
                                acks.lock().unwrap_or_else(|e| e.into_inner()).push(now);
                                written.fetch_add(1, Ordering::Relaxed);
                                break;
                            }
                            Ok(Err(e)) => format!("{e:#}"),
                            Err(_) => format!("no answer within {} ms", PUT_TIMEOUT.as_millis()),
                        };
                        errors += 1;
                        first_error.get_or_insert(failure);
                        if stop.load(Ordering::Relaxed) {
                            break 'writes;
                        }
                        tokio::time::sleep(RETRY_PAUSE).await;
                    }
                }
                (errors, first_error)
            }));
        }
        Ok(Writers {
            stop,
            acks,
            written,
            tasks,
        })
    }

    /// The longest gap in [start, end], once `end` has passed; forgets acknowledgements no
    /// later round can need (a later window starts after now minus WINDOW_BEFORE).
    async fn gap(&self, start: Instant, end: Instant) -> (Duration, Instant, usize) {
        // A little slack, for writes acknowledged just before `end` to be noted.
        tokio::time::sleep_until((end + Duration::from_millis(20)).into()).await;
        let mut acks = self.acks.lock().unwrap_or_else(|e| e.into_inner());
        let (gap, from) = longest_gap(&acks, start, end);
        let in_window = acks.iter().filter(|t| (start..=end).contains(*t)).count();
        if let Some(cutoff) = Instant::now().checked_sub(WINDOW_BEFORE) {
            acks.retain(|t| *t >= cutoff);
        }
        (gap, from, in_window)
    }

    /// Stop the writers; returns the writes acknowledged, the errors and the first error.
    async fn stop(self) -> (u64, u64, Option<String>) {
        self.stop.store(true, Ordering::Relaxed);
        let (mut errors, mut first_error) = (0, None);
        for mut t in self.tasks {
            // A writer finishes within one write's deadline plus a retry pause.
            match tokio::time::timeout(PUT_TIMEOUT + Duration::from_secs(1), &mut t).await {
                Ok(Ok((e, first))) => {
                    errors += e;
                    if first_error.is_none() {
                        first_error = first;
                    }
                }
                Ok(Err(_)) => {}
                Err(_) => t.abort(),
            }
        }
        (self.written.load(Ordering::Relaxed), errors, first_error)
    }
}

/// The leader's id and endpoint, looking for up to `within`.
async fn find_leader(endpoints: &[String], within: Duration) -> anyhow::Result<(u64, String)> {
    let deadline = Instant::now() + within;
    loop {
        if let Some((endpoint, s)) = keel_leader(endpoints).await {
            return Ok((s.id, endpoint));
        }
        if Instant::now() > deadline {
            let statuses = keel_statuses(endpoints).await;
            if statuses.is_empty() {
                bail!(
                    "no leader found within {} s: no member answers at {}",
                    within.as_secs(),
                    endpoints.join(",")
                );
            }
            let named: Vec<String> = statuses
                .iter()
                .map(|(e, s)| format!("{e}: member {} says leader {}", s.id, s.leader_id))
                .collect();
            bail!(
                "no leader among the endpoints within {} s ({}; a leader outside the endpoints is not used)",
                within.as_secs(),
                named.join(", ")
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One round: find the leader, transfer leadership to the next voter, measure.
async fn round(t: &Transfer, writers: &Writers) -> anyhow::Result<Round> {
    let (from, endpoint) = find_leader(&t.endpoints, FIND_LEADER_WITHIN).await?;
    // The channel is connected by the member list, so the timed call does not connect.
    let ch = keel_channel(&endpoint)?;
    let voters = keel_voters(ch.clone(), Duration::from_secs(2))
        .await
        .with_context(|| format!("member list from the leader ({endpoint})"))?;
    let Some(to) = pick_target(&voters, from) else {
        bail!("member {from} is the only voter (voters: {voters:?}); a transfer needs two");
    };
    let mut req = tonic::Request::new(LeaderTransferRequest { to });
    req.set_timeout(TRANSFER_TIMEOUT);
    let started = Instant::now();
    let result = tokio::time::timeout(TRANSFER_TIMEOUT, ClusterClient::new(ch).leader_transfer(req)).await;
    let ended = Instant::now();
    let error = match result {
        Ok(Ok(_)) => None,
        Ok(Err(status)) => Some(format!("{:?}: {}", status.code(), status.message())),
        Err(_) => Some(format!("no answer within {} s", TRANSFER_TIMEOUT.as_secs())),
    };
    let start = started.checked_sub(WINDOW_BEFORE).unwrap_or(started);
    let (gap, gap_from, acks) = writers.gap(start, ended + WINDOW_AFTER).await;
    let gap_at_ms = if gap_from >= started {
        ms(gap_from - started)
    } else {
        -ms(started - gap_from)
    };
    let new_leader = keel_leader(&t.endpoints).await.map(|(_, s)| s.id);
    Ok(Round {
        from,
        to,
        rpc: ended - started,
        error,
        gap,
        gap_at_ms,
        acks,
        new_leader,
    })
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Print one round's line.
fn report(r: usize, round: &Round) {
    let new_leader = round.new_leader.map_or("none".to_string(), |l| l.to_string());
    let mut line = format!(
        "transfer round {}: {} -> {}, rpc {:.1} ms, longest gap {:.1} ms (from {:+.1} ms; {} writes in the window), new leader {new_leader}",
        r + 1,
        round.from,
        round.to,
        ms(round.rpc),
        ms(round.gap),
        round.gap_at_ms,
        round.acks,
    );
    if round.new_leader != Some(round.to) {
        line.push_str(" (not the target)");
    }
    if let Some(e) = &round.error {
        line.push_str(&format!("; transfer failed: {e}"));
    }
    println!("{line}");
}

/// Run the writers and the rounds, printing a line per round.
pub async fn run(t: &Transfer) -> anyhow::Result<Outcome> {
    // Fail before starting anything if there is no leader at all.
    find_leader(&t.endpoints, FIND_LEADER_WITHIN).await?;
    let writers = Writers::start(&t.endpoints, t.clients).await?;
    let mut rounds = Vec::new();
    let mut failed = None;
    for r in 0..t.rounds {
        tokio::time::sleep(t.settle).await;
        match round(t, &writers).await {
            Ok(round) => {
                report(r, &round);
                rounds.push(round);
            }
            Err(e) => {
                failed = Some(e.context(format!("round {}", r + 1)));
                break;
            }
        }
    }
    let (writes, errors, first_error) = writers.stop().await;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(Outcome {
        rounds,
        writes,
        errors,
        first_error,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(base: Instant, ms: &[u64]) -> Vec<Instant> {
        ms.iter().map(|m| base + Duration::from_millis(*m)).collect()
    }

    #[test]
    fn gaps_between_acknowledgements_in_the_window() {
        let base = Instant::now();
        let ms = Duration::from_millis;
        // Unsorted, and 1000 and 5000 are outside [100, 900]. Inside: 100, 150, 200, 450, 480,
        // 700, 900: gaps 50, 50, 250, 30, 220, 200.
        let acks = at(base, &[480, 150, 1000, 100, 450, 5000, 200, 700, 900]);
        assert_eq!(
            longest_gap(&acks, base + ms(100), base + ms(900)),
            (ms(250), base + ms(200))
        );
        // Starting at 300: 150 to the first write (450), then 30, 220, 200.
        assert_eq!(
            longest_gap(&acks, base + ms(300), base + ms(900)),
            (ms(220), base + ms(480))
        );
        // The window's edges count: writes stopping at 480 leave 170 ms to an end at 650...
        assert_eq!(
            longest_gap(&acks, base + ms(310), base + ms(650)),
            (ms(170), base + ms(480))
        );
        // ...and the first write of a window starting at 10 comes 90 ms into it.
        assert_eq!(
            longest_gap(&acks, base + ms(10), base + ms(200)),
            (ms(90), base + ms(10))
        );
        // No write in the window: all of it.
        assert_eq!(
            longest_gap(&acks, base + ms(1100), base + ms(1700)),
            (ms(600), base + ms(1100))
        );
        assert_eq!(longest_gap(&[], base, base + ms(50)), (ms(50), base));
        // Steady writes every 10 ms: 10 ms.
        let steady: Vec<u64> = (0..=100).map(|i| i * 10).collect();
        assert_eq!(longest_gap(&at(base, &steady), base, base + ms(1000)).0, ms(10));
        // An empty window.
        assert_eq!(
            longest_gap(&acks, base + ms(450), base + ms(450)),
            (ms(0), base + ms(450))
        );
    }

    #[test]
    fn targets_go_round_the_voters() {
        let voters = [1, 2, 3];
        assert_eq!(pick_target(&voters, 1), Some(2));
        assert_eq!(pick_target(&voters, 2), Some(3));
        assert_eq!(pick_target(&voters, 3), Some(1));
        // Ten rounds from leader 1 visit 2, 3, 1, 2, ...
        let mut leader = 1;
        let mut visited = Vec::new();
        for _ in 0..10 {
            leader = pick_target(&voters, leader).unwrap();
            visited.push(leader);
        }
        assert_eq!(visited, [2, 3, 1, 2, 3, 1, 2, 3, 1, 2]);
        assert_eq!(pick_target(&[1, 2, 4, 5], 3), Some(4));
        assert_eq!(pick_target(&[1, 2, 4, 5], 5), Some(1));
        assert_eq!(pick_target(&[7], 7), None);
        assert_eq!(pick_target(&[], 1), None);
    }
}
