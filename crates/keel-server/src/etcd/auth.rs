//! etcd's Auth service, until keel has users and roles (the security issue): authentication is
//! off. `Authenticate` answers with the text etcd gives when it is off, which etcd's clients
//! accept and carry on without a token; `AuthStatus` says disabled; the rest are refused.

use std::sync::Arc;

use keel_proto::etcd::etcdserverpb as pb;
use keel_proto::etcd::etcdserverpb::auth_server::Auth;
use tonic::{Code, Request, Response, Status};

use super::{error, header};
use crate::node::Node;

pub struct EtcdAuth {
    pub node: Arc<Node>,
}

fn off<T>() -> Result<Response<T>, Status> {
    Err(error::status(Code::FailedPrecondition, error::AUTH_NOT_ENABLED))
}

fn not_yet<T>() -> Result<Response<T>, Status> {
    Err(Status::unimplemented(
        "keel has no users and roles yet: authentication cannot be enabled",
    ))
}

#[tonic::async_trait]
impl Auth for EtcdAuth {
    async fn auth_enable(&self, _: Request<pb::AuthEnableRequest>) -> Result<Response<pb::AuthEnableResponse>, Status> {
        not_yet()
    }

    async fn auth_disable(
        &self,
        _: Request<pb::AuthDisableRequest>,
    ) -> Result<Response<pb::AuthDisableResponse>, Status> {
        // It is off: disabling it again is what the caller wants.
        Ok(Response::new(pb::AuthDisableResponse {
            header: Some(header(&self.node, self.node.reader.revision())),
        }))
    }

    async fn auth_status(&self, _: Request<pb::AuthStatusRequest>) -> Result<Response<pb::AuthStatusResponse>, Status> {
        Ok(Response::new(pb::AuthStatusResponse {
            header: Some(header(&self.node, self.node.reader.revision())),
            enabled: false,
            auth_revision: 0,
        }))
    }

    async fn authenticate(
        &self,
        _: Request<pb::AuthenticateRequest>,
    ) -> Result<Response<pb::AuthenticateResponse>, Status> {
        off()
    }

    async fn user_add(&self, _: Request<pb::AuthUserAddRequest>) -> Result<Response<pb::AuthUserAddResponse>, Status> {
        not_yet()
    }

    async fn user_get(&self, _: Request<pb::AuthUserGetRequest>) -> Result<Response<pb::AuthUserGetResponse>, Status> {
        not_yet()
    }

    async fn user_list(
        &self,
        _: Request<pb::AuthUserListRequest>,
    ) -> Result<Response<pb::AuthUserListResponse>, Status> {
        not_yet()
    }

    async fn user_delete(
        &self,
        _: Request<pb::AuthUserDeleteRequest>,
    ) -> Result<Response<pb::AuthUserDeleteResponse>, Status> {
        not_yet()
    }

    async fn user_change_password(
        &self,
        _: Request<pb::AuthUserChangePasswordRequest>,
    ) -> Result<Response<pb::AuthUserChangePasswordResponse>, Status> {
        not_yet()
    }

    async fn user_grant_role(
        &self,
        _: Request<pb::AuthUserGrantRoleRequest>,
    ) -> Result<Response<pb::AuthUserGrantRoleResponse>, Status> {
        not_yet()
    }

    async fn user_revoke_role(
        &self,
        _: Request<pb::AuthUserRevokeRoleRequest>,
    ) -> Result<Response<pb::AuthUserRevokeRoleResponse>, Status> {
        not_yet()
    }

    async fn role_add(&self, _: Request<pb::AuthRoleAddRequest>) -> Result<Response<pb::AuthRoleAddResponse>, Status> {
        not_yet()
    }

    async fn role_get(&self, _: Request<pb::AuthRoleGetRequest>) -> Result<Response<pb::AuthRoleGetResponse>, Status> {
        not_yet()
    }

    async fn role_list(
        &self,
        _: Request<pb::AuthRoleListRequest>,
    ) -> Result<Response<pb::AuthRoleListResponse>, Status> {
        not_yet()
    }

    async fn role_delete(
        &self,
        _: Request<pb::AuthRoleDeleteRequest>,
    ) -> Result<Response<pb::AuthRoleDeleteResponse>, Status> {
        not_yet()
    }

    async fn role_grant_permission(
        &self,
        _: Request<pb::AuthRoleGrantPermissionRequest>,
    ) -> Result<Response<pb::AuthRoleGrantPermissionResponse>, Status> {
        not_yet()
    }

    async fn role_revoke_permission(
        &self,
        _: Request<pb::AuthRoleRevokePermissionRequest>,
    ) -> Result<Response<pb::AuthRoleRevokePermissionResponse>, Status> {
        not_yet()
    }
}
