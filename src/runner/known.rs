//! What the audit already knows. A node whose lock this run took fresh, finding the generation
//! its facts read (no other run locked it since, [`crate::lock::generation_path`]), is as the
//! audit saw it, changed only by this run's own steps. There a step's probe is answered from
//! those facts, without asking the node again, as long as no earlier step of this run changed
//! what the probe reads. Only "to do" is answered that way: facts saying a step is done (the plan
//! would not hold it then), anything unknown, and the backup and migrate steps still go to the
//! node ([`super::probe`]).
//!
//! A resumed run and a rollback always ask the nodes.

use crate::facts::{HostFacts, ServiceState};
use crate::plan::{Action, Step, StepKind};
use crate::ssh::Transport;

use super::ctx::Shared;
use super::probe::Probe;

/// `Some(Probe::ToDo)` when the facts tell that `step` is still to do on `host`; `earlier`: the
/// kinds of the steps this run already applied there.
pub fn answer<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    host: &str,
    earlier: &[StepKind],
) -> Option<Probe> {
    if sh.cfg.resumed
        || sh.plan.rollback.is_some()
        || !sh.changed(|c| c.facts_current.contains(host))
    {
        return None;
    }
    // The audit's facts are those before the first hop: a later hop's steps are probed.
    if step
        .hop
        .as_ref()
        .is_some_and(|h| sh.plan.hops.first().is_some_and(|f| &f.target != h))
    {
        return None;
    }
    let facts = sh.facts(host)?;
    to_do(facts, step, host, earlier).then_some(Probe::ToDo)
}

fn to_do(f: &HostFacts, step: &Step, host: &str, earlier: &[StepKind]) -> bool {
    if earlier.contains(&step.kind) {
        return false;
    }
    match step.kind {
        StepKind::StopService => f.service == ServiceState::Running,
        // Stopped by this run, or found stopped (and confirmed stopped since).
        StepKind::StartService => {
            earlier.contains(&StepKind::StopService) || f.service == ServiceState::Stopped
        }
        StepKind::Stage => match step.params(host) {
            Some(Action::Stage(p)) => !f.staged.contains(&p.version),
            _ => false,
        },
        StepKind::Switch => match step.params(host) {
            Some(Action::Switch(p)) => f.binary_target.as_deref() != Some(p.release.as_str()),
            _ => false,
        },
        // Backup and migrate always ask the node: a `numary storage` command an earlier run left
        // running is looked for there (the facts look only where a lock is left, and a lock
        // removed by hand leaves the generation alone).
        _ => false,
    }
}
