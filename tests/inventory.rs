//! `fleetup inventory check|list` through the real binary: the example inventory, broken
//! inventories (each must name the place and give a hint, none may panic), `--limit` selection,
//! and the precedence of the `FLEETUP_*` variables and flags over the file.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const USAGE: i32 = 2;
const NO_HOSTS: i32 = 3;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn fixture(name: &str) -> PathBuf {
    root().join("tests/fixtures/inventories").join(name)
}

/// The binary with a clean `FLEETUP_*` environment and a fixed home and user.
fn fleetup(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fleetup"));
    cmd.args(args).current_dir(root());
    for (key, _) in std::env::vars() {
        if key.starts_with("FLEETUP_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("HOME", "/home/op").env("USER", "op");
    cmd.envs(env.iter().copied());
    cmd.output().expect("run fleetup")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn check(path: &Path) -> Output {
    fleetup(&["-i", path.to_str().unwrap(), "inventory", "check"], &[])
}

#[test]
fn example_inventory_is_valid() {
    let out = check(&root().join("inventory.example.toml"));
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("is valid: 4 hosts, 3 groups"),
        "{}",
        stdout(&out)
    );
}

#[test]
fn inventory_path_comes_from_the_environment_then_the_working_directory() {
    let example = root().join("inventory.example.toml");
    let out = fleetup(
        &["inventory", "check"],
        &[("FLEETUP_INVENTORY", example.to_str().unwrap())],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_fleetup"))
        .args(["inventory", "check"])
        .env_remove("FLEETUP_INVENTORY")
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(USAGE));
    let err = stderr(&out);
    assert!(
        err.contains("cannot read inventory `inventory.toml`"),
        "{err}"
    );
    assert!(err.contains("hint: "), "{err}");
}

/// One broken inventory: its exit code, the places the error must name, a phrase it must hold.
struct Broken {
    file: &'static str,
    code: i32,
    places: &'static [&'static str],
    says: &'static str,
}

const BROKEN: &[Broken] = &[
    Broken {
        file: "unknown_key.toml",
        code: USAGE,
        places: &["3:1"],
        says: "unknown key `usr`",
    },
    Broken {
        file: "unknown_table.toml",
        code: USAGE,
        places: &["2:3"],
        says: "unknown key `hosts`",
    },
    Broken {
        file: "wrong_type.toml",
        code: USAGE,
        places: &["3:8"],
        says: "invalid type: string \"22\"",
    },
    Broken {
        file: "bad_host_name.toml",
        code: USAGE,
        places: &["3:8"],
        says: "`ledger_1` is not a valid host name",
    },
    Broken {
        file: "bad_address.toml",
        code: USAGE,
        places: &["4:11"],
        says: "it includes a port",
    },
    Broken {
        file: "relative_remote_path.toml",
        code: USAGE,
        places: &["3:10"],
        says: "not an absolute path",
    },
    Broken {
        file: "bad_version.toml",
        code: USAGE,
        places: &["6:11"],
        says: "`1.9` is not a version",
    },
    Broken {
        file: "bad_duration.toml",
        code: USAGE,
        places: &["7:19"],
        says: "`10` is not a duration",
    },
    Broken {
        file: "port_zero.toml",
        code: USAGE,
        places: &["5:8"],
        says: "port 0 is not valid",
    },
    Broken {
        file: "bad_ledger_name.toml",
        code: USAGE,
        places: &["3:24"],
        says: "`pay ments` is not a valid ledger name",
    },
    Broken {
        file: "missing_address.toml",
        code: USAGE,
        places: &["2:1"],
        says: "missing key `address`",
    },
    Broken {
        file: "syntax_error.toml",
        code: USAGE,
        places: &["2:8"],
        says: "expected `]`",
    },
    Broken {
        file: "duplicate_key.toml",
        code: USAGE,
        places: &["5:1"],
        says: "duplicate key",
    },
    Broken {
        file: "incomplete_service.toml",
        code: USAGE,
        places: &["3:11"],
        says: "missing `stop`, `status`",
    },
    Broken {
        file: "unknown_manager.toml",
        code: USAGE,
        places: &["7:23"],
        says: "unknown variant `upstart`",
    },
    Broken {
        file: "unknown_group.toml",
        code: USAGE,
        places: &["12:11"],
        says: "host `ledger-2` lists group `us`, which is not defined",
    },
    Broken {
        file: "duplicate_hosts.toml",
        code: USAGE,
        places: &["7:8"],
        says: "duplicate host name `Ledger-1`: `ledger-1` is already defined at line 3",
    },
    Broken {
        file: "two_migrators.toml",
        code: USAGE,
        places: &["10:12"],
        says: "hosts `ledger-1` (line 3) and `ledger-2` (line 8) both set `migrator = true`",
    },
    Broken {
        file: "replaces_unknown.toml",
        code: USAGE,
        places: &["9:12"],
        says: "host `ledger-new-1` replaces `ledger-01`, which is not in the inventory",
    },
    Broken {
        file: "duplicate_endpoint.toml",
        code: USAGE,
        places: &["8:11"],
        says: "hosts `ledger-1` (line 3) and `ledger-2` (line 7) both point at `10.0.0.11:22`",
    },
    Broken {
        file: "many_cross_references.toml",
        code: USAGE,
        places: &["7:17", "12:11", "13:12", "16:8", "22:12", "27:12"],
        says: "has 6 errors",
    },
    Broken {
        file: "no_hosts.toml",
        code: NO_HOSTS,
        places: &[],
        says: "defines no host",
    },
];

#[test]
fn broken_inventories_name_the_place_and_give_a_hint() {
    let mut kinds = 0;
    for case in BROKEN {
        let path = fixture(case.file);
        let out = check(&path);
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(case.code), "{}: {err}", case.file);
        assert!(out.stdout.is_empty(), "{}: nothing on stdout", case.file);
        assert!(!err.contains("panicked"), "{}: {err}", case.file);
        assert!(err.starts_with("error: "), "{}: {err}", case.file);
        assert!(
            err.contains(case.says),
            "{}: expected {:?} in\n{err}",
            case.file,
            case.says
        );
        assert!(err.contains("hint: "), "{}: no hint in\n{err}", case.file);
        let shown = path.display().to_string();
        for place in case.places {
            let located = format!("`{shown}`:{place}: ");
            assert!(
                err.contains(&located),
                "{}: expected {located:?} in\n{err}",
                case.file
            );
        }
        if case.places.is_empty() {
            assert!(
                err.contains(&format!("`{shown}`")),
                "{}: names the file\n{err}",
                case.file
            );
        }
        kinds += 1;
    }
    assert!(kinds >= 12, "at least 12 kinds of broken inventory");
}

