//! Usage rules: a user reads their own usage, admins anyone's; the period is half-open
//! `[since, until)` by the time each run was accepted; groups are distinct dimensions; a report
//! has at most [`MAX_GROUPS`] groups (narrow the period or group by less).

use chrono::{DateTime, Utc};
use uuid::Uuid;

use crate::{
    error::{AppError, AppResult},
    request::Viewer,
    state::AppState,
    usage::model::{self, UsageGroup, UsageRow},
    users::model::Role,
};

/// Most groups one report returns.
pub const MAX_GROUPS: usize = 10_000;

/// A usage report: the groups and their total.
#[derive(Debug, Clone)]
pub struct Report {
    /// Start of the period (inclusive), if bounded.
    pub since: Option<DateTime<Utc>>,
    /// End of the period (exclusive), if bounded.
    pub until: Option<DateTime<Utc>>,
    /// The dimensions, in the order given.
    pub group_by: Vec<UsageGroup>,
    /// One row per group, ordered by the dimensions (one row without grouping).
    pub groups: Vec<UsageRow>,
    /// Everything in the period.
    pub total: UsageRow,
}

/// The usage of user `user_id` as the viewer may see it (their own, or anyone's for an admin).
pub async fn report(
    state: &AppState,
    viewer: &Viewer,
    user_id: Uuid,
    since: Option<DateTime<Utc>>,
    until: Option<DateTime<Utc>>,
    group_by: Vec<UsageGroup>,
) -> AppResult<Report> {
    if viewer.id() != user_id && viewer.role() < Role::Admin {
        return Err(AppError::Forbidden(
            "only the user themselves and admins may read a user's usage".into(),
        ));
    }
    if let (Some(since), Some(until)) = (since, until)
        && since >= until
    {
        return Err(AppError::bad_input("until", "must be after since"));
    }
    let mut dimensions = group_by.clone();
    dimensions.sort();
    dimensions.dedup();
    if dimensions.len() != group_by.len() {
        return Err(AppError::bad_input("groupBy", "lists a dimension twice"));
    }
    let limit = i64::try_from(MAX_GROUPS + 1).unwrap_or(i64::MAX);
    let mut conn = state.pool.get().await?;
    let groups = model::report(&mut conn, user_id, since, until, &dimensions, limit).await?;
    if groups.len() > MAX_GROUPS {
        return Err(AppError::bad_input(
            "groupBy",
            format!(
                "the report would have more than {MAX_GROUPS} groups: narrow the period or group by fewer dimensions"
            ),
        ));
    }
    let mut total = UsageRow::default();
    for row in &groups {
        total.executions += row.executions;
        total.input_tokens += row.input_tokens;
        total.output_tokens += row.output_tokens;
        total.cost_micros += row.cost_micros;
        total.cost_estimated |= row.cost_estimated;
    }
    Ok(Report {
        since,
        until,
        group_by,
        groups,
        total,
    })
}
