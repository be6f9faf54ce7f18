//! The dry-run audit (`fleetup check`, `fleetup upgrade --dry-run`): the plan with each step
//! marked per host (will do, already done, blocked and why), every preflight finding, the plan
//! id and the outcome that decides the exit code. Rendered as text here; serialized as JSON.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Finding, Preflight, check};
use crate::events::{Event, PlannedStep};
use crate::exit_code;
use crate::facts::HostFacts;
use crate::plan::{HostAction, Plan, Step, StepKind, header_lines, plan_digest};

/// What the audit concludes, most specific first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// Nothing blocks: `fleetup upgrade` may run this plan.
    Ready,
    /// Every selected node already runs the target.
    NothingToDo,
    /// A blocker or a failed check.
    Blocked,
    /// Some host could not be reached.
    Unreachable,
    /// Another run holds the fleet lock.
    LockHeld,
}

impl Outcome {
    /// From the plan and the preflight: unreachable beats lock-held beats blocked.
    pub fn of(plan: &Plan, preflight: &Preflight) -> Outcome {
        if !preflight.unreachable_hosts().is_empty() {
            Outcome::Unreachable
        } else if preflight.lock_held() {
            Outcome::LockHeld
        } else if plan.is_blocked() || !preflight.passed() {
            Outcome::Blocked
        } else if plan.nothing_to_do() {
            Outcome::NothingToDo
        } else {
            Outcome::Ready
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Ready => exit_code::SUCCESS,
            Outcome::NothingToDo => exit_code::NOTHING_TO_DO,
            Outcome::Blocked => exit_code::BLOCKED,
            Outcome::Unreachable => exit_code::UNREACHABLE,
            Outcome::LockHeld => exit_code::LOCK_HELD,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ready => "ready",
            Outcome::NothingToDo => "nothing-to-do",
            Outcome::Blocked => "blocked",
            Outcome::Unreachable => "unreachable",
            Outcome::LockHeld => "lock-held",
        }
    }
}

/// What a step would do on one host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "mark", rename_all = "kebab-case")]
pub enum Mark {
    WillDo,
    AlreadyDone {
        reason: String,
    },
    /// `checks`: the failed checks' names; `reasons`: their details.
    Blocked {
        checks: Vec<String>,
        reasons: Vec<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HostMark {
    pub host: String,
    #[serde(flatten)]
    pub mark: Mark,
}

/// A step of the plan with its mark on each of its hosts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MarkedStep {
    pub number: usize,
    pub kind: StepKind,
    pub batch: Option<usize>,
    pub action: String,
    pub hosts: Vec<HostMark>,
}

/// The whole audit. Its JSON is `fleetup check --format json` (see `docs/check.md`).
#[derive(Debug, Clone, Serialize)]
pub struct Audit {
    pub outcome: Outcome,
    pub exit_code: i32,
    /// [`plan_digest`] of the plan and the facts: `fleetup upgrade --plan ID` checks it.
    pub plan_id: String,
    pub plan: Plan,
    pub findings: Vec<Finding>,
    pub steps: Vec<MarkedStep>,
    pub facts: BTreeMap<String, HostFacts>,
}

impl Audit {
    pub fn new(plan: Plan, facts: BTreeMap<String, HostFacts>, preflight: Preflight) -> Audit {
        let outcome = Outcome::of(&plan, &preflight);
        let plan_id = plan_digest(&plan, &facts);
        let steps = mark_steps(&plan, &facts, &preflight);
        Audit {
            outcome,
            exit_code: outcome.exit_code(),
            plan_id,
            plan,
            findings: preflight.findings,
            steps,
            facts,
        }
    }

