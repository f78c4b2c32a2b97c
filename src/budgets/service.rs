//! Budget rules. A budget holds a monthly spend limit (exact money) and/or a per-run token cap,
//! on the account, one API key or one agent; an admin may also set a user's ceiling, which the
//! user cannot change. Every budget covering a run applies:
//!
//! - **At start** a run is refused with BUDGET_EXCEEDED when a covering budget's month is spent
//!   (spend ≥ limit), or when its input alone would pass a token cap.
//! - **While streaming** the runner meters the run ([`Allowance::overrun`]): its tokens so far
//!   (reported by the provider for finished turns, estimated for the turn under way) and their
//!   price. The run is stopped, FAILED with the budget's reason and its output so far kept, as
//!   soon as it would pass a token cap or what is left of a monthly limit.
//! - **At the end** the run's cost is charged to every covering budget in the transaction that
//!   records it ([`model::charge`]); a month is the calendar month in UTC.
//!
//! Concurrent runs each see the spend as it was when they started, so the runs under way
//! together (at most `AGENTRY_MAX_CONCURRENT_EXECUTIONS`) may pass a monthly limit between
//! them; the next run is refused.

use chrono::{NaiveTime, Utc};
use diesel_async::AsyncConnection;
use serde_json::json;
use uuid::Uuid;

use crate::{
    budgets::model::{self, BudgetRow, BudgetScope, CoveringRow, Target},
    db::schema::budgets,
    error::{AppError, AppResult, unique_or},
    llm::pricing::exact_usd,
    request::{RequestMeta, Viewer},
    state::AppState,
    users::{audit, model::Role},
    webhooks::model::WebhookEvent,
};

/// Largest monthly limit: USD 1,000,000.
pub const MAX_MONTHLY_LIMIT_MICROS: i64 = 1_000_000_000_000;
/// Largest per-run token cap.
pub const MAX_RUN_TOKEN_LIMIT: i64 = 1_000_000_000;

/// An amount of USD written as a decimal (`"12"`, `"0.50"`, `"0.000001"`: at most six
/// decimals, no sign, no exponent) in micro-dollars, exactly. BAD_USER_INPUT on `field`.
pub fn parse_usd(field: &str, text: &str) -> AppResult<i64> {
    let text = text.trim();
    let rule = || {
        AppError::bad_input(
            field,
            format!(
                "`{text}` is not an amount of USD: write a decimal like \"25\" or \"0.50\", \
                 with at most 6 decimals"
            ),
        )
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((text, ""));
    if whole.is_empty()
        || whole.len() > 7
        || !whole.bytes().all(|b| b.is_ascii_digit())
        || fraction.len() > 6
        || !fraction.bytes().all(|b| b.is_ascii_digit())
        || (text.contains('.') && fraction.is_empty())
    {
        return Err(rule());
    }
    let whole: i64 = whole.parse().map_err(|_| rule())?;
    let fraction: i64 = format!("{fraction:0<6}").parse().map_err(|_| rule())?;
    let micros = whole * 1_000_000 + fraction;
    if micros > MAX_MONTHLY_LIMIT_MICROS {
        return Err(AppError::bad_input(
            field,
            format!(
                "must be at most {} USD",
                exact_usd(MAX_MONTHLY_LIMIT_MICROS)
            ),
        ));
    }
    Ok(micros)
}

/// The limits of a budget, checked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Most a month may cost, in micro-dollars.
    pub monthly_limit_micros: Option<i64>,
    /// Most tokens one run may use.
    pub run_token_limit: Option<i64>,
}

impl Limits {
    /// Reads the limits given as `<prefix>.monthlyLimit` (USD, a decimal string) and
    /// `<prefix>.runTokenLimit`; at least one must be given.
    pub fn parse(prefix: &str, monthly: Option<&str>, tokens: Option<i64>) -> AppResult<Self> {
        let monthly_limit_micros = monthly
            .map(|m| parse_usd(&format!("{prefix}.monthlyLimit"), m))
            .transpose()?;
        if let Some(tokens) = tokens
            && !(1..=MAX_RUN_TOKEN_LIMIT).contains(&tokens)
        {
            return Err(AppError::bad_input(
                format!("{prefix}.runTokenLimit"),
                format!("must be between 1 and {MAX_RUN_TOKEN_LIMIT}"),
            ));
        }
        if monthly_limit_micros.is_none() && tokens.is_none() {
            return Err(AppError::bad_input(
                prefix,
                "set monthlyLimit, runTokenLimit or both (to remove a budget, delete it)",
            ));
        }
        Ok(Self {
            monthly_limit_micros,
            run_token_limit: tokens,
        })
    }
}

