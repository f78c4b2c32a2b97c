//! GraphQL types and resolvers for accounts, sessions and admin operations. Thin: parse,
//! authorize, call the service.

use async_graphql::{ComplexObject, Context, ID, InputObject, Json, Object, SimpleObject};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};

use crate::{
    agents::graphql::Agent,
    api_keys::graphql::ApiKey,
    error::AppError,
    graphql::{
        eager::Eager,
        guards::RoleGuard,
        pagination::{Page, PageOf},
        parse_id, request_context, state,
    },
    oauth::graphql::OAuthAccount,
    usage::{graphql::UsageReport, model::UsageGroup},
    users::{
        admin,
        model::{AuditRow, Role, UserRow, UserStatus},
        service::{self, Registration},
        sessions::{self, AuthTokens},
    },
};

/// An Agentry account.
#[derive(SimpleObject)]
#[graphql(complex)]
pub struct User {
    /// Stable id.
    pub id: ID,
    /// Lower-cased email address.
    pub email: String,
    /// Name shown in the UI.
    pub display_name: String,
    /// Current role.
    pub role: Role,
    /// ACTIVE or SUSPENDED.
    pub status: UserStatus,
    /// Why the user is suspended (null when active).
    pub suspended_reason: Option<String>,
    /// Whether the account has a password (accounts created through OAuth may not).
    pub has_password: bool,
    /// Sign-up time.
    pub created_at: DateTime<Utc>,
    /// Last successful sign-in.
    pub last_login_at: Option<DateTime<Utc>>,
}

