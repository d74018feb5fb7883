//! Starting and stopping a node.
//!
//! [`start`] takes listeners that are already bound, so tests can bind `127.0.0.1:0` and build the
//! `--initial-cluster` from the real ports. Shutdown, in order: refuse new client requests, let the
//! client server finish the ones in flight, stop Raft, stop the peer server, and make the storage
//! durable one last time.

use std::sync::Arc;
use std::time::Duration;

use keel_proto::raft::raft_server::RaftServer;
use keel_proto::v1::cluster_server::ClusterServer;
use keel_proto::v1::kv_server::KvServer;
use keel_storage::{Member, SmConfig, StoreConfig};
use openraft::async_runtime::WatchReceiver;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::TcpListenerStream;

use crate::config::Config;
use crate::node::Node;
use crate::peer::client::{Network, PeerChannels};
use crate::peer::service::PeerService;
use crate::raft::Raft;
use crate::service::cluster::ClusterService;
use crate::service::kv::KvService;
use keel_datadir::identity::{self as datadir, Startup};

/// Why a node could not start, or did not stop cleanly.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot listen on {flag} {addr}: {source}")]
    Listen {
        flag: &'static str,
        addr: std::net::SocketAddr,
        source: std::io::Error,
    },
    #[error(
        "data dir {} belongs to a member that was removed ({why}); to add this machine again, start it \
         with an empty data dir and --join",
        dir.display()
    )]
    Removed { dir: std::path::PathBuf, why: String },
    #[error(transparent)]
    DataDir(#[from] keel_datadir::identity::IdentityError),
    #[error(transparent)]
    Storage(#[from] keel_storage::OpenError),
    #[error(transparent)]
    Restore(#[from] keel_storage::restore::RestoreError),
    #[error("data dir {}: {source}", dir.display())]
    Io {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("data dir {}: cannot record the bootstrap: {source}", dir.display())]
    Bootstrap {
        dir: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("raft: {0}")]
    Raft(String),
    #[error("gRPC reflection: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
    #[error("shutdown: {0}")]
    Shutdown(String),
    #[error("TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

/// The listeners of a node: two gRPC, and HTTP for metrics and probes (None: not served).
pub struct Listeners {
    pub peer: TcpListener,
    pub client: TcpListener,
    pub metrics: Option<TcpListener>,
}

impl Listeners {
    /// Bind the addresses of `config`.
    pub async fn bind(config: &Config) -> Result<Listeners, ServerError> {
        async fn bind(flag: &'static str, addr: std::net::SocketAddr) -> Result<TcpListener, ServerError> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| ServerError::Listen { flag, addr, source })
        }
        let peer = bind("--peer-addr", config.peer_addr).await?;
        let client = bind("--client-addr", config.client_addr).await?;
        let metrics = bind("--metrics-addr", config.metrics_addr).await?;
        Ok(Listeners {
            peer,
            client,
            metrics: Some(metrics),
        })
    }
}

/// Accepted connections with TCP_NODELAY. tonic's `Server::tcp_nodelay` applies only to
/// listeners it binds itself, not to an incoming stream; without it, Nagle's algorithm holds a
/// response's second small write until the client's delayed ACK (~40 ms) arrives.
fn nodelay(listener: TcpListener) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    use futures::StreamExt;
    TcpListenerStream::new(listener).map(|conn| {
        conn.inspect(|s| {
            if let Err(e) = s.set_nodelay(true) {
                tracing::debug!(error = %e, "cannot set TCP_NODELAY");
            }
        })
    })
}

/// The current server configuration of a reloadable port.
type ConfigSource = Arc<dyn Fn() -> Arc<rustls::ServerConfig> + Send + Sync>;

fn server_config(r: Arc<crate::tls::Reloadable<Arc<rustls::ServerConfig>>>) -> ConfigSource {
    Arc::new(move || (*r.current()).clone())
}

fn peer_server_config(r: Arc<crate::tls::Reloadable<crate::tls::PeerConfigs>>) -> ConfigSource {
    Arc::new(move || r.current().server.clone())
}

/// The TLS accept loop's view of a port, if it has TLS.
fn tls_port(
    name: &'static str,
    config: Option<ConfigSource>,
    metrics: &Arc<crate::metrics::Metrics>,
) -> Option<crate::tls::accept::Port> {
    Some(crate::tls::accept::Port {
        name,
        config: config?,
        metrics: metrics.clone(),
        limiter: Arc::new(crate::tls::RateLimit::new(Duration::from_secs(5))),
    })
}

/// A started node. Drop does not stop it; call [`NodeHandle::shutdown`].
pub struct NodeHandle {
    pub node: Arc<Node>,
    stop: watch::Sender<bool>,
    client_server: JoinHandle<Result<(), tonic::transport::Error>>,
    peer_server: JoinHandle<Result<(), tonic::transport::Error>>,
    durability: Arc<keel_storage::durability::Durability>,
    /// [`NodeHandle::shutdown`] ran; otherwise dropping the handle stops the node.
    stopped: bool,
}

/// Open the data directory, start Raft and both gRPC servers.
pub async fn start(config: Config, listeners: Listeners) -> Result<NodeHandle, ServerError> {
    // First, so that a bad certificate is refused before anything is opened.
    let tls = crate::tls::NodeTls::load(&config.tls)?;
    if let Some(why) = datadir::removed(&config.data_dir) {
        return Err(ServerError::Removed {
            dir: config.data_dir.clone(),
            why: why.trim().to_string(),
        });
    }
    let data_dir_error = |source| ServerError::Io {
        dir: config.data_dir.clone(),
        source,
    };
    let (identity, startup) = datadir::check_or_create(
        &config.data_dir,
        config.id,
        &config.cluster_token,
        config.initial_cluster.as_ref(),
        config.join,
    )?;
    // A member staged by `keelctl snapshot restore` gets its database here, at its first start.
    let store = keel_storage::restore::open(
        &config.data_dir,
        &StoreConfig {
            cache_capacity: config.cache_bytes,
            sm: SmConfig {
                history_revisions: config.history_revisions,
                cluster_id: identity.cluster_id.clone(),
                ..SmConfig::default()
            },
        },
    )
    .await?;
    let reader = store.sm.reader();
    let inbox = store.sm.snapshot_inbox();
    let metrics = crate::metrics::Metrics::new(config.id);
    let leases = crate::lease::LeaseTable::new(&reader.leases().map_err(|e| ServerError::Io {
        dir: config.data_dir.clone(),
        source: std::io::Error::other(format!("reading the leases: {e}")),
    })?);
    metrics.leases.set(leases.len() as i64);
    store.sm.set_observer(Arc::new(crate::lease::Observers {
        metrics: metrics.clone(),
        leases: leases.clone(),
    }));
    let log_stats = store.log.stats();
    let durability = store.durability.clone();

    let raft_config = crate::raft::config(&config).map_err(ServerError::Raft)?;
    let channels = Arc::new(
        PeerChannels::from_listen_addr(listeners.peer.local_addr().unwrap_or(config.peer_addr)).with_tls(
            tls.peer
                .clone()
                .map(|peer| crate::tls::connect::PeerConnector::new(peer, metrics.clone())),
        ),
    );
    let cluster = Arc::new(datadir::ClusterId::new(&config.data_dir, identity.clone()));
    let disk = crate::disk::DiskSpace::new(config.id, &config.data_dir, config.min_free_bytes);
    let network = Network {
        id: config.id,
        channels: channels.clone(),
        cluster: cluster.clone(),
        disk: disk.clone(),
    };
    let raft = Raft::new(config.id, Arc::new(raft_config), network, store.log, store.sm)
        .await
        .map_err(|e| ServerError::Raft(e.to_string()))?;

    if let Startup::Bootstrap(members) = &startup {
        crate::raft::initialize(&raft, members, &identity.cluster_id)
            .await
            .map_err(ServerError::Raft)?;
        // Only now, with the initial membership and this node's vote on disk, does the identity
        // stop saying "bootstrap pending" (keel_datadir::identity): a failure or a kill anywhere
        // before this leaves a node that initializes on its next start, not one that never does.
        durability.sync().map_err(data_dir_error)?;
        cluster.bootstrapped().map_err(|source| ServerError::Bootstrap {
            dir: config.data_dir.clone(),
            source,
        })?;
    }

    let node = Node::new(crate::node::Parts {
        id: config.id,
        raft,
        reader,
        inbox,
        log_stats,
        channels,
        cluster,
        advertise: Member {
            peer_addr: config.advertise_peer_addr.clone(),
            client_addr: config.advertise_client_addr.clone(),
        },
        limits: config.limits,
        service_limits: config.service_limits,
        election_timeout_max: config.election_timeout.1,
        data_dir: config.data_dir.clone(),
        batch: config.batch,
        disk,
        metrics: metrics.clone(),
        leases: leases.clone(),
    });

    let (stop, stopped) = watch::channel(false);
    let until_stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let peer_router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .initial_stream_window_size(crate::peer::client::PEER_STREAM_WINDOW)
        .initial_connection_window_size(crate::peer::client::PEER_CONNECTION_WINDOW)
        .add_service(
            RaftServer::new(PeerService::new(node.clone()))
                .max_decoding_message_size(usize::MAX)
                .max_encoding_message_size(usize::MAX),
        );
    let peer_server = match tls_port("peer", tls.peer.clone().map(|p| peer_server_config(p)), &metrics) {
        None => tokio::spawn(
            peer_router.serve_with_incoming_shutdown(nodelay(listeners.peer), until_stopped(stopped.clone())),
        ),
        Some(port) => tokio::spawn(peer_router.serve_with_incoming_shutdown(
            crate::tls::accept::incoming(listeners.peer, port),
            until_stopped(stopped.clone()),
        )),
    };

    let (health, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(keel_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(keel_proto::etcd::FILE_DESCRIPTOR_SET)
        // The descriptor set also holds the peer service, which is not served here.
        .with_service_name("keel.v1.KV")
        .with_service_name("keel.v1.Cluster")
        .with_service_name("keel.v1.Maintenance")
        .with_service_name("keel.v1.Watch")
        .with_service_name("keel.v1.Lease")
        .with_service_name("keel.v1.Lock")
        .with_service_name("keel.v1.Election")
        .with_service_name("etcdserverpb.KV")
        .with_service_name("etcdserverpb.Watch")
        .with_service_name("etcdserverpb.Lease")
        .with_service_name("etcdserverpb.Cluster")
        .with_service_name("etcdserverpb.Maintenance")
        .with_service_name("etcdserverpb.Auth")
        .with_service_name("v3lockpb.Lock")
        .with_service_name("v3electionpb.Election")
        .with_service_name("grpc.health.v1.Health")
        .build_v1()?;
    let etcd = crate::etcd::Services::new(&node, largest_request(&config.limits));
    let client_router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .layer(crate::metrics::GrpcMetricsLayer(metrics.clone()))
        .layer(crate::auth::gate::AuthnLayer(node.clone()))
        .layer(crate::streams::StreamLimitLayer::new(
            config.service_limits.max_concurrent_streams,
            metrics.clone(),
        ))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(
            KvServer::new(KvService { node: node.clone() })
                .max_decoding_message_size(largest_request(&config.limits))
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(ClusterServer::new(ClusterService { node: node.clone() }))
        .add_service(keel_proto::v1::lease_server::LeaseServer::new(
            crate::service::lease::LeaseService { node: node.clone() },
        ))
        .add_service(keel_proto::v1::lock_server::LockServer::new(
            crate::service::lock::LockService { node: node.clone() },
        ))
        .add_service(keel_proto::v1::election_server::ElectionServer::new(
            crate::service::election::ElectionService { node: node.clone() },
        ))
        .add_service(
            keel_proto::v1::watch_server::WatchServer::new(crate::service::watch::WatchService { node: node.clone() })
                .max_encoding_message_size(usize::MAX),
        )
        .add_service(
            keel_proto::v1::maintenance_server::MaintenanceServer::new(
                crate::service::maintenance::MaintenanceService { node: node.clone() },
            )
            .max_encoding_message_size(usize::MAX),
        )
        .add_service(etcd.kv)
        .add_service(etcd.watch)
        .add_service(etcd.lease)
        .add_service(etcd.cluster)
        .add_service(etcd.maintenance)
        .add_service(etcd.auth)
        .add_service(etcd.lock)
        .add_service(etcd.election);
    let client_tls = tls.client.clone().map(server_config);
    let client_server = match tls_port("client", client_tls, &metrics) {
        None => tokio::spawn(
            client_router.serve_with_incoming_shutdown(nodelay(listeners.client), until_stopped(stopped.clone())),
        ),
        Some(port) => tokio::spawn(client_router.serve_with_incoming_shutdown(
            crate::tls::accept::incoming(listeners.client, port),
            until_stopped(stopped.clone()),
        )),
    };

    // Background work, owned by the node's task tracker: each ends when the node stops.
    node.spawn(node.clone().publish_addresses());
    node.spawn(node.clone().watch_removal());
    node.spawn(crate::health::follow_readiness(node.clone(), health));
    node.spawn(crate::metrics::scrape::count_leader_changes(
        node.clone(),
        metrics.clone(),
    ));
    node.spawn(fail_when_raft_stops(node.clone()));
    node.spawn(crate::lease::expiry::run(node.clone(), leases));
    node.spawn(crate::disk::hand_over::watch(node.clone()));
    if let Some(backup) = config.backup.clone() {
        node.spawn(crate::backup::run(node.clone(), backup, stopped.clone()));
    }
    if let Some(listener) = listeners.metrics {
        let port = tls_port("metrics", tls.metrics.clone().map(server_config), &metrics);
        let serve = crate::http::serve(
            listener,
            port,
            node.clone(),
            metrics.clone(),
            until_stopped(stopped.clone()),
        );
        node.spawn(async move {
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "metrics server stopped with an error");
            }
        });
    }
    // Only with TLS: the watch takes SIGHUP, whose default action (exit) plain-text nodes keep.
    if tls.client.is_some() || tls.peer.is_some() || tls.metrics.is_some() {
        node.spawn(tls.clone().watch(metrics.clone()));
    }
    tracing::info!(
        id = config.id,
        tls_client = config.tls.client.is_some(),
        client_cert_auth = config.tls.client.as_ref().is_some_and(|c| c.ca.is_some()),
        tls_peer = config.tls.peer.is_some(),
        tls_metrics = config.tls.metrics.is_some(),
        peer = %config.peer_addr,
        client = %config.client_addr,
        cluster_id = %identity.cluster_id,
        ?startup,
        "node started"
    );
    Ok(NodeHandle {
        node,
        stop,
        client_server,
        peer_server,
        durability,
        stopped: false,
    })
}

/// Raft's core stopped on an error (a storage failure, most likely): nothing works any more, so
/// the node stops (see [`Node::fail`]) instead of staying up with a dead core inside.
async fn fail_when_raft_stops(node: Arc<Node>) {
    let mut metrics = node.raft.metrics();
    let why = loop {
        if let Err(fatal) = &metrics.borrow_watched().running_state {
            break format!("Raft stopped: {fatal}");
        }
        if metrics.changed().await.is_err() {
            // Gone without saying why: it panicked (seen: openraft refused a state it found
            // inconsistent at startup).
            break "Raft's core exited unexpectedly".to_string();
        }
    };
    // A graceful stop begins with `begin_shutdown`.
    if !node.is_shutting_down() {
        node.fail(format!("{why} (data in {})", node.db_path().display()));
    }
}

impl NodeHandle {
    /// Resolves with the reason if the node has to stop (see [`Node::fail`]): the caller should
    /// shut it down and exit non-zero.
    pub fn failed(&self) -> impl std::future::Future<Output = String> + Send + 'static {
        self.node.failed()
    }

    /// Stop gracefully: finish in-flight requests, stop the background tasks and Raft, flush.
    /// Bounded in time.
    pub async fn shutdown(mut self) -> Result<(), ServerError> {
        self.stopped = true;
        let node = self.node.clone();
        // A leader first hands over to the most up-to-date voter, so clients see a pause of a
        // round trip or two rather than an election timeout plus a lease.
        if node.is_leader() {
            let deadline = std::time::Instant::now() + Duration::from_secs(5);
            match node.transfer_local(None, deadline).await {
                Ok(to) => tracing::info!(to, "handed leadership over before shutting down"),
                Err(e) => tracing::warn!(error = %e, "could not hand leadership over; shutting down anyway"),
            }
        }
        node.begin_shutdown();
        let _ = self.stop.send(true);
        // In-flight client requests may still need the peer server (replication), so it stays
        // up until Raft stops.
        match tokio::time::timeout(Duration::from_secs(10), &mut self.client_server).await {
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "client server stopped with an error"),
            Err(_) => tracing::warn!("in-flight client requests did not finish within 10 s"),
            _ => {}
        }
        // Background tasks end at their next await; the proposer's proposals end once Raft
        // answers them, which it does as it stops.
        node.cancel.cancel();
        if tokio::time::timeout(Duration::from_secs(10), node.raft.shutdown())
            .await
            .is_err()
        {
            tracing::warn!("raft did not stop within 10 s");
        }
        if !node.stop_tasks(Duration::from_secs(5)).await {
            tracing::warn!(left = node.tasks.len(), "background tasks did not stop within 5 s");
        }
        let _ = tokio::time::timeout(Duration::from_secs(5), &mut self.peer_server).await;
        // On a thread of its own and bounded: after a storage failure (a full disk), sled's flush
        // can block for good, and a member that failed must still exit (t33 saw it hang).
        let durability = self.durability.clone();
        match tokio::time::timeout(
            Duration::from_secs(10),
            tokio::task::spawn_blocking(move || durability.sync()),
        )
        .await
        {
            Ok(Ok(synced)) => synced.map_err(|e| ServerError::Shutdown(format!("the final sync failed: {e}")))?,
            Ok(Err(e)) => return Err(ServerError::Shutdown(format!("the final sync panicked: {e}"))),
            Err(_) => {
                return Err(ServerError::Shutdown(
                    "the final sync did not finish within 10 s".into(),
                ))
            }
        }
        tracing::info!(id = node.id, "node stopped");
        Ok(())
    }
}

/// A handle dropped without [`NodeHandle::shutdown`] (a test that ends early, a panic) still
/// stops the node: its servers close their ports, its background tasks end, and Raft and the
/// final sync run on a task of their own, without the graceful steps (no leader hand-over, no
/// wait for requests in flight).
impl Drop for NodeHandle {
    fn drop(&mut self) {
        if self.stopped {
            return;
        }
        let node = &self.node;
        node.begin_shutdown();
        let _ = self.stop.send(true);
        node.cancel.cancel();
        node.tasks.close();
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (raft, durability) = (node.raft.clone(), self.durability.clone());
        runtime.spawn(async move {
            let _ = tokio::time::timeout(Duration::from_secs(10), raft.shutdown()).await;
            let _ = tokio::task::spawn_blocking(move || durability.sync()).await;
        });
    }
}

/// The largest KV request message the transport decodes: twice the request limit, and at least
/// 16 MiB, so that a request over `--max-request-bytes` by any ordinary margin is refused by
/// keel's validation with InvalidArgument and the reason, not by tonic with OutOfRange.
fn largest_request(limits: &keel_storage::Limits) -> usize {
    limits.max_request_bytes.saturating_mul(2).max(16 * 1024 * 1024)
}
