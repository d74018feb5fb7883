//! TLS: client port TLS with and without client certificates, mutual TLS between members,
//! refusals (plain text, no certificate, another CA, an expired certificate, a wrong SAN) with
//! their log line and metric, and the rotation of every certificate of a running cluster under
//! load with no failed request.

use std::collections::BTreeMap;
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

mod common;

use common::http_get;
use keel_client::{Client, ClientConfig};
use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::RangeRequest;
use keel_storage::NodeId;
use keel_testkit::tls::TlsOptions;
use keel_testkit::{keelctl_binary, Backend, Cluster, Options};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

fn tls_options(client_cert_auth: bool) -> Options {
    Options {
        tls: Some(TlsOptions {
            client_cert_auth,
            ..Default::default()
        }),
        ..Options::default()
    }
}

/// The value of every `keel_tls_*` sample of member `id`, keyed `name{labels}` without `member`.
async fn tls_metrics(cluster: &Cluster, id: NodeId) -> BTreeMap<String, f64> {
    let Ok((200, body)) = http_get(cluster.nodes[&id].metrics_addr, "/metrics").await else {
        return BTreeMap::new();
    };
    let parsed = prometheus_parse::Scrape::parse(body.lines().map(|l| Ok(l.to_string()))).expect("metrics parse");
    let mut out = BTreeMap::new();
    for s in parsed.samples.into_iter().filter(|s| s.metric.starts_with("keel_tls_")) {
        let value = match s.value {
            prometheus_parse::Value::Counter(v) | prometheus_parse::Value::Untyped(v) => v,
            _ => continue,
        };
        let mut labels: Vec<String> = s
            .labels
            .iter()
            .filter(|(k, _)| k.as_str() != "member")
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        labels.sort();
        out.insert(format!("{}{{{}}}", s.metric, labels.join(",")), value);
    }
    out
}

