//! The runner: one engine that carries out a [`Plan`] on connected hosts. For each step it
//! probes every host first ([`probe`]: already done by an earlier run?), applies the step on the
//! hosts where it is not, and records each host's step state (`started`, `done`,
//! `already_done`, `failed`, `undone`, `skipped`, `cancelled`) as an event the journal keeps.
//! Per-host work (probes and applies) runs at most `--forks` hosts at once. The failure policy
//! ([`failures`]): a failure stops the run, and what is safe to undo is then undone in reverse
//! order ([`undo`]); within a budget (`--max-fail N`) a host whose failure endangers nobody else
//! is undone alone and left out while the others go on. A cancellation (Ctrl-C) starts nothing
//! new and undoes nothing: the run is left to `--resume`. The fleet lock is taken first and
//! released last, also on failure.
//!
//! Preflight is the caller's: the runner starts at the `lock` step of a plan that passed it.

mod backup;
mod ctx;
mod decommission;
pub mod failures;
mod hook;
mod known;
mod migrate;
mod params;
pub mod probe;
mod restore;
mod service;
mod stage;
mod switch;
mod undo;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Semaphore;

use crate::events::{Event, EventSink, HostSummary, StepState};
use crate::exit_code;
use crate::facts::HostFacts;
use crate::inventory::ResolvedHost;
use crate::lock::{self, LeaseConfig, Liveness, LockError, LockOwner, Refusal};
use crate::plan::{HostAction, Plan, Step, StepKind, Strategy};
use crate::ssh::Transport;

pub use crate::plan::commands::{DUMP_FILE, backup_dir, release_binary, release_dir};
pub use backup::{parse_postgres_backup, parse_sqlite_backup};
pub use ctx::{Changes, StepError, kind_name};
pub use failures::{FailBudget, FailurePolicy, HostFailure};
pub use migrate::{ListProblem, check_listed};
pub use service::service_running;

use ctx::{OwnSteps, Shared};
use probe::Probe;

/// How the run behaves, beyond what the plan says.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub run_id: String,
    /// Written into each node's lock.
    pub owner: LockOwner,
    /// `--break-lock`: break a lock whose holder is not a live fleetup on this machine.
    pub break_lock: bool,
    /// The bytes of each local binary the plan uploads (the target's and each hop's), read
    /// once, by SHA-256 (none for a URL, which the nodes download).
    pub binaries: BTreeMap<String, Arc<Vec<u8>>>,
    /// How long a node may take to stop.
    pub stop_timeout: Duration,
    /// How long a node may take to serve the target after its start.
    pub health_timeout: Duration,
    /// Pause between two polls of a service or API.
    pub poll_interval: Duration,
    /// Uploads at once; each also holds one of the `forks`, so the smaller of the two bounds
    /// uploads (kept apart: the binary leaves this machine once per upload).
    pub parallel_uploads: usize,
    /// `--forks`: hosts the engine works on at once (probes and applies). Steps that are
    /// sequential by design (the stops, the locks, the migration) stay one host at a time.
    pub forks: usize,
    /// What a host's failure does to the run (`--max-fail`).
    pub failure: FailurePolicy,
    /// What the run being resumed (`--resume`) recorded as done.
    pub prior: PriorRun,
    /// Set on Ctrl-C / SIGTERM: start nothing new.
    pub cancel: Cancel,
    /// The node locks' lease: refreshed every `refresh` while the run holds them.
    pub lease: LeaseConfig,
    /// `--resume`: every step is probed on the nodes, none answered from the audit's facts.
    pub resumed: bool,
    /// `--pause-after-canary`: asked once the canary batch passed, while later batches remain.
    pub pause: Option<Pause>,
}

/// `--pause-after-canary`: given the canary batch's hosts, says whether the run goes on. It may
/// block (a prompt): the engine asks it on a thread of its own and stops waiting on Ctrl-C.
#[derive(Clone)]
pub struct Pause(pub Arc<PauseFn>);

/// What [`Pause`] calls: the canary batch's hosts in, go on or not out.
pub type PauseFn = dyn Fn(&[String]) -> bool + Send + Sync;

impl std::fmt::Debug for Pause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pause(..)")
    }
}

/// What an interrupted run recorded in its journal, for `--resume`: the probes trust it where
/// the hosts cannot tell (a backup taken by this run id).
#[derive(Debug, Clone, Default)]
pub struct PriorRun {
    /// `host → backup dir` of each backup the run finished.
    pub backups: BTreeMap<String, String>,
    /// Hosts whose storage the (rollback) run finished restoring: their nodes stayed stopped
    /// since, so a storage that holds nothing newer than the rollback's version is not restored
    /// again.
    pub restored: BTreeSet<String>,
}

impl PriorRun {
    pub fn backup_done(&self, host: &str) -> Option<&str> {
        self.backups.get(host).map(String::as_str)
    }

    pub fn restore_done(&self, host: &str) -> bool {
        self.restored.contains(host)
    }
}

/// A cancellation request shared by the signal handler and the engine.
#[derive(Debug, Clone, Default)]
pub struct Cancel(Arc<AtomicBool>);

impl Cancel {
    pub fn request(&self) {
        self.0.store(true, Ordering::SeqCst);
    }

    pub fn requested(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// The connected fleet: every selected host, its session and its facts.
pub struct Fleet<T> {
    pub hosts: Vec<ResolvedHost>,
    pub sessions: BTreeMap<String, T>,
    pub facts: BTreeMap<String, HostFacts>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Succeeded,
    /// A guard refused to go on; nothing changed that was not undone.
    Blocked,
    /// Another run holds the lock of some node.
    LockHeld,
    Failed,
    /// Ctrl-C / SIGTERM: stopped between steps, resumable.
    Cancelled,
    /// `--pause-after-canary` told to stop after the canary batch: resumable, not a failure.
    Paused,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Succeeded => "succeeded",
            Outcome::Blocked => "blocked",
            Outcome::LockHeld => "lock-held",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
            Outcome::Paused => "paused",
        }
    }

