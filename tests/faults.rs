//! The fault suite: a real 3-node PostgreSQL lab (real sshd, the simulator as `numary`, one
//! shared database) upgraded 1.7.4 → 1.8.2 with `--stop` while something goes wrong: a node's
//! sshd killed before the run, during the stage and during the starts; a node's link going
//! silent mid-run; a migration failing halfway through the ledgers; the backup destination full
//! and read-only; a corrupt download; a binary reporting another version; health never coming;
//! a node coming back on the old release; two runs started at the same instant; a node's host key
//! replaced between `check` and `upgrade`; a hostile HTTP reply (a chunk size near `u64::MAX`)
//! on a stopped node's API port; escape sequences in what a node's `/_info` reports.
//!
//! Every scenario ends with the same assertions ([`assert_safe`]), read from the nodes, the
//! database and the simulator, never from fleetup's word alone:
//! - every node is in the state the run's report (`summary` event) names, or untouched when the
//!   run refused before any change;
//! - the simulator recorded no misuse (no old binary served a migrated schema, no concurrent
//!   migration);
//! - the transaction counts in the database are what they were before the run;
//! - each backup the run reports exists, matches its SHA-256 and restores (into a scratch
//!   database) to the same counts;
//! - the journal is complete: it ends with `run_finished` carrying the process's exit code, and
//!   every step started on a host ended there;
//! - no fleet lock is left, unless the run's stderr names that host's lock as left held.
//!
//! Three scenarios mount a tmpfs over a node's backup dir: they need root (CI runs as root).
//! Needs `FLEETUP_TEST_PG_URL`.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use fleetup::exit_code;
use fleetup::journal::{self, JournalFile};
use fleetup::lab::pg::{self, PgUrl};
use fleetup::lab::{Driver, Lab, LabGuard};
use lab_fixture::{api_version, fleetup_cmd, release, spec};
use serde_json::Value;
use sha2::{Digest, Sha256};

const FROM: &str = "1.7.4";
const TARGET: &str = "1.8.2";

/// What a run printed and how it ended.
struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

impl Run {
    fn events(&self) -> Vec<Value> {
        self.stdout
            .lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l}")))
            .collect()
    }

    fn run_id(&self) -> Option<String> {
        self.events()
            .into_iter()
            .find(|e| e["event"] == "run_started")
            .and_then(|e| e["run_id"].as_str().map(str::to_owned))
    }

    fn show(&self) -> String {
        format!(
            "exit {}\n--- stdout\n{}\n--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// The lab before the run: what [`assert_safe`] compares against.
struct Before {
    counts: Vec<(String, u64)>,
    running: BTreeMap<String, bool>,
}

fn pg_lab() -> (LabGuard, PathBuf) {
    let lab = LabGuard::up(&spec(Driver::Postgres, 3, FROM)).expect("lab up");
    let new = release(&lab, TARGET);
    (lab, new)
}

fn database(lab: &Lab) -> PgUrl {
    lab.database().unwrap().expect("a PostgreSQL lab")
}

/// Transactions per ledger, read from the database itself (not through a node's API: an old
/// server asked about a migrated ledger would be a misuse of its own).
fn counts_in(db: &PgUrl, ledgers: &[String]) -> Vec<(String, u64)> {
    ledgers
        .iter()
        .map(|l| {
            let n = db
                .query(&format!("SELECT count(*) FROM \"{l}\".transactions"))
                .unwrap_or_else(|e| panic!("count `{l}`: {e:#}"));
            (l.clone(), n.trim().parse().unwrap())
        })
        .collect()
}

fn before(lab: &Lab) -> Before {
    Before {
        counts: counts_in(&database(lab), &lab.ledgers),
        running: lab
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.service_running()))
            .collect(),
    }
}

fn upgrade_args<'a>(new: &'a Path, extra: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec![
        "upgrade",
        "--to",
        TARGET,
        "--binary",
        new.to_str().unwrap(),
        "--stop",
        "--format",
        "json",
    ];
    args.extend_from_slice(extra);
    args
}

fn spawn(lab: &Lab, args: &[&str], tag: &str) -> Child {
    let out = std::fs::File::create(lab.dir.join(format!("{tag}.out"))).unwrap();
    let err = std::fs::File::create(lab.dir.join(format!("{tag}.err"))).unwrap();
    fleetup_cmd(&lab.inventory_path(), args)
        .stdout(out)
        .stderr(err)
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn fleetup")
}

