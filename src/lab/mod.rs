//! The practice lab: real OpenSSH `sshd` processes on 127.0.0.1 with the ledger simulator
//! installed as each node's `numary`, and an inventory that every fleetup command uses unchanged.
//! [`Lab::up`] builds one in a dir (state in `lab.json`), [`Lab::down`] stops exactly the
//! processes it started, by pid. Tests use [`LabGuard`] so a failing test leaves nothing behind.

pub mod availability;
pub mod digest;
mod inventory_file;
pub mod keys;
pub mod node;
pub mod pg;
pub mod process;
pub mod sshd;
#[cfg(test)]
mod testing;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::{Deserialize, Serialize};

use crate::error::Failure;
use crate::exit_code;
use crate::version::Version;

pub use availability::{AvailabilityPoller, AvailabilityReport, PollTarget, Sample};
pub use node::NodePaths;

/// Format of `lab.json`; bumped when a field changes meaning.
const STATE_FORMAT: u32 = 1;
const STATE_FILE: &str = "lab.json";
const SIM_NAME: &str = "numary-sim";
/// The lab's copy of the simulator is named like the real binary, so its processes look like
/// `numary` in a process list (`comm`, `pgrep -x numary`), as on a real node.
const SIM_COPY_NAME: &str = "numary";
/// How long `up` waits for a started server to answer `/_info`.
const HEALTH_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the ledgers live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    /// Each node has its own SQLite store: N independent single-node deployments.
    Sqlite,
    /// All nodes share one Postgres database, as a real multi-node deployment does.
    Postgres,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Sqlite => "sqlite",
            Driver::Postgres => "postgres",
        }
    }
}

/// What [`Lab::up`] builds.
#[derive(Debug, Clone)]
pub struct LabSpec {
    pub dir: PathBuf,
    pub nodes: usize,
    pub version: Version,
    pub driver: Driver,
    /// Postgres server to create the lab's database in (any database of it; credentials must
    /// allow `CREATE DATABASE`). Required for [`Driver::Postgres`].
    pub pg_url: Option<String>,
    pub ledgers: Vec<String>,
    /// Transactions seeded in each ledger.
    pub transactions: u32,
    /// Start every node's service (else the fleet is left cleanly stopped).
    pub start: bool,
    /// Postgres: each node its own database on the server (N single-node deployments, each
    /// reaching "its local Postgres" at 127.0.0.1), instead of one database shared by all.
    pub pg_per_node: bool,
    /// The simulator to install; default: see [`find_sim`].
    pub sim: Option<PathBuf>,
    /// New nodes for the replace strategy: `new-1` … `new-N`, `new-i` with `replaces =
    /// "node-i"`, each with its own sshd, env file (the storage of the node it replaces),
    /// service script and API port, but no `numary` installed and the service stopped.
    pub replacements: usize,
    /// Bastions chained in front of the nodes: `bastion-1` -> ... -> `bastion-N` -> nodes,
    /// each its own sshd (logging each forward at `LogLevel DEBUG1`). The inventory then
    /// reaches every node through the whole chain, the bastions named in `DIR/ssh_config`.
    pub bastions: usize,
}

impl LabSpec {
    /// 3 SQLite nodes at 1.8.2 with ledgers `default` and `payments`, 20 transactions each,
    /// services started.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        LabSpec {
            dir: dir.into(),
            nodes: 3,
            version: Version::new(1, 8, 2),
            driver: Driver::Sqlite,
            pg_url: None,
            ledgers: vec!["default".into(), "payments".into()],
            transactions: 20,
            start: true,
            pg_per_node: false,
            sim: None,
            replacements: 0,
            bastions: 0,
        }
    }
}

/// A lab as recorded in `DIR/lab.json` (mode 0600: it holds the Postgres URL, password included,
/// which `down` needs to drop the database).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lab {
    pub format: u32,
    /// Absolute.
    pub dir: PathBuf,
    /// The version installed at `up`.
    pub version: Version,
    pub driver: Driver,
    /// The user fleetup logs in as (the one who ran `up`).
    pub user: String,
    pub ledgers: Vec<String>,
    pub transactions: u32,
    pub nodes: Vec<LabNode>,
    pub postgres: Option<LabPostgres>,
    /// The bastion chain in front of the nodes, first hop first (empty: nodes reached directly).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bastions: Vec<LabBastion>,
}

/// One sshd of the lab's bastion chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabBastion {
    /// `bastion-1`, ...: its `Host` alias in `DIR/ssh_config`.
    pub name: String,
    pub ssh_port: u16,
    pub sshd_dir: PathBuf,
    pub sshd_pid: u32,
}

impl LabBastion {
    /// Its sshd log: at `LogLevel DEBUG1`, one `server_request_direct_tcpip` line per tunnel
    /// it opened (`target 127.0.0.1 port N`).
    pub fn log_path(&self) -> PathBuf {
        self.sshd_dir.join("sshd.log")
    }

    /// The ports this bastion opened tunnels to, in order, read from its log.
    pub fn forwarded_ports(&self) -> Vec<u16> {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        log.lines()
            .filter(|l| l.contains("server_request_direct_tcpip"))
            .filter_map(|l| l.rsplit_once("port ")?.1.trim().parse().ok())
            .collect()
    }