    pub fn exit_code(self) -> i32 {
        match self {
            Outcome::Succeeded => exit_code::SUCCESS,
            Outcome::Blocked => exit_code::BLOCKED,
            Outcome::LockHeld => exit_code::LOCK_HELD,
            Outcome::Failed => exit_code::FAILURE,
            Outcome::Cancelled => exit_code::CANCELLED,
            Outcome::Paused => exit_code::SUCCESS,
        }
    }
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunReport {
    pub outcome: Outcome,
    /// The error that stopped the run; when failed hosts were left behind and the run went on,
    /// the first of their errors (its hints name the others).
    pub error: Option<StepError>,
    /// Each host that failed a step, in the order they failed: those the run went on without
    /// (`contained`) and the one that stopped it.
    pub failed: Vec<HostFailure>,
    /// Each node touched by the plan, with its versions and state.
    pub hosts: Vec<HostSummary>,
    pub changes: Changes,
    /// `(step number, kind, duration)` of each step that ran.
    pub timings: Vec<(usize, StepKind, Duration)>,
    /// Locks that could not be released (the operator must remove them).
    pub unlock_errors: Vec<String>,
}

/// Carries out `plan` (its preflight already passed) on `fleet`.
pub async fn execute<T: Transport + Clone + 'static>(
    plan: Plan,
    fleet: Fleet<T>,
    cfg: RunConfig,
    sink: Arc<dyn EventSink>,
) -> RunReport {
    let forks = Arc::new(Semaphore::new(cfg.forks.max(1)));
    let sh = Arc::new(Shared {
        hosts: fleet
            .hosts
            .into_iter()
            .map(|h| (h.name.clone(), h))
            .collect(),
        sessions: fleet.sessions,
        facts: fleet.facts,
        plan,
        cfg,
        sink,
        changes: Mutex::new(Changes::default()),
        forks,
        results: Mutex::default(),
        failed: Mutex::default(),
        naming: std::sync::OnceLock::new(),
    });
    let mut timings = Vec::new();
    let mut error = None;
    let mut run = Progress {
        strategy: sh.plan.strategy,
        ..Progress::default()
    };
    let mut refresher: Option<lock::Refresher> = None;
    let mut paused = false;
    let steps = sh.plan.steps.clone();
    for (i, step) in steps.iter().enumerate() {
        let step = step.clone();
        if matches!(step.kind, StepKind::Preflight | StepKind::Unlock) {
            // The caller ran the preflight; the unlock step runs below, whatever happened.
            continue;
        }
        if sh.cfg.cancel.requested() {
            error = Some(cancelled(&sh, &step));
            break;
        }
        run.strategy = sh.plan.strategy_of(&step);
        let started = Instant::now();
        let result = if step.kind == StepKind::Lock {
            let r = take_locks(&sh, &step).await;
            refresher = Some(keep_leases(&sh));
            r
        } else {
            run_step(&sh, &step, &mut run).await
        };
        timings.push((step.number, step.kind, started.elapsed()));
        if let Err(e) = result {
            error = Some(e);
            break;
        }
        if canary_passed(&steps, i)
            // Once: after the canary batch of the first hop.
            && step.hop.as_ref() == sh.plan.hops.first().map(|h| &h.target)
            && let Some(pause) = &sh.cfg.pause
            && !ask(pause, &sh.plan.batches[0], &sh.cfg.cancel).await
        {
            // Ctrl-C at the prompt is a cancellation, as anywhere else.
            match steps.get(i + 1) {
                Some(next) if sh.cfg.cancel.requested() => error = Some(cancelled(&sh, next)),
                _ => paused = true,
            }
            break;
        }
    }
    let was_cancelled = error
        .as_ref()
        .is_some_and(|e| e.code == exit_code::CANCELLED);
    if error.is_some() && !was_cancelled {
        undo::undo(&sh, &run.applied, run.strategy).await;
    }
    if error.is_none() {
        error = run
            .first_contained
            .take()
            .map(|e| went_on(e, &run.failures, sh.cfg.failure));
    }
    let outcome = match settle(
        &mut error,
        sh.changes().storage_touched,
        run.failures.iter().any(|f| f.contained),
    ) {
        Outcome::Succeeded if paused => Outcome::Paused,
        other => other,
    };
    // The state report is read while the locks still keep other runs away.
    let hosts = summarize(&sh, &sh.changes(), error.is_some(), &run.failures).await;
    if let Some(r) = refresher {
        r.stop().await;
    }
    let unlock_errors = release_locks(&sh).await;
    let changes = sh.changes();
    sh.emit(Event::Summary {
        hosts: hosts.clone(),
        artefacts: changes.artefacts.clone(),
    });
    RunReport {
        outcome,
        error,
        failed: run.failures,
        hosts,
        changes,
        timings,
        unlock_errors,
    }
}

/// Step `i` ends the canary batch (batch 1) and later steps work on other batches.
fn canary_passed(steps: &[Step], i: usize) -> bool {
    steps[i].batch == Some(1)
        && steps[i + 1..]
            .iter()
            .find(|s| s.kind != StepKind::Unlock)
            .is_some_and(|s| s.batch.is_some_and(|b| b > 1))
}

/// Asks `pause` on a thread of its own (it may wait for a key); Ctrl-C stops the wait, and the
/// run then stops as if told so.
async fn ask(pause: &Pause, canary: &[String], cancel: &Cancel) -> bool {
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let (f, hosts) = (pause.0.clone(), canary.to_vec());
    std::thread::spawn(move || {
        let _ = tx.send(f(&hosts));
    });
    loop {
        tokio::select! {
            answer = &mut rx => return answer.unwrap_or(false),
            () = tokio::time::sleep(Duration::from_millis(100)) => {
                if cancel.requested() {
                    return false;
                }
            }
        }
    }
}

/// What the engine keeps from step to step.
#[derive(Default)]
struct Progress {
    /// `(kind, host)` of each step applied (or attempted), in order: what the undo walks back.
    applied: Vec<(StepKind, String)>,
    failures: Vec<HostFailure>,
    /// The first failure the run went on without: the run's error when nothing stops it.
    first_contained: Option<StepError>,
    /// The strategy of the step under way (a multi-hop plan's hops may differ): the undo's.
    strategy: Strategy,
}

/// The run's error when it went on past contained failures: the first one, its hints naming
/// every failed host.
fn went_on(mut e: StepError, failures: &[HostFailure], policy: FailurePolicy) -> StepError {
    let names: Vec<String> = failures
        .iter()
        .map(|f| format!("`{}` (step {}, {})", f.host, f.step, kind_name(f.kind)))
        .collect();
    e.code = exit_code::FAILURE;
    e.hints.push(format!(
        "the run went on without the failed host(s) (`--max-fail {}`); failed: {}",
        policy.max_failed,
        names.join(", ")
    ));
    e
}

/// Keeps the leases of the locks this run took fresh while it runs; a lease that cannot be
/// refreshed is told (another run may break it once it expired).
fn keep_leases<T: Transport + Clone + 'static>(sh: &Arc<Shared<T>>) -> lock::Refresher {
    let locks: Vec<(ResolvedHost, T)> = sh
        .changes()
        .locked
        .iter()
        .map(|n| (sh.host(n).clone(), sh.session(n).clone()))
        .collect();
    let sink = sh.sink.clone();
    let on_failure: lock::RefreshFailed = Arc::new(move |host: &str, e: &LockError| {
        sink.emit(&Event::Notice {
            host: Some(host.to_string()),
            message: format!("the lock's lease could not be refreshed: {e}"),
        });
    });
    lock::spawn_refresher(locks, &sh.cfg.run_id, sh.cfg.lease, on_failure)
}

/// The error that stops the run at `step` after a cancellation.
fn cancelled<T: Transport>(sh: &Shared<T>, step: &Step) -> StepError {
    let mut e = sh.error(
        step,
        step.hosts.first().map_or("", String::as_str),
        "cancelled (Ctrl-C or SIGTERM) before this step: nothing new was started",
    );
    e.code = exit_code::CANCELLED;
    e
}

fn step_state<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    host: &str,
    state: StepState,
    message: Option<String>,
) {
    sh.emit(Event::StepState {
        id: step.id.clone(),
        step: step.number,
        kind: kind_name(step.kind),
        host: host.to_string(),
        state,
        message: message.map(|m| crate::redact::redact(&m)),
    });
}