/// The viewer's budgets, the admin's ceiling first.
pub async fn list(state: &AppState, viewer: &Viewer) -> AppResult<Vec<BudgetRow>> {
    let mut conn = state.pool.get().await?;
    Ok(model::list_of(&mut conn, viewer.id()).await?)
}

/// Sets the viewer's budget on `scope` (the key or agent named for API_KEY and AGENT), creating
/// it or replacing its limits. A new budget starts with what its target has already cost this
/// month.
pub async fn set(
    state: &AppState,
    viewer: &Viewer,
    scope: BudgetScope,
    api_key_id: Option<Uuid>,
    agent_id: Option<Uuid>,
    limits: Limits,
) -> AppResult<BudgetRow> {
    let user_id = viewer.id();
    let mut conn = state.pool.get().await?;
    let target = match scope {
        BudgetScope::User => {
            for (field, id) in [("input.apiKeyId", api_key_id), ("input.agentId", agent_id)] {
                if id.is_some() {
                    return Err(AppError::bad_input(
                        field,
                        "must be left out for a USER budget",
                    ));
                }
            }
            Target {
                scope,
                api_key_id: None,
                agent_id: None,
            }
        }
        BudgetScope::ApiKey => {
            if agent_id.is_some() {
                return Err(AppError::bad_input(
                    "input.agentId",
                    "must be left out for an API_KEY budget",
                ));
            }
            let id = api_key_id.ok_or_else(|| {
                AppError::bad_input("input.apiKeyId", "is required for an API_KEY budget")
            })?;
            crate::api_keys::model::find_owned(&mut conn, user_id, id)
                .await?
                .ok_or_else(|| AppError::bad_input("input.apiKeyId", "no such API key"))?;
            Target {
                scope,
                api_key_id: Some(id),
                agent_id: None,
            }
        }
        BudgetScope::Agent => {
            if api_key_id.is_some() {
                return Err(AppError::bad_input(
                    "input.apiKeyId",
                    "must be left out for an AGENT budget",
                ));
            }
            let id = agent_id.ok_or_else(|| {
                AppError::bad_input("input.agentId", "is required for an AGENT budget")
            })?;
            crate::agents::model::find_owned(&mut conn, user_id, id)
                .await?
                .ok_or_else(|| AppError::bad_input("input.agentId", "no such agent"))?;
            Target {
                scope,
                api_key_id: None,
                agent_id: Some(id),
            }
        }
    };
    upsert(&mut conn, user_id, target, false, limits).await
}

/// Creates or updates the budget of `user_id` on `target` by that setter.
async fn upsert(
    conn: &mut diesel_async::AsyncPgConnection,
    user_id: Uuid,
    target: Target,
    set_by_admin: bool,
    limits: Limits,
) -> AppResult<BudgetRow> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let month = model::month_of(Utc::now());
    let since = month.and_time(NaiveTime::MIN).and_utc();
    conn.transaction::<_, AppError, _>(async move |conn| {
        if let Some(existing) =
            model::find_target_for_update(conn, user_id, target, set_by_admin).await?
        {
            // The alerts start over from the month's spend against the new limit: raising it
            // after an alert lets the next crossing alert again; adding one does not alert for
            // money spent before it existed.
            let alerted = alert_level(limits.monthly_limit_micros, existing.spent_in(month));
            return Ok(diesel::update(budgets::table.find(existing.id))
                .set((
                    budgets::monthly_limit_micros.eq(limits.monthly_limit_micros),
                    budgets::run_token_limit.eq(limits.run_token_limit),
                    budgets::alerted_percent.eq(alerted),
                    budgets::updated_at.eq(diesel::dsl::now),
                ))
                .returning(BudgetRow::as_returning())
                .get_result(conn)
                .await?);
        }
        let spent = model::spent_since(conn, user_id, target, since).await?;
        // Already at a level: no alert for what was spent before the budget existed.
        let alerted = alert_level(limits.monthly_limit_micros, spent);
        diesel::insert_into(budgets::table)
            .values((
                budgets::id.eq(Uuid::now_v7()),
                budgets::user_id.eq(user_id),
                budgets::scope.eq(target.scope),
                budgets::api_key_id.eq(target.api_key_id),
                budgets::agent_id.eq(target.agent_id),
                budgets::set_by_admin.eq(set_by_admin),
                budgets::monthly_limit_micros.eq(limits.monthly_limit_micros),
                budgets::run_token_limit.eq(limits.run_token_limit),
                budgets::spent_month.eq(month),
                budgets::spent_micros.eq(spent),
                budgets::alerted_percent.eq(alerted),
            ))
            .returning(BudgetRow::as_returning())
            .get_result(conn)
            .await
            .map_err(unique_or(|| {
                AppError::Conflict("the budget was set at the same time: try again".into())
            }))
    })
    .await
}

