//! etcd's Auth service over keel's users and roles ([`keel_storage::auth`], [`crate::auth`]).
//!
//! Changes go through Raft as the caller's own commands (`Command::AsUser`), so the state
//! machine decides with etcd's rules and checks the caller is root when auth is enabled.
//! Passwords are hashed here, off the async runtime, before anything is proposed.
//! `Authenticate` checks the password against this member's state after a read barrier (so a
//! user just added is known), and proposes only the new token's hash.
//!
//! Differences from etcd: `hashedPassword` (etcd 3.5's pre-hashed bcrypt) is refused; tokens
//! last `--auth-token-ttl` from their issue, not from their last use.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use keel_proto::etcd::authpb;
use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::auth_server::Auth;
use keel_storage::auth::{AuthCommand, AuthError, PermKind, Permission};
use keel_storage::{validate_request, Command, CommandResult, Request};
use tonic::metadata::MetadataMap;
use tonic::{Code, Response, Status};

use super::{error, header};
use crate::auth::{secret, status, Caller};
use crate::node::Node;
use crate::service::deadline;

pub struct EtcdAuth {
    pub node: Arc<Node>,
    /// Failed logins per source address (see [`crate::auth::throttle`]).
    pub throttle: crate::auth::throttle::Throttle,
}

/// A hash to check passwords of unknown users against, so that a wrong user name costs as much
/// time as a wrong password and the answer's delay does not tell which users exist.
static DECOY: LazyLock<String> = LazyLock::new(|| secret::hash_password("keel decoy password").unwrap_or_default());

fn unexpected(r: &CommandResult) -> Status {
    Status::internal(format!("state machine returned {r:?} for an auth command"))
}

impl EtcdAuth {
    fn header(&self) -> Option<pb::ResponseHeader> {
        Some(header(&self.node, self.node.reader.revision()))
    }

    /// Propose `cmd` as the caller's, and wait for its result.
    async fn propose(&self, metadata: &MetadataMap, cmd: AuthCommand) -> Result<Option<pb::ResponseHeader>, Status> {
        let request = Request::new(Command::Auth(cmd));
        validate_request(&request, &self.node.limits).map_err(|e| error::invalid(&e))?;
        self.submit(request, metadata).await
    }

    async fn submit(&self, request: Request, metadata: &MetadataMap) -> Result<Option<pb::ResponseHeader>, Status> {
        let resp = self
            .node
            .write(request, deadline(metadata))
            .await
            .map_err(error::node)?;
        match resp.result {
            CommandResult::None => Ok(Some(header(&self.node, resp.revision))),
            CommandResult::AuthRefused(e) => Err(status(e)),
            other => Err(unexpected(&other)),
        }
    }

    /// The auth state, for a root caller, as of a read barrier (linearizable).
    async fn read_as_root(&self, metadata: &MetadataMap) -> Result<keel_storage::sm::AuthView, Status> {
        self.node.read_barrier(deadline(metadata)).await.map_err(error::node)?;
        Caller::current().require_root(&self.node)?;
        Ok(self.node.reader.auth())
    }
}

/// A password's PHC hash, computed off the async runtime.
async fn hash(password: String) -> Result<String, Status> {
    if password.is_empty() {
        return Err(Status::invalid_argument("etcdserver: password is empty"));
    }
    tokio::task::spawn_blocking(move || secret::hash_password(&password))
        .await
        .map_err(|e| Status::internal(e.to_string()))?
        .map_err(Status::internal)
}

fn no_prehashed(hashed: &str) -> Result<(), Status> {
    if hashed.is_empty() {
        Ok(())
    } else {
        Err(Status::invalid_argument(
            "keel takes passwords, not hashes: send the password (keel hashes it with argon2id)",
        ))
    }
}

fn kind_of(t: i32) -> Result<PermKind, Status> {
    match authpb::permission::Type::try_from(t) {
        Ok(authpb::permission::Type::Read) => Ok(PermKind::Read),
        Ok(authpb::permission::Type::Write) => Ok(PermKind::Write),
        Ok(authpb::permission::Type::Readwrite) => Ok(PermKind::ReadWrite),
        Err(_) => Err(Status::invalid_argument(format!("unknown permission type {t}"))),
    }
}

fn type_of(k: PermKind) -> i32 {
    match k {
        PermKind::Read => authpb::permission::Type::Read as i32,
        PermKind::Write => authpb::permission::Type::Write as i32,
        PermKind::ReadWrite => authpb::permission::Type::Readwrite as i32,
    }
}

