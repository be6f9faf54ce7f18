//! The upgrade plan as data: a pure function ([`build_plan`]) from (resolved inventory, per-host
//! facts, target, options, upgrade-path table) to an ordered list of steps, each naming its hosts,
//! what it does, why, what it checks first and the remote commands it runs. The runner interprets
//! a [`Plan`]; the dry run prints it ([`render_text`], or JSON via serde); [`plan_digest`] is its id.
//! Field names and choices are documented in `docs/plan.md`.

mod action;
mod batch;
mod build;
pub mod commands;
mod digest;
mod hooks;
mod hops;
mod render;
mod rollback;
mod steps;
mod storage;

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::fmt;
use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

use crate::facts::{HostFacts, StorageDriver, StorageId};
use crate::inventory::ResolvedHost;
use crate::policy::Verdict;
use crate::version::Version;

pub use action::{
    Action, BackupParams, ConfirmParams, Fetch, GateParams, HookParams, HookPhase, LockParams,
    MigrateParams, RestoreParams, ServiceParams, StageParams, SwitchParams,
};
pub use batch::BatchSize;
pub use build::{build_plan, build_plan_with};
pub use digest::plan_digest;
pub use hops::Hop;
pub use render::{header_lines, render_text};
pub use rollback::{
    BackupFile, RecordedHost, RecordedStorage, RestoreSource, RollbackRequest, RollbackSpec,
    RunRecord, build_rollback, restore_command,
};

/// Token in commands that the runner replaces with the run id (backups go to a fresh directory
/// per run, so a second run never overwrites the backup of the first).
/// Made of characters the shell quoting leaves bare, so a command with the run id put in is
/// byte for byte the command the runner runs.
pub const RUN_ID_TOKEN: &str = "@RUN_ID@";

/// How the fleet is moved to the target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Zero-downtime when the table allows it for every node, offline otherwise.
    #[default]
    Auto,
    /// The guide's procedure: stop everything, migrate once, restart on the new binary.
    Offline,
    /// Zero-downtime in place: batch by batch, stop, switch, start, health-gate.
    Rolling,
    /// Zero-downtime by replacement: new nodes (`replaces = "old"`) up and healthy, then the old
    /// ones stopped.
    Replace,
}

impl Strategy {
    /// True for the strategies that keep part of the fleet serving while others change.
    pub fn is_zero_downtime(self) -> bool {
        matches!(self, Strategy::Rolling | Strategy::Replace)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Strategy::Auto => "auto",
            Strategy::Offline => "offline",
            Strategy::Rolling => "rolling",
            Strategy::Replace => "replace",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether the guide's single-node or multi-node procedure applies (one selected host or more).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    SingleNode,
    MultiNode,
}

/// Where the new `numary` binary comes from; its SHA-256 is always known up front.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum BinarySource {
    /// A file on the machine running fleetup, uploaded to each node.
    File {
        #[serde(serialize_with = "lossy_path")]
        path: PathBuf,
        sha256: String,
    },
    /// A URL each node downloads from itself.
    Url { url: String, sha256: String },
}

impl BinarySource {
    pub fn sha256(&self) -> &str {
        match self {
            BinarySource::File { sha256, .. } | BinarySource::Url { sha256, .. } => sha256,
        }
    }
}

fn lossy_path<S: Serializer>(p: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&p.display())
}

/// What the operator asked for on the command line.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanOptions {
    pub strategy: Strategy,
    /// Batch size for the nodes after the canary batch (`--serial N|N%`). `None`: all at once
    /// for offline and replace, one at a time for rolling.
    pub serial: Option<BatchSize>,
    /// Nodes in the first batch, the migrator among them (`--canary N`, default 1).
    pub canary: NonZeroUsize,
    /// Binaries for the hops of a multi-hop route (`--binary V=FILE`, `[releases."V"]`); the
    /// target's own is `binary`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub hop_binaries: Vec<(Version, BinarySource)>,
    /// `--stop`: stop running nodes instead of refusing (offline; new nodes of replace).
    pub stop_running: bool,
    /// False only with `--no-backup`.
    pub backup: bool,
    pub binary: BinarySource,
}

