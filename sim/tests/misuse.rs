//! The misuse log: each kind is recorded when, and only when, a real deployment would have
//! done the corresponding damage.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{Node, PgDb, pg_node};

fn kinds(node: &Node) -> Vec<String> {
    node.misuse()
        .iter()
        .map(|m| m["kind"].as_str().unwrap_or_default().to_owned())
        .collect()
}

#[test]
fn a_proper_offline_upgrade_records_nothing() {
    let node = Node::new();
    assert_eq!(
        node.run(
            "1.7.4",
            &["sim", "seed", "--ledger", "main", "--transactions", "3"]
        )
        .code,
        0
    );
    assert_eq!(node.run("1.8.2", &["storage", "scan"]).code, 0);
    assert_eq!(node.run("1.8.2", &["storage", "upgrade", "main"]).code, 0);
    let server = node.serve("1.8.2");
    assert_eq!(server.get("/main/stats").0, 200);
    drop(server);
    assert!(node.misuse().is_empty(), "{:?}", node.misuse());
    // The migration log shows who migrated what: the seed's lazy creation, then the upgrade;
    // the restarted server found nothing left to do.
    let log = node.migration_log();
    let summary: Vec<(String, String, usize)> = log
        .iter()
        .map(|l| {
            let via = l["via"].as_str().unwrap_or_default().to_owned();
            let version = l["version"].as_str().unwrap_or_default().to_owned();
            (via, version, l["migrations"].as_array().map_or(0, Vec::len))
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("sim seed".to_owned(), "1.7.4".to_owned(), 11),
            ("storage upgrade".to_owned(), "1.8.2".to_owned(), 7),
        ]
    );
    assert!(log.iter().all(|l| l["result"] == "committed"));
}

#[test]
fn an_old_binary_serving_a_newer_schema_is_recorded_once_per_finding() {
    let node = Node::new().env("NUMARY_SIM_NODE", "ledger-1");
    assert_eq!(node.run("1.8.2", &["storage", "upgrade", "main"]).code, 0);
    let server = node.serve("1.7.4");
    assert_eq!(server.get("/main/stats").0, 200);
    assert_eq!(server.get("/main/transactions").0, 200);
    drop(server);
    let records = node.misuse();
    assert_eq!(records.len(), 1, "{records:?}");
    let record = &records[0];
    assert_eq!(record["kind"], "schema-newer-than-binary");
    assert_eq!(record["ledger"], "main");
    assert_eq!(record["version"], "1.7.4");
    assert_eq!(record["node"], "ledger-1");
    assert!(record["pid"].as_u64().is_some() && record["time"].as_str().is_some());
    let detail = record["detail"].as_str().unwrap();
    assert!(detail.contains("[11, 12, 13, 14, 15, 16, 17]"), "{detail}");
}

/// 1.7.4 → 1.8.2 is not a zero-downtime path (the table's 1.8.x rows say No): both the
/// migration beside the 1.7.4 server and that server's next request are recorded.
#[test]
fn a_server_left_running_while_another_node_migrates_is_caught_on_its_next_request() {
    let db = PgDb::new();
    let old = pg_node(&db).env("NUMARY_SIM_NODE", "old");
    let new = old.sibling("new").env("NUMARY_STORAGE_DRIVER", "postgres");
    let new = new
        .env("NUMARY_STORAGE_POSTGRES_CONN_STRING", &db.url)
        .env("NUMARY_SIM_NODE", "new");
    let server = old.serve("1.7.4");
    assert_eq!(server.get("/main/stats").0, 200);
    assert!(old.misuse().is_empty());
    // The migration itself is misuse too: a server uses that storage.
    assert_eq!(new.run("1.8.2", &["storage", "upgrade", "main"]).code, 0);
    assert_eq!(kinds(&old), vec!["storage-command-while-server-running"]);
    assert_eq!(server.get("/main/stats").0, 200);
    assert_eq!(
        kinds(&old),
        vec![
            "storage-command-while-server-running",
            "schema-newer-than-binary"
        ]
    );
    assert_eq!(old.misuse()[1]["node"], "old");
}

#[test]
fn storage_commands_and_seed_with_an_old_binary_are_recorded() {
    let node = Node::new();
    assert_eq!(node.run("1.8.2", &["storage", "upgrade", "main"]).code, 0);
    let run = node.run("1.7.4", &["storage", "upgrade", "main"]);
    assert_eq!(run.body(), "Storage 'main' left in place\r\n");
    assert_eq!(
        node.run(
            "1.7.4",
            &["sim", "seed", "--ledger", "main", "--transactions", "1"]
        )
        .code,
        0
    );
    let records = node.misuse();
    assert_eq!(
        kinds(&node),
        vec!["schema-newer-than-binary", "schema-newer-than-binary"]
    );
    let detail = records[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with(
            "storage upgrade: ledger has migrations [11, 12, 13, 14, 15, 16, 17] that 1.7.4 does not ship; the newest comes with 1.8.1"
        ),
        "{detail}"
    );
    assert!(
        records[1]["detail"]
            .as_str()
            .unwrap()
            .starts_with("sim seed:")
    );
}

