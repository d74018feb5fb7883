//! How results are printed: `-o table` (the default, for people), `-o simple` (plain lines for
//! scripts) and `-o json` (stable, documented here).
//!
//! # Bytes
//! Keys and values are bytes. They are printed as text when they are valid UTF-8 and as standard
//! base64 otherwise. JSON says which in a field next to each (`key_encoding`, `value_encoding`:
//! `"utf8"` or `"base64"`); the table marks base64 with a `base64:` prefix and shows control
//! characters escaped; simple output prints the text or the bare base64.
//!
//! # JSON shapes
//! Each command prints one JSON document on one line. Fields may be added in later releases;
//! existing fields keep their name and meaning.
//!
//! The `header` object, in the output of get, put, del, cas and member list:
//! ```json
//! {"cluster_id":"c0ffee","member_id":1,"revision":12,"raft_term":3,"leader_id":1}
//! ```
//! `member_id` is the member that served the request, `revision` the store revision the response
//! reflects, `leader_id` the leader as that member knows it (0: unknown).
//!
//! A key-value object (`kv`):
//! ```json
//! {"key":"app/a","key_encoding":"utf8","value":"AAEC","value_encoding":"base64",
//!  "create_revision":5,"mod_revision":12,"version":3}
//! ```
//! With `get --keys-only`, `value` and `value_encoding` are left out.
//!
//! `put`:
//! ```json
//! {"revision":12,"header":{..}}
//! ```
//! `get`: `count` is the number of keys in the range, even beyond `--limit`; `more` says `--limit`
//! cut the list. A missing key gives `"kvs":[]` and `"count":0`; `--count-only` gives `"kvs":[]`;
//! `--print-value-only` does not change JSON.
//! ```json
//! {"header":{..},"kvs":[kv,..],"count":2,"more":false}
//! ```
//! `del`:
//! ```json
//! {"deleted":1,"header":{..}}
//! ```
//! `cas`: on success, then when the compare failed (exit 3), with `"current":null` if the key
//! does not exist:
//! ```json
//! {"succeeded":true,"revision":13,"header":{..}}
//! {"succeeded":false,"revision":12,"header":{..},"current":kv}
//! ```
//! `member list`: `role` is `"voter"` or `"learner"`.
//! ```json
//! {"header":{..},"leader_id":1,"members":[{"id":1,"peer_addr":"10.0.0.1:7101",
//!  "client_addr":"10.0.0.1:7001","role":"voter","is_leader":true},..]}
//! ```
//! `status`: one row per member.
//! ```json
//! {"members":[row,..]}
//! ```
//! A status row for a member that answered:
//! ```json
//! {"id":1,"client_addr":"10.0.0.1:7001","reachable":true,"role":"leader","term":3,"leader_id":1,
//!  "last_log_index":40,"applied_index":40,"lag":0,"db_size":1048576,"key_count":12,"watchers":0,
//!  "leases":0,"version":"0.1.0",
//!  "alarms":[]}
//! ```
//! `alarms` lists the member's raised alarms, one line each (e.g. `"disk full on member 1: ..."`);
//! table output then adds an `ERROR / ALARMS` column, and simple output appends them.
//! `role` is `"leader"`, `"follower"`, `"candidate"`, `"learner"` or `"shutdown"`. `lag` is the
//! leader's last log index minus this member's applied index, `null` when no leader answered.
//! For a member that did not answer: `{"id":2,"client_addr":"10.0.0.2:7001","reachable":false,
//! "error":"cannot reach 10.0.0.2:7001: ..."}`; `id` is `null` when the member is known only by
//! address (the member list itself could not be read).

pub mod cluster;
pub mod kv;
pub mod lease;
pub mod lock;

use base64::Engine as _;
use keel_client::proto::ResponseHeader;
use serde::Serialize;

/// `header` in JSON output.
#[derive(Debug, Serialize)]
pub struct HeaderJson {
    pub cluster_id: String,
    pub member_id: u64,
    pub revision: u64,
    pub raft_term: u64,
    pub leader_id: u64,
}

