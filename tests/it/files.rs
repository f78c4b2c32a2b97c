//! The file workspace end to end: uploads as GraphQL multipart requests (the spec
//! apollo-upload-client speaks), every validation rule refused with BAD_USER_INPUT on `file`
//! and nothing stored, downloads over `GET /files/{id}`, deletion, isolation between users, and
//! the FILES tool reading and writing through a run.

use serde_json::{Value, json};

use crate::{
    common::{Session, TestApp, code, fake_provider::ToolTurn, field, id_at},
    executions::kinds,
};

const UPLOAD: &str = "mutation($f: Upload!, $n: String) { uploadFile(file: $f, name: $n) { id name contentType size sha256 downloadPath executionId } }";

/// POSTs a GraphQL multipart request uploading `bytes` as `filename`; (HTTP status, JSON body).
async fn upload_with(
    app: &TestApp,
    token: &str,
    filename: &str,
    bytes: &[u8],
    name: Option<&str>,
    preflight: bool,
) -> (u16, Value) {
    let boundary = "----agentry-test-boundary-7MA4YWxkTrZu0gW";
    let operations = json!({"query": UPLOAD, "variables": {"f": null, "n": name}});
    let mut body = Vec::new();
    for (part, value) in [
        ("operations", operations.to_string()),
        ("map", r#"{"0":["variables.f"]}"#.to_owned()),
    ] {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Disposition: form-data; name=\"{part}\"\r\n\r\n{value}\r\n"
            )
            .as_bytes(),
        );
    }
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"0\"; filename=\"{filename}\"\r\n\
             Content-Type: application/octet-stream\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(bytes);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    let mut request = reqwest::Client::new()
        .post(app.url("/graphql"))
        .bearer_auth(token)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body);
    if preflight {
        request = request.header("apollo-require-preflight", "true");
    }
    let response = request.send().await.expect("POST multipart");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn upload(app: &TestApp, token: &str, filename: &str, bytes: &[u8]) -> Value {
    upload_with(app, token, filename, bytes, None, true).await.1
}

/// `GET /files/{id}`; (status, headers, body).
async fn download(
    app: &TestApp,
    token: Option<&str>,
    path: &str,
) -> (u16, reqwest::header::HeaderMap, Vec<u8>) {
    let mut request = reqwest::Client::new().get(app.url(path));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("GET file");
    let status = response.status().as_u16();
    let headers = response.headers().clone();
    (status, headers, response.bytes().await.unwrap().to_vec())
}

async fn file_count(app: &TestApp) -> i64 {
    app.count("SELECT count(*) FROM files").await
}