/// The guide's table decides: 1.9.x may be rolled out from 1.4.x with zero downtime, so an
/// older node meeting a 1.9.6 schema is fine; it has no 1.10.x row, so 1.10.0 meeting 1.9.6's
/// 18-20 (which 1.10.0 does not ship: they come back with 1.10.1/1.10.3) is still recorded.
#[test]
fn the_upgrade_table_decides_which_older_binary_may_use_a_newer_schema() {
    let node = Node::new();
    assert_eq!(node.run("1.9.6", &["storage", "upgrade", "main"]).code, 0);
    let run = node.run("1.8.2", &["storage", "upgrade", "main"]);
    assert_eq!(run.body(), "Storage 'main' left in place\r\n");
    let seed = ["sim", "seed", "--ledger", "main", "--transactions", "1"];
    assert_eq!(node.run("1.8.2", &seed).code, 0);
    assert!(node.misuse().is_empty(), "{:?}", node.misuse());

    assert_eq!(node.run("1.10.0", &["storage", "upgrade", "main"]).code, 0);
    let records = node.misuse();
    assert_eq!(kinds(&node), vec!["schema-newer-than-binary"]);
    let detail = records[0]["detail"].as_str().unwrap();
    assert!(
        detail.starts_with("storage upgrade: ledger has migrations [18, 19, 20] that 1.10.0 does not ship; the newest comes with 1.10.3, and the upgrade table gives no zero-downtime path from 1.10.0 to 1.10.x"),
        "{detail}"
    );

    // 1.7.5-1.7.8's 11 (optimized-segments) is a 1.7.x schema: 1.7.4 may serve it.
    let other = Node::new();
    assert_eq!(other.run("1.7.5", &["storage", "upgrade", "main"]).code, 0);
    assert_eq!(other.run("1.7.4", &seed).code, 0);
    assert!(other.misuse().is_empty(), "{:?}", other.misuse());
}