/// Waits for `child` (at most `limit`: nothing may hang past its timeouts).
fn finish(lab: &Lab, mut child: Child, tag: &str, limit: Duration) -> Run {
    let deadline = Instant::now() + limit;
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "fleetup still ran after {limit:?}:\n{}",
                std::fs::read_to_string(lab.dir.join(format!("{tag}.err"))).unwrap_or_default()
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    Run {
        code: status.code().unwrap_or(-1),
        stdout: std::fs::read_to_string(lab.dir.join(format!("{tag}.out"))).unwrap(),
        stderr: std::fs::read_to_string(lab.dir.join(format!("{tag}.err"))).unwrap(),
    }
}

fn upgrade(lab: &Lab, new: &Path, extra: &[&str]) -> Run {
    let child = spawn(lab, &upgrade_args(new, extra), "run");
    finish(lab, child, "run", Duration::from_secs(300))
}

/// Starts the upgrade, waits until the newest journal records a step of `kind` (`stage`,
/// `start_service`) in `state` on any
/// host, runs `fault`, then waits for the run to end.
fn upgrade_with_fault_at(
    lab: &Lab,
    new: &Path,
    extra: &[&str],
    kind: &str,
    state: &str,
    fault: impl FnOnce(),
) -> Run {
    let mut child = spawn(lab, &upgrade_args(new, extra), "run");
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let hit = journals(lab).pop().is_some_and(|j| {
            j.steps
                .iter()
                .any(|r| r.kind == kind && r.state.as_str() == state)
        });
        if hit {
            break;
        }
        if let Some(s) = child.try_wait().unwrap() {
            panic!(
                "fleetup ended ({s}) before `{kind}` was {state}:\n{}",
                std::fs::read_to_string(lab.dir.join("run.err")).unwrap_or_default()
            );
        }
        assert!(Instant::now() < deadline, "never reached: `{kind}` {state}");
        std::thread::sleep(Duration::from_millis(5));
    }
    fault();
    finish(lab, child, "run", Duration::from_secs(300))
}

fn journals(lab: &Lab) -> Vec<JournalFile> {
    journal::list_journals(&journal::default_state_dir(&lab.inventory_path())).unwrap()
}

fn journal_of(lab: &Lab, run_id: &str) -> JournalFile {
    journals(lab)
        .into_iter()
        .find(|j| j.header.run_id == run_id)
        .unwrap_or_else(|| panic!("no journal of run `{run_id}`"))
}

fn lock_path(n: &fleetup::lab::LabNode) -> PathBuf {
    n.paths().releases_dir().join(".fleetup.lock")
}

/// `text` in backquotes after `prefix` in `state`: "API reports `1.8.2`" → `1.8.2`.
fn quoted_after<'a>(state: &'a str, prefix: &str) -> Option<&'a str> {
    let rest = &state[state.find(prefix)? + prefix.len()..];
    let rest = rest.strip_prefix('`')?;
    rest.split('`').next()
}

/// The node is in the state the report's line for it names.
fn assert_reported_state(lab: &Lab, h: &Value, context: &str) {
    let name = h["host"].as_str().unwrap();
    let state = h["state"].as_str().unwrap();
    let n = lab.node(name).unwrap();
    let at = |what: &str| format!("{context}: {name} reported `{state}` but {what}");
    let installed = n.installed_version();
    if state.contains("healthy") && !state.contains("not healthy") && state.starts_with("running") {
        assert!(n.service_running(), "{}", at("its service does not run"));
        assert_eq!(
            api_version(lab, name).as_deref(),
            Some(TARGET),
            "{}",
            at("its API")
        );
        assert_eq!(installed.as_deref(), Some(TARGET), "{}", at("its binary"));
        return;
    }
    if state == "unchanged" {
        assert_eq!(installed.as_deref(), Some(FROM), "{}", at("its binary"));
        return;
    }
    if let Some(v) = quoted_after(state, "binary switched to ") {
        assert_eq!(installed.as_deref(), Some(v), "{}", at("its binary"));
    }
    if state.contains("binary not switched") {
        assert_eq!(installed.as_deref(), Some(FROM), "{}", at("its binary"));
    }
    if state.contains("service running") {
        assert!(n.service_running(), "{}", at("its service does not run"));
    }
    if state.contains("service stopped") {
        assert!(!n.service_running(), "{}", at("its service runs"));
    }
    if let Some(v) = quoted_after(state, "API reports ") {
        assert_eq!(
            api_version(lab, name).as_deref(),
            Some(v),
            "{}",
            at("its API")
        );
    }
}