/// One step: probe each host still going, apply on those where it is not done, record each
/// host's state. A failure is contained when the policy allows it ([`failures::containable`]):
/// the host is marked failed, undone alone and left out, and the step goes on with the hosts it
/// had not finished; otherwise the step (and the run) stops on it.
async fn run_step<T: Transport + Clone + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
    run: &mut Progress,
) -> Result<(), StepError> {
    let mut hosts: Vec<String> = step.hosts.iter().filter(|h| sh.going(h)).cloned().collect();
    if step.kind == StepKind::Decommission {
        // An old node whose replacement was left behind keeps serving in its place.
        hosts.retain(|h| match decommission::held_back(sh, h) {
            Some(why) => {
                step_state(sh, step, h, StepState::Skipped, Some(why));
                false
            }
            None => true,
        });
    }
    // The kinds each host applied so far, gathered once: `applied` grows with hosts × steps.
    let mut applied: HashMap<&str, Vec<StepKind>> = HashMap::new();
    for (k, h) in &run.applied {
        applied.entry(h.as_str()).or_default().push(*k);
    }
    let own = OwnSteps::new(step);
    let probes = ctx::each_host(sh, &hosts, |sh, name| {
        let step = own.of(&name);
        let earlier = applied.get(name.as_str()).cloned().unwrap_or_default();
        async move {
            match known::answer(&sh, &step, &name, &earlier) {
                Some(p) => p,
                None => probe::probe(&sh, &step, &name).await,
            }
        }
    })
    .await;
    let mut todo = Vec::new();
    for (host, p) in hosts.iter().zip(probes) {
        match p {
            Ok(Probe::Done(why)) => step_state(sh, step, host, StepState::AlreadyDone, Some(why)),
            _ => todo.push(host.clone()),
        }
    }
    if todo.is_empty() {
        return Ok(());
    }
    if sh.cfg.cancel.requested() {
        return Err(cancelled(sh, step));
    }
    for host in &todo {
        step_state(sh, step, host, StepState::Started, None);
    }
    loop {
        let mut sub = step.clone();
        sub.hosts = todo.clone();
        let todo_set: HashSet<&str> = todo.iter().map(String::as_str).collect();
        sub.commands.retain(|c| todo_set.contains(c.host.as_str()));
        let result = dispatch(sh, &sub).await;
        let results = sh.take_results(step.number);
        let e = match result {
            Ok(()) => {
                for host in todo {
                    step_state(sh, step, &host, StepState::Done, None);
                    run.applied.push((step.kind, host));
                }
                return Ok(());
            }
            Err(e) => e,
        };
        let outcome = StepOutcome::of(&todo, e, results);
        if let Err(stop) = contain(sh, step, &outcome, run).await {
            stopped(sh, step, &todo, &outcome, run).await;
            return Err(stop);
        }
        // The hosts the step had not finished go on: those a sequential step did not reach yet.
        let mut next = Vec::new();
        for host in todo.iter().filter(|h| sh.going(h)) {
            if outcome.finished.contains(host.as_str())
                || probe::probe(sh, step, host).await != Probe::ToDo
            {
                step_state(sh, step, host, StepState::Done, None);
                run.applied.push((step.kind, host.clone()));
            } else {
                next.push(host.clone());
            }
        }
        if next.is_empty() {
            return Ok(());
        }
        if sh.cfg.cancel.requested() {
            for host in &next {
                step_state(
                    sh,
                    step,
                    host,
                    StepState::Cancelled,
                    Some("cancelled before it was applied here".into()),
                );
            }
            return Err(cancelled(sh, step));
        }
        todo = next;
    }
}

/// How one application of a step ended on its hosts.
struct StepOutcome {
    /// Each host that failed, in the step's host order: those the per-host steps recorded, and
    /// the one a sequential step stopped on.
    errors: Vec<StepError>,
    /// Hosts known to have finished the step.
    finished: HashSet<String>,
}

impl StepOutcome {
    fn of(todo: &[String], e: StepError, results: Vec<(String, Option<StepError>)>) -> Self {
        let mut errors: Vec<StepError> = results.iter().filter_map(|(_, r)| r.clone()).collect();
        if !errors.iter().any(|x| x.host == e.host) {
            errors.push(e);
        }
        let order: HashMap<&str, usize> = todo
            .iter()
            .enumerate()
            .map(|(i, t)| (t.as_str(), i))
            .rev()
            .collect();
        errors.sort_by_key(|x| order.get(x.host.as_str()).copied().unwrap_or(usize::MAX));
        let failed: HashSet<&str> = errors.iter().map(|x| x.host.as_str()).collect();
        let finished = results
            .into_iter()
            .filter(|(h, r)| r.is_none() && !failed.contains(h.as_str()))
            .map(|(h, _)| h)
            .collect();
        StepOutcome { errors, finished }
    }
}

/// Contains every failure of `outcome`, or none: the first one the policy does not allow is the
/// error that stops the run (with the policy's reason as a hint).
async fn contain<T: Transport + Clone + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
    outcome: &StepOutcome,
    run: &mut Progress,
) -> Result<(), StepError> {
    let mut failed = sh.failed_hosts();
    for e in &outcome.errors {
        let verdict = failures::containable(
            &sh.plan,
            sh.cfg.failure,
            step.kind,
            e.code,
            &e.host,
            &failed,
        );
        if let Err(why) = verdict {
            let mut stop = e.clone();
            stop.hints.extend(why.hint(&e.host));
            return Err(stop);
        }
        failed.push(e.host.clone());
    }
    for e in &outcome.errors {
        step_state(
            sh,
            step,
            &e.host,
            StepState::Failed,
            Some(e.message.clone()),
        );
        run.applied.push((step.kind, e.host.clone()));
        if let Ok(mut f) = sh.failed.lock() {
            f.push(e.host.clone());
        }
        run.failures.push(HostFailure {
            host: e.host.clone(),
            step: step.number,
            kind: step.kind,
            message: e.message.clone(),
            contained: true,
        });
        sh.emit(Event::Notice {
            host: Some(e.host.clone()),
            message: format!(
                "failed at step {} ({}): left out of the rest of the run, which goes on with the other hosts ({} of `--max-fail {}` failed)",
                step.number,
                kind_name(step.kind),
                sh.failed_hosts().len(),
                sh.cfg.failure.max_failed
            ),
        });
        undo::undo_host(sh, &run.applied, &e.host, sh.plan.strategy_of(step)).await;
        run.applied.retain(|(_, h)| h != &e.host);
        if run.first_contained.is_none() {
            run.first_contained = Some(e.clone());
        }
    }
    Ok(())
}

/// The states of a step that stops the run: each failed host `failed` (or `cancelled`), the
/// others done where they finished (or the probe says so), skipped otherwise. All of them are
/// left to the undo.
async fn stopped<T: Transport + Clone + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
    todo: &[String],
    outcome: &StepOutcome,
    run: &mut Progress,
) {
    let first = &outcome.errors[0].host;
    for host in todo {
        if let Some(e) = outcome.errors.iter().find(|e| &e.host == host) {
            let state = if e.code == exit_code::CANCELLED {
                StepState::Cancelled
            } else {
                run.failures.push(HostFailure {
                    host: host.clone(),
                    step: step.number,
                    kind: step.kind,
                    message: e.message.clone(),
                    contained: false,
                });
                StepState::Failed
            };
            step_state(sh, step, host, state, Some(e.message.clone()));
        } else if outcome.finished.contains(host.as_str())
            || probe::probe(sh, step, host).await != Probe::ToDo
        {
            step_state(sh, step, host, StepState::Done, None);
        } else {
            step_state(
                sh,
                step,
                host,
                StepState::Skipped,
                Some(format!("not finished: the step failed on `{first}`")),
            );
        }
        run.applied.push((step.kind, host.clone()));
    }
}

/// Applies `step` on its hosts: the kind's own implementation.
async fn dispatch<T: Transport + Clone + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    match step.kind {
        StepKind::StopService => service::stop(sh, step).await,
        StepKind::ConfirmStopped => service::confirm_stopped(sh, step).await,
        StepKind::Backup => backup::run(sh, step).await,
        StepKind::Stage => stage::run(sh, step).await,
        StepKind::Migrate => migrate::run(sh, step).await,
        StepKind::Switch => switch::run(sh, step).await,
        StepKind::Restore => restore::run(sh, step).await,
        StepKind::SwitchBack => switch::run_back(sh, step).await,
        StepKind::StartService => service::start(sh, step).await,
        StepKind::HealthGate => service::health_gate(sh, step).await,
        StepKind::PreHook | StepKind::PostHook => hook::run(sh, step).await,
        StepKind::Decommission => decommission::run(sh, step).await,
        StepKind::Preflight | StepKind::Lock | StepKind::Unlock => Ok(()),
    }
}

/// The outcome of a run that stopped on `error`. Blocked promises that nothing changed: once a
/// `storage upgrade` ran that no longer holds, so a guard's refusal after it (which the migrate
/// step's order should make impossible) is a failure, with the state report to read; and so is
/// any run that went on past a failed host (`went_on`).
fn settle(error: &mut Option<StepError>, storage_touched: bool, went_on: bool) -> Outcome {
    match error {
        None => Outcome::Succeeded,
        Some(e) if e.code == exit_code::LOCK_HELD => Outcome::LockHeld,
        Some(e) if e.code == exit_code::CANCELLED => Outcome::Cancelled,
        Some(e) if e.code == exit_code::BLOCKED && !storage_touched && !went_on => Outcome::Blocked,
        Some(e) => {
            if e.code == exit_code::BLOCKED && !storage_touched {
                e.code = exit_code::FAILURE;
            } else if e.code == exit_code::BLOCKED {
                e.code = exit_code::FAILURE;
                e.hints.push(
                    "a `storage upgrade` already ran, so the storage may differ from the backup: the backup is kept and no node was started; see each node's state in the summary".into(),
                );
            }
            Outcome::Failed
        }
    }
}

