//! Commands fleetup runs on a ledger node, built in one place: `numary` with exactly the
//! service's environment, the service manager (systemd or operator-given commands), and the
//! read-only probes used for facts. Every interpolated value goes through [`crate::shell::quote`].

use crate::facts::ServiceState;
use crate::inventory::{ResolvedHost, Service};
use crate::shell::quote;

/// `numary ARGS...` run with `binary` and the service's environment first (its env file as
/// systemd reads it, passed on stdin: [`crate::envfile`]), so the storage commands see exactly
/// what the service sees (contract gotcha: a different `$HOME` or `NUMARY_STORAGE_DIR` silently
/// points SQLite at an empty store).
pub fn numary(host: &ResolvedHost, binary: &str, args: &[&str]) -> String {
    numary_with(host.ledger.env_file.as_deref(), binary, args)
}

/// [`numary`] with the environment file given (`None`: none), for commands rendered from a
/// step's parameters.
pub fn numary_with(env_file: Option<&str>, binary: &str, args: &[&str]) -> String {
    let mut cmd = String::new();
    if let Some(env) = env_file {
        cmd.push_str(&crate::envfile::loader(env));
    }
    cmd.push_str("exec ");
    cmd.push_str(&quote(binary));
    for a in args {
        cmd.push(' ');
        cmd.push_str(&quote(a));
    }
    cmd
}

/// The service's environment loaded from stdin ([`crate::envfile::loader`]; nothing without an
/// env file): the variables the service reads, exported for the commands that follow, so the
/// storage they see is the service's. The file is never sourced: fleetup reads it, parses it as
/// systemd does, and the session feeds the values on stdin (never on a command line). Every
/// script that needs the service's environment starts with it.
pub fn env_prefix(host: &ResolvedHost) -> String {
    env_prefix_with(host.ledger.env_file.as_deref())
}

/// [`env_prefix`] with the environment file given.
pub fn env_prefix_with(env_file: Option<&str>) -> String {
    match env_file {
        Some(f) => crate::envfile::loader(f),
        None => String::new(),
    }
}

/// What a service-manager command means by its exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceAction {
    Start,
    Stop,
    Status,
}

/// The shell command for a service action. For `Status`, exit 0 means running; systemd's
/// `is-active` exits 3 when inactive; operator commands must exit non-zero when stopped.
pub fn service(host: &ResolvedHost, action: ServiceAction) -> String {
    service_command(&host.ledger.service, action)
}

/// [`service`] for the service settings given.
pub fn service_command(service: &Service, action: ServiceAction) -> String {
    match service {
        Service::Systemd { unit } => {
            let verb = match action {
                ServiceAction::Start => "start",
                ServiceAction::Stop => "stop",
                ServiceAction::Status => "is-active --quiet",
            };
            format!("systemctl {verb} {}", quote(unit))
        }
        Service::Command {
            start,
            stop,
            status,
        } => match action {
            ServiceAction::Start => start.clone(),
            ServiceAction::Stop => stop.clone(),
            ServiceAction::Status => status.clone(),
        },
    }
}

/// The command that asks the service manager for the service's state; read its result with
/// [`parse_service_state`]. For systemd, `is-active` is not enough: it exits 3 for
/// `activating (auto-restart)` (a crash-looping unit that systemd will start again) and for a
/// unit that does not exist, both of which would pass for "stopped".
pub fn service_state(host: &ResolvedHost) -> String {
    service_state_command(&host.ledger.service)
}

/// [`service_state`] for the service settings given.
pub fn service_state_command(service: &Service) -> String {
    match service {
        Service::Systemd { unit } => format!(
            "systemctl show --property=LoadState,ActiveState --value -- {}",
            quote(unit)
        ),
        Service::Command { status, .. } => status.clone(),
    }
}

/// systemd's `is-active`, asked right after a start (exit 0 and `active` once it runs; a unit
/// that failed at once or crash-loops prints `failed` or `activating` and exits non-zero).
/// An operator's own commands have their `status`, asked by the health gate's wait instead.
pub fn service_active_command(service: &Service) -> Option<String> {
    match service {
        Service::Systemd { unit } => Some(format!("systemctl is-active -- {}", quote(unit))),
        Service::Command { .. } => None,
    }
}

