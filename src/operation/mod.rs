//! The orchestration every command shares: connect the selected hosts (and, read-only, the
//! inventory's others), gather facts, build the plan, run the preflight and, for the commands
//! that change hosts, pass the gates and hand the plan to the engine ([`crate::runner`]).
//! `check`, `upgrade` and `rollback` call [`check`], [`upgrade`] and [`rollback`] with their
//! options, an event sink and [`Hooks`]; the caller renders what they return.

mod gates;
mod rollback;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use crate::events::EventSink;
use crate::exit_code;
use crate::inventory::{Inventory, ResolvedHost};
use crate::lock::{LeaseConfig, LockOwner};
use crate::plan::{HostAction, LeftOut, Plan, PlanOptions};
use crate::policy::PolicyTable;
use crate::preflight::{self, Audit};
use crate::runner::{self, Cancel, FailurePolicy, Fleet, PriorRun, RunConfig, RunReport};
use crate::ssh::{self, ConnectError, ConnectOptions, Session};
use crate::{Failure, Version};

pub use rollback::RollbackRequest;

/// Every selected host with its connection, or why it could not be reached.
pub type Connections = Vec<(String, Result<Session, ConnectError>)>;

/// The hosts a command works on.
pub struct Scope<'a> {
    pub inventory: &'a Inventory,
    /// The selected hosts (`--limit`), inventory order.
    pub hosts: &'a [ResolvedHost],
    pub connect: &'a ConnectOptions,
}

/// Everything a plan is built from, resolved from the command line and the inventory.
pub struct PlanInputs {
    pub target: Version,
    pub options: PlanOptions,
    pub policy: PolicyTable,
    /// The new binary's version when it runs on this machine.
    pub local_binary_version: Option<Version>,
}

/// Where the caller takes part in an operation; every method has a default that does nothing.
pub trait Hooks: Sync {
    /// Every connection attempt to the selected hosts, before anything is read from them.
    fn connected(&self, _conns: &Connections) {}
    /// The plan and its id, before the first change: the journal's header holds them.
    fn planned(&self, _plan: &Plan, _plan_id: &str) -> anyhow::Result<()> {
        Ok(())
    }
    /// The last word before a plan that loses writes (`rollback --restore-backup`) changes
    /// anything; an error refuses it.
    fn confirm(&self, _plan: &Plan) -> anyhow::Result<()> {
        Ok(())
    }
}

/// No hooks.
pub struct NoHooks;

impl Hooks for NoHooks {}

/// How a changing run behaves beyond what its plan says.
#[derive(Debug, Clone)]
pub struct RunSettings {
    /// Written into each node's lock; its run id is the run's.
    pub owner: LockOwner,
    /// `--break-lock`: break a lock whose lease expired or whose holder here is gone.
    pub break_lock: bool,
    /// `--resume`: this run continues `owner.run_id`; its locks are this run's own.
    pub resumed: bool,
    pub stop_timeout: Duration,
    pub health_timeout: Duration,
    /// Hosts worked on at once (`--forks`).
    pub forks: usize,
    /// `--max-fail`: how many hosts may fail while the run goes on without them.
    pub failure: FailurePolicy,
    /// What the run being resumed recorded as done.
    pub prior: PriorRun,
    pub cancel: Cancel,
    pub lease: LeaseConfig,
    /// `--pause-after-canary`.
    pub pause: Option<crate::runner::Pause>,
}

impl RunSettings {
    fn config(&self, binaries: BTreeMap<String, Arc<Vec<u8>>>) -> RunConfig {
        RunConfig {
            run_id: self.owner.run_id.clone(),
            owner: self.owner.clone(),
            break_lock: self.break_lock,
            binaries,
            stop_timeout: self.stop_timeout,
            health_timeout: self.health_timeout,
            poll_interval: Duration::from_millis(300),
            parallel_uploads: self.forks,
            forks: self.forks,
            failure: self.failure,
            prior: self.prior.clone(),
            cancel: self.cancel.clone(),
            lease: self.lease,
            resumed: self.resumed,
            pause: self.pause.clone(),
        }
    }
}