    fn sshd_is_ours(&self) -> bool {
        process::alive(self.sshd_pid)
            && process::cmdline(self.sshd_pid).contains(&*self.sshd_dir.to_string_lossy())
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabNode {
    /// `node-1`, `node-2`, ...
    pub name: String,
    pub ssh_port: u16,
    pub api_port: u16,
    /// The node's filesystem root; every path of its inventory entry is under it.
    pub root: PathBuf,
    /// Host keys, config, pid file and log of its sshd (outside the root: they change with
    /// every connection).
    pub sshd_dir: PathBuf,
    pub sshd_pid: u32,
    pub migrator: bool,
    /// A replacement node: the old node it takes over from (`replaces` in the inventory).
    #[serde(default)]
    pub replaces: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LabPostgres {
    /// The server URL given to `up` (password included).
    pub server_url: String,
    /// The lab's own database in that server, shared by every node (or, with `per_node`, the
    /// prefix of each node's own database).
    pub database: String,
    /// Each node has its own database, [`LabPostgres::node_database`].
    #[serde(default)]
    pub per_node: Vec<String>,
}

impl LabPostgres {
    /// Connection string of the lab's database (password included: never print it).
    pub fn url(&self) -> anyhow::Result<String> {
        Ok(pg::PgUrl::parse(&self.server_url)?.with_database(&self.database))
    }

    /// The database `node` uses: its own with `per_node`, else the shared one.
    pub fn node_database(&self, node: &str) -> String {
        if self.per_node.iter().any(|n| n == node) {
            format!("{}_{}", self.database, node.replace('-', "_"))
        } else {
            self.database.clone()
        }
    }

    /// Connection string of `node`'s database (password included: never print it).
    pub fn node_url(&self, node: &str) -> anyhow::Result<String> {
        Ok(pg::PgUrl::parse(&self.server_url)?.with_database(&self.node_database(node)))
    }

    /// Every database the lab created.
    pub fn databases(&self) -> Vec<String> {
        if self.per_node.is_empty() {
            vec![self.database.clone()]
        } else {
            self.per_node
                .iter()
                .map(|n| self.node_database(n))
                .collect()
        }
    }
}

impl LabNode {
    pub fn paths(&self) -> NodePaths {
        NodePaths::new(&self.root)
    }

    /// The service script says the server runs.
    pub fn service_running(&self) -> bool {
        self.paths()
            .service("status")
            .is_ok_and(|(code, _)| code == 0)
    }

    pub fn sshd_running(&self) -> bool {
        self.sshd_is_ours()
    }

    /// The node drops off the network as far as SSH goes: its sshd and every session it serves
    /// are killed (SIGKILL), as when a machine or its link dies; its ledger server keeps
    /// running. For failure tests.
    pub fn kill_sshd(&self) -> anyhow::Result<()> {
        if !self.sshd_is_ours() {
            bail!("the sshd of `{}` does not run", self.name);
        }
        let sessions = process::descendants(self.sshd_pid);
        for pid in std::iter::once(self.sshd_pid).chain(sessions) {
            // Not the ledger server: the service script detached it from the session.
            if process::cmdline(pid).ends_with(" server start") {
                continue;
            }
            if let Ok(p) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) on the lab's own sshd and its session processes.
                unsafe { libc::kill(p, libc::SIGKILL) };
            }
        }
        Ok(())
    }

    /// The node's link goes silent, as when a cable is pulled or a firewall starts dropping
    /// packets: its sshd and every session it serves are stopped (SIGSTOP), so connections stay
    /// open but nothing answers on them and new ones get no banner. [`LabNode::thaw_sshd`]
    /// undoes it. For failure tests: the client's timeouts must fire.
    pub fn freeze_sshd(&self) -> anyhow::Result<()> {
        self.signal_sshd(libc::SIGSTOP)
    }

    /// Resumes what [`LabNode::freeze_sshd`] stopped.
    pub fn thaw_sshd(&self) -> anyhow::Result<()> {
        self.signal_sshd(libc::SIGCONT)
    }

    fn signal_sshd(&self, signal: libc::c_int) -> anyhow::Result<()> {
        if !self.sshd_is_ours() {
            bail!("the sshd of `{}` does not run", self.name);
        }
        for pid in std::iter::once(self.sshd_pid).chain(process::descendants(self.sshd_pid)) {
            if process::cmdline(pid).ends_with(" server start") {
                continue;
            }
            if let Ok(p) = libc::pid_t::try_from(pid) {
                // SAFETY: kill(2) on the lab's own sshd and its session processes.
                unsafe { libc::kill(p, signal) };
            }
        }
        Ok(())
    }

    /// The node gets new host keys (as after a reinstall, or a machine-in-the-middle): its
    /// sshd's keys are generated afresh and the sshd reloads them (SIGHUP); returns once it
    /// accepts connections again. Its known_hosts lines in the lab are left as they were.
    pub fn replace_host_keys(&self) -> anyhow::Result<()> {
        if !self.sshd_is_ours() {
            bail!("the sshd of `{}` does not run", self.name);
        }
        sshd::regenerate_host_keys(&self.sshd_dir)?;
        let pid = libc::pid_t::try_from(self.sshd_pid)?;
        // SAFETY: kill(2) on the lab's own sshd: SIGHUP makes it re-execute and re-read its keys.
        unsafe { libc::kill(pid, libc::SIGHUP) };
        let deadline = Instant::now() + Duration::from_secs(10);
        // The listener closes and reopens while it re-executes.
        std::thread::sleep(Duration::from_millis(200));
        while std::net::TcpStream::connect(("127.0.0.1", self.ssh_port)).is_err() {
            if Instant::now() > deadline {
                bail!("the sshd of `{}` did not come back after SIGHUP", self.name);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(())
    }

    /// The pid is alive and still the sshd of this node (not a reused pid).
    fn sshd_is_ours(&self) -> bool {
        process::alive(self.sshd_pid)
            && process::cmdline(self.sshd_pid).contains(&*self.sshd_dir.to_string_lossy())
    }

    /// `GET path` on the node's API from this machine: status code and body.
    pub fn api_get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        http_get(self.api_port, path, Duration::from_secs(3))
    }

    /// Starts the node's service and waits until its API answers `/_info`.
    pub fn start(&self) -> anyhow::Result<()> {
        let (code, out) = self.paths().service("start")?;
        if code != 0 {
            bail!(
                "the service of `{}` did not start (exit {code}): {out}",
                self.name
            );
        }
        wait_healthy(self)
    }

    /// Stops the node's service (the script waits for the server to exit).
    pub fn stop(&self) -> anyhow::Result<()> {
        let (code, out) = self.paths().service("stop")?;
        if code != 0 {
            bail!(
                "the service of `{}` did not stop (exit {code}): {out}",
                self.name
            );
        }
        Ok(())
    }

    /// The version of the release the node's binary points to.
    pub fn installed_version(&self) -> Option<String> {
        self.paths().installed_version()
    }

    /// The node whose storage this one uses: itself, or the node a replacement replaces.
    pub fn storage_node(&self) -> &str {
        self.replaces.as_deref().unwrap_or(&self.name)
    }

    /// `ledger.binary` exists (a replacement node has none until fleetup deploys it).
    pub fn binary_installed(&self) -> bool {
        self.paths().binary().exists()
    }
}

/// One node as `lab status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeStatus {
    pub name: String,
    /// A replacement node: the node it replaces.
    pub replaces: Option<String>,
    pub ssh_port: u16,
    pub sshd_pid: u32,
    pub sshd_running: bool,
    pub api_port: u16,
    pub service_running: bool,
    pub server_pid: Option<u32>,
    /// `ledger.binary` exists.
    pub binary_installed: bool,
    /// From the wrapper the binary symlink points to.
    pub installed_version: Option<String>,
    /// What `/_info` answers, when the API is up.
    pub api_version: Option<String>,
    /// `sqlite DIR` or `postgres DATABASE` (never a password).
    pub storage: String,
}

/// What [`Lab::down`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DownReport {
    /// `(node, pid)` of each server stopped.
    pub servers_stopped: Vec<(String, u32)>,
    /// `(node, pid)` of each sshd stopped.
    pub sshd_stopped: Vec<(String, u32)>,
    /// The Postgres database dropped, if any.
    pub database_dropped: Option<String>,
    /// Processes that would not die (should be empty).
    pub survivors: Vec<u32>,
}

