//! The systems under test, behind one set of operations, so keel and etcd are driven by the
//! same load code.
//!
//! keel: raw gRPC (`keel.v1.KV`) to the leader over N channels, puts without client sessions
//! (as etcd's have none). etcd: the `etcd-client` crate, N clients over all endpoints.

use std::time::Duration;

use anyhow::Context;
use keel_proto::v1::cluster_client::ClusterClient;
use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::{MemberListRequest, PutRequest, RangeRequest, RangeResponse, StatusRequest, StatusResponse};
use tonic::transport::{Channel, Endpoint};

/// A range read: the keys that start with `prefix` (empty: every key).
#[derive(Debug, Clone)]
pub struct Scan {
    pub prefix: Vec<u8>,
    /// At most this many pairs per request (0: no limit).
    pub limit: u64,
    pub keys_only: bool,
    /// Only the number of keys in the range.
    pub count_only: bool,
    /// Read the whole range: while a response says `more`, ask again from just after its
    /// last key.
    pub all_pages: bool,
}

/// The end of the range of keys that start with `prefix`, as keel and etcd spell it ("\0":
/// to the end of the key space).
fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xFF {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// Which system, and how to reach it.
#[derive(Clone)]
pub enum Target {
    Keel {
        channels: Vec<Channel>,
    },
    #[cfg(feature = "etcd")]
    Etcd {
        clients: Vec<etcd_client::Client>,
    },
}

/// A keel channel to `addr` (host:port).
pub fn keel_channel(addr: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{addr}"))?
        .tcp_nodelay(true)
        .connect_timeout(Duration::from_secs(1))
        .connect_lazy())
}

/// A put without a client session (as etcd's have none), attached to `lease` unless it is 0.
pub async fn keel_put(ch: Channel, key: Vec<u8>, value: Vec<u8>, lease: i64) -> anyhow::Result<()> {
    KvClient::new(ch)
        .put(PutRequest {
            key,
            value,
            prev_kv: false,
            lease,
            session: None,
        })
        .await?;
    Ok(())
}

/// Every member's status, skipping members that do not answer.
pub async fn keel_statuses(endpoints: &[String]) -> Vec<(String, StatusResponse)> {
    let mut out = Vec::new();
    for e in endpoints {
        let Ok(ch) = keel_channel(e) else { continue };
        let mut req = tonic::Request::new(StatusRequest {});
        req.set_timeout(Duration::from_millis(500));
        if let Ok(s) = ClusterClient::new(ch).status(req).await {
            out.push((e.clone(), s.into_inner()));
        }
    }
    out
}

/// The endpoint of the member that says it is the leader (of the highest term, should a
/// deposed leader not know it yet).
pub async fn keel_leader(endpoints: &[String]) -> Option<(String, StatusResponse)> {
    keel_statuses(endpoints)
        .await
        .into_iter()
        .filter(|(_, s)| s.role == "leader" && s.leader_id == s.id)
        .max_by_key(|(_, s)| s.term)
}

/// The ids of the voters (not learners), in order, as the member behind `ch` lists them.
pub async fn keel_voters(ch: Channel, timeout: Duration) -> anyhow::Result<Vec<u64>> {
    let mut req = tonic::Request::new(MemberListRequest {});
    req.set_timeout(timeout);
    let members = ClusterClient::new(ch).member_list(req).await?.into_inner().members;
    let mut ids: Vec<u64> = members.iter().filter(|m| !m.is_learner).map(|m| m.id).collect();
    ids.sort_unstable();
    Ok(ids)
}

impl Target {
    /// Connect `conns` connections. keel's go to the leader (found now), etcd's over all
    /// endpoints (its client balances).
    pub async fn connect(system: &str, endpoints: &[String], conns: usize) -> anyhow::Result<Target> {
        match system {
            "keel" => {
                let (leader, _) = keel_leader(endpoints)
                    .await
                    .context("no keel leader among the endpoints")?;
                let channels = (0..conns).map(|_| keel_channel(&leader)).collect::<Result<_, _>>()?;
                Ok(Target::Keel { channels })
            }
            #[cfg(feature = "etcd")]
            "etcd" => {
                let mut clients = Vec::new();
                for _ in 0..conns {
                    let options = etcd_client::ConnectOptions::new().with_connect_timeout(Duration::from_secs(2));
                    clients.push(etcd_client::Client::connect(endpoints, Some(options)).await?);
                }
                Ok(Target::Etcd { clients })
            }
            #[cfg(feature = "etcd")]
            "keel-etcd" => {
                let (leader, _) = keel_leader(endpoints)
                    .await
                    .context("no keel leader among the endpoints")?;
                Box::pin(Target::connect_to("etcd", &leader, conns)).await
            }
            #[cfg(not(feature = "etcd"))]
            "etcd" | "keel-etcd" => {
                anyhow::bail!("this keel-bench was built without etcd support (cargo build --features etcd)")
            }
            other => anyhow::bail!("unknown system {other:?} (keel or etcd)"),
        }
    }

