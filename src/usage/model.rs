//! The usage report query: one statement, grouped by the chosen dimensions.

use chrono::{DateTime, Utc};
use diesel::QueryResult;
use diesel_async::{AsyncPgConnection, RunQueryDsl};
use uuid::Uuid;

/// What a report can be grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, async_graphql::Enum)]
pub enum UsageGroup {
    /// The UTC day the run was accepted.
    Day,
    /// The agent.
    Agent,
    /// The model.
    Model,
    /// The provider.
    Provider,
    /// The API key (null for runs whose key was deleted since).
    ApiKey,
}

/// One group of a report: the dimensions grouped by (the others null) and the sums.
#[derive(Debug, Clone, Default, diesel::QueryableByName)]
pub struct UsageRow {
    /// Start of the UTC day (DAY).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Timestamptz>)]
    pub day: Option<DateTime<Utc>>,
    /// The agent (AGENT).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    pub agent_id: Option<Uuid>,
    /// The agent's name now (AGENT).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub agent_name: Option<String>,
    /// The model (MODEL).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub model: Option<String>,
    /// The provider (PROVIDER).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub provider: Option<String>,
    /// The key (API_KEY).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Uuid>)]
    pub api_key_id: Option<Uuid>,
    /// The key's name now (API_KEY).
    #[diesel(sql_type = diesel::sql_types::Nullable<diesel::sql_types::Text>)]
    pub api_key_name: Option<String>,
    /// Runs.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub executions: i64,
    /// Prompt tokens.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub input_tokens: i64,
    /// Completion tokens.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub output_tokens: i64,
    /// Cost in micro-dollars, summed exactly.
    #[diesel(sql_type = diesel::sql_types::BigInt)]
    pub cost_micros: i64,
    /// Whether any run's tokens or price were estimated.
    #[diesel(sql_type = diesel::sql_types::Bool)]
    pub cost_estimated: bool,
}

/// The groups of `user_id`'s runs accepted in `[since, until)`, grouped by `by` (sorted,
/// distinct), in the order of the dimensions; at most `limit` groups.
pub async fn report(
    conn: &mut AsyncPgConnection,
    user_id: Uuid,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    by: &[UsageGroup],
    limit: i64,
) -> QueryResult<Vec<UsageRow>> {
    use diesel::sql_types::{BigInt, Nullable, Timestamptz};
    let has = |g: UsageGroup| by.contains(&g);
    // Each dimension is a fixed expression, chosen by the enum: no client text reaches the SQL.
    let column = |g: UsageGroup, expr: &'static str, null: &'static str| -> &'static str {
        if has(g) { expr } else { null }
    };
    let select = [
        column(
            UsageGroup::Day,
            "date_trunc('day', e.created_at, 'UTC')",
            "NULL::timestamptz",
        ),
        column(UsageGroup::Agent, "e.agent_id", "NULL::uuid"),
        column(UsageGroup::Agent, "max(a.name)", "NULL::text"),
        column(UsageGroup::Model, "e.model", "NULL::text"),
        column(UsageGroup::Provider, "e.provider", "NULL::text"),
        column(UsageGroup::ApiKey, "e.api_key_id", "NULL::uuid"),
        column(UsageGroup::ApiKey, "max(k.name)", "NULL::text"),
    ];
    let group: Vec<&str> = by
        .iter()
        .map(|g| match g {
            UsageGroup::Day => "1",
            UsageGroup::Agent => "2",
            UsageGroup::Model => "4",
            UsageGroup::Provider => "5",
            UsageGroup::ApiKey => "6",
        })
        .collect();
    let joins = format!(
        "{}{}",
        if has(UsageGroup::Agent) {
            " LEFT JOIN agents a ON a.id = e.agent_id"
        } else {
            ""
        },
        if has(UsageGroup::ApiKey) {
            " LEFT JOIN api_keys k ON k.id = e.api_key_id"
        } else {
            ""
        },
    );
    let grouping = if group.is_empty() {
        String::new()
    } else {
        format!(" GROUP BY {0} ORDER BY {0}", group.join(", "))
    };
    // sum(bigint) is numeric in PostgreSQL: cast back, the totals fit in bigint.
    let sql = format!(
        "SELECT {} AS day, {} AS agent_id, {} AS agent_name, {} AS model, {} AS provider, \
                {} AS api_key_id, {} AS api_key_name, \
                count(*)::bigint AS executions, \
                coalesce(sum(e.input_tokens), 0)::bigint AS input_tokens, \
                coalesce(sum(e.output_tokens), 0)::bigint AS output_tokens, \
                coalesce(sum(e.cost_micros), 0)::bigint AS cost_micros, \
                coalesce(bool_or(e.cost_estimated), false) AS cost_estimated \
         FROM executions e{joins} \
         WHERE e.user_id = $1 \
           AND ($2::timestamptz IS NULL OR e.created_at >= $2) \
           AND ($3::timestamptz IS NULL OR e.created_at < $3){grouping} \
         LIMIT $4",
        select[0], select[1], select[2], select[3], select[4], select[5], select[6]
    );
    diesel::sql_query(sql)
        .bind::<diesel::sql_types::Uuid, _>(user_id)
        .bind::<Nullable<Timestamptz>, _>(since)
        .bind::<Nullable<Timestamptz>, _>(until)
        .bind::<BigInt, _>(limit)
        .load(conn)
        .await
}