/// A lab that is brought down and deleted when dropped, so a failing test leaves no process
/// and no database behind.
#[derive(Debug)]
pub struct LabGuard {
    lab: Lab,
}

impl LabGuard {
    pub fn up(spec: &LabSpec) -> anyhow::Result<LabGuard> {
        Lab::up(spec).map(|lab| LabGuard { lab })
    }
}

impl std::ops::Deref for LabGuard {
    type Target = Lab;
    fn deref(&self) -> &Lab {
        &self.lab
    }
}

impl Drop for LabGuard {
    fn drop(&mut self) {
        let _ = self.lab.down();
        let _ = std::fs::remove_dir_all(&self.lab.dir);
    }
}

impl Lab {
    /// Builds and starts a lab in `spec.dir`, which must not hold one already. On failure,
    /// whatever was started is stopped again; the dir is kept for its logs.
    pub fn up(spec: &LabSpec) -> anyhow::Result<Lab> {
        check_spec(spec)?;
        // Missing tools are reported before anything is created.
        sshd::find_sshd()?;
        keys::find_ssh_keygen()?;
        let sim = find_sim(spec.sim.as_deref())?;
        let server = match (spec.driver, &spec.pg_url) {
            (Driver::Postgres, Some(url)) => Some(pg::PgUrl::parse(url)?),
            (Driver::Postgres, None) => {
                return Err(Failure::usage("a Postgres lab needs a server URL")
                    .hint("pass `--pg-url postgresql://USER:PASSWORD@HOST:PORT/postgres` or set `FLEETUP_LAB_PG_URL`")
                    .hint("`eval \"$(scripts/pg.sh start)\"` starts a private server and sets `FLEETUP_TEST_PG_URL`")
                    .into());
            }
            (Driver::Sqlite, _) => None,
        };

        if spec.dir.join(STATE_FILE).exists() {
            return Err(
                Failure::usage(format!("`{}` already holds a lab", spec.dir.display()))
                    .hint(format!(
                        "`fleetup lab down --dir {} --purge` removes it, or choose another `--dir`",
                        spec.dir.display()
                    ))
                    .into(),
            );
        }
        // Never write into a dir that holds anything else: `inventory.toml` and `bin/` would
        // overwrite an operator's files.
        if std::fs::read_dir(&spec.dir).is_ok_and(|mut entries| entries.next().is_some()) {
            return Err(
                Failure::usage(format!("`{}` is not empty", spec.dir.display()))
                    .hint("a lab needs a new or empty dir: choose another `--dir`")
                    .into(),
            );
        }
        std::fs::create_dir_all(&spec.dir)
            .with_context(|| format!("cannot create `{}`", spec.dir.display()))?;
        let dir = std::fs::canonicalize(&spec.dir)
            .with_context(|| format!("cannot resolve `{}`", spec.dir.display()))?;
        let mut lab = Lab {
            format: STATE_FORMAT,
            dir,
            version: spec.version.clone(),
            driver: spec.driver,
            user: current_user()?,
            ledgers: spec.ledgers.clone(),
            transactions: spec.transactions,
            nodes: Vec::new(),
            postgres: None,
            bastions: Vec::new(),
        };
        lab.save()?;
        match lab.build(spec, &sim, server.as_ref()) {
            Ok(()) => Ok(lab),
            Err(e) => {
                let _ = lab.down();
                Err(e.context(format!(
                    "the lab in `{}` did not come up; what it started is stopped again",
                    lab.dir.display()
                )))
            }
        }
    }

