//! `fleetup check` on the practice lab: real sshd, the simulator as each node's `numary`. Proves
//! that the audit changes nothing (every file under every node's root, and the Postgres
//! database, identical before and after; no lock, no temp file), its exit codes (ready, nothing
//! to do, blocked), each refusal with the finding that explains it, the plan id's stability,
//! and the JSON contract. The Postgres test needs `FLEETUP_TEST_PG_URL` (scripts/pg.sh start).

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleetup::exit_code;
use fleetup::lab::{Driver, Lab, LabGuard};
use lab_fixture::{code, fleetup, json, pg_url, release, spec, stderr, stdout};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// A lab whose services were never started: cleanly stopped.
fn stopped_lab(nodes: usize, version: &str) -> LabGuard {
    let mut s = spec(Driver::Sqlite, nodes, version);
    s.start = false;
    LabGuard::up(&s).expect("lab up")
}

fn check(lab: &Lab, to: &str, binary: &Path, extra: &[&str]) -> Output {
    let mut args = vec!["check", "--to", to, "--binary", binary.to_str().unwrap()];
    args.extend_from_slice(extra);
    fleetup(&lab.inventory_path(), &args)
}

fn findings(v: &Value) -> &Vec<Value> {
    v["findings"].as_array().expect("findings array")
}

/// The failed findings of `check` on `host`.
fn failed<'a>(v: &'a Value, host: &str, check: &str) -> Vec<&'a Value> {
    findings(v)
        .iter()
        .filter(|f| f["host"] == host && f["check"] == check && f["ok"] == false)
        .collect()
}

fn passed(v: &Value, host: &str, check: &str) -> bool {
    findings(v)
        .iter()
        .any(|f| f["host"] == host && f["check"] == check && f["ok"] == true)
}

/// No lock, no staged release, no partial upload anywhere under the node roots.
fn assert_no_trace(lab: &Lab) {
    for node in &lab.nodes {
        let releases = node.paths().releases_dir();
        let entries: Vec<String> = std::fs::read_dir(&releases)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            entries,
            [lab.version.to_string()],
            "{}: the releases dir holds only the installed release",
            node.name
        );
    }
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new());
}

#[test]
fn check_on_a_running_then_stopped_lab_changes_nothing_and_its_plan_id_follows_the_fleet() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 3, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");

    // Running nodes without `--stop`: blocked, each running node named.
    let before = lab.tree_digest().unwrap();
    let out = check(&lab, "1.8.2", &new, &["--format", "json"]);
    assert_eq!(code(&out), exit_code::BLOCKED, "{}", stderr(&out));
    let running = json(&out);
    assert_eq!(running["outcome"], "blocked");
    assert_eq!(running["exit_code"], exit_code::BLOCKED);
    for node in ["node-1", "node-2", "node-3"] {
        let f = failed(&running, node, "stopped");
        assert_eq!(f.len(), 1, "{node}: {f:?}");
        assert!(
            f[0]["detail"].as_str().unwrap().contains("is running"),
            "{f:?}"
        );
        assert!(f[0]["hint"].as_str().unwrap().contains("--stop"), "{f:?}");
        assert!(passed(&running, node, "upgrade-path"), "{node}");
        assert!(passed(&running, node, "lock"), "{node}");
    }
    assert_eq!(lab.tree_digest().unwrap(), before, "check changed a node");
    assert_no_trace(&lab);

    // `--stop` lifts that refusal (fleetup would stop them through the service manager).
    let out = check(&lab, "1.8.2", &new, &["--stop", "--format", "json"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", stdout(&out));
    for node in &lab.nodes {
        assert!(node.service_running(), "check stopped `{}`", node.name);
    }
    assert_eq!(lab.tree_digest().unwrap(), before);

    // Stopped cleanly: ready, the same plan id twice, another one than the running fleet's.
    lab.stop_services().unwrap();
    let stopped = lab.tree_digest().unwrap();
    let first = check(&lab, "1.8.2", &new, &["--format", "json"]);
    assert_eq!(code(&first), exit_code::SUCCESS, "{}", stdout(&first));
    let first = json(&first);
    assert_eq!(first["outcome"], "ready");
    let second = json(&check(&lab, "1.8.2", &new, &["--format", "json"]));
    let id = first["plan_id"].as_str().unwrap();
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));
    assert_eq!(
        second["plan_id"], id,
        "an unchanged fleet keeps its plan id"
    );
    assert_ne!(
        running["plan_id"], id,
        "stopping the fleet changes the plan id"
    );

    assert_eq!(lab.tree_digest().unwrap(), stopped, "check changed a node");
    assert_no_trace(&lab);
    for node in &lab.nodes {
        assert!(!node.service_running(), "check started `{}`", node.name);
    }
}

