//! Injected faults: a failing migration (rolled back), a server that never becomes healthy,
//! a slow migration (and the hot SQLite journal a kill in the middle of it leaves).

mod common;

use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Node, PgDb, pg_node, range, sqlite_versions};

#[test]
fn fail_migration_exits_one_and_rolls_the_batch_back_on_sqlite() {
    let node = Node::new();
    assert_eq!(node.run("1.7.4", &["storage", "upgrade", "main"]).code, 0);
    node.set_fault("fail-migration", "");
    let run = node.run("1.8.2", &["storage", "upgrade", "main"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("Error: database or disk is full\n"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.ends_with("\ndatabase or disk is full\n"));
    assert!(!run.body().contains("migrated"));
    let db = node.data_dir().join("numary_main.db");
    assert_eq!(
        sqlite_versions(&db),
        range(0, 10),
        "nothing of 11-17 may remain"
    );
    let last = node.migration_log().pop().unwrap();
    assert_eq!(last["result"], "rolled back: database or disk is full");
    assert_eq!(
        last["migrations"],
        serde_json::json!([11, 12, 13, 14, 15, 16, 17])
    );
    std::fs::remove_file(node.state.join("faults/fail-migration")).unwrap();
    assert_eq!(
        node.run("1.8.2", &["storage", "upgrade", "main"]).body(),
        "Storage 'main' migrated\r\n"
    );
    assert_eq!(sqlite_versions(&db), range(0, 17));
}

#[test]
fn fail_migration_on_postgres_leaves_the_schema_as_it_was() {
    let db = PgDb::new();
    let node = pg_node(&db);
    assert_eq!(
        node.run(
            "1.7.4",
            &["sim", "seed", "--ledger", "main", "--transactions", "2"]
        )
        .code,
        0
    );
    let run = node.run_env(
        "1.8.2",
        &["storage", "upgrade", "main"],
        &[("NUMARY_SIM_FAIL_MIGRATION", "1")],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("No space left on device (SQLSTATE 53100)"),
        "{}",
        run.stderr
    );
    assert_eq!(db.versions("main"), range(0, 10));
    assert!(!db.tables("main").contains(&"idempotency".to_owned()));
    assert_eq!(db.count("SELECT COUNT(*) FROM main.transactions"), 2);
}

#[test]
fn fail_migration_targets_named_nodes_only() {
    let node = Node::new().env("NUMARY_SIM_NODE", "ledger-2");
    node.set_fault("fail-migration", "ledger-1\nledger-3\n");
    assert_eq!(node.run("1.8.2", &["storage", "upgrade", "main"]).code, 0);
    let target = node.sibling("one").env("NUMARY_SIM_NODE", "ledger-1");
    assert_eq!(target.run("1.8.2", &["storage", "upgrade", "main"]).code, 1);
}

#[test]
fn a_lazy_migration_failure_is_a_500_and_leaves_no_rows() {
    let node = Node::new();
    node.set_fault("fail-migration", "");
    let server = node.serve("1.9.6");
    let (status, body) = server.get("/main/stats");
    assert_eq!(status, 500);
    assert!(body.contains("database or disk is full"), "{body}");
    drop(server);
    let conn = rusqlite::Connection::open(node.data_dir().join("numary_main.db")).unwrap();
    let rows: i64 = conn
        .query_row("SELECT COUNT(*) FROM migrations", [], |r| r.get(0))
        .unwrap();
    assert_eq!(rows, 0);
}

#[test]
fn never_healthy_answers_500_on_health_and_info() {
    let node = Node::new();
    node.set_fault("never-healthy", "");
    let server = node.serve("1.9.6");
    assert_eq!(server.get("/_health").0, 500);
    assert_eq!(server.get("/_healthcheck").0, 500);
    assert_eq!(server.get("/_info").0, 500);
    // The fault is read per request: removing the marker heals the node.
    std::fs::remove_file(node.state.join("faults/never-healthy")).unwrap();
    assert_eq!(server.get("/_health").0, 200);
}

#[test]
fn never_healthy_for_another_node_leaves_this_one_healthy() {
    let node = Node::new().env("NUMARY_SIM_NODE", "ledger-1");
    node.set_fault("never-healthy", "ledger-2\n");
    let server = node.serve("1.8.2");
    assert_eq!(server.get("/_health").0, 200);
}

#[test]
fn never_healthy_hang_mode_never_answers() {
    let node = Node::new();
    node.set_fault("never-healthy", "hang\n");
    let server = node.serve("1.8.2");
    let mut stream = std::net::TcpStream::connect(("127.0.0.1", server.port)).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_millis(700)))
        .unwrap();
    stream
        .write_all(b"GET /_health HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut buf = [0u8; 16];
    let err = stream
        .read(&mut buf)
        .expect_err("a hung server sends nothing");
    assert!(matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    ));
}

#[test]
fn slow_migration_sleeps_inside_the_transaction() {
    let node = Node::new();
    let start = Instant::now();
    let run = node.run_env(
        "1.8.2",
        &["storage", "upgrade", "main"],
        &[("NUMARY_SIM_SLOW_MIGRATION", "2")],
    );
    assert_eq!(run.code, 0);
    assert!(start.elapsed() >= Duration::from_secs(2));
    // Nothing pending: no migration, no sleep.
    let start = Instant::now();
    let run = node.run_env(
        "1.8.2",
        &["storage", "upgrade", "main"],
        &[("NUMARY_SIM_SLOW_MIGRATION", "5")],
    );
    assert_eq!(run.body(), "Storage 'main' left in place\r\n");
    assert!(start.elapsed() < Duration::from_secs(3));
}

#[test]
fn killing_a_sqlite_migration_leaves_a_hot_journal_that_the_next_open_rolls_back() {
    let node = Node::new();
    assert_eq!(
        node.run(
            "1.7.4",
            &["sim", "seed", "--ledger", "main", "--transactions", "5"]
        )
        .code,
        0
    );
    node.set_fault("slow-migration", "60\n");
    let mut child = node
        .command("1.8.2", &["storage", "upgrade", "main"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let journal = node.data_dir().join("numary_main.db-journal");
    let deadline = Instant::now() + Duration::from_secs(15);
    while !std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0) {
        assert!(
            Instant::now() < deadline,
            "no journal appeared during the migration"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        std::fs::metadata(&journal).is_ok_and(|m| m.len() > 0),
        "hot journal left behind"
    );

    std::fs::remove_file(node.state.join("faults/slow-migration")).unwrap();
    let run = node.run("1.8.2", &["storage", "upgrade", "main"]);
    assert_eq!(run.body(), "Storage 'main' migrated\r\n", "{}", run.stderr);
    let db = node.data_dir().join("numary_main.db");
    assert_eq!(sqlite_versions(&db), range(0, 17));
    assert!(!journal.exists());
    let conn = rusqlite::Connection::open(&db).unwrap();
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM transactions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 5);
}