/// Wait until member `id`'s sample `key` is at least `min`.
async fn wait_metric(cluster: &Cluster, id: NodeId, key: &str, min: f64, timeout: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let m = tls_metrics(cluster, id).await;
        if m.get(key).copied().unwrap_or(0.0) >= min {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "member {id}: {key} not >= {min} within {timeout:?}: {m:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A gRPC range on `addr` over TLS with `ca` and an optional client `identity` (cert, key PEM).
async fn range_over(addr: std::net::SocketAddr, ca: &[u8], identity: Option<(&str, &str)>) -> Result<(), String> {
    let mut tls = ClientTlsConfig::new()
        .domain_name(addr.ip().to_string())
        .ca_certificate(Certificate::from_pem(ca));
    if let Some((cert, key)) = identity {
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = Endpoint::from_shared(format!("https://{addr}"))
        .map_err(|e| e.to_string())?
        .tls_config(tls)
        .map_err(|e| e.to_string())?
        .connect_timeout(Duration::from_secs(2))
        .connect()
        .await
        .map_err(|e| format!("connect: {e:?}"))?;
    let mut req = tonic::Request::new(RangeRequest {
        key: b"k".to_vec(),
        ..Default::default()
    });
    req.set_timeout(Duration::from_secs(3));
    KvClient::new(channel)
        .range(req)
        .await
        .map(|_| ())
        .map_err(|s| s.to_string())
}

fn keelctl(endpoints: &str, args: &[&str]) -> std::process::Output {
    Command::new(keelctl_binary().expect("keelctl binary"))
        .env("KEEL_ENDPOINTS", endpoints)
        .env_remove("KEEL_CACERT")
        .env_remove("KEEL_CERT")
        .env_remove("KEEL_KEY")
        .args(args)
        .output()
        .expect("run keelctl")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A TLS cluster serves keelctl and keel-client over TLS; plain-text clients are refused and the
/// refusals counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_tls_cluster_serves_keelctl_and_keel_client() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::Process, tls_options(false)).await?;
    let tls = cluster.tls().expect("tls").clone();
    let endpoints = cluster.endpoints().join(",");
    let ca = tls.trusted().display().to_string();

    let put = keelctl(&endpoints, &["--cacert", &ca, "put", "greeting", "hello"]);
    assert_eq!(put.status.code(), Some(0), "{}", text(&put.stderr));
    let get = keelctl(&endpoints, &["--cacert", &ca, "get", "greeting", "--print-value-only"]);
    assert_eq!(text(&get.stdout).trim(), "hello", "{}", text(&get.stderr));
    // https:// endpoints work too, and need a CA.
    let https: Vec<String> = cluster.endpoints().iter().map(|e| format!("https://{e}")).collect();
    let get = keelctl(
        &https.join(","),
        &["--cacert", &ca, "get", "greeting", "--print-value-only"],
    );
    assert_eq!(text(&get.stdout).trim(), "hello", "{}", text(&get.stderr));
    let refused = keelctl(&https.join(","), &["get", "greeting"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("https needs a CA"),
        "{}",
        text(&refused.stderr)
    );

    // Plain text is refused: the handshake fails on the server, counted as not TLS.
    let plain = keelctl(&endpoints, &["--timeout", "1s", "get", "greeting"]);
    assert_eq!(plain.status.code(), Some(1), "{}", text(&plain.stdout));
    assert!(text(&plain.stderr).starts_with("error:"), "{}", text(&plain.stderr));
    assert!(
        text(&plain.stderr).contains("hint: the member may serve TLS: pass --cacert"),
        "{}",
        text(&plain.stderr)
    );
    wait_metric(
        &cluster,
        1,
        "keel_tls_handshake_failures_total{port=client,reason=not_tls}",
        1.0,
        Duration::from_secs(5),
    )
    .await?;

    // keel-client with TLS settings; without them the same endpoints fail.
    let config = ClientConfig {
        tls: Some(tls.client_config()?),
        ..ClientConfig::with_timeout(Duration::from_secs(5))
    };
    let client = Client::connect(cluster.endpoints(), config).await?;
    client.put("from-client", "v").await?;
    assert_eq!(
        client.get("greeting").await?.map(|kv| kv.value),
        Some(b"hello".to_vec())
    );
    let plain = Client::connect(cluster.endpoints(), ClientConfig::with_timeout(Duration::from_secs(1))).await?;
    assert!(plain.get("greeting").await.is_err());
    // The metrics port stays plain HTTP unless --metrics-cert-file is given (scraped above).
    cluster.shutdown().await
}

/// With --client-cert-auth, a client needs a certificate from the trusted CA: none, one from
/// another CA and an expired one are refused, each counted with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn client_cert_auth_refuses_missing_foreign_and_expired_certificates() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, tls_options(true)).await?;
    let tls = cluster.tls().expect("tls").clone();
    let addr = cluster.nodes[&1].client_addr;
    let ca = std::fs::read(tls.trusted())?;
    let good = tls.ca()?;
    let client = |ca: &keel_certs::Pair, validity| {
        keel_certs::issue(
            ca,
            &keel_certs::Request {
                name: "someone".into(),
                sans: vec![],
                client_only: true,
                validity,
            },
        )
        .expect("issue")
    };
    let ok = client(&good, keel_certs::Validity::days(1));
    range_over(addr, &ca, Some((&ok.cert_pem, &ok.key_pem)))
        .await
        .map_err(anyhow::Error::msg)?;

    let none = range_over(addr, &ca, None).await;
    assert!(none.is_err(), "no client certificate accepted");
    let other_ca = keel_certs::new_ca("another CA", keel_certs::Validity::days(1))?;
    let foreign = client(&other_ca, keel_certs::Validity::days(1));
    assert!(range_over(addr, &ca, Some((&foreign.cert_pem, &foreign.key_pem)))
        .await
        .is_err());
    let expired = client(&good, keel_certs::Validity::expired());
    assert!(range_over(addr, &ca, Some((&expired.cert_pem, &expired.key_pem)))
        .await
        .is_err());
    for reason in ["no_certificate", "unknown_ca", "expired"] {
        wait_metric(
            &cluster,
            1,
            &format!("keel_tls_handshake_failures_total{{port=client,reason={reason}}}"),
            1.0,
            Duration::from_secs(5),
        )
        .await?;
    }
    // A server whose certificate expired is refused by clients (checked on the client side).
    let expired_server = keel_certs::issue(
        &good,
        &keel_certs::Request {
            name: "member-1".into(),
            sans: vec![addr.ip().to_string()],
            client_only: false,
            validity: keel_certs::Validity::expired(),
        },
    )?;
    keel_certs::write_pair(&tls.node_dir(1), &expired_server, keel_certs::CERT, keel_certs::KEY)?;
    wait_metric(
        &cluster,
        1,
        "keel_tls_reloads_total{port=client,result=success}",
        1.0,
        Duration::from_secs(10),
    )
    .await?;
    let err = range_over(addr, &ca, Some((&ok.cert_pem, &ok.key_pem)))
        .await
        .unwrap_err();
    assert!(err.to_lowercase().contains("expired"), "{err}");
    cluster.shutdown().await
}

/// A member whose peer certificate comes from another CA cannot replicate: the others refuse
/// it (a log line and a metric), the majority carries on; once it gets a certificate from the
/// cluster's CA (reloaded, no restart) it catches up. A certificate from the right CA that
/// names another address is refused by the member dialling it (wrong SAN).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_peer_from_another_ca_or_with_a_wrong_san_cannot_replicate() -> anyhow::Result<()> {
    let mut cluster = Cluster::prepare(Backend::Process, tls_options(false)).await?;
    let tls = cluster.tls().expect("tls").clone();
    let other_ca = keel_certs::new_ca("another CA", keel_certs::Validity::days(1))?;
    let ip3 = cluster.nodes[&3].client_addr.ip();
    tls.issue_node(&other_ca, 3, ip3)?;
    cluster.launch_all().await?;
    let leader = cluster.wait_for_leader(Duration::from_secs(20)).await?;
    assert_ne!(leader, 3, "member 3 cannot have been elected");
    let client = Client::connect(
        vec![cluster.nodes[&leader].client_addr.to_string()],
        ClientConfig {
            tls: Some(tls.client_config()?),
            ..ClientConfig::with_timeout(Duration::from_secs(5))
        },
    )
    .await?;
    for i in 0..10 {
        client.put(format!("k{i}"), "v").await?;
    }
    // The leader refuses member 3's certificate when it dials it.
    wait_metric(
        &cluster,
        leader,
        "keel_tls_handshake_failures_total{port=peer_outgoing,reason=unknown_ca}",
        1.0,
        Duration::from_secs(10),
    )
    .await?;
    let log = cluster.log(leader);
    assert!(
        log.lines()
            .any(|l| l.contains("TLS handshake failed") && l.contains("unknown_ca")),
        "no log line for the refused peer"
    );
    let status = cluster.status(leader).await.expect("leader status");
    let matched3 = status.replication.iter().find(|r| r.id == 3).map(|r| r.matched_index);
    assert!(
        matched3.unwrap_or(0) < status.last_log_index,
        "member 3 replicated although refused: {matched3:?} of {}",
        status.last_log_index
    );

    // A certificate from the cluster's CA that names another address: refused as the wrong name.
    let wrong_ip: std::net::IpAddr = "127.0.0.254".parse()?;
    tls.issue_node(&tls.ca()?, 3, wrong_ip)?;
    wait_metric(
        &cluster,
        leader,
        "keel_tls_handshake_failures_total{port=peer_outgoing,reason=wrong_name}",
        1.0,
        Duration::from_secs(15),
    )
    .await?;

    // The right certificate, reloaded without a restart: member 3 catches up.
    tls.issue_node(&tls.ca()?, 3, ip3)?;
    let index = cluster.status(leader).await.expect("status").last_log_index;
    cluster.wait_matched(leader, 3, index, Duration::from_secs(30)).await?;
    cluster.shutdown().await
}

/// The certificate a new TLS connection to `addr` presents (DER), trusting `ca`, presenting
/// `identity`.
async fn presented(addr: std::net::SocketAddr, ca: &[u8], identity: (&[u8], &[u8])) -> anyhow::Result<Vec<u8>> {
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots.add(c?)?;
    }
    let certs = CertificateDer::pem_slice_iter(identity.0).collect::<Result<Vec<_>, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(identity.1)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_client_auth_cert(certs, key)?;
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(addr.ip().to_string())?;
    let tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    let chain = tls.get_ref().1.peer_certificates().expect("a certificate");
    Ok(chain[0].to_vec())
}

/// `GET path` over HTTPS (HTTP/1.0), trusting `ca`: the status and the body.
async fn https_get(addr: std::net::SocketAddr, ca: &[u8], path: &str) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(ca) {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::try_from(addr.ip().to_string())?;
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await?;
    tls.write_all(format!("GET {path} HTTP/1.0\r\nHost: keel\r\n\r\n").as_bytes())
        .await?;
    let mut raw = Vec::new();
    // A server may end a TLS stream without close_notify after the response; what was read counts.
    if let Err(e) = tls.read_to_end(&mut raw).await {
        anyhow::ensure!(e.kind() == std::io::ErrorKind::UnexpectedEof, e);
    }
    let text = String::from_utf8_lossy(&raw).to_string();
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("no HTTP status in {text:?}"))?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b).to_string();
    Ok((status, body))
}