    fn build(
        &mut self,
        spec: &LabSpec,
        sim: &Path,
        server: Option<&pg::PgUrl>,
    ) -> anyhow::Result<()> {
        // A copy, so rebuilding the simulator cannot change or break a running lab.
        std::fs::create_dir_all(self.dir.join("bin"))?;
        std::fs::copy(sim, self.sim_path()).with_context(|| {
            format!(
                "cannot copy `{}` to `{}`",
                sim.display(),
                self.sim_path().display()
            )
        })?;
        node::set_mode(&self.sim_path(), 0o755)?;
        std::fs::create_dir_all(self.sim_state_dir())?;
        keys::generate_key(
            &self.client_key_path(),
            keys::KeyKind::Ed25519,
            None,
            "fleetup-lab-client",
        )?;
        let client_pub = keys::public_key_line(&self.client_key_path())?;

        if let Some(server) = server {
            let database = pg::unique_database_name();
            // Recorded before it exists, so `down` drops it even if creating it half-failed.
            let per_node = if spec.pg_per_node {
                (1..=spec.nodes).map(|i| format!("node-{i}")).collect()
            } else {
                Vec::new()
            };
            let pg = LabPostgres {
                server_url: spec.pg_url.clone().unwrap_or_default(),
                database: database.clone(),
                per_node,
            };
            // Recorded before they exist, so `down` drops them even if creating half-failed.
            self.postgres = Some(pg.clone());
            self.save()?;
            for db in pg.databases() {
                pg::create_database(server, &db)?;
            }
        }

        let wrapper = self.release_wrapper(&self.version);
        let mut setup = NodeSetup {
            client_pub: &client_pub,
            used_ports: BTreeSet::new(),
            known_hosts: Vec::new(),
        };
        for i in 1..=spec.bastions {
            self.add_bastion(&mut setup, format!("bastion-{i}"))?;
        }
        for i in 1..=spec.nodes {
            let name = format!("node-{i}");
            self.add_node(&mut setup, name, None, Some(&wrapper))?;
        }
        for i in 1..=spec.replacements {
            let (name, old) = (format!("new-{i}"), format!("node-{i}"));
            self.add_node(&mut setup, name, Some(old), None)?;
        }
        let known_hosts = setup.known_hosts;
        let mut text = known_hosts.join("\n");
        text.push('\n');
        node::write_file(&self.known_hosts_path(), &text, 0o644)?;

        self.seed()?;
        if !self.bastions.is_empty() {
            node::write_file(
                &self.ssh_config_path(),
                &inventory_file::render_ssh_config(self),
                0o644,
            )?;
        }
        node::write_file(&self.inventory_path(), &inventory_file::render(self), 0o644)?;
        if spec.start {
            self.start_services()?;
        }
        Ok(())
    }

    /// Lays out node `name` (with the lab's release when `wrapper` is given, else without any
    /// `numary`), starts its sshd and records it in `lab.json`. The first node is the migrator.
    fn add_node(
        &mut self,
        setup: &mut NodeSetup<'_>,
        name: String,
        replaces: Option<String>,
        wrapper: Option<&str>,
    ) -> anyhow::Result<()> {
        let base = self.dir.join("nodes").join(&name);
        let api_port = fresh_port(&mut setup.used_ports)?;
        let paths = NodePaths::new(base.join("root"));
        // A replacement takes over the storage of the node it replaces.
        let storage_node = replaces.as_deref().unwrap_or(&name);
        let env = self.node_env(&name, storage_node, &paths, api_port)?;
        match wrapper {
            Some(wrapper) => paths.install(&env, &self.version, wrapper),
            None => paths.lay_out(&env),
        }
        .with_context(|| format!("cannot lay out node `{name}`"))?;
        let sshd = sshd::start(&sshd::SshdSpec {
            authorized_keys: vec![setup.client_pub.to_owned()],
            ..sshd::SshdSpec::new(base.join("sshd"))
        })
        .with_context(|| format!("cannot start the sshd of node `{name}`"))?;
        setup.used_ports.insert(sshd.port);
        setup
            .known_hosts
            .extend(sshd::known_hosts_lines(&sshd, "127.0.0.1"));
        let migrator = self.nodes.is_empty();
        self.nodes.push(LabNode {
            name,
            ssh_port: sshd.port,
            api_port,
            root: paths.root.clone(),
            sshd_dir: sshd.dir.clone(),
            sshd_pid: sshd.pid,
            migrator,
            replaces,
        });
        self.save()
    }

    /// Starts bastion `name` (an sshd that only forwards, logging each tunnel) and records it.
    fn add_bastion(&mut self, setup: &mut NodeSetup<'_>, name: String) -> anyhow::Result<()> {
        let sshd = sshd::start(&sshd::SshdSpec {
            authorized_keys: vec![setup.client_pub.to_owned()],
            extra_config: vec!["LogLevel DEBUG1".into()],
            ..sshd::SshdSpec::new(self.dir.join("bastions").join(&name))
        })
        .with_context(|| format!("cannot start the sshd of `{name}`"))?;
        setup.used_ports.insert(sshd.port);
        setup
            .known_hosts
            .extend(sshd::known_hosts_lines(&sshd, "127.0.0.1"));
        self.bastions.push(LabBastion {
            name,
            ssh_port: sshd.port,
            sshd_dir: sshd.dir.clone(),
            sshd_pid: sshd.pid,
        });
        self.save()
    }

    /// The node's `NUMARY_*` environment, in env-file order; `storage_node` is the node whose
    /// storage it uses (itself, or the node a replacement replaces).
    fn node_env(
        &self,
        name: &str,
        storage_node: &str,
        paths: &NodePaths,
        api_port: u16,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let mut env = vec![(
            "NUMARY_STORAGE_DRIVER".to_owned(),
            self.driver.as_str().to_owned(),
        )];
        // Every `numary` command creates this dir, Postgres or not: keep it inside the root.
        env.push((
            "NUMARY_STORAGE_DIR".to_owned(),
            paths.data_dir().to_string_lossy().into_owned(),
        ));
        if let Some(pg) = &self.postgres {
            env.push((
                "NUMARY_STORAGE_POSTGRES_CONN_STRING".to_owned(),
                pg.node_url(storage_node)?,
            ));
        }
        env.push((
            "NUMARY_SERVER_HTTP_BIND_ADDRESS".to_owned(),
            format!("127.0.0.1:{api_port}"),
        ));
        env.push(("NUMARY_SIM_NODE".to_owned(), name.to_owned()));
        Ok(env)
    }

