//! Output of the cluster verbs: member list, status.

use keel_client::proto::{MemberListResponse, StatusResponse};
use serde::Serialize;

use super::{human_bytes, json, table, HeaderJson};
use crate::args::Format;

#[derive(Serialize)]
struct MemberJson<'a> {
    id: u64,
    peer_addr: &'a str,
    client_addr: &'a str,
    role: &'static str,
    is_leader: bool,
}

#[derive(Serialize)]
struct MembersJson<'a> {
    header: HeaderJson,
    leader_id: u64,
    members: Vec<MemberJson<'a>>,
}

pub fn members(resp: &MemberListResponse, format: Format) -> String {
    let leader_id = resp.header.as_ref().map_or(0, |h| h.leader_id);
    let mut members: Vec<MemberJson<'_>> = resp
        .members
        .iter()
        .map(|m| MemberJson {
            id: m.id,
            peer_addr: &m.peer_addr,
            client_addr: &m.client_addr,
            role: if m.is_learner { "learner" } else { "voter" },
            is_leader: leader_id != 0 && m.id == leader_id,
        })
        .collect();
    members.sort_by_key(|m| m.id);
    match format {
        Format::Json => json(&MembersJson {
            header: HeaderJson::new(resp.header.as_ref()),
            leader_id,
            members,
        }),
        Format::Simple => members
            .iter()
            .map(|m| {
                format!(
                    "{}, {}, {}, {}, {}\n",
                    m.id, m.role, m.peer_addr, m.client_addr, m.is_leader
                )
            })
            .collect(),
        Format::Table => {
            let rows: Vec<Vec<String>> = members
                .iter()
                .map(|m| {
                    vec![
                        m.id.to_string(),
                        m.peer_addr.to_string(),
                        m.client_addr.to_string(),
                        m.role.to_string(),
                        if m.is_leader { "*".into() } else { String::new() },
                    ]
                })
                .collect();
            table(&["ID", "PEER ADDR", "CLIENT ADDR", "ROLE", "LEADER"], &rows)
        }
    }
}

/// One member as `keelctl status` saw it.
#[derive(Debug)]
pub struct StatusRow {
    /// From the member list; None when members are known only by address.
    pub id: Option<u64>,
    pub client_addr: String,
    /// From the member list; empty when members are known only by address.
    pub peer_addr: String,
    /// The member's status, or why it could not be had.
    pub result: Result<StatusResponse, String>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum StatusRowJson<'a> {
    Reachable {
        id: u64,
        client_addr: &'a str,
        peer_addr: &'a str,
        reachable: bool,
        role: &'a str,
        term: u64,
        leader_id: u64,
        last_log_index: u64,
        applied_index: u64,
        lag: Option<u64>,
        db_size: u64,
        key_count: u64,
        watchers: u64,
        leases: u64,
        version: &'a str,
        /// Raised alarms (a full disk), one line each.
        alarms: &'a [String],
    },
    Unreachable {
        id: Option<u64>,
        client_addr: &'a str,
        peer_addr: &'a str,
        reachable: bool,
        error: &'a str,
    },
}

#[derive(Serialize)]
struct StatusJson<'a> {
    members: Vec<StatusRowJson<'a>>,
}

pub fn status(rows: &[StatusRow], format: Format) -> String {
    // If members disagree about the leader (a partition), trust the one with the newest term.
    let leader = rows
        .iter()
        .filter_map(|r| r.result.as_ref().ok())
        .filter(|s| s.role == "leader")
        .max_by_key(|s| s.term);
    let lag = |s: &StatusResponse| leader.map(|l| l.last_log_index.saturating_sub(s.applied_index));
    let docs: Vec<StatusRowJson<'_>> = rows
        .iter()
        .map(|row| match &row.result {
            Ok(s) => StatusRowJson::Reachable {
                id: s.id,
                client_addr: &row.client_addr,
                peer_addr: &row.peer_addr,
                reachable: true,
                role: &s.role,
                term: s.term,
                leader_id: s.leader_id,
                last_log_index: s.last_log_index,
                applied_index: s.applied_index,
                lag: lag(s),
                db_size: s.db_size,
                key_count: s.key_count,
                watchers: s.watchers,
                leases: s.leases,
                version: &s.version,
                alarms: &s.alarms,
            },
            Err(error) => StatusRowJson::Unreachable {
                id: row.id,
                client_addr: &row.client_addr,
                peer_addr: &row.peer_addr,
                reachable: false,
                error,
            },
        })
        .collect();
    match format {
        Format::Json => json(&StatusJson { members: docs }),
        Format::Simple => docs.iter().map(|d| simple_status(d) + "\n").collect(),
        Format::Table => {
            let any_unreachable = rows.iter().any(|r| r.result.is_err());
            let any_alarm = rows
                .iter()
                .any(|r| r.result.as_ref().is_ok_and(|s| !s.alarms.is_empty()));
            let mut headers = vec![
                "ID",
                "CLIENT ADDR",
                "PEER ADDR",
                "ROLE",
                "TERM",
                "LEADER",
                "LAST LOG",
                "APPLIED",
                "LAG",
                "DB SIZE",
                "KEYS",
                "WATCHERS",
                "LEASES",
                "VERSION",
            ];
            if any_unreachable || any_alarm {
                headers.push(if any_alarm { "ERROR / ALARMS" } else { "ERROR" });
            }
            let cells: Vec<Vec<String>> = docs.iter().map(|d| table_status(d, any_alarm)).collect();
            table(&headers, &cells)
        }
    }
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}