#[tokio::test]
async fn a_file_is_uploaded_listed_downloaded_and_deleted_by_its_owner_only() {
    let app = TestApp::spawn().await;
    let alice = app.register("alice@example.com").await;
    let bob = app.register("bob@example.com").await;
    let text = "Quarterly notes\nrevenue: 42\n";
    let body = upload(&app, &alice.access, "../../notes.txt", text.as_bytes()).await;
    let file = &body["data"]["uploadFile"];
    assert_eq!(file["name"], "notes.txt", "the path is dropped: {body}");
    assert_eq!(file["contentType"], "text/plain");
    assert_eq!(file["size"], text.len());
    assert_eq!(file["executionId"], Value::Null);
    let expected_sha = {
        use sha2::Digest;
        hex::encode(sha2::Sha256::digest(text.as_bytes()))
    };
    assert_eq!(file["sha256"], expected_sha);
    let id = id_at(&body, &["uploadFile"]);
    let path = file["downloadPath"].as_str().unwrap().to_owned();
    assert_eq!(path, format!("/files/{id}"));

    let listed = app
        .gql_as(
            Some(&alice.access),
            "{ files(first: 10) { edges { node { id name } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        listed["data"]["files"]["edges"][0]["node"]["name"],
        "notes.txt"
    );

    let (status, headers, bytes) = download(&app, Some(&alice.access), &path).await;
    assert_eq!(status, 200);
    assert_eq!(bytes, text.as_bytes());
    assert_eq!(headers["content-type"], "text/plain; charset=utf-8");
    assert!(
        headers["content-disposition"]
            .to_str()
            .unwrap()
            .starts_with("attachment; filename=\"notes.txt\"")
    );
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["cache-control"], "private, no-store");

    // Bob sees nothing of it, by any door.
    assert_eq!(download(&app, Some(&bob.access), &path).await.0, 404);
    assert_eq!(download(&app, None, &path).await.0, 401);
    assert_eq!(
        download(&app, Some(&alice.access), "/files/not-an-id")
            .await
            .0,
        404
    );
    let seen = app
        .gql_as(
            Some(&bob.access),
            "query($id: ID!) { file(id: $id) { id } files(first: 5) { edges { node { id } } } }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(seen["data"]["file"], Value::Null);
    assert_eq!(seen["data"]["files"]["edges"], json!([]));
    let deleted = app
        .gql_as(
            Some(&bob.access),
            "mutation($id: ID!) { deleteFile(id: $id) }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(code(&deleted), "NOT_FOUND");
    assert_eq!(file_count(&app).await, 1);

    let deleted = app
        .gql_as(
            Some(&alice.access),
            "mutation($id: ID!) { deleteFile(id: $id) }",
            json!({"id": id}),
        )
        .await;
    assert_eq!(deleted["data"]["deleteFile"], true);
    assert_eq!(download(&app, Some(&alice.access), &path).await.0, 404);
    assert_eq!(file_count(&app).await, 0);
}

#[tokio::test]
async fn every_upload_rule_is_refused_on_the_file_field_and_nothing_is_stored() {
    let app = TestApp::spawn_with(|c| {
        c.file_max_bytes = 1024;
        c.files_max_per_user = 2;
        c.files_max_total_bytes = 1500;
    })
    .await;
    let user = app.register("uploader@example.com").await;
    let refused = |body: &Value, rule: &str| {
        assert_eq!(
            (code(body), field(body)),
            ("BAD_USER_INPUT", "file"),
            "{body}"
        );
        let message = body["errors"][0]["message"].as_str().unwrap();
        assert!(message.contains(rule), "{message} should say {rule}");
    };
    refused(
        &upload(&app, &user.access, "big.txt", &[b'a'; 1025]).await,
        "at most 1024 bytes",
    );
    refused(&upload(&app, &user.access, "empty.txt", b"").await, "empty");
    refused(
        &upload(
            &app,
            &user.access,
            "tool.exe",
            b"MZ\x90\x00\x03\x00\x00\x00\x04\x00",
        )
        .await,
        "not an accepted kind",
    );
    refused(
        &upload(&app, &user.access, "photo.png", b"just some text").await,
        "the name says .png",
    );
    refused(
        &upload(&app, &user.access, "/..", b"text").await,
        "file name is empty",
    );
    assert_eq!(file_count(&app).await, 0);

    assert!(upload(&app, &user.access, "a.md", &[b'a'; 800]).await["errors"].is_null());
    refused(
        &upload(&app, &user.access, "A.MD", b"other").await,
        "already have a file named `A.MD`",
    );
    refused(
        &upload(&app, &user.access, "b.txt", &[b'b'; 800]).await,
        "quota of 1500",
    );
    assert!(upload(&app, &user.access, "c.txt", b"small").await["errors"].is_null());
    refused(
        &upload(&app, &user.access, "d.txt", b"one more").await,
        "you have 2 files",
    );
    assert_eq!(file_count(&app).await, 2);

    // `name` renames the upload, checked the same way.
    let (_, body) = upload_with(
        &app,
        &user.access,
        "x.txt",
        b"%PDF-1.7",
        Some("report.pdf"),
        true,
    )
    .await;
    refused(&body, "you have 2 files");
    // Like any non-JSON POST, a multipart request needs a header that forces a CORS preflight.
    let (status, body) = upload_with(&app, &user.access, "e.txt", b"text", None, false).await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["errors"][0]["message"]
            .as_str()
            .unwrap()
            .contains("cross-site request forgery")
    );
    assert_eq!(file_count(&app).await, 2);
}

async fn other_user_with_file(app: &TestApp) -> Session {
    let mallory = app.register("mallory@example.com").await;
    assert!(
        upload(
            app,
            &mallory.access,
            "secret.txt",
            b"the vault code is 1234"
        )
        .await["errors"]
            .is_null()
    );
    mallory
}