/// Takes the lock on each node: the plan's first node alone (so two runs contend on the same
/// node first and the loser takes nothing else), then the others at once. A held lock: shown,
/// then with `--break-lock` broken when [`lock::break_decision`] allows it (an expired lease, or
/// a holder of this machine that is provably gone); otherwise the run stops and the locks taken
/// are released.
async fn take_locks<T: Transport + Clone + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    let Some((first, rest)) = step.hosts.split_first() else {
        return Ok(());
    };
    lock_one(sh, step, first).await?;
    let own = OwnSteps::new(step);
    let results = ctx::each_host(sh, rest, |sh, name| {
        let step = own.of(&name);
        async move { lock_one(&sh, &step, &name).await }
    })
    .await;
    // A task that ended without an answer (it panicked) may hold a lock it did not record.
    rest.iter()
        .zip(results)
        .find_map(|(name, r)| match r {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e),
            Err(why) => Some(sh.error(
                step,
                name,
                format!("{why}; the lock task may hold a lock it did not record"),
            )),
        })
        .map_or(Ok(()), Err)
}

/// Takes the lock of one node (see [`take_locks`]). A lock taken fresh that finds the
/// generation the facts read, on a node the audit found unlocked, tells that no other run
/// changed the node since: its facts stay current ([`known`]).
async fn lock_one<T: Transport>(sh: &Shared<T>, step: &Step, name: &str) -> Result<(), StepError> {
    let lease = sh.cfg.lease;
    let here = &sh.cfg.owner.local_host;
    let host = sh.host(name);
    let t = sh.session(name);
    let op = sh.begin(step, name, None);
    let first = lock::acquire(t, host, &sh.cfg.owner, &lease).await;
    let facts_current = match (&first, sh.facts(name)) {
        (Ok(generation), Some(f)) => !f.locked && *generation == f.lock_generation,
        _ => false,
    };
    let mut result = first.map(|_| ());
    // `--resume`: the lock of the run being resumed is this run's own; take it over.
    if let Err(LockError::Held { held, .. }) = &result
        && held
            .holder
            .owner()
            .is_some_and(|o| o.run_id == sh.cfg.run_id)
    {
        sh.emit(Event::Notice {
            host: Some(name.to_string()),
            message: format!(
                "taking over the lock `{}` of the run being resumed",
                lock::lock_path(host)
            ),
        });
        result = lock::take_over(t, host, &sh.cfg.owner, &lease).await;
    }
    if let Err(LockError::Held { held, .. }) = &result
        && sh.cfg.break_lock
    {
        let shown = held.describe(lease.ttl);
        sh.emit(Event::Notice {
            host: Some(name.to_string()),
            message: format!("the lock `{}` is held by {shown}", lock::lock_path(host)),
        });
        let liveness = held
            .holder
            .owner()
            .map_or(Liveness::Unknown, |o| lock::liveness_here(o, here));
        result = match lock::break_decision(held, here, liveness, lease.ttl) {
            Ok(_) => match lock::break_lock(t, host, held).await {
                Ok(()) => {
                    sh.emit(Event::LockBroken {
                        host: name.to_string(),
                        holder: shown,
                    });
                    lock::acquire(t, host, &sh.cfg.owner, &lease)
                        .await
                        .map(|_| ())
                }
                Err(e) => Err(e),
            },
            Err(refusal) => Err(LockError::Refused {
                host: name.to_string(),
                holder: Box::new(held.holder.clone()),
                refusal,
            }),
        };
    }
    match result {
        Ok(()) => {
            sh.change(|c| {
                c.locked.push(name.to_string());
                if facts_current {
                    c.facts_current.insert(name.to_string());
                }
            });
            op.ok(format!("`{}` taken", lock::lock_path(host)), Vec::new());
        }
        Err(err) => {
            let mut e = sh.error(step, name, err.to_string());
            let by_hand = format!("remove `{}` on `{name}` by hand", lock::lock_path(host));
            match &err {
                LockError::Held { held, .. } => {
                    e.code = exit_code::LOCK_HELD;
                    let alive_here = held
                        .holder
                        .owner()
                        .is_some_and(|o| lock::holder_alive_here(o, here));
                    e.hints.push(if alive_here {
                        "that run is still going on this machine: wait for it to finish".into()
                    } else {
                        format!(
                            "if no fleetup run is going on (the holder crashed), run again with `--break-lock`: it breaks a lock whose lease expired or whose holder died on this machine; or {by_hand}"
                        )
                    });
                }
                LockError::Refused { refusal, .. } => {
                    e.code = exit_code::LOCK_HELD;
                    e.hints.push(match refusal {
                        Refusal::AliveHere { .. } => {
                            "that run is still going on this machine: wait for it to finish".into()
                        }
                        Refusal::FreshLease { .. } => format!(
                            "its holder keeps the lease fresh, so it probably still runs on its machine: wait for it to finish; if that machine is gone, run again once the lease expired, or {by_hand}"
                        ),
                        Refusal::Unjudged => format!("check the node, then {by_hand}"),
                    });
                }
                _ if sh.cfg.break_lock => e.hints.push("the lock could not be broken".into()),
                _ => {}
            }
            op.fail(&e.message);
            return Err(e);
        }
    }
    Ok(())
}

/// Releases every lock this run took, at once: the `unlock` step. Returns the failures.
async fn release_locks<T: Transport + Clone + 'static>(sh: &Arc<Shared<T>>) -> Vec<String> {
    let Some(step) = sh
        .plan
        .steps
        .iter()
        .find(|s| s.kind == StepKind::Unlock)
        .cloned()
    else {
        return Vec::new();
    };
    let locked = sh.changed(|c| c.locked.clone());
    let own = OwnSteps::new(&step);
    ctx::each_host(sh, &locked, |sh, name| {
        let step = own.of(&name);
        async move {
            let op = sh.begin(&step, &name, None);
            match lock::release(sh.session(&name), sh.host(&name), &sh.cfg.run_id).await {
                Ok(()) => {
                    op.ok("released", Vec::new());
                    None
                }
                Err(e) => {
                    let message = format!("{e}; remove it by hand once you checked the node");
                    op.fail(&message);
                    Some(message)
                }
            }
        }
    })
    .await
    .into_iter()
    .zip(&locked)
    .filter_map(|(r, name)| {
        r.unwrap_or_else(|why| {
            Some(format!(
                "the unlock task of `{name}` ended without an answer ({why}); check its lock by hand"
            ))
        })
    })
    .collect()
}

