//! Output of the key-value verbs: get, put, del, cas, watch.

use keel_client::proto::{
    event::EventType, DeleteRangeResponse, Event, KeyValue, PutResponse, RangeResponse, ResponseHeader,
};
use serde::Serialize;

use super::{cell, encode, json, plain, table, HeaderJson};
use crate::args::Format;

/// A key-value pair in JSON.
#[derive(Debug, Serialize)]
pub struct KvJson {
    pub key: String,
    pub key_encoding: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value_encoding: Option<&'static str>,
    pub create_revision: u64,
    pub mod_revision: u64,
    pub version: u64,
}

impl KvJson {
    pub fn new(kv: &KeyValue, with_value: bool) -> Self {
        let (key, key_encoding) = encode(&kv.key);
        let (value, value_encoding) = if with_value {
            let (value, encoding) = encode(&kv.value);
            (Some(value), Some(encoding))
        } else {
            (None, None)
        };
        KvJson {
            key,
            key_encoding,
            value,
            value_encoding,
            create_revision: kv.create_revision,
            mod_revision: kv.mod_revision,
            version: kv.version,
        }
    }
}

/// Which parts of a get result to print.
#[derive(Debug, Clone, Copy, Default)]
pub struct GetView {
    pub print_value_only: bool,
    pub keys_only: bool,
    pub count_only: bool,
}

#[derive(Serialize)]
struct GetJson {
    header: HeaderJson,
    kvs: Vec<KvJson>,
    count: u64,
    more: bool,
}

pub fn get(resp: &RangeResponse, view: GetView, format: Format) -> String {
    match format {
        Format::Json => json(&GetJson {
            header: HeaderJson::new(resp.header.as_ref()),
            kvs: resp.kvs.iter().map(|kv| KvJson::new(kv, !view.keys_only)).collect(),
            count: resp.count,
            more: resp.more,
        }),
        _ if view.count_only => format!("{}\n", resp.count),
        Format::Simple => {
            let mut out = String::new();
            for kv in &resp.kvs {
                if !view.print_value_only {
                    out.push_str(&plain(&kv.key));
                    out.push('\n');
                }
                if !view.keys_only {
                    out.push_str(&plain(&kv.value));
                    out.push('\n');
                }
            }
            out
        }
        Format::Table if view.print_value_only => resp.kvs.iter().map(|kv| cell(&kv.value) + "\n").collect(),
        // A missing key prints nothing, not an empty table.
        Format::Table if resp.kvs.is_empty() => String::new(),
        Format::Table => {
            let revisions = |kv: &KeyValue| {
                [
                    kv.create_revision.to_string(),
                    kv.mod_revision.to_string(),
                    kv.version.to_string(),
                ]
            };
            let mut out = if view.keys_only {
                let rows: Vec<Vec<String>> = resp
                    .kvs
                    .iter()
                    .map(|kv| std::iter::once(cell(&kv.key)).chain(revisions(kv)).collect())
                    .collect();
                table(&["KEY", "CREATE_REV", "MOD_REV", "VERSION"], &rows)
            } else {
                let rows: Vec<Vec<String>> = resp
                    .kvs
                    .iter()
                    .map(|kv| {
                        [cell(&kv.key), cell(&kv.value)]
                            .into_iter()
                            .chain(revisions(kv))
                            .collect()
                    })
                    .collect();
                table(&["KEY", "VALUE", "CREATE_REV", "MOD_REV", "VERSION"], &rows)
            };
            // keel counts only what it returned unless asked for a count (`count_only`), so
            // `count` is the number shown; a server that counts the whole range (etcd) says more.
            if resp.more && resp.count > resp.kvs.len() as u64 {
                out.push_str(&format!("({} of {} keys shown)\n", resp.kvs.len(), resp.count));
            } else if resp.more {
                out.push_str(&format!("({} shown; the range has more keys)\n", resp.kvs.len()));
            }
            out
        }
    }
}

#[derive(Serialize)]
struct PutJson {
    revision: u64,
    header: HeaderJson,
}

pub fn put(resp: &PutResponse, format: Format) -> String {
    match format {
        Format::Json => json(&PutJson {
            revision: resp.header.as_ref().map_or(0, |h| h.revision),
            header: HeaderJson::new(resp.header.as_ref()),
        }),
        Format::Table | Format::Simple => "OK\n".into(),
    }
}

#[derive(Serialize)]
struct DelJson {
    deleted: u64,
    header: HeaderJson,
}

