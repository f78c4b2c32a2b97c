//! Rate limits: per client, stricter per IP and per email for sign-in, counted per operation
//! (batches and aliases cannot multiply attempts), 429 + Retry-After + RATE_LIMITED, pruning.

use crate::common;

use std::time::Duration;

use common::{TestApp, code};
use serde_json::{Value, json};

fn login_vars(email: &str) -> Value {
    json!({ "query": "mutation($e: String!) { login(email: $e, password: \"wrong-password-123\") { accessToken } }", "variables": { "e": email } })
}

#[tokio::test]
async fn a_client_over_its_quota_gets_429_with_retry_after() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 3;
    })
    .await;
    for _ in 0..3 {
        assert_eq!(
            app.post(None, &json!({"query": "{ __typename }"}))
                .await
                .status(),
            200
        );
    }
    let response = app.post(None, &json!({"query": "{ __typename }"})).await;
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body), "RATE_LIMITED", "{body}");
    assert!(
        body["errors"][0]["extensions"]["retryAfter"]
            .as_u64()
            .is_some()
    );
    assert!(body["errors"][0]["extensions"]["requestId"].is_string());
}

#[tokio::test]
async fn signed_in_users_are_counted_by_user_not_by_address() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 2;
    })
    .await;
    // Spends both anonymous units of 127.0.0.1 on registering.
    let session = app.register("quota@example.com").await;
    let anonymous = app.post(None, &json!({"query": "{ __typename }"})).await;
    assert_eq!(anonymous.status(), 200, "second anonymous unit");
    assert_eq!(
        app.post(None, &json!({"query": "{ __typename }"}))
            .await
            .status(),
        429
    );
    // The signed-in user has a quota of their own.
    let me = app
        .post(Some(&session.access), &json!({"query": "{ me { email } }"}))
        .await;
    assert_eq!(me.status(), 200);
}

#[tokio::test]
async fn a_batch_spends_one_unit_per_operation() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 5;
    })
    .await;
    let batch = Value::Array((0..6).map(|_| json!({"query": "{ __typename }"})).collect());
    assert_eq!(app.post(None, &batch).await.status(), 429);
    let batch = Value::Array((0..5).map(|_| json!({"query": "{ __typename }"})).collect());
    assert_eq!(app.post(None, &batch).await.status(), 200);
    assert_eq!(
        app.post(None, &json!({"query": "{ __typename }"}))
            .await
            .status(),
        429
    );
}