/// The assertions every scenario ends with (see the module doc).
fn assert_safe(lab: &Lab, run: &Run, before: &Before, context: &str) {
    assert_safe_as(lab, run, before, context, true);
}

/// [`assert_safe`]; `states`: whether the nodes must still be in the state the run's report
/// names (not for a run another run overtook afterwards).
fn assert_safe_as(lab: &Lab, run: &Run, before: &Before, context: &str, states: bool) {
    let context = &format!("{context}\n{}", run.show());
    let events = run.events();
    // The state the report names.
    match events.iter().find(|e| e["event"] == "summary") {
        Some(_) if !states => {}
        Some(summary) => {
            let hosts = summary["hosts"].as_array().unwrap();
            assert!(!hosts.is_empty(), "{context}: an empty summary");
            for h in hosts {
                assert_reported_state(lab, h, context);
            }
        }
        None if run.code == exit_code::SUCCESS => {
            // Nothing to do: every node already serves the target.
            for n in &lab.nodes {
                assert_eq!(n.installed_version().as_deref(), Some(TARGET), "{context}");
                assert_eq!(
                    api_version(lab, &n.name).as_deref(),
                    Some(TARGET),
                    "{context}"
                );
            }
        }
        None if !states => {}
        None => {
            // Refused before any change: every node as it was.
            for n in &lab.nodes {
                assert_eq!(
                    n.installed_version().as_deref(),
                    Some(FROM),
                    "{context}: {} switched",
                    n.name
                );
                assert_eq!(
                    n.service_running(),
                    before.running[&n.name],
                    "{context}: {} service state changed",
                    n.name
                );
                assert!(
                    !n.paths().releases_dir().join(TARGET).exists(),
                    "{context}: {} has a staged release left",
                    n.name
                );
            }
        }
    }
    // No misuse.
    assert_eq!(
        lab.misuse_records().unwrap(),
        Vec::<Value>::new(),
        "{context}: misuse"
    );
    // The data.
    let db = database(lab);
    assert_eq!(
        counts_in(&db, &lab.ledgers),
        before.counts,
        "{context}: transactions"
    );
    // The journal.
    if let Some(id) = run.run_id() {
        let j = journal_of(lab, &id);
        let finished = j
            .finished()
            .unwrap_or_else(|| panic!("{context}: the journal has no run_finished"));
        assert_eq!(
            finished["exit_code"].as_i64(),
            Some(i64::from(run.code)),
            "{context}: the journal's exit code"
        );
        for r in j.steps.iter().filter(|r| r.state.as_str() == "started") {
            assert!(
                j.steps.iter().any(|e| e.id == r.id
                    && e.host == r.host
                    && !matches!(e.state.as_str(), "started")),
                "{context}: step `{}` on {} started and never ended in the journal",
                r.id,
                r.host
            );
        }
        // Each backup it reports: present, intact, restorable to the same counts.
        let reported = events
            .iter()
            .filter(|e| e["event"] == "summary")
            .flat_map(|e| e["artefacts"].as_array().cloned().unwrap_or_default());
        for a in reported.filter(|a| a["kind"] == "backup") {
            let path = PathBuf::from(a["path"].as_str().unwrap());
            let bytes = std::fs::read(&path)
                .unwrap_or_else(|e| panic!("{context}: backup `{}`: {e}", path.display()));
            assert_eq!(
                hex::encode(Sha256::digest(&bytes)),
                a["sha256"].as_str().unwrap(),
                "{context}: the backup's checksum"
            );
            assert_eq!(
                restored_counts(&db, &path, &lab.ledgers),
                before.counts,
                "{context}: the backup restores to other counts"
            );
        }
    } else {
        assert!(
            run.code == exit_code::USAGE || run.code == exit_code::BLOCKED,
            "{context}: no run_started"
        );
    }
    // Locks.
    for n in &lab.nodes {
        if lock_path(n).exists() {
            assert!(
                run.stderr.contains("lock") && run.stderr.contains(&n.name),
                "{context}: {}'s lock left and not reported",
                n.name
            );
        }
    }
}

