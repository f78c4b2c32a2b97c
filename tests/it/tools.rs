//! Agent tools end to end: the tool loop over OpenAI's and Anthropic's streamed function calling
//! (fake providers speaking their wire formats), the tools against local fakes of their
//! backends (a MediaWiki API, a SearXNG instance, web pages), events watched over
//! graphql-transport-ws, the step limit, cancel during a tool, failing tools, the egress policy
//! for `http_get`, and the `tools` query.

use std::{
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    Router,
    extract::{Query, State},
    http::{StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde_json::{Value, json};

use crate::{
    common::{code, fake_provider::ToolTurn, field, id_at},
    executions::{World, kinds, subscribe, text, world_with},
};

/// Local stand-ins for the tools' backends; records every query string it receives.
pub(crate) struct Backends {
    base: String,
    seen: Arc<Mutex<Vec<String>>>,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Backends {
    fn drop(&mut self) {
        self.server.abort();
    }
}

type Seen = Arc<Mutex<Vec<String>>>;

/// MediaWiki Action API (`formatversion=2` JSON), as Wikipedia answers it.
async fn mediawiki(
    State(seen): State<Seen>,
    axum::extract::Path(lang): axum::extract::Path<String>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    seen.lock().unwrap().push(format!("wiki:{lang}:{q:?}"));
    if q.get("list").map(String::as_str) == Some("search") {
        return axum::Json(json!({
            "batchcomplete": true,
            "continue": {"sroffset": 2, "continue": "-||"},
            "query": {"searchinfo": {"totalhits": 2}, "search": [
                {"ns": 0, "title": "Rust (programming language)", "pageid": 29414838, "size": 120000,
                 "wordcount": 9000, "snippet": "<span class=\"searchmatch\">Rust</span> is a general-purpose programming language &amp; more",
                 "timestamp": "2026-11-30T10:00:00Z"},
                {"ns": 0, "title": "Rust", "pageid": 26477, "size": 30000, "wordcount": 3000,
                 "snippet": "<span class=\"searchmatch\">Rust</span> is an iron oxide", "timestamp": "2026-11-01T10:00:00Z"}
            ]}
        }))
        .into_response();
    }
    let title = q.get("titles").cloned().unwrap_or_default();
    if title == "Nowhere" {
        return axum::Json(json!({"batchcomplete": true, "query": {"pages": [
            {"ns": 0, "title": "Nowhere", "missing": true}
        ]}}))
        .into_response();
    }
    axum::Json(json!({"batchcomplete": true, "query": {"pages": [
        {"pageid": 29414838, "ns": 0, "title": title,
         "extract": "Rust is a general-purpose programming language emphasizing performance, type safety, and concurrency."}
    ]}}))
    .into_response()
}

/// SearXNG's `/search?format=json`.
async fn searxng(
    State(seen): State<Seen>,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    seen.lock().unwrap().push(format!("searx:{q:?}"));
    if q.get("format").map(String::as_str) != Some("json") {
        return (StatusCode::FORBIDDEN, "format not allowed").into_response();
    }
    axum::Json(json!({
        "query": q.get("q"),
        "number_of_results": 0,
        "results": [
            {"url": "https://www.rust-lang.org/", "title": "Rust Programming Language",
             "content": "A language empowering everyone to build reliable and efficient software.",
             "engine": "duckduckgo", "engines": ["duckduckgo"], "score": 1.0, "category": "general"},
            {"url": "https://blog.rust-lang.org/", "title": "Rust Blog",
             "content": "Empowering everyone to build reliable and efficient software.",
             "engine": "bing", "engines": ["bing"], "score": 0.5, "category": "general"}
        ],
        "answers": [], "corrections": [], "infoboxes": [], "suggestions": [], "unresponsive_engines": []
    }))
    .into_response()
}

/// The Brave Search API's key a fake accepts, and Tavily's.
const BRAVE_KEY: &str = "BSAtestbravekey0123456789abcdef";
const TAVILY_KEY: &str = "tvly-test-tavily-key-0123456789";

/// Brave's `GET /res/v1/web/search` (`X-Subscription-Token`), with its real error shape.
async fn brave(
    State(seen): State<Seen>,
    headers: axum::http::HeaderMap,
    Query(q): Query<std::collections::HashMap<String, String>>,
) -> Response {
    seen.lock().unwrap().push(format!("brave:{q:?}"));
    if headers
        .get("x-subscription-token")
        .and_then(|v| v.to_str().ok())
        != Some(BRAVE_KEY)
    {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"type": "ErrorResponse", "error": {"id": "5b3e", "status": 401,
                "code": "SUBSCRIPTION_TOKEN_INVALID", "detail": "The provided subscription token is invalid."}})),
        )
            .into_response();
    }
    axum::Json(json!({"type": "search", "query": {"original": q.get("q")},
        "web": {"type": "search", "results": [
            {"title": "Rust Programming Language", "url": "https://www.rust-lang.org/",
             "description": "A <strong>language</strong> empowering everyone &amp; more", "language": "en"}
        ]}}))
    .into_response()
}

