//! Bare axum baseline: `POST /` (and `GET /`) answer `{"data":{"__typename":"Query"}}`, the
//! same bytes Agentry answers to `{ __typename }`, with no GraphQL, middleware or database.
//! Usage: `agentry-bench-hello 127.0.0.1:18081`.

use axum::{Router, http::header, response::IntoResponse, routing::get};

async fn hello() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "application/json")],
        r#"{"data":{"__typename":"Query"}}"#,
    )
}

#[tokio::main]
async fn main() {
    let address = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:18081".to_owned());
    let listener = tokio::net::TcpListener::bind(&address).await.unwrap();
    axum::serve(listener, Router::new().route("/", get(hello).post(hello)))
        .await
        .unwrap();
}
