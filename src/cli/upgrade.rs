//! `fleetup upgrade`: the flags, the journal's header and the run's sinks, then the library's
//! [`operation::upgrade`] (connect, facts, plan, preflight, gates, engine), then the summary
//! and the exit code. Every event goes to the display (stderr), to JSON Lines on stdout with
//! `--format json`, and to the run journal. `--dry-run` is `check`.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use fleetup::events::{Event, StepState};
use fleetup::inventory::ResolvedHost;
use fleetup::journal::{self, Header, JournalFile};
use fleetup::operation::{self, Finished, RunSettings, Scope, UpgradeRequest};
use fleetup::plan::Plan;
use fleetup::preflight::{self, AuditedPlan, ExpectedPlan};
use fleetup::runner::{self, FailBudget, FailurePolicy, PriorRun, RunReport, kind_name};
use fleetup::{Failure, exit_code};
use sha2::{Digest, Sha256};

use super::check::{PlanArgs, local_host, local_user};
use super::connect::{self, ConnectFlags};
use super::session::{self, RunFlags, RunSession};
use super::{Format, Global, inventory};

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Refuse to start unless the fleet still gives this plan id (printed by `fleetup check`).
    #[arg(long = "plan", value_name = "ID")]
    pub plan_id: Option<String>,
    /// Do not ask before the first change. On a terminal, an upgrade without `--plan` shows
    /// the plan's summary and asks; off a terminal (scripts, CI) it never asks.
    #[arg(short = 'y', long)]
    pub yes: bool,
    /// Break a stale fleet lock (a crashed run's), after showing its holder; a live fleetup
    /// on this machine keeps its lock.
    #[arg(long)]
    pub break_lock: bool,
    /// Where run journals go. Default: `.fleetup/runs/` beside the inventory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Audit only, change nothing: the same as `fleetup check`.
    #[arg(long)]
    pub dry_run: bool,
    /// Continue a failed, cancelled or killed run (default: the latest unfinished upgrade of
    /// this inventory): same run id and journal, its locks taken over, every step probed again.
    /// The target, binary and plan options come from its journal.
    #[arg(long, value_name = "RUN_ID", num_args = 0..=1, default_missing_value = "latest", conflicts_with = "dry_run")]
    pub resume: Option<String>,
    /// How long a node may take to stop (`--stop`).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub stop_timeout: Duration,
    /// How long a started node may take until `/_info` reports the target.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub health_timeout: Duration,
    /// Hosts that may fail while the run goes on without them (each undone alone, where safe),
    /// a count or a share (`25%`, rounded down), in each batch and over the whole run: a host
    /// alone on its storage, a failed start or health gate after its storage was migrated, and
    /// in a rolling run any step of its batch but the backup and the migration. 0: the first
    /// failure stops the run.
    #[arg(long, value_name = "N|N%", default_value = "0")]
    pub max_fail: FailBudget,
    /// Once the canary batch is healthy, wait for Enter before the other batches (on a
    /// terminal); off a terminal, stop there with exit 0, the run resumable (`--resume`).
    #[arg(long)]
    pub pause_after_canary: bool,
    #[command(flatten)]
    pub connect: ConnectFlags,
}

