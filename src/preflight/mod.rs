//! The read-only preflight: every check a careful operator makes before an upgrade, on all
//! selected hosts at once, reporting every finding (passes included) per host. `fleetup check`
//! prints it with the plan; `fleetup upgrade` runs it first and stops on any failure.
//! Nothing here writes on a host: no lock, no temp file, no `numary storage` command.

mod audit;
mod drift;
mod grouped;
mod local;
pub mod privileges;
mod remote;
pub(crate) mod sessions;

/// The command counting the other sessions on the database (the runner's re-check).
pub fn db_sessions_command(env_file: Option<&str>) -> String {
    sessions::command(env_file)
}

#[cfg(test)]
mod tests;

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;

use serde::Serialize;

use crate::events::{Event, EventSink};
use crate::facts::{HostFacts, ServiceState, StorageDriver};
use crate::inventory::ResolvedHost;
use crate::plan::{
    BinarySource, BlockerKind, HostAction, LeftOut, Plan, PlanOptions, StepKind, build_plan_with,
};
use crate::policy::PolicyTable;
use crate::ssh::{ConnectError, Session, Transport};
use crate::version::Version;

pub use crate::lock::{LOCK_DIR as LOCK_FILE_NAME, lock_path};
pub use audit::{Audit, HostMark, Mark, MarkedStep, Outcome, plan_ready};
pub use drift::{
    AuditedPlan, ExpectedPlan, MIN_PLAN_PREFIX, changed_facts, parse_plan_prefix, verify_plan,
};
pub use grouped::{FindingGroup, failure_names, group_findings, render_failures};
pub use local::{LocalRun, file_sha256, local_binary_version, run_local_version};

/// Names of the checks, as they appear in findings, events and the journal.
pub mod check {
    pub const REACHABLE: &str = "reachable";
    /// `become = "sudo"`: `sudo -n` runs commands as root without a password.
    pub const BECOME: &str = "become";
    pub const SELECTION: &str = "selection";
    pub const UPGRADE_PATH: &str = "upgrade-path";
    pub const STRATEGY: &str = "strategy";
    pub const BINARY_VERSION: &str = "binary-version";
    pub const BINARY_SHA256: &str = "binary-sha256";
    pub const DISK_SPACE: &str = "disk-space";
    pub const PG_EXTENSIONS: &str = "pg-extensions";
    pub const STOPPED: &str = "stopped";
    pub const HOT_JOURNAL: &str = "hot-journal";
    pub const API_PORT: &str = "api-port";
    pub const STORAGE: &str = "storage";
    pub const LEDGERS: &str = "ledgers";
    pub const LOCK: &str = "lock";
    pub const DB_SESSIONS: &str = "db-sessions";
    pub const SWITCH: &str = "binary-switch";
    /// Inventory nodes outside the selection on a storage the plan migrates.
    pub const LEFT_OUT: &str = "left-out";
    /// The env file reads the same to systemd and to a shell ([`crate::envfile`]).
    pub const ENV_FILE: &str = "env-file";
}

/// What the preflight looks at. `facts` and `plan` come from [`crate::facts::gather_all`] and
/// [`crate::plan::build_plan`] over the same `hosts`.
pub struct PreflightInput<'a> {
    pub hosts: &'a [ResolvedHost],
    pub facts: &'a BTreeMap<String, HostFacts>,
    pub plan: &'a Plan,
    /// The plan's binary (`plan.binary`).
    pub binary: &'a BinarySource,
    /// The new binary's version when it runs on this machine ([`local_binary_version`]).
    pub local_binary_version: Option<Version>,
}

/// One result of one check, on one host or fleet-wide.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// `None`: fleet-wide.
    pub host: Option<String>,
    /// One of [`check`]'s names.
    pub check: &'static str,
    pub ok: bool,
    /// One line: what was found (for a pass too, so the audit says what was verified).
    pub detail: String,
    /// What to do about it.
    pub hint: Option<String>,
}

impl Finding {
    fn pass(host: Option<&str>, check: &'static str, detail: impl Into<String>) -> Self {
        Finding {
            host: host.map(str::to_owned),
            check,
            ok: true,
            detail: detail.into(),
            hint: None,
        }
    }

