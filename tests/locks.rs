//! Locks that cannot be mistaken, on the practice lab (real sshd, the simulator, real Postgres):
//! a node lock's lease decides what `--break-lock` may break, and the migration's advisory lock
//! on a shared Postgres database is held by one session at a time and freed when its holder dies.
//! The Postgres tests need `FLEETUP_TEST_PG_URL` (`eval "$(scripts/pg.sh start)"`).

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::path::PathBuf;
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use fleetup::dblock::{self, DbLockError};
use fleetup::exit_code;
use fleetup::inventory::{Inventory, Overrides, ResolvedHost};
use fleetup::lab::pg::PgUrl;
use fleetup::lab::{Driver, Lab, LabGuard};
use fleetup::lock::{self, LeaseConfig, LockError, LockOwner};
use fleetup::ssh::{ConnectOptions, Session, connect};
use lab_fixture::{both, code, fleetup, pg_url, release, spec, stderr};

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

    // `check` shows the lease with the holder.
    let checked = fleetup(
        &lab.inventory_path(),
        &["check", "--to", "1.8.2", "--binary", new.to_str().unwrap()],
    );
    assert_eq!(code(&checked), exit_code::LOCK_HELD, "{}", both(&checked));
    assert!(
        both(&checked).contains("20260125T174502Z-f4e5h0")
            && both(&checked).contains("; lease fresh (expires in 59m"),
        "{}",
        both(&checked)
    );

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

/// Over a real SSH connection: the refresher moves the lease's refresh time on the node while it
/// runs and stops when told; `--resume`'s take-over rewrites the owner of the same run only.
#[test]
fn the_refresher_keeps_a_lease_fresh_and_a_resumed_run_takes_its_lock_over() {
    let lab = sqlite_lab();
    let host = node(&lab.inventory_path());
    let owner_file = lab.nodes[0]
        .paths()
        .releases_dir()
        .join(".fleetup.lock/owner.json");
    let read = || {
        let v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&owner_file).unwrap()).unwrap();
        (
            v["pid"].as_u64().unwrap(),
            v["lease"]["refreshed_at"].as_u64().unwrap(),
        )
    };
    let me = LockOwner {
        user: "ops".into(),
        local_host: "here".into(),
        run_id: "20260125T174502Z-r3fr35".into(),
        pid: 4242,
        started_at: "2026-01-25T17:45:02Z".into(),
        fleetup_version: "0.1.0".into(),
        command: "upgrade".into(),
        process: None,
    };
    let cfg = LeaseConfig::new(Duration::from_secs(1), Duration::from_secs(5)).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = session(&host).await;
        lock::acquire(&s, &host, &me, &cfg).await.unwrap();
        let (_, first) = read();
        let failures = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
        let seen = failures.clone();
        let refresher = lock::spawn_refresher(
            vec![(host.clone(), s.clone())],
            &me.run_id,
            cfg,
            Arc::new(move |h: &str, e: &LockError| seen.lock().unwrap().push(format!("{h}: {e}"))),
        );
        tokio::time::sleep(Duration::from_millis(3500)).await;
        // Stopped first: a refresh under way ends before `stop` returns.
        refresher.stop().await;
        let (_, refreshed) = read();
        assert!(refreshed >= first + 2, "refreshed at {refreshed}, taken at {first}");
        assert_eq!(*failures.lock().unwrap(), Vec::<String>::new());
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert_eq!(read().1, refreshed, "no refresh once stopped");

        let mut other = me.clone();
        other.run_id = "20260125T174503Z-0th3r0".into();
        let refused = lock::take_over(&s, &host, &other, &cfg).await;
        assert!(
            matches!(&refused, Err(LockError::NotOurs { holder, .. }) if holder.owner() == Some(&me)),
            "{refused:?}"
        );
        let mut resumed = me.clone();
        resumed.pid = 777;
        lock::take_over(&s, &host, &resumed, &cfg).await.unwrap();
        let (pid, at) = read();
        assert_eq!(pid, 777);
        assert!(at >= refreshed);
        lock::release(&s, &host, &me.run_id).await.unwrap();
        assert!(!owner_file.exists());
        assert!(matches!(
            lock::refresh(&s, &host, &me.run_id).await,
            Err(LockError::Gone { .. })
        ));
    });
}

// ---- the migration's lock on a shared Postgres database ----

/// Set in the helper process that holds the migration lock until it is killed.
const HOLDER_INVENTORY: &str = "FLEETUP_TEST_DBLOCK_HOLDER_INVENTORY";

