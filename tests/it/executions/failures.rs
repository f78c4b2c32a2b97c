//! How runs end when things go wrong: provider failures, retries before the first token, time limits, missing usage, a dead process.

use super::*;

#[tokio::test]
async fn provider_failures_end_the_run_failed_with_a_readable_error() {
    let w = world().await;
    let cases: Vec<(Mode, Option<StreamScript>, &str)> = vec![
        (
            Mode::Status {
                status: 401,
                retry_after_secs: None,
            },
            None,
            "rejected the API key",
        ),
        (
            Mode::Status {
                status: 500,
                retry_after_secs: None,
            },
            None,
            "unavailable",
        ),
        (
            Mode::Status {
                status: 429,
                retry_after_secs: Some(0),
            },
            None,
            "rate-limiting",
        ),
        (
            Mode::Normal,
            Some(StreamScript {
                error_after: Some(1),
                ..StreamScript::default()
            }),
            "mid-stream",
        ),
        (
            Mode::Normal,
            Some(StreamScript {
                malformed_after: Some(1),
                ..StreamScript::default()
            }),
            "malformed",
        ),
        (Mode::Delay(Duration::from_secs(5)), None, "did not answer"),
    ];
    for (mode, script, expected) in cases {
        w.fake.set_mode(mode);
        w.fake.set_stream(script.unwrap_or_default());
        let (run, events) = failure(&w).await;
        assert_eq!(run["status"], "FAILED", "{expected}: {run}");
        let error = run["error"].as_str().unwrap();
        assert!(
            error.contains(expected),
            "expected `{expected}` in `{error}`"
        );
        assert!(!error.contains(OPENAI_KEY));
        assert_eq!(kinds(&events).last().map(String::as_str), Some("FAILED"));
        assert_eq!(events.last().unwrap()["data"]["error"], error);
        let n = events.len() as i64;
        assert_eq!(sequences(&events), (1..=n).collect::<Vec<_>>());
    }
}

#[tokio::test]
async fn server_errors_before_any_token_are_retried() {
    let w = world().await;
    w.fake.set_mode(Mode::FailTimes {
        status: 503,
        times: 2,
    });
    w.fake.set_stream(slow(&["ok"], 0));
    let id = w.start("retry please").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    assert_eq!(run["output"], "ok");
    let attempts = w
        .fake
        .requests()
        .iter()
        .filter(|r| r.path == "/v1/chat/completions")
        .count();
    assert_eq!(attempts, 3);
}

#[tokio::test]
async fn a_run_over_its_time_limit_ends_timed_out() {
    let w = world_with("OPENAI", "gpt-4o-mini", |c| c.execution_timeout_secs = 1).await;
    w.fake.set_stream(slow(&["slow"; 100], 50));
    let id = w.start("take your time").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "TIMED_OUT", "{run}");
    assert!(
        !run["output"].as_str().unwrap().is_empty(),
        "output so far is kept"
    );
    let events = w.events(&id).await;
    assert_eq!(kinds(&events).last().map(String::as_str), Some("TIMED_OUT"));
}

#[tokio::test]
async fn a_provider_without_usage_gets_estimated_tokens_and_cost() {
    let w = world().await;
    w.fake.set_stream(StreamScript {
        report_usage: false,
        ..slow(&["twelve chars"], 0)
    });
    let id = w.start("estimate me").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "SUCCEEDED");
    assert_eq!(run["costEstimated"], true, "{run}");
    assert_eq!(run["outputTokens"], 3);
    assert!(run["inputTokens"].as_i64().unwrap() > 0);
}

#[tokio::test]
async fn a_run_whose_process_died_is_failed_by_a_live_instance() {
    let w = world().await;
    // A run left RUNNING by a process that is gone: heartbeat long past.
    w.app
        .sql(&format!(
            "INSERT INTO executions (id, user_id, agent_id, api_key_id, provider, model, status, input, output, last_sequence, heartbeat_at, started_at) \
             VALUES ('{}', '{}', '{}', '{}', 'OPENAI', 'gpt-4o-mini', 'RUNNING', 'orphan', 'partial', 2, now() - interval '1 hour', now() - interval '1 hour'); \
             INSERT INTO execution_events (execution_id, sequence, kind, data) SELECT id, 1, 'STARTED', '{{}}' FROM executions WHERE input = 'orphan'; \
             INSERT INTO execution_events (execution_id, sequence, kind, delta) SELECT id, 2, 'OUTPUT_DELTA', 'partial' FROM executions WHERE input = 'orphan';",
            uuid::Uuid::now_v7(),
            w.user.user_id,
            w.agent_id,
            w.key_id
        ))
        .await;
    let id: String = w
        .app
        .db()
        .await
        .query_one(
            "SELECT id::text FROM executions WHERE input = 'orphan'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    // A subscriber waiting on it is released by the recovery with a terminal event.
    let events = subscribe(&w.app, &w.user.access, &id, None)
        .await
        .expect("subscription");
    assert_eq!(sequences(&events), vec![1, 2, 3]);
    assert_eq!(kinds(&events).last().map(String::as_str), Some("FAILED"));
    let run = w.execution(&id).await;
    assert_eq!(run["status"], "FAILED");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("stopped before it finished")
    );
    assert_eq!(run["output"], "partial");
}
