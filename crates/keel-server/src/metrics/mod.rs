//! # Metrics
//!
//! One Prometheus registry per node (the `prometheus` crate, with its Linux process collector),
//! served as text on `--metrics-addr` `/metrics` (see `http.rs`). Where each series comes
//! from:
//! - Raft state (`keel_raft_*`, `keel_is_leader`, replication lag): read from openraft's
//!   metrics at scrape time; the commit index comes from the log store, which openraft tells of
//!   every commit. Leader changes are events, counted by a task
//!   ([`scrape::count_leader_changes`]).
//! - Proposals: counted and timed where the leader proposes (`Node::write_local`); the writes
//!   the proposer holds are counted as they come and go (`write/proposer.rs`).
//! - Apply and snapshots: the state machine reports to [`keel_storage::Observer`].
//! - gRPC: a tower layer on the client server ([`GrpcMetricsLayer`]), by service, method and code.
//! - Database size and key count: read at scrape time; free disk space and the disk alarm as the
//!   disk watch last read them (`disk/`).
//!
//! Names follow Prometheus conventions: base units (seconds, bytes), `_total` for counters.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use keel_storage::NodeId;
use prometheus::{
    exponential_buckets, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Opts, Registry,
};
use tonic::codegen::http;

pub mod scrape;

/// Every series of a node.
pub struct Metrics {
    registry: Registry,
    pub term: IntGauge,
    pub is_leader: IntGauge,
    pub leader_changes: IntCounter,
    pub has_leader: IntGauge,
    pub last_log_index: IntGauge,
    pub commit_index: IntGauge,
    pub applied_index: IntGauge,
    pub replication_lag: IntGaugeVec,
    pub proposals_committed: IntCounter,
    pub proposals_failed: IntCounter,
    pub proposal_seconds: Histogram,
    pub proposal_batch_requests: Histogram,
    pub proposal_queue_requests: IntGauge,
    pub proposal_queue_bytes: IntGauge,
    pub applied_entries: IntCounter,
    pub apply_seconds: Histogram,
    pub snapshots_built: IntCounter,
    pub snapshot_build_seconds: Histogram,
    pub snapshot_bytes: IntGauge,
    pub snapshots_installed: IntCounter,
    pub snapshot_install_seconds: Histogram,
    pub grpc_requests: IntCounterVec,
    pub grpc_seconds: HistogramVec,
    pub log_syncs: IntCounter,
    pub log_sync_seconds: prometheus::Counter,
    pub log_synced_requests: IntCounter,
    pub db_size_bytes: IntGauge,
    pub keys: IntGauge,
    pub ready: IntGauge,
    pub disk_full: IntGauge,
    pub disk_free_bytes: IntGauge,
    pub backup_last_success: IntGauge,
    pub backup_bytes: IntGauge,
    pub backup_interval: IntGauge,
    pub backups: IntCounterVec,
    pub watch_streams: IntGauge,
    pub watchers: IntGauge,
    pub watch_events: IntCounter,
    /// Watchers waiting for their client to read (see `service/watch.rs`).
    pub slow_watchers: IntGauge,
    pub leases: IntGauge,
    pub lease_expiries: IntCounter,
    pub lease_renewals: IntCounter,
    pub lease_keepalive_streams: IntGauge,
    pub lock_waiters: IntGauge,
    /// TLS handshakes that failed, by port (`client`, `peer`, `metrics`, `peer_outgoing`) and
    /// reason (see `tls::failure_reason`).
    pub tls_handshake_failures: IntCounterVec,
    /// TLS file reloads by port and result (`success`, `failure`).
    pub tls_reloads: IntCounterVec,
    /// `Authenticate` calls by result: `success`, `failure` (a wrong name or password),
    /// `throttled` (refused unchecked: too many failures from the address lately).
    pub auth_attempts: IntCounterVec,
    /// Requests refused by a limit against abuse, by limit (`watch_streams`, `watches_per_stream`,
    /// `keepalive_streams`, `leases`, `lock_waiters`, `lock_waiters_per_user`, `auth_attempts`).
    pub limit_refusals: IntCounterVec,
}