#[tonic::async_trait]
impl Auth for EtcdAuth {
    async fn auth_enable(
        &self,
        req: tonic::Request<pb::AuthEnableRequest>,
    ) -> Result<Response<pb::AuthEnableResponse>, Status> {
        let header = self.propose(req.metadata(), AuthCommand::Enable).await?;
        Ok(Response::new(pb::AuthEnableResponse { header }))
    }

    async fn auth_disable(
        &self,
        req: tonic::Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        let header = self.propose(req.metadata(), AuthCommand::Disable).await?;
        Ok(Response::new(pb::AuthDisableResponse { header }))
    }

    async fn auth_status(
        &self,
        req: tonic::Request<pb::AuthStatusRequest>,
    ) -> Result<Response<pb::AuthStatusResponse>, Status> {
        self.node
            .read_barrier(deadline(req.metadata()))
            .await
            .map_err(error::node)?;
        let auth = self.node.reader.auth();
        Ok(Response::new(pb::AuthStatusResponse {
            header: self.header(),
            enabled: auth.state.enabled,
            auth_revision: auth.state.revision,
        }))
    }

    async fn authenticate(
        &self,
        req: tonic::Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        use crate::auth::throttle::Verdict;
        let source = req.remote_addr().map(|a| a.ip());
        let attempts = &self.node.metrics.auth_attempts;
        if self.throttle.verdict(source, std::time::Instant::now()) == Verdict::Refuse {
            attempts.with_label_values(&["throttled"]).inc();
            let refusal = error::status(Code::ResourceExhausted, error::TOO_MANY_REQUESTS);
            return Err(self.node.metrics.refused("auth_attempts", refusal));
        }
        let (metadata, _, r) = req.into_parts();
        let deadline = deadline(&metadata);
        self.node.read_barrier(deadline).await.map_err(error::node)?;
        let auth = self.node.reader.auth();
        if !auth.state.enabled {
            return Err(status(AuthError::AuthNotEnabled));
        }
        let phc = auth.state.users.get(&r.name).and_then(|u| u.password.clone());
        let known = phc.is_some();
        let phc = phc.unwrap_or_else(|| DECOY.clone());
        let password = r.password;
        let matches = tokio::task::spawn_blocking(move || secret::verify_password(&phc, &password))
            .await
            .map_err(|e| Status::internal(e.to_string()))?;
        if !(known && matches) {
            attempts.with_label_values(&["failure"]).inc();
            let wait = self.throttle.failed(source, std::time::Instant::now());
            tracing::info!(user = %r.name, ?source, "authentication failed");
            tokio::time::sleep(wait).await;
            return Err(status(AuthError::AuthFailed));
        }
        self.throttle.succeeded(source);
        attempts.with_label_values(&["success"]).inc();
        let (token, token_hash) = secret::new_token();
        let issued_ms = secret::now_ms();
        let ttl: Duration = self.node.service_limits.auth_token_ttl;
        let cmd = AuthCommand::TokenIssue {
            user: r.name,
            token_hash,
            issued_ms,
            expires_ms: issued_ms.saturating_add(ttl.as_millis() as u64),
        };
        // Issued by the server itself: it skips the validation that refuses it from clients, and
        // goes without a user (`Caller::attach`).
        let header = self.submit(Request::new(Command::Auth(cmd)), &metadata).await?;
        // On a follower the entry may not be applied here yet: wait, so that the token works on
        // this member as soon as the client has it.
        self.node.read_barrier(deadline).await.map_err(error::node)?;
        Ok(Response::new(pb::AuthenticateResponse { header, token }))
    }

