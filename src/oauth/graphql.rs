//! GraphQL types and resolvers for OAuth sign-in and linked accounts. Thin: parse, authorize,
//! call the service.

use async_graphql::{Context, Enum, ID, Object, SimpleObject};
use chrono::{DateTime, Utc};

use crate::{
    error::AppError,
    graphql::{guards::RoleGuard, parse_id, request_context, state},
    oauth::{
        accounts,
        model::OAuthAccountRow,
        providers::IdentityProvider,
        service::{self, Intent},
    },
    users::graphql::AuthPayload,
};

/// An identity provider Agentry can sign people in with.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(name = "OAuthProvider")]
pub enum OAuthProvider {
    /// Google.
    Google,
    /// GitHub.
    Github,
    /// Microsoft (work, school and personal accounts).
    Microsoft,
}

impl From<OAuthProvider> for IdentityProvider {
    fn from(p: OAuthProvider) -> Self {
        match p {
            OAuthProvider::Google => Self::Google,
            OAuthProvider::Github => Self::GitHub,
            OAuthProvider::Microsoft => Self::Microsoft,
        }
    }
}

impl From<IdentityProvider> for OAuthProvider {
    fn from(p: IdentityProvider) -> Self {
        match p {
            IdentityProvider::Google => Self::Google,
            IdentityProvider::GitHub => Self::Github,
            IdentityProvider::Microsoft => Self::Microsoft,
        }
    }
}

/// What an OAuth flow is for.
#[derive(Enum, Copy, Clone, Eq, PartialEq, Debug)]
#[graphql(name = "OAuthIntent")]
pub enum OAuthIntent {
    /// Sign in with the provider account (signs up when it is new and its email is unclaimed).
    Login,
    /// Attach the provider account to the signed-in user.
    Link,
}

impl From<OAuthIntent> for Intent {
    fn from(i: OAuthIntent) -> Self {
        match i {
            OAuthIntent::Login => Self::Login,
            OAuthIntent::Link => Self::Link,
        }
    }
}

impl From<Intent> for OAuthIntent {
    fn from(i: Intent) -> Self {
        match i {
            Intent::Login => Self::Login,
            Intent::Link => Self::Link,
        }
    }
}

/// A provider configured on this server, for drawing "Sign in with …" buttons.
#[derive(SimpleObject)]
#[graphql(name = "OAuthProviderInfo")]
pub struct OAuthProviderInfo {
    /// The provider, as `startOAuth` takes it.
    pub provider: OAuthProvider,
    /// Its name, e.g. `GitHub`.
    pub display_name: String,
    /// The scopes Agentry asks for.
    pub scopes: Vec<String>,
}

/// A started OAuth flow: send the browser to `authorizationUrl`.
#[derive(SimpleObject)]
#[graphql(name = "OAuthStart")]
pub struct OAuthStart {
    /// The provider's consent page, with the PKCE challenge and `state` in it.
    pub authorization_url: String,
    /// The one-time state the provider returns to your callback; compare it there (CSRF) and
    /// pass it to `completeOAuth`.
    pub state: String,
    /// The flow must be completed before this time (10 minutes).
    pub expires_at: DateTime<Utc>,
    /// Keep this in the browser that starts the flow (e.g. `sessionStorage`) and pass it to
    /// `completeOAuth`: a flow started in another browser cannot be completed in this one
    /// (login CSRF).
    pub browser_binding: String,
}

/// A completed OAuth flow.
#[derive(SimpleObject)]
#[graphql(name = "OAuthCompletion")]
pub struct OAuthCompletion {
    /// What the flow was for.
    pub intent: OAuthIntent,
    /// The new session's tokens (LOGIN; null for LINK, which keeps the current session).
    pub auth: Option<AuthPayload>,
    /// The linked provider account.
    pub account: OAuthAccount,
    /// True when LOGIN created a new Agentry user (show onboarding) or LINK newly linked the
    /// account; false for a returning user or a re-link.
    pub created: bool,
}

/// A provider account linked to a user. Its tokens are stored encrypted and never shown.
#[derive(Clone)]
pub struct OAuthAccount(pub OAuthAccountRow);