/// The inventory's hosts outside the selection, with the facts gathered of them (read-only;
/// `facts` lacks a host no session reached). The plan never touches them, but refuses to leave
/// one behind on a storage it migrates.
#[derive(Debug, Clone, Default)]
pub struct LeftOut {
    pub hosts: Vec<ResolvedHost>,
    pub facts: BTreeMap<String, HostFacts>,
}

/// One storage the plan touches and the selected nodes on it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlanStorage {
    /// `None`: the storage of `hosts` (one node) could not be told; the plan is blocked.
    pub id: Option<StorageId>,
    /// `None` when unknown or when its nodes disagree (the plan is blocked).
    pub driver: Option<StorageDriver>,
    /// The touched nodes on it, inventory order.
    pub hosts: Vec<String>,
    /// The node that backs it up and migrates it, once; `None` when the plan starts none of
    /// its nodes.
    pub migrator: Option<String>,
}

/// The whole plan. Serialized as the dry run's JSON (field names are stable, see `docs/plan.md`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Plan {
    pub target: Version,
    pub strategy_requested: Strategy,
    /// The strategy the steps follow (never `auto`).
    pub strategy: Strategy,
    pub mode: Mode,
    pub serial: Option<BatchSize>,
    pub canary: NonZeroUsize,
    pub stop_running: bool,
    pub backup: bool,
    pub binary: BinarySource,
    /// The node that starts first: a migrator (the first one, or the one marked
    /// `migrator = true`). With several storages, each has its own ([`Plan::storages`]).
    pub migrator: Option<String>,
    /// Every storage the plan touches, each backed up and migrated once by its migrator.
    pub storages: Vec<PlanStorage>,
    /// Batches in order: the canary batch (the migrator first, `canary` nodes), then the others
    /// in batches of `serial`.
    pub batches: Vec<Vec<String>>,
    pub steps: Vec<Step>,
    /// Every selected host, in inventory order, with what happens to it.
    pub hosts: Vec<HostPlan>,
    /// Why the plan must not run; the steps are listed anyway so the dry run shows them.
    pub blockers: Vec<Blocker>,
    pub warnings: Vec<String>,
    /// A multi-hop plan's hops, in order (absent for a direct upgrade): each one's target,
    /// strategy, binary and step ids.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hops: Vec<Hop>,
    /// Set on a rollback plan only (`fleetup rollback`): what it goes back to and from where.
    /// Absent from an upgrade plan's JSON, so upgrade plan ids are unchanged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollback: Option<RollbackSpec>,
}

impl Plan {
    pub fn is_blocked(&self) -> bool {
        !self.blockers.is_empty()
    }

    /// Every selected node already runs the target and nothing blocks.
    pub fn nothing_to_do(&self) -> bool {
        !self.is_blocked() && self.steps.is_empty()
    }

    pub fn host(&self, name: &str) -> Option<&HostPlan> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// The strategy `step` follows: its hop's in a multi-hop plan, else the plan's.
    pub fn strategy_of(&self, step: &Step) -> Strategy {
        step.hop
            .as_ref()
            .and_then(|t| self.hops.iter().find(|h| &h.target == t))
            .map_or(self.strategy, |h| h.strategy)
    }

    /// The storage `host` is on.
    pub fn storage_of(&self, host: &str) -> Option<&PlanStorage> {
        self.storages
            .iter()
            .find(|s| s.hosts.iter().any(|h| h == host))
    }

    /// The migrators of every storage, in start order of their storages (inventory order).
    pub fn migrators(&self) -> Vec<&str> {
        self.storages
            .iter()
            .filter_map(|s| s.migrator.as_deref())
            .collect()
    }