/// `--metrics-cert-file`: /metrics and the probes over HTTPS; plain HTTP is refused and counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_metrics_port_serves_https_only() -> anyhow::Result<()> {
    let options = Options {
        nodes: 1,
        tls: Some(TlsOptions {
            metrics: true,
            ..Default::default()
        }),
        ..Options::default()
    };
    let cluster = Cluster::start(Backend::InProcess, options).await?;
    cluster.wait_for_leader(Duration::from_secs(20)).await?;
    let addr = cluster.nodes[&1].metrics_addr;
    let ca = std::fs::read(cluster.tls().expect("tls").trusted())?;
    let (status, _) = https_get(addr, &ca, "/readyz").await?;
    assert_eq!(status, 200, "/readyz over HTTPS");
    assert!(
        !matches!(http_get(addr, "/metrics").await, Ok((200, _))),
        "plain HTTP is not served"
    );
    let key = "keel_tls_handshake_failures_total{";
    let (status, body) = https_get(addr, &ca, "/metrics").await?;
    assert_eq!(status, 200, "/metrics over HTTPS");
    let refused = body
        .lines()
        .any(|l| l.starts_with(key) && l.contains("port=\"metrics\"") && l.contains("reason=\"not_tls\""));
    assert!(refused, "the plain-text attempt is counted:\n{body}");
    cluster.shutdown().await
}

