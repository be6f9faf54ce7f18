//! `fleetup upgrade` on the practice lab: real sshd, the simulator as each node's `numary`. Proves
//! the guide's offline procedure end to end (Postgres multi-node, SQLite single-node): every node
//! on the target and healthy, every ledger migrated exactly once by the migrator, no transaction
//! lost, a backup that restores, no misuse, a journal with every step, no password anywhere; and
//! each refusal leaves every node as it was. The Postgres tests need `FLEETUP_TEST_PG_URL`.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use fleetup::events::StepState;
use fleetup::exit_code;
use fleetup::journal::{self, JournalFile};
use fleetup::lab::pg::{self, PgUrl};
use fleetup::lab::{Driver, Lab, LabGuard};
use fleetup::version::Version;
use lab_fixture::{
    api_version, assert_node_serving, both, code, fleetup, json, pg_url, release, spec, stderr,
    stdout,
};
use serde_json::Value;
use sha2::{Digest, Sha256};

fn upgrade(lab: &Lab, to: &str, binary: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["upgrade", "--to", to, "--binary", binary.to_str().unwrap()];
    args.extend_from_slice(extra);
    fleetup(&lab.inventory_path(), &args)
}

fn state_dir(lab: &Lab) -> PathBuf {
    journal::default_state_dir(&lab.inventory_path())
}

/// stderr holds each of `parts`.
fn assert_says(out: &Output, parts: &[&str]) {
    for p in parts {
        assert!(stderr(out).contains(p), "no `{p}` in:\n{}", both(out));
    }
}

/// The journal of the last run in the lab's default state dir.
fn last_journal(lab: &Lab) -> JournalFile {
    journal::list_journals(&state_dir(lab))
        .unwrap()
        .pop()
        .expect("a journal was written")
}

/// `(step, kind, host)` of every step the plan of this run lists (from its `plan_ready` event).
fn planned_steps(j: &JournalFile) -> Vec<(u64, String, String)> {
    let plan = j
        .events
        .iter()
        .find(|e| e["event"] == "plan_ready")
        .expect("plan_ready event");
    let mut out = Vec::new();
    for s in plan["steps"].as_array().unwrap() {
        for h in s["hosts"].as_array().unwrap() {
            out.push((
                s["step"].as_u64().unwrap(),
                s["kind"].as_str().unwrap().to_string(),
                h.as_str().unwrap().to_string(),
            ));
        }
    }
    out
}

fn as_set(v: Vec<(u64, String, String)>) -> BTreeSet<(u64, String, String)> {
    v.into_iter().collect()
}

/// Every `storage upgrade` the simulator logged at `version`, committed, as `(node, ledger)`.
fn migrations_at(lab: &Lab, version: &str) -> Vec<(String, String, String)> {
    let path = lab.sim_state_dir().join("migrations.log");
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|l| serde_json::from_str::<Value>(l).expect("migrations.log line"))
        .filter(|v| v["version"] == version)
        .map(|v| {
            (
                v["node"].as_str().unwrap_or("").to_string(),
                v["ledger"].as_str().unwrap_or("").to_string(),
                format!(
                    "{} / {}",
                    v["via"].as_str().unwrap_or(""),
                    v["result"].as_str().unwrap_or("")
                ),
            )
        })
        .collect()
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

fn sha256_file(p: &Path) -> String {
    hex::encode(Sha256::digest(std::fs::read(p).unwrap()))
}

/// Every file under `dir` (recursively) as text, lossy.
fn all_text(dir: &Path) -> String {
    let mut out = String::new();
    if let Ok(entries) = std::fs::read_dir(dir) {
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                out.push_str(&all_text(&p));
            } else {
                out.push_str(&String::from_utf8_lossy(&std::fs::read(&p).unwrap()));
            }
        }
    }
    out
}

/// The password of the test server: it must appear nowhere fleetup writes.
fn pg_password() -> String {
    fleetup::redact::conn_string_password(&pg_url()).expect("the test server URL has a password")
}

fn assert_no_password(what: &str, text: &str) {
    let pw = pg_password();
    assert!(!text.contains(&pw), "{what} shows the Postgres password");
}

