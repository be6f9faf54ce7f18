//! `fleetup upgrade`: connect every selected host, gather facts, build the plan, run the
//! preflight, then hand the plan to the runner. Every event goes to the display (stderr), to
//! JSON Lines on stdout with `--format json`, and to the run journal. `--dry-run` is `check`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use anyhow::Context;
use clap::Args;
use fleetup::events::{Event, EventSink, StepState, StepStatus};
use fleetup::inventory::{Inventory, ResolvedHost};
use fleetup::journal::{self, DeferredJournal, Header};
use fleetup::lock::LockOwner;
use fleetup::plan::{BinarySource, Plan, StepKind};
use fleetup::preflight::{self, check};
use fleetup::runner::{self, Cancel, Fleet, Outcome, PriorRun, RunConfig, RunReport, kind_name};
use fleetup::ssh::Session;
use fleetup::{Failure, exit_code};
use sha2::{Digest, Sha256};

use super::check::{PlanArgs, PlanInputs, local_host, local_user};
use super::connect::{self, ConnectFlags};
use super::session::{self, RunSession};
use super::signals;
use super::{Format, Global, inventory};

#[derive(Debug, Args)]
pub struct UpgradeArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    /// Refuse to start unless the fleet still gives this plan id (printed by `fleetup check`).
    #[arg(long = "plan", value_name = "ID")]
    pub plan_id: Option<String>,
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
    /// Hosts that may fail while the run goes on without them (each undone alone, where safe):
    /// only a host alone on its storage, or a failed start or health gate after its storage was
    /// migrated. 0: the first failure stops the run.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub max_fail: usize,
    #[command(flatten)]
    pub connect: ConnectFlags,
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
        Some(which) => Some(find_resumable(&state_dir, &inventory_path, which)?),
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
    let session = RunSession::start(
        global,
        &header,
        hosts.iter().map(|h| h.name.clone()).collect(),
    );
    let (sink, journal) = (session.sink.clone(), session.journal.clone());
    let owner = RunSession::owner(&header);
    let prior = resumed
        .as_ref()
        .map(|j| prior_run(j, &hosts))
        .unwrap_or_default();
    let ctx = Ctx {
        global,
        args,
        inventory: &inventory,
        hosts: &hosts,
        inputs: &inputs,
        sink: sink.clone(),
        owner,
        journal: journal.clone(),
        header,
        state_dir,
        resumed: resumed.is_some(),
        prior,
        cancel: Cancel::default(),
    };
    if let Some(j) = &resumed {
        sink.emit(&Event::Notice {
            host: String::new(),
            message: format!(
                "resuming run `{run_id}` (started {} by {}@{}): every step is probed again",
                j.header.started_at, j.header.user, j.header.local_host
            ),
        });
    }
    let result = ctx.upgrade();
    // A run that stopped before its plan was built still leaves its journal.
    if journal.journal().is_none()
        && let Err(e) = ctx.attach_journal(None, None)
    {
        eprintln!("warning: {e:#}");
    }
    session.finish(global, &result);
    result.map(|(_, code)| code)
}

/// The run `--resume` continues: `which` is a run id, or `latest` for the newest upgrade of this
/// inventory that did not finish (failed, cancelled, killed).
fn find_resumable(
    state_dir: &std::path::Path,
    inventory_path: &std::path::Path,
    which: &str,
) -> anyhow::Result<journal::JournalFile> {
    let finished =
        |j: &journal::JournalFile| matches!(j.outcome().as_str(), "succeeded" | "nothing-to-do");
    let found = if which == "latest" {
        let inventory = inventory_path.display().to_string();
        journal::list_journals(state_dir)?
            .into_iter()
            .rev()
            .find(|j| j.header.command == "upgrade" && j.header.inventory == inventory)
            .filter(|j| !finished(j))
            .ok_or_else(|| {
                Failure::usage(format!(
                    "no unfinished upgrade of `{inventory}` to resume in `{}`",
                    state_dir.display()
                ))
                .hint("`fleetup runs list` shows the runs; name one with `--resume RUN_ID`")
            })?
    } else {
        if !journal::valid_run_id(which) {
            return Err(Failure::usage(format!("`{which}` is not a run id"))
                .hint("`fleetup runs list` shows the run ids")
                .into());
        }
        let path = journal::journal_path(state_dir, which);
        if !path.is_file() {
            return Err(
                Failure::usage(format!("no run `{which}` in `{}`", state_dir.display()))
                    .hint("`fleetup runs list` shows the runs")
                    .into(),
            );
        }
        let j = journal::read_journal(&path)?;
        if j.header.command != "upgrade" {
            return Err(Failure::usage(format!(
                "run `{which}` is a `{}`, not an upgrade",
                j.header.command
            ))
            .into());
        }
        if finished(&j) {
            return Err(Failure::usage(format!(
                "run `{which}` finished ({}): there is nothing to resume",
                j.outcome()
            ))
            .hint("run `fleetup upgrade` to converge the fleet again")
            .into());
        }
        j
    };
    Ok(found)
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
    if args.max_fail > 0 {
        o.push(format!("--max-fail {}", args.max_fail));
    }
    o
}

