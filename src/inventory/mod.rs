//! The inventory: what an operator writes once per fleet (TOML), parsed strictly and resolved into
//! one [`ResolvedHost`] per `[[host]]` with every setting decided.
//!
//! Precedence, lowest to highest: built-in defaults < `[ssh]`/`[ledger]` < `[groups.NAME]` (in the
//! order the host lists its groups) < `[[host]]` < `FLEETUP_*` environment < command-line flags.
//! See `inventory.example.toml` for every key.

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;

// Sub-modules (parsing, validation, host selection) are filled in by the inventory work.

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
    Command { start: String, stop: String, status: String },
}

/// Serialize durations as humantime strings (`10s`, `5m`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }
}
