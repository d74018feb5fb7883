//! Lock and election output. `lock` prints the lock key and its fencing token:
//! ```json
//! {"key":"jobs/694d7a1c2a8e0c27","key_encoding":"utf8","fencing_token":42,"header":{..}}
//! ```
//! (table and simple: the key, then the token, one per line). `elect` prints one line per
//! leader: its key and proposal (`{"key":..,"key_encoding":..,"value":..,"value_encoding":..,
//! "create_revision":..,"header":{..}}` in JSON; the proposal alone in table and simple).

use keel_client::proto::{LeaderResponse, LockResponse};
use serde::Serialize;

use super::{encode, json, plain, HeaderJson};
use crate::args::Format;

#[derive(Serialize)]
struct LockedJson {
    key: String,
    key_encoding: &'static str,
    fencing_token: u64,
    header: HeaderJson,
}

pub fn locked(resp: &LockResponse, format: Format) -> String {
    match format {
        Format::Json => {
            let (key, key_encoding) = encode(&resp.key);
            json(&LockedJson {
                key,
                key_encoding,
                fencing_token: resp.fencing_token,
                header: HeaderJson::new(resp.header.as_ref()),
            })
        }
        Format::Table | Format::Simple => format!("{}\n{}\n", plain(&resp.key), resp.fencing_token),
    }
}

#[derive(Serialize)]
struct LeaderJson {
    key: String,
    key_encoding: &'static str,
    value: String,
    value_encoding: &'static str,
    create_revision: u64,
    header: HeaderJson,
}

pub fn leader(resp: &LeaderResponse, format: Format) -> String {
    let kv = resp.kv.clone().unwrap_or_default();
    match format {
        Format::Json => {
            let (key, key_encoding) = encode(&kv.key);
            let (value, value_encoding) = encode(&kv.value);
            json(&LeaderJson {
                key,
                key_encoding,
                value,
                value_encoding,
                create_revision: kv.create_revision,
                header: HeaderJson::new(resp.header.as_ref()),
            })
        }
        Format::Table | Format::Simple => format!("{}\n", plain(&kv.value)),
    }
}