#[test]
fn every_fixture_is_covered() {
    let mut files: Vec<String> = std::fs::read_dir(root().join("tests/fixtures/inventories"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let mut covered: Vec<String> = BROKEN.iter().map(|b| b.file.to_string()).collect();
    covered.sort();
    assert_eq!(files, covered);
}

#[test]
fn cross_reference_errors_name_every_host_involved() {
    let err = stderr(&check(&fixture("many_cross_references.toml")));
    for needle in [
        "host `ledger-1` lists group `ue`, which is not defined",
        "hint: did you mean `eu`?",
        "hosts `ledger-1` (line 5) and `ledger-2` (line 11) both point at `10.0.0.11:22`",
        "hosts `ledger-1` (line 5) and `ledger-2` (line 11) both set `migrator = true`",
        "duplicate host name `ledger-1`: `ledger-1` is already defined at line 5",
        "host `ledger-new-1` replaces `ledger-9`, which is not in the inventory",
        "host `ledger-new-2` replaces itself",
    ] {
        assert!(err.contains(needle), "expected {needle:?} in\n{err}");
    }
}

fn list(args: &[&str], env: &[(&str, &str)]) -> Output {
    let example = root().join("inventory.example.toml");
    let mut all = vec!["-i", example.to_str().unwrap()];
    all.extend_from_slice(args);
    fleetup(&all, env)
}

fn listed_names(out: &Output) -> Vec<String> {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    stdout(out)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(String::from))
        .collect()
}

#[test]
fn list_prints_a_table_of_resolved_hosts() {
    let out = list(&["inventory", "list"], &[]);
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 5, "{text}");
    assert!(lines[0].starts_with("NAME"), "{text}");
    assert!(
        lines[1].contains("10.0.1.11:22") && lines[1].contains("migrator"),
        "{text}"
    );
    assert!(
        lines[2].contains("10.0.1.12:2222") && lines[2].contains("numary-ops"),
        "{text}"
    );
    assert!(
        lines[4].contains("[fd00::12]:22") && lines[4].contains("replaces ledger-us-1"),
        "{text}"
    );
}