    fn fail(
        host: Option<&str>,
        check: &'static str,
        detail: impl Into<String>,
        hint: Option<String>,
    ) -> Self {
        Finding {
            host: host.map(str::to_owned),
            check,
            ok: false,
            detail: detail.into(),
            hint,
        }
    }
}

/// Every finding of one preflight, fleet-wide ones first, then per host in inventory order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Preflight {
    pub findings: Vec<Finding>,
}

impl Preflight {
    /// No check failed: the upgrade may start.
    pub fn passed(&self) -> bool {
        self.findings.iter().all(|f| f.ok)
    }

    pub fn failures(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| !f.ok)
    }

    /// Hosts with a failed `reachable` finding.
    pub fn unreachable_hosts(&self) -> Vec<&str> {
        self.failures()
            .filter(|f| f.check == check::REACHABLE)
            .filter_map(|f| f.host.as_deref())
            .collect()
    }

    /// A failed `lock` finding: another run holds the fleet lock somewhere.
    pub fn lock_held(&self) -> bool {
        self.failures().any(|f| f.check == check::LOCK)
    }

    /// The findings about `host` (fleet-wide ones excluded).
    pub fn for_host<'a>(&'a self, host: &'a str) -> impl Iterator<Item = &'a Finding> {
        self.findings
            .iter()
            .filter(move |f| f.host.as_deref() == Some(host))
    }
}

/// The whole dry run over established connections: facts, plan, preflight, audit. Hosts whose
/// connection failed are reported unreachable; `left_out` are the inventory's other hosts (see
/// [`crate::plan::build_plan_with`]). Emits `host_connected`/`host_unreachable`,
/// `plan_ready` and one `check_result` per finding. Read-only on every host.
#[allow(clippy::too_many_arguments)]
pub async fn audit_fleet(
    hosts: &[ResolvedHost],
    conns: &[(String, Result<Session, ConnectError>)],
    left_out: &LeftOut,
    target: &Version,
    opts: &PlanOptions,
    policy: &PolicyTable,
    local_binary_version: Option<Version>,
    sink: &dyn EventSink,
) -> Audit {
    emit_connections(conns, sink);
    let sessions: BTreeMap<String, Session> = conns
        .iter()
        .filter_map(|(name, conn)| conn.as_ref().ok().map(|s| (name.clone(), s.clone())))
        .collect();
    let mut facts = crate::facts::gather_all(hosts, conns).await;
    // A `numary storage` command an interrupted run left running (the remote process outlives
    // the SSH connection) holds the storage: the facts are read again once it ended.
    let busy: BTreeMap<String, Session> = sessions
        .iter()
        .filter(|(n, _)| facts.get(*n).is_some_and(|f| !f.busy_storage.is_empty()))
        .map(|(n, s)| (n.clone(), s.clone()))
        .collect();
    if !busy.is_empty() {
        crate::runner::probe::wait_storage_commands_on(&busy, sink).await;
        facts = crate::facts::gather_all(hosts, conns).await;
    }
    let mut plan = build_plan_with(hosts, &facts, left_out, target, opts, policy);
    // Each Postgres database the plan would back up and migrate: its migration rows, read once
    // on its migrator. A database already migrated is then neither backed up nor migrated again.
    if read_schemas(&plan, &sessions, hosts, &mut facts).await {
        plan = build_plan_with(hosts, &facts, left_out, target, opts, policy);
    }
    sink.emit(&plan_ready(
        &plan,
        &crate::plan::plan_digest(&plan, &facts),
        &facts,
    ));
    let input = PreflightInput {
        hosts,
        facts: &facts,
        plan: &plan,
        binary: &plan.binary,
        local_binary_version,
    };
    let preflight = run(&sessions, &input, sink).await;
    Audit::new(plan, facts, preflight)
}

/// `host_connected` / `host_unreachable` for each connection attempt.
pub fn emit_connections(conns: &[(String, Result<Session, ConnectError>)], sink: &dyn EventSink) {
    for (name, conn) in conns {
        sink.emit(&match conn {
            Ok(_) => Event::HostConnected { host: name.clone() },
            Err(e) => Event::HostUnreachable {
                host: name.clone(),
                reason: e.to_string(),
            },
        });
    }
}

