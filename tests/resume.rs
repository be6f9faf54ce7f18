//! A run that dies converges: `fleetup upgrade` killed (SIGKILL) at each stage of the offline
//! procedure on a real 3-node Postgres lab, then continued with `--resume` or re-run with
//! `--break-lock`, leaves every node serving the target, each ledger migrated exactly once (the
//! simulator's `migrations.log`), no misuse, no lock. Also: a fleet switched and migrated but
//! stopped is started; a finished fleet is left alone; Ctrl-C during the starts cancels cleanly
//! and `--resume` finishes. Every assertion reads the nodes, the database and the simulator's
//! records, not fleetup's report. Needs `FLEETUP_TEST_PG_URL`.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};

use fleetup::exit_code;
use fleetup::journal::{self, JournalFile};
use fleetup::lab::{Driver, Lab, LabGuard};
use lab_fixture::{assert_serving, both, code, fleetup, fleetup_cmd, release, spec, stdout};
use serde_json::Value;

const TARGET: &str = "1.8.2";

fn state_dir(lab: &Lab) -> PathBuf {
    journal::default_state_dir(&lab.inventory_path())
}

fn journals(lab: &Lab) -> Vec<JournalFile> {
    journal::list_journals(&state_dir(lab)).unwrap()
}

/// Starts `fleetup upgrade --to 1.8.2 --binary NEW` with `extra`, in the background.
fn spawn_upgrade(lab: &Lab, new: &Path, extra: &[&str]) -> Child {
    let mut args = vec!["upgrade", "--to", TARGET, "--binary", new.to_str().unwrap()];
    args.extend_from_slice(extra);
    let log = std::fs::File::create(lab.dir.join("spawned.log")).expect("log file");
    fleetup_cmd(&lab.inventory_path(), &args)
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .expect("spawn fleetup")
}

/// Whether the newest journal records step `id` in `state` on any host.
fn recorded(lab: &Lab, id: &str, state: &str) -> bool {
    let Some(j) = journals(lab).pop() else {
        return false;
    };
    j.steps
        .iter()
        .any(|r| r.id == id && r.state.as_str() == state)
}

