//! Roles and admin operations: guards, users/user/auditLog, suspension, roles, last owner.

use crate::common;

use common::{PASSWORD, TestApp, code, field};
use serde_json::json;

const ME: &str = "{ me { email role status } }";

#[tokio::test]
async fn a_user_cannot_call_admin_operations() {
    let app = TestApp::spawn().await;
    let user = app.register("user@example.com").await;
    let victim = app.register("victim@example.com").await;
    let operations = [
        (
            "{ users { edges { node { id } } } }".to_owned(),
            "FORBIDDEN",
        ),
        (
            format!("{{ user(id: \"{}\") {{ id }} }}", victim.user_id),
            "FORBIDDEN",
        ),
        (
            "{ auditLog { edges { node { id } } } }".to_owned(),
            "FORBIDDEN",
        ),
        (
            format!(
                "mutation {{ suspendUser(userId: \"{}\", reason: \"x\") {{ id }} }}",
                victim.user_id
            ),
            "FORBIDDEN",
        ),
        (
            format!(
                "mutation {{ reactivateUser(userId: \"{}\") {{ id }} }}",
                victim.user_id
            ),
            "FORBIDDEN",
        ),
        (
            format!(
                "mutation {{ setUserRole(userId: \"{}\", role: ADMIN) {{ id }} }}",
                user.user_id
            ),
            "FORBIDDEN",
        ),
    ];
    for (query, expected) in &operations {
        let body = app.gql_as(Some(&user.access), query, json!({})).await;
        assert_eq!(code(&body), *expected, "{query}: {body}");
        let anonymous = app.gql(query, json!({})).await;
        assert_eq!(code(&anonymous), "UNAUTHENTICATED", "{query}: {anonymous}");
    }
    let me = app.gql_as(Some(&user.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["role"], "USER");
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE status = 'SUSPENDED'")
            .await,
        0
    );
}

#[tokio::test]
async fn an_admin_cannot_change_roles() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin@example.com", "ADMIN").await;
    let user = app.register("user@example.com").await;
    let body = app
        .gql_as(
            Some(&admin.access),
            &format!(
                "mutation {{ setUserRole(userId: \"{}\", role: ADMIN) {{ role }} }}",
                user.user_id
            ),
            json!({}),
        )
        .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
}

#[tokio::test]
async fn admins_page_through_users_and_search_by_email() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin@example.com", "ADMIN").await;
    for i in 0..5 {
        app.register(&format!("member{i}@corp.example")).await;
    }
    let query = "query($first: Int, $after: String, $search: String) {
        users(first: $first, after: $after, search: $search) {
            edges { cursor node { email } } pageInfo { hasNextPage endCursor } } }";
    let mut seen = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let body = app
            .gql_as(
                Some(&admin.access),
                query,
                json!({"first": 2, "after": after, "search": "CORP.example"}),
            )
            .await;
        let users = &body["data"]["users"];
        for edge in users["edges"]
            .as_array()
            .unwrap_or_else(|| panic!("{body}"))
        {
            seen.push(edge["node"]["email"].as_str().unwrap().to_owned());
        }
        if users["pageInfo"]["hasNextPage"] != true {
            break;
        }
        after = users["pageInfo"]["endCursor"].as_str().map(str::to_owned);
    }
    // Newest first, every member exactly once, the admin filtered out by the search.
    let expected: Vec<String> = (0..5)
        .rev()
        .map(|i| format!("member{i}@corp.example"))
        .collect();
    assert_eq!(seen, expected);

    // LIKE wildcards are literal.
    let body = app
        .gql_as(Some(&admin.access), query, json!({"search": "%"}))
        .await;
    assert_eq!(
        body["data"]["users"]["edges"].as_array().unwrap().len(),
        0,
        "{body}"
    );

    for (vars, bad_field) in [
        (json!({"first": 0}), "first"),
        (json!({"first": 101}), "first"),
        (json!({"after": "garbage"}), "after"),
    ] {
        let body = app.gql_as(Some(&admin.access), query, vars).await;
        assert_eq!(
            (code(&body), field(&body)),
            ("BAD_USER_INPUT", bad_field),
            "{body}"
        );
    }
}

#[tokio::test]
async fn user_by_id_is_null_when_unknown_and_bad_ids_are_named() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin@example.com", "ADMIN").await;
    let other = app.register("other@example.com").await;
    let body = app
        .gql_as(
            Some(&admin.access),
            "query($id: ID!) { user(id: $id) { email } }",
            json!({"id": other.user_id}),
        )
        .await;
    assert_eq!(body["data"]["user"]["email"], "other@example.com");
    let body = app
        .gql_as(
            Some(&admin.access),
            "query($id: ID!) { user(id: $id) { email } }",
            json!({"id": uuid::Uuid::now_v7()}),
        )
        .await;
    assert!(body["data"]["user"].is_null(), "{body}");
    let body = app
        .gql_as(
            Some(&admin.access),
            "query($id: ID!) { user(id: $id) { email } }",
            json!({"id": "nope"}),
        )
        .await;
    assert_eq!((code(&body), field(&body)), ("BAD_USER_INPUT", "id"));
}