impl HeaderJson {
    pub fn new(header: Option<&ResponseHeader>) -> Self {
        let h = header.cloned().unwrap_or_default();
        HeaderJson {
            cluster_id: h.cluster_id,
            member_id: h.member_id,
            revision: h.revision,
            raft_term: h.raft_term,
            leader_id: h.leader_id,
        }
    }
}

/// Bytes as JSON wants them: the text, and which encoding it is in.
pub fn encode(bytes: &[u8]) -> (String, &'static str) {
    match std::str::from_utf8(bytes) {
        Ok(text) => (text.to_string(), "utf8"),
        Err(_) => (base64::engine::general_purpose::STANDARD.encode(bytes), "base64"),
    }
}

/// Bytes for simple output: the text, or bare base64.
pub fn plain(bytes: &[u8]) -> String {
    encode(bytes).0
}

/// Bytes for a table cell: one line, with control characters escaped so a value cannot break
/// the layout or send escape sequences to the terminal, and base64 marked.
pub fn cell(bytes: &[u8]) -> String {
    match std::str::from_utf8(bytes) {
        Ok(text) => {
            let mut out = String::with_capacity(text.len());
            for c in text.chars() {
                if c.is_control() {
                    out.extend(c.escape_default());
                } else {
                    out.push(c);
                }
            }
            out
        }
        Err(_) => format!("base64:{}", base64::engine::general_purpose::STANDARD.encode(bytes)),
    }
}

/// Serializes a document on one line, newline-terminated.
pub fn json<T: Serialize>(doc: &T) -> String {
    match serde_json::to_string(doc) {
        Ok(mut line) => {
            line.push('\n');
            line
        }
        // The documents are plain structs of strings and numbers; this cannot fail, but a
        // printed error beats a panic if it ever does.
        Err(e) => format!("{{\"error\":{:?}}}\n", e.to_string()),
    }
}

/// Left-aligned columns separated by two spaces, with a header row.
pub fn table(headers: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let mut out = String::new();
    let header_row: Vec<String> = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(&header_row).chain(rows) {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i > 0 {
                line.push_str("  ");
            }
            line.push_str(cell);
            let width = widths.get(i).copied().unwrap_or(0);
            line.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.chars().count())));
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// A byte count for people: 512 B, 1.5 KiB, 20.0 MiB.
pub fn human_bytes(n: u64) -> String {
    const UNITS: [&str; 7] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut value = n as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_are_text_when_utf8_and_base64_otherwise() {
        assert_eq!(encode(b"hello"), ("hello".to_string(), "utf8"));
        assert_eq!(encode("héllo".as_bytes()), ("héllo".to_string(), "utf8"));
        assert_eq!(encode(&[0xff, 0x00, 0x01]), ("/wAB".to_string(), "base64"));
        assert_eq!(encode(b""), (String::new(), "utf8"));
        assert_eq!(plain(&[0xff]), "/w==");
    }

    #[test]
    fn cells_escape_control_characters_and_mark_base64() {
        assert_eq!(cell(b"a\nb\tc"), "a\\nb\\tc");
        assert_eq!(cell(b"\x1b[31mred"), "\\u{1b}[31mred");
        assert_eq!(cell("日本".as_bytes()), "日本");
        assert_eq!(cell(&[0xff, 0xfe]), "base64://4=");
    }

    #[test]
    fn tables_align_columns() {
        let out = table(
            &["KEY", "VALUE"],
            &[vec!["a".into(), "1".into()], vec!["longer".into(), "22".into()]],
        );
        assert_eq!(out, "KEY     VALUE\na       1\nlonger  22\n");
    }

    #[test]
    fn byte_counts_for_people() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(20 * 1024 * 1024), "20.0 MiB");
        assert_eq!(human_bytes(u64::MAX), "16.0 EiB");
    }

    #[test]
    fn missing_headers_print_as_zeros() {
        let doc = json(&HeaderJson::new(None));
        assert_eq!(
            doc,
            "{\"cluster_id\":\"\",\"member_id\":0,\"revision\":0,\"raft_term\":0,\"leader_id\":0}\n"
        );
    }
}
