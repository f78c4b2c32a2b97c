//! Crews end to end against the fake provider: a sequential crew whose second agent gets the
//! first task's output, a hierarchical crew whose manager delegates twice, inputs filled in and
//! checked, definitions validated with the field named, cancel mid-crew, one subscription
//! carrying every event of every step, batched listing, and isolation.

use std::time::Duration;

use serde_json::{Value, json};

use crate::{
    common::{TestApp, code, fake_provider::ToolTurn, field, id_at},
    executions::{World, slow, subscribe_to, world_with},
    tools::completions,
};

const CREATE: &str = "mutation($i: CrewInput!) { createCrew(input: $i) { id name process inputs tasks { index description agent { name } context } agents { name } manager { name } } }";
const RUN: &str =
    "mutation($c: ID!, $in: JSON) { runCrew(crewId: $c, inputs: $in) { id status crewName } }";
const CREW_RUN: &str = "query($id: ID!) { crewRun(id: $id) { id status output error inputs executions { id status input output crewRunId crewRole crewTask agent { name } } } }";

/// A world with two agents (the world's "Helper" and a "Writer"); returns the writer's id.
async fn crew_world(adjust: impl FnOnce(&mut agentry::config::Config)) -> (World, String) {
    let w = world_with("OPENAI", "gpt-4o-mini", adjust).await;
    let body = w
        .ask(
            "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "Writer", "role": "a concise technical writer", "goal": "write clearly", "apiKeyId": w.key_id, "model": "gpt-4o-mini"}}),
        )
        .await;
    let writer = id_at(&body, &["createAgent"]);
    (w, writer)
}

/// A two-task SEQUENTIAL crew: research `{topic}` (Helper), then write it up (Writer).
async fn sequential_crew(w: &World, writer: &str) -> Value {
    w.ask(
        CREATE,
        json!({"i": {
            "name": "Research and write",
            "agentIds": [w.agent_id, writer],
            "tasks": [
                {"description": "Research {topic} for {audience}", "expectedOutput": "five facts", "agentId": w.agent_id},
                {"description": "Write a short article", "expectedOutput": "one paragraph", "agentId": writer}
            ]
        }}),
    )
    .await
}