/// Polls until `ready` holds (or panics after three minutes: a loaded CI machine is slow), then
/// sends `signal` to `child`.
fn signal_when(lab: &Lab, child: &mut Child, signal: i32, ready: impl Fn() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(180);
    while !ready() {
        if let Ok(Some(status)) = child.try_wait() {
            let log = std::fs::read_to_string(lab.dir.join("spawned.log")).unwrap_or_default();
            panic!("fleetup ended ({status}) before {what}:\n{log}");
        }
        assert!(Instant::now() < deadline, "never reached: {what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    // SAFETY: the pid is our own child's.
    let rc = unsafe { libc::kill(child.id() as libc::pid_t, signal) };
    assert_eq!(rc, 0, "kill");
}

fn kill_when(lab: &Lab, child: &mut Child, ready: impl Fn() -> bool, what: &str) {
    signal_when(lab, child, libc::SIGKILL, ready, what);
    let _ = child.wait();
    // Its SSH sessions' commands outlive it (a service start among them): let them end, as an
    // operator who looks before re-running would.
    lab.wait_remote_commands(Duration::from_secs(60))
        .expect("the killed run's remote commands end");
}

/// A migration of the simulator is running (its lock file exists).
fn migration_running(lab: &Lab) -> bool {
    std::fs::read_dir(lab.sim_state_dir().join("locks"))
        .map(|d| d.flatten().next().is_some())
        .unwrap_or(false)
}

/// Committed runs of pending migrations at `version`, as `ledger` per line.
fn committed_migrations(lab: &Lab, version: &str) -> Vec<String> {
    let text =
        std::fs::read_to_string(lab.sim_state_dir().join("migrations.log")).unwrap_or_default();
    let mut out: Vec<String> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("migrations.log line"))
        .filter(|v| v["version"] == version && v["result"] == "committed")
        .map(|v| v["ledger"].as_str().unwrap_or("").to_string())
        .collect();
    out.sort();
    out
}

/// The goal reached: every node runs and serves the target and is healthy, each ledger was
/// migrated exactly once, nothing was misused, no lock is left.
fn assert_converged(lab: &Lab, context: &str) {
    assert_serving(lab, TARGET, context);
    let mut ledgers = lab.ledgers.clone();
    ledgers.sort();
    assert_eq!(
        committed_migrations(lab, TARGET),
        ledgers,
        "{context}: each ledger migrated exactly once"
    );
    assert_eq!(
        lab.misuse_records().unwrap(),
        Vec::<Value>::new(),
        "{context}: misuse"
    );
}

fn pg_lab() -> (LabGuard, PathBuf) {
    let lab = LabGuard::up(&spec(Driver::Postgres, 3, "1.7.4")).expect("lab up");
    let new = release(&lab, TARGET);
    (lab, new)
}

/// How the interrupted run is continued.
#[derive(Clone, Copy, Debug)]
enum Then {
    Resume,
    BreakLock,
}

fn continue_run(lab: &Lab, new: &Path, then: Then) -> Output {
    let out = match then {
        Then::Resume => fleetup(&lab.inventory_path(), &["upgrade", "--resume"]),
        Then::BreakLock => fleetup(
            &lab.inventory_path(),
            &[
                "upgrade",
                "--to",
                TARGET,
                "--binary",
                new.to_str().unwrap(),
                "--stop",
                "--break-lock",
            ],
        ),
    };
    assert_eq!(code(&out), exit_code::SUCCESS, "{then:?}: {}", both(&out));
    out
}

/// Kills a `--stop` upgrade once `ready` holds, continues it with `then`, checks the fleet.
/// What slows the run down so that the kill lands where it should.
#[derive(Clone, Copy)]
enum Slow {
    No,
    /// Each migration takes 4 s.
    Migration,
    /// node-3 does not answer its health gate until the fault is cleared.
    Start,
}

fn killed_then(point: &str, then: Then, slow: Slow, ready: fn(&Lab) -> bool) {
    let (lab, new) = pg_lab();
    match slow {
        Slow::No => {}
        Slow::Migration => lab.set_fault_with("slow-migration", &[], &["4"]).unwrap(),
        Slow::Start => lab
            .set_fault_with("never-healthy", &["node-3"], &[])
            .unwrap(),
    }
    let mut child = spawn_upgrade(&lab, &new, &["--stop"]);
    kill_when(&lab, &mut child, || ready(&lab), point);
    lab.clear_fault("slow-migration").unwrap();
    lab.clear_fault("never-healthy").unwrap();
    let killed = journals(&lab).pop().expect("the killed run's journal");
    assert_eq!(killed.outcome(), "interrupted", "{point}");
    let shown = fleetup(
        &lab.inventory_path(),
        &["runs", "show", &killed.header.run_id],
    );
    assert_eq!(code(&shown), 0, "{}", both(&shown));
    if matches!(slow, Slow::Migration) {
        assert!(
            stdout(&shown).contains("IN PROGRESS when the run stopped: `migrate` on node-1"),
            "{point}: {}",
            stdout(&shown)
        );
    }
    continue_run(&lab, &new, then);
    assert_converged(&lab, &format!("killed {point}, then {then:?}"));
    let last = journals(&lab).pop().unwrap();
    // Killed in the last health gate, the fleet may serve by itself once the fault is gone: the
    // continuation then has nothing left to do but clear the dead run's locks.
    assert!(
        matches!(last.outcome().as_str(), "succeeded" | "nothing-to-do"),
        "{}",
        last.outcome()
    );
    if let Then::Resume = then {
        assert_eq!(last.header.run_id, killed.header.run_id, "same run id");
    }
    // A second run finds nothing to do and restarts nothing.
    let pids: Vec<String> = lab.nodes.iter().map(server_pid).collect();
    let again = fleetup(
        &lab.inventory_path(),
        &["upgrade", "--to", TARGET, "--binary", new.to_str().unwrap()],
    );
    assert_eq!(code(&again), 0, "{}", both(&again));
    assert!(stdout(&again).contains("nothing to do"), "{}", both(&again));
    let after: Vec<String> = lab.nodes.iter().map(server_pid).collect();
    assert_eq!(pids, after, "no service restarted");
    assert_converged(&lab, "after a second run");
}

/// The pid of the node's running simulator server (from the lab's service pid file).
fn server_pid(n: &fleetup::lab::LabNode) -> String {
    n.paths()
        .recorded_pid()
        .map_or_else(String::new, |p| p.to_string())
}

fn after_backup(lab: &Lab) -> bool {
    recorded(lab, "backup", "done")
}

fn during_migration(lab: &Lab) -> bool {
    recorded(lab, "migrate", "started") && migration_running(lab)
}

fn after_switch(lab: &Lab) -> bool {
    recorded(lab, "switch", "done")
}

fn during_starts(lab: &Lab) -> bool {
    recorded(lab, "health-gate-2", "started")
}

#[test]
fn killed_after_the_backup_then_resumed() {
    killed_then("after the backup", Then::Resume, Slow::No, after_backup);
}

#[test]
fn killed_after_the_backup_then_rerun_with_break_lock() {
    killed_then("after the backup", Then::BreakLock, Slow::No, after_backup);
}

#[test]
fn killed_during_a_slow_migration_then_resumed() {
    killed_then(
        "during the migration",
        Then::Resume,
        Slow::Migration,
        during_migration,
    );
}

#[test]
fn killed_during_a_slow_migration_then_rerun_with_break_lock() {
    killed_then(
        "during the migration",
        Then::BreakLock,
        Slow::Migration,
        during_migration,
    );
}

#[test]
fn killed_after_the_switch_then_resumed() {
    killed_then("after the switch", Then::Resume, Slow::No, after_switch);
}

#[test]
fn killed_after_the_switch_then_rerun_with_break_lock() {
    killed_then("after the switch", Then::BreakLock, Slow::No, after_switch);
}

#[test]
fn killed_during_the_starts_then_resumed() {
    killed_then(
        "during the starts",
        Then::Resume,
        Slow::Start,
        during_starts,
    );
}

#[test]
fn killed_during_the_starts_then_rerun_with_break_lock() {
    killed_then(
        "during the starts",
        Then::BreakLock,
        Slow::Start,
        during_starts,
    );
}

#[test]
fn sigint_during_the_starts_cancels_releases_the_locks_and_resume_finishes() {
    let (lab, new) = pg_lab();
    // node-3 does not answer while the fault is armed: the run waits in its health gate.
    lab.set_fault_with("never-healthy", &["node-3"], &[])
        .unwrap();
    let mut child = spawn_upgrade(&lab, &new, &["--stop", "--health-timeout", "120s"]);
    signal_when(
        &lab,
        &mut child,
        libc::SIGINT,
        || recorded(&lab, "health-gate-2", "started"),
        "the second health gate",
    );
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(exit_code::CANCELLED), "{status}");
    lab.clear_fault("never-healthy").unwrap();
    let j = journals(&lab).pop().unwrap();
    assert_eq!(j.outcome(), "cancelled");
    for n in &lab.nodes {
        assert!(
            !n.paths().releases_dir().join(".fleetup.lock").exists(),
            "{}: the lock was released",
            n.name
        );
    }
    assert!(
        j.steps
            .iter()
            .any(|r| r.id == "health-gate-2" && r.state.as_str() == "cancelled"),
        "{:?}",
        j.steps
    );
    continue_run(&lab, &new, Then::Resume);
    assert_converged(&lab, "cancelled, then resumed");
    assert_eq!(journals(&lab).pop().unwrap().header.run_id, j.header.run_id);
}

#[test]
fn a_fleet_switched_and_migrated_but_stopped_is_started() {
    let (lab, new) = pg_lab();
    let out = fleetup(
        &lab.inventory_path(),
        &[
            "upgrade",
            "--to",
            TARGET,
            "--binary",
            new.to_str().unwrap(),
            "--stop",
        ],
    );
    assert_eq!(code(&out), 0, "{}", both(&out));
    // What a crash between the switch and the starts leaves: on the target, migrated, stopped.
    lab.stop_services().unwrap();
    let out = fleetup(
        &lab.inventory_path(),
        &["upgrade", "--to", TARGET, "--binary", new.to_str().unwrap()],
    );
    assert_eq!(code(&out), 0, "{}", both(&out));
    assert!(!stdout(&out).contains("nothing to do"), "{}", both(&out));
    assert_converged(&lab, "started again");
    let j = journals(&lab).pop().unwrap();
    let kinds: Vec<&str> = j
        .steps
        .iter()
        .filter(|r| r.state.as_str() == "done")
        .map(|r| r.kind.as_str())
        .collect();
    assert!(
        !kinds.contains(&"backup") && !kinds.contains(&"migrate") && !kinds.contains(&"switch"),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"start_service"), "{kinds:?}");
}
