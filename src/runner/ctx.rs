//! What every step of a run shares: the hosts, their sessions and facts, the plan, the options,
//! the event sink and the record of what this run changed (for the clean-up after a failure).
//! Also the two helpers every step uses: run one command on one host with its events, and do
//! something on several hosts at once (at most `--forks` at a time, one semaphore for the run).

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::events::{Artefact, Event, EventSink, StepStatus};
use crate::exit_code;
use crate::facts::HostFacts;
use crate::inventory::ResolvedHost;
use crate::plan::{HostCommands, Plan, Step, StepKind};
use crate::redact::redact;
use crate::ssh::{ExecOptions, ExecOutput, Transport};

use super::RunConfig;

/// Lines of stderr kept in events and the journal.
const STDERR_TAIL_LINES: usize = 12;

/// The snake-case name of a step kind, as in the plan's JSON and the journal.
pub fn kind_name(kind: StepKind) -> String {
    kind.as_str().replace('-', "_")
}

/// A step that failed on a host: what to tell the operator, and the exit code it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StepError {
    pub step: usize,
    pub kind: StepKind,
    pub host: String,
    pub message: String,
    /// The remote stderr (redacted), when a command failed.
    pub stderr: Option<String>,
    pub hints: Vec<String>,
    /// [`exit_code::FAILURE`] for a failed command, [`exit_code::BLOCKED`] for a guard that
    /// refused to go on (wrong storage environment, a ledger missing from `storage list`).
    pub code: i32,
}

/// What this run changed so far, so a failure can undo what is safe to undo and report the rest.
#[derive(Debug, Default, Clone)]
pub struct Changes {
    /// Hosts whose lock this run holds.
    pub locked: Vec<String>,
    /// Hosts whose audit facts are still current: no other run locked them since the facts
    /// were read ([`super::known`]).
    pub facts_current: std::collections::BTreeSet<String>,
    /// Hosts this run stopped (`--stop`), in order.
    pub stopped: Vec<String>,
    /// `(host, backup dir)` of this run.
    pub backups: Vec<(String, String)>,
    /// `(host, release dir, created by this run)`.
    pub staged: Vec<(String, String, bool)>,
    /// A `storage upgrade` was issued: the storage may differ from the backup from now on.
    pub storage_touched: bool,
    /// The hosts on which it was ([`Changes::touch_storage`]), for the undo of one failed host.
    pub touched_on: std::collections::BTreeSet<String>,
    /// `(host, previous target of the binary)`.
    pub switched: Vec<(String, String)>,
    /// Hosts started on the new binary.
    pub started: Vec<String>,
    /// Hosts whose health gate passed.
    pub healthy: Vec<String>,
    /// Old nodes this run decommissioned (replace): stopped, their unit disabled (systemd).
    pub decommissioned: Vec<String>,
    /// Every artefact, in the order produced.
    pub artefacts: Vec<Artefact>,
    /// `(host, ledger, outcome)` of each `storage upgrade`.
    pub ledgers: Vec<(String, String, String)>,
}

impl Changes {
    /// A `storage upgrade` (or a restore) is about to change `host`'s storage.
    pub fn touch_storage(&mut self, host: &str) {
        self.storage_touched = true;
        if !self.touched_on.contains(host) {
            self.touched_on.insert(host.to_string());
        }
    }
}

/// Everything a step needs, shared by the tasks of a parallel step.
pub struct Shared<T> {
    pub plan: Plan,
    pub hosts: BTreeMap<String, ResolvedHost>,
    pub sessions: BTreeMap<String, T>,
    pub facts: BTreeMap<String, HostFacts>,
    pub cfg: RunConfig,
    pub sink: Arc<dyn EventSink>,
    pub changes: Mutex<Changes>,
    /// `--forks`: permits for the per-host tasks of [`each_host`], shared by every step.
    pub forks: Arc<Semaphore>,
    /// Each host's result in the [`per_host`] steps, `(step number, host, error)`, which the
    /// engine reads to tell the hosts that failed from those that finished.
    pub results: Mutex<Vec<(usize, String, Option<StepError>)>>,
    /// Hosts that failed and were left out of the rest of the run (the failure policy).
    pub failed: Mutex<Vec<String>>,
    /// [`Shared::step_naming`]'s index, made on first use.
    pub naming: OnceLock<HashMap<&'static str, HashMap<String, usize>>>,
}

