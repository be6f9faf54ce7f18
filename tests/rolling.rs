//! Zero-downtime in place (`--strategy rolling`) on a real 4-node Postgres lab at 1.8.2 →
//! 1.9.6 (the table's row `1.9.x` from `1.4.x`, zero-downtime: yes): the nodes keep serving
//! while one batch at a time moves; the storage is migrated once, by fleetup's `storage upgrade`
//! in the canary batch, before any node runs the target; a canary that never becomes healthy
//! stops the run with the other nodes untouched and goes back to its old release; `--resume`
//! finishes once the fault is gone. Every assertion reads the nodes, the database, the
//! simulator's records and the journal, not fleetup's report. Needs `FLEETUP_TEST_PG_URL`.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;
#[path = "common/ledger_state.rs"]
mod ledger_state;
#[path = "common/plan_match.rs"]
mod plan_match;

use std::path::Path;

use fleetup::exit_code;
use fleetup::lab::availability::AvailabilityPoller;
use fleetup::lab::{Driver, Lab, LabGuard};
use lab_fixture::{api_version, assert_serving, both, code, fleetup, json, release, spec};
use ledger_state::{assert_migrated_once_by_fleetup, transaction_counts};
use serde_json::Value;

const FROM: &str = "1.8.2";
const TARGET: &str = "1.9.6";

fn lab(nodes: usize) -> LabGuard {
    LabGuard::up(&spec(Driver::Postgres, nodes, FROM)).expect("lab up")
}

fn server_pid(lab: &Lab, name: &str) -> Option<u32> {
    lab.node(name)?.paths().recorded_pid()
}

fn check_json(lab: &Lab, new: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["check", "--to", TARGET, "--binary", new.to_str().unwrap()];
    args.extend_from_slice(extra);
    args.extend(["--format", "json"]);
    let out = fleetup(&lab.inventory_path(), &args);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    json(&out)
}

fn upgrade(lab: &Lab, new: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["upgrade", "--to", TARGET, "--binary", new.to_str().unwrap()];
    args.extend_from_slice(extra);
    fleetup(&lab.inventory_path(), &args)
}

#[test]
fn rolling_one_node_at_a_time_keeps_three_of_four_serving_and_migrates_once() {
    let lab = lab(4);
    let new = release(&lab, TARGET);
    let before = transaction_counts(&lab, "node-1");
    // Each node must stay healthy a second before the next batch goes.
    let mut inventory = std::fs::read_to_string(lab.inventory_path()).unwrap();
    inventory.push_str("\n[rollout]\nmin_healthy_time = \"1s\"\n");
    std::fs::write(lab.inventory_path(), inventory).unwrap();

    // `auto` picks rolling: the table allows zero-downtime, one shared Postgres, all serving.
    let audit = check_json(&lab, &new, &["--serial", "1"]);
    assert_eq!(audit["plan"]["strategy"], "rolling", "{audit:#}");
    let plan_id = audit["plan_id"].as_str().unwrap().to_string();
    let ids: Vec<&str> = audit["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(
        ids,
        [
            "preflight",
            "lock",
            "backup",
            "stage",
            "stop-service-1",
            "migrate-1",
            "switch-1",
            "start-service-1",
            "health-gate-1",
            "stop-service-2",
            "switch-2",
            "start-service-2",
            "health-gate-2",
            "stop-service-3",
            "switch-3",
            "start-service-3",
            "health-gate-3",
            "stop-service-4",
            "switch-4",
            "start-service-4",
            "health-gate-4",
            "unlock",
        ]
    );

    let poll = AvailabilityPoller::for_lab(&lab).expect("poller");
    let out = upgrade(&lab, &new, &["--serial", "1", "--plan", &plan_id]);
    let seen = poll.stop();
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));

    assert_serving(&lab, TARGET, "after the rolling upgrade");
    assert!(
        seen.fewest() >= 3,
        "at least 3 of 4 nodes answered at every poll; fewest at {:?}, missing {:?}",
        seen.fewest_sample().map(|s| s.at),
        seen.fewest_missing()
    );
    assert!(seen.polls() > 5, "the poller ran during the upgrade");
    assert_migrated_once_by_fleetup(&lab, TARGET);
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new(), "misuse");
    for n in &lab.nodes {
        assert_eq!(transaction_counts(&lab, &n.name), before, "{}", n.name);
    }
    let j = plan_match::assert_journal_ran_the_plan(&lab, &audit);
    let held = j
        .events
        .iter()
        .filter(|e| e["event"] == "step_finished" && e["kind"] == "health_gate")
        .filter(|e| {
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("stayed healthy for 1s"))
        })
        .count();
    assert_eq!(held, 4, "every node held `min_healthy_time`");
}