/// The binaries still point to the installed release, no node runs, no release was left staged.
fn assert_untouched(lab: &Lab, target: &str) {
    for n in &lab.nodes {
        assert_eq!(
            n.installed_version().as_deref(),
            Some(lab.version.to_string().as_str()),
            "{}: binary switched",
            n.name
        );
        assert!(
            !n.paths().releases_dir().join(target).exists(),
            "{}: a staged release was left behind",
            n.name
        );
        assert!(
            !n.paths().releases_dir().join(".fleetup.lock").exists(),
            "{}: the lock was left behind",
            n.name
        );
    }
    assert!(
        migrations_at(lab, target).is_empty(),
        "the target binary migrated something: {:?}",
        migrations_at(lab, target)
    );
}

#[test]
fn postgres_three_nodes_1_7_4_to_1_8_2_with_stop() {
    let lab = LabGuard::up(&spec(Driver::Postgres, 3, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");
    let counts = transactions(&lab, "node-2");

    // The audit first: its plan id pins the fleet, its steps are what the run must record.
    let audit = fleetup(
        &lab.inventory_path(),
        &[
            "check",
            "--to",
            "1.8.2",
            "--binary",
            new.to_str().unwrap(),
            "--stop",
            "--format",
            "json",
        ],
    );
    assert_eq!(code(&audit), exit_code::SUCCESS, "{}", both(&audit));
    let audit: Value = json(&audit);
    let plan_id = audit["plan_id"].as_str().unwrap().to_string();
    let mut checked = Vec::new();
    for s in audit["steps"].as_array().unwrap() {
        for h in s["hosts"].as_array().unwrap() {
            checked.push((
                s["number"].as_u64().unwrap(),
                s["kind"].as_str().unwrap().to_string(),
                h["host"].as_str().unwrap().to_string(),
            ));
        }
    }

    let out = upgrade(&lab, "1.8.2", &new, &["--stop", "--plan", &plan_id]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));

    for n in &lab.nodes {
        assert_eq!(
            n.installed_version().as_deref(),
            Some("1.8.2"),
            "{}",
            n.name
        );
        assert!(n.service_running(), "{} runs", n.name);
        assert_eq!(api_version(&lab, &n.name).as_deref(), Some("1.8.2"));
        let (status, _) = n.api_get("/_health").unwrap();
        assert_eq!(status, 200, "{} healthy", n.name);
    }
    let mut migrated = migrations_at(&lab, "1.8.2");
    migrated.sort();
    assert_eq!(
        migrated,
        vec![
            (
                "node-1".to_string(),
                "default".to_string(),
                "storage upgrade / committed".to_string()
            ),
            (
                "node-1".to_string(),
                "payments".to_string(),
                "storage upgrade / committed".to_string()
            ),
        ],
        "each ledger migrated once, by the migrator, with `storage upgrade`"
    );
    assert_eq!(transactions(&lab, "node-3"), counts, "no transaction lost");
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new());

    // The journal: every planned step on every host, ok; the same steps `check` listed.
    let j = last_journal(&lab);
    assert_eq!(j.outcome(), "succeeded");
    let finished = j.finished_steps();
    assert_eq!(as_set(finished.clone()), as_set(planned_steps(&j)));
    assert_eq!(as_set(finished), as_set(checked), "check and upgrade agree");
    assert!(
        j.events
            .iter()
            .filter(|e| e["event"] == "step_finished")
            .all(|e| e["status"] == "ok")
    );
    let backup = j
        .events
        .iter()
        .filter(|e| e["event"] == "step_finished" && e["kind"] == "backup")
        .flat_map(|e| e["artefacts"].as_array().unwrap().clone())
        .next()
        .expect("backup artefact");
    let dump = PathBuf::from(backup["path"].as_str().unwrap());
    assert!(dump.starts_with(lab.node("node-1").unwrap().paths().backup_dir()));
    assert_eq!(backup["sha256"].as_str().unwrap(), sha256_file(&dump));
    assert_eq!(
        backup["bytes"].as_u64().unwrap(),
        std::fs::metadata(&dump).unwrap().len()
    );
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&j.path).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);

    // The dump restores into a scratch database with every transaction.
    let server = PgUrl::parse(&lab.postgres.as_ref().unwrap().server_url).unwrap();
    let scratch_name = pg::unique_database_name();
    pg::create_database(&server, &scratch_name).unwrap();
    let scratch = PgUrl::parse(&server.with_database(&scratch_name)).unwrap();
    let restored = scratch.run(
        "pg_restore",
        &[
            "--no-owner",
            "--dbname",
            &scratch_name,
            dump.to_str().unwrap(),
        ],
    );
    let count = scratch.query("SELECT count(*) FROM \"default\".transactions");
    pg::drop_database(&server, &scratch_name).unwrap();
    restored.expect("the dump restores");
    assert_eq!(count.unwrap(), counts[0].1.to_string());

    // No password in any output, the journal, or the backup dir's file names and listings.
    for (what, text) in [
        ("stdout", stdout(&out)),
        ("stderr", stderr(&out)),
        ("the journal", std::fs::read_to_string(&j.path).unwrap()),
        ("the state dir", all_text(&state_dir(&lab))),
    ] {
        assert_no_password(what, &text);
    }
    let runs = fleetup(&lab.inventory_path(), &["runs", "show", &j.header.run_id]);
    assert_eq!(code(&runs), 0, "{}", both(&runs));
    assert!(
        stdout(&runs).contains("`storage upgrade default`: migrated"),
        "{}",
        stdout(&runs)
    );
    assert_no_password("runs show", &stdout(&runs));
}

