//! Zero-downtime by replacement (`--strategy replace`, picked by `auto`) on a real Postgres lab:
//! 3 old nodes at 1.8.2 and 3 new ones (`replaces = "node-i"`) provisioned without `numary`,
//! to 1.9.6 (the table's row `1.9.x` from `1.4.x`, zero-downtime: yes). The new nodes get the
//! release, the storage is migrated once by fleetup's `storage upgrade` before any of them
//! starts, each old node is stopped only once its replacement passed its health gate, so at least
//! 3 nodes answer throughout; a new node that never becomes healthy stops the run with its old
//! node (and every other) still serving, and `--resume` finishes once the fault is gone. Every
//! assertion reads the nodes, the database, the simulator's records and the journal, not
//! fleetup's report. Needs `FLEETUP_TEST_PG_URL`.

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
use lab_fixture::{api_version, assert_node_serving, both, code, fleetup, json, release, spec};
use ledger_state::{assert_migrated_once_by_fleetup, transaction_counts};
use serde_json::Value;

const FROM: &str = "1.8.2";
const TARGET: &str = "1.9.6";
const OLD: [&str; 3] = ["node-1", "node-2", "node-3"];
const NEW: [&str; 3] = ["new-1", "new-2", "new-3"];

/// 3 old nodes serving `FROM` on one database, and their 3 replacements without `numary`.
fn lab() -> LabGuard {
    let mut spec = spec(Driver::Postgres, 3, FROM);
    spec.replacements = 3;
    LabGuard::up(&spec).expect("lab up")
}

/// An old node after its decommission: stopped, silent, its binary still the old release, its
/// release and environment (the storage settings) still there.
fn assert_decommissioned(lab: &Lab, name: &str) {
    let n = lab.node(name).unwrap();
    assert!(!n.service_running(), "{name} is stopped");
    assert_eq!(api_version(lab, name), None, "{name} is silent");
    assert_eq!(
        n.installed_version().as_deref(),
        Some(FROM),
        "{name} binary"
    );
    let paths = n.paths();
    let from = fleetup::version::Version::parse(FROM).unwrap();
    assert!(paths.release_binary(&from).is_file(), "{name} release kept");
    assert!(paths.env_file().is_file(), "{name} environment kept");
    assert!(
        !paths.releases_dir().join(".fleetup.lock").exists(),
        "{name} keeps a lock"
    );
}

fn server_pid(lab: &Lab, name: &str) -> Option<u32> {
    lab.node(name)?.paths().recorded_pid()
}

fn check_json(lab: &Lab, new: &Path) -> Value {
    let args = [
        "check",
        "--to",
        TARGET,
        "--binary",
        new.to_str().unwrap(),
        "--format",
        "json",
    ];
    let out = fleetup(&lab.inventory_path(), &args);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    json(&out)
}

