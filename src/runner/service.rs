//! Steps that drive the service: stop (in order, waited for), confirm cleanly stopped (service
//! manager, API port, SQLite hot journals and open files), start, and the health gate that waits
//! until `/_info` reports the target.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::events::Event;
use crate::exit_code;
use crate::facts::ServiceState;
use crate::inventory::{ResolvedHost, Service};
use crate::node::{self, ServiceAction};
use crate::numary;
use crate::plan::commands::storage_use_command;
use crate::plan::{Action, GateParams, ServiceParams, Step, StepKind};
use crate::preflight::sessions;
use crate::ssh::{ExecOptions, ExitStatus, HttpError, Transport};
use crate::version::Version;

use super::ctx::{Shared, StepError, per_host, tail};
use super::params;

/// How long one probe of the API may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// The first pause of a [`Backoff`].
const FIRST_POLL: Duration = Duration::from_millis(20);

/// Pauses between polls of something about to change (a service stopping or starting, an API
/// coming up, a database's sessions leaving): 20 ms at first, doubling up to the run's poll
/// interval. A node ready within tens of milliseconds is seen then, not a whole interval
/// later (with 20 nodes started one after the other, that wait was most of an upgrade), and
/// one that takes seconds is not asked more often than once an interval.
pub(crate) struct Backoff {
    next: Duration,
    max: Duration,
}

impl Backoff {
    pub(crate) fn new(max: Duration) -> Self {
        Backoff {
            next: FIRST_POLL.min(max),
            max,
        }
    }

    /// The pause before the next poll.
    pub(crate) async fn wait(&mut self) {
        tokio::time::sleep(self.next).await;
        self.next = (self.next * 2).min(self.max);
    }
}

/// `host:port` of the API (`api`, as the node sees it).
pub fn api_endpoint(api: &str) -> Option<(String, u16)> {
    let (h, p) = api.rsplit_once(':')?;
    let h = h.trim_start_matches('[').trim_end_matches(']');
    Some((h.to_string(), p.parse().ok()?))
}

/// What `/_info` says, as seen from the node: `Ok(version)` when it answers 200 with the v1
/// shape, `Err(why not)` otherwise.
pub async fn api_version<T: Transport>(t: &T, api: &str) -> Result<String, String> {
    let (h, p) = api_endpoint(api).ok_or_else(|| format!("`{api}` is not host:port"))?;
    let resp = t
        .http_get(&h, p, "/_info", PROBE_TIMEOUT)
        .await
        .map_err(|e| e.to_string())?;
    if resp.status != 200 {
        return Err(format!("`/_info` answered HTTP {}", resp.status));
    }
    numary::parse_info(&resp.body)
        .map(|i| i.version)
        .map_err(|e| e.to_string())
}

/// What a probe of the API port found, as seen from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ApiProbe {
    /// The node's sshd could not connect: nothing listens there.
    Silent,
    /// Something answered (any HTTP answer, or a broken one).
    Answers(String),
    /// The port could not be probed (sshd refuses port forwarding, ...): nothing is known.
    Unknown(String),
}

pub async fn probe_api<T: Transport>(t: &T, api: &str) -> ApiProbe {
    let Some((h, p)) = api_endpoint(api) else {
        return ApiProbe::Unknown(format!("`{api}` is not host:port"));
    };
    match t.http_get(&h, p, "/_info", PROBE_TIMEOUT).await {
        Ok(resp) => ApiProbe::Answers(format!("HTTP {}", resp.status)),
        Err(HttpError::Connect { .. }) => ApiProbe::Silent,
        Err(e @ HttpError::Refused { .. }) => ApiProbe::Unknown(e.to_string()),
        // A timeout or a garbled answer: something holds the port.
        Err(e) => ApiProbe::Answers(e.to_string()),
    }
}

/// Whether anything answers on the API port, or it cannot be told (`None`: nothing answers).
pub async fn api_answers<T: Transport>(t: &T, api: &str) -> Option<String> {
    match probe_api(t, api).await {
        ApiProbe::Silent => None,
        ApiProbe::Answers(a) => Some(a),
        ApiProbe::Unknown(why) => Some(format!("cannot be probed: {why}")),
    }
}

