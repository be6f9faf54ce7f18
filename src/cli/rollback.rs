//! `fleetup rollback [RUN_ID]`: go back from an upgrade run. Reads that run's journal, connects
//! the run's nodes, gathers facts and the storages' migration state, builds the rollback plan
//! (`fleetup::plan::build_rollback`) and hands it to the same runner as `upgrade`, journaled
//! (`command: "rollback"`). `--restore-backup` loses the writes made since the backup: it asks
//! on a TTY and needs `--yes` elsewhere.

use std::collections::BTreeMap;
use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use fleetup::events::{Event, EventSink};
use fleetup::inventory::ResolvedHost;
use fleetup::journal::{self, DeferredJournal, Header, JournalFile};
use fleetup::lock::LockOwner;
use fleetup::plan::{Plan, RollbackRequest, RunRecord, build_rollback, plan_digest};
use fleetup::policy::PolicyTable;
use fleetup::runner::{self, Cancel, Fleet, Outcome, PriorRun, RunConfig, kind_name};
use fleetup::ssh::{ExecOptions, Session};
use fleetup::{Failure, exit_code, schema};
use sha2::{Digest, Sha256};

use super::check::{local_host, local_user};
use super::connect::{self, ConnectFlags};
use super::session::{self, RunSession};
use super::signals;
use super::{Format, Global, inventory};

#[derive(Debug, Args)]
pub struct RollbackArgs {
    /// The upgrade run to roll back. Default: the latest `upgrade` run of this inventory.
    #[arg(value_name = "RUN_ID")]
    pub run_id: Option<String>,
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
    let inventory_path = inventory::inventory_path(global);
    let inventory_bytes = std::fs::read(&inventory_path)
        .with_context(|| format!("cannot read `{}`", inventory_path.display()))?;
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| journal::default_state_dir(&inventory_path));
    let upgrade = find_upgrade(&state_dir, &inventory_path, args.run_id.as_deref())?;
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
    let run_id = journal::new_run_id(now);
    let (user, local_host) = (local_user(), local_host());
    let mut options = vec![format!("rollback of {}", record.run_id)];
    if args.restore_backup {
        options.push("--restore-backup".into());
    }
    if args.break_lock {
        options.push("--break-lock".into());
    }
    let header = Header {
        format_version: journal::FORMAT_VERSION,
        run_id: run_id.clone(),
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
        user: user.clone(),
        local_host: local_host.clone(),
        no_backup: true,
        options,
        plan: None,
        plan_id: None,
    };
    let session = RunSession::start(
        global,
        &header,
        hosts.iter().map(|h| h.name.clone()).collect(),
    );
    let (sink, journal) = (session.sink.clone(), session.journal.clone());
    let owner = RunSession::owner(&header);
    let ctx = Ctx {
        global,
        args,
        hosts: &hosts,
        record: &record,
        policy: &policy,
        sink: sink.clone(),
        owner,
        journal: journal.clone(),
        header,
        state_dir,
        cancel: Cancel::default(),
    };
    let result = ctx.rollback();
    if journal.journal().is_none()
        && let Err(e) = ctx.attach_journal(None)
    {
        eprintln!("warning: {e:#}");
    }
    session.finish(global, &result);
    result.map(|(_, code)| code)
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
        Some(id) => {
            if !journal::valid_run_id(id) {
                return Err(Failure::usage(format!("`{id}` is not a run id"))
                    .hint("`fleetup runs list` shows the run ids")
                    .into());
            }
            let path = journal::journal_path(state_dir, id);
            if !path.is_file() {
                return Err(
                    Failure::usage(format!("no run `{id}` in `{}`", state_dir.display()))
                        .hint("`fleetup runs list` shows the runs")
                        .into(),
                );
            }
            journal::read_journal(&path)?
        }
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

struct Ctx<'a> {
    global: &'a Global,
    args: &'a RollbackArgs,
    hosts: &'a [ResolvedHost],
    record: &'a RunRecord,
    policy: &'a PolicyTable,
    sink: Arc<dyn EventSink>,
    owner: LockOwner,
    journal: Arc<DeferredJournal>,
    header: Header,
    state_dir: PathBuf,
    cancel: Cancel,
}

