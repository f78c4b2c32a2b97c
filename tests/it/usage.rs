//! Usage reports end to end: totals checked against the runs themselves, grouping by day,
//! agent, model, provider and key, the half-open period, exact money, the rules on arguments,
//! and who may read whose usage.

use serde_json::{Value, json};

use crate::{
    common::{code, field, id_at},
    executions::{World, world_with},
};

const REPORT: &str = "query($s: DateTime, $u: DateTime, $g: [UsageGroup!]) { me { usage(since: $s, until: $u, groupBy: $g) { since until groupBy total { executions inputTokens outputTokens cost costUsd costEstimated } groups { day agentId agentName model provider apiKeyId apiKeyName totals { executions inputTokens outputTokens cost } } } } }";

/// Seeds runs of the world's user: for each (agent name, day, model, provider, input, output,
/// cost in micro-dollars) one run.
async fn seed(w: &World, runs: &[(&str, &str, &str, &str, i64, i64, i64)]) {
    for (agent, day, model, provider, input, output, cost) in runs {
        w.app
            .sql(&format!(
                "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input, \
                                         input_tokens, output_tokens, cost_micros, created_at) \
                 SELECT gen_random_uuid(), a.user_id, a.id, a.api_key_id, '{provider}', '{model}', 'SUCCEEDED', 'seed', \
                        {input}, {output}, {cost}, '{day}T12:00:00Z' \
                 FROM agents a WHERE a.user_id = '{}' AND a.name = '{agent}'",
                w.user.user_id
            ))
            .await;
    }
}

async fn report(w: &World, since: Option<&str>, until: Option<&str>, groups: &[&str]) -> Value {
    w.ask(REPORT, json!({"s": since, "u": until, "g": groups}))
        .await
}

