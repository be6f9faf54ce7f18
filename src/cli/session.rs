//! What every changing command (`upgrade`, `rollback`) sets up the same way around the
//! library's operation: the sinks (the display on stderr, JSON Lines on stdout with `--format
//! json`, the journal whose file is written once the plan is built), the `run_started` /
//! `run_finished` events, the lock owner, the runtime with its signal watcher, the hooks the
//! operation calls, and how the engine's report becomes an outcome or an error to render.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use fleetup::Failure;
use fleetup::events::{Event, EventSink, Fanout};
use fleetup::exit_code;
use fleetup::journal::{self, DeferredJournal, Header, Journal, JournalFile};
use fleetup::lock::LeaseConfig;
use fleetup::lock::LockOwner;
use fleetup::operation::{Connections, Hooks, RunSettings};
use fleetup::plan::Plan;
use fleetup::runner::{Cancel, FailurePolicy, Outcome, PriorRun, RunReport, kind_name};

use super::connect::{self, ConnectFlags};
use super::display::{Display, DisplayMode, HostClock, JsonLines};
use super::{Format, Global, signals};

/// The flags of a changing run that [`RunSession::settings`] reads.
pub struct RunFlags {
    pub break_lock: bool,
    pub stop_timeout: Duration,
    pub health_timeout: Duration,
}

/// `--restore-backup`'s confirmation, asked before the first change.
pub type Confirm = Box<dyn Fn(&Plan) -> anyhow::Result<()> + Sync>;

/// One run's event plumbing, and the [`Hooks`] of its operation.
pub struct RunSession {
    pub sink: Arc<dyn EventSink>,
    pub journal: Arc<DeferredJournal>,
    pub cancel: Cancel,
    /// How long each host was worked on: the end table's time column.
    pub clock: Arc<HostClock>,
    /// The stderr display: a confirmation prompt suspends its bars.
    display: Arc<Display>,
    header: Header,
    state_dir: PathBuf,
    /// `--resume`: the journal is the continued run's file.
    append: bool,
    quiet: bool,
    confirm: Option<Confirm>,
    started: Instant,
}

/// The stderr display `global`'s options ask for (mode and colour chosen by the pure
/// functions of [`super::display`]).
pub fn display_for(global: &Global) -> Display {
    let terminal = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let mode = DisplayMode::resolve(
        terminal,
        super::display::is_ci(),
        global.verbose,
        global.quiet,
        global.format,
    );
    let no_color = std::env::var_os("NO_COLOR").is_some_and(|v| !v.is_empty());
    let color = super::display::use_color(global.color, no_color, terminal);
    Display::new(mode, global.verbose, color)
}

impl RunSession {
    /// The sinks for `global`'s output options, and `run_started` emitted.
    pub fn start(
        global: &Global,
        header: Header,
        hosts: Vec<String>,
        state_dir: PathBuf,
        append: bool,
    ) -> RunSession {
        let journal = Arc::new(DeferredJournal::default());
        let clock = Arc::new(HostClock::default());
        let display = Arc::new(display_for(global));
        let mut fan = Fanout::new()
            .with(display.clone() as Arc<dyn EventSink>)
            .with(journal.clone() as Arc<dyn EventSink>)
            .with(clock.clone() as Arc<dyn EventSink>);
        if global.format == Format::Json {
            fan = fan.with(Arc::new(JsonLines));
        }
        let sink: Arc<dyn EventSink> = Arc::new(fan);
        sink.emit(&Event::RunStarted {
            run_id: header.run_id.clone(),
            command: header.command.clone(),
            target: header.target.clone(),
            hosts,
        });
        RunSession {
            sink,
            journal,
            cancel: Cancel::default(),
            clock,
            display,
            header,
            state_dir,
            append,
            quiet: global.quiet,
            confirm: None,
            started: Instant::now(),
        }
    }

    /// Asks `confirm` before a plan that loses writes changes anything.
    pub fn confirming(mut self, confirm: Confirm) -> RunSession {
        self.confirm = Some(confirm);
        self
    }

