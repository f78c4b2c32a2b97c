//! GraphQL for budgets: `budgets`, `setBudget`, `deleteBudget`, and the admin's
//! `setUserCeiling` / `removeUserCeiling` (read back as `User.ceiling`). Money is an exact
//! decimal string of USD, as in usage reports.

use async_graphql::{Context, ID, InputObject, Object};
use chrono::{DateTime, NaiveTime, Utc};

use crate::{
    agents::graphql::Agent,
    api_keys::graphql::ApiKey,
    budgets::{
        model::{BudgetRow, BudgetScope, month_of},
        service::{self, Limits},
    },
    graphql::{guards::RoleGuard, loaders::Loaders, parse_id, request_context, state},
    llm::pricing::exact_usd,
};

/// A spend budget: a monthly limit in USD and/or a per-run token cap, on your account, one API
/// key or one agent. A run is refused (BUDGET_EXCEEDED) when a budget covering it is spent, and
/// stopped (FAILED, output kept) when it would pass one.
pub struct Budget(pub BudgetRow);

#[Object]
impl Budget {
    /// Stable id.
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    /// What it covers.
    async fn scope(&self) -> BudgetScope {
        self.0.scope
    }
    /// The key, for an API_KEY budget.
    async fn api_key(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<ApiKey>> {
        let Some(id) = self.0.api_key_id else {
            return Ok(None);
        };
        Ok(ctx
            .data::<Loaders>()?
            .api_keys
            .load_one(id)
            .await?
            .map(ApiKey::own))
    }
    /// The agent, for an AGENT budget.
    async fn agent(&self, ctx: &Context<'_>) -> async_graphql::Result<Option<Agent>> {
        let Some(id) = self.0.agent_id else {
            return Ok(None);
        };
        Agent::by_id(ctx, id).await
    }
    /// Whether an admin set it as the account's ceiling (only an admin can change it).
    async fn set_by_admin(&self) -> bool {
        self.0.set_by_admin
    }
    /// Most a calendar month (UTC) may cost, in USD, exactly (`"25.000000"`); null for no limit.
    async fn monthly_limit(&self) -> Option<String> {
        self.0.monthly_limit_micros.map(exact_usd)
    }
    /// Most tokens (input and output, over all of a run's turns) one run may use; null for no
    /// cap.
    async fn run_token_limit(&self) -> Option<i64> {
        self.0.run_token_limit
    }
    /// What the runs it covers cost this month, in USD, exactly.
    async fn spent_this_month(&self) -> String {
        exact_usd(self.0.spent_in(month_of(Utc::now())))
    }
    /// What is left of the monthly limit, in USD, exactly (never below zero); null for no limit.
    async fn remaining_this_month(&self) -> Option<String> {
        let spent = self.0.spent_in(month_of(Utc::now()));
        self.0
            .monthly_limit_micros
            .map(|limit| exact_usd((limit - spent).max(0)))
    }
    /// Start of the month being counted (the 1st, 00:00 UTC).
    async fn period_start(&self) -> DateTime<Utc> {
        month_of(Utc::now()).and_time(NaiveTime::MIN).and_utc()
    }
    /// When it was first set.
    async fn created_at(&self) -> DateTime<Utc> {
        self.0.created_at
    }
    /// When its limits last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        self.0.updated_at
    }
}

/// A budget to set: what it covers and its limits (at least one).
#[derive(InputObject)]
pub struct SetBudgetInput {
    /// USER (every run of yours), API_KEY or AGENT.
    pub scope: BudgetScope,
    /// The key, for API_KEY.
    pub api_key_id: Option<ID>,
    /// The agent, for AGENT.
    pub agent_id: Option<ID>,
    /// Most a calendar month (UTC) may cost, in USD, as a decimal string with at most 6
    /// decimals (`"25"`, `"0.50"`).
    pub monthly_limit: Option<String>,
    /// Most tokens one run may use (input and output, over all its turns).
    pub run_token_limit: Option<i64>,
}