/// The alert level (0, 80, 100) `spent` has reached of `limit`.
fn alert_level(limit: Option<i64>, spent: i64) -> i32 {
    match limit {
        Some(limit) if spent >= limit => 100,
        Some(limit) if spent.saturating_mul(5) >= limit.saturating_mul(4) => 80,
        _ => 0,
    }
}

/// Deletes one of the viewer's budgets. A ceiling an admin set is FORBIDDEN.
pub async fn delete(state: &AppState, viewer: &Viewer, id: Uuid) -> AppResult<bool> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let mut conn = state.pool.get().await?;
    let budget = model::find_owned(&mut conn, viewer.id(), id)
        .await?
        .ok_or(AppError::NotFound { what: "budget" })?;
    if budget.set_by_admin {
        return Err(AppError::Forbidden(
            "this ceiling was set by an admin: only an admin can change or remove it".into(),
        ));
    }
    diesel::delete(budgets::table.find(budget.id))
        .execute(&mut conn)
        .await?;
    Ok(true)
}

/// Checks that `actor` (ADMIN or OWNER) may set `user_id`'s ceiling: nobody acts on someone
/// above them.
async fn ceiling_target(
    conn: &mut diesel_async::AsyncPgConnection,
    actor: &Viewer,
    user_id: Uuid,
) -> AppResult<()> {
    if user_id == actor.id() {
        return Err(AppError::bad_input(
            "userId",
            "you cannot set or remove your own ceiling: another admin or an owner must",
        ));
    }
    let user = crate::users::model::find_user(conn, user_id)
        .await?
        .ok_or(AppError::NotFound { what: "user" })?;
    if user.role > actor.user.role {
        return Err(AppError::Forbidden(format!(
            "a {} cannot set an {}'s ceiling",
            actor.user.role.as_str().to_lowercase(),
            user.role.as_str().to_lowercase()
        )));
    }
    Ok(())
}

/// Sets the ceiling of `user_id` (ADMIN or OWNER): a USER budget the user cannot change,
/// applied besides their own. Audited.
pub async fn set_ceiling(
    state: &AppState,
    meta: &RequestMeta,
    actor: &Viewer,
    user_id: Uuid,
    limits: Limits,
) -> AppResult<BudgetRow> {
    let mut conn = state.pool.get().await?;
    ceiling_target(&mut conn, actor, user_id).await?;
    let target = Target {
        scope: BudgetScope::User,
        api_key_id: None,
        agent_id: None,
    };
    let actor_id = actor.id();
    // The change and its audit entry are kept together or not at all.
    conn.transaction::<_, AppError, _>(async move |conn| {
        let row = upsert(conn, user_id, target, true, limits).await?;
        audit::record(
            conn,
            Some(meta),
            Some(actor_id),
            audit::actions::CEILING_SET,
            Some(user_id),
            json!({
                "monthlyLimit": limits.monthly_limit_micros.map(exact_usd),
                "runTokenLimit": limits.run_token_limit,
            }),
        )
        .await?;
        Ok(row)
    })
    .await
}

