//! The provider registry, built from configuration, and each provider's user profile.
//!
//! Who a person is comes from the provider's stable subject id, never from an email: Google's
//! `sub`, GitHub's numeric `id` (GitHub has no OIDC user-info: `GET /user` and
//! `GET /user/emails`), and Microsoft's `oid` with its tenant `tid` (stored as `<tid>:<oid>`),
//! read from its verified ID token (see `id_token`). Microsoft does not verify the email
//! addresses its accounts carry, so a Microsoft email is never used: not to sign up, not to
//! match an account.

use oauth2::{
    AuthType, AuthUrl, Client, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    ExtraTokenFields, RedirectUrl, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
    basic::{
        BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
        BasicTokenType,
    },
};
use reqwest::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize, de::DeserializeOwned};
use url::Url;

use crate::{
    config::{ConfigError, OAuthConfig},
    error::{AppError, AppResult},
    oauth::id_token::IdTokenVerifier,
    users::validate::Email,
};

/// The OAuth providers Agentry can sign people in with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IdentityProvider {
    /// Google (OpenID Connect).
    Google,
    /// GitHub (OAuth apps; no OIDC).
    GitHub,
    /// Microsoft identity platform (Entra ID and personal accounts).
    Microsoft,
}

impl IdentityProvider {
    /// Every provider, in display order.
    pub const ALL: [Self; 3] = [Self::Google, Self::GitHub, Self::Microsoft];

    /// The stored (and GraphQL) form.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Google => "GOOGLE",
            Self::GitHub => "GITHUB",
            Self::Microsoft => "MICROSOFT",
        }
    }

    /// Parses the stored form.
    pub fn from_stored(stored: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|p| p.as_str() == stored)
    }

    /// The name people know the provider by.
    pub fn display_name(self) -> &'static str {
        match self {
            Self::Google => "Google",
            Self::GitHub => "GitHub",
            Self::Microsoft => "Microsoft",
        }
    }

    /// The scopes requested: identity and email, plus a refresh token where it takes a scope.
    pub fn scopes(self) -> &'static [&'static str] {
        match self {
            Self::Google => &["openid", "email", "profile"],
            Self::GitHub => &["read:user", "user:email"],
            Self::Microsoft => &["openid", "profile", "email", "offline_access"],
        }
    }

    /// Extra authorization-request parameters (Google issues refresh tokens only when asked).
    pub fn extra_auth_params(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Self::Google => &[("access_type", "offline")],
            Self::GitHub | Self::Microsoft => &[],
        }
    }
}

/// What a token endpoint answers beyond RFC 6749's fields: the OpenID Connect ID token.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct IdTokenFields {
    /// The ID token (a JWT), when the provider speaks OpenID Connect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id_token: Option<String>,
}

impl ExtraTokenFields for IdTokenFields {}

/// A token endpoint's answer, with the ID token kept.
pub type Tokens = StandardTokenResponse<IdTokenFields, BasicTokenType>;

/// An OAuth client with its authorization and token endpoints set.
pub type OAuthClient = Client<
    BasicErrorResponse,
    Tokens,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

/// Where a provider's account of who signed in comes from.
#[derive(Debug)]
enum ProfileSource {
    /// A user-info endpoint called with the access token (Google; GitHub's `/user`).
    UserInfo(Url),
    /// The verified ID token of the code exchange (Microsoft).
    IdToken(IdTokenVerifier),
}

/// A configured provider: client credentials and endpoints.
#[derive(Debug)]
pub struct IdpClient {
    /// Which provider.
    pub kind: IdentityProvider,
    client_id: ClientId,
    client_secret: SecretString,
    auth_url: AuthUrl,
    token_url: TokenUrl,
    profile: ProfileSource,
    emails_url: Option<Url>,
}

