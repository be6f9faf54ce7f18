//! Multi-hop in one run on a real 3-node Postgres lab at 1.2.0 → 1.9.6: the table allows no
//! direct path (`1.2.0 → 1.8.x → 1.9.6`), so one `upgrade` carries out both hops, each with its
//! own binary (`--binary 1.8.2=FILE`), each health-gated on every node before the next. Every
//! node ends serving 1.9.6, each ledger is migrated once per hop by fleetup, the data is intact;
//! killed during the second hop and resumed, the run finishes. Assertions read the nodes, the
//! simulator's records and the journal. Needs `FLEETUP_TEST_PG_URL`.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;
#[path = "common/ledger_state.rs"]
mod ledger_state;
#[path = "common/plan_match.rs"]
mod plan_match;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use fleetup::exit_code;
use fleetup::lab::{Driver, Lab, LabGuard};
use lab_fixture::{assert_serving, both, code, fleetup, fleetup_cmd, json, release, spec};
use ledger_state::migrations;
use serde_json::Value;

const FROM: &str = "1.2.0";
const HOP: &str = "1.8.2";
const TARGET: &str = "1.9.6";

fn lab() -> (LabGuard, PathBuf, PathBuf) {
    let lab = LabGuard::up(&spec(Driver::Postgres, 3, FROM)).expect("lab up");
    let hop = release(&lab, HOP);
    let new = release(&lab, TARGET);
    (lab, hop, new)
}

fn args<'a>(cmd: &'a str, hop: &'a str, new: &'a str) -> Vec<&'a str> {
    vec![
        cmd, "--to", TARGET, "--binary", hop, "--binary", new, "--stop",
    ]
}

fn assert_each_hop_migrated_once(lab: &Lab) {
    let mut want: Vec<(String, String)> = lab
        .ledgers
        .iter()
        .map(|l| (l.clone(), "storage upgrade".to_string()))
        .collect();
    want.sort();
    for version in [HOP, TARGET] {
        assert_eq!(migrations(lab, version), want, "migrated once to {version}");
    }
}

fn transactions(lab: &Lab) -> Vec<u64> {
    let node = lab.node("node-1").unwrap();
    lab.ledgers
        .iter()
        .map(|l| {
            let (status, body) = node.api_get(&format!("/{l}/stats")).unwrap();
            assert_eq!(status, 200, "{l}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            v["data"]["transactions"].as_u64().unwrap()
        })
        .collect()
}

#[test]
fn two_hops_in_one_run_each_health_gated_with_one_backup() {
    let (lab, hop, new) = lab();
    let hop_arg = format!("{HOP}={}", hop.display());
    let new_arg = new.display().to_string();
    let before = transactions(&lab);

    let mut check = args("check", &hop_arg, &new_arg);
    check.extend(["--format", "json"]);
    let audit = fleetup(&lab.inventory_path(), &check);
    assert_eq!(code(&audit), exit_code::SUCCESS, "{}", both(&audit));
    let audit = json(&audit);
    let hops: Vec<&str> = audit["plan"]["hops"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["target"].as_str().unwrap())
        .collect();
    assert_eq!(hops, [HOP, TARGET]);
    let plan_id = audit["plan_id"].as_str().unwrap().to_string();

    let mut run = args("upgrade", &hop_arg, &new_arg);
    run.extend(["--plan", &plan_id]);
    let out = fleetup(&lab.inventory_path(), &run);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));

    assert_serving(&lab, TARGET, "after both hops");
    assert_each_hop_migrated_once(&lab);
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new(), "misuse");
    assert_eq!(transactions(&lab), before, "data intact");
    let j = plan_match::assert_journal_ran_the_plan(&lab, &audit);
    // One backup, before the first hop; each hop's gates passed before the next hop began.
    let done = |id: &str| {
        j.steps
            .iter()
            .position(|r| r.id == id && r.state.as_str() == "done")
    };
    let backups = j.steps.iter().filter(|r| r.kind == "backup").count();
    assert!(backups >= 1, "{:?}", j.steps);
    assert!(
        j.steps
            .iter()
            .filter(|r| r.kind == "backup")
            .all(|r| r.id == format!("{HOP}/backup")),
        "one backup, in the first hop"
    );
    let last_gate_of_first_hop = j
        .steps
        .iter()
        .rposition(|r| r.id.starts_with(&format!("{HOP}/health-gate")))
        .unwrap();
    let first_of_second_hop = j
        .steps
        .iter()
        .position(|r| r.id.starts_with(&format!("{TARGET}/")))
        .unwrap();
    assert!(last_gate_of_first_hop < first_of_second_hop);
    assert!(
        done(&format!("{TARGET}/migrate-1")).is_some(),
        "{:?}",
        j.steps
    );
}

#[test]
fn killed_during_the_second_hop_then_resumed_finishes() {
    let (lab, hop, new) = lab();
    let hop_arg = format!("{HOP}={}", hop.display());
    let new_arg = new.display().to_string();
    let mut child = fleetup_cmd(&lab.inventory_path(), &args("upgrade", &hop_arg, &new_arg))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let dir = fleetup::journal::default_state_dir(&lab.inventory_path());
    let second_hop_started = || {
        fleetup::journal::list_journals(&dir)
            .unwrap_or_default()
            .pop()
            .is_some_and(|j| {
                j.steps
                    .iter()
                    .any(|r| r.id == format!("{TARGET}/switch-1") && r.state.as_str() == "done")
            })
    };
    let deadline = Instant::now() + Duration::from_secs(180);
    while !second_hop_started() {
        assert!(Instant::now() < deadline, "the second hop never got going");
        assert!(child.try_wait().unwrap().is_none(), "fleetup ended early");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: our own child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    let _ = child.wait();
    lab.wait_remote_commands(Duration::from_secs(60))
        .expect("the killed run's remote commands end");

    let resumed = fleetup(&lab.inventory_path(), &["upgrade", "--resume"]);
    assert_eq!(code(&resumed), exit_code::SUCCESS, "{}", both(&resumed));
    assert_serving(&lab, TARGET, "after --resume");
    assert_each_hop_migrated_once(&lab);
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new(), "misuse");
}