/// Removes the ceiling of `user_id` (ADMIN or OWNER); false when there was none. Audited.
pub async fn remove_ceiling(
    state: &AppState,
    meta: &RequestMeta,
    actor: &Viewer,
    user_id: Uuid,
) -> AppResult<bool> {
    use diesel::prelude::*;
    use diesel_async::RunQueryDsl;
    let mut conn = state.pool.get().await?;
    ceiling_target(&mut conn, actor, user_id).await?;
    let actor_id = actor.id();
    conn.transaction::<_, AppError, _>(async move |conn| {
        let removed = diesel::delete(
            budgets::table
                .filter(budgets::user_id.eq(user_id))
                .filter(budgets::set_by_admin.eq(true)),
        )
        .execute(conn)
        .await?;
        if removed > 0 {
            audit::record(
                conn,
                Some(meta),
                Some(actor_id),
                audit::actions::CEILING_REMOVE,
                Some(user_id),
                json!({}),
            )
            .await?;
        }
        Ok(removed > 0)
    })
    .await
}

/// The ceiling an admin set for `user_id`, as the viewer may see it (the user themselves, or
/// an admin).
pub async fn ceiling_of(
    state: &AppState,
    viewer: &Viewer,
    user_id: Uuid,
) -> AppResult<Option<BudgetRow>> {
    if viewer.id() != user_id && viewer.role() < Role::Admin {
        return Err(AppError::Forbidden(
            "only the user themselves and admins may read a user's ceiling".into(),
        ));
    }
    let mut conn = state.pool.get().await?;
    let rows = model::list_of(&mut conn, user_id).await?;
    Ok(rows.into_iter().find(|b| b.set_by_admin))
}

/// Charges the cost of a run that just ended to every budget of the user covering it, in the
/// caller's transaction (the one that records the cost); returns the budgets whose spend reached
/// a new alert level (80 or 100 percent of the monthly limit) with it.
pub async fn charge(
    conn: &mut diesel_async::AsyncPgConnection,
    user_id: Uuid,
    api_key_id: Option<Uuid>,
    agent_id: Uuid,
    cost_micros: i64,
    month: chrono::NaiveDate,
) -> diesel::QueryResult<Vec<model::Crossing>> {
    model::charge(conn, user_id, api_key_id, agent_id, cost_micros, month).await
}

/// The webhook event and data of a budget that reached an alert level with the run `execution_id`.
pub fn alert(crossing: &model::Crossing, execution_id: Uuid) -> (WebhookEvent, serde_json::Value) {
    let budget = &crossing.budget;
    let event = if budget.alerted_percent >= 100 {
        WebhookEvent::BudgetExceeded
    } else {
        WebhookEvent::BudgetWarning
    };
    let data = json!({
        "budgetId": budget.id,
        "scope": budget.scope.as_str(),
        "apiKeyId": budget.api_key_id,
        "agentId": budget.agent_id,
        "setByAdmin": budget.set_by_admin,
        "percent": budget.alerted_percent,
        "monthlyLimit": budget.monthly_limit_micros.map(exact_usd),
        "spentThisMonth": exact_usd(budget.spent_micros),
        "periodStart": budget.spent_month.to_string(),
        "executionId": execution_id,
    });
    (event, data)
}

/// One budget's hold on a run.
#[derive(Debug, Clone)]
struct Hold {
    /// Whose budget, in words (`API key "Work"`).
    label: String,
    /// The monthly limit and what was spent of it when the run started, in micro-dollars.
    money: Option<(i64, i64)>,
    /// The per-run token cap.
    run_tokens: Option<i64>,
    /// Set by an admin (the user cannot change it).
    ceiling: bool,
}

/// The budgets covering one run, as they stood when it started.
#[derive(Debug, Clone, Default)]
pub struct Allowance {
    holds: Vec<Hold>,
}

impl Allowance {
    /// The budgets of `user_id` covering a run of `agent_id` on `api_key_id` (one statement).
    pub async fn of_run(
        conn: &mut diesel_async::AsyncPgConnection,
        user_id: Uuid,
        api_key_id: Uuid,
        agent_id: Uuid,
    ) -> AppResult<Self> {
        let month = model::month_of(Utc::now());
        let rows = model::covering(conn, user_id, api_key_id, agent_id).await?;
        Ok(Self {
            holds: rows.iter().map(|row| hold(row, month)).collect(),
        })
    }

    /// Whether no budget covers the run.
    pub fn is_unlimited(&self) -> bool {
        self.holds.is_empty()
    }