    /// Seeds the ledgers with the node's own binary and environment: every node's SQLite
    /// store, or the shared Postgres database once. Replacement nodes have no binary: a SQLite
    /// one keeps an empty store, as a new host would.
    fn seed(&self) -> anyhow::Result<()> {
        let own_database = self
            .postgres
            .as_ref()
            .is_some_and(|p| !p.per_node.is_empty());
        let installed: Vec<&LabNode> = self.nodes.iter().filter(|n| n.replaces.is_none()).collect();
        let seeders = match self.driver {
            Driver::Sqlite => &installed[..],
            Driver::Postgres if own_database => &installed[..],
            Driver::Postgres => &installed[..installed.len().min(1)],
        };
        for node in seeders.iter().copied() {
            for ledger in &self.ledgers {
                let mut cmd = Command::new(node.paths().binary());
                cmd.args(["sim", "seed", "--ledger", ledger, "--transactions"])
                    .arg(self.transactions.to_string());
                self.run_as_node(node, &mut cmd)
                    .with_context(|| format!("cannot seed ledger `{ledger}` on `{}`", node.name))?;
            }
        }
        Ok(())
    }

    /// Runs `cmd` with exactly the node's env file loaded (as the service and fleetup's storage
    /// commands do); returns stdout.
    pub fn run_as_node(&self, node: &LabNode, cmd: &mut Command) -> anyhow::Result<String> {
        let text = std::fs::read_to_string(node.paths().env_file())
            .with_context(|| format!("cannot read the env file of `{}`", node.name))?;
        let out = cmd
            .envs(crate::numary::parse_env_file(&text))
            .current_dir(&node.root)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", cmd.get_program().to_string_lossy()))?;
        if !out.status.success() {
            bail!(
                "`{}` failed ({}): {}",
                cmd.get_program().to_string_lossy(),
                out.status,
                crate::redact::redact(String::from_utf8_lossy(&out.stderr).trim())
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Starts the service of every node with a `numary` installed (a replacement node before
    /// its deploy has none), then waits until each API answers `/_info`.
    pub fn start_services(&self) -> anyhow::Result<()> {
        let installed: Vec<&LabNode> = self.nodes.iter().filter(|n| n.binary_installed()).collect();
        for node in &installed {
            let (code, out) = node.paths().service("start")?;
            if code != 0 {
                bail!(
                    "the service of `{}` did not start (exit {code}): {out}",
                    node.name
                );
            }
        }
        installed.into_iter().try_for_each(wait_healthy)
    }

    /// Stops every node's service.
    pub fn stop_services(&self) -> anyhow::Result<()> {
        self.nodes.iter().try_for_each(LabNode::stop)
    }

    /// `node`'s Postgres database (its own with per-node databases, that of the node it
    /// replaces for a replacement), to query or dump it.
    pub fn node_database(&self, node: &str) -> anyhow::Result<Option<pg::PgUrl>> {
        let storage = self.node(node).map_or(node, LabNode::storage_node);
        self.postgres
            .as_ref()
            .map(|p| pg::PgUrl::parse(&p.node_url(storage)?))
            .transpose()
    }

    /// The lab's Postgres database, to query or dump it (`None` for SQLite).
    pub fn database(&self) -> anyhow::Result<Option<pg::PgUrl>> {
        self.postgres
            .as_ref()
            .map(|p| pg::PgUrl::parse(&p.url()?))
            .transpose()
    }

    /// SHA-256 of a dump of the lab's Postgres database (`None` for SQLite), for tests that
    /// prove a command changed nothing.
    pub fn database_digest(&self) -> anyhow::Result<Option<String>> {
        self.database()?.map(|db| db.dump_digest()).transpose()
    }

    /// Reads `DIR/lab.json`.
    pub fn load(dir: &Path) -> anyhow::Result<Lab> {
        let path = dir.join(STATE_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Failure::usage(format!("no lab in `{}`", dir.display()))
                    .hint("start one with `fleetup lab up --dir DIR`")
                    .into());
            }
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot read `{}`", path.display()))
                );
            }
        };
        let lab: Lab = serde_json::from_str(&text)
            .with_context(|| format!("`{}` is not a lab state file", path.display()))?;
        if lab.format != STATE_FORMAT {
            bail!(
                "`{}` has format {} (this fleetup reads format {STATE_FORMAT})",
                path.display(),
                lab.format
            );
        }
        Ok(lab)
    }

    fn save(&self) -> anyhow::Result<()> {
        let path = self.dir.join(STATE_FILE);
        let mut text = serde_json::to_string_pretty(self)?;
        text.push('\n');
        // Created 0600 before the URL is written into it.
        let tmp = self.dir.join(format!("{STATE_FILE}.tmp"));
        node::write_file(&tmp, "", 0o600)?;
        std::fs::write(&tmp, text).with_context(|| format!("cannot write `{}`", tmp.display()))?;
        std::fs::rename(&tmp, &path).with_context(|| format!("cannot write `{}`", path.display()))
    }

    /// Stops every server and sshd the lab started (by pid, never by name) and drops its
    /// database. Safe to repeat; reports what it stopped.
    pub fn down(&self) -> anyhow::Result<DownReport> {
        let mut report = DownReport::default();
        let grace = Duration::from_secs(5);
        for node in &self.nodes {
            let paths = node.paths();
            let before = paths.recorded_pid().filter(|p| self.is_lab_server(*p));
            // The service script first, as an operator would; then by pid.
            if paths.service_script().exists() {
                let _ = paths.service("stop");
            }
            if let Some(pid) = before {
                if !process::terminate(pid, grace) {
                    report.survivors.push(pid);
                }
                report.servers_stopped.push((node.name.clone(), pid));
            }
            let _ = std::fs::remove_file(paths.pid_file());
        }
        // Servers started outside the service script (e.g. by hand), or a command still
        // running: anything executing the lab's own copy of the simulator.
        for pid in process::running_exe(&self.sim_path()) {
            if !process::terminate(pid, grace) {
                report.survivors.push(pid);
            }
            report.servers_stopped.push(("(stray)".to_owned(), pid));
        }
        for node in &self.nodes {
            if node.sshd_is_ours() {
                sshd::stop(node.sshd_pid)
                    .with_context(|| format!("cannot stop the sshd of `{}`", node.name))?;
                report.sshd_stopped.push((node.name.clone(), node.sshd_pid));
            }
        }
        for b in &self.bastions {
            if b.sshd_is_ours() {
                sshd::stop(b.sshd_pid)
                    .with_context(|| format!("cannot stop the sshd of `{}`", b.name))?;
                report.sshd_stopped.push((b.name.clone(), b.sshd_pid));
            }
        }
        if let Some(pg) = &self.postgres {
            let server = pg::PgUrl::parse(&pg.server_url)?;
            for db in pg.databases() {
                pg::drop_database(&server, &db)?;
            }
            report.database_dropped = Some(pg.databases().join(", "));
        }
        Ok(report)
    }

