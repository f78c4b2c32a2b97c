//! Budgets end to end: setting, replacing and deleting them with rules naming the field; a run
//! refused with BUDGET_EXCEEDED once a month is spent (to the micro-dollar) or when its input
//! alone passes a cap; runs stopped mid-stream by a token cap and by money, their output so far
//! kept; exact charging of the account's, the key's and the agent's budgets; the month
//! boundary; admins' ceilings; isolation.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    common::{code, fake_provider::StreamScript, field, id_at},
    executions::{World, world_with},
};

const SET: &str = "mutation($i: SetBudgetInput!) { setBudget(input: $i) { id scope setByAdmin monthlyLimit runTokenLimit spentThisMonth remainingThisMonth periodStart apiKey { id } agent { id } } }";
const LIST: &str = "{ budgets { id scope setByAdmin monthlyLimit runTokenLimit spentThisMonth remainingThisMonth } }";

async fn set(w: &World, input: Value) -> Value {
    w.ask(SET, json!({ "i": input })).await
}

/// Records a finished run of the world's agent, accepted now, that cost `micros`, and adds it
/// to the user's budgets as the end of a run would.
async fn seed_spend(w: &World, micros: i64) {
    w.app
        .sql(&format!(
            "UPDATE budgets SET spent_micros = spent_micros + {micros} WHERE user_id = '{}'",
            w.user.user_id
        ))
        .await;
    w.app
        .sql(&format!(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input, cost_micros) \
             SELECT gen_random_uuid(), a.user_id, a.id, a.api_key_id, 'OPENAI', a.model, 'SUCCEEDED', 'seed', {micros} \
             FROM agents a WHERE a.id = '{}'",
            w.agent_id
        ))
        .await;
}

