//! Locks that cannot be mistaken, on the practice lab (real sshd, the simulator, real Postgres):
//! a node lock's lease decides what `--break-lock` may break, and the migration's advisory lock
//! on a shared Postgres database is held by one session at a time and freed when its holder dies.
//! The Postgres tests need `FLEETUP_TEST_PG_URL` (`eval "$(scripts/pg.sh start)"`).

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::path::PathBuf;
use std::process::Output;
use std::time::{SystemTime, UNIX_EPOCH};

use fleetup::exit_code;
use fleetup::lab::{Driver, Lab, LabGuard};
use lab_fixture::{code, fleetup, release, spec, stderr, stdout};

fn both(out: &Output) -> String {
    format!("stdout:\n{}\nstderr:\n{}", stdout(out), stderr(out))
}

/// The node's clock (the lab's nodes run on this machine).
fn node_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Writes on `node-1` the lock of a run on another machine whose lease of `ttl` seconds was
/// refreshed `refreshed_ago` seconds ago.
fn foreign_lock(lab: &Lab, run_id: &str, ttl: u64, refreshed_ago: u64) -> PathBuf {
    let owner = serde_json::json!({
        "user": "ops", "local_host": "another-machine", "run_id": run_id,
        "pid": 4242, "started_at": "2026-01-25T17:45:02Z", "fleetup_version": "0.1.0",
        "command": "upgrade",
        "lease": { "ttl_secs": ttl, "refresh_secs": 10, "refreshed_at": node_now() - refreshed_ago }
    });
    let lock = lab.nodes[0].paths().releases_dir().join(".fleetup.lock");
    std::fs::create_dir_all(&lock).unwrap();
    std::fs::write(lock.join("owner.json"), owner.to_string()).unwrap();
    lock
}

fn sqlite_lab() -> LabGuard {
    let mut s = spec(Driver::Sqlite, 1, "1.7.4");
    s.start = false;
    LabGuard::up(&s).expect("lab up")
}

fn upgrade(lab: &Lab, binary: &std::path::Path) -> Output {
    fleetup(
        &lab.inventory_path(),
        &[
            "upgrade",
            "--to",
            "1.8.2",
            "--binary",
            binary.to_str().unwrap(),
            "--break-lock",
        ],
    )
}

/// A fresh lease held by another machine: `--break-lock` refuses, names the holder and when its
/// lease expires, and leaves the node as it was, lock included.
#[test]
fn break_lock_refuses_a_fresh_lease_from_another_machine() {
    let lab = sqlite_lab();
    let new = release(&lab, "1.8.2");
    // The holder's own lease length counts (an hour, so a slow run cannot outlive it).
    let lock = foreign_lock(&lab, "20260125T174502Z-f4e5h0", 3600, 5);
    let owner_before = std::fs::read(lock.join("owner.json")).unwrap();
    let before = lab.tree_digest().unwrap();

    let out = upgrade(&lab, &new);
    assert_eq!(code(&out), exit_code::LOCK_HELD, "{}", both(&out));
    let err = stderr(&out);
    assert!(
        err.contains("20260125T174502Z-f4e5h0") && err.contains("ops@another-machine"),
        "names the holder: {}",
        both(&out)
    );
    assert!(
        err.contains("its lease is fresh and expires in 59m"),
        "says when the lease expires: {}",
        both(&out)
    );
    assert_eq!(
        std::fs::read(lock.join("owner.json")).unwrap(),
        owner_before
    );
    assert_eq!(lab.tree_digest().unwrap(), before, "the node is unchanged");
    assert_eq!(lab.nodes[0].installed_version().as_deref(), Some("1.7.4"));
}

/// The same lock once its lease expired (its holder stopped refreshing it): broken, and the
/// upgrade proceeds and releases its own lock at the end.
#[test]
fn break_lock_breaks_an_expired_lease_and_the_upgrade_proceeds() {
    let lab = sqlite_lab();
    let new = release(&lab, "1.8.2");
    let lock = foreign_lock(&lab, "20260125T174502Z-3xp1r0", 60, 600);

    let out = upgrade(&lab, &new);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(
        stderr(&out).contains("20260125T174502Z-3xp1r0"),
        "shows the holder it broke: {}",
        both(&out)
    );
    assert_eq!(lab.nodes[0].installed_version().as_deref(), Some("1.8.2"));
    assert!(!lock.exists(), "this run's own lock is released at the end");
}