/// What `fleetup upgrade` asks for.
pub struct UpgradeRequest<'a> {
    pub inputs: &'a PlanInputs,
    /// `--plan ID`: refuse unless the fleet still gives the plan this id (or prefix) names.
    pub expected_plan: Option<&'a preflight::ExpectedPlan>,
    pub run: RunSettings,
}

/// How a changing operation ended when it got to an end (a refusal is an `Err`).
pub enum Finished {
    /// Every node already is where the plan goes: nothing ran. `leftover_locks` were another
    /// run's locks on those nodes that stay (shown as `` `host` by HOLDER ``).
    NothingToDo {
        plan: Plan,
        leftover_locks: Vec<String>,
    },
    /// The engine ran the plan; the report says how it ended.
    Ran { plan: Plan, report: Box<RunReport> },
}

/// The audit of `fleetup check`: read-only on every host.
pub async fn check(
    scope: &Scope<'_>,
    inputs: &PlanInputs,
    sink: &dyn EventSink,
    hooks: &dyn Hooks,
) -> Audit {
    let (conns, left_out) = connect(scope).await;
    hooks.connected(&conns);
    let audit = audit(scope, &conns, &left_out, inputs, sink).await;
    close(&conns).await;
    audit
}

/// `fleetup upgrade`: the audit of [`check`], then every gate (all hosts reachable, the
/// preflight passed, the plan id, the binary's checksum), then the engine.
pub async fn upgrade(
    scope: &Scope<'_>,
    req: &UpgradeRequest<'_>,
    sink: Arc<dyn EventSink>,
    hooks: &dyn Hooks,
) -> anyhow::Result<Finished> {
    let (conns, left_out) = connect(scope).await;
    hooks.connected(&conns);
    let result = upgrade_connected(scope, &conns, &left_out, req, sink, hooks).await;
    close(&conns).await;
    result
}

async fn upgrade_connected(
    scope: &Scope<'_>,
    conns: &Connections,
    left_out: &LeftOut,
    req: &UpgradeRequest<'_>,
    sink: Arc<dyn EventSink>,
    hooks: &dyn Hooks,
) -> anyhow::Result<Finished> {
    // The same audit as `fleetup check`, so the run never goes where the audit would not.
    let audit = audit(scope, conns, left_out, req.inputs, sink.as_ref()).await;
    gates::all_reachable(conns)?;
    let sessions = sessions(conns);
    let Audit {
        plan,
        plan_id,
        facts,
        findings,
        ..
    } = audit;
    hooks.planned(&plan, &plan_id)?;
    if let Some(expected) = req.expected_plan {
        let facts = serde_json::to_value(&facts).unwrap_or_default();
        preflight::verify_plan(expected, &plan_id, &facts)?;
    }
    // Nodes the plan leaves alone (they serve the target) may still hold the lock of a run
    // that died: reported, removed with `--break-lock` or `--resume`.
    let untouched: Vec<&ResolvedHost> = scope
        .hosts
        .iter()
        .filter(|h| {
            plan.host(&h.name)
                .is_some_and(|p| p.action == HostAction::AlreadyAtTarget)
        })
        .collect();
    let leftover_locks =
        gates::leftover_locks(&sessions, &untouched, &req.run, sink.as_ref()).await;
    if plan.nothing_to_do() {
        return Ok(Finished::NothingToDo {
            plan,
            leftover_locks,
        });
    }
    // With `--break-lock` (or `--resume`) the engine shows and breaks (or takes over) a held
    // lock itself.
    let lock_handled = req.run.break_lock || req.run.resumed;
    gates::preflight_passed(&plan, &findings, lock_handled, sink.as_ref())?;
    let binaries = gates::binaries(&plan)?;
    // Every check passed: the caller's last word before the first change.
    hooks.confirm(&plan)?;
    let fleet = Fleet {
        hosts: scope.hosts.to_vec(),
        sessions,
        facts,
    };
    let report = runner::execute(plan.clone(), fleet, req.run.config(binaries), sink).await;
    Ok(Finished::Ran {
        plan,
        report: Box::new(report),
    })
}

