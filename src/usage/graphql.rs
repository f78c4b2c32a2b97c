//! GraphQL for usage reports: `User.usage` (on `me`, and on any `User` for admins).

use async_graphql::{ID, Object};
use chrono::{DateTime, Utc};

use crate::{
    llm::pricing::exact_usd,
    usage::{
        model::{UsageGroup, UsageRow},
        service::Report,
    },
};

/// Runs, tokens and cost of a set of runs.
pub struct UsageTotals(UsageRow);

#[Object]
impl UsageTotals {
    /// Number of runs.
    async fn executions(&self) -> i64 {
        self.0.executions
    }
    /// Prompt tokens.
    async fn input_tokens(&self) -> i64 {
        self.0.input_tokens
    }
    /// Completion tokens.
    async fn output_tokens(&self) -> i64 {
        self.0.output_tokens
    }
    /// Cost in USD, exactly, as a decimal string (`"1.234567"`): summed in micro-dollars.
    async fn cost(&self) -> String {
        exact_usd(self.0.cost_micros)
    }
    /// Cost in USD as a number (for charts; `cost` is exact).
    async fn cost_usd(&self) -> f64 {
        self.0.cost_micros as f64 / 1_000_000.0
    }
    /// Whether some run's tokens or price were estimated.
    async fn cost_estimated(&self) -> bool {
        self.0.cost_estimated
    }
}

/// One group of a usage report: the dimensions it was grouped by (the others are null) and its
/// totals.
pub struct UsageGroupRow(UsageRow);

#[Object]
impl UsageGroupRow {
    /// Start of the UTC day (DAY).
    async fn day(&self) -> Option<DateTime<Utc>> {
        self.0.day
    }
    /// The agent (AGENT).
    async fn agent_id(&self) -> Option<ID> {
        self.0.agent_id.map(|id| ID(id.to_string()))
    }
    /// The agent's name (AGENT).
    async fn agent_name(&self) -> Option<&str> {
        self.0.agent_name.as_deref()
    }
    /// The model (MODEL).
    async fn model(&self) -> Option<&str> {
        self.0.model.as_deref()
    }
    /// The provider (PROVIDER).
    async fn provider(&self) -> Option<&str> {
        self.0.provider.as_deref()
    }
    /// The API key (API_KEY; null within that grouping for runs whose key was deleted).
    async fn api_key_id(&self) -> Option<ID> {
        self.0.api_key_id.map(|id| ID(id.to_string()))
    }
    /// The API key's name (API_KEY).
    async fn api_key_name(&self) -> Option<&str> {
        self.0.api_key_name.as_deref()
    }
    /// The group's runs, tokens and cost.
    async fn totals(&self) -> UsageTotals {
        UsageTotals(self.0.clone())
    }
}

/// A usage report over a period.
pub struct UsageReport(pub Report);

#[Object]
impl UsageReport {
    /// Start of the period (inclusive), null when open.
    async fn since(&self) -> Option<DateTime<Utc>> {
        self.0.since
    }
    /// End of the period (exclusive), null when open.
    async fn until(&self) -> Option<DateTime<Utc>> {
        self.0.until
    }
    /// The dimensions grouped by.
    async fn group_by(&self) -> &[UsageGroup] {
        &self.0.group_by
    }
    /// Everything in the period.
    async fn total(&self) -> UsageTotals {
        UsageTotals(self.0.total.clone())
    }
    /// One entry per group, ordered by day, agent, model, provider, key (one entry when not
    /// grouped).
    async fn groups(&self) -> Vec<UsageGroupRow> {
        self.0.groups.iter().cloned().map(UsageGroupRow).collect()
    }
}