/// Reads the schema of each Postgres storage the plan migrates, on the migrating host; true
/// when any was read.
async fn read_schemas(
    plan: &Plan,
    sessions: &BTreeMap<String, Session>,
    hosts: &[ResolvedHost],
    facts: &mut BTreeMap<String, crate::facts::HostFacts>,
) -> bool {
    let migrating: Vec<&str> = plan
        .steps
        .iter()
        .filter(|s| matches!(s.kind, StepKind::Migrate | StepKind::Backup))
        .flat_map(|s| s.hosts.iter().map(String::as_str))
        .collect();
    let jobs: Vec<_> = hosts
        .iter()
        .filter(|h| migrating.contains(&h.name.as_str()))
        .filter_map(|h| {
            let f = facts.get(&h.name)?;
            let postgres = f
                .storage
                .as_ref()
                .is_some_and(|s| s.driver == crate::facts::StorageDriver::Postgres);
            let t = sessions.get(&h.name)?;
            (postgres && f.schema.is_none()).then_some((h, t))
        })
        .map(|(h, t)| async move {
            let schema =
                crate::facts::gather_schema(t, h, crate::facts::StorageDriver::Postgres).await;
            (h.name.clone(), schema)
        })
        .collect();
    let mut any = false;
    for (name, schema) in join_all(jobs).await {
        if let (Some(f), Some(schema)) = (facts.get_mut(&name), schema) {
            f.schema = Some(schema);
            any = true;
        }
    }
    any
}

/// Runs every check on every selected host, in parallel over the established `sessions` (hosts
/// without a session are reported unreachable), emits one [`Event::CheckResult`] per finding
/// and returns them all. Read-only on every host.
pub async fn run<T: Transport>(
    sessions: &BTreeMap<String, T>,
    input: &PreflightInput<'_>,
    sink: &dyn EventSink,
) -> Preflight {
    let mut fleet = fleet_findings(input);
    let scope = Scope::of(input.plan);
    let jobs: Vec<_> = input
        .hosts
        .iter()
        .map(|h| host_findings(sessions.get(&h.name), h, input, &scope))
        .collect();
    let per_host = join_all(jobs).await;
    let seen: BTreeMap<&str, &remote::Seen> = input
        .hosts
        .iter()
        .zip(&per_host)
        .map(|(h, (_, seen))| (h.name.as_str(), seen))
        .collect();
    let db_sessions = sessions::findings(input, &scope, &seen);

    let mut findings = Vec::new();
    findings.append(&mut fleet.fleet);
    for (host, (mut found, _)) in input.hosts.iter().zip(per_host) {
        // Blockers naming the host come first: they are the plan's own verdicts.
        let mut all: Vec<Finding> = fleet.by_host.remove(&host.name).unwrap_or_default();
        all.append(&mut found);
        all.extend(
            db_sessions
                .iter()
                .filter(|f| f.host.as_deref() == Some(host.name.as_str()))
                .cloned(),
        );
        let mut all = drop_shadowed_passes(all);
        all.sort_by_key(|f| check_rank(f.check));
        findings.extend(all);
    }
    for f in &findings {
        sink.emit(&Event::CheckResult {
            host: f.host.clone(),
            check: f.check.to_owned(),
            ok: f.ok,
            detail: f.detail.clone(),
            hint: f.hint.clone(),
        });
    }
    Preflight { findings }
}

/// The order findings are listed in, per host: from "can we talk to it" to "is it ours to take".
fn check_rank(name: &str) -> usize {
    const ORDER: [&str; 19] = [
        check::SELECTION,
        check::LEFT_OUT,
        check::REACHABLE,
        check::BECOME,
        check::ENV_FILE,
        check::UPGRADE_PATH,
        check::STRATEGY,
        check::STORAGE,
        check::BINARY_SHA256,
        check::BINARY_VERSION,
        check::STOPPED,
        check::API_PORT,
        check::HOT_JOURNAL,
        check::LEDGERS,
        check::PG_EXTENSIONS,
        check::DB_SESSIONS,
        check::DISK_SPACE,
        check::SWITCH,
        check::LOCK,
    ];
    ORDER.iter().position(|c| *c == name).unwrap_or(ORDER.len())
}