fn opt(n: Option<u64>) -> String {
    n.map_or_else(|| "-".into(), |n| n.to_string())
}

fn table_status(doc: &StatusRowJson<'_>, any_alarm: bool) -> Vec<String> {
    match doc {
        StatusRowJson::Reachable {
            id,
            client_addr,
            peer_addr,
            role,
            term,
            leader_id,
            last_log_index,
            applied_index,
            lag,
            db_size,
            key_count,
            watchers,
            leases,
            version,
            alarms,
            ..
        } => {
            let mut cells = vec![
                id.to_string(),
                client_addr.to_string(),
                or_dash(peer_addr),
                role.to_string(),
                term.to_string(),
                opt(Some(*leader_id).filter(|&l| l != 0)),
                last_log_index.to_string(),
                applied_index.to_string(),
                opt(*lag),
                human_bytes(*db_size),
                key_count.to_string(),
                watchers.to_string(),
                leases.to_string(),
                version.to_string(),
            ];
            if any_alarm {
                cells.push(if alarms.is_empty() {
                    "-".into()
                } else {
                    alarms.join("; ")
                });
            }
            cells
        }
        StatusRowJson::Unreachable {
            id,
            client_addr,
            peer_addr,
            error,
            ..
        } => {
            let mut cells = vec![
                opt(*id),
                client_addr.to_string(),
                or_dash(peer_addr),
                "unreachable".into(),
            ];
            cells.extend(std::iter::repeat_n("-".to_string(), 10));
            cells.push(error.replace('\n', " "));
            cells
        }
    }
}

fn simple_status(doc: &StatusRowJson<'_>) -> String {
    match doc {
        StatusRowJson::Reachable {
            id,
            client_addr,
            peer_addr,
            role,
            term,
            leader_id,
            last_log_index,
            applied_index,
            lag,
            db_size,
            key_count,
            watchers,
            leases,
            version,
            alarms,
            ..
        } => {
            let mut line = format!(
            "{id}, {client_addr}, {peer_addr}, {role}, {term}, {leader_id}, {last_log_index}, {applied_index}, {}, {db_size}, \
             {key_count}, {watchers}, {leases}, {version}",
            opt(*lag)
        );
            for alarm in alarms.iter() {
                line.push_str(", ");
                line.push_str(alarm);
            }
            line
        }
        StatusRowJson::Unreachable {
            id,
            client_addr,
            peer_addr,
            error,
            ..
        } => format!(
            "{}, {client_addr}, {peer_addr}, unreachable, {}",
            opt(*id),
            error.replace('\n', " ")
        ),
    }
}

#[cfg(test)]
mod tests {
    use keel_client::proto::{Member, ResponseHeader};
    use serde_json::{json, Value};

    use super::*;

    fn list() -> MemberListResponse {
        let member = |id, is_learner| Member {
            id,
            peer_addr: format!("10.0.0.{id}:7101"),
            client_addr: format!("10.0.0.{id}:7001"),
            is_learner,
        };
        MemberListResponse {
            header: Some(ResponseHeader {
                leader_id: 2,
                ..ResponseHeader::default()
            }),
            members: vec![member(2, false), member(1, false), member(4, true)],
        }
    }

