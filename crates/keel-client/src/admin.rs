//! Users, roles and authentication: etcd's Auth service, which keel serves (see the README's
//! "Users, roles and permissions"). Changes are writes (not sent again once their outcome is
//! unknown); lists and gets are reads. Errors carry etcd's texts ("etcdserver: user name already
//! exists", "etcdserver: permission denied", ...).

use keel_proto::etcd::authpb;
use keel_proto::etcd::etcdserverpb::{self as pb, auth_client::AuthClient};

use crate::client::HasHeader;
use crate::retry::Kind;
use crate::{Client, Error};

/// A permission of a role (etcd's `authpb.Permission`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Permission {
    /// `read`, `write` or `readwrite`.
    pub kind: PermissionKind,
    pub key: Vec<u8>,
    /// Empty: `key` alone; `"\0"`: every key from `key` on; else the range `[key, range_end)`.
    pub range_end: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PermissionKind {
    Read,
    Write,
    ReadWrite,
}

impl PermissionKind {
    fn to_pb(self) -> i32 {
        match self {
            PermissionKind::Read => authpb::permission::Type::Read as i32,
            PermissionKind::Write => authpb::permission::Type::Write as i32,
            PermissionKind::ReadWrite => authpb::permission::Type::Readwrite as i32,
        }
    }

    fn from_pb(t: i32) -> PermissionKind {
        match authpb::permission::Type::try_from(t) {
            Ok(authpb::permission::Type::Write) => PermissionKind::Write,
            Ok(authpb::permission::Type::Readwrite) => PermissionKind::ReadWrite,
            _ => PermissionKind::Read,
        }
    }
}

/// Whether authentication is enabled, and the auth revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AuthStatus {
    pub enabled: bool,
    pub revision: u64,
}

// etcd's responses carry etcd's header, which names no leader keel's client could follow.
macro_rules! no_keel_header {
    ($($t:ty),*) => {$(
        impl HasHeader for $t {
            fn header(&self) -> Option<&keel_proto::v1::ResponseHeader> {
                None
            }
        }
    )*};
}
no_keel_header!(
    pb::AuthEnableResponse,
    pb::AuthDisableResponse,
    pb::AuthStatusResponse,
    pb::AuthUserAddResponse,
    pb::AuthUserGetResponse,
    pb::AuthUserListResponse,
    pb::AuthUserDeleteResponse,
    pb::AuthUserChangePasswordResponse,
    pb::AuthUserGrantRoleResponse,
    pb::AuthUserRevokeRoleResponse,
    pb::AuthRoleAddResponse,
    pb::AuthRoleGetResponse,
    pb::AuthRoleListResponse,
    pb::AuthRoleDeleteResponse,
    pb::AuthRoleGrantPermissionResponse,
    pb::AuthRoleRevokePermissionResponse
);

/// One Auth RPC through [`Client::call`].
macro_rules! auth_call {
    ($client:expr, $kind:expr, $req:expr, $method:ident) => {
        $client.call($kind, $req, |ch, r| async move { AuthClient::new(ch).$method(r).await })
    };
}

impl Client {
    pub async fn auth_enable(&self) -> Result<(), Error> {
        auth_call!(self, Kind::Write, pb::AuthEnableRequest {}, auth_enable).await?;
        Ok(())
    }

    pub async fn auth_disable(&self) -> Result<(), Error> {
        auth_call!(self, Kind::Write, pb::AuthDisableRequest {}, auth_disable).await?;
        Ok(())
    }

    pub async fn auth_status(&self) -> Result<AuthStatus, Error> {
        let r = auth_call!(self, Kind::Read, pb::AuthStatusRequest {}, auth_status).await?;
        Ok(AuthStatus {
            enabled: r.enabled,
            revision: r.auth_revision,
        })
    }