/// A pass is dropped when the same host already failed the same check (a blocker said why).
fn drop_shadowed_passes(findings: Vec<Finding>) -> Vec<Finding> {
    let failed: Vec<&'static str> = findings.iter().filter(|f| !f.ok).map(|f| f.check).collect();
    findings
        .into_iter()
        .filter(|f| !f.ok || !failed.contains(&f.check))
        .collect()
}

/// Findings that need no host: the plan's blockers, the binary.
struct FleetFindings {
    fleet: Vec<Finding>,
    by_host: BTreeMap<String, Vec<Finding>>,
}

fn blocker_check(kind: BlockerKind) -> &'static str {
    match kind {
        BlockerKind::NoHosts => check::SELECTION,
        BlockerKind::NoFacts | BlockerKind::Unreachable => check::REACHABLE,
        BlockerKind::UnknownVersion | BlockerKind::Downgrade | BlockerKind::UnsupportedPath => {
            check::UPGRADE_PATH
        }
        BlockerKind::Running
        | BlockerKind::ServiceStateUnknown
        | BlockerKind::RunningOutsideServiceManager => check::STOPPED,
        BlockerKind::HotJournal => check::HOT_JOURNAL,
        BlockerKind::StorageUnknown | BlockerKind::MixedStorage | BlockerKind::StorageConflict => {
            check::STORAGE
        }
        BlockerKind::LeftOut => check::LEFT_OUT,
        BlockerKind::StrategyNotAllowed
        | BlockerKind::NoReplacePairs
        | BlockerKind::ReplacedHostMissing
        | BlockerKind::ReplaceNeedsPostgres
        | BlockerKind::ReplacementOnOtherStorage
        | BlockerKind::ZeroDowntimeNeedsSharedStorage => check::STRATEGY,
        BlockerKind::Migrated | BlockerKind::NoBackup => check::STORAGE,
        BlockerKind::NoRelease => check::UPGRADE_PATH,
    }
}

fn fleet_findings(input: &PreflightInput) -> FleetFindings {
    let mut out = FleetFindings {
        fleet: Vec::new(),
        by_host: BTreeMap::new(),
    };
    for b in &input.plan.blockers {
        let check = blocker_check(b.kind);
        // Hosts outside the selection (left out of it) have no findings of their own.
        let outside = b
            .hosts
            .iter()
            .any(|h| !input.hosts.iter().any(|s| &s.name == h));
        if b.hosts.is_empty() || outside {
            out.fleet
                .push(Finding::fail(None, check, b.reason.clone(), b.hint.clone()));
        }
        for h in b.hosts.iter().filter(|_| !outside) {
            out.by_host
                .entry(h.clone())
                .or_default()
                .push(Finding::fail(
                    Some(h),
                    check,
                    b.reason.clone(),
                    b.hint.clone(),
                ));
        }
    }
    if !input.plan.touched_hosts().is_empty() {
        out.fleet.extend(local::binary_findings(input));
    }
    out
}

/// Which hosts each kind of check applies to, from the plan's steps.
#[derive(Debug, Default)]
pub(crate) struct Scope {
    /// Hosts the backup step runs on.
    pub backup: Vec<String>,
    /// Hosts the stage step runs on.
    pub stage: Vec<String>,
    /// Hosts that must be cleanly stopped before the migration (offline).
    pub stopped: Vec<String>,
    /// Hosts whose binary the switch step points at the new release.
    pub switch: Vec<String>,
    /// Hosts the migrate step runs on.
    pub migrate: Vec<String>,
    /// Hosts the plan changes.
    pub touched: Vec<String>,
    /// Where Postgres is queried (extensions, size, ledgers, sessions): each storage's
    /// migrator.
    pub migrators: Vec<String>,
    /// Each touched host's storage migrator.
    pub migrator_of: BTreeMap<String, String>,
}

