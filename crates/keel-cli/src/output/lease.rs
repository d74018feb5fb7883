//! Lease output. Ids print in hexadecimal, as etcdctl prints them; JSON carries the id as a
//! number (`id`) and as that text (`id_hex`):
//! ```json
//! {"id":7587869032398062887,"id_hex":"694d7a1c2a8e0c27","ttl":10,"header":{..}}
//! ```
//! `lease grant` and `lease keep-alive` (one document per renewal) print that; `lease revoke`
//! prints `{"id":..,"id_hex":"..","header":{..}}`; `lease timetolive` adds `"granted_ttl"` and,
//! with `--keys`, `"keys"` (each `{"key":..,"key_encoding":..}`); `lease list` prints
//! `{"header":{..},"leases":[{"id":..,"id_hex":".."},..]}`.

use keel_client::proto::{
    LeaseGrantResponse, LeaseLeasesResponse, LeaseRevokeResponse, LeaseTimeToLiveResponse, ResponseHeader,
};
use serde::Serialize;

use super::{encode, json, plain, HeaderJson};
use crate::args::Format;

/// A lease id as etcdctl prints it.
pub fn hex(id: i64) -> String {
    format!("{id:016x}")
}

#[derive(Serialize)]
struct LeaseJson {
    id: i64,
    id_hex: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    ttl: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    header: Option<HeaderJson>,
}

fn lease_json(id: i64, ttl: Option<i64>, header: Option<&ResponseHeader>) -> LeaseJson {
    LeaseJson {
        id,
        id_hex: hex(id),
        ttl,
        header: header.map(|h| HeaderJson::new(Some(h))),
    }
}

pub fn granted(resp: &LeaseGrantResponse, format: Format) -> String {
    match format {
        Format::Json => json(&lease_json(resp.id, Some(resp.ttl), resp.header.as_ref())),
        Format::Table => format!("lease {} granted with TTL({}s)\n", hex(resp.id), resp.ttl),
        Format::Simple => format!("{}\n", hex(resp.id)),
    }
}

pub fn revoked(id: i64, resp: &LeaseRevokeResponse, format: Format) -> String {
    match format {
        Format::Json => json(&lease_json(id, None, resp.header.as_ref())),
        Format::Table => format!("lease {} revoked\n", hex(id)),
        Format::Simple => "OK\n".into(),
    }
}

pub fn renewed(id: i64, ttl: i64, format: Format) -> String {
    match format {
        Format::Json => json(&lease_json(id, Some(ttl), None)),
        Format::Table => format!("lease {} kept alive with TTL({ttl}s)\n", hex(id)),
        Format::Simple => format!("{ttl}\n"),
    }
}

#[derive(Serialize)]
struct KeyJson {
    key: String,
    key_encoding: &'static str,
}

#[derive(Serialize)]
struct TimeToLiveJson {
    id: i64,
    id_hex: String,
    ttl: i64,
    granted_ttl: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    keys: Option<Vec<KeyJson>>,
    header: HeaderJson,
}

pub fn time_to_live(resp: &LeaseTimeToLiveResponse, keys: bool, format: Format) -> String {
    match format {
        Format::Json => json(&TimeToLiveJson {
            id: resp.id,
            id_hex: hex(resp.id),
            ttl: resp.ttl,
            granted_ttl: resp.granted_ttl,
            keys: keys.then(|| {
                resp.keys
                    .iter()
                    .map(|k| {
                        let (key, key_encoding) = encode(k);
                        KeyJson { key, key_encoding }
                    })
                    .collect()
            }),
            header: HeaderJson::new(resp.header.as_ref()),
        }),
        Format::Table => {
            let mut line = format!(
                "lease {} granted with TTL({}s), remaining({}s)",
                hex(resp.id),
                resp.granted_ttl,
                resp.ttl
            );
            if keys {
                let names: Vec<String> = resp.keys.iter().map(|k| super::cell(k)).collect();
                line.push_str(&format!(", attached keys([{}])", names.join(" ")));
            }
            line + "\n"
        }
        Format::Simple => {
            let mut out = format!("{}\n", resp.ttl);
            if keys {
                for k in &resp.keys {
                    out.push_str(&plain(k));
                    out.push('\n');
                }
            }
            out
        }
    }
}

#[derive(Serialize)]
struct ListJson {
    header: HeaderJson,
    leases: Vec<LeaseJson>,
}

pub fn list(resp: &LeaseLeasesResponse, format: Format) -> String {
    match format {
        Format::Json => json(&ListJson {
            header: HeaderJson::new(resp.header.as_ref()),
            leases: resp.leases.iter().map(|l| lease_json(l.id, None, None)).collect(),
        }),
        Format::Table => {
            let mut out = format!("found {} leases\n", resp.leases.len());
            for l in &resp.leases {
                out.push_str(&hex(l.id));
                out.push('\n');
            }
            out
        }
        Format::Simple => resp.leases.iter().map(|l| hex(l.id) + "\n").collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_print_as_etcdctl_prints_them() {
        assert_eq!(hex(0x694d7a1c2a8e0c27), "694d7a1c2a8e0c27");
        assert_eq!(hex(1), "0000000000000001");
        assert_eq!(crate::args::parse_lease_id("694d7a1c2a8e0c27"), Ok(0x694d7a1c2a8e0c27));
        assert_eq!(crate::args::parse_lease_id("0x1f"), Ok(31));
        assert!(crate::args::parse_lease_id("0").is_err());
        assert!(crate::args::parse_lease_id("zz").is_err());
        assert!(crate::args::parse_lease_id("ffffffffffffffff").is_err());
    }

    #[test]
    fn a_grant_prints_its_id_in_each_format() {
        let resp = LeaseGrantResponse {
            header: None,
            id: 31,
            ttl: 10,
        };
        assert_eq!(
            granted(&resp, Format::Table),
            "lease 000000000000001f granted with TTL(10s)\n"
        );
        assert_eq!(granted(&resp, Format::Simple), "000000000000001f\n");
        assert_eq!(
            granted(&resp, Format::Json),
            "{\"id\":31,\"id_hex\":\"000000000000001f\",\"ttl\":10}\n"
        );
    }
}