#[test]
fn a_stopped_lab_is_ready_with_every_check_passed_and_the_json_contract() {
    let lab = stopped_lab(3, "1.7.4");
    let new = release(&lab, "1.8.2");
    let same = release(&lab, "1.7.4");
    let before = lab.tree_digest().unwrap();

    let out = check(&lab, "1.8.2", &new, &["--format", "json"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", stdout(&out));
    let v = json(&out);
    assert_eq!(v["outcome"], "ready");
    assert_eq!(v["exit_code"], 0);
    for node in ["node-1", "node-2", "node-3"] {
        for c in [
            "reachable",
            "upgrade-path",
            "stopped",
            "api-port",
            "hot-journal",
            "ledgers",
            "disk-space",
            "lock",
        ] {
            assert!(passed(&v, node, c), "{node}: no passing `{c}`");
        }
    }
    assert!(findings(&v).iter().all(|f| f["ok"] == true), "{v}");
    let fleet_checks: Vec<&str> = findings(&v)
        .iter()
        .filter(|f| f["host"].is_null())
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(fleet_checks, ["binary-sha256", "binary-version"]);
    assert!(findings(&v).iter().any(|f| {
        f["check"] == "binary-version"
            && f["detail"]
                .as_str()
                .unwrap()
                .contains("prints version `1.8.2` here")
    }));

    // The check is journaled beside the inventory: plan id, every finding, the outcome.
    let runs = fleetup::journal::list_journals(&lab.dir.join(".fleetup/runs")).unwrap();
    assert_eq!(runs.len(), 1, "one journal per check");
    let j = &runs[0];
    assert_eq!(j.header.command, "check");
    assert_eq!(j.header.target, "1.8.2");
    let mode = std::fs::metadata(&j.path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let plan_ready: Vec<&Value> = j
        .events
        .iter()
        .filter(|e| e["event"] == "plan_ready")
        .collect();
    assert_eq!(plan_ready.len(), 1);
    assert_eq!(plan_ready[0]["plan_id"], v["plan_id"]);
    let results = j
        .events
        .iter()
        .filter(|e| e["event"] == "check_result")
        .count();
    assert_eq!(results, findings(&v).len());
    assert_eq!(j.outcome(), "ready");
    assert_eq!(j.finished().unwrap()["exit_code"], 0);

    // The plan, each step marked per host, the facts.
    assert_eq!(v["plan"]["target"], "1.8.2");
    assert_eq!(v["plan"]["strategy"], "offline");
    let steps = v["steps"].as_array().unwrap();
    assert_eq!(steps.len(), v["plan"]["steps"].as_array().unwrap().len());
    let kinds: Vec<&str> = steps.iter().map(|s| s["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "preflight",
            "lock",
            "confirm_stopped",
            "backup",
            "stage",
            "migrate",
            "switch",
            "start_service",
            "health_gate",
            "start_service",
            "health_gate",
            "unlock"
        ]
    );
    for s in steps {
        for h in s["hosts"].as_array().unwrap() {
            assert_eq!(h["mark"], "will-do", "{s}");
        }
    }
    assert_eq!(v["facts"]["node-2"]["installed_version"], "1.7.4");

    // The human audit says the same.
    let human = check(&lab, "1.8.2", &new, &[]);
    assert_eq!(code(&human), exit_code::SUCCESS);
    let text = stdout(&human);
    let id = v["plan_id"].as_str().unwrap();
    assert!(text.contains(&format!("plan id: {id}")), "{text}");
    assert!(text.contains("result: ready"), "{text}");
    // A 3-node audit fits a screen; `-v` adds each host's mark and commands.
    assert!(text.lines().count() <= 40, "{text}");
    assert!(!text.contains("$ "), "{text}");
    let verbose = stdout(&check(&lab, "1.8.2", &new, &["-v"]));
    assert!(
        verbose.contains("node-1, node-2, node-3: will do"),
        "{verbose}"
    );
    assert!(verbose.contains("        $ "), "{verbose}");

    // The target's binary everywhere but every node stopped: the goal (serving) is not reached;
    // the storage already holds every migration of 1.7.4, so there is no backup and no
    // migration to plan, only the starts.
    let out = check(&lab, "1.7.4", &same, &["--format", "json"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", stdout(&out));
    let v = json(&out);
    let kinds: Vec<&str> = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert!(
        !kinds.contains(&"backup") && !kinds.contains(&"migrate"),
        "{kinds:?}"
    );
    assert!(kinds.contains(&"start_service"), "{kinds:?}");
    assert_eq!(lab.tree_digest().unwrap(), before, "check changed a node");

    assert_eq!(lab.tree_digest().unwrap(), before, "check changed a node");
    assert_no_trace(&lab);

    // Serving the target everywhere: nothing to do.
    lab.start_services().unwrap();
    let out = check(&lab, "1.7.4", &same, &["--format", "json"]);
    assert_eq!(code(&out), exit_code::NOTHING_TO_DO, "{}", stdout(&out));
    let v = json(&out);
    assert_eq!(v["outcome"], "nothing-to-do");
    assert_eq!(v["steps"], Value::Array(Vec::new()));
    lab.stop_services().unwrap();
}

#[test]
fn a_typo_in_the_inventory_ledgers_and_a_hot_journal_are_refused_with_their_findings() {
    let lab = stopped_lab(2, "1.7.4");
    let new = release(&lab, "1.8.2");
    let inventory = std::fs::read_to_string(lab.inventory_path()).unwrap();
    let typo = inventory.replace(
        "ledgers = [\"default\", \"payments\"]",
        "ledgers = [\"default\", \"paymnts\"]",
    );
    assert_ne!(typo, inventory, "the lab inventory lists its ledgers");
    std::fs::write(lab.inventory_path(), typo).unwrap();
    let journal = lab
        .node("node-2")
        .unwrap()
        .paths()
        .data_dir()
        .join("numary_default.db-journal");
    std::fs::write(&journal, b"").unwrap();

    let before = lab.tree_digest().unwrap();
    let out = check(&lab, "1.8.2", &new, &["--format", "json"]);
    assert_eq!(code(&out), exit_code::BLOCKED, "{}", stdout(&out));
    let v = json(&out);
    for node in ["node-1", "node-2"] {
        let f = failed(&v, node, "ledgers");
        assert_eq!(f.len(), 1, "{node}: {f:?}");
        let detail = f[0]["detail"].as_str().unwrap();
        assert!(detail.contains("`paymnts`"), "{detail}");
        assert!(
            detail.contains("`payments`"),
            "names what the node has: {detail}"
        );
    }
    let hot = failed(&v, "node-2", "hot-journal");
    assert_eq!(hot.len(), 1, "{hot:?}");
    assert!(
        hot[0]["detail"]
            .as_str()
            .unwrap()
            .contains("numary_default.db-journal")
    );
    assert!(
        hot[0]["hint"]
            .as_str()
            .unwrap()
            .contains("start the ledger once"),
        "says how to recover: {hot:?}"
    );
    assert!(failed(&v, "node-1", "hot-journal").is_empty());
    // Each blocked host's steps say why.
    let marks: Vec<&Value> = v["steps"][0]["hosts"].as_array().unwrap().iter().collect();
    assert_eq!(marks[1]["host"], "node-2");
    assert_eq!(marks[1]["mark"], "blocked");
    assert_eq!(
        marks[1]["checks"],
        serde_json::json!(["hot-journal", "ledgers"])
    );

    let human = stdout(&check(&lab, "1.8.2", &new, &[]));
    assert!(human.contains("FAIL  ledgers"), "{human}");
    assert!(human.contains("result: blocked"), "{human}");
    assert!(
        human.contains("hot-journal (node-2)"),
        "the result names it: {human}"
    );
    let verbose = stdout(&check(&lab, "1.8.2", &new, &["-v"]));
    assert!(
        verbose.contains("node-2: BLOCKED (hot-journal, ledgers)"),
        "{verbose}"
    );
    assert_eq!(lab.tree_digest().unwrap(), before, "check changed a node");
    assert!(journal.exists(), "the hot journal is left alone");
}

/// A cleanly stopped one-node lab at `from`, checked for `to`: refused, nothing changed. Returns
/// the lab, the release and the node's failed `upgrade-path` finding.
fn refused_path(from: &str, to: &str) -> (LabGuard, PathBuf, Value) {
    let lab = stopped_lab(1, from);
    let new = release(&lab, to);
    let before = lab.tree_digest().unwrap();
    let out = check(&lab, to, &new, &["--format", "json"]);
    assert_eq!(code(&out), exit_code::BLOCKED, "{}", stdout(&out));
    let v = json(&out);
    let f = failed(&v, "node-1", "upgrade-path");
    assert_eq!(f.len(), 1, "{f:?}");
    let finding = f[0].clone();
    assert_eq!(lab.tree_digest().unwrap(), before);
    (lab, new, finding)
}

#[test]
fn an_unsupported_path_is_refused_with_its_hops() {
    let (lab, new, f) = refused_path("1.2.0", "1.9.0");
    let detail = f["detail"].as_str().unwrap();
    assert!(detail.contains("1.2.0 → 1.8.x → 1.9.0"), "{detail}");
    assert!(
        f["hint"]
            .as_str()
            .unwrap()
            .contains("--binary VERSION=FILE")
    );
    let human = stdout(&check(&lab, "1.9.0", &new, &[]));
    assert!(human.contains("1.2.0 → 1.8.x → 1.9.0"), "{human}");
}

#[test]
fn the_guides_refused_path_1_7_6_to_1_8_1_is_blocked() {
    let (_lab, _, f) = refused_path("1.7.6", "1.8.1");
    let detail = f["detail"].as_str().unwrap();
    assert!(
        detail.contains("`1.7.6` → `1.8.1` is not supported"),
        "{detail}"
    );
}

#[test]
fn a_binary_of_another_version_or_checksum_is_refused() {
    let lab = stopped_lab(1, "1.7.4");
    let wrong = release(&lab, "1.8.1");
    let v = json(&check(&lab, "1.8.2", &wrong, &["--format", "json"]));
    assert_eq!(v["outcome"], "blocked");
    let f: Vec<&Value> = findings(&v)
        .iter()
        .filter(|f| f["check"] == "binary-version" && f["ok"] == false)
        .collect();
    assert_eq!(f.len(), 1, "{v}");
    assert!(
        f[0]["detail"]
            .as_str()
            .unwrap()
            .contains("`1.8.1`, not the target `1.8.2`")
    );

    let new = release(&lab, "1.8.2");
    let bad = "0".repeat(64);
    let out = check(&lab, "1.8.2", &new, &["--sha256", &bad, "--format", "json"]);
    assert_eq!(code(&out), exit_code::BLOCKED);
    let v = json(&out);
    assert!(
        findings(&v).iter().any(|f| f["check"] == "binary-sha256"
            && f["ok"] == false
            && f["detail"].as_str().unwrap().contains(&bad)),
        "{v}"
    );
}

/// A digest of the lab's database: its full dump (schema and rows), without the random
/// `\restrict` key recent `pg_dump` versions add.
fn database_digest(lab: &Lab) -> String {
    let url = lab.postgres.as_ref().unwrap().url().unwrap();
    // Only this test helper passes the URL on a command line; it names a throwaway server.
    let out = Command::new("pg_dump")
        .args(["--no-owner", "--no-privileges", &url])
        .output()
        .expect("run pg_dump");
    assert!(
        out.status.success(),
        "pg_dump: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with("\\restrict") && !l.starts_with("\\unrestrict"))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(kept.contains("CREATE TABLE"), "the dump holds the ledgers");
    hex::encode(Sha256::digest(kept.as_bytes()))
}

#[test]
fn postgres_check_queries_the_database_without_changing_it_or_showing_the_password() {
    let mut s = spec(Driver::Postgres, 3, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    let new = release(&lab, "1.8.2");
    let files = lab.tree_digest().unwrap();
    let database = database_digest(&lab);

    let out = check(&lab, "1.8.2", &new, &["--format", "json"]);
    assert_eq!(
        code(&out),
        exit_code::SUCCESS,
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let v = json(&out);
    assert_eq!(v["outcome"], "ready");
    assert_eq!(v["plan"]["migrator"], "node-1");
    assert!(passed(&v, "node-1", "pg-extensions"), "{v}");
    let ledgers: Vec<&Value> = findings(&v)
        .iter()
        .filter(|f| f["host"] == "node-1" && f["check"] == "ledgers")
        .collect();
    assert_eq!(ledgers.len(), 1);
    assert_eq!(ledgers[0]["ok"], true);
    assert!(
        ledgers[0]["detail"]
            .as_str()
            .unwrap()
            .contains("`_system.ledgers`"),
        "a stopped Postgres fleet's ledgers come from the database: {ledgers:?}"
    );
    let disk: Vec<&Value> = findings(&v)
        .iter()
        .filter(|f| f["host"] == "node-1" && f["check"] == "disk-space")
        .collect();
    assert!(
        disk[0]["detail"].as_str().unwrap().contains("database"),
        "{disk:?}"
    );

    let human = check(&lab, "1.8.2", &new, &[]);
    let password = "fleetup-Secr3t-pw";
    let pg = pg_url();
    let secret = pg
        .split_once("://")
        .and_then(|(_, rest)| rest.split_once('@'))
        .and_then(|(user, _)| user.split_once(':'))
        .map_or(password, |(_, pw)| pw);
    for o in [&out, &human] {
        assert!(!stdout(o).contains(secret), "password in stdout");
        assert!(!stderr(o).contains(secret), "password in stderr");
    }
    for j in fleetup::journal::list_journals(&lab.dir.join(".fleetup/runs")).unwrap() {
        let text = std::fs::read_to_string(&j.path).unwrap();
        assert!(!text.contains(secret), "password in the journal");
        assert!(text.contains("\"check\":\"pg-extensions\""), "{text}");
    }
    assert_eq!(lab.tree_digest().unwrap(), files, "check changed a node");
    assert_eq!(
        database_digest(&lab),
        database,
        "check changed the database"
    );
}

#[test]
fn an_unreachable_host_is_reported_while_the_others_are_checked() {
    let lab = stopped_lab(2, "1.7.4");
    let new = release(&lab, "1.8.2");
    let inventory = std::fs::read_to_string(lab.inventory_path()).unwrap();
    let port = lab.node("node-2").unwrap().ssh_port;
    let closed = fleetup::lab::sshd::free_port().unwrap();
    let moved = inventory.replace(&format!("port = {port}\n"), &format!("port = {closed}\n"));
    assert_ne!(moved, inventory);
    std::fs::write(lab.inventory_path(), moved).unwrap();

    let out = check(&lab, "1.8.2", &new, &["--format", "json"]);
    assert_eq!(code(&out), exit_code::UNREACHABLE, "{}", stdout(&out));
    let v = json(&out);
    assert_eq!(v["outcome"], "unreachable");
    assert_eq!(failed(&v, "node-2", "reachable").len(), 1, "{v}");
    assert!(stderr(&out).contains("node-2"), "{}", stderr(&out));
    // The reachable node is still checked in full.
    for c in ["upgrade-path", "stopped", "ledgers", "disk-space", "lock"] {
        assert!(passed(&v, "node-1", c), "node-1: no passing `{c}`");
    }
}

/// Rewrites the sshd config of `node` so it refuses forwarding channels, and makes it re-read it.
fn refuse_port_forwarding(lab: &Lab, node: &str) {
    let node = lab.node(node).unwrap();
    let config = node.sshd_dir.join("sshd_config");
    let log = node.sshd_dir.join("sshd.log");
    let text = std::fs::read_to_string(&config).unwrap();
    let refused = text.replace("AllowTcpForwarding yes", "AllowTcpForwarding no");
    assert_ne!(refused, text, "the lab's sshd allows forwarding explicitly");
    std::fs::write(&config, refused).unwrap();
    let listening = || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .matches("Server listening on")
            .count()
    };
    let before = listening();
    assert!(before > 0, "sshd logs where it listens");
    // SIGHUP: sshd re-executes itself and reads its config again, keeping its pid.
    let hup = Command::new("kill")
        .args(["-HUP", &node.sshd_pid.to_string()])
        .status()
        .unwrap();
    assert!(hup.success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while listening() <= before {
        assert!(std::time::Instant::now() < deadline, "sshd did not restart");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn an_api_port_behind_an_sshd_that_refuses_forwarding_blocks_instead_of_passing_as_silent() {
    let lab = stopped_lab(2, "1.7.4");
    let new = release(&lab, "1.8.2");
    refuse_port_forwarding(&lab, "node-2");

    let out = check(&lab, "1.8.2", &new, &["--format", "json"]);
    assert_eq!(code(&out), exit_code::BLOCKED, "{}", stdout(&out));
    let v = json(&out);
    let f = failed(&v, "node-2", "api-port");
    assert_eq!(f.len(), 1, "{v}");
    let detail = f[0]["detail"].as_str().unwrap();
    assert!(
        detail.contains("cannot check the API port of `node-2`: sshd refuses port forwarding")
            && detail.contains("administratively prohibited"),
        "{detail}"
    );
    assert!(
        f[0]["hint"]
            .as_str()
            .unwrap()
            .contains("AllowTcpForwarding local"),
        "{f:?}"
    );
    // The other node's sshd forwards: its silent port still passes.
    assert!(passed(&v, "node-1", "api-port"), "{v}");
    assert_no_trace(&lab);
}

#[test]
fn postgres_sessions_of_nodes_outside_limit_block_while_the_whole_fleet_with_stop_passes() {
    let lab = LabGuard::up(&spec(Driver::Postgres, 3, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");

    // Every node selected and running: `--stop` stops them all, their sessions are this run's.
    let out = check(&lab, "1.8.2", &new, &["--stop", "--format", "json"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", stdout(&out));
    let v = json(&out);
    let all: Vec<&Value> = findings(&v)
        .iter()
        .filter(|f| f["host"] == "node-1" && f["check"] == "db-sessions")
        .collect();
    assert_eq!(all.len(), 1, "{v}");
    assert_eq!(all[0]["ok"], true, "{all:?}");
    assert!(
        all[0]["detail"]
            .as_str()
            .unwrap()
            .contains("all held by nodes `--stop` stops first"),
        "{all:?}"
    );

    // Only node-1: node-2 and node-3 keep running on the database the migration rewrites.
    let out = check(
        &lab,
        "1.8.2",
        &new,
        &["--limit", "node-1", "--stop", "--format", "json"],
    );
    assert_eq!(code(&out), exit_code::BLOCKED, "{}", stdout(&out));
    let v = json(&out);
    let f = failed(&v, "node-1", "db-sessions");
    assert_eq!(f.len(), 1, "{v}");
    let detail = f[0]["detail"].as_str().unwrap();
    // The simulator holds two sessions per running server.
    assert!(
        detail.starts_with("4 other sessions on the database (`127.0.0.1 "),
        "{detail}"
    );
    assert!(
        f[0]["hint"]
            .as_str()
            .unwrap()
            .contains("including hosts outside `--limit`"),
        "{f:?}"
    );
    for node in &lab.nodes {
        assert!(node.service_running(), "check stopped `{}`", node.name);
    }
    assert_eq!(lab.misuse_records().unwrap(), Vec::<Value>::new());
}

#[test]
fn a_plain_file_binary_the_switch_would_refuse_is_blocked_before_anything_changes() {
    let lab = stopped_lab(1, "1.7.4");
    let new = release(&lab, "1.8.2");
    let node = &lab.nodes[0];
    let binary = node.paths().binary();
    let kept = node.paths().releases_dir().join("1.7.4/numary");
    // A plain file that still runs 1.7.4 but differs from the kept release: `switch` refuses to
    // put it over `<releases>/1.7.4/numary` (exit 4), after the migration if nobody looked first.
    let mut text = std::fs::read_to_string(&kept).unwrap();
    text.push_str("# patched by hand\n");
    std::fs::remove_file(&binary).unwrap();
    std::fs::write(&binary, text).unwrap();
    std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
    let before = lab.tree_digest().unwrap();

    let out = check(&lab, "1.8.2", &new, &["--format", "json"]);
    assert_eq!(code(&out), exit_code::BLOCKED, "{}", stdout(&out));
    let v = json(&out);
    let f = failed(&v, "node-1", "binary-switch");
    assert_eq!(f.len(), 1, "{v}");
    assert!(
        f[0]["detail"]
            .as_str()
            .unwrap()
            .contains("is a plain file that differs from"),
        "{f:?}"
    );
    assert_eq!(lab.tree_digest().unwrap(), before, "check changed a node");
}
