//! Helpers shared by the integration tests. Each test crate uses only some of them.
#![allow(dead_code)]

use std::collections::BTreeMap;

use keel_client::Client;
use keel_proto::v1::{PutRequest, RangeRequest};

/// A put of `key` with the value `v`.
pub fn put(key: &str) -> PutRequest {
    PutRequest {
        key: key.into(),
        value: b"v".to_vec(),
        prev_kv: false,
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