fn step_ids(audit: &Value) -> Vec<String> {
    audit["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect()
}

fn upgrade(lab: &Lab, new: &Path, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["upgrade", "--to", TARGET, "--binary", new.to_str().unwrap()];
    args.extend_from_slice(extra);
    fleetup(&lab.inventory_path(), &args)
}

#[test]
fn replace_three_by_three_keeps_three_serving_migrates_once_and_stops_the_old_nodes() {
    let lab = lab();
    let new = release(&lab, TARGET);
    let before = transaction_counts(&lab, "node-1");

    // `auto` picks replace: the table allows zero-downtime, one shared Postgres, old nodes
    // serving, every one of them with a replacement.
    let audit = check_json(&lab, &new);
    assert_eq!(audit["plan"]["strategy"], "replace", "{audit:#}");
    assert_eq!(
        step_ids(&audit),
        [
            "preflight",
            "lock",
            "backup",
            "stage",
            "migrate",
            "switch",
            "start-service-1",
            "health-gate-1",
            "decommission-1",
            "start-service-2",
            "health-gate-2",
            "decommission-2",
            "unlock",
        ]
    );
    // The new nodes' missing `numary` is expected, not a warning.
    let warnings = audit["plan"]["warnings"].to_string();
    assert!(!warnings.contains("exited with 127"), "{warnings}");
    let plan_id = audit["plan_id"].as_str().unwrap().to_string();

    let poll = AvailabilityPoller::for_lab(&lab).expect("poller");
    let started = std::time::Instant::now();
    let out = upgrade(&lab, &new, &["--plan", &plan_id]);
    let took = started.elapsed();
    let seen = poll.stop();
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    eprintln!("replace 3+3 took {took:?}; {seen}");

    for name in NEW {
        assert_node_serving(&lab, name, TARGET, "after the replace");
    }
    for name in OLD {
        assert_decommissioned(&lab, name);
    }
    assert!(
        seen.fewest() >= 3,
        "at least 3 nodes answered at every poll: {seen}"
    );
    assert!(
        seen.polls() > 5,
        "the poller ran during the upgrade: {seen}"
    );
    assert_migrated_once_by_fleetup(&lab, TARGET);
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new(), "misuse");
    for name in NEW {
        assert_eq!(transaction_counts(&lab, name), before, "{name}");
    }
    plan_match::assert_journal_ran_the_plan(&lab, &audit);

    // Run again: still replace (offline would upgrade the stopped old nodes and start them),
    // with nothing left but their decommission, already done.
    let again = check_json(&lab, &new);
    assert_eq!(again["plan"]["strategy"], "replace", "{again:#}");
    assert_eq!(
        step_ids(&again),
        ["preflight", "lock", "decommission", "unlock"]
    );
    let out = upgrade(&lab, &new, &[]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    for name in OLD {
        assert_decommissioned(&lab, name);
    }
    let j = plan_match::last_upgrade(&lab);
    let states: Vec<(&str, &str)> = j
        .steps
        .iter()
        .filter(|r| r.kind == "decommission")
        .map(|r| (r.host.as_str(), r.state.as_str()))
        .collect();
    assert_eq!(
        states,
        OLD.iter().map(|n| (*n, "already_done")).collect::<Vec<_>>()
    );
}

#[test]
fn a_new_node_that_never_becomes_healthy_leaves_every_old_node_serving_then_resume_finishes() {
    let lab = lab();
    let new = release(&lab, TARGET);
    let pids: Vec<Option<u32>> = OLD.iter().map(|n| server_pid(&lab, n)).collect();
    // new-1, the migrator, is the canary; its API answers 500 while the fault is armed.
    lab.set_fault_with("never-healthy", &["new-1"], &[])
        .unwrap();
    let poll = AvailabilityPoller::for_lab(&lab).expect("poller");
    let started = std::time::Instant::now();
    let out = upgrade(&lab, &new, &["--health-timeout", "4s"]);
    let took = started.elapsed();
    let seen = poll.stop();
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    eprintln!("failed replace took {took:?}; {seen}");
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("new-1"), "{err}");
    assert!(seen.fewest() >= 3, "{seen}");

    // Every old node still serves its old release from the same server: none was stopped.
    for (name, pid) in OLD.iter().zip(&pids) {
        let node = lab.node(name).unwrap();
        assert_eq!(node.installed_version().as_deref(), Some(FROM), "{name}");
        assert_eq!(&server_pid(&lab, name), pid, "{name} was not restarted");
        assert_eq!(api_version(&lab, name).as_deref(), Some(FROM), "{name}");
    }
    // The failed new node is stopped again (it never served the fleet); the others were
    // switched but never started.
    for name in NEW {
        let node = lab.node(name).unwrap();
        assert!(!node.service_running(), "{name} is stopped");
        assert_eq!(node.installed_version().as_deref(), Some(TARGET), "{name}");
    }
    let j = plan_match::last_upgrade(&lab);
    assert!(
        !j.steps.iter().any(|r| r.kind == "decommission"),
        "nothing was decommissioned: {:?}",
        j.steps
            .iter()
            .map(|r| (&r.id, &r.host, &r.state))
            .collect::<Vec<_>>()
    );
    // The migration ran once, before new-1 started: the old nodes serve the migrated schema,
    // as the table's zero-downtime row allows.
    assert_migrated_once_by_fleetup(&lab, TARGET);
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new(), "misuse");

    lab.clear_fault("never-healthy").unwrap();
    let started = std::time::Instant::now();
    let resumed = fleetup(&lab.inventory_path(), &["upgrade", "--resume"]);
    eprintln!("--resume took {:?}", started.elapsed());
    assert_eq!(code(&resumed), exit_code::SUCCESS, "{}", both(&resumed));
    for name in NEW {
        assert_node_serving(&lab, name, TARGET, "after --resume");
    }
    for name in OLD {
        assert_decommissioned(&lab, name);
    }
    assert_migrated_once_by_fleetup(&lab, TARGET);
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new(), "misuse");
}