impl<T: Transport> Shared<T> {
    pub fn host(&self, name: &str) -> &ResolvedHost {
        // Every name comes from the plan, which was built from these hosts.
        &self.hosts[name]
    }

    pub fn session(&self, name: &str) -> &T {
        &self.sessions[name]
    }

    pub fn facts(&self, name: &str) -> Option<&HostFacts> {
        self.facts.get(name)
    }

    pub fn emit(&self, event: Event) {
        self.sink.emit(&event);
    }

    pub fn change(&self, f: impl FnOnce(&mut Changes)) {
        if let Ok(mut c) = self.changes.lock() {
            f(&mut c);
        }
    }

    /// A copy of what the run changed: as long as the fleet, so never one per host (read one
    /// thing with [`Shared::changed`]).
    pub fn changes(&self) -> Changes {
        self.changes.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// `f` of what the run changed so far, without copying it.
    pub fn changed<R>(&self, f: impl FnOnce(&Changes) -> R) -> R {
        match self.changes.lock() {
            Ok(c) => f(&c),
            Err(_) => f(&Changes::default()),
        }
    }

    /// Still part of the run: not a host that failed and was left behind.
    pub fn going(&self, host: &str) -> bool {
        self.failed
            .lock()
            .map_or(true, |f| !f.iter().any(|h| h == host))
    }

    pub fn failed_hosts(&self) -> Vec<String> {
        self.failed.lock().map(|f| f.clone()).unwrap_or_default()
    }

    /// The plan's first step of `kind` that names `host` (the undo's look-up, once per host).
    pub fn step_naming(&self, kind: StepKind, host: &str) -> Option<&Step> {
        let index = self.naming.get_or_init(|| {
            let mut index: HashMap<&'static str, HashMap<String, usize>> = HashMap::new();
            for (i, s) in self.plan.steps.iter().enumerate() {
                let of_kind = index.entry(s.kind.as_str()).or_default();
                for h in &s.hosts {
                    of_kind.entry(h.clone()).or_insert(i);
                }
            }
            index
        });
        let i = *index.get(kind.as_str())?.get(host)?;
        self.plan.steps.get(i)
    }

    /// The per-host results [`per_host`] recorded for step `number`, taken out.
    pub fn take_results(&self, number: usize) -> Vec<(String, Option<StepError>)> {
        let Ok(mut all) = self.results.lock() else {
            return Vec::new();
        };
        let (mine, rest) = all.drain(..).partition(|(n, _, _)| *n == number);
        *all = rest;
        mine.into_iter().map(|(_, h, e)| (h, e)).collect()
    }

    /// Starts reporting `step` on `host`.
    pub fn begin<'a>(&'a self, step: &'a Step, host: &'a str, command: Option<&str>) -> Op<'a, T> {
        self.emit(Event::StepStarted {
            step: step.number,
            kind: kind_name(step.kind),
            host: host.to_string(),
            command: command.map(redact),
        });
        Op {
            shared: self,
            step,
            host,
            started: Instant::now(),
        }
    }

    /// Runs `command` on `host` as (part of) `step`: `StepStarted`, the command, then
    /// `StepFinished` with its exit status, duration, stderr tail and `label` (what it does, one
    /// line). A non-zero exit is a [`StepError`] with the stderr; `Ok` holds the output.
    pub async fn run(
        &self,
        step: &Step,
        host: &str,
        command: &str,
        label: &str,
        timeout: Option<Duration>,
    ) -> Result<ExecOutput, StepError> {
        self.run_checked(step, host, command, label, timeout, |out| {
            Ok(Checked::value(out.clone()))
        })
        .await
    }

    /// [`Shared::run`], with `check` judging a successful command's output before the step is
    /// reported finished (so the `StepFinished` line carries the verdict and the artefacts).
    pub async fn run_checked<R>(
        &self,
        step: &Step,
        host: &str,
        command: &str,
        label: &str,
        timeout: Option<Duration>,
        check: impl FnOnce(&ExecOutput) -> Result<Checked<R>, StepError>,
    ) -> Result<R, StepError> {
        let op = self.begin(step, host, Some(command));
        let opts = ExecOptions {
            timeout,
            ..Default::default()
        };
        match self.session(host).exec(command, &opts).await {
            Ok(out) if out.status.success() => match check(&out) {
                Ok(c) => {
                    let message = c.message.unwrap_or_else(|| label.to_string());
                    op.ok_with(&out, Some(message), c.artefacts);
                    Ok(c.value)
                }
                Err(mut e) => {
                    e.stderr = e.stderr.or_else(|| tail(&out.stderr_lossy()));
                    op.finish(
                        StepStatus::Failed,
                        Some(out.status.to_string()),
                        e.stderr.clone(),
                        Some(e.message.clone()),
                        Vec::new(),
                    );
                    Err(e)
                }
            },
            Ok(out) => {
                let stderr = tail(&out.stderr_lossy());
                // A sudo that refused (`become = "sudo"`): say so, with what to do.
                let refused = crate::preflight::privileges::classify(
                    self.host(host),
                    label,
                    &out.status,
                    &out.stderr_lossy(),
                )
                .filter(|_| !self.host(host).ledger.escalate.is_none());
                let message = match &refused {
                    Some(e) => e.to_string(),
                    None => format!("{label} failed: exit {}", out.status),
                };
                op.finish(
                    StepStatus::Failed,
                    Some(out.status.to_string()),
                    stderr.clone(),
                    Some(message.clone()),
                    Vec::new(),
                );
                Err(StepError {
                    stderr,
                    hints: refused.iter().map(|e| e.hint()).collect(),
                    ..self.error(step, host, message)
                })
            }
            Err(e) => {
                let message = format!("{label} failed: {e}");
                op.fail(&message);
                Err(self.error(step, host, message))
            }
        }
    }

    pub fn error(&self, step: &Step, host: &str, message: impl Into<String>) -> StepError {
        StepError {
            step: step.number,
            kind: step.kind,
            host: host.to_string(),
            message: redact(&message.into()),
            stderr: None,
            hints: Vec::new(),
            code: exit_code::FAILURE,
        }
    }
}

