//! Facts about one host, as gathered over SSH (`fleetup status`) or built by hand in tests.
//! A plain struct on purpose: the plan builder is a pure function of these.

use serde::Serialize;

use crate::version::Version;

mod gather;
mod storage;

pub use gather::{gather, gather_all, gather_schema};
pub use storage::{StorageId, is_node_relative_host};

/// What fleetup learned about one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct HostFacts {
    /// `None` when the host was reachable; otherwise why not (timeout, auth, host key...).
    pub unreachable: Option<String>,
    /// Version printed by the installed `numary version` (the binary the service runs).
    pub installed_version: Option<Version>,
    pub service: ServiceState,
    /// What the HTTP API answered at `/_info`, seen from the node itself.
    pub api: Option<ApiInfo>,
    pub storage: Option<StorageFacts>,
    /// Ledgers registered in storage (from `/_info` or `storage list`).
    pub ledgers: Vec<String>,
    /// Releases already staged under the releases dir (versions).
    pub staged: Vec<Version>,
    /// Where the binary resolves to (`readlink -f`), e.g. `<releases_dir>/1.8.2/numary` once
    /// switched.
    pub binary_target: Option<String>,
    /// The storage's ledgers and the migration rows each holds, read-only (`None` when it could
    /// not be read: no `sqlite3`/`psql` on the node, no registry yet, ...).
    pub schema: Option<crate::schema::SchemaState>,
    /// Pids of `numary storage ...` commands running on the node (left by an interrupted run:
    /// they still hold the storage).
    pub busy_storage: Vec<String>,
    /// A fleetup lock was held on the node when the facts were read.
    #[serde(skip)]
    pub locked: bool,
    /// The run id of the last fleetup run that locked the node: a run whose own lock finds the
    /// same one knows that no other run changed the node since these facts were read.
    #[serde(skip)]
    pub lock_generation: Option<String>,
    /// SQLite hot journal files found in the storage dir (a sign of an unclean stop).
    pub hot_journals: Vec<String>,
    /// Where `ledgers` came from: `api` (`/_info`), `sqlite-files`, or empty when unknown.
    pub ledgers_source: String,
    /// Things that could not be learned, one sentence each (the host was reachable).
    pub problems: Vec<String>,
    /// Lines of the env file that systemd and a shell read differently ([`crate::envfile`]),
    /// each `line N `text`: why`: the preflight refuses such a file.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env_divergent: Vec<String>,
}

impl HostFacts {
    pub fn reachable(&self) -> bool {
        self.unreachable.is_none()
    }

    /// The node serves `target`: its service runs, `/_info` reports `target` and `/_health`
    /// answers. The goal of an upgrade, whatever the binary's symlink says.
    pub fn serves(&self, target: &Version) -> bool {
        self.reachable()
            && self.service == ServiceState::Running
            && self
                .api
                .as_ref()
                .is_some_and(|a| a.healthy && a.version.as_ref() == Some(target))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ServiceState {
    Running,
    Stopped,
    #[default]
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ApiInfo {
    pub healthy: bool,
    pub version: Option<Version>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageDriver {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StorageFacts {
    pub driver: StorageDriver,
    /// SQLite: the storage dir (`NUMARY_STORAGE_DIR`).
    pub sqlite_dir: Option<String>,
    /// Postgres: the connection string with the password removed (see [`crate::redact`]).
    pub postgres: Option<String>,
}