#[tokio::test]
async fn budgets_are_set_replaced_listed_and_deleted_and_bad_input_names_the_field_and_changes_nothing()
 {
    let w = world_with("OPENAI", "gpt-4o-mini", |_| {}).await;
    seed_spend(&w, 250_000).await;
    // A new budget counts what the month has already cost.
    let body = set(&w, json!({"scope": "USER", "monthlyLimit": "1.5"})).await;
    let budget = &body["data"]["setBudget"];
    assert_eq!(budget["monthlyLimit"], "1.500000", "{body}");
    assert_eq!(budget["spentThisMonth"], "0.250000");
    assert_eq!(budget["remainingThisMonth"], "1.250000");
    assert_eq!(budget["runTokenLimit"], Value::Null);
    assert!(
        budget["periodStart"]
            .as_str()
            .unwrap()
            .ends_with("-01T00:00:00+00:00")
    );
    let id = budget["id"].as_str().unwrap().to_owned();
    // Setting it again replaces the limits of the same budget.
    let body = set(&w, json!({"scope": "USER", "runTokenLimit": 5000})).await;
    assert_eq!(body["data"]["setBudget"]["id"], id.as_str());
    assert_eq!(body["data"]["setBudget"]["monthlyLimit"], Value::Null);
    assert_eq!(body["data"]["setBudget"]["runTokenLimit"], 5000);
    let body = set(
        &w,
        json!({"scope": "API_KEY", "apiKeyId": w.key_id, "monthlyLimit": "0.000001"}),
    )
    .await;
    assert_eq!(body["data"]["setBudget"]["apiKey"]["id"], w.key_id.as_str());
    let body = set(
        &w,
        json!({"scope": "AGENT", "agentId": w.agent_id, "monthlyLimit": "20"}),
    )
    .await;
    assert_eq!(
        body["data"]["setBudget"]["agent"]["id"],
        w.agent_id.as_str()
    );
    let list = w.ask(LIST, json!({})).await;
    assert_eq!(
        list["data"]["budgets"].as_array().unwrap().len(),
        3,
        "{list}"
    );

    // Every rule names its field, and a refused input stores nothing.
    let before = w.app.count("SELECT count(*) FROM budgets").await;
    for (input, expected) in [
        (
            json!({"scope": "USER", "monthlyLimit": "1e3"}),
            "input.monthlyLimit",
        ),
        (
            json!({"scope": "USER", "monthlyLimit": "-1"}),
            "input.monthlyLimit",
        ),
        (
            json!({"scope": "USER", "monthlyLimit": "0.0000001"}),
            "input.monthlyLimit",
        ),
        (
            json!({"scope": "USER", "monthlyLimit": "1000000.000001"}),
            "input.monthlyLimit",
        ),
        (
            json!({"scope": "USER", "runTokenLimit": 0}),
            "input.runTokenLimit",
        ),
        (json!({"scope": "USER"}), "input"),
        (
            json!({"scope": "API_KEY", "monthlyLimit": "1"}),
            "input.apiKeyId",
        ),
        (
            json!({"scope": "AGENT", "monthlyLimit": "1", "apiKeyId": w.key_id}),
            "input.apiKeyId",
        ),
        (
            json!({"scope": "USER", "monthlyLimit": "1", "agentId": w.agent_id}),
            "input.agentId",
        ),
        (
            json!({"scope": "AGENT", "monthlyLimit": "1", "agentId": "not-an-id"}),
            "input.agentId",
        ),
        (
            json!({"scope": "AGENT", "monthlyLimit": "1", "agentId": "0190a5a0-0000-7000-8000-000000000000"}),
            "input.agentId",
        ),
    ] {
        let body = set(&w, input.clone()).await;
        assert_eq!(code(&body), "BAD_USER_INPUT", "{input}: {body}");
        assert_eq!(field(&body), expected, "{input}: {body}");
    }
    assert_eq!(w.app.count("SELECT count(*) FROM budgets").await, before);

    // Deleting: once, then NOT_FOUND.
    let delete = "mutation($id: ID!) { deleteBudget(id: $id) }";
    let body = w.ask(delete, json!({"id": id})).await;
    assert_eq!(body["data"]["deleteBudget"], true, "{body}");
    let body = w.ask(delete, json!({"id": id})).await;
    assert_eq!(code(&body), "NOT_FOUND");
    // Anonymous callers get nothing.
    let body = w.app.gql(LIST, json!({})).await;
    assert_eq!(code(&body), "UNAUTHENTICATED", "{body}");
}

#[tokio::test]
async fn a_run_is_refused_with_budget_exceeded_exactly_when_the_month_reaches_the_limit() {
    // A model without a price: the spend is only what was recorded, to the micro-dollar.
    let w = world_with("OPENAI", "house-model-1", |_| {}).await;
    seed_spend(&w, 999_999).await;
    let body = set(&w, json!({"scope": "USER", "monthlyLimit": "1"})).await;
    assert_eq!(body["data"]["setBudget"]["remainingThisMonth"], "0.000001");
    // One micro-dollar left: the run is admitted.
    let id = w.start("Hello").await;
    assert_eq!(w.finished(&id).await["status"], "SUCCEEDED");
    // One more micro-dollar spent: the month is spent, the next run refused, nothing stored.
    seed_spend(&w, 1).await;
    let runs = w.app.count("SELECT count(*) FROM executions").await;
    let body = w.execute("Hello").await;
    assert_eq!(code(&body), "BUDGET_EXCEEDED", "{body}");
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("your account") && message.contains("USD 1.000000 of USD 1.000000"),
        "{message}"
    );
    assert_eq!(w.app.count("SELECT count(*) FROM executions").await, runs);
    // A key's budget refuses runs on that key only; raising the limit lets runs start again.
    set(&w, json!({"scope": "USER", "monthlyLimit": "1.000002"})).await;
    let id = w.start("Hello").await;
    assert_eq!(w.finished(&id).await["status"], "SUCCEEDED");
    let body = set(
        &w,
        json!({"scope": "API_KEY", "apiKeyId": w.key_id, "monthlyLimit": "0"}),
    )
    .await;
    assert_eq!(
        body["data"]["setBudget"]["remainingThisMonth"], "0.000000",
        "{body}"
    );
    let body = w.execute("Hello").await;
    assert_eq!(code(&body), "BUDGET_EXCEEDED", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("API key `key`")
    );

    // Last month's spend does not count this month.
    w.app
        .sql("UPDATE budgets SET spent_month = spent_month - interval '1 month', spent_micros = 99000000")
        .await;
    w.app
        .sql("UPDATE executions SET created_at = created_at - interval '40 days'")
        .await;
    w.app
        .sql("DELETE FROM budgets WHERE scope = 'API_KEY'")
        .await;
    let list = w.ask(LIST, json!({})).await;
    assert_eq!(
        list["data"]["budgets"][0]["spentThisMonth"], "0.000000",
        "{list}"
    );
    let id = w.start("Hello").await;
    assert_eq!(w.finished(&id).await["status"], "SUCCEEDED");
}