/// Latency buckets from 100 µs to about 26 s.
fn latency_buckets() -> Vec<f64> {
    exponential_buckets(0.0001, 2.0, 19).expect("valid buckets")
}

impl Metrics {
    pub fn new(id: NodeId) -> Arc<Metrics> {
        let registry = Registry::new_custom(
            Some("keel".into()),
            Some([("member".to_string(), id.to_string())].into()),
        )
        .expect("valid registry");
        let r = &registry;
        let gauge = |name: &str, help: &str| register(r, IntGauge::new(name, help));
        let counter = |name: &str, help: &str| register(r, IntCounter::new(name, help));
        let histogram = |name: &str, help: &str| {
            register(
                r,
                Histogram::with_opts(HistogramOpts::new(name, help).buckets(latency_buckets())),
            )
        };
        let m = Metrics {
            term: gauge("raft_term", "Current Raft term."),
            is_leader: gauge("is_leader", "1 if this member is the leader."),
            leader_changes: counter("leader_changes_total", "Times this member saw a new leader."),
            has_leader: gauge("has_leader", "1 if this member knows a leader."),
            last_log_index: gauge("raft_last_log_index", "Index of the last entry in this member's log."),
            commit_index: gauge("raft_commit_index", "Highest log index known to be committed."),
            applied_index: gauge("raft_applied_index", "Highest log index applied to the state machine."),
            replication_lag: register(
                r,
                IntGaugeVec::new(
                    Opts::new(
                        "raft_replication_lag_entries",
                        "On the leader: entries each follower is behind.",
                    ),
                    &["follower"],
                ),
            ),
            watch_streams: gauge("watch_streams", "Watch streams open on this member."),
            watchers: gauge("watchers", "Watches open on this member."),
            watch_events: counter("watch_events_sent_total", "Watch events this member sent."),
            slow_watchers: gauge(
                "slow_watchers",
                "Watches waiting for their client to read; they read on from the history once it does.",
            ),
            leases: gauge("leases", "Leases in the store, as this member has applied them."),
            lease_expiries: counter(
                "lease_expiries_total",
                "Leases this member expired as leader (their keys deleted through Raft).",
            ),
            lease_renewals: counter("lease_renewals_total", "Keep-alives this member answered."),
            limit_refusals: register(
                r,
                IntCounterVec::new(
                    Opts::new("limit_refusals_total", "Requests refused by a limit, by limit."),
                    &["limit"],
                ),
            ),
            auth_attempts: register(
                r,
                IntCounterVec::new(
                    Opts::new("auth_attempts_total", "Authenticate calls on this member, by result."),
                    &["result"],
                ),
            ),
            lease_keepalive_streams: gauge(
                "lease_keepalive_streams",
                "Lease keep-alive streams open on this member.",
            ),
            lock_waiters: gauge(
                "lock_waiters",
                "Lock and Campaign calls waiting on this member for their turn.",
            ),
            proposals_committed: counter("proposals_committed_total", "Writes proposed here and committed."),
            proposals_failed: counter("proposals_failed_total", "Writes proposed here that failed."),
            proposal_seconds: histogram("proposal_duration_seconds", "From proposal to applied, on the leader."),
            proposal_batch_requests: register(
                r,
                Histogram::with_opts(
                    HistogramOpts::new(
                        "proposal_batch_requests",
                        "Client writes per proposed log entry (the leader's batching).",
                    )
                    .buckets(exponential_buckets(1.0, 2.0, 10).expect("valid buckets")),
                ),
            ),
            proposal_queue_requests: gauge(
                "proposal_queue_requests",
                "Client writes the leader's proposer holds: queued, or proposed and not yet answered.",
            ),
            proposal_queue_bytes: gauge(
                "proposal_queue_bytes",
                "Encoded bytes of the writes the leader's proposer holds.",
            ),
            applied_entries: counter("applied_entries_total", "Log entries applied to the state machine."),
            apply_seconds: histogram("apply_duration_seconds", "Time of one state machine apply call."),
            snapshots_built: counter("snapshots_built_total", "Snapshots built."),
            snapshot_build_seconds: histogram("snapshot_build_duration_seconds", "Time to build a snapshot."),
            snapshot_bytes: gauge("snapshot_size_bytes", "Size of the last snapshot built."),
            snapshots_installed: counter("snapshots_installed_total", "Snapshots received and installed."),
            snapshot_install_seconds: histogram(
                "snapshot_install_duration_seconds",
                "Time to install a received snapshot.",
            ),
            grpc_requests: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "grpc_requests_total",
                        "Client gRPC requests by service, method and code.",
                    ),
                    &["service", "method", "code"],
                ),
            ),
            grpc_seconds: register(
                r,
                HistogramVec::new(
                    HistogramOpts::new("grpc_request_duration_seconds", "Client gRPC request latency.")
                        .buckets(latency_buckets()),
                    &["service", "method"],
                ),
            ),
            log_syncs: counter(
                "log_syncs_total",
                "Group commits of the Raft log (sled flush + fdatasync).",
            ),
            log_sync_seconds: register(
                r,
                prometheus::Counter::new("log_sync_seconds_total", "Time spent in Raft log group commits."),
            ),
            log_synced_requests: counter(
                "log_synced_requests_total",
                "Appends and waits completed by the log group commits (per sync: batching).",
            ),
            db_size_bytes: gauge("db_size_bytes", "Bytes on disk of the member's database."),
            keys: gauge("keys", "Live keys in the store."),
            ready: gauge("ready", "1 if the member is ready to serve (see /readyz)."),
            disk_full: gauge(
                "disk_full",
                "1 while the data dir's free space is below --min-free-mb: the member takes no new entries.",
            ),
            disk_free_bytes: gauge("disk_free_bytes", "Free bytes on the data dir's filesystem."),
            backup_last_success: gauge(
                "backup_last_success_timestamp_seconds",
                "Unix time of the last successful scheduled backup (0: none yet).",
            ),
            backup_bytes: gauge("backup_size_bytes", "Size of the last successful scheduled backup."),
            backup_interval: gauge(
                "backup_interval_seconds",
                "Time between scheduled backups (0: scheduled backups are off).",
            ),
            backups: register(
                r,
                IntCounterVec::new(Opts::new("backups_total", "Scheduled backups by result."), &["result"]),
            ),
            tls_handshake_failures: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tls_handshake_failures_total",
                        "TLS handshakes that failed, by port and reason.",
                    ),
                    &["port", "reason"],
                ),
            ),
            tls_reloads: register(
                r,
                IntCounterVec::new(
                    Opts::new(
                        "tls_reloads_total",
                        "Changed TLS files loaded (success) or refused, the old ones kept (failure).",
                    ),
                    &["port", "result"],
                ),
            ),
            registry,
        };
        #[cfg(target_os = "linux")]
        {
            // Process metrics are conventionally unprefixed (process_cpu_seconds_total, ...).
            let process = prometheus::process_collector::ProcessCollector::for_self();
            if let Err(e) = prometheus::default_registry().register(Box::new(process)) {
                tracing::debug!(error = %e, "process collector already registered");
            }
        }
        Arc::new(m)
    }

    /// Record a proposal's outcome and latency.
    pub fn proposal(&self, ok: bool, took: Duration) {
        if ok {
            self.proposals_committed.inc();
            self.proposal_seconds.observe(took.as_secs_f64());
        } else {
            self.proposals_failed.inc();
        }
    }
}