pub async fn healthy<T: Transport>(t: &T, api: &str) -> bool {
    let Some((h, p)) = api_endpoint(api) else {
        return false;
    };
    matches!(t.http_get(&h, p, "/_health", PROBE_TIMEOUT).await, Ok(r) if r.status == 200)
}

/// `Some(true)` running, `Some(false)` stopped, `None` when the manager could not be asked or
/// gave no clear answer (a unit that is not loaded, a status command that cannot run): the same
/// reading as the facts ([`node::parse_service_state`]), so a crash-looping systemd unit counts
/// as running and a misspelt one as unknown, never as stopped.
pub async fn service_running<T: Transport>(t: &T, service: &Service) -> Option<bool> {
    let opts = ExecOptions {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let out = t
        .exec(&node::service_state_command(service), &opts)
        .await
        .ok()?;
    let code = match out.status {
        ExitStatus::Code(c) => Some(c),
        ExitStatus::Signal(_) => None,
    };
    match node::parse_service_state(service, code, &out.stdout_lossy()).0 {
        ServiceState::Running => Some(true),
        ServiceState::Stopped => Some(false),
        ServiceState::Unknown => None,
    }
}

/// `--stop`: each node in turn, through its service manager, waiting until it says stopped.
pub async fn stop<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    for name in &step.hosts {
        let p = params::of(sh, step, name, Action::service)?;
        stop_and_wait(sh, step, name, p, || {
            sh.change(|c| c.stopped.push(name.clone()))
        })
        .await?;
    }
    Ok(())
}

/// The service manager's stop on `name`, then its status polled until it says stopped (within
/// `--stop-timeout`); `stopping` runs once the stop command succeeded.
pub async fn stop_and_wait<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
    p: &ServiceParams,
    stopping: impl FnOnce(),
) -> Result<(), StepError> {
    let cmd = p.command(ServiceAction::Stop);
    let out = sh
        .run(
            step,
            name,
            &cmd,
            "stop the service",
            Some(sh.cfg.stop_timeout),
        )
        .await
        .map_err(|mut e| {
            e.hints
                .push("stop the node by hand, check it is stopped, then run again".into());
            e
        })?;
    stopping();
    let deadline = Instant::now() + sh.cfg.stop_timeout;
    let waiting = sh.begin(step, name, Some(&p.state_command()));
    let mut pause = Backoff::new(sh.cfg.poll_interval);
    loop {
        match service_running(sh.session(name), &p.service).await {
            Some(false) => {
                waiting.ok("the service manager says stopped", Vec::new());
                return Ok(());
            }
            _ if Instant::now() >= deadline => {
                let mut e = sh.error(
                    step,
                    name,
                    format!(
                        "the service manager still does not say stopped {} after the stop command ({})",
                        humantime::format_duration(sh.cfg.stop_timeout),
                        tail(&out.stdout_lossy()).unwrap_or_default()
                    ),
                );
                e.hints
                    .push("raise `--stop-timeout` or stop the node by hand".into());
                waiting.fail(&e.message);
                return Err(e);
            }
            _ => pause.wait().await,
        }
    }
}

/// `(hot journals, pids with storage files open)` from [`storage_use_command`]'s output.
fn parse_storage_use(stdout: &str) -> (Vec<String>, Vec<String>) {
    let (mut journals, mut pids) = (Vec::new(), Vec::new());
    let mut section = "";
    for line in stdout.lines().map(str::trim).filter(|l| !l.is_empty()) {
        match line {
            "==journals" | "==open" => section = line,
            _ if section == "==journals"
                && (line.ends_with("-journal") || line.ends_with("-wal")) =>
            {
                journals.push(line.to_string());
            }
            _ if section == "==open" => pids.push(line.to_string()),
            _ => {}
        }
    }
    (journals, pids)
}

