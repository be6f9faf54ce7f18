//! `server start`: the info and health endpoints per release, lazy per-ledger migration and
//! creation, writes and reads, signals and a busy port.

mod common;

use common::{Node, PgDb, pg_node, range, sqlite_versions};
use serde_json::Value;

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

#[test]
fn info_reports_version_driver_and_ledgers_in_go_field_order() {
    let node = Node::new();
    node.run("1.8.2", &["storage", "upgrade", "main"]);
    let server = node.serve("1.8.2");
    let (status, body) = server.get("/_info");
    assert_eq!(status, 200);
    assert_eq!(
        body,
        r#"{"data":{"server":"numary-ledger","version":"1.8.2","config":{"storage":{"driver":"sqlite","ledgers":["main"]}}}}"#
    );
}

#[test]
fn health_shape_depends_on_release_and_healthcheck_exists_from_1_9() {
    let node = Node::new();
    let server = node.serve("1.7.4");
    assert_eq!(server.get("/_health"), (200, "{}".to_owned()));
    assert_eq!(server.get("/_healthcheck").0, 404);
    drop(server);
    let server = node.serve("1.8.2");
    assert_eq!(
        server.get("/_health"),
        (200, r#"{"sqlite":"OK"}"#.to_owned())
    );
    assert_eq!(server.get("/_healthcheck").0, 404);
    drop(server);
    let server = node.serve("1.9.0");
    assert_eq!(
        server.get("/_healthcheck"),
        (200, r#"{"sqlite":"OK"}"#.to_owned())
    );
}

#[test]
fn start_migrates_nothing_and_the_first_request_creates_and_migrates_a_ledger() {
    let node = Node::new();
    let server = node.serve("1.9.6");
    assert!(
        !node.data_dir().join("numary_fresh.db").exists(),
        "start touches no ledger"
    );
    let (status, body) = server.get("/fresh/stats");
    assert_eq!(status, 200, "{body}");
    assert_eq!(json(&body)["data"]["transactions"], 0);
    assert_eq!(
        sqlite_versions(&node.data_dir().join("numary_fresh.db")),
        range(0, 20)
    );
    let (_, body) = server.get("/_info");
    assert_eq!(
        json(&body)["data"]["config"]["storage"]["ledgers"],
        serde_json::json!(["fresh"])
    );

    let (status, body) = server.get("/fresh/_info");
    assert_eq!(status, 200);
    let migrations = json(&body)["data"]["storage"]["migrations"].clone();
    assert_eq!(migrations.as_array().map(Vec::len), Some(21));
    assert_eq!(migrations[17]["name"], "optimized-segments");
    assert!(
        migrations
            .as_array()
            .unwrap()
            .iter()
            .all(|m| m["state"] == "DONE")
    );
}

#[test]
fn ledger_info_is_a_1_9_route() {
    let node = Node::new();
    let server = node.serve("1.8.2");
    assert_eq!(server.get("/main/_info").0, 404);
    assert!(
        !node.data_dir().join("numary_main.db").exists(),
        "an unmatched route creates nothing"
    );
}

#[test]
fn transactions_written_over_http_are_listed_and_counted() {
    let node = Node::new();
    let server = node.serve("1.8.2");
    for amount in [100, 250] {
        let body = format!(
            r#"{{"postings":[{{"source":"world","destination":"users:001","amount":{amount},"asset":"USD/2"}}],"metadata":{{"k":"v"}}}}"#
        );
        let (status, reply) = server.post("/main/transactions", &body);
        assert_eq!(status, 200, "{reply}");
        assert_eq!(json(&reply)["data"][0]["postings"][0]["amount"], amount);
    }
    let (status, body) = server.get("/main/transactions");
    assert_eq!(status, 200);
    let data = json(&body)["cursor"]["data"].clone();
    assert_eq!(data.as_array().map(Vec::len), Some(2));
    assert_eq!(data[0]["txid"], 1);
    assert_eq!(data[1]["metadata"]["k"], "v");
    assert_eq!(
        server.get("/main/stats").1,
        r#"{"data":{"accounts":2,"transactions":2}}"#
    );
    let (status, _) = server.post("/main/transactions", r#"{"postings":[]}"#);
    assert_eq!(status, 400);
}

#[test]
fn sigterm_exits_zero_and_deregisters() {
    let node = Node::new();
    let server = node.serve("1.8.2");
    let registry = node
        .state
        .join("servers")
        .join(format!("{}.json", server.child.id()));
    assert!(registry.is_file());
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
    assert!(!registry.exists());
}

#[test]
fn a_busy_port_fails_like_go_and_prints_nothing_on_success() {
    let node = Node::new();
    let server = node.serve("1.8.2");
    let run = node.run_env(
        "1.8.2",
        &["server", "start"],
        &[(
            "NUMARY_SERVER_HTTP_BIND_ADDRESS",
            &format!("127.0.0.1:{}", server.port),
        )],
    );
    assert_eq!(run.code, 1);
    let expected = format!(
        "Error: listen tcp 127.0.0.1:{}: bind: address already in use\n",
        server.port
    );
    assert!(run.stderr.starts_with(&expected), "{}", run.stderr);
    let status = server.terminate();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn server_output_is_only_the_noise_line() {
    let node = Node::new();
    let mut server = node.serve("1.8.2");
    server.get("/main/stats");
    let pid = i32::try_from(server.child.id()).unwrap();
    // SAFETY: SIGTERM to our own child.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let mut stdout = String::new();
    let mut stderr = String::new();
    use std::io::Read;
    server
        .child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    server
        .child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(
        stdout.starts_with("loading config file: ") && stdout.lines().count() == 1,
        "{stdout}"
    );
    assert_eq!(stderr, "");
}

#[test]
fn postgres_server_reports_postgres_health_and_migrates_lazily() {
    let db = PgDb::new();
    let node = pg_node(&db);
    let server = node.serve("1.10.3");
    assert_eq!(
        server.get("/_health"),
        (200, r#"{"postgres":"OK"}"#.to_owned())
    );
    assert_eq!(
        server.get("/_healthcheck"),
        (200, r#"{"postgres":"OK"}"#.to_owned())
    );
    let (status, _) = server.post(
        "/orders/transactions",
        r#"{"postings":[{"source":"world","destination":"shop","amount":5,"asset":"EUR"}]}"#,
    );
    assert_eq!(status, 200);
    assert_eq!(db.versions("orders"), range(0, 20));
    assert_eq!(db.count("SELECT COUNT(*) FROM orders.log"), 1);
    assert_eq!(db.count("SELECT COUNT(*) FROM orders.postings"), 1);
    let (_, body) = server.get("/_info");
    assert_eq!(
        json(&body)["data"]["config"]["storage"]["driver"],
        "postgres"
    );
}

#[test]
fn the_process_is_named_numary_for_pgrep() {
    let node = Node::new();
    let server = node.serve("1.8.2");
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", server.child.id())).unwrap();
    assert_eq!(comm, "numary\n");
}

#[test]
fn sqlite_health_checks_the_storage_dir_from_1_8_only() {
    let node = Node::new();
    let server = node.serve("1.8.2");
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    let (status, body) = server.get("/_health");
    assert_eq!(status, 500);
    assert!(body.starts_with(r#"{"sqlite":"open "#), "{body}");
    drop(server);
    let server = node.serve("1.7.4");
    std::fs::remove_dir_all(node.data_dir()).unwrap();
    assert_eq!(server.get("/_health"), (200, "{}".to_owned()));
}

#[test]
fn a_running_server_keeps_its_sqlite_files_open() {
    let node = Node::new();
    let server = node.serve("1.8.2");
    assert_eq!(server.get("/main/stats").0, 200);
    let open: Vec<std::path::PathBuf> =
        std::fs::read_dir(format!("/proc/{}/fd", server.child.id()))
            .unwrap()
            .flatten()
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .collect();
    let data = std::fs::canonicalize(node.data_dir()).unwrap();
    assert!(open.contains(&data.join("numary_main.db")), "{open:?}");
    assert!(open.contains(&data.join("numary__system.db")), "{open:?}");
}