/// The last `lines` lines of a systemd unit's journal, without a pager.
pub fn journal_command(unit: &str, lines: usize) -> String {
    format!("journalctl -u {} -n {lines} --no-pager", quote(unit))
}

/// The command that keeps the service from starting at boot, where the manager has one:
/// systemd's `disable` (the decommission of an old node). An operator's own commands have none.
pub fn service_disable_command(service: &Service) -> Option<String> {
    match service {
        Service::Systemd { unit } => Some(format!("systemctl disable {}", quote(unit))),
        Service::Command { .. } => None,
    }
}

/// The command that tells whether the service starts at boot (systemd: `is-enabled`, which
/// prints the unit file state); read its output with [`parse_enabled`].
pub fn service_enabled_command(service: &Service) -> Option<String> {
    match service {
        Service::Systemd { unit } => Some(format!("systemctl is-enabled -- {}", quote(unit))),
        Service::Command { .. } => None,
    }
}

/// Whether `systemctl is-enabled`'s output says the unit starts at boot (`enabled`,
/// `enabled-runtime`, `linked`, `alias`, ...): anything but a state it cannot start from.
pub fn parse_enabled(stdout: &str) -> bool {
    !matches!(
        stdout.trim(),
        "disabled" | "masked" | "masked-runtime" | "static" | "indirect" | "generated"
    )
}

/// What the service manager said, with the reason when it is not a clear running/stopped.
pub fn parse_service_state(
    service: &Service,
    exit_code: Option<u32>,
    stdout: &str,
) -> (ServiceState, Option<String>) {
    match service {
        Service::Systemd { unit } => {
            let mut lines = stdout.lines().map(str::trim);
            let (load, active) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
            if exit_code != Some(0) || load != "loaded" {
                return (
                    ServiceState::Unknown,
                    Some(format!(
                        "systemd unit `{unit}` is not loaded (LoadState `{load}`): check the inventory's `service.unit`"
                    )),
                );
            }
            match active {
                "inactive" | "failed" => (ServiceState::Stopped, None),
                "active" | "reloading" => (ServiceState::Running, None),
                // activating (possibly auto-restart), deactivating: it may run any moment.
                other => (
                    ServiceState::Running,
                    Some(format!("systemd unit `{unit}` is `{other}`, not settled")),
                ),
            }
        }
        Service::Command { status, .. } => match exit_code {
            Some(0) => (ServiceState::Running, None),
            // The shell could not run the status command at all: that says nothing.
            Some(c @ (126 | 127)) => (
                ServiceState::Unknown,
                Some(format!(
                    "the status command `{status}` could not run (exit {c}): check the inventory's `service.status`"
                )),
            ),
            Some(_) => (ServiceState::Stopped, None),
            None => (
                ServiceState::Unknown,
                Some(format!(
                    "the status command `{status}` was killed by a signal"
                )),
            ),
        },
    }
}

/// Prints the service's env file, to be parsed here ([`crate::envfile::parse`]), never sourced.
/// With `become = "sudo"`, a file only root may read (mode 0600, or 0640 root:numary) is read
/// through `sudo -n`.
pub fn read_env_file(host: &ResolvedHost, file: &str) -> String {
    let f = quote(file);
    match host.ledger.escalate {
        crate::inventory::Become::None => format!("exec cat -- {f}"),
        crate::inventory::Become::Sudo => format!(
            "if [ -r {f} ]; then exec cat -- {f}; else {}; fi",
            crate::shell::sudo(&format!("exec cat -- {f}"))
        ),
    }
}

/// Marker lines of the [`probe`] script's sections.
pub const PROBE_ENV: &str = "==fleetup:env";
pub const PROBE_RELEASES: &str = "==fleetup:releases";
pub const PROBE_BINARY: &str = "==fleetup:binary";
pub const PROBE_BUSY: &str = "==fleetup:busy";
pub const PROBE_LOCK: &str = "==fleetup:lock";
pub const PROBE_END: &str = "==fleetup:end";

