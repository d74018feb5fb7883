//! The clients of a chaos run: put, linearizable get and compare-and-swap on a few keys, every
//! operation recorded for the checker.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use keel_client::proto::{compare, request_op, Compare, PutRequest, RequestOp, TxnRequest};
use keel_client::{Client, ClientConfig, Error};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;

use crate::history::{Op, Outcome, ProcessId, Recorder};

/// The shape of the load.
#[derive(Debug, Clone)]
pub struct Load {
    pub clients: usize,
    pub keys: usize,
    /// Per-request deadline, retries included.
    pub timeout: Duration,
    /// Most operations one client issues (a bound besides time).
    pub max_ops_per_client: u64,
    /// Move to a fresh set of keys this often (None: the same keys throughout). The checker's
    /// work grows with the length of each key's history: a 30-minute soak on the same keys holds
    /// ~60,000 operations per key (a generated history that long checks in ~13 s, release); fresh
    /// keys every minute keep each history as short as a one-minute run's, and the final-state
    /// check then covers a key per minute and fault mix rather than one per run.
    pub rotate_keys: Option<Duration>,
}

impl Default for Load {
    fn default() -> Self {
        Load {
            clients: 8,
            keys: 8,
            timeout: Duration::from_secs(3),
            max_ops_per_client: 100_000,
            rotate_keys: None,
        }
    }
}

/// The key names of a run's `epoch`-th key set (see [`Load::rotate_keys`]).
pub fn key_names(keys: usize, epoch: u64) -> Vec<String> {
    (0..keys).map(|k| key_name(k, epoch)).collect()
}

/// Key `k` of the `epoch`-th key set.
fn key_name(k: usize, epoch: u64) -> String {
    match epoch {
        0 => format!("chaos/k{k}"),
        e => format!("chaos/e{e}/k{k}"),
    }
}

/// How an error ends a write: surely not applied, or maybe.
fn write_outcome(e: &Error) -> Outcome {
    if e.is_write_safe_to_retry() {
        Outcome::Failed
    } else {
        Outcome::Unknown
    }
}

/// One client's loop, until `stop` or its operation budget. Endpoints are re-read from
/// `endpoints` whenever membership changes them.
pub async fn client(
    process: ProcessId,
    seed: u64,
    load: Load,
    recorder: Recorder,
    mut endpoints: watch::Receiver<Vec<String>>,
    stop: Arc<AtomicBool>,
    acked: Arc<AtomicU64>,
) {
    let mut rng = StdRng::seed_from_u64(seed ^ process.wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let started = std::time::Instant::now();
    let epoch_of = |at: Duration| {
        load.rotate_keys
            .map_or(0, |every| (at.as_millis() / every.as_millis().max(1)) as u64)
    };
    // Odd clients write without sessions and give up sooner: their timeouts leave writes whose
    // outcome is unknown, which the checker must place (or not) somewhere after invocation.
    let config = if process.is_multiple_of(2) {
        ClientConfig::with_timeout(load.timeout)
    } else {
        ClientConfig {
            exactly_once: false,
            ..ClientConfig::with_timeout(load.timeout / 3)
        }
    };
    let connect = |eps: Vec<String>| Client::connect(eps, config.clone());
    let initial = endpoints.borrow_and_update().clone();
    let Ok(mut client) = connect(initial).await else {
        return;
    };
    // The value this client last saw on each key, for its compare-and-swaps.
    let mut seen: HashMap<String, Option<String>> = HashMap::new();
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) && seq < load.max_ops_per_client {
        if endpoints.has_changed().unwrap_or(false) {
            let current = endpoints.borrow_and_update().clone();
            if let Ok(c) = connect(current).await {
                client = c;
            }
        }
        seq += 1;
        let k = key_name(rng.random_range(0..load.keys), epoch_of(started.elapsed()));
        let key = &k;
        let value = format!("c{process}-{seq}");
        match rng.random_range(0..10) {
            0..=3 => {
                let id = recorder.invoke(process, key.clone(), Op::Put(value.clone()));
                let outcome = match client.put(key.clone(), value.clone()).await {
                    Ok(_) => {
                        seen.insert(k.clone(), Some(value));
                        Outcome::PutOk
                    }
                    Err(e) => write_outcome(&e),
                };
                if outcome == Outcome::PutOk {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                recorder.complete(id, outcome);
            }
            4..=7 => {
                let id = recorder.invoke(process, key.clone(), Op::Get);
                let outcome = match client.get(key.clone()).await {
                    Ok(kv) => {
                        let v = kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned());
                        seen.insert(k.clone(), v.clone());
                        Outcome::GetOk(v)
                    }
                    Err(_) => Outcome::Failed,
                };
                recorder.complete(id, outcome);
            }
            _ => {
                let expect = seen.get(&k).cloned().flatten();
                let op = Op::Cas {
                    expect: expect.clone(),
                    new: value.clone(),
                };
                let id = recorder.invoke(process, key.clone(), op);
                let outcome = match client.txn(cas(key, expect.as_deref(), &value)).await {
                    Ok(r) => {
                        if r.succeeded {
                            seen.insert(k.clone(), Some(value));
                        } else {
                            seen.remove(&k);
                        }
                        Outcome::CasOk(r.succeeded)
                    }
                    Err(e) => write_outcome(&e),
                };
                if matches!(outcome, Outcome::CasOk(_)) {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                recorder.complete(id, outcome);
            }
        }
    }
}

/// A transaction that sets `key` to `new` if it holds `expect` (`None`: if it is absent).
fn cas(key: &str, expect: Option<&str>, new: &str) -> TxnRequest {
    let compare = match expect {
        Some(v) => Compare {
            key: key.as_bytes().to_vec(),
            op: compare::Op::Equal as i32,
            target: Some(compare::Target::Value(v.as_bytes().to_vec())),
        },
        None => Compare {
            key: key.as_bytes().to_vec(),
            op: compare::Op::Equal as i32,
            target: Some(compare::Target::Version(0)),
        },
    };
    TxnRequest {
        compare: vec![compare],
        success: vec![RequestOp {
            request: Some(request_op::Request::Put(PutRequest {
                key: key.as_bytes().to_vec(),
                value: new.as_bytes().to_vec(),
                prev_kv: false,
                lease: 0,
                session: None,
            })),
        }],
        failure: Vec::new(),
        session: None,
    }
}

/// Read every one of `keys` linearizably, retrying until `timeout`.
pub async fn final_state(
    endpoints: Vec<String>,
    keys: impl IntoIterator<Item = String>,
    timeout: Duration,
) -> anyhow::Result<BTreeMap<String, Option<String>>> {
    let client = Client::connect(endpoints, ClientConfig::with_timeout(Duration::from_secs(2))).await?;
    let deadline = Instant::now() + timeout;
    let mut state = BTreeMap::new();
    for key in keys {
        let value = loop {
            match client.get(key.clone()).await {
                Ok(kv) => break kv.map(|kv| String::from_utf8_lossy(&kv.value).into_owned()),
                Err(e) if Instant::now() > deadline => anyhow::bail!("final read of {key}: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        state.insert(key, value);
    }
    Ok(state)
}
