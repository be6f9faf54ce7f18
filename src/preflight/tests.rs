//! Preflight tests on a fake transport: canned script output per node, every command recorded,
//! so each check's verdict and the read-only nature of the commands are checked without sshd.

use crate::exit_code;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Mutex;
use std::time::Duration;

use super::remote::SECTION;
use super::*;
use crate::events::Recorder;
use crate::facts::{ApiInfo, StorageFacts};
use crate::inventory::{Inventory, LocalEnv, Overrides};
use crate::plan::{Strategy, build_plan};
use crate::ssh::{
    ExecError, ExecOptions, ExecOutput, ExitStatus, HttpError, HttpResponse, Progress, UploadError,
    UploadReport,
};

const SHA: &str = "4f2b9c1e0d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c";

/// A node that answers every command with the same output and records the commands.
struct Fake {
    name: String,
    stdout: String,
    /// Something answers on the API port.
    port_open: bool,
    /// The node's sshd refuses forwarding channels (`AllowTcpForwarding no`).
    no_forwarding: bool,
    /// What `systemctl show` prints (else the script's output, which systemd reads as unknown).
    systemd: Option<String>,
    commands: Mutex<Vec<String>>,
}

impl Fake {
    fn new(name: &str, stdout: String) -> Fake {
        Fake {
            name: name.to_owned(),
            stdout,
            port_open: false,
            no_forwarding: false,
            systemd: None,
            commands: Mutex::new(Vec::new()),
        }
    }

    fn commands(&self) -> Vec<String> {
        self.commands.lock().unwrap().clone()
    }
}

impl Transport for Fake {
    fn host(&self) -> &str {
        &self.name
    }

    async fn exec(&self, command: &str, _opts: &ExecOptions) -> Result<ExecOutput, ExecError> {
        self.commands.lock().unwrap().push(command.to_owned());
        let stdout = match &self.systemd {
            Some(state) if command.starts_with("systemctl show") => state.clone(),
            _ => self.stdout.clone(),
        };
        Ok(ExecOutput {
            stdout: stdout.into_bytes(),
            stderr: Vec::new(),
            status: ExitStatus::Code(0),
            duration: Duration::from_millis(1),
            truncated: 0,
        })
    }

    async fn upload(
        &self,
        _data: &[u8],
        _sha256: &str,
        remote_path: &str,
        _mode: u32,
        _progress: Progress<'_>,
    ) -> Result<UploadReport, UploadError> {
        self.commands
            .lock()
            .unwrap()
            .push(format!("UPLOAD {remote_path}"));
        Err(UploadError::Remote {
            host: self.name.clone(),
            remote: remote_path.to_owned(),
            status: "1".to_owned(),
            stderr: "the fake refuses uploads".to_owned(),
        })
    }

    async fn http_get(
        &self,
        host: &str,
        port: u16,
        _path: &str,
        _timeout: Duration,
    ) -> Result<HttpResponse, HttpError> {
        if self.no_forwarding {
            Err(HttpError::Refused {
                host: self.name.clone(),
                target: format!("{host}:{port}"),
                reason: "administratively prohibited".to_owned(),
            })
        } else if self.port_open {
            Ok(HttpResponse {
                status: 404,
                headers: Vec::new(),
                body: Vec::new(),
            })
        } else {
            Err(HttpError::Connect {
                host: self.name.clone(),
                target: format!("{host}:{port}"),
                reason: "connection refused".to_owned(),
            })
        }
    }
}

/// The script's output: free disk `avail_kb` on one filesystem, then the given sections.
fn output(avail_kb: u64, sqlite: &[(u64, &str)], procs: &str, lock: &str, psql: &str) -> String {
    let df = format!("/dev/sda1 100000000 1 {avail_kb} 1% /");
    let mut s = format!(
        "{SECTION}df\nbackup\t/var/backups\t{df}\nreleases\t/opt/numary/releases\t{df}\n{SECTION}sqlite\n"
    );
    for (n, f) in sqlite {
        s.push_str(&format!("{n}\t{f}\n"));
    }
    s.push_str(&format!(
        "{SECTION}procs\n{procs}{SECTION}lock\n{lock}\n{SECTION}psql\n{psql}{SECTION}switch\ndir ok\nkind link\nreleases ok\n{SECTION}end\n"
    ));
    s
}

