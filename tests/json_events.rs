//! The machine stream of docs/json-events.md, parsed from real lab runs: `check` and `upgrade`
//! with `--format json` write JSON Lines, each line with the schema version, fleet-wide findings
//! with a `null` host; `--plan` takes the audit's 12-digit prefix; the run's events are the
//! ones its journal records. And what people read: one finding on three hosts is printed once.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use fleetup::exit_code;
use fleetup::journal;
use fleetup::lab::{Driver, LabGuard};
use lab_fixture::{assert_serving, both, code, fleetup, release, spec, stderr, stdout};
use serde_json::Value;

/// Every line of stdout as JSON, each an object with `schema` 1 and an `event`.
fn stream(out: &std::process::Output) -> Vec<Value> {
    let lines: Vec<Value> = stdout(out)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(!lines.is_empty(), "{}", both(out));
    for l in &lines {
        assert_eq!(l["schema"], 1, "{l}");
        assert!(l["event"].is_string(), "{l}");
    }
    lines
}

fn events<'a>(lines: &'a [Value], name: &str) -> Vec<&'a Value> {
    lines.iter().filter(|l| l["event"] == name).collect()
}

#[test]
fn check_and_upgrade_stream_json_lines_and_the_plan_prefix_runs_the_audited_plan() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 3, "1.7.4")).expect("lab up");
    let inv = lab.inventory_path();
    let new = release(&lab, "1.8.2");
    let new = new.to_str().unwrap();
    let nodes = ["node-1", "node-2", "node-3"];

    let check = fleetup(
        &inv,
        &[
            "check", "--to", "1.8.2", "--binary", new, "--stop", "--format", "json",
        ],
    );
    assert_eq!(code(&check), exit_code::SUCCESS, "{}", both(&check));
    let lines = stream(&check);
    assert_eq!(lines[0]["event"], "run_started");
    assert_eq!(lines[0]["command"], "check");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "run_finished");
    assert_eq!(last["outcome"], "ready");
    assert_eq!(events(&lines, "host_connected").len(), 3);
    let ready = events(&lines, "plan_ready");
    let audit = events(&lines, "audit");
    assert_eq!((ready.len(), audit.len()), (1, 1));
    let plan_id = audit[0]["plan_id"].as_str().unwrap().to_string();
    assert_eq!(ready[0]["plan_id"], plan_id.as_str());
    assert_eq!(ready[0]["facts"]["node-2"]["installed_version"], "1.7.4");
    // Fleet-wide findings carry a null host; the others name a node of the lab.
    let results = events(&lines, "check_result");
    assert!(
        results
            .iter()
            .any(|r| r["check"] == "binary-sha256" && r["host"].is_null()),
        "{results:?}"
    );
    for r in &results {
        assert!(
            r["host"].is_null() || nodes.contains(&r["host"].as_str().unwrap()),
            "{r}"
        );
        assert_eq!(r["ok"], true, "{r}");
    }

    let up = fleetup(
        &inv,
        &[
            "upgrade",
            "--to",
            "1.8.2",
            "--binary",
            new,
            "--stop",
            "--plan",
            &plan_id[..12],
            "--format",
            "json",
        ],
    );
    assert_eq!(code(&up), exit_code::SUCCESS, "{}", both(&up));
    let lines = stream(&up);
    assert_eq!(lines[0]["command"], "upgrade");
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "run_finished", "{last}");
    assert_eq!(last["outcome"], "succeeded");
    assert_eq!(last["exit_code"], 0);
    let mut migrated: Vec<&str> = events(&lines, "step_finished")
        .into_iter()
        .filter(|e| e["kind"] == "migrate" && e["status"] == "ok")
        .map(|e| e["host"].as_str().unwrap())
        .collect();
    migrated.sort_unstable();
    migrated.dedup();
    assert_eq!(migrated, nodes, "each SQLite node migrates its own store");
    assert!(
        events(&lines, "step_finished")
            .iter()
            .all(|e| e["status"] != "failed"),
        "no step failed"
    );
    let summary = events(&lines, "summary");
    assert_eq!(summary.len(), 1);
    for h in summary[0]["hosts"].as_array().unwrap() {
        assert_eq!(h["to"], "1.8.2", "{h}");
    }
    // The nodes really serve the target.
    assert_serving(&lab, "1.8.2", "after the JSON run");

    // The stream is what the journal records, event for event.
    let run_id = lines[0]["run_id"].as_str().unwrap();
    let state_dir = journal::default_state_dir(&inv);
    let j = journal::read_journal(&journal::journal_path(&state_dir, run_id)).unwrap();
    let names = |evs: &mut dyn Iterator<Item = &Value>| -> Vec<String> {
        evs.map(|e| e["event"].as_str().unwrap_or("").to_string())
            .collect()
    };
    // (the journal keeps `step_state` as its own step records).
    assert_eq!(
        names(&mut j.events.iter()),
        names(&mut lines.iter().filter(|l| l["event"] != "step_state")),
        "the journal and the stream differ"
    );
    assert_eq!(j.steps.len(), events(&lines, "step_state").len());
}

#[test]
fn one_finding_on_three_hosts_is_printed_once_by_check_and_by_upgrade() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 3, "1.7.4")).expect("lab up");
    let inv = lab.inventory_path();
    let new = release(&lab, "1.8.2");
    let new = new.to_str().unwrap();
    // The lab's nodes run: the offline procedure refuses every one of them (no `--stop`).
    let check = fleetup(&inv, &["check", "--to", "1.8.2", "--binary", new]);
    assert_eq!(code(&check), exit_code::BLOCKED, "{}", both(&check));
    let text = stdout(&check);
    let fails: Vec<&str> = text.lines().filter(|l| l.contains("FAIL")).collect();
    assert_eq!(fails.len(), 1, "{text}");
    assert!(
        fails[0].contains("stopped")
            && fails[0].contains("node-1, node-2, node-3: the node is running"),
        "{text}"
    );
    assert_eq!(
        text.matches("hint: stop it cleanly first").count(),
        1,
        "{text}"
    );
    assert!(
        text.contains("result: blocked by 3 finding(s): stopped (node-1, node-2, node-3)"),
        "{text}"
    );
    assert!(text.lines().count() <= 40, "{text}");

    let up = fleetup(&inv, &["upgrade", "--to", "1.8.2", "--binary", new]);
    assert_eq!(code(&up), exit_code::BLOCKED, "{}", both(&up));
    let err = stderr(&up);
    assert_eq!(err.matches("is running").count(), 1, "{err}");
    assert_eq!(
        err.matches("hint: stop it cleanly first").count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("- stopped on node-1, node-2, node-3: the node is running"),
        "{err}"
    );
    // Nothing changed: every node still runs its old release.
    for n in &lab.nodes {
        assert_eq!(n.installed_version().as_deref(), Some("1.7.4"));
        assert!(n.service_running());
    }
}
