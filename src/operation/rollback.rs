//! The rollback's flow over established connections: facts and the storages' migration state
//! of the rolled-back run's nodes, the plan of [`crate::plan::build_rollback`], its blockers,
//! the caller's confirmation of a restore, then the engine.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use super::{Connections, Finished, Hooks, RunSettings, Scope, sessions};
use crate::events::EventSink;
use crate::facts::HostFacts;
use crate::plan::{self, RunRecord, build_rollback, plan_digest};
use crate::policy::PolicyTable;
use crate::preflight::emit_connections;
use crate::runner::{self, Fleet};
use crate::ssh::{ExecOptions, Session};
use crate::{Failure, exit_code, schema};

/// What `fleetup rollback` asks for.
pub struct RollbackRequest<'a> {
    /// What the rolled-back upgrade run's journal says.
    pub record: &'a RunRecord,
    /// `--restore-backup`.
    pub restore_backup: bool,
    pub policy: &'a PolicyTable,
    pub run: RunSettings,
}

pub(super) async fn run(
    scope: &Scope<'_>,
    conns: &Connections,
    req: &RollbackRequest<'_>,
    sink: Arc<dyn EventSink>,
    hooks: &dyn Hooks,
) -> anyhow::Result<Finished> {
    emit_connections(conns, sink.as_ref());
    let sessions = sessions(conns);
    let facts = crate::facts::gather_all(scope.hosts, conns).await;
    let schema_beyond = schema_beyond(scope, req.record, &sessions, &facts).await;
    let plan = build_rollback(&plan::RollbackRequest {
        record: req.record,
        hosts: scope.hosts,
        facts: &facts,
        schema_beyond: &schema_beyond,
        restore_backup: req.restore_backup,
        policy: req.policy,
    });
    let plan_id = plan_digest(&plan, &facts);
    hooks.planned(&plan, &plan_id)?;
    sink.emit(&crate::preflight::plan_ready(&plan, &plan_id, &facts));
    if plan.is_blocked() {
        let mut f = Failure::new(
            exit_code::BLOCKED,
            format!(
                "the rollback of run `{}` is refused; nothing was changed:\n{}",
                req.record.run_id,
                plan.blockers
                    .iter()
                    .map(|b| format!("  - {}", b.reason))
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        );
        for h in plan.blockers.iter().filter_map(|b| b.hint.clone()) {
            if !f.hints.contains(&h) {
                f.hints.push(h);
            }
        }
        return Err(f.into());
    }
    if plan.steps.is_empty() {
        return Ok(Finished::NothingToDo {
            plan,
            leftover_locks: Vec::new(),
        });
    }
    if req.restore_backup {
        hooks.confirm(&plan)?;
    }
    let fleet = Fleet {
        hosts: scope.hosts.to_vec(),
        sessions,
        facts,
    };
    let report = runner::execute(
        plan.clone(),
        fleet,
        req.run.config(Default::default()),
        sink,
    )
    .await;
    Ok(Finished::Ran {
        plan,
        report: Box::new(report),
    })
}

/// `host → true` when its storage holds a migration newer than the version gone back to
/// (read-only; a storage that cannot be read is left out: the journal still tells).
async fn schema_beyond(
    scope: &Scope<'_>,
    record: &RunRecord,
    sessions: &BTreeMap<String, Session>,
    facts: &BTreeMap<String, HostFacts>,
) -> BTreeMap<String, bool> {
    let mut out = BTreeMap::new();
    let Some(old) = record.hosts.iter().find_map(|h| h.from.clone()) else {
        return out;
    };
    for h in scope.hosts {
        let (Some(t), Some(driver)) = (
            sessions.get(&h.name),
            facts
                .get(&h.name)
                .and_then(|f| f.storage.as_ref())
                .map(|s| s.driver),
        ) else {
            continue;
        };
        let cmd = schema::state_command(h, driver);
        let opts = ExecOptions {
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        if let Ok(o) = t.exec(&cmd, &opts).await
            && o.status.success()
        {
            let state = schema::parse_state(&o.stdout_lossy());
            out.insert(h.name.clone(), schema::holds_beyond(&state, &old, driver));
        }
    }
    out
}