/// Tavily's `POST /search` (bearer key), with its real error shape.
async fn tavily(
    State(seen): State<Seen>,
    headers: axum::http::HeaderMap,
    axum::Json(body): axum::Json<Value>,
) -> Response {
    seen.lock().unwrap().push(format!("tavily:{body}"));
    let expected = format!("Bearer {TAVILY_KEY}");
    if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(expected.as_str()) {
        return (
            StatusCode::UNAUTHORIZED,
            axum::Json(json!({"detail": {"error": "Unauthorized: missing or invalid API key."}})),
        )
            .into_response();
    }
    axum::Json(json!({"query": body["query"], "follow_up_questions": null, "answer": null, "images": [],
        "results": [{"title": "Tavily on Rust", "url": "https://example.org/rust", "content": "Rust is fast.", "score": 0.93, "raw_content": null}],
        "response_time": 0.61}))
    .into_response()
}

impl Backends {
    async fn start() -> Self {
        let seen: Seen = Arc::default();
        let app = Router::new()
            .route("/{lang}/w/api.php", get(mediawiki))
            .route("/searx/search", get(searxng))
            .route("/brave/res/v1/web/search", get(brave))
            .route("/tavily/search", axum::routing::post(tavily))
            .route(
                "/page.html",
                get(|| async {
                    (
                        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                        "<html><head><title>T</title><script>var secret = 1;</script></head>\
                         <body><h1>Opening hours</h1><p>We open at <b>9:00</b> &amp; close at 17:00.</p></body></html>",
                    )
                }),
            )
            .route(
                "/image.png",
                get(|| async { ([(header::CONTENT_TYPE, "image/png")], vec![0x89u8, b'P', b'N', b'G']) }),
            )
            .route(
                "/moved",
                get(|| async { (StatusCode::FOUND, [(header::LOCATION, "http://169.254.169.254/latest/meta-data/")]) }),
            )
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    "late"
                }),
            )
            .with_state(seen.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { base, seen, server }
    }

    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
}

/// A world (server, fake provider, user, key) whose tools point at fresh backends, and whose
/// agent has `tools` and `config`.
async fn tool_world(
    provider: &str,
    model: &str,
    tools: &[&str],
    config: Value,
    adjust: impl FnOnce(&mut agentry::config::Config),
) -> (Backends, World) {
    let backends = Backends::start().await;
    let base = backends.base.clone();
    let mut w = world_with(provider, model, move |c| {
        c.wikipedia_url = format!("{base}/{{lang}}/w/api.php");
        c.searxng_url = Some(format!("{base}/searx"));
        c.tool_timeout_secs = 5;
        adjust(c);
    })
    .await;
    let agent = w.ask("mutation($i: CreateAgentInput!) { createAgent(input: $i) { id tools } }",
            json!({"i": {"name": "Researcher", "role": "a researcher", "goal": "find facts", "apiKeyId": w.key_id,
                         "model": model, "tools": tools, "config": config}}),
        )
        .await;
    w.agent_id = id_at(&agent, &["createAgent"]);
    (backends, w)
}

/// A world on the fake OpenAI whose agent has `tools` and `config`.
pub(crate) async fn openai_world(tools: &[&str], config: Value) -> (Backends, World) {
    tool_world("OPENAI", "gpt-4o-mini", tools, config, |_| {}).await
}

/// Starts a run with `input` and waits for its end: (id, the run, its events).
async fn run_to_end(w: &World, input: &str) -> (String, Value, Vec<Value>) {
    let id = w.start(input).await;
    let run = w.finished(&id).await;
    let events = w.events(&id).await;
    (id, run, events)
}

