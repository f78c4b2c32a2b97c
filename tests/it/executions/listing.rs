//! Runs as the API lists and guards them: idempotency, the concurrency cap, listing and filters, another user's runs, bad input, and a constant statement count.

use super::*;

#[tokio::test]
async fn the_same_idempotency_key_returns_the_same_run() {
    let w = world().await;
    w.fake.set_stream(slow(&["once"], 0));
    let run = |input: &'static str| {
        let (app, token, agent) = (&w.app, w.user.access.clone(), w.agent_id.clone());
        async move {
            app.gql_as(
                Some(&token),
                "mutation($a: ID!, $i: String!) { executeAgent(agentId: $a, input: $i, idempotencyKey: \"order-42\") { id } }",
                json!({"a": agent, "i": input}),
            )
            .await
        }
    };
    let first = run("same input").await;
    let second = run("same input").await;
    assert_eq!(
        first["data"]["executeAgent"]["id"], second["data"]["executeAgent"]["id"],
        "{first} {second}"
    );
    let different = run("other input").await;
    assert_eq!(code(&different), "CONFLICT", "{different}");
    w.finished(first["data"]["executeAgent"]["id"].as_str().unwrap())
        .await;
    assert_eq!(w.app.count("SELECT count(*) FROM executions").await, 1);
    assert_eq!(
        w.fake
            .requests()
            .iter()
            .filter(|r| r.path == "/v1/chat/completions")
            .count(),
        1
    );
}

#[tokio::test]
async fn the_concurrency_cap_refuses_extra_runs_until_one_finishes() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| c.max_concurrent_executions = 2).await;
    w.fake.set_stream(slow(&["z"; 20], 20));
    let a = w.start("one").await;
    w.start("two").await;
    let third = w.execute("three").await;
    assert_eq!(code(&third), "RATE_LIMITED", "{third}");
    assert!(
        third["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("runs in progress")
    );
    assert_eq!(w.app.count("SELECT count(*) FROM executions").await, 2);
    w.finished(&a).await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    let fourth = w.execute("four").await;
    assert!(fourth["data"]["executeAgent"]["id"].is_string(), "{fourth}");
}