fn register<M: prometheus::core::Collector + Clone + 'static>(r: &Registry, m: prometheus::Result<M>) -> M {
    let m = m.expect("valid metric");
    r.register(Box::new(m.clone())).expect("unique metric");
    m
}

impl keel_storage::Observer for Metrics {
    fn applied(&self, entries: usize, took: Duration) {
        self.applied_entries.inc_by(entries as u64);
        self.apply_seconds.observe(took.as_secs_f64());
    }

    fn snapshot_built(&self, bytes: u64, took: Duration) {
        self.snapshots_built.inc();
        self.snapshot_bytes.set(bytes as i64);
        self.snapshot_build_seconds.observe(took.as_secs_f64());
    }

    fn snapshot_installed(&self, took: Duration) {
        self.snapshots_installed.inc();
        self.snapshot_install_seconds.observe(took.as_secs_f64());
    }
}

/// A tower layer counting and timing gRPC requests by service, method and status code.
#[derive(Clone)]
pub struct GrpcMetricsLayer(pub Arc<Metrics>);

impl<S> tower_layer::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    metrics: Arc<Metrics>,
}

/// `("keel.v1.KV", "Put")` from `/keel.v1.KV/Put`.
fn split_path(path: &str) -> (String, String) {
    let mut parts = path.trim_start_matches('/').splitn(2, '/');
    let service = parts.next().unwrap_or("").to_string();
    let method = parts.next().unwrap_or("").to_string();
    (service, method)
}