impl Scope {
    fn of(plan: &Plan) -> Scope {
        let hosts_of = |kind: StepKind| -> Vec<String> {
            let mut hosts: Vec<String> = plan
                .steps
                .iter()
                .filter(|s| s.kind == kind)
                .flat_map(|s| s.hosts.iter().cloned())
                .collect();
            hosts.dedup();
            hosts
        };
        Scope {
            backup: hosts_of(StepKind::Backup),
            stage: hosts_of(StepKind::Stage),
            stopped: hosts_of(StepKind::ConfirmStopped),
            migrate: hosts_of(StepKind::Migrate),
            switch: hosts_of(StepKind::Switch),
            touched: plan
                .touched_hosts()
                .into_iter()
                .map(str::to_owned)
                .collect(),
            migrators: plan.migrators().into_iter().map(str::to_owned).collect(),
            migrator_of: plan
                .storages
                .iter()
                .filter_map(|s| s.migrator.as_ref().map(|m| (s, m)))
                .flat_map(|(s, m)| s.hosts.iter().map(move |h| (h.clone(), m.clone())))
                .collect(),
        }
    }

    fn has(list: &[String], host: &str) -> bool {
        list.iter().any(|h| h == host)
    }
}

/// Everything checked on one host: reachability, then (when connected) the remote probes.
async fn host_findings<T: Transport>(
    session: Option<&T>,
    host: &ResolvedHost,
    input: &PreflightInput<'_>,
    scope: &Scope,
) -> (Vec<Finding>, remote::Seen) {
    let mut seen = remote::Seen::default();
    let found = host_probes(session, host, input, scope, &mut seen).await;
    (found, seen)
}

async fn host_probes<T: Transport>(
    session: Option<&T>,
    host: &ResolvedHost,
    input: &PreflightInput<'_>,
    scope: &Scope,
    seen: &mut remote::Seen,
) -> Vec<Finding> {
    let name = host.name.as_str();
    let facts = input.facts.get(name);
    let reachable = facts.is_some_and(HostFacts::reachable);
    let mut out = Vec::new();
    let Some(session) = session.filter(|_| reachable) else {
        if reachable {
            out.push(Finding::fail(
                Some(name),
                check::REACHABLE,
                format!("no SSH session to `{name}`"),
                Some(format!("check it with `fleetup status --limit {name}`")),
            ));
        }
        // Unreachable hosts already carry the plan's `unreachable` blocker.
        return out;
    };
    let facts = facts.cloned().unwrap_or_default();
    out.push(Finding::pass(
        Some(name),
        check::REACHABLE,
        "answers over SSH",
    ));
    out.extend(become_finding(session, host, input.plan).await);
    out.extend(env_file_finding(name, host, &facts));
    out.extend(path_finding(name, input.plan));
    out.extend(state_findings(name, &facts, input.plan, scope));
    out.extend(remote::findings(session, host, &facts, input, scope, seen).await);
    out
}

/// The env file is read as systemd's `EnvironmentFile=` reads it and never run; a line a shell
/// reads otherwise (the service manager may be a shell script, and an operator's tooling often
/// sources the file) means the storage commands and the service could see different values:
/// refused, naming each line.
fn env_file_finding(name: &str, host: &ResolvedHost, facts: &HostFacts) -> Option<Finding> {
    let file = host.ledger.env_file.as_deref()?;
    if facts.env_divergent.is_empty() {
        return Some(Finding::pass(
            Some(name),
            check::ENV_FILE,
            format!(
                "`{file}` reads the same to systemd and to a shell (fleetup parses it, never runs it)"
            ),
        ));
    }
    Some(Finding::fail(
        Some(name),
        check::ENV_FILE,
        format!(
            "`{file}` reads differently to systemd (`EnvironmentFile=`) and to a shell: {}",
            facts.env_divergent.join("; ")
        ),
        Some(
            "write each of these lines as `KEY=value` with no space, `$`, backtick, quote or shell operator in the value, or as `KEY='value'` in single quotes; no `export`, no `;` comments".to_owned(),
        ),
    ))
}

/// `become = "sudo"` on a host the plan changes: `sudo -n` is asked once, within the host's
/// connect timeout, so a sudo that wants a password is a finding before any change.
async fn become_finding<T: Transport>(
    session: &T,
    host: &ResolvedHost,
    plan: &Plan,
) -> Option<Finding> {
    if host.ledger.escalate != crate::inventory::Become::Sudo {
        return None;
    }
    let name = host.name.as_str();
    let mut kinds: Vec<&str> = Vec::new();
    for s in plan
        .steps
        .iter()
        .filter(|s| s.hosts.iter().any(|h| h == name))
    {
        if PRIVILEGED.contains(&s.kind) && !kinds.contains(&s.kind.as_str()) {
            kinds.push(s.kind.as_str());
        }
    }
    if kinds.is_empty() {
        return None;
    }
    let kind = format!("run {}", kinds.join(", "));
    Some(
        match privileges::probe(session, host, &kind, host.ssh.connect_timeout).await {
            Ok(()) => Finding::pass(
                Some(name),
                check::BECOME,
                format!("`sudo -n` runs commands as root for `{}`", host.ssh.user),
            ),
            Err(e) => Finding::fail(Some(name), check::BECOME, e.to_string(), Some(e.hint())),
        },
    )
}