    async fn user_add(
        &self,
        req: tonic::Request<pb::AuthUserAddRequest>,
    ) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        no_prehashed(&r.hashed_password)?;
        let no_password = r.options.is_some_and(|o| o.no_password);
        let password = match no_password {
            true => None,
            false => Some(hash(r.password).await?),
        };
        let cmd = AuthCommand::UserAdd { name: r.name, password };
        let header = self.propose(&metadata, cmd).await?;
        Ok(Response::new(pb::AuthUserAddResponse { header }))
    }

    async fn user_get(
        &self,
        req: tonic::Request<pb::AuthUserGetRequest>,
    ) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        let auth = self.read_as_root(req.metadata()).await?;
        let user = auth
            .state
            .users
            .get(&req.get_ref().name)
            .ok_or_else(|| status(AuthError::UserNotFound))?;
        Ok(Response::new(pb::AuthUserGetResponse {
            header: self.header(),
            roles: user.roles.iter().cloned().collect(),
        }))
    }

    async fn user_list(
        &self,
        req: tonic::Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        let auth = self.read_as_root(req.metadata()).await?;
        Ok(Response::new(pb::AuthUserListResponse {
            header: self.header(),
            users: auth.state.users.keys().cloned().collect(),
        }))
    }

    async fn user_delete(
        &self,
        req: tonic::Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let header = self
            .propose(&metadata, AuthCommand::UserDelete { name: r.name })
            .await?;
        Ok(Response::new(pb::AuthUserDeleteResponse { header }))
    }

    async fn user_change_password(
        &self,
        req: tonic::Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        no_prehashed(&r.hashed_password)?;
        let password = hash(r.password).await?;
        let cmd = AuthCommand::UserChangePassword { name: r.name, password };
        let header = self.propose(&metadata, cmd).await?;
        Ok(Response::new(pb::AuthUserChangePasswordResponse { header }))
    }

    async fn user_grant_role(
        &self,
        req: tonic::Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let cmd = AuthCommand::UserGrantRole {
            user: r.user,
            role: r.role,
        };
        let header = self.propose(&metadata, cmd).await?;
        Ok(Response::new(pb::AuthUserGrantRoleResponse { header }))
    }

    async fn user_revoke_role(
        &self,
        req: tonic::Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let cmd = AuthCommand::UserRevokeRole {
            user: r.name,
            role: r.role,
        };
        let header = self.propose(&metadata, cmd).await?;
        Ok(Response::new(pb::AuthUserRevokeRoleResponse { header }))
    }

    async fn role_add(
        &self,
        req: tonic::Request<pb::AuthRoleAddRequest>,
    ) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let header = self.propose(&metadata, AuthCommand::RoleAdd { name: r.name }).await?;
        Ok(Response::new(pb::AuthRoleAddResponse { header }))
    }

    async fn role_get(
        &self,
        req: tonic::Request<pb::AuthRoleGetRequest>,
    ) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        let auth = self.read_as_root(req.metadata()).await?;
        let name = &req.get_ref().role;
        let perm = match auth.state.roles.get(name) {
            Some(role) => role
                .permissions
                .iter()
                .map(|p| authpb::Permission {
                    perm_type: type_of(p.kind),
                    key: p.key.clone(),
                    range_end: p.range_end.clone(),
                })
                .collect(),
            // The root role exists without being added (as in etcd), with every permission.
            None if name == keel_storage::auth::ROOT => Vec::new(),
            None => return Err(status(AuthError::RoleNotFound)),
        };
        Ok(Response::new(pb::AuthRoleGetResponse {
            header: self.header(),
            perm,
        }))
    }

    async fn role_list(
        &self,
        req: tonic::Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        let auth = self.read_as_root(req.metadata()).await?;
        Ok(Response::new(pb::AuthRoleListResponse {
            header: self.header(),
            roles: auth.state.roles.keys().cloned().collect(),
        }))
    }

    async fn role_delete(
        &self,
        req: tonic::Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let header = self
            .propose(&metadata, AuthCommand::RoleDelete { name: r.role })
            .await?;
        Ok(Response::new(pb::AuthRoleDeleteResponse { header }))
    }

    async fn role_grant_permission(
        &self,
        req: tonic::Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let perm = r
            .perm
            .ok_or_else(|| Status::invalid_argument("etcdserver: permission is not given"))?;
        let permission = Permission {
            kind: kind_of(perm.perm_type)?,
            key: perm.key,
            range_end: perm.range_end,
        };
        let cmd = AuthCommand::RoleGrantPermission {
            role: r.name,
            permission,
        };
        let header = self.propose(&metadata, cmd).await?;
        Ok(Response::new(pb::AuthRoleGrantPermissionResponse { header }))
    }

    async fn role_revoke_permission(
        &self,
        req: tonic::Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        let (metadata, _, r) = req.into_parts();
        let cmd = AuthCommand::RoleRevokePermission {
            role: r.role,
            key: r.key,
            range_end: r.range_end,
        };
        let header = self.propose(&metadata, cmd).await?;
        Ok(Response::new(pb::AuthRoleRevokePermissionResponse { header }))
    }
}
