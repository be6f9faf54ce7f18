//! `fleetup rollback [RUN_ID]`: go back from an upgrade run. Reads that run's journal, then the
//! library's [`operation::rollback`] connects the run's nodes, gathers facts and the storages'
//! migration state, builds the rollback plan and hands it to the same engine as `upgrade`,
//! journaled (`command: "rollback"`); `--resume` continues a rollback that did not finish.
//! `--restore-backup` loses the writes made since the backup: it asks on a TTY and needs `--yes`
//! elsewhere.

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use fleetup::events::{Event, StepState};
use fleetup::inventory::ResolvedHost;
use fleetup::journal::{self, Header, JournalFile};
use fleetup::operation::{self, Finished, RollbackRequest, RunSettings, Scope};
use fleetup::plan::{Plan, RunRecord};
use fleetup::policy::PolicyTable;
use fleetup::runner::PriorRun;
use fleetup::{Failure, exit_code};
use sha2::{Digest, Sha256};

use super::check::{local_host, local_user};
use super::connect::{self, ConnectFlags};
use super::session::{self, RunFlags, RunSession};
use super::{Format, Global, inventory};

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The upgrade run to roll back. Default: the latest `upgrade` run of this inventory.
    #[arg(value_name = "RUN_ID", conflicts_with = "resume")]
    pub run_id: Option<String>,
    /// Continue a failed, cancelled or killed rollback (default: the latest unfinished rollback
    /// of this inventory): same run id and journal, its locks taken over, every step probed
    /// again. What it rolls back and `--restore-backup` come from its journal.
    #[arg(long, value_name = "ROLLBACK_RUN_ID", num_args = 0..=1, default_missing_value = "latest")]
    pub resume: Option<String>,
    /// Stop every node on each storage the run backed up and restore that backup (writes made
    /// since it are lost), then switch back and start. Needed when the run migrated a storage.
    #[arg(long)]
    pub restore_backup: bool,
    /// Do not ask before `--restore-backup` (required when stdin is not a terminal).
    #[arg(long)]
    pub yes: bool,
    /// Break a stale fleet lock (a crashed run's), after showing its holder.
    #[arg(long)]
    pub break_lock: bool,
    /// Where run journals are. Default: `.fleetup/runs/` beside the inventory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long a node may take to stop.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub stop_timeout: Duration,
    /// How long a started node may take until `/_info` reports the old version.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub health_timeout: Duration,
    #[command(flatten)]
    pub connect: ConnectFlags,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| e.to_string())
}