fn inventory(extra_ledger: &str, names: &[&str]) -> Vec<ResolvedHost> {
    let mut text = format!("[ledger]\nenv_file = \"/etc/numary/env\"\n{extra_ledger}\n");
    for n in names {
        text.push_str(&format!(
            "[[host]]\nname = \"{n}\"\naddress = \"{n}.internal\"\n"
        ));
    }
    let local = LocalEnv {
        home: Some("/home/op".into()),
        user: "op".into(),
        default_identity_files: Vec::new(),
    };
    Inventory::parse(
        &text,
        Path::new("/fleet/inv.toml"),
        &Overrides::default(),
        &local,
    )
    .expect("test inventory")
    .hosts()
    .to_vec()
}

fn sqlite_facts(version: &str) -> HostFacts {
    HostFacts {
        installed_version: Some(Version::parse(version).unwrap()),
        service: ServiceState::Stopped,
        storage: Some(StorageFacts {
            driver: StorageDriver::Sqlite,
            sqlite_dir: Some("/var/lib/numary/data".to_owned()),
            postgres: None,
        }),
        ledgers: vec!["default".to_owned()],
        ledgers_source: "sqlite-files".to_owned(),
        ..HostFacts::default()
    }
}

fn postgres_facts(version: &str) -> HostFacts {
    HostFacts {
        storage: Some(StorageFacts {
            driver: StorageDriver::Postgres,
            sqlite_dir: None,
            postgres: Some("postgresql://ledger:***@db/ledger".to_owned()),
        }),
        ledgers: Vec::new(),
        ledgers_source: String::new(),
        ..sqlite_facts(version)
    }
}

fn url_binary() -> BinarySource {
    BinarySource::Url {
        url: "https://releases.example/numary".to_owned(),
        sha256: SHA.to_owned(),
    }
}

struct Run {
    preflight: Preflight,
    events: usize,
    plan: Plan,
}

fn run_on(
    hosts: &[ResolvedHost],
    facts: BTreeMap<String, HostFacts>,
    fakes: &BTreeMap<String, Fake>,
    target: &str,
    stop: bool,
) -> Run {
    let opts = PlanOptions {
        strategy: Strategy::Offline,
        serial: None,
        canary: std::num::NonZeroUsize::MIN,
        hop_binaries: Vec::new(),
        stop_running: stop,
        backup: true,
        binary: url_binary(),
    };
    let plan = build_plan(
        hosts,
        &facts,
        &Version::parse(target).unwrap(),
        &opts,
        &PolicyTable::builtin(),
    );
    let recorder = Recorder::default();
    let input = PreflightInput {
        hosts,
        facts: &facts,
        plan: &plan,
        binary: &plan.binary,
        local_binary_version: None,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let preflight = rt.block_on(run(fakes, &input, &recorder));
    Run {
        preflight,
        events: recorder.events().len(),
        plan,
    }
}

fn find<'a>(p: &'a Preflight, host: &str, check: &str) -> Vec<&'a Finding> {
    p.findings
        .iter()
        .filter(|f| f.host.as_deref() == Some(host) && f.check == check)
        .collect()
}

fn fakes(list: Vec<Fake>) -> BTreeMap<String, Fake> {
    list.into_iter().map(|f| (f.name.clone(), f)).collect()
}