#[tokio::test]
async fn an_agent_reads_the_users_files_and_writes_one_linked_to_its_run() {
    let (_backends, w) = crate::tools::openai_world(&["FILES"], json!({})).await;
    let mallory = other_user_with_file(&w.app).await;
    assert!(upload(&w.app, &w.user.access, "notes.txt", b"revenue: 42").await["errors"].is_null());
    w.fake.queue_tool_turn(ToolTurn::calls(&[
        ("list_files", ""),
        ("read_file", r#"{"name": "notes.txt"}"#),
        ("read_file", r#"{"name": "secret.txt"}"#),
    ]));
    w.fake.queue_tool_turn(ToolTurn::calls(&[(
        "write_file",
        r##"{"name": "summary.md", "content": "# Summary\nRevenue was 42."}"##,
    )]));
    let id = w.start("summarise my notes").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let events = w.events(&id).await;
    let results: Vec<&Value> = events
        .iter()
        .filter(|e| e["kind"] == "TOOL_RESULT")
        .collect();
    let result_of = |tool: &str, n: usize| {
        results
            .iter()
            .filter(|r| r["data"]["tool"] == tool)
            .nth(n)
            .map(|r| r["data"].clone())
            .unwrap()
    };
    let listing = result_of("list_files", 0)["result"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        listing.contains("notes.txt (text/plain, 11 bytes)") && !listing.contains("secret"),
        "{listing}"
    );
    let reads: Vec<Value> = (0..2).map(|n| result_of("read_file", n)).collect();
    assert!(
        reads.iter().any(|r| r["result"] == "revenue: 42"),
        "{reads:?}"
    );
    assert!(
        reads.iter().any(|r| r["error"]
            .as_str()
            .is_some_and(|e| e.contains("no file named `secret.txt`"))),
        "another user's file is invisible: {reads:?}"
    );
    assert_eq!(
        result_of("write_file", 0)["result"],
        "Saved summary.md (25 bytes)."
    );
    assert_eq!(kinds(&events).last().unwrap(), "COMPLETED");

    let body = w
        .app
        .gql_as(Some(&w.user.access), "query($id: ID!) { execution(id: $id) { files { name contentType executionId downloadPath } } }", json!({"id": id}))
        .await;
    let files = &body["data"]["execution"]["files"];
    assert_eq!(files[0]["name"], "summary.md");
    assert_eq!(files[0]["contentType"], "text/markdown");
    assert_eq!(files[0]["executionId"], id);
    let (status, _, bytes) = download(
        &w.app,
        Some(&w.user.access),
        files[0]["downloadPath"].as_str().unwrap(),
    )
    .await;
    assert_eq!(
        (status, bytes.as_slice()),
        (200, b"# Summary\nRevenue was 42.".as_slice())
    );
    // Mallory's workspace is untouched and still hers alone.
    let hers = w
        .app
        .gql_as(
            Some(&mallory.access),
            "{ files(first: 5) { edges { node { name } } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        hers["data"]["files"]["edges"],
        json!([{"node": {"name": "secret.txt"}}])
    );
}

#[tokio::test]
async fn a_multipart_request_with_more_than_five_files_is_refused_before_anything_runs() {
    // Six small files: the body's byte bound alone would let them through.
    let app = TestApp::spawn().await;
    let user = app.register("many@example.com").await;
    let boundary = "----agentry-many-files";
    let files = 6;
    let variables: Vec<Value> = (0..files).map(|_| Value::Null).collect();
    let map: serde_json::Map<String, Value> = (0..files)
        .map(|i| (i.to_string(), json!([format!("variables.f.{i}")])))
        .collect();
    let operations = json!({
        "query": "mutation($f: [Upload!]!) { a: uploadFile(file: $f) { id } }",
        "variables": {"f": variables}
    });
    let mut body = String::new();
    for (part, value) in [
        ("operations", operations.to_string()),
        ("map", Value::Object(map).to_string()),
    ] {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{part}\"\r\n\r\n{value}\r\n"
        ));
    }
    for i in 0..files {
        body.push_str(&format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"{i}\"; filename=\"f{i}.txt\"\r\n\r\ntext {i}\r\n"
        ));
    }
    body.push_str(&format!("--{boundary}--\r\n"));
    let response = reqwest::Client::new()
        .post(app.url("/graphql"))
        .bearer_auth(&user.access)
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .header("apollo-require-preflight", "true")
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    let message = body["errors"][0]["message"].as_str().unwrap();
    assert!(message.contains("at most 5 files (got 6)"), "{message}");
    assert_eq!(file_count(&app).await, 0);
}

#[tokio::test]
async fn a_run_writes_at_most_twenty_files_one_at_a_time() {
    // Sixteen writes in one turn also show they do not take the pool (4 connections in tests)
    // from the rest: the run's own status query answers meanwhile.
    let (_backends, w) = crate::tools::openai_world(&["FILES"], json!({})).await;
    let names: Vec<String> = (0..21)
        .map(|i| format!(r#"{{"name": "note-{i}.txt", "content": "note {i}"}}"#))
        .collect();
    let calls: Vec<(&str, &str)> = names.iter().map(|a| ("write_file", a.as_str())).collect();
    w.fake.queue_tool_turn(ToolTurn::calls(&calls[..16]));
    w.fake.queue_tool_turn(ToolTurn::calls(&calls[16..]));
    let id = w.start("write many").await;
    let run = w.finished(&id).await;
    assert_eq!(run["status"], "SUCCEEDED", "{run}");
    let events = w.events(&id).await;
    let errors: Vec<&str> = events
        .iter()
        .filter(|e| e["kind"] == "TOOL_RESULT")
        .filter_map(|e| e["data"]["error"].as_str())
        .collect();
    assert_eq!(errors, ["a run may write at most 20 files"]);
    assert_eq!(file_count(&w.app).await, 20);
}
