//! `fleetup status` and `fleetup exec` on the practice lab: real sshd, real keys and known_hosts,
//! the simulator as each node's `numary`. Proves the facts, the exit codes, that a refused or
//! unreachable host is reported while the others answer, and that the Postgres password never
//! reaches any output.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::time::{Duration, Instant};

use fleetup::exit_code;
use fleetup::lab::{Driver, LabGuard};
use lab_fixture::{fleetup, json, spec, stderr, stdout};
use serde_json::Value;

#[test]
fn status_of_a_three_node_sqlite_lab_shows_every_fact() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 3, "1.8.2")).expect("lab up");
    let inv = lab.inventory_path();
    let out = fleetup(&inv, &["status", "--format", "json"]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        stderr(&out)
    );
    let hosts = json(&out);
    let hosts = hosts.as_array().expect("array");
    assert_eq!(hosts.len(), 3);
    for (h, node) in hosts.iter().zip(&lab.nodes) {
        assert_eq!(h["host"], node.name.as_str());
        assert_eq!(h["reachable"], true);
        assert_eq!(h["installed_version"], "1.8.2");
        assert_eq!(h["service"], "running");
        assert_eq!(h["api"]["healthy"], true);
        assert_eq!(h["api"]["version"], "1.8.2");
        assert_eq!(h["storage"]["driver"], "sqlite");
        let dir = node.root.join("var/lib/numary/data");
        assert_eq!(
            h["storage"]["sqlite_dir"],
            dir.display().to_string().as_str()
        );
        let mut ledgers: Vec<&str> = h["ledgers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|l| l.as_str().unwrap())
            .collect();
        ledgers.sort();
        assert_eq!(ledgers, ["default", "payments"]);
        assert_eq!(h["staged"], serde_json::json!(["1.8.2"]));
    }

    // The human table names each node with its version and service state.
    let human = fleetup(&inv, &["status"]);
    assert_eq!(human.status.code(), Some(exit_code::SUCCESS));
    let text = stdout(&human);
    for node in &lab.nodes {
        let line = text
            .lines()
            .find(|l| l.starts_with(&node.name))
            .expect("a row per node");
        assert!(line.contains("1.8.2") && line.contains("running"), "{line}");
    }
    assert!(text.contains("3 hosts, 3 reachable"), "{text}");

    // A stopped service is reported as such, with no API.
    let (code, out) = lab.nodes[1].paths().service("stop").expect("stop node-2");
    assert_eq!(code, 0, "{out}");
    let out = fleetup(&inv, &["status", "--format", "json", "--limit", "node-2"]);
    let hosts = json(&out);
    assert_eq!(hosts[0]["service"], "stopped");
    assert_eq!(hosts[0]["api"], Value::Null);
    assert_eq!(hosts.as_array().unwrap().len(), 1);
}

#[test]
fn exec_reports_each_host_and_fails_when_one_fails() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 3, "1.8.2")).expect("lab up");
    let inv = lab.inventory_path();
    let failing_port = lab.nodes[1].ssh_port;
    // SSH_CONNECTION's last field is the server port: only node-2 exits 3.
    let cmd = format!(
        "echo out-$((1+1)); echo err >&2; [ \"${{SSH_CONNECTION##* }}\" != {failing_port} ] || exit 3"
    );
    let out = fleetup(&inv, &["exec", "--format", "json", "--", &cmd]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::FAILURE),
        "{}",
        stderr(&out)
    );
    let results = json(&out);
    let codes: Vec<(String, i64)> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap().to_string(),
                r["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        codes,
        [
            ("node-1".to_string(), 0),
            ("node-2".to_string(), 3),
            ("node-3".to_string(), 0)
        ]
    );
    for r in results.as_array().unwrap() {
        assert_eq!(r["stdout"], "out-2\n");
        assert_eq!(r["stderr"], "err\n");
    }
    assert!(
        stderr(&out).contains("3 hosts: 2 ok, 1 failed: `node-2` (exit 3)"),
        "{}",
        stderr(&out)
    );

    // All succeed → exit 0; human output groups by host.
    let ok = fleetup(&inv, &["exec", "--", "uname", "-n"]);
    assert_eq!(
        ok.status.code(),
        Some(exit_code::SUCCESS),
        "{}",
        stderr(&ok)
    );
    let text = stdout(&ok);
    for node in &lab.nodes {
        assert!(
            text.contains(&format!("== {} (exit 0", node.name)),
            "{text}"
        );
    }
}