#[test]
fn sqlite_single_node_1_6_1_to_1_8_3_with_backup_copies_matching_the_originals() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 1, "1.6.1")).expect("lab up");
    let new = release(&lab, "1.8.3");
    let counts = transactions(&lab, "node-1");
    let node = lab.node("node-1").unwrap();
    node.stop().unwrap();
    let data = node.paths().data_dir();
    let originals: Vec<(String, String)> = [
        "numary__system.db",
        "numary_default.db",
        "numary_payments.db",
    ]
    .iter()
    .map(|f| (f.to_string(), sha256_file(&data.join(f))))
    .collect();
    node.start().unwrap();

    let out = upgrade(&lab, "1.8.3", &new, &["--stop", "--format", "json"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    // stdout is JSON Lines, one event each, ending with the run's end.
    let lines: Vec<Value> = stdout(&out)
        .lines()
        .map(|l| serde_json::from_str(l).expect("JSON line"))
        .collect();
    assert_eq!(lines.last().unwrap()["event"], "run_finished");
    assert_eq!(lines.last().unwrap()["outcome"], "succeeded");

    assert_eq!(node.installed_version().as_deref(), Some("1.8.3"));
    assert_eq!(api_version(&lab, "node-1").as_deref(), Some("1.8.3"));
    assert_eq!(transactions(&lab, "node-1"), counts);
    let mut migrated = migrations_at(&lab, "1.8.3");
    migrated.sort();
    assert_eq!(
        migrated.iter().map(|m| m.1.as_str()).collect::<Vec<_>>(),
        ["default", "payments"]
    );
    assert!(
        migrated
            .iter()
            .all(|m| m.0 == "node-1" && m.2 == "storage upgrade / committed")
    );
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new());

    let j = last_journal(&lab);
    assert_eq!(as_set(j.finished_steps()), as_set(planned_steps(&j)));
    let backup_dir = node.paths().backup_dir().join(&j.header.run_id);
    for (file, sha) in &originals {
        assert_eq!(
            &sha256_file(&backup_dir.join(file)),
            sha,
            "{file}: the copy is the original"
        );
    }
    let recorded: Vec<Value> = j
        .events
        .iter()
        .filter(|e| e["event"] == "step_finished" && e["kind"] == "backup")
        .flat_map(|e| e["artefacts"].as_array().unwrap().clone())
        .collect();
    assert_eq!(recorded.len(), 3);
    for a in recorded {
        let p = PathBuf::from(a["path"].as_str().unwrap());
        assert_eq!(a["sha256"].as_str().unwrap(), sha256_file(&p));
    }
    // The previous release is kept for rollback.
    assert!(
        node.paths()
            .release_binary(&Version::new(1, 6, 1))
            .is_file()
    );
}