#[tokio::test]
async fn a_run_ending_charges_its_exact_cost_to_the_account_key_and_agent_budgets_only() {
    let w = world_with("OPENAI", "gpt-4o-mini", |_| {}).await;
    // 1,000 input at $0.15/M + 500 output at $0.60/M = 450 micro-dollars, as reported.
    w.fake.set_stream(StreamScript {
        input_tokens: 1000,
        output_tokens: 500,
        ..StreamScript::default()
    });
    let other = w
        .ask(
            "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "Other", "role": "r", "goal": "g", "apiKeyId": w.key_id, "model": "gpt-4o-mini"}}),
        )
        .await;
    let other = id_at(&other, &["createAgent"]);
    for input in [
        json!({"scope": "USER", "monthlyLimit": "10"}),
        json!({"scope": "API_KEY", "apiKeyId": w.key_id, "monthlyLimit": "10"}),
        json!({"scope": "AGENT", "agentId": w.agent_id, "monthlyLimit": "10"}),
        json!({"scope": "AGENT", "agentId": other, "monthlyLimit": "10"}),
    ] {
        let body = set(&w, input).await;
        assert!(body["errors"].is_null(), "{body}");
    }
    for _ in 0..3 {
        let id = w.start("Hello").await;
        let run = w.finished(&id).await;
        assert_eq!(run["status"], "SUCCEEDED");
        assert_eq!(run["costUsd"], 0.00045);
    }
    let list = w
        .ask(
            "{ budgets { scope spentThisMonth agent { id } } }",
            json!({}),
        )
        .await;
    let budgets = list["data"]["budgets"].as_array().unwrap();
    assert_eq!(budgets.len(), 4, "{list}");
    for budget in budgets {
        let expected = if budget["agent"]["id"] == other.as_str() {
            "0.000000"
        } else {
            "0.001350"
        };
        assert_eq!(budget["spentThisMonth"], expected, "{budget}");
    }
    // The counter agrees with the sum of the runs, and survives deleting the agent's runs.
    let sum = w
        .app
        .count("SELECT coalesce(sum(cost_micros), 0)::bigint FROM executions")
        .await;
    assert_eq!(sum, 1350);
    w.app.sql("DELETE FROM executions").await;
    let list = w.ask(LIST, json!({})).await;
    assert_eq!(
        list["data"]["budgets"][0]["spentThisMonth"], "0.001350",
        "{list}"
    );
}

/// The text of `n` tokens of `each`.
fn tokens(each: &str, n: usize) -> Vec<String> {
    vec![each.to_owned(); n]
}

