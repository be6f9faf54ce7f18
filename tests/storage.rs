//! Storages on the practice lab (real sshd, the simulator, a real Postgres): nodes share a storage
//! only when they reach one database. A `--limit` leaving out a node on the shared database is
//! refused by `check` and `upgrade` before anything changes; two nodes each on their own
//! "local" Postgres are each backed up and migrated. Needs `FLEETUP_TEST_PG_URL`.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use fleetup::exit_code;
use fleetup::lab::{Driver, Lab, LabGuard};
use lab_fixture::{api_version, both, code, fleetup, json, release, spec, stderr, stdout};
use serde_json::Value;

/// Every line the simulator appended to `migrations.log`.
fn migration_lines(lab: &Lab) -> Vec<Value> {
    let path = lab.sim_state_dir().join("migrations.log");
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("migrations.log line"))
        .collect()
}

fn run(lab: &Lab, command: &str, binary: &Path, extra: &[&str]) -> Output {
    let mut args = vec![
        command,
        "--to",
        "1.8.2",
        "--binary",
        binary.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    fleetup(&lab.inventory_path(), &args)
}

#[test]
fn a_limit_leaving_out_a_node_on_the_shared_database_is_refused_before_any_change() {
    let mut s = spec(Driver::Postgres, 3, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let new = release(&lab, "1.8.2");
    let tree = lab.tree_digest().unwrap();
    let database = lab.database_digest().unwrap();
    let migrations = migration_lines(&lab);

    // `check` says it, with the exit code `upgrade` gives.
    let check = run(
        &lab,
        "check",
        &new,
        &["--limit", "node-1,node-2", "--format", "json"],
    );
    assert_eq!(code(&check), exit_code::BLOCKED, "{}", both(&check));
    let audit = json(&check);
    assert_eq!(audit["outcome"], "blocked");
    let left_out: Vec<&Value> = audit["findings"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|f| f["check"] == "left-out")
        .collect();
    assert_eq!(left_out.len(), 1, "{:#?}", audit["findings"]);
    let detail = left_out[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("`node-3` (runs `1.7.4`) is on storage `lab-postgres`"),
        "{detail}"
    );
    assert_eq!(left_out[0]["ok"], false);
    let hint = left_out[0]["hint"].as_str().unwrap();
    assert!(hint.contains("`--limit node-1,node-2,node-3`"), "{hint}");
    let human = run(&lab, "check", &new, &["--limit", "node-1,node-2"]);
    assert_eq!(code(&human), exit_code::BLOCKED, "{}", both(&human));
    assert!(stdout(&human).contains("`node-3`"), "{}", both(&human));

    let out = run(&lab, "upgrade", &new, &["--limit", "node-1,node-2"]);
    assert_eq!(code(&out), exit_code::BLOCKED, "{}", both(&out));
    let err = stderr(&out);
    assert!(
        err.contains("left-out") && err.contains("`node-3`") && err.contains("nothing was changed"),
        "{}",
        both(&out)
    );
    assert!(
        err.contains("`--limit node-1,node-2,node-3`"),
        "{}",
        both(&out)
    );

    // Every node as it was: binaries, files, database, and no migration ran.
    for n in &lab.nodes {
        assert_eq!(
            n.installed_version().as_deref(),
            Some("1.7.4"),
            "{}",
            n.name
        );
        assert!(!n.service_running(), "{} stays stopped", n.name);
    }
    assert_eq!(
        lab.tree_digest().unwrap(),
        tree,
        "no file changed on any node"
    );
    assert_eq!(
        lab.database_digest().unwrap(),
        database,
        "the database is unchanged"
    );
    assert_eq!(migration_lines(&lab), migrations, "no migration ran");
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new());

    // Selecting every node of the storage is what it takes.
    let all = run(&lab, "check", &new, &["--limit", "node-1,node-2,node-3"]);
    assert_eq!(code(&all), exit_code::SUCCESS, "{}", both(&all));
    assert!(
        stdout(&all).contains("strategy offline (requested auto)"),
        "{}",
        both(&all)
    );

    // `check` never promises what `upgrade` refuses: a forced zero-downtime strategy is
    // blocked in both, with the same exit code, and nothing changes.
    for strategy in ["rolling", "replace"] {
        let check = run(
            &lab,
            "check",
            &new,
            &["--strategy", strategy, "--format", "json"],
        );
        assert_eq!(code(&check), exit_code::BLOCKED, "{}", both(&check));
        let audit = json(&check);
        assert!(
            audit["findings"]
                .as_array()
                .unwrap()
                .iter()
                .any(|f| f["check"] == "strategy"
                    && f["ok"] == false
                    && f["detail"]
                        .as_str()
                        .unwrap()
                        .contains(&format!("`{strategy}`"))),
            "{:#?}",
            audit["findings"]
        );
        let out = run(&lab, "upgrade", &new, &["--strategy", strategy]);
        assert_eq!(code(&out), exit_code::BLOCKED, "{}", both(&out));
        assert!(
            stderr(&out).contains("--strategy offline"),
            "{}",
            both(&out)
        );
    }
    assert_eq!(
        lab.tree_digest().unwrap(),
        tree,
        "no file changed on any node"
    );
    assert_eq!(migration_lines(&lab), migrations, "no migration ran");
}

#[test]
fn two_nodes_each_on_their_own_local_postgres_are_each_backed_up_and_migrated() {
    let mut s = spec(Driver::Postgres, 2, "1.7.4");
    s.pg_per_node = true;
    let lab = LabGuard::up(&s).expect("lab up");
    let pg = lab.postgres.clone().unwrap();
    let new = release(&lab, "1.8.2");
    // Each node's env file reaches its database at 127.0.0.1, the same host for both.
    for n in &lab.nodes {
        let env = std::fs::read_to_string(n.paths().env_file()).unwrap();
        assert!(
            env.contains("@127.0.0.1:") && env.contains(&pg.node_database(&n.name)),
            "{}",
            n.name
        );
    }

    let check = run(&lab, "check", &new, &["--stop", "--format", "json"]);
    assert_eq!(code(&check), exit_code::SUCCESS, "{}", both(&check));
    let audit = json(&check);
    assert_eq!(audit["plan"]["strategy"], "offline");
    assert_eq!(audit["plan"]["storages"].as_array().unwrap().len(), 2);

    let out = run(&lab, "upgrade", &new, &["--stop"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));

    for n in &lab.nodes {
        assert_eq!(
            n.installed_version().as_deref(),
            Some("1.8.2"),
            "{}",
            n.name
        );
        assert_eq!(api_version(&lab, &n.name).as_deref(), Some("1.8.2"));
        // A dump of its own database, on its own disk.
        let dumps: Vec<_> = std::fs::read_dir(n.paths().backup_dir())
            .unwrap()
            .flatten()
            .map(|run| run.path().join("postgres.dump"))
            .filter(|d| d.is_file())
            .collect();
        assert_eq!(dumps.len(), 1, "{}: {dumps:?}", n.name);
        let list = lab
            .node_database(&n.name)
            .unwrap()
            .unwrap()
            .run("pg_restore", &["--list", dumps[0].to_str().unwrap()])
            .expect("the dump reads back");
        let list = String::from_utf8_lossy(&list);
        assert!(
            list.contains(&pg.node_database(&n.name)),
            "{}: the dump is of its own database:\n{list}",
            n.name
        );
    }

    // Each database migrated once per ledger, by its own node, with `storage upgrade`.
    let mut by_storage: BTreeMap<String, Vec<(String, String, String)>> = BTreeMap::new();
    for m in migration_lines(&lab)
        .iter()
        .filter(|m| m["version"] == "1.8.2")
    {
        by_storage
            .entry(m["storage"].as_str().unwrap().to_string())
            .or_default()
            .push((
                m["node"].as_str().unwrap().to_string(),
                m["ledger"].as_str().unwrap().to_string(),
                format!(
                    "{} / {}",
                    m["via"].as_str().unwrap(),
                    m["result"].as_str().unwrap()
                ),
            ));
    }
    assert_eq!(by_storage.len(), 2, "{by_storage:#?}");
    for n in &lab.nodes {
        let db = pg.node_database(&n.name);
        let (_, mut migrated) = by_storage
            .iter()
            .find(|(storage, _)| storage.ends_with(&format!("/{db}")))
            .map(|(s, m)| (s.clone(), m.clone()))
            .unwrap_or_else(|| panic!("{db} was not migrated: {by_storage:#?}"));
        migrated.sort();
        let expected: Vec<(String, String, String)> = ["default", "payments"]
            .iter()
            .map(|l| {
                (
                    n.name.clone(),
                    l.to_string(),
                    "storage upgrade / committed".to_string(),
                )
            })
            .collect();
        assert_eq!(migrated, expected, "{db}");
    }
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new());
}
