//! `keelctl user`, `role` and `auth`, and the password prompt of `--user`.

use anyhow::{anyhow, Context};
use keel_client::{Client, Permission, PermissionKind};
use serde_json::json;

use super::Outcome;
use crate::args::{AuthCommand, Format, PermissionKeys, PermissionKindArg, RoleCommand, UserCommand};
use crate::output;

/// `NAME:PASSWORD`, or `NAME` with the password asked for on the terminal.
pub fn credentials(user: &str) -> anyhow::Result<(String, String)> {
    if let Some((name, password)) = user.split_once(':') {
        return Ok((name.to_string(), password.to_string()));
    }
    let password = ask(&format!("Password of {user}: "))?;
    Ok((user.to_string(), password))
}

fn ask(prompt: &str) -> anyhow::Result<String> {
    rpassword::prompt_password(prompt)
        .context("no password given and no terminal to ask for one on (give NAME:PASSWORD or --password)")
}

fn new_password(given: &Option<String>, name: &str) -> anyhow::Result<String> {
    match given {
        Some(p) => Ok(p.clone()),
        None => {
            let first = ask(&format!("Password of {name}: "))?;
            let again = ask("Type it again: ")?;
            if first != again {
                return Err(anyhow!("the passwords do not match"));
            }
            Ok(first)
        }
    }
}

/// One line for people, `{"ok":true}` for JSON.
fn done(format: Format, text: String) -> Outcome {
    Outcome::Done(match format {
        Format::Json => output::json(&json!({ "ok": true })),
        Format::Table | Format::Simple => format!("{text}\n"),
    })
}

fn names(format: Format, key: &str, names: Vec<String>) -> Outcome {
    Outcome::Done(match format {
        Format::Json => output::json(&json!({ key: names })),
        Format::Table | Format::Simple => names.iter().map(|n| format!("{n}\n")).collect(),
    })
}

pub async fn user(client: &Client, cmd: &UserCommand, format: Format) -> anyhow::Result<Outcome> {
    Ok(match cmd {
        UserCommand::Add {
            name,
            password,
            no_password,
        } => {
            let password = match no_password {
                true => None,
                false => Some(new_password(password, name)?),
            };
            client.user_add(name, password.as_deref()).await?;
            done(format, format!("User {name} created"))
        }
        UserCommand::Delete { name } => {
            client.user_delete(name).await?;
            done(format, format!("User {name} deleted"))
        }
        UserCommand::List => names(format, "users", client.user_list().await?),
        UserCommand::Get { name } => {
            let roles = client.user_get(name).await?;
            match format {
                Format::Json => Outcome::Done(output::json(&json!({ "user": name, "roles": roles }))),
                _ => Outcome::Done(format!("User: {name}\nRoles: {}\n", roles.join(" "))),
            }
        }
        UserCommand::Passwd { name, password } => {
            let password = new_password(password, name)?;
            client.user_change_password(name, &password).await?;
            done(format, format!("Password of {name} changed"))
        }
        UserCommand::GrantRole { name, role } => {
            client.user_grant_role(name, role).await?;
            done(format, format!("Role {role} granted to user {name}"))
        }
        UserCommand::RevokeRole { name, role } => {
            client.user_revoke_role(name, role).await?;
            done(format, format!("Role {role} revoked from user {name}"))
        }
    })
}

/// The key and range end of a permission, in etcd's encoding (an empty end: one key; `"\0"`:
/// every key from KEY on).
fn range_of(keys: &PermissionKeys) -> (Vec<u8>, Vec<u8>) {
    let key = keys.key.as_bytes().to_vec();
    let end = if keys.from_key {
        vec![0]
    } else if keys.prefix {
        prefix_end(&key)
    } else {
        keys.range_end.clone().unwrap_or_default().into_bytes()
    };
    (key, end)
}

/// The end of the range of keys that start with `prefix` (`"\0"`: no end).
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