#[tokio::test]
async fn a_run_over_its_token_cap_is_refused_at_start_or_stopped_mid_stream_with_its_output_kept() {
    let w = world_with("OPENAI", "gpt-4o-mini", |_| {}).await;
    w.fake.set_stream(StreamScript {
        tokens: tokens("ab", 400),
        delay_per_token: Duration::from_millis(2),
        ..StreamScript::default()
    });
    // The input alone is over a cap of 10 tokens: refused, nothing stored.
    set(
        &w,
        json!({"scope": "AGENT", "agentId": w.agent_id, "runTokenLimit": 10}),
    )
    .await;
    let body = w.execute("Hello").await;
    assert_eq!(code(&body), "BUDGET_EXCEEDED", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("agent `Helper`")
    );
    assert_eq!(w.app.count("SELECT count(*) FROM executions").await, 0);

    // A cap of 200 tokens admits the run and stops it part-way, before the token that would
    // pass it; what was produced is kept, and the provider stream is dropped.
    set(
        &w,
        json!({"scope": "AGENT", "agentId": w.agent_id, "runTokenLimit": 200}),
    )
    .await;
    let id = w.start("Hello").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("budget exceeded")
            && error.contains("200 tokens")
            && error.contains("agent `Helper`"),
        "{error}"
    );
    let output = run["output"].as_str().unwrap();
    let produced = output.len() / 2;
    assert!(output.chars().all(|c| c == 'a' || c == 'b'), "{output}");
    assert!(produced > 50 && produced < 200, "{produced} tokens kept");
    // Input estimate plus output reach the cap exactly: the next token would have passed it.
    let events = w.events(&id).await;
    let terminal = events.last().unwrap();
    assert_eq!(terminal["kind"], "FAILED");
    assert_eq!(terminal["data"]["code"], "BUDGET_EXCEEDED", "{terminal}");
    let streamed: String = events.iter().filter_map(|e| e["delta"].as_str()).collect();
    assert_eq!(streamed, output);
    assert_eq!(run["outputTokens"], json!(produced), "{run}");
    assert_eq!(
        run["inputTokens"].as_i64().unwrap() + run["outputTokens"].as_i64().unwrap(),
        200,
        "{run}"
    );
    assert_eq!(run["costEstimated"], true);
    // The provider was asked for no more output than the cap left after the input.
    let asked = w
        .fake
        .requests()
        .iter()
        .rev()
        .find(|r| r.path.ends_with("/chat/completions"))
        .map(|r| r.body["max_tokens"].clone())
        .unwrap();
    assert_eq!(
        asked,
        json!(200 - run["inputTokens"].as_i64().unwrap()),
        "{run}"
    );
    for _ in 0..100 {
        if w.fake.client_disconnects() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        w.fake.client_disconnects(),
        1,
        "the provider stream was not dropped"
    );
}

#[tokio::test]
async fn a_run_that_would_pass_the_monthly_money_left_is_stopped_mid_stream() {
    // gpt-4o: $2.50/M input, $10/M output: ten micro-dollars an output token.
    let w = world_with("OPENAI", "gpt-4o", |_| {}).await;
    w.fake.set_stream(StreamScript {
        tokens: tokens("ab", 400),
        delay_per_token: Duration::from_millis(2),
        ..StreamScript::default()
    });
    seed_spend(&w, 5_000).await;
    // 1,000 micro-dollars left: about 200 for the input, then some 80 output tokens.
    set(&w, json!({"scope": "USER", "monthlyLimit": "0.006"})).await;
    let id = w.start("Hello").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    let error = run["error"].as_str().unwrap();
    assert!(
        error.contains("would pass the monthly budget of your account")
            && error.contains("USD 0.001000 of USD 0.006000 was left"),
        "{error}"
    );
    let produced = run["output"].as_str().unwrap().len() / 2;
    assert!(produced > 20 && produced < 100, "{produced} tokens kept");
    // The estimate it was stopped on is what it is charged: within what was left.
    let cost = (run["costUsd"].as_f64().unwrap() * 1e6).round() as i64;
    assert!(cost <= 1_000 && cost > 900, "cost {cost}");
    let list = w.ask(LIST, json!({})).await;
    assert_eq!(
        list["data"]["budgets"][0]["spentThisMonth"],
        format!("0.00{}", 5_000 + cost),
        "{list}"
    );
}