/// What a check of a command's output found: the value for the caller, the one-line message and
/// the artefacts of the `StepFinished` event.
pub struct Checked<R> {
    pub value: R,
    pub message: Option<String>,
    pub artefacts: Vec<Artefact>,
}

impl<R> Checked<R> {
    pub fn value(value: R) -> Self {
        Checked {
            value,
            message: None,
            artefacts: Vec::new(),
        }
    }

    pub fn with(value: R, message: String, artefacts: Vec<Artefact>) -> Self {
        Checked {
            value,
            message: Some(message),
            artefacts,
        }
    }
}

/// One step on one host, between its `StepStarted` and its `StepFinished`.
pub struct Op<'a, T> {
    shared: &'a Shared<T>,
    step: &'a Step,
    host: &'a str,
    started: Instant,
}

impl<T: Transport> Op<'_, T> {
    pub fn finish(
        self,
        status: StepStatus,
        exit_status: Option<String>,
        stderr_tail: Option<String>,
        message: Option<String>,
        artefacts: Vec<Artefact>,
    ) {
        self.shared.emit(Event::StepFinished {
            step: self.step.number,
            kind: kind_name(self.step.kind),
            host: self.host.to_string(),
            status,
            exit_status,
            duration_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
            stderr_tail,
            message: message.map(|m| redact(&m)),
            artefacts,
        });
    }

    pub fn ok(self, message: impl Into<String>, artefacts: Vec<Artefact>) {
        self.finish(StepStatus::Ok, None, None, Some(message.into()), artefacts);
    }

    /// Ok, with the exit status and stderr tail of `out`.
    pub fn ok_with(self, out: &ExecOutput, message: Option<String>, artefacts: Vec<Artefact>) {
        self.finish(
            StepStatus::Ok,
            Some(out.status.to_string()),
            tail(&out.stderr_lossy()),
            message,
            artefacts,
        );
    }

    pub fn fail(self, message: &str) {
        self.finish(
            StepStatus::Failed,
            None,
            None,
            Some(message.to_string()),
            Vec::new(),
        );
    }
}

/// The last lines of `text`, redacted; `None` when blank.
pub fn tail(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return None;
    }
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    Some(redact(&lines[start..].join("\n")))
}