/// The steps whose commands run with the host's `become` privileges (see docs/upgrade.md;
/// the lock too, which lives in `releases_dir`).
const PRIVILEGED: [StepKind; 9] = [
    StepKind::StopService,
    StepKind::Backup,
    StepKind::Stage,
    StepKind::Migrate,
    StepKind::Switch,
    StepKind::Restore,
    StepKind::SwitchBack,
    StepKind::StartService,
    StepKind::Decommission,
];

/// The table's verdict for hosts it allows (refusals are blockers, reported already).
fn path_finding(name: &str, plan: &Plan) -> Option<Finding> {
    let hp = plan.host(name)?;
    match (hp.action, &hp.current, &hp.verdict) {
        (HostAction::AlreadyAtTarget, Some(c), _) => Some(Finding::pass(
            Some(name),
            check::UPGRADE_PATH,
            format!("already runs `{c}`: nothing to do"),
        )),
        (HostAction::Deploy, c, _) => Some(Finding::pass(
            Some(name),
            check::UPGRADE_PATH,
            format!(
                "new node (runs {}): deployed on `{}`, its own version does not matter",
                c.as_ref()
                    .map_or_else(|| "an unknown version".to_owned(), |c| format!("`{c}`")),
                plan.target
            ),
        )),
        (_, Some(c), Some(v)) if v.supported => {
            let row = v.row.as_ref().map_or_else(String::new, |r| {
                format!(
                    " (table row {}: `{}` from `{}`{})",
                    r.index,
                    r.target,
                    r.min_current,
                    if r.zero_downtime {
                        ", zero-downtime"
                    } else {
                        ", offline only"
                    }
                )
            });
            Some(Finding::pass(
                Some(name),
                check::UPGRADE_PATH,
                format!("`{c}` → `{}` is supported{row}", plan.target),
            ))
        }
        _ => None,
    }
}

/// Passes for what the facts already show; their failures are the plan's blockers.
fn state_findings(name: &str, facts: &HostFacts, plan: &Plan, scope: &Scope) -> Vec<Finding> {
    let mut out = Vec::new();
    if Scope::has(&scope.stopped, name) {
        // A stopped service gets its pass from the process scan, which says more.
        let detail = match facts.service {
            ServiceState::Running if plan.stop_running => {
                "running: `--stop` stops it through the service manager first".to_owned()
            }
            ServiceState::Unknown if plan.stop_running => {
                "service state unknown: `--stop` stops it through the service manager first"
                    .to_owned()
            }
            // Without `--stop`, the plan blocks it.
            _ => String::new(),
        };
        if !detail.is_empty() {
            out.push(Finding::pass(Some(name), check::STOPPED, detail));
        }
        let sqlite = facts
            .storage
            .as_ref()
            .is_some_and(|s| s.driver == StorageDriver::Sqlite);
        if sqlite {
            let detail = match (facts.hot_journals.is_empty(), facts.service) {
                (true, _) => "no SQLite journal in the storage dir".to_owned(),
                (false, ServiceState::Running) => format!(
                    "journal files beside the running database ({}) are normal; checked again once it is stopped",
                    facts.hot_journals.join(", ")
                ),
                // Beside a stopped database: the plan's `hot_journal` blocker.
                (false, _) => String::new(),
            };
            if !detail.is_empty() {
                out.push(Finding::pass(Some(name), check::HOT_JOURNAL, detail));
            }
        }
    }
    out
}

/// Awaits every future, concurrently on the current task (the futures borrow the sessions, so
/// they cannot be spawned), and returns their outputs in order.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    Poll::Ready(v) => *output = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}
