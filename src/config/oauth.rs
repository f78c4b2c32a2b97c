//! The OAuth part of the configuration: the frontend callbacks, and each provider's client
//! credentials and endpoints (the providers' real ones by default).

use clap::Args;
use secrecy::SecretString;

/// OAuth sign-in settings. A provider is enabled when both its client id and secret are set;
/// its endpoint URLs default to the provider's real ones and can point elsewhere (tests,
/// GitHub Enterprise, a single Microsoft tenant).
#[derive(Debug, Clone, Args)]
pub struct OAuthConfig {
    /// Frontend callback URLs a provider may redirect to (comma-separated, exact match).
    #[arg(
        long = "oauth-redirect-uris",
        env = "AGENTRY_OAUTH_REDIRECT_URIS",
        value_delimiter = ','
    )]
    pub redirect_uris: Vec<String>,

    /// Google OAuth client id.
    #[arg(
        long = "oauth-google-client-id",
        env = "AGENTRY_OAUTH_GOOGLE_CLIENT_ID"
    )]
    pub google_client_id: Option<String>,
    /// Google OAuth client secret.
    #[arg(
        long = "oauth-google-client-secret",
        env = "AGENTRY_OAUTH_GOOGLE_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub google_client_secret: Option<SecretString>,
    /// Google authorization endpoint.
    #[arg(
        long = "oauth-google-auth-url",
        env = "AGENTRY_OAUTH_GOOGLE_AUTH_URL",
        default_value = "https://accounts.google.com/o/oauth2/v2/auth"
    )]
    pub google_auth_url: String,
    /// Google token endpoint.
    #[arg(
        long = "oauth-google-token-url",
        env = "AGENTRY_OAUTH_GOOGLE_TOKEN_URL",
        default_value = "https://oauth2.googleapis.com/token"
    )]
    pub google_token_url: String,
    /// Google OpenID Connect user-info endpoint.
    #[arg(
        long = "oauth-google-userinfo-url",
        env = "AGENTRY_OAUTH_GOOGLE_USERINFO_URL",
        default_value = "https://openidconnect.googleapis.com/v1/userinfo"
    )]
    pub google_userinfo_url: String,

    /// GitHub OAuth app client id.
    #[arg(
        long = "oauth-github-client-id",
        env = "AGENTRY_OAUTH_GITHUB_CLIENT_ID"
    )]
    pub github_client_id: Option<String>,
    /// GitHub OAuth app client secret.
    #[arg(
        long = "oauth-github-client-secret",
        env = "AGENTRY_OAUTH_GITHUB_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub github_client_secret: Option<SecretString>,
    /// GitHub authorization endpoint.
    #[arg(
        long = "oauth-github-auth-url",
        env = "AGENTRY_OAUTH_GITHUB_AUTH_URL",
        default_value = "https://github.com/login/oauth/authorize"
    )]
    pub github_auth_url: String,
    /// GitHub token endpoint.
    #[arg(
        long = "oauth-github-token-url",
        env = "AGENTRY_OAUTH_GITHUB_TOKEN_URL",
        default_value = "https://github.com/login/oauth/access_token"
    )]
    pub github_token_url: String,
    /// GitHub user endpoint (`GET /user`; GitHub has no OIDC user-info).
    #[arg(
        long = "oauth-github-userinfo-url",
        env = "AGENTRY_OAUTH_GITHUB_USERINFO_URL",
        default_value = "https://api.github.com/user"
    )]
    pub github_userinfo_url: String,
    /// GitHub emails endpoint (default: the user-info URL followed by `/emails`).
    #[arg(
        long = "oauth-github-emails-url",
        env = "AGENTRY_OAUTH_GITHUB_EMAILS_URL"
    )]
    pub github_emails_url: Option<String>,

    /// Microsoft (Entra ID) application (client) id.
    #[arg(
        long = "oauth-microsoft-client-id",
        env = "AGENTRY_OAUTH_MICROSOFT_CLIENT_ID"
    )]
    pub microsoft_client_id: Option<String>,
    /// Microsoft client secret.
    #[arg(
        long = "oauth-microsoft-client-secret",
        env = "AGENTRY_OAUTH_MICROSOFT_CLIENT_SECRET",
        hide_env_values = true
    )]
    pub microsoft_client_secret: Option<SecretString>,
    /// Microsoft authorization endpoint (replace `common` with a tenant id to allow one tenant).
    #[arg(
        long = "oauth-microsoft-auth-url",
        env = "AGENTRY_OAUTH_MICROSOFT_AUTH_URL",
        default_value = "https://login.microsoftonline.com/common/oauth2/v2.0/authorize"
    )]
    pub microsoft_auth_url: String,
    /// Microsoft token endpoint.
    #[arg(
        long = "oauth-microsoft-token-url",
        env = "AGENTRY_OAUTH_MICROSOFT_TOKEN_URL",
        default_value = "https://login.microsoftonline.com/common/oauth2/v2.0/token"
    )]
    pub microsoft_token_url: String,
    /// Microsoft's signing keys (JWKS) for ID tokens. Microsoft's profile is its ID token,
    /// verified against these keys; there is no user-info call.
    #[arg(
        long = "oauth-microsoft-jwks-url",
        env = "AGENTRY_OAUTH_MICROSOFT_JWKS_URL",
        default_value = "https://login.microsoftonline.com/common/discovery/v2.0/keys"
    )]
    pub microsoft_jwks_url: String,
    /// The issuer a Microsoft ID token must carry, `{tenantid}` standing for the token's `tid`
    /// (the multi-tenant `common` endpoint's issuer is per tenant).
    #[arg(
        long = "oauth-microsoft-issuer",
        env = "AGENTRY_OAUTH_MICROSOFT_ISSUER",
        default_value = "https://login.microsoftonline.com/{tenantid}/v2.0"
    )]
    pub microsoft_issuer: String,
}