#[tokio::test]
async fn runs_are_listed_newest_first_and_filtered() {
    let w = world().await;
    w.fake.set_stream(slow(&["r"], 0));
    let mut ids = Vec::new();
    for i in 0..3 {
        let id = w.start(&format!("run {i}")).await;
        w.finished(&id).await;
        ids.push(id);
    }
    w.fake.set_mode(Mode::Status {
        status: 401,
        retry_after_secs: None,
    });
    let failed = w.start("fails").await;
    w.finished(&failed).await;
    let list = |vars: Value| {
        w.app.gql_as(
            Some(&w.user.access),
            "query($a: ID, $s: ExecutionStatus, $f: Int, $after: String) { executions(agentId: $a, status: $s, first: $f, after: $after) { edges { node { id status agent { id name } } } pageInfo { hasNextPage endCursor } } }",
            vars,
        )
    };
    let body = list(json!({"f": 2})).await;
    let page: Vec<&str> = body["data"]["executions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, [failed.as_str(), ids[2].as_str()], "{body}");
    assert_eq!(
        body["data"]["executions"]["edges"][0]["node"]["agent"]["name"],
        "Helper"
    );
    let next =
        list(json!({"f": 2, "after": body["data"]["executions"]["pageInfo"]["endCursor"]})).await;
    let page: Vec<&str> = next["data"]["executions"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["id"].as_str().unwrap())
        .collect();
    assert_eq!(page, [ids[1].as_str(), ids[0].as_str()]);
    assert_eq!(next["data"]["executions"]["pageInfo"]["hasNextPage"], false);
    let only_failed = list(json!({"s": "FAILED", "a": w.agent_id})).await;
    assert_eq!(
        only_failed["data"]["executions"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    let bad = list(json!({"a": "nope"})).await;
    assert_eq!((code(&bad), field(&bad)), ("BAD_USER_INPUT", "agentId"));

    // An agent's runs come with their text when it is selected — directly, through a fragment
    // or under an alias — and the same runs without it otherwise.
    for selection in [
        "nodes { id input output }",
        "edges { node { id ...T } }",
        "nodes { id ... on Execution { said: output input } }",
    ] {
        let body = w
            .ask(
                &format!(
                    "query {{ agents(first: 5) {{ nodes {{ executions(first: 10) {{ {selection} }} }} }} }}{}",
                    if selection.contains("...T") { " fragment T on Execution { input output }" } else { "" }
                ),
                json!({}),
            )
            .await;
        let runs = &body["data"]["agents"]["nodes"][0]["executions"];
        let first = runs["nodes"][1]
            .as_object()
            .or(runs["edges"][1]["node"].as_object());
        let first = first.unwrap_or_else(|| panic!("{body}"));
        assert_eq!(first["input"], "run 2", "{selection}: {body}");
        let output = first.get("output").or(first.get("said")).unwrap();
        assert_eq!(output, "r", "{selection}: {body}");
    }
    let plain = w
        .ask(
            "{ agents(first: 5) { nodes { executions(first: 10) { nodes { id status } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        plain["data"]["agents"]["nodes"][0]["executions"]["nodes"]
            .as_array()
            .unwrap()
            .len(),
        4
    );
}

#[tokio::test]
async fn another_users_run_is_not_found_for_every_operation_and_subscription() {
    let w = world().await;
    w.fake.set_stream(slow(&["secret"], 0));
    let id = w.start("private").await;
    w.finished(&id).await;
    let mallory = w.app.register("mallory@example.com").await;
    let get = w
        .app
        .gql_as(
            Some(&mallory.access),
            "query($id: ID!) { execution(id: $id) { id output } }",
            json!({"id": id}),
        )
        .await;
    assert!(get["data"]["execution"].is_null(), "{get}");
    let cancel = w
        .app
        .gql_as(
            Some(&mallory.access),
            "mutation($id: ID!) { cancelExecution(id: $id) { id } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(code(&cancel), "NOT_FOUND");
    let run = w
        .app
        .gql_as(
            Some(&mallory.access),
            "mutation($a: ID!) { executeAgent(agentId: $a, input: \"x\") { id } }",
            json!({"a": w.agent_id}),
        )
        .await;
    assert_eq!(code(&run), "NOT_FOUND", "{run}");
    let list = w
        .app
        .gql_as(
            Some(&mallory.access),
            "{ executions { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        list["data"]["executions"]["edges"]
            .as_array()
            .unwrap()
            .len(),
        0
    );
    let errors = subscribe(&w.app, &mallory.access, &id, None)
        .await
        .expect_err("refused");
    assert_eq!(errors[0]["extensions"]["code"], "NOT_FOUND", "{errors}");
    assert!(!errors.to_string().contains("secret"));
}

#[tokio::test]
async fn bad_run_input_is_named_and_starts_nothing() {
    let w = world().await;
    for (agent, input, expected_code, expected_field) in [
        (
            w.agent_id.clone(),
            "   ".to_owned(),
            "BAD_USER_INPUT",
            Some("input"),
        ),
        (
            w.agent_id.clone(),
            "x".repeat(32_001),
            "BAD_USER_INPUT",
            Some("input"),
        ),
        (
            "not-an-id".to_owned(),
            "hi".to_owned(),
            "BAD_USER_INPUT",
            Some("agentId"),
        ),
        (
            uuid::Uuid::now_v7().to_string(),
            "hi".to_owned(),
            "NOT_FOUND",
            None,
        ),
    ] {
        let body = w
            .app
            .gql_as(
                Some(&w.user.access),
                "mutation($a: ID!, $i: String!) { executeAgent(agentId: $a, input: $i) { id } }",
                json!({"a": agent, "i": input}),
            )
            .await;
        assert_eq!(code(&body), expected_code, "{body}");
        if let Some(f) = expected_field {
            assert_eq!(field(&body), f);
        }
    }
    // An inactive agent or key cannot run.
    w.app
        .gql_as(
            Some(&w.user.access),
            "mutation($id: ID!) { setApiKeyActive(id: $id, active: false) { id } }",
            json!({"id": w.key_id}),
        )
        .await;
    let body = w.execute("hi").await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "agentId"),
        "{body}"
    );
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("inactive")
    );
    w.app
        .gql_as(
            Some(&w.user.access),
            "mutation($id: ID!) { setApiKeyActive(id: $id, active: true) { id } }",
            json!({"id": w.key_id}),
        )
        .await;
    w.app
        .gql_as(
            Some(&w.user.access),
            "mutation($id: ID!) { setAgentActive(id: $id, active: false) { id } }",
            json!({"id": w.agent_id}),
        )
        .await;
    let body = w.execute("hi").await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "agentId"),
        "{body}"
    );
    assert_eq!(w.app.count("SELECT count(*) FROM executions").await, 0);
    assert!(w.fake.requests().is_empty());
}