impl IdpClient {
    /// An `oauth2` client for one flow, redirecting to `redirect_uri` (already allowlisted;
    /// `None` for the refresh grant, which has no redirect).
    pub fn client(&self, redirect_uri: Option<&str>) -> AppResult<OAuthClient> {
        // GitHub documents client credentials in the body; the others accept HTTP Basic.
        let auth_type = match self.kind {
            IdentityProvider::GitHub => AuthType::RequestBody,
            IdentityProvider::Google | IdentityProvider::Microsoft => AuthType::BasicAuth,
        };
        let mut client = Client::new(self.client_id.clone())
            .set_client_secret(ClientSecret::new(
                self.client_secret.expose_secret().to_owned(),
            ))
            .set_auth_uri(self.auth_url.clone())
            .set_token_uri(self.token_url.clone())
            .set_auth_type(auth_type);
        if let Some(uri) = redirect_uri {
            let redirect = RedirectUrl::new(uri.to_owned())
                .map_err(|_| AppError::bad_input("redirectUri", "is not a valid URL"))?;
            client = client.set_redirect_uri(redirect);
        }
        Ok(client)
    }

    /// Whether the flow sends a nonce and expects it back in a verified ID token.
    pub fn uses_id_token(&self) -> bool {
        matches!(self.profile, ProfileSource::IdToken(_))
    }

    /// Reads who signed in: from the user-info endpoint with the access token, or from the ID
    /// token of `tokens`, verified and bound to `nonce`.
    pub async fn fetch_profile(
        &self,
        http: &reqwest::Client,
        tokens: &Tokens,
        nonce: &str,
    ) -> AppResult<Profile> {
        let access_token = SecretString::from(tokens.access_token().secret().to_owned());
        let access_token = &access_token;
        let userinfo_url = match &self.profile {
            ProfileSource::UserInfo(url) => url,
            ProfileSource::IdToken(verifier) => {
                let name = self.kind.display_name();
                let Some(id_token) = tokens.extra_fields().id_token.as_deref() else {
                    return Err(AppError::Provider(format!(
                        "{name} sent no ID token: check that the app registration allows the openid scope"
                    )));
                };
                let claims = verifier.verify_microsoft(http, id_token, nonce).await?;
                return Ok(Profile {
                    subject: subject(self.kind, format!("{}:{}", claims.tid, claims.oid))?,
                    // Microsoft accounts carry addresses nobody verified: never trust one.
                    email: None,
                    name: claims.name,
                });
            }
        };
        match self.kind {
            IdentityProvider::Google => {
                let info: GoogleUserInfo = self.get_json(http, userinfo_url, access_token).await?;
                Ok(Profile {
                    subject: subject(self.kind, info.sub)?,
                    email: info
                        .email
                        .filter(|_| info.email_verified == Some(true))
                        .and_then(normalise_email),
                    name: info.name,
                })
            }
            IdentityProvider::GitHub => {
                let user: GitHubUser = self.get_json(http, userinfo_url, access_token).await?;
                let emails: Vec<GitHubEmail> = match &self.emails_url {
                    Some(url) => self.get_json(http, url, access_token).await?,
                    None => Vec::new(),
                };
                let email = emails
                    .into_iter()
                    .find(|e| e.primary && e.verified)
                    .and_then(|e| normalise_email(e.email));
                Ok(Profile {
                    subject: subject(self.kind, user.id.to_string())?,
                    email,
                    name: user.name.or(Some(user.login)),
                })
            }
            IdentityProvider::Microsoft => Err(AppError::Internal(anyhow::anyhow!(
                "Microsoft is configured without ID token verification"
            ))),
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        http: &reqwest::Client,
        url: &Url,
        access_token: &SecretString,
    ) -> AppResult<T> {
        let name = self.kind.display_name();
        let response = http
            .get(url.clone())
            .bearer_auth(access_token.expose_secret())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await
            .map_err(|e| {
                // reqwest's error names the URL, never the bearer token.
                tracing::warn!(provider = name, error = %e, "OAuth profile request failed");
                AppError::Provider(format!("could not reach {name} to read your profile"))
            })?;
        match response.status() {
            status if status.is_success() => {}
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                return Err(AppError::Provider(format!(
                    "{name} refused to share your profile: start again"
                )));
            }
            status => {
                return Err(AppError::Provider(format!(
                    "{name} answered HTTP {} when asked for your profile",
                    status.as_u16()
                )));
            }
        }
        response.json::<T>().await.map_err(|_| {
            AppError::Provider(format!("{name} sent a profile Agentry does not understand"))
        })
    }
}