/// Waits for the crew run's end.
async fn finished(w: &World, id: &str) -> Value {
    for _ in 0..400 {
        let body = w.ask(CREW_RUN, json!({"id": id})).await;
        let run = body["data"]["crewRun"].clone();
        if !matches!(run["status"].as_str(), Some("QUEUED" | "RUNNING")) {
            return run;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("crew run {id} did not finish");
}

/// Follows a crew run over graphql-transport-ws until `complete`.
async fn follow(app: &TestApp, token: &str, id: &str) -> Result<Vec<Value>, Value> {
    subscribe_to(
        app,
        token,
        "subscription($id: ID!) { crewRunEvents(crewRunId: $id) { kind executionId role taskIndex execution { id agent { name } } event { sequence kind delta } crewRun { status output error } } }",
        json!({"id": id}),
        "crewRunEvents",
    )
    .await
}

#[tokio::test]
async fn a_sequential_crew_passes_the_first_tasks_output_to_the_second_agent_over_one_subscription()
{
    let (w, writer) = crew_world(|_| {}).await;
    w.fake.set_stream(slow(&["Otters", " hold", " hands."], 20));
    let crew = sequential_crew(&w, &writer).await;
    let crew_id = id_at(&crew, &["createCrew"]);
    assert_eq!(
        crew["data"]["createCrew"]["inputs"],
        json!(["topic", "audience"])
    );
    assert_eq!(
        crew["data"]["createCrew"]["tasks"][1]["context"],
        json!([0])
    );
    assert_eq!(crew["data"]["createCrew"]["process"], "SEQUENTIAL");

    let body = w
        .ask(
            RUN,
            json!({"c": crew_id, "in": {"topic": "sea otters", "audience": "children"}}),
        )
        .await;
    let run_id = id_at(&body, &["runCrew"]);
    assert_eq!(body["data"]["runCrew"]["crewName"], "Research and write");
    let items = follow(&w.app, &w.user.access, &run_id)
        .await
        .expect("subscription");

    // Per step: STEP_STARTED, then its events in order; one terminal item last.
    let kinds: Vec<&str> = items.iter().map(|i| i["kind"].as_str().unwrap()).collect();
    assert_eq!(kinds.first(), Some(&"STEP_STARTED"));
    assert_eq!(kinds.last(), Some(&"SUCCEEDED"));
    let started: Vec<&Value> = items
        .iter()
        .filter(|i| i["kind"] == "STEP_STARTED")
        .collect();
    assert_eq!(started.len(), 2);
    assert_eq!(started[0]["taskIndex"], 0);
    assert_eq!(started[0]["role"], "TASK");
    assert_eq!(started[0]["execution"]["agent"]["name"], "Helper");
    assert_eq!(started[1]["taskIndex"], 1);
    assert_eq!(started[1]["execution"]["agent"]["name"], "Writer");
    for step in &started {
        let id = step["executionId"].as_str().unwrap();
        let events: Vec<&Value> = items
            .iter()
            .filter(|i| i["kind"] == "STEP_EVENT" && i["executionId"] == id)
            .collect();
        let sequences: Vec<i64> = events
            .iter()
            .map(|e| e["event"]["sequence"].as_i64().unwrap())
            .collect();
        assert_eq!(sequences, (1..=sequences.len() as i64).collect::<Vec<_>>());
        assert_eq!(events[0]["event"]["kind"], "STARTED");
        assert_eq!(events.last().unwrap()["event"]["kind"], "COMPLETED");
        let text: String = events
            .iter()
            .filter_map(|e| e["event"]["delta"].as_str())
            .collect();
        assert_eq!(text, "Otters hold hands.");
        assert_eq!(events[0]["taskIndex"], step["taskIndex"]);
    }
    let last = items.last().unwrap();
    assert_eq!(last["crewRun"]["status"], "SUCCEEDED");
    assert_eq!(last["crewRun"]["output"], "Otters hold hands.");

    // The first request carries the inputs; the second the first task's output.
    let requests = completions(&w);
    assert_eq!(requests.len(), 2);
    let first_user = requests[0]["messages"][1]["content"].as_str().unwrap();
    assert!(
        first_user.contains("Research sea otters for children"),
        "{first_user}"
    );
    assert!(
        first_user.contains("Expected output: five facts"),
        "{first_user}"
    );
    let second_system = requests[1]["messages"][0]["content"].as_str().unwrap();
    assert!(
        second_system.contains("a concise technical writer"),
        "{second_system}"
    );
    let second_user = requests[1]["messages"][1]["content"].as_str().unwrap();
    assert!(
        second_user.contains("Write a short article"),
        "{second_user}"
    );
    assert!(
        second_user.contains("## Output of task 0\nOtters hold hands."),
        "{second_user}"
    );

    let run = finished(&w, &run_id).await;
    assert_eq!(run["status"], "SUCCEEDED");
    assert_eq!(
        run["inputs"],
        json!({"audience": "children", "topic": "sea otters"})
    );
    let steps = run["executions"].as_array().unwrap();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0]["crewRole"], "TASK");
    assert_eq!(steps[1]["crewTask"], 1);
    assert_eq!(steps[1]["crewRunId"], run_id.as_str());
    assert_eq!(steps[1]["status"], "SUCCEEDED");

    // The steps listed with a summary's fields, or with details but no text, answer as each
    // run read by id does (a list reads only the columns it shows).
    for fields in [
        "id status crewRunId createdAt",
        "id model provider crewRole crewTask startedAt finishedAt error",
    ] {
        let listed = w
            .ask(
                &format!("query($id: ID!) {{ crewRun(id: $id) {{ executions {{ {fields} }} }} }}"),
                json!({"id": run_id}),
            )
            .await;
        let listed = listed["data"]["crewRun"]["executions"].as_array().unwrap();
        assert_eq!(listed.len(), 2, "{fields}");
        for step in listed {
            let single = w
                .ask(
                    &format!("query($id: ID!) {{ execution(id: $id) {{ {fields} }} }}"),
                    json!({"id": step["id"]}),
                )
                .await;
            assert_eq!(step, &single["data"]["execution"], "{fields}");
        }
    }

    // A second subscription after the end replays the whole crew run the same way.
    let again = follow(&w.app, &w.user.access, &run_id)
        .await
        .expect("replay");
    assert_eq!(again, items);
}

