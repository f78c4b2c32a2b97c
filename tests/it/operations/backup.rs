//! Backups to S3-compatible storage and restores that give identical rows, with keys that still decrypt.

use super::*;

/// A stand-in for S3: accepts presigned PUTs and remembers object names and sizes.
async fn fake_s3() -> (
    String,
    std::sync::Arc<std::sync::Mutex<Vec<(String, usize, bool)>>>,
) {
    use axum::{
        body::Bytes,
        extract::{Path, RawQuery, State},
        routing::put,
    };
    type Objects = std::sync::Arc<std::sync::Mutex<Vec<(String, usize, bool)>>>;
    let objects: Objects = Default::default();
    let app = axum::Router::new()
        .route(
            "/{bucket}/{key}",
            put(
                |State(objects): State<Objects>,
                 Path((bucket, key)): Path<(String, String)>,
                 RawQuery(query): RawQuery,
                 body: Bytes| async move {
                    let signed = query.is_some_and(|q| {
                        q.contains("X-Amz-Signature=") && q.contains("X-Amz-Credential=AKIATEST")
                    });
                    objects
                        .lock()
                        .unwrap()
                        .push((format!("{bucket}/{key}"), body.len(), signed));
                    axum::http::StatusCode::OK
                },
            ),
        )
        .with_state(objects.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    (format!("http://{addr}"), objects)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_then_restore_gives_identical_rows_and_keys_still_decrypt() {
    let fake = FakeProvider::start().await;
    fake.accept_key(OPENAI_KEY);
    let app = TestApp::spawn().await;
    let (user, key_id, _) = user_with_agent(&app, "backup@example.com").await;
    app.register("second@example.com").await;
    let dir =
        std::env::temp_dir().join(format!("agentry-backups-{}", uuid::Uuid::new_v4().simple()));
    let (s3, objects) = fake_s3().await;

    let mut files = Vec::new();
    for _ in 0..3 {
        let output = agentry_cli(&app.database_url)
            .args(["backup", "--dir", dir.to_str().unwrap(), "--keep", "2"])
            .env("AGENTRY_BACKUP_S3_ENDPOINT", &s3)
            .env("AGENTRY_BACKUP_S3_BUCKET", "backups")
            .env("AGENTRY_BACKUP_S3_ACCESS_KEY_ID", "AKIATEST")
            .env("AGENTRY_BACKUP_S3_SECRET_ACCESS_KEY", "s3-secret")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            stdout.contains("users: 2 rows") && stdout.contains("api_keys: 1 rows"),
            "{stdout}"
        );
        assert!(stdout.contains("uploaded to"), "{stdout}");
        files.push(
            stdout
                .lines()
                .next()
                .unwrap()
                .split(' ')
                .nth(1)
                .unwrap()
                .to_owned(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Retention kept the newest two.
    let mut kept: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().to_string())
        .filter(|n| n.ends_with(".dump"))
        .collect();
    kept.sort();
    assert_eq!(kept.len(), 2, "{kept:?}");
    assert!(!std::path::Path::new(&files[0]).exists());
    // Dumps and manifests are readable by their owner only, whatever the umask.
    for entry in std::fs::read_dir(&dir).unwrap() {
        use std::os::unix::fs::PermissionsExt;
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{:?} has mode {mode:o}", entry.file_name());
    }
    // Each backup and its manifest went to the bucket, signed.
    let uploaded = objects.lock().unwrap().clone();
    assert_eq!(uploaded.len(), 6, "{uploaded:?}");
    assert!(
        uploaded
            .iter()
            .all(|(name, size, signed)| name.starts_with("backups/agentry-")
                && *size > 0
                && *signed)
    );
    // The dump holds no plaintext key.
    let dump = std::fs::read(&files[2]).unwrap();
    assert!(
        !dump
            .windows(OPENAI_KEY.len())
            .any(|w| w == OPENAI_KEY.as_bytes())
    );

    let restored_name = format!("agentry_restored_{}", uuid::Uuid::new_v4().simple());
    let output = agentry_cli(&app.database_url)
        .args(["restore", "--file", &files[2], "--database", &restored_name])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("every table verified"), "{stdout}");
    assert!(!stdout.contains("MISMATCH"));

    // A server on the restored database, with the same keys, still decrypts the stored key.
    let restored_url = common::with_database(&app.database_url, &restored_name);
    let mut config = common::test_config(&restored_url);
    fake.serve_all_providers(&mut config);
    config.validate().unwrap();
    let state = agentry::state::AppState::new(config).unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(agentry::http::serve(
        state,
        listener,
        std::future::pending(),
    ));
    let body: Value = app
        .http
        .post(format!("http://{addr}/graphql"))
        .bearer_auth(&user.access)
        .json(&json!({"query": "mutation($id: ID!) { testApiKey(id: $id) { ok } }", "variables": {"id": key_id}}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(body["data"]["testApiKey"]["ok"], true, "{body}");

    // A manifest that disagrees with the data is caught.
    let manifest = format!("{}.json", files[1]);
    let mut parsed: Value = serde_json::from_slice(&std::fs::read(&manifest).unwrap()).unwrap();
    parsed["tables"]["users"] = json!(99);
    std::fs::write(&manifest, parsed.to_string()).unwrap();
    let tampered_name = format!("agentry_restored_{}", uuid::Uuid::new_v4().simple());
    let output = agentry_cli(&app.database_url)
        .args(["restore", "--file", &files[1], "--database", &tampered_name])
        .output()
        .unwrap();
    assert!(!output.status.success());
    assert!(
        String::from_utf8_lossy(&output.stdout)
            .contains("users: 99 rows expected, 2 restored ✗ MISMATCH")
    );

    let admin = app.db().await;
    for name in [restored_name, tampered_name] {
        let _ = admin
            .batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
            .await;
    }
    let _ = std::fs::remove_dir_all(&dir);
}
