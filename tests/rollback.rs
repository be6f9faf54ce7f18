//! `fleetup rollback` on a real lab: after an offline 1.7.4 → 1.8.2 upgrade of a 3-node
//! Postgres lab, a plain rollback is refused (the storage is migrated and the table has no
//! zero-downtime row back), `--restore-backup` off a terminal without `--yes` is refused, and
//! `--restore-backup --yes` brings every node back to 1.7.4, serving and healthy, on a database
//! equal to the backup, with no misuse and no lock left. Assertions read the nodes, the database
//! and the simulator's records. Needs `FLEETUP_TEST_PG_URL`.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::path::PathBuf;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use fleetup::exit_code;
use fleetup::journal::{self, JournalFile};
use fleetup::lab::{Driver, Lab, LabGuard};
use lab_fixture::{
    assert_serving, both, code, fleetup, fleetup_cmd, release, spec, stderr, stdout,
};
use serde_json::Value;

fn state_dir(lab: &Lab) -> PathBuf {
    journal::default_state_dir(&lab.inventory_path())
}

fn last_journal(lab: &Lab) -> JournalFile {
    journal::list_journals(&state_dir(lab))
        .unwrap()
        .pop()
        .expect("a journal was written")
}

/// `fleetup ARGS` with stdin closed (not a terminal).
fn run(lab: &Lab, args: &[&str]) -> Output {
    fleetup_cmd(&lab.inventory_path(), args)
        .stdin(Stdio::null())
        .output()
        .expect("run fleetup")
}

