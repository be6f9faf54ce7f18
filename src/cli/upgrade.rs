//! `fleetup upgrade`: connect every selected host, gather facts, build the plan, run the
//! preflight, then hand the plan to the runner. Every event goes to the display (stderr), to
//! JSON Lines on stdout with `--format json`, and to the run journal. `--dry-run` is `check`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Context;
use clap::Args;
use fleetup::events::{Event, EventSink, Fanout, StepStatus};
use fleetup::inventory::{Inventory, ResolvedHost};
use fleetup::journal::{self, Header, Journal};
use fleetup::lock::LockOwner;
use fleetup::plan::{BinarySource, Plan, StepKind, build_plan_with, plan_digest};
use fleetup::preflight::{self, PreflightInput, check};
use fleetup::runner::{self, Fleet, Outcome, RunConfig, RunReport, kind_name};
use fleetup::ssh::Session;
use fleetup::{Failure, exit_code};
use sha2::{Digest, Sha256};

use super::check::{PlanArgs, PlanInputs, local_host, local_user};
use super::connect::{self, ConnectFlags};
use super::display::{Display, DisplayMode, JsonLines};
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
    /// How long a node may take to stop (`--stop`).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub stop_timeout: Duration,
    /// How long a started node may take until `/_info` reports the target.
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
    pub health_timeout: Duration,
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
    let inputs = args.plan.resolve(global, &inventory)?;
    let inventory_path = inventory::inventory_path(global);
    let inventory_bytes = std::fs::read(&inventory_path)
        .with_context(|| format!("cannot read `{}`", inventory_path.display()))?;
    let state_dir = args
        .state_dir
        .clone()
        .unwrap_or_else(|| journal::default_state_dir(&inventory_path));
    let now = SystemTime::now();
    let run_id = journal::new_run_id(now);
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
        no_backup: args.plan.no_backup,
        options: options(args),
    };
    let journal = Arc::new(Journal::create(&state_dir, &header)?);
    let mode = DisplayMode::resolve(
        std::io::IsTerminal::is_terminal(&std::io::stderr()),
        super::display::is_ci(),
        global.verbose,
        global.quiet,
        global.format,
    );
    let mut fan = Fanout::new()
        .with(Arc::new(Display::new(mode, global.verbose)))
        .with(journal.clone());
    if global.format == Format::Json {
        fan = fan.with(Arc::new(JsonLines));
    }
    let sink: Arc<dyn EventSink> = Arc::new(fan);
    let started = Instant::now();
    sink.emit(&Event::RunStarted {
        run_id: run_id.clone(),
        command: "upgrade".into(),
        target: inputs.target.to_string(),
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
    });
    let owner = LockOwner {
        user,
        local_host,
        run_id: run_id.clone(),
        pid: std::process::id(),
        started_at: header.started_at.clone(),
        fleetup_version: header.fleetup_version.clone(),
        command: "upgrade".into(),
    };
    let ctx = Ctx {
        global,
        args,
        inventory: &inventory,
        hosts: &hosts,
        inputs: &inputs,
        sink: sink.clone(),
        owner,
    };
    let result = ctx.upgrade();
    let (outcome, code) = match &result {
        Ok((outcome, code)) => (outcome.clone(), *code),
        Err(e) => {
            let code = fleetup::error::find_failure(e).map_or(exit_code::FAILURE, |f| f.code);
            let outcome = match code {
                exit_code::FAILURE => "failed",
                c => exit_code::name(c),
            };
            (outcome.to_string(), code)
        }
    };
    sink.emit(&Event::RunFinished {
        run_id: run_id.clone(),
        outcome,
        exit_code: code,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    if let Some(err) = journal.error() {
        eprintln!("warning: {err}");
    }
    if global.format == Format::Human && !global.quiet {
        eprintln!("journal: {}", journal.path().display());
    }
    result.map(|(_, code)| code)
}

/// The options recorded in the journal's header: the plan's, and those of the run itself.
fn options(args: &UpgradeArgs) -> Vec<String> {
    let mut o = args.plan.recorded_options();
    if args.break_lock {
        o.push("--break-lock".into());
    }
    if let Some(id) = &args.plan_id {
        o.push(format!("--plan {id}"));
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
}

impl Ctx<'_> {
    /// `(outcome, exit code)` of a run that got to an end, or the error to render.
    fn upgrade(&self) -> anyhow::Result<(String, i32)> {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
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
        let mut unreachable = Vec::new();
        for (name, conn) in conns {
            match conn {
                Ok(_) => self.sink.emit(&Event::HostConnected { host: name.clone() }),
                Err(e) => {
                    unreachable.push(name.clone());
                    self.sink.emit(&Event::HostUnreachable {
                        host: name.clone(),
                        reason: e.to_string(),
                    });
                }
            }
        }
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
        let facts = fleetup::facts::gather_all(self.hosts, conns).await;
        let left_out = connect::left_out(self.inventory, self.hosts, &self.args.connect).await;
        let inputs = self.inputs;
        let plan = build_plan_with(
            self.hosts,
            &facts,
            &left_out,
            &inputs.target,
            &inputs.options,
            &inputs.policy,
        );
        let plan_id = plan_digest(&plan, &facts);
        self.sink.emit(&preflight::plan_ready(&plan, &plan_id));
        if let Some(expected) = &self.args.plan_id {
            preflight::verify_plan_id(expected, &plan_id)?;
        }
        if plan.nothing_to_do() {
            if self.global.format == Format::Human {
                println!(
                    "every selected node already runs `{}`: nothing to do",
                    plan.target
                );
            }
            return Ok(("nothing-to-do".into(), exit_code::SUCCESS));
        }
        let input = PreflightInput {
            hosts: self.hosts,
            facts: &facts,
            plan: &plan,
            binary: &plan.binary,
            local_binary_version: inputs.local_binary_version.clone(),
        };
        let preflight = preflight::run(&sessions, &input, self.sink.as_ref()).await;
        // With `--break-lock` the runner shows and breaks a held lock itself.
        let failures: Vec<&preflight::Finding> = preflight
            .failures()
            .filter(|f| !(self.args.break_lock && f.check == check::LOCK))
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
                f.hints.extend(report.unlock_errors.iter().cloned());
                Err(f.into())
            }
        }
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