#[test]
fn a_clean_fleet_passes_every_check_with_one_event_per_finding() {
    let hosts = inventory("", &["a", "b"]);
    let facts = BTreeMap::from([
        ("a".to_owned(), sqlite_facts("1.7.4")),
        ("b".to_owned(), sqlite_facts("1.7.4")),
    ]);
    let out = output(10_000_000, &[(1 << 20, "numary_default.db")], "", "", "");
    let nodes = fakes(vec![Fake::new("a", out.clone()), Fake::new("b", out)]);
    let r = run_on(&hosts, facts, &nodes, "1.8.2", false);
    assert!(r.preflight.passed(), "{:#?}", r.preflight.findings);
    assert_eq!(r.events, r.preflight.findings.len());
    for host in ["a", "b"] {
        for check in [
            check::REACHABLE,
            check::UPGRADE_PATH,
            check::STOPPED,
            check::API_PORT,
            check::HOT_JOURNAL,
            check::LEDGERS,
            check::DISK_SPACE,
            check::LOCK,
        ] {
            assert_eq!(find(&r.preflight, host, check).len(), 1, "{host} {check}");
        }
        // One script and nothing else: no upload, no second command.
        assert_eq!(nodes[host].commands().len(), 1);
    }
    let fleet: Vec<&str> = r
        .preflight
        .findings
        .iter()
        .filter(|f| f.host.is_none())
        .map(|f| f.check)
        .collect();
    assert_eq!(fleet, [check::BINARY_SHA256, check::BINARY_VERSION]);
    assert_eq!(Outcome::of(&r.plan, &r.preflight), Outcome::Ready);
}

#[test]
fn a_port_that_answers_because_the_service_started_meanwhile_says_so() {
    // The facts saw the service stopped; by the port probe a start still in flight (a run that
    // died leaves its remote commands running) has brought the server up: not a squatter.
    let hosts = inventory("", &["a"]);
    let facts = BTreeMap::from([("a".to_owned(), sqlite_facts("1.7.4"))]);
    let mut node = Fake::new("a", output(10_000_000, &[], "", "", ""));
    node.port_open = true;
    node.systemd = Some("loaded\nactive\n".to_owned());
    let nodes = fakes(vec![node]);
    let r = run_on(&hosts, facts, &nodes, "1.8.2", false);
    let port = find(&r.preflight, "a", check::API_PORT);
    assert!(
        !port[0].ok
            && port[0].detail.contains("started it while this check ran")
            && !port[0].detail.contains("could not bind"),
        "{port:?}"
    );
    assert!(nodes["a"].commands()[1].starts_with("systemctl show"));
}

#[test]
fn the_scripts_write_nothing_and_never_spell_out_the_connection_string() {
    let hosts = inventory("", &["a", "b"]);
    let facts = BTreeMap::from([
        ("a".to_owned(), postgres_facts("1.7.4")),
        ("b".to_owned(), sqlite_facts("1.7.4")),
    ]);
    let nodes = fakes(vec![
        Fake::new("a", output(1, &[], "", "", "")),
        Fake::new("b", output(1, &[], "", "", "")),
    ]);
    // Mixed storage blocks, but every check still runs on every node.
    run_on(&hosts, facts, &nodes, "1.8.2", false);
    let all: Vec<String> = nodes.values().flat_map(Fake::commands).collect();
    assert_eq!(all.len(), 2);
    // psql connects through libpq's variables: no connection argument on its command line.
    assert!(all[0].contains(&crate::node::pg_env_from_conn_string()));
    assert!(all[0].contains("exec psql -X"));
    assert!(!all[0].contains("psql \"$NUMARY_STORAGE_POSTGRES_CONN_STRING\""));
    // The libpq snippet only exports variables (tested in `node`); scan the rest.
    let all: Vec<String> = all
        .iter()
        .map(|c| c.replace(&crate::node::pg_env_from_conn_string(), ""))
        .collect();
    for c in &all {
        for word in [
            "mkdir",
            "rm ",
            "rmdir",
            "mv ",
            "cp ",
            "touch",
            "ln ",
            "chmod",
            "tee",
            "storage ",
            "UPLOAD",
            "postgresql://",
        ] {
            assert!(!c.contains(word), "`{word}` in a preflight command:\n{c}");
        }
        let unquoted = outside_single_quotes(c);
        for (i, _) in unquoted.match_indices('>') {
            let rest = &unquoted[i..];
            assert!(
                rest.starts_with(">/dev/null") || rest.starts_with(">&"),
                "a redirect that writes a file: {rest}"
            );
        }
    }
}

