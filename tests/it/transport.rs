//! GraphQL over HTTP: request ids, headers, CORS, GET and GraphiQL, CSRF, body and batch limits,
//! query depth / complexity / alias / directive limits, error codes, production hardening,
//! health and readiness.

use crate::common;

use std::time::Duration;

use common::{ALLOWED_ORIGIN, TestApp, code, db_proxy::DbProxy};
use serde_json::{Value, json};
use tokio::net::TcpListener;

#[tokio::test]
async fn every_response_has_a_request_id_and_every_error_repeats_it() {
    let app = TestApp::spawn().await;
    let response = app.post(None, &json!({"query": "{ nope }"})).await;
    let header = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(!header.is_empty());
    let body: Value = response.json().await.unwrap();
    assert_eq!(
        body["errors"][0]["extensions"]["requestId"],
        header.as_str(),
        "{body}"
    );
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED");

    let health = app.http.get(app.url("/healthz")).send().await.unwrap();
    assert!(health.headers().contains_key("x-request-id"));

    // A plain client-chosen id is kept (for tracing across services); anything odd is replaced.
    let kept = app
        .http
        .post(app.url("/graphql"))
        .header("x-request-id", "trace-abc_123")
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    assert_eq!(kept.headers()["x-request-id"], "trace-abc_123");
    let replaced = app
        .http
        .post(app.url("/graphql"))
        .header("x-request-id", "x".repeat(100))
        .json(&json!({"query": "{ __typename }"}))
        .send()
        .await
        .unwrap();
    assert_ne!(replaced.headers()["x-request-id"], "x".repeat(100).as_str());
}

#[tokio::test]
async fn security_headers_are_set_and_hsts_only_in_production() {
    let app = TestApp::spawn().await;
    let response = app.http.get(app.url("/healthz")).send().await.unwrap();
    let headers = response.headers();
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["content-security-policy"], "frame-ancestors 'none'");
    assert_eq!(headers["referrer-policy"], "no-referrer");
    assert!(!headers.contains_key("strict-transport-security"));

    let production = TestApp::spawn_with(|c| {
        c.environment = agentry::config::Environment::Production;
        c.bcrypt_cost = 10;
    })
    .await;
    let response = production
        .http
        .get(production.url("/healthz"))
        .send()
        .await
        .unwrap();
    assert!(
        response.headers()["strict-transport-security"]
            .to_str()
            .unwrap()
            .contains("max-age=")
    );
}

#[tokio::test]
async fn cors_allows_only_configured_origins() {
    let app = TestApp::spawn().await;
    let preflight = |origin: &'static str| {
        app.http
            .request(reqwest::Method::OPTIONS, app.url("/graphql"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header(
                "access-control-request-headers",
                "authorization,content-type",
            )
            .send()
    };
    let allowed = preflight(ALLOWED_ORIGIN).await.unwrap();
    assert_eq!(
        allowed.headers()["access-control-allow-origin"],
        ALLOWED_ORIGIN
    );
    let allowed_headers = allowed.headers()["access-control-allow-headers"]
        .to_str()
        .unwrap()
        .to_lowercase();
    assert!(allowed_headers.contains("authorization"));
    let denied = preflight("https://evil.example").await.unwrap();
    assert!(!denied.headers().contains_key("access-control-allow-origin"));
}

#[tokio::test]
async fn get_runs_queries_but_refuses_mutations_with_405() {
    let app = TestApp::spawn().await;
    let response = app
        .http
        .get(app.url("/graphql"))
        .query(&[("query", "{ __typename }")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["data"]["__typename"], "Query");

    let mutation = "mutation { register(input: {email: \"get@example.com\", password: \"violet-harbor-canoe-92\", displayName: \"G\"}) { accessToken } }";
    let response = app
        .http
        .get(app.url("/graphql"))
        .query(&[("query", mutation)])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 405);
    assert_eq!(response.headers()["allow"], "POST");
    let body: Value = response.json().await.unwrap();
    assert!(body["errors"][0]["extensions"]["requestId"].is_string());
    // Naming the mutation in a multi-operation document does not sneak it through either.
    let doc = format!("query Q {{ __typename }} {mutation}").replace("mutation {", "mutation M {");
    let response = app
        .http
        .get(app.url("/graphql"))
        .query(&[("query", doc.as_str()), ("operationName", "M")])
        .send()
        .await
        .unwrap();
    assert_eq!(
        response.status(),
        405,
        "{doc}: {}",
        response.text().await.unwrap()
    );
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);
}

