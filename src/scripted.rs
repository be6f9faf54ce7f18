//! A fleet played by a script, for the engine's tests and its scale benchmark
//! (`examples/engine_scale.rs`); the CLI never uses it. Each [`Node`] is a [`Transport`] that
//! answers the commands the engine sends by what they contain, fails loudly on any other, and
//! serves `/_info` on the target while started. [`Traffic`] counts a fleet's transport calls (and
//! the most in flight at once) and holds each call for a simulated latency. [`Fleet`] builds the
//! inventory hosts, facts and nodes of a fleet of [`Spec`]s at 1.7.4 going to 1.8.2.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::facts::{HostFacts, ServiceState, StorageDriver, StorageFacts};
use crate::inventory::{LedgerSettings, ResolvedHost, SshSettings};
use crate::lock::{LeaseConfig, LockOwner};
use crate::plan::{BinarySource, Plan, PlanOptions, Strategy, build_plan};
use crate::policy::PolicyTable;
use crate::runner::{Cancel, FailBudget, FailurePolicy, PriorRun, RunConfig};
use crate::ssh::{
    ExecError, ExecOptions, ExecOutput, ExitStatus, HttpError, HttpResponse, Progress, Transport,
    UploadError, UploadReport,
};
use crate::version::Version;

/// The run id of [`run_config`].
pub const RUN_ID: &str = "20260125T174502Z-00ab12";

/// What `storage list` prints on a node holding the `default` ledger.
pub const LISTED: &str = "Ledgers:\n- default\n";

/// The SHA-256 of the binary every scripted plan stages.
pub fn binary_sha256() -> String {
    "ab".repeat(32)
}

/// A host with the built-in ledger settings and short timeouts.
pub fn host(name: &str) -> ResolvedHost {
    ResolvedHost {
        name: name.into(),
        address: "127.0.0.1".into(),
        groups: vec![],
        migrator: false,
        replaces: None,
        ssh: SshSettings {
            user: "ops".into(),
            port: 22,
            identity_files: vec![],
            known_hosts: "/kh".into(),
            global_known_hosts: vec![],
            connect_timeout: Duration::from_secs(1),
            command_timeout: Duration::from_secs(1),
            migration_timeout: Duration::from_secs(1),
            jump_host: None,
            use_agent: false,
            jump_chain: Vec::new(),
            openssh: Default::default(),
        },
        ledger: LedgerSettings::default(),
        rollout: Default::default(),
    }
}

/// The transport calls of a fleet: how many, how many at once at most, and how long each is
/// held (the simulated latency of a command on a real node).
#[derive(Debug, Default)]
pub struct Traffic {
    latency: Duration,
    now: AtomicUsize,
    max: AtomicUsize,
    calls: AtomicU64,
}

impl Traffic {
    /// Every call of the nodes sharing it lasts `latency` (zero: none, the call answers at once).
    pub fn new(latency: Duration) -> Arc<Self> {
        Arc::new(Traffic {
            latency,
            ..Traffic::default()
        })
    }

    /// The most calls seen in flight at once.
    pub fn most_in_flight(&self) -> usize {
        self.max.load(Ordering::SeqCst)
    }

    /// Every call so far (exec, upload, HTTP).
    pub fn calls(&self) -> u64 {
        self.calls.load(Ordering::SeqCst)
    }

    /// Counts one call while it lasts; its latency lets other hosts' tasks overlap it, so an
    /// engine running more at once than it should is seen doing so.
    async fn enter(traffic: &Option<Arc<Traffic>>) -> Option<InFlight> {
        let t = traffic.as_ref()?;
        t.calls.fetch_add(1, Ordering::Relaxed);
        let n = t.now.fetch_add(1, Ordering::SeqCst) + 1;
        t.max.fetch_max(n, Ordering::SeqCst);
        let guard = InFlight(t.clone());
        if !t.latency.is_zero() {
            tokio::time::sleep(t.latency).await;
        }
        Some(guard)
    }
}

struct InFlight(Arc<Traffic>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.now.fetch_sub(1, Ordering::SeqCst);
    }
}

/// A node played by a script: answers each command it was scripted for by what the command
/// contains, fails loudly on any other (exit 127, kept in [`Node::unexpected`]), logs every
/// command (unless made [`Node::quiet`]), and serves `/_info` on the target while started.
/// Clones share the node's state.
#[derive(Clone)]
pub struct Node {
    pub name: String,
    /// What `storage list` prints before `storage scan` ran, and after.
    listed: Arc<(String, String)>,
    /// A command containing this fails (exit 1, stderr `boom`).
    fail: Option<&'static str>,
    /// The ledgers whose SQLite files (or Postgres schemas) the backup holds.
    files: Arc<Vec<String>>,
    scanned: Arc<AtomicBool>,
    started: Arc<AtomicBool>,
    disabled: Arc<AtomicBool>,
    log: Option<Arc<Mutex<Vec<String>>>>,
    unexpected: Arc<Mutex<Vec<String>>>,
    traffic: Option<Arc<Traffic>>,
}

