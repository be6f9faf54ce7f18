//! The operator's hooks as steps: `pre_hook` before a batch leaves service, `post_hook` once it
//! passed its health gate (inventory `[rollout]`). [`hook`] builds the step of one batch for the
//! hosts that have that hook; `steps.rs` puts it where each strategy's batches change.

use super::build::View;
use super::steps::{Layout, names};
use super::{Action, HookParams, HookPhase, HostCommands, RUN_ID_TOKEN, Step, StepKind};
use crate::inventory::Hook;

/// The `phase` hook step of `hosts` (a batch, or with `batch: None` the nodes of a step over
/// every batch): only the hosts that have that hook; `None` when none has.
pub(super) fn hook(
    l: &Layout,
    hosts: &[&View],
    batch: Option<usize>,
    phase: HookPhase,
) -> Option<Step> {
    let with_hook: Vec<(&View, &Hook)> = hosts
        .iter()
        .filter_map(|v| hook_of(v, phase).map(|h| (*v, h)))
        .collect();
    if with_hook.is_empty() {
        return None;
    }
    let hooked: Vec<&View> = with_hook.iter().map(|(v, _)| *v).collect();
    let (kind, when, why) = match phase {
        HookPhase::Pre => (
            StepKind::PreHook,
            "before they leave service",
            "the operator's `pre_hook`: whatever else must know the node is going away (a load balancer draining it, say) is told before anything changes on it",
        ),
        HookPhase::Post => (
            StepKind::PostHook,
            "now that they passed their health gate",
            "the operator's `post_hook`: the node serves the target and is healthy, so what was told it went away (a load balancer, say) can take it back",
        ),
    };
    let local = with_hook.iter().filter(|(_, h)| h.local).count();
    let place = match (local, hooked.len() - local) {
        (0, _) => "on each node over SSH",
        (_, 0) => "on this machine, in the inventory's directory",
        _ => "on each node over SSH, or on this machine for a local hook",
    };
    let mut checks = vec![
        "the hook exits 0 within its timeout; a failure or a timeout (the hook is killed) fails the node, with the hook's last output lines".to_string(),
        "it runs as written, given `FLEETUP_HOST`, `FLEETUP_ADDRESS`, `FLEETUP_BATCH`, `FLEETUP_PHASE`, `FLEETUP_RUN_ID` and `FLEETUP_TARGET`; it runs on every run, `--resume` included, and is never undone".to_string(),
    ];
    for (v, h) in &with_hook {
        checks.push(format!(
            "`{}`: timeout `{}`",
            v.name(),
            humantime::format_duration(h.timeout)
        ));
    }
    Some(Step {
        id: String::new(),
        number: 0,
        kind,
        hosts: hooked.iter().map(|v| v.name().to_string()).collect(),
        batch,
        hop: None,
        action: format!(
            "run the `{}_hook` of {} {when}, {place}",
            phase.as_str(),
            names(&hooked)
        ),
        why: why.to_string(),
        checks,
        commands: with_hook
            .iter()
            .map(|(v, h)| HostCommands::new(v.name(), Action::Hook(params(l, v, h, phase))))
            .collect(),
    })
}

fn hook_of<'a>(v: &View<'a>, phase: HookPhase) -> Option<&'a Hook> {
    let r = &v.host.rollout;
    match phase {
        HookPhase::Pre => r.pre_hook.as_ref(),
        HookPhase::Post => r.post_hook.as_ref(),
    }
}

fn params(l: &Layout, v: &View, h: &Hook, phase: HookPhase) -> HookParams {
    // The node's own start batch, whatever step it runs in (offline's pre hooks run for every
    // batch at once); empty for a node the plan starts in none.
    let batch = l
        .batches
        .iter()
        .position(|b| b.iter().any(|o| o.name() == v.name()))
        .map_or_else(String::new, |i| (i + 1).to_string());
    let env = [
        ("FLEETUP_HOST", v.name().to_string()),
        ("FLEETUP_ADDRESS", v.host.address.clone()),
        ("FLEETUP_BATCH", batch),
        ("FLEETUP_PHASE", phase.as_str().to_string()),
        ("FLEETUP_RUN_ID", RUN_ID_TOKEN.to_string()),
        ("FLEETUP_TARGET", l.target.to_string()),
    ];
    HookParams {
        phase,
        command: h.command.clone(),
        local: h.local,
        timeout: h.timeout,
        env: env.into_iter().map(|(k, v)| (k.to_string(), v)).collect(),
        dir: h.local.then(|| h.dir.display().to_string()),
    }
}