    /// The lock owner of this run, as the journal's header describes it.
    pub fn owner(&self) -> LockOwner {
        let header = &self.header;
        LockOwner {
            user: header.user.clone(),
            local_host: header.local_host.clone(),
            run_id: header.run_id.clone(),
            pid: std::process::id(),
            started_at: header.started_at.clone(),
            fleetup_version: header.fleetup_version.clone(),
            command: header.command.clone(),
            process: fleetup::lock::ProcessIdentity::current(),
        }
    }

    /// The settings of this run's engine that `upgrade` and `rollback` share; the failure budget
    /// (none) and what a resumed run recorded (nothing) are the caller's to set.
    pub fn settings(&self, flags: RunFlags, connect: &ConnectFlags) -> RunSettings {
        RunSettings {
            owner: self.owner(),
            break_lock: flags.break_lock,
            resumed: self.append,
            stop_timeout: flags.stop_timeout,
            health_timeout: flags.health_timeout,
            forks: usize::from(connect.forks),
            failure: FailurePolicy::default(),
            prior: PriorRun::default(),
            cancel: self.cancel.clone(),
            lease: LeaseConfig::default(),
            pause: None,
        }
    }

    /// Runs `operation` on a runtime that watches for Ctrl-C and SIGTERM meanwhile.
    pub fn block_on<T>(
        &self,
        operation: impl Future<Output = anyhow::Result<T>>,
    ) -> anyhow::Result<T> {
        let runtime = tokio::runtime::Runtime::new()?;
        runtime.block_on(async {
            let _signals = tokio::spawn(signals::watch(
                self.cancel.clone(),
                self.sink.clone(),
                self.header.run_id.clone(),
                self.header.command.clone(),
            ));
            operation.await
        })
    }

    /// Writes the run's journal: a new file whose header holds `plan` and its id, or (`--resume`)
    /// the file of the run being continued; the events so far first.
    fn attach_journal(&self, plan: Option<(&Plan, &str)>) -> anyhow::Result<()> {
        let j = if self.append {
            Journal::open_append(&self.state_dir, &self.header.run_id)?
        } else {
            let mut header = self.header.clone();
            if let Some((plan, id)) = plan {
                header.plan = Some(serde_json::to_value(plan)?);
                header.plan_id = Some(id.to_string());
            }
            Journal::create(&self.state_dir, &header)?
        };
        self.journal.attach(Arc::new(j));
        Ok(())
    }