#[test]
fn limit_selects_by_name_glob_group_and_exclusion() {
    let names = |limit: &str| listed_names(&list(&["--limit", limit, "inventory", "list"], &[]));
    assert_eq!(names("ledger-us-2"), ["ledger-us-2"]);
    assert_eq!(names("ledger-eu-*"), ["ledger-eu-1", "ledger-eu-2"]);
    assert_eq!(names("@us"), ["ledger-us-1", "ledger-us-2"]);
    assert_eq!(
        names("ledger-*,!ledger-eu-1"),
        ["ledger-eu-2", "ledger-us-1", "ledger-us-2"]
    );
    assert_eq!(names("!@eu"), ["ledger-us-1", "ledger-us-2"]);
    assert_eq!(
        names("@canary,ledger-us-?"),
        ["ledger-eu-1", "ledger-us-1", "ledger-us-2"]
    );
    let repeated = list(
        &["-l", "@canary", "-l", "ledger-us-1", "inventory", "list"],
        &[],
    );
    assert_eq!(listed_names(&repeated), ["ledger-eu-1", "ledger-us-1"]);
}

#[test]
fn a_pattern_matching_nothing_exits_no_hosts_with_suggestions() {
    let out = list(
        &["--limit", "ledger-eu-1,ledger-us-3", "inventory", "list"],
        &[],
    );
    assert_eq!(out.status.code(), Some(NO_HOSTS));
    let err = stderr(&out);
    assert!(
        err.contains("host pattern `ledger-us-3` matches no host"),
        "{err}"
    );
    assert!(
        err.contains("did you mean `ledger-us-1` or `ledger-us-2`?"),
        "{err}"
    );
    assert!(out.stdout.is_empty());

    let out = list(&["--limit", "@eu,!ledger-eu-*", "inventory", "list"], &[]);
    assert_eq!(out.status.code(), Some(NO_HOSTS));
    assert!(stderr(&out).contains("select no host"), "{}", stderr(&out));

    let out = list(&["--limit", "!@asia", "inventory", "list"], &[]);
    assert_eq!(out.status.code(), Some(NO_HOSTS));
    assert!(stderr(&out).contains("`!@asia`"), "{}", stderr(&out));
}

fn json_hosts(args: &[&str], env: &[(&str, &str)]) -> Vec<serde_json::Value> {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    all.extend_from_slice(&["inventory", "list"]);
    let out = list(&all, env);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    serde_json::from_slice(&out.stdout).expect("inventory list --format json prints a JSON array")
}

#[test]
fn json_lists_resolved_settings() {
    let hosts = json_hosts(&["--limit", "ledger-us-1"], &[]);
    assert_eq!(hosts.len(), 1);
    let h = &hosts[0];
    assert_eq!(h["name"], "ledger-us-1");
    assert_eq!(h["ssh"]["user"], "deploy");
    assert_eq!(h["ssh"]["connect_timeout"], "20s");
    assert_eq!(h["ssh"]["command_timeout"], "1h");
    assert_eq!(h["ssh"]["jump_host"], "ops@bastion-us.example.com");
    assert_eq!(h["ssh"]["known_hosts"], "/home/op/.ssh/known_hosts");
    assert_eq!(
        h["ssh"]["identity_files"][0],
        root().join("keys/us-deploy").to_str().unwrap()
    );
    assert_eq!(h["ledger"]["service"]["manager"], "command");
    assert_eq!(
        h["ledger"]["ledgers"],
        serde_json::json!(["payments", "wallets"])
    );
}