/// The shell text outside single-quoted words (what `quote` produces, `'\''` included), where a
/// `>` is a redirect rather than data.
fn outside_single_quotes(command: &str) -> String {
    let mut out = String::new();
    let mut quoted = false;
    let mut chars = command.chars();
    while let Some(c) = chars.next() {
        match (quoted, c) {
            (false, '\\') => {
                chars.next();
            }
            (_, '\'') => quoted = !quoted,
            (false, c) => out.push(c),
            (true, _) => {}
        }
    }
    out
}

#[test]
fn each_problem_is_a_failed_finding_on_its_host() {
    let hosts = inventory(
        "ledgers = [\"default\", \"paymnts\"]",
        &["a", "b", "c", "d"],
    );
    let mut stopped_but_serving = sqlite_facts("1.7.4");
    stopped_but_serving.api = Some(ApiInfo {
        healthy: true,
        version: None,
    });
    let facts = BTreeMap::from([
        ("a".to_owned(), sqlite_facts("1.7.4")),
        ("b".to_owned(), sqlite_facts("1.7.4")),
        ("c".to_owned(), sqlite_facts("1.7.4")),
        ("d".to_owned(), sqlite_facts("1.7.4")),
    ]);
    let lock = "held\n{\"user\":\"ops\",\"local_host\":\"laptop\",\"run_id\":\"20260125T174502Z-3f9a0c\",\"pid\":4242,\"started_at\":\"2026-01-25T17:45:02Z\",\"fleetup_version\":\"0.1.0\",\"command\":\"upgrade\"}";
    let mut port = Fake::new("c", output(10_000_000, &[], "", "", ""));
    port.port_open = true;
    let nodes = fakes(vec![
        Fake::new("a", output(10_000_000, &[], "", lock, "")),
        Fake::new(
            "b",
            output(100, &[(1 << 30, "numary_default.db")], "", "", ""),
        ),
        port,
        Fake::new(
            "d",
            output(
                10_000_000,
                &[],
                "77\tstorage-files\t/usr/bin/numary server start --storage.postgres.conn_string postgresql://u:hunter2@db/x\n",
                "",
                "",
            ),
        ),
    ]);
    let r = run_on(&hosts, facts, &nodes, "1.8.2", false);
    let p = &r.preflight;
    assert!(!p.passed());
    assert!(p.lock_held());
    assert_eq!(Outcome::of(&r.plan, p), Outcome::LockHeld);

    let lock = find(p, "a", check::LOCK);
    assert!(
        !lock[0].ok
            && lock[0]
                .detail
                .contains("ops@laptop, run `20260125T174502Z-3f9a0c`"),
        "{lock:?}"
    );
    let disk = find(p, "b", check::DISK_SPACE);
    assert!(
        !disk[0].ok
            && disk[0].detail.contains("backup 1.2 GiB")
            && disk[0].detail.contains("100.0 KiB free"),
        "{disk:?}"
    );
    let port = find(p, "c", check::API_PORT);
    assert!(
        !port[0].ok && port[0].detail.contains("HTTP 404"),
        "{port:?}"
    );
    let proc = find(p, "d", check::STOPPED);
    assert_eq!(
        proc.len(),
        1,
        "the pass is dropped beside the failure: {proc:?}"
    );
    assert!(
        !proc[0].ok
            && proc[0]
                .detail
                .contains("pid 77 holds the SQLite files open")
    );
    assert!(!proc[0].detail.contains("hunter2"), "{}", proc[0].detail);
    for host in ["a", "b", "c", "d"] {
        let ledgers = find(p, host, check::LEDGERS);
        assert!(
            !ledgers[0].ok && ledgers[0].detail.contains("ledger `paymnts`"),
            "{ledgers:?}"
        );
    }
    assert_eq!(r.events, p.findings.len());
}