/// Restores the custom-format dump at `path` into a scratch database of the same server and
/// counts its transactions.
fn restored_counts(db: &PgUrl, path: &Path, ledgers: &[String]) -> Vec<(String, u64)> {
    let name = pg::unique_database_name();
    pg::create_database(db, &name).unwrap();
    let scratch = PgUrl::parse(&db.with_database(&name)).unwrap();
    let restored = scratch.run(
        "pg_restore",
        &[
            "--no-owner",
            "--no-privileges",
            "--exit-on-error",
            "-d",
            &name,
            path.to_str().unwrap(),
        ],
    );
    let counts = restored.map(|_| counts_in(&scratch, ledgers));
    pg::drop_database(db, &name).unwrap();
    counts.unwrap_or_else(|e| panic!("pg_restore `{}`: {e:#}", path.display()))
}

fn converge_afterwards(lab: &Lab, new: &Path, before: &Before, context: &str) {
    lab.wait_remote_commands(Duration::from_secs(60)).unwrap();
    let again = upgrade(lab, new, &["--break-lock"]);
    assert_eq!(
        again.code,
        exit_code::SUCCESS,
        "{context}: re-run\n{}",
        again.show()
    );
    for n in &lab.nodes {
        assert_eq!(
            api_version(lab, &n.name).as_deref(),
            Some(TARGET),
            "{context}: re-run"
        );
    }
    assert_safe(lab, &again, before, &format!("{context}, then re-run"));
}

#[test]
fn sshd_killed_before_the_run() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    lab.nodes[1].kill_sshd().unwrap();
    let run = upgrade(&lab, &new, &["--connect-timeout", "3s"]);
    assert_eq!(run.code, exit_code::UNREACHABLE, "{}", run.show());
    assert!(run.stderr.contains("node-2"), "{}", run.show());
    assert_safe(&lab, &run, &b, "sshd of node-2 killed before the run");
}

#[test]
fn sshd_killed_during_the_stage() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    let run = upgrade_with_fault_at(&lab, &new, &[], "stage", "started", || {
        lab.nodes[2].kill_sshd().unwrap()
    });
    assert_eq!(run.code, exit_code::FAILURE, "{}", run.show());
    lab.wait_remote_commands(Duration::from_secs(60)).unwrap();
    assert_safe(&lab, &run, &b, "sshd of node-3 killed during the stage");
}

#[test]
fn sshd_killed_during_the_starts() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    let run = upgrade_with_fault_at(&lab, &new, &[], "start_service", "started", || {
        lab.nodes[1].kill_sshd().unwrap()
    });
    assert_ne!(run.code, exit_code::SUCCESS, "{}", run.show());
    lab.wait_remote_commands(Duration::from_secs(60)).unwrap();
    assert_safe(&lab, &run, &b, "sshd of node-2 killed during the starts");
}

#[test]
fn a_link_going_silent_mid_run_fires_the_timeouts() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    let started = Instant::now();
    let run = upgrade_with_fault_at(
        &lab,
        &new,
        &["--connect-timeout", "3s", "--command-timeout", "8s"],
        "stage",
        "started",
        || lab.nodes[2].freeze_sshd().unwrap(),
    );
    let took = started.elapsed();
    lab.nodes[2].thaw_sshd().unwrap();
    assert_eq!(run.code, exit_code::FAILURE, "{}", run.show());
    assert!(
        took < Duration::from_secs(120),
        "the run took {took:?} with 8 s command and 3 s connect timeouts"
    );
    assert!(run.stderr.contains("node-3"), "{}", run.show());
    lab.wait_remote_commands(Duration::from_secs(60)).unwrap();
    assert_safe(&lab, &run, &b, "node-3's link silent during the stage");
}