/// Who signed in, as the provider tells it.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The provider's stable id of the person (never reassigned).
    pub subject: String,
    /// A verified email, lower-cased; `None` when the provider has none it vouches for.
    pub email: Option<String>,
    /// The person's name, if shared.
    pub name: Option<String>,
}

/// Longest subject accepted.
const MAX_SUBJECT_LEN: usize = 255;

fn subject(kind: IdentityProvider, raw: String) -> AppResult<String> {
    if raw.is_empty() || raw.len() > MAX_SUBJECT_LEN {
        return Err(AppError::Provider(format!(
            "{} did not say who you are",
            kind.display_name()
        )));
    }
    Ok(raw)
}

fn normalise_email(raw: String) -> Option<String> {
    Email::parse("email", &raw)
        .ok()
        .map(|e| e.as_str().to_owned())
}

#[derive(Deserialize)]
struct GoogleUserInfo {
    sub: String,
    email: Option<String>,
    email_verified: Option<bool>,
    name: Option<String>,
}

#[derive(Deserialize)]
struct GitHubUser {
    id: u64,
    login: String,
    name: Option<String>,
}

#[derive(Deserialize)]
struct GitHubEmail {
    email: String,
    primary: bool,
    verified: bool,
}

/// The configured providers and the frontend callbacks they may redirect to.
#[derive(Debug, Default)]
pub struct Registry {
    providers: Vec<IdpClient>,
    redirect_uris: Vec<String>,
}

/// Variable names of one provider's settings (for error messages).
struct Vars {
    id: &'static str,
    secret: &'static str,
    auth: &'static str,
    token: &'static str,
    userinfo: &'static str,
}