pub fn del(resp: &DeleteRangeResponse, format: Format) -> String {
    match format {
        Format::Json => json(&DelJson {
            deleted: resp.deleted,
            header: HeaderJson::new(resp.header.as_ref()),
        }),
        Format::Table | Format::Simple => format!("{}\n", resp.deleted),
    }
}

/// What a compare-and-swap did.
#[derive(Debug, Clone, Default)]
pub struct CasResult {
    pub key: Vec<u8>,
    pub succeeded: bool,
    pub header: Option<ResponseHeader>,
    /// When the compare failed: the key as it is now (None if absent).
    pub current: Option<KeyValue>,
}

#[derive(Serialize)]
struct CasJson {
    succeeded: bool,
    revision: u64,
    header: HeaderJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    current: Option<Option<KvJson>>,
}

pub fn cas(result: &CasResult, format: Format) -> String {
    match format {
        Format::Json => json(&CasJson {
            succeeded: result.succeeded,
            revision: result.header.as_ref().map_or(0, |h| h.revision),
            header: HeaderJson::new(result.header.as_ref()),
            current: (!result.succeeded).then(|| result.current.as_ref().map(|kv| KvJson::new(kv, true))),
        }),
        _ if result.succeeded => "OK\n".into(),
        _ => match &result.current {
            None => format!("compare failed: key {} does not exist\n", quoted(&result.key)),
            Some(kv) => format!(
                "compare failed: key {} is at version {} (mod_revision {}) with value {}\n",
                quoted(&result.key),
                kv.version,
                kv.mod_revision,
                quoted(&kv.value)
            ),
        },
    }
}