#[test]
fn hosts_without_a_session_or_unreachable_are_reported_as_such() {
    let hosts = inventory("", &["a", "b", "c"]);
    let facts = BTreeMap::from([
        ("a".to_owned(), sqlite_facts("1.7.4")),
        ("b".to_owned(), sqlite_facts("1.7.4")),
        (
            "c".to_owned(),
            HostFacts {
                unreachable: Some("connection timed out after 10s".to_owned()),
                ..HostFacts::default()
            },
        ),
    ]);
    let nodes = fakes(vec![Fake::new("a", output(10_000_000, &[], "", "", ""))]);
    let r = run_on(&hosts, facts, &nodes, "1.8.2", false);
    assert_eq!(r.preflight.unreachable_hosts(), ["b", "c"]);
    assert!(
        find(&r.preflight, "c", check::REACHABLE)[0]
            .detail
            .contains("timed out")
    );
    assert_eq!(Outcome::of(&r.plan, &r.preflight), Outcome::Unreachable);
    assert_eq!(Outcome::Unreachable.exit_code(), exit_code::UNREACHABLE);
}

#[test]
fn postgres_extensions_are_present_creatable_or_refused_with_the_sql_to_run() {
    let hosts = inventory("", &["a"]);
    let facts = BTreeMap::from([("a".to_owned(), postgres_facts("1.7.4"))]);
    let verdict = |psql: &str| {
        let nodes = fakes(vec![Fake::new("a", output(10_000_000, &[], "", "", psql))]);
        let r = run_on(&hosts, facts.clone(), &nodes, "1.8.2", false);
        let found = find(&r.preflight, "a", check::PG_EXTENSIONS);
        assert_eq!(found.len(), 1);
        found[0].clone()
    };
    let fine =
        verdict("role|f|t\next|pgcrypto|t|t|t\next|pg_trgm|f|t|t\nsize|1048576\nledger|default\n");
    assert!(fine.ok, "{fine:?}");
    assert!(fine.detail.contains("`pg_trgm` creatable by the role"));
    let refused = verdict("role|f|f\next|pgcrypto|t|t|t\next|pg_trgm|f|t|t\nsize|1\n");
    assert!(!refused.ok);
    assert!(
        refused
            .detail
            .contains("`pg_trgm` is not installed and the role may not create it")
    );
    assert!(
        refused
            .hint
            .unwrap()
            .contains("CREATE EXTENSION IF NOT EXISTS pg_trgm;")
    );
    let superuser = verdict("role|t|f\next|pgcrypto|f|t|f\next|pg_trgm|f|t|f\n");
    assert!(superuser.ok, "{superuser:?}");
    let no_psql = verdict("psql: not found\n");
    assert!(no_psql.ok && no_psql.detail.starts_with("warning: not verified"));
    let refused_login = verdict("psql: error: FATAL:  password authentication failed\n");
    assert!(!refused_login.ok);
    assert!(
        refused_login
            .detail
            .contains("password authentication failed")
    );
}

#[test]
fn a_stopped_postgres_fleet_takes_its_ledgers_from_the_database() {
    let hosts = inventory("ledgers = [\"default\", \"paymnts\"]", &["a"]);
    let facts = BTreeMap::from([("a".to_owned(), postgres_facts("1.7.4"))]);
    let psql = "role|t|t\next|pgcrypto|t|t|t\next|pg_trgm|t|t|t\nsize|10\nledger|default\nledger|payments\n";
    let nodes = fakes(vec![Fake::new("a", output(10_000_000, &[], "", "", psql))]);
    let r = run_on(&hosts, facts, &nodes, "1.8.2", false);
    let l = find(&r.preflight, "a", check::LEDGERS);
    assert!(!l[0].ok);
    assert!(l[0].detail.contains("`paymnts`") && l[0].detail.contains("`_system.ledgers`"));
    let disk = find(&r.preflight, "a", check::DISK_SPACE);
    assert!(disk[0].detail.contains("database 10 B"), "{disk:?}");
}