/// Each node the plan touches: versions before and after, and its state. After a failure the
/// state is read live from the node, so the report says what really runs where; a host that
/// failed a step says which first.
async fn summarize<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    c: &Changes,
    failed: bool,
    failures: &[HostFailure],
) -> Vec<HostSummary> {
    let mut out = Vec::new();
    // After a failure, every node's live state, read at once (within `--forks`): one node after
    // the other, a large fleet's report would wait hosts × three round trips.
    let mut live: HashMap<String, String> = HashMap::new();
    if failed {
        let names: Vec<String> = sh
            .plan
            .hosts
            .iter()
            .filter(|hp| hp.action != HostAction::AlreadyAtTarget)
            .map(|hp| hp.name.clone())
            .collect();
        let states = ctx::each_host(sh, &names, |sh, name| async move {
            match sh.sessions.get(name.as_str()) {
                Some(t) => service::live_state(t, sh.host(&name)).await,
                None => "not reachable".into(),
            }
        })
        .await;
        for (name, state) in names.into_iter().zip(states) {
            live.insert(
                name,
                state.unwrap_or_else(|why| format!("state not read ({why})")),
            );
        }
    }
    // Looked up once per host: sets, not the lists (as long as the fleet).
    let switched_on: HashSet<&str> = c.switched.iter().map(|(h, _)| h.as_str()).collect();
    let healthy: HashSet<&str> = c.healthy.iter().map(String::as_str).collect();
    let decommissioned: HashSet<&str> = c.decommissioned.iter().map(String::as_str).collect();
    let mut failed_at: HashMap<&str, &HostFailure> = HashMap::new();
    for f in failures {
        failed_at.entry(f.host.as_str()).or_insert(f);
    }
    for hp in &sh.plan.hosts {
        if hp.action == HostAction::AlreadyAtTarget {
            continue;
        }
        let name = &hp.name;
        let from = hp.current.as_ref().map(ToString::to_string);
        let switched = switched_on.contains(name.as_str());
        let to = if switched {
            Some(sh.plan.target.to_string())
        } else {
            from.clone()
        };
        let state = if !failed {
            if healthy.contains(name.as_str()) {
                format!("running `{}`, healthy", sh.plan.target)
            } else if decommissioned.contains(name.as_str()) {
                "decommissioned: stopped through its service manager, its binary and data kept"
                    .to_string()
            } else {
                "unchanged".to_string()
            }
        } else {
            let live = live.remove(name.as_str()).unwrap_or_default();
            let binary = if switched {
                format!("binary switched to `{}`", sh.plan.target)
            } else {
                "binary not switched".to_string()
            };
            match failed_at.get(name.as_str()) {
                Some(f) => format!(
                    "failed at step {} ({}): {binary}, {live}",
                    f.step,
                    kind_name(f.kind)
                ),
                None => format!("{binary}, {live}"),
            }
        };
        out.push(HostSummary {
            host: name.clone(),
            from,
            to,
            state,
        });
    }
    out
}