/// One read-only script for the facts that need no `numary`: the storage settings as the
/// service sees them (its env file's values loaded from stdin, exactly as the storage commands
/// get them: [`env_prefix`]), and the staged releases. The Postgres connection is reported as
/// `user@host:port/db` from libpq's variables: the password never leaves the node. Sections are
/// introduced by marker lines; `! reason` lines report what failed. `env_error`: the env file
/// could not be read (then no storage settings are printed). Shell builtins stand in for
/// `basename` and `cat`: every process it starts runs on every node of an audit.
pub fn probe(host: &ResolvedHost) -> String {
    probe_with(host, None)
}

/// [`probe`]; `env_error`: why the env file could not be read.
pub fn probe_with(host: &ResolvedHost, env_error: Option<&str>) -> String {
    let mut s = format!("echo {PROBE_ENV}; ( ");
    if let Some(why) = env_error {
        s.push_str(&format!("echo {}; exit 0; ", quote(&format!("! {why}"))));
    } else {
        s.push_str(&env_prefix(host));
    }
    s.push_str(&format!(
        "printf 'driver=%s\\n' \"${{NUMARY_STORAGE_DRIVER:-sqlite}}\"; \
         printf 'dir=%s\\n' \"${{NUMARY_STORAGE_DIR:-$HOME/.numary/data}}\"; \
         printf 'db_name=%s\\n' \"${{NUMARY_STORAGE_SQLITE_DB_NAME:-numary}}\"; \
         printf 'bind=%s\\n' \"${{NUMARY_SERVER_HTTP_BIND_ADDRESS:-localhost:3068}}\"; \
         if [ \"${{NUMARY_STORAGE_DRIVER:-}}\" = postgres ]; then {pg} && \
         printf 'postgres=%s@%s:%s/%s\\n' \"${{PGUSER:-}}\" \"${{PGHOST:-localhost}}\" \"${{PGPORT:-5432}}\" \"${{PGDATABASE:-}}\"; fi ); ",
        pg = pg_env_from_conn_string(),
    ));
    let r = quote(&host.ledger.releases_dir);
    s.push_str(&format!(
        "echo {PROBE_RELEASES}; if [ -d {r} ]; then for d in {r}/*/; do [ -d \"$d\" ] && d=\"${{d%/}}\" && echo \"${{d##*/}}\"; done; fi; \
         echo {PROBE_BINARY}; readlink -f {b} 2>/dev/null; \
         echo {PROBE_LOCK}; if [ -d {lock} ]; then echo held; fi; {{ IFS= read -r g < {generation} && echo \"$g\"; }} 2>/dev/null; \
         echo {PROBE_BUSY}; if [ -d {lock} ]; then {busy}; fi; echo {PROBE_END}",
        busy = STORAGE_COMMANDS,
        lock = quote(&crate::lock::lock_path(host)),
        generation = quote(&crate::lock::generation_path(host)),
        b = quote(&host.ledger.binary),
    ));
    s
}

/// The `application_name` of fleetup's own read-only `psql` queries (facts, schema, the
/// sessions check), which the sessions check leaves out.
pub const PG_PROBE_APPLICATION: &str = "fleetup probe";

/// `PGAPPNAME='fleetup probe' `: put before `psql` in a read-only query.
pub fn pg_probe_application() -> String {
    format!("PGAPPNAME={} ", quote(PG_PROBE_APPLICATION))
}

/// Prints the pid of each `numary` process running a storage command (`numary storage ...`):
/// one an interrupted run may have left running, which still holds the storage.
pub const STORAGE_COMMANDS: &str = "for p in $(pgrep -x numary 2>/dev/null); do tr '\\0' ' ' < /proc/$p/cmdline 2>/dev/null | grep -q ' storage ' && echo $p; done; true";

