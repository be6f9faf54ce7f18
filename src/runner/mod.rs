//! The runner: carries out a [`Plan`] on connected hosts, step by step, emitting an event for
//! every start and finish. It takes the fleet lock first and releases it last, also on failure;
//! after a failure it undoes what is safe to undo (staged releases, an unneeded backup, nodes it
//! stopped while the storage is still untouched) and reports each node's state.
//!
//! Preflight is the caller's: the runner starts at the `lock` step of a plan that passed it.

mod backup;
mod ctx;
mod migrate;
mod service;
mod stage;
mod switch;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::events::{Event, EventSink, HostSummary};
use crate::exit_code;
use crate::facts::HostFacts;
use crate::inventory::ResolvedHost;
use crate::lock::{self, LockError, LockOwner};
use crate::plan::{HostAction, Plan, Step, StepKind};
use crate::shell::quote;
use crate::ssh::{ExecOptions, Transport};

pub use backup::{DUMP_FILE, backup_dir, parse_postgres_backup, parse_sqlite_backup};
pub use ctx::{Changes, StepError, kind_name};
pub use migrate::{ListProblem, check_listed};
pub use stage::{release_binary, release_dir};

use ctx::Shared;

/// How the run behaves, beyond what the plan says.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub run_id: String,
    /// Written into each node's lock.
    pub owner: LockOwner,
    /// `--break-lock`: break a lock whose holder is not a live fleetup on this machine.
    pub break_lock: bool,
    /// The bytes of `--binary FILE`, read once (`None` for `--binary-url`).
    pub binary: Option<Arc<Vec<u8>>>,
    /// How long a node may take to stop.
    pub stop_timeout: Duration,
    /// How long a node may take to serve the target after its start.
    pub health_timeout: Duration,
    /// Pause between two polls of a service or API.
    pub poll_interval: Duration,
    /// Uploads at once.
    pub parallel_uploads: usize,
}

/// The connected fleet: every selected host, its session and its facts.
pub struct Fleet<T> {
    pub hosts: Vec<ResolvedHost>,
    pub sessions: BTreeMap<String, T>,
    pub facts: BTreeMap<String, HostFacts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// A guard refused to go on; nothing changed that was not undone.
    Blocked,
    /// Another run holds the lock of some node.
    LockHeld,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Blocked => "blocked",
            Outcome::LockHeld => "lock-held",
            Outcome::Failed => "failed",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Succeeded => exit_code::SUCCESS,
            Outcome::Blocked => exit_code::BLOCKED,
            Outcome::LockHeld => exit_code::LOCK_HELD,
            Outcome::Failed => exit_code::FAILURE,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    pub error: Option<StepError>,
    /// Each node touched by the plan, with its versions and state.
    pub hosts: Vec<HostSummary>,
    pub changes: Changes,
    /// `(step number, kind, duration)` of each step that ran.
    pub timings: Vec<(usize, StepKind, Duration)>,
    /// Locks that could not be released (the operator must remove them).
    pub unlock_errors: Vec<String>,
}