fn postgres_lab() -> LabGuard {
    let mut s = spec(Driver::Postgres, 1, "1.7.4");
    s.start = false;
    LabGuard::up(&s).expect("lab up")
}

fn node(inventory: &std::path::Path) -> ResolvedHost {
    Inventory::load(inventory, &Overrides::default())
        .expect("the lab's inventory loads")
        .host("node-1")
        .expect("node-1")
        .clone()
}

/// A session to the lab node with the service's environment read, as every run has once it
/// gathered the node's facts.
async fn session(host: &ResolvedHost) -> Session {
    let s = connect(host, &ConnectOptions::default())
        .await
        .expect("connect to the lab node");
    let facts = fleetup::facts::gather(&s, host).await;
    assert!(facts.reachable(), "{facts:?}");
    s
}

/// The advisory locks on the lab's database, and its sessions named `app`, counted with `psql`
/// against the test server directly.
fn advisory_locks(lab: &Lab) -> usize {
    let db = &lab.postgres.as_ref().expect("a Postgres lab").database;
    let server = PgUrl::parse(&pg_url()).unwrap();
    server
        .query(&format!(
            "select count(*) from pg_locks l join pg_database d on d.oid = l.database where l.locktype = 'advisory' and d.datname = '{db}'"
        ))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// How long until `advisory_locks` is `n` (panics after `limit`).
fn wait_for_locks(lab: &Lab, n: usize, limit: Duration) -> Duration {
    let started = Instant::now();
    while advisory_locks(lab) != n {
        assert!(
            started.elapsed() < limit,
            "still {} advisory lock(s) after {limit:?}, want {n}",
            advisory_locks(lab)
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    started.elapsed()
}

/// The password of the test server, which must appear in no process's arguments.
fn password() -> String {
    let url = pg_url();
    let creds = url.split("://").nth(1).unwrap().split('@').next().unwrap();
    creds.split_once(':').unwrap().1.to_owned()
}

/// Every process's command line that holds `secret`.
fn command_lines_with(secret: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(entry.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(secret) {
                found.push(c);
            }
        }
    }
    found
}

/// One session holds the migration lock; a second (another SSH connection, as another run's) is
/// refused and told the first's name and address; once released, the second gets it; dropping a
/// holder frees it too. The password is on no command line meanwhile.
#[test]
fn the_migration_lock_is_held_by_one_session_and_names_its_holder() {
    let lab = postgres_lab();
    let host = node(&lab.inventory_path());
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (a, b) = (session(&host).await, session(&host).await);
        let mut first = dblock::hold(&a, &host, "fleetup run-a ops@machine-a")
            .await
            .expect("the first run takes the lock");
        assert_eq!(advisory_locks(&lab), 1);
        assert_eq!(command_lines_with(&password()), Vec::<String>::new());

        let refused = dblock::hold(&b, &host, "fleetup run-b ops@machine-b")
            .await
            .expect_err("a second run is refused");
        let DbLockError::Held {
            holder: Some(holder),
            ..
        } = &refused
        else {
            panic!("not a named holder: {refused:?}");
        };
        assert_eq!(holder.application_name, "fleetup run-a ops@machine-a");
        assert_eq!(holder.client, "127.0.0.1");
        let text = refused.to_string();
        assert!(
            text.contains("`node-1` is held by `fleetup run-a ops@machine-a`"),
            "{text}"
        );
        assert!(!text.contains(&password()));
        assert_eq!(advisory_locks(&lab), 1, "the refused session left");
        first.confirm().await.expect("still held");

        first.release().await.expect("released");
        assert_eq!(advisory_locks(&lab), 0);
        let second = dblock::hold(&b, &host, "fleetup run-b ops@machine-b")
            .await
            .expect("free again once released");
        assert_eq!(advisory_locks(&lab), 1);
        // Dropped without a release (a run that failed): the session ends, the lock with it.
        drop(second);
        let freed = wait_for_locks(&lab, 0, Duration::from_secs(10));
        eprintln!("dropped holder: lock free after {freed:?}");
    });
}