#[test]
fn a_migration_failing_halfway_starts_nothing_and_keeps_the_backup() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    lab.set_fault_with("fail-migration-ledgers", &[], &["payments"])
        .unwrap();
    let run = upgrade(&lab, &new, &[]);
    assert_eq!(run.code, exit_code::FAILURE, "{}", run.show());
    assert!(run.stderr.contains("payments"), "{}", run.show());
    // `default` migrated, `payments` rolled back: no old binary may serve now.
    for n in &lab.nodes {
        assert!(
            !n.service_running(),
            "{} runs on a half-migrated storage",
            n.name
        );
    }
    assert_safe(&lab, &run, &b, "the migration of `payments` failed");
    lab.clear_fault("fail-migration-ledgers").unwrap();
    converge_afterwards(&lab, &new, &b, "after the failed migration");
}

/// A tmpfs over the migrator's backup dir, unmounted on drop.
struct Mount(PathBuf);

impl Mount {
    fn tmpfs(at: &Path, options: &str) -> Mount {
        assert_eq!(
            unsafe { libc::geteuid() },
            0,
            "this scenario mounts a tmpfs: run the tests as root (CI does)"
        );
        let ok = Command::new("mount")
            .args([
                "-t",
                "tmpfs",
                "-o",
                options,
                "fleetup-test",
                at.to_str().unwrap(),
            ])
            .status()
            .unwrap()
            .success();
        assert!(ok, "mount tmpfs on {}", at.display());
        Mount(at.to_path_buf())
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

/// The migrator's backup dir becomes a tmpfs mounted with `options`; `fill`: once the run has
/// passed its preflight (its first stop started), a filler file takes every byte left.
fn backup_destination_fails(options: &str, fill: bool, context: &str) {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    let digest = lab.database_digest().unwrap();
    let migrator = lab.nodes.iter().find(|n| n.migrator).unwrap();
    let dir = migrator.paths().backup_dir();
    let mount = Mount::tmpfs(&dir, options);
    let run = if fill {
        upgrade_with_fault_at(&lab, &new, &[], "stop_service", "started", || fill_up(&dir))
    } else {
        upgrade(&lab, &new, &[])
    };
    drop(mount);
    assert_eq!(run.code, exit_code::FAILURE, "{}", run.show());
    assert!(run.stderr.contains("backup"), "{}", run.show());
    if fill {
        assert!(run.stderr.contains("No space left"), "{}", run.show());
    }
    // Nothing migrated, the stopped nodes serve the old release again.
    assert_eq!(
        lab.database_digest().unwrap(),
        digest,
        "{context}: the database changed"
    );
    for n in &lab.nodes {
        assert!(n.service_running(), "{context}: {} not restarted", n.name);
        assert_eq!(api_version(&lab, &n.name).as_deref(), Some(FROM));
    }
    assert_safe(&lab, &run, &b, context);
}

/// Writes zeros into `dir/filler` until the file system says it is full.
fn fill_up(dir: &Path) {
    use std::io::Write as _;
    let mut f = std::fs::File::create(dir.join("filler")).unwrap();
    let block = vec![0u8; 64 * 1024];
    loop {
        match f.write(&block) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "{e}");
                break;
            }
        }
    }
}

/// Too small from the start: the preflight's disk-space check refuses, nothing changes.
#[test]
fn the_backup_destination_too_small_is_refused_by_the_preflight() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    let migrator = lab.nodes.iter().find(|n| n.migrator).unwrap();
    let mount = Mount::tmpfs(&migrator.paths().backup_dir(), "size=8k,mode=0777");
    let run = upgrade(&lab, &new, &[]);
    drop(mount);
    assert_eq!(run.code, exit_code::BLOCKED, "{}", run.show());
    assert!(
        run.stderr.contains("disk-space") && run.stderr.contains("node-1"),
        "{}",
        run.show()
    );
    assert_safe(&lab, &run, &b, "the backup destination too small");
}

#[test]
fn the_backup_destination_full() {
    // Room for the preflight's estimate (the database's size × 1.2), then filled up.
    backup_destination_fails(
        "size=32m,mode=0777",
        true,
        "the backup destination fills up",
    );
}

#[test]
fn the_backup_destination_read_only() {
    backup_destination_fails("ro,mode=0777", false, "the backup destination is read-only");
}

