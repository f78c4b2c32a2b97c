//! Rows of `budgets` and the queries on them, always scoped by owner. Each budget carries its
//! own spend counter for the current UTC month, charged by the transaction that ends a run.

use chrono::{DateTime, Datelike, NaiveDate, Utc};
use diesel::prelude::*;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

use crate::db::schema::budgets;

crate::text_enum! {
    /// What a budget covers.
    pub enum BudgetScope {
        /// Every run of the account.
        User => "USER",
        /// The runs on one API key.
        ApiKey => "API_KEY",
        /// The runs of one agent.
        Agent => "AGENT",
    }
}

/// A stored budget.
#[derive(Debug, Clone, Queryable, QueryableByName, Selectable, Identifiable)]
#[diesel(table_name = budgets)]
pub struct BudgetRow {
    /// Stable id.
    pub id: Uuid,
    /// The user it belongs to.
    pub user_id: Uuid,
    /// What it covers.
    pub scope: BudgetScope,
    /// The key, for an API_KEY budget.
    pub api_key_id: Option<Uuid>,
    /// The agent, for an AGENT budget.
    pub agent_id: Option<Uuid>,
    /// Set by an admin as the user's ceiling (the user cannot change it).
    pub set_by_admin: bool,
    /// Most a calendar month (UTC) may cost, in micro-dollars.
    pub monthly_limit_micros: Option<i64>,
    /// Most tokens (input + output, over every turn) one run may use.
    pub run_token_limit: Option<i64>,
    /// First day of the month `spent_micros` counts.
    pub spent_month: NaiveDate,
    /// Spent in `spent_month`, in micro-dollars.
    pub spent_micros: i64,
    /// The highest alert (80, 100) sent for `spent_month`.
    pub alerted_percent: i32,
    /// When it was set first.
    pub created_at: DateTime<Utc>,
    /// When its limits last changed.
    pub updated_at: DateTime<Utc>,
}

impl BudgetRow {
    /// What it has spent in `month` (nothing when its counter is of an earlier month).
    pub fn spent_in(&self, month: NaiveDate) -> i64 {
        if self.spent_month == month {
            self.spent_micros
        } else {
            0
        }
    }
}

/// The first day of `now`'s month, UTC: budgets reset on the 1st.
pub fn month_of(now: DateTime<Utc>) -> NaiveDate {
    now.date_naive()
        .with_day(1)
        .unwrap_or_else(|| now.date_naive())
}

/// A budget with the names of what it covers (for messages).
#[derive(Debug, Clone, QueryableByName)]
pub struct CoveringRow {
    /// The budget.
    #[diesel(embed)]
    pub budget: BudgetRow,
    /// The key's name, for an API_KEY budget.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub key_name: Option<String>,
    /// The agent's name, for an AGENT budget.
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub agent_name: Option<String>,
}

/// The user's budgets that cover a run of `agent_id` on `api_key_id`, in one statement.
pub async fn covering(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    api_key_id: Uuid,
    agent_id: Uuid,
) -> QueryResult<Vec<CoveringRow>> {
    use diesel::sql_types::Uuid as SqlUuid;
    diesel::sql_query(
        "SELECT b.*, k.name AS key_name, a.name AS agent_name \
         FROM budgets b \
         LEFT JOIN api_keys k ON k.id = b.api_key_id \
         LEFT JOIN agents a ON a.id = b.agent_id \
         WHERE b.user_id = $1 AND (b.scope = 'USER' OR b.api_key_id = $2 OR b.agent_id = $3) \
         ORDER BY b.set_by_admin DESC, b.scope, b.id",
    )
    .bind::<SqlUuid, _>(user_id)
    .bind::<SqlUuid, _>(api_key_id)
    .bind::<SqlUuid, _>(agent_id)
    .load(conn)
    .await
}

/// The user's budgets: the admin's ceiling first, then the account's, keys' and agents', oldest
/// first.
pub async fn list_of(conn: &mut AsyncPgConnection, user_id: Uuid) -> QueryResult<Vec<BudgetRow>> {
    budgets::table
        .filter(budgets::user_id.eq(user_id))
        .order((
            budgets::set_by_admin.desc(),
            budgets::scope.desc(),
            budgets::id,
        ))
        .select(BudgetRow::as_select())
        .load(conn)
        .await
}

/// The user's budget `id`, if it is theirs.
pub async fn find_owned(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    id: Uuid,
) -> QueryResult<Option<BudgetRow>> {
    budgets::table
        .find(id)
        .filter(budgets::user_id.eq(user_id))
        .select(BudgetRow::as_select())
        .first(conn)
        .await
        .optional()
}

