//! Who is asking and from where: the per-request data every resolver and service can rely on.

use std::net::IpAddr;

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    error::{AppError, AppResult},
    rate_limit::ClientKey,
    users::model::{Role, UserRow},
};

/// Where a request came from; recorded in audit rows and sessions.
#[derive(Debug, Clone)]
pub struct RequestMeta {
    /// The `x-request-id` of the HTTP request (or of the WebSocket upgrade).
    pub request_id: String,
    /// Client address (see [`crate::rate_limit::client_ip`]).
    pub ip: IpAddr,
    /// `User-Agent` header, if any (truncated).
    pub user_agent: Option<String>,
}

/// A signed-in caller: a live session of an active user, checked in one query.
#[derive(Debug, Clone)]
pub struct Viewer {
    /// The user, as stored (role and status are current, not from the token).
    pub user: UserRow,
    /// The session the access token belongs to.
    pub session_id: Uuid,
    /// When the access token expires (WebSockets close then).
    pub token_expires_at: DateTime<Utc>,
}

impl Viewer {
    /// The user id.
    pub fn id(&self) -> Uuid {
        self.user.id
    }

    /// The viewer's role (roles compare: `User < Admin < Owner`).
    pub fn role(&self) -> Role {
        self.user.role
    }
}

/// The outcome of checking a request's credentials.
#[derive(Debug, Clone)]
pub enum Identity {
    /// No credentials were presented.
    Anonymous,
    /// Valid credentials.
    User(Box<Viewer>),
    /// Credentials were presented and refused; the reason is safe to show.
    Rejected(String),
}

/// Everything known about the current request, stored as GraphQL request data.
#[derive(Debug, Clone)]
pub struct RequestContext {
    /// Origin of the request.
    pub meta: RequestMeta,
    /// Who is asking.
    pub identity: Identity,
}

impl RequestContext {
    /// The signed-in viewer, or `UNAUTHENTICATED`.
    pub fn viewer(&self) -> AppResult<&Viewer> {
        match &self.identity {
            Identity::User(viewer) => Ok(viewer),
            Identity::Anonymous => Err(AppError::Unauthenticated(
                "sign in first: send `Authorization: Bearer <accessToken>`".into(),
            )),
            Identity::Rejected(reason) => Err(AppError::Unauthenticated(reason.clone())),
        }
    }

    /// The viewer if signed in; `None` when anonymous; `UNAUTHENTICATED` for refused credentials.
    pub fn optional_viewer(&self) -> AppResult<Option<&Viewer>> {
        match &self.identity {
            Identity::Anonymous => Ok(None),
            _ => self.viewer().map(Some),
        }
    }

    /// The key this request's operations are rate-limited under.
    pub fn client_key(&self) -> ClientKey {
        match &self.identity {
            Identity::User(viewer) => ClientKey::User(viewer.id()),
            _ => ClientKey::Ip(self.meta.ip),
        }
    }
}