#[tokio::test]
async fn crew_inputs_are_checked_before_anything_runs() {
    let (w, writer) = crew_world(|_| {}).await;
    let crew_id = id_at(&sequential_crew(&w, &writer).await, &["createCrew"]);
    let missing = w
        .ask(RUN, json!({"c": crew_id, "in": {"topic": "otters"}}))
        .await;
    assert_eq!(
        (code(&missing), field(&missing)),
        ("BAD_USER_INPUT", "inputs.audience")
    );
    let unknown = w
        .ask(
            RUN,
            json!({"c": crew_id, "in": {"topic": "otters", "audience": "kids", "tone": "dry"}}),
        )
        .await;
    assert_eq!(
        (code(&unknown), field(&unknown)),
        ("BAD_USER_INPUT", "inputs.tone")
    );
    let nested = w
        .ask(
            RUN,
            json!({"c": crew_id, "in": {"topic": {"a": 1}, "audience": "kids"}}),
        )
        .await;
    assert_eq!(
        (code(&nested), field(&nested)),
        ("BAD_USER_INPUT", "inputs.topic")
    );
    let none = w.ask(RUN, json!({"c": crew_id})).await;
    assert_eq!(field(&none), "inputs.topic");
    // Filled in, a task's own text is bounded.
    let long = w
        .ask(
            CREATE,
            json!({"i": {"name": "Long", "agentIds": [w.agent_id], "tasks": [
                {"description": "{t} {t} {t} {t}", "expectedOutput": "e", "agentId": w.agent_id}]}}),
        )
        .await;
    let long_id = id_at(&long, &["createCrew"]);
    let too_long = w
        .ask(RUN, json!({"c": long_id, "in": {"t": "x".repeat(4000)}}))
        .await;
    assert_eq!(
        (code(&too_long), field(&too_long)),
        ("BAD_USER_INPUT", "inputs"),
        "{too_long}"
    );
    let runs = w
        .ask("{ crewRuns { edges { node { id } } } }", json!({}))
        .await;
    assert_eq!(runs["data"]["crewRuns"]["edges"], json!([]));
    assert!(completions(&w).is_empty(), "nothing reached the provider");
}

#[tokio::test]
async fn crew_definitions_are_validated_with_the_field_named_and_nothing_stored() {
    let (w, writer) = crew_world(|_| {}).await;
    let task = |agent: &str| json!({"description": "d", "expectedOutput": "e", "agentId": agent});
    let cases = [
        (
            json!({"name": "c", "agentIds": [w.agent_id], "tasks": [task(&writer)]}),
            "input.tasks[0].agentId",
        ),
        (
            json!({"name": "c", "agentIds": [w.agent_id], "tasks": [{"description": "d", "expectedOutput": "e"}]}),
            "input.tasks[0].agentId",
        ),
        (
            json!({"name": "c", "agentIds": [w.agent_id], "tasks": [task(&w.agent_id), {"description": "d", "expectedOutput": "e", "agentId": w.agent_id, "context": [1]}]}),
            "input.tasks[1].context",
        ),
        (
            json!({"name": "c", "agentIds": [w.agent_id], "tasks": []}),
            "input.tasks",
        ),
        (
            json!({"name": "c", "agentIds": [w.agent_id, w.agent_id], "tasks": [task(&w.agent_id)]}),
            "input.agentIds[1]",
        ),
        (
            json!({"name": "c", "process": "HIERARCHICAL", "agentIds": [w.agent_id], "tasks": [task(&w.agent_id)]}),
            "input.managerAgentId",
        ),
        (
            json!({"name": "c", "managerAgentId": writer, "agentIds": [w.agent_id], "tasks": [task(&w.agent_id)]}),
            "input.managerAgentId",
        ),
        (
            json!({"name": " ", "agentIds": [w.agent_id], "tasks": [task(&w.agent_id)]}),
            "input.name",
        ),
        (
            json!({"name": "c", "agentIds": ["nope"], "tasks": [task(&w.agent_id)]}),
            "input.agentIds[0]",
        ),
    ];
    for (input, expected) in cases {
        let body = w.ask(CREATE, json!({"i": input})).await;
        assert_eq!(
            (code(&body), field(&body)),
            ("BAD_USER_INPUT", expected),
            "{input}: {body}"
        );
    }
    let crews = w
        .ask("{ crews { edges { node { id } } } }", json!({}))
        .await;
    assert_eq!(crews["data"]["crews"]["edges"], json!([]));
    // At most 20 tasks and 20 members.
    let many_tasks: Vec<Value> = (0..21).map(|_| task(&w.agent_id)).collect();
    let body = w
        .ask(
            CREATE,
            json!({"i": {"name": "c", "agentIds": [w.agent_id], "tasks": many_tasks}}),
        )
        .await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "input.tasks")
    );
    let many_members = vec![w.agent_id.clone(); 21];
    let body = w
        .ask(
            CREATE,
            json!({"i": {"name": "c", "agentIds": many_members, "tasks": [task(&w.agent_id)]}}),
        )
        .await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "input.agentIds")
    );
    // Names are unique per user.
    let crew_id = id_at(&sequential_crew(&w, &writer).await, &["createCrew"]);
    let twice = sequential_crew(&w, &writer).await;
    assert_eq!(code(&twice), "CONFLICT");

    // updateCrew replaces the crew whole, by the same rules.
    const UPDATE: &str = "mutation($id: ID!, $i: CrewInput!) { updateCrew(id: $id, input: $i) { name inputs tasks { description agent { name } } agents { name } } }";
    let updated = w
        .ask(
            UPDATE,
            json!({"id": crew_id, "i": {"name": "Just write", "agentIds": [writer],
                   "tasks": [{"description": "Write about {subject}", "expectedOutput": "e", "agentId": writer}]}}),
        )
        .await;
    assert_eq!(
        updated["data"]["updateCrew"],
        json!({"name": "Just write", "inputs": ["subject"], "tasks": [{"description": "Write about {subject}", "agent": {"name": "Writer"}}], "agents": [{"name": "Writer"}]}),
        "{updated}"
    );
    let refused = w
        .ask(UPDATE, json!({"id": crew_id, "i": {"name": "x", "agentIds": [writer], "tasks": [task(&w.agent_id)]}}))
        .await;
    assert_eq!(
        (code(&refused), field(&refused)),
        ("BAD_USER_INPUT", "input.tasks[0].agentId")
    );
    let kept = w
        .ask(
            "query($id: ID!) { crew(id: $id) { name } }",
            json!({"id": crew_id}),
        )
        .await;
    assert_eq!(
        kept["data"]["crew"]["name"], "Just write",
        "a refused update changes nothing"
    );
}