#[test]
fn a_binary_reporting_another_version_or_a_wrong_checksum_is_refused() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    let other = lab.dir.join("numary-1.8.1");
    lab.write_release(&fleetup::version::Version::parse("1.8.1").unwrap(), &other)
        .unwrap();
    let run = upgrade(&lab, &other, &[]);
    assert_eq!(run.code, exit_code::BLOCKED, "{}", run.show());
    assert!(run.stderr.contains("1.8.1"), "{}", run.show());
    assert_safe(&lab, &run, &b, "a binary reporting 1.8.1");

    let wrong = "0".repeat(64);
    let run = upgrade(&lab, &new, &["--sha256", &wrong]);
    assert_eq!(run.code, exit_code::BLOCKED, "{}", run.show());
    assert_safe(&lab, &run, &b, "a binary with another checksum");
}

#[test]
fn health_never_coming_stops_the_run() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    lab.set_fault("never-healthy", &["node-2"]).unwrap();
    let run = upgrade(&lab, &new, &["--health-timeout", "4s"]);
    assert_eq!(run.code, exit_code::FAILURE, "{}", run.show());
    assert!(run.stderr.contains("node-2"), "{}", run.show());
    assert_safe(&lab, &run, &b, "node-2 never healthy");
    lab.clear_fault("never-healthy").unwrap();
    converge_afterwards(&lab, &new, &b, "node-2 never healthy");
}

#[test]
fn a_node_coming_back_on_the_old_release_is_stopped() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    // node-3's service names the 1.7.4 release itself, not the switched binary.
    let n = &lab.nodes[2];
    let script = n.paths().service_script();
    let text = std::fs::read_to_string(&script).unwrap();
    let pinned = n.paths().releases_dir().join(FROM).join("numary");
    assert!(pinned.exists(), "{}", pinned.display());
    let line = text.lines().find(|l| l.starts_with("BINARY=")).unwrap();
    let text = text.replace(line, &format!("BINARY='{}'", pinned.display()));
    std::fs::write(&script, text).unwrap();

    let run = upgrade(&lab, &new, &["--health-timeout", "20s"]);
    assert_eq!(run.code, exit_code::FAILURE, "{}", run.show());
    assert!(
        run.stderr.contains("wrong release") && run.stderr.contains(FROM),
        "{}",
        run.show()
    );
    assert!(
        !n.service_running(),
        "node-3 serves 1.7.4 on a migrated schema"
    );
    assert_safe(&lab, &run, &b, "node-3 came back on 1.7.4");
}

#[test]
fn two_runs_started_at_the_same_instant() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    let args = upgrade_args(&new, &[]);
    let first = spawn(&lab, &args, "first");
    let second = spawn(&lab, &args, "second");
    let first = finish(&lab, first, "first", Duration::from_secs(300));
    let second = finish(&lab, second, "second", Duration::from_secs(300));
    let mut codes = [first.code, second.code];
    codes.sort_unstable();
    assert_eq!(
        codes,
        [exit_code::SUCCESS, exit_code::LOCK_HELD],
        "one run wins, the other finds the lock held:\n{}\n{}",
        first.show(),
        second.show()
    );
    let (won, lost) = if first.code == exit_code::SUCCESS {
        (first, second)
    } else {
        (second, first)
    };
    for n in &lab.nodes {
        assert_eq!(api_version(&lab, &n.name).as_deref(), Some(TARGET));
    }
    assert_safe(&lab, &won, &b, "the run that won");
    // The loser's report was true when it ended; the winner moved the nodes on since.
    assert_safe_as(&lab, &lost, &b, "the run that found the lock held", false);
}

#[test]
fn a_host_key_replaced_between_check_and_upgrade() {
    let (lab, new) = pg_lab();
    let b = before(&lab);
    let check = fleetup_cmd(
        &lab.inventory_path(),
        &[
            "check",
            "--to",
            TARGET,
            "--binary",
            new.to_str().unwrap(),
            "--stop",
            "--format",
            "json",
        ],
    )
    .output()
    .unwrap();
    let audit = String::from_utf8_lossy(&check.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|e| e["event"] == "audit")
        .expect("an audit line");
    let plan = audit["plan_id"].as_str().unwrap().to_owned();
    lab.nodes[1].replace_host_keys().unwrap();
    let run = upgrade(&lab, &new, &["--plan", &plan]);
    assert_ne!(run.code, exit_code::SUCCESS, "{}", run.show());
    assert!(
        run.stderr.contains("node-2") && run.stderr.to_lowercase().contains("host key"),
        "{}",
        run.show()
    );
    assert_safe(&lab, &run, &b, "node-2's host key replaced");
}

