//! The practice lab end to end: real OpenSSH servers reached with the system `ssh` client, the
//! simulator serving each node's API, the generated inventory, and `lab down` leaving no process
//! and no database behind. The Postgres lab needs `FLEETUP_TEST_PG_URL` (scripts/pg.sh start).

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use fleetup::lab::{Driver, Lab, LabGuard, process};

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use lab_fixture::{pg_url, sim};

/// A lab spec at 1.8.2 in a fresh temp dir.
fn spec(driver: Driver, nodes: usize) -> fleetup::lab::LabSpec {
    lab_fixture::spec(driver, nodes, "1.8.2")
}

/// The `fleetup` binary with the simulator of this test run and no ssh-agent.
fn fleetup(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fleetup"))
        .args(args)
        .env("FLEETUP_SIM", sim())
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("run fleetup")
}

/// Brings the lab in a dir down and deletes the dir, even when an assertion fails.
struct DownOnDrop(PathBuf);

impl Drop for DownOnDrop {
    fn drop(&mut self) {
        if let Ok(lab) = Lab::load(&self.0) {
            let _ = lab.down();
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A fresh dir per test (removed by the guard).
fn fresh_dir() -> PathBuf {
    tempfile::Builder::new()
        .prefix("fleetup-lab-test-")
        .tempdir()
        .expect("temp dir")
        .keep()
}

/// `ssh` with exactly the lab's key and known_hosts: no agent, no user config, strict keys.
fn ssh(lab: &Lab, port: u16, remote: &str) -> Output {
    Command::new("ssh")
        .arg("-F")
        .arg("/dev/null")
        .arg("-i")
        .arg(lab.client_key_path())
        .arg("-o")
        .arg(format!(
            "UserKnownHostsFile={}",
            lab.known_hosts_path().display()
        ))
        .args([
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
        ])
        .arg(port.to_string())
        .arg(format!("{}@127.0.0.1", lab.user))
        .arg(remote)
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("run ssh")
}

fn psql(url: &str, sql: &str) -> Output {
    // Only this test helper passes the URL on a command line; it names a throwaway server.
    Command::new("psql")
        .args(["-X", "-qAt", "-v", "ON_ERROR_STOP=1", url, "-c", sql])
        .output()
        .expect("run psql")
}

/// Every pid the lab started and still knows about: sshd and servers.
fn lab_pids(lab: &Lab) -> Vec<u32> {
    let mut pids: Vec<u32> = lab.nodes.iter().map(|n| n.sshd_pid).collect();
    pids.extend(lab.nodes.iter().filter_map(|n| n.paths().recorded_pid()));
    pids.extend(process::running_exe(&lab.sim_path()));
    pids.sort_unstable();
    pids.dedup();
    pids
}

fn assert_reachable_and_serving(lab: &Lab, driver: &str) {
    for node in &lab.nodes {
        let out = ssh(
            lab,
            node.ssh_port,
            &format!("{} version", node.paths().binary().display()),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "ssh to {}: {}",
            node.name,
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            stdout.lines().any(|l| l == "Version: 1.8.2 "),
            "{}: {stdout:?}",
            node.name
        );

        let (code, body) = node.api_get("/_info").expect("API answers");
        assert_eq!(code, 200, "{}: {body}", node.name);
        let info = fleetup::numary::parse_info(body.as_bytes()).expect("an /_info body");
        assert_eq!(info.version.to_string(), "1.8.2");
        let mut ledgers = info.ledgers.clone();
        ledgers.sort();
        assert_eq!(ledgers, ["default", "payments"], "{}: {body}", node.name);
        assert!(body.contains(&format!("\"driver\":\"{driver}\"")), "{body}");
    }
}

#[test]
fn sqlite_lab_nodes_answer_over_ssh_serve_their_own_store_and_go_down_cleanly() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 3)).expect("lab up");
    assert_eq!(lab.nodes.len(), 3);
    assert_reachable_and_serving(&lab, "sqlite");

    // Each node has its own store, in its own root.
    for node in &lab.nodes {
        let data = node.paths().data_dir();
        for file in [
            "numary_default.db",
            "numary_payments.db",
            "numary__system.db",
        ] {
            assert!(data.join(file).is_file(), "{} lacks {file}", node.name);
        }
    }