/// Re-checked right before anything changes: the service manager says stopped, the API port is
/// silent, and for SQLite no hot journal and no process with the storage files open.
pub async fn confirm_stopped<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    per_host(sh, step, |sh, step, name| async move {
        confirm_one(&sh, &step, &name).await
    })
    .await?;
    // Only a migration needs the database to itself.
    if sh.plan.steps.iter().any(|s| s.kind == StepKind::Migrate) {
        confirm_database_free(sh, step).await?;
    }
    Ok(())
}

/// How long sessions of the nodes just stopped may take to leave `pg_stat_activity`.
const SESSIONS_SETTLE: Duration = Duration::from_secs(10);

/// Postgres: with every node of the run stopped, nothing else may hold a session on a database
/// the run migrates (a node outside `--limit` or the inventory would run on a schema being
/// rewritten). Counted on each storage's migrator; a refusal comes before any backup or change,
/// so the runner's recovery starts again what `--stop` stopped.
pub async fn confirm_database_free<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
) -> Result<(), StepError> {
    // The migrators of the storages this plan migrates (a storage already migrated has none).
    let migrating = sh
        .plan
        .steps
        .iter()
        .filter(|s| s.kind == StepKind::Migrate && s.hop == step.hop)
        .flat_map(|s| s.commands.iter());
    for hc in migrating.filter(|hc| sh.going(&hc.host)) {
        if let Some(p) = hc.params.migrate()
            && p.is_postgres()
            && p.exclusive
            && sh.sessions.contains_key(&hc.host)
        {
            database_free_on(sh, step, &hc.host, &p.db_sessions_command()).await?;
        }
    }
    Ok(())
}