#[tokio::test]
async fn graphiql_is_served_to_browsers_in_development_only() {
    let app = TestApp::spawn().await;
    let page = app
        .http
        .get(app.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("graphiql")
    );

    // Its files come from the server itself, cached for a year; other versions and names are
    // not found.
    let asset = |app: &TestApp, path: &str| {
        let request = app.http.get(app.url(path));
        async move { request.send().await.unwrap() }
    };
    let version = agentry::http::graphql::GRAPHIQL_VERSION;
    let js = asset(&app, &format!("/graphiql/{version}/graphiql.min.js")).await;
    assert_eq!(js.status(), 200);
    assert_eq!(
        js.headers()["content-type"],
        "text/javascript; charset=utf-8"
    );
    assert!(
        js.headers()["cache-control"]
            .to_str()
            .unwrap()
            .contains("immutable")
    );
    assert!(js.bytes().await.unwrap().len() > 100_000);
    let css = asset(&app, &format!("/graphiql/{version}/graphiql.min.css")).await;
    assert_eq!(css.headers()["content-type"], "text/css; charset=utf-8");
    assert_eq!(
        asset(&app, "/graphiql/0.0.1/graphiql.min.js")
            .await
            .status(),
        404
    );
    assert_eq!(
        asset(&app, &format!("/graphiql/{version}/secrets.txt"))
            .await
            .status(),
        404
    );

    let production = TestApp::spawn_with(|c| {
        c.environment = agentry::config::Environment::Production;
        c.bcrypt_cost = 10;
    })
    .await;
    let off = asset(&production, &format!("/graphiql/{version}/graphiql.min.js")).await;
    assert_eq!(off.status(), 404, "no playground, no playground files");
    let page = production
        .http
        .get(production.url("/graphql"))
        .header("accept", "text/html")
        .send()
        .await
        .unwrap();
    assert!(
        !page
            .text()
            .await
            .unwrap()
            .to_lowercase()
            .contains("graphiql")
    );
}

#[tokio::test]
async fn a_non_json_post_without_a_preflight_header_is_refused_as_csrf() {
    let app = TestApp::spawn().await;
    let mutation = json!({"query": "mutation { register(input: {email: \"csrf@example.com\", password: \"violet-harbor-canoe-92\", displayName: \"C\"}) { accessToken } }"}).to_string();
    for content_type in [
        "text/plain",
        "application/x-www-form-urlencoded",
        "multipart/form-data; boundary=x",
    ] {
        let response = app
            .http
            .post(app.url("/graphql"))
            .header("content-type", content_type)
            .body(mutation.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 400, "{content_type}");
        let body: Value = response.json().await.unwrap();
        assert!(
            body["errors"][0]["message"]
                .as_str()
                .unwrap()
                .contains("cross-site"),
            "{body}"
        );
    }
    assert_eq!(app.count("SELECT count(*) FROM users").await, 0);
    let response = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "text/plain")
        .header("apollo-require-preflight", "true")
        .body(mutation)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(app.count("SELECT count(*) FROM users").await, 1);
}

#[tokio::test]
async fn bodies_over_the_limit_get_413() {
    let app = TestApp::spawn().await;
    let padding = "x".repeat(1024 * 1024 + 10);
    let body = json!({"query": "{ __typename }", "variables": {"pad": padding}});
    let response = app.post(None, &body).await;
    assert_eq!(response.status(), 413);
    // Without a Content-Length (chunked), the limit still holds.
    let stream = futures_util::stream::iter(
        (0..1100).map(|_| Ok::<_, std::io::Error>(bytes::Bytes::from(vec![b' '; 1024]))),
    );
    let response = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 413);
}

#[tokio::test]
async fn a_client_still_sending_an_oversized_body_reads_the_413_not_a_reset() {
    let app = TestApp::spawn().await;
    // Answering before reading a 3 MiB body and closing made the client's send fail with a
    // connection reset about half the time.
    for attempt in 0..10 {
        let response = app
            .http
            .post(app.url("/graphql"))
            .header("content-type", "application/json")
            .body(vec![b' '; 3 * 1024 * 1024])
            .send()
            .await
            .unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        assert_eq!(response.status(), 413);
        let body: Value = response.json().await.unwrap();
        assert_eq!(code(&body), "PAYLOAD_TOO_LARGE", "{body}");
    }
}

#[tokio::test]
async fn batches_run_up_to_the_limit_and_larger_ones_are_refused() {
    let app = TestApp::spawn().await;
    let batch =
        |n: usize| Value::Array((0..n).map(|_| json!({"query": "{ __typename }"})).collect());
    let response = app.post(None, &batch(10)).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body.as_array().unwrap().len(), 10);
    let response = app.post(None, &batch(11)).await;
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("at most 10"),
        "{body}"
    );
}