#[tokio::test]
async fn suspension_ends_every_session_at_once_and_reactivation_allows_sign_in() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin@example.com", "ADMIN").await;
    let user = app.register("bad@example.com").await;
    let body = app
        .gql_as(
            Some(&admin.access),
            "mutation($id: ID!) { suspendUser(userId: $id, reason: \"  spam  \") { status suspendedReason } }",
            json!({"id": user.user_id}),
        )
        .await;
    assert_eq!(body["data"]["suspendUser"]["status"], "SUSPENDED", "{body}");
    assert_eq!(body["data"]["suspendUser"]["suspendedReason"], "spam");
    assert_eq!(
        code(&app.gql_as(Some(&user.access), ME, json!({})).await),
        "UNAUTHENTICATED"
    );
    let refresh = app
        .gql(
            "mutation($t: String!) { refreshSession(refreshToken: $t) { accessToken } }",
            json!({"t": user.refresh}),
        )
        .await;
    assert_eq!(code(&refresh), "UNAUTHENTICATED");
    let login = app
        .gql("mutation { login(email: \"bad@example.com\", password: \"violet-harbor-canoe-92\") { accessToken } }", json!({}))
        .await;
    assert_eq!(code(&login), "UNAUTHENTICATED", "{login}");

    let body = app
        .gql_as(
            Some(&admin.access),
            "mutation($id: ID!) { reactivateUser(userId: $id) { status suspendedReason } }",
            json!({"id": user.user_id}),
        )
        .await;
    assert_eq!(body["data"]["reactivateUser"]["status"], "ACTIVE", "{body}");
    assert!(body["data"]["reactivateUser"]["suspendedReason"].is_null());
    app.login("bad@example.com", PASSWORD).await;

    let audit = app
        .gql_as(Some(&admin.access), "{ auditLog(first: 10) { edges { node { action actorId targetUserId requestId details } } } }", json!({}))
        .await;
    let actions: Vec<&str> = audit["data"]["auditLog"]["edges"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["node"]["action"].as_str().unwrap())
        .collect();
    assert_eq!(
        &actions[..2],
        ["user.reactivate", "user.suspend"],
        "{audit}"
    );
    let suspend = &audit["data"]["auditLog"]["edges"][1]["node"];
    assert_eq!(suspend["actorId"], admin.user_id.as_str());
    assert_eq!(suspend["targetUserId"], user.user_id.as_str());
    assert_eq!(suspend["details"]["reason"], "spam");
    assert!(
        suspend["requestId"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
}

#[tokio::test]
async fn the_audit_row_carries_the_request_id_of_the_response() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin@example.com", "ADMIN").await;
    let user = app.register("traced@example.com").await;
    let response = app
        .post(
            Some(&admin.access),
            &json!({"query": format!("mutation {{ suspendUser(userId: \"{}\", reason: \"abuse\") {{ id }} }}", user.user_id)}),
        )
        .await;
    let request_id = response.headers()["x-request-id"]
        .to_str()
        .unwrap()
        .to_owned();
    let row = app
        .db()
        .await
        .query_one(
            "SELECT request_id FROM audit_log WHERE action = 'user.suspend'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), request_id);
}

#[tokio::test]
async fn an_admin_cannot_suspend_an_owner_or_themselves() {
    let app = TestApp::spawn().await;
    let admin = app.user_with_role("admin@example.com", "ADMIN").await;
    let owner = app.user_with_role("owner@example.com", "OWNER").await;
    let body = app
        .gql_as(
            Some(&admin.access),
            "mutation($id: ID!) { suspendUser(userId: $id, reason: \"coup\") { id } }",
            json!({"id": owner.user_id}),
        )
        .await;
    assert_eq!(code(&body), "FORBIDDEN", "{body}");
    let body = app
        .gql_as(
            Some(&admin.access),
            "mutation($id: ID!) { suspendUser(userId: $id, reason: \"oops\") { id } }",
            json!({"id": admin.user_id}),
        )
        .await;
    assert_eq!(
        (code(&body), field(&body)),
        ("BAD_USER_INPUT", "userId"),
        "{body}"
    );
    for (id, reason, expected_code, expected_field) in [
        (uuid::Uuid::now_v7().to_string(), "x", "NOT_FOUND", None),
        (
            "not-an-id".to_owned(),
            "x",
            "BAD_USER_INPUT",
            Some("userId"),
        ),
        (
            owner.user_id.clone(),
            "   ",
            "BAD_USER_INPUT",
            Some("reason"),
        ),
    ] {
        let body = app
            .gql_as(
                Some(&admin.access),
                "mutation($id: ID!, $r: String!) { suspendUser(userId: $id, reason: $r) { id } }",
                json!({"id": id, "r": reason}),
            )
            .await;
        assert_eq!(code(&body), expected_code, "{body}");
        if let Some(f) = expected_field {
            assert_eq!(field(&body), f);
        }
    }
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE status = 'SUSPENDED'")
            .await,
        0
    );
    assert_eq!(
        app.count("SELECT count(*) FROM audit_log").await,
        2,
        "only the two sign-ups are audited"
    );
}