#[test]
fn an_old_node_without_a_replacement_follows_rolling_and_three_still_answer_throughout() {
    // node-3 has no replacement: it is upgraded in place, while node-2 (replaced by new-2 in
    // the last batch of new nodes) still serves, so the fleet never drops below 3.
    let mut spec = spec(Driver::Postgres, 3, FROM);
    spec.replacements = 2;
    let lab = LabGuard::up(&spec).expect("lab up");
    let new = release(&lab, TARGET);
    let before = transaction_counts(&lab, "node-3");

    let audit = check_json(&lab, &new);
    assert_eq!(audit["plan"]["strategy"], "replace", "{audit:#}");
    assert_eq!(
        step_ids(&audit),
        [
            "preflight",
            "lock",
            "backup",
            "stage",
            "migrate",
            "switch",
            "start-service-1",
            "health-gate-1",
            "decommission-1",
            "start-service-2",
            "health-gate-2",
            "stop-service-3",
            "switch-3",
            "start-service-3",
            "health-gate-3",
            "decommission-2",
            "unlock",
        ]
    );
    let plan_id = audit["plan_id"].as_str().unwrap().to_string();

    let poll = AvailabilityPoller::for_lab(&lab).expect("poller");
    let started = std::time::Instant::now();
    let out = upgrade(&lab, &new, &["--plan", &plan_id]);
    let took = started.elapsed();
    let seen = poll.stop();
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    eprintln!("replace 3+2 (one rolling) took {took:?}; {seen}");

    for name in ["new-1", "new-2", "node-3"] {
        assert_node_serving(&lab, name, TARGET, "after the replace");
    }
    for name in ["node-1", "node-2"] {
        assert_decommissioned(&lab, name);
    }
    assert!(seen.fewest() >= 3, "{seen}");
    assert_migrated_once_by_fleetup(&lab, TARGET);
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new(), "misuse");
    assert_eq!(transaction_counts(&lab, "node-3"), before);
    plan_match::assert_journal_ran_the_plan(&lab, &audit);
}

#[test]
fn within_max_fail_a_failed_new_node_is_left_out_and_its_old_node_keeps_serving() {
    let lab = lab();
    let new = release(&lab, TARGET);
    let pid = server_pid(&lab, "node-2");
    // new-2 is in the second batch (with new-3): it fails its gate, the run goes on without it.
    lab.set_fault_with("never-healthy", &["new-2"], &[])
        .unwrap();
    let poll = AvailabilityPoller::for_lab(&lab).expect("poller");
    let out = upgrade(&lab, &new, &["--health-timeout", "4s", "--max-fail", "1"]);
    let seen = poll.stop();
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(err.contains("new-2"), "{err}");
    eprintln!("replace with new-2 left out: {seen}");
    assert!(seen.fewest() >= 3, "{seen}");

    for name in ["new-1", "new-3"] {
        assert_node_serving(&lab, name, TARGET, "the others went on");
    }
    for name in ["node-1", "node-3"] {
        assert_decommissioned(&lab, name);
    }
    // new-2 was stopped again; node-2 serves its old release from the same process.
    assert!(!lab.node("new-2").unwrap().service_running());
    assert_eq!(server_pid(&lab, "node-2"), pid);
    assert_eq!(api_version(&lab, "node-2").as_deref(), Some(FROM));
    let j = plan_match::last_upgrade(&lab);
    let node2: Vec<(&str, &str)> = j
        .steps
        .iter()
        .filter(|r| r.host == "node-2")
        .map(|r| (r.id.as_str(), r.state.as_str()))
        .filter(|(id, _)| id.starts_with("decommission"))
        .collect();
    assert_eq!(node2, [("decommission-2", "skipped")]);
    assert_migrated_once_by_fleetup(&lab, TARGET);
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new(), "misuse");
}
