//! The plan as text, for the dry run and `fleetup check`: a header, the numbered steps (hosts,
//! action, why, checks, commands), each host's fate, then blockers with hints and warnings.

use super::{HostAction, Plan, Step};

/// The first lines of the plan's text (`{label}: upgrade to ...`, the migrator, the start
/// order), shared by the plan and the `check` audit.
pub fn header_lines(plan: &Plan, label: &str) -> Vec<String> {
    let mode = match plan.mode {
        super::Mode::SingleNode => "single-node",
        super::Mode::MultiNode => "multi-node",
    };
    let mut lines = vec![format!(
        "{label}: upgrade to {}, strategy {} (requested {}), {mode}, {} of {} hosts change",
        plan.target,
        plan.strategy,
        plan.strategy_requested,
        plan.touched_hosts().len(),
        plan.hosts.len()
    )];
    if !plan.hops.is_empty() {
        let hops: Vec<String> = plan
            .hops
            .iter()
            .map(|h| format!("{} ({}, {} steps)", h.target, h.strategy, h.steps.len()))
            .collect();
        lines.push(format!(
            "hops: {}, one after the other, each health-gated on every node before the next",
            hops.join(" → ")
        ));
    }
    if let Some(m) = &plan.migrator {
        lines.push(format!("migrator: {m}"));
    }
    // Several Postgres storages: which node migrates which (SQLite nodes each migrate their own).
    let postgres: Vec<&super::PlanStorage> = plan
        .storages
        .iter()
        .filter(|s| s.driver == Some(crate::facts::StorageDriver::Postgres))
        .collect();
    if postgres.len() > 1 {
        for s in postgres {
            let id =
                s.id.as_ref()
                    .map_or_else(|| "an unknown storage".to_string(), |id| id.to_string());
            lines.push(format!(
                "storage: {id}, migrated by {} (nodes: {})",
                s.migrator.as_deref().unwrap_or("none"),
                s.hosts.join(", ")
            ));
        }
    }
    if !plan.batches.is_empty() {
        let batches: Vec<String> = plan
            .batches
            .iter()
            .map(|b| format!("[{}]", b.join(", ")))
            .collect();
        lines.push(format!("start order: {}", batches.join(" then ")));
    }
    lines
}

/// Render `plan` for a human. Stable, plain text (no colours, no terminal width).
pub fn render_text(plan: &Plan) -> String {
    let mut out = Lines::default();
    for l in header_lines(plan, "plan") {
        out.line(l);
    }

    if !plan.steps.is_empty() {
        out.blank();
        out.line("steps:".to_string());
        for step in &plan.steps {
            render_step(&mut out, step);
        }
    }

    out.blank();
    out.line("hosts:".to_string());
    let width = plan.hosts.iter().map(|h| h.name.len()).max().unwrap_or(0);
    for h in &plan.hosts {
        let current = h
            .current
            .as_ref()
            .map_or_else(|| "unknown".to_string(), |c| c.to_string());
        let version = match h.action {
            HostAction::AlreadyAtTarget | HostAction::Decommission => current,
            HostAction::Upgrade | HostAction::Deploy | HostAction::RollBack => {
                format!("{current} → {}", plan.target)
            }
        };
        let mut notes = vec![h.action.as_str().to_string()];
        if h.migrator {
            notes.push("migrator".to_string());
        }
        if let Some(old) = &h.replaces {
            notes.push(format!("replaces {old}"));
        }
        if let Some(b) = h.batch {
            notes.push(format!("batch {b}"));
        }
        if let Some(row) = h.verdict.as_ref().and_then(|v| v.row.as_ref()) {
            let zero = if row.zero_downtime {
                "zero-downtime"
            } else {
                "offline only"
            };
            notes.push(format!(
                "table row {}: {} from {}, {zero}",
                row.index, row.target, row.min_current
            ));
        }
        if !h.blocked.is_empty() {
            notes.push("BLOCKED".to_string());
        }
        out.line(format!(
            "  {:<width$}  {version:<16}  {}",
            h.name,
            notes.join(", ")
        ));
    }

    if !plan.blockers.is_empty() {
        out.blank();
        out.line(format!("blocked ({}):", plan.blockers.len()));
        for b in &plan.blockers {
            out.line(format!("  - {}", b.reason));
            if let Some(hint) = &b.hint {
                out.line(format!("    hint: {hint}"));
            }
        }
    }
    if !plan.warnings.is_empty() {
        out.blank();
        out.line("warnings:".to_string());
        for w in &plan.warnings {
            out.line(format!("  - {w}"));
        }
    }

    out.blank();
    out.line(if plan.is_blocked() {
        format!(
            "result: blocked by {} finding(s); nothing would be changed",
            plan.blockers.len()
        )
    } else if plan.nothing_to_do() {
        format!(
            "result: nothing to do, every selected node already runs {}",
            plan.target
        )
    } else {
        format!("result: ready, {} steps", plan.steps.len())
    });
    out.0
}

fn render_step(out: &mut Lines, step: &Step) {
    let batch = step
        .batch
        .map_or_else(String::new, |b| format!(" (batch {b})"));
    out.line(format!(
        "  {:>2}. {}{batch} on {}",
        step.number,
        step.kind,
        step.hosts.join(", ")
    ));
    out.line(format!("      {}", step.action));
    out.line(format!("      why: {}", step.why));
    for check in &step.checks {
        out.line(format!("      check: {check}"));
    }
    for (hosts, commands) in step.command_groups() {
        out.line(format!("      on {}:", hosts.join(", ")));
        for c in commands {
            out.line(format!("        $ {c}"));
        }
    }
}

impl Step {
    /// The step's command lines grouped by identical lines: hosts with the same settings run the
    /// same lines, which a dry run prints once.
    pub fn command_groups(&self) -> Vec<(Vec<&str>, &[String])> {
        let mut groups: Vec<(Vec<&str>, &[String])> = Vec::new();
        for hc in self.commands.iter().filter(|hc| !hc.commands.is_empty()) {
            match groups
                .iter_mut()
                .find(|(_, c)| *c == hc.commands.as_slice())
            {
                Some((hosts, _)) => hosts.push(&hc.host),
                None => groups.push((vec![&hc.host], &hc.commands)),
            }
        }
        groups
    }
}

#[derive(Default)]
struct Lines(String);

impl Lines {
    fn line(&mut self, text: String) {
        self.0.push_str(&text);
        self.0.push('\n');
    }

    fn blank(&mut self) {
        self.0.push('\n');
    }
}
