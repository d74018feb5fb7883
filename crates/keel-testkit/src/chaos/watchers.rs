//! Watchers of a chaos run: one per member, each preferring its member, watching every chaos key
//! from revision 1 through every fault. At the end each watcher's stream must be the committed
//! history: revisions in order, no change twice, every watcher the same stream, and the last
//! change of each key its final value.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::proto::event::EventType;
use keel_client::proto::WatchCreateRequest;
use keel_client::{Client, ClientConfig, Error};
use tokio::sync::watch;

/// One change as a watcher saw it: revision, key, value (None: deleted).
pub type Seen = (u64, String, Option<String>);

/// What one watcher recorded.
#[derive(Debug, Default)]
pub struct Log {
    pub seen: Vec<Seen>,
    /// Times the client moved the watch to a member after its stream broke.
    pub moves: u64,
    /// Times it had to open the watch again from scratch (a new client on the current members).
    pub restarts: u64,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

fn create() -> WatchCreateRequest {
    WatchCreateRequest {
        key: b"chaos/".to_vec(),
        prefix: true,
        start_revision: 1,
        // A watch on a paused or cut-off member hears nothing: progress notifications let it
        // notice and move on (keel-client's silence limit).
        progress_ms: 500,
        ..Default::default()
    }
}

/// Watch with a preference for the `first`-th endpoint until `stop`, then until the watch has
/// delivered revision `until` (sent through `stop_at`), or a minute after that was sent.
pub async fn run(
    first: usize,
    mut endpoints: watch::Receiver<Vec<String>>,
    stop: Arc<AtomicBool>,
    mut stop_at: watch::Receiver<Option<u64>>,
) -> Log {
    let mut log = Log::default();
    let mut next = 1;
    let mut told_at: Option<Instant> = None;
    // Whether the watcher is done: it has delivered the final revision, or it is a minute past
    // being told it (an error).
    let mut finished = |next: u64| -> Option<Option<String>> {
        let until = (*stop_at.borrow_and_update())?;
        if !stop.load(Ordering::Relaxed) {
            return None;
        }
        if next > until {
            return Some(None);
        }
        let since = *told_at.get_or_insert_with(Instant::now);
        (since.elapsed() > Duration::from_secs(60)).then(|| {
            Some(format!(
                "a minute after the run, still short of revision {until} (next {next})"
            ))
        })
    };
    'restart: loop {
        if let Some(error) = finished(next) {
            log.error = error;
            return log;
        }
        let mut eps = endpoints.borrow_and_update().clone();
        if eps.is_empty() {
            log.error = Some("no endpoints".into());
            return log;
        }
        let shift = first % eps.len();
        eps.rotate_left(shift);
        let Ok(client) = Client::connect(eps, ClientConfig::with_timeout(Duration::from_secs(5))).await else {
            log.error = Some("no client".into());
            return log;
        };
        let opened = client
            .watch(WatchCreateRequest {
                start_revision: next,
                ..create()
            })
            .await;
        let moves_before = log.moves;
        let mut w = match opened {
            Ok(w) => w,
            Err(e @ Error::Compacted(_)) => {
                log.error = Some(e.to_string());
                return log;
            }
            Err(_) => {
                log.restarts += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue 'restart;
            }
        };
        loop {
            if let Some(error) = finished(next) {
                log.error = error;
                return log;
            }
            // Returns at least every `progress_ms` (a progress notification), so the checks above
            // run often enough.
            match w.next().await {
                Ok(batch) => {
                    for e in batch.events {
                        let kv = e.kv.unwrap_or_default();
                        let value = (e.r#type != EventType::Delete as i32)
                            .then(|| String::from_utf8_lossy(&kv.value).into_owned());
                        log.seen
                            .push((kv.mod_revision, String::from_utf8_lossy(&kv.key).into_owned(), value));
                    }
                    next = w.next_revision();
                    log.moves = moves_before + w.moves();
                }
                Err(e @ Error::Compacted(_)) => {
                    log.error = Some(e.to_string());
                    return log;
                }
                // Every endpoint of this client failed for a while (members replaced, say):
                // a new client on the current members, from where this one stopped.
                Err(_) => {
                    log.restarts += 1;
                    continue 'restart;
                }
            }
        }
    }
}

/// Check the watchers' logs against each other and the final state (`final_state`: key to
/// value, for every chaos key). Returns the number of changes each saw, and how often the
/// watches moved between members (the client's moves and the watchers' own restarts).
pub fn check(logs: &[Log], final_state: &BTreeMap<String, Option<String>>) -> Result<(usize, u64), String> {
    let first = logs.first().ok_or("no watchers")?;
    for (i, log) in logs.iter().enumerate() {
        if let Some(e) = &log.error {
            return Err(format!("watcher {i} stopped: {e}"));
        }
        let mut seen_pairs = BTreeSet::new();
        for pair in log.seen.windows(2) {
            if pair[1].0 < pair[0].0 {
                return Err(format!("watcher {i}: revision {} after {}", pair[1].0, pair[0].0));
            }
        }
        for (rev, key, _) in &log.seen {
            if !seen_pairs.insert((rev, key)) {
                return Err(format!("watcher {i}: the change of {key} at revision {rev} came twice"));
            }
        }
        if log.seen != first.seen {
            let at = log.seen.iter().zip(&first.seen).position(|(a, b)| a != b);
            return Err(format!(
                "watchers 0 and {i} differ ({} and {} changes; first difference at {at:?}: {:?} / {:?})",
                first.seen.len(),
                log.seen.len(),
                at.map(|p| &first.seen[p]),
                at.map(|p| &log.seen[p]),
            ));
        }
    }
    let mut last: BTreeMap<&str, Option<&str>> = BTreeMap::new();
    for (_, key, value) in &first.seen {
        last.insert(key, value.as_deref());
    }
    for (key, value) in final_state {
        let watched = last.get(key.as_str()).copied().flatten();
        if watched != value.as_deref() {
            return Err(format!(
                "key {key}: the watchers' last change leaves {watched:?}, the store holds {value:?}"
            ));
        }
    }
    Ok((first.seen.len(), logs.iter().map(|l| l.moves + l.restarts).sum()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log(seen: &[(u64, &str, Option<&str>)]) -> Log {
        Log {
            seen: seen
                .iter()
                .map(|(r, k, v)| (*r, k.to_string(), v.map(String::from)))
                .collect(),
            ..Log::default()
        }
    }

    #[test]
    fn the_check_finds_each_kind_of_wrong_stream() {
        let good = [
            (1, "a", Some("1")),
            (2, "b", Some("2")),
            (2, "c", Some("3")),
            (4, "a", None),
        ];
        let state: BTreeMap<String, Option<String>> = [
            ("a".to_string(), None),
            ("b".to_string(), Some("2".to_string())),
            ("c".to_string(), Some("3".to_string())),
        ]
        .into();
        assert_eq!(check(&[log(&good), log(&good)], &state), Ok((4, 0)));

        let gap = [good[0], good[1], good[3]];
        let repeat = [good[0], good[1], good[1], good[2], good[3]];
        let reorder = [good[1], good[0], good[2], good[3]];
        let stale_end = [good[0], good[1], good[2]];
        for (bad, why) in [
            (&gap[..], "differ"),
            (&repeat[..], "came twice"),
            (&reorder[..], "revision 1 after 2"),
            (&stale_end[..], "differ"),
        ] {
            let e = check(&[log(&good), log(bad)], &state).unwrap_err();
            assert!(e.contains(why), "{bad:?}: {e}");
        }
        // Every watcher alike, but not where the store ended.
        let e = check(&[log(&stale_end), log(&stale_end)], &state).unwrap_err();
        assert!(e.contains("key a"), "{e}");
        let stopped = Log {
            error: Some("compacted".into()),
            ..log(&good)
        };
        assert!(check(&[log(&good), stopped], &state).unwrap_err().contains("stopped"));
    }
}