    /// `run_finished` with the outcome of `result` (`(outcome, exit code)` or the error to
    /// render), into the journal (a run that stopped before its plan was built still leaves
    /// one), then the journal's write error and path on stderr.
    pub fn finish(&self, global: &Global, result: &anyhow::Result<(String, i32)>) {
        if self.journal.journal().is_none()
            && let Err(e) = self.attach_journal(None)
        {
            errln!("warning: {e:#}");
        }
        let (outcome, code) = match result {
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
        self.sink.emit(&Event::RunFinished {
            run_id: self.header.run_id.clone(),
            outcome,
            exit_code: code,
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        if let Some(j) = self.journal.journal() {
            if let Some(err) = j.error() {
                errln!("warning: {err}");
            }
            if global.format == Format::Human && !global.quiet {
                errln!("journal: {}", j.path().display());
            }
        }
    }
}

impl Hooks for RunSession {
    fn connected(&self, conns: &Connections) {
        // An upgrade's refusal names each unreachable host with its hints; a rollback's
        // refusal only says one of its nodes is not there, so the reasons come first.
        if !self.quiet && self.header.command != "upgrade" {
            connect::report_failures(conns);
        }
    }

    fn planned(&self, plan: &Plan, plan_id: &str) -> anyhow::Result<()> {
        self.attach_journal(Some((plan, plan_id)))
    }

    fn confirm(&self, plan: &Plan) -> anyhow::Result<()> {
        self.confirm
            .as_ref()
            .map_or(Ok(()), |c| self.display.suspend(|| c(plan)))
    }
}

/// The `(outcome, exit code)` of run `run_id` that the engine carried out, or the error to
/// render. `what` names the command (`upgrade`, `rollback`): `fleetup WHAT --resume RUN_ID`
/// continues the run.
pub fn conclude(report: &RunReport, what: &str, run_id: &str) -> anyhow::Result<(String, i32)> {
    let resume = format!("fleetup {what} --resume {run_id}");
    let Some(e) = &report.error else {
        if report.unlock_errors.is_empty() {
            return Ok((report.outcome.as_str().into(), exit_code::SUCCESS));
        }
        return Err(Failure::new(
            exit_code::FAILURE,
            format!(
                "the {what} succeeded but {} lock(s) could not be released",
                report.unlock_errors.len()
            ),
        )
        .hint(report.unlock_errors.join("; "))
        .into());
    };
    let mut f = if report.outcome == Outcome::Cancelled {
        Failure::new(
            exit_code::CANCELLED,
            "the run was cancelled: nothing new was started after the signal; each node's state is in the summary",
        )
        .hint(format!("continue it with `{resume}`"))
    } else {
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
                "the journal and `fleetup runs show {run_id}` record every step"
            ));
        }
        if report.outcome == Outcome::Failed {
            f.hints.push(format!(
                "once the cause is fixed, `{resume}` continues this run (every step is probed again, nothing done is repeated)"
            ));
            if what == "upgrade" && !report.changes.switched.is_empty() {
                f.hints.push(format!(
                    "or go back: `fleetup rollback {run_id}` switches the nodes it moved back to their release (`--restore-backup` once a storage was migrated and the old version may not serve it)"
                ));
            }
        }
        f
    };
    f.hints.extend(report.unlock_errors.iter().cloned());
    Err(f.into())
}

/// The run `--resume` continues: `which` is a run id, or `latest` for the newest `command` run
/// of this inventory that did not finish (failed, cancelled, killed).
pub fn find_resumable(
    state_dir: &Path,
    inventory_path: &Path,
    which: &str,
    command: &str,
) -> anyhow::Result<JournalFile> {
    let finished = |j: &JournalFile| matches!(j.outcome().as_str(), "succeeded" | "nothing-to-do");
    if which == "latest" {
        let inventory = inventory_path.display().to_string();
        return Ok(journal::list_journals(state_dir)?
            .into_iter()
            .rev()
            // A run refused before its first step (a held lock, a failed preflight) changed
            // nothing and has nothing to resume: the run before it may.
            .find(|j| {
                j.header.command == command
                    && j.header.inventory == inventory
                    && !j.steps.is_empty()
            })
            .filter(|j| !finished(j))
            .ok_or_else(|| {
                Failure::usage(format!(
                    "no unfinished {command} of `{inventory}` to resume in `{}`",
                    state_dir.display()
                ))
                .hint("`fleetup runs list` shows the runs; name one with `--resume RUN_ID`")
            })?);
    }
    let j = read_run(state_dir, which)?;
    let which = &j.header.run_id;
    if j.header.command != command {
        return Err(Failure::usage(format!(
            "run `{which}` is a `{}`, not a {command}",
            j.header.command
        ))
        .into());
    }
    if finished(&j) {
        return Err(Failure::usage(format!(
            "run `{which}` finished ({}): there is nothing to resume",
            j.outcome()
        ))
        .hint(format!(
            "run `fleetup {command}` again to converge the fleet"
        ))
        .into());
    }
    Ok(j)
}

/// The journal of run `id` (`last`, an id or a unique prefix of one) in `state_dir`.
pub fn read_run(state_dir: &Path, id: &str) -> anyhow::Result<JournalFile> {
    let id = super::runs::resolve_run(state_dir, id)?;
    journal::read_journal(&journal::journal_path(state_dir, &id))
}
