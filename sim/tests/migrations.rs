//! Migration rows and tables per release, on SQLite files and on PostgreSQL schemas, the
//! one-transaction runner, and the 1.7.5-1.7.8 → 1.8.x number collision.

mod common;

use common::{Node, PgDb, pg_node, range, sqlite_versions};

fn sqlite_rows_after_upgrade(version: &str) -> Vec<u32> {
    let node = Node::new();
    let run = node.run(version, &["storage", "upgrade", "main"]);
    assert_eq!(run.code, 0, "{version}: {}", run.stderr);
    sqlite_versions(&node.data_dir().join("numary_main.db"))
}

#[test]
fn sqlite_records_every_number_each_release_ships() {
    // Postgres-only migrations have no SQLite handler but still record their version.
    assert_eq!(sqlite_rows_after_upgrade("1.3.3"), range(0, 7));
    assert_eq!(sqlite_rows_after_upgrade("1.4.6"), range(0, 6));
    assert_eq!(sqlite_rows_after_upgrade("1.5.1"), range(0, 7));
    assert_eq!(sqlite_rows_after_upgrade("1.6.1"), range(0, 8));
    assert_eq!(sqlite_rows_after_upgrade("1.7.4"), range(0, 10));
    assert_eq!(sqlite_rows_after_upgrade("1.7.8"), range(0, 11));
    assert_eq!(sqlite_rows_after_upgrade("1.8.0"), range(0, 16));
    assert_eq!(sqlite_rows_after_upgrade("1.9.5"), range(0, 19));
    assert_eq!(sqlite_rows_after_upgrade("1.10.0"), range(0, 17));
    assert_eq!(sqlite_rows_after_upgrade("1.10.2"), range(0, 19));
    assert_eq!(sqlite_rows_after_upgrade("1.10.16"), range(0, 20));
    assert_eq!(sqlite_rows_after_upgrade("1.11.0"), range(0, 21));
}

#[test]
fn sqlite_upgrade_keeps_data_and_is_idempotent() {
    let node = Node::new();
    assert_eq!(
        node.run(
            "1.6.1",
            &["sim", "seed", "--ledger", "main", "--transactions", "25"]
        )
        .code,
        0
    );
    let db = node.data_dir().join("numary_main.db");
    assert_eq!(sqlite_versions(&db), range(0, 8));

    let run = node.run("1.8.3", &["storage", "upgrade", "main"]);
    assert_eq!(run.body(), "Storage 'main' migrated\r\n");
    assert_eq!(sqlite_versions(&db), range(0, 17));
    let run = node.run("1.8.3", &["storage", "upgrade", "main"]);
    assert_eq!(run.body(), "Storage 'main' left in place\r\n");

    let conn = rusqlite::Connection::open(&db).unwrap();
    let count: i64 = conn
        .query_row("SELECT COUNT(*) FROM transactions", [], |r| r.get(0))
        .unwrap();
    assert_eq!(count, 25);
    let idempotency: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'idempotency'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(idempotency, 1, "15-add-idempotency-table has a SQLite half");
}

#[test]
fn a_release_older_than_the_registry_records_no_rows() {
    let node = Node::new();
    assert_eq!(node.run("1.2.1", &["storage", "init"]).code, 0);
    let conn = rusqlite::Connection::open(node.data_dir().join("numary_default.db")).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT COUNT(*) FROM sqlite_master WHERE name = 'transactions'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1);
    let journal: String = conn
        .query_row("PRAGMA journal_mode", [], |r| r.get(0))
        .unwrap();
    assert_eq!(
        journal, "wal",
        "releases before 1.3.2 opened SQLite with _journal=WAL"
    );
}