    /// BUDGET_EXCEEDED when a covering budget's month is spent, or when the run's first request
    /// alone (about `input_tokens`, costing `input_cost_micros` when the model has a price)
    /// passes a token cap or what is left of a monthly limit.
    pub fn admit(&self, input_tokens: i64, input_cost_micros: Option<i64>) -> AppResult<()> {
        for hold in &self.holds {
            // A model without a price would spend nothing on the meter: under an admin's money
            // ceiling that would be a way around it, so such a run is refused.
            if hold.ceiling && hold.money.is_some() && input_cost_micros.is_none() {
                return Err(AppError::BudgetExceeded(format!(
                    "the model has no price in the pricing table, so {} (a monthly limit) \
                     cannot be kept: choose a priced model, or ask an admin",
                    hold.label
                )));
            }
            if let Some((limit, spent)) = hold.money
                && spent >= limit
            {
                let remedy = if hold.ceiling {
                    "ask an admin to raise it"
                } else {
                    "raise it with setBudget"
                };
                return Err(AppError::BudgetExceeded(format!(
                    "the monthly budget of {} is spent: USD {} of USD {} this month (it resets \
                     on the 1st, UTC); {remedy}",
                    hold.label,
                    exact_usd(spent),
                    exact_usd(limit)
                )));
            }
            if let (Some((limit, spent)), Some(cost)) = (hold.money, input_cost_micros)
                && spent.saturating_add(cost) > limit
            {
                return Err(AppError::BudgetExceeded(format!(
                    "the run's input alone would cost about USD {}, more than the USD {} left \
                     this month of the monthly budget of {}",
                    exact_usd(cost),
                    exact_usd(limit - spent),
                    hold.label
                )));
            }
            if let Some(cap) = hold.run_tokens
                && input_tokens > cap
            {
                return Err(AppError::BudgetExceeded(format!(
                    "the input alone is about {input_tokens} tokens, over the per-run cap of \
                     {cap} tokens of {}",
                    hold.label
                )));
            }
        }
        Ok(())
    }

    /// The most output tokens the next model turn may produce: under every token cap after
    /// `tokens` used so far (the turn's request included), and within what is left of every
    /// monthly limit after `cost_micros` so far at `output_pico` per output token (when the
    /// model has a price). `None` when no budget limits it. The runner lowers the request's
    /// `max_tokens` to it, so the provider itself stops there.
    pub fn output_room(
        &self,
        tokens: i64,
        cost_micros: Option<i64>,
        output_pico: Option<i64>,
    ) -> Option<i64> {
        let mut room: Option<i64> = None;
        let mut narrow = |r: i64| room = Some(room.map_or(r, |m| m.min(r)));
        for hold in &self.holds {
            if let Some(cap) = hold.run_tokens {
                narrow(cap.saturating_sub(tokens));
            }
            if let (Some((limit, spent)), Some(cost), Some(pico)) =
                (hold.money, cost_micros, output_pico)
                && pico > 0
            {
                let left_pico =
                    i128::from(limit.saturating_sub(spent).saturating_sub(cost)) * 1_000_000;
                narrow(i64::try_from(left_pico / i128::from(pico)).unwrap_or(i64::MAX));
            }
        }
        room.map(|r| r.max(0))
    }

    /// Why a run that has used `tokens` so far, costing `cost_micros` (when the model has a
    /// price), must stop: it passed a token cap, or what was left of a monthly limit.
    pub fn overrun(&self, tokens: i64, cost_micros: Option<i64>) -> Option<String> {
        for hold in &self.holds {
            if let Some(cap) = hold.run_tokens
                && tokens > cap
            {
                return Some(format!(
                    "budget exceeded: the run passed the per-run cap of {cap} tokens of {}; \
                     the output so far is kept",
                    hold.label
                ));
            }
            if let (Some((limit, spent)), Some(cost)) = (hold.money, cost_micros)
                && spent.saturating_add(cost) > limit
            {
                return Some(format!(
                    "budget exceeded: the run would pass the monthly budget of {} (USD {} of \
                     USD {} was left when it started); the output so far is kept",
                    hold.label,
                    exact_usd((limit - spent).max(0)),
                    exact_usd(limit)
                ));
            }
        }
        None
    }
}

