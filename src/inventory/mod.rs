//! The inventory: what an operator writes once per fleet (TOML), parsed strictly and resolved into
//! one [`ResolvedHost`] per `[[host]]` with every setting decided.
//!
//! Precedence, lowest to highest: built-in defaults < `[ssh]`/`[ledger]` < `[groups.NAME]` (in the
//! order the host lists its groups) < `[[host]]` < `FLEETUP_*` environment < command-line flags.
//! See `inventory.example.toml` for every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use serde::Serialize;

use crate::error::Failure;
use crate::version::Version;

mod diagnostics;
mod overrides;
mod raw;
mod resolve;
mod select;
pub mod values;

pub use overrides::{ENV_VARS, Overrides};
pub use select::select;
pub use values::JumpHost;

/// One host with every setting resolved. Everything downstream (facts, plan, SSH, lab) uses this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedHost {
    /// Unique name (`[[host]] name`), used in output, `--limit` and the journal.
    pub name: String,
    /// DNS name or IP address to connect to.
    pub address: String,
    /// Groups in the order the host lists them.
    pub groups: Vec<String>,
    /// Preferred node for running migrations.
    pub migrator: bool,
    /// For zero-downtime replacement: the old host this new node replaces.
    pub replaces: Option<String>,
    pub ssh: SshSettings,
    pub ledger: LedgerSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshSettings {
    pub user: String,
    pub port: u16,
    /// Local private key files to offer, in order (after the agent, when `use_agent`).
    pub identity_files: Vec<PathBuf>,
    /// Local OpenSSH known_hosts file that host keys are checked against.
    pub known_hosts: PathBuf,
    /// TCP connect + banner + key exchange + authentication.
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Upper bound for one remote command.
    #[serde(with = "humantime_serde_compat")]
    pub command_timeout: Duration,
    /// `[user@]host[:port]` of a bastion to go through (ProxyJump), if any.
    pub jump_host: Option<String>,
    /// Offer the keys of the ssh-agent at `SSH_AUTH_SOCK`.
    pub use_agent: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerSettings {
    /// Absolute remote path of the `numary` binary the service runs (a symlink fleetup manages).
    pub binary: String,
    /// Absolute remote dir where releases are staged as `<releases_dir>/<version>/numary`.
    pub releases_dir: String,
    pub service: Service,
    /// Absolute remote path of the environment file the service reads (`NUMARY_*` variables).
    pub env_file: Option<String>,
    /// `host:port` of the ledger HTTP API as seen from the node itself.
    pub api: String,
    /// Ledgers the operator expects; when set, each must be listed by `storage list`.
    pub ledgers: Option<Vec<String>>,
    /// Absolute remote dir for backups.
    pub backup_dir: String,
}

/// How the ledger service is started, stopped and queried on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "manager", rename_all = "lowercase")]
pub enum Service {
    /// A systemd unit (`systemctl start|stop|is-active UNIT`).
    Systemd { unit: String },
    /// Shell commands run on the node; `status` exits 0 when running, non-zero when stopped.
    Command {
        start: String,
        stop: String,
        status: String,
    },
}

/// Serialize durations as humantime strings (`10s`, `5m`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}

impl Default for LedgerSettings {
    /// The built-in defaults, what a `numary` install from the release archive usually looks like.
    fn default() -> Self {
        LedgerSettings {
            binary: "/usr/local/bin/numary".into(),
            releases_dir: "/opt/numary/releases".into(),
            service: Service::Systemd {
                unit: "numary.service".into(),
            },
            env_file: None,
            api: "127.0.0.1:3068".into(),
            ledgers: None,
            backup_dir: "/var/backups/numary".into(),
        }
    }
}

/// A release binary named under `[releases."VERSION"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub source: ReleaseSource,
    /// Expected SHA-256 of the binary (lowercase hex), checked after staging when set.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseSource {
    /// A binary on the operator's machine, uploaded to each node.
    File(PathBuf),
    /// An http(s) URL each node downloads.
    Url(String),
}

/// What the operator's machine contributes to the built-in defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEnv {
    /// Expands `~`; the default known_hosts is `~/.ssh/known_hosts`.
    pub home: Option<PathBuf>,
    /// The default SSH user: the operator's own login name.
    pub user: String,
    /// The default identity files: OpenSSH's usual keys that exist.
    pub default_identity_files: Vec<PathBuf>,
}

impl LocalEnv {
    /// From this process: `HOME`, `USER` (else `LOGNAME`, else `root`), and which of
    /// `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa` exist.
    pub fn from_process() -> LocalEnv {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from);
        let user = var("USER")
            .or_else(|| var("LOGNAME"))
            .unwrap_or_else(|| "root".into());
        let default_identity_files = home
            .iter()
            .flat_map(|h| ["id_ed25519", "id_ecdsa", "id_rsa"].map(|k| h.join(".ssh").join(k)))
            .filter(|p| p.is_file())
            .collect();
        LocalEnv {
            home,
            user,
            default_identity_files,
        }
    }
}

/// A parsed, validated and resolved inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    path: PathBuf,
    hosts: Vec<ResolvedHost>,
    groups: Vec<String>,
    releases: BTreeMap<Version, Release>,
}

impl Inventory {
    /// Read and resolve the inventory at `path` with this process's environment (`HOME`,
    /// `USER`) for the built-in defaults. Errors hold a usage [`Failure`] with every problem.
    pub fn load(path: &Path, overrides: &Overrides) -> anyhow::Result<Inventory> {
        let source = std::fs::read_to_string(path)
            .map_err(|e| {
                Failure::usage(format!("cannot read inventory `{}`: {e}", path.display()))
                    .hint("pass the inventory with `-i FILE` or `FLEETUP_INVENTORY`")
            })
            .with_context(|| format!("cannot load inventory `{}`", path.display()))?;
        Ok(Inventory::parse(
            &source,
            path,
            overrides,
            &LocalEnv::from_process(),
        )?)
    }

    /// Parse `source` as the inventory file `path` (used in messages; relative local paths
    /// resolve against its directory).
    pub fn parse(
        source: &str,
        path: &Path,
        overrides: &Overrides,
        local: &LocalEnv,
    ) -> Result<Inventory, Failure> {
        let raw: raw::RawInventory = toml::from_str(source).map_err(|e| {
            diagnostics::to_failure(path, source, vec![diagnostics::Diagnostic::from_toml(&e)])
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let resolved = resolve::resolve(&raw, source, &base, local, overrides)
            .map_err(|diags| diagnostics::to_failure(path, source, diags))?;
        if resolved.hosts.is_empty() {
            return Err(Failure::new(
                crate::exit_code::NO_HOSTS,
                format!("inventory `{}` defines no host", path.display()),
            )
            .hint("add one `[[host]]` table per node, with `name` and `address`; see inventory.example.toml"));
        }
        Ok(Inventory {
            path: path.to_path_buf(),
            hosts: resolved.hosts,
            groups: resolved.groups,
            releases: resolved.releases,
        })
    }

    /// The file this inventory was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every host, in inventory order.
    pub fn hosts(&self) -> &[ResolvedHost] {
        &self.hosts
    }

    /// The names of the `[groups.NAME]` tables, sorted.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    pub fn releases(&self) -> &BTreeMap<Version, Release> {
        &self.releases
    }

    pub fn host(&self, name: &str) -> Option<&ResolvedHost> {
        self.hosts
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }

    /// The hosts `patterns` select (see [`select`]).
    pub fn select(&self, patterns: &[String]) -> Result<Vec<&ResolvedHost>, Failure> {
        select(&self.hosts, patterns)
    }
}