impl Node {
    /// A stopped node holding the `default` ledger, logging its commands.
    pub fn new(name: &str) -> Self {
        Node {
            name: name.to_string(),
            listed: Arc::new((LISTED.into(), LISTED.into())),
            fail: None,
            files: Arc::new(vec!["default".into()]),
            scanned: Arc::default(),
            started: Arc::default(),
            disabled: Arc::default(),
            log: Some(Arc::default()),
            unexpected: Arc::default(),
            traffic: None,
        }
    }

    /// What `storage list` prints before `storage scan`, and after.
    pub fn listing(mut self, before: &str, after: &str) -> Self {
        self.listed = Arc::new((before.into(), after.into()));
        self
    }

    /// The ledgers its storage holds (what the backup copies or dumps).
    pub fn holding(mut self, ledgers: &[&str]) -> Self {
        self.files = Arc::new(ledgers.iter().map(|s| s.to_string()).collect());
        self
    }

    /// Every command containing `part` fails.
    pub fn failing(mut self, part: Option<&'static str>) -> Self {
        self.fail = part;
        self
    }

    /// Running at the start.
    pub fn running(self, running: bool) -> Self {
        self.started.store(running, Ordering::SeqCst);
        self
    }

    /// Its calls counted (and held) by `traffic`.
    pub fn traffic(mut self, traffic: Option<Arc<Traffic>>) -> Self {
        self.traffic = traffic;
        self
    }

    /// Keeps no log of its commands (a large fleet: only the calls are counted).
    pub fn quiet(mut self) -> Self {
        self.log = None;
        self
    }

    /// Every command it ran, in order (none when quiet).
    pub fn commands(&self) -> Vec<String> {
        self.log
            .as_ref()
            .map(|l| l.lock().unwrap_or_else(|e| e.into_inner()).clone())
            .unwrap_or_default()
    }

    /// It ran a command containing `part`.
    pub fn ran(&self, part: &str) -> bool {
        self.commands().iter().any(|c| c.contains(part))
    }

    /// Its service runs.
    pub fn started(&self) -> bool {
        self.started.load(Ordering::SeqCst)
    }

    /// Commands it was not scripted for.
    pub fn unexpected(&self) -> Vec<String> {
        self.unexpected
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, command: &str) {
        if let Some(log) = &self.log {
            log.lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(command.to_string());
        }
    }