#[tokio::test]
async fn aliased_logins_each_spend_a_sign_in_attempt() {
    let app = TestApp::spawn_with(|c| c.auth_rate_limit_per_minute = 3).await;
    let aliases = (0..5)
        .map(|i| format!("a{i}: login(email: \"alias@example.com\", password: \"guess-number-{i}-xyz\") {{ accessToken }}"))
        .collect::<Vec<_>>()
        .join(" ");
    let response = app
        .post(None, &json!({"query": format!("mutation {{ {aliases} }}")}))
        .await;
    assert_eq!(response.status(), 429);
    assert!(response.headers().contains_key("retry-after"));
    let body: Value = response.json().await.unwrap();
    let codes: Vec<&str> = body["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["extensions"]["code"].as_str().unwrap())
        .collect();
    // Three guesses were judged; the other two never reached the password check.
    assert_eq!(
        codes.iter().filter(|c| **c == "UNAUTHENTICATED").count(),
        3,
        "{body}"
    );
    assert_eq!(
        codes.iter().filter(|c| **c == "RATE_LIMITED").count(),
        2,
        "{body}"
    );
}

#[tokio::test]
async fn batched_logins_each_spend_a_sign_in_attempt() {
    let app = TestApp::spawn_with(|c| c.auth_rate_limit_per_minute = 3).await;
    let batch = Value::Array((0..4).map(|_| login_vars("batch@example.com")).collect());
    let response = app.post(None, &batch).await;
    assert_eq!(response.status(), 429);
    let body: Value = response.json().await.unwrap();
    assert_eq!(code(&body[3]), "RATE_LIMITED", "{body}");
}

#[tokio::test]
async fn sign_in_is_limited_per_email_across_addresses_behind_a_trusted_proxy() {
    let app = TestApp::spawn_with(|c| {
        c.auth_rate_limit_per_minute = 2;
        c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let from = |ip: &'static str, email: &'static str| {
        app.http
            .post(app.url("/graphql"))
            .header("x-forwarded-for", ip)
            .json(&login_vars(email))
            .send()
    };
    assert_eq!(
        from("203.0.113.1", "target@example.com")
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        from("203.0.113.2", "target@example.com")
            .await
            .unwrap()
            .status(),
        200
    );
    // A third address, same email: the email's quota is spent.
    assert_eq!(
        from("203.0.113.3", "target@example.com")
            .await
            .unwrap()
            .status(),
        429
    );
    // A fresh address and a fresh email is fine.
    assert_eq!(
        from("203.0.113.4", "other@example.com")
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_cannot_dodge_the_limit() {
    let app = TestApp::spawn_with(|c| c.auth_rate_limit_per_minute = 2).await;
    for (i, expected) in [(1, 200), (2, 200), (3, 429)] {
        let response = app
            .http
            .post(app.url("/graphql"))
            .header("x-forwarded-for", format!("198.51.100.{i}"))
            .json(&login_vars(&format!("user{i}@example.com")))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), expected, "attempt {i}");
    }
}

#[tokio::test]
async fn refresh_session_counts_as_a_sign_in_attempt() {
    let app = TestApp::spawn_with(|c| c.auth_rate_limit_per_minute = 2).await;
    let refresh =
        json!({"query": "mutation { refreshSession(refreshToken: \"guess\") { accessToken } }"});
    assert_eq!(app.post(None, &refresh).await.status(), 200);
    assert_eq!(app.post(None, &refresh).await.status(), 200);
    let response = app.post(None, &refresh).await;
    assert_eq!(response.status(), 429);
}

#[tokio::test]
async fn limiter_memory_is_pruned() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_second = 1000;
        c.rate_limit_burst = 1;
    })
    .await;
    let limiters = &app.state.limiters;
    for i in 0..200u32 {
        let ip = std::net::IpAddr::from(i.to_be_bytes());
        limiters
            .check_client(agentry::rate_limit::ClientKey::Ip(ip), 1)
            .unwrap();
    }
    assert!(limiters.len() >= 200);
    tokio::time::sleep(Duration::from_millis(50)).await;
    limiters.prune();
    assert_eq!(limiters.len(), 0, "refilled keys should be forgotten");
}

#[tokio::test]
async fn an_ipv6_client_rotating_addresses_in_its_64_shares_one_quota() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 3;
        c.trusted_proxies = vec!["127.0.0.0/8".parse().unwrap()];
    })
    .await;
    let from = |ip: String| {
        app.http
            .post(app.url("/graphql"))
            .header("x-forwarded-for", ip)
            .json(&json!({"query": "{ __typename }"}))
            .send()
    };
    // Four different addresses of one /64: the fourth request is over the burst of three.
    let mut statuses = Vec::new();
    for host in 1..=4 {
        let status = from(format!("2001:db8:aa:bb::{host:x}"))
            .await
            .unwrap()
            .status();
        statuses.push(status.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
    // Another /64 has its own quota.
    assert_eq!(
        from("2001:db8:aa:cc::1".into()).await.unwrap().status(),
        200
    );
}

#[tokio::test]
async fn responses_tell_the_client_how_much_of_its_quota_is_left() {
    let app = TestApp::spawn_with(|c| {
        c.rate_limit_per_second = 1;
        c.rate_limit_burst = 5;
    })
    .await;
    let header = |response: &reqwest::Response, name: &str| -> u64 {
        response.headers()[name].to_str().unwrap().parse().unwrap()
    };
    let first = app.post(None, &json!({"query": "{ __typename }"})).await;
    assert_eq!(header(&first, "ratelimit-limit"), 5);
    assert_eq!(header(&first, "ratelimit-remaining"), 4);
    assert!(header(&first, "ratelimit-reset") >= 1);
    // A batch of three spends three.
    let batch = Value::Array(vec![json!({"query": "{ __typename }"}); 3]);
    let second = app.post(None, &batch).await;
    assert_eq!(header(&second, "ratelimit-remaining"), 1);
    assert!(header(&second, "ratelimit-reset") >= 2);
}
