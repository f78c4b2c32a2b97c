//! Packaging stays true to the code: every setting is documented for operators, the compose
//! file wires the image the way the binary expects, the image runs as a non-root user with a
//! health check, and production logs are JSON.

use std::{collections::BTreeSet, process::Command};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Every environment variable the binary reads, from its own `--help` of each command.
fn variables() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for args in [
        vec!["--help"],
        vec!["backup", "--help"],
        vec!["create-owner", "--help"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_agentry"))
            .args(&args)
            .output()
            .unwrap();
        let help = String::from_utf8_lossy(&output.stdout).to_string();
        for part in help.split("[env: ").skip(1) {
            let name: String = part
                .chars()
                .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
                .collect();
            names.insert(name);
        }
    }
    assert!(
        names.len() > 40,
        "could not read the variables from --help: {names:?}"
    );
    names
}

#[test]
fn every_setting_is_documented_in_env_example_and_readme() {
    let example = read("docker/.env.example");
    let readme = read("README.md");
    for name in variables() {
        if name == "RUST_LOG" || name == "DATABASE_URL" {
            continue;
        }
        assert!(
            example.contains(&format!("{name}=")),
            "docker/.env.example lacks {name}"
        );
        assert!(readme.contains(&name), "README.md lacks {name}");
    }
}

#[test]
fn compose_passes_only_settings_the_binary_knows() {
    let compose = read("docker/compose.yml");
    let known = variables();
    for line in compose.lines().map(str::trim) {
        if let Some((key, _)) = line.split_once(": ")
            && key.starts_with("AGENTRY_")
            && key != "AGENTRY_DOMAIN"
        {
            assert!(
                known.contains(key),
                "compose.yml sets {key}, which agentry does not read"
            );
        }
    }
    assert!(
        compose.contains("condition: service_healthy"),
        "agentry must wait for a healthy database"
    );
    assert!(compose.contains("pg_isready"));
    assert!(compose.contains("profiles: [\"tls\"]"));
    assert!(
        compose.contains("agentry-db:/var/lib/postgresql/data"),
        "the database needs a volume"
    );
}

#[test]
fn the_image_runs_unprivileged_with_a_health_check_and_caches_dependencies() {
    let dockerfile = read("docker/Dockerfile");
    assert!(dockerfile.contains("USER 10001"), "runs as a non-root user");
    assert!(dockerfile.contains("HEALTHCHECK") && dockerfile.contains("\"healthcheck\""));
    let deps = dockerfile
        .find("COPY Cargo.toml Cargo.lock")
        .expect("manifests copied first");
    let sources = dockerfile
        .find("COPY src ./src")
        .expect("sources copied after");
    assert!(deps < sources, "dependencies must build in their own layer");
    assert!(dockerfile.contains("--locked"));
    // The health check the image runs: exit 1 when nothing answers.
    let output = Command::new(env!("CARGO_BIN_EXE_agentry"))
        .arg("healthcheck")
        .env("AGENTRY_LISTEN", "127.0.0.1:1")
        .output()
        .unwrap();
    assert!(!output.status.success());
}

#[test]
fn production_logs_are_json_lines() {
    let database = format!("agentry_jsonlog_{}", uuid::Uuid::new_v4().simple());
    let base =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "postgres://localhost/agentry".into());
    let url = match base.rsplit_once('/') {
        Some((server, _)) => format!("{server}/{database}"),
        None => base,
    };
    let output = Command::new(env!("CARGO_BIN_EXE_agentry"))
        .arg("migrate")
        .env("AGENTRY_ENV", "production")
        .env("AGENTRY_BCRYPT_COST", "10")
        .env(
            "AGENTRY_JWT_SECRET",
            "a-production-secret-of-enough-length-000",
        )
        .env(
            "AGENTRY_ENCRYPTION_KEYS",
            "k1:dGVzdC1rZXktdGVzdC1rZXktdGVzdC1rZXktMDAwMSE=",
        )
        .env("DATABASE_URL", &url)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let logs: Vec<serde_json::Value> = stdout
        .lines()
        .filter(|l| l.starts_with('{'))
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON: {l}: {e}")))
        .collect();
    assert!(
        logs.iter()
            .any(|l| l["fields"]["message"] == "created database"),
        "{stdout}"
    );
    assert!(
        logs.iter()
            .all(|l| l["level"].is_string() && l["timestamp"].is_string())
    );
    let _ = Command::new("psql")
        .arg(url.replace(&database, "postgres"))
        .args([
            "-q",
            "-c",
            &format!("DROP DATABASE IF EXISTS {database} WITH (FORCE)"),
        ])
        .output();
}