#[test]
fn postgres_records_numbers_and_tables_per_release() {
    let db = PgDb::new();
    let node = pg_node(&db);
    let cases = [
        ("1.4.6", "l146", range(0, 6)),
        ("1.5.0", "l150", range(0, 7)),
        ("1.6.1", "l161", range(0, 8)),
        ("1.7.4", "l174", range(0, 10)),
        ("1.7.6", "l176", range(0, 11)),
        ("1.8.0", "l180", range(0, 16)),
        ("1.8.2", "l182", range(0, 17)),
        ("1.9.4", "l194", range(0, 19)),
        ("1.9.6", "l196", range(0, 20)),
        ("1.10.0", "l1100", range(0, 17)),
        ("1.11.0", "l1110", range(0, 21)),
    ];
    for (version, ledger, expected) in &cases {
        let run = node.run(version, &["storage", "upgrade", ledger]);
        assert_eq!(
            (run.code, run.body()),
            (0, format!("Storage '{ledger}' migrated\r\n").as_str()),
            "{version}: {}",
            run.stderr
        );
        assert_eq!(&db.versions(ledger), expected, "{version}");
    }
    let base = [
        "accounts",
        "log",
        "mapping",
        "migrations",
        "transactions",
        "volumes",
    ];
    assert_eq!(db.tables("l174"), base);
    let mut with_postings = base.to_vec();
    with_postings.push("postings");
    with_postings.sort_unstable();
    assert_eq!(db.tables("l176"), with_postings, "1.7.5-1.7.8 add postings");
    let mut with_idempotency = base.to_vec();
    with_idempotency.push("idempotency");
    with_idempotency.sort_unstable();
    assert_eq!(
        db.tables("l180"),
        with_idempotency,
        "1.8.0 adds idempotency, no postings"
    );
    with_idempotency.push("postings");
    with_idempotency.sort_unstable();
    assert_eq!(db.tables("l182"), with_idempotency);

    let registry = db.count("SELECT COUNT(*) FROM _system.ledgers");
    assert_eq!(registry, i64::try_from(cases.len()).unwrap());
    let extensions =
        db.count("SELECT COUNT(*) FROM pg_extension WHERE extname IN ('pgcrypto', 'pg_trgm')");
    assert_eq!(extensions, 2);
    assert_eq!(db.count("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = '_system' AND table_name = 'configuration'"), 1);
}

