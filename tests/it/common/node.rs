//! Node.js for the tests that drive real JavaScript clients (tests/js): checks that Node 20+
//! is on PATH, installs the pinned npm packages of tests/js with `npm ci` once per test
//! process, and runs a script there.

use std::{
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::OnceLock,
    time::Duration,
};

use serde_json::Value;

/// tests/js: package.json, package-lock.json and the scripts.
pub fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests")
        .join("js")
}

/// Whether node_modules holds every dependency of package.json at the version
/// package-lock.json pins.
fn packages_installed(dir: &Path) -> bool {
    let read = |path: PathBuf| -> Option<Value> {
        serde_json::from_str(&std::fs::read_to_string(path).ok()?).ok()
    };
    let lock = read(dir.join("package-lock.json")).expect("tests/js/package-lock.json is JSON");
    let manifest = read(dir.join("package.json")).expect("tests/js/package.json is JSON");
    let dependencies = manifest["dependencies"]
        .as_object()
        .expect("package.json has dependencies");
    dependencies.keys().all(|name| {
        let pinned = &lock["packages"][format!("node_modules/{name}")]["version"];
        read(dir.join("node_modules").join(name).join("package.json"))
            .is_some_and(|installed| !pinned.is_null() && installed["version"] == *pinned)
    })
}

/// Checks that Node is there and installs the npm packages once per test process (parallel
/// tests wait for the first one's install). Panics with what to do when that fails.
pub fn ensure_node_and_packages() {
    static READY: OnceLock<Result<(), String>> = OnceLock::new();
    let ready = READY.get_or_init(|| {
        let version = Command::new("node")
            .arg("--version")
            .output()
            .map_err(|e| {
                format!(
                    "these tests need Node.js 20+ as `node` on PATH (and npm) to run the \
                     JavaScript clients in tests/js; running `node --version` failed: {e}"
                )
            })?;
        if !version.status.success() {
            return Err(format!(
                "`node --version` failed: {}",
                String::from_utf8_lossy(&version.stderr)
            ));
        }
        let version = String::from_utf8_lossy(&version.stdout).trim().to_owned();
        let major = version
            .trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok());
        if major.is_none_or(|m| m < 20) {
            return Err(format!(
                "these tests need Node.js 20+ (graphql-ws 6 requires it); `node` is {version}"
            ));
        }
        let dir = js_dir();
        if packages_installed(&dir) {
            return Ok(());
        }
        let npm = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .map_err(|e| format!("these tests need npm on PATH to install tests/js: {e}"))?;
        if !npm.status.success() {
            return Err(format!(
                "`npm ci` in tests/js failed ({}):\n{}\n{}",
                npm.status,
                String::from_utf8_lossy(&npm.stdout),
                String::from_utf8_lossy(&npm.stderr)
            ));
        }
        if !packages_installed(&dir) {
            return Err("`npm ci` in tests/js did not install the pinned packages".into());
        }
        Ok(())
    });
    if let Err(message) = ready {
        panic!("{message}");
    }
}

/// `ensure_node_and_packages` off the async runtime.
pub async fn ensure_ready() {
    tokio::task::spawn_blocking(ensure_node_and_packages)
        .await
        .unwrap_or_else(|e| std::panic::resume_unwind(e.into_panic()));
}

/// What a finished Node script printed.
#[derive(Debug)]
pub struct NodeOutput {
    /// The exit status.
    pub status: ExitStatus,
    /// Everything on stdout.
    pub stdout: String,
    /// Everything on stderr.
    pub stderr: String,
}

/// Runs `node <script> <args…>` in tests/js to completion; panics if it runs past `guard`.
pub async fn run_script(script: &str, args: &[String], guard: Duration) -> NodeOutput {
    ensure_ready().await;
    let child = tokio::process::Command::new("node")
        .arg(script)
        .args(args)
        .current_dir(js_dir())
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("start node {script}: {e}"));
    let output = tokio::time::timeout(guard, child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("node {script} still running after {guard:?}"))
        .unwrap_or_else(|e| panic!("wait for node {script}: {e}"));
    NodeOutput {
        status: output.status,
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}