/// The number after `key:` on its line in `text` (quotes allowed).
fn number_after(text: &str, key: &str) -> u64 {
    text.lines()
        .map(str::trim)
        .find_map(|line| line.strip_prefix(key))
        .and_then(|rest| rest.trim().trim_matches('"').parse().ok())
        .unwrap_or_else(|| panic!("no number for {key}"))
}

#[test]
fn kubernetes_manifests_set_known_settings_probe_real_routes_and_drain_within_the_grace_period() {
    let known = variables();
    for file in [
        "deploy/k8s/configmap.yaml",
        "deploy/k8s/secret.example.yaml",
    ] {
        let text = read(file);
        let mut seen = 0;
        for line in text.lines().map(|l| l.trim().trim_start_matches("# ")) {
            if let Some((key, _)) = line.split_once(": ")
                && (key.starts_with("AGENTRY_") || key == "DATABASE_URL")
            {
                assert!(
                    known.contains(key),
                    "{file} sets {key}, which agentry does not read"
                );
                seen += 1;
            }
        }
        assert!(seen >= 3, "{file}: no settings found");
    }
    let config = read("deploy/k8s/configmap.yaml");
    assert!(config.contains("AGENTRY_ENV: production"));
    let deployment = read("deploy/k8s/deployment.yaml");
    assert!(deployment.contains("path: /healthz") && deployment.contains("path: /readyz"));
    assert!(number_after(&deployment, "replicas:") >= 2);
    assert!(deployment.contains("args: [\"serve\"]"));
    assert!(read("deploy/k8s/migrate-job.yaml").contains("args: [\"migrate\"]"));
    // SIGTERM comes after preStop; then the drain, the grace for requests and the grace for
    // sockets and runs to settle (the server waits for each in turn) must fit before SIGKILL.
    let pre_stop = 5;
    assert!(deployment.contains("command: [\"sleep\", \"5\"]"));
    let drain = number_after(&config, "AGENTRY_SHUTDOWN_DRAIN_SECS:");
    let grace = number_after(&config, "AGENTRY_SHUTDOWN_GRACE_SECS:");
    let kill_after = number_after(&deployment, "terminationGracePeriodSeconds:");
    assert!(
        pre_stop + drain + 2 * grace < kill_after,
        "preStop {pre_stop} + drain {drain} + 2 × grace {grace} must fit in {kill_after} s"
    );
    // The image's user, so a read-only root filesystem and runAsNonRoot hold.
    assert!(
        deployment.contains("runAsUser: 10001")
            && read("docker/Dockerfile").contains("--uid 10001")
    );
    assert!(read("deploy/k8s/pdb.yaml").contains("minAvailable: 1"));
    let ingress = read("deploy/k8s/ingress.yaml");
    assert!(ingress.contains("proxy-read-timeout") && ingress.contains("proxy-send-timeout"));
}

#[test]
fn opentelemetry_settings_are_checked_at_start_up_naming_the_variable() {
    for (name, value) in [
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ("OTEL_EXPORTER_OTLP_ENDPOINT", "collector:4318"),
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_agentry"))
            .arg("migrate")
            .env("DATABASE_URL", "postgres://127.0.0.1:1/never")
            .env(name, value)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!output.status.success(), "{name}={value} was accepted");
        assert!(stderr.contains(name), "{name}={value}: {stderr}");
    }
}