/// A refusal before anything changed: the exit code, what stderr says, every node's files as
/// they were, nothing started on the target.
fn assert_refused(
    lab: &Lab,
    out: &Output,
    code_wanted: i32,
    says: &[&str],
    before: &str,
    target: &str,
) {
    assert_eq!(code(out), code_wanted, "{}", both(out));
    for s in says {
        assert!(
            stderr(out).contains(s),
            "stderr should say `{s}`:\n{}",
            both(out)
        );
    }
    assert_eq!(
        &lab.tree_digest().unwrap(),
        before,
        "a node changed:\n{}",
        both(out)
    );
    assert_untouched(lab, target);
    assert_eq!(
        last_journal(lab).outcome(),
        exit_code::name(code_wanted).replace("failure", "failed")
    );
}

#[test]
fn refusals_before_any_change_running_node_ledger_typo_hot_journal_and_rolling() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 1, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");
    let before = lab.tree_digest().unwrap();

    // `--dry-run` is the audit: ready with `--stop`, and nothing stopped or written on a node.
    let out = upgrade(&lab, "1.8.2", &new, &["--stop", "--dry-run"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(stdout(&out).contains("result: ready"), "{}", both(&out));
    assert_eq!(lab.tree_digest().unwrap(), before);
    assert!(lab.nodes[0].service_running());
    assert_eq!(last_journal(&lab).header.command, "check");

    let out = upgrade(&lab, "1.8.2", &new, &[]);
    assert_refused(
        &lab,
        &out,
        exit_code::BLOCKED,
        &["is running", "--stop"],
        &before,
        "1.8.2",
    );
    assert!(lab.nodes[0].service_running(), "left running");

    // A zero-downtime strategy is not carried out yet: refused, with the way out.
    let patch = release(&lab, "1.7.6");
    let out = upgrade(&lab, "1.7.6", &patch, &["--strategy", "rolling"]);
    assert_refused(
        &lab,
        &out,
        exit_code::BLOCKED,
        &["`rolling`", "--strategy offline"],
        &before,
        "1.7.6",
    );
    assert!(lab.nodes[0].service_running(), "left running");

    // A typo in the inventory's ledgers.
    let inventory = std::fs::read_to_string(lab.inventory_path()).unwrap();
    let typo = inventory.replace("\"payments\"", "\"paymnts\"");
    assert_ne!(typo, inventory);
    std::fs::write(lab.inventory_path(), &typo).unwrap();
    let out = upgrade(&lab, "1.8.2", &new, &["--stop"]);
    assert_refused(
        &lab,
        &out,
        exit_code::BLOCKED,
        &["`paymnts`"],
        &before,
        "1.8.2",
    );
    assert!(lab.nodes[0].service_running(), "left running");
    std::fs::write(lab.inventory_path(), &inventory).unwrap();

    // A hot journal beside a stopped node.
    lab.nodes[0].stop().unwrap();
    let hot = lab.nodes[0]
        .paths()
        .data_dir()
        .join("numary_default.db-journal");
    std::fs::write(&hot, b"").unwrap();
    let before = lab.tree_digest().unwrap();
    let out = upgrade(&lab, "1.8.2", &new, &[]);
    assert_refused(
        &lab,
        &out,
        exit_code::BLOCKED,
        &["numary_default.db-journal"],
        &before,
        "1.8.2",
    );
    std::fs::remove_file(&hot).unwrap();
}

#[test]
fn unsupported_paths_name_the_hops_and_1_7_6_to_1_8_1_is_refused() {
    for (from, to, says) in [
        ("1.2.0", "1.9.0", "1.2.0 → 1.8.x → 1.9.0"),
        ("1.7.6", "1.8.1", "`1.7.6` → `1.8.1` is not supported"),
    ] {
        let mut s = spec(Driver::Sqlite, 1, from);
        s.start = false;
        let lab = LabGuard::up(&s).expect("lab up");
        let new = release(&lab, to);
        let before = lab.tree_digest().unwrap();
        let out = upgrade(&lab, to, &new, &[]);
        assert_refused(&lab, &out, exit_code::BLOCKED, &[says], &before, to);
    }
}

/// The migrator's environment file points at an empty dir: `storage list` prints `No ledger
/// found.` while the fleet has ledgers. Without a backup to catch it first, the migrate step's
/// guard refuses before any `storage upgrade`.
#[test]
fn a_wrong_storage_environment_is_refused_before_any_migration() {
    let mut s = spec(Driver::Sqlite, 2, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let new = release(&lab, "1.8.2");
    // No `ledgers` in the inventory: the guard must rely on what the nodes reported.
    let inventory = std::fs::read_to_string(lab.inventory_path()).unwrap();
    let without: String = inventory
        .lines()
        .filter(|l| !l.starts_with("ledgers = "))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(lab.inventory_path(), without).unwrap();
    let empty = lab.dir.join("elsewhere");
    std::fs::create_dir(&empty).unwrap();
    let env = lab.nodes[0].paths().env_file();
    let text = std::fs::read_to_string(&env).unwrap();
    let data = lab.nodes[0].paths().data_dir();
    std::fs::write(
        &env,
        text.replace(data.to_str().unwrap(), empty.to_str().unwrap()),
    )
    .unwrap();
    let before = lab.tree_digest().unwrap();

    let out = upgrade(&lab, "1.8.2", &new, &["--no-backup"]);
    assert_refused(
        &lab,
        &out,
        exit_code::BLOCKED,
        &["No ledger found.", "wrong storage environment"],
        &before,
        "1.8.2",
    );
    let j = last_journal(&lab);
    assert!(j.header.no_backup, "`--no-backup` is recorded");
    assert!(
        !j.events.iter().any(|e| e["event"] == "step_started"
            && e["command"]
                .as_str()
                .is_some_and(|c| c.contains("storage upgrade"))),
        "no `storage upgrade` ran"
    );

    // With the backup, an empty storage dir is caught even earlier.
    let empty = lab.dir.join("elsewhere-too");
    std::fs::create_dir(&empty).unwrap();
    let text = std::fs::read_to_string(&env).unwrap();
    let old = lab.dir.join("elsewhere");
    std::fs::write(
        &env,
        text.replace(old.to_str().unwrap(), empty.to_str().unwrap()),
    )
    .unwrap();
    let before = lab.tree_digest().unwrap();
    let out = upgrade(&lab, "1.8.2", &new, &[]);
    assert_refused(
        &lab,
        &out,
        exit_code::BLOCKED,
        &["no numary_*.db file in", "wrong storage environment"],
        &before,
        "1.8.2",
    );

    // node-1 is fine, node-2 (migrated after it) points elsewhere: every node's guards run
    // before the first `storage upgrade`, so node-1 is not migrated either.
    std::fs::write(
        &env,
        text.replace(old.to_str().unwrap(), data.to_str().unwrap()),
    )
    .unwrap();
    let empty = lab.dir.join("elsewhere-for-node-2");
    std::fs::create_dir(&empty).unwrap();
    let env2 = lab.nodes[1].paths().env_file();
    let text2 = std::fs::read_to_string(&env2).unwrap();
    let data2 = lab.nodes[1].paths().data_dir();
    std::fs::write(
        &env2,
        text2.replace(data2.to_str().unwrap(), empty.to_str().unwrap()),
    )
    .unwrap();
    let before = lab.tree_digest().unwrap();
    let out = upgrade(&lab, "1.8.2", &new, &["--no-backup"]);
    assert_refused(
        &lab,
        &out,
        exit_code::BLOCKED,
        &["node-2", "wrong storage environment"],
        &before,
        "1.8.2",
    );
    assert!(
        !last_journal(&lab)
            .events
            .iter()
            .any(|e| e["event"] == "step_started"
                && e["command"]
                    .as_str()
                    .is_some_and(|c| c.contains("storage upgrade"))),
        "no `storage upgrade` ran on any node"
    );
}

/// A backup that cannot be written stops the run before any change, and the node this run
/// stopped is started again on its old binary.
#[test]
fn a_backup_failure_changes_nothing_and_restarts_the_stopped_node() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 1, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");
    let paths = lab.nodes[0].paths();
    let backups = paths.backup_dir();
    std::fs::remove_dir(&backups).unwrap();
    std::fs::write(&backups, b"not a dir").unwrap();
    // The server's own log and pid file change with its restart; everything else must not.
    let files = || {
        fleetup::lab::digest::tree_digest([
            ("opt", paths.root.join("opt").as_path()),
            ("usr", paths.root.join("usr").as_path()),
            ("etc", paths.root.join("etc").as_path()),
            ("var/lib", paths.root.join("var/lib").as_path()),
            ("var/backups", paths.root.join("var/backups").as_path()),
        ])
        .unwrap()
    };
    let before = files();

    let out = upgrade(&lab, "1.8.2", &new, &["--stop"]);
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    assert!(stderr(&out).contains("backup"), "{}", both(&out));
    assert!(lab.nodes[0].service_running(), "restarted");
    assert_eq!(api_version(&lab, "node-1").as_deref(), Some("1.7.4"));
    assert_untouched(&lab, "1.8.2");
    let j = last_journal(&lab);
    assert!(
        j.events
            .iter()
            .any(|e| e["event"] == "restored" && e["action"] == "restart" && e["ok"] == true)
    );
    assert_eq!(files(), before, "a file changed");
}

/// The simulator fails the migration: the remote error is shown, no node is switched or
/// started, the backup is kept (the storage may have changed), the staged release removed.
#[test]
fn a_migration_failure_starts_nothing_and_shows_the_remote_error() {
    let mut s = spec(Driver::Postgres, 3, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let new = release(&lab, "1.8.2");
    lab.set_fault("fail-migration", &["node-1"]).unwrap();
    let before = lab.tree_digest().unwrap();

    let out = upgrade(&lab, "1.8.2", &new, &[]);
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    let err = stderr(&out);
    assert!(
        err.contains("`storage upgrade default` failed"),
        "{}",
        both(&out)
    );
    assert!(
        stdout(&out).contains("remote stderr on node-1"),
        "{}",
        both(&out)
    );
    for n in &lab.nodes {
        assert!(!n.service_running(), "{} was started", n.name);
        assert_eq!(n.installed_version().as_deref(), Some("1.7.4"));
    }
    let j = last_journal(&lab);
    assert_eq!(j.outcome(), "failed");
    assert!(
        !j.events
            .iter()
            .any(|e| e["event"] == "step_started" && e["kind"] == "start_service")
    );
    // The failed migration was the only migration, run while no node served the storage.
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new());
    // Only the kept backup differs.
    let kept = lab.nodes[0].paths().backup_dir().join(&j.header.run_id);
    assert!(kept.join("postgres.dump").is_file(), "the backup is kept");
    std::fs::remove_dir_all(&kept).unwrap();
    assert_eq!(lab.tree_digest().unwrap(), before);
    for (what, text) in [
        ("stdout", stdout(&out)),
        ("stderr", err),
        ("journal", std::fs::read_to_string(&j.path).unwrap()),
    ] {
        assert_no_password(what, &text);
    }
}

/// A second run while the first holds the lock fails fast, naming the holder.
#[test]
fn a_second_concurrent_run_finds_the_lock_held() {
    let mut s = spec(Driver::Sqlite, 2, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let new = release(&lab, "1.8.2");
    lab.set_fault_with("slow-migration", &["node-1"], &["2"])
        .unwrap();

    let inventory = lab.inventory_path();
    let mut first = Command::new(env!("CARGO_BIN_EXE_fleetup"));
    first
        .arg("-i")
        .arg(&inventory)
        .args([
            "upgrade",
            "--to",
            "1.8.2",
            "--binary",
            new.to_str().unwrap(),
        ])
        .env_remove("SSH_AUTH_SOCK")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let first = first.spawn().unwrap();
    let lock = lab.nodes[1].paths().releases_dir().join(".fleetup.lock");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !lock.exists() {
        assert!(
            Instant::now() < deadline,
            "the first run never took the lock"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let second = upgrade(&lab, "1.8.2", &new, &[]);
    let first = first.wait_with_output().unwrap();
    assert_eq!(code(&first), exit_code::SUCCESS, "{}", both(&first));
    assert_eq!(code(&second), exit_code::LOCK_HELD, "{}", both(&second));
    let runs = journal::list_journals(&state_dir(&lab)).unwrap();
    let first_id = &runs[0].header.run_id;
    assert!(
        stderr(&second).contains(first_id.as_str()),
        "names the holder: {}",
        both(&second)
    );
    assert_eq!(runs[1].outcome(), "lock-held");
}

/// A crashed run's lock (an older fleetup's, without a lease, untouched since 2020), from another
/// machine: refused with its holder named, then broken with `--break-lock`, which the journal
/// records.
#[test]
fn a_stale_lock_is_broken_only_with_break_lock() {
    let mut s = spec(Driver::Sqlite, 2, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let stale = serde_json::json!({
        "user": "ops", "local_host": "elsewhere", "run_id": "20200101T000000Z-dead00",
        "pid": 1, "started_at": "2020-01-01T00:00:00Z", "fleetup_version": "0.0.1",
        "command": "upgrade"
    });
    let lock = lab.nodes[0].paths().releases_dir().join(".fleetup.lock");
    std::fs::create_dir(&lock).unwrap();
    std::fs::write(lock.join("owner.json"), stale.to_string()).unwrap();
    // An older fleetup's lock has no lease: its age is its dir's last change.
    let crashed = std::time::UNIX_EPOCH + Duration::from_secs(1_577_836_800);
    std::fs::File::open(&lock)
        .and_then(|d| d.set_modified(crashed))
        .unwrap();
    let newer = release(&lab, "1.8.3");
    let out = upgrade(&lab, "1.8.3", &newer, &[]);
    assert_eq!(code(&out), exit_code::LOCK_HELD, "{}", both(&out));
    assert!(
        stderr(&out).contains("20200101T000000Z-dead00"),
        "{}",
        both(&out)
    );
    assert!(lock.exists());
    let out = upgrade(&lab, "1.8.3", &newer, &["--break-lock"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(!lock.exists(), "released at the end");
    let j = last_journal(&lab);
    assert!(j.events.iter().any(|e| e["event"] == "lock_broken"
        && e["host"] == "node-1"
        && e["holder"].as_str().unwrap().contains("elsewhere")));
    assert!(j.header.options.iter().any(|o| o == "--break-lock"));
}

/// The second batch never becomes healthy: the run stops with a report of what runs where.
#[test]
fn a_node_that_never_becomes_healthy_stops_the_run_with_a_state_report() {
    let mut s = spec(Driver::Sqlite, 2, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let new = release(&lab, "1.8.2");
    lab.set_fault("never-healthy", &["node-2"]).unwrap();

    let out = upgrade(&lab, "1.8.2", &new, &["--health-timeout", "3s"]);
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    assert_says(
        &out,
        &[
            "health_gate) failed on `node-2`",
            "not healthy on `1.8.2` within 3s",
        ],
    );
    let report = stdout(&out);
    let row = |host: &str| {
        report
            .lines()
            .find(|l| l.starts_with(host))
            .unwrap_or_else(|| panic!("no row for {host}:\n{report}"))
            .to_string()
    };
    assert!(row("node-1").contains("API reports `1.8.2`"), "{report}");
    assert!(
        row("node-2").contains("binary switched to `1.8.2`"),
        "{report}"
    );
    assert!(row("node-2").contains("API answers HTTP 500"), "{report}");
    assert_eq!(api_version(&lab, "node-1").as_deref(), Some("1.8.2"));
    let j = last_journal(&lab);
    assert_eq!(j.outcome(), "failed");
    // The locks are released even so.
    for n in &lab.nodes {
        assert!(!n.paths().releases_dir().join(".fleetup.lock").exists());
    }
    lab.clear_fault("never-healthy").unwrap();
}

/// `--max-fail 1`: three SQLite nodes (each alone on its storage), one never healthy after its
/// start. The run goes on without it: the two others serve the target, the failed node is named
/// with its step, the run fails (exit 1), and no node keeps a lock.
#[test]
fn max_fail_leaves_a_node_that_fails_its_start_behind_and_upgrades_the_others() {
    let mut s = spec(Driver::Sqlite, 3, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let new = release(&lab, "1.8.2");
    lab.set_fault("never-healthy", &["node-2"]).unwrap();

    let out = upgrade(
        &lab,
        "1.8.2",
        &new,
        &["--health-timeout", "3s", "--max-fail", "1"],
    );
    lab.clear_fault("never-healthy").unwrap();
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    for node in ["node-1", "node-3"] {
        assert_node_serving(&lab, node, "1.8.2", "the others go on");
    }
    assert_says(
        &out,
        &[
            "health_gate) failed on `node-2`",
            "the run went on without the failed host(s) (`--max-fail 1`)",
        ],
    );
    let report = stdout(&out);
    let row = report
        .lines()
        .find(|l| l.starts_with("node-2"))
        .unwrap_or_else(|| panic!("no row for node-2:\n{report}"));
    assert!(row.contains("failed at step"), "{report}");
    assert!(row.contains("(health_gate)"), "{report}");
    let j = last_journal(&lab);
    assert_eq!(j.outcome(), "failed");
    assert!(j.header.options.contains(&"--max-fail 1".to_string()));
    assert_eq!(
        j.last_state("health_gate", "node-2"),
        Some(StepState::Failed)
    );
    // Its batch's other node passed the same gate.
    assert_eq!(j.last_state("health_gate", "node-3"), Some(StepState::Done));
    for n in &lab.nodes {
        assert!(
            !n.paths().releases_dir().join(".fleetup.lock").exists(),
            "{} keeps a lock",
            n.name
        );
    }
}

/// One host does not answer: every unreachable host is reported, nothing runs anywhere.
#[test]
fn an_unreachable_host_stops_the_run_before_anything_changes() {
    let mut s = spec(Driver::Sqlite, 2, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let new = release(&lab, "1.8.2");
    assert!(fleetup::lab::process::terminate(
        lab.nodes[1].sshd_pid,
        Duration::from_secs(5)
    ));
    let before = lab.tree_digest().unwrap();
    let out = upgrade(&lab, "1.8.2", &new, &["--connect-timeout", "3s"]);
    assert_refused(
        &lab,
        &out,
        exit_code::UNREACHABLE,
        &["node-2", "could not be reached", "nothing was changed"],
        &before,
        "1.8.2",
    );
    assert!(
        !lab.nodes[0]
            .paths()
            .releases_dir()
            .join(".fleetup.lock")
            .exists(),
        "no lock taken on the reachable node"
    );
}

/// `--binary-url`: each node downloads the release itself, checked against `--sha256`.
#[test]
fn a_binary_url_is_downloaded_by_the_node_and_checked() {
    let mut s = spec(Driver::Sqlite, 1, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let new = release(&lab, "1.8.2");
    let url = format!("file://{}", new.display());
    let sha = sha256_file(&new);

    let before = lab.tree_digest().unwrap();
    let wrong = "0".repeat(64);
    let out = fleetup(
        &lab.inventory_path(),
        &[
            "upgrade",
            "--to",
            "1.8.2",
            "--binary-url",
            &url,
            "--sha256",
            &wrong,
        ],
    );
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    assert!(
        stderr(&out).contains("the download has sha256"),
        "{}",
        both(&out)
    );
    assert_eq!(lab.tree_digest().unwrap(), before);
    assert_untouched(&lab, "1.8.2");

    let out = fleetup(
        &lab.inventory_path(),
        &[
            "upgrade",
            "--to",
            "1.8.2",
            "--binary-url",
            &url,
            "--sha256",
            &sha,
        ],
    );
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert_eq!(lab.nodes[0].installed_version().as_deref(), Some("1.8.2"));
    assert_eq!(api_version(&lab, "node-1").as_deref(), Some("1.8.2"));
}