#[test]
fn a_canary_that_never_becomes_healthy_stops_the_run_and_goes_back_then_resume_finishes() {
    let lab = lab(4);
    let new = release(&lab, TARGET);
    let pids: Vec<Option<u32>> = ["node-2", "node-3", "node-4"]
        .iter()
        .map(|n| server_pid(&lab, n))
        .collect();
    // node-1, the migrator, is the canary; its API answers 500 while the fault is armed.
    lab.set_fault_with("never-healthy", &["node-1"], &[])
        .unwrap();
    let audit = check_json(&lab, &new, &[]);
    let plan_id = audit["plan_id"].as_str().unwrap().to_string();
    // A budget does not let the run past its canary batch.
    let out = upgrade(
        &lab,
        &new,
        &[
            "--health-timeout",
            "4s",
            "--max-fail",
            "1",
            "--plan",
            &plan_id,
        ],
    );
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("node-1"), "{err}");
    plan_match::assert_journal_within_the_plan(&lab, &audit);
    // The report shows the canary back where it was.
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let canary_line = report
        .lines()
        .find(|l| l.starts_with("node-1"))
        .unwrap_or_default()
        .to_string();
    assert!(canary_line.contains("binary not switched"), "{report}");

    // The others were never touched: same servers, old binary, serving the old version.
    for (name, pid) in ["node-2", "node-3", "node-4"].iter().zip(&pids) {
        let node = lab.node(name).unwrap();
        assert_eq!(node.installed_version().as_deref(), Some(FROM), "{name}");
        assert_eq!(&server_pid(&lab, name), pid, "{name} was not restarted");
        assert_eq!(api_version(&lab, name).as_deref(), Some(FROM), "{name}");
    }
    // The canary is back on its old release and its service runs it again (its API still
    // answers 500: the fault is on the node, whatever the release).
    let canary = lab.node("node-1").unwrap();
    assert_eq!(canary.installed_version().as_deref(), Some(FROM));
    assert!(canary.service_running(), "the canary runs its old release");
    // The migration ran once, before the canary started: the old nodes serve the new schema.
    assert_migrated_once_by_fleetup(&lab, TARGET);

    lab.clear_fault("never-healthy").unwrap();
    assert_eq!(api_version(&lab, "node-1").as_deref(), Some(FROM));
    let resumed = fleetup(&lab.inventory_path(), &["upgrade", "--resume"]);
    assert_eq!(code(&resumed), exit_code::SUCCESS, "{}", both(&resumed));
    assert_serving(&lab, TARGET, "after --resume");
    assert_migrated_once_by_fleetup(&lab, TARGET);
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new(), "misuse");
}

/// Whether the newest journal records step `id` in `state` on any host.
fn recorded(lab: &Lab, id: &str, state: &str) -> bool {
    let dir = fleetup::journal::default_state_dir(&lab.inventory_path());
    fleetup::journal::list_journals(&dir)
        .unwrap_or_default()
        .pop()
        .is_some_and(|j| {
            j.steps
                .iter()
                .any(|r| r.id == id && r.state.as_str() == state)
        })
}

#[test]
fn a_node_lost_mid_run_with_max_fail_0_stops_the_run_at_its_batch_with_every_state_reported() {
    let lab = lab(4);
    let new = release(&lab, TARGET);
    let mut child = lab_fixture::fleetup_cmd(
        &lab.inventory_path(),
        &[
            "upgrade",
            "--to",
            TARGET,
            "--binary",
            new.to_str().unwrap(),
            "--max-fail",
            "0",
        ],
    )
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    // node-3 drops off while batch 2 (node-2) moves.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
    while !recorded(&lab, "start-service-2", "started") {
        assert!(
            std::time::Instant::now() < deadline,
            "batch 2 never started"
        );
        assert!(child.try_wait().unwrap().is_none(), "fleetup ended early");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    lab.node("node-3").unwrap().kill_sshd().unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));

    // Batches 1 and 2 finished and serve the target; node-3 and node-4 were never changed.
    lab_fixture::assert_node_serving(&lab, "node-1", TARGET, "batch 1");
    lab_fixture::assert_node_serving(&lab, "node-2", TARGET, "batch 2");
    for name in ["node-3", "node-4"] {
        let node = lab.node(name).unwrap();
        assert_eq!(node.installed_version().as_deref(), Some(FROM), "{name}");
        assert_eq!(
            api_version(&lab, name).as_deref(),
            Some(FROM),
            "{name} serves"
        );
    }
    // Nothing ran on node-4: its batch was never started.
    let j = plan_match::last_upgrade(&lab);
    assert!(
        !j.steps
            .iter()
            .any(|r| r.host == "node-4" && r.id.ends_with("-4") && r.state.as_str() != "skipped"),
        "{:?}",
        j.steps
    );
    // The report names every node's state and how to go on.
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    for name in ["node-1", "node-2", "node-3", "node-4"] {
        assert!(err.contains(name), "{name} in the report: {}", both(&out));
    }
    assert!(err.contains("--resume"), "{}", both(&out));
    assert!(err.contains("fleetup rollback"), "{}", both(&out));
    assert!(err.contains("the SSH connection is lost"), "{}", both(&out));
    let report = String::from_utf8_lossy(&out.stdout).to_string();
    let line = |n: &str| {
        report
            .lines()
            .find(|l| l.starts_with(n))
            .unwrap_or_else(|| panic!("{n} in the state report: {report}"))
            .to_string()
    };
    assert!(line("node-2").contains("API reports `1.9.6`"), "{report}");
    assert!(line("node-3").contains("failed at step"), "{report}");
    assert!(line("node-4").contains("API reports `1.8.2`"), "{report}");
}

#[test]
fn pause_after_canary_off_a_terminal_stops_after_the_canary_and_resume_goes_on() {
    let lab = lab(3);
    let new = release(&lab, TARGET);
    let out = upgrade(&lab, &new, &["--pause-after-canary"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--resume"),
        "{}",
        both(&out)
    );
    // Only the canary moved.
    lab_fixture::assert_node_serving(&lab, "node-1", TARGET, "the canary");
    for name in ["node-2", "node-3"] {
        assert_eq!(api_version(&lab, name).as_deref(), Some(FROM), "{name}");
    }
    let j = plan_match::last_upgrade(&lab);
    assert_eq!(j.outcome(), "paused");
    let resumed = fleetup(&lab.inventory_path(), &["upgrade", "--resume"]);
    assert_eq!(code(&resumed), exit_code::SUCCESS, "{}", both(&resumed));
    assert_serving(&lab, TARGET, "after --resume");
    assert_migrated_once_by_fleetup(&lab, TARGET);
    assert_eq!(plan_match::last_upgrade(&lab).outcome(), "succeeded");
}