    fn is_lab_server(&self, pid: u32) -> bool {
        process::running_exe(&self.sim_path()).contains(&pid)
    }

    /// Per-node state: processes, versions, storage.
    pub fn status(&self) -> Vec<NodeStatus> {
        self.nodes
            .iter()
            .map(|node| {
                let api_version = node
                    .api_get("/_info")
                    .ok()
                    .filter(|(code, _)| *code == 200)
                    .and_then(|(_, body)| crate::numary::parse_info(body.as_bytes()).ok())
                    .map(|info| info.version.to_string());
                let storage = match &self.postgres {
                    Some(pg) => format!("postgres {}", pg.node_database(node.storage_node())),
                    None => format!("sqlite {}", node.paths().data_dir().display()),
                };
                let service_running = node.service_running();
                NodeStatus {
                    name: node.name.clone(),
                    replaces: node.replaces.clone(),
                    ssh_port: node.ssh_port,
                    sshd_pid: node.sshd_pid,
                    sshd_running: node.sshd_running(),
                    api_port: node.api_port,
                    service_running,
                    server_pid: node.paths().recorded_pid().filter(|_| service_running),
                    binary_installed: node.binary_installed(),
                    installed_version: node.installed_version(),
                    api_version,
                    storage,
                }
            })
            .collect()
    }

    pub fn inventory_path(&self) -> PathBuf {
        self.dir.join("inventory.toml")
    }

    pub fn client_key_path(&self) -> PathBuf {
        self.dir.join("client/id_ed25519")
    }

    pub fn known_hosts_path(&self) -> PathBuf {
        self.dir.join("client/known_hosts")
    }

    /// `DIR/ssh_config`: the bastions' `Host` blocks, written when the lab has bastions.
    pub fn ssh_config_path(&self) -> PathBuf {
        self.dir.join("ssh_config")
    }

    /// The lab's own copy of the simulator (`DIR/bin/numary`).
    pub fn sim_path(&self) -> PathBuf {
        self.dir.join("bin").join(SIM_COPY_NAME)
    }

    /// `NUMARY_SIM_STATE_DIR`: the simulator's lab-wide bookkeeping (misuse log, faults).
    pub fn sim_state_dir(&self) -> PathBuf {
        self.dir.join("sim-state")
    }

    pub fn node(&self, name: &str) -> Option<&LabNode> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// A release "binary" for `version`: what `fleetup upgrade --binary FILE` uploads.
    pub fn release_wrapper(&self, version: &Version) -> String {
        node::release_wrapper(version, &self.sim_state_dir(), &self.sim_path())
    }

    /// Waits until no command runs on the lab's nodes any more, apart from their sshds and
    /// servers: a client that died (SIGKILL) leaves the commands its SSH sessions started
    /// running, a service start among them, and a test that goes on at once would race them.
    /// A session sshd still open counts as busy too: it may not have started the command the
    /// client sent just before it died. Fails after `timeout`, naming what still runs.
    pub fn wait_remote_commands(&self, timeout: Duration) -> anyhow::Result<()> {
        let needle = self.dir.to_string_lossy().into_owned();
        let deadline = Instant::now() + timeout;
        let listeners: Vec<u32> = self
            .nodes
            .iter()
            .map(|n| n.sshd_pid)
            .chain(self.bastions.iter().map(|b| b.sshd_pid))
            .collect();
        loop {
            let sessions = listeners
                .iter()
                .flat_map(|&pid| process::descendants(pid))
                .map(|pid| (pid, process::cmdline(pid)));
            let mut busy: Vec<(u32, String)> = process::mentioning(&needle)
                .into_iter()
                .filter(|(_, line)| !line.starts_with("sshd:") && !line.ends_with(" server start"))
                .chain(sessions)
                .collect();
            busy.sort_unstable();
            busy.dedup();
            if busy.is_empty() {
                return Ok(());
            }
            if Instant::now() > deadline {
                let list: Vec<String> = busy.iter().map(|(p, l)| format!("{p}: {l}")).collect();
                bail!(
                    "commands still run on the lab's nodes after {timeout:?}: {}",
                    list.join("; ")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Writes [`Lab::release_wrapper`] to `out` (mode 0755).
    pub fn write_release(&self, version: &Version, out: &Path) -> anyhow::Result<()> {
        node::write_file(out, &self.release_wrapper(version), 0o755)
    }

    /// Every misuse the simulator recorded (one JSON object per line of `misuse.log`).
    pub fn misuse_records(&self) -> anyhow::Result<Vec<serde_json::Value>> {
        let path = self.sim_state_dir().join("misuse.log");
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => {
                return Err(
                    anyhow::Error::new(e).context(format!("cannot read `{}`", path.display()))
                );
            }
        };
        text.lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                serde_json::from_str(l).with_context(|| {
                    format!("`{}` has a line that is not JSON: {l}", path.display())
                })
            })
            .collect()
    }

    /// Arms the simulator's fault `name` (`fail-migration`, `never-healthy`, `slow-migration`,
    /// see docs/simulator.md) on `nodes`, or on every node when `nodes` is empty.
    pub fn set_fault(&self, name: &str, nodes: &[&str]) -> anyhow::Result<()> {
        self.set_fault_with(name, nodes, &[])
    }

    /// [`Lab::set_fault`] with option lines the simulator reads from the marker: a number of
    /// seconds (`slow-migration`), `hang` (`never-healthy`).
    pub fn set_fault_with(
        &self,
        name: &str,
        nodes: &[&str],
        options: &[&str],
    ) -> anyhow::Result<()> {
        let path = self.fault_path(name)?;
        for n in nodes {
            if self.node(n).is_none() {
                bail!("`{n}` is not a node of this lab");
            }
        }
        std::fs::create_dir_all(self.sim_state_dir().join("faults"))?;
        let mut text: String = nodes
            .iter()
            .chain(options)
            .map(|l| format!("{l}\n"))
            .collect();
        if text.is_empty() {
            text.push_str("# every node\n");
        }
        node::write_file(&path, &text, 0o644)
    }

    /// Disarms fault `name` (no error when it was not armed).
    pub fn clear_fault(&self, name: &str) -> anyhow::Result<()> {
        let path = self.fault_path(name)?;
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(anyhow::Error::new(e).context(format!("cannot remove `{}`", path.display())))
            }
            _ => Ok(()),
        }
    }

    fn fault_path(&self, name: &str) -> anyhow::Result<PathBuf> {
        if name.is_empty() || !name.bytes().all(|b| b.is_ascii_lowercase() || b == b'-') {
            bail!("`{name}` is not a fault name");
        }
        Ok(self.sim_state_dir().join("faults").join(name))
    }

    /// SHA-256 over every file under every node's root (paths, modes, contents, links).
    pub fn tree_digest(&self) -> anyhow::Result<String> {
        digest::tree_digest(
            self.nodes
                .iter()
                .map(|n| (n.name.as_str(), n.root.as_path())),
        )
    }
}