/// Bytes in a one-line message: quoted text, or unquoted `base64:...`.
fn quoted(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(_) => format!("\"{}\"", cell(bytes)),
        Err(_) => cell(bytes),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(key: &[u8], value: &[u8]) -> KeyValue {
        KeyValue {
            key: key.to_vec(),
            value: value.to_vec(),
            create_revision: 2,
            mod_revision: 5,
            version: 3,
        }
    }

    fn header() -> Option<ResponseHeader> {
        Some(ResponseHeader {
            cluster_id: "c1".into(),
            member_id: 1,
            revision: 9,
            raft_term: 2,
            leader_id: 1,
        })
    }

    fn range(kvs: Vec<KeyValue>, count: u64, more: bool) -> RangeResponse {
        RangeResponse {
            header: header(),
            kvs,
            count,
            more,
        }
    }

    const HEADER_JSON: &str = r#""header":{"cluster_id":"c1","member_id":1,"revision":9,"raft_term":2,"leader_id":1}"#;

    #[test]
    fn get_json_marks_each_encoding() {
        let resp = range(vec![kv(b"k", &[0xff, 0x00])], 1, false);
        let out = get(&resp, GetView::default(), Format::Json);
        assert_eq!(
            out,
            format!(
                "{{{HEADER_JSON},\"kvs\":[{{\"key\":\"k\",\"key_encoding\":\"utf8\",\"value\":\"/wA=\",\
                 \"value_encoding\":\"base64\",\"create_revision\":2,\"mod_revision\":5,\"version\":3}}],\
                 \"count\":1,\"more\":false}}\n"
            )
        );
        let keys_only = GetView {
            keys_only: true,
            ..GetView::default()
        };
        let out = get(&resp, keys_only, Format::Json);
        assert!(!out.contains("value"), "{out}");
    }

    #[test]
    fn a_missing_key_is_empty_not_an_error() {
        let resp = range(vec![], 0, false);
        assert_eq!(
            get(&resp, GetView::default(), Format::Json),
            format!("{{{HEADER_JSON},\"kvs\":[],\"count\":0,\"more\":false}}\n")
        );
        assert_eq!(get(&resp, GetView::default(), Format::Table), "");
        assert_eq!(get(&resp, GetView::default(), Format::Simple), "");
    }

    #[test]
    fn get_table_and_simple() {
        let resp = range(vec![kv(b"a", b"one\ntwo"), kv(&[0x80], b"x")], 3, true);
        let row = |a: &str, b: &str, c: &str, d: &str, e: &str| format!("{a:<11}  {b:<8}  {c:<10}  {d:<7}  {e}\n");
        let expected = row("KEY", "VALUE", "CREATE_REV", "MOD_REV", "VERSION")
            + &row("a", "one\\ntwo", "2", "5", "3")
            + &row("base64:gA==", "x", "2", "5", "3")
            + "(2 of 3 keys shown)\n";
        assert_eq!(get(&resp, GetView::default(), Format::Table), expected);
        assert_eq!(get(&resp, GetView::default(), Format::Simple), "a\none\ntwo\ngA==\nx\n");
        let values = GetView {
            print_value_only: true,
            ..GetView::default()
        };
        assert_eq!(get(&resp, values, Format::Simple), "one\ntwo\nx\n");
        assert_eq!(get(&resp, values, Format::Table), "one\\ntwo\nx\n");
        let count = GetView {
            count_only: true,
            ..GetView::default()
        };
        assert_eq!(get(&resp, count, Format::Table), "3\n");
        let keys = GetView {
            keys_only: true,
            ..GetView::default()
        };
        assert_eq!(get(&resp, keys, Format::Simple), "a\ngA==\n");

        // keel's answer to a read cut by --limit (or by the response size): `count` is what came.
        let resp = range(vec![kv(b"a", b"x")], 1, true);
        let expected = "KEY  VALUE  CREATE_REV  MOD_REV  VERSION\n".to_string()
            + "a    x      2           5        3\n"
            + "(1 shown; the range has more keys)\n";
        assert_eq!(get(&resp, GetView::default(), Format::Table), expected);
    }

    #[test]
    fn put_and_del_shapes() {
        let resp = PutResponse {
            header: header(),
            prev_kv: None,
        };
        assert_eq!(put(&resp, Format::Json), format!("{{\"revision\":9,{HEADER_JSON}}}\n"));
        assert_eq!(put(&resp, Format::Table), "OK\n");
        let resp = DeleteRangeResponse {
            header: header(),
            deleted: 4,
            prev_kvs: vec![],
        };
        assert_eq!(del(&resp, Format::Json), format!("{{\"deleted\":4,{HEADER_JSON}}}\n"));
        assert_eq!(del(&resp, Format::Simple), "4\n");
    }

    #[test]
    fn cas_failures_show_the_current_state() {
        let mut result = CasResult {
            key: b"k".to_vec(),
            succeeded: false,
            header: header(),
            current: None,
        };
        assert_eq!(
            cas(&result, Format::Table),
            "compare failed: key \"k\" does not exist\n"
        );
        assert_eq!(
            cas(&result, Format::Json),
            format!("{{\"succeeded\":false,\"revision\":9,{HEADER_JSON},\"current\":null}}\n")
        );
        result.current = Some(kv(b"k", b"old"));
        assert_eq!(
            cas(&result, Format::Simple),
            "compare failed: key \"k\" is at version 3 (mod_revision 5) with value \"old\"\n"
        );
        assert!(cas(&result, Format::Json).contains(r#""current":{"key":"k","key_encoding":"utf8","value":"old""#));
        result.succeeded = true;
        assert_eq!(cas(&result, Format::Table), "OK\n");
        assert_eq!(
            cas(&result, Format::Json),
            format!("{{\"succeeded\":true,\"revision\":9,{HEADER_JSON}}}\n")
        );
    }
}

#[derive(Serialize)]
struct EventJson {
    #[serde(rename = "type")]
    kind: &'static str,
    revision: u64,
    kv: KvJson,
    #[serde(skip_serializing_if = "Option::is_none")]
    prev_kv: Option<KvJson>,
}

/// One watch event on one line: `PUT|DELETE REVISION KEY [VALUE] [(was PREV)]`, or a JSON
/// object per line.
pub fn event(e: &Event, prev_kv: bool, format: Format) -> String {
    let kind = if e.r#type == EventType::Delete as i32 {
        "DELETE"
    } else {
        "PUT"
    };
    let kv = e.kv.clone().unwrap_or_default();
    let deleted = kind == "DELETE";
    match format {
        Format::Json => json(&EventJson {
            kind,
            revision: kv.mod_revision,
            kv: KvJson::new(&kv, !deleted),
            prev_kv: e.prev_kv.as_ref().filter(|_| prev_kv).map(|p| KvJson::new(p, true)),
        }),
        Format::Table | Format::Simple => {
            let text = |b: &[u8]| match format {
                Format::Table => cell(b),
                _ => plain(b),
            };
            let mut line = format!("{kind} {} {}", kv.mod_revision, text(&kv.key));
            if !deleted {
                line = format!("{line} {}", text(&kv.value));
            }
            if let Some(p) = e.prev_kv.as_ref().filter(|_| prev_kv) {
                line = format!("{line} (was {})", text(&p.value));
            }
            line + "\n"
        }
    }
}