    /// `conns` connections to one endpoint, whatever its role (keel followers forward writes).
    pub async fn connect_to(system: &str, endpoint: &str, conns: usize) -> anyhow::Result<Target> {
        match system {
            "keel" => Ok(Target::Keel {
                channels: (0..conns).map(|_| keel_channel(endpoint)).collect::<Result<_, _>>()?,
            }),
            // One endpoint needs no balancer: etcd-client's requests go over a plain channel,
            // as keel's own do (its balanced channel adds a task hop to every request).
            #[cfg(feature = "etcd")]
            "etcd" | "keel-etcd" => {
                let mut clients = Vec::with_capacity(conns);
                for _ in 0..conns {
                    let channel = etcd_client::Channel::Tonic(keel_channel(endpoint)?);
                    clients.push(etcd_client::Client::from_channel(channel, None).await?);
                }
                Ok(Target::Etcd { clients })
            }
            other => anyhow::bail!("{other}: not supported by this build"),
        }
    }

    pub async fn put(&self, conn: usize, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Target::Keel { channels } => keel_put(channels[conn % channels.len()].clone(), key, value, 0).await?,
            #[cfg(feature = "etcd")]
            Target::Etcd { clients } => {
                let mut kv = clients[conn % clients.len()].kv_client();
                kv.put(key, value, None).await?;
            }
        }
        Ok(())
    }

    pub async fn get(&self, conn: usize, key: Vec<u8>, serializable: bool) -> anyhow::Result<()> {
        match self {
            Target::Keel { channels } => {
                let ch = channels[conn % channels.len()].clone();
                KvClient::new(ch)
                    .range(RangeRequest {
                        key,
                        serializable,
                        ..Default::default()
                    })
                    .await?;
            }
            #[cfg(feature = "etcd")]
            Target::Etcd { clients } => {
                let mut kv = clients[conn % clients.len()].kv_client();
                let options = serializable.then(|| etcd_client::GetOptions::new().with_serializable());
                kv.get(key, options).await?;
            }
        }
        Ok(())
    }

    /// A range read (every page of it, with `all_pages`). Returns the pairs read (with
    /// count_only: the count).
    pub async fn scan(&self, conn: usize, scan: &Scan, serializable: bool) -> anyhow::Result<u64> {
        match self {
            Target::Keel { channels } => {
                let mut kv = KvClient::new(channels[conn % channels.len()].clone());
                // The prefix spelled as a range, so that a next page can start inside it.
                let mut key = if scan.prefix.is_empty() {
                    vec![0]
                } else {
                    scan.prefix.clone()
                };
                let (mut pairs, mut pages) = (0, 0u64);
                loop {
                    let resp: RangeResponse = kv
                        .range(RangeRequest {
                            key,
                            range_end: prefix_end(&scan.prefix),
                            limit: scan.limit,
                            serializable,
                            keys_only: scan.keys_only,
                            count_only: scan.count_only,
                            ..Default::default()
                        })
                        .await?
                        .into_inner();
                    pages += 1;
                    pairs += if scan.count_only {
                        resp.count
                    } else {
                        resp.kvs.len() as u64
                    };
                    match resp.kvs.last() {
                        Some(last) if resp.more && scan.all_pages => {
                            key = last.key.clone();
                            key.push(0);
                        }
                        None if resp.more => anyhow::bail!("page {pages}: an empty response with more = true"),
                        _ => return Ok(pairs),
                    }
                }
            }
            #[cfg(feature = "etcd")]
            Target::Etcd { .. } => {
                let _ = (conn, scan, serializable);
                anyhow::bail!("range reads (--prefix) are not implemented for etcd")
            }
        }
    }

    /// A transaction: if the key's version is ≥ 0 (always), put it and read it back.
    pub async fn txn(&self, conn: usize, key: Vec<u8>, value: Vec<u8>) -> anyhow::Result<()> {
        match self {
            Target::Keel { channels } => {
                use keel_proto::v1::{compare, request_op, Compare, RequestOp, TxnRequest};
                let ch = channels[conn % channels.len()].clone();
                let req = TxnRequest {
                    compare: vec![Compare {
                        key: key.clone(),
                        op: compare::Op::Greater as i32,
                        target: Some(compare::Target::Version(0)),
                    }],
                    success: vec![RequestOp {
                        request: Some(request_op::Request::Put(PutRequest {
                            key: key.clone(),
                            value: value.clone(),
                            prev_kv: false,
                            lease: 0,
                            session: None,
                        })),
                    }],
                    failure: vec![RequestOp {
                        request: Some(request_op::Request::Put(PutRequest {
                            key,
                            value,
                            prev_kv: false,
                            lease: 0,
                            session: None,
                        })),
                    }],
                    session: None,
                };
                KvClient::new(ch).txn(req).await?;
            }
            #[cfg(feature = "etcd")]
            Target::Etcd { clients } => {
                use etcd_client::{Compare, CompareOp, Txn, TxnOp};
                let mut kv = clients[conn % clients.len()].kv_client();
                let txn = Txn::new()
                    .when([Compare::version(key.clone(), CompareOp::Greater, 0)])
                    .and_then([TxnOp::put(key.clone(), value.clone(), None)])
                    .or_else([TxnOp::put(key, value, None)]);
                kv.txn(txn).await?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::prefix_end;

    #[test]
    fn prefix_ends() {
        assert_eq!(prefix_end(b"app/"), b"app0");
        assert_eq!(prefix_end(b"a\xff"), b"b");
        assert_eq!(prefix_end(b"\xff\xff"), b"\0");
        assert_eq!(prefix_end(b""), b"\0");
    }
}