/// Runs `f` on each host of `step` at once (within `--forks`), each given its own copy of the
/// step ([`OwnSteps`]); the first failure in host order
/// (each was reported as an event already). Every host's result is kept in
/// [`Shared::results`] for the engine.
pub async fn per_host<T, F, Fut>(sh: &Arc<Shared<T>>, step: &Step, f: F) -> Result<(), StepError>
where
    T: Transport + 'static,
    F: Fn(Arc<Shared<T>>, Step, String) -> Fut,
    Fut: Future<Output = Result<(), StepError>> + Send + 'static,
{
    let own = OwnSteps::new(step);
    let results = each_host(sh, &step.hosts, |sh, name| f(sh, own.of(&name), name)).await;
    let results: Vec<Result<(), StepError>> = step
        .hosts
        .iter()
        .zip(results)
        .map(|(name, r)| r.unwrap_or_else(|why| Err(sh.error(step, name, &why))))
        .collect();
    if let Ok(mut all) = sh.results.lock() {
        for (name, r) in step.hosts.iter().zip(&results) {
            all.push((step.number, name.clone(), r.clone().err()));
        }
    }
    results.into_iter().collect()
}

/// One host's copy of a step, for the task that works on that host: the step with that host's
/// parameters alone. A copy of the whole step for each host (every host's parameters and
/// command lines) would cost a step time and memory in the square of its hosts. What the run
/// never reads is left out of the copy: the plan's text (`action`, `why`, `checks`) and the
/// rendered command lines, which are the dry run's display.
pub struct OwnSteps<'a> {
    step: &'a Step,
    /// Each host's parameters (the first, as [`Step::params`] finds them).
    by_host: HashMap<&'a str, &'a HostCommands>,
}

impl<'a> OwnSteps<'a> {
    pub fn new(step: &'a Step) -> Self {
        let mut by_host = HashMap::with_capacity(step.commands.len());
        for hc in &step.commands {
            by_host.entry(hc.host.as_str()).or_insert(hc);
        }
        OwnSteps { step, by_host }
    }

    /// `step` on `host` alone: `hosts` is `[host]`, `commands` its own parameters.
    pub fn of(&self, host: &str) -> Step {
        let s = self.step;
        Step {
            id: s.id.clone(),
            number: s.number,
            kind: s.kind,
            hosts: vec![host.to_string()],
            batch: s.batch,
            hop: s.hop.clone(),
            action: String::new(),
            why: String::new(),
            checks: Vec::new(),
            commands: self
                .by_host
                .get(host)
                .map(|hc| {
                    vec![HostCommands {
                        host: hc.host.clone(),
                        params: hc.params.clone(),
                        commands: Vec::new(),
                    }]
                })
                .unwrap_or_default(),
        }
    }
}

/// Runs `f` for each of `hosts`, at most `--forks` at once (the run's one semaphore: never nest
/// a call inside `f`, it would wait for a permit its caller holds), started in the order of
/// `hosts`, each once a fork is free: the tasks of hosts still waiting are not made yet, so a
/// large fleet never holds them all at once. Results in the order of `hosts` (`Err` with the
/// panic's message for a task that panicked: a bug, which the caller reports as a failure of
/// that host).
pub async fn each_host<T, F, Fut, R>(
    shared: &Arc<Shared<T>>,
    hosts: &[String],
    f: F,
) -> Vec<Result<R, String>>
where
    T: Transport + 'static,
    F: Fn(Arc<Shared<T>>, String) -> Fut,
    Fut: Future<Output = R> + Send + 'static,
    R: Send + 'static,
{
    let mut set = crate::tasks::HostTasks::new();
    for (i, h) in hosts.iter().enumerate() {
        // The semaphore is never closed, so the permit always comes.
        let permit = shared.forks.clone().acquire_owned().await;
        let fut = f(shared.clone(), h.clone());
        // Keyed by position: a host may be named twice in no plan, but the order is the answer's.
        set.spawn(&i.to_string(), async move {
            let _permit = permit;
            fut.await
        });
    }
    let mut out: Vec<Result<R, String>> = (0..hosts.len())
        .map(|_| Err("internal error: the task for this host never ended".into()))
        .collect();
    while let Some((i, r)) = set.next().await {
        if let Some(slot) = i.parse::<usize>().ok().and_then(|i| out.get_mut(i)) {
            *slot = r;
        }
    }
    out
}