/// What `--plan GIVEN` names: the audit in `state_dir` whose plan id starts with it (the
/// newest, when several audits gave that id). Refused at once when it is not a plan id, when
/// it names several different plans, or when the audit was made for another target or other
/// plan options than this upgrade's.
fn expected_plan(
    state_dir: &std::path::Path,
    given: &str,
    target: &str,
    options: &[String],
) -> anyhow::Result<ExpectedPlan> {
    let prefix = preflight::parse_plan_prefix(given)?;
    let mut audits: Vec<(JournalFile, String, Option<serde_json::Value>)> = Vec::new();
    // Audits only: an upgrade's own journal holds its plan too, with the upgrade's options.
    for j in journal::list_journals(state_dir)?
        .into_iter()
        .filter(|j| j.header.command == "check")
    {
        let ready = j
            .events
            .iter()
            .rev()
            .find(|e| e["event"] == "plan_ready")
            .cloned();
        if let Some(e) = ready
            && let Some(id) = e["plan_id"].as_str()
            && id.starts_with(&prefix)
        {
            audits.push((j, id.to_string(), e.get("facts").cloned()));
        }
    }
    let mut ids: Vec<&str> = audits.iter().map(|(_, id, _)| id.as_str()).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.len() > 1 {
        return Err(Failure::usage(format!(
            "`{given}` is the start of {} plan ids: {}",
            ids.len(),
            ids.iter().map(|i| &i[..16]).collect::<Vec<_>>().join(", ")
        ))
        .hint("give more digits of the plan id `fleetup check` printed")
        .into());
    }
    let audited = audits.pop().map(|(j, plan_id, facts)| {
        (
            j.header.target.clone(),
            j.header.options.clone(),
            AuditedPlan {
                run_id: j.header.run_id,
                plan_id,
                facts,
            },
        )
    });
    if let Some((audited_target, audited_options, a)) = &audited
        && (audited_target != target || audited_options != options)
    {
        let show = |t: &str, o: &[String]| {
            std::iter::once(format!("--to {t}"))
                .chain(o.iter().cloned())
                .collect::<Vec<_>>()
                .join(" ")
        };
        return Err(Failure::usage(format!(
            "plan id `{given}` was audited by `{}` for `{}`; this upgrade asks for `{}`",
            a.run_id,
            show(audited_target, audited_options),
            show(target, options)
        ))
        .hint("run `fleetup upgrade` with the options of the audit, or audit these options with `fleetup check` first")
        .into());
    }
    Ok(ExpectedPlan {
        given: prefix,
        audited: audited.map(|(_, _, a)| a),
    })
}