impl Registry {
    /// Builds the registry; a provider with only half its credentials, or a bad URL, is an error
    /// naming the variable.
    pub fn from_config(config: &OAuthConfig, production: bool) -> Result<Self, ConfigError> {
        let entries = [
            (
                IdentityProvider::Google,
                &config.google_client_id,
                &config.google_client_secret,
                [
                    &config.google_auth_url,
                    &config.google_token_url,
                    &config.google_userinfo_url,
                ],
                Vars {
                    id: "AGENTRY_OAUTH_GOOGLE_CLIENT_ID",
                    secret: "AGENTRY_OAUTH_GOOGLE_CLIENT_SECRET",
                    auth: "AGENTRY_OAUTH_GOOGLE_AUTH_URL",
                    token: "AGENTRY_OAUTH_GOOGLE_TOKEN_URL",
                    userinfo: "AGENTRY_OAUTH_GOOGLE_USERINFO_URL",
                },
            ),
            (
                IdentityProvider::GitHub,
                &config.github_client_id,
                &config.github_client_secret,
                [
                    &config.github_auth_url,
                    &config.github_token_url,
                    &config.github_userinfo_url,
                ],
                Vars {
                    id: "AGENTRY_OAUTH_GITHUB_CLIENT_ID",
                    secret: "AGENTRY_OAUTH_GITHUB_CLIENT_SECRET",
                    auth: "AGENTRY_OAUTH_GITHUB_AUTH_URL",
                    token: "AGENTRY_OAUTH_GITHUB_TOKEN_URL",
                    userinfo: "AGENTRY_OAUTH_GITHUB_USERINFO_URL",
                },
            ),
            (
                IdentityProvider::Microsoft,
                &config.microsoft_client_id,
                &config.microsoft_client_secret,
                [
                    &config.microsoft_auth_url,
                    &config.microsoft_token_url,
                    &config.microsoft_jwks_url,
                ],
                Vars {
                    id: "AGENTRY_OAUTH_MICROSOFT_CLIENT_ID",
                    secret: "AGENTRY_OAUTH_MICROSOFT_CLIENT_SECRET",
                    auth: "AGENTRY_OAUTH_MICROSOFT_AUTH_URL",
                    token: "AGENTRY_OAUTH_MICROSOFT_TOKEN_URL",
                    userinfo: "AGENTRY_OAUTH_MICROSOFT_JWKS_URL",
                },
            ),
        ];
        let mut providers = Vec::new();
        for (kind, id, secret, [auth, token, userinfo], vars) in entries {
            let id = id.as_deref().map(str::trim).filter(|s| !s.is_empty());
            let secret = secret
                .as_ref()
                .filter(|s| !s.expose_secret().trim().is_empty());
            let (id, secret) = match (id, secret) {
                (None, None) => continue,
                (Some(id), Some(secret)) => (id, secret),
                (Some(_), None) => {
                    return Err(ConfigError::Invalid(
                        vars.secret,
                        format!("is required when {} is set", vars.id),
                    ));
                }
                (None, Some(_)) => {
                    return Err(ConfigError::Invalid(
                        vars.id,
                        format!("is required when {} is set", vars.secret),
                    ));
                }
            };
            let auth = endpoint(vars.auth, auth, production)?;
            let token = endpoint(vars.token, token, production)?;
            let userinfo = endpoint(vars.userinfo, userinfo, production)?;
            let emails_url = match (kind, &config.github_emails_url) {
                (IdentityProvider::GitHub, Some(url)) => Some(endpoint(
                    "AGENTRY_OAUTH_GITHUB_EMAILS_URL",
                    url,
                    production,
                )?),
                (IdentityProvider::GitHub, None) => Some(endpoint(
                    vars.userinfo,
                    &format!("{}/emails", userinfo.as_str().trim_end_matches('/')),
                    production,
                )?),
                _ => None,
            };
            let profile = match kind {
                IdentityProvider::Microsoft => {
                    let issuer = config.microsoft_issuer.trim();
                    if endpoint("AGENTRY_OAUTH_MICROSOFT_ISSUER", issuer, production).is_err() {
                        return Err(ConfigError::Invalid(
                            "AGENTRY_OAUTH_MICROSOFT_ISSUER",
                            format!(
                                "`{issuer}` is not an issuer URL like https://login.microsoftonline.com/{{tenantid}}/v2.0"
                            ),
                        ));
                    }
                    ProfileSource::IdToken(IdTokenVerifier::new(
                        userinfo,
                        issuer.to_owned(),
                        id.to_owned(),
                    ))
                }
                _ => ProfileSource::UserInfo(userinfo),
            };
            providers.push(IdpClient {
                kind,
                client_id: ClientId::new(id.to_owned()),
                client_secret: secret.clone(),
                auth_url: AuthUrl::from_url(auth),
                token_url: TokenUrl::from_url(token),
                profile,
                emails_url,
            });
        }
        let mut redirect_uris = Vec::new();
        for raw in config.redirect_uris.iter().map(|s| s.trim()) {
            if raw.is_empty() {
                continue;
            }
            match Url::parse(raw) {
                Ok(url)
                    if matches!(url.scheme(), "http" | "https")
                        && url.fragment().is_none()
                        && url.host().is_some() => {}
                _ => {
                    return Err(ConfigError::Invalid(
                        "AGENTRY_OAUTH_REDIRECT_URIS",
                        format!(
                            "`{raw}` is not an http(s) URL without a fragment, like https://app.example.com/oauth/callback"
                        ),
                    ));
                }
            }
            redirect_uris.push(raw.to_owned());
        }
        if !providers.is_empty() && redirect_uris.is_empty() {
            return Err(ConfigError::Invalid(
                "AGENTRY_OAUTH_REDIRECT_URIS",
                "must list your frontend's OAuth callback URL(s) when a provider is configured"
                    .into(),
            ));
        }
        Ok(Self {
            providers,
            redirect_uris,
        })
    }