/// `fleetup rollback`: facts and the storages' migration state of the run's nodes, the
/// rollback plan, its blockers, the caller's confirmation, then the engine.
pub async fn rollback(
    scope: &Scope<'_>,
    req: &RollbackRequest<'_>,
    sink: Arc<dyn EventSink>,
    hooks: &dyn Hooks,
) -> anyhow::Result<Finished> {
    let conns = ssh::connect_all(scope.hosts, scope.connect).await;
    hooks.connected(&conns);
    let result = rollback::run(scope, &conns, req, sink, hooks).await;
    close(&conns).await;
    result
}

/// Connects the selected hosts and, at the same time, reads the facts of the inventory's other
/// hosts (read-only): the plan refuses to leave one behind on a storage it migrates.
async fn connect(scope: &Scope<'_>) -> (Connections, LeftOut) {
    tokio::join!(
        ssh::connect_all(scope.hosts, scope.connect),
        left_out(scope)
    )
}

/// The inventory's hosts outside the selection, each connected and asked for its facts. One
/// that cannot be reached gets `unreachable` facts: the plan's `left-out` finding says it when
/// it matters.
async fn left_out(scope: &Scope<'_>) -> LeftOut {
    let hosts: Vec<ResolvedHost> = scope
        .inventory
        .hosts()
        .iter()
        .filter(|h| !scope.hosts.iter().any(|s| s.name == h.name))
        .cloned()
        .collect();
    if hosts.is_empty() {
        return LeftOut::default();
    }
    let conns = ssh::connect_all(&hosts, scope.connect).await;
    let facts = crate::facts::gather_all(&hosts, &conns).await;
    close(&conns).await;
    LeftOut { hosts, facts }
}

async fn audit(
    scope: &Scope<'_>,
    conns: &Connections,
    left_out: &LeftOut,
    inputs: &PlanInputs,
    sink: &dyn EventSink,
) -> Audit {
    preflight::audit_fleet(
        scope.hosts,
        conns,
        left_out,
        &inputs.target,
        &inputs.options,
        &inputs.policy,
        inputs.local_binary_version.clone(),
        sink,
    )
    .await
}

fn sessions(conns: &Connections) -> BTreeMap<String, Session> {
    conns
        .iter()
        .filter_map(|(n, c)| c.as_ref().ok().map(|s| (n.clone(), s.clone())))
        .collect()
}

async fn close(conns: &Connections) {
    for (_, conn) in conns {
        if let Ok(session) = conn {
            session.close().await;
        }
    }
}

/// The failure of a run whose lock some node still holds for another run.
fn leftover_lock_failure(left: &[String]) -> Failure {
    Failure::new(
        exit_code::LOCK_HELD,
        format!(
            "nothing to do, but {} node(s) still hold another run's lock: {}",
            left.len(),
            left.join("; ")
        ),
    )
    .hint("if that run is dead, `--break-lock` removes them (or `--resume` for its own run)")
}

impl Finished {
    /// The failure a run that found nothing to do still ends with: locks another run left.
    pub fn leftover_failure(&self) -> Option<Failure> {
        match self {
            Finished::NothingToDo { leftover_locks, .. } if !leftover_locks.is_empty() => {
                Some(leftover_lock_failure(leftover_locks))
            }
            _ => None,
        }
    }

    pub fn plan(&self) -> &Plan {
        match self {
            Finished::NothingToDo { plan, .. } | Finished::Ran { plan, .. } => plan,
        }
    }
}
