//! The one event stream of a run. The runner emits [`Event`]s through an [`EventSink`]; the same
//! stream feeds the human display (stderr), JSON Lines (stdout, `--format json`) and the run
//! journal. Events are plain data: serializable, with secrets already redacted by the emitter.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

/// The version of the `--format json` stream: each line carries it as `schema`. Bumped when a
/// field changes meaning or goes away (new events and fields do not bump it).
pub const JSON_SCHEMA: u32 = 1;

/// How one step ended on one host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepStatus {
    Ok,
    Failed,
    /// Not run: an earlier step failed, or there was nothing to do.
    Skipped,
}

/// The state of one step on one host, as the engine moves it: what the journal records so
/// `runs show` and `--resume` know what may have changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    /// Applying began: from now on the host may have changed.
    Started,
    Done,
    /// The probe found it done by an earlier run: not applied again.
    AlreadyDone,
    Failed,
    /// Undone after a failure (a staged release removed, a stopped node restarted).
    Undone,
    /// Not applied: another host of the step failed, or the run stopped first.
    Skipped,
    /// Stopped by Ctrl-C / SIGTERM before it finished.
    Cancelled,
}

impl StepState {
    pub fn as_str(self) -> &'static str {
        match self {
            StepState::Started => "started",
            StepState::Done => "done",
            StepState::AlreadyDone => "already_done",
            StepState::Failed => "failed",
            StepState::Undone => "undone",
            StepState::Skipped => "skipped",
            StepState::Cancelled => "cancelled",
        }
    }
}

/// Something a step produced that the operator needs afterwards (backup files, releases).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artefact {
    /// `backup`, `previous-release`, `new-release`, `staged-binary`...
    pub kind: String,
    pub host: String,
    /// Remote path.
    pub path: String,
    pub bytes: Option<u64>,
    /// Hex SHA-256.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    RunStarted {
        run_id: String,
        /// `upgrade` or `check`.
        command: String,
        target: String,
        hosts: Vec<String>,
    },
    HostConnected {
        host: String,
    },
    HostUnreachable {
        host: String,
        reason: String,
    },
    /// A check of the preflight (or of `check`) on one host, or fleet-wide when `host` is
    /// `None` (`null` in JSON; a journal of an older fleetup may hold `""`).
    CheckResult {
        #[serde(deserialize_with = "empty_as_none")]
        host: Option<String>,
        check: String,
        ok: bool,
        detail: String,
        hint: Option<String>,
    },
    StepStarted {
        step: usize,
        kind: String,
        host: String,
        /// The remote command line, secrets redacted (`None` for the runner's own mechanisms).
        command: Option<String>,
    },
    /// Progress of a long step (uploads): `done` of `total` units (bytes).
    StepProgress {
        step: usize,
        host: String,
        done: u64,
        total: u64,
    },
    StepFinished {
        step: usize,
        kind: String,
        host: String,
        status: StepStatus,
        exit_status: Option<String>,
        duration_ms: u64,
        /// Last lines of stderr, redacted.
        stderr_tail: Option<String>,
        /// One line for the operator (what was found, done or why it failed).
        message: Option<String>,
        artefacts: Vec<Artefact>,
    },
    /// A step changed state on a host (see [`StepState`]).
    StepState {
        /// The step's stable id in the plan (`backup`, `start-service-2`).
        id: String,
        step: usize,
        kind: String,
        host: String,
        state: StepState,
        message: Option<String>,
    },
    RunFinished {
        run_id: String,
        /// `succeeded`, `failed`, `blocked`, `nothing-to-do`, `ready` (check).
        outcome: String,
        exit_code: i32,
        duration_ms: u64,
    },
    /// The plan a run follows, once built, with its id (`fleetup check` prints the same steps).
    PlanReady {
        plan_id: String,
        strategy: String,
        mode: String,
        migrator: Option<String>,
        steps: Vec<PlannedStep>,
        warnings: Vec<String>,
        /// The facts the plan was built from, per host (what its id covers besides the plan):
        /// `upgrade --plan ID` names the ones that changed since the audit.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        facts: Option<serde_json::Value>,
    },
    /// Something the operator should know that is not a step result (the difference `storage
    /// scan` made, a lock shown before it is broken).
    Notice {
        /// `None` (`null`): about the whole run.
        #[serde(deserialize_with = "empty_as_none")]
        host: Option<String>,
        message: String,
    },
    /// `--break-lock` removed another run's lock on `host`; `holder` says whose it was.
    LockBroken {
        host: String,
        holder: String,
    },
    /// After a failure, what was undone on `host` to leave it as it was (`action`), or why not.
    Restored {
        host: String,
        action: String,
        ok: bool,
        detail: String,
    },
    /// The end of a run: each node's versions and state, and what the operator keeps (backups,
    /// previous releases).
    Summary {
        hosts: Vec<HostSummary>,
        artefacts: Vec<Artefact>,
    },
}

/// Journals written before fleet-wide findings had a `null` host hold `""` there.
fn empty_as_none<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    let host: Option<String> = Option::deserialize(d)?;
    Ok(host.filter(|h| !h.is_empty()))
}

/// One step of a plan, as [`Event::PlanReady`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub step: usize,
    /// `StepKind` in snake case, as in the plan's JSON (`stop_service`).
    pub kind: String,
    pub hosts: Vec<String>,
}

/// One node at the end of a run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostSummary {
    pub host: String,
    /// Version before the run.
    pub from: Option<String>,
    /// Version the node's binary points to after the run.
    pub to: Option<String>,
    /// `running 1.8.2`, `stopped`, `unchanged`...
    pub state: String,
}

/// Where events go. Implementations must be cheap: the runner calls this inline.
pub trait EventSink: Send + Sync {
    fn emit(&self, event: &Event);
}

/// Sends every event to each of several sinks, in order.
#[derive(Clone, Default)]
pub struct Fanout {
    sinks: Vec<Arc<dyn EventSink>>,
}

impl Fanout {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn with(mut self, sink: Arc<dyn EventSink>) -> Self {
        self.sinks.push(sink);
        self
    }
}

impl EventSink for Fanout {
    fn emit(&self, event: &Event) {
        for s in &self.sinks {
            s.emit(event);
        }
    }
}

/// Keeps every event in memory (tests, summaries).
#[derive(Default)]
pub struct Recorder {
    events: Mutex<Vec<Event>>,
}

impl Recorder {
    pub fn events(&self) -> Vec<Event> {
        self.events.lock().map(|e| e.clone()).unwrap_or_default()
    }
}

impl EventSink for Recorder {
    fn emit(&self, event: &Event) {
        if let Ok(mut e) = self.events.lock() {
            e.push(event.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fanout_reaches_every_sink_and_serializes_tagged() {
        let (a, b) = (Arc::new(Recorder::default()), Arc::new(Recorder::default()));
        let fan = Fanout::new().with(a.clone()).with(b.clone());
        let ev = Event::HostConnected {
            host: "node-1".into(),
        };
        fan.emit(&ev);
        assert_eq!(a.events(), vec![ev.clone()]);
        assert_eq!(b.events(), vec![ev.clone()]);
        assert_eq!(
            serde_json::to_string(&ev).unwrap(),
            r#"{"event":"host_connected","host":"node-1"}"#
        );
    }
}