/// The sections of a [`probe`] output.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProbeOutput {
    /// `NUMARY_STORAGE_DRIVER` (default `sqlite`).
    pub driver: String,
    /// `NUMARY_STORAGE_DIR` (default `$HOME/.numary/data`).
    pub dir: String,
    /// `NUMARY_STORAGE_SQLITE_DB_NAME` (default `numary`).
    pub db_name: String,
    /// `NUMARY_SERVER_HTTP_BIND_ADDRESS` (default `localhost:3068`).
    pub bind: String,
    /// Postgres only: `user@host:port/db`, never the password.
    pub postgres: Option<String>,
    pub env_error: Option<String>,
    pub releases: Vec<String>,
    /// Where the binary resolves to (`readlink -f`): the release it runs.
    pub binary_target: Option<String>,
    /// A fleetup lock is held on the node.
    pub locked: bool,
    /// The run id of the last fleetup run that locked the node ([`crate::lock::generation_path`]).
    pub lock_generation: Option<String>,
    /// Pids of `numary storage ...` commands running on the node (looked for only where a lock
    /// is left, the trace of an interrupted run).
    pub busy: Vec<String>,
}

pub fn parse_probe(stdout: &str) -> ProbeOutput {
    let mut out = ProbeOutput::default();
    let mut section = "";
    for line in stdout.lines() {
        match line {
            PROBE_ENV | PROBE_RELEASES | PROBE_BINARY | PROBE_LOCK | PROBE_BUSY | PROBE_END => {
                section = line
            }
            _ => match section {
                PROBE_ENV => {
                    if let Some(err) = line.strip_prefix("! ") {
                        out.env_error = Some(err.to_string());
                    } else if let Some((k, v)) = line.split_once('=') {
                        let v = v.to_string();
                        match k {
                            "driver" => out.driver = v,
                            "dir" => out.dir = v,
                            "db_name" => out.db_name = v,
                            "bind" => out.bind = v,
                            "postgres" => out.postgres = Some(v),
                            _ => {}
                        }
                    }
                }
                PROBE_RELEASES if !line.is_empty() => out.releases.push(line.to_string()),
                PROBE_BINARY if !line.is_empty() => out.binary_target = Some(line.to_string()),
                PROBE_LOCK if line == "held" => out.locked = true,
                PROBE_LOCK if !line.trim().is_empty() => {
                    out.lock_generation = Some(line.trim().to_string())
                }
                PROBE_BUSY if !line.trim().is_empty() => out.busy.push(line.trim().to_string()),
                _ => {}
            },
        }
    }
    out
}

/// Lists the SQLite storage dir: the `*.db` files and any hot journal (`*-journal`, `*-wal`).
pub fn list_sqlite_dir(dir: &str) -> String {
    let d = quote(dir);
    format!(
        "if [ -d {d} ]; then cd {d} && for f in *.db *-journal *-wal; do [ -e \"$f\" ] && printf '%s\\n' \"$f\"; done; fi; true"
    )
}