#[Object(name = "OAuthAccount")]
impl OAuthAccount {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }

    /// The provider.
    async fn provider(&self) -> async_graphql::Result<OAuthProvider> {
        IdentityProvider::from_stored(&self.0.provider)
            .map(Into::into)
            .ok_or_else(|| {
                AppError::Internal(anyhow::anyhow!(
                    "unknown OAuth provider {}",
                    self.0.provider
                ))
                .into()
            })
    }

    /// The provider's verified email when last seen (informational: it links nothing).
    async fn email(&self) -> Option<&str> {
        self.0.email.as_deref()
    }

    /// False once the provider revoked access (sign in with it again to reconnect).
    async fn is_connected(&self) -> bool {
        self.0.is_connected
    }

    /// When the stored access token expires (null if the provider did not say).
    async fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.0.expires_at
    }

    /// Whether a refresh token is stored, so `refreshOAuthAccount` can renew access.
    async fn can_refresh(&self) -> bool {
        self.0.refresh_token_ciphertext.is_some()
    }

    /// When the account was linked.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }

    /// Last change (new tokens, reconnection, revocation).
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// OAuth queries.
#[derive(Default)]
pub struct OAuthQuery;

#[Object]
impl OAuthQuery {
    /// The sign-in providers configured on this server (only those).
    async fn oauth_providers(
        &self,
        ctx: &Context<'_>,
    ) -> async_graphql::Result<Vec<OAuthProviderInfo>> {
        Ok(state(ctx)?
            .oauth
            .configured()
            .map(|kind| OAuthProviderInfo {
                provider: kind.into(),
                display_name: kind.display_name().to_owned(),
                scopes: kind.scopes().iter().map(|s| (*s).to_owned()).collect(),
            })
            .collect())
    }
}

/// OAuth mutations.
#[derive(Default)]
pub struct OAuthMutation;

#[Object]
impl OAuthMutation {
    /// Starts an OAuth authorization code flow with PKCE. `redirectUri` is your frontend's
    /// callback and must be on the server's allowlist; LINK needs a signed-in user.
    #[graphql(name = "startOAuth")]
    async fn start_oauth(
        &self,
        ctx: &Context<'_>,
        provider: OAuthProvider,
        intent: OAuthIntent,
        redirect_uri: String,
    ) -> async_graphql::Result<OAuthStart> {
        let viewer = request_context(ctx)?.optional_viewer()?;
        let started = service::start(
            state(ctx)?,
            viewer,
            provider.into(),
            intent.into(),
            &redirect_uri,
        )
        .await?;
        Ok(OAuthStart {
            authorization_url: started.authorization_url,
            state: started.state,
            expires_at: started.expires_at,
            browser_binding: started.browser_binding,
        })
    }

    /// Completes a flow with the `code` and `state` the provider sent to your callback and the
    /// `browserBinding` `startOAuth` returned: LOGIN returns a new session, LINK attaches the
    /// account to the signed-in user.
    #[graphql(name = "completeOAuth")]
    async fn complete_oauth(
        &self,
        ctx: &Context<'_>,
        provider: OAuthProvider,
        code: String,
        state: String,
        #[graphql(desc = "The `browserBinding` startOAuth returned to this browser.")]
        browser_binding: Option<String>,
    ) -> async_graphql::Result<OAuthCompletion> {
        let request = request_context(ctx)?;
        let completion = service::complete(
            self::state(ctx)?,
            &request.meta,
            request.optional_viewer()?,
            provider.into(),
            &code,
            &state,
            browser_binding.as_deref(),
        )
        .await?;
        Ok(OAuthCompletion {
            intent: completion.intent.into(),
            auth: completion.tokens.map(AuthPayload::from),
            account: OAuthAccount(completion.account),
            created: completion.created,
        })
    }

    /// Renews a linked account's access token with its refresh token. If the provider revoked
    /// access, the account comes back with `isConnected: false`.
    #[graphql(name = "refreshOAuthAccount", guard = "RoleGuard::USER")]
    async fn refresh_oauth_account(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<OAuthAccount> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(OAuthAccount(
            accounts::refresh(state(ctx)?, viewer, id).await?,
        ))
    }

    /// Unlinks a provider account. Refused when it is your last way to sign in (no password
    /// and no other linked account).
    #[graphql(name = "disconnectOAuthAccount", guard = "RoleGuard::USER")]
    async fn disconnect_oauth_account(
        &self,
        ctx: &Context<'_>,
        id: ID,
    ) -> async_graphql::Result<bool> {
        let request = request_context(ctx)?;
        let id = parse_id("id", &id)?;
        Ok(accounts::disconnect(state(ctx)?, &request.meta, request.viewer()?, id).await?)
    }
}
