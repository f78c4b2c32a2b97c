//! Rows of `oauth_states` and `oauth_accounts` and the queries on them. Account queries a user
//! makes are scoped by owner, so another user's account is simply not found.

use chrono::{DateTime, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::{oauth_accounts, oauth_states};

/// A row of `oauth_states`: one started authorization code flow.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = oauth_states, check_for_backend(diesel::pg::Pg))]
pub struct OAuthStateRow {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// SHA-256 of the `state` handed to the provider.
    pub state_hash: Vec<u8>,
    /// `GOOGLE`, `GITHUB` or `MICROSOFT`.
    pub provider: String,
    /// `LOGIN` or `LINK`.
    pub intent: String,
    /// The user who asked to link (LINK only).
    pub user_id: Option<Uuid>,
    /// The vault's stored form of the PKCE verifier.
    pub pkce_verifier_ciphertext: Vec<u8>,
    /// The frontend callback the provider redirects to.
    pub redirect_uri: String,
    /// After this the state is refused.
    pub expires_at: DateTime<Utc>,
    /// When the state was consumed.
    pub used_at: Option<DateTime<Utc>>,
    /// Creation time.
    pub created_at: DateTime<Utc>,
    /// SHA-256 of the browser binding `startOAuth` returned (none on older rows).
    pub browser_binding_hash: Option<Vec<u8>>,
}

/// A new row of `oauth_states`.
#[derive(Debug, Insertable)]
#[diesel(table_name = oauth_states)]
pub struct NewOAuthState<'a> {
    /// Primary key, chosen before encrypting: the verifier's ciphertext is bound to it.
    pub id: Uuid,
    /// SHA-256 of the state.
    pub state_hash: &'a [u8],
    /// Provider.
    pub provider: &'a str,
    /// Intent.
    pub intent: &'a str,
    /// Linking user.
    pub user_id: Option<Uuid>,
    /// Encrypted PKCE verifier.
    pub pkce_verifier_ciphertext: &'a [u8],
    /// Frontend callback.
    pub redirect_uri: &'a str,
    /// Expiry.
    pub expires_at: DateTime<Utc>,
    /// SHA-256 of the browser binding.
    pub browser_binding_hash: &'a [u8],
}

/// A row of `oauth_accounts`: a provider account linked to a user.
#[derive(Debug, Clone, Queryable, Selectable, Identifiable)]
#[diesel(table_name = oauth_accounts, check_for_backend(diesel::pg::Pg))]
pub struct OAuthAccountRow {
    /// Primary key (UUIDv7).
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Provider.
    pub provider: String,
    /// The provider's stable id of the person.
    pub subject: String,
    /// The provider's verified email when last seen.
    pub email: Option<String>,
    /// The vault's stored form of the access token.
    pub access_token_ciphertext: Vec<u8>,
    /// The vault's stored form of the refresh token, if the provider issued one.
    pub refresh_token_ciphertext: Option<Vec<u8>>,
    /// When the access token expires.
    pub expires_at: Option<DateTime<Utc>>,
    /// False once the provider revoked the grant.
    pub is_connected: bool,
    /// Link time.
    pub created_at: DateTime<Utc>,
    /// Last change (new tokens, reconnection).
    pub updated_at: DateTime<Utc>,
}

/// A new row of `oauth_accounts`.
#[derive(Debug, Insertable)]
#[diesel(table_name = oauth_accounts)]
pub struct NewOAuthAccount<'a> {
    /// Primary key, chosen before encrypting: the ciphertexts are bound to it.
    pub id: Uuid,
    /// Owner.
    pub user_id: Uuid,
    /// Provider.
    pub provider: &'a str,
    /// Subject.
    pub subject: &'a str,
    /// Verified email.
    pub email: Option<&'a str>,
    /// Encrypted access token.
    pub access_token_ciphertext: &'a [u8],
    /// Encrypted refresh token.
    pub refresh_token_ciphertext: Option<&'a [u8]>,
    /// Access token expiry.
    pub expires_at: Option<DateTime<Utc>>,
}