/// Events of `kind`.
fn of_kind<'a>(events: &'a [Value], kind: &str) -> Vec<&'a Value> {
    events.iter().filter(|e| e["kind"] == kind).collect()
}

/// The provider requests that asked for a completion, in order.
pub(crate) fn completions(w: &World) -> Vec<Value> {
    w.fake
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST")
        .map(|r| r.body)
        .collect()
}

#[tokio::test]
async fn an_openai_agent_runs_two_tools_of_one_turn_and_answers_from_their_results() {
    let (backends, w) = openai_world(
        &["CALCULATOR", "WIKIPEDIA"],
        json!({"wikipediaLanguage": "de"}),
    )
    .await;
    w.fake.queue_tool_turn(ToolTurn::calls(&[
        ("calculator", r#"{"expression": "6 * 7"}"#),
        ("wikipedia_search", r#"{"query": "Rust"}"#),
    ]));
    let id = w.start("What is six times seven, and what is Rust?").await;
    let events = subscribe(&w.app, &w.user.access, &id, None)
        .await
        .expect("stream");
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");

    // Live order: the calls, their results, then the answer.
    let k = kinds(&events);
    assert_eq!(
        &k[..5],
        [
            "STARTED",
            "TOOL_CALL",
            "TOOL_CALL",
            "TOOL_RESULT",
            "TOOL_RESULT"
        ],
        "{k:?}"
    );
    assert_eq!(&k[k.len() - 2..], ["USAGE", "COMPLETED"]);
    let calls = of_kind(&events, "TOOL_CALL");
    assert_eq!(calls[0]["data"]["tool"], "calculator");
    assert_eq!(
        calls[0]["data"]["arguments"],
        json!({"expression": "6 * 7"})
    );
    assert_eq!(calls[1]["data"]["tool"], "wikipedia_search");
    let results = of_kind(&events, "TOOL_RESULT");
    let by_tool = |tool: &str| {
        results
            .iter()
            .find(|r| r["data"]["tool"] == tool)
            .map(|r| (*r).clone())
            .unwrap()
    };
    assert_eq!(by_tool("calculator")["data"]["result"], "42");
    assert_eq!(by_tool("calculator")["data"]["error"], Value::Null);
    assert!(by_tool("calculator")["data"]["durationMs"].is_u64());
    let wiki = by_tool("wikipedia_search")["data"]["result"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        wiki.contains(
            "Rust (programming language): Rust is a general-purpose programming language & more"
        ),
        "{wiki}"
    );
    assert_eq!(text(&events), "Hello, world!");
    assert_eq!(run["output"], "Hello, world!");
    // Tokens of both turns: 12 + 12 in, 7 + 4 out.
    assert_eq!(
        (run["inputTokens"].as_i64(), run["outputTokens"].as_i64()),
        (Some(24), Some(11))
    );

    // The model saw the tools, then got each result back under its call id.
    let sent = completions(&w);
    assert_eq!(sent.len(), 2);
    let names: Vec<&str> = sent[0]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        ["calculator", "wikipedia_search", "wikipedia_page"],
        "in the order of the agent's tools"
    );
    let messages = sent[1]["messages"].as_array().unwrap();
    let assistant = &messages[2];
    assert_eq!(assistant["role"], "assistant");
    let call_ids: Vec<&str> = assistant["tool_calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        assistant["tool_calls"][0]["function"]["arguments"],
        r#"{"expression": "6 * 7"}"#
    );
    assert_eq!(messages[3]["role"], "tool");
    assert_eq!(messages[3]["tool_call_id"], call_ids[0]);
    assert_eq!(messages[3]["content"], "42");
    assert_eq!(messages[4]["tool_call_id"], call_ids[1]);
    assert!(
        messages[4]["content"]
            .as_str()
            .unwrap()
            .contains("Rust is an iron oxide")
    );
    // The agent's language chose the Wikipedia edition.
    assert!(
        backends.seen().iter().any(|s| s.starts_with("wiki:de:")),
        "{:?}",
        backends.seen()
    );
}

#[tokio::test]
async fn an_anthropic_agent_gets_tool_results_back_as_tool_result_blocks() {
    let (_backends, w) = tool_world(
        "ANTHROPIC",
        "claude-sonnet-4-20250514",
        &["WIKIPEDIA"],
        json!({}),
        |_| {},
    )
    .await;
    w.fake.queue_tool_turn(ToolTurn {
        text: "Let me look that up.".into(),
        calls: vec![(
            "wikipedia_page".into(),
            r#"{"title": "Rust (programming language)"}"#.into(),
        )],
    });
    let id = w.start("Tell me about Rust").await;
    let events = subscribe(&w.app, &w.user.access, &id, None)
        .await
        .expect("stream");
    assert_eq!(w.finished(&id).await["status"], "SUCCEEDED");
    let k = kinds(&events);
    assert_eq!(
        &k[..4],
        ["STARTED", "OUTPUT_DELTA", "TOOL_CALL", "TOOL_RESULT"],
        "{k:?}"
    );
    assert_eq!(text(&events), "Let me look that up.Hello, world!");

    let sent = completions(&w);
    assert_eq!(sent.len(), 2);
    assert_eq!(sent[0]["tools"][0]["name"], "wikipedia_search");
    assert!(sent[0]["tools"][1]["input_schema"]["properties"]["title"].is_object());
    let messages = sent[1]["messages"].as_array().unwrap();
    assert_eq!(messages[1]["role"], "assistant");
    assert_eq!(
        messages[1]["content"][0],
        json!({"type": "text", "text": "Let me look that up."})
    );
    let tool_use = &messages[1]["content"][1];
    assert_eq!(tool_use["type"], "tool_use");
    assert_eq!(
        tool_use["input"],
        json!({"title": "Rust (programming language)"})
    );
    let result = &messages[2]["content"][0];
    assert_eq!(messages[2]["role"], "user");
    assert_eq!(result["type"], "tool_result");
    assert_eq!(result["tool_use_id"], tool_use["id"]);
    assert_eq!(result["is_error"], false);
    assert!(
        result["content"]
            .as_str()
            .unwrap()
            .contains("emphasizing performance")
    );
}

#[tokio::test]
async fn malformed_arguments_and_failing_tools_are_told_to_the_model_and_the_run_goes_on() {
    let (_backends, w) =
        openai_world(&["CALCULATOR", "WIKIPEDIA", "HTTP_REQUEST"], json!({})).await;
    w.fake.queue_tool_turn(ToolTurn::calls(&[
        ("calculator", r#"{"expression": "#),
        ("calculator", r#"{"expression": "1 / 0"}"#),
        ("wikipedia_page", r#"{"title": "Nowhere"}"#),
        ("code_interpreter", r#"{"code": "print(1)"}"#),
    ]));
    let (_, run, events) = run_to_end(&w, "try things").await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let results = of_kind(&events, "TOOL_RESULT");
    assert_eq!(results.len(), 4);
    let errors: Vec<String> = results
        .iter()
        .map(|r| r["data"]["error"].as_str().unwrap_or("").to_owned())
        .collect();
    assert!(
        errors.iter().any(|e| e.contains("not valid JSON")),
        "{errors:?}"
    );
    assert!(
        errors.iter().any(|e| e.contains("cannot evaluate `1 / 0`")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("no article titled \"Nowhere\"")),
        "{errors:?}"
    );
    assert!(
        errors
            .iter()
            .any(|e| e.contains("no tool named `code_interpreter`")),
        "{errors:?}"
    );
    // The malformed call is shown as the model wrote it.
    assert_eq!(
        of_kind(&events, "TOOL_CALL")[0]["data"]["arguments"],
        r#"{"expression": "#
    );
    let messages = completions(&w)[1]["messages"].as_array().unwrap().clone();
    let tool_messages: Vec<&Value> = messages.iter().filter(|m| m["role"] == "tool").collect();
    assert_eq!(tool_messages.len(), 4);
    assert!(
        tool_messages
            .iter()
            .all(|m| m["content"].as_str().unwrap().starts_with("Error: "))
    );
}

#[tokio::test]
async fn a_model_still_calling_tools_at_the_step_limit_ends_the_run_failed() {
    let (_backends, w) = openai_world(&["CALCULATOR"], json!({"maxToolSteps": 2})).await;
    for _ in 0..3 {
        w.fake.queue_tool_turn(ToolTurn::calls(&[(
            "calculator",
            r#"{"expression": "1 + 1"}"#,
        )]));
    }
    let (_, run, events) = run_to_end(&w, "loop forever").await;
    assert_eq!(run["status"], "FAILED");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("still calling tools after 2 steps"),
        "{run}"
    );
    assert_eq!(
        completions(&w).len(),
        3,
        "two rounds of tools, then the third turn calls again"
    );
    assert_eq!(of_kind(&events, "TOOL_RESULT").len(), 2);
}

#[tokio::test]
async fn cancelling_during_a_tool_stops_the_run_without_waiting_for_the_tool() {
    let (backends, w) = openai_world(&["HTTP_REQUEST"], json!({})).await;
    w.fake.queue_tool_turn(ToolTurn::calls(&[(
        "http_get",
        &format!(r#"{{"url": "{}/slow"}}"#, backends.base),
    )]));
    let id = w.start("fetch the slow page").await;
    // Wait until the tool is running (its call is recorded).
    for _ in 0..200 {
        if !of_kind(&w.events(&id).await, "TOOL_CALL").is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let started = std::time::Instant::now();
    let body = w
        .ask(
            "mutation($id: ID!) { cancelExecution(id: $id) { id } }",
            json!({"id": id}),
        )
        .await;
    assert!(body["errors"].is_null(), "{body}");
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "CANCELLED");
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "the tool's 30 s were not waited for"
    );
    let events = w.events(&id).await;
    assert!(of_kind(&events, "TOOL_RESULT").is_empty());
    assert_eq!(completions(&w).len(), 1);
}

#[tokio::test]
async fn http_get_reads_pages_as_text_and_reaches_no_internal_address() {
    let (backends, w) = openai_world(&["HTTP_REQUEST"], json!({})).await;
    let base = &backends.base;
    w.fake.queue_tool_turn(ToolTurn::calls(&[
        ("http_get", &format!(r#"{{"url": "{base}/page.html"}}"#)),
        (
            "http_get",
            r#"{"url": "http://169.254.169.254/latest/meta-data/"}"#,
        ),
        ("http_get", r#"{"url": "http://10.1.2.3/admin"}"#),
        ("http_get", &format!(r#"{{"url": "{base}/moved"}}"#)),
        ("http_get", &format!(r#"{{"url": "{base}/image.png"}}"#)),
        ("http_get", r#"{"url": "file:///etc/passwd"}"#),
    ]));
    let (_, run, events) = run_to_end(&w, "read pages").await;
    assert_eq!(run["status"], "SUCCEEDED");
    let results = of_kind(&events, "TOOL_RESULT");
    let outcome = |i: usize| {
        let call_id = &of_kind(&events, "TOOL_CALL")[i]["data"]["id"];
        results
            .iter()
            .find(|r| &r["data"]["id"] == call_id)
            .unwrap()["data"]
            .clone()
    };
    let page = outcome(0)["result"].as_str().unwrap().to_owned();
    assert!(
        page.contains("Opening hours") && page.contains("We open at"),
        "{page}"
    );
    assert!(
        !page.contains("<p>") && !page.contains("var secret"),
        "{page}"
    );
    for i in [1, 2] {
        let error = outcome(i)["error"].as_str().unwrap().to_owned();
        assert!(error.contains("internal network"), "{error}");
    }
    let moved = outcome(3)["error"].as_str().unwrap().to_owned();
    assert!(
        moved.contains("302") && moved.contains("redirects are not followed"),
        "{moved}"
    );
    assert!(
        outcome(4)["error"]
            .as_str()
            .unwrap()
            .contains("image/png, not text")
    );
    assert!(
        outcome(5)["error"]
            .as_str()
            .unwrap()
            .contains("only http and https")
    );
}

#[tokio::test]
async fn web_search_uses_searxng_and_is_unavailable_without_it() {
    let (backends, w) = openai_world(&["WEB_SEARCH"], json!({})).await;
    w.fake.queue_tool_turn(ToolTurn::calls(&[(
        "web_search",
        r#"{"query": "rust language"}"#,
    )]));
    let (_, run, events) = run_to_end(&w, "search").await;
    assert_eq!(run["status"], "SUCCEEDED");
    let result = of_kind(&events, "TOOL_RESULT")[0]["data"]["result"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        result.starts_with("1. Rust Programming Language\n   https://www.rust-lang.org/"),
        "{result}"
    );
    assert!(
        backends
            .seen()
            .iter()
            .any(|s| s.starts_with("searx:") && s.contains("rust language"))
    );
    let listed = w
        .ask("{ tools { tool available reason functions } }", json!({}))
        .await;
    assert_eq!(
        listed["data"]["tools"][0],
        json!({"tool": "WEB_SEARCH", "available": true, "reason": null, "functions": ["web_search"]})
    );

    // A server without a search backend says so, and does not offer the function.
    let plain = world_with("OPENAI", "gpt-4o-mini", |_| {}).await;
    let listed = plain
        .app
        .gql_as(
            Some(&plain.user.access),
            "{ tools { tool available reason } }",
            json!({}),
        )
        .await;
    let web = &listed["data"]["tools"][0];
    assert_eq!(web["available"], false);
    assert!(
        web["reason"]
            .as_str()
            .unwrap()
            .contains("AGENTRY_SEARXNG_URL")
    );
    let tools: Vec<&str> = listed["data"]["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tool"].as_str().unwrap())
        .collect();
    assert_eq!(
        tools,
        [
            "WEB_SEARCH",
            "WIKIPEDIA",
            "CALCULATOR",
            "HTTP_REQUEST",
            "FILES"
        ]
    );
    let anonymous = plain.app.gql("{ tools { tool } }", json!({})).await;
    assert_eq!(code(&anonymous), "UNAUTHENTICATED");
}

#[tokio::test]
async fn an_agent_without_tools_sends_none_and_tool_settings_are_checked() {
    let (_backends, w) = openai_world(&[], json!({})).await;
    assert_eq!(run_to_end(&w, "hi").await.1["status"], "SUCCEEDED");
    assert!(completions(&w)[0].get("tools").is_none());

    let create = |tools: Value, config: Value| {
        w.ask("mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": format!("a{}", rand_suffix()), "role": "r", "goal": "g", "apiKeyId": w.key_id,
                         "model": "gpt-4o-mini", "tools": tools, "config": config}}),
        )
    };
    let body = create(json!(["CALCULATOR"]), json!({"maxToolSteps": 0})).await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "input.config.maxToolSteps")
    );
    let body = create(
        json!(["WIKIPEDIA"]),
        json!({"wikipediaLanguage": "en/../../x"}),
    )
    .await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "input.config.wikipediaLanguage")
    );
    // Nothing here can sandbox code, so it is not offered.
    let body = create(json!(["CODE_INTERPRETER"]), json!({})).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("CODE_INTERPRETER"),
        "{body}"
    );
    assert_eq!(
        w.app
            .count("SELECT count(*) FROM agents WHERE name LIKE 'a%'")
            .await,
        0
    );
}

fn rand_suffix() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..8].to_owned()
}

#[tokio::test]
async fn web_search_uses_the_users_own_brave_or_tavily_key_from_the_vault() {
    let backends = Backends::start().await;
    let base = backends.base.clone();
    let mut w = world_with("OPENAI", "gpt-4o-mini", move |c| {
        c.brave_base_url = format!("{base}/brave");
        c.tavily_base_url = format!("{base}/tavily");
        c.searxng_url = None;
    })
    .await;
    let token = w.user.access.clone();
    let listed = w
        .app
        .gql_as(Some(&token), "{ tools { tool available } }", json!({}))
        .await;
    assert_eq!(
        listed["data"]["tools"][0],
        json!({"tool": "WEB_SEARCH", "available": false})
    );

    let create_key = |name: &str, provider: &str, secret: &str| {
        w.app.gql_as(
            Some(&token),
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { id provider maskedKey } }",
            json!({"i": {"name": name, "provider": provider, "secret": secret}}),
        )
    };
    let tavily = create_key("Tavily", "TAVILY", TAVILY_KEY).await;
    assert_eq!(
        tavily["data"]["createApiKey"]["maskedKey"], "tvly-…6789",
        "{tavily}"
    );
    let bad = create_key("Bad", "TAVILY", "not-a-tavily-key-at-all").await;
    assert_eq!(
        (code(&bad), field(&bad)),
        ("BAD_USER_INPUT", "input.secret")
    );
    let tested = w
        .app
        .gql_as(
            Some(&token),
            "mutation($id: ID!) { testApiKey(id: $id) { ok message } }",
            json!({"id": id_at(&tavily, &["createApiKey"])}),
        )
        .await;
    assert_eq!(tested["data"]["testApiKey"]["ok"], true, "{tested}");
    let listed = w
        .app
        .gql_as(Some(&token), "{ tools { tool available } }", json!({}))
        .await;
    assert_eq!(
        listed["data"]["tools"][0],
        json!({"tool": "WEB_SEARCH", "available": true})
    );

    // A search key cannot be an agent's model key.
    let refused = w
        .app
        .gql_as(
            Some(&token),
            "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "Wrong", "role": "r", "goal": "g", "apiKeyId": id_at(&tavily, &["createApiKey"]), "model": "gpt-4o-mini"}}),
        )
        .await;
    assert_eq!(
        (code(&refused), field(&refused)),
        ("BAD_USER_INPUT", "input.apiKeyId")
    );

    let agent = w
        .app
        .gql_as(
            Some(&token),
            "mutation($i: CreateAgentInput!) { createAgent(input: $i) { id } }",
            json!({"i": {"name": "Searcher", "role": "r", "goal": "g", "apiKeyId": w.key_id, "model": "gpt-4o-mini", "tools": ["WEB_SEARCH"]}}),
        )
        .await;
    w.agent_id = id_at(&agent, &["createAgent"]);
    let search_once = async |w: &World| {
        w.fake
            .queue_tool_turn(ToolTurn::calls(&[("web_search", r#"{"query": "rust"}"#)]));
        let (_, run, events) = run_to_end(w, "search").await;
        assert_eq!(run["status"], "SUCCEEDED", "{run}");
        of_kind(&events, "TOOL_RESULT")[0]["data"].clone()
    };
    let result = search_once(&w).await;
    assert_eq!(
        result["result"],
        "1. Tavily on Rust\n   https://example.org/rust\n   Rust is fast."
    );

    // The newest active search key wins; a rejected key is told to the model.
    let brave = create_key("Brave", "BRAVE", BRAVE_KEY).await;
    assert!(brave["errors"].is_null(), "{brave}");
    let result = search_once(&w).await;
    assert_eq!(
        result["result"],
        "1. Rust Programming Language\n   https://www.rust-lang.org/\n   A language empowering everyone & more"
    );
    let wrong = create_key("Brave 2", "BRAVE", "BSAwrongwrongwrongwrong0000").await;
    let tested = w
        .app
        .gql_as(
            Some(&token),
            "mutation($id: ID!) { testApiKey(id: $id) { ok message } }",
            json!({"id": id_at(&wrong, &["createApiKey"])}),
        )
        .await;
    assert_eq!(tested["data"]["testApiKey"]["ok"], false);
    let result = search_once(&w).await;
    assert!(
        result["error"]
            .as_str()
            .unwrap()
            .contains("Brave Search rejected the search key (HTTP 401"),
        "{result}"
    );
    // The key never shows in what the run recorded.
    let events = serde_json::to_string(&result).unwrap();
    assert!(!events.contains("BSAwrong") && !events.contains(TAVILY_KEY));
    assert!(
        backends
            .seen()
            .iter()
            .any(|s| s.starts_with("tavily:") && s.contains("\"max_results\":5"))
    );
}

#[tokio::test]
async fn turns_without_a_usage_report_are_estimated_and_the_cost_says_so() {
    let (_backends, w) = openai_world(&["CALCULATOR"], json!({})).await;
    w.fake
        .set_stream(crate::common::fake_provider::StreamScript {
            report_usage: false,
            ..Default::default()
        });
    w.fake.queue_tool_turn(ToolTurn::calls(&[(
        "calculator",
        r#"{"expression": "2 + 2"}"#,
    )]));
    let (_, run, _) = run_to_end(&w, "add").await;
    assert_eq!(run["status"], "SUCCEEDED");
    assert_eq!(run["costEstimated"], true, "{run}");
    // Both turns counted: the second carries the first's call and result, so more went in.
    assert!(run["inputTokens"].as_i64().unwrap() > 2 * 50, "{run}");
    assert!(run["outputTokens"].as_i64().unwrap() >= 5, "{run}");
}

#[tokio::test]
async fn a_run_that_cannot_be_prepared_ends_failed_at_once_not_after_recovery() {
    let (_backends, w) = openai_world(&["WEB_SEARCH"], json!({})).await;
    let key = w
        .ask(
            "mutation($i: CreateApiKeyInput!) { createApiKey(input: $i) { id } }",
            json!({"i": {"name": "Brave", "provider": "BRAVE", "secret": BRAVE_KEY}}),
        )
        .await;
    // A vault entry that no longer decrypts (e.g. its encryption key was retired).
    w.app
        .sql(&format!(
            "UPDATE api_keys SET secret_ciphertext = '\\x00' WHERE id = '{}'",
            id_at(&key, &["createApiKey"])
        ))
        .await;
    let started = std::time::Instant::now();
    let (_, run, events) = run_to_end(&w, "search").await;
    assert_eq!(run["status"], "FAILED", "{run}");
    assert!(
        run["error"]
            .as_str()
            .unwrap()
            .contains("could not be prepared"),
        "{run}"
    );
    assert_eq!(kinds(&events).last().unwrap(), "FAILED");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "not left for recovery"
    );
}

#[tokio::test]
async fn a_slow_tool_times_out_and_a_long_result_is_cut_and_the_run_goes_on() {
    let (backends, w) = tool_world(
        "OPENAI",
        "gpt-4o-mini",
        &["HTTP_REQUEST", "WIKIPEDIA"],
        json!({}),
        |c| {
            c.tool_timeout_secs = 1;
            c.tool_result_max_bytes = 40;
        },
    )
    .await;
    w.fake.queue_tool_turn(ToolTurn::calls(&[
        (
            "http_get",
            &format!(r#"{{"url": "{}/slow"}}"#, backends.base),
        ),
        (
            "wikipedia_page",
            r#"{"title": "Rust (programming language)"}"#,
        ),
    ]));
    let (_, run, events) = run_to_end(&w, "read slowly").await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let result = |tool: &str| {
        of_kind(&events, "TOOL_RESULT")
            .into_iter()
            .find(|r| r["data"]["tool"] == tool)
            .map(|r| r["data"].clone())
            .unwrap()
    };
    let slow = result("http_get");
    assert_eq!(
        slow["error"], "the tool did not answer within 1 s",
        "{slow}"
    );
    let page = result("wikipedia_page");
    assert_eq!(page["truncated"], true);
    let text = page["result"].as_str().unwrap();
    assert!(
        text.ends_with("[… cut at 40 bytes]") && text.len() < 80,
        "{text}"
    );
    // The model got the same cut text.
    let sent = completions(&w)[1]["messages"].as_array().unwrap().clone();
    assert!(
        sent.iter()
            .any(|m| m["role"] == "tool" && m["content"] == text)
    );
}

#[tokio::test]
async fn http_get_is_not_widened_by_the_operators_egress_allowlist() {
    // The allowlist lets provider calls reach a private network (an Ollama beside the server);
    // pages a model asks for are read back to the user, so it must not reach them.
    let (_backends, w) = tool_world("OPENAI", "gpt-4o-mini", &["HTTP_REQUEST"], json!({}), |c| {
        c.egress_allow = vec!["10.0.0.0/8".into()]
    })
    .await;
    w.fake.queue_tool_turn(ToolTurn::calls(&[(
        "http_get",
        r#"{"url": "http://10.1.2.3/admin"}"#,
    )]));
    let (_, run, events) = run_to_end(&w, "read").await;
    assert_eq!(run["status"], "SUCCEEDED");
    let error = of_kind(&events, "TOOL_RESULT")[0]["data"]["error"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(error.contains("internal network"), "{error}");
}

#[tokio::test]
async fn a_turn_with_more_tool_calls_than_the_bound_ends_the_run_failed() {
    let (_backends, w) = openai_world(&["CALCULATOR"], json!({})).await;
    let calls: Vec<(&str, &str)> = (0..17)
        .map(|_| ("calculator", r#"{"expression": "1"}"#))
        .collect();
    w.fake.queue_tool_turn(ToolTurn::calls(&calls));
    let (_, run, events) = run_to_end(&w, "too many").await;
    assert_eq!(run["status"], "FAILED");
    assert!(
        run["error"].as_str().unwrap().contains("at most 16 calls"),
        "{run}"
    );
    assert!(of_kind(&events, "TOOL_CALL").is_empty(), "none of them ran");
}