#[test]
fn running_nodes_pass_only_with_stop() {
    let hosts = inventory("", &["a"]);
    let mut f = sqlite_facts("1.7.4");
    f.service = ServiceState::Running;
    let facts = BTreeMap::from([("a".to_owned(), f)]);
    let nodes = fakes(vec![Fake::new("a", output(10_000_000, &[], "", "", ""))]);
    let refused = run_on(&hosts, facts.clone(), &nodes, "1.8.2", false);
    let s = find(&refused.preflight, "a", check::STOPPED);
    assert_eq!(s.len(), 1);
    assert!(!s[0].ok && s[0].detail.contains("is running"));
    assert_eq!(
        Outcome::of(&refused.plan, &refused.preflight),
        Outcome::Blocked
    );
    let stop = run_on(&hosts, facts, &nodes, "1.8.2", true);
    assert!(stop.preflight.passed(), "{:#?}", stop.preflight.findings);
}

#[test]
fn an_api_port_behind_a_refused_forwarding_channel_is_not_taken_for_silent() {
    let hosts = inventory("", &["a"]);
    let verdict = |service: ServiceState, stop: bool, no_forwarding: bool| {
        let mut f = sqlite_facts("1.7.4");
        f.service = service;
        let facts = BTreeMap::from([("a".to_owned(), f)]);
        let mut node = Fake::new("a", output(10_000_000, &[], "", "", ""));
        node.no_forwarding = no_forwarding;
        node.port_open = service == ServiceState::Running;
        let r = run_on(&hosts, facts, &fakes(vec![node]), "1.8.2", stop);
        find(&r.preflight, "a", check::API_PORT)
            .into_iter()
            .cloned()
            .collect::<Vec<_>>()
    };
    let silent = verdict(ServiceState::Stopped, false, false);
    assert!(silent.len() == 1 && silent[0].ok, "{silent:?}");
    for (service, stop) in [
        (ServiceState::Stopped, false),
        (ServiceState::Running, true),
    ] {
        let refused = verdict(service, stop, true);
        assert_eq!(refused.len(), 1, "{service:?}: {refused:?}");
        assert!(!refused[0].ok, "{refused:?}");
        assert!(
            refused[0]
                .detail
                .contains("cannot check the API port of `a`: sshd refuses port forwarding"),
            "{refused:?}"
        );
        assert!(
            refused[0]
                .hint
                .as_deref()
                .is_some_and(|h| h.contains("AllowTcpForwarding local")),
            "{refused:?}"
        );
    }
    // A running node whose port answers is `--stop`'s business: no finding about its port.
    assert_eq!(verdict(ServiceState::Running, true, false), Vec::new());
}