    /// `(exit code, stdout, stderr)` of `cmd`.
    fn answer(&self, cmd: &str) -> (u32, String, String) {
        let has = |s: &str| cmd.contains(s);
        let ok = |out: &str| (0, out.to_string(), String::new());
        if self.fail.is_some_and(has) {
            return (1, String::new(), format!("boom: `{cmd}`\n"));
        }
        // The engine's probes: nothing is done yet on these nodes.
        if has("pgrep -x numary") {
            return ok("");
        }
        if has("sqlite3 -readonly") {
            return (7, String::new(), "sqlite3 is not installed".into());
        }
        if has("exec psql -X -q -At") && !has("from pg_stat_activity") {
            return (7, String::new(), "psql is not installed".into());
        }
        if cmd.starts_with("f=") && has("[ -x \"$f\" ] && sha256sum") {
            return (1, String::new(), String::new());
        }
        if cmd.starts_with("readlink -f ") {
            return ok("/opt/numary/releases/1.7.4/numary\n");
        }
        if has("storage list") {
            let listed = if self.scanned.load(Ordering::SeqCst) {
                &self.listed.1
            } else {
                &self.listed.0
            };
            ok(listed)
        } else if has("storage scan") {
            self.scanned.store(true, Ordering::SeqCst);
            ok("")
        } else if let Some(rest) = cmd.split("storage upgrade ").nth(1) {
            ok(&format!("Storage '{}' migrated\r\n", rest.trim()))
        } else if cmd.ends_with(" version") {
            ok("Version: 1.8.2 \n")
        } else if has("echo ==orig") {
            let sums: String = self
                .files
                .iter()
                .map(|l| format!("aa 1 numary_{l}.db\n"))
                .collect();
            ok(&format!(
                "==dir /data\n==name numary\n==orig\n{sums}==copy\n{sums}"
            ))
        } else if has("exec pg_dump --format=custom") {
            let schemas: String = self
                .files
                .iter()
                .map(|l| format!("==schema \"{l}\"\n"))
                .collect();
            ok(&format!("{schemas}==dump {} 4096\n", "cd".repeat(32)))
        } else if has("prev-link") {
            ok(
                "prev-link /opt/numary/releases/1.7.4/numary\nnow /opt/numary/releases/1.8.2/numary\n",
            )
        } else if has("systemctl show --property=LoadState,ActiveState") {
            ok(if self.started() {
                "loaded\nactive\n"
            } else {
                "loaded\ninactive\n"
            })
        } else if has("journalctl -u") {
            ok("numary[1]: the unit's journal\n")
        } else if has("systemctl is-active") {
            if self.started() {
                ok("active\n")
            } else {
                (3, "inactive\n".to_string(), String::new())
            }
        } else if has("systemctl disable") {
            self.disabled.store(true, Ordering::SeqCst);
            ok("")
        } else if has("systemctl is-enabled") {
            ok(if self.disabled.load(Ordering::SeqCst) {
                "disabled\n"
            } else {
                "enabled\n"
            })
        } else if has("systemctl start") || has("systemctl stop") {
            self.started.store(has("systemctl start"), Ordering::SeqCst);
            ok("")
        } else if cmd.starts_with("FLEETUP_HOST=") {
            // The operator's hook.
            ok("hook ran\n")
        } else if has("from pg_stat_activity") {
            ok("sessions|0\n")
        } else if has("echo ==journals") {
            ok("==journals\n==open\n")
        } else if (has(".fleetup.lock") && (has("mkdir \"$d\"") || has("grep -qF")))
            || has("mkdir -p /opt/numary/releases/")
            || has("rm -f \"$d/numary\"")
            || has("rm -rf -- /var/backups/numary/")
        {
            ok("")
        } else {
            self.unexpected
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(cmd.to_string());
            (127, String::new(), format!("unexpected command: {cmd}\n"))
        }
    }
}

impl Transport for Node {
    fn host(&self) -> &str {
        &self.name
    }

    async fn exec(&self, command: &str, _: &ExecOptions) -> Result<ExecOutput, ExecError> {
        let _in_flight = Traffic::enter(&self.traffic).await;
        self.record(command);
        let (code, stdout, stderr) = self.answer(command);
        Ok(ExecOutput {
            stdout: stdout.into_bytes(),
            stderr: stderr.into_bytes(),
            status: ExitStatus::Code(code),
            duration: Duration::ZERO,
            truncated: 0,
        })
    }

    async fn upload(
        &self,
        data: &[u8],
        sha256: &str,
        remote_path: &str,
        _: u32,
        _: Progress<'_>,
    ) -> Result<UploadReport, UploadError> {
        let _in_flight = Traffic::enter(&self.traffic).await;
        self.record(&format!("# upload {remote_path}"));
        Ok(UploadReport {
            bytes: data.len() as u64,
            sha256: sha256.to_string(),
        })
    }

    async fn http_get(
        &self,
        host: &str,
        port: u16,
        path: &str,
        _: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let _in_flight = Traffic::enter(&self.traffic).await;
        if !self.started() {
            return Err(HttpError::Connect {
                host: self.name.clone(),
                target: format!("{host}:{port}"),
                reason: "connection refused".into(),
            });
        }
        let body = if path == "/_info" {
            r#"{"data":{"version":"1.8.2"}}"#
        } else {
            "{}"
        };
        Ok(HttpResponse {
            status: 200,
            headers: vec![],
            body: body.as_bytes().to_vec(),
        })
    }
}

/// One node at 1.7.4 of a scripted fleet going to 1.8.2, as its facts and its script say.
#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    /// `storage list` before `scan`, and after it.
    pub listed: (&'static str, &'static str),
    /// The ledgers its facts report.
    pub known: &'static [&'static str],
    /// The inventory's `ledgers`.
    pub expected: Option<&'static [&'static str]>,
    /// A command containing this fails.
    pub fail: Option<&'static str>,
    /// Running at the start (the run stops it: `--stop`).
    pub running: bool,
    /// The lock generation its facts read (the scripted lock finds none).
    pub generation: Option<&'static str>,
}

/// A stopped node holding `default`, as the audit saw it.
pub fn spec(name: &str) -> Spec {
    Spec {
        name: name.to_string(),
        listed: (LISTED, LISTED),
        known: &["default"],
        expected: None,
        fail: None,
        running: false,
        generation: None,
    }
}