    /// Add a user; without a password, one that can log in only by client certificate.
    pub async fn user_add(&self, name: &str, password: Option<&str>) -> Result<(), Error> {
        let req = pb::AuthUserAddRequest {
            name: name.into(),
            password: password.unwrap_or_default().into(),
            options: Some(authpb::UserAddOptions {
                no_password: password.is_none(),
            }),
            hashed_password: String::new(),
        };
        auth_call!(self, Kind::Write, req, user_add).await?;
        Ok(())
    }

    pub async fn user_delete(&self, name: &str) -> Result<(), Error> {
        let req = pb::AuthUserDeleteRequest { name: name.into() };
        auth_call!(self, Kind::Write, req, user_delete).await?;
        Ok(())
    }

    pub async fn user_list(&self) -> Result<Vec<String>, Error> {
        Ok(auth_call!(self, Kind::Read, pb::AuthUserListRequest {}, user_list)
            .await?
            .users)
    }

    /// The roles of user `name`.
    pub async fn user_get(&self, name: &str) -> Result<Vec<String>, Error> {
        let req = pb::AuthUserGetRequest { name: name.into() };
        Ok(auth_call!(self, Kind::Read, req, user_get).await?.roles)
    }

    pub async fn user_change_password(&self, name: &str, password: &str) -> Result<(), Error> {
        let req = pb::AuthUserChangePasswordRequest {
            name: name.into(),
            password: password.into(),
            hashed_password: String::new(),
        };
        auth_call!(self, Kind::Write, req, user_change_password).await?;
        Ok(())
    }

    pub async fn user_grant_role(&self, user: &str, role: &str) -> Result<(), Error> {
        let req = pb::AuthUserGrantRoleRequest {
            user: user.into(),
            role: role.into(),
        };
        auth_call!(self, Kind::Write, req, user_grant_role).await?;
        Ok(())
    }

    pub async fn user_revoke_role(&self, user: &str, role: &str) -> Result<(), Error> {
        let req = pb::AuthUserRevokeRoleRequest {
            name: user.into(),
            role: role.into(),
        };
        auth_call!(self, Kind::Write, req, user_revoke_role).await?;
        Ok(())
    }

    pub async fn role_add(&self, name: &str) -> Result<(), Error> {
        let req = pb::AuthRoleAddRequest { name: name.into() };
        auth_call!(self, Kind::Write, req, role_add).await?;
        Ok(())
    }

    pub async fn role_delete(&self, name: &str) -> Result<(), Error> {
        let req = pb::AuthRoleDeleteRequest { role: name.into() };
        auth_call!(self, Kind::Write, req, role_delete).await?;
        Ok(())
    }

    pub async fn role_list(&self) -> Result<Vec<String>, Error> {
        Ok(auth_call!(self, Kind::Read, pb::AuthRoleListRequest {}, role_list)
            .await?
            .roles)
    }

    /// The permissions of role `name`.
    pub async fn role_get(&self, name: &str) -> Result<Vec<Permission>, Error> {
        let req = pb::AuthRoleGetRequest { role: name.into() };
        let r = auth_call!(self, Kind::Read, req, role_get).await?;
        Ok(r.perm
            .into_iter()
            .map(|p| Permission {
                kind: PermissionKind::from_pb(p.perm_type),
                key: p.key,
                range_end: p.range_end,
            })
            .collect())
    }

    pub async fn role_grant_permission(&self, role: &str, permission: Permission) -> Result<(), Error> {
        let req = pb::AuthRoleGrantPermissionRequest {
            name: role.into(),
            perm: Some(authpb::Permission {
                perm_type: permission.kind.to_pb(),
                key: permission.key,
                range_end: permission.range_end,
            }),
        };
        auth_call!(self, Kind::Write, req, role_grant_permission).await?;
        Ok(())
    }

    pub async fn role_revoke_permission(&self, role: &str, key: &[u8], range_end: &[u8]) -> Result<(), Error> {
        let req = pb::AuthRoleRevokePermissionRequest {
            role: role.into(),
            key: key.to_vec(),
            range_end: range_end.to_vec(),
        };
        auth_call!(self, Kind::Write, req, role_revoke_permission).await?;
        Ok(())
    }
}