#[test]
fn several_commands_run_in_turn_over_one_connection_per_host_and_stop_at_the_first_failure() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 3, "1.8.2")).expect("lab up");
    let inv = lab.inventory_path();
    let marks = lab.dir.join("marks");
    std::fs::create_dir_all(&marks).unwrap();
    let failing_port = lab.nodes[1].ssh_port;
    let port = "${SSH_CONNECTION##* }";
    let m = marks.display();
    let first = format!("mkdir {m}/{port} && ls {m} | wc -l && echo \"$SSH_CONNECTION\"");
    let second = format!("echo \"$SSH_CONNECTION\"; [ \"{port}\" != {failing_port} ] || exit 4");
    let third = format!("rmdir {m}/{port}");
    // One host at a time: a host's commands end (its mark removed) before the next one starts.
    let out = fleetup(
        &inv,
        &[
            "exec", "--forks", "1", "--format", "json", "-c", &first, "-c", &second, "--", &third,
        ],
    );
    assert_eq!(
        out.status.code(),
        Some(exit_code::FAILURE),
        "{}",
        stderr(&out)
    );
    let results = json(&out);
    let results = results.as_array().unwrap();
    let ran: Vec<(&str, i64, i64)> = results
        .iter()
        .map(|r| {
            (
                r["host"].as_str().unwrap(),
                r["command"].as_i64().unwrap(),
                r["exit_code"].as_i64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ran,
        [
            ("node-1", 1, 0),
            ("node-1", 2, 0),
            ("node-1", 3, 0),
            ("node-2", 1, 0),
            ("node-2", 2, 4),
            ("node-3", 1, 0),
            ("node-3", 2, 0),
            ("node-3", 3, 0),
        ]
    );
    let lines = |r: &Value| -> Vec<String> {
        r["stdout"]
            .as_str()
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    };
    // node-1 and node-2 each saw only their own mark; node-3 also saw node-2's, which its third
    // command (never run) would have removed.
    let seen: Vec<String> = [0, 3, 5]
        .iter()
        .map(|&i| lines(&results[i])[0].clone())
        .collect();
    assert_eq!(seen, ["1", "1", "2"]);
    // Each host's commands came over one connection: the same client address and port.
    for (a, b) in [(0, 1), (3, 4), (5, 6)] {
        assert_eq!(lines(&results[a])[1], lines(&results[b])[0], "{results:?}");
    }
    let left: Vec<String> = std::fs::read_dir(&marks)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(left, [failing_port.to_string()]);
    assert!(
        stderr(&out)
            .contains("3 hosts, 3 commands each: 2 ok, 1 failed: `node-2` (command 2: exit 4)"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn exec_timeout_has_the_host_end_the_command_and_without_it_the_command_is_left_as_ssh_leaves_it() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 1, "1.8.2")).expect("lab up");
    let inv = lab.inventory_path();
    let (ended, left) = (lab.dir.join("ended-mark"), lab.dir.join("left-mark"));
    // `--timeout`: the host ends the command at the deadline; it never gets to its `touch`.
    let cmd = format!("sleep 6; touch {}", ended.display());
    let started = Instant::now();
    let out = fleetup(&inv, &["exec", "--timeout", "2s", "--", &cmd]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::UNREACHABLE),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("the host ended it"),
        "{}",
        stderr(&out)
    );
    // Without it: fleetup stops waiting at `command_timeout`, the command goes on.
    let cmd = format!("sleep 4; touch {}", left.display());
    let out = fleetup(&inv, &["--command-timeout", "2s", "exec", "--", &cmd]);
    assert_eq!(
        out.status.code(),
        Some(exit_code::UNREACHABLE),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("fleetup stopped waiting"),
        "{}",
        stderr(&out)
    );
    while started.elapsed() < Duration::from_secs(12) && !left.exists() {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(left.exists(), "the command left to run did not finish");
    assert!(
        !ended.exists(),
        "the host did not end the command at its --timeout"
    );
}

#[test]
fn unknown_host_key_and_unreachable_host_are_reported_while_others_answer() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 3, "1.8.2")).expect("lab up");
    let inv = lab.inventory_path();
    // Forget node-3's host key: it must be refused, and nothing may run there.
    let kh = lab.dir.join("client/known_hosts");
    let text = std::fs::read_to_string(&kh).unwrap();
    let node3 = format!("[127.0.0.1]:{}", lab.nodes[2].ssh_port);
    let kept: String = text
        .lines()
        .filter(|l| !l.starts_with(&node3))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(kept, text, "known_hosts held node-3");
    std::fs::write(&kh, kept).unwrap();
    // And add a host where nothing listens.
    let dead = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead_port = dead.local_addr().unwrap().port();
    drop(dead);
    let mut inventory = std::fs::read_to_string(&inv).unwrap();
    inventory.push_str(&format!(
        "\n[[host]]\nname = \"ghost\"\naddress = \"127.0.0.1\"\nport = {dead_port}\n"
    ));
    std::fs::write(&inv, inventory).unwrap();

    let marker = lab.dir.join("ran-on");
    std::fs::create_dir_all(&marker).unwrap();
    let cmd = format!("touch {}/${{SSH_CONNECTION##* }}", marker.display());
    let started = Instant::now();
    let out = fleetup(&inv, &["--connect-timeout", "5s", "exec", "--", &cmd]);
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "took {:?}",
        started.elapsed()
    );
    assert_eq!(
        out.status.code(),
        Some(exit_code::UNREACHABLE),
        "{}",
        stderr(&out)
    );
    let err = stderr(&out);
    assert!(err.contains("node-3") && err.contains("SHA256:"), "{err}");
    assert!(err.contains("ghost"), "{err}");
    let mut ran: Vec<u16> = std::fs::read_dir(&marker)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().parse().unwrap())
        .collect();
    ran.sort();
    let mut expected = vec![lab.nodes[0].ssh_port, lab.nodes[1].ssh_port];
    expected.sort();
    assert_eq!(ran, expected, "ran only on the hosts with a known key");

    // status: same verdicts, per host.
    let out = fleetup(
        &inv,
        &["--connect-timeout", "5s", "status", "--format", "json"],
    );
    assert_eq!(out.status.code(), Some(exit_code::UNREACHABLE));
    let hosts = json(&out);
    let reachable: Vec<bool> = hosts
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["reachable"].as_bool().unwrap())
        .collect();
    assert_eq!(reachable, [true, true, false, false]);
}

#[test]
fn postgres_password_never_reaches_any_output() {
    let lab = LabGuard::up(&spec(Driver::Postgres, 2, "1.8.2")).expect("lab up");
    let inv = lab.inventory_path();
    let url = lab.postgres.as_ref().expect("pg lab").url().expect("url");
    let password =
        fleetup::redact::conn_string_password(&url).expect("the test URL has a password");
    assert!(password.len() >= 6);
    let mut all = String::new();
    for args in [
        vec!["status"],
        vec!["status", "--format", "json"],
        vec!["-vv", "status"],
        vec!["inventory", "list", "--format", "json"],
        vec!["exec", "--", "true"],
    ] {
        let out = fleetup(&inv, &args);
        assert_eq!(
            out.status.code(),
            Some(exit_code::SUCCESS),
            "{args:?}: {}",
            stderr(&out)
        );
        all.push_str(&stdout(&out));
        all.push_str(&stderr(&out));
    }
    assert!(all.contains("postgres"), "status shows the driver");
    assert!(!all.contains(&password), "the password leaked");
}