    #[test]
    fn member_list_marks_the_leader_and_learners() {
        let out = members(&list(), Format::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].starts_with("ID  PEER ADDR"), "{out}");
        assert!(lines[1].starts_with("1 ") && !lines[1].ends_with('*'), "{out}");
        assert!(lines[2].starts_with("2 ") && lines[2].ends_with('*'), "{out}");
        assert!(lines[3].ends_with("learner"), "{out}");
        assert_eq!(
            members(&list(), Format::Simple).lines().nth(1),
            Some("2, voter, 10.0.0.2:7101, 10.0.0.2:7001, true")
        );
        let doc: Value = serde_json::from_str(&members(&list(), Format::Json)).expect("json");
        assert_eq!(doc["leader_id"], 2);
        assert_eq!(
            doc["members"][0],
            json!({"id":1,"peer_addr":"10.0.0.1:7101","client_addr":"10.0.0.1:7001","role":"voter","is_leader":false})
        );
        assert_eq!(doc["members"][2]["role"], "learner");
    }

    fn rows() -> Vec<StatusRow> {
        let status = |id, role: &str, last_log_index, applied_index| StatusResponse {
            id,
            role: role.into(),
            term: 3,
            leader_id: 1,
            last_log_index,
            applied_index,
            db_size: 2048,
            key_count: 5,
            watchers: 7,
            leases: 4,
            version: "0.1.0".into(),
            ..StatusResponse::default()
        };
        vec![
            StatusRow {
                id: Some(1),
                client_addr: "a:1".into(),
                peer_addr: "a:2".into(),
                result: Ok(status(1, "leader", 40, 40)),
            },
            StatusRow {
                id: Some(2),
                client_addr: "b:1".into(),
                peer_addr: "b:2".into(),
                result: Ok(status(2, "follower", 38, 35)),
            },
            StatusRow {
                id: Some(3),
                client_addr: "c:1".into(),
                peer_addr: "c:2".into(),
                result: Err("cannot reach c:1: connection refused".into()),
            },
        ]
    }

    #[test]
    fn status_rows_show_lag_and_unreachable_members() {
        let out = status(&rows(), Format::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 4, "{out}");
        assert!(lines[0].ends_with("VERSION  ERROR"), "{out}");
        let member2: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(member2[2], "b:2", "peer address of member 2: {out}");
        assert_eq!(member2[8], "5", "lag of member 2: {out}");
        assert!(lines[2].contains("2.0 KiB"), "{out}");
        assert_eq!(
            member2[12], "7",
            "watchers on member 2 (\"2.0 KiB\" is two words): {out}"
        );
        assert_eq!(member2[13], "4", "leases on member 2: {out}");
        assert!(
            lines[3].contains("unreachable") && lines[3].ends_with("connection refused"),
            "{out}"
        );

        let doc: Value = serde_json::from_str(&status(&rows(), Format::Json)).expect("json");
        assert_eq!(
            doc["members"][1],
            json!({
                "id": 2, "client_addr": "b:1", "peer_addr": "b:2", "reachable": true, "role": "follower", "term": 3, "leader_id": 1,
                "last_log_index": 38, "applied_index": 35, "lag": 5, "db_size": 2048, "key_count": 5,
                "watchers": 7, "leases": 4, "version": "0.1.0", "alarms": []
            })
        );
        assert_eq!(
            doc["members"][2],
            json!({"id": 3, "client_addr": "c:1", "peer_addr": "c:2", "reachable": false, "error": "cannot reach c:1: connection refused"})
        );

        let out = status(&rows(), Format::Simple);
        assert_eq!(
            out.lines().nth(1),
            Some("2, b:1, b:2, follower, 3, 1, 38, 35, 5, 2048, 5, 7, 4, 0.1.0")
        );
    }

    #[test]
    fn alarms_show_in_every_format() {
        let mut rows = rows();
        let alarm = "disk full on member 2: 3.0 MiB free in /data, below the reserve of 64.0 MiB (--min-free-mb)";
        if let Ok(s) = &mut rows[1].result {
            s.alarms = vec![alarm.to_string()];
        }
        let out = status(&rows, Format::Table);
        let lines: Vec<&str> = out.lines().collect();
        assert!(lines[0].ends_with("VERSION  ERROR / ALARMS"), "{out}");
        assert!(lines[1].ends_with(" -"), "member 1 has no alarm: {out}");
        assert!(lines[2].ends_with(alarm), "{out}");
        assert!(lines[3].ends_with("connection refused"), "{out}");
        let doc: Value = serde_json::from_str(&status(&rows, Format::Json)).expect("json");
        assert_eq!(doc["members"][1]["alarms"], json!([alarm]));
        assert_eq!(doc["members"][0]["alarms"], json!([]));
        let out = status(&rows, Format::Simple);
        assert_eq!(
            out.lines().nth(1),
            Some(format!("2, b:1, b:2, follower, 3, 1, 38, 35, 5, 2048, 5, 7, 4, 0.1.0, {alarm}").as_str())
        );
    }

    #[test]
    fn without_a_leader_lag_is_unknown() {
        let rows: Vec<StatusRow> = rows().into_iter().skip(1).collect();
        assert!(status(&rows, Format::Json).contains(r#""lag":null"#));
        let out = status(&rows, Format::Table);
        let first: Vec<&str> = out.lines().nth(1).unwrap_or_default().split_whitespace().collect();
        assert_eq!(first.get(8), Some(&"-"), "{out}");
    }
}