/// SQLite file names split into ledger names (`<db_name>_<ledger>.db`, `_system` excluded) and
/// hot journals.
pub fn parse_sqlite_listing(stdout: &str, db_name: &str) -> (Vec<String>, Vec<String>) {
    let mut ledgers = Vec::new();
    let mut journals = Vec::new();
    let prefix = format!("{db_name}_");
    for name in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if name.ends_with("-journal") || name.ends_with("-wal") {
            journals.push(name.to_string());
        } else if let Some(ledger) = name
            .strip_suffix(".db")
            .and_then(|n| n.strip_prefix(&prefix))
            && ledger != "_system"
        {
            ledgers.push(ledger.to_string());
        }
    }
    (ledgers, journals)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the probe in a real local `sh` against an env file and returns what it reports.
    fn host_with(env_file: Option<String>) -> ResolvedHost {
        ResolvedHost {
            name: "n".into(),
            address: "127.0.0.1".into(),
            groups: vec![],
            migrator: false,
            replaces: None,
            ssh: crate::inventory::SshSettings {
                user: "u".into(),
                port: 22,
                identity_files: vec![],
                known_hosts: "/dev/null".into(),
                global_known_hosts: vec![],
                connect_timeout: std::time::Duration::from_secs(1),
                command_timeout: std::time::Duration::from_secs(1),
                migration_timeout: std::time::Duration::from_secs(1),
                jump_host: None,
                use_agent: false,
                jump_chain: Vec::new(),
                openssh: Default::default(),
            },
            ledger: crate::inventory::LedgerSettings {
                env_file,
                ..Default::default()
            },
            rollout: Default::default(),
        }
    }

    /// Does locally what the facts do over SSH: reads the env file with [`read_env_file`] (in a
    /// real `sh`, `PATH` first), parses it as systemd does, then runs the probe with the values
    /// on stdin. `env_error` as the facts would say it.
    fn read_and_probe(host: &ResolvedHost, path: &str) -> ProbeOutput {
        let sh = |cmd: &str, stdin: &[u8]| {
            use std::io::Write;
            let mut child = std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(cmd)
                .env_clear()
                .env("PATH", path)
                .env("HOME", "/home/ledger")
                .stdin(std::process::Stdio::piped())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            child.stdin.take().unwrap().write_all(stdin).unwrap();
            child.wait_with_output().unwrap()
        };
        let (env_error, stdin) = match &host.ledger.env_file {
            None => (None, Vec::new()),
            Some(f) => {
                let out = sh(&read_env_file(host, f), b"");
                if out.status.success() {
                    let env = crate::envfile::parse(&String::from_utf8_lossy(&out.stdout));
                    (None, env.stdin())
                } else {
                    (
                        Some(format!("cannot read {f}, not even through sudo -n")),
                        Vec::new(),
                    )
                }
            }
        };
        let out = sh(&probe_with(host, env_error.as_deref()), &stdin);
        assert!(out.status.success());
        let mut p = parse_probe(&String::from_utf8_lossy(&out.stdout));
        if p.env_error.is_none() && env_error.is_some() {
            p.env_error = env_error;
        }
        p
    }

    /// `Some(None)`: the inventory names an env file that does not exist.
    fn probe_locally(env_text: Option<Option<&str>>) -> ProbeOutput {
        let dir = tempfile::tempdir().unwrap();
        let mut host = host_with(None);
        let releases = dir.path().join("releases dir");
        std::fs::create_dir_all(releases.join("1.7.4")).unwrap();
        std::fs::create_dir_all(releases.join("1.8.2")).unwrap();
        host.ledger.releases_dir = releases.display().to_string();
        host.ledger.env_file = env_text.map(|t| {
            let p = dir.path().join("env");
            if let Some(t) = t {
                std::fs::write(&p, t).unwrap();
            }
            p.display().to_string()
        });
        read_and_probe(&host, "/usr/bin:/bin")
    }

    #[test]
    fn probe_reads_the_env_file_as_systemd_does_and_never_runs_it() {
        let p = probe_locally(Some(Some(
            "# data\nNUMARY_STORAGE_DIR=\"/srv/ledger\"\nNUMARY_STORAGE_SQLITE_DB_NAME=led\nNUMARY_SERVER_HTTP_BIND_ADDRESS=127.0.0.1:4000\n",
        )));
        assert_eq!(p.driver, "sqlite");
        assert_eq!(p.dir, "/srv/ledger");
        assert_eq!(p.db_name, "led");
        assert_eq!(p.bind, "127.0.0.1:4000");
        assert_eq!(p.postgres, None);
        assert_eq!(p.env_error, None);
        assert_eq!(p.releases, vec!["1.7.4", "1.8.2"]);

        // No substitution, and nothing runs: systemd's value, verbatim.
        let dir = tempfile::tempdir().unwrap();
        let owned = dir.path().join("owned");
        let p = probe_locally(Some(Some(&format!(
            "NUMARY_STORAGE_DIR=$HOME/x\nNUMARY_STORAGE_SQLITE_DB_NAME=$(touch {})\n",
            owned.display()
        ))));
        assert_eq!(p.dir, "$HOME/x");
        assert!(p.db_name.starts_with("$(touch "), "{p:?}");
        assert!(!owned.exists(), "the env file was run");
        let p = probe_locally(None);
        assert_eq!(p.dir, "/home/ledger/.numary/data");
        assert_eq!(p.bind, "localhost:3068");
    }

    #[test]
    fn with_become_sudo_an_unreadable_env_file_is_read_through_sudo() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = host_with(Some(dir.path().join("no-such-env").display().to_string()));
        host.ledger.releases_dir = dir.path().display().to_string();
        host.ledger.escalate = crate::inventory::Become::Sudo;
        let bin = dir.path().join("bin");
        std::fs::create_dir(&bin).unwrap();
        let path = format!("{}:/usr/bin:/bin", bin.display());
        // No sudo: the env file cannot be read at all.
        let p = read_and_probe(&host, &path);
        assert!(
            p.env_error
                .as_deref()
                .is_some_and(|e| e.contains("not even through sudo -n")),
            "{p:?}"
        );
        // A stand-in sudo that is root enough to read it (it prints the file's content).
        use std::os::unix::fs::PermissionsExt;
        let sudo = bin.join("sudo");
        std::fs::write(
            &sudo,
            "#!/bin/sh\n[ \"$1\" = -n ] || exit 9\nprintf 'NUMARY_STORAGE_DIR=\"/via sudo\"\\n'\n",
        )
        .unwrap();
        std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755)).unwrap();
        let p = read_and_probe(&host, &path);
        assert_eq!(p.env_error, None, "{p:?}");
        assert_eq!(p.dir, "/via sudo");
    }

    #[test]
    fn without_the_environment_on_stdin_the_probe_reports_no_storage() {
        let dir = tempfile::tempdir().unwrap();
        let host = host_with(Some(dir.path().join("env").display().to_string()));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(probe(&host))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        let p = parse_probe(&String::from_utf8_lossy(&out.stdout));
        assert_eq!((p.driver.as_str(), p.dir.as_str()), ("", ""), "{p:?}");
    }

    #[test]
    fn probe_reports_the_lock_and_the_last_run_that_took_it() {
        let dir = tempfile::tempdir().unwrap();
        let mut host = host_with(None);
        host.ledger.releases_dir = dir.path().display().to_string();
        let run = |host: &ResolvedHost| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(probe(host))
                .output()
                .unwrap();
            parse_probe(&String::from_utf8_lossy(&out.stdout))
        };
        let p = run(&host);
        assert!(!p.locked);
        assert_eq!(p.lock_generation, None);
        std::fs::write(
            crate::lock::generation_path(&host),
            "20260125T174502Z-aaaaaa\n",
        )
        .unwrap();
        std::fs::create_dir(crate::lock::lock_path(&host)).unwrap();
        let p = run(&host);
        assert!(p.locked);
        assert_eq!(
            p.lock_generation.as_deref(),
            Some("20260125T174502Z-aaaaaa")
        );
    }

    #[test]
    fn probe_reports_postgres_without_the_password() {
        let secret = "it's-S3cret";
        let env = format!(
            "NUMARY_STORAGE_DRIVER=postgres\nNUMARY_STORAGE_POSTGRES_CONN_STRING=\"postgresql://ledger:{secret}@db.internal:5433/numary\"\n"
        );
        let p = probe_locally(Some(Some(&env)));
        assert_eq!(p.driver, "postgres");
        assert_eq!(
            p.postgres.as_deref(),
            Some("ledger@db.internal:5433/numary")
        );
        assert!(!format!("{p:?}").contains(secret));
    }

    #[test]
    fn probe_reports_an_unreadable_env_file() {
        let p = probe_locally(Some(None));
        assert!(
            p.env_error
                .as_deref()
                .is_some_and(|e| e.starts_with("cannot read")),
            "{p:?}"
        );
        assert_eq!(
            p.releases,
            vec!["1.7.4", "1.8.2"],
            "the other sections still report"
        );
    }

    #[test]
    fn service_state_reads_systemd_properties_and_command_exits() {
        let mut host = host_with(None);
        host.ledger.service = Service::Systemd {
            unit: "numary.service".into(),
        };
        assert!(service_state(&host).contains("--value -- numary.service"));
        let st = |code, out: &str| parse_service_state(&host.ledger.service, code, out).0;
        assert_eq!(st(Some(0), "loaded\ninactive\n"), ServiceState::Stopped);
        assert_eq!(st(Some(0), "loaded\nfailed\n"), ServiceState::Stopped);
        assert_eq!(st(Some(0), "loaded\nactive\n"), ServiceState::Running);
        // Crash-looping: systemd will start it again, so it is not stopped.
        assert_eq!(st(Some(0), "loaded\nactivating\n"), ServiceState::Running);
        // A misspelt unit is not a stopped service.
        assert_eq!(st(Some(0), "not-found\ninactive\n"), ServiceState::Unknown);
        assert_eq!(st(Some(1), ""), ServiceState::Unknown);

        host.ledger.service = Service::Command {
            start: "s".into(),
            stop: "t".into(),
            status: "/opt/x status".into(),
        };
        let st = |code| parse_service_state(&host.ledger.service, code, "").0;
        assert_eq!(st(Some(0)), ServiceState::Running);
        assert_eq!(st(Some(3)), ServiceState::Stopped);
        assert_eq!(st(Some(127)), ServiceState::Unknown);
        assert_eq!(st(Some(126)), ServiceState::Unknown);
        assert_eq!(st(None), ServiceState::Unknown);
    }

    #[test]
    fn sqlite_listing_splits_ledgers_and_journals() {
        let (ledgers, journals) = parse_sqlite_listing(
            "numary__system.db\nnumary_default.db\nnumary_pay-ments.db\nother_x.db\nnumary_default.db-journal\n",
            "numary",
        );
        assert_eq!(ledgers, vec!["default", "pay-ments"]);
        assert_eq!(journals, vec!["numary_default.db-journal"]);
    }
}