#[ComplexObject]
impl User {
    /// This user's API keys (masked). Only the user themselves may list them.
    async fn api_keys(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<ApiKey>> {
        let viewer = request_context(ctx)?.viewer()?;
        if viewer.id().to_string() != self.id.as_str() {
            return Err(
                AppError::Forbidden("only the owner of API keys may list them".into()).into(),
            );
        }
        let rows = crate::api_keys::service::list(state(ctx)?, viewer.id()).await?;
        Ok(rows.into_iter().map(ApiKey::own).collect())
    }

    /// This user's linked Google, GitHub and Microsoft accounts (tokens never shown). Only the
    /// user themselves may list them.
    async fn oauth_accounts(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<OAuthAccount>> {
        let viewer = request_context(ctx)?.viewer()?;
        if viewer.id().to_string() != self.id.as_str() {
            return Err(AppError::Forbidden(
                "only the owner of linked accounts may list them".into(),
            )
            .into());
        }
        let rows = crate::oauth::accounts::list(state(ctx)?, viewer.id()).await?;
        Ok(rows.into_iter().map(OAuthAccount).collect())
    }

    /// Runs, tokens and exact cost between `since` (inclusive) and `until` (exclusive) by the
    /// time each run was accepted, grouped by any of DAY (UTC), AGENT, MODEL, PROVIDER, API_KEY.
    /// The user themselves and admins may read it.
    async fn usage(
        &self,
        ctx: &Context<'_>,
        since: Option<DateTime<Utc>>,
        until: Option<DateTime<Utc>>,
        group_by: Option<Vec<UsageGroup>>,
    ) -> async_graphql::Result<UsageReport> {
        let viewer = request_context(ctx)?.viewer()?;
        let user_id = parse_id("id", &self.id)?;
        let group_by = group_by.unwrap_or_default();
        let report =
            crate::usage::service::report(state(ctx)?, viewer, user_id, since, until, group_by);
        Ok(UsageReport(report.await?))
    }

    /// The ceiling an admin set on this user's spending (null when none). The user themselves
    /// and admins may read it.
    async fn ceiling(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Option<crate::budgets::graphql::Budget>> {
        let viewer = request_context(ctx)?.viewer()?;
        let user_id = parse_id("id", &self.id)?;
        let row = crate::budgets::service::ceiling_of(state(ctx)?, viewer, user_id).await?;
        Ok(row.map(crate::budgets::graphql::Budget))
    }

    /// This user's agents, newest first. Only the user themselves may list them.
    #[graphql(complexity = "first.unwrap_or(20).max(0) as usize * child_complexity")]
    async fn agents(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        active: Option<bool>,
    ) -> async_graphql::Result<PageOf<Eager<Agent>>> {
        let viewer = request_context(ctx)?.viewer()?;
        if viewer.id().to_string() != self.id.as_str() {
            return Err(
                AppError::Forbidden("only the owner of agents may list them".into()).into(),
            );
        }
        crate::agents::graphql::agents_page(ctx, viewer.id(), first, after, active).await
    }
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        Self {
            id: ID(row.id.to_string()),
            status: row.status,
            role: row.role,
            has_password: row.password_hash.is_some(),
            email: row.email,
            display_name: row.display_name,
            suspended_reason: row.suspended_reason,
            created_at: row.created_at,
            last_login_at: row.last_login_at,
        }
    }
}

/// The tokens of a sign-in. Send the access token as `Authorization: Bearer …`; exchange the
/// refresh token with `refreshSession` before the access token expires.
#[derive(SimpleObject)]
pub struct AuthPayload {
    /// JWT for `Authorization: Bearer …` (15 minutes).
    pub access_token: String,
    /// When the access token expires.
    pub access_token_expires_at: DateTime<Utc>,
    /// One-time refresh token; each use returns a new one.
    pub refresh_token: String,
    /// When the session ends, however often it is refreshed.
    pub refresh_token_expires_at: DateTime<Utc>,
    /// The signed-in user.
    pub user: User,
}

impl From<AuthTokens> for AuthPayload {
    fn from(tokens: AuthTokens) -> Self {
        Self {
            access_token: tokens.access_token,
            access_token_expires_at: tokens.access_token_expires_at,
            refresh_token: tokens.refresh_token.expose_secret().to_owned(),
            refresh_token_expires_at: tokens.refresh_token_expires_at,
            user: tokens.user.into(),
        }
    }
}

/// One audit log row: who did what to whom, when.
#[derive(SimpleObject)]
pub struct AuditEntry {
    /// Stable id.
    pub id: ID,
    /// Who acted (null for anonymous events and the command line).
    pub actor_id: Option<ID>,
    /// What happened, e.g. `user.suspend`.
    pub action: String,
    /// Whom it concerned.
    pub target_user_id: Option<ID>,
    /// Details of the event.
    pub details: Json<serde_json::Value>,
    /// The `x-request-id` of the request.
    pub request_id: Option<String>,
    /// Client address.
    pub ip: Option<String>,
    /// When.
    pub created_at: DateTime<Utc>,
}

impl From<AuditRow> for AuditEntry {
    fn from(row: AuditRow) -> Self {
        Self {
            id: ID(row.id.to_string()),
            actor_id: row.actor_id.map(|id| ID(id.to_string())),
            action: row.action,
            target_user_id: row.target_user_id.map(|id| ID(id.to_string())),
            details: Json(row.details),
            request_id: row.request_id,
            ip: row.ip,
            created_at: row.created_at,
        }
    }
}

/// Sign-up input.
#[derive(InputObject)]
pub struct RegisterInput {
    /// Email address; stored lower-cased.
    pub email: String,
    /// 12–128 characters, hard to guess (checked with zxcvbn).
    pub password: String,
    /// Name shown in the UI (1–100 characters).
    pub display_name: String,
}

/// Account queries.
#[derive(Default)]
pub struct UsersQuery;

#[Object]
impl UsersQuery {
    /// The signed-in user, or null when anonymous. An invalid or expired token is an
    /// UNAUTHENTICATED error (so clients know to refresh).
    async fn me(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<User>> {
        Ok(request_context(ctx)?
            .optional_viewer()?
            .map(|viewer| viewer.user.clone().into()))
    }

    /// Every user, newest first; `search` matches part of the email. ADMIN or OWNER.
    #[graphql(
        guard = "RoleGuard::ADMIN",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn users(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
        search: Option<String>,
    ) -> async_graphql::Result<PageOf<User>> {
        let page = Page::of(ctx, first, after)?;
        let rows = admin::users_page(
            state(ctx)?,
            search.as_deref(),
            page.after,
            page.fetch_limit(),
        )
        .await?;
        Ok(page.connection(rows, |u| u.id, User::from))
    }

    /// One user by id. ADMIN or OWNER.
    #[graphql(guard = "RoleGuard::ADMIN")]
    async fn user(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<Option<User>> {
        let id = parse_id("id", &id)?;
        Ok(admin::find_user(state(ctx)?, id).await?.map(User::from))
    }

    /// Admin actions and security events, newest first. ADMIN or OWNER.
    #[graphql(
        guard = "RoleGuard::ADMIN",
        complexity = "first.unwrap_or(20).max(0) as usize * child_complexity"
    )]
    async fn audit_log(
        &self,
        ctx: &Context<'_>,
        first: Option<i32>,
        after: Option<String>,
    ) -> async_graphql::Result<PageOf<AuditEntry>> {
        let page = Page::of(ctx, first, after)?;
        let rows = admin::audit_page(state(ctx)?, page.after, page.fetch_limit()).await?;
        Ok(page.connection(rows, |r| r.id, AuditEntry::from))
    }
}

/// Account and admin mutations.
#[derive(Default)]
pub struct UsersMutation;

#[Object]
impl UsersMutation {
    /// Creates an account with a password and signs it in.
    async fn register(
        &self,
        ctx: &Context<'_>,
        input: RegisterInput,
    ) -> async_graphql::Result<AuthPayload> {
        let request = request_context(ctx)?;
        let registration = Registration {
            email: input.email,
            password: SecretString::from(input.password),
            display_name: input.display_name,
        };
        Ok(service::register(state(ctx)?, &request.meta, registration)
            .await?
            .into())
    }

    /// Signs in. A wrong email and a wrong password give the same error.
    async fn login(
        &self,
        ctx: &Context<'_>,
        email: String,
        password: String,
    ) -> async_graphql::Result<AuthPayload> {
        let request = request_context(ctx)?;
        Ok(service::login(
            state(ctx)?,
            &request.meta,
            &email,
            SecretString::from(password),
        )
        .await?
        .into())
    }

    /// Exchanges a refresh token for a new token pair. Each refresh token works once; using one
    /// twice ends the whole session.
    async fn refresh_session(
        &self,
        ctx: &Context<'_>,
        refresh_token: String,
    ) -> async_graphql::Result<AuthPayload> {
        let request = request_context(ctx)?;
        Ok(
            sessions::refresh(state(ctx)?, &request.meta, &refresh_token)
                .await?
                .into(),
        )
    }

    /// Ends the session of this refresh token, or with `allSessions` every session of its user.
    /// Returns false when the token was unknown or already ended.
    async fn logout(
        &self,
        ctx: &Context<'_>,
        refresh_token: String,
        all_sessions: Option<bool>,
    ) -> async_graphql::Result<bool> {
        let viewer = request_context(ctx)?.optional_viewer()?;
        Ok(sessions::logout(
            state(ctx)?,
            viewer,
            &refresh_token,
            all_sessions.unwrap_or(false),
        )
        .await?)
    }

    /// Changes the password (accounts without one pass an empty `currentPassword`). Every
    /// session ends; the returned tokens start a new one.
    #[graphql(guard = "RoleGuard::USER")]
    async fn change_password(
        &self,
        ctx: &Context<'_>,
        current_password: String,
        new_password: String,
    ) -> async_graphql::Result<AuthPayload> {
        let request = request_context(ctx)?;
        let tokens = service::change_password(
            state(ctx)?,
            &request.meta,
            request.viewer()?,
            SecretString::from(current_password),
            SecretString::from(new_password),
        )
        .await?;
        Ok(tokens.into())
    }

    /// Updates the signed-in user's profile; omitted fields are unchanged.
    #[graphql(guard = "RoleGuard::USER")]
    async fn update_profile(
        &self,
        ctx: &Context<'_>,
        display_name: Option<String>,
    ) -> async_graphql::Result<User> {
        let viewer = request_context(ctx)?.viewer()?;
        Ok(service::update_profile(state(ctx)?, viewer, display_name)
            .await?
            .into())
    }

    /// Changes a user's role. OWNER only; the last owner cannot be demoted.
    #[graphql(guard = "RoleGuard::OWNER")]
    async fn set_user_role(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        role: Role,
    ) -> async_graphql::Result<User> {
        let request = request_context(ctx)?;
        let target = parse_id("userId", &user_id)?;
        Ok(
            admin::set_role(state(ctx)?, &request.meta, request.viewer()?, target, role)
                .await?
                .into(),
        )
    }

    /// Suspends a user and ends every session at once. ADMIN or OWNER; admins cannot suspend
    /// owners.
    #[graphql(guard = "RoleGuard::ADMIN")]
    async fn suspend_user(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        reason: String,
    ) -> async_graphql::Result<User> {
        let request = request_context(ctx)?;
        let target = parse_id("userId", &user_id)?;
        Ok(admin::suspend(
            state(ctx)?,
            &request.meta,
            request.viewer()?,
            target,
            &reason,
        )
        .await?
        .into())
    }

    /// Lifts a suspension. ADMIN or OWNER.
    #[graphql(guard = "RoleGuard::ADMIN")]
    async fn reactivate_user(&self, ctx: &Context<'_>, user_id: ID) -> async_graphql::Result<User> {
        let request = request_context(ctx)?;
        let target = parse_id("userId", &user_id)?;
        Ok(
            admin::reactivate(state(ctx)?, &request.meta, request.viewer()?, target)
                .await?
                .into(),
        )
    }
}
