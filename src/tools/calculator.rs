//! CALCULATOR: arithmetic evaluated by the `evalexpr` crate (no hand-written parser), with an
//! empty, read-only context: numbers, operators, comparisons and its built-in math functions
//! (`math::sqrt`, `math::ln`, `floor`, `min` …), no variables kept between calls, no I/O.

use evalexpr::{DefaultNumericTypes, HashMapContext, Value};
use serde_json::json;

use crate::llm::provider::ToolSpec;

/// Longest expression accepted.
const MAX_LEN: usize = 1000;
/// Deepest nesting of parentheses accepted (evaluation recurses once per level).
const MAX_DEPTH: usize = 64;

/// The `calculator` function.
pub fn spec() -> ToolSpec {
    ToolSpec {
        name: "calculator",
        description: "Evaluate an arithmetic expression exactly and return the result. \
            Supports + - * / % ^ (power), parentheses, comparisons, and functions such as \
            math::sqrt(x), math::ln(x), math::sin(x), floor(x), round(x), min(a, b), max(a, b). \
            Integers are exact; write 2.0 instead of 2 for a fractional division.",
        parameters: json!({
            "type": "object",
            "properties": {
                "expression": {"type": "string", "description": "e.g. (1234 * 5.5) / 3"}
            },
            "required": ["expression"],
            "additionalProperties": false
        }),
    }
}

/// Evaluates `expression` on the blocking pool, where a panic inside the evaluator (some of
/// its built-ins can panic on odd input) becomes an error for the model instead of ending the
/// runner.
pub async fn evaluate_apart(expression: String) -> Result<String, String> {
    tokio::task::spawn_blocking(move || evaluate(&expression))
        .await
        .unwrap_or_else(|_| Err("the expression could not be evaluated".into()))
}

/// Evaluates `expression`; the error says what is wrong with it.
pub fn evaluate(expression: &str) -> Result<String, String> {
    let expression = expression.trim();
    if expression.is_empty() {
        return Err("the expression is empty".into());
    }
    if expression.len() > MAX_LEN {
        return Err(format!(
            "the expression is longer than {MAX_LEN} characters"
        ));
    }
    let mut depth = 0usize;
    for c in expression.chars() {
        match c {
            '(' => {
                depth += 1;
                if depth > MAX_DEPTH {
                    return Err(format!(
                        "the expression nests parentheses deeper than {MAX_DEPTH}"
                    ));
                }
            }
            ')' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    let context = HashMapContext::<DefaultNumericTypes>::new();
    match evalexpr::eval_with_context(expression, &context) {
        Ok(Value::Float(f)) if !f.is_finite() => Err(format!("the result is not finite ({f})")),
        Ok(Value::Empty) => Err("the expression has no value".into()),
        Ok(value) => Ok(value.to_string()),
        Err(e) => Err(format!("cannot evaluate `{expression}`: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arithmetic_is_evaluated_and_nonsense_is_refused_with_a_reason() {
        assert_eq!(evaluate("(1234 * 5) / 2").as_deref(), Ok("3085"));
        assert_eq!(evaluate("2 ^ 10").as_deref(), Ok("1024"));
        assert_eq!(evaluate("math::sqrt(16)").as_deref(), Ok("4"));
        assert!(evaluate("1 / 0").is_err());
        assert!(
            evaluate("x = 3").is_err(),
            "no assignments in a read-only context"
        );
        assert!(evaluate(&"(".repeat(100)).unwrap_err().contains("deeper"));
        assert!(evaluate("").is_err());
    }

    #[tokio::test]
    async fn a_panic_inside_the_evaluator_is_an_error_not_a_crash() {
        // evalexpr's `str::substring` slices by byte: inside a character it panics.
        let result = evaluate_apart(r#"str::substring("é", 0, 1)"#.into()).await;
        assert!(result.is_err(), "{result:?}");
    }
}