impl Ctx<'_> {
    fn attach_journal(&self, plan: Option<(&Plan, &str)>) -> anyhow::Result<()> {
        session::attach_journal(&self.journal, &self.state_dir, &self.header, plan, false)
    }

    fn rollback(&self) -> anyhow::Result<(String, i32)> {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let _signals = tokio::spawn(signals::watch(
                self.cancel.clone(),
                self.sink.clone(),
                self.owner.run_id.clone(),
            ));
            let conns = connect::connect(self.hosts, &self.args.connect).await;
            let result = self.connected(&conns).await;
            for (_, conn) in &conns {
                if let Ok(session) = conn {
                    session.close().await;
                }
            }
            result
        })
    }

    async fn connected(&self, conns: &connect::Connections) -> anyhow::Result<(String, i32)> {
        for (name, conn) in conns {
            match conn {
                Ok(_) => self.sink.emit(&Event::HostConnected { host: name.clone() }),
                Err(e) => self.sink.emit(&Event::HostUnreachable {
                    host: name.clone(),
                    reason: e.to_string(),
                }),
            }
        }
        let sessions: BTreeMap<String, Session> = conns
            .iter()
            .filter_map(|(n, c)| c.as_ref().ok().map(|s| (n.clone(), s.clone())))
            .collect();
        let facts = fleetup::facts::gather_all(self.hosts, conns).await;
        let schema_beyond = self.schema_beyond(&sessions, &facts).await;
        let plan = build_rollback(&RollbackRequest {
            record: self.record,
            hosts: self.hosts,
            facts: &facts,
            schema_beyond: &schema_beyond,
            restore_backup: self.args.restore_backup,
            policy: self.policy,
        });
        let plan_id = plan_digest(&plan, &facts);
        self.attach_journal(Some((&plan, &plan_id)))?;
        self.sink
            .emit(&fleetup::preflight::plan_ready(&plan, &plan_id));
        if plan.is_blocked() {
            let mut f = Failure::new(
                exit_code::BLOCKED,
                format!(
                    "the rollback of run `{}` is refused; nothing was changed:\n{}",
                    self.record.run_id,
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
            if self.global.format == Format::Human {
                println!(
                    "every node of run `{}` already serves `{}`: nothing to do",
                    self.record.run_id, plan.target
                );
            }
            return Ok(("nothing-to-do".into(), exit_code::SUCCESS));
        }
        if self.args.restore_backup && !self.args.yes {
            self.confirm(&plan)?;
        }
        let cfg = RunConfig {
            run_id: self.owner.run_id.clone(),
            owner: self.owner.clone(),
            break_lock: self.args.break_lock,
            binary: None,
            stop_timeout: self.args.stop_timeout,
            health_timeout: self.args.health_timeout,
            poll_interval: Duration::from_millis(300),
            parallel_uploads: usize::from(self.args.connect.forks),
            forks: usize::from(self.args.connect.forks),
            failure: fleetup::runner::FailurePolicy::default(),
            prior: PriorRun::default(),
            cancel: self.cancel.clone(),
            lease: fleetup::lock::LeaseConfig::default(),
        };
        let fleet = Fleet {
            hosts: self.hosts.to_vec(),
            sessions,
            facts,
        };
        let report = runner::execute(plan.clone(), fleet, cfg, self.sink.clone()).await;
        if self.global.format == Format::Human {
            let mut out = format!(
                "\nrollback of run {} to {}: {} (run {})\n",
                self.record.run_id,
                plan.target,
                report.outcome.as_str(),
                self.owner.run_id
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
            print!("{out}");
        }
        match &report.error {
            None if report.unlock_errors.is_empty() => {
                Ok((report.outcome.as_str().into(), exit_code::SUCCESS))
            }
            None => Err(Failure::new(
                exit_code::FAILURE,
                format!(
                    "the rollback succeeded but {} lock(s) could not be released",
                    report.unlock_errors.len()
                ),
            )
            .hint(report.unlock_errors.join("; "))
            .into()),
            Some(e) => {
                let mut f = Failure::new(
                    report.outcome.exit_code(),
                    format!(
                        "step {} ({}) failed on `{}`: {}",
                        e.step,
                        kind_name(e.kind),
                        e.host,
                        e.message
                    ),
                );
                f.hints = e.hints.clone();
                if report.outcome != Outcome::LockHeld {
                    f.hints.push(format!(
                        "once the cause is fixed, run `fleetup rollback {}{}` again: every step is probed, nothing done is repeated",
                        self.record.run_id,
                        if self.args.restore_backup { " --restore-backup" } else { "" }
                    ));
                }
                f.hints.extend(report.unlock_errors.iter().cloned());
                Err(f.into())
            }
        }
    }

    /// `host → true` when its storage holds a migration newer than the version gone back to
    /// (read-only; a storage that cannot be read is left out: the journal still tells).
    async fn schema_beyond(
        &self,
        sessions: &BTreeMap<String, Session>,
        facts: &BTreeMap<String, fleetup::facts::HostFacts>,
    ) -> BTreeMap<String, bool> {
        let mut out = BTreeMap::new();
        let Some(old) = self.record.hosts.iter().find_map(|h| h.from.clone()) else {
            return out;
        };
        for h in self.hosts {
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

    /// `--restore-backup` without `--yes`: on a terminal, the operator types `yes`; elsewhere
    /// the run is refused before anything changes.
    fn confirm(&self, plan: &Plan) -> anyhow::Result<()> {
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
            self.record.run_id
        );
        if !std::io::stdin().is_terminal() {
            return Err(Failure::usage(format!(
                "{what}, and stdin is not a terminal to confirm it; nothing was changed"
            ))
            .hint(format!(
                "pass `--yes` to confirm: `fleetup rollback {} --restore-backup --yes`",
                self.record.run_id
            ))
            .into());
        }
        eprint!("{what}.\ntype `yes` to stop the nodes and restore: ");
        let _ = std::io::stderr().flush();
        let mut line = String::new();
        std::io::stdin().lock().read_line(&mut line)?;
        if line.trim() != "yes" {
            return Err(Failure::usage("not confirmed; nothing was changed").into());
        }
        Ok(())
    }
}
