//! Watch fan-out: W watchers on one prefix, all served by one member, while a writer puts R keys
//! a second under that prefix. The writer is open loop: each put is sent on its schedule whether
//! or not the earlier ones have answered (up to a bound of puts in flight), as the changes a
//! controller watches arrive whatever the controller is doing.
//!
//! Each value starts with the time its put was sent (microseconds since the run began; writer
//! and watchers share one clock, in this process), so every event's delivery latency is measured
//! from the put's send to the event's arrival at the watcher: commit, apply and fan-out.
//!
//! At the end every watcher must have seen an event for every acknowledged put (a put that failed
//! may have applied too, so more is allowed); what is short is reported as missing. The serving
//! member's resident memory is read from /proc before the watchers exist, once they all do, and
//! at its peak while the events flow.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use hdrhistogram::Histogram;
use keel_proto::v1::watch_client::WatchClient;
use keel_proto::v1::{watch_request, WatchCreateRequest, WatchRequest};
use tokio::sync::{watch, Semaphore};

use crate::target::Target;

/// The run's shape.
pub struct FanOut {
    pub system: String,
    /// Every endpoint (the writer goes to keel's leader, or over all of etcd's).
    pub endpoints: Vec<String>,
    /// The member serving the watchers, and its process (for its RSS), if known.
    pub serving: String,
    pub pid: Option<u32>,
    pub watchers: usize,
    /// Connections the watchers share (each watcher has its own stream).
    pub conns: usize,
    /// Puts per second, for `duration`.
    pub rate: u64,
    pub duration: Duration,
    pub value_size: usize,
    pub prefix: Vec<u8>,
}

/// Resident memory of the serving member, KiB.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rss {
    pub before: u64,
    pub watching: u64,
    pub peak: u64,
}

/// What a run measured.
pub struct Outcome {
    /// Acknowledged puts, failed puts, and the writer's time.
    pub puts: u64,
    pub put_errors: u64,
    pub put_seconds: f64,
    /// Events received over all watchers, and from the first put to the last event.
    pub delivered: u64,
    pub delivery_seconds: f64,
    /// Over all watchers: acknowledged puts a watcher never saw.
    pub missing: u64,
    /// Time to create every watch.
    pub setup_seconds: f64,
    pub latency_us: Histogram<u64>,
    pub rss: Option<Rss>,
    pub first_error: Option<String>,
}

/// Puts in flight at most; past it the writer waits (and the achieved rate shows it).
const MAX_IN_FLIGHT: usize = 1024;
/// How long watchers may take to catch up once the writer is done.
const DRAIN: Duration = Duration::from_secs(15);

pub async fn run(f: &FanOut) -> anyhow::Result<Outcome> {
    anyhow::ensure!(f.value_size >= 8, "--value-size: at least 8 (the send time)");
    let origin = Instant::now();
    let rss_before = f.pid.and_then(rss_kib);
    let writer = Target::connect(&f.system, &f.endpoints, 16.min(f.rate as usize).max(1)).await?;

    let conns = Target::connect_to(&f.system, &f.serving, f.conns.max(1)).await?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let seen: Arc<Vec<AtomicU64>> = Arc::new((0..f.watchers).map(|_| AtomicU64::new(0)).collect());
    let last_event_us = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(f.watchers);
    for w in 0..f.watchers {
        let stream = Stream::open(&conns, w, &f.prefix)
            .await
            .with_context(|| format!("creating watcher {w} of {}", f.watchers))?;
        let (seen, last, stop) = (seen.clone(), last_event_us.clone(), stop_rx.clone());
        tasks.push(tokio::spawn(watcher(stream, w, origin, seen, last, stop)));
    }
    let setup_seconds = origin.elapsed().as_secs_f64();
    let rss_watching = f.pid.and_then(rss_kib);
    let peak = f.pid.map(|pid| tokio::spawn(sample_peak(pid, stop_rx.clone())));

    let write_start = origin.elapsed();
    let (puts, put_errors, first_error) = write(&writer, f, origin).await;
    let put_seconds = (origin.elapsed() - write_start).as_secs_f64();

    let drain_until = Instant::now() + DRAIN;
    while seen.iter().any(|s| s.load(Ordering::Relaxed) < puts) && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = stop_tx.send(true);
    let mut latency_us = histogram();
    let mut first_error = first_error;
    for t in tasks {
        let (hist, error) = t.await?;
        latency_us.add(&hist).context("merging histograms")?;
        if first_error.is_none() {
            first_error = error;
        }
    }
    let rss_peak = match peak {
        Some(p) => Some(p.await?),
        None => None,
    };
    let delivered: u64 = seen.iter().map(|s| s.load(Ordering::Relaxed)).sum();
    let missing = seen
        .iter()
        .map(|s| puts.saturating_sub(s.load(Ordering::Relaxed)))
        .sum();
    let last = Duration::from_micros(last_event_us.load(Ordering::Relaxed));
    Ok(Outcome {
        puts,
        put_errors,
        put_seconds,
        delivered,
        delivery_seconds: last.saturating_sub(write_start).as_secs_f64(),
        missing,
        setup_seconds,
        latency_us,
        rss: rss_before.map(|before| Rss {
            before,
            watching: rss_watching.unwrap_or(0),
            peak: rss_peak.flatten().unwrap_or(0).max(rss_watching.unwrap_or(0)),
        }),
        first_error,
    })
}

