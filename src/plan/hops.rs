//! Multi-hop plans: when the table allows no node's current version → target directly but a
//! chain of supported upgrades does, the plan carries the hops out one after the other in one
//! run. Each hop is an ordinary plan for its own target, built on the facts the previous hop
//! leaves (every node serving that hop's target, health-gated), with the binary given for it
//! (`--binary V=FILE` or `[releases."V"]`). The hops' steps are laid end to end under one
//! preflight, one lock and one unlock; their ids carry the hop's version (`1.8.2/migrate`).
//! One backup, before the first hop; later hops stop running nodes themselves (the run's own).

use std::collections::BTreeMap;

use serde::Serialize;

use super::build::build_hop;
use super::{
    BinarySource, Blocker, BlockerKind, LeftOut, Plan, PlanOptions, Step, StepKind, Strategy,
};
use crate::facts::{ApiInfo, HostFacts, ServiceState};
use crate::inventory::ResolvedHost;
use crate::policy::{PolicyTable, VerdictKind};
use crate::version::Version;

/// One hop of a multi-hop plan, as the plan's JSON lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hop {
    pub target: Version,
    /// The strategy this hop's steps follow.
    pub strategy: Strategy,
    pub binary: BinarySource,
    /// The ids of its steps, in order.
    pub steps: Vec<String>,
}

/// The plan for `target`: a single hop, or when nodes need it (and binaries are given for every
/// intermediate hop) the hops end to end. See [`super::build_plan_with`].
pub(super) fn build(
    hosts: &[ResolvedHost],
    facts: &BTreeMap<String, HostFacts>,
    left_out: &LeftOut,
    target: &Version,
    opts: &PlanOptions,
    policy: &PolicyTable,
) -> Plan {
    let route = match route(hosts, facts, target, opts, policy) {
        Ok(Some(route)) => route,
        Ok(None) => return build_hop(hosts, facts, left_out, target, opts, policy),
        Err(blocker) => {
            let mut plan = build_hop(hosts, facts, left_out, target, opts, policy);
            // A hop without a binary: the unsupported-path blocker of its nodes says which.
            match plan.blockers.iter_mut().find(|b| {
                b.kind == BlockerKind::UnsupportedPath
                    && blocker.kind == BlockerKind::UnsupportedPath
                    && b.hosts.iter().all(|h| blocker.hosts.contains(h))
                    && blocker.reason.contains("no binary is given")
            }) {
                Some(b) => {
                    b.reason = format!("{}; {}", b.reason, blocker.reason);
                    b.hint = blocker.hint;
                }
                None => plan.blockers.push(blocker),
            }
            return plan;
        }
    };
    let mut facts = facts.clone();
    let mut plans: Vec<Plan> = Vec::new();
    for (i, (hop_target, binary)) in route.iter().enumerate() {
        let hop_opts = PlanOptions {
            binary: binary.clone(),
            // One verified backup, before the first hop.
            backup: opts.backup && i == 0,
            // After the first hop every node runs (health-gated): the run's own to stop.
            stop_running: opts.stop_running || i > 0,
            ..opts.clone()
        };
        let plan = build_hop(hosts, &facts, left_out, hop_target, &hop_opts, policy);
        facts = project(hosts, &facts, hop_target);
        plans.push(plan);
    }
    combine(plans, opts)
}

/// The versions and binaries of each hop, the target last; `None` when every node upgrades
/// directly (or cannot at all: the single-hop plan says why). A node needing hops whose route
/// differs from another's, or a hop without a binary, is a blocker.
fn route(
    hosts: &[ResolvedHost],
    facts: &BTreeMap<String, HostFacts>,
    target: &Version,
    opts: &PlanOptions,
    policy: &PolicyTable,
) -> Result<Option<Vec<(Version, BinarySource)>>, Blocker> {
    let mut routes: BTreeMap<Vec<String>, Vec<&str>> = BTreeMap::new();
    for h in hosts {
        // New nodes of a replacement have no version that matters.
        if h.replaces.is_some() {
            continue;
        }
        let Some(f) = facts.get(&h.name).filter(|f| f.reachable()) else {
            continue;
        };
        let Some(current) = &f.installed_version else {
            continue;
        };
        let driver = f.storage.as_ref().map(|s| s.driver);
        let v = policy.evaluate_for(current, target, driver);
        if v.kind == VerdictKind::NeedsHops && v.hops.len() > 1 {
            let families = v.hops[..v.hops.len() - 1].to_vec();
            routes.entry(families).or_default().push(&h.name);
        }
    }
    let Some((families, _)) = routes.iter().next() else {
        return Ok(None);
    };
    if routes.len() > 1 {
        let parts: Vec<String> = routes
            .iter()
            .map(|(f, names)| format!("{} via {}", names.join(", "), f.join(" → ")))
            .collect();
        return Err(Blocker {
            kind: BlockerKind::UnsupportedPath,
            hosts: routes.values().flatten().map(|n| n.to_string()).collect(),
            reason: format!(
                "the nodes need different routes to `{target}`: {}",
                parts.join("; ")
            ),
            hint: Some(
                "upgrade the nodes on the oldest version first (`--limit`, `--to` their next hop), then the whole fleet"
                    .to_string(),
            ),
        });
    }
    let mut out = Vec::new();
    for family in families {
        let Some((version, binary)) = pick(&opts.hop_binaries, family) else {
            return Err(Blocker {
                kind: BlockerKind::UnsupportedPath,
                hosts: routes.values().flatten().map(|n| n.to_string()).collect(),
                reason: format!(
                    "the route to `{target}` goes through `{family}`, and no binary is given for it"
                ),
                hint: Some(format!(
                    "pass `--binary VERSION=FILE` for a release of `{family}` (repeatable), or name it in the inventory: `[releases.\"VERSION\"]`"
                )),
            });
        };
        out.push((version.clone(), binary.clone()));
    }
    out.push((target.clone(), opts.binary.clone()));
    Ok(Some(out))
}