#[tokio::test]
async fn statements_per_request_do_not_grow_with_the_number_of_agents() {
    // No background recovery pass may land inside a measurement (heartbeats far apart), and an
    // unoptimised test build needs a wider batching window to gather 50 nodes in one batch.
    let w = world_with("OPENAI", "gpt-4o-mini", |c| {
        c.execution_heartbeat_secs = 3600;
        c.dataloader_delay_ms = 20;
    })
    .await;
    w.fake.set_stream(slow(&["s"], 0));
    // 50 agents, each with two runs.
    for i in 0..49 {
        w.app
            .gql_as(
                Some(&w.user.access),
                "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
                json!({"i": {"name": format!("agent {i}"), "role": "r", "goal": "g", "apiKeyId": w.key_id, "model": "gpt-4o-mini"}}),
            )
            .await;
    }
    w.app
        .sql(&format!(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input) \
             SELECT gen_random_uuid(), user_id, id, api_key_id, 'OPENAI', model, 'SUCCEEDED', 'seed' FROM agents, generate_series(1, 2) WHERE user_id = '{}'",
            w.user.user_id
        ))
        .await;
    let query = |n: i32| {
        format!(
            "{{ agents(first: {n}) {{ edges {{ node {{ id name provider apiKey {{ id name maskedKey usage {{ executions costUsd }} }} executions(first: 5) {{ edges {{ node {{ id status agent {{ name }} }} }} }} }} }} }} }}"
        )
    };
    let count = |n: i32| {
        let (app, token, q) = (&w.app, w.user.access.clone(), query(n));
        async move {
            let before = app.state.query_counter.get();
            let body = app.gql_as(Some(&token), &q, json!({})).await;
            let after = app.state.query_counter.get();
            let edges = body["data"]["agents"]["edges"]
                .as_array()
                .unwrap_or_else(|| panic!("{body}"))
                .len();
            assert_eq!(edges, n as usize);
            assert_eq!(
                body["data"]["agents"]["edges"][0]["node"]["executions"]["edges"]
                    .as_array()
                    .unwrap()
                    .len(),
                2
            );
            after - before
        }
    };
    let one = count(1).await;
    let fifty = count(50).await;
    assert_eq!(one, fifty, "statements for 1 agent: {one}, for 50: {fifty}");
    assert!(fifty <= 8, "{fifty} statements");
}

#[tokio::test]
async fn a_page_of_runs_is_read_by_a_statement_prepared_once_per_connection() {
    use agentry::executions::model::{RecentOf, RunColumns, recent_runs};
    let w = world().await;
    w.fake.set_stream(slow(&["ok"], 0));
    let run = w.start("one").await;
    w.finished(&run).await;
    let agent: uuid::Uuid = w.agent_id.parse().unwrap();
    let mut conn = w.app.state.pool.get().await.unwrap();
    let lean = RunColumns::Summary;
    let first = recent_runs(&mut conn, RecentOf::Agent, &[agent], 5, lean)
        .await
        .unwrap();
    let again = recent_runs(&mut conn, RecentOf::Agent, &[agent], 5, lean)
        .await
        .unwrap();
    assert_eq!(first.len(), 1);
    assert_eq!(first[0].id.to_string(), run);
    assert_eq!(again.len(), 1);
    // The columns left out read as empty; the ones every row keeps are there.
    let whole = recent_runs(&mut conn, RecentOf::Agent, &[agent], 5, RunColumns::All)
        .await
        .unwrap();
    assert_eq!(
        (first[0].output.as_str(), first[0].model.as_str()),
        ("", "")
    );
    assert_eq!((first[0].started_at, first[0].finished_at), (None, None));
    assert_eq!(first[0].crew_role, None);
    assert_eq!(whole[0].output, "ok");
    assert!(!whole[0].model.is_empty() && whole[0].finished_at.is_some());
    assert_eq!(
        (first[0].status, first[0].output_tokens, first[0].created_at),
        (whole[0].status, whole[0].output_tokens, whole[0].created_at)
    );
    // Named (kept) statements of this connection; an unprepared statement leaves none. The
    // pattern is split so that this query's own text does not match it.
    // "kept:plans": how many such statements, and how often they were planned for a run.
    let kept: String = diesel_async::RunQueryDsl::get_result(
        diesel::select(diesel::dsl::sql::<diesel::sql_types::Text>(
            "(SELECT count(*) || ':' || coalesce(sum(generic_plans + custom_plans), 0) \
              FROM pg_prepared_statements WHERE statement LIKE '%CROSS JOIN' || ' LATERAL%')",
        )),
        &mut conn,
    )
    .await
    .unwrap();
    assert_eq!(
        kept, "2:3",
        "the lean lateral read is prepared once and used twice, the whole one once"
    );
}