fn histogram() -> Histogram<u64> {
    // Two significant digits: a thousand of these stay small, and 1% is finer than the noise.
    Histogram::new_with_bounds(1, 60_000_000, 2).expect("valid bounds")
}

/// Put `rate` keys a second for `duration` (cycling over 1,000 keys under the prefix), each
/// value stamped with its send time. Returns the acknowledged and failed puts, and the first
/// error.
async fn write(target: &Target, f: &FanOut, origin: Instant) -> (u64, u64, Option<String>) {
    let total = (f.rate as f64 * f.duration.as_secs_f64()).round() as u64;
    let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let acked = Arc::new(AtomicU64::new(0));
    let mut puts = tokio::task::JoinSet::new();
    let start = Instant::now();
    let mut sent = 0u64;
    while sent < total {
        let due = ((start.elapsed().as_secs_f64() * f.rate as f64) as u64).min(total);
        while sent < due {
            let Ok(permit) = in_flight.clone().acquire_owned().await else {
                break;
            };
            let mut key = f.prefix.clone();
            key.extend_from_slice(format!("{:04}", sent % 1000).as_bytes());
            let mut value = vec![b'v'; f.value_size];
            value[..8].copy_from_slice(&(origin.elapsed().as_micros() as u64).to_le_bytes());
            let (target, acked, conn) = (target.clone(), acked.clone(), sent as usize);
            puts.spawn(async move {
                let result = target.put(conn, key, value).await;
                drop(permit);
                if result.is_ok() {
                    acked.fetch_add(1, Ordering::Relaxed);
                }
                result.err().map(|e| format!("put: {e:#}"))
            });
            sent += 1;
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let (mut errors, mut first_error) = (0, None);
    while let Some(done) = puts.join_next().await {
        if let Ok(Some(e)) = done {
            errors += 1;
            first_error.get_or_insert(e);
        }
    }
    (acked.load(Ordering::Relaxed), errors, first_error)
}

/// One watcher: count the put events of its stream and record each one's delivery latency,
/// until told to stop or the stream ends.
async fn watcher(
    mut stream: Stream,
    w: usize,
    origin: Instant,
    seen: Arc<Vec<AtomicU64>>,
    last_event_us: Arc<AtomicU64>,
    mut stop: watch::Receiver<bool>,
) -> (Histogram<u64>, Option<String>) {
    let mut hist = histogram();
    let mut count = 0u64;
    loop {
        let mut record = |value: &[u8]| {
            let Some(stamp) = value.get(..8) else { return };
            let sent = u64::from_le_bytes(stamp.try_into().expect("8 bytes"));
            let now = origin.elapsed().as_micros() as u64;
            let _ = hist.record(now.saturating_sub(sent).max(1));
            count += 1;
        };
        let next = tokio::select! {
            next = stream.next(&mut record) => next,
            _ = stop.changed() => return (hist, None),
        };
        seen[w].store(count, Ordering::Relaxed);
        last_event_us.fetch_max(origin.elapsed().as_micros() as u64, Ordering::Relaxed);
        match next {
            Ok(true) => {}
            Ok(false) => return (hist, Some(format!("watcher {w}: the stream ended"))),
            Err(e) => return (hist, Some(format!("watcher {w}: {e:#}"))),
        }
    }
}

/// One watch on its own stream.
enum Stream {
    Keel(tonic::Streaming<keel_proto::v1::WatchResponse>),
    #[cfg(feature = "etcd")]
    Etcd(etcd_client::WatchStream),
}

impl Stream {
    /// Open a stream on connection `w` (mod their number) and create a watch of `prefix` on it,
    /// from now; returns once the member has confirmed the watch.
    async fn open(conns: &Target, w: usize, prefix: &[u8]) -> anyhow::Result<Stream> {
        match conns {
            Target::Keel { channels } => {
                let create = WatchRequest {
                    request: Some(watch_request::Request::Create(WatchCreateRequest {
                        key: prefix.to_vec(),
                        prefix: true,
                        ..Default::default()
                    })),
                };
                // The request stream stays open (pending) for as long as the watch lives.
                let outbound = futures::stream::iter([create]).chain(futures::stream::pending());
                let mut inbound = WatchClient::new(channels[w % channels.len()].clone())
                    .watch(outbound)
                    .await?
                    .into_inner();
                match inbound.message().await? {
                    Some(r) if r.created => Ok(Stream::Keel(inbound)),
                    Some(r) => anyhow::bail!("watch not created: {}", r.cancel_reason),
                    None => anyhow::bail!("the watch stream ended before the watch was created"),
                }
            }
            #[cfg(feature = "etcd")]
            Target::Etcd { clients } => {
                let options = etcd_client::WatchOptions::new().with_prefix();
                let mut stream = clients[w % clients.len()]
                    .watch_client()
                    .watch(prefix.to_vec(), Some(options))
                    .await?;
                match stream.message().await? {
                    Some(r) if r.created() => Ok(Stream::Etcd(stream)),
                    Some(r) => anyhow::bail!("watch not created: {}", r.cancel_reason()),
                    None => anyhow::bail!("the watch stream ended before the watch was created"),
                }
            }
        }
    }

    /// Wait for the next response and hand each put event's value to `f`. False when the
    /// stream has ended.
    async fn next(&mut self, f: &mut impl FnMut(&[u8])) -> anyhow::Result<bool> {
        match self {
            Stream::Keel(inbound) => {
                let Some(resp) = inbound.message().await? else {
                    return Ok(false);
                };
                anyhow::ensure!(!resp.canceled, "watch cancelled: {}", resp.cancel_reason);
                let put = keel_proto::v1::event::EventType::Put as i32;
                for kv in resp
                    .events
                    .iter()
                    .filter(|e| e.r#type == put)
                    .filter_map(|e| e.kv.as_ref())
                {
                    f(&kv.value);
                }
                Ok(true)
            }
            #[cfg(feature = "etcd")]
            Stream::Etcd(stream) => {
                let Some(resp) = stream.message().await? else {
                    return Ok(false);
                };
                anyhow::ensure!(!resp.canceled(), "watch cancelled: {}", resp.cancel_reason());
                for ev in resp.events() {
                    if let (etcd_client::EventType::Put, Some(kv)) = (ev.event_type(), ev.kv()) {
                        f(kv.value());
                    }
                }
                Ok(true)
            }
        }
    }
}

/// The resident memory of process `pid`, KiB (None when it cannot be read).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_rss(&status)
}

fn parse_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The highest RSS of `pid` seen every 100 ms until `stop`.
async fn sample_peak(pid: u32, mut stop: watch::Receiver<bool>) -> Option<u64> {
    let mut peak = None;
    loop {
        peak = peak.max(rss_kib(pid));
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            _ = stop.changed() => return peak,
        }
    }
}

/// Which endpoint serves the watchers: the first follower (of keel, as its members report; of
/// etcd, as its Status says), or the first endpoint when none can be told apart.
pub async fn first_follower(system: &str, endpoints: &[String]) -> anyhow::Result<usize> {
    match system {
        "keel" | "keel-etcd" => {
            let statuses = crate::target::keel_statuses(endpoints).await;
            let follower = statuses.iter().find(|(_, s)| s.role == "follower");
            Ok(follower
                .and_then(|(e, _)| endpoints.iter().position(|x| x == e))
                .unwrap_or(0))
        }
        #[cfg(feature = "etcd")]
        "etcd" => {
            for (i, e) in endpoints.iter().enumerate() {
                let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(1));
                let mut client = etcd_client::Client::connect([e], Some(options)).await?;
                let status = client.status().await?;
                let me = status.header().map(|h| h.member_id()).unwrap_or_default();
                if status.leader() != me {
                    return Ok(i);
                }
            }
            Ok(0)
        }
        other => anyhow::bail!("{other}: not supported by this build"),
    }
}

#[cfg(test)]
mod tests {
    use super::parse_rss;

    #[test]
    fn rss_is_read_from_proc_status() {
        let status = "Name:\tkeel\nVmPeak:\t  900 kB\nVmRSS:\t   51234 kB\nRssAnon:\t 40000 kB\n";
        assert_eq!(parse_rss(status), Some(51234));
        assert_eq!(parse_rss("Name:\tkeel\n"), None);
        // This process's own status parses.
        assert!(super::rss_kib(std::process::id()).is_some_and(|kib| kib > 0));
    }
}