/// The newest binary of `family` (`1.8.x`, maybe `1.8.x (>= 1.8.2)`) among `binaries`.
fn pick<'b>(
    binaries: &'b [(Version, BinarySource)],
    family: &str,
) -> Option<&'b (Version, BinarySource)> {
    let (line, constraint) = match family.split_once(" (>= ") {
        Some((line, rest)) => (line, Version::parse(rest.trim_end_matches(')')).ok()),
        None => (family, None),
    };
    let (major, minor) = line.strip_suffix(".x")?.split_once('.')?;
    let (major, minor) = (major.parse::<u64>().ok()?, minor.parse::<u64>().ok()?);
    binaries
        .iter()
        .filter(|(v, _)| v.major() == major && v.minor() == minor)
        .filter(|(v, _)| constraint.as_ref().is_none_or(|c| v >= c))
        .max_by(|a, b| a.0.cmp(&b.0))
}

/// The facts the hop to `target` leaves: every node it upgrades serves `target` on its release,
/// healthy; the schema unknown (the next hop's probes read it).
fn project(
    hosts: &[ResolvedHost],
    facts: &BTreeMap<String, HostFacts>,
    target: &Version,
) -> BTreeMap<String, HostFacts> {
    let mut out = facts.clone();
    for h in hosts {
        let Some(f) = out.get_mut(&h.name).filter(|f| f.reachable()) else {
            continue;
        };
        if f.installed_version.as_ref().is_some_and(|v| v >= target) {
            continue;
        }
        f.installed_version = Some(target.clone());
        f.service = ServiceState::Running;
        f.api = Some(ApiInfo {
            healthy: true,
            version: Some(target.clone()),
        });
        f.binary_target = Some(super::commands::release_binary(h, target));
        if !f.staged.contains(target) {
            f.staged.push(target.clone());
        }
        f.schema = None;
        f.hot_journals.clear();
        f.locked = false;
    }
    out
}

/// The hops' plans as one: the first hop's preflight and lock, every hop's other steps with
/// its version in their ids, one unlock; blockers and warnings of all, each said once.
fn combine(plans: Vec<Plan>, opts: &PlanOptions) -> Plan {
    let mut hops = Vec::new();
    let mut steps: Vec<Step> = Vec::new();
    let mut blockers: Vec<Blocker> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    let mut unlock = None;
    for (i, plan) in plans.iter().enumerate() {
        let mut ids = Vec::new();
        for step in &plan.steps {
            match step.kind {
                StepKind::Preflight | StepKind::Lock if i > 0 => continue,
                StepKind::Unlock => {
                    unlock.get_or_insert_with(|| step.clone());
                    continue;
                }
                _ => {}
            }
            let mut s = step.clone();
            if !matches!(s.kind, StepKind::Preflight | StepKind::Lock) {
                s.id = format!("{}/{}", plan.target, s.id);
                s.hop = Some(plan.target.clone());
                ids.push(s.id.clone());
            }
            steps.push(s);
        }
        for b in &plan.blockers {
            if !blockers.iter().any(|x| x.reason == b.reason) {
                let mut b = b.clone();
                if i > 0 {
                    b.reason = format!("hop to `{}`: {}", plan.target, b.reason);
                }
                blockers.push(b);
            }
        }
        for w in &plan.warnings {
            if !warnings.contains(w) {
                warnings.push(w.clone());
            }
        }
        hops.push(Hop {
            target: plan.target.clone(),
            strategy: plan.strategy,
            binary: plan.binary.clone(),
            steps: ids,
        });
    }
    steps.extend(unlock);
    for (i, s) in steps.iter_mut().enumerate() {
        s.number = i + 1;
    }
    let mut plans = plans.into_iter();
    let first = plans.next().expect("a route has hops");
    let last = plans.last().expect("a route has two hops or more");
    // The first hop's view of the hosts (their current versions, what the run does to them),
    // the last hop's target and binary.
    Plan {
        target: last.target.clone(),
        binary: opts.binary.clone(),
        steps,
        blockers,
        warnings,
        hops,
        ..first
    }
}