    // Status is read-only: nothing under any root changes.
    let before = lab.tree_digest().unwrap();
    let status = lab.status();
    assert_eq!(lab.tree_digest().unwrap(), before);
    for s in &status {
        assert!(s.sshd_running && s.service_running, "{s:?}");
        assert_eq!(s.installed_version.as_deref(), Some("1.8.2"));
        assert_eq!(s.api_version.as_deref(), Some("1.8.2"));
    }
    assert!(lab.misuse_records().unwrap().is_empty());

    // Servers look like the real binary in a process list.
    for node in &lab.nodes {
        let pid = node
            .paths()
            .recorded_pid()
            .expect("a running server has a pid file");
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap();
        assert_eq!(comm.trim(), "numary", "{}", node.name);
    }

    let pids = lab_pids(&lab);
    assert_eq!(
        pids.len(),
        6,
        "3 sshd and 3 servers, each recorded: {pids:?}"
    );
    let report = lab.down().unwrap();
    assert_eq!(report.sshd_stopped.len(), 3);
    assert_eq!(report.servers_stopped.len(), 3, "{report:?}");
    for pid in pids {
        assert!(!process::alive(pid), "pid {pid} survived lab down");
    }
    for node in &lab.nodes {
        assert!(!node.service_running());
        assert!(
            node.api_get("/_info").is_err(),
            "{} API still up",
            node.name
        );
    }
    // Again: nothing left to stop, no error.
    let again = lab.down().unwrap();
    assert!(again.servers_stopped.is_empty() && again.sshd_stopped.is_empty());
}