/// The hold of one covering budget.
fn hold(row: &CoveringRow, month: chrono::NaiveDate) -> Hold {
    let budget = &row.budget;
    let label = match (budget.scope, budget.set_by_admin) {
        (BudgetScope::User, true) => "your account's ceiling (set by an admin)".to_owned(),
        (BudgetScope::User, false) => "your account".to_owned(),
        (BudgetScope::ApiKey, _) => format!(
            "API key `{}`",
            row.key_name.as_deref().unwrap_or("(deleted)")
        ),
        (BudgetScope::Agent, _) => format!(
            "agent `{}`",
            row.agent_name.as_deref().unwrap_or("(deleted)")
        ),
    };
    Hold {
        label,
        money: budget
            .monthly_limit_micros
            .map(|limit| (limit, budget.spent_in(month))),
        run_tokens: budget.run_token_limit,
        ceiling: budget.set_by_admin,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_of_usd_parse_exactly_or_name_the_rule() {
        assert_eq!(parse_usd("f", "25").unwrap(), 25_000_000);
        assert_eq!(parse_usd("f", "0.50").unwrap(), 500_000);
        assert_eq!(parse_usd("f", "0.000001").unwrap(), 1);
        assert_eq!(
            parse_usd("f", " 1000000 ").unwrap(),
            MAX_MONTHLY_LIMIT_MICROS
        );
        assert_eq!(parse_usd("f", "0").unwrap(), 0);
        for bad in [
            "",
            "-1",
            "1e3",
            "0.0000001",
            "1.",
            ".5",
            "1,5",
            "abc",
            "1000000.01",
            "+2",
        ] {
            let err = parse_usd("input.monthlyLimit", bad).unwrap_err();
            assert!(
                matches!(&err, AppError::BadInput { field, .. } if field == "input.monthlyLimit"),
                "{bad}: {err:?}"
            );
        }
    }

    #[test]
    fn money_passes_the_limit_only_beyond_it_and_tokens_only_beyond_the_cap() {
        let allowance = Allowance {
            holds: vec![Hold {
                label: "your account".into(),
                money: Some((1_000_000, 400_000)),
                run_tokens: Some(100),
                ceiling: false,
            }],
        };
        assert!(allowance.admit(100, Some(600_000)).is_ok());
        assert!(allowance.admit(101, None).is_err());
        assert!(allowance.admit(10, Some(600_001)).is_err());
        assert_eq!(allowance.overrun(100, Some(600_000)), None);
        assert!(allowance.overrun(100, Some(600_001)).is_some());
        assert!(allowance.overrun(101, Some(0)).is_some());
        // A model without a price is held by its token cap only.
        assert_eq!(allowance.overrun(50, None), None);
        let spent = Allowance {
            holds: vec![Hold {
                label: "agent `x`".into(),
                money: Some((1_000_000, 1_000_000)),
                run_tokens: None,
                ceiling: false,
            }],
        };
        let err = spent.admit(1, None).unwrap_err();
        assert_eq!(err.code().as_str(), "BUDGET_EXCEEDED");
        assert!(err.message().contains("USD 1.000000 of USD 1.000000"));
    }

    #[test]
    fn the_output_room_is_the_tightest_of_the_token_caps_and_the_money_left() {
        let allowance = Allowance {
            holds: vec![
                Hold {
                    label: "a".into(),
                    money: Some((1_000, 400)),
                    run_tokens: None,
                    ceiling: false,
                },
                Hold {
                    label: "b".into(),
                    money: None,
                    run_tokens: Some(500),
                    ceiling: false,
                },
            ],
        };
        // 600 micro-dollars left minus 100 spent by this run, at 10 micro-dollars a token: 50.
        assert_eq!(
            allowance.output_room(100, Some(100), Some(10_000_000)),
            Some(50)
        );
        // Unpriced: only the token cap holds it.
        assert_eq!(allowance.output_room(100, None, None), Some(400));
        assert_eq!(allowance.output_room(600, None, None), Some(0));
        assert_eq!(
            Allowance::default().output_room(100, Some(1), Some(1)),
            None
        );
        // An admin's money ceiling refuses unpriced models outright.
        let ceiling = Allowance {
            holds: vec![Hold {
                label: "c".into(),
                money: Some((1_000, 0)),
                run_tokens: None,
                ceiling: true,
            }],
        };
        assert!(ceiling.admit(10, None).is_err());
        assert!(ceiling.admit(10, Some(1)).is_ok());
    }
}