/// Carries out `plan` (its preflight already passed) on `fleet`.
pub async fn execute<T: Transport + Clone + 'static>(
    plan: Plan,
    fleet: Fleet<T>,
    cfg: RunConfig,
    sink: Arc<dyn EventSink>,
) -> RunReport {
    let sh = Arc::new(Shared {
        hosts: fleet
            .hosts
            .into_iter()
            .map(|h| (h.name.clone(), h))
            .collect(),
        sessions: fleet.sessions,
        facts: fleet.facts,
        plan,
        cfg,
        sink,
        changes: Mutex::new(Changes::default()),
    });
    let mut timings = Vec::new();
    let mut error = None;
    for step in sh.plan.steps.clone() {
        let started = Instant::now();
        let result = match step.kind {
            // The caller ran the preflight; the unlock step runs below, whatever happened.
            StepKind::Preflight | StepKind::Unlock => continue,
            StepKind::Lock => take_locks(&sh, &step).await,
            StepKind::StopService => service::stop(&sh, &step).await,
            StepKind::ConfirmStopped => service::confirm_stopped(&sh, &step).await,
            StepKind::Backup => backup::run(&sh, &step).await,
            StepKind::Stage => stage::run(&sh, &step).await,
            StepKind::Migrate => migrate::run(&sh, &step).await,
            StepKind::Switch => switch::run(&sh, &step).await,
            StepKind::StartService => service::start(&sh, &step).await,
            StepKind::HealthGate => service::health_gate(&sh, &step).await,
            StepKind::Decommission => Err(sh.error(
                &step,
                step.hosts.first().map_or("", String::as_str),
                "the replace strategy is not supported by this fleetup yet",
            )),
        };
        timings.push((step.number, step.kind, started.elapsed()));
        if let Err(e) = result {
            error = Some(e);
            break;
        }
    }
    if error.is_some() {
        recover(&sh).await;
    }
    let unlock_errors = release_locks(&sh).await;
    let changes = sh.changes();
    let outcome = match &error {
        None => Outcome::Succeeded,
        Some(e) if e.code == exit_code::LOCK_HELD => Outcome::LockHeld,
        Some(e) if e.code == exit_code::BLOCKED => Outcome::Blocked,
        Some(_) => Outcome::Failed,
    };
    let hosts = summarize(&sh, &changes, error.is_some()).await;
    sh.emit(Event::Summary {
        hosts: hosts.clone(),
        artefacts: changes.artefacts.clone(),
    });
    RunReport {
        outcome,
        error,
        hosts,
        changes,
        timings,
        unlock_errors,
    }
}

/// Takes the lock on each node in plan order (so two runs contend on the same first node). A
/// held lock: shown, then broken with `--break-lock` unless its holder is a live fleetup here;
/// otherwise the locks taken so far are released and the run stops.
async fn take_locks<T: Transport>(sh: &Shared<T>, step: &Step) -> Result<(), StepError> {
    for name in &step.hosts {
        let host = sh.host(name);
        let t = sh.session(name);
        let op = sh.begin(step, name, None);
        let mut result = lock::acquire(t, host, &sh.cfg.owner).await;
        if let Err(LockError::Held { holder, .. }) = &result
            && sh.cfg.break_lock
        {
            let shown = holder.describe();
            sh.emit(Event::Notice {
                host: name.clone(),
                message: format!("the lock `{}` is held by {shown}", lock::lock_path(host)),
            });
            let alive = holder
                .owner()
                .is_some_and(|o| lock::holder_alive_here(o, &sh.cfg.owner.local_host));
            if !alive {
                result = match lock::break_lock(t, host).await {
                    Ok(()) => {
                        sh.emit(Event::LockBroken {
                            host: name.clone(),
                            holder: shown,
                        });
                        lock::acquire(t, host, &sh.cfg.owner).await
                    }
                    Err(e) => Err(e),
                };
            }
        }
        match result {
            Ok(()) => {
                sh.change(|c| c.locked.push(name.clone()));
                op.ok(format!("`{}` taken", lock::lock_path(host)), Vec::new());
            }
            Err(err) => {
                let mut e = sh.error(step, name, err.to_string());
                if let LockError::Held { holder, .. } = &err {
                    e.code = exit_code::LOCK_HELD;
                    let alive_here = holder
                        .owner()
                        .is_some_and(|o| lock::holder_alive_here(o, &sh.cfg.owner.local_host));
                    e.hints.push(if alive_here {
                        "that run is still going on this machine: wait for it to finish".into()
                    } else if sh.cfg.break_lock {
                        "the lock could not be broken".into()
                    } else {
                        format!(
                            "if no fleetup run is going on (the holder crashed), run again with `--break-lock`; or remove `{}` on `{name}` by hand",
                            lock::lock_path(host)
                        )
                    });
                }
                op.fail(&e.message);
                return Err(e);
            }
        }
    }
    Ok(())
}

/// Releases every lock this run took: the `unlock` step. Returns the failures.
async fn release_locks<T: Transport>(sh: &Shared<T>) -> Vec<String> {
    let step = sh
        .plan
        .steps
        .iter()
        .find(|s| s.kind == StepKind::Unlock)
        .cloned();
    let mut errors = Vec::new();
    let Some(step) = step else {
        return errors;
    };
    for name in sh.changes().locked {
        let op = sh.begin(&step, &name, None);
        match lock::release(sh.session(&name), sh.host(&name), &sh.cfg.run_id).await {
            Ok(()) => op.ok("released", Vec::new()),
            Err(e) => {
                let message = format!("{e}; remove it by hand once you checked the node");
                op.fail(&message);
                errors.push(message);
            }
        }
    }
    errors
}