async fn database_free_on<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
    cmd: &str,
) -> Result<(), StepError> {
    let t = sh.session(name);
    let op = sh.begin(step, name, Some(cmd));
    let opts = ExecOptions {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let deadline = Instant::now() + SESSIONS_SETTLE;
    let mut pause = Backoff::new(sh.cfg.poll_interval);
    loop {
        let counted = match t.exec(cmd, &opts).await {
            Ok(out) if out.status.success() => sessions::parse_output(&out.stdout_lossy()),
            Ok(out) => Err(format!(
                "`psql` exited with {}: {}",
                out.status,
                crate::redact::redact(&tail(&out.stderr_lossy()).unwrap_or_default())
            )),
            Err(e) => Err(e.to_string()),
        };
        let (message, hint) = match counted {
            Ok(found) if found.is_empty() => {
                op.ok("no other session on the database", Vec::new());
                return Ok(());
            }
            // The backends of the nodes just stopped may not have left yet.
            Ok(_) if Instant::now() < deadline => {
                pause.wait().await;
                continue;
            }
            Ok(found) => (
                format!(
                    "{} with every node of this run stopped: refusing to migrate",
                    sessions::describe(&found.iter().collect::<Vec<_>>())
                ),
                sessions::HINT,
            ),
            Err(why) => (
                format!("cannot count the other sessions on the database: {why}"),
                "install the PostgreSQL client (`psql`) on the migrator and check its role may read `pg_stat_activity`, then run again",
            ),
        };
        let mut e = sh.error(step, name, message);
        e.code = exit_code::BLOCKED;
        e.hints.push(hint.to_string());
        op.fail(&e.message);
        return Err(e);
    }
}

async fn confirm_one<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
) -> Result<(), StepError> {
    let p = params::of(sh, step, name, Action::confirm)?;
    let t = sh.session(name);
    let status_cmd = node::service_state_command(&p.service);
    let op = sh.begin(step, name, Some(&status_cmd));
    let blocked = |message: String, hint: &str| {
        let mut e = sh.error(step, name, message);
        e.code = exit_code::BLOCKED;
        e.hints.push(hint.to_string());
        e
    };
    match service_running(t, &p.service).await {
        Some(false) => {}
        Some(true) => {
            let e = blocked(
                "the node is running (its service manager says so)".into(),
                "stop it first, or pass `--stop` to let fleetup stop the nodes in order",
            );
            op.fail(&e.message);
            return Err(e);
        }
        None => {
            let e = blocked(
                "the service manager gave no clear answer".into(),
                "check the service's status command on the node",
            );
            op.fail(&e.message);
            return Err(e);
        }
    }
    match probe_api(t, &p.api).await {
        ApiProbe::Silent => {}
        ApiProbe::Answers(answer) => {
            let e = blocked(
                format!(
                    "the API at `{}` answers ({answer}) although the service manager says stopped: a `numary` runs outside it",
                    p.api
                ),
                "find and stop that process (fleetup stops nodes only through the service manager)",
            );
            op.fail(&e.message);
            return Err(e);
        }
        ApiProbe::Unknown(why) => {
            let e = blocked(
                format!(
                    "cannot tell whether the API at `{}` is silent: {why}",
                    p.api
                ),
                HttpError::FORWARDING_HINT,
            );
            op.fail(&e.message);
            return Err(e);
        }
    }
    let mut found = "stopped, API silent".to_string();
    if let Some(dir) = &p.sqlite_dir {
        let opts = ExecOptions {
            timeout: Some(Duration::from_secs(60)),
            ..Default::default()
        };
        let cmd = storage_use_command(dir);
        let listing = sh.begin(step, name, Some(&cmd));
        let out = match t.exec(&cmd, &opts).await {
            Ok(out) => {
                listing.ok_with(&out, Some("the storage dir listed".into()), Vec::new());
                out
            }
            Err(e) => {
                let e = sh.error(
                    step,
                    name,
                    format!("cannot inspect the SQLite dir `{dir}`: {e}"),
                );
                listing.fail(&e.message);
                op.fail(&e.message);
                return Err(e);
            }
        };
        let (journals, pids) = parse_storage_use(&out.stdout_lossy());
        if !journals.is_empty() {
            let e = blocked(
                format!(
                    "hot SQLite journal in `{dir}`: {} (the last stop was not clean)",
                    journals
                        .iter()
                        .map(|j| format!("`{j}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
                "start the node once on its current binary and stop it cleanly (SQLite rolls the journal back on open), or restore the SQLite files from a backup; never delete the journal",
            );
            op.fail(&e.message);
            return Err(e);
        }
        if !pids.is_empty() {
            let e = blocked(
                format!("process(es) {} have files of `{dir}` open", pids.join(", ")),
                "stop whatever uses the ledger's files before upgrading",
            );
            op.fail(&e.message);
            return Err(e);
        }
        found.push_str(", no hot journal, no open storage file");
    }
    op.ok(found, Vec::new());
    Ok(())
}

/// Starts one batch, all its nodes at once. systemd: the unit must then be `active`
/// (`systemctl is-active`); a start that fails either way carries the unit's last journal lines.
pub async fn start<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    per_host(sh, step, |sh, step, name| async move {
        let p = params::of(&sh, &step, &name, Action::service)?;
        let cmd = p.command(ServiceAction::Start);
        sh.change(|c| c.started.push(name.clone()));
        let started = match sh.run(&step, &name, &cmd, "start the service", None).await {
            Ok(_) => confirm_active(&sh, &step, &name, p).await,
            Err(e) => Err(e),
        };
        match started {
            Ok(()) => Ok(()),
            Err(e) => Err(with_journal(sh.session(&name), &p.service, p.escalate, e).await),
        }
    })
    .await
}

/// systemd, right after a start: `systemctl is-active` must say `active` (a unit that exits at
/// once, or crash-loops in `activating (auto-restart)`, is a failed start).
async fn confirm_active<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
    p: &ServiceParams,
) -> Result<(), StepError> {
    let Some(cmd) = p.active_command() else {
        return Ok(());
    };
    let op = sh.begin(step, name, Some(&cmd));
    let opts = ExecOptions {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    let message = match sh.session(name).exec(&cmd, &opts).await {
        Ok(out) if out.status.success() => {
            op.ok("the unit is active", Vec::new());
            return Ok(());
        }
        Ok(out) => format!(
            "the unit is `{}`, not active, right after `systemctl start`",
            crate::shell::printable(out.stdout_lossy().trim(), 60)
        ),
        Err(e) => format!("cannot ask systemd whether the unit is active: {e}"),
    };
    let e = sh.error(step, name, message);
    op.fail(&e.message);
    Err(e)
}

/// How many journal lines a failed start carries.
pub const JOURNAL_LINES: usize = 50;

/// The longest journal line kept (characters; the rest is cut).
const JOURNAL_LINE_CHARS: usize = 300;

/// `e` with the last [`JOURNAL_LINES`] lines of the systemd unit's journal after its stderr,
/// and a hint to read more; unchanged for an operator's own manager or when the journal could
/// not be read. The lines are the node's output, untrusted: escape sequences and control
/// characters are taken out ([`crate::shell::printable`]), connection strings redacted.
pub async fn with_journal<T: Transport>(
    t: &T,
    service: &Service,
    escalate: crate::inventory::Become,
    mut e: StepError,
) -> StepError {
    let Service::Systemd { unit } = service else {
        return e;
    };
    let Some(lines) = journal_tail(t, service, escalate).await else {
        return e;
    };
    let mut text = e
        .stderr
        .take()
        .map(|s| {
            s + "
"
        })
        .unwrap_or_default();
    text.push_str(&format!(
        "-- {} --
{lines}",
        node::journal_command(unit, JOURNAL_LINES)
    ));
    e.stderr = Some(text);
    e.hints.push(format!(
        "the unit's last journal lines are above; read more with `journalctl -u {} --no-pager` on `{}`",
        crate::shell::quote(unit),
        e.host
    ));
    e
}

/// The unit's last journal lines, cleaned ([`with_journal`]); `None` for no systemd unit or an
/// empty or unreadable journal.
pub async fn journal_tail<T: Transport>(
    t: &T,
    service: &Service,
    escalate: crate::inventory::Become,
) -> Option<String> {
    let Service::Systemd { unit } = service else {
        return None;
    };
    let opts = ExecOptions {
        timeout: Some(Duration::from_secs(30)),
        ..Default::default()
    };
    // Reading the system journal usually needs root (or the `adm` group).
    let cmd = escalate.wrap(&node::journal_command(unit, JOURNAL_LINES));
    let out = t.exec(&cmd, &opts).await.ok()?;
    clean_journal(&out.stdout_lossy())
}

/// At most [`JOURNAL_LINES`] last non-empty lines, each made printable and bounded, connection
/// strings redacted.
fn clean_journal(text: &str) -> Option<String> {
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    if lines.is_empty() {
        return None;
    }
    let start = lines.len().saturating_sub(JOURNAL_LINES);
    let kept: Vec<String> = lines[start..]
        .iter()
        .map(|l| crate::shell::printable(l, JOURNAL_LINE_CHARS))
        .collect();
    Some(crate::redact::redact(&kept.join("\n")))
}

/// Waits until each node of the batch serves the target (`/_info`) and `/_health` answers 200.
pub async fn health_gate<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    per_host(sh, step, |sh, step, name| async move {
        gate_one(&sh, &step, &name).await
    })
    .await
}

async fn gate_one<T: Transport>(sh: &Shared<T>, step: &Step, name: &str) -> Result<(), StepError> {
    let p = params::of(sh, step, name, Action::gate)?;
    let t = sh.session(name);
    let target = &p.expect;
    let op = sh.begin(step, name, None);
    let deadline = Instant::now() + sh.cfg.health_timeout;
    let mut last;
    let mut pause = Backoff::new(sh.cfg.poll_interval);
    loop {
        match api_version(t, &p.api).await {
            Ok(v) if Version::parse(&v).ok().as_ref() == Some(target) => {
                if !healthy(t, &p.api).await {
                    last = format!("`/_info` reports `{v}` but `/_health` does not answer 200");
                } else if let Some(why) = unread_ledger(t, p).await {
                    last = format!("`/_info` reports `{v}`, `/_health` answers, but {why}");
                } else {
                    let read = match p.ledgers.len() {
                        0 => String::new(),
                        n => format!(", {n} ledger(s) answer a read"),
                    };
                    op.ok(
                        format!("`/_info` reports `{v}`, `/_health` answers{read}"),
                        Vec::new(),
                    );
                    stayed_healthy(sh, step, name, p).await?;
                    sh.change(|c| c.healthy.push(name.to_string()));
                    return Ok(());
                }
            }
            // Another release answers: the service started some other binary than the one
            // switched to the target (a unit naming a fixed path, a config tool that reverted
            // it). Waiting cannot change that, and that release must not serve storage this run
            // may have migrated: stop it now, fail the gate.
            Ok(v) if Version::parse(&v).is_ok() => {
                let e = wrong_release(sh, step, name, &v, target).await;
                op.fail(&e.message);
                return Err(e);
            }
            Ok(v) => last = format!("`/_info` reports `{v}`, not `{target}`"),
            Err(e) => last = format!("the API is not ready: {e}"),
        }
        if sh.cfg.cancel.requested() {
            let mut e = sh.error(
                step,
                name,
                format!("cancelled while waiting for the health gate: {last}"),
            );
            e.code = exit_code::CANCELLED;
            op.fail(&e.message);
            return Err(e);
        }
        if Instant::now() >= deadline {
            let mut e = sh.error(
                step,
                name,
                format!(
                    "not healthy on `{target}` within {}: {last}",
                    humantime::format_duration(sh.cfg.health_timeout)
                ),
            );
            e.hints.push(
                "read the service's log on the node; the nodes not started yet keep their old state (see the state report)".into(),
            );
            op.fail(&e.message);
            // Right after a start, systemd's journal tells why the node is not healthy.
            let host = sh.host(name);
            return Err(with_journal(t, &host.ledger.service, host.ledger.escalate, e).await);
        }
        pause.wait().await;
    }
}

/// The gate's failure when a started node serves release `seen` instead of `target`: the node
/// is stopped (through its service manager) and the error says whether that worked.
async fn wrong_release<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
    seen: &str,
    target: &Version,
) -> StepError {
    let host = sh.host(name);
    let stopped = stop_outside_step(sh, name, &ServiceParams::of(host)).await;
    let outcome = match &stopped {
        Ok(()) => "fleetup stopped it, so that release serves nothing this run may have migrated"
            .to_owned(),
        Err(why) => format!("stopping it failed ({why}): stop it by hand before anything else"),
    };
    if stopped.is_ok() {
        sh.change(|c| c.started.retain(|h| h != name));
    }
    let mut e = sh.error(
        step,
        name,
        format!(
            "came back on the wrong release: `/_info` reports `{seen}`, not `{target}`; {outcome}"
        ),
    );
    e.hints.push(format!(
        "the service must start `{}`, which now points at `{target}`: a unit or start command that names a release directory or another copy keeps the old binary",
        host.ledger.binary
    ));
    e
}