    /// Hosts the plan changes (upgrades, deploys or decommissions), in inventory order.
    pub fn touched_hosts(&self) -> Vec<&str> {
        self.hosts
            .iter()
            .filter(|h| h.action != HostAction::AlreadyAtTarget)
            .map(|h| h.name.as_str())
            .collect()
    }
}

/// One step: what it does on which hosts. A step naming several hosts runs on each of them
/// (concurrently unless the runner says otherwise); `commands` holds each host's command lines.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Step {
    /// Stable id: the kind, and the batch for per-batch steps (`migrate`, `start-service-2`).
    /// The journal records step states under it.
    pub id: String,
    /// 1-based position in the plan.
    pub number: usize,
    pub kind: StepKind,
    pub hosts: Vec<String>,
    /// 1-based start batch this step belongs to (per-batch steps only).
    pub batch: Option<usize>,
    /// In a multi-hop plan, the target of the hop this step belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hop: Option<Version>,
    /// What it does, one line.
    pub action: String,
    /// Why, citing the guide or the numary contract.
    pub why: String,
    /// What it checks before (or to decide) going on.
    pub checks: Vec<String>,
    /// Per host (in `hosts` order): the step's typed parameters there and the remote command
    /// lines rendered from them, which the runner runs; secrets never appear (connection
    /// strings stay in the service's environment file). No lines for steps whose mechanism is
    /// the runner's own (preflight probes, locks). `@RUN_ID@` stands for the run id.
    pub commands: Vec<HostCommands>,
}

impl Step {
    /// The version this step moves its hosts to: its hop's, else the plan's target.
    pub fn target<'a>(&'a self, plan: &'a Plan) -> &'a Version {
        self.hop.as_ref().unwrap_or(&plan.target)
    }

    /// The step's parameters on `host`.
    pub fn params(&self, host: &str) -> Option<&Action> {
        self.commands
            .iter()
            .find(|c| c.host == host)
            .map(|c| &c.params)
    }
}

/// One host of a step: what it does there ([`Action`]) and the command lines of that.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostCommands {
    pub host: String,
    pub params: Action,
    pub commands: Vec<String>,
}

impl HostCommands {
    /// `params` on `host`, with the command lines rendered from them.
    pub fn new(host: &str, params: Action) -> Self {
        HostCommands {
            host: host.to_string(),
            commands: params.commands(),
            params,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Preflight,
    Lock,
    StopService,
    ConfirmStopped,
    Backup,
    Stage,
    Migrate,
    Switch,
    /// Rollback: the run's backup restored over the storage (nodes stopped).
    Restore,
    /// Rollback: the binary switched back to the release the rolled-back run recorded.
    SwitchBack,
    StartService,
    HealthGate,
    Decommission,
    /// The operator's `pre_hook` on each host of a batch, before it leaves service.
    PreHook,
    /// The operator's `post_hook` on each host of a batch, once it passed its health gate.
    PostHook,
    Unlock,
}

impl StepKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StepKind::Preflight => "preflight",
            StepKind::Lock => "lock",
            StepKind::StopService => "stop-service",
            StepKind::ConfirmStopped => "confirm-stopped",
            StepKind::Backup => "backup",
            StepKind::Stage => "stage",
            StepKind::Migrate => "migrate",
            StepKind::Switch => "switch",
            StepKind::Restore => "restore",
            StepKind::SwitchBack => "switch-back",
            StepKind::StartService => "start-service",
            StepKind::HealthGate => "health-gate",
            StepKind::Decommission => "decommission",
            StepKind::PreHook => "pre-hook",
            StepKind::PostHook => "post-hook",
            StepKind::Unlock => "unlock",
        }
    }
}