#[tokio::test]
async fn an_admin_sets_a_ceiling_the_user_cannot_change_and_runs_are_held_to_it() {
    let w = world_with("OPENAI", "house-model-1", |_| {}).await;
    let admin = w.app.user_with_role("boss@example.com", "ADMIN").await;
    let as_admin = |query: &'static str, variables: Value| {
        let app = &w.app;
        let token = admin.access.clone();
        async move { app.gql_as(Some(&token), query, variables).await }
    };
    let ceiling = "mutation($u: ID!, $i: BudgetLimitsInput!) { setUserCeiling(userId: $u, input: $i) { id scope setByAdmin monthlyLimit } }";
    // A user cannot set anyone's ceiling, their own included.
    let body = w
        .ask(
            ceiling,
            json!({"u": w.user.user_id, "i": {"monthlyLimit": "100"}}),
        )
        .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    let body = as_admin(
        ceiling,
        json!({"u": w.user.user_id, "i": {"monthlyLimit": "0"}}),
    )
    .await;
    let budget = &body["data"]["setUserCeiling"];
    assert_eq!(budget["setByAdmin"], true, "{body}");
    assert_eq!(budget["scope"], "USER");
    let ceiling_id = budget["id"].as_str().unwrap().to_owned();
    // The user's run is refused, naming the ceiling; their own generous budget does not lift it.
    set(&w, json!({"scope": "USER", "monthlyLimit": "500"})).await;
    let body = w.execute("Hello").await;
    assert_eq!(code(&body), "BUDGET_EXCEEDED", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("ceiling (set by an admin)")
    );
    // They see it, cannot delete it, and their setBudget does not touch it.
    let list = w.ask(LIST, json!({})).await;
    assert_eq!(list["data"]["budgets"][0]["setByAdmin"], true, "{list}");
    assert_eq!(list["data"]["budgets"][0]["monthlyLimit"], "0.000000");
    let body = w
        .ask(
            "mutation($id: ID!) { deleteBudget(id: $id) }",
            json!({"id": ceiling_id}),
        )
        .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    let me = w
        .ask("{ me { ceiling { monthlyLimit } } }", json!({}))
        .await;
    assert_eq!(
        me["data"]["me"]["ceiling"]["monthlyLimit"], "0.000000",
        "{me}"
    );
    let read = "query($u: ID!) { user(id: $u) { ceiling { monthlyLimit setByAdmin } } }";
    let body = as_admin(read, json!({"u": w.user.user_id})).await;
    assert_eq!(
        body["data"]["user"]["ceiling"]["setByAdmin"], true,
        "{body}"
    );
    // The change is audited; removing it lets runs start again.
    let audit = as_admin(
        "{ auditLog(first: 10) { edges { node { action } } } }",
        json!({}),
    )
    .await;
    assert!(audit.to_string().contains("budget.ceiling_set"), "{audit}");
    let remove = "mutation($u: ID!) { removeUserCeiling(userId: $u) }";
    let body = as_admin(remove, json!({"u": w.user.user_id})).await;
    assert_eq!(body["data"]["removeUserCeiling"], true, "{body}");
    let body = as_admin(remove, json!({"u": w.user.user_id})).await;
    assert_eq!(body["data"]["removeUserCeiling"], false, "{body}");
    let id = w.start("Hello").await;
    assert_eq!(w.finished(&id).await["status"], "SUCCEEDED");
    // An admin cannot set an owner's ceiling, nor their own.
    let owner = w.app.user_with_role("owner@example.com", "OWNER").await;
    let body = as_admin(
        ceiling,
        json!({"u": owner.user_id, "i": {"runTokenLimit": 5}}),
    )
    .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    let body = as_admin(
        ceiling,
        json!({"u": admin.user_id, "i": {"monthlyLimit": "1"}}),
    )
    .await;
    assert_eq!(field(&body), "userId", "{body}");
    let remove_own = "mutation($u: ID!) { removeUserCeiling(userId: $u) }";
    let body = as_admin(remove_own, json!({"u": admin.user_id})).await;
    assert_eq!(field(&body), "userId", "{body}");
    // A money ceiling cannot be kept on a model without a price: such runs are refused.
    as_admin(
        ceiling,
        json!({"u": w.user.user_id, "i": {"monthlyLimit": "100"}}),
    )
    .await;
    let body = w.execute("Hello").await;
    assert_eq!(code(&body), "BUDGET_EXCEEDED", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("no price"),
        "{body}"
    );
    let audit = as_admin(
        "{ auditLog(first: 20) { edges { node { action } } } }",
        json!({}),
    )
    .await;
    assert!(
        audit.to_string().contains("budget.ceiling_remove"),
        "{audit}"
    );
}