/// `min_healthy_time`: after the gate first passed, waits that long (polling, so a node that
/// falls over is caught at once) and requires the node to be healthy on the target throughout,
/// under the plan's hold line.
async fn stayed_healthy<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
    p: &GateParams,
) -> Result<(), StepError> {
    let Some(line) = p.hold_line() else {
        return Ok(());
    };
    let op = sh.begin(step, name, Some(&line));
    let t = sh.session(name);
    let until = Instant::now() + p.min_healthy;
    let held = humantime::format_duration(p.min_healthy);
    loop {
        let why = match api_version(t, &p.api).await {
            Ok(v) if Version::parse(&v).ok().as_ref() != Some(&p.expect) => {
                Some(format!("`/_info` reports `{v}`"))
            }
            Ok(_) if !healthy(t, &p.api).await => Some("`/_health` does not answer 200".into()),
            Ok(_) => unread_ledger(t, p).await,
            Err(e) => Some(format!("the API does not answer: {e}")),
        };
        if let Some(why) = why {
            let mut e = sh.error(
                step,
                name,
                format!(
                    "healthy on `{}`, but not for `min_healthy_time` ({held}): {why}",
                    p.expect
                ),
            );
            e.hints
                .push("read the service's log on the node: it came up and fell over".into());
            op.fail(&e.message);
            return Err(e);
        }
        if Instant::now() >= until {
            op.ok(format!("stayed healthy for {held}"), Vec::new());
            return Ok(());
        }
        if sh.cfg.cancel.requested() {
            let mut e = sh.error(step, name, "cancelled while waiting for `min_healthy_time`");
            e.code = exit_code::CANCELLED;
            op.fail(&e.message);
            return Err(e);
        }
        tokio::time::sleep(sh.cfg.poll_interval.min(until - Instant::now())).await;
    }
}