/// What the nodes of a scripted fleet store their ledgers in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Storage {
    /// SQLite files of each node's own.
    Sqlite,
    /// One Postgres database shared by every node.
    Postgres,
}

/// A scripted fleet: the inventory's hosts, the facts the audit gathered, and the nodes.
pub struct Fleet {
    pub hosts: Vec<ResolvedHost>,
    pub facts: BTreeMap<String, HostFacts>,
    pub nodes: Vec<Node>,
}

impl Fleet {
    /// The fleet of `specs` on `storage`, its nodes' calls counted by `traffic`; `log`: each
    /// node keeps the commands it ran.
    pub fn new(specs: &[Spec], storage: Storage, traffic: Option<Arc<Traffic>>, log: bool) -> Self {
        let mut fleet = Fleet {
            hosts: Vec::with_capacity(specs.len()),
            facts: BTreeMap::new(),
            nodes: Vec::with_capacity(specs.len()),
        };
        for s in specs {
            let mut h = host(&s.name);
            h.ledger.ledgers = s
                .expected
                .map(|e| e.iter().map(|s| s.to_string()).collect());
            fleet.hosts.push(h);
            fleet.facts.insert(s.name.clone(), facts(s, storage));
            let node = Node::new(&s.name)
                .listing(s.listed.0, s.listed.1)
                .holding(s.known)
                .failing(s.fail)
                .running(s.running)
                .traffic(traffic.clone());
            fleet.nodes.push(if log { node } else { node.quiet() });
        }
        fleet
    }

    /// The offline plan to 1.8.2 of every host (`--stop` when one runs), with a backup unless
    /// `backup` is false.
    pub fn plan(&self, backup: bool) -> Plan {
        let opts = PlanOptions {
            strategy: Strategy::Offline,
            serial: None,
            canary: std::num::NonZeroUsize::MIN,
            hop_binaries: Vec::new(),
            stop_running: self
                .facts
                .values()
                .any(|f| f.service == ServiceState::Running),
            backup,
            binary: BinarySource::File {
                path: "numary".into(),
                sha256: binary_sha256(),
            },
        };
        build_plan(
            &self.hosts,
            &self.facts,
            &Version::new(1, 8, 2),
            &opts,
            &PolicyTable::builtin(),
        )
    }

    /// The engine's fleet, each host's session a clone of its node.
    pub fn connected(self) -> crate::runner::Fleet<Node> {
        crate::runner::Fleet {
            sessions: self
                .nodes
                .into_iter()
                .map(|n| (n.name.clone(), n))
                .collect(),
            hosts: self.hosts,
            facts: self.facts,
        }
    }
}

fn facts(s: &Spec, storage: Storage) -> HostFacts {
    HostFacts {
        installed_version: Some(Version::new(1, 7, 4)),
        service: if s.running {
            ServiceState::Running
        } else {
            ServiceState::Stopped
        },
        storage: Some(match storage {
            Storage::Postgres => StorageFacts {
                driver: StorageDriver::Postgres,
                sqlite_dir: None,
                postgres: Some("postgres://ledger@10.0.0.5:5432/ledger".into()),
            },
            Storage::Sqlite => StorageFacts {
                driver: StorageDriver::Sqlite,
                sqlite_dir: Some("/data".into()),
                postgres: None,
            },
        }),
        ledgers: s.known.iter().map(|s| s.to_string()).collect(),
        lock_generation: s.generation.map(str::to_string),
        ..HostFacts::default()
    }
}

/// The run's settings for a scripted fleet: run id [`RUN_ID`], short timeouts, `--forks
/// forks`, no failure budget.
pub fn run_config(forks: usize) -> RunConfig {
    RunConfig {
        run_id: RUN_ID.into(),
        owner: LockOwner {
            user: "ops".into(),
            local_host: "here".into(),
            run_id: RUN_ID.into(),
            pid: 1,
            started_at: "2026-01-25T17:45:02Z".into(),
            fleetup_version: "0".into(),
            command: "upgrade".into(),
            process: None,
        },
        break_lock: false,
        binaries: BTreeMap::from([(binary_sha256(), Arc::new(b"#!/bin/sh\n".to_vec()))]),
        stop_timeout: Duration::from_secs(1),
        health_timeout: Duration::from_secs(1),
        poll_interval: Duration::from_millis(10),
        parallel_uploads: 4,
        forks,
        failure: FailurePolicy {
            max_failed: FailBudget::Count(0),
        },
        prior: PriorRun::default(),
        cancel: Cancel::default(),
        lease: LeaseConfig::default(),
        resumed: false,
        pause: None,
    }
}