#[tokio::test]
async fn usage_sums_the_runs_exactly_and_groups_them_by_day_agent_model_provider_and_key() {
    let w = world_with("OPENAI", "gpt-4o-mini", |_| {}).await;
    let body = w
        .ask(
            "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "Second", "role": "r", "goal": "g", "apiKeyId": w.key_id, "model": "gpt-4o"}}),
        )
        .await;
    let second = id_at(&body, &["createAgent"]);
    seed(
        &w,
        &[
            (
                "Helper",
                "2026-11-01",
                "gpt-4o-mini",
                "OPENAI",
                100,
                10,
                1_000_001,
            ),
            ("Helper", "2026-11-01", "gpt-4o-mini", "OPENAI", 200, 20, 2),
            ("Second", "2026-11-01", "gpt-4o", "OPENAI", 300, 30, 3),
            ("Second", "2026-11-02", "gpt-4o", "OPENAI", 400, 40, 999_999),
        ],
    )
    .await;
    // Two real runs through the fake provider too (12 input, 4 output tokens each).
    for _ in 0..2 {
        let id = w.start("Hello").await;
        assert_eq!(w.finished(&id).await["status"], "SUCCEEDED");
    }
    // The report's total is the sum of the runs, as the runs themselves say.
    let runs = w
        .ask(
            "{ executions(first: 100) { edges { node { inputTokens outputTokens costUsd } } } }",
            json!({}),
        )
        .await;
    let runs = runs["data"]["executions"]["edges"]
        .as_array()
        .unwrap()
        .clone();
    assert_eq!(runs.len(), 6);
    let sum = |key: &str| -> i64 { runs.iter().map(|r| r["node"][key].as_i64().unwrap()).sum() };
    let all = report(&w, None, None, &[]).await;
    let total = &all["data"]["me"]["usage"]["total"];
    assert_eq!(total["executions"], 6, "{all}");
    assert_eq!(total["inputTokens"], sum("inputTokens"));
    assert_eq!(total["outputTokens"], sum("outputTokens"));
    assert_eq!(total["inputTokens"], 1000 + 24);
    // Exact money: each run's cost is whole micro-dollars, and the total is their exact sum.
    let micros: i64 = runs
        .iter()
        .map(|r| (r["node"]["costUsd"].as_f64().unwrap() * 1_000_000.0).round() as i64)
        .sum();
    assert!(micros > 2_000_005, "the real runs cost something");
    assert_eq!(
        total["cost"],
        format!("{}.{:06}", micros / 1_000_000, micros % 1_000_000)
    );
    assert_eq!(
        all["data"]["me"]["usage"]["groups"]
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // By day and agent, within November (the real runs are today, outside it).
    let by = report(
        &w,
        Some("2026-11-01T00:00:00Z"),
        Some("2026-11-03T00:00:00Z"),
        &["DAY", "AGENT"],
    )
    .await;
    let usage = &by["data"]["me"]["usage"];
    assert_eq!(usage["groupBy"], json!(["DAY", "AGENT"]), "{by}");
    let groups: Vec<(String, String, i64, String)> = usage["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| {
            (
                g["day"].as_str().unwrap()[..10].to_owned(),
                g["agentName"].as_str().unwrap().to_owned(),
                g["totals"]["executions"].as_i64().unwrap(),
                g["totals"]["cost"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let mut expected = vec![
        (
            "2026-11-01".to_owned(),
            "Helper".to_owned(),
            2,
            "1.000003".to_owned(),
        ),
        (
            "2026-11-01".to_owned(),
            "Second".to_owned(),
            1,
            "0.000003".to_owned(),
        ),
        (
            "2026-11-02".to_owned(),
            "Second".to_owned(),
            1,
            "0.999999".to_owned(),
        ),
    ];
    // Within a day, agents come in id order (Helper was created first).
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(groups, expected);
    assert_eq!(usage["groups"][1]["agentId"], second.as_str());
    assert_eq!(
        usage["groups"][0]["model"],
        Value::Null,
        "not grouped by model"
    );
    assert_eq!(usage["total"]["executions"], 4);
    assert_eq!(usage["total"]["cost"], "2.000005");

    // The period is half-open: a run at 12:00 on the 2nd is outside [.., 2nd 12:00).
    let half = report(
        &w,
        Some("2026-11-01T00:00:00Z"),
        Some("2026-11-02T12:00:00Z"),
        &[],
    )
    .await;
    assert_eq!(half["data"]["me"]["usage"]["total"]["executions"], 3);

    // By model, provider and key.
    let by = report(
        &w,
        None,
        Some("2026-11-30T00:00:00Z"),
        &["MODEL", "PROVIDER", "API_KEY"],
    )
    .await;
    let groups = by["data"]["me"]["usage"]["groups"].as_array().unwrap();
    let models: Vec<&str> = groups
        .iter()
        .map(|g| g["model"].as_str().unwrap())
        .collect();
    assert_eq!(models, ["gpt-4o", "gpt-4o-mini"]);
    assert_eq!(groups[0]["provider"], "OPENAI");
    assert_eq!(groups[0]["apiKeyId"], w.key_id.as_str());
    assert_eq!(groups[0]["apiKeyName"], "key");
    assert_eq!(groups[1]["totals"]["inputTokens"], 300);
}

#[tokio::test]
async fn usage_arguments_are_checked_and_only_the_user_and_admins_read_it() {
    let w = world_with("OPENAI", "gpt-4o-mini", |_| {}).await;
    seed(
        &w,
        &[("Helper", "2026-11-01", "gpt-4o-mini", "OPENAI", 100, 10, 5)],
    )
    .await;
    let twice = report(&w, None, None, &["DAY", "DAY"]).await;
    assert_eq!((code(&twice), field(&twice)), ("BAD_USER_INPUT", "groupBy"));
    let null_in_list = w.ask(REPORT, json!({"g": [null]})).await;
    assert_eq!(
        code(&null_in_list),
        "GRAPHQL_VALIDATION_FAILED",
        "{null_in_list}"
    );
    let backwards = report(
        &w,
        Some("2026-11-02T00:00:00Z"),
        Some("2026-11-01T00:00:00Z"),
        &[],
    )
    .await;
    assert_eq!(
        (code(&backwards), field(&backwards)),
        ("BAD_USER_INPUT", "until")
    );

    // More than 10,000 groups is refused, naming the argument.
    w.app
        .sql(&format!(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input, created_at) \
             SELECT gen_random_uuid(), a.user_id, a.id, a.api_key_id, 'OPENAI', 'gpt-4o-mini', 'SUCCEEDED', 'seed', \
                    timestamptz '2000-01-01' + n * interval '1 day' \
             FROM agents a, generate_series(1, 10001) n WHERE a.user_id = '{}'",
            w.user.user_id
        ))
        .await;
    let too_many = report(&w, None, None, &["DAY"]).await;
    assert_eq!(
        (code(&too_many), field(&too_many)),
        ("BAD_USER_INPUT", "groupBy"),
        "{too_many}"
    );
    let by_model = report(&w, None, None, &["MODEL"]).await;
    assert_eq!(
        by_model["data"]["me"]["usage"]["total"]["executions"],
        10_002
    );
    w.app
        .sql(&format!(
            "DELETE FROM executions WHERE user_id = '{}' AND input = 'seed' AND cost_micros = 0",
            w.user.user_id
        ))
        .await;

    // Another user sees only their own (nothing), and cannot reach this user's.
    let other = w.app.register("other-usage@example.com").await;
    let theirs = w.app.gql_as(Some(&other.access), REPORT, json!({})).await;
    assert_eq!(
        theirs["data"]["me"]["usage"]["total"]["executions"], 0,
        "{theirs}"
    );
    assert_eq!(theirs["data"]["me"]["usage"]["total"]["cost"], "0.000000");
    let by_id = "query($id: ID!) { user(id: $id) { usage { total { executions cost } } } }";
    let refused = w
        .app
        .gql_as(Some(&other.access), by_id, json!({"id": w.user.user_id}))
        .await;
    assert_eq!(code(&refused), "FORBIDDEN", "{refused}");
    // An admin reads anyone's.
    w.app
        .sql(&format!(
            "UPDATE users SET role = 'ADMIN' WHERE id = '{}'",
            other.user_id
        ))
        .await;
    let admin = w
        .app
        .gql_as(Some(&other.access), by_id, json!({"id": w.user.user_id}))
        .await;
    assert_eq!(
        admin["data"]["user"]["usage"]["total"],
        json!({"executions": 1, "cost": "0.000005"}),
        "{admin}"
    );
}