#[test]
fn postgres_migration_17_of_1_8_1_fails_on_a_ledger_migrated_by_1_7_6() {
    let db = PgDb::new();
    let node = pg_node(&db);
    assert_eq!(
        node.run(
            "1.7.6",
            &["sim", "seed", "--ledger", "main", "--transactions", "3"]
        )
        .code,
        0
    );
    assert_eq!(db.versions("main"), range(0, 11));

    let run = node.run("1.8.1", &["storage", "upgrade", "main"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with(
            "Error: ERROR: relation \"postings_src\" already exists (SQLSTATE 42P07)\n"
        ),
        "{}",
        run.stderr
    );
    assert!(!run.stdout.contains("migrated"));
    // One transaction for the batch: 12-16, which ran before 17 failed, were rolled back.
    assert_eq!(db.versions("main"), range(0, 11));
    assert_eq!(db.count("SELECT COUNT(*) FROM main.transactions"), 3);
}

#[test]
fn postgres_1_8_0_skips_its_own_11_on_a_ledger_migrated_by_1_7_6() {
    let db = PgDb::new();
    let node = pg_node(&db);
    assert_eq!(
        node.run(
            "1.7.6",
            &["sim", "seed", "--ledger", "main", "--transactions", "4"]
        )
        .code,
        0
    );
    let run = node.run("1.8.0", &["storage", "upgrade", "main"]);
    assert_eq!(run.body(), "Storage 'main' migrated\r\n", "{}", run.stderr);
    assert_eq!(db.versions("main"), range(0, 16));
    // 1.8.2 then applies 17 with IF NOT EXISTS and re-inserts every posting: duplicates.
    let run = node.run("1.8.2", &["storage", "upgrade", "main"]);
    assert_eq!(run.body(), "Storage 'main' migrated\r\n", "{}", run.stderr);
    assert_eq!(db.count("SELECT COUNT(*) FROM main.postings"), 8);
    assert_eq!(db.count("SELECT COUNT(*) FROM main.transactions"), 4);
}

#[test]
fn postgres_direct_1_7_4_to_1_8_2_keeps_transactions() {
    let db = PgDb::new();
    let node = pg_node(&db);
    assert_eq!(
        node.run(
            "1.7.4",
            &["sim", "seed", "--ledger", "books", "--transactions", "12"]
        )
        .code,
        0
    );
    let run = node.run("1.8.2", &["storage", "upgrade", "books"]);
    assert_eq!(run.body(), "Storage 'books' migrated\r\n", "{}", run.stderr);
    assert_eq!(db.versions("books"), range(0, 17));
    assert_eq!(db.count("SELECT COUNT(*) FROM books.transactions"), 12);
    assert_eq!(db.count("SELECT COUNT(*) FROM books.postings"), 12);
    let run = node.run("1.8.2", &["storage", "upgrade", "books"]);
    assert_eq!(run.body(), "Storage 'books' left in place\r\n");
}

#[test]
fn postgres_scan_registers_any_schema_with_a_transactions_table() {
    let db = PgDb::new();
    let node = pg_node(&db);
    db.client()
        .batch_execute("CREATE SCHEMA billing; CREATE TABLE billing.transactions (id int); CREATE SCHEMA other; CREATE TABLE other.t (id int);")
        .unwrap();
    let run = node.run("1.8.2", &["storage", "scan"]);
    assert_eq!(
        run.body(),
        "Registering ledger 'billing'\r\nLedger 'billing' registered\r\n",
        "{}",
        run.stderr
    );
    let run = node.run("1.8.2", &["storage", "scan"]);
    assert_eq!(
        run.body(),
        "Registering ledger 'billing'\r\nLedger 'billing' already registered\r\n"
    );
    assert_eq!(
        node.run("1.8.2", &["storage", "list"]).body(),
        "Ledgers:\n- billing\n"
    );
}

#[test]
fn postgres_pg_trgm_is_required_from_1_8() {
    let db = PgDb::new();
    let role = format!("limited_{}", std::process::id());
    let dbname = db.url.rsplit('/').next().unwrap().to_owned();
    db.client()
        .batch_execute(&format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN PASSWORD 'pw'; \
             GRANT CONNECT ON DATABASE {dbname} TO {role}; CREATE EXTENSION IF NOT EXISTS pgcrypto"
        ))
        .unwrap();
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let host_part = rest.split_once('@').map_or(rest, |(_, h)| h);
    let url = format!("{scheme}://{role}:pw@{host_part}");
    let node = Node::new()
        .env("NUMARY_STORAGE_DRIVER", "postgres")
        .env("NUMARY_STORAGE_POSTGRES_CONN_STRING", &url);
    let run = node.run("1.8.0", &["storage", "list"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with(
            "Error: ERROR: permission denied to create extension \"pg_trgm\" (SQLSTATE 42501)\n"
        ),
        "{}",
        run.stderr
    );
    // 1.7.4 never asks for pg_trgm: with the same role it gets further and fails on `_system`.
    let run = node.run("1.7.4", &["storage", "list"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("Error: ERROR: permission denied for database"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains("pg_trgm"));
    drop(db);
    if let Ok(url) = std::env::var("FLEETUP_TEST_PG_URL")
        && let Ok(mut admin) = postgres::Client::connect(&url, postgres::NoTls)
    {
        let _ = admin.batch_execute(&format!("DROP ROLE IF EXISTS {role}"));
    }
}

#[test]
fn postgres_errors_name_the_target_but_never_the_password() {
    let db = PgDb::new();
    let (scheme, rest) = db.url.split_once("://").unwrap();
    let (userinfo, host_part) = rest.split_once('@').unwrap();
    let user = userinfo.split(':').next().unwrap();
    let secret = "Wr0ng-S3cret-xyz";
    let wrong = format!("{scheme}://{user}:{secret}@{host_part}");
    let host = host_part.split(':').next().unwrap();
    let refused = format!("{scheme}://{user}:{secret}@{host}:1/postgres");
    let dial = format!("dial error (dial tcp {host}:1: connect: connection refused)");
    for (url, expected) in [
        (
            &wrong,
            "server error (FATAL: password authentication failed for user",
        ),
        (&refused, dial.as_str()),
    ] {
        let run = Node::new().run_env(
            "1.8.2",
            &["storage", "list"],
            &[
                ("NUMARY_STORAGE_DRIVER", "postgres"),
                ("NUMARY_STORAGE_POSTGRES_CONN_STRING", url),
            ],
        );
        assert_eq!(run.code, 1);
        assert!(
            run.stderr.starts_with(&format!(
                "Error: failed to connect to `host={host} user={user} database="
            )),
            "{}",
            run.stderr
        );
        assert!(run.stderr.contains(expected), "{}", run.stderr);
        assert!(!run.stderr.contains(secret) && !run.stdout.contains(secret));
    }
}