/// `__schema { types { fields { type { ofType { … name } } } } }` with `levels` of `ofType`
/// (depth `levels + 5`), after `prefix` at the root.
fn type_refs(prefix: &str, levels: usize) -> String {
    let mut deep = String::from("name");
    for _ in 0..levels {
        deep = format!("ofType {{ {deep} }}");
    }
    format!("{{ {prefix} __schema {{ types {{ fields {{ type {{ {deep} }} }} }} }} }}")
}

fn refused_as_too_deep(body: &serde_json::Value) {
    assert_eq!(code(body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("nested too deep"),
        "{body}"
    );
    assert!(body["data"].is_null());
}

#[tokio::test]
async fn deep_queries_are_refused_and_only_pure_introspection_may_go_deeper() {
    let app = TestApp::spawn().await;
    let user = app.register("deep@example.com").await;
    // Depth 14: over the limit of 12 for anything that reads data...
    let mixed = app
        .gql_as(Some(&user.access), &type_refs("me { id }", 9), json!({}))
        .await;
    refused_as_too_deep(&mixed);
    let mut data = String::from("id");
    for _ in 0..4 {
        data = format!("agent {{ executions(first: 1) {{ nodes {{ {data} }} }} }}");
    }
    let data = format!(
        "{{ agents(first: 1) {{ nodes {{ executions(first: 1) {{ nodes {{ {data} }} }} }} }} }}"
    );
    refused_as_too_deep(&app.gql_as(Some(&user.access), &data, json!({})).await);
    // ... but an operation that only introspects may (graphql-js's standard introspection
    // query reaches 13), up to 20.
    // Twice: the second time it passed validation before and runs with the fast validation,
    // on the introspection schema's twin with the same deeper limit.
    for _ in 0..2 {
        let introspection = app.gql(&type_refs("__typename", 9), json!({})).await;
        assert!(introspection.get("errors").is_none(), "{introspection}");
        assert!(introspection["data"]["__schema"]["types"].is_array());
        refused_as_too_deep(&app.gql(&type_refs("", 17), json!({})).await);
    }
    // Through a fragment too, and only for the operation that runs.
    let fragment = format!(
        "query Meta {{ ...F }} query Data {{ me {{ id }} }} fragment F on Query {}",
        type_refs("__typename", 9)
    );
    let run = |name: &'static str| {
        let (app, fragment) = (&app, fragment.clone());
        async move {
            app.post(None, &json!({"query": fragment, "operationName": name}))
                .await
                .json::<serde_json::Value>()
                .await
                .expect("JSON response")
        }
    };
    for _ in 0..2 {
        let body = run("Meta").await;
        assert!(body.get("errors").is_none(), "{body}");
    }
    // The document's fragment is deep either way: for the data operation it is not used, so
    // validation refuses it as unused, never running it on the deeper limit.
    assert_eq!(code(&run("Data").await), "GRAPHQL_VALIDATION_FAILED");
}

#[tokio::test]
async fn complex_queries_are_refused_and_lists_count_by_page_size() {
    let app = TestApp::spawn().await;
    let user = app.register("complex@example.com").await;
    // 100 runs, each with its agent's 100 runs: about 30,000, far over the limit of 5,000.
    let nested = |inner: u32| {
        format!(
            "{{ executions(first: 100) {{ edges {{ node {{ id agent {{ executions(first: {inner}) {{ edges {{ node {{ id status }} }} }} }} }} }} }} }}"
        )
    };
    let body = app
        .gql_as(Some(&user.access), &nested(100), json!({}))
        .await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .contains("complex"),
        "{body}"
    );
    let body = app.gql_as(Some(&user.access), &nested(5), json!({})).await;
    assert!(body["data"]["executions"]["edges"].is_array(), "{body}");
}

#[tokio::test]
async fn too_many_aliases_are_refused() {
    let app = TestApp::spawn().await;
    let aliases = |n: usize| {
        format!(
            "{{ {} }}",
            (0..n)
                .map(|i| format!("a{i}: __typename"))
                .collect::<Vec<_>>()
                .join(" ")
        )
    };
    let body = app.gql(&aliases(15), json!({})).await;
    assert_eq!(body["data"]["a14"], "Query", "{body}");
    let body = app.gql(&aliases(16), json!({})).await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("aliases")
    );
    // Aliases hidden in fragments count too.
    let fragment = format!(
        "query {{ ...F }} fragment F on Query {{ {} }}",
        (0..16)
            .map(|i| format!("f{i}: __typename"))
            .collect::<Vec<_>>()
            .join(" ")
    );
    let body = app.gql(&fragment, json!({})).await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
}