/// A holder killed outright (SIGKILL, as an operator's `kill -9` or an OOM kill): its SSH
/// connection closes, `psql` on the node ends, and the lock is free within seconds.
#[test]
fn a_killed_holder_frees_the_migration_lock_within_seconds() {
    let lab = postgres_lab();
    let inventory = lab.inventory_path();
    let mut child = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "helper_process_holding_the_migration_lock",
            "--nocapture",
        ])
        .env(HOLDER_INVENTORY, &inventory)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    wait_for_locks(&lab, 1, Duration::from_secs(60));
    let host = node(&inventory);
    let rt = tokio::runtime::Runtime::new().unwrap();
    let refused = rt.block_on(async {
        dblock::hold(&session(&host).await, &host, "fleetup run-b ops@machine-b").await
    });
    let label = format!("fleetup child-{} ops@test", child.id());
    assert!(
        matches!(&refused, Err(DbLockError::Held { holder: Some(h), .. }) if h.application_name == label),
        "{refused:?}"
    );

    child.kill().unwrap();
    child.wait().unwrap();
    let freed = wait_for_locks(&lab, 0, Duration::from_secs(10));
    eprintln!("killed holder: lock free after {freed:?}");
    rt.block_on(async {
        let lock = dblock::hold(&session(&host).await, &host, "fleetup run-b ops@machine-b")
            .await
            .expect("free once its holder died");
        lock.release().await.unwrap();
    });
}

/// Not a test: the process the test above kills. Without its variable it does nothing.
#[test]
fn helper_process_holding_the_migration_lock() {
    let Some(inventory) = std::env::var_os(HOLDER_INVENTORY) else {
        return;
    };
    let host = node(std::path::Path::new(&inventory));
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s = session(&host).await;
        let label = format!("fleetup child-{} ops@test", std::process::id());
        let _lock = dblock::hold(&s, &host, &label).await.expect("hold");
        tokio::time::sleep(Duration::from_secs(120)).await;
    });
}

/// The lab's inventory split in two: the hosts named in `keep` only.
fn inventory_of(lab: &Lab, keep: &[&str], file: &str) -> PathBuf {
    let text = std::fs::read_to_string(lab.inventory_path()).unwrap();
    let mut blocks = text.split("\n[[host]]\n");
    let mut out = blocks.next().unwrap().to_string();
    for b in blocks {
        let name = b
            .lines()
            .find_map(|l| l.strip_prefix("name = "))
            .unwrap()
            .trim_matches('"');
        if keep.contains(&name) {
            out.push_str("\n[[host]]\n");
            out.push_str(b);
        }
    }
    let path = lab.dir.join(file);
    std::fs::write(&path, out).unwrap();
    path
}

#[test]
fn two_inventories_on_one_database_started_together_migrate_it_once() {
    let mut s = spec(Driver::Postgres, 4, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let new = release(&lab, "1.8.2");
    // Each migration takes long enough for the two runs to meet at the database.
    lab.set_fault_with("slow-migration", &[], &["12"]).unwrap();
    let a = inventory_of(&lab, &["node-1", "node-2"], "a.toml");
    let b = inventory_of(&lab, &["node-3", "node-4"], "b.toml");
    let run = |inv: PathBuf, new: PathBuf| {
        std::thread::spawn(move || {
            fleetup(
                &inv,
                &[
                    "upgrade",
                    "--to",
                    "1.8.2",
                    "--binary",
                    new.to_str().unwrap(),
                ],
            )
        })
    };
    let (ra, rb) = (run(a, new.clone()), run(b, new));
    let (oa, ob) = (ra.join().unwrap(), rb.join().unwrap());
    lab.clear_fault("slow-migration").unwrap();
    let ok: Vec<&Output> = [&oa, &ob]
        .into_iter()
        .filter(|o| code(o) == exit_code::SUCCESS)
        .collect();
    let refused: Vec<&Output> = [&oa, &ob]
        .into_iter()
        .filter(|o| code(o) != exit_code::SUCCESS)
        .collect();
    assert_eq!(
        (ok.len(), refused.len()),
        (1, 1),
        "a:\n{}\nb:\n{}",
        both(&oa),
        both(&ob)
    );
    let refusal = stderr(refused[0]);
    assert!(
        [exit_code::LOCK_HELD, exit_code::BLOCKED].contains(&code(refused[0])),
        "{refusal}"
    );
    // The holder is named: the migrating run's session carries its run id.
    assert!(refusal.contains("fleetup 20"), "{refusal}");
    // The database was migrated once: each ledger by one run.
    let log = std::fs::read_to_string(lab.sim_state_dir().join("migrations.log")).unwrap();
    let mut committed: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .filter(|v| v["version"] == "1.8.2" && v["result"] == "committed")
        .map(|v| v["ledger"].as_str().unwrap().to_string())
        .collect();
    committed.sort();
    assert_eq!(committed, ["default", "payments"]);
    assert_eq!(
        lab.misuse_records().unwrap(),
        Vec::<serde_json::Value>::new()
    );
    // The refused run changed nothing on its nodes: still 1.7.4, no lock left.
    for n in &lab.nodes {
        assert!(
            !n.paths().releases_dir().join(".fleetup.lock").exists(),
            "{}: lock left",
            n.name
        );
    }
}