/// The first ledger of the gate that does not answer a read, said why; `None` when all do.
async fn unread_ledger<T: Transport>(t: &T, p: &GateParams) -> Option<String> {
    let (h, port) = api_endpoint(&p.api)?;
    for ledger in &p.ledgers {
        let path = GateParams::read_path(ledger);
        match t.http_get(&h, port, &path, PROBE_TIMEOUT).await {
            Ok(r) if r.status == 200 => {}
            Ok(r) => {
                return Some(format!(
                    "ledger `{ledger}` answers HTTP {} to `GET {path}`",
                    r.status
                ));
            }
            Err(e) => {
                return Some(format!(
                    "ledger `{ledger}` does not answer `GET {path}`: {e}"
                ));
            }
        }
    }
    None
}

/// The live state of a node for the report after a failure: `service running|stopped`, the
/// API's version or silence.
pub async fn live_state<T: Transport>(t: &T, host: &ResolvedHost) -> String {
    let api = host.ledger.api.as_str();
    let service = match service_running(t, &host.ledger.service).await {
        Some(true) => "service running",
        Some(false) => "service stopped",
        None => "service state unknown",
    };
    match api_version(t, api).await {
        Ok(v) => format!("{service}, API reports `{v}`"),
        Err(_) => match probe_api(t, api).await {
            ApiProbe::Answers(answer) => format!("{service}, API answers {answer}"),
            ApiProbe::Unknown(why) => format!("{service}, API not probed ({why})"),
            ApiProbe::Silent => format!("{service}, API silent"),
        },
    }
}