impl fmt::Display for StepKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One selected host and what the plan does to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostPlan {
    pub name: String,
    /// Installed version, when the host was reachable and it could be read.
    pub current: Option<Version>,
    pub action: HostAction,
    /// The plan's migrator, or the node that migrates a storage it shares with other selected
    /// nodes.
    pub migrator: bool,
    /// The storage it is on, when known (see [`Plan::storages`]).
    pub storage: Option<StorageId>,
    /// For a new node of the replace strategy: the old node it replaces.
    pub replaces: Option<String>,
    /// 1-based start batch, for hosts the plan starts.
    pub batch: Option<usize>,
    /// The table's verdict for `current` → target (`None` when the version is unknown, and for
    /// new nodes of the replace strategy, whose current binary does not matter).
    pub verdict: Option<Verdict>,
    /// Reasons from [`Plan::blockers`] that name this host; empty when nothing blocks it.
    pub blocked: Vec<String>,
}

/// What happens to a host. A host may also be blocked ([`HostPlan::blocked`]): the action is what
/// the plan would do once the blockers are resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum HostAction {
    /// Upgraded in place to the target.
    Upgrade,
    /// A new node (replace strategy): staged and started on the target.
    Deploy,
    /// An old node (replace strategy): stopped once its replacements are healthy.
    Decommission,
    /// Already runs the target: no step names it.
    AlreadyAtTarget,
    /// Rollback: switched back to its previous release (and its storage restored when asked).
    RollBack,
}

impl HostAction {
    pub fn as_str(self) -> &'static str {
        match self {
            HostAction::Upgrade => "upgrade",
            HostAction::Deploy => "deploy",
            HostAction::Decommission => "decommission",
            HostAction::AlreadyAtTarget => "already at target",
            HostAction::RollBack => "roll back",
        }
    }
}

/// Something that stops the plan from running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub kind: BlockerKind,
    /// Hosts concerned; empty when fleet-wide.
    pub hosts: Vec<String>,
    pub reason: String,
    /// What the operator can do about it.
    pub hint: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BlockerKind {
    /// The selection is empty.
    NoHosts,
    /// No facts were gathered for a selected host.
    NoFacts,
    Unreachable,
    /// The installed `numary` version could not be read.
    UnknownVersion,
    Downgrade,
    /// The table does not allow the node's current version → target (hops given when any).
    UnsupportedPath,
    /// A forced zero-downtime strategy the table does not allow for some node.
    StrategyNotAllowed,
    /// Offline strategy, node running, no `--stop`.
    Running,
    /// Offline strategy, the service manager did not say stopped or running, no `--stop`.
    ServiceStateUnknown,
    /// The API answers although the service manager says stopped: a `numary` runs outside it.
    RunningOutsideServiceManager,
    /// SQLite journal left by an unclean stop.
    HotJournal,
    /// The storage driver (or the SQLite dir needed for the backup) is unknown.
    StorageUnknown,
    /// The selection mixes SQLite and Postgres, or the nodes naming one `storage` do.
    MixedStorage,
    /// Nodes reaching one database name different storages in the inventory.
    StorageConflict,
    /// An inventory node outside the selection is (or may be) on a storage the plan migrates.
    LeftOut,
    /// A zero-downtime strategy on SQLite nodes, or over several storages at once.
    ZeroDowntimeNeedsSharedStorage,
    /// Replace strategy without any `replaces` pair in the selection.
    NoReplacePairs,
    /// A host named by `replaces` is not in the selection.
    ReplacedHostMissing,
    /// Replace strategy on SQLite: a new node cannot share an old node's files.
    ReplaceNeedsPostgres,
    /// Replace strategy: a new node's storage is not the one of the node it replaces.
    ReplacementOnOtherStorage,
    /// Rollback: the run migrated the storage and the old version must not serve its schema
    /// (no zero-downtime row between the two versions); only `--restore-backup` goes back.
    Migrated,
    /// Rollback with `--restore-backup`: the run recorded no backup of a storage.
    NoBackup,
    /// Rollback: the version or release to go back to is unknown.
    NoRelease,
}
