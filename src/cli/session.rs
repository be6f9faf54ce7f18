//! What every changing command (`upgrade`, `rollback`) sets up the same way around the engine:
//! the sinks (the display on stderr, JSON Lines on stdout with `--format json`, the journal
//! whose file is written once the plan is built), the `run_started` / `run_finished` events, the
//! lock owner, and the journal's last words.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use fleetup::events::{Event, EventSink, Fanout};
use fleetup::exit_code;
use fleetup::journal::{DeferredJournal, Header, Journal};
use fleetup::lock::LockOwner;
use fleetup::plan::Plan;

use super::display::{Display, DisplayMode, JsonLines};
use super::{Format, Global};

/// One run's event plumbing.
pub struct RunSession {
    pub sink: Arc<dyn EventSink>,
    pub journal: Arc<DeferredJournal>,
    run_id: String,
    started: Instant,
}

impl RunSession {
    /// The sinks for `global`'s output options, and `run_started` emitted.
    pub fn start(global: &Global, header: &Header, hosts: Vec<String>) -> RunSession {
        let journal = Arc::new(DeferredJournal::default());
        let mode = DisplayMode::resolve(
            std::io::IsTerminal::is_terminal(&std::io::stderr()),
            super::display::is_ci(),
            global.verbose,
            global.quiet,
            global.format,
        );
        let mut fan = Fanout::new()
            .with(Arc::new(Display::new(mode, global.verbose)))
            .with(journal.clone() as Arc<dyn EventSink>);
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
            run_id: header.run_id.clone(),
            started: Instant::now(),
        }
    }

    /// The lock owner of this run, as the journal's header describes it.
    pub fn owner(header: &Header) -> LockOwner {
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

    /// `run_finished` with the outcome of `result` (`(outcome, exit code)` or the error to
    /// render), then the journal's write error and path on stderr.
    pub fn finish(&self, global: &Global, result: &anyhow::Result<(String, i32)>) {
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
            run_id: self.run_id.clone(),
            outcome,
            exit_code: code,
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        });
        if let Some(j) = self.journal.journal() {
            if let Some(err) = j.error() {
                eprintln!("warning: {err}");
            }
            if global.format == Format::Human && !global.quiet {
                eprintln!("journal: {}", j.path().display());
            }
        }
    }
}

/// Writes the run's journal: a new file whose header holds `plan` and its id, or (`append`,
/// `--resume`) the file of the run being continued; the events so far first.
pub fn attach_journal(
    journal: &DeferredJournal,
    state_dir: &Path,
    header: &Header,
    plan: Option<(&Plan, &str)>,
    append: bool,
) -> anyhow::Result<()> {
    let j = if append {
        Journal::open_append(state_dir, &header.run_id)?
    } else {
        let mut header = header.clone();
        if let Some((plan, id)) = plan {
            header.plan = Some(serde_json::to_value(plan)?);
            header.plan_id = Some(id.to_string());
        }
        Journal::create(state_dir, &header)?
    };
    journal.attach(Arc::new(j));
    Ok(())
}