fn check_spec(spec: &LabSpec) -> anyhow::Result<()> {
    if spec.nodes == 0 || spec.nodes > 64 {
        return Err(
            Failure::usage(format!("`{}` nodes: a lab has 1 to 64 nodes", spec.nodes)).into(),
        );
    }
    if spec.replacements > spec.nodes {
        return Err(Failure::usage(format!(
            "`{}` replacements for {} nodes: each new node replaces one node",
            spec.replacements, spec.nodes
        ))
        .into());
    }
    if spec.ledgers.is_empty() {
        return Err(Failure::usage("a lab needs at least one ledger").into());
    }
    for l in &spec.ledgers {
        crate::shell::validate_ledger_name(l).map_err(|e| Failure::usage(e.to_string()))?;
    }
    if spec.dir.as_os_str().is_empty() {
        return Err(Failure::usage("the lab dir is empty").into());
    }
    Ok(())
}

/// The simulator binary: `explicit`, else `FLEETUP_SIM`, else `numary-sim` beside the running
/// executable or in its parent dir (test binaries live in `target/<profile>/deps`), else `PATH`.
pub fn find_sim(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let not_found = |what: String| -> anyhow::Error {
        Failure::new(exit_code::FAILURE, what)
            .hint("build it with `cargo build --workspace` (it is the `sim/` crate)")
            .hint("or name it with `--sim PATH` or `FLEETUP_SIM`")
            .into()
    };
    if let Some(p) = explicit {
        return p
            .is_file()
            .then(|| p.to_path_buf())
            .ok_or_else(|| not_found(format!("the simulator `{}` does not exist", p.display())));
    }
    if let Some(p) = std::env::var_os("FLEETUP_SIM").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        return p.is_file().then(|| p.clone()).ok_or_else(|| {
            not_found(format!(
                "the simulator `{}` (from `FLEETUP_SIM`) does not exist",
                p.display()
            ))
        });
    }
    let mut candidates = Vec::new();
    if let Some(dir) = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf))
    {
        candidates.push(dir.join(SIM_NAME));
        if let Some(up) = dir.parent() {
            candidates.push(up.join(SIM_NAME));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join(SIM_NAME)));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .ok_or_else(|| not_found(format!("the ledger simulator `{SIM_NAME}` was not found")))
}

/// What every node of a lab being built shares: the client key sshd lets in, the ports handed
/// out so far and the known_hosts lines collected.
struct NodeSetup<'a> {
    client_pub: &'a str,
    used_ports: BTreeSet<u16>,
    known_hosts: Vec<String>,
}

/// A free port not handed out yet in this lab (two quick binds can return the same port).
fn fresh_port(used: &mut BTreeSet<u16>) -> anyhow::Result<u16> {
    for _ in 0..50 {
        let port = sshd::free_port()?;
        if used.insert(port) {
            return Ok(port);
        }
    }
    bail!("cannot find a free port on 127.0.0.1")
}