/// The budget of the user on exactly this target and setter, locked for the transaction.
pub async fn find_target_for_update(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    target: Target,
    set_by_admin: bool,
) -> QueryResult<Option<BudgetRow>> {
    budgets::table
        .filter(budgets::user_id.eq(user_id))
        .filter(budgets::scope.eq(target.scope))
        .filter(budgets::api_key_id.is_not_distinct_from(target.api_key_id))
        .filter(budgets::agent_id.is_not_distinct_from(target.agent_id))
        .filter(budgets::set_by_admin.eq(set_by_admin))
        .select(BudgetRow::as_select())
        .for_update()
        .first(conn)
        .await
        .optional()
}

/// What a budget covers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Target {
    /// The scope.
    pub scope: BudgetScope,
    /// The key, for API_KEY.
    pub api_key_id: Option<Uuid>,
    /// The agent, for AGENT.
    pub agent_id: Option<Uuid>,
}

/// What the user's runs in `target` have cost since `since` (the start of a month), summed
/// exactly: the opening balance of a budget set in the middle of a month.
pub async fn spent_since(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    target: Target,
    since: DateTime<Utc>,
) -> QueryResult<i64> {
    use diesel::sql_types::{BigInt, Nullable, Timestamptz, Uuid as SqlUuid};
    #[derive(QueryableByName)]
    struct Total {
        #[diesel(sql_type = BigInt)]
        spent: i64,
    }
    let total: Total = diesel::sql_query(
        "SELECT coalesce(sum(cost_micros), 0)::bigint AS spent FROM executions \
         WHERE user_id = $1 AND created_at >= $2 \
           AND ($3::uuid IS NULL OR api_key_id = $3) AND ($4::uuid IS NULL OR agent_id = $4)",
    )
    .bind::<SqlUuid, _>(user_id)
    .bind::<Timestamptz, _>(since)
    .bind::<Nullable<SqlUuid>, _>(target.api_key_id)
    .bind::<Nullable<SqlUuid>, _>(target.agent_id)
    .get_result(conn)
    .await?;
    Ok(total.spent)
}

/// A budget whose spend crossed an alert level (80 or 100 percent of its monthly limit) with a
/// charge.
#[derive(Debug, Clone, QueryableByName)]
pub struct Crossing {
    /// The budget after the charge.
    #[diesel(embed)]
    pub budget: BudgetRow,
    /// The alert level already sent before the charge.
    #[diesel(sql_type = diesel::sql_types::Integer)]
    pub alerted_before: i32,
}

/// Adds `cost_micros` of a run that just ended to every budget of the user covering it (the
/// account's, the key's, the agent's), starting a new count when the month changed (never
/// moving a counter back to an earlier month: an instance whose clock lags adds to the newer
/// month's count), locking the rows in id order (two runs ending together cannot deadlock), and returns
/// the budgets whose spend reached a new alert level (80 or 100 percent). Run it in the
/// transaction that records the run's cost, so the counters never disagree with the runs.
pub async fn charge(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    api_key_id: Option<Uuid>,
    agent_id: Uuid,
    cost_micros: i64,
    month: NaiveDate,
) -> QueryResult<Vec<Crossing>> {
    use diesel::sql_types::{BigInt, Date, Nullable, Uuid as SqlUuid};
    let rows: Vec<Crossing> = diesel::sql_query(
        "WITH old AS ( \
             SELECT id, GREATEST(spent_month, $5) AS month, \
                    CASE WHEN spent_month >= $5 THEN spent_micros ELSE 0 END + $4 AS spent, \
                    CASE WHEN spent_month >= $5 THEN alerted_percent ELSE 0 END AS was \
             FROM budgets \
             WHERE user_id = $1 AND (scope = 'USER' OR api_key_id = $2 OR agent_id = $3) \
             ORDER BY id FOR UPDATE) \
         UPDATE budgets b SET spent_micros = old.spent, spent_month = old.month, \
             alerted_percent = GREATEST(old.was, CASE \
                 WHEN b.monthly_limit_micros IS NULL THEN 0 \
                 WHEN old.spent >= b.monthly_limit_micros THEN 100 \
                 WHEN old.spent * 5 >= b.monthly_limit_micros * 4 THEN 80 \
                 ELSE 0 END) \
         FROM old WHERE b.id = old.id \
         RETURNING b.*, old.was AS alerted_before",
    )
    .bind::<SqlUuid, _>(user_id)
    .bind::<Nullable<SqlUuid>, _>(api_key_id)
    .bind::<SqlUuid, _>(agent_id)
    .bind::<BigInt, _>(cost_micros)
    .bind::<Date, _>(month)
    .load(conn)
    .await?;
    Ok(rows
        .into_iter()
        .filter(|c| c.budget.alerted_percent > c.alerted_before)
        .collect())
}