/// The plan's summary on stderr, then `proceed? [y/N]`; anything but `y`/`yes` refuses.
fn confirm_plan(plan: &Plan) -> anyhow::Result<()> {
    let mut text = String::new();
    for l in fleetup::plan::header_lines(plan, "plan") {
        text.push_str(&format!("{l}\n"));
    }
    for s in &plan.steps {
        text.push_str(&format!("  {:>2}. {}: {}\n", s.number, s.kind, s.action));
    }
    err!("{text}every check passed; nothing has changed yet. proceed? [y/N] ");
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    match line.trim() {
        "y" | "Y" | "yes" => Ok(()),
        _ => Err(Failure::usage("not confirmed; nothing was changed")
            .hint("review it with `fleetup check`, then run `fleetup upgrade ... --plan ID`, or pass `--yes`")
            .into()),
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(global: &Global, args: &UpgradeArgs) -> anyhow::Result<i32> {
    if args.dry_run {
        return match args.state_dir.as_deref() {
            None => super::check::dry_run(global, &args.plan, &args.connect),
            dir => super::check::dry_run_in(global, &args.plan, &args.connect, dir),
        };
    }
    let inventory = inventory::load_inventory(global)?;
    // Every host of the inventory is connected: the selected ones and, for the plan's
    // left-out check, the others.
    connect::ensure_open_files(inventory.hosts().len())?;
    let hosts: Vec<ResolvedHost> = inventory::select_hosts(global, &inventory)?
        .into_iter()
        .cloned()
        .collect();
    let inventory_path = inventory::inventory_path(global);
    let inventory_bytes = std::fs::read(&inventory_path)
        .with_context(|| format!("cannot read `{}`", inventory_path.display()))?;
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| journal::default_state_dir(&inventory_path));
    let resumed = match &args.resume {
        Some(which) => Some(session::find_resumable(
            &state_dir,
            &inventory_path,
            which,
            "upgrade",
        )?),
        None => None,
    };
    let plan_args = match &resumed {
        Some(j) => j
            .header
            .plan
            .as_ref()
            .and_then(PlanArgs::from_journal_plan)
            .ok_or_else(|| {
                Failure::usage(format!(
                    "the journal of run `{}` holds no plan to resume",
                    j.header.run_id
                ))
                .hint("it stopped before its plan was built: run `fleetup upgrade` again")
            })?,
        None => args.plan.clone(),
    };
    let inputs = plan_args.resolve(global, &inventory)?;
    let expected = match &args.plan_id {
        Some(given) => Some(expected_plan(
            &state_dir,
            given,
            &inputs.target.to_string(),
            &plan_args.recorded_options(),
        )?),
        None => None,
    };
    let now = SystemTime::now();
    let run_id = match &resumed {
        Some(j) => j.header.run_id.clone(),
        None => journal::new_run_id(now),
    };
    let (user, local_host) = (local_user(), local_host());
    let header = Header {
        format_version: journal::FORMAT_VERSION,
        run_id: run_id.clone(),
        command: "upgrade".into(),
        fleetup_version: env!("CARGO_PKG_VERSION").into(),
        inventory: inventory_path.display().to_string(),
        inventory_sha256: hex::encode(Sha256::digest(&inventory_bytes)),
        target: inputs.target.to_string(),
        started_at: humantime::format_rfc3339_seconds(now).to_string(),
        user: user.clone(),
        local_host: local_host.clone(),
        no_backup: plan_args.no_backup,
        options: options(args, &plan_args),
        plan: None,
        plan_id: None,
    };
    // The header holds the plan: the journal's file is written once the plan is built.
    let mut session = RunSession::start(
        global,
        header,
        hosts.iter().map(|h| h.name.clone()).collect(),
        state_dir,
        resumed.is_some(),
    );
    // A plan nobody reviewed (no `--plan`, not a resumed one) is shown and confirmed on a
    // terminal before it changes anything.
    let interactive = std::io::stdin().is_terminal() && std::io::stderr().is_terminal();
    if interactive && !args.yes && args.plan_id.is_none() && resumed.is_none() {
        session = session.confirming(Box::new(confirm_plan));
    }
    if let Some(j) = &resumed {
        session.sink.emit(&Event::Notice {
            host: None,
            message: format!(
                "resuming run `{run_id}` (started {} by {}@{}): every step is probed again",
                j.header.started_at, j.header.user, j.header.local_host
            ),
        });
    }
    let connect = args.connect.options();
    let scope = Scope {
        inventory: &inventory,
        hosts: &hosts,
        connect: &connect,
    };
    let req = UpgradeRequest {
        inputs: &inputs,
        expected_plan: expected.as_ref(),
        run: RunSettings {
            failure: FailurePolicy {
                max_failed: args.max_fail,
            },
            prior: resumed
                .as_ref()
                .map(|j| prior_run(j, &hosts))
                .unwrap_or_default(),
            pause: args.pause_after_canary.then(|| pause_prompt(&run_id)),
            ..session.settings(
                RunFlags {
                    break_lock: args.break_lock,
                    stop_timeout: args.stop_timeout,
                    health_timeout: args.health_timeout,
                },
                &args.connect,
            )
        },
    };
    let result = session
        .block_on(operation::upgrade(
            &scope,
            &req,
            session.sink.clone(),
            &session,
        ))
        .and_then(|finished| conclude(global, &finished, &run_id, &session.clock));
    session.finish(global, &result);
    result.map(|(_, code)| code)
}

/// What the operation's end means for people (printed) and for the exit code.
fn conclude(
    global: &Global,
    finished: &Finished,
    run_id: &str,
    clock: &super::display::HostClock,
) -> anyhow::Result<(String, i32)> {
    match finished {
        Finished::NothingToDo { plan, .. } => {
            if global.format == Format::Human {
                outln!(
                    "every selected node already serves `{}`: nothing to do",
                    plan.target
                );
            }
            match finished.leftover_failure() {
                Some(f) => Err(f.into()),
                None => Ok(("nothing-to-do".into(), exit_code::SUCCESS)),
            }
        }
        Finished::Ran { plan, report } => {
            if global.format == Format::Human {
                out!("{}", render_summary(plan, report, run_id, clock));
            }
            session::conclude(report, "upgrade", run_id)
        }
    }
}

/// `--pause-after-canary`: on a terminal, Enter goes on; off one, the run stops there.
fn pause_prompt(run_id: &str) -> runner::Pause {
    let resume = format!("fleetup upgrade --resume {run_id}");
    runner::Pause(std::sync::Arc::new(move |canary: &[String]| {
        let names = canary.join(", ");
        if !std::io::stdin().is_terminal() {
            errln!(
                "the canary batch ({names}) is healthy; paused (`--pause-after-canary`, no terminal to ask): continue with `{resume}`"
            );
            return false;
        }
        err!(
            "the canary batch ({names}) is healthy. Press Enter to go on with the other batches, Ctrl-C to stop here (`{resume}` continues): "
        );
        let mut line = String::new();
        std::io::stdin().read_line(&mut line).is_ok_and(|n| n > 0)
    }))
}

/// What the interrupted run finished that the hosts cannot tell by themselves: its backups.
fn prior_run(j: &journal::JournalFile, hosts: &[ResolvedHost]) -> PriorRun {
    let mut prior = PriorRun::default();
    for h in hosts {
        if matches!(j.last_state("backup", &h.name), Some(StepState::Done)) {
            prior
                .backups
                .insert(h.name.clone(), runner::backup_dir(h, &j.header.run_id));
        }
    }
    prior
}

/// The options recorded in the journal's header: the plan's, and those of the run itself.
fn options(args: &UpgradeArgs, plan: &PlanArgs) -> Vec<String> {
    let mut o = plan.recorded_options();
    if args.resume.is_some() {
        o.push("--resume".into());
    }
    if args.break_lock {
        o.push("--break-lock".into());
    }
    if let Some(id) = &args.plan_id {
        o.push(format!("--plan {id}"));
    }
    if !args.max_fail.is_zero() {
        o.push(format!("--max-fail {}", args.max_fail));
    }
    o
}

/// The end-of-run report for people: per node old → new and state, backups, ledgers, timings.
fn render_summary(
    plan: &Plan,
    report: &RunReport,
    run_id: &str,
    clock: &super::display::HostClock,
) -> String {
    let mut out = format!(
        "\nupgrade to {}: {} (run {run_id})\n",
        plan.target,
        report.outcome.as_str()
    );
    // Failures first: they are what the operator acts on.
    let mut hosts: Vec<&fleetup::events::HostSummary> = report.hosts.iter().collect();
    hosts.sort_by_key(|h| !h.state.starts_with("failed"));
    let mut rows = vec![["HOST", "VERSION", "RESULT", "TIME"].map(String::from)];
    for h in &hosts {
        let from = h.from.clone().unwrap_or_else(|| "-".into());
        let to = h.to.clone().unwrap_or_else(|| "-".into());
        rows.push([
            h.host.clone(),
            if from == to {
                from
            } else {
                format!("{from} → {to}")
            },
            h.state.clone(),
            clock
                .elapsed(&h.host)
                .map_or("-".into(), |d| format!("{:.1}s", d.as_secs_f64())),
        ]);
    }
    out.push_str(&super::table::render(&rows));
    let failed: Vec<&&fleetup::events::HostSummary> = hosts
        .iter()
        .filter(|h| h.state.starts_with("failed"))
        .collect();
    if !failed.is_empty() {
        out.push_str(&format!("{} failed:\n", failed.len()));
        for h in failed {
            out.push_str(&format!("  - {}: {}\n", h.host, h.state));
        }
    }
    let backups: Vec<_> = report
        .changes
        .artefacts
        .iter()
        .filter(|a| a.kind == "backup")
        .collect();
    if !backups.is_empty() {
        out.push_str("backup:\n");
        for a in backups {
            out.push_str(&format!(
                "  {}: {} ({} bytes, sha256 {})\n",
                a.host,
                a.path,
                a.bytes.map_or("?".into(), |b| b.to_string()),
                a.sha256.as_deref().unwrap_or("?")
            ));
        }
    } else if !plan.backup {
        out.push_str("backup: none (`--no-backup`)\n");
    }
    if !report.changes.ledgers.is_empty() {
        out.push_str("ledgers:\n");
        for (host, ledger, outcome) in &report.changes.ledgers {
            out.push_str(&format!("  {host}: `{ledger}` {outcome}\n"));
        }
    }
    for h in &report.hosts {
        let previous = report.changes.switched.iter().find(|(n, _)| *n == h.host);
        if let Some((host, prev)) = previous.filter(|(_, p)| !p.is_empty()) {
            out.push_str(&format!("rollback target on {host}: {prev}\n"));
        }
    }
    if !report.timings.is_empty() {
        let t: Vec<String> = report
            .timings
            .iter()
            .map(|(n, k, d)| {
                format!(
                    "{n}.{} {}",
                    kind_name(*k),
                    humantime::format_duration(Duration::from_millis(d.as_millis() as u64))
                )
            })
            .collect();
        out.push_str(&format!("timings: {}\n", t.join(", ")));
    }
    if let Some(e) = &report.error
        && let Some(stderr) = &e.stderr
    {
        out.push_str(&format!("remote stderr on {}:\n", e.host));
        for l in stderr.lines() {
            out.push_str(&format!("  | {l}\n"));
        }
    }
    out
}