#[test]
fn other_sessions_on_the_postgres_database_block_unless_they_are_nodes_stop_stops() {
    let facts = |names: &[&str], service: ServiceState| -> BTreeMap<String, HostFacts> {
        names
            .iter()
            .map(|n| {
                let mut f = postgres_facts("1.7.4");
                f.service = service;
                ((*n).to_owned(), f)
            })
            .collect()
    };
    let psql = "role|t|t\next|pgcrypto|t|t|t\next|pg_trgm|t|t|t\nsize|10\nsessions|2\nsession|34564|127.0.0.1 ledger numary\nsession|40000|10.0.0.9 ledger numary|x\nledger|default\n";
    // `a` holds the session from port 34564 (0x8704), `b` the one from 40000 (0x9C40).
    let node = |name: &str, port: &str, psql: &str| {
        let procs = format!(
            "10\tbinary\t/usr/local/bin/numary server start\n{SECTION}ports\n10\tbinary\t0100007F:{port}\t01\n"
        );
        Fake::new(name, output(10_000_000, &[], &procs, "", psql))
    };
    let verdict = |names: &[&str], service: ServiceState, stop: bool, psql: &str| {
        let hosts = inventory("", names);
        let mut list = vec![node("a", "8704", psql)];
        if names.contains(&"b") {
            list.push(node("b", "9C40", psql));
        }
        let r = run_on(&hosts, facts(names, service), &fakes(list), "1.8.2", stop);
        let found: Vec<Finding> = find(&r.preflight, "a", check::DB_SESSIONS)
            .into_iter()
            .cloned()
            .collect();
        assert!(find(&r.preflight, "b", check::DB_SESSIONS).is_empty());
        assert_eq!(found.len(), 1, "{:#?}", r.preflight.findings);
        found[0].clone()
    };

    // Every session belongs to a selected node `--stop` stops: passes, re-counted later.
    let all = verdict(&["a", "b"], ServiceState::Running, true, psql);
    assert!(all.ok, "{all:?}");
    assert!(
        all.detail.contains("counted again before the migration"),
        "{all:?}"
    );

    // `b` left out by `--limit`: its session is someone else's.
    let limited = verdict(&["a"], ServiceState::Running, true, psql);
    assert!(!limited.ok, "{limited:?}");
    assert!(
        limited
            .detail
            .starts_with("1 other session on the database (`10.0.0.9 ledger numary|x`)"),
        "{limited:?}"
    );
    assert!(
        limited
            .hint
            .unwrap()
            .contains("including hosts outside `--limit`")
    );

    // A fleet said to be stopped whose database still has clients.
    let stopped = verdict(&["a", "b"], ServiceState::Stopped, false, psql);
    assert!(
        !stopped.ok && stopped.detail.starts_with("2 other sessions"),
        "{stopped:?}"
    );

    let idle = "role|t|t\next|pgcrypto|t|t|t\next|pg_trgm|t|t|t\nsize|10\nsessions|0\n";
    let free = verdict(&["a", "b"], ServiceState::Stopped, false, idle);
    assert!(
        free.ok && free.detail == "no other session on the database",
        "{free:?}"
    );

    // The count query failed (an old server without `backend_type`): unknown is no pass.
    let broken = "role|t|t\next|pgcrypto|t|t|t\next|pg_trgm|t|t|t\nsize|10\nERROR:  column \"backend_type\" does not exist\n";
    let unknown = verdict(&["a", "b"], ServiceState::Stopped, false, broken);
    assert!(
        !unknown.ok && unknown.detail.contains("backend_type"),
        "{unknown:?}"
    );
}

#[test]
fn a_process_on_the_same_database_blocks_only_while_the_plan_migrates_it() {
    let hosts = inventory("", &["a"]);
    // Another node's server on this machine, on the same database (nodes may share a machine).
    let procs = "10\tsame-database\t/usr/local/bin/numary server start\n";
    let nodes = fakes(vec![Fake::new(
        "a",
        output(
            10_000_000,
            &[],
            procs,
            "",
            "role|t|t\next|pgcrypto|t|t|t\next|pg_trgm|t|t|t\nsize|10\nsessions|0\n",
        ),
    )]);
    let stopped = |f: &Run| -> Vec<Finding> {
        find(&f.preflight, "a", check::STOPPED)
            .into_iter()
            .cloned()
            .collect()
    };
    let pending = run_on(
        &hosts,
        BTreeMap::from([("a".to_owned(), postgres_facts("1.7.4"))]),
        &nodes,
        "1.8.2",
        false,
    );
    assert!(
        pending
            .plan
            .steps
            .iter()
            .any(|s| s.kind == StepKind::Migrate),
        "{:#?}",
        pending.plan.steps
    );
    let s = stopped(&pending);
    assert!(
        !s[0].ok && s[0].detail.contains("same Postgres database"),
        "{s:?}"
    );

    // The database already holds every migration of the target: nothing migrates it.
    let target = Version::new(1, 8, 2);
    let last = crate::schema::last_migration(&target, StorageDriver::Postgres).unwrap();
    let mut migrated = postgres_facts("1.7.4");
    migrated.schema = Some(BTreeMap::from([(
        "default".to_owned(),
        (0..=last).collect(),
    )]));
    let done = run_on(
        &hosts,
        BTreeMap::from([("a".to_owned(), migrated)]),
        &nodes,
        "1.8.2",
        false,
    );
    assert!(!done.plan.steps.iter().any(|s| s.kind == StepKind::Migrate));
    let s = stopped(&done);
    assert!(s[0].ok, "{s:?}");
}