/// The agents of a page share one batch per relation and shape of arguments: aliases of
/// `executions` with different `first`, or with and without the runs' text, each get their own
/// runs; agents on different keys each get their own key; and every listed agent answers as
/// `agent(id:)` (the DataLoader path) does, with a statement count that does not grow with the
/// page.
#[tokio::test]
async fn a_pages_agents_share_one_batch_per_relation_and_shape() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| {
        c.execution_heartbeat_secs = 3600;
    })
    .await;
    let second_key = w
        .ask(
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { id } }",
            json!({"i": {"name": "second", "provider": "OPENAI", "secret": OPENAI_KEY}}),
        )
        .await;
    let second_key = id_at(&second_key, &["createApiKey"]);
    for (i, key) in [&w.key_id, &second_key, &second_key]
        .into_iter()
        .enumerate()
    {
        let made = w
            .ask(
                "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
                json!({"i": {"name": format!("paged {i}"), "role": "r", "goal": "g", "apiKeyId": key, "model": "gpt-4o-mini"}}),
            )
            .await;
        assert!(made.get("errors").is_none(), "{made}");
    }
    // Agent k of the user has k + 1 runs (the world's own agent, created first, has 1).
    w.app
        .sql(&format!(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input) \
             SELECT run_id, user_id, id, api_key_id, 'OPENAI', model, 'SUCCEEDED', 'seed' FROM \
             (SELECT a.*, row_number() OVER (ORDER BY a.id) AS k FROM agents a WHERE user_id = '{}') a \
             CROSS JOIN LATERAL (SELECT gen_random_uuid() AS run_id FROM generate_series(1, a.k::int)) s",
            w.user.user_id
        ))
        .await;
    const AGENT: &str = "id name provider apiKey { id name } \
        recent: executions(first: 1) { nodes { id status } pageInfo { hasNextPage } } \
        all: executions(first: 5) { nodes { id status agent { id } } pageInfo { hasNextPage } } \
        texts: executions(first: 5) { nodes { id input } }";
    let page_query = |n: usize| {
        format!("{{ agents(first: {n}) {{ nodes {{ {AGENT} }} pageInfo {{ hasNextPage }} }} }}")
    };
    let one = w.app.state.query_counter.get();
    w.ask(&page_query(1), json!({})).await;
    let before = w.app.state.query_counter.get();
    let page = w.ask(&page_query(3), json!({})).await;
    let statements = w.app.state.query_counter.get() - before;
    // Authentication, the page, the keys, and one read per shape of `executions`.
    assert!(statements <= 6, "{statements} statements for a page");
    assert_eq!(before - one, statements, "one agent vs three");
    assert!(page.get("errors").is_none(), "{page}");
    assert_eq!(
        page["data"]["agents"]["pageInfo"]["hasNextPage"], true,
        "{page}"
    );
    let agents = page["data"]["agents"]["nodes"].as_array().unwrap();
    assert_eq!(agents.len(), 3, "{page}");
    // Newest first: the three created here, with 4, 3 and 2 runs.
    let keys: Vec<&str> = agents
        .iter()
        .map(|a| a["apiKey"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(keys, ["second", "second", "key"], "{page}");
    for (agent, runs) in agents.iter().zip([4, 3, 2]) {
        assert_eq!(
            agent["recent"]["nodes"].as_array().unwrap().len(),
            1,
            "{agent}"
        );
        assert_eq!(agent["recent"]["pageInfo"]["hasNextPage"], true, "{agent}");
        assert_eq!(
            agent["all"]["nodes"].as_array().unwrap().len(),
            runs,
            "{agent}"
        );
        assert_eq!(agent["all"]["pageInfo"]["hasNextPage"], false, "{agent}");
        // Each agent gets its own runs out of the page's one read.
        let owners = agent["all"]["nodes"].as_array().unwrap();
        assert!(
            owners.iter().all(|run| run["agent"]["id"] == agent["id"]),
            "{agent}"
        );
        // Same page size as `all`, read after it (the selection's order) but with the text.
        let texts = agent["texts"]["nodes"].as_array().unwrap();
        assert_eq!(texts.len(), runs, "{agent}");
        assert!(texts.iter().all(|run| run["input"] == "seed"), "{agent}");
        assert_eq!(
            agent["recent"]["nodes"][0]["id"], agent["all"]["nodes"][0]["id"],
            "{agent}"
        );
        let single = w
            .ask(
                &format!("query($id: ID!) {{ agent(id: $id) {{ {AGENT} }} }}"),
                json!({"id": agent["id"]}),
            )
            .await;
        assert_eq!(agent, &single["data"]["agent"], "{single}");
    }
}

/// Checks that `keys` first appear in this order in the raw response text to `query` (read from
/// the text because `Value` sorts object keys).
async fn keys_in_order(w: &World, query: &str, keys: &[&str]) {
    let raw = w
        .app
        .post(Some(&w.user.access), &json!({ "query": query }))
        .await
        .text()
        .await
        .unwrap();
    let at: Vec<usize> = keys
        .iter()
        .map(|key| {
            raw.find(&format!("\"{key}\":"))
                .unwrap_or_else(|| panic!("no {key}: {raw}"))
        })
        .collect();
    assert!(
        at.windows(2).all(|pair| pair[0] < pair[1]),
        "not in the selection's order {keys:?}: {raw}"
    );
}

/// A world whose agent has two finished runs: one that succeeded (output "ok"), then one the
/// provider refused (an error). Returns the world and the two runs' ids.
async fn a_run_done_and_a_run_failed() -> (World, String, String) {
    let w = world().await;
    w.fake.set_stream(slow(&["ok"], 0));
    let done = w.start("first").await;
    w.finished(&done).await;
    w.fake.set_mode(Mode::Status {
        status: 401,
        retry_after_secs: None,
    });
    let failed = w.start("second").await;
    w.finished(&failed).await;
    (w, done, failed)
}

/// Every field of a run and of a key, as async-graphql's own resolution gives it (a single
/// `execution(id:)` / `apiKey(id:)`) and as the eager resolution of lists gives it (runs and
/// keys under a page of agents): the same values, in the order of the selection, through
/// fragments and aliases, and a field's error recorded the same way.
#[tokio::test]
async fn eager_lists_answer_exactly_as_single_objects_do() {
    let (w, _, _) = a_run_done_and_a_run_failed().await;

    const RUN: &str = "__typename id threadId crewRunId crewRole crewTask status input output error \
        inputTokens outputTokens costUsd costEstimated model provider createdAt startedAt \
        finishedAt said: output agent { id name } files { id } ...More";
    const MORE: &str = "fragment More on Execution { n: inputTokens ... on Execution { status } events(first: 2) { sequence kind } }";
    const KEY: &str = "__typename id name provider endpoint maskedKey isActive lastUsedAt \
        lastTestedAt lastTestOk lastTestMessage";
    let listed = w
        .ask(
            &format!(
                "{{ agents(first: 5) {{ nodes {{ apiKey {{ {KEY} }} executions(first: 10) {{ nodes {{ {RUN} }} }} }} }} }} {MORE}"
            ),
            json!({}),
        )
        .await;
    assert!(listed.get("errors").is_none(), "{listed}");
    let agent = &listed["data"]["agents"]["nodes"][0];
    let runs = agent["executions"]["nodes"].as_array().unwrap();
    assert_eq!(runs.len(), 2, "{listed}");
    for run in runs {
        let id = run["id"].as_str().unwrap();
        let single = w
            .ask(
                &format!("query($id: ID!) {{ execution(id: $id) {{ {RUN} }} }} {MORE}"),
                json!({"id": id}),
            )
            .await;
        assert_eq!(run, &single["data"]["execution"], "run {id}");
    }
    // Keys come in the order of the selection (read from the raw text: `Value` sorts them).
    keys_in_order(
        &w,
        "{ agents(first: 1) { nodes { executions(first: 1) { nodes { status id agent { name } __typename costUsd } } } } }",
        &["status", "id", "agent", "__typename", "costUsd"],
    )
    .await;
    assert_eq!(runs[1]["status"], "SUCCEEDED");
    assert_eq!(runs[0]["status"], "FAILED");
    assert!(runs[0]["error"].is_string(), "{}", runs[0]);
    let key_id = agent["apiKey"]["id"].as_str().unwrap();
    let single = w
        .ask(
            &format!("query($id: ID!) {{ apiKey(id: $id) {{ {KEY} }} }}"),
            json!({"id": key_id}),
        )
        .await;
    assert_eq!(agent["apiKey"], single["data"]["apiKey"], "{listed}");

    // The agents of a page: every field as `agent(id:)` gives it, and in the selection's order
    // (async-graphql's own resolution puts the fields that wait for a DataLoader last).
    const AGENT: &str = "__typename id name description role goal backstory provider model \
        temperature maxOutputTokens tools config isActive createdAt updatedAt a: name \
        ...AgentMore apiKey { name } executions(first: 1) { nodes { id } }";
    const AGENT_MORE: &str = "fragment AgentMore on Agent { ... on Agent { m: model } }";
    let page = w
        .ask(
            &format!("{{ agents(first: 5) {{ nodes {{ {AGENT} }} }} }} {AGENT_MORE}"),
            json!({}),
        )
        .await;
    let listed_agent = &page["data"]["agents"]["nodes"][0];
    let single = w
        .ask(
            &format!("query($id: ID!) {{ agent(id: $id) {{ {AGENT} }} }} {AGENT_MORE}"),
            json!({"id": listed_agent["id"]}),
        )
        .await;
    assert_eq!(listed_agent, &single["data"]["agent"], "{page}");
    keys_in_order(
        &w,
        "{ agents(first: 1) { nodes { executions(first: 1) { nodes { status } } model apiKey { maskedKey } role } } }",
        &["executions", "model", "apiKey", "role"],
    )
    .await;

    // A response key selected twice with different sub-selections is merged, as before.
    let merged = w
        .ask(
            "{ agents(first: 1) { nodes { executions(first: 1) { nodes { agent { id } agent { name } } } } } }",
            json!({}),
        )
        .await;
    let agent = &merged["data"]["agents"]["nodes"][0]["executions"]["nodes"][0]["agent"];
    assert!(
        agent["id"].is_string() && agent["name"] == "Helper",
        "{merged}"
    );

    // A field that fails under a list fails as it does on its own: `events(first: 0)`.
    let bad = w
        .ask(
            "{ agents(first: 1) { nodes { executions(first: 1) { nodes { id events(first: 0) { sequence } } } } } }",
            json!({}),
        )
        .await;
    assert_eq!(code(&bad), "BAD_USER_INPUT", "{bad}");
}

/// A list of runs reads only the columns its selection shows (`RunColumns`), so each field of
/// a run is asked alone under a page of agents, and must answer as the run read by id does:
/// a field whose column the list left out would come back empty. The fields come from the
/// schema, so a field added later is covered too. The runs differ in every column a list may
/// leave out: text, provider and model, an error, start and end times, a crew role and task.
#[tokio::test]
async fn each_field_of_a_listed_run_answers_alone_as_the_run_does() {
    let (w, done, _) = a_run_done_and_a_run_failed().await;
    w.app
        .sql(&format!(
            "UPDATE executions SET crew_role = 'TASK', crew_task = 2 WHERE id = '{done}'"
        ))
        .await;

    let schema = w
        .ask(
            "{ __type(name: \"Execution\") { fields { name type { kind ofType { kind ofType { kind ofType { kind } } } } } } }",
            json!({}),
        )
        .await;
    let fields = schema["data"]["__type"]["fields"].as_array().unwrap();
    assert!(fields.len() >= 20, "{schema}");
    // Fields that had a value (not null, not '') on some run.
    let mut with_values = std::collections::HashSet::new();
    for field in fields {
        let name = field["name"].as_str().unwrap();
        // The named type under NON_NULL / LIST wrappers: an object needs a selection.
        let mut ty = &field["type"];
        while matches!(ty["kind"].as_str(), Some("NON_NULL" | "LIST")) {
            ty = &ty["ofType"];
        }
        let selection = if ty["kind"] == "OBJECT" {
            format!("{name} {{ __typename }}")
        } else {
            name.to_string()
        };
        // Under `nodes` and under `edges { node }`.
        let listed = w
            .ask(
                &format!(
                    "{{ agents(first: 5) {{ nodes {{ \
                       executions(first: 10) {{ nodes {{ id {selection} }} }} \
                       e: executions(first: 10) {{ edges {{ node {{ id {selection} }} }} }} }} }} }}"
                ),
                json!({}),
            )
            .await;
        assert!(listed.get("errors").is_none(), "{name}: {listed}");
        let agent = &listed["data"]["agents"]["nodes"][0];
        let runs = agent["executions"]["nodes"].as_array().unwrap();
        let edges = agent["e"]["edges"].as_array().unwrap();
        assert_eq!((runs.len(), edges.len()), (2, 2), "{name}: {listed}");
        for (run, edge) in runs.iter().zip(edges) {
            let single = w
                .ask(
                    &format!("query($id: ID!) {{ execution(id: $id) {{ id {selection} }} }}"),
                    json!({"id": run["id"]}),
                )
                .await;
            assert_eq!(run, &single["data"]["execution"], "{name}");
            assert_eq!(&edge["node"], run, "{name} under edges");
            if !run[name].is_null() && run[name] != "" {
                with_values.insert(name.to_string());
            }
        }
    }
    // Every column a list may leave out had a value on some run, so an empty answer shows.
    for name in [
        "input",
        "output",
        "provider",
        "model",
        "error",
        "startedAt",
        "finishedAt",
        "crewRole",
        "crewTask",
    ] {
        assert!(with_values.contains(name), "{name}: {with_values:?}");
    }
}

/// A page reads the row past itself only when `pageInfo { hasNextPage }` is shown (see
/// `Page::of`; its effect on cost is measured by the benchmark, not here): asked through a
/// fragment, an inline fragment and an alias, `hasNextPage` is still right, and a page that
/// does not ask still lists exactly `first` rows.
#[tokio::test]
async fn has_next_page_is_right_however_it_is_asked() {
    let w = world().await;
    w.fake.set_stream(slow(&["ok"], 0));
    for input in ["one", "two"] {
        let run = w.start(input).await;
        w.finished(&run).await;
    }
    const PAGE_INFO: &str = "fragment P on ExecutionConnection { pageInfo { more: hasNextPage } }";
    for (first, more) in [(1usize, true), (2, false), (3, false)] {
        for runs in [
            format!("executions(first: {first}) {{ ...P nodes {{ id }} }}"),
            format!(
                "executions(first: {first}) {{ ... on ExecutionConnection {{ pageInfo {{ more: hasNextPage }} }} nodes {{ id }} }}"
            ),
        ] {
            let fragment = if runs.contains("...P") { PAGE_INFO } else { "" };
            let body = w
                .ask(
                    &format!("{{ agents(first: 5) {{ nodes {{ {runs} }} }} }} {fragment}"),
                    json!({}),
                )
                .await;
            let page = &body["data"]["agents"]["nodes"][0]["executions"];
            assert_eq!(page["pageInfo"]["more"], more, "{runs}: {body}");
            assert_eq!(
                page["nodes"].as_array().unwrap().len(),
                first.min(2),
                "{body}"
            );
        }
        // The top-level list too, and a list that does not ask.
        let body = w
            .ask(
                &format!("{{ executions(first: {first}) {{ ...P nodes {{ id }} }} }} {PAGE_INFO}"),
                json!({}),
            )
            .await;
        assert_eq!(
            body["data"]["executions"]["pageInfo"]["more"], more,
            "{body}"
        );
        let body = w
            .ask(&format!("{{ executions(first: {first}) {{ nodes {{ id }} }} agents(first: 5) {{ nodes {{ executions(first: {first}) {{ nodes {{ id }} }} }} }} }}"), json!({}))
            .await;
        assert_eq!(
            body["data"]["executions"]["nodes"]
                .as_array()
                .unwrap()
                .len(),
            first.min(2),
            "{body}"
        );
        assert_eq!(
            body["data"]["agents"]["nodes"][0]["executions"]["nodes"]
                .as_array()
                .unwrap()
                .len(),
            first.min(2),
            "{body}"
        );
    }
}