/// Restarts a node this run stopped (after a failure that changed nothing else) and waits until
/// its API answers again; `p`: the stop step's parameters there.
pub async fn restart_old<T: Transport>(
    sh: &Shared<T>,
    name: &str,
    p: &ServiceParams,
) -> Result<String, String> {
    let t = sh.session(name);
    let opts = ExecOptions::default();
    let out = t
        .exec(&p.command(ServiceAction::Start), &opts)
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "the start command exited with {}: {}",
            out.status,
            tail(&out.stderr_lossy()).unwrap_or_default()
        ));
    }
    let deadline = Instant::now() + sh.cfg.health_timeout;
    let mut pause = Backoff::new(sh.cfg.poll_interval);
    loop {
        match api_version(t, &p.api).await {
            Ok(v) => {
                return Ok(format!(
                    "restarted on its previous binary, `/_info` reports `{v}`"
                ));
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(format!("restarted, but the API does not answer: {e}"));
            }
            Err(_) => pause.wait().await,
        }
    }
}

/// Stops `name` through its service manager and waits until it says stopped, outside any step
/// (the undo of a rolling batch). `Err`: why it is not known to be stopped.
pub async fn stop_outside_step<T: Transport>(
    sh: &Shared<T>,
    name: &str,
    p: &ServiceParams,
) -> Result<(), String> {
    let t = sh.session(name);
    let opts = ExecOptions {
        timeout: Some(sh.cfg.stop_timeout),
        ..Default::default()
    };
    let out = t
        .exec(&p.command(ServiceAction::Stop), &opts)
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "the stop command exited with {}: {}",
            out.status,
            tail(&out.stderr_lossy()).unwrap_or_default()
        ));
    }
    let deadline = Instant::now() + sh.cfg.stop_timeout;
    let mut pause = Backoff::new(sh.cfg.poll_interval);
    loop {
        match service_running(t, &p.service).await {
            Some(false) => return Ok(()),
            _ if Instant::now() >= deadline => {
                return Err("the service manager still does not say stopped".to_string());
            }
            _ => pause.wait().await,
        }
    }
}

