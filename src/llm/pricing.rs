//! The pricing table: model → USD per million input and output tokens, shipped as
//! `pricing.json` and overridable with `AGENTRY_PRICING_FILE`. Money is integer arithmetic
//! throughout: prices in pico-dollars per token, costs in micro-dollars.

use std::{collections::BTreeMap, path::Path};

use anyhow::Context;
use serde::Deserialize;

/// The table compiled into the binary.
const BUILT_IN: &str = include_str!("../../pricing.json");

/// The price of one model, per token, in pico-dollars (10⁻¹² USD).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Price {
    /// Per input (prompt) token.
    pub input_pico: i64,
    /// Per output (completion) token.
    pub output_pico: i64,
}

/// Model prices.
#[derive(Debug, Clone, Default)]
pub struct Pricing {
    models: BTreeMap<String, Price>,
}

#[derive(Deserialize)]
struct File {
    models: BTreeMap<String, FilePrice>,
}

#[derive(Deserialize)]
struct FilePrice {
    input: serde_json::Value,
    output: serde_json::Value,
}

impl Pricing {
    /// The built-in table, with `override_file` (same format) merged over it.
    pub fn load(override_file: Option<&Path>) -> anyhow::Result<Self> {
        let mut pricing = Self::parse(BUILT_IN).context("built-in pricing.json is invalid")?;
        if let Some(path) = override_file {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read AGENTRY_PRICING_FILE {}", path.display()))?;
            let extra = Self::parse(&text)
                .with_context(|| format!("AGENTRY_PRICING_FILE {} is invalid", path.display()))?;
            pricing.models.extend(extra.models);
        }
        Ok(pricing)
    }

    fn parse(text: &str) -> anyhow::Result<Self> {
        let file: File = serde_json::from_str(text)?;
        let mut models = BTreeMap::new();
        for (model, price) in file.models {
            let input = usd_per_million_to_pico(&price.input)
                .with_context(|| format!("{model}: bad input price"))?;
            let output = usd_per_million_to_pico(&price.output)
                .with_context(|| format!("{model}: bad output price"))?;
            models.insert(
                model,
                Price {
                    input_pico: input,
                    output_pico: output,
                },
            );
        }
        Ok(Self { models })
    }

    /// The price of `model`: an exact entry, else the longest entry that prefixes it.
    pub fn price(&self, model: &str) -> Option<Price> {
        if let Some(price) = self.models.get(model) {
            return Some(*price);
        }
        self.models
            .iter()
            .filter(|(name, _)| model.starts_with(name.as_str()))
            .max_by_key(|(name, _)| name.len())
            .map(|(_, price)| *price)
    }

    /// The cost in micro-dollars (rounded half up), or `None` for a model without a price.
    pub fn cost_micros(&self, model: &str, input_tokens: i64, output_tokens: i64) -> Option<i64> {
        let price = self.price(model)?;
        let pico = i128::from(input_tokens.max(0)) * i128::from(price.input_pico)
            + i128::from(output_tokens.max(0)) * i128::from(price.output_pico);
        i64::try_from((pico + 500_000) / 1_000_000).ok()
    }
}

/// Micro-dollars as an exact decimal amount of USD (`0.012345`): how money is shown where it
/// must add up (usage reports, budgets).
pub fn exact_usd(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let micros = micros.unsigned_abs();
    format!("{sign}{}.{:06}", micros / 1_000_000, micros % 1_000_000)
}

/// "2.50" (USD per million tokens) → 2_500_000 pico-dollars per token; at most 6 decimals.
fn usd_per_million_to_pico(value: &serde_json::Value) -> anyhow::Result<i64> {
    let text = match value {
        serde_json::Value::String(s) => s.trim().to_owned(),
        serde_json::Value::Number(n) => n.to_string(),
        _ => anyhow::bail!("expected a number like \"2.50\""),
    };
    let (whole, fraction) = text.split_once('.').unwrap_or((&text, ""));
    anyhow::ensure!(
        !whole.is_empty()
            && whole.bytes().all(|b| b.is_ascii_digit())
            && fraction.len() <= 6
            && fraction.bytes().all(|b| b.is_ascii_digit()),
        "`{text}` is not a non-negative decimal with at most 6 decimals"
    );
    let whole: i64 = whole.parse()?;
    let fraction: i64 = format!("{fraction:0<6}").parse()?;
    whole
        .checked_mul(1_000_000)
        .and_then(|w| w.checked_add(fraction))
        .context("price too large")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prices_parse_exactly_and_costs_round_half_up() {
        let pricing = Pricing::load(None).unwrap();
        let mini = pricing.price("gpt-4o-mini").unwrap();
        assert_eq!(
            mini,
            Price {
                input_pico: 150_000,
                output_pico: 600_000
            }
        );
        // 1,000 in at $0.15/M + 500 out at $0.60/M = $0.00015 + $0.0003 = 450 micro-dollars.
        assert_eq!(pricing.cost_micros("gpt-4o-mini", 1000, 500), Some(450));
        // 3 tokens at $0.15/M = 0.45 micro-dollars: rounds to 0; 4 tokens = 0.6 → 1.
        assert_eq!(pricing.cost_micros("gpt-4o-mini", 3, 0), Some(0));
        assert_eq!(pricing.cost_micros("gpt-4o-mini", 4, 0), Some(1));
        assert_eq!(pricing.cost_micros("no-such-model", 10, 10), None);
    }

    #[test]
    fn micro_dollars_print_as_exact_decimals() {
        assert_eq!(exact_usd(0), "0.000000");
        assert_eq!(exact_usd(12_345), "0.012345");
        assert_eq!(exact_usd(1_234_567_890), "1234.567890");
        assert_eq!(exact_usd(-5), "-0.000005");
    }

    #[test]
    fn dated_snapshots_find_their_family_by_longest_prefix() {
        let pricing = Pricing::load(None).unwrap();
        assert_eq!(
            pricing.price("gpt-4o-mini-2024-07-18"),
            pricing.price("gpt-4o-mini")
        );
        assert_eq!(pricing.price("gpt-4o-2024-08-06"), pricing.price("gpt-4o"));
        assert_eq!(
            pricing.price("claude-sonnet-4-20250514"),
            pricing.price("claude-sonnet-4")
        );
    }

    #[test]
    fn an_override_file_adds_and_replaces_prices() {
        let path = std::env::temp_dir().join(format!("pricing-{}.json", uuid::Uuid::new_v4()));
        std::fs::write(&path, r#"{"models": {"gpt-4o": {"input": 1, "output": "2.000001"}, "local-llama": {"input": "0", "output": "0"}}}"#).unwrap();
        let pricing = Pricing::load(Some(&path)).unwrap();
        assert_eq!(
            pricing.price("gpt-4o"),
            Some(Price {
                input_pico: 1_000_000,
                output_pico: 2_000_001
            })
        );
        assert_eq!(pricing.cost_micros("local-llama", 100, 100), Some(0));
        std::fs::write(
            &path,
            r#"{"models": {"x": {"input": "-1", "output": "1"}}}"#,
        )
        .unwrap();
        assert!(Pricing::load(Some(&path)).is_err());
        let _ = std::fs::remove_file(path);
    }
}