#[tokio::test]
async fn a_hierarchical_manager_delegates_twice_and_answers_from_both_results() {
    let (w, writer) = crew_world(|_| {}).await;
    let body = w
        .ask(
            "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "Boss", "role": "a project manager", "goal": "deliver", "apiKeyId": w.key_id, "model": "gpt-4o-mini"}}),
        )
        .await;
    let boss = id_at(&body, &["createAgent"]);
    let crew = w
        .ask(
            CREATE,
            json!({"i": {
                "name": "Managed",
                "process": "HIERARCHICAL",
                "managerAgentId": boss,
                "agentIds": [w.agent_id, writer],
                "tasks": [
                    {"description": "Research {topic}", "expectedOutput": "facts", "agentId": w.agent_id},
                    {"description": "Write it up", "expectedOutput": "a paragraph"}
                ]
            }}),
        )
        .await;
    let crew_id = id_at(&crew, &["createCrew"]);
    assert_eq!(crew["data"]["createCrew"]["manager"]["name"], "Boss");
    // The manager's turns (only requests offering tools play them): delegate, delegate, answer.
    w.fake.queue_tool_turn(ToolTurn::calls(&[(
        "delegate_task",
        r#"{"coworker": "Helper", "task": "Find three facts about owls", "context": "for a school"}"#,
    )]));
    w.fake.queue_tool_turn(ToolTurn::calls(&[(
        "delegate_task",
        r#"{"coworker": "writer", "task": "Write a paragraph from these facts"}"#,
    )]));
    let body = w
        .ask(RUN, json!({"c": crew_id, "in": {"topic": "owls"}}))
        .await;
    let run_id = id_at(&body, &["runCrew"]);
    let items = follow(&w.app, &w.user.access, &run_id)
        .await
        .expect("subscription");
    let run = finished(&w, &run_id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["output"], "Hello, world!");
    let roles: Vec<&str> = run["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["crewRole"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["MANAGER", "DELEGATION", "DELEGATION"]);
    let steps = run["executions"].as_array().unwrap();
    assert_eq!(steps[1]["agent"]["name"], "Helper");
    assert_eq!(
        steps[1]["input"],
        "Find three facts about owls\n\nContext:\nfor a school"
    );
    assert_eq!(steps[2]["agent"]["name"], "Writer");

    let requests = completions(&w);
    assert_eq!(
        requests.len(),
        5,
        "manager, delegation, manager, delegation, manager"
    );
    let manager_first = &requests[0];
    assert_eq!(
        manager_first["tools"][0]["function"]["name"],
        "delegate_task"
    );
    assert_eq!(
        manager_first["tools"][0]["function"]["parameters"]["properties"]["coworker"]["enum"],
        json!(["Helper", "Writer"])
    );
    let manager_input = manager_first["messages"][1]["content"].as_str().unwrap();
    assert!(manager_input.contains("Research owls"), "{manager_input}");
    assert!(
        manager_input.contains("- Writer: a concise technical writer"),
        "{manager_input}"
    );
    assert!(
        requests[1].get("tools").is_none(),
        "members get no delegation tool"
    );
    // The manager's last turn carries both delegations' results.
    let last = requests[4]["messages"].as_array().unwrap();
    let results: Vec<&str> = last
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(results, ["Hello, world!", "Hello, world!"]);

    // The one subscription saw all three steps, the delegations' events included.
    let started: Vec<&str> = items
        .iter()
        .filter(|i| i["kind"] == "STEP_STARTED")
        .map(|i| i["role"].as_str().unwrap())
        .collect();
    assert_eq!(started, ["MANAGER", "DELEGATION", "DELEGATION"]);
    let tool_calls = items
        .iter()
        .filter(|i| i["event"]["kind"] == "TOOL_CALL")
        .count();
    assert_eq!(tool_calls, 2);
    assert_eq!(items.last().unwrap()["kind"], "SUCCEEDED");
}

#[tokio::test]
async fn a_manager_past_the_delegation_limit_is_told_to_answer() {
    let (w, writer) = crew_world(|c| c.crew_max_delegations = 1).await;
    let crew = w
        .ask(
            CREATE,
            json!({"i": {"name": "M", "process": "HIERARCHICAL", "managerAgentId": w.agent_id, "agentIds": [writer],
                   "tasks": [{"description": "d", "expectedOutput": "e"}]}}),
        )
        .await;
    let crew_id = id_at(&crew, &["createCrew"]);
    w.fake.queue_tool_turn(ToolTurn::calls(&[
        ("delegate_task", r#"{"coworker": "Writer", "task": "one"}"#),
        ("delegate_task", r#"{"coworker": "Writer", "task": "two"}"#),
    ]));
    let run_id = id_at(&w.ask(RUN, json!({"c": crew_id})).await, &["runCrew"]);
    let run = finished(&w, &run_id).await;
    assert_eq!(run["status"], "SUCCEEDED");
    assert_eq!(
        run["executions"].as_array().unwrap().len(),
        2,
        "one delegation ran"
    );
    let requests = completions(&w);
    let results: Vec<String> = requests.last().unwrap()["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["content"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(results.len(), 2);
    assert!(
        results
            .iter()
            .any(|r| r.contains("delegation limit (1) is reached")),
        "{results:?}"
    );
}

#[tokio::test]
async fn cancelling_a_crew_run_cancels_its_running_task_and_skips_the_rest() {
    let (w, writer) = crew_world(|_| {}).await;
    w.fake
        .set_stream(slow(&["a", "b", "c", "d", "e", "f", "g", "h"], 250));
    let crew_id = id_at(&sequential_crew(&w, &writer).await, &["createCrew"]);
    let run_id = id_at(
        &w.ask(
            RUN,
            json!({"c": crew_id, "in": {"topic": "t", "audience": "a"}}),
        )
        .await,
        &["runCrew"],
    );
    // Wait for the first task to stream.
    let mut first = Value::Null;
    for _ in 0..200 {
        let run = w.ask(CREW_RUN, json!({"id": run_id})).await;
        first = run["data"]["crewRun"]["executions"][0].clone();
        if first["status"] == "RUNNING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(first["status"], "RUNNING");
    // A crew with a run under way cannot be deleted.
    let delete = w
        .ask(
            "mutation($id: ID!) { deleteCrew(id: $id) }",
            json!({"id": crew_id}),
        )
        .await;
    assert_eq!(code(&delete), "CONFLICT");

    let body = w
        .ask(
            "mutation($id: ID!) { cancelCrewRun(id: $id) { status } }",
            json!({"id": run_id}),
        )
        .await;
    assert_eq!(
        body["data"]["cancelCrewRun"]["status"], "CANCELLED",
        "{body}"
    );
    let run = finished(&w, &run_id).await;
    let steps = run["executions"].as_array().unwrap();
    assert_eq!(steps.len(), 1, "the second task never started");
    assert_eq!(steps[0]["status"], "CANCELLED");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(completions(&w).len(), 1);
    assert!(
        w.fake.client_disconnects() >= 1,
        "the provider stream was dropped"
    );
    // The subscription of an ended crew run replays and ends CANCELLED.
    let items = follow(&w.app, &w.user.access, &run_id)
        .await
        .expect("subscription");
    assert_eq!(items.last().unwrap()["kind"], "CANCELLED");
    assert_eq!(
        items.iter().rev().nth(1).unwrap()["event"]["kind"],
        "CANCELLED",
        "the task's own terminal event comes first"
    );
    // Once ended, the crew can be deleted; its run stays in the history, unlinked.
    let delete = w
        .ask(
            "mutation($id: ID!) { deleteCrew(id: $id) }",
            json!({"id": crew_id}),
        )
        .await;
    assert_eq!(delete["data"]["deleteCrew"], true);
    let run = w
        .ask(
            "query($id: ID!) { crewRun(id: $id) { crewId crewName } }",
            json!({"id": run_id}),
        )
        .await;
    assert_eq!(
        run["data"]["crewRun"],
        json!({"crewId": null, "crewName": "Research and write"})
    );
}

#[tokio::test]
async fn another_user_can_read_run_change_or_follow_none_of_a_crew() {
    let (w, writer) = crew_world(|_| {}).await;
    let crew_id = id_at(&sequential_crew(&w, &writer).await, &["createCrew"]);
    let run_id = id_at(
        &w.ask(
            RUN,
            json!({"c": crew_id, "in": {"topic": "t", "audience": "a"}}),
        )
        .await,
        &["runCrew"],
    );
    finished(&w, &run_id).await;
    let mallory = w.app.register("mallory@example.com").await;
    let ask = |q: &'static str, v: Value| {
        let (app, token) = (&w.app, mallory.access.clone());
        async move { app.gql_as(Some(&token), q, v).await }
    };
    let crew = ask(
        "query($id: ID!) { crew(id: $id) { id } }",
        json!({"id": crew_id}),
    )
    .await;
    assert_eq!(crew["data"]["crew"], Value::Null);
    let run = ask(
        "query($id: ID!) { crewRun(id: $id) { id } }",
        json!({"id": run_id}),
    )
    .await;
    assert_eq!(run["data"]["crewRun"], Value::Null);
    let list = ask(
        "{ crews { edges { node { id } } } crewRuns { edges { node { id } } } }",
        json!({}),
    )
    .await;
    assert_eq!(list["data"]["crews"]["edges"], json!([]));
    assert_eq!(list["data"]["crewRuns"]["edges"], json!([]));
    let start = ask(
        RUN,
        json!({"c": crew_id, "in": {"topic": "t", "audience": "a"}}),
    )
    .await;
    assert_eq!(code(&start), "NOT_FOUND");
    let cancel = ask(
        "mutation($id: ID!) { cancelCrewRun(id: $id) { id } }",
        json!({"id": run_id}),
    )
    .await;
    assert_eq!(code(&cancel), "NOT_FOUND");
    let delete = ask(
        "mutation($id: ID!) { deleteCrew(id: $id) }",
        json!({"id": crew_id}),
    )
    .await;
    assert_eq!(code(&delete), "NOT_FOUND");
    let update = ask(
        "mutation($id: ID!, $i: CrewInput!) { updateCrew(id: $id, input: $i) { id } }",
        json!({"id": crew_id, "i": {"name": "x", "agentIds": [], "tasks": []}}),
    )
    .await;
    assert_eq!(code(&update), "NOT_FOUND");
    // Their own crew cannot take someone else's agents.
    let steal = ask(
        CREATE,
        json!({"i": {"name": "mine", "agentIds": [w.agent_id], "tasks": [{"description": "d", "expectedOutput": "e", "agentId": w.agent_id}]}}),
    )
    .await;
    assert_eq!(
        (code(&steal), field(&steal)),
        ("BAD_USER_INPUT", "input.agentIds[0]")
    );
    let followed = follow(&w.app, &mallory.access, &run_id).await;
    let errors = followed.expect_err("no subscription to another user's crew run");
    assert_eq!(errors[0]["extensions"]["code"], "NOT_FOUND", "{errors}");
}

#[tokio::test]
async fn a_list_of_crews_with_their_runs_takes_as_many_statements_for_one_as_for_ten() {
    let (w, writer) = crew_world(|c| {
        c.execution_heartbeat_secs = 3600;
        c.dataloader_delay_ms = 20;
    })
    .await;
    for i in 0..10 {
        let body = w
            .ask(
                CREATE,
                json!({"i": {"name": format!("crew {i}"), "agentIds": [w.agent_id, writer],
                       "tasks": [{"description": "d", "expectedOutput": "e", "agentId": writer}]}}),
            )
            .await;
        id_at(&body, &["createCrew"]);
    }
    w.app
        .sql(&format!(
            "INSERT INTO crew_runs (id, user_id, crew_id, crew_name, process, status) \
             SELECT gen_random_uuid(), c.user_id, c.id, c.name, c.process, 'SUCCEEDED' \
             FROM crews c, generate_series(1, 2) WHERE c.user_id = '{}'",
            w.user.user_id
        ))
        .await;
    w.app
        .sql(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input, crew_run_id, crew_role, crew_task) \
             SELECT gen_random_uuid(), r.user_id, a.id, a.api_key_id, 'OPENAI', a.model, 'SUCCEEDED', 'seed', r.id, 'TASK', 0 \
             FROM crew_runs r JOIN agents a ON a.user_id = r.user_id AND a.name = 'Writer'",
        )
        .await;
    let count = |n: i32| {
        let w = &w;
        async move {
            let query = format!(
                "{{ crews(first: {n}) {{ edges {{ node {{ name agents {{ name }} tasks {{ agent {{ name }} }} runs(first: 5) {{ edges {{ node {{ status executions {{ id agent {{ name }} }} }} }} }} }} }} }} }}"
            );
            let before = w.app.state.query_counter.get();
            let body = w.ask(&query, json!({})).await;
            let after = w.app.state.query_counter.get();
            let edges = body["data"]["crews"]["edges"]
                .as_array()
                .unwrap_or_else(|| panic!("{body}"));
            assert_eq!(edges.len(), n as usize);
            let runs = edges[0]["node"]["runs"]["edges"].as_array().unwrap();
            assert_eq!(runs.len(), 2);
            assert_eq!(runs[0]["node"]["executions"][0]["agent"]["name"], "Writer");
            after - before
        }
    };
    let one = count(1).await;
    let ten = count(10).await;
    assert_eq!(one, ten, "statements for 1 crew: {one}, for 10: {ten}");
}

#[tokio::test]
async fn templates_are_listed_and_a_crew_template_is_made_and_runs_in_one_mutation() {
    let (w, _writer) = crew_world(|_| {}).await;
    let list = w
        .ask("{ templates { id kind name inputs process agents { name tools } manager { name } tasks { agentName } } }", json!({}))
        .await;
    let templates = list["data"]["templates"]
        .as_array()
        .unwrap_or_else(|| panic!("{list}"));
    let ids: Vec<&str> = templates
        .iter()
        .map(|t| t["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "researcher",
            "writer",
            "research-and-write",
            "support-triage"
        ]
    );
    let crew_template = &templates[2];
    assert_eq!(crew_template["kind"], "CREW");
    assert_eq!(crew_template["inputs"], json!(["topic", "audience"]));
    assert_eq!(crew_template["tasks"][1]["agentName"], "Writer");
    assert_eq!(templates[3]["manager"]["name"], "Support Lead");
    assert_eq!(templates[0]["process"], Value::Null);

    const MAKE: &str = "mutation($id: ID!, $k: ID!, $m: String!) { instantiateTemplate(id: $id, apiKeyId: $k, model: $m) { agents { id name role tools } crew { id name process inputs agents { name } tasks { agent { name } } } } }";
    // The world already has a "Writer": the template's gets a number.
    let made = w
        .ask(
            MAKE,
            json!({"id": "research-and-write", "k": w.key_id, "m": "gpt-4o-mini"}),
        )
        .await;
    let made = &made["data"]["instantiateTemplate"];
    let names: Vec<&str> = made["agents"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["Researcher", "Writer 2"]);
    assert_eq!(
        made["agents"][0]["tools"],
        json!(["WIKIPEDIA", "CALCULATOR"])
    );
    assert_eq!(made["crew"]["name"], "Research and write");
    assert_eq!(made["crew"]["tasks"][1]["agent"]["name"], "Writer 2");
    let crew_id = made["crew"]["id"].as_str().unwrap();
    let run_id = id_at(
        &w.ask(
            RUN,
            json!({"c": crew_id, "in": {"topic": "owls", "audience": "adults"}}),
        )
        .await,
        &["runCrew"],
    );
    assert_eq!(finished(&w, &run_id).await["status"], "SUCCEEDED");

    // All or nothing: a bad key or an unknown template creates nothing.
    let agents_before = w
        .ask(
            "{ agents(first: 100) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    for (id, key, model, refused) in [
        (
            "support-triage",
            "00000000-0000-7000-8000-000000000000",
            "gpt-4o-mini",
            "apiKeyId",
        ),
        ("support-triage", w.key_id.as_str(), "has spaces", "model"),
        ("nope", w.key_id.as_str(), "gpt-4o-mini", "id"),
    ] {
        let body = w.ask(MAKE, json!({"id": id, "k": key, "m": model})).await;
        assert_eq!(
            (code(&body), field(&body)),
            ("BAD_USER_INPUT", refused),
            "{body}"
        );
    }
    let agents_after = w
        .ask(
            "{ agents(first: 100) { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert_eq!(agents_before, agents_after);
}

#[tokio::test]
async fn a_crew_run_whose_coordinator_died_is_failed_by_a_live_instance_and_its_watchers_told() {
    let (w, writer) = crew_world(|_| {}).await;
    let crew_id = id_at(&sequential_crew(&w, &writer).await, &["createCrew"]);
    // A crew run left RUNNING by a process that is about to die: followed while alive, then
    // its heartbeat goes stale.
    let id = "01a24038-0000-7000-8000-00000000c0de";
    w.app
        .sql(&format!(
            "INSERT INTO crew_runs (id, user_id, crew_id, crew_name, process, status, started_at) \
             VALUES ('{id}', '{}', '{crew_id}', 'Research and write', 'SEQUENTIAL', 'RUNNING', now())",
            w.user.user_id
        ))
        .await;
    let (app, token) = (&w.app, w.user.access.clone());
    let following = follow(app, &token, id);
    let dying = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        w.app
            .sql(&format!(
                "UPDATE crew_runs SET heartbeat_at = now() - interval '1 hour' WHERE id = '{id}'"
            ))
            .await;
    };
    let (items, ()) = tokio::join!(following, dying);
    let items = items.expect("subscription");
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(items[0]["kind"], "FAILED");
    assert_eq!(
        items[0]["crewRun"]["error"],
        "the server running this crew run stopped before it finished"
    );
    // Its crew may be run again (and deleted): nothing is left in progress.
    let delete = w
        .ask(
            "mutation($id: ID!) { deleteCrew(id: $id) }",
            json!({"id": crew_id}),
        )
        .await;
    assert_eq!(delete["data"]["deleteCrew"], true, "{delete}");
}

#[tokio::test]
async fn cancelling_a_hierarchical_crew_cancels_the_delegated_run_and_delegations_go_one_at_a_time()
{
    let (w, writer) = crew_world(|_| {}).await;
    w.fake
        .set_stream(slow(&["a", "b", "c", "d", "e", "f", "g", "h"], 250));
    let crew = w
        .ask(
            CREATE,
            json!({"i": {"name": "M", "process": "HIERARCHICAL", "managerAgentId": w.agent_id, "agentIds": [writer],
                   "tasks": [{"description": "d", "expectedOutput": "e"}]}}),
        )
        .await;
    let crew_id = id_at(&crew, &["createCrew"]);
    // Two delegations in one turn: the second waits for the first.
    w.fake.queue_tool_turn(ToolTurn::calls(&[
        ("delegate_task", r#"{"coworker": "Writer", "task": "one"}"#),
        ("delegate_task", r#"{"coworker": "Writer", "task": "two"}"#),
    ]));
    let run_id = id_at(&w.ask(RUN, json!({"c": crew_id})).await, &["runCrew"]);
    let mut steps = Value::Null;
    for _ in 0..200 {
        let run = w.ask(CREW_RUN, json!({"id": run_id})).await;
        steps = run["data"]["crewRun"]["executions"].clone();
        if steps[1]["status"] == "RUNNING" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(steps[1]["status"], "RUNNING", "{steps}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = w.ask(CREW_RUN, json!({"id": run_id})).await;
    assert_eq!(
        run["data"]["crewRun"]["executions"]
            .as_array()
            .unwrap()
            .len(),
        2,
        "the manager and one delegation: the second waits"
    );
    let body = w
        .ask(
            "mutation($id: ID!) { cancelCrewRun(id: $id) { status } }",
            json!({"id": run_id}),
        )
        .await;
    assert_eq!(
        body["data"]["cancelCrewRun"]["status"], "CANCELLED",
        "{body}"
    );
    // The delegated run is cancelled too (its provider stream dropped), and nothing else starts.
    let delegated = steps[1]["id"].as_str().unwrap();
    assert_eq!(w.finished(delegated).await["status"], "CANCELLED");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let run = finished(&w, &run_id).await;
    let statuses: Vec<&str> = run["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses, ["CANCELLED", "CANCELLED"]);
    assert_eq!(completions(&w).len(), 2, "manager and one delegation only");
}
