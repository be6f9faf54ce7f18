//! `fleetup paths` through the real binary: the JSON contract, exit codes, `--paths FILE`.

use std::path::Path;
use std::process::{Command, Output};

use fleetup::exit_code;
use serde_json::Value;

fn fleetup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetup"))
        .args(args)
        .env_remove("FLEETUP_PATHS")
        .env_remove("FLEETUP_INVENTORY")
        .output()
        .expect("run fleetup")
}

fn code(out: &Output) -> i32 {
    out.status.code().expect("exit code, not a signal")
}

fn stdout(out: &Output) -> String {
    String::from_utf8(out.stdout.clone()).expect("utf-8 stdout")
}

fn stderr(out: &Output) -> String {
    String::from_utf8(out.stderr.clone()).expect("utf-8 stderr")
}

/// Runs `fleetup [extra] paths --from C --to T --format json` and returns (exit code, verdict).
fn verdict(extra: &[&str], from: &str, to: &str) -> (i32, Value) {
    let mut args = extra.to_vec();
    args.extend(["paths", "--from", from, "--to", to, "--format", "json"]);
    let out = fleetup(&args);
    let json = serde_json::from_str(&stdout(&out)).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\n{}",
            stdout(&out),
            stderr(&out)
        )
    });
    (code(&out), json)
}

#[test]
fn collision_target_is_blocked() {
    let (rc, v) = verdict(&[], "1.7.6", "1.8.1");
    assert_eq!(rc, exit_code::BLOCKED);
    assert_eq!(v["supported"], false);
    assert_eq!(v["zero_downtime"], false);
    assert_eq!(v["hops"], serde_json::json!([]));
    let first = v["advisories"][0].as_str().expect("an advisory");
    assert!(
        first.starts_with("refused: ") && first.contains(">= 1.8.2"),
        "{first}"
    );
}

#[test]
fn supported_offline_path_exits_zero() {
    let (rc, v) = verdict(&[], "1.7.4", "1.8.2");
    assert_eq!(rc, exit_code::SUCCESS);
    assert_eq!(v["supported"], true);
    assert_eq!(v["zero_downtime"], false);
    assert_eq!(v["hops"], serde_json::json!([]));
    assert_eq!(v["row"]["index"], 2);
    assert_eq!(v["current"], "1.7.4");
    assert_eq!(v["target"], "1.8.2");
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("offline only"))
    );
    assert!(
        v["advisories"].as_array().is_some_and(|a| !a.is_empty()),
        "pg_trgm advisory expected"
    );
}

#[test]
fn old_version_gets_hops_and_is_blocked() {
    let (rc, v) = verdict(&[], "1.2.3", "v1.9.0");
    assert_eq!(rc, exit_code::BLOCKED);
    assert_eq!(v["supported"], false);
    assert_eq!(v["hops"], serde_json::json!(["1.8.x", "1.9.0"]));
    assert_eq!(v["kind"], "needs_hops");
}

#[test]
fn already_at_target_exits_zero() {
    let (rc, v) = verdict(&[], "1.9.6", "1.9.6");
    assert_eq!(rc, exit_code::SUCCESS);
    assert_eq!(v["supported"], true);
    assert_eq!(v["kind"], "already_at_target");
}

#[test]
fn downgrade_and_v2_are_blocked() {
    let (rc, v) = verdict(&[], "1.9.0", "1.8.2");
    assert_eq!(rc, exit_code::BLOCKED);
    assert_eq!(v["kind"], "downgrade");
    let (rc, v) = verdict(&[], "1.9.6", "2.0.0");
    assert_eq!(rc, exit_code::BLOCKED);
    assert!(
        v["reason"]
            .as_str()
            .is_some_and(|r| r.contains("ledger migrate"))
    );
}

#[test]
fn bad_version_is_a_usage_error_with_hint() {
    let out = fleetup(&["paths", "--from", "1.8", "--to", "1.9.0"]);
    assert_eq!(code(&out), exit_code::USAGE);
    let err = stderr(&out);
    assert!(
        err.starts_with("error: invalid `--from`: `1.8` is not a version"),
        "{err}"
    );
    assert!(err.contains("\n  hint: "), "{err}");
    assert!(stdout(&out).is_empty());
}

#[test]
fn from_without_to_is_a_usage_error() {
    for args in [["paths", "--from", "1.7.4"], ["paths", "--to", "1.8.2"]] {
        let out = fleetup(&args);
        assert_eq!(code(&out), exit_code::USAGE, "{args:?}: {}", stderr(&out));
    }
}

#[test]
fn table_prints_as_text_and_json() {
    let out = fleetup(&["paths"]);
    assert_eq!(code(&out), exit_code::SUCCESS);
    let text = stdout(&out);
    assert_eq!(text.lines().count(), 18, "{text}");
    assert!(
        text.lines()
            .nth(1)
            .is_some_and(|l| l == " 1  1.9.x   1.4.x        yes"),
        "{text}"
    );

    let out = fleetup(&["paths", "--format", "json"]);
    assert_eq!(code(&out), exit_code::SUCCESS);
    let rows: Value = serde_json::from_str(&stdout(&out)).expect("JSON table");
    let rows = rows.as_array().expect("an array of rows");
    assert_eq!(rows.len(), 17);
    assert_eq!(rows[2]["target"], "1.8.x");
    assert_eq!(rows[2]["min_current"], "1.x");
    assert_eq!(rows[2]["zero_downtime"], false);
    assert_eq!(rows[2]["index"], 3);
}

#[test]
fn operator_table_from_paths_file_adds_a_target() {
    let (rc, v) = verdict(&[], "1.9.6", "1.10.3");
    assert_eq!(rc, exit_code::BLOCKED);
    assert_eq!(v["kind"], "unknown_target");

    // Start from the built-in table as `--toml` prints it and add a 1.10.x row.
    let builtin = fleetup(&["paths", "--toml"]);
    assert_eq!(code(&builtin), exit_code::SUCCESS);
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("paths.toml");
    let table = format!(
        "{}\n[[path]]\ntarget = \"1.10.x\"\nmin_current = \"1.9.x\"\nzero_downtime = false\n",
        stdout(&builtin)
    );
    std::fs::write(&file, table).expect("write table");
    let path = file.to_str().expect("utf-8 path");
    let (rc, v) = verdict(&["--paths", path], "1.9.6", "1.10.3");
    assert_eq!(rc, exit_code::SUCCESS, "{v}");
    assert_eq!(v["row"]["index"], 18);

    let out = fleetup(&["--paths", path, "paths", "--format", "json"]);
    let rows: Value = serde_json::from_str(&stdout(&out)).expect("JSON table");
    assert_eq!(rows.as_array().map(Vec::len), Some(18));
}

#[test]
fn broken_paths_file_names_line_and_column() {
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("broken.toml");
    std::fs::write(
        &file,
        "[[path]]\ntarget = \"1.10\"\nmin_current = \"1.9.x\"\nzero_downtime = false\n",
    )
    .expect("write table");
    let out = fleetup(&["--paths", path_str(&file), "paths"]);
    assert_eq!(code(&out), exit_code::USAGE);
    let err = stderr(&out);
    assert!(
        err.starts_with(&format!("error: {}:2:10: ", file.display())),
        "{err}"
    );
    assert!(err.contains("hint: "), "{err}");

    let out = fleetup(&["--paths", "/nonexistent/paths.toml", "paths"]);
    assert_eq!(code(&out), exit_code::USAGE);
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 path")
}