/// A stand-in for whatever binds a node's API port while its service is stopped: answers every
/// connection with `reply`, then closes it. Stopped when dropped.
struct Squatter {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Squatter {
    fn bind(port: u16, reply: Vec<u8>) -> Squatter {
        use std::io::{Read, Write};
        use std::sync::atomic::Ordering;
        // The stopped server's socket may linger a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match std::net::TcpListener::bind(("127.0.0.1", port)) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(100));
                }
                Err(e) => panic!("bind 127.0.0.1:{port}: {e}"),
            }
        };
        listener.set_nonblocking(true).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((mut s, _)) => {
                        let _ = s.set_nonblocking(false);
                        let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                        let mut req = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 8192 {
                            match s.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => req.extend_from_slice(&buf[..n]),
                            }
                        }
                        let _ = s.write_all(&reply);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        Squatter {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Squatter {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The chunk size that once overflowed fleetup's arithmetic and panicked it (exit 101, lock
/// left, no `run_finished`), and an escape sequence setting the terminal's title after it.
const HOSTILE_CHUNKED: &[u8] = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffff\r\n\x1b]0;owned\x07abc\r\n0\r\n\r\n";

#[test]
fn a_hostile_http_reply_on_the_api_port_is_refused_with_the_locks_released() {
    let (lab, new) = pg_lab();
    let n = &lab.nodes[1];
    n.stop().unwrap();
    let b = before(&lab);
    let squatter = Squatter::bind(n.api_port, HOSTILE_CHUNKED.to_vec());

    let run = upgrade(&lab, &new, &[]);
    assert_eq!(run.code, exit_code::BLOCKED, "{}", run.show());
    // Named: the host, what holds its port, and why the reply is refused; no terminal escape.
    assert!(
        run.stderr.contains("node-2")
            && run.stderr.contains("although the service is stopped")
            && run.stderr.contains("larger than"),
        "{}",
        run.show()
    );
    for text in [&run.stdout, &run.stderr] {
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    }
    assert!(!run.stderr.contains("panicked"), "{}", run.show());
    assert_safe(&lab, &run, &b, "hostile chunk size on node-2's API port");

    // Once the port is free again and node-2 serves, the run goes through. (Stopped, node-2
    // would be refused again: its neighbours on this one machine use its database.)
    drop(squatter);
    lab.start_services().unwrap();
    let b = before(&lab);
    converge_afterwards(&lab, &new, &b, "hostile chunk size on node-2's API port");
}

#[test]
fn values_a_node_reports_reach_the_terminal_escaped() {
    let (lab, _new) = pg_lab();
    let n = &lab.nodes[1];
    n.stop().unwrap();
    // The service looks running (its pid file names a live process), and its "API" answers
    // `/_info` with escape sequences in the version and a ledger name.
    let mut decoy = Command::new("sleep").arg("600").spawn().unwrap();
    std::fs::write(n.paths().pid_file(), format!("{}\n", decoy.id())).unwrap();
    let body = br#"{"data":{"version":"v1.7.4\u001b]0;owned\u0007\u001b[2J","config":{"storage":{"driver":"postgres","ledgers":["\u001b[31mevil\nnext","default"]}}}}"#;
    let mut reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    reply.extend_from_slice(body);
    let squatter = Squatter::bind(n.api_port, reply);

    let out = fleetup_cmd(&lab.inventory_path(), &["status"])
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    let _ = decoy.kill();
    let _ = decoy.wait();
    drop(squatter);
    std::fs::remove_file(n.paths().pid_file()).unwrap();
    assert!(out.status.code().is_some(), "status was killed");
    assert_ne!(out.status.code(), Some(101), "status panicked:\n{stderr}");
    for text in [&stdout, &stderr] {
        assert!(!text.contains('\x1b') && !text.contains('\x07'), "{text:?}");
    }
    // node-2's row is there, its ledger name shown escaped, on one line.
    let row = stdout
        .lines()
        .find(|l| l.starts_with("node-2"))
        .unwrap_or_else(|| panic!("no node-2 row:\n{stdout}"));
    assert!(row.contains("\\u{1b}[31mevil\\u{a}next"), "{stdout}");
}