/// Tells the operator something about a host.
pub fn notice<T: Transport>(sh: &Shared<T>, host: &str, message: String) {
    sh.emit(Event::Notice {
        host: Some(host.to_string()),
        message,
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn storage_use_sections_split_journals_from_open_files() {
        let out = "==journals\nnumary__system.db\nnumary_default.db\nnumary_default.db-journal\nnumary_x.db-wal\n==open\n4242\n77\n";
        let (journals, pids) = parse_storage_use(out);
        assert_eq!(
            journals,
            vec!["numary_default.db-journal", "numary_x.db-wal"]
        );
        assert_eq!(pids, vec!["4242", "77"]);
        assert_eq!(parse_storage_use("==journals\n==open\n"), (vec![], vec![]));
    }

    #[test]
    fn storage_use_script_finds_journals_and_open_files_for_real() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("da ta");
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("numary_a.db"), b"x").unwrap();
        std::fs::write(d.join("numary_a.db-journal"), b"x").unwrap();
        let mut holder = std::process::Command::new("sh")
            .arg("-c")
            .arg("exec 3<\"$1\"; sleep 30")
            .arg("sh")
            .arg(d.join("numary_a.db"))
            .spawn()
            .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(storage_use_command(&d.to_string_lossy()))
            .output()
            .unwrap();
        let _ = holder.kill();
        let _ = holder.wait();
        let (journals, pids) = parse_storage_use(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(journals, vec!["numary_a.db-journal"]);
        assert!(pids.contains(&holder.id().to_string()), "{pids:?}");
    }

    /// A node whose `/_info` fails with the given error.
    struct Probe(fn(String) -> HttpError);

    impl Transport for Probe {
        fn host(&self) -> &str {
            "n"
        }

        async fn exec(
            &self,
            command: &str,
            _: &ExecOptions,
        ) -> Result<crate::ssh::ExecOutput, crate::ssh::ExecError> {
            panic!("no command expected: {command}")
        }

        async fn upload(
            &self,
            _: &[u8],
            _: &str,
            remote_path: &str,
            _: u32,
            _: crate::ssh::Progress<'_>,
        ) -> Result<crate::ssh::UploadReport, crate::ssh::UploadError> {
            panic!("no upload expected: {remote_path}")
        }

        async fn http_get(
            &self,
            host: &str,
            port: u16,
            _: &str,
            _: Duration,
        ) -> Result<crate::ssh::HttpResponse, HttpError> {
            Err((self.0)(format!("{host}:{port}")))
        }
    }

    #[tokio::test]
    async fn a_refused_forwarding_channel_is_no_silent_port() {
        let h = crate::runner::tests::host("n");
        let closed = Probe(|target| HttpError::Connect {
            host: "n".into(),
            target,
            reason: "connection refused".into(),
        });
        assert_eq!(probe_api(&closed, &h.ledger.api).await, ApiProbe::Silent);
        assert_eq!(api_answers(&closed, &h.ledger.api).await, None);
        let refused = Probe(|target| HttpError::Refused {
            host: "n".into(),
            target,
            reason: "administratively prohibited".into(),
        });
        let probe = probe_api(&refused, &h.ledger.api).await;
        assert!(
            matches!(&probe, ApiProbe::Unknown(why) if why.contains("refuses the forwarding channel")),
            "{probe:?}"
        );
        // The migration's re-check reads `api_answers`: unknown must not pass as silent.
        assert!(
            api_answers(&refused, &h.ledger.api)
                .await
                .is_some_and(|a| a.contains("cannot be probed")),
        );
    }

    #[test]
    fn api_endpoint_forms() {
        assert_eq!(
            api_endpoint("127.0.0.1:3068"),
            Some(("127.0.0.1".into(), 3068))
        );
        assert_eq!(api_endpoint("[::1]:4000"), Some(("::1".into(), 4000)));
        assert_eq!(api_endpoint("localhost"), None);
    }
}