struct Ctx<'a> {
    global: &'a Global,
    args: &'a UpgradeArgs,
    inventory: &'a Inventory,
    hosts: &'a [ResolvedHost],
    inputs: &'a PlanInputs,
    sink: Arc<dyn EventSink>,
    owner: LockOwner,
    journal: Arc<DeferredJournal>,
    header: Header,
    state_dir: PathBuf,
    resumed: bool,
    prior: PriorRun,
    cancel: Cancel,
}

impl Ctx<'_> {
    /// Opens the journal (a new file with the plan in its header, or the resumed run's file)
    /// and writes the events so far.
    fn attach_journal(&self, plan: Option<&Plan>, plan_id: Option<&str>) -> anyhow::Result<()> {
        let plan = plan.zip(plan_id);
        session::attach_journal(
            &self.journal,
            &self.state_dir,
            &self.header,
            plan,
            self.resumed,
        )
    }

    /// `(outcome, exit code)` of a run that got to an end, or the error to render.
    fn upgrade(&self) -> anyhow::Result<(String, i32)> {
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
        let inputs = self.inputs;
        let left_out = connect::left_out(self.inventory, self.hosts, &self.args.connect).await;
        // The same audit as `fleetup check`: facts, plan, plan id and every preflight finding,
        // so the run never goes where the audit would not.
        let audit = preflight::audit_fleet(
            self.hosts,
            conns,
            &left_out,
            &inputs.target,
            &inputs.options,
            &inputs.policy,
            inputs.local_binary_version.clone(),
            self.sink.as_ref(),
        )
        .await;
        let unreachable: Vec<&str> = conns
            .iter()
            .filter(|(_, c)| c.is_err())
            .map(|(n, _)| n.as_str())
            .collect();
        if !unreachable.is_empty() {
            if !self.global.quiet {
                connect::report_failures(conns);
            }
            return Err(Failure::new(
                exit_code::UNREACHABLE,
                format!(
                    "{} host(s) could not be reached: {}; nothing was changed",
                    unreachable.len(),
                    unreachable.join(", ")
                ),
            )
            .hint("every selected host must answer before an upgrade starts; fix them or leave them out with `--limit`")
            .into());
        }
        let sessions: BTreeMap<String, Session> = conns
            .iter()
            .filter_map(|(n, c)| c.as_ref().ok().map(|s| (n.clone(), s.clone())))
            .collect();
        let (plan, plan_id, facts) = (audit.plan, audit.plan_id, audit.facts);
        self.attach_journal(Some(&plan), Some(&plan_id))?;
        if let Some(expected) = &self.args.plan_id {
            preflight::verify_plan_id(expected, &plan_id)?;
        }
        // Nodes the plan leaves alone (they serve the target) may still hold the lock of a run
        // that died: reported, removed with `--break-lock` or `--resume`.
        let untouched: Vec<&ResolvedHost> = self
            .hosts
            .iter()
            .filter(|h| {
                plan.host(&h.name)
                    .is_some_and(|p| p.action == fleetup::plan::HostAction::AlreadyAtTarget)
            })
            .collect();
        let left = self.leftover_locks(&sessions, &untouched).await;
        if plan.nothing_to_do() {
            if self.global.format == Format::Human {
                println!(
                    "every selected node already serves `{}`: nothing to do",
                    plan.target
                );
            }
            if !left.is_empty() {
                let mut f = Failure::new(
                    exit_code::LOCK_HELD,
                    format!(
                        "nothing to do, but {} node(s) still hold another run's lock: {}",
                        left.len(),
                        left.join("; ")
                    ),
                );
                f.hints.push(
                    "if that run is dead, `--break-lock` removes them (or `--resume` for its own run)"
                        .into(),
                );
                return Err(f.into());
            }
            return Ok(("nothing-to-do".into(), exit_code::SUCCESS));
        }
        // With `--break-lock` (or `--resume`) the runner shows and breaks (or takes over) a
        // held lock itself.
        let failures: Vec<&preflight::Finding> = audit
            .findings
            .iter()
            .filter(|f| !f.ok)
            .filter(|f| !((self.args.break_lock || self.resumed) && f.check == check::LOCK))
            .collect();
        self.preflight_steps(&plan, &failures);
        if !failures.is_empty() {
            let code = if failures.iter().all(|f| f.check == check::LOCK) {
                exit_code::LOCK_HELD
            } else {
                exit_code::BLOCKED
            };
            let mut f = Failure::new(
                code,
                format!(
                    "the preflight found {} problem(s); nothing was changed:\n{}",
                    failures.len(),
                    failures
                        .iter()
                        .map(|f| format!(
                            "  - {}: {}: {}",
                            f.host.as_deref().unwrap_or("fleet"),
                            f.check,
                            f.detail
                        ))
                        .collect::<Vec<_>>()
                        .join("\n")
                ),
            );
            for finding in &failures {
                if let Some(h) = &finding.hint
                    && !f.hints.contains(h)
                {
                    f.hints.push(h.clone());
                }
            }
            return Err(f.into());
        }
        // The preflight reports every blocker as a finding; should one ever slip through, the
        // plan still does not run.
        if plan.is_blocked() {
            let reasons: Vec<String> = plan.blockers.iter().map(|b| b.reason.clone()).collect();
            return Err(Failure::new(
                exit_code::BLOCKED,
                format!(
                    "the plan is blocked; nothing was changed: {}",
                    reasons.join("; ")
                ),
            )
            .into());
        }
        if plan.strategy.is_zero_downtime() {
            return Err(Failure::new(
                exit_code::BLOCKED,
                format!(
                    "the plan uses the `{}` strategy, which `fleetup upgrade` does not carry out yet; nothing was changed",
                    plan.strategy
                ),
            )
            .hint("pass `--strategy offline` (the guide's procedure: stop, back up, migrate once, restart)")
            .into());
        }
        let binary = match &plan.binary {
            BinarySource::File { path, sha256 } => {
                let data = std::fs::read(path)
                    .with_context(|| format!("cannot read the binary `{}`", path.display()))?;
                let got = hex::encode(Sha256::digest(&data));
                if &got != sha256 {
                    return Err(Failure::new(
                        exit_code::BLOCKED,
                        format!(
                            "`{}` has sha256 `{got}`, expected `{sha256}`; nothing was changed",
                            path.display()
                        ),
                    )
                    .into());
                }
                Some(Arc::new(data))
            }
            BinarySource::Url { .. } => None,
        };
        let cfg = RunConfig {
            run_id: self.owner.run_id.clone(),
            owner: self.owner.clone(),
            break_lock: self.args.break_lock,
            binary,
            stop_timeout: self.args.stop_timeout,
            health_timeout: self.args.health_timeout,
            poll_interval: Duration::from_millis(300),
            parallel_uploads: usize::from(self.args.connect.forks),
            forks: usize::from(self.args.connect.forks),
            failure: fleetup::runner::FailurePolicy {
                max_failed: self.args.max_fail,
            },
            prior: self.prior.clone(),
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
            print!("{}", render_summary(&plan, &report, &self.owner.run_id));
        }
        match &report.error {
            None if report.unlock_errors.is_empty() => {
                Ok((report.outcome.as_str().into(), exit_code::SUCCESS))
            }
            None => Err(Failure::new(
                exit_code::FAILURE,
                format!(
                    "the upgrade succeeded but {} lock(s) could not be released",
                    report.unlock_errors.len()
                ),
            )
            .hint(report.unlock_errors.join("; "))
            .into()),
            Some(_) if report.outcome == Outcome::Cancelled => {
                let mut f = Failure::new(
                    exit_code::CANCELLED,
                    "the run was cancelled: nothing new was started after the signal; each node's state is in the summary",
                )
                .hint(format!(
                    "continue it with `fleetup upgrade --resume {}`",
                    self.owner.run_id
                ));
                f.hints.extend(report.unlock_errors.iter().cloned());
                Err(f.into())
            }
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
                        "the journal and `fleetup runs show {}` record every step",
                        self.owner.run_id
                    ));
                }
                if report.outcome == Outcome::Failed {
                    f.hints.push(format!(
                        "once the cause is fixed, `fleetup upgrade --resume {}` continues this run (every step is probed again, nothing done is repeated)",
                        self.owner.run_id
                    ));
                }
                f.hints.extend(report.unlock_errors.iter().cloned());
                Err(f.into())
            }
        }
    }

    /// Locks left on the selected nodes by another run (a dead one, typically): reported, and
    /// removed with `--break-lock` (a live fleetup here keeps its lock) or `--resume` (its own
    /// run's). Returns those that stay.
    async fn leftover_locks(
        &self,
        sessions: &BTreeMap<String, Session>,
        hosts: &[&ResolvedHost],
    ) -> Vec<String> {
        let mut left = Vec::new();
        for h in hosts.iter().copied() {
            let Some(t) = sessions.get(&h.name) else {
                continue;
            };
            let path = fleetup::lock::lock_path(h);
            let cmd = fleetup::lock::read_command(h);
            let Ok(out) = t.exec(&cmd, &fleetup::ssh::ExecOptions::default()).await else {
                continue;
            };
            if !out.status.success() {
                continue;
            }
            let held = fleetup::lock::parse_held(&out.stdout_lossy());
            let ttl = fleetup::lock::LeaseConfig::default().ttl;
            let shown = held.describe(ttl);
            self.sink.emit(&Event::Notice {
                host: h.name.clone(),
                message: format!("the lock `{path}` is held by {shown}"),
            });
            let here = &self.owner.local_host;
            let ours = held
                .holder
                .owner()
                .is_some_and(|o| o.run_id == self.owner.run_id);
            let liveness = held
                .holder
                .owner()
                .map_or(fleetup::lock::Liveness::Unknown, |o| {
                    fleetup::lock::liveness_here(o, here)
                });
            let breakable = (self.args.break_lock
                && fleetup::lock::break_decision(&held, here, liveness, ttl).is_ok())
                || (self.resumed && ours);
            if breakable && fleetup::lock::break_lock(t, h, &held).await.is_ok() {
                self.sink.emit(&Event::LockBroken {
                    host: h.name.clone(),
                    holder: shown,
                });
            } else {
                left.push(format!("`{}` by {shown}", h.name));
            }
        }
        left
    }

    /// The plan's `preflight` step, per host, as started and finished events.
    fn preflight_steps(&self, plan: &Plan, failures: &[&preflight::Finding]) {
        let Some(step) = plan.steps.iter().find(|s| s.kind == StepKind::Preflight) else {
            return;
        };
        for host in &step.hosts {
            self.sink.emit(&Event::StepStarted {
                step: step.number,
                kind: kind_name(step.kind),
                host: host.clone(),
                command: None,
            });
            let mine: Vec<String> = failures
                .iter()
                .filter(|f| f.host.as_deref().is_none_or(|h| h == host))
                .map(|f| format!("{}: {}", f.check, f.detail))
                .collect();
            self.sink.emit(&Event::StepFinished {
                step: step.number,
                kind: kind_name(step.kind),
                host: host.clone(),
                status: if mine.is_empty() {
                    StepStatus::Ok
                } else {
                    StepStatus::Failed
                },
                exit_status: None,
                duration_ms: 0,
                stderr_tail: None,
                message: Some(if mine.is_empty() {
                    "every check passed".into()
                } else {
                    mine.join("; ")
                }),
                artefacts: vec![],
            });
        }
    }
}

/// The end-of-run report for people: per node old → new and state, backups, ledgers, timings.
fn render_summary(plan: &Plan, report: &RunReport, run_id: &str) -> String {
    let mut out = format!(
        "\nupgrade to {}: {} (run {run_id})\n",
        plan.target,
        report.outcome.as_str()
    );
    let mut rows = vec![["HOST", "FROM", "TO", "STATE"].map(String::from)];
    for h in &report.hosts {
        rows.push([
            h.host.clone(),
            h.from.clone().unwrap_or_else(|| "-".into()),
            h.to.clone().unwrap_or_else(|| "-".into()),
            h.state.clone(),
        ]);
    }
    out.push_str(&super::table::render(&rows));
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