pub fn run(global: &Global, args: &RollbackArgs) -> anyhow::Result<i32> {
    let inventory = inventory::load_inventory(global)?;
    // Every host of the inventory is connected: the selected ones and, for the plan's
    // left-out check, the others.
    connect::ensure_open_files(inventory.hosts().len())?;
    let inventory_path = inventory::inventory_path(global);
    let inventory_bytes = std::fs::read(&inventory_path)
        .with_context(|| format!("cannot read `{}`", inventory_path.display()))?;
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| journal::default_state_dir(&inventory_path));
    // `--resume`: the rollback run continued, and from its plan the upgrade it rolls back.
    let resumed = match &args.resume {
        Some(which) => Some(session::find_resumable(
            &state_dir,
            &inventory_path,
            which,
            "rollback",
        )?),
        None => None,
    };
    let (of_run, restore_backup) = match &resumed {
        Some(j) => resumed_spec(j)?,
        None => (args.run_id.clone(), args.restore_backup),
    };
    let upgrade = find_upgrade(&state_dir, &inventory_path, of_run.as_deref())?;
    let record = RunRecord::from_journal(&upgrade).map_err(Failure::usage)?;
    // The run's nodes, as the inventory resolves them now.
    let hosts: Vec<ResolvedHost> = inventory::select_hosts(global, &inventory)?
        .into_iter()
        .filter(|h| record.host(&h.name).is_some())
        .cloned()
        .collect();
    let policy = match &global.paths_file {
        Some(p) => PolicyTable::load(p)?,
        None => PolicyTable::builtin(),
    };
    let now = SystemTime::now();
    let header = match &resumed {
        // The resumed run's id and journal; its locks name this process and machine.
        Some(j) => Header {
            user: local_user(),
            local_host: local_host(),
            started_at: humantime::format_rfc3339_seconds(now).to_string(),
            ..j.header.clone()
        },
        None => {
            let mut options = vec![format!("rollback of {}", record.run_id)];
            if restore_backup {
                options.push("--restore-backup".into());
            }
            if args.break_lock {
                options.push("--break-lock".into());
            }
            Header {
                format_version: journal::FORMAT_VERSION,
                run_id: journal::new_run_id(now),
                command: "rollback".into(),
                fleetup_version: env!("CARGO_PKG_VERSION").into(),
                inventory: inventory_path.display().to_string(),
                inventory_sha256: hex::encode(Sha256::digest(&inventory_bytes)),
                target: record
                    .hosts
                    .iter()
                    .find_map(|h| h.from.as_ref())
                    .map(ToString::to_string)
                    .unwrap_or_default(),
                started_at: humantime::format_rfc3339_seconds(now).to_string(),
                user: local_user(),
                local_host: local_host(),
                no_backup: true,
                options,
                plan: None,
                plan_id: None,
            }
        }
    };
    let run_id = header.run_id.clone();
    let mut session = RunSession::start(
        global,
        header,
        hosts.iter().map(|h| h.name.clone()).collect(),
        state_dir,
        resumed.is_some(),
    );
    // Asked again on `--resume`: the run being resumed may have stopped at this very question.
    if restore_backup && !args.yes {
        let run = record.run_id.clone();
        let again = match &resumed {
            Some(j) => format!("fleetup rollback --resume {} --yes", j.header.run_id),
            None => format!("fleetup rollback {run} --restore-backup --yes"),
        };
        session = session.confirming(Box::new(move |plan| confirm(plan, &run, &again)));
    }
    if let Some(j) = &resumed {
        session.sink.emit(&Event::Notice {
            host: None,
            message: format!(
                "resuming run `{run_id}` (the rollback of `{}`, started {} by {}@{}): every step is probed again",
                record.run_id, j.header.started_at, j.header.user, j.header.local_host
            ),
        });
    }
    let connect = args.connect.options();
    let scope = Scope {
        inventory: &inventory,
        hosts: &hosts,
        connect: &connect,
    };
    let req = RollbackRequest {
        record: &record,
        restore_backup,
        policy: &policy,
        run: RunSettings {
            prior: resumed
                .as_ref()
                .map(|j| prior_run(j, &hosts))
                .unwrap_or_default(),
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
        .block_on(operation::rollback(
            &scope,
            &req,
            session.sink.clone(),
            &session,
        ))
        .and_then(|finished| conclude(global, &finished, &record.run_id, &run_id));
    session.finish(global, &result);
    result.map(|(_, code)| code)
}

/// What the rollback being resumed finished that the hosts cannot tell by themselves: its
/// restores (the nodes stayed stopped since).
fn prior_run(j: &JournalFile, hosts: &[ResolvedHost]) -> PriorRun {
    let mut prior = PriorRun::default();
    for h in hosts {
        if matches!(j.last_state("restore", &h.name), Some(StepState::Done)) {
            prior.restored.insert(h.name.clone());
        }
    }
    prior
}

/// The upgrade run and `--restore-backup` of the rollback being resumed, from its plan.
fn resumed_spec(j: &JournalFile) -> anyhow::Result<(Option<String>, bool)> {
    let spec = j
        .header
        .plan
        .as_ref()
        .map(|p| &p["rollback"])
        .filter(|r| r["of_run"].is_string())
        .ok_or_else(|| {
            Failure::usage(format!(
                "the journal of run `{}` holds no rollback plan to resume",
                j.header.run_id
            ))
            .hint("it stopped before its plan was built: run `fleetup rollback` again")
        })?;
    Ok((
        spec["of_run"].as_str().map(str::to_string),
        spec["restore_backup"].as_bool().unwrap_or(false),
    ))
}

/// What the operation's end means for people (printed) and for the exit code.
fn conclude(
    global: &Global,
    finished: &Finished,
    of_run: &str,
    run_id: &str,
) -> anyhow::Result<(String, i32)> {
    match finished {
        Finished::NothingToDo { plan, .. } => {
            if global.format == Format::Human {
                outln!(
                    "every node of run `{of_run}` already serves `{}`: nothing to do",
                    plan.target
                );
            }
            Ok(("nothing-to-do".into(), exit_code::SUCCESS))
        }
        Finished::Ran { plan, report } => {
            if global.format == Format::Human {
                let mut out = format!(
                    "\nrollback of run {of_run} to {}: {} (run {run_id})\n",
                    plan.target,
                    report.outcome.as_str(),
                );
                for h in &report.hosts {
                    out.push_str(&format!(
                        "  {}: {} → {}: {}\n",
                        h.host,
                        h.from.as_deref().unwrap_or("-"),
                        h.to.as_deref().unwrap_or("-"),
                        h.state
                    ));
                }
                out!("{out}");
            }
            session::conclude(report, "rollback", run_id)
        }
    }
}

/// The upgrade run to roll back: `which`, or the latest `upgrade` of this inventory.
fn find_upgrade(
    state_dir: &Path,
    inventory_path: &Path,
    which: Option<&str>,
) -> anyhow::Result<JournalFile> {
    let j = match which {
        None => {
            let inventory = inventory_path.display().to_string();
            journal::list_journals(state_dir)?
                .into_iter()
                .rev()
                .find(|j| j.header.command == "upgrade" && j.header.inventory == inventory)
                .ok_or_else(|| {
                    Failure::usage(format!(
                        "no upgrade of `{inventory}` to roll back in `{}`",
                        state_dir.display()
                    ))
                    .hint("`fleetup runs list` shows the runs; name one with `fleetup rollback RUN_ID`, or pass `--state-dir`")
                })?
        }
        Some(id) => session::read_run(state_dir, id)?,
    };
    if j.header.command != "upgrade" {
        return Err(Failure::usage(format!(
            "run `{}` is a `{}`, not an upgrade: there is nothing to roll back",
            j.header.run_id, j.header.command
        ))
        .hint("name the upgrade run: `fleetup runs list` shows the runs")
        .into());
    }
    Ok(j)
}

/// `--restore-backup` without `--yes`: on a terminal, the operator types `yes`; elsewhere the
/// run is refused before anything changes, with `again`, the command that confirms it.
fn confirm(plan: &Plan, of_run: &str, again: &str) -> anyhow::Result<()> {
    let restores: Vec<String> = plan
        .rollback
        .iter()
        .flat_map(|r| &r.restores)
        .flat_map(|r| {
            r.files
                .iter()
                .map(move |f| format!("`{}` on `{}`", f.path, r.host))
        })
        .collect();
    let what = format!(
        "restoring {} loses every write made since run `{}` took it",
        restores.join(", "),
        of_run
    );
    if !std::io::stdin().is_terminal() {
        return Err(Failure::usage(format!(
            "{what}, and stdin is not a terminal to confirm it; nothing was changed"
        ))
        .hint(format!("pass `--yes` to confirm: `{again}`"))
        .into());
    }
    err!("{what}.\ntype `yes` to stop the nodes and restore: ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "yes" {
        return Err(Failure::usage("not confirmed; nothing was changed").into());
    }
    Ok(())
}