fn wait_healthy(node: &LabNode) -> anyhow::Result<()> {
    let deadline = Instant::now() + HEALTH_TIMEOUT;
    loop {
        match node.api_get("/_info") {
            Ok((200, _)) => return Ok(()),
            _ if Instant::now() > deadline => {
                bail!(
                    "the API of `{}` did not answer on 127.0.0.1:{} within {}s; see `{}`",
                    node.name,
                    node.api_port,
                    HEALTH_TIMEOUT.as_secs(),
                    node.paths().log_file().display()
                );
            }
            _ => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// A minimal HTTP/1.0 GET on 127.0.0.1 (the simulator answers with a plain body).
fn http_get(port: u16, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to 127.0.0.1:{port}"))?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    write!(
        s,
        "GET {path} HTTP/1.0\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)
        .with_context(|| format!("no answer from 127.0.0.1:{port}"))?;
    let text = String::from_utf8_lossy(&raw);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let code = head
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .with_context(|| format!("127.0.0.1:{port} did not answer HTTP"))?;
    Ok((code, body.to_owned()))
}

/// The name of the effective user (the one sshd will let in).
fn current_user() -> anyhow::Result<String> {
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    // SAFETY: passwd is plain data; getpwuid_r fills it with pointers into `buf`.
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the sizes given.
    let rc = unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut result) };
    if rc == 0 && !result.is_null() && !pwd.pw_name.is_null() {
        // SAFETY: getpwuid_r succeeded, so pw_name is a NUL-terminated string inside `buf`.
        let name = unsafe { std::ffi::CStr::from_ptr(pwd.pw_name) };
        return Ok(name.to_string_lossy().into_owned());
    }
    std::env::var("USER")
        .or_else(|_| std::env::var("LOGNAME"))
        .ok()
        .filter(|u| !u.is_empty())
        .with_context(|| format!("cannot find the user name of uid {uid}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Logs in to `node` with the lab's key and known_hosts only and runs `remote`.
    fn ssh(lab: &Lab, node: &LabNode, remote: &str) -> std::process::Output {
        Command::new("ssh")
            .args(["-F", "/dev/null", "-i"])
            .arg(lab.client_key_path())
            .arg("-o")
            .arg(format!(
                "UserKnownHostsFile={}",
                lab.known_hosts_path().display()
            ))
            .args(["-o", "StrictHostKeyChecking=yes", "-o", "BatchMode=yes"])
            .args(["-o", "IdentitiesOnly=yes", "-o", "ConnectTimeout=10", "-p"])
            .arg(node.ssh_port.to_string())
            .arg(format!("{}@127.0.0.1", lab.user))
            .arg(remote)
            .env_remove("SSH_AUTH_SOCK")
            .stdin(Stdio::null())
            .output()
            .expect("run ssh")
    }

    #[test]
    fn replacement_nodes_have_a_host_but_no_numary_and_go_down_with_the_lab() {
        let mut spec = testing::spec(3);
        spec.replacements = 3;
        spec.driver = Driver::Postgres;
        spec.pg_url = Some(std::env::var("FLEETUP_TEST_PG_URL").expect(
            "FLEETUP_TEST_PG_URL must name a Postgres server: eval \"$(scripts/pg.sh start)\"",
        ));
        let lab = LabGuard::up(&spec).unwrap();
        let names: Vec<(&str, Option<&str>)> = lab
            .nodes
            .iter()
            .map(|n| (n.name.as_str(), n.replaces.as_deref()))
            .collect();
        assert_eq!(
            names,
            [
                ("node-1", None),
                ("node-2", None),
                ("node-3", None),
                ("new-1", Some("node-1")),
                ("new-2", Some("node-2")),
                ("new-3", Some("node-3")),
            ]
        );
        let env_of = |n: &LabNode| {
            crate::numary::parse_env_file(&std::fs::read_to_string(n.paths().env_file()).unwrap())
        };
        let shared = env_of(&lab.nodes[0])["NUMARY_STORAGE_POSTGRES_CONN_STRING"].clone();
        let mut ports: Vec<u16> = lab.nodes.iter().map(|n| n.api_port).collect();
        ports.sort_unstable();
        ports.dedup();
        assert_eq!(ports.len(), 6, "every node has its own API port");
        for n in &lab.nodes[3..] {
            let paths = n.paths();
            assert!(
                !n.binary_installed() && !paths.binary().exists(),
                "{}",
                n.name
            );
            assert!(!n.migrator, "{}", n.name);
            assert_eq!(
                std::fs::read_dir(paths.releases_dir()).unwrap().count(),
                0,
                "{}: no release staged",
                n.name
            );
            let env = env_of(n);
            assert_eq!(
                env["NUMARY_STORAGE_POSTGRES_CONN_STRING"], shared,
                "{}",
                n.name
            );
            assert_eq!(env["NUMARY_SIM_NODE"], n.name);
            assert_eq!(
                env["NUMARY_SERVER_HTTP_BIND_ADDRESS"],
                format!("127.0.0.1:{}", n.api_port)
            );
            assert!(!n.service_running(), "{}", n.name);
            assert_eq!(paths.service("status").unwrap().0, 3, "{}", n.name);
            assert!(n.api_get("/_info").is_err(), "{}: nothing serves", n.name);
            let out = ssh(
                &lab,
                n,
                &format!(
                    "test ! -e {} && echo no-numary",
                    crate::shell::quote(&paths.binary().to_string_lossy())
                ),
            );
            assert_eq!(
                String::from_utf8_lossy(&out.stdout),
                "no-numary\n",
                "{}: {}",
                n.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        for n in &lab.nodes[..3] {
            assert!(n.service_running(), "{} serves", n.name);
        }
        let text = std::fs::read_to_string(lab.inventory_path()).unwrap();
        let local = crate::inventory::LocalEnv {
            home: None,
            user: lab.user.clone(),
            default_identity_files: Vec::new(),
        };
        let inventory = crate::inventory::Inventory::parse(
            &text,
            &lab.inventory_path(),
            &crate::inventory::Overrides::default(),
            &local,
        )
        .unwrap_or_else(|f| panic!("{f:?}\n{text}"));
        let replaces: Vec<Option<String>> = inventory
            .hosts()
            .iter()
            .map(|h| h.replaces.clone())
            .collect();
        assert_eq!(
            replaces,
            [
                None,
                None,
                None,
                Some("node-1".into()),
                Some("node-2".into()),
                Some("node-3".into())
            ]
        );
        let status = lab.status();
        assert!(
            status[3..]
                .iter()
                .all(|s| s.sshd_running && !s.service_running && !s.binary_installed),
            "{status:?}"
        );

        let report = lab.down().unwrap();
        assert_eq!(report.sshd_stopped.len(), 6, "{report:?}");
        assert_eq!(report.servers_stopped.len(), 3, "{report:?}");
        assert!(report.survivors.is_empty(), "{report:?}");
        for n in &lab.nodes {
            assert!(!n.sshd_running(), "{}: sshd still runs", n.name);
            assert!(!n.service_running(), "{}: service still runs", n.name);
        }
    }

    #[test]
    fn more_replacements_than_nodes_is_a_usage_error() {
        let mut spec = LabSpec::new("/nonexistent/lab");
        spec.replacements = 4;
        let err = check_spec(&spec).unwrap_err();
        assert!(
            err.to_string().contains("each new node replaces one node"),
            "{err}"
        );
    }
}