/// After a failure: what is safe to undo. Before any binary was switched, staged releases this
/// run created are removed; while no `storage upgrade` ran, the storage is as the backup holds
/// it, so the backup is dropped and the nodes this run stopped are started again on their old
/// binary. Once a ledger may have been migrated the backup is the way back: it is kept, and no
/// node is started (an old binary must not serve a migrated schema).
async fn recover<T: Transport>(sh: &Shared<T>) {
    let c = sh.changes();
    if !c.switched.is_empty() {
        return;
    }
    let opts = ExecOptions {
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let restored = |host: &str, action: &str, ok: bool, detail: String| {
        sh.emit(Event::Restored {
            host: host.to_string(),
            action: action.to_string(),
            ok,
            detail,
        });
    };
    for (host, dir, created) in &c.staged {
        if !created {
            continue;
        }
        let cmd = format!(
            "d={}; rm -f \"$d/numary\" \"$d/numary.fleetup-part\" && rmdir \"$d\" 2>/dev/null; [ ! -e \"$d/numary\" ]",
            quote(dir)
        );
        let r = sh.session(host).exec(&cmd, &opts).await;
        let ok = matches!(&r, Ok(o) if o.status.success());
        restored(
            host,
            "remove-staged-release",
            ok,
            if ok {
                format!("removed `{dir}`")
            } else {
                format!("could not remove `{dir}`")
            },
        );
    }
    if c.storage_touched {
        for (host, dir) in &c.backups {
            restored(
                host,
                "keep-backup",
                true,
                format!(
                    "kept `{dir}`: a ledger may already be migrated, restore from it to go back"
                ),
            );
        }
        for host in &c.stopped {
            restored(
                host,
                "leave-stopped",
                true,
                "left stopped: its old binary must not serve a storage that may be migrated".into(),
            );
        }
        return;
    }
    for (host, dir) in &c.backups {
        let r = sh
            .session(host)
            .exec(&format!("rm -rf -- {}", quote(dir)), &opts)
            .await;
        let ok = matches!(&r, Ok(o) if o.status.success());
        restored(
            host,
            "remove-backup",
            ok,
            if ok {
                format!("removed `{dir}`: the storage was not touched")
            } else {
                format!("could not remove `{dir}`")
            },
        );
    }
    for host in &c.stopped {
        match service::restart_old(sh, host).await {
            Ok(detail) => restored(host, "restart", true, detail),
            Err(detail) => restored(host, "restart", false, detail),
        }
    }
}

/// Each node the plan touches: versions before and after, and its state. After a failure the
/// state is read live from the node, so the report says what really runs where.
async fn summarize<T: Transport>(sh: &Shared<T>, c: &Changes, failed: bool) -> Vec<HostSummary> {
    let mut out = Vec::new();
    for hp in &sh.plan.hosts {
        if hp.action == HostAction::AlreadyAtTarget {
            continue;
        }
        let name = &hp.name;
        let from = hp.current.as_ref().map(ToString::to_string);
        let switched = c.switched.iter().any(|(h, _)| h == name);
        let to = if switched {
            Some(sh.plan.target.to_string())
        } else {
            from.clone()
        };
        let state = if !failed {
            if c.healthy.contains(name) {
                format!("running `{}`, healthy", sh.plan.target)
            } else {
                "unchanged".to_string()
            }
        } else {
            let live = match sh.sessions.get(name.as_str()) {
                Some(t) => service::live_state(t, sh.host(name)).await,
                None => "not reachable".into(),
            };
            let binary = if switched {
                format!("binary switched to `{}`", sh.plan.target)
            } else {
                "binary not switched".to_string()
            };
            format!("{binary}, {live}")
        };
        out.push(HostSummary {
            host: name.clone(),
            from,
            to,
            state,
        });
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::time::Duration;

    use crate::inventory::{LedgerSettings, ResolvedHost, SshSettings};

    /// A host with the built-in ledger settings, for the script tests of the steps.
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
                connect_timeout: Duration::from_secs(1),
                command_timeout: Duration::from_secs(1),
                jump_host: None,
                use_agent: false,
            },
            ledger: LedgerSettings::default(),
        }
    }
}