#[test]
fn postgres_lab_shares_one_fresh_database_and_drops_it_on_down() {
    let mut spec = spec(Driver::Postgres, 3);
    spec.transactions = 7;
    let lab = LabGuard::up(&spec).expect("lab up");
    let pg = lab
        .postgres
        .clone()
        .expect("a Postgres lab records its database");
    assert!(pg.database.starts_with("fleetup_lab_"));
    let url = pg.url().unwrap();
    assert_reachable_and_serving(&lab, "postgres");

    // One database for all: every env file names it; seeded once, not once per node.
    for node in &lab.nodes {
        let env = std::fs::read_to_string(node.paths().env_file()).unwrap();
        let vars = fleetup::numary::parse_env_file(&env);
        assert_eq!(
            vars["NUMARY_STORAGE_POSTGRES_CONN_STRING"], url,
            "{}",
            node.name
        );
        assert_eq!(vars["NUMARY_SIM_NODE"], node.name);
    }
    let db = lab
        .database()
        .unwrap()
        .expect("a Postgres lab has a database");
    for ledger in ["default", "payments"] {
        let count = db
            .query(&format!("SELECT count(*) FROM \"{ledger}\".transactions"))
            .unwrap();
        assert_eq!(count, "7", "seeded once for the whole fleet: {ledger}");
    }
    // Reading the fleet's state changes neither the node roots nor the database.
    let (files, data) = (lab.tree_digest().unwrap(), lab.database_digest().unwrap());
    assert!(lab.status().iter().all(|s| s.service_running));
    assert_eq!(lab.tree_digest().unwrap(), files);
    assert_eq!(lab.database_digest().unwrap(), data);

    // The password stays out of every file but the 0600 state and env files.
    let password = "fleetup-Secr3t-pw";
    let inventory = std::fs::read_to_string(lab.inventory_path()).unwrap();
    assert!(!inventory.contains(password) && !inventory.contains(&pg_url()));
    let state_mode = std::fs::metadata(lab.dir.join("lab.json"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(state_mode & 0o777, 0o600);
    for node in &lab.nodes {
        let mode = std::fs::metadata(node.paths().env_file())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    let pids = lab_pids(&lab);
    let report = lab.down().unwrap();
    assert_eq!(
        report.database_dropped.as_deref(),
        Some(pg.database.as_str())
    );
    for pid in pids {
        assert!(!process::alive(pid), "pid {pid} survived lab down");
    }
    let exists = psql(
        &pg_url(),
        &format!(
            "SELECT 1 FROM pg_database WHERE datname = '{}'",
            pg.database
        ),
    );
    assert!(exists.status.success());
    assert_eq!(
        String::from_utf8_lossy(&exists.stdout).trim(),
        "",
        "database still there"
    );
}

/// The CLI: `lab up` prints the next commands, `status` reads the state, `release` writes a
/// binary that reports its version, `down --purge` removes everything and can be repeated.
#[test]
fn cli_up_status_release_down() {
    let dir = fresh_dir();
    let d = dir.to_str().unwrap();
    let _down = DownOnDrop(dir.clone());

    let up = fleetup(&["lab", "up", "--nodes", "2", "--dir", d, "--stopped"]);
    let stdout = String::from_utf8_lossy(&up.stdout);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    assert!(
        stdout.contains(&format!("fleetup -i {d}/inventory.toml status")),
        "{stdout}"
    );
    assert!(stdout.contains("services stopped"), "{stdout}");

    let status = fleetup(&["lab", "status", "--dir", d, "--format", "json"]);
    assert!(status.status.success());
    let rows: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let rows = rows.as_array().unwrap();
    assert_eq!(rows.len(), 2);
    for r in rows {
        assert_eq!(r["sshd_running"], true);
        assert_eq!(
            r["service_running"], false,
            "--stopped leaves services down"
        );
        assert_eq!(r["installed_version"], "1.8.2");
    }

    let release = dir.join("numary-1.9.0");
    let out = fleetup(&[
        "lab",
        "release",
        "--dir",
        d,
        "--version",
        "1.9.0",
        "--out",
        release.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = Command::new(&release).arg("version").output().unwrap();
    assert!(
        String::from_utf8_lossy(&v.stdout).contains("Version: 1.9.0 "),
        "{v:?}"
    );

    let lab = Lab::load(&dir).unwrap();
    let pids = lab_pids(&lab);
    let down = fleetup(&["lab", "down", "--dir", d, "--purge"]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    assert!(!dir.exists(), "--purge removes the dir");
    for pid in pids {
        assert!(!process::alive(pid), "pid {pid} survived lab down");
    }
    let again = fleetup(&["lab", "down", "--dir", d]);
    assert!(again.status.success(), "down is idempotent");
}

#[test]
fn up_refuses_a_postgres_lab_without_a_server_and_a_dir_that_holds_a_lab() {
    let mut no_url = spec(Driver::Sqlite, 1);
    no_url.driver = Driver::Postgres;
    let err = Lab::up(&no_url).unwrap_err();
    let failure = fleetup::error::find_failure(&err).expect("an operator-facing error");
    assert_eq!(failure.code, fleetup::exit_code::USAGE);
    assert!(
        failure.hints.iter().any(|h| h.contains("--pg-url")),
        "{failure:?}"
    );
    assert_eq!(
        std::fs::read_dir(&no_url.dir).unwrap().count(),
        0,
        "nothing created"
    );
    std::fs::remove_dir(&no_url.dir).unwrap();

    let mut one = spec(Driver::Sqlite, 1);
    one.start = false;
    let lab = LabGuard::up(&one).expect("lab up");
    let err = Lab::up(&one).unwrap_err();
    assert!(
        format!("{err:#}").contains("already holds a lab"),
        "{err:#}"
    );
    // The refused second `up` did not disturb the first lab.
    assert!(lab.nodes[0].sshd_running());
}

/// The first answer of a node's API, once its server listens.
fn first_answer(lab: &Lab, node: &str) -> (u16, String) {
    let node = lab.node(node).expect("a lab node");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
    loop {
        match node.api_get("/_info") {
            Ok(answer) => return answer,
            Err(e) if std::time::Instant::now() > deadline => panic!("{}: {e:#}", node.name),
            Err(_) => std::thread::sleep(std::time::Duration::from_millis(100)),
        }
    }
}

#[test]
fn a_fault_armed_for_one_node_hits_only_that_node_until_cleared() {
    let mut spec = spec(Driver::Sqlite, 2);
    spec.start = false;
    let lab = LabGuard::up(&spec).expect("lab up");
    assert!(
        lab.set_fault("never-healthy", &["node-9"]).is_err(),
        "unknown node"
    );
    lab.set_fault("never-healthy", &["node-2"]).unwrap();
    for node in &lab.nodes {
        let (code, out) = node.paths().service("start").unwrap();
        assert_eq!(code, 0, "{out}");
    }
    assert_eq!(first_answer(&lab, "node-1").0, 200);
    let (code, body) = first_answer(&lab, "node-2");
    assert_eq!(code, 500, "{body}");
    lab.clear_fault("never-healthy").unwrap();
    assert_eq!(first_answer(&lab, "node-2").0, 200);
    lab.clear_fault("never-healthy").unwrap();
}

/// Issue 3's "done when": `lab up --nodes 3 --version 1.8.2`, then `status` through the generated
/// inventory shows three reachable nodes at 1.8.2 with their ledgers, `exec -- uname -n` runs on
/// each, and `lab down` leaves no process behind.
#[test]
fn cli_three_node_lab_shows_in_status_runs_exec_and_goes_down() {
    let dir = fresh_dir();
    let d = dir.to_str().unwrap().to_owned();
    // Brought down even if an assertion fails.
    let _down = DownOnDrop(dir.clone());
    let up = fleetup(&[
        "lab",
        "up",
        "--nodes",
        "3",
        "--version",
        "1.8.2",
        "--dir",
        &d,
    ]);
    assert!(
        up.status.success(),
        "{}",
        String::from_utf8_lossy(&up.stderr)
    );
    let lab = Lab::load(&dir).unwrap();
    let inventory = format!("{d}/inventory.toml");

    let status = fleetup(&["-i", &inventory, "status", "--format", "json"]);
    assert!(
        status.status.success(),
        "{}",
        String::from_utf8_lossy(&status.stderr)
    );
    let hosts = json_lines(&status.stdout, "host_status");
    assert_eq!(hosts.len(), 3);
    for (h, node) in hosts.iter().zip(&lab.nodes) {
        assert_eq!(h["host"], node.name.as_str());
        assert_eq!(h["reachable"], true, "{h}");
        assert_eq!(h["installed_version"], "1.8.2", "{h}");
        assert_eq!(h["api"]["version"], "1.8.2", "{h}");
        assert_eq!(
            h["ledgers"],
            serde_json::json!(["default", "payments"]),
            "{h}"
        );
    }

    let exec = fleetup(&[
        "-i", &inventory, "exec", "--format", "json", "--", "uname", "-n",
    ]);
    assert!(
        exec.status.success(),
        "{}",
        String::from_utf8_lossy(&exec.stderr)
    );
    let results = serde_json::Value::Array(json_lines(&exec.stdout, "exec_result"));
    let uname =
        String::from_utf8(Command::new("uname").arg("-n").output().unwrap().stdout).unwrap();
    for r in results.as_array().unwrap() {
        assert_eq!(r["exit_code"], 0, "{r}");
        assert_eq!(r["stdout"], uname.as_str(), "{r}");
    }

    let pids = lab_pids(&lab);
    assert_eq!(pids.len(), 6, "{pids:?}");
    let down = fleetup(&["lab", "down", "--dir", &d]);
    assert!(
        down.status.success(),
        "{}",
        String::from_utf8_lossy(&down.stderr)
    );
    for pid in pids {
        assert!(!process::alive(pid), "pid {pid} survived lab down");
    }
}

#[test]
fn up_refuses_a_dir_with_other_files_and_cleans_up_after_a_failed_start() {
    let mut busy = spec(Driver::Sqlite, 1);
    std::fs::write(busy.dir.join("inventory.toml"), "# the operator's own\n").unwrap();
    let err = Lab::up(&busy).unwrap_err();
    assert!(format!("{err:#}").contains("is not empty"), "{err:#}");
    assert_eq!(
        std::fs::read_to_string(busy.dir.join("inventory.toml")).unwrap(),
        "# the operator's own\n",
        "left untouched"
    );
    std::fs::remove_dir_all(&busy.dir).unwrap();

    // A "simulator" that fails: sshd servers are already up when seeding fails.
    busy = spec(Driver::Sqlite, 2);
    let broken = busy.dir.with_extension("broken-sim");
    std::fs::write(&broken, "#!/bin/sh\necho simulated breakage >&2\nexit 1\n").unwrap();
    std::fs::set_permissions(&broken, std::fs::Permissions::from_mode(0o755)).unwrap();
    busy.sim = Some(broken.clone());
    let _down = DownOnDrop(busy.dir.clone());
    let err = Lab::up(&busy).unwrap_err();
    let text = format!("{err:#}");
    assert!(
        text.contains("did not come up") && text.contains("simulated breakage"),
        "{text}"
    );
    let lab = Lab::load(&busy.dir).expect("the state of what was started is kept");
    assert_eq!(lab.nodes.len(), 2, "both nodes had started");
    for node in &lab.nodes {
        assert!(
            !process::alive(node.sshd_pid),
            "sshd of {} left running",
            node.name
        );
    }
    std::fs::remove_file(broken).unwrap();
}

/// The JSON Lines of `stdout`, each with the stream's schema and the event `event`.
fn json_lines(stdout: &[u8], event: &str) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).expect("a JSON line");
            assert_eq!(v["schema"], 1, "{v}");
            assert_eq!(v["event"], event, "{v}");
            v
        })
        .collect()
}