fn describe(p: &Permission) -> String {
    let key = output::plain(&p.key);
    match p.range_end.as_slice() {
        [] => key,
        [0] => format!("[{key}, <end>)"),
        end => format!("[{key}, {})", output::plain(end)),
    }
}

pub async fn role(client: &Client, cmd: &RoleCommand, format: Format) -> anyhow::Result<Outcome> {
    Ok(match cmd {
        RoleCommand::Add { name } => {
            client.role_add(name).await?;
            done(format, format!("Role {name} created"))
        }
        RoleCommand::Delete { name } => {
            client.role_delete(name).await?;
            done(format, format!("Role {name} deleted"))
        }
        RoleCommand::List => names(format, "roles", client.role_list().await?),
        RoleCommand::Get { name } => {
            let perms = client.role_get(name).await?;
            let kind = |k: PermissionKind| match k {
                PermissionKind::Read => "read",
                PermissionKind::Write => "write",
                PermissionKind::ReadWrite => "readwrite",
            };
            match format {
                Format::Json => {
                    let perms: Vec<_> = perms
                        .iter()
                        .map(|p| {
                            let (key, key_encoding) = output::encode(&p.key);
                            let (end, end_encoding) = output::encode(&p.range_end);
                            json!({ "kind": kind(p.kind), "key": key, "key_encoding": key_encoding,
                                    "range_end": end, "range_end_encoding": end_encoding })
                        })
                        .collect();
                    Outcome::Done(output::json(&json!({ "role": name, "permissions": perms })))
                }
                _ => {
                    let rows: Vec<Vec<String>> = perms
                        .iter()
                        .map(|p| vec![kind(p.kind).to_string(), describe(p)])
                        .collect();
                    Outcome::Done(output::table(&["PERMISSION", "KEYS"], &rows))
                }
            }
        }
        RoleCommand::GrantPermission { role, kind, keys } => {
            let (key, range_end) = range_of(keys);
            let kind = match kind {
                PermissionKindArg::Read => PermissionKind::Read,
                PermissionKindArg::Write => PermissionKind::Write,
                PermissionKindArg::Readwrite => PermissionKind::ReadWrite,
            };
            let permission = Permission { kind, key, range_end };
            client.role_grant_permission(role, permission).await?;
            done(format, format!("Role {role} updated"))
        }
        RoleCommand::RevokePermission { role, keys } => {
            let (key, range_end) = range_of(keys);
            client.role_revoke_permission(role, &key, &range_end).await?;
            done(format, format!("Permission revoked from role {role}"))
        }
    })
}

pub async fn auth(client: &Client, cmd: &AuthCommand, format: Format) -> anyhow::Result<Outcome> {
    Ok(match cmd {
        AuthCommand::Enable => {
            client.auth_enable().await?;
            done(format, "Authentication enabled".into())
        }
        AuthCommand::Disable => {
            client.auth_disable().await?;
            done(format, "Authentication disabled".into())
        }
        AuthCommand::Status => {
            let s = client.auth_status().await?;
            Outcome::Done(match format {
                Format::Json => output::json(&json!({ "enabled": s.enabled, "revision": s.revision })),
                _ => format!("Authentication enabled: {}\nAuth revision: {}\n", s.enabled, s.revision),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn permissions_take_etcds_ranges() {
        let keys = |key: &str, end: Option<&str>, prefix, from_key| PermissionKeys {
            key: key.into(),
            range_end: end.map(String::from),
            prefix,
            from_key,
        };
        assert_eq!(range_of(&keys("a", None, false, false)), (b"a".to_vec(), vec![]));
        assert_eq!(
            range_of(&keys("a", Some("c"), false, false)),
            (b"a".to_vec(), b"c".to_vec())
        );
        assert_eq!(
            range_of(&keys("app/", None, true, false)),
            (b"app/".to_vec(), b"app0".to_vec())
        );
        assert_eq!(range_of(&keys("a", None, false, true)), (b"a".to_vec(), vec![0]));
        assert_eq!(
            credentials("alice:s3:cret").unwrap(),
            ("alice".into(), "s3:cret".into())
        );
    }
}