/// The state with this hash, used or not.
pub async fn find_state(
    conn: &mut AsyncPgConnection,
    state_hash: &[u8],
) -> QueryResult<Option<OAuthStateRow>> {
    oauth_states::table
        .filter(oauth_states::state_hash.eq(state_hash))
        .select(OAuthStateRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// Marks a state used, only if it still is not: of two concurrent completions, one wins.
pub async fn consume_state(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<Option<OAuthStateRow>> {
    diesel::update(oauth_states::table.find(id))
        .filter(oauth_states::used_at.is_null())
        .set(oauth_states::used_at.eq(diesel::dsl::now))
        .returning(OAuthStateRow::as_returning())
        .get_result(conn)
        .await
        .optional()
}

/// Deletes states that expired before `before` (they can no longer be used).
pub async fn prune_states(
    conn: &mut AsyncPgConnection,
    before: DateTime<Utc>,
) -> QueryResult<usize> {
    diesel::delete(oauth_states::table.filter(oauth_states::expires_at.lt(before)))
        .execute(conn)
        .await
}

/// The account with this provider subject, whoever owns it.
pub async fn find_by_subject(
    conn: &mut AsyncPgConnection,
    provider: &str,
    subject: &str,
) -> QueryResult<Option<OAuthAccountRow>> {
    oauth_accounts::table
        .filter(oauth_accounts::provider.eq(provider))
        .filter(oauth_accounts::subject.eq(subject))
        .select(OAuthAccountRow::as_select())
        .first(conn)
        .await
        .optional()
}

crate::owned_queries!(oauth_accounts, OAuthAccountRow);

/// Every linked account of a user, oldest first.
pub async fn list_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
) -> QueryResult<Vec<OAuthAccountRow>> {
    oauth_accounts::table
        .filter(oauth_accounts::user_id.eq(user_id))
        .order(oauth_accounts::id.asc())
        .select(OAuthAccountRow::as_select())
        .load(conn)
        .await
}

/// Locks a user's linked accounts (inside a transaction) and returns their ids, so two
/// concurrent unlinks cannot both think the other account remains.
pub async fn lock_owned_ids(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Vec<Uuid>> {
    oauth_accounts::table
        .filter(oauth_accounts::user_id.eq(user_id))
        .select(oauth_accounts::id)
        .for_update()
        .load(conn)
        .await
}

/// Stores fresh tokens (and the latest email) on an account and marks it connected.
pub async fn store_tokens(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    email: Option<&str>,
    access: &[u8],
    refresh: Option<&[u8]>,
    expires_at: Option<DateTime<Utc>>,
) -> QueryResult<OAuthAccountRow> {
    diesel::update(oauth_accounts::table.find(id))
        .set((
            oauth_accounts::email.eq(email),
            oauth_accounts::access_token_ciphertext.eq(access),
            oauth_accounts::refresh_token_ciphertext.eq(refresh),
            oauth_accounts::expires_at.eq(expires_at),
            oauth_accounts::is_connected.eq(true),
            oauth_accounts::updated_at.eq(diesel::dsl::now),
        ))
        .returning(OAuthAccountRow::as_returning())
        .get_result(conn)
        .await
}

/// Marks an account disconnected (the provider revoked the grant).
pub async fn mark_disconnected(
    conn: &mut AsyncPgConnection,
    id: Uuid,
) -> QueryResult<OAuthAccountRow> {
    diesel::update(oauth_accounts::table.find(id))
        .set((
            oauth_accounts::is_connected.eq(false),
            oauth_accounts::updated_at.eq(diesel::dsl::now),
        ))
        .returning(OAuthAccountRow::as_returning())
        .get_result(conn)
        .await
}

/// One page of every account's token ciphertexts (for re-encryption), in id order.
pub async fn page_tokens(
    conn: &mut AsyncPgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<(Uuid, Uuid, Vec<u8>, Option<Vec<u8>>)>> {
    let mut query = oauth_accounts::table
        .select((
            oauth_accounts::id,
            oauth_accounts::user_id,
            oauth_accounts::access_token_ciphertext,
            oauth_accounts::refresh_token_ciphertext,
        ))
        .order(oauth_accounts::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(oauth_accounts::id.gt(after));
    }
    query.load(conn).await
}

/// Replaces both token ciphertexts only if they are still the ones read (a concurrent refresh
/// wins, not the re-encryption).
pub async fn swap_tokens(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    old: (&[u8], Option<&[u8]>),
    new: (&[u8], Option<&[u8]>),
) -> QueryResult<bool> {
    let query = diesel::update(oauth_accounts::table.find(id))
        .filter(oauth_accounts::access_token_ciphertext.eq(old.0));
    let n = match old.1 {
        Some(refresh) => {
            query
                .filter(oauth_accounts::refresh_token_ciphertext.eq(refresh))
                .set((
                    oauth_accounts::access_token_ciphertext.eq(new.0),
                    oauth_accounts::refresh_token_ciphertext.eq(new.1),
                ))
                .execute(conn)
                .await?
        }
        None => {
            query
                .filter(oauth_accounts::refresh_token_ciphertext.is_null())
                .set((
                    oauth_accounts::access_token_ciphertext.eq(new.0),
                    oauth_accounts::refresh_token_ciphertext.eq(new.1),
                ))
                .execute(conn)
                .await?
        }
    };
    Ok(n == 1)
}

/// One page of every state's verifier ciphertext (for re-encryption), in id order.
pub async fn page_verifiers(
    conn: &mut AsyncPgConnection,
    after: Option<Uuid>,
    limit: i64,
) -> QueryResult<Vec<(Uuid, Option<Uuid>, Vec<u8>)>> {
    let mut query = oauth_states::table
        .select((
            oauth_states::id,
            oauth_states::user_id,
            oauth_states::pkce_verifier_ciphertext,
        ))
        .order(oauth_states::id.asc())
        .limit(limit)
        .into_boxed();
    if let Some(after) = after {
        query = query.filter(oauth_states::id.gt(after));
    }
    query.load(conn).await
}

/// Replaces a verifier ciphertext only if it is still `old`.
pub async fn swap_verifier(
    conn: &mut AsyncPgConnection,
    id: Uuid,
    old: &[u8],
    new: &[u8],
) -> QueryResult<bool> {
    let n = diesel::update(oauth_states::table.find(id))
        .filter(oauth_states::pkce_verifier_ciphertext.eq(old))
        .set(oauth_states::pkce_verifier_ciphertext.eq(new))
        .execute(conn)
        .await?;
    Ok(n == 1)
}