/// The DER of the first certificate in a PEM file.
fn der_of(path: &std::path::Path) -> anyhow::Result<Vec<u8>> {
    Ok(CertificateDer::from_pem_file(path)?.to_vec())
}

/// Rotation: every certificate of a running 3-member cluster (client and peer, and the CA:
/// first a bundle of the old and the new CA, then certificates from the new one) is replaced
/// while writers run; no request fails, and new connections present the new certificates.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rotating_every_certificate_under_load_fails_no_request() -> anyhow::Result<()> {
    let cluster = Cluster::start(Backend::InProcess, tls_options(true)).await?;
    let tls = cluster.tls().expect("tls").clone();
    let ids: Vec<NodeId> = cluster.nodes.keys().copied().collect();
    let old_ca = tls.ca()?;
    let new_ca = keel_certs::new_ca("keel test CA 2", keel_certs::Validity::days(2))?;

    // The writers' client trusts both CAs from the start (clients learn the new CA first) and
    // presents a certificate from the old one, which the members must accept throughout.
    let bundle = format!("{}{}", old_ca.cert_pem, new_ca.cert_pem);
    let config = ClientConfig {
        tls: Some(keel_client::TlsConfig {
            ca_pem: bundle.clone().into_bytes(),
            ..tls.client_config()?
        }),
        ..ClientConfig::with_timeout(Duration::from_secs(5))
    };
    let client = Client::connect(cluster.endpoints(), config).await?;
    let (ok, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let stop_at = Instant::now() + Duration::from_secs(10);
    let mut writers = Vec::new();
    for w in 0..4 {
        let (client, ok, failed) = (client.clone(), ok.clone(), failed.clone());
        writers.push(tokio::spawn(async move {
            let mut i = 0u64;
            while Instant::now() < stop_at {
                match client.put(format!("rot/{w}/{i}"), "v").await {
                    Ok(_) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("write failed: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
                i += 1;
            }
        }));
    }
    tokio::time::sleep(Duration::from_secs(1)).await;

    // Step 1: every member trusts both CAs.
    keel_certs::write_atomic(&tls.trusted(), bundle.as_bytes(), 0o644)?;
    for id in &ids {
        for port in ["client", "peer"] {
            let key = format!("keel_tls_reloads_total{{port={port},result=success}}");
            wait_metric(&cluster, *id, &key, 1.0, Duration::from_secs(10)).await?;
        }
    }
    // Step 2: every member's certificate (client and peer port) from the new CA, and the
    // test's client certificate.
    for id in &ids {
        let ip = cluster.nodes[id].client_addr.ip();
        tls.issue_node(&new_ca, *id, ip)?;
    }
    tls.issue_client(&new_ca)?;
    for id in &ids {
        for port in ["client", "peer"] {
            let key = format!("keel_tls_reloads_total{{port={port},result=success}}");
            wait_metric(&cluster, *id, &key, 2.0, Duration::from_secs(10)).await?;
        }
    }
    // New connections present the new certificates, on both ports, and a client that trusts
    // only the new CA gets in.
    let client_id = (
        std::fs::read(tls.client_dir().join(keel_certs::CERT))?,
        std::fs::read(tls.client_dir().join(keel_certs::KEY))?,
    );
    for id in &ids {
        let expected = der_of(&tls.node_dir(*id).join(keel_certs::CERT))?;
        let node = &cluster.nodes[id];
        for addr in [node.client_addr, node.peer_listen] {
            let got = presented(addr, new_ca.cert_pem.as_bytes(), (&client_id.0, &client_id.1)).await?;
            assert!(got == expected, "member {id} at {addr} presents an old certificate");
        }
    }
    let only_new = Client::connect(
        cluster.endpoints(),
        ClientConfig {
            tls: Some(keel_client::TlsConfig {
                ca_pem: new_ca.cert_pem.clone().into_bytes(),
                identity: Some(client_id.clone()),
            }),
            ..ClientConfig::with_timeout(Duration::from_secs(5))
        },
    )
    .await?;
    only_new.put("after-rotation", "v").await?;

    for w in writers {
        w.await?;
    }
    let (ok, failed) = (ok.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    eprintln!("rotation under load: {ok} writes acknowledged, {failed} failed");
    assert_eq!(failed, 0, "writes failed during the rotation");
    assert!(ok > 100, "too few writes to have tested anything: {ok}");
    // Replication went on through the rotation: every member has every write.
    let leader = cluster.wait_for_leader(Duration::from_secs(5)).await?;
    let index = cluster.status(leader).await.expect("status").last_log_index;
    for id in &ids {
        cluster.wait_applied(*id, index, Duration::from_secs(10)).await?;
    }
    cluster.shutdown().await
}

/// TLS flags that cannot work stop `keel` at once with one line on stderr naming the problem:
/// exit 2 for a bad combination of flags, 1 for a file that cannot be used. No panic.
#[test]
fn bad_tls_settings_exit_with_one_line() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let garbage = dir.path().join("garbage.pem");
    std::fs::write(&garbage, "not a certificate")?;
    let ca = keel_certs::new_ca("ca", keel_certs::Validity::days(1))?;
    let pair = keel_certs::issue(
        &ca,
        &keel_certs::Request {
            name: "m".into(),
            sans: vec!["127.0.0.1".into()],
            client_only: false,
            validity: keel_certs::Validity::days(1),
        },
    )?;
    keel_certs::write_pair(dir.path(), &pair, keel_certs::CERT, keel_certs::KEY)?;
    let other = keel_certs::issue(
        &ca,
        &keel_certs::Request {
            name: "m".into(),
            sans: vec!["127.0.0.1".into()],
            client_only: false,
            validity: keel_certs::Validity::days(1),
        },
    )?;
    keel_certs::write_pair(&dir.path().join("other"), &other, keel_certs::CERT, keel_certs::KEY)?;
    let p = |name: &str| dir.path().join(name).display().to_string();
    let garbage = garbage.display().to_string();
    let missing = p("missing.pem");
    let cert = p(keel_certs::CERT);
    let key = p(keel_certs::KEY);
    let other_key = p("other/key.pem");
    let cases: Vec<(Vec<&str>, i32, &str)> = vec![
        (vec!["--cert-file", &cert], 2, "--cert-file needs --key-file"),
        (
            vec!["--cert-file", &cert, "--key-file", &key, "--client-cert-auth"],
            2,
            "--trusted-ca-file",
        ),
        (
            vec!["--peer-cert-file", &cert, "--peer-key-file", &key],
            2,
            "peer TLS is mutual",
        ),
        (vec!["--cert-file", &missing, "--key-file", &key], 1, "cannot read"),
        (vec!["--cert-file", &garbage, "--key-file", &key], 1, "garbage.pem"),
        (vec!["--cert-file", &cert, "--key-file", &garbage], 1, "garbage.pem"),
        (
            vec!["--cert-file", &cert, "--key-file", &other_key],
            1,
            "does the key belong",
        ),
        (
            vec![
                "--peer-cert-file",
                &cert,
                "--peer-key-file",
                &key,
                "--peer-trusted-ca-file",
                &garbage,
            ],
            1,
            "garbage.pem",
        ),
    ];
    for (flags, code, says) in cases {
        let data = dir.path().join("data");
        let port = |_| {
            keel_testkit::free_port("127.0.0.1".parse().unwrap())
                .unwrap()
                .to_string()
        };
        let out = Command::new(keel_testkit::keel_binary()?)
            .args([
                "--id",
                "1",
                "--data-dir",
                &data.display().to_string(),
                "--initial-cluster",
            ])
            .arg(format!("1={}", port(0)))
            .args([
                "--peer-addr",
                &port(1),
                "--client-addr",
                &port(2),
                "--metrics-addr",
                &port(3),
            ])
            .args(&flags)
            .output()?;
        let stderr = text(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{flags:?}: {stderr}");
        let lines: Vec<&str> = stderr
            .lines()
            .filter(|l| l.starts_with("keel:") || l.contains("panicked"))
            .collect();
        assert_eq!(lines.len(), 1, "{flags:?}: {stderr}");
        assert!(lines[0].contains(says), "{flags:?}: {stderr}");
    }
    Ok(())
}