#[tokio::test]
async fn owners_change_roles_and_the_last_owner_cannot_be_demoted() {
    let app = TestApp::spawn().await;
    let owner = app.user_with_role("owner@example.com", "OWNER").await;
    let user = app.register("rising@example.com").await;
    let set_role = |id: String, role: &'static str| {
        let (app, token) = (&app, owner.access.clone());
        async move {
            app.gql_as(
                Some(&token),
                "mutation($id: ID!, $role: Role!) { setUserRole(userId: $id, role: $role) { role } }",
                json!({"id": id, "role": role}),
            )
            .await
        }
    };
    let body = set_role(user.user_id.clone(), "ADMIN").await;
    assert_eq!(body["data"]["setUserRole"]["role"], "ADMIN", "{body}");
    // The new role applies to the user's very next request, with the same token.
    let users = app
        .gql_as(
            Some(&user.access),
            "{ users { edges { node { id } } } }",
            json!({}),
        )
        .await;
    assert!(users["data"]["users"]["edges"].is_array(), "{users}");

    let body = set_role(owner.user_id.clone(), "ADMIN").await;
    assert_eq!(code(&body), "CONFLICT", "{body}");
    assert_eq!(
        app.count("SELECT count(*) FROM users WHERE role = 'OWNER'")
            .await,
        1
    );

    // With a second owner, the first may step down.
    set_role(user.user_id.clone(), "OWNER").await;
    let body = set_role(owner.user_id.clone(), "USER").await;
    assert_eq!(body["data"]["setUserRole"]["role"], "USER", "{body}");
    let changes = app
        .count("SELECT count(*) FROM audit_log WHERE action = 'user.role_change'")
        .await;
    assert_eq!(changes, 3);
    // The former owner is now a plain user.
    let demoted = set_role(user.user_id.clone(), "ADMIN").await;
    assert_eq!(code(&demoted), "FORBIDDEN", "{demoted}");
    let bad = app
        .gql_as(
            Some(&user.access),
            "mutation { setUserRole(userId: \"nope\", role: ADMIN) { role } }",
            json!({}),
        )
        .await;
    assert_eq!(
        (code(&bad), field(&bad)),
        ("BAD_USER_INPUT", "userId"),
        "{bad}"
    );
    let missing = app
        .gql_as(
            Some(&user.access),
            "mutation($id: ID!) { setUserRole(userId: $id, role: ADMIN) { role } }",
            json!({"id": uuid::Uuid::now_v7()}),
        )
        .await;
    assert_eq!(code(&missing), "NOT_FOUND", "{missing}");
}

/// Runs `agentry create-owner` with `args` against `app`'s database.
fn create_owner(app: &TestApp, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_agentry"))
        .arg("create-owner")
        .args(args)
        .env("DATABASE_URL", &app.database_url)
        .env("AGENTRY_BCRYPT_COST", "4")
        .env(
            "AGENTRY_JWT_SECRET",
            "test-secret-test-secret-test-secret-0123",
        )
        .output()
        .expect("run agentry create-owner")
}

#[tokio::test]
async fn create_owner_never_promotes_a_squatted_account_without_its_password() {
    let app = TestApp::spawn().await;
    // Someone registered the owner's email first and keeps a session.
    let squatter = app.register("root@example.com").await;
    let other_password = "a-different-long-passphrase-77";
    let refused = create_owner(
        &app,
        &["--email", "root@example.com", "--password", other_password],
    );
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("--promote-existing"), "{stderr}");
    let wrong = create_owner(
        &app,
        &[
            "--email",
            "root@example.com",
            "--password",
            other_password,
            "--promote-existing",
        ],
    );
    assert!(!wrong.status.success());
    let me = app.gql_as(Some(&squatter.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["role"], "USER", "{me}");

    // With the account's own password it is promoted, and its old sessions end.
    let promoted = create_owner(
        &app,
        &[
            "--email",
            "root@example.com",
            "--password",
            PASSWORD,
            "--promote-existing",
        ],
    );
    assert!(
        promoted.status.success(),
        "{}",
        String::from_utf8_lossy(&promoted.stderr)
    );
    let old = app.gql_as(Some(&squatter.access), ME, json!({})).await;
    assert_eq!(code(&old), "UNAUTHENTICATED", "{old}");
    let session = app.login("root@example.com", PASSWORD).await;
    let me = app.gql_as(Some(&session.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["role"], "OWNER");
}

#[tokio::test]
async fn the_create_owner_command_makes_an_owner_who_can_sign_in() {
    let db_app = TestApp::spawn().await;
    let output = create_owner(
        &db_app,
        &["--email", "Root@Example.com", "--password", PASSWORD],
    );
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains("created owner root@example.com"));
    let session = db_app.login("root@example.com", PASSWORD).await;
    let me = db_app.gql_as(Some(&session.access), ME, json!({})).await;
    assert_eq!(me["data"]["me"]["role"], "OWNER");
}