#[cfg(test)]
pub(crate) mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::events::Recorder;
    use crate::facts::{HostFacts, ServiceState, StorageDriver, StorageFacts};
    use crate::plan::{BinarySource, PlanOptions, Strategy, build_plan};
    use crate::policy::PolicyTable;
    use crate::scripted::{self, LISTED, Node, Spec, Storage, Traffic, spec as node};
    use crate::ssh::ExecOptions;
    use crate::version::Version;

    /// A host with the built-in ledger settings, for the script tests of the steps.
    pub use crate::scripted::host;

    mod hooks;

    /// How a scripted fleet is run, beyond its nodes.
    #[derive(Clone, Copy)]
    struct Setup {
        forks: usize,
        max_failed: failures::FailBudget,
        /// The nodes share one Postgres database (SQLite files of their own otherwise).
        postgres: bool,
        backup: bool,
        /// Count (and pace) the transport calls in flight.
        flight: bool,
    }

    impl Default for Setup {
        fn default() -> Self {
            Setup {
                forks: 50,
                max_failed: failures::FailBudget::Count(0),
                postgres: false,
                backup: true,
                flight: false,
            }
        }
    }

    async fn run_fleet(nodes: Vec<Spec>) -> (RunReport, Vec<Node>) {
        let ran = run_fleet_with(nodes, Setup::default()).await;
        (ran.report, ran.fakes)
    }

    /// What a scripted run did.
    struct Ran {
        report: RunReport,
        fakes: Vec<Node>,
        /// The most transport calls in flight at once (with `Setup::flight`).
        most_in_flight: usize,
        events: Vec<Event>,
    }

    impl Ran {
        /// `(host, state)` of each `step_state` event of steps of `kind`.
        fn states(&self, kind: StepKind) -> Vec<(String, StepState)> {
            self.events
                .iter()
                .filter_map(|e| match e {
                    Event::StepState {
                        kind: k,
                        host,
                        state,
                        ..
                    } if *k == kind_name(kind) => Some((host.clone(), *state)),
                    _ => None,
                })
                .collect()
        }
    }

    /// Runs `nodes` as `setup` says.
    async fn run_fleet_with(nodes: Vec<Spec>, setup: Setup) -> Ran {
        run_fleet_edited(nodes, setup, |_| {}).await
    }

    /// [`run_fleet`], with the plan changed by `edit` before it runs.
    async fn run_plan(nodes: Vec<Spec>, edit: impl FnOnce(&mut Plan)) -> (RunReport, Vec<Node>) {
        let ran = run_fleet_edited(nodes, Setup::default(), edit).await;
        (ran.report, ran.fakes)
    }

    /// [`run_fleet_with`], with the plan changed by `edit` before it runs.
    async fn run_fleet_edited(nodes: Vec<Spec>, setup: Setup, edit: impl FnOnce(&mut Plan)) -> Ran {
        // Each call held 2 ms, so an unbounded engine would be seen running more at once.
        let traffic = setup.flight.then(|| Traffic::new(Duration::from_millis(2)));
        let storage = if setup.postgres {
            Storage::Postgres
        } else {
            Storage::Sqlite
        };
        let fleet = scripted::Fleet::new(&nodes, storage, traffic.clone(), true);
        let mut plan = fleet.plan(setup.backup);
        assert!(!plan.is_blocked(), "{:?}", plan.blockers);
        edit(&mut plan);
        let fakes = fleet.nodes.clone();
        let recorder = Arc::new(Recorder::default());
        let report = execute(plan, fleet.connected(), config(setup), recorder.clone()).await;
        Ran {
            report,
            fakes,
            most_in_flight: traffic.map_or(0, |t| t.most_in_flight()),
            events: recorder.events(),
        }
    }

    /// The run's settings for a scripted fleet (short timeouts).
    fn config(setup: Setup) -> RunConfig {
        RunConfig {
            failure: FailurePolicy {
                max_failed: setup.max_failed,
            },
            ..scripted::run_config(setup.forks)
        }
    }

    /// A stopped single SQLite node; `listed` is what `storage list` prints (before and after
    /// `scan`), `expected` the inventory's ledgers.
    async fn run_single(
        listed: &'static str,
        expected: Option<&'static [&'static str]>,
    ) -> (RunReport, Node) {
        let (report, mut fakes) = run_fleet(vec![Spec {
            listed: (listed, listed),
            expected,
            ..node("node-1")
        }])
        .await;
        (report, fakes.remove(0))
    }

    fn upgrades(fake: &Node) -> Vec<String> {
        fake.commands()
            .iter()
            .filter_map(|c| c.split("storage upgrade ").nth(1).map(str::to_string))
            .collect()
    }

    /// An old systemd node and its replacement, both running; the replacement serves `1.8.2`
    /// (what the fakes' `/_info` reports) when `serving`.
    async fn decommission_fleet(serving: bool) -> Ran {
        let old = host("old-1");
        let mut new = host("new-1");
        new.replaces = Some("old-1".into());
        let storage = StorageFacts {
            driver: StorageDriver::Postgres,
            sqlite_dir: None,
            postgres: Some("postgres://ledger@10.0.0.5:5432/ledger".into()),
        };
        let running = |v: Version| HostFacts {
            installed_version: Some(v.clone()),
            service: ServiceState::Running,
            api: Some(crate::facts::ApiInfo {
                healthy: true,
                version: Some(v),
            }),
            storage: Some(storage.clone()),
            ledgers: vec!["default".into()],
            ..HostFacts::default()
        };
        let facts = BTreeMap::from([
            ("old-1".to_string(), running(Version::new(1, 7, 4))),
            ("new-1".to_string(), running(Version::new(1, 8, 2))),
        ]);
        let opts = PlanOptions {
            strategy: Strategy::Replace,
            serial: None,
            canary: std::num::NonZeroUsize::MIN,
            hop_binaries: Vec::new(),
            stop_running: false,
            backup: false,
            binary: BinarySource::File {
                path: "numary".into(),
                sha256: scripted::binary_sha256(),
            },
        };
        let hosts = vec![old, new];
        let target = Version::new(1, 8, 2);
        let mut plan = build_plan(&hosts, &facts, &target, &opts, &PolicyTable::builtin());
        // new-1 serves the target already: only the old node's decommission is left. (The
        // table's 1.7 → 1.8 row is offline-only, which the runner does not read: the fakes'
        // `/_info` knows no other version.)
        let ids: Vec<&str> = plan.steps.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(ids, ["preflight", "lock", "decommission", "unlock"]);
        plan.blockers.clear();
        let fakes: Vec<Node> = ["old-1", "new-1"]
            .iter()
            .map(|name| {
                Node::new(name)
                    .holding(&[])
                    .running(*name == "old-1" || serving)
            })
            .collect();
        let fleet = Fleet {
            hosts,
            sessions: fakes.iter().map(|f| (f.name.clone(), f.clone())).collect(),
            facts,
        };
        let recorder = Arc::new(Recorder::default());
        let report = execute(plan, fleet, config(Setup::default()), recorder.clone()).await;
        Ran {
            report,
            fakes,
            most_in_flight: 0,
            events: recorder.events(),
        }
    }

    #[tokio::test]
    async fn a_decommission_stops_and_disables_the_old_unit_once_its_replacement_serves() {
        let ran = decommission_fleet(true).await;
        let report = &ran.report;
        assert_eq!(report.outcome, Outcome::Succeeded, "{:?}", report.error);
        let old = &ran.fakes[0];
        let cmds = old.commands();
        let pos = |s: &str| {
            cmds.iter()
                .position(|c| c == s)
                .unwrap_or_else(|| panic!("`{s}` not run: {cmds:#?}"))
        };
        // The probe saw it running; the stop is waited for, then the unit disabled.
        assert!(pos("systemctl stop numary.service") < pos("systemctl disable numary.service"));
        assert!(!old.started(), "stopped");
        assert!(old.unexpected().is_empty());
        // Nothing removes its binary, releases or data (only its fleetup lock goes).
        assert!(
            !cmds
                .iter()
                .any(|c| c.contains("rm ") && !c.contains(".fleetup.lock")),
            "{cmds:#?}"
        );
        assert!(
            !ran.fakes[1].ran("systemctl stop"),
            "the new node is left alone"
        );
        assert_eq!(report.changes.decommissioned, ["old-1"]);
        let summary = &report.hosts[0];
        assert!(summary.state.starts_with("decommissioned"), "{summary:?}");
        assert_eq!(
            ran.states(StepKind::Decommission),
            [
                ("old-1".to_string(), StepState::Started),
                ("old-1".to_string(), StepState::Done)
            ]
        );
    }

    #[tokio::test]
    async fn an_old_node_whose_replacement_does_not_serve_is_not_decommissioned() {
        let ran = decommission_fleet(false).await;
        assert_eq!(ran.report.outcome, Outcome::Failed);
        let e = ran.report.error.as_ref().unwrap();
        assert!(
            e.message
                .contains("its replacement `new-1` does not serve `1.8.2`"),
            "{}",
            e.message
        );
        let old = &ran.fakes[0];
        assert!(!old.ran("systemctl stop"), "{:#?}", old.commands());
        assert!(old.started(), "it keeps serving");
        assert!(ran.report.changes.decommissioned.is_empty());
    }

    #[tokio::test]
    async fn every_listed_ledger_is_migrated_then_the_node_switched_started_and_unlocked() {
        let (report, fake) = run_single("Ledgers:\n- default\n- payments\n", None).await;
        assert_eq!(report.outcome, Outcome::Succeeded, "{:?}", report.error);
        assert_eq!(upgrades(&fake), ["default", "payments"]);
        assert_eq!(report.changes.healthy, ["node-1"]);
        let cmds = fake.commands();
        assert!(
            cmds.first().unwrap().contains(".fleetup.lock"),
            "locked first"
        );
        assert!(cmds.last().unwrap().contains("grep -qF"), "unlocked last");
        let pos = |s: &str| cmds.iter().position(|c| c.contains(s)).unwrap();
        assert!(pos("==orig") < pos("# upload") && pos("# upload") < pos("storage upgrade"));
        assert!(
            pos("storage upgrade") < pos("prev-link") && pos("prev-link") < pos("systemctl start")
        );
    }

    #[tokio::test]
    async fn only_a_node_another_run_locked_since_the_audit_is_probed_again() {
        let mut changed = node("node-2");
        changed.generation = Some("20260101T000000Z-000001");
        let (report, fakes) = run_fleet(vec![node("node-1"), changed]).await;
        assert_eq!(report.outcome, Outcome::Succeeded, "{:?}", report.error);
        let probed = |f: &Node| {
            f.ran("[ -x \"$f\" ] && sha256sum")
                || f.commands().iter().any(|c| c.starts_with("readlink -f "))
        };
        // node-1 is as the audit saw it: its stage and switch are known to be to do.
        assert!(!probed(&fakes[0]), "{:#?}", fakes[0].commands());
        // node-2's lock found another run's generation: every probe asks the node.
        assert!(probed(&fakes[1]), "{:#?}", fakes[1].commands());
        assert!(fakes.iter().all(|f| f.ran("# upload ")));
    }

    #[tokio::test]
    async fn the_run_stages_where_the_plan_params_say_not_where_the_inventory_would() {
        let other = "/opt/numary/releases/elsewhere";
        let (report, fakes) = run_plan(vec![node("node-1")], |plan| {
            let step = plan
                .steps
                .iter_mut()
                .find(|s| s.kind == StepKind::Stage)
                .unwrap();
            for hc in &mut step.commands {
                let crate::plan::Action::Stage(p) = &mut hc.params else {
                    panic!("stage params expected");
                };
                p.release_dir = other.into();
                p.binary = format!("{other}/numary");
                hc.commands = hc.params.commands();
            }
        })
        .await;
        assert_eq!(report.outcome, Outcome::Succeeded, "{:?}", report.error);
        let f = &fakes[0];
        assert!(f.ran(&format!("mkdir -p {other}")), "{:?}", f.commands());
        assert!(f.ran(&format!("# upload {other}/numary")));
        assert!(f.ran(&format!("exec {other}/numary version")));
        assert!(!f.ran("# upload /opt/numary/releases/1.8.2/numary"));
        assert_eq!(
            report.changes.staged,
            [("node-1".to_string(), other.to_string(), true)]
        );
        assert!(
            report
                .changes
                .artefacts
                .iter()
                .any(|a| a.kind == "staged-binary" && a.path == format!("{other}/numary"))
        );
    }

    #[tokio::test]
    async fn every_shell_line_the_plan_shows_is_run_with_the_run_id_put_in() {
        let mut planned = Vec::new();
        let (report, fakes) = run_plan(vec![node("node-1"), node("node-2")], |plan| {
            for step in &plan.steps {
                for hc in &step.commands {
                    for c in hc.commands.iter().filter(|c| !c.starts_with('#')) {
                        planned.push((
                            hc.host.clone(),
                            c.replace(crate::plan::RUN_ID_TOKEN, "20260125T174502Z-00ab12"),
                        ));
                    }
                }
            }
        })
        .await;
        assert_eq!(report.outcome, Outcome::Succeeded, "{:?}", report.error);
        assert!(planned.len() > 10, "{planned:?}");
        for (host, c) in planned {
            let f = fakes.iter().find(|f| f.name == host).unwrap();
            assert!(f.commands().contains(&c), "{host} never ran `{c}`");
        }
        assert_scripted(&fakes);
    }

    #[tokio::test]
    async fn a_ledger_the_list_lacks_stops_before_any_storage_upgrade_and_undoes_the_rest() {
        let (report, fake) = run_single(
            "Ledgers:\n- default\n- payments\n",
            Some(&["default", "paymnts"]),
        )
        .await;
        assert_eq!(report.outcome, Outcome::Blocked);
        let e = report.error.unwrap();
        assert!(e.message.contains("`paymnts`"), "{}", e.message);
        assert!(upgrades(&fake).is_empty(), "no `storage upgrade` at all");
        let cmds = fake.commands();
        assert!(
            !cmds
                .iter()
                .any(|c| c.contains("prev-link") || c.contains("systemctl start"))
        );
        // The staged release and the backup of this run are removed, the lock released.
        assert!(cmds.iter().any(|c| c.contains("rm -f \"$d/numary\"")));
        assert!(
            cmds.iter()
                .any(|c| c.contains("rm -rf -- /var/backups/numary/20260125T174502Z-00ab12"))
        );
        assert!(cmds.last().unwrap().contains("grep -qF"));
    }

    #[tokio::test]
    async fn no_ledger_found_while_the_fleet_has_ledgers_is_the_wrong_environment() {
        let (report, fake) = run_single("No ledger found.\n", None).await;
        assert_eq!(report.outcome, Outcome::Blocked);
        assert!(
            report
                .error
                .unwrap()
                .message
                .contains("wrong storage environment")
        );
        assert!(upgrades(&fake).is_empty());
    }

    /// Every command the run sent was one the script knows: a test of a failure path must not
    /// pass because a recovery command was silently answered.
    fn assert_scripted(fakes: &[Node]) {
        for f in fakes {
            let unexpected = f.unexpected();
            assert!(unexpected.is_empty(), "{}: {unexpected:?}", f.name);
        }
    }

    #[tokio::test]
    async fn the_fake_refuses_a_command_it_was_not_scripted_for() {
        let f = Node::new("node-1");
        let out = f
            .exec("rm -rf /opt/numary", &ExecOptions::default())
            .await
            .unwrap();
        assert!(!out.status.success());
        assert!(out.stderr_lossy().contains("unexpected command"));
        assert!(!f.unexpected().is_empty());
    }

    #[tokio::test]
    async fn a_refusal_on_a_later_node_comes_before_any_storage_upgrade_anywhere() {
        // node-2's environment points at an empty store; node-1 is fine and listed first.
        let (report, fakes) = run_fleet(vec![
            node("node-1"),
            Spec {
                listed: ("No ledger found.\n", "No ledger found.\n"),
                ..node("node-2")
            },
        ])
        .await;
        assert_eq!(report.outcome, Outcome::Blocked, "{:?}", report.error);
        let e = report.error.unwrap();
        assert_eq!(e.kind, StepKind::Migrate);
        assert_eq!((e.host.as_str(), e.code), ("node-2", exit_code::BLOCKED));
        assert!(
            e.message.contains("wrong storage environment"),
            "{}",
            e.message
        );
        assert!(!report.changes.storage_touched);
        for f in &fakes {
            assert!(upgrades(f).is_empty(), "{} ran `storage upgrade`", f.name);
            assert!(!f.ran("prev-link") && !f.ran("systemctl start"));
            // Its backup is dropped (the storage is as it holds it) and its lock released.
            assert!(f.ran("rm -rf -- /var/backups/numary/"), "{}", f.name);
            assert!(f.commands().last().unwrap().contains("grep -qF"));
        }
        assert_scripted(&fakes);
    }

    #[test]
    fn a_guard_stopping_the_run_after_a_storage_upgrade_is_a_failure() {
        let blocked = || {
            Some(StepError {
                step: 7,
                kind: StepKind::Migrate,
                host: "node-2".into(),
                message: "refused".into(),
                stderr: None,
                hints: vec![],
                code: exit_code::BLOCKED,
            })
        };
        let mut error = blocked();
        assert_eq!(settle(&mut error, false, false), Outcome::Blocked);
        assert_eq!(error.unwrap().code, exit_code::BLOCKED);
        let mut error = blocked();
        assert_eq!(settle(&mut error, true, false), Outcome::Failed);
        let e = error.unwrap();
        assert_eq!(e.code, exit_code::FAILURE);
        assert!(
            e.hints.iter().any(|h| h.contains("backup is kept")),
            "{:?}",
            e.hints
        );
        assert_eq!(settle(&mut None, true, false), Outcome::Succeeded);
    }

    #[tokio::test]
    async fn a_known_ledger_missing_from_the_list_is_the_wrong_environment() {
        // Another store that holds a `default` too, while the node's files hold `payments` as well.
        let (report, fakes) = run_fleet(vec![Spec {
            known: &["default", "payments"],
            ..node("node-1")
        }])
        .await;
        assert_eq!(report.outcome, Outcome::Blocked, "{:?}", report.error);
        let e = report.error.unwrap();
        assert_eq!(e.kind, StepKind::Migrate, "{}", e.message);
        assert!(
            e.message.contains("`payments`") && e.message.contains("wrong storage environment"),
            "{}",
            e.message
        );
        assert!(upgrades(&fakes[0]).is_empty());
        assert_scripted(&fakes);
    }

    #[tokio::test]
    async fn a_ledger_scan_adds_that_nobody_knows_is_refused_unless_the_inventory_names_it() {
        let scanned = "Ledgers:\n- default\n- accounting\n";
        let (report, fakes) = run_fleet(vec![Spec {
            listed: (LISTED, scanned),
            ..node("node-1")
        }])
        .await;
        assert_eq!(report.outcome, Outcome::Blocked, "{:?}", report.error);
        let e = report.error.unwrap();
        assert_eq!(e.kind, StepKind::Migrate);
        assert!(e.message.contains("`accounting`"), "{}", e.message);
        assert!(e.hints.iter().any(|h| h.contains("`ledgers = [...]`")));
        assert!(upgrades(&fakes[0]).is_empty());
        assert_scripted(&fakes);

        let (report, fakes) = run_fleet(vec![Spec {
            listed: (LISTED, scanned),
            expected: Some(&["default", "accounting"]),
            ..node("node-1")
        }])
        .await;
        assert_eq!(report.outcome, Outcome::Succeeded, "{:?}", report.error);
        assert_eq!(upgrades(&fakes[0]), ["default", "accounting"]);
    }

    #[tokio::test]
    async fn a_failed_storage_upgrade_starts_no_node_keeps_the_backup_and_unlocks() {
        // Both nodes run and are stopped by the run; node-1 migrates, node-2's upgrade fails.
        let (report, fakes) = run_fleet(vec![
            Spec {
                running: true,
                ..node("node-1")
            },
            Spec {
                running: true,
                fail: Some("storage upgrade"),
                ..node("node-2")
            },
        ])
        .await;
        assert_eq!(report.outcome, Outcome::Failed, "{:?}", report.error);
        let e = report.error.unwrap();
        assert_eq!(e.host, "node-2");
        assert!(
            e.message.contains("`storage upgrade default` failed"),
            "{}",
            e.message
        );
        assert!(e.stderr.unwrap().contains("boom"));
        assert_eq!(upgrades(&fakes[0]), ["default"]);
        for f in &fakes {
            assert!(f.ran("systemctl stop"), "{} was stopped", f.name);
            // Neither the new binary (never switched) nor the old one (the storage may be
            // migrated) is started.
            assert!(!f.ran("systemctl start"), "{} was started", f.name);
            assert!(!f.ran("prev-link"), "{} was switched", f.name);
            assert!(!f.started());
            assert!(
                !f.ran("rm -rf -- /var/backups/numary/"),
                "{}: backup kept",
                f.name
            );
            assert!(
                f.ran("rm -f \"$d/numary\""),
                "{}: staged release removed",
                f.name
            );
            assert!(
                f.commands().last().unwrap().contains("grep -qF"),
                "{} unlocked",
                f.name
            );
        }
        assert!(report.unlock_errors.is_empty());
        assert_scripted(&fakes);
    }

    #[tokio::test]
    async fn a_failed_switch_after_the_migration_starts_no_old_binary() {
        let (report, fakes) = run_fleet(vec![Spec {
            running: true,
            fail: Some("prev-link"),
            ..node("node-1")
        }])
        .await;
        assert_eq!(report.outcome, Outcome::Failed, "{:?}", report.error);
        assert_eq!(report.error.unwrap().kind, StepKind::Switch);
        let f = &fakes[0];
        assert_eq!(upgrades(f), ["default"]);
        assert!(f.ran("systemctl stop"));
        assert!(!f.ran("systemctl start"), "started after a migration");
        assert!(!f.started());
        assert!(!f.ran("rm -rf -- /var/backups/numary/"), "backup kept");
        assert!(
            f.commands().last().unwrap().contains("grep -qF"),
            "unlocked"
        );
        assert_scripted(&fakes);
    }

    fn nodes(n: usize) -> Vec<Spec> {
        const NAMES: [&str; 5] = ["node-1", "node-2", "node-3", "node-4", "node-5"];
        NAMES[..n].iter().map(|name| node(name)).collect()
    }

    /// The most transport calls in flight at once while five nodes upgrade with `--forks`.
    async fn most_in_flight(forks: usize) -> usize {
        let ran = run_fleet_with(
            nodes(5),
            Setup {
                forks,
                flight: true,
                ..Setup::default()
            },
        )
        .await;
        assert_eq!(
            ran.report.outcome,
            Outcome::Succeeded,
            "{:?}",
            ran.report.error
        );
        ran.most_in_flight
    }

    #[tokio::test]
    async fn forks_bounds_the_hosts_worked_on_at_once() {
        assert_eq!(most_in_flight(2).await, 2, "never more than `--forks 2`");
        // Unbounded, the fake does see the five hosts overlap.
        let free = most_in_flight(50).await;
        assert!(free > 2, "{free}");
    }

    /// Runs `nodes` with `--max-fail max_failed`; the run must fail.
    async fn run_with_budget(nodes: Vec<Spec>, max_failed: usize) -> Ran {
        let max_failed = failures::FailBudget::Count(max_failed);
        let ran = run_fleet_with(
            nodes,
            Setup {
                max_failed,
                ..Setup::default()
            },
        )
        .await;
        assert_eq!(
            ran.report.outcome,
            Outcome::Failed,
            "{:?}",
            ran.report.error
        );
        ran
    }

    /// Three SQLite nodes, `node-2`'s start fails.
    fn start_fails_on_node_2() -> Vec<Spec> {
        let mut n = nodes(3);
        n[1].fail = Some("systemctl start");
        n
    }

    #[tokio::test]
    async fn a_start_failing_on_one_sqlite_node_within_the_budget_lets_the_others_start() {
        let ran = run_with_budget(start_fails_on_node_2(), 1).await;
        let r = &ran.report;
        assert_eq!(r.outcome.exit_code(), exit_code::FAILURE);
        assert_eq!(r.changes.healthy, ["node-1", "node-3"]);
        assert_eq!(r.failed.len(), 1, "{:?}", r.failed);
        let f = &r.failed[0];
        assert_eq!(
            (f.host.as_str(), f.kind, f.contained),
            ("node-2", StepKind::StartService, true)
        );
        let e = r.error.as_ref().unwrap();
        assert_eq!((e.host.as_str(), e.code), ("node-2", exit_code::FAILURE));
        assert!(
            e.hints
                .iter()
                .any(|h| h.contains("`--max-fail 1`") && h.contains("`node-2`")),
            "{:?}",
            e.hints
        );
        let row = r.hosts.iter().find(|h| h.host == "node-2").unwrap();
        assert!(row.state.starts_with("failed at step"), "{}", row.state);
        assert!(row.state.contains("(start_service)"), "{}", row.state);
        assert!(
            ran.states(StepKind::StartService)
                .contains(&("node-2".into(), StepState::Failed))
        );
        // Left out of the health gate; every node unlocked.
        assert!(
            !ran.states(StepKind::HealthGate)
                .iter()
                .any(|(h, _)| h == "node-2")
        );
        for f in &ran.fakes {
            assert!(
                f.commands().last().unwrap().contains("grep -qF"),
                "{} unlocked",
                f.name
            );
            // Migrated and switched: nothing is undone, the backup is kept.
            assert!(!f.ran("rm -rf -- /var/backups/numary/"), "{}", f.name);
        }
        assert_scripted(&ran.fakes);
    }

    #[tokio::test]
    async fn the_same_start_failure_without_a_budget_stops_the_run_as_before() {
        let ran = run_fleet_with(start_fails_on_node_2(), Setup::default()).await;
        let r = &ran.report;
        assert_eq!(r.outcome, Outcome::Failed, "{:?}", r.error);
        assert_eq!(r.error.as_ref().unwrap().host, "node-2");
        // The migrator starts alone first; the run stops at the second batch's start, so
        // `node-3` (started in it) never reaches its health gate.
        assert_eq!(r.changes.healthy, ["node-1"]);
        assert!(
            !ran.states(StepKind::HealthGate)
                .iter()
                .any(|(h, _)| h != "node-1")
        );
        assert_eq!(r.failed.len(), 1);
        assert!(!r.failed[0].contained);
        assert!(
            !r.error
                .as_ref()
                .unwrap()
                .hints
                .iter()
                .any(|h| h.contains("--max-fail"))
        );
        assert_scripted(&ran.fakes);
    }

    #[tokio::test]
    async fn a_stage_failure_on_a_shared_postgres_stops_the_run_before_any_migration() {
        let mut n = nodes(3);
        n[1].fail = Some("mkdir -p /opt/numary/releases/");
        let ran = run_fleet_with(
            n,
            Setup {
                max_failed: failures::FailBudget::Count(5),
                postgres: true,
                backup: false,
                ..Setup::default()
            },
        )
        .await;
        let r = &ran.report;
        assert_eq!(r.outcome, Outcome::Failed, "{:?}", r.error);
        let e = r.error.as_ref().unwrap();
        assert_eq!((e.host.as_str(), e.kind), ("node-2", StepKind::Stage));
        assert!(
            e.hints
                .iter()
                .any(|h| h.contains("shares its storage with `node-1`, `node-3`")),
            "{:?}",
            e.hints
        );
        assert_eq!(r.failed.len(), 1);
        assert!(!r.failed[0].contained);
        assert!(!r.changes.storage_touched);
        for f in &ran.fakes {
            assert!(upgrades(f).is_empty(), "{} ran `storage upgrade`", f.name);
            assert!(
                !f.ran("prev-link") && !f.ran("systemctl start"),
                "{}",
                f.name
            );
            assert!(
                f.commands().last().unwrap().contains("grep -qF"),
                "{} unlocked",
                f.name
            );
        }
        assert!(
            ran.states(StepKind::Migrate).is_empty(),
            "no migrate step ran"
        );
        assert_scripted(&ran.fakes);
    }

    #[tokio::test]
    async fn a_sqlite_node_failing_before_the_migration_is_undone_alone_and_the_others_go_on() {
        let mut n: Vec<Spec> = nodes(3)
            .into_iter()
            .map(|n| Spec { running: true, ..n })
            .collect();
        n[1].fail = Some("mkdir -p /opt/numary/releases/");
        let ran = run_with_budget(n, 1).await;
        let r = &ran.report;
        assert_eq!(r.failed.len(), 1, "{:?}", r.failed);
        assert_eq!(
            (r.failed[0].host.as_str(), r.failed[0].kind),
            ("node-2", StepKind::Stage)
        );
        assert_eq!(r.changes.healthy, ["node-1", "node-3"]);
        let (n1, n2, n3) = (&ran.fakes[0], &ran.fakes[1], &ran.fakes[2]);
        assert_eq!(upgrades(n1), ["default"]);
        assert_eq!(upgrades(n3), ["default"]);
        // node-2's own undo: its storage untouched, so its backup dropped and its old binary
        // started again; it is never migrated nor switched.
        assert!(upgrades(n2).is_empty());
        assert!(!n2.ran("prev-link"));
        assert!(n2.ran("rm -rf -- /var/backups/numary/"));
        assert!(n2.started(), "node-2 restarted on its old binary");
        assert!(
            ran.states(StepKind::Backup)
                .contains(&("node-2".into(), StepState::Undone))
        );
        for f in [n1, n3] {
            assert!(
                !f.ran("rm -rf -- /var/backups/numary/"),
                "{}: backup kept",
                f.name
            );
        }
        for f in &ran.fakes {
            assert!(
                f.commands().last().unwrap().contains("grep -qF"),
                "{} unlocked",
                f.name
            );
        }
        assert_scripted(&ran.fakes);
    }
}