/// A shell snippet that, once the service's env file is sourced, turns
/// `NUMARY_STORAGE_POSTGRES_CONN_STRING` (URL or `key=value` form) into libpq's own variables
/// (`PGHOST`, `PGPORT`, `PGUSER`, `PGPASSWORD`, `PGDATABASE`, `PGSSLMODE`...), so `pg_dump` and
/// `psql` run with no connection argument: the password never appears on any command line, not
/// even in the node's process list. awk reads the string from its environment, not its argv.
pub fn pg_env_from_conn_string() -> String {
    format!("eval \"$(awk {})\"", quote(PG_ENV_AWK))
}

/// Parses the conn string from `ENVIRON` and prints `export NAME='value'` lines.
const PG_ENV_AWK: &str = r#"
function hexval(c) { return index("0123456789abcdef", tolower(c)) - 1 }
function unpct(s,   out, i, c) {
  out = ""
  for (i = 1; i <= length(s); i++) {
    c = substr(s, i, 1)
    if (c == "%" && i + 2 <= length(s)) { out = out sprintf("%c", hexval(substr(s, i + 1, 1)) * 16 + hexval(substr(s, i + 2, 1))); i += 2 }
    else out = out c
  }
  return out
}
function emit(name, v) { gsub(/'/, "'\\''", v); printf "export %s='%s'\n", name, v }
function param(k, v) {
  if (k == "host" || k == "hostaddr") emit("PGHOST", v)
  else if (k == "port") emit("PGPORT", v)
  else if (k == "user") emit("PGUSER", v)
  else if (k == "password") emit("PGPASSWORD", v)
  else if (k == "dbname") emit("PGDATABASE", v)
  else if (k == "sslmode") emit("PGSSLMODE", v)
  else if (k == "sslrootcert") emit("PGSSLROOTCERT", v)
  else if (k == "sslcert") emit("PGSSLCERT", v)
  else if (k == "sslkey") emit("PGSSLKEY", v)
  else if (k == "connect_timeout") emit("PGCONNECT_TIMEOUT", v)
  else if (k == "application_name") emit("PGAPPNAME", v)
  else if (k == "options") emit("PGOPTIONS", v)
}
BEGIN {
  u = ENVIRON["NUMARY_STORAGE_POSTGRES_CONN_STRING"]
  if (u == "") u = "postgresql://localhost/postgres"
  if (u ~ /^postgres(ql)?:\/\//) {
    sub(/^postgres(ql)?:\/\//, "", u)
    q = ""; if (index(u, "?")) { q = substr(u, index(u, "?") + 1); u = substr(u, 1, index(u, "?") - 1) }
    db = ""; if (index(u, "/")) { db = substr(u, index(u, "/") + 1); u = substr(u, 1, index(u, "/") - 1) }
    if (index(u, "@")) {
      n = split(u, parts, "@"); hp = parts[n]; auth = substr(u, 1, length(u) - length(hp) - 1)
      if (index(auth, ":")) { param("user", unpct(substr(auth, 1, index(auth, ":") - 1))); param("password", unpct(substr(auth, index(auth, ":") + 1))) }
      else if (auth != "") param("user", unpct(auth))
    } else hp = u
    if (hp ~ /^\[/) { h = substr(hp, 2, index(hp, "]") - 2); p = substr(hp, index(hp, "]") + 2) }
    else if (index(hp, ":")) { h = substr(hp, 1, index(hp, ":") - 1); p = substr(hp, index(hp, ":") + 1) }
    else { h = hp; p = "" }
    if (h != "") param("host", unpct(h))
    if (p != "") param("port", p)
    if (db != "") param("dbname", unpct(db))
    n = split(q, kvs, "&")
    for (i = 1; i <= n; i++) if (index(kvs[i], "=")) param(substr(kvs[i], 1, index(kvs[i], "=") - 1), unpct(substr(kvs[i], index(kvs[i], "=") + 1)))
  } else {
    while (match(u, /[A-Za-z_]+[ \t]*=[ \t]*/)) {
      k = substr(u, RSTART, RLENGTH); sub(/[ \t]*=[ \t]*$/, "", k); u = substr(u, RSTART + RLENGTH)
      if (substr(u, 1, 1) == "'") {
        v = ""; u = substr(u, 2)
        while (length(u) > 0 && substr(u, 1, 1) != "'") {
          if (substr(u, 1, 1) == "\\") { v = v substr(u, 2, 1); u = substr(u, 3) } else { v = v substr(u, 1, 1); u = substr(u, 2) }
        }
        u = substr(u, 2)
      } else { match(u, /^[^ \t]*/); v = substr(u, 1, RLENGTH); u = substr(u, RLENGTH + 1) }
      param(k, v)
    }
  }
}
"#;

#[cfg(test)]
mod pg_env_tests {
    use super::*;

    /// Runs the snippet in a real local `sh` with the conn string in the environment and
    /// returns the libpq variables it exported.
    fn exports(conn: &str) -> Vec<(String, String)> {
        let script = format!(
            "{} && env | grep '^PG' | LC_ALL=C sort",
            pg_env_from_conn_string()
        );
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(&script)
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .env("NUMARY_STORAGE_POSTGRES_CONN_STRING", conn)
            .output()
            .expect("sh");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn url_form_with_encoded_password_port_and_params() {
        assert_eq!(
            exports(
                "postgresql://led%40ger:p%40ss'w\"d$(x)@db.example:5433/ledger?sslmode=require&x=y"
            ),
            kv(&[
                ("PGDATABASE", "ledger"),
                ("PGHOST", "db.example"),
                ("PGPASSWORD", "p@ss'w\"d$(x)"),
                ("PGPORT", "5433"),
                ("PGSSLMODE", "require"),
                ("PGUSER", "led@ger"),
            ])
        );
        assert_eq!(
            exports("postgres://u@[::1]/db"),
            kv(&[("PGDATABASE", "db"), ("PGHOST", "::1"), ("PGUSER", "u")])
        );
    }

    #[test]
    fn key_value_form_and_default() {
        assert_eq!(
            exports("host=10.0.0.5 port=5432 user=ledger password='se cr\\'et' dbname=numary"),
            kv(&[
                ("PGDATABASE", "numary"),
                ("PGHOST", "10.0.0.5"),
                ("PGPASSWORD", "se cr'et"),
                ("PGPORT", "5432"),
                ("PGUSER", "ledger"),
            ])
        );
        assert_eq!(
            exports(""),
            kv(&[("PGDATABASE", "postgres"), ("PGHOST", "localhost")])
        );
    }
}