#[tokio::test]
async fn an_operation_that_passed_validation_is_still_refused_when_sent_otherwise() {
    let app = TestApp::spawn().await;
    let user = app.register("validated@example.com").await;
    let document = "query Names { me { email } } \
                    query Page($active: Boolean = true) { agents(first: 2, active: $active) { edges { node { id } } } }";
    let send = |operation: &'static str, variables: Value| {
        let body = json!({"query": document, "operationName": operation, "variables": variables});
        let app = &app;
        let access = user.access.clone();
        async move {
            app.post(Some(&access), &body)
                .await
                .json::<Value>()
                .await
                .unwrap()
        }
    };
    // The first answer validates the operation in full; the next ones reuse that result and
    // must answer the same.
    let first = send("Names", json!({})).await;
    assert_eq!(
        first["data"]["me"]["email"], "validated@example.com",
        "{first}"
    );
    for _ in 0..3 {
        assert_eq!(send("Names", json!({})).await, first);
    }
    // The other operation of the same document, with a variable of the wrong type: validated
    // in full, refused.
    let body = send("Page", json!({"active": "many"})).await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    // Sent without variables (its default applies), the operation passes and is remembered…
    let body = send("Page", json!({})).await;
    assert!(body["data"]["agents"]["edges"].is_array(), "{body}");
    // …and the wrong variable is still refused by the full validation.
    let body = send("Page", json!({"active": "many"})).await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    // A document that failed validation stays refused, however often it is sent.
    for _ in 0..3 {
        let body = app
            .gql_as(Some(&user.access), "{ me { nope } }", json!({}))
            .await;
        assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    }
}

#[tokio::test]
async fn too_many_directives_are_refused() {
    let app = TestApp::spawn().await;
    let query = format!("{{ __typename {} }}", "@include(if: true) ".repeat(51));
    let body = app.gql(&query, json!({})).await;
    assert_eq!(code(&body), "GRAPHQL_VALIDATION_FAILED", "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("directives"),
        "{body}"
    );
    let fifty = format!("{{ __typename {} }}", "@include(if: true) ".repeat(50));
    assert_eq!(
        app.gql(&fifty, json!({})).await["data"]["__typename"],
        "Query"
    );
}

#[tokio::test]
async fn parse_errors_and_malformed_bodies_have_codes() {
    let app = TestApp::spawn().await;
    let body = app.gql("{ me {", json!({})).await;
    assert_eq!(code(&body), "GRAPHQL_PARSE_FAILED", "{body}");
    assert!(body["errors"][0]["extensions"]["requestId"].is_string());
    let response = app
        .http
        .post(app.url("/graphql"))
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "GRAPHQL_PARSE_FAILED", "{body}");
}

#[tokio::test]
async fn production_hides_introspection_and_suggestions_unless_enabled() {
    let app = TestApp::spawn_with(|c| {
        c.environment = agentry::config::Environment::Production;
        c.bcrypt_cost = 10;
    })
    .await;
    let body = app.gql("{ __schema { types { name } } }", json!({})).await;
    assert!(
        body["data"]["__schema"].is_null(),
        "introspection answered: {body}"
    );
    let body = app.gql("{ userz { id } }", json!({})).await;
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(!message.contains("Did you mean"), "{message}");

    let dev = TestApp::spawn().await;
    let body = dev.gql("{ userz { id } }", json!({})).await;
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("Did you mean"),
        "{body}"
    );

    let enabled = TestApp::spawn_with(|c| {
        c.environment = agentry::config::Environment::Production;
        c.bcrypt_cost = 10;
        c.introspection = Some(true);
    })
    .await;
    let body = enabled
        .gql("{ __schema { queryType { name } } }", json!({}))
        .await;
    assert_eq!(
        body["data"]["__schema"]["queryType"]["name"], "Query",
        "{body}"
    );
}

#[tokio::test]
async fn readiness_follows_the_database_and_health_never_touches_it() {
    let direct = TestApp::spawn().await;
    let proxy = DbProxy::start(&direct.database_url).await;
    let through_proxy = proxy.url_for(&direct.database_url);
    let app = {
        let mut config = (*direct.state.config).clone();
        config.database_url = through_proxy;
        let state = agentry::state::AppState::new(config).unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(agentry::http::serve(
            state,
            listener,
            std::future::pending(),
        ));
        addr
    };
    let get = |path: &'static str| {
        let client = direct.http.clone();
        async move {
            client
                .get(format!("http://{app}{path}"))
                .send()
                .await
                .unwrap()
                .status()
                .as_u16()
        }
    };
    assert_eq!(get("/readyz").await, 200);
    proxy.down();
    assert_eq!(get("/readyz").await, 503);
    assert_eq!(get("/healthz").await, 200);
    proxy.up();
    let mut status = 0;
    for _ in 0..50 {
        status = get("/readyz").await;
        if status == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(status, 200, "readiness did not recover by itself");
}
