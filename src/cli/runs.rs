//! `fleetup runs list|show`: the run journals of the state dir, as a table or one run's steps,
//! for people or as JSON.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use fleetup::journal::{self, JournalFile, RunMatch};
use fleetup::{Failure, exit_code};
use serde_json::{Value, json};

use fleetup::events::Event;

use super::{Format, Global, display, inventory};

#[derive(Debug, Subcommand)]
pub enum RunsCommand {
    /// Every recorded run: id, command, target, outcome, start time, duration.
    List {
        /// Only runs of this command (`upgrade`, `check`, `rollback`).
        #[arg(long, value_name = "COMMAND")]
        command: Option<String>,
        /// Only runs that did not succeed: failed, blocked, refused, cancelled or interrupted.
        #[arg(long)]
        failed: bool,
        #[command(flatten)]
        args: RunsArgs,
    },
    /// One run's header and every step, from its journal.
    Show {
        /// The run: `last`, its id, or the start of exactly one id (`fleetup runs list` shows them).
        run_id: String,
        #[command(flatten)]
        args: RunsArgs,
    },
}

#[derive(Debug, Args)]
pub struct RunsArgs {
    /// Where run journals are. Default: `.fleetup/runs/` beside the inventory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

fn state_dir(global: &Global, args: &RunsArgs) -> PathBuf {
    args.state_dir
        .clone()
        .unwrap_or_else(|| journal::default_state_dir(&inventory::inventory_path(global)))
}

/// Outcomes that are not a failure: `--failed` leaves them out.
const NOT_FAILED: &[&str] = &["succeeded", "ready", "nothing-to-do", "paused"];

pub fn run(global: &Global, cmd: &RunsCommand) -> anyhow::Result<i32> {
    match cmd {
        RunsCommand::List {
            command,
            failed,
            args,
        } => {
            let dir = state_dir(global, args);
            let mut runs = journal::list_journals(&dir)?;
            runs.retain(|j| {
                command.as_ref().is_none_or(|c| &j.header.command == c)
                    && (!failed || !NOT_FAILED.contains(&j.outcome().as_str()))
            });
            match global.format {
                Format::Json => {
                    for j in &runs {
                        super::out::json(&summary_json(j), false)?;
                    }
                }
                Format::Human if runs.is_empty() => {
                    out!("{}", no_run_text(global, args, &dir));
                }
                Format::Human => out!("{}", render_list(&runs)),
            }
        }
        RunsCommand::Show { run_id, args } => {
            let dir = state_dir(global, args);
            let id = resolve_run(&dir, run_id)?;
            let j = journal::read_journal(&journal::journal_path(&dir, &id))?;
            match global.format {
                Format::Json => {
                    let mut v = summary_json(&j);
                    v["header"] = serde_json::to_value(&j.header)?;
                    v["events"] = Value::Array(j.events.clone());
                    super::out::json(&v, false)?;
                }
                Format::Human => out!("{}", render_show(&j)),
            }
        }
    }
    Ok(exit_code::SUCCESS)
}

/// The run id `query` (`last`, an id or a unique prefix) names in `dir`, or a usage error that
/// says what is there.
pub fn resolve_run(dir: &std::path::Path, query: &str) -> anyhow::Result<String> {
    let shape_ok = query == "last"
        || (!query.is_empty()
            && query
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-.".contains(&b)));
    if !shape_ok {
        return Err(Failure::usage(format!("`{query}` is not a run id"))
            .hint("name a run by `last`, its id, or the start of its id; `fleetup runs list` shows them")
            .into());
    }
    match journal::match_run(dir, query)? {
        RunMatch::Found(id) => Ok(id),
        RunMatch::NoMatch => Err(Failure::usage(format!(
            "no run {} in `{}`",
            if query == "last" {
                "recorded".to_string()
            } else {
                format!("`{query}`")
            },
            dir.display()
        ))
        .hint("`fleetup runs list` shows the runs; `-i INVENTORY` or `--state-dir DIR` names another state dir")
        .into()),
        RunMatch::Ambiguous(ids) => Err(Failure::usage(format!(
            "`{query}` is the start of {} run ids: {}",
            ids.len(),
            ids.join(", ")
        ))
        .hint("give more of the id")
        .into()),
    }
}

/// What `runs list` says when there is nothing to list: where it looked, and why it may be
/// the wrong place.
fn no_run_text(global: &Global, args: &RunsArgs, dir: &std::path::Path) -> String {
    let mut out = format!("no run recorded in {}\n", dir.display());
    let inv = inventory::inventory_path(global);
    if args.state_dir.is_none() && !inv.is_file() {
        out.push_str(&format!(
            "hint: there is no inventory `{}` here; run it with `-i INVENTORY` (journals live beside the inventory) or `--state-dir DIR`\n",
            inv.display()
        ));
    }
    out
}

fn summary_json(j: &JournalFile) -> Value {
    json!({
        "run_id": j.header.run_id,
        "command": j.header.command,
        "target": j.header.target,
        "outcome": j.outcome(),
        "started_at": j.header.started_at,
        "duration_ms": j.duration_ms(),
        "user": j.header.user,
        "local_host": j.header.local_host,
        "path": j.path,
        "in_progress": in_progress(j)
            .iter()
            .map(|(id, host, command)| json!({"id": id, "host": host, "command": command}))
            .collect::<Vec<_>>(),
    })
}

/// `(step id, host, last command)` of each step that started and never finished: the run
/// stopped there (killed), so the host may have changed. Empty for a run that finished.
fn in_progress(j: &JournalFile) -> Vec<(String, String, Option<String>)> {
    if j.finished().is_some() {
        return Vec::new();
    }
    j.in_progress()
        .into_iter()
        .map(|r| {
            let command = j
                .events
                .iter()
                .rev()
                .filter(|e| e["event"] == "step_started" && e["host"] == r.host.as_str())
                .find(|e| e["kind"] == r.kind.as_str())
                .and_then(|e| e["command"].as_str())
                .map(str::to_string);
            (r.id.clone(), r.host.clone(), command)
        })
        .collect()
}

/// The outcome column: `interrupted` says where.
fn outcome_text(j: &JournalFile) -> String {
    let open = in_progress(j);
    if open.is_empty() {
        return j.outcome();
    }
    let at: Vec<String> = open
        .iter()
        .map(|(id, host, _)| format!("{id} on {host}"))
        .collect();
    format!("{} (in progress: {})", j.outcome(), at.join(", "))
}

fn duration(ms: Option<u64>) -> String {
    ms.map_or("-".into(), |ms| {
        humantime::format_duration(Duration::from_secs(ms.div_ceil(1000))).to_string()
    })
}

fn render_list(runs: &[JournalFile]) -> String {
    let mut rows =
        vec![["RUN", "COMMAND", "TARGET", "OUTCOME", "STARTED", "DURATION"].map(String::from)];
    for j in runs {
        rows.push([
            j.header.run_id.clone(),
            j.header.command.clone(),
            j.header.target.clone(),
            outcome_text(j),
            j.header.started_at.clone(),
            duration(j.duration_ms()),
        ]);
    }
    super::table::render(&rows)
}

fn render_show(j: &JournalFile) -> String {
    let h = &j.header;
    let mut out = format!(
        "run {}: {} to {}, {}\nstarted {} by {}@{} (fleetup {}), took {}\ninventory {} (sha256 {})\n",
        h.run_id,
        h.command,
        h.target,
        j.outcome(),
        h.started_at,
        h.user,
        h.local_host,
        h.fleetup_version,
        duration(j.duration_ms()),
        h.inventory,
        h.inventory_sha256,
    );
    if !h.options.is_empty() {
        out.push_str(&format!("options: {}\n", h.options.join(" ")));
    }
    if h.no_backup {
        out.push_str("no backup was taken (`--no-backup`)\n");
    }
    // The events render through the live display's own lines (`cli::display::line`); the
    // summary and artefacts, which a live run prints in its report, are added here.
    let total = h
        .plan
        .as_ref()
        .and_then(|p| p["steps"].as_array().map(Vec::len))
        .unwrap_or(0);
    for e in &j.events {
        let s = |k: &str| e[k].as_str().unwrap_or("");
        match serde_json::from_value::<Event>(e.clone()) {
            Ok(Event::Summary { hosts, .. }) => {
                for hs in hosts {
                    out.push_str(&format!(
                        "{}: {} -> {}: {}\n",
                        hs.host,
                        hs.from.as_deref().unwrap_or("-"),
                        hs.to.as_deref().unwrap_or("-"),
                        hs.state
                    ));
                }
            }
            Ok(ev) => {
                if let Some(l) = display::line(&ev, total, 1) {
                    out.push_str(&l);
                    out.push('\n');
                }
                if let Event::StepFinished { artefacts, .. } = &ev {
                    for a in artefacts {
                        out.push_str(&format!(
                            "    {}: {}{}\n",
                            a.kind,
                            a.path,
                            a.sha256
                                .as_deref()
                                .map(|h| format!(" (sha256 {h})"))
                                .unwrap_or_default()
                        ));
                    }
                }
            }
            // A line this fleetup does not know (an older journal's, or an unreadable one).
            Err(_) if s("event") == "unreadable_line" => {
                out.push_str(&format!("(line {} could not be read)\n", e["line"]));
            }
            Err(_) => {}
        }
    }
    if !j.steps.is_empty() {
        out.push_str("step states:\n");
        for r in &j.steps {
            out.push_str(&format!(
                "  {} {} {}: {}{}\n",
                r.ts,
                r.id,
                r.host,
                r.state.as_str(),
                r.message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ));
        }
    }
    for (id, host, command) in in_progress(j) {
        out.push_str(&format!(
            "IN PROGRESS when the run stopped: `{id}` on {host}: may have changed the host{}\n",
            command
                .map(|c| format!("; last command: {c}"))
                .unwrap_or_default()
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetup::events::{Event, EventSink, StepStatus};
    use fleetup::journal::{Header, Journal};

    fn journal(dir: &std::path::Path, id: &str, finished: bool) -> PathBuf {
        let j = Journal::create(
            dir,
            &Header {
                format_version: journal::FORMAT_VERSION,
                run_id: id.into(),
                command: "upgrade".into(),
                fleetup_version: "0.1.0".into(),
                inventory: "inv.toml".into(),
                inventory_sha256: "00".repeat(32),
                target: "1.8.2".into(),
                started_at: "2026-01-25T17:45:02Z".into(),
                user: "ops".into(),
                local_host: "laptop".into(),
                no_backup: true,
                options: vec!["--stop".into()],
                plan: None,
                plan_id: None,
            },
        )
        .unwrap();
        j.emit(&Event::StepFinished {
            step: 5,
            kind: "backup".into(),
            host: "node-1".into(),
            status: StepStatus::Failed,
            exit_status: Some("8".into()),
            duration_ms: 40,
            stderr_tail: Some("pg_dump: error".into()),
            message: Some("the Postgres backup failed: exit 8".into()),
            artefacts: vec![],
        });
        if finished {
            j.emit(&Event::RunFinished {
                run_id: id.into(),
                outcome: "failed".into(),
                exit_code: 1,
                duration_ms: 61_000,
            });
        }
        j.path().to_path_buf()
    }

    #[test]
    fn list_and_show_render_outcome_duration_steps_and_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let a = "20260125T174502Z-00000a";
        journal(dir.path(), a, true);
        journal(dir.path(), "20260125T184502Z-00000b", false);
        let runs = journal::list_journals(dir.path()).unwrap();
        let table = render_list(&runs);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3, "{table}");
        assert!(
            lines[1].starts_with(a) && lines[1].contains("failed") && lines[1].ends_with("1m 1s"),
            "{table}"
        );
        assert!(
            lines[2].contains("interrupted") && lines[2].ends_with('-'),
            "{table}"
        );

        let show = render_show(&runs[0]);
        assert!(show.contains("options: --stop"), "{show}");
        assert!(show.contains("no backup was taken"), "{show}");
        // The same line the live display printed.
        assert!(
            show.contains("[5] backup node-1: FAILED (0s): the Postgres backup failed: exit 8 [exit 8]\n    | pg_dump: error"),
            "{show}"
        );
        assert_eq!(summary_json(&runs[0])["outcome"], "failed");
    }

    #[test]
    fn a_step_started_and_never_finished_is_marked_in_progress_with_its_command() {
        let dir = tempfile::tempdir().unwrap();
        let id = "20260125T174502Z-00000c";
        let path = journal(dir.path(), id, false);
        let j = Journal::open_append(dir.path(), id).unwrap();
        let state = |state| Event::StepState {
            id: "migrate".into(),
            step: 7,
            kind: "migrate".into(),
            host: "node-1".into(),
            state,
            message: None,
        };
        j.emit(&state(fleetup::events::StepState::Started));
        j.emit(&Event::StepStarted {
            step: 7,
            kind: "migrate".into(),
            host: "node-1".into(),
            command: Some("exec numary storage upgrade default".into()),
        });
        let run = journal::read_journal(&path).unwrap();
        let list = render_list(std::slice::from_ref(&run));
        assert!(
            list.contains("interrupted (in progress: migrate on node-1)"),
            "{list}"
        );
        let show = render_show(&run);
        assert!(
            show.contains("IN PROGRESS when the run stopped: `migrate` on node-1: may have changed the host; last command: exec numary storage upgrade default"),
            "{show}"
        );
        assert_eq!(summary_json(&run)["in_progress"][0]["host"], "node-1");
        // Once done, it is no longer in progress.
        j.emit(&state(fleetup::events::StepState::Done));
        let run = journal::read_journal(&path).unwrap();
        assert!(!render_show(&run).contains("IN PROGRESS"));
    }
}