/// Limits of a ceiling (at least one).
#[derive(InputObject)]
pub struct BudgetLimitsInput {
    /// Most a calendar month (UTC) may cost, in USD, as a decimal string with at most 6
    /// decimals.
    pub monthly_limit: Option<String>,
    /// Most tokens one run may use.
    pub run_token_limit: Option<i64>,
}

/// Budget queries.
#[derive(Default)]
pub struct BudgetsQuery;

#[Object]
impl BudgetsQuery {
    /// Your budgets: an admin's ceiling first, then your account's, your keys' and your agents'.
    #[graphql(guard = "RoleGuard::USER")]
    async fn budgets(&self, ctx: &Context<'_>) -> async_graphql::Result<Vec<Budget>> {
        let viewer = request_context(ctx)?.viewer()?;
        let rows = service::list(state(ctx)?, viewer).await?;
        Ok(rows.into_iter().map(Budget).collect())
    }
}

/// Budget mutations.
#[derive(Default)]
pub struct BudgetsMutation;

#[Object]
impl BudgetsMutation {
    /// Sets your budget on your account, one of your keys or one of your agents: creates it,
    /// or replaces the limits of the one already there. A new budget counts what its runs have
    /// already cost this month.
    #[graphql(guard = "RoleGuard::USER")]
    async fn set_budget(
        &self,
        ctx: &Context<'_>,
        input: SetBudgetInput,
    ) -> async_graphql::Result<Budget> {
        let viewer = request_context(ctx)?.viewer()?;
        let api_key_id = input
            .api_key_id
            .map(|id| parse_id("input.apiKeyId", &id))
            .transpose()?;
        let agent_id = input
            .agent_id
            .map(|id| parse_id("input.agentId", &id))
            .transpose()?;
        let limits = Limits::parse(
            "input",
            input.monthly_limit.as_deref(),
            input.run_token_limit,
        )?;
        let row = service::set(
            state(ctx)?,
            viewer,
            input.scope,
            api_key_id,
            agent_id,
            limits,
        )
        .await?;
        Ok(Budget(row))
    }

    /// Deletes one of your budgets (not a ceiling an admin set: FORBIDDEN).
    #[graphql(guard = "RoleGuard::USER")]
    async fn delete_budget(&self, ctx: &Context<'_>, id: ID) -> async_graphql::Result<bool> {
        let viewer = request_context(ctx)?.viewer()?;
        let id = parse_id("id", &id)?;
        Ok(service::delete(state(ctx)?, viewer, id).await?)
    }

    /// Sets a user's ceiling: a monthly limit and/or per-run token cap over all their runs,
    /// applied besides their own budgets, which they cannot change. ADMIN or OWNER (admins not
    /// on owners). Audited.
    #[graphql(guard = "RoleGuard::ADMIN")]
    async fn set_user_ceiling(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
        input: BudgetLimitsInput,
    ) -> async_graphql::Result<Budget> {
        let request = request_context(ctx)?;
        let user_id = parse_id("userId", &user_id)?;
        let limits = Limits::parse(
            "input",
            input.monthly_limit.as_deref(),
            input.run_token_limit,
        )?;
        let row = service::set_ceiling(
            state(ctx)?,
            &request.meta,
            request.viewer()?,
            user_id,
            limits,
        )
        .await?;
        Ok(Budget(row))
    }

    /// Removes a user's ceiling; false when there was none. ADMIN or OWNER. Audited.
    #[graphql(guard = "RoleGuard::ADMIN")]
    async fn remove_user_ceiling(
        &self,
        ctx: &Context<'_>,
        user_id: ID,
    ) -> async_graphql::Result<bool> {
        let request = request_context(ctx)?;
        let user_id = parse_id("userId", &user_id)?;
        Ok(service::remove_ceiling(state(ctx)?, &request.meta, request.viewer()?, user_id).await?)
    }
}