    /// The audit for people: plan header, marked steps, hosts, findings, warnings, plan id and
    /// the result. Plain text, stable, no colours. By default it fits a screen: a line per
    /// step, the failed findings once each with the hosts they hold on; `verbose` adds every
    /// host's commands (hosts with identical ones share them) and every check that passed.
    pub fn render_text(&self, verbose: u8) -> String {
        let mut out = String::new();
        let plan = &self.plan;
        for l in header_lines(plan, "check") {
            line(&mut out, l);
        }
        if !self.steps.is_empty() {
            out.push_str(if verbose > 0 {
                "\nsteps:\n"
            } else {
                "\nsteps (-v shows each host's commands):\n"
            });
            for (marked, step) in self.steps.iter().zip(&plan.steps) {
                render_step(&mut out, marked, step, verbose);
            }
        }
        out.push_str("\nhosts:\n");
        let width = plan.hosts.iter().map(|h| h.name.len()).max().unwrap_or(0);
        for h in &plan.hosts {
            let current = h
                .current
                .as_ref()
                .map_or_else(|| "unknown".to_owned(), ToString::to_string);
            let version = match h.action {
                HostAction::AlreadyAtTarget | HostAction::Decommission => current,
                HostAction::Upgrade | HostAction::Deploy | HostAction::RollBack => {
                    format!("{current} → {}", plan.target)
                }
            };
            let mut notes = vec![match h.action {
                HostAction::AlreadyAtTarget => "already done (runs the target)".to_owned(),
                other => other.as_str().to_owned(),
            }];
            if h.migrator {
                notes.push("migrator".to_owned());
            }
            if let Some(old) = &h.replaces {
                notes.push(format!("replaces {old}"));
            }
            if let Some(b) = h.batch {
                notes.push(format!("batch {b}"));
            }
            if self
                .findings
                .iter()
                .any(|f| !f.ok && f.host.as_deref() == Some(&h.name))
            {
                notes.push("BLOCKED".to_owned());
            }
            line(
                &mut out,
                format!("  {:<width$}  {version:<16}  {}", h.name, notes.join(", ")),
            );
        }
        if verbose > 0 {
            self.render_findings(&mut out);
        } else {
            self.render_failed_findings(&mut out);
        }
        if !plan.warnings.is_empty() {
            out.push_str("\nwarnings:\n");
            for w in &plan.warnings {
                line(&mut out, format!("  - {w}"));
            }
        }
        out.push('\n');
        line(&mut out, format!("plan id: {}", self.plan_id));
        let failed = self.findings.iter().filter(|f| !f.ok).count();
        line(
            &mut out,
            match self.outcome {
                Outcome::Ready => format!(
                    "result: ready, {} steps; nothing was changed. Run it with `fleetup upgrade` and the same options plus `--plan {}`",
                    plan.steps.len(),
                    self.plan_id
                ),
                Outcome::NothingToDo => format!(
                    "result: nothing to do, every selected node already runs {}",
                    plan.target
                ),
                Outcome::Blocked if failed > 0 => format!(
                    "result: blocked by {failed} finding(s): {}; nothing was changed",
                    super::failure_names(&self.findings)
                ),
                Outcome::Blocked => "result: blocked; nothing was changed".to_owned(),
                Outcome::Unreachable => format!(
                    "result: unreachable host(s) ({}); nothing was changed",
                    self.findings
                        .iter()
                        .filter(|f| !f.ok && f.check == check::REACHABLE)
                        .filter_map(|f| f.host.as_deref())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                Outcome::LockHeld => {
                    "result: another fleetup run holds the fleet lock; nothing was changed"
                        .to_owned()
                }
            },
        );
        out
    }

    /// The default: how many checks passed, then each failed finding once, with its hosts and
    /// its hint under it.
    fn render_failed_findings(&self, out: &mut String) {
        let failed: Vec<&Finding> = self.findings.iter().filter(|f| !f.ok).collect();
        out.push_str(&format!(
            "\nfindings: {} checked, {} ok, {} failed{}\n",
            self.findings.len(),
            self.findings.len() - failed.len(),
            failed.len(),
            if failed.is_empty() {
                " (-v lists them)".to_owned()
            } else {
                " (-v lists every check):".to_owned()
            }
        ));
        let groups = super::group_findings(failed);
        let width = groups.iter().map(|g| g.check.len()).max().unwrap_or(0);
        for g in groups {
            line(
                out,
                format!(
                    "  FAIL  {:<width$}  {}: {}",
                    g.check,
                    g.hosts_text(),
                    g.detail
                ),
            );
            if let Some(hint) = &g.hint {
                line(out, format!("        {:<width$}  hint: {hint}", ""));
            }
        }
    }

    fn render_findings(&self, out: &mut String) {
        let failed = self.findings.iter().filter(|f| !f.ok).count();
        out.push_str(&format!(
            "\nfindings ({} checked, {failed} failed):\n",
            self.findings.len()
        ));
        let mut groups: Vec<(Option<&str>, Vec<&Finding>)> = Vec::new();
        for f in &self.findings {
            match groups.iter_mut().find(|(h, _)| *h == f.host.as_deref()) {
                Some((_, list)) => list.push(f),
                None => groups.push((f.host.as_deref(), vec![f])),
            }
        }
        let width = self
            .findings
            .iter()
            .map(|f| f.check.len())
            .max()
            .unwrap_or(0);
        for (host, list) in groups {
            line(out, format!("  {}:", host.unwrap_or("fleet")));
            for f in list {
                let status = if f.ok { "ok  " } else { "FAIL" };
                line(
                    out,
                    format!("    {status}  {:<width$}  {}", f.check, f.detail),
                );
                if let Some(hint) = &f.hint {
                    line(out, format!("          {:<width$}  hint: {hint}", ""));
                }
            }
        }
    }
}

/// [`Event::PlanReady`] for `plan`, built from `facts`: what a run's journal records of the
/// plan it follows.
pub fn plan_ready(plan: &Plan, plan_id: &str, facts: &BTreeMap<String, HostFacts>) -> Event {
    // The plan's JSON names (`multi_node`, `stop_service`), so journals and `--format json` agree.
    let name = |v: serde_json::Result<serde_json::Value>| {
        v.ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default()
    };
    Event::PlanReady {
        plan_id: plan_id.to_owned(),
        strategy: plan.strategy.to_string(),
        mode: name(serde_json::to_value(plan.mode)),
        migrator: plan.migrator.clone(),
        steps: plan
            .steps
            .iter()
            .map(|s| PlannedStep {
                step: s.number,
                kind: name(serde_json::to_value(s.kind)),
                hosts: s.hosts.clone(),
            })
            .collect(),
        warnings: plan.warnings.clone(),
        facts: serde_json::to_value(facts).ok(),
    }
}

fn line(out: &mut String, text: String) {
    out.push_str(&text);
    out.push('\n');
}

fn render_step(out: &mut String, marked: &MarkedStep, step: &Step, verbose: u8) {
    let batch = marked
        .batch
        .map_or_else(String::new, |b| format!(" (batch {b})"));
    line(
        out,
        format!(
            "  {:>2}. {}{batch}: {}",
            marked.number, marked.kind, marked.action
        ),
    );
    // Hosts with the same mark share a line; the reasons of a block are the failed checks'
    // names here, their details are under `findings`.
    let mut marks: Vec<(String, Vec<&str>)> = Vec::new();
    for hm in &marked.hosts {
        let text = match &hm.mark {
            Mark::WillDo => "will do".to_owned(),
            Mark::AlreadyDone { reason } => format!("already done: {reason}"),
            Mark::Blocked { checks, .. } => format!("BLOCKED ({})", checks.join(", ")),
        };
        match marks.iter_mut().find(|(t, _)| *t == text) {
            Some((_, hosts)) => hosts.push(&hm.host),
            None => marks.push((text, vec![&hm.host])),
        }
    }
    // By default a step whose hosts all will do it, or are all blocked (the hosts and findings
    // say why), is its one line.
    let all = |f: fn(&Mark) -> bool| marked.hosts.iter().all(|h| f(&h.mark));
    let uniform = all(|m| matches!(m, Mark::WillDo)) || all(|m| matches!(m, Mark::Blocked { .. }));
    if verbose > 0 || !uniform {
        for (text, hosts) in marks {
            line(out, format!("      {}: {text}", hosts.join(", ")));
        }
    }
    if verbose > 0 {
        for (hosts, commands) in step.command_groups() {
            line(out, format!("      on {}:", hosts.join(", ")));
            for c in commands {
                line(out, format!("        $ {c}"));
            }
        }
    }
}

/// Each step's mark per host: blocked by the host's own failed findings or by fleet-wide ones,
/// already done when the release is staged there, else will do.
fn mark_steps(
    plan: &Plan,
    facts: &BTreeMap<String, HostFacts>,
    preflight: &Preflight,
) -> Vec<MarkedStep> {
    let fleet: Vec<&Finding> = preflight.failures().filter(|f| f.host.is_none()).collect();
    plan.steps
        .iter()
        .map(|step| MarkedStep {
            number: step.number,
            kind: step.kind,
            batch: step.batch,
            action: step.action.clone(),
            hosts: step
                .hosts
                .iter()
                .map(|host| {
                    let failed: Vec<&Finding> = fleet
                        .iter()
                        .copied()
                        .chain(preflight.for_host(host).filter(|f| !f.ok))
                        .collect();
                    let staged = facts
                        .get(host)
                        .is_some_and(|f| f.staged.contains(&plan.target));
                    let mark = if !failed.is_empty() {
                        let mut checks: Vec<String> = Vec::new();
                        for f in &failed {
                            if !checks.iter().any(|c| c == f.check) {
                                checks.push(f.check.to_owned());
                            }
                        }
                        Mark::Blocked {
                            checks,
                            reasons: failed.iter().map(|f| f.detail.clone()).collect(),
                        }
                    } else if step.kind == StepKind::Stage && staged {
                        Mark::AlreadyDone {
                            reason: format!(
                                "`{}` is already staged (verified again, not transferred)",
                                plan.target
                            ),
                        }
                    } else {
                        Mark::WillDo
                    };
                    HostMark {
                        host: host.clone(),
                        mark,
                    }
                })
                .collect(),
        })
        .collect()
}