/// The rolling upgrade of issue 8 on a shared Postgres: a 1.8.2 node keeps serving while the
/// canary runs 1.9.6's `storage scan`, `list` and `upgrade`; the old node then reads and writes
/// the migrated ledger. The table allows all of it (1.9.x from 1.4.x: zero-downtime Yes).
#[test]
fn a_rolling_upgrade_to_1_9_beside_a_serving_1_8_node_records_nothing() {
    let db = PgDb::new();
    let old = pg_node(&db).env("NUMARY_SIM_NODE", "old");
    let canary = old
        .sibling("canary")
        .env("NUMARY_STORAGE_DRIVER", "postgres")
        .env("NUMARY_STORAGE_POSTGRES_CONN_STRING", &db.url)
        .env("NUMARY_SIM_NODE", "canary");
    let seed = ["sim", "seed", "--ledger", "main", "--transactions", "3"];
    assert_eq!(old.run("1.8.2", &seed).code, 0);
    let server = old.serve("1.8.2");
    assert_eq!(server.get("/main/stats").0, 200);

    assert_eq!(canary.run("1.9.6", &["storage", "scan"]).code, 0);
    assert_eq!(canary.run("1.9.6", &["storage", "list"]).code, 0);
    let run = canary.run("1.9.6", &["storage", "upgrade", "main"]);
    assert_eq!(run.body(), "Storage 'main' migrated\r\n", "{}", run.stderr);
    assert_eq!(db.versions("main"), common::range(0, 20));
    assert!(old.misuse().is_empty(), "{:?}", old.misuse());

    // The old node goes on serving the migrated ledger, reads and writes.
    let (status, body) = server.get("/main/stats");
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get("/main/transactions").0, 200);
    let tx = r#"{"postings":[{"source":"world","destination":"users:rolling","amount":5,"asset":"USD/2"}]}"#;
    let (status, body) = server.post("/main/transactions", tx);
    assert_eq!(status, 200, "{body}");
    assert_eq!(server.get("/main/stats").0, 200);
    assert!(old.misuse().is_empty(), "{:?}", old.misuse());
    // Migrated once, by the canary: the serving node migrated nothing.
    let log = old.migration_log();
    let runs: Vec<(&str, &str)> = log
        .iter()
        .map(|l| {
            (
                l["version"].as_str().unwrap_or_default(),
                l["via"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        runs,
        vec![("1.8.2", "sim seed"), ("1.9.6", "storage upgrade")]
    );
}

/// A storage command beside a live server is fine only when the table lets that server serve
/// what the command's release leaves, and the server is not the newer one; `delete` never is.
#[test]
fn storage_commands_beside_servers_follow_the_upgrade_table() {
    let node = Node::new();
    let old = node.serve("1.8.2");
    let new = node.serve("1.9.6");
    assert_eq!(node.run("1.9.6", &["storage", "upgrade", "main"]).code, 0);
    assert_eq!(node.run("1.9.6", &["storage", "scan"]).code, 0);
    assert!(node.misuse().is_empty(), "{:?}", node.misuse());

    // 1.8.x has no zero-downtime row, and a 1.9.6 server is newer than a 1.8.2 command.
    assert_eq!(node.run("1.8.2", &["storage", "scan"]).code, 0);
    let records = node.misuse();
    assert_eq!(records.len(), 2, "{records:?}");
    assert!(
        records
            .iter()
            .all(|r| r["kind"] == "storage-command-while-server-running")
    );
    for server in [&old, &new] {
        let pid = format!("server pid {} ", server.child.id());
        assert!(
            records
                .iter()
                .any(|r| r["detail"].as_str().unwrap().contains(&pid)),
            "{pid}: {records:?}"
        );
    }

    assert_eq!(node.run("1.9.6", &["storage", "delete", "main"]).code, 0);
    let records = node.misuse();
    assert_eq!(records.len(), 4, "{records:?}");
    assert!(records[2..].iter().all(|r| {
        r["detail"]
            .as_str()
            .unwrap()
            .starts_with("`storage delete`")
    }));
}

#[test]
fn storage_upgrade_while_a_server_uses_the_same_sqlite_dir() {
    let node = Node::new().env("NUMARY_SIM_NODE", "n1");
    let elsewhere = node.sibling("other");
    let server = node.serve("1.8.2");
    // A server on another storage is none of this command's business.
    let other_server = elsewhere.serve("1.8.2");
    assert_eq!(node.run("1.8.2", &["storage", "upgrade", "main"]).code, 0);
    assert_eq!(
        node.run("1.8.2", &["storage", "list"]).code,
        0,
        "list is read-only: not recorded"
    );
    let records = node.misuse();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["kind"], "storage-command-while-server-running");
    let detail = records[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains(&format!("server pid {}", server.child.id())),
        "{detail}"
    );
    assert!(!detail.contains(&format!("pid {} ", other_server.child.id())));
    // Once the server is gone the same command is fine.
    assert_eq!(server.terminate().code(), Some(0));
    assert_eq!(node.run("1.8.2", &["storage", "scan"]).code, 0);
    assert_eq!(node.misuse().len(), 1);
}

#[test]
fn a_killed_server_is_not_counted_as_running() {
    let node = Node::new();
    let mut server = node.serve("1.8.2");
    server.child.kill().unwrap();
    server.child.wait().unwrap();
    // SIGKILL leaves the registry entry behind; the dead pid must not count.
    assert!(
        node.state
            .join("servers")
            .join(format!("{}.json", server.child.id()))
            .exists()
    );
    assert_eq!(node.run("1.8.2", &["storage", "upgrade", "main"]).code, 0);
    assert!(node.misuse().is_empty(), "{:?}", node.misuse());
}

#[test]
fn two_migrations_of_one_ledger_at_once() {
    let a = Node::new().env("NUMARY_SIM_NODE", "node-a");
    // Same storage dir for both, as two nodes sharing it would have.
    let dir = a.data_dir();
    let b = a
        .sibling("b")
        .env("NUMARY_SIM_NODE", "node-b")
        .env("NUMARY_STORAGE_DIR", dir.to_str().unwrap());
    a.set_fault("slow-migration", "node-a\n3\n");
    let first = a
        .command("1.8.2", &["storage", "upgrade", "main"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let locks = a.state.join("locks");
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::fs::read_dir(&locks).map(|d| d.count()).unwrap_or(0) == 0 {
        assert!(
            Instant::now() < deadline,
            "first migration never took its lock"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let second = b.run("1.8.2", &["storage", "upgrade", "main"]);
    let first = first.wait_with_output().unwrap();
    assert!(
        first.status.success(),
        "{}",
        String::from_utf8_lossy(&first.stderr)
    );
    // The loser fails on the version rows the winner committed, as the real runner does.
    assert_eq!(second.code, 1);
    assert!(
        second
            .stderr
            .contains("UNIQUE constraint failed: migrations.version"),
        "{}",
        second.stderr
    );
    let records = a.misuse();
    assert_eq!(records.len(), 1, "{records:?}");
    assert_eq!(records[0]["kind"], "concurrent-migration");
    assert_eq!(records[0]["node"], "node-b");
    assert!(
        records[0]["detail"]
            .as_str()
            .unwrap()
            .contains("(node node-a, version 1.8.2)")
    );
    assert_eq!(
        std::fs::read_dir(&locks).unwrap().count(),
        0,
        "the winner released its lock"
    );
}
