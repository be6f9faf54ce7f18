//! Shared by the integration tests that run on the practice lab: the simulator binary, a fresh
//! lab spec per test, the Postgres URL, and running the real `fleetup` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use fleetup::lab::{Driver, Lab, LabSpec};
use fleetup::version::Version;

/// The simulator, built on demand (once per test binary, in the test's own profile) so
/// `cargo test -p fleetup` works without a workspace build.
pub fn sim() -> PathBuf {
    static SIM: OnceLock<PathBuf> = OnceLock::new();
    SIM.get_or_init(|| {
        if let Some(p) = std::env::var_os("FLEETUP_SIM") {
            return PathBuf::from(p);
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args([
            "build",
            "--quiet",
            "-p",
            "numary-sim",
            "--bin",
            "numary-sim",
        ]);
        if !cfg!(debug_assertions) {
            cmd.arg("--release");
        }
        let status = cmd
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cannot build numary-sim");
        fleetup::lab::find_sim(None).expect("numary-sim beside the test binary")
    })
    .clone()
}

pub fn pg_url() -> String {
    std::env::var("FLEETUP_TEST_PG_URL")
        .expect("FLEETUP_TEST_PG_URL must name a Postgres server: eval \"$(scripts/pg.sh start)\"")
}

/// A lab spec in a fresh temp dir (the `LabGuard` removes it).
pub fn spec(driver: Driver, nodes: usize, version: &str) -> LabSpec {
    let dir = tempfile::Builder::new()
        .prefix("fleetup-test-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let mut spec = LabSpec::new(dir);
    spec.nodes = nodes;
    spec.driver = driver;
    spec.version = Version::parse(version).expect("version");
    spec.sim = Some(sim());
    if driver == Driver::Postgres {
        spec.pg_url = Some(pg_url());
    }
    spec
}

/// Run the real `fleetup` binary with `-i inventory` and these args, without any `FLEETUP_*`
/// from the caller's environment.
pub fn fleetup(inventory: &Path, args: &[&str]) -> Output {
    fleetup_cmd(inventory, args).output().expect("run fleetup")
}

/// The [`fleetup`] command, to spawn (and kill) it.
pub fn fleetup_cmd(inventory: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetup"));
    for (k, _) in std::env::vars() {
        if k.starts_with("FLEETUP_") && k != "FLEETUP_TEST_PG_URL" {
            cmd.env_remove(k);
        }
    }
    cmd.arg("-i")
        .arg(inventory)
        .args(args)
        .env_remove("SSH_AUTH_SOCK");
    cmd
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A release "binary" of `version` in the lab dir (outside every node's root).
pub fn release(lab: &Lab, version: &str) -> PathBuf {
    let path = lab.dir.join(format!("numary-{version}"));
    lab.write_release(&Version::parse(version).unwrap(), &path)
        .expect("write release");
    path
}

/// The exit code (-1 when killed by a signal).
pub fn code(out: &Output) -> i32 {
    out.status.code().unwrap_or(-1)
}

/// stdout as JSON, or a panic that shows both streams. A JSON Lines stream (`--format json`
/// of `check`, `upgrade`, ...) gives its `audit` line when it has one, else every line as an
/// array; each line must carry the stream's schema version.
pub fn json(out: &Output) -> serde_json::Value {
    // One document (`paths`, `inventory list`, `lab`), unless it is a stream of one line.
    if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&out.stdout)
        && v.get("schema").is_none()
    {
        return v;
    }
    let lines: Vec<serde_json::Value> = stdout(out)
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            serde_json::from_str(l).unwrap_or_else(|e| {
                panic!(
                    "stdout is neither JSON nor JSON Lines ({e}) at {l}\nstdout:\n{}\nstderr:\n{}",
                    stdout(out),
                    stderr(out)
                )
            })
        })
        .collect();
    for l in &lines {
        assert_eq!(
            l["schema"], 1,
            "a JSON line without the schema version: {l}"
        );
    }
    match lines.iter().find(|l| l["event"] == "audit") {
        Some(audit) => audit.clone(),
        None => serde_json::Value::Array(lines),
    }
}

/// stdout and stderr of `out`, for assertion messages.
pub fn both(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out))
}

/// What the node's `/_info` reports as its version, when it answers 200.
pub fn api_version(lab: &Lab, node: &str) -> Option<String> {
    let (status, body) = lab.node(node)?.api_get("/_info").ok()?;
    (status == 200).then_some(())?;
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    v["data"]["version"].as_str().map(str::to_owned)
}

/// Every node runs and serves `version` (binary, service, `/_info`), is healthy, and holds no
/// lock.
pub fn assert_serving(lab: &Lab, version: &str, context: &str) {
    for n in &lab.nodes {
        assert_node_serving(lab, &n.name, version, context);
    }
}

/// [`assert_serving`] for the node `name` alone.
pub fn assert_node_serving(lab: &Lab, name: &str, version: &str, context: &str) {
    let n = lab.node(name).expect("a node of the lab");
    assert_eq!(
        n.installed_version().as_deref(),
        Some(version),
        "{context}: {name} binary"
    );
    assert!(n.service_running(), "{context}: {name} runs");
    assert_eq!(
        api_version(lab, name).as_deref(),
        Some(version),
        "{context}: {name} serves"
    );
    let (status, _) = n.api_get("/_health").unwrap();
    assert_eq!(status, 200, "{context}: {name} healthy");
    assert!(
        !n.paths().releases_dir().join(".fleetup.lock").exists(),
        "{context}: {name} keeps a lock"
    );
}

/// `fleetup upgrade --to 1.8.2 --binary NEW --stop EXTRA...` on the lab: the offline upgrade
/// most lab tests run.
pub fn upgrade_stop(lab: &Lab, new: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        "upgrade",
        "--to",
        "1.8.2",
        "--binary",
        new.to_str().unwrap(),
        "--stop",
    ];
    args.extend_from_slice(extra);
    fleetup(&lab.inventory_path(), &args)
}