/// Transactions per ledger, as the node's API reports them.
fn transactions(lab: &Lab, node: &str) -> Vec<(String, u64)> {
    let n = lab.node(node).unwrap();
    lab.ledgers
        .iter()
        .map(|l| {
            let (status, body) = n.api_get(&format!("/{l}/stats")).expect("stats");
            assert_eq!(status, 200, "{body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            (l.clone(), v["data"]["transactions"].as_u64().unwrap())
        })
        .collect()
}

/// A plain `pg_dump` of the ledgers' and the registry's schemas (data and schema), for
/// comparing the database with what it held before the upgrade. Extensions are left out: 1.8
/// creates `pg_trgm` at driver init, outside any schema the backup holds.
fn ledger_schemas_dump(lab: &Lab) -> String {
    let db = lab.database().unwrap().expect("a Postgres lab");
    let mut args = vec![
        "--no-owner".to_string(),
        "--no-privileges".to_string(),
        "--format=plain".to_string(),
        "--schema=_system".to_string(),
    ];
    args.extend(lab.ledgers.iter().map(|l| format!("--schema={l}")));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let dump = db.run("pg_dump", &args).unwrap();
    String::from_utf8_lossy(&dump)
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// Every node back on 1.7.4 and serving, the database equal to the backup (`before`), each
/// node's transaction counts those of before the upgrade, no misuse recorded.
fn assert_restored(lab: &Lab, before: &str, counts: &[(String, u64)], context: &str) {
    assert_serving(lab, "1.7.4", context);
    assert_eq!(
        ledger_schemas_dump(lab),
        before,
        "{context}: the database is the backup"
    );
    for n in &lab.nodes {
        assert_eq!(transactions(lab, &n.name), counts, "{context}: {}", n.name);
    }
    assert_eq!(
        lab.misuse_records().unwrap(),
        Vec::<Value>::new(),
        "{context}"
    );
}

/// The offline upgrade to 1.8.2 (`--stop`) that the rollbacks go back from.
fn upgrade(lab: &Lab, new: &std::path::Path) {
    let out = fleetup(
        &lab.inventory_path(),
        &[
            "upgrade",
            "--to",
            "1.8.2",
            "--binary",
            new.to_str().unwrap(),
            "--stop",
        ],
    );
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
}

#[test]
fn postgres_rollback_refuses_a_migrated_storage_then_restores_the_backup() {
    let lab = LabGuard::up(&spec(Driver::Postgres, 3, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");
    let counts = transactions(&lab, "node-1");
    let before = ledger_schemas_dump(&lab);

    upgrade(&lab, &new);
    let upgrade_id = last_journal(&lab).header.run_id;
    assert_serving(&lab, "1.8.2", "after the upgrade");
    let migrated_digest = lab.database_digest().unwrap();

    // (1) A plain rollback is refused: the storage is migrated, 1.7.4 must not serve it.
    let out = run(&lab, &["rollback"]);
    assert_eq!(code(&out), exit_code::BLOCKED, "{}", both(&out));
    let err = stderr(&out);
    assert!(err.contains("migrated the storage"), "{err}");
    assert!(err.contains("--restore-backup"), "{err}");
    assert_serving(&lab, "1.8.2", "after the refused rollback");
    assert_eq!(lab.database_digest().unwrap(), migrated_digest);
    let j = last_journal(&lab);
    assert_eq!(j.header.command, "rollback");
    assert!(j.header.plan.is_some(), "the journal holds the plan");
    assert_eq!(j.outcome(), "blocked");
    assert!(j.steps.is_empty(), "no step ran");

    // (2) `--restore-backup` off a terminal without `--yes`: refused, nothing changed.
    let out = run(&lab, &["rollback", &upgrade_id, "--restore-backup"]);
    assert_eq!(code(&out), exit_code::USAGE, "{}", both(&out));
    assert!(stderr(&out).contains("--yes"), "{}", both(&out));
    assert_serving(&lab, "1.8.2", "after the unconfirmed rollback");
    assert_eq!(lab.database_digest().unwrap(), migrated_digest);
    assert!(last_journal(&lab).steps.is_empty());

    // (3) `--restore-backup --yes`: back on 1.7.4, on the backup's data.
    let out = run(&lab, &["rollback", "--restore-backup", "--yes"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert_restored(&lab, &before, &counts, "after the rollback");
    let j = last_journal(&lab);
    assert_eq!(j.outcome(), "succeeded");
    let restored: Vec<&str> = j
        .steps
        .iter()
        .filter(|r| r.kind == "restore" && r.state.as_str() == "done")
        .map(|r| r.host.as_str())
        .collect();
    assert_eq!(restored, ["node-1"], "the migrator's backup restored once");

    // A second run converges: nothing is stopped, restored or switched again.
    let digest = lab.database_digest().unwrap();
    let out = run(
        &lab,
        &["rollback", &upgrade_id, "--restore-backup", "--yes"],
    );
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(stdout(&out).contains("nothing to do"), "{}", both(&out));
    assert_serving(&lab, "1.7.4", "after the second rollback");
    assert_eq!(lab.database_digest().unwrap(), digest);
}

/// Polls the newest journal until `id` is recorded `state` on some host (three minutes at most:
/// a loaded CI machine is slow), then kills `child` with SIGKILL.
fn kill_when_recorded(lab: &Lab, child: &mut Child, id: &str, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let j = last_journal(lab);
        if j.header.command == "rollback"
            && j.steps
                .iter()
                .any(|r| r.id == id && r.state.as_str() == state)
        {
            break;
        }
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(lab.dir.join("spawned.log")).unwrap_or_default();
            panic!("fleetup ended ({status}) before `{id}` was {state}:\n{log}");
        }
        assert!(Instant::now() < deadline, "never recorded: `{id}` {state}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: the pid is our own child's.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGKILL) };
    assert_eq!(rc, 0, "kill");
    let _ = child.wait();
    // Its SSH sessions' commands outlive it (a service start among them): let them end, as an
    // operator who looks before re-running would.
    lab.wait_remote_commands(Duration::from_secs(60))
        .expect("the killed run's remote commands end");
}

#[test]
fn a_rollback_killed_after_its_restore_resumes_without_restoring_again() {
    let lab = LabGuard::up(&spec(Driver::Postgres, 3, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");
    let counts = transactions(&lab, "node-1");
    let before = ledger_schemas_dump(&lab);
    upgrade(&lab, &new);

    let log = std::fs::File::create(lab.dir.join("spawned.log")).expect("log file");
    let mut child = fleetup_cmd(
        &lab.inventory_path(),
        &["rollback", "--restore-backup", "--yes"],
    )
    .stdin(Stdio::null())
    .stdout(Stdio::null())
    .stderr(log)
    .spawn()
    .expect("spawn fleetup");
    kill_when_recorded(&lab, &mut child, "restore", "done");
    let killed = last_journal(&lab);
    assert_eq!(killed.outcome(), "interrupted");

    // Resumed: the restore is confirmed again (off a terminal, without `--yes`, it is refused
    // and nothing changes), the dead run's locks are taken over, and the restored storage is
    // not restored again.
    let out = run(&lab, &["rollback", "--resume"]);
    assert_eq!(code(&out), exit_code::USAGE, "{}", both(&out));
    assert!(stderr(&out).contains("--yes"), "{}", both(&out));
    let out = run(&lab, &["rollback", "--resume", "--yes"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert_restored(&lab, &before, &counts, "after the resumed rollback");
    let j = last_journal(&lab);
    assert_eq!(j.header.run_id, killed.header.run_id, "same run id");
    assert_eq!(j.outcome(), "succeeded");
    let restores = j
        .steps
        .iter()
        .filter(|r| r.kind == "restore" && r.state.as_str() == "done")
        .count();
    assert_eq!(restores, 1, "the backup was restored once over both runs");

    // Nothing is left to resume.
    let out = run(&lab, &["rollback", "--resume"]);
    assert_eq!(code(&out), exit_code::USAGE, "{}", both(&out));
    assert!(
        stderr(&out).contains("no unfinished rollback"),
        "{}",
        both(&out)
    );
}

#[test]
fn sqlite_rollback_restores_the_files_of_the_backup() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 1, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");
    let counts = transactions(&lab, "node-1");
    upgrade(&lab, &new);
    let upgrade = last_journal(&lab);
    let backups: Vec<(String, String)> = upgrade
        .events
        .iter()
        .filter(|e| e["event"] == "step_finished")
        .flat_map(|e| e["artefacts"].as_array().cloned().unwrap_or_default())
        .filter(|a| a["kind"] == "backup")
        .map(|a| {
            let path = a["path"].as_str().unwrap().to_string();
            let name = path.rsplit('/').next().unwrap().to_string();
            (name, a["sha256"].as_str().unwrap().to_string())
        })
        .collect();
    assert!(!backups.is_empty());

    let out = run(&lab, &["rollback"]);
    assert_eq!(code(&out), exit_code::BLOCKED, "{}", both(&out));
    assert_serving(&lab, "1.8.2", "after the refused rollback");

    let out = run(&lab, &["rollback", "--restore-backup", "--yes"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert_serving(&lab, "1.7.4", "after the rollback");
    assert_eq!(transactions(&lab, "node-1"), counts);
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new());
    // The restore step recorded each file with the backup's SHA-256 (the step fails unless the
    // restored file's sum, read on the node, equals it).
    let j = last_journal(&lab);
    let restored: Vec<&Value> = j
        .events
        .iter()
        .filter(|e| e["event"] == "step_finished" && e["kind"] == "restore")
        .collect();
    assert_eq!(restored.len(), 1, "{restored:?}");
    assert_eq!(restored[0]["status"], "ok");
    let got: Vec<(String, String)> = restored[0]["artefacts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let path = a["path"].as_str().unwrap();
            (
                path.rsplit('/').next().unwrap().to_string(),
                a["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(got, backups);
}