impl<S, B, RB> tower_service::Service<http::Request<B>> for GrpcMetrics<S>
where
    S: tower_service::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Pin<Box<dyn Future<Output = Result<S::Response, S::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let (service, method) = split_path(req.uri().path());
        let metrics = self.metrics.clone();
        let started = Instant::now();
        let fut = self.inner.call(req);
        Box::pin(async move {
            let result = fut.await;
            // An error status comes in the headers (trailers-only response); a success's status
            // is in the trailers, which have not been sent yet: no grpc-status header means OK.
            let code = match &result {
                Ok(resp) => resp
                    .headers()
                    .get("grpc-status")
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.parse::<i32>().ok())
                    .map_or(tonic::Code::Ok, tonic::Code::from_i32),
                Err(_) => tonic::Code::Internal,
            };
            // Paths that name no method are counted together: a label per path a client makes
            // up would grow the metrics without bound.
            let (service, method) = if code == tonic::Code::Unimplemented {
                ("unknown".to_string(), "unknown".to_string())
            } else {
                (service, method)
            };
            metrics
                .grpc_requests
                .with_label_values(&[&service, &method, &format!("{code:?}")])
                .inc();
            metrics
                .grpc_seconds
                .with_label_values(&[&service, &method])
                .observe(started.elapsed().as_secs_f64());
            result
        })
    }
}

/// A gauge raised for as long as this lives (an open stream, a watch).
pub struct Gauge(IntGauge);

impl Metrics {
    /// Count a refusal by `limit` and hand `e` on.
    pub fn refused<E>(&self, limit: &str, e: E) -> E {
        self.limit_refusals.with_label_values(&[limit]).inc();
        e
    }
}

impl Gauge {
    pub fn up(g: &IntGauge) -> Gauge {
        g.inc();
        Gauge(g.clone())
    }

    /// [`Gauge::up`], unless the gauge stands at `max` already (a limit on streams or waiters).
    /// Taken in the request's handler, not in the task that serves it, so the limit holds for
    /// requests that arrive back to back.
    pub fn up_within(g: &IntGauge, max: i64) -> Option<Gauge> {
        (g.get() < max).then(|| Gauge::up(g))
    }
}

impl Drop for Gauge {
    fn drop(&mut self) {
        self.0.dec();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use prometheus::TextEncoder;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            split_path("/keel.v1.KV/Put"),
            ("keel.v1.KV".to_string(), "Put".to_string())
        );
        assert_eq!(split_path("/"), (String::new(), String::new()));
    }

    #[test]
    fn every_series_is_registered_once_with_the_prefix() {
        let m = Metrics::new(3);
        m.proposal(true, Duration::from_millis(2));
        m.grpc_requests.with_label_values(&["keel.v1.KV", "Put", "Ok"]).inc();
        let text = TextEncoder::new().encode_to_string(&m.registry.gather()).unwrap();
        for name in [
            "keel_raft_term",
            "keel_proposals_committed_total{member=\"3\"} 1",
            "keel_proposal_duration_seconds_bucket",
            "keel_proposal_queue_requests{member=\"3\"} 0",
            "keel_proposal_queue_bytes{member=\"3\"} 0",
            "keel_grpc_requests_total{code=\"Ok\",method=\"Put\",service=\"keel.v1.KV\",member=\"3\"} 1",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