#[tokio::test]
async fn another_users_budgets_keys_and_agents_are_out_of_reach() {
    let w = world_with("OPENAI", "gpt-4o-mini", |_| {}).await;
    let body = set(&w, json!({"scope": "USER", "monthlyLimit": "5"})).await;
    let mine = id_at(&body, &["setBudget"]);
    let eve = w.app.register("eve@example.com").await;
    let as_eve = |query: &'static str, variables: Value| {
        let app = &w.app;
        let token = eve.access.clone();
        async move { app.gql_as(Some(&token), query, variables).await }
    };
    let body = as_eve(
        SET,
        json!({"i": {"scope": "API_KEY", "apiKeyId": w.key_id, "monthlyLimit": "1"}}),
    )
    .await;
    assert_eq!(field(&body), "input.apiKeyId", "{body}");
    let body = as_eve(
        SET,
        json!({"i": {"scope": "AGENT", "agentId": w.agent_id, "monthlyLimit": "1"}}),
    )
    .await;
    assert_eq!(field(&body), "input.agentId", "{body}");
    let body = as_eve(
        "mutation($id: ID!) { deleteBudget(id: $id) }",
        json!({"id": mine}),
    )
    .await;
    assert_eq!(code(&body), "NOT_FOUND", "{body}");
    let body = as_eve(LIST, json!({})).await;
    assert_eq!(body["data"]["budgets"], json!([]), "{body}");
    let body = as_eve(
        "query($u: ID!) { user(id: $u) { ceiling { id } } }",
        json!({"u": w.user.user_id}),
    )
    .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    assert_eq!(w.app.count("SELECT count(*) FROM budgets").await, 1);
}

#[tokio::test]
async fn tool_call_arguments_count_against_the_token_cap_and_an_over_cap_call_is_never_run() {
    let (_backends, w) = crate::tools::openai_world(&["CALCULATOR"], json!({})).await;
    // One call whose arguments alone are about 1,000 tokens (four bytes a token).
    let expression = vec!["1"; 2000].join("+");
    w.fake
        .queue_tool_turn(crate::common::fake_provider::ToolTurn::calls(&[(
            "calculator",
            &format!(r#"{{"expression": "{expression}"}}"#),
        )]));
    set(&w, json!({"scope": "USER", "runTokenLimit": 600})).await;
    let id = w.start("Add them up").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("per-run cap of 600 tokens"),
        "{run}"
    );
    let events = w.events(&id).await;
    assert!(
        events
            .iter()
            .all(|e| e["kind"] != "TOOL_CALL" && e["kind"] != "TOOL_RESULT"),
        "the call was not run: {events:?}"
    );
    assert_eq!(events.last().unwrap()["data"]["code"], "BUDGET_EXCEEDED");
    // One provider request only: the loop did not go on.
    let asked = w
        .fake
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/chat/completions"))
        .count();
    assert_eq!(asked, 1);
}
