//! Helpers shared by the integration tests. Each test crate uses only some of them.
#![allow(dead_code)]

pub mod stalls;

use std::collections::BTreeMap;
use std::net::SocketAddr;

use keel_client::Client;
use std::time::Duration;

use keel_proto::v1::kv_client::KvClient;
use keel_proto::v1::{PutRequest, RangeRequest};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tonic::transport::Channel;

/// A put of `key` with the value `v`.
pub fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        prev_kv: false,
        lease: 0,
        session: None,
    }
}

/// Read every key under `prefix` and assert that each acknowledged write is there with its value.
/// Returns what is stored, for further checks.
pub async fn assert_acknowledged_present(
    client: &Client,
    prefix: &str,
    acked: &BTreeMap<String, String>,
) -> anyhow::Result<BTreeMap<String, String>> {
    let all = client
        .range(RangeRequest {
            key: prefix.as_bytes().to_vec(),
            prefix: true,
            ..Default::default()
        })
        .await?;
    let stored: BTreeMap<String, String> = all
        .kvs
        .into_iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(&kv.key).into_owned(),
                String::from_utf8_lossy(&kv.value).into_owned(),
            )
        })
        .collect();
    for (key, value) in acked {
        assert_eq!(
            stored.get(key),
            Some(value),
            "acknowledged write {key} is missing or wrong"
        );
    }
    Ok(stored)
}

pub const MIB: usize = 1024 * 1024;

/// A 1 MiB value that names its key, so a mixed-up value is caught.
pub fn mib_value(key: &str) -> Vec<u8> {
    let mut v = key.as_bytes().to_vec();
    v.resize(MIB, b'.');
    v
}

/// t09's workload: put a 1 MiB value under `key` and read it back linearizably (five seconds of
/// deadline each).
pub async fn put_and_read_mib(kv: &mut KvClient<Channel>, key: String) -> anyhow::Result<()> {
    let mut put = tonic::Request::new(PutRequest {
        key: key.clone().into_bytes(),
        value: mib_value(&key),
        prev_kv: false,
        lease: 0,
        session: None,
    });
    put.set_timeout(Duration::from_secs(5));
    kv.put(put).await.map_err(|e| anyhow::anyhow!("put {key}: {e:?}"))?;
    let mut get = tonic::Request::new(RangeRequest {
        key: key.clone().into_bytes(),
        ..Default::default()
    });
    get.set_timeout(Duration::from_secs(5));
    let got = kv.range(get).await.map_err(|e| anyhow::anyhow!("read {key}: {e:?}"))?;
    let got = got.into_inner();
    anyhow::ensure!(got.kvs.len() == 1, "{key}: {} values", got.kvs.len());
    anyhow::ensure!(got.kvs[0].value == mib_value(&key), "{key}: wrong value");
    Ok(())
}

/// GET `path` over HTTP/1.0; returns the status code and body.
pub async fn http_get(addr: SocketAddr, path: &str) -> anyhow::Result<(u16, String)> {
    let mut s = tokio::time::timeout(Duration::from_secs(2), tokio::net::TcpStream::connect(addr)).await??;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").as_bytes())
        .await?;
    let mut buf = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut buf)).await??;
    let text = String::from_utf8(buf)?;
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow::anyhow!("bad response: {head}"))?;
    Ok((code, body.to_string()))
}