    /// A configured provider, or `BAD_USER_INPUT` on `field`.
    pub fn get(&self, kind: IdentityProvider, field: &str) -> AppResult<&IdpClient> {
        self.providers
            .iter()
            .find(|p| p.kind == kind)
            .ok_or_else(|| {
                AppError::bad_input(
                    field,
                    format!(
                        "sign-in with {} is not configured on this server",
                        kind.display_name()
                    ),
                )
            })
    }

    /// The configured providers, in display order.
    pub fn configured(&self) -> impl Iterator<Item = IdentityProvider> + '_ {
        self.providers.iter().map(|p| p.kind)
    }

    /// Whether `uri` is exactly one of the allowlisted frontend callbacks.
    pub fn redirect_allowed(&self, uri: &str) -> bool {
        self.redirect_uris.iter().any(|allowed| allowed == uri)
    }
}

fn endpoint(var: &'static str, raw: &str, production: bool) -> Result<Url, ConfigError> {
    match Url::parse(raw.trim()) {
        Ok(url) if url.scheme() == "https" || (!production && url.scheme() == "http") => Ok(url),
        _ => Err(ConfigError::Invalid(
            var,
            format!(
                "`{raw}` is not an {} URL",
                if production { "https" } else { "http(s)" }
            ),
        )),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        oauth: OAuthConfig,
    }

    fn registry(args: &[&str], production: bool) -> Result<Registry, ConfigError> {
        let cli = Cli::parse_from(std::iter::once("agentry").chain(args.iter().copied()));
        Registry::from_config(&cli.oauth, production)
    }

    fn err_var(result: Result<Registry, ConfigError>) -> &'static str {
        match result {
            Err(ConfigError::Invalid(var, _) | ConfigError::Missing(var, _)) => var,
            other => panic!("expected a configuration error, got {other:?}"),
        }
    }

    #[test]
    fn nothing_configured_means_no_providers() {
        let r = registry(&[], true).unwrap();
        assert_eq!(r.configured().count(), 0);
    }

    #[test]
    fn a_half_configured_provider_names_the_missing_variable() {
        let r = registry(&["--oauth-google-client-id", "id"], false);
        assert_eq!(err_var(r), "AGENTRY_OAUTH_GOOGLE_CLIENT_SECRET");
        let r = registry(&["--oauth-github-client-secret", "s"], false);
        assert_eq!(err_var(r), "AGENTRY_OAUTH_GITHUB_CLIENT_ID");
    }

    #[test]
    fn a_configured_provider_needs_redirect_uris_and_https_in_production() {
        let base = [
            "--oauth-microsoft-client-id",
            "id",
            "--oauth-microsoft-client-secret",
            "s",
        ];
        assert_eq!(
            err_var(registry(&base, true)),
            "AGENTRY_OAUTH_REDIRECT_URIS"
        );
        let mut args = base.to_vec();
        args.extend([
            "--oauth-redirect-uris",
            "https://app.example.com/cb,https://app.example.com/cb2",
        ]);
        let r = registry(&args, true).unwrap();
        assert_eq!(
            r.configured().collect::<Vec<_>>(),
            [IdentityProvider::Microsoft]
        );
        assert!(r.redirect_allowed("https://app.example.com/cb2"));
        assert!(!r.redirect_allowed("https://app.example.com/cb/"));
        args.extend([
            "--oauth-microsoft-token-url",
            "http://login.example.com/token",
        ]);
        assert_eq!(
            err_var(registry(&args, true)),
            "AGENTRY_OAUTH_MICROSOFT_TOKEN_URL"
        );
        assert_eq!(
            err_var(registry(
                &[&base[..], &["--oauth-redirect-uris", "not a url"]].concat(),
                false
            )),
            "AGENTRY_OAUTH_REDIRECT_URIS"
        );
    }
}