#[test]
fn environment_beats_the_host_and_flags_beat_the_environment() {
    // `ledger-eu-2` sets `user` and `port` on the host itself.
    let one = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--limit", "ledger-eu-2"];
        all.extend_from_slice(args);
        json_hosts(&all, env).remove(0)
    };
    let h = one(&[], &[]);
    assert_eq!(
        (h["ssh"]["user"].as_str(), h["ssh"]["port"].as_u64()),
        (Some("numary-ops"), Some(2222))
    );

    let env = [
        ("FLEETUP_SSH_USER", "env-user"),
        ("FLEETUP_SSH_PORT", "2200"),
        ("FLEETUP_JUMP_HOST", "none"),
        ("FLEETUP_KNOWN_HOSTS", "/env/known_hosts"),
        ("FLEETUP_IDENTITY_FILE", "/env/a:/env/b"),
        ("FLEETUP_CONNECT_TIMEOUT", "3s"),
        ("FLEETUP_COMMAND_TIMEOUT", "2h"),
    ];
    let h = one(&[], &env);
    assert_eq!(h["ssh"]["user"], "env-user");
    assert_eq!(h["ssh"]["port"], 2200);
    assert_eq!(h["ssh"]["jump_host"], serde_json::Value::Null);
    assert_eq!(h["ssh"]["known_hosts"], "/env/known_hosts");
    assert_eq!(
        h["ssh"]["identity_files"],
        serde_json::json!(["/env/a", "/env/b"])
    );
    assert_eq!(h["ssh"]["connect_timeout"], "3s");
    assert_eq!(h["ssh"]["command_timeout"], "2h");

    let flags = [
        "--ssh-user",
        "flag-user",
        "--ssh-port",
        "2300",
        "--jump",
        "ops@jump:2022",
        "--known-hosts",
        "/flag/kh",
        "--identity",
        "/flag/k",
        "--connect-timeout",
        "4s",
        "--command-timeout",
        "5m",
    ];
    let h = one(&flags, &env);
    assert_eq!(h["ssh"]["user"], "flag-user");
    assert_eq!(h["ssh"]["port"], 2300);
    assert_eq!(h["ssh"]["jump_host"], "ops@jump:2022");
    assert_eq!(h["ssh"]["known_hosts"], "/flag/kh");
    assert_eq!(h["ssh"]["identity_files"], serde_json::json!(["/flag/k"]));
    assert_eq!(h["ssh"]["connect_timeout"], "4s");
    assert_eq!(h["ssh"]["command_timeout"], "5m");
}

#[test]
fn bad_environment_values_and_flags_are_usage_errors() {
    let out = list(&["inventory", "list"], &[("FLEETUP_SSH_PORT", "0")]);
    assert_eq!(out.status.code(), Some(USAGE));
    let err = stderr(&out);
    assert!(
        err.contains("`FLEETUP_SSH_PORT`") && err.contains("port 0"),
        "{err}"
    );
    assert!(err.contains("hint: "), "{err}");

    let out = list(
        &["inventory", "list"],
        &[("FLEETUP_CONNECT_TIMEOUT", "soon")],
    );
    assert_eq!(out.status.code(), Some(USAGE));
    assert!(
        stderr(&out).contains("`FLEETUP_CONNECT_TIMEOUT`"),
        "{}",
        stderr(&out)
    );

    let out = list(&["--connect-timeout", "10", "inventory", "list"], &[]);
    assert_eq!(out.status.code(), Some(USAGE));
    assert!(
        stderr(&out).contains("--connect-timeout"),
        "{}",
        stderr(&out)
    );

    let out = list(&["--jump", "a@b@c", "inventory", "list"], &[]);
    assert_eq!(out.status.code(), Some(USAGE));
    assert!(stderr(&out).contains("--jump"), "{}", stderr(&out));
}

#[test]
fn check_in_json_reports_counts() {
    let example = root().join("inventory.example.toml");
    let out = fleetup(
        &[
            "-i",
            example.to_str().unwrap(),
            "--format",
            "json",
            "inventory",
            "check",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["hosts"], 4);
    assert_eq!(v["groups"], 3);
}
