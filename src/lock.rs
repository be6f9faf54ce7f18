//! The fleet lock: one lock per node, `<releases_dir>/.fleetup.lock/`, taken with `mkdir` (atomic
//! on every POSIX filesystem) and holding `owner.json`: who, from where, run id, pid and process
//! identity, fleetup version, and a **lease** (its length and the time of its last refresh, both
//! on the node's own clock, so the operator's clock never matters). The holder refreshes the lease
//! while it runs; a lock whose lease expired, or whose holder provably died on this machine, may
//! be broken on the operator's word (`--break-lock`). A fresh lease held elsewhere never is.
//!
//! How the engine uses it:
//! - [`acquire`] takes the lock and writes the lease; [`LockError::Held`] carries the lock as read
//!   ([`HeldLock`]: holder, lease, the node's clock). With `--break-lock`, feed it to
//!   [`break_decision`] (with [`liveness_here`] of its owner) and, when allowed, [`break_lock`]
//!   (which removes only that very lock, unchanged since it was read), then [`acquire`] again.
//! - [`spawn_refresher`] keeps the leases of the locks taken fresh until its [`Refresher`] is
//!   stopped or dropped; failures (a lock gone or taken by another run) go to a callback.
//! - `--resume` of run `R`: [`take_over`] rewrites the owner and the lease of a lock `R` holds.
//! - [`release`] removes the lock only when it names this run.

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inventory::ResolvedHost;
use crate::shell::quote;
use crate::ssh::{ExecOptions, ExitStatus, Transport};

/// Name of the lock dir inside the releases dir (the preflight reads it there too).
pub const LOCK_DIR: &str = ".fleetup.lock";
const OWNER_FILE: &str = "owner.json";
/// First line the scripts print before a held lock's owner file: `fleetup-lock NOW MTIME`.
const HEADER: &str = "fleetup-lock";
/// Exit status of the acquire script when another run holds the lock.
const HELD: u32 = 10;
/// The lock dir is gone.
const GONE: u32 = 11;
/// The lock names another run (its owner file follows on stdout).
const NOT_OURS: u32 = 12;
/// The lock changed since it was read: not broken.
const CHANGED: u32 = 13;
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a lease lasts and how often its holder refreshes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseConfig {
    /// Pause between two refreshes.
    pub refresh: Duration,
    /// A lease not refreshed for this long is expired. Written into the lock, so the reader
    /// judges it with the holder's length, not its own.
    pub ttl: Duration,
}

impl Default for LeaseConfig {
    /// Refresh every 10 s, expire after 60 s: five refreshes may fail before the lease expires.
    fn default() -> Self {
        LeaseConfig {
            refresh: Duration::from_secs(10),
            ttl: Duration::from_secs(60),
        }
    }
}

impl LeaseConfig {
    /// A lease that survives at least one failed refresh: `ttl` at least twice `refresh`, both
    /// at least a second (the node's clock counts seconds).
    pub fn new(refresh: Duration, ttl: Duration) -> Result<LeaseConfig, String> {
        if refresh < Duration::from_secs(1) || ttl < refresh * 2 {
            return Err(format!(
                "the lock lease `{}` must be at least twice its refresh interval `{}` (and the interval at least `1s`)",
                humantime::format_duration(ttl),
                humantime::format_duration(refresh)
            ));
        }
        Ok(LeaseConfig { refresh, ttl })
    }
}

/// The lease as `owner.json` records it; every time is the node's `date +%s`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub ttl_secs: u64,
    pub refresh_secs: u64,
    pub refreshed_at: u64,
}

/// What tells the holder's process apart from any other on its machine, long after it died:
/// the machine (`/etc/machine-id`), the boot (`boot_id`) and the process's start time (clock
/// ticks since boot, `/proc/<pid>/stat`), so a recycled pid is never mistaken for the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct ProcessIdentity {
    #[serde(default)]
    pub machine_id: Option<String>,
    #[serde(default)]
    pub boot_id: Option<String>,
    #[serde(default)]
    pub start_ticks: Option<u64>,
}

impl ProcessIdentity {
    /// This process's identity; `None` where `/proc` does not tell it (not Linux).
    pub fn current() -> Option<ProcessIdentity> {
        let id = ProcessIdentity {
            machine_id: machine_id(),
            boot_id: boot_id(),
            start_ticks: start_ticks(std::process::id()),
        };
        (id != ProcessIdentity::default()).then_some(id)
    }
}

fn read_trimmed(path: &str) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    (!s.is_empty()).then(|| s.to_owned())
}

fn machine_id() -> Option<String> {
    read_trimmed("/etc/machine-id").or_else(|| read_trimmed("/var/lib/dbus/machine-id"))
}

fn boot_id() -> Option<String> {
    read_trimmed("/proc/sys/kernel/random/boot_id")
}

/// Field 22 of `/proc/<pid>/stat` (the fields after the command name, which may hold spaces
/// and parentheses, start at field 3).
fn start_ticks(pid: u32) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    parse_start_ticks(&stat)
}

fn parse_start_ticks(stat: &str) -> Option<u64> {
    let (_, rest) = stat.rsplit_once(')')?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Who holds a lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockOwner {
    pub user: String,
    /// The machine fleetup ran on.
    pub local_host: String,
    pub run_id: String,
    pub pid: u32,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub fleetup_version: String,
    pub command: String,
    /// Absent in locks of older fleetup versions, and where `/proc` does not tell it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub process: Option<ProcessIdentity>,
}

impl LockOwner {
    /// `ops@laptop, run 20260125T174502Z-3f9a0c (pid 4242, `upgrade`, since 2026-01-25T17:45:02Z)`.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}, run `{}` (pid {}, `{}`, fleetup {}, since {})",
            self.user,
            self.local_host,
            self.run_id,
            self.pid,
            self.command,
            self.fleetup_version,
            self.started_at
        )
    }
}

/// What the holder of a lock looks like when it was read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Holder {
    Known(LockOwner),
    /// The lock dir exists without a readable owner (being written, or left by a crash).
    Unknown(String),
}

impl Holder {
    pub fn describe(&self) -> String {
        match self {
            Holder::Known(o) => o.describe(),
            Holder::Unknown(raw) if raw.trim().is_empty() => {
                "an unknown run (the lock has no owner file)".to_string()
            }
            Holder::Unknown(raw) => format!("an unknown run (owner file: `{}`)", raw.trim()),
        }
    }

    pub fn owner(&self) -> Option<&LockOwner> {
        match self {
            Holder::Known(o) => Some(o),
            Holder::Unknown(_) => None,
        }
    }
}

/// A held lock as read on its node, with the node's clock at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldLock {
    pub holder: Holder,
    /// `None` in locks of older fleetup versions and in locks without a readable owner.
    pub lease: Option<Lease>,
    /// The node's `date +%s` when the lock was read.
    pub node_now: Option<u64>,
    /// Last change of the lock dir on the node's clock: judges a lock without a lease.
    pub dir_mtime: Option<u64>,
    /// The owner file as read (trailing newlines removed): [`break_lock`] removes the lock only
    /// while its owner file still reads the same.
    pub raw: String,
}

/// Whether a held lock's lease still runs, on the node's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseState {
    Fresh {
        expires_in: Duration,
    },
    Expired {
        since: Duration,
    },
    /// Neither a lease nor the time of the lock could be read.
    Unknown,
}

impl HeldLock {
    /// The lease's state. A lock without a lease (an older fleetup's, or one without a readable
    /// owner) counts as refreshed when its dir last changed, with `default_ttl` as its length.
    pub fn lease_state(&self, default_ttl: Duration) -> LeaseState {
        let Some(now) = self.node_now else {
            return LeaseState::Unknown;
        };
        let (at, ttl) = match (self.lease, self.dir_mtime) {
            (Some(l), _) => (l.refreshed_at, l.ttl_secs),
            (None, Some(mtime)) => (mtime, default_ttl.as_secs()),
            (None, None) => return LeaseState::Unknown,
        };
        // A node clock set back counts as no time passed.
        let age = now.saturating_sub(at);
        if age >= ttl {
            LeaseState::Expired {
                since: Duration::from_secs(age - ttl),
            }
        } else {
            LeaseState::Fresh {
                expires_in: Duration::from_secs(ttl - age),
            }
        }
    }

    /// `the holder; lease fresh (expires in 42s)`, for findings and errors.
    pub fn describe(&self, default_ttl: Duration) -> String {
        let state = match (self.lease.is_some(), self.lease_state(default_ttl)) {
            (_, LeaseState::Unknown) => "lease unknown (the node told no time)".to_owned(),
            (true, LeaseState::Fresh { expires_in }) => {
                format!("lease fresh (expires in {})", secs(expires_in))
            }
            (true, LeaseState::Expired { since }) => {
                format!("lease expired ({} ago)", secs(since))
            }
            (false, LeaseState::Fresh { expires_in }) => format!(
                "no lease, counted from the lock's last change: fresh (expires in {})",
                secs(expires_in)
            ),
            (false, LeaseState::Expired { since }) => format!(
                "no lease, counted from the lock's last change: expired ({} ago)",
                secs(since)
            ),
        };
        format!("{}; {state}", self.holder.describe())
    }
}

fn secs(d: Duration) -> String {
    humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
}

/// Reads what the scripts print about a held lock: an optional `held` line (the preflight's),
/// an optional `fleetup-lock NOW MTIME` line, then the owner file.
pub fn parse_held(stdout: &str) -> HeldLock {
    let mut rest = stdout;
    if let Some(r) = rest.strip_prefix("held\n") {
        rest = r;
    }
    let (mut node_now, mut dir_mtime) = (None, None);
    if let Some(r) = rest.strip_prefix(HEADER) {
        let (line, after) = r.split_once('\n').unwrap_or((r, ""));
        let mut f = line.split_whitespace();
        node_now = f.next().and_then(|v| v.parse().ok());
        dir_mtime = f.next().and_then(|v| v.parse().ok());
        rest = after;
    }
    let raw = rest.trim_end_matches('\n').to_owned();
    #[derive(Deserialize)]
    struct WithLease {
        lease: Option<Lease>,
    }
    let lease = serde_json::from_str::<WithLease>(raw.trim())
        .ok()
        .and_then(|w| w.lease);
    HeldLock {
        holder: parse_holder(&raw),
        lease,
        node_now,
        dir_mtime,
        raw,
    }
}

/// The owner in an owner file (its lease, if any, is ignored here).
pub fn parse_holder(stdout: &str) -> Holder {
    match serde_json::from_str::<LockOwner>(stdout.trim()) {
        Ok(o) => Holder::Known(o),
        Err(_) => Holder::Unknown(stdout.to_string()),
    }
}

/// Whether the holder's process is alive, judged from this machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Liveness {
    Alive,
    /// Provably gone: no such pid, another process under its pid, or a previous boot.
    Dead,
    /// Not on this machine, or nothing here tells.
    Unknown,
}

/// Whether `owner` is a live process of this machine (`local_host` is ours). Another machine,
/// even under the same host name (its machine id differs), is [`Liveness::Unknown`].
pub fn liveness_here(owner: &LockOwner, local_host: &str) -> Liveness {
    if owner.local_host != local_host {
        return Liveness::Unknown;
    }
    let theirs = owner.process.clone().unwrap_or_default();
    let ours = ProcessIdentity {
        machine_id: machine_id(),
        boot_id: boot_id(),
        start_ticks: None,
    };
    match (&theirs.machine_id, &ours.machine_id) {
        (Some(a), Some(b)) if a != b => return Liveness::Unknown,
        _ => {}
    }
    let same_machine =
        matches!((&theirs.machine_id, &ours.machine_id), (Some(a), Some(b)) if a == b);
    if same_machine && matches!((&theirs.boot_id, &ours.boot_id), (Some(a), Some(b)) if a != b) {
        return Liveness::Dead;
    }
    let Ok(pid) = libc::pid_t::try_from(owner.pid) else {
        return Liveness::Dead;
    };
    if pid <= 0 {
        return Liveness::Dead;
    }
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return Liveness::Dead;
    }
    if let Some(want) = theirs.start_ticks {
        return match start_ticks(owner.pid) {
            Some(t) if t == want => Liveness::Alive,
            Some(_) => Liveness::Dead,
            None => Liveness::Unknown,
        };
    }
    // An older lock without a start time: a recycled pid is another program; only a process
    // that is fleetup counts.
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(c) if String::from_utf8_lossy(&c).contains("fleetup") => Liveness::Alive,
        Ok(_) => Liveness::Dead,
        Err(_) => Liveness::Unknown,
    }
}

/// Whether the holder is a live fleetup process on this very machine.
pub fn holder_alive_here(owner: &LockOwner, local_host: &str) -> bool {
    liveness_here(owner, local_host) == Liveness::Alive
}

/// Why `--break-lock` may break a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakReason {
    /// The lease was not refreshed in time (on the node's clock).
    Expired { since: Duration },
    /// Its holder ran on this machine and is gone.
    HolderDeadHere,
}

/// Why `--break-lock` refuses to break a lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// Its holder is a live fleetup on this machine.
    AliveHere { pid: u32 },
    /// The lease is fresh: its holder may be running elsewhere.
    FreshLease { expires_in: Duration },
    /// Neither a lease nor the lock's age could be read.
    Unjudged,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::AliveHere { pid } => {
                write!(f, "its fleetup (pid {pid}) still runs on this machine")
            }
            Refusal::FreshLease { expires_in } => write!(
                f,
                "its lease is fresh and expires in {} (on the node's clock) unless its holder refreshes it",
                secs(*expires_in)
            ),
            Refusal::Unjudged => write!(f, "neither its lease nor its age could be read"),
        }
    }
}

/// The `--break-lock` rule, pure: break a lock whose holder ran on this machine (`local_host`
/// equal to `here`) and is provably dead, or whose lease expired; never a live local holder,
/// never a fresh lease from elsewhere. `liveness` is [`liveness_here`] of the holder.
pub fn break_decision(
    held: &HeldLock,
    here: &str,
    liveness: Liveness,
    default_ttl: Duration,
) -> Result<BreakReason, Refusal> {
    if let Some(owner) = held.holder.owner()
        && owner.local_host == here
    {
        match liveness {
            Liveness::Alive => return Err(Refusal::AliveHere { pid: owner.pid }),
            Liveness::Dead => return Ok(BreakReason::HolderDeadHere),
            Liveness::Unknown => {}
        }
    }
    match held.lease_state(default_ttl) {
        LeaseState::Expired { since } => Ok(BreakReason::Expired { since }),
        LeaseState::Fresh { expires_in } => Err(Refusal::FreshLease { expires_in }),
        LeaseState::Unknown => Err(Refusal::Unjudged),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("host `{host}` is locked by {}", .held.describe(LeaseConfig::default().ttl))]
    Held { host: String, held: Box<HeldLock> },
    /// `--break-lock` would not break this lock.
    #[error("host `{host}`: not breaking the lock held by {}: {refusal}", .holder.describe())]
    Refused {
        host: String,
        holder: Box<Holder>,
        refusal: Refusal,
    },
    /// The lock this run held is gone (broken by another run, or removed by hand).
    #[error("host `{host}`: the lock `{path}` is gone")]
    Gone { host: String, path: String },
    /// The lock names another run than the one refreshing, releasing or resuming.
    #[error("host `{host}`: the lock `{path}` belongs to {}", .holder.describe())]
    NotOurs {
        host: String,
        path: String,
        holder: Box<Holder>,
    },
    #[error("host `{host}`: cannot {action} the lock `{path}`: {reason}")]
    Failed {
        host: String,
        action: &'static str,
        path: String,
        reason: String,
    },
}

/// The lock dir of `host`: `<releases_dir>/.fleetup.lock`.
pub fn lock_path(host: &ResolvedHost) -> String {
    format!(
        "{}/{LOCK_DIR}",
        host.ledger.releases_dir.trim_end_matches('/')
    )
}

/// The shell's `printf` format and argument writing `owner` and a lease refreshed now (node
/// clock) as one JSON object: the owner's JSON without its closing brace, then the lease.
fn owner_printf(owner: &LockOwner, lease: &LeaseConfig) -> String {
    let json = serde_json::to_string(owner).unwrap_or_default();
    let head = json.strip_suffix('}').unwrap_or(&json);
    let prefix = format!(
        "{head},\"lease\":{{\"ttl_secs\":{},\"refresh_secs\":{},\"refreshed_at\":",
        lease.ttl.as_secs().max(1),
        lease.refresh.as_secs().max(1)
    );
    format!("printf '%s%s}}}}\\n' {} \"$(date +%s)\"", quote(&prefix))
}

/// Prints `fleetup-lock NOW MTIME` (node clock; `-` when `stat` cannot tell).
const PRINT_HEADER: &str = "printf 'fleetup-lock %s %s\\n' \"$(date +%s)\" \"$(stat -c %Y \"$d\" 2>/dev/null || stat -f %m \"$d\" 2>/dev/null || echo -)\"";

/// `mkdir` the lock dir and write the owner file with a fresh lease; when the dir exists, print
/// the node's clock, the dir's mtime and its owner file, and exit [`HELD`].
pub fn acquire_command(host: &ResolvedHost, owner: &LockOwner, lease: &LeaseConfig) -> String {
    format!(
        "r={r}; d={d}; f=\"$d/{OWNER_FILE}\"; g={g}; mkdir -p \"$r\" || exit 20; \
         if mkdir \"$d\" 2>/dev/null; then \
           if {write} > \"$f.part\" && mv -f \"$f.part\" \"$f\"; then \
             printf '{GENERATION_LINE} %s\\n' \"$(cat \"$g\" 2>/dev/null)\"; \
             printf '%s\\n' {id} > \"$g.part\" && mv -f \"$g.part\" \"$g\" || \
               {{ rm -f \"$g.part\" \"$g\"; echo '{GENERATION_LINE} !'; }}; exit 0; fi; \
           rm -f \"$f.part\"; rmdir \"$d\"; exit 21; \
         fi; \
         {PRINT_HEADER}; cat \"$f\" 2>/dev/null; exit {HELD}",
        r = quote(&host.ledger.releases_dir),
        d = quote(&lock_path(host)),
        g = quote(&generation_path(host)),
        id = quote(&owner.run_id),
        write = owner_printf(owner, lease),
    )
}

/// `<releases_dir>/.fleetup.generation`: the run id of the last run that took the node's lock,
/// written by each run when it takes it. The facts read it; a run whose lock then finds the same
/// id knows no other run locked (and so changed) the node in between.
pub fn generation_path(host: &ResolvedHost) -> String {
    format!(
        "{}/{GENERATION_FILE}",
        host.ledger.releases_dir.trim_end_matches('/')
    )
}

/// The file name of [`generation_path`].
pub const GENERATION_FILE: &str = ".fleetup.generation";

const GENERATION_LINE: &str = "==generation";

/// The generation a successful [`acquire_command`] found (empty: none yet). When this run's
/// own could not be written (the old one is then removed), `!`, which no facts ever read: no
/// run trusts its facts across that lock.
fn parse_generation(stdout: &str) -> Option<String> {
    let found: Vec<&str> = stdout
        .lines()
        .filter_map(|l| l.strip_prefix(GENERATION_LINE))
        .map(str::trim)
        .collect();
    if found.contains(&"!") {
        return Some("!".into());
    }
    found
        .first()
        .map(|g| g.to_string())
        .filter(|g| !g.is_empty())
}

/// Prints a lock as [`parse_held`] reads it (header line, then the owner file), or exits 3
/// when there is no lock. Read-only.
pub fn read_command(host: &ResolvedHost) -> String {
    format!(
        "d={d}; f=\"$d/{OWNER_FILE}\"; [ -d \"$d\" ] || exit 3; {PRINT_HEADER}; cat \"$f\" 2>/dev/null; true",
        d = quote(&lock_path(host)),
    )
}

/// Checks the lock exists and names `run_id` (else exits [`GONE`], or [`NOT_OURS`] after
/// printing the owner file). Leaves `d` and `f` set.
fn ours_check(host: &ResolvedHost, run_id: &str) -> String {
    format!(
        "d={d}; f=\"$d/{OWNER_FILE}\"; [ -d \"$d\" ] || {{ echo 'the lock is gone' >&2; exit {GONE}; }}; \
         grep -qF {id} \"$f\" 2>/dev/null || {{ cat \"$f\" 2>/dev/null; echo 'the lock belongs to another run' >&2; exit {NOT_OURS}; }}",
        d = quote(&lock_path(host)),
        id = quote(&format!("\"run_id\":\"{run_id}\"")),
    )
}

/// Sets the lease's refresh time to the node's clock, atomically, if the lock names `run_id`.
/// The check and the rename are two steps: a lock broken and taken again by another run in
/// between would be overwritten. That window is a few milliseconds of shell, and it only opens
/// once this run's lease has already expired (a break needs that, or this run dead).
pub fn refresh_command(host: &ResolvedHost, run_id: &str) -> String {
    format!(
        "{check}; \
         sed \"s/\\\"refreshed_at\\\":[0-9]*/\\\"refreshed_at\\\":$(date +%s)/\" \"$f\" > \"$f.part\" \
           && grep -qF '\"refreshed_at\"' \"$f.part\" && mv -f \"$f.part\" \"$f\" \
           || {{ rm -f \"$f.part\"; exit 21; }}",
        check = ours_check(host, run_id),
    )
}

/// Rewrites the owner file (new owner, fresh lease) atomically, if the lock names the owner's
/// run id.
pub fn take_over_command(host: &ResolvedHost, owner: &LockOwner, lease: &LeaseConfig) -> String {
    format!(
        "{check}; {write} > \"$f.part\" && mv -f \"$f.part\" \"$f\" || {{ rm -f \"$f.part\"; exit 21; }}",
        check = ours_check(host, &owner.run_id),
        write = owner_printf(owner, lease),
    )
}

/// Remove the lock only when its owner file names `run_id` (never another run's lock).
pub fn release_command(host: &ResolvedHost, run_id: &str) -> String {
    format!(
        "{check}; rm -f \"$f\" \"$f.part\" && rmdir \"$d\"",
        check = ours_check(host, run_id),
    )
}

/// Remove the lock as it was read: only while its owner file still reads `raw` (else exit
/// [`CHANGED`]); only the lock dir's own files. A lock already gone is fine.
pub fn break_command(host: &ResolvedHost, raw: &str) -> String {
    format!(
        "d={d}; f=\"$d/{OWNER_FILE}\"; [ -e \"$d\" ] || exit 0; \
         [ \"$(cat \"$f\" 2>/dev/null)\" = {raw} ] || {{ echo 'the lock changed since it was read' >&2; exit {CHANGED}; }}; \
         rm -f \"$f\" \"$f.part\" && rmdir \"$d\"",
        d = quote(&lock_path(host)),
        raw = quote(raw),
    )
}

fn opts() -> ExecOptions {
    ExecOptions {
        timeout: Some(LOCK_TIMEOUT),
        ..Default::default()
    }
}

/// Takes the lock of one node with a fresh lease. Returns the generation it found: the run id of
/// the run that took the lock before (see [`generation_path`]).
pub async fn acquire<T: Transport + ?Sized>(
    t: &T,
    host: &ResolvedHost,
    owner: &LockOwner,
    lease: &LeaseConfig,
) -> Result<Option<String>, LockError> {
    let out = run(t, host, &acquire_command(host, owner, lease), "take").await?;
    match &out.status {
        ExitStatus::Code(0) => Ok(parse_generation(&out.stdout_lossy())),
        ExitStatus::Code(HELD) => Err(LockError::Held {
            host: host.name.clone(),
            held: Box::new(parse_held(&out.stdout_lossy())),
        }),
        _ => Err(failed(host, "take", &out)),
    }
}

/// Refreshes the lease of the lock `run_id` holds on one node. [`LockError::Gone`] or
/// [`LockError::NotOurs`]: the lock is lost.
pub async fn refresh<T: Transport + ?Sized>(
    t: &T,
    host: &ResolvedHost,
    run_id: &str,
) -> Result<(), LockError> {
    let out = run(t, host, &refresh_command(host, run_id), "refresh").await?;
    ours_outcome(host, &out, "refresh")
}

/// `--resume`: the lock of run `owner.run_id` becomes this process's (new pid and process
/// identity, fresh lease), atomically. Refused unless the lock names that run.
pub async fn take_over<T: Transport + ?Sized>(
    t: &T,
    host: &ResolvedHost,
    owner: &LockOwner,
    lease: &LeaseConfig,
) -> Result<(), LockError> {
    let out = run(t, host, &take_over_command(host, owner, lease), "take over").await?;
    ours_outcome(host, &out, "take over")
}

/// Releases the lock of one node, if this run holds it.
pub async fn release<T: Transport + ?Sized>(
    t: &T,
    host: &ResolvedHost,
    run_id: &str,
) -> Result<(), LockError> {
    let out = run(t, host, &release_command(host, run_id), "release").await?;
    ours_outcome(host, &out, "release")
}

/// Breaks the lock of one node as `held` shows it; refused (`Failed`) when it changed since.
/// Call only after [`break_decision`] allowed it.
pub async fn break_lock<T: Transport + ?Sized>(
    t: &T,
    host: &ResolvedHost,
    held: &HeldLock,
) -> Result<(), LockError> {
    let out = run(t, host, &break_command(host, &held.raw), "break").await?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(host, "break", &out))
    }
}

async fn run<T: Transport + ?Sized>(
    t: &T,
    host: &ResolvedHost,
    command: &str,
    action: &'static str,
) -> Result<crate::ssh::ExecOutput, LockError> {
    // The lock lives in `releases_dir`: written with the host's `become` privileges.
    t.exec(&host.ledger.escalate.wrap(command), &opts())
        .await
        .map_err(|e| LockError::Failed {
            host: host.name.clone(),
            action,
            path: lock_path(host),
            reason: e.to_string(),
        })
}

fn failed(host: &ResolvedHost, action: &'static str, out: &crate::ssh::ExecOutput) -> LockError {
    LockError::Failed {
        host: host.name.clone(),
        action,
        path: lock_path(host),
        reason: format!("exit {}: {}", out.status, out.stderr_lossy().trim()),
    }
}

fn ours_outcome(
    host: &ResolvedHost,
    out: &crate::ssh::ExecOutput,
    action: &'static str,
) -> Result<(), LockError> {
    match out.status {
        ExitStatus::Code(0) => Ok(()),
        ExitStatus::Code(GONE) => Err(LockError::Gone {
            host: host.name.clone(),
            path: lock_path(host),
        }),
        ExitStatus::Code(NOT_OURS) => Err(LockError::NotOurs {
            host: host.name.clone(),
            path: lock_path(host),
            holder: Box::new(parse_holder(&out.stdout_lossy())),
        }),
        _ => Err(failed(host, action, out)),
    }
}

/// Told of each failed refresh: the host and why. After [`LockError::Gone`] or
/// [`LockError::NotOurs`] that host's lease is no longer refreshed (the lock is lost); other
/// failures (a dropped connection) are retried at the next refresh.
pub type RefreshFailed = Arc<dyn Fn(&str, &LockError) + Send + Sync>;

/// Refreshes leases in the background until stopped or dropped.
pub struct Refresher {
    stop: tokio::sync::watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Refresher {
    /// Stops refreshing and waits for a refresh under way to end.
    pub async fn stop(mut self) {
        let _ = self.stop.send(true);
        for task in std::mem::take(&mut self.tasks) {
            let _ = task.await;
        }
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        let _ = self.stop.send(true);
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Spawns one task per lock that refreshes its lease every `cfg.refresh` (the first refresh one
/// interval after the call: [`acquire`] just wrote it). Needs a tokio runtime.
pub fn spawn_refresher<T: Transport + 'static>(
    locks: Vec<(ResolvedHost, T)>,
    run_id: &str,
    cfg: LeaseConfig,
    on_failure: RefreshFailed,
) -> Refresher {
    let (stop, rx) = tokio::sync::watch::channel(false);
    let tasks = locks
        .into_iter()
        .map(|(host, t)| {
            let mut rx = rx.clone();
            let run_id = run_id.to_owned();
            let on_failure = on_failure.clone();
            tokio::spawn(async move {
                let period = cfg.refresh.max(Duration::from_millis(100));
                let mut ticks =
                    tokio::time::interval_at(tokio::time::Instant::now() + period, period);
                ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = rx.changed() => break,
                        _ = ticks.tick() => {}
                    }
                    if *rx.borrow() {
                        break;
                    }
                    match refresh(&t, &host, &run_id).await {
                        Ok(()) => {}
                        Err(e @ (LockError::Gone { .. } | LockError::NotOurs { .. })) => {
                            on_failure(&host.name, &e);
                            break;
                        }
                        Err(e) => on_failure(&host.name, &e),
                    }
                }
            })
        })
        .collect();
    Refresher { stop, tasks }
}

#[cfg(test)]
mod tests {
    use std::process::Command;
    use std::sync::Mutex;

    use super::*;
    use crate::ssh::{
        ExecError, ExecOutput, HttpError, HttpResponse, Progress, UploadError, UploadReport,
    };

    fn host(releases: &str) -> ResolvedHost {
        let mut h = crate::runner::tests::host("node-1");
        h.ledger.releases_dir = releases.into();
        h
    }

    fn owner(run_id: &str) -> LockOwner {
        LockOwner {
            user: "o'ps".into(),
            local_host: "lap top".into(),
            run_id: run_id.into(),
            pid: 4242,
            started_at: "2026-01-25T17:45:02Z".into(),
            fleetup_version: "0.1.0".into(),
            command: "upgrade".into(),
            process: None,
        }
    }

    fn sh(cmd: &str) -> (i32, String) {
        let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    fn now() -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    const CFG: LeaseConfig = LeaseConfig {
        refresh: Duration::from_secs(10),
        ttl: Duration::from_secs(60),
    };

    /// The scripts, run by a real shell: the first run takes the lock with a lease on the
    /// node's clock, a second sees the first's owner and lease, cannot release it, and the
    /// holder's release leaves nothing behind.
    #[test]
    fn scripts_take_report_and_release_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path().join("rel eases");
        let h = host(&releases.to_string_lossy());
        let (a, b) = (
            owner("20260125T174502Z-aaaaaa"),
            owner("20260125T174503Z-bbbbbb"),
        );

        assert_eq!(sh(&acquire_command(&h, &a, &CFG)).0, 0);
        let (code, out) = sh(&acquire_command(&h, &b, &CFG));
        assert_eq!(code, HELD as i32);
        let held = parse_held(&out);
        assert_eq!(held.holder, Holder::Known(a.clone()));
        let lease = held.lease.expect("a lease");
        assert_eq!((lease.ttl_secs, lease.refresh_secs), (60, 10));
        let t = now();
        assert!(lease.refreshed_at.abs_diff(t) <= 2, "{lease:?}");
        assert!(held.node_now.unwrap().abs_diff(t) <= 2);
        assert!(held.dir_mtime.unwrap().abs_diff(t) <= 2);
        assert!(matches!(
            held.lease_state(CFG.ttl),
            LeaseState::Fresh { expires_in } if expires_in.as_secs() >= 57
        ));

        assert_eq!(sh(&release_command(&h, &b.run_id)).0, NOT_OURS as i32);
        assert!(releases.join(LOCK_DIR).is_dir());
        assert_eq!(sh(&release_command(&h, &a.run_id)).0, 0);
        assert!(!releases.join(LOCK_DIR).exists());
        assert!(releases.is_dir());
        assert_eq!(sh(&release_command(&h, &a.run_id)).0, GONE as i32);

        // A lock left without an owner file is still a lock, judged by its dir's age.
        std::fs::create_dir(releases.join(LOCK_DIR)).unwrap();
        let (code, out) = sh(&acquire_command(&h, &a, &CFG));
        assert_eq!(code, HELD as i32);
        let held = parse_held(&out);
        assert!(matches!(held.holder, Holder::Unknown(_)));
        assert!(matches!(
            held.lease_state(CFG.ttl),
            LeaseState::Fresh { .. }
        ));
        let old = format!(
            "touch -d @{} {}",
            t - 120,
            quote(&releases.join(LOCK_DIR).to_string_lossy())
        );
        assert_eq!(sh(&old).0, 0);
        let (_, out) = sh(&acquire_command(&h, &a, &CFG));
        let held = parse_held(&out);
        assert!(
            matches!(held.lease_state(CFG.ttl), LeaseState::Expired { since } if since.as_secs() >= 59)
        );
        assert_eq!(sh(&break_command(&h, &held.raw)).0, 0);
        assert_eq!(sh(&acquire_command(&h, &a, &CFG)).0, 0);
    }

    /// A break removes only the lock it was shown: once the owner file changed (the holder
    /// refreshed, or another run took it), it is left alone.
    #[test]
    fn a_break_leaves_a_lock_that_changed_since_it_was_read() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(&dir.path().to_string_lossy());
        let a = owner("20260125T174502Z-aaaaaa");
        assert_eq!(sh(&acquire_command(&h, &a, &CFG)).0, 0);
        let (_, out) = sh(&acquire_command(&h, &owner("x"), &CFG));
        let held = parse_held(&out);
        let f = dir.path().join(LOCK_DIR).join(OWNER_FILE);
        let text = std::fs::read_to_string(&f).unwrap();
        std::fs::write(&f, text.replace("\"pid\":4242", "\"pid\":4243")).unwrap();
        assert_eq!(sh(&break_command(&h, &held.raw)).0, CHANGED as i32);
        assert!(f.exists());
        let (_, out) = sh(&acquire_command(&h, &owner("x"), &CFG));
        assert_eq!(sh(&break_command(&h, &parse_held(&out).raw)).0, 0);
        assert!(!dir.path().join(LOCK_DIR).exists());
    }

    /// Refresh moves the lease's time to the node's clock and keeps the rest; take-over rewrites
    /// the owner of the same run; both refuse another run's lock and a lock that is gone.
    #[test]
    fn refresh_and_take_over_touch_only_this_runs_lock() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(&dir.path().to_string_lossy());
        let a = owner("20260125T174502Z-aaaaaa");
        assert_eq!(sh(&acquire_command(&h, &a, &CFG)).0, 0);
        let f = dir.path().join(LOCK_DIR).join(OWNER_FILE);
        let text = std::fs::read_to_string(&f).unwrap();
        let at = parse_held(&text).lease.unwrap().refreshed_at;
        let aged = text.replace(&format!("\"refreshed_at\":{at}"), "\"refreshed_at\":1000");
        std::fs::write(&f, &aged).unwrap();
        assert!(matches!(
            parse_held(&format!("{HEADER} {} -\n{aged}", now())).lease_state(CFG.ttl),
            LeaseState::Expired { .. }
        ));

        assert_eq!(sh(&refresh_command(&h, &a.run_id)).0, 0);
        let refreshed = parse_held(&std::fs::read_to_string(&f).unwrap());
        assert_eq!(refreshed.holder, Holder::Known(a.clone()));
        assert!(refreshed.lease.unwrap().refreshed_at.abs_diff(now()) <= 2);

        let (code, out) = sh(&refresh_command(&h, "20260125T174503Z-bbbbbb"));
        assert_eq!(code, NOT_OURS as i32);
        assert_eq!(parse_holder(&out), Holder::Known(a.clone()));

        let mut resumed = a.clone();
        resumed.pid = 777;
        let long = LeaseConfig::new(Duration::from_secs(20), Duration::from_secs(120)).unwrap();
        assert_eq!(sh(&take_over_command(&h, &resumed, &long)).0, 0);
        let now_held = parse_held(&std::fs::read_to_string(&f).unwrap());
        assert_eq!(now_held.holder, Holder::Known(resumed.clone()));
        assert_eq!(now_held.lease.unwrap().ttl_secs, 120);
        let mut other = resumed.clone();
        other.run_id = "20260125T174503Z-bbbbbb".into();
        assert_eq!(sh(&take_over_command(&h, &other, &long)).0, NOT_OURS as i32);
        assert!(!dir.path().join(LOCK_DIR).join("owner.json.part").exists());

        assert_eq!(sh(&release_command(&h, &a.run_id)).0, 0);
        assert_eq!(sh(&refresh_command(&h, &a.run_id)).0, GONE as i32);
        assert_eq!(sh(&take_over_command(&h, &resumed, &long)).0, GONE as i32);
    }

    #[test]
    fn held_output_parses_with_and_without_header_and_lease() {
        let json = serde_json::to_string(&owner("r1")).unwrap();
        // The preflight's old form, and an older fleetup's owner file: no time, no lease.
        let old = parse_held(&format!("held\n{json}\n"));
        assert_eq!(old.holder, Holder::Known(owner("r1")));
        assert_eq!((old.lease, old.node_now, old.dir_mtime), (None, None, None));
        assert_eq!(old.lease_state(CFG.ttl), LeaseState::Unknown);
        // No owner, the stat fallback printed `-`.
        let bare = parse_held(&format!("{HEADER} 1700000000 -\n"));
        assert_eq!(bare.holder, Holder::Unknown(String::new()));
        assert_eq!((bare.node_now, bare.dir_mtime), (Some(1_700_000_000), None));
        assert_eq!(bare.raw, "");
        // A lease as the scripts write it.
        let with = format!(
            "held\n{HEADER} 1700000100 1699999000\n{},\"lease\":{{\"ttl_secs\":60,\"refresh_secs\":10,\"refreshed_at\":1700000090}}}}\n",
            json.strip_suffix('}').unwrap()
        );
        let held = parse_held(&with);
        assert_eq!(held.holder, Holder::Known(owner("r1")));
        assert_eq!(
            held.lease,
            Some(Lease {
                ttl_secs: 60,
                refresh_secs: 10,
                refreshed_at: 1_700_000_090
            })
        );
        // The lease wins over the dir's age.
        assert_eq!(
            held.lease_state(CFG.ttl),
            LeaseState::Fresh {
                expires_in: Duration::from_secs(50)
            }
        );
        let text = held.describe(CFG.ttl);
        assert!(text.contains("lease fresh (expires in 50s)"), "{text}");
        // A node clock set back: no time passed, not negative.
        let mut back = held.clone();
        back.node_now = Some(1_600_000_000);
        assert_eq!(
            back.lease_state(CFG.ttl),
            LeaseState::Fresh {
                expires_in: Duration::from_secs(60)
            }
        );
    }

    fn held_by(local_host: &str, refreshed_ago: u64) -> HeldLock {
        let mut o = owner("r1");
        o.local_host = local_host.into();
        HeldLock {
            holder: Holder::Known(o),
            lease: Some(Lease {
                ttl_secs: 60,
                refresh_secs: 10,
                refreshed_at: 10_000 - refreshed_ago,
            }),
            node_now: Some(10_000),
            dir_mtime: Some(1),
            raw: String::new(),
        }
    }

    #[test]
    fn break_decision_follows_the_lease_and_a_provably_dead_local_holder() {
        let ttl = CFG.ttl;
        // Another machine, fresh lease: never broken, whatever this machine knows.
        for l in [Liveness::Dead, Liveness::Unknown, Liveness::Alive] {
            assert_eq!(
                break_decision(&held_by("elsewhere", 5), "here", l, ttl),
                Err(Refusal::FreshLease {
                    expires_in: Duration::from_secs(55)
                })
            );
        }
        // Another machine, expired lease: broken.
        assert_eq!(
            break_decision(&held_by("elsewhere", 75), "here", Liveness::Unknown, ttl),
            Ok(BreakReason::Expired {
                since: Duration::from_secs(15)
            })
        );
        // This machine: a dead holder is broken at once; a live one never, even expired.
        assert_eq!(
            break_decision(&held_by("here", 5), "here", Liveness::Dead, ttl),
            Ok(BreakReason::HolderDeadHere)
        );
        assert_eq!(
            break_decision(&held_by("here", 500), "here", Liveness::Alive, ttl),
            Err(Refusal::AliveHere { pid: 4242 })
        );
        // This machine but nothing tells: the lease decides.
        assert!(matches!(
            break_decision(&held_by("here", 5), "here", Liveness::Unknown, ttl),
            Err(Refusal::FreshLease { .. })
        ));
        // No owner: the dir's age is the lease; no time at all: refused.
        let unknown = HeldLock {
            holder: Holder::Unknown(String::new()),
            lease: None,
            node_now: Some(10_000),
            dir_mtime: Some(9_000),
            raw: String::new(),
        };
        assert!(matches!(
            break_decision(&unknown, "here", Liveness::Unknown, ttl),
            Ok(BreakReason::Expired { .. })
        ));
        let fresh = HeldLock {
            dir_mtime: Some(9_990),
            ..unknown.clone()
        };
        assert!(matches!(
            break_decision(&fresh, "here", Liveness::Unknown, ttl),
            Err(Refusal::FreshLease { .. })
        ));
        let timeless = HeldLock {
            node_now: None,
            ..unknown
        };
        assert_eq!(
            break_decision(&timeless, "here", Liveness::Unknown, ttl),
            Err(Refusal::Unjudged)
        );
    }

    #[test]
    fn holder_description_names_who_where_and_which_run() {
        let text = Holder::Known(owner("20260125T174502Z-aaaaaa")).describe();
        assert!(text.contains("o'ps@lap top"), "{text}");
        assert!(text.contains("`20260125T174502Z-aaaaaa`"), "{text}");
        assert!(text.contains("pid 4242"), "{text}");
        let refused = LockError::Refused {
            host: "node-1".into(),
            holder: Box::new(Holder::Known(owner("r1"))),
            refusal: Refusal::FreshLease {
                expires_in: Duration::from_secs(42),
            },
        }
        .to_string();
        assert!(
            refused.contains("`r1`") && refused.contains("expires in 42s"),
            "{refused}"
        );
    }

    #[test]
    fn only_a_live_local_process_with_its_start_time_counts_as_alive() {
        let mut me = owner("x");
        me.local_host = "here".into();
        me.pid = std::process::id();
        me.process = ProcessIdentity::current();
        assert!(me.process.as_ref().is_some_and(|p| p.start_ticks.is_some()));
        assert_eq!(liveness_here(&me, "here"), Liveness::Alive);
        assert_eq!(liveness_here(&me, "elsewhere"), Liveness::Unknown);
        // The same pid with another start time: a recycled pid, not the holder.
        let mut recycled = me.clone();
        recycled.process.as_mut().unwrap().start_ticks = Some(1);
        assert_eq!(liveness_here(&recycled, "here"), Liveness::Dead);
        // A previous boot of this machine.
        let mut rebooted = me.clone();
        rebooted.process.as_mut().unwrap().boot_id = Some("another-boot".into());
        if rebooted.process.as_ref().unwrap().machine_id.is_some() {
            assert_eq!(liveness_here(&rebooted, "here"), Liveness::Dead);
        }
        // Another machine under the same name: nothing here tells.
        let mut twin = me.clone();
        twin.process.as_mut().unwrap().machine_id = Some("another-machine".into());
        twin.pid = u32::MAX;
        assert_eq!(liveness_here(&twin, "here"), Liveness::Unknown);
        // No such pid.
        me.pid = u32::MAX;
        assert_eq!(liveness_here(&me, "here"), Liveness::Dead);
        // An older lock without identity: this test binary is named after the crate.
        let mut legacy = owner("x");
        legacy.local_host = "here".into();
        legacy.pid = std::process::id();
        assert!(holder_alive_here(&legacy, "here"));
    }

    #[test]
    fn start_ticks_are_read_past_a_command_name_with_spaces_and_parens() {
        let stat =
            "4242 (a b) c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10";
        assert_eq!(parse_start_ticks(stat), Some(987_654));
        assert_eq!(parse_start_ticks("garbage"), None);
    }

    #[test]
    fn lease_config_keeps_room_for_a_failed_refresh() {
        assert_eq!(LeaseConfig::default(), CFG);
        assert!(LeaseConfig::new(Duration::from_secs(10), Duration::from_secs(15)).is_err());
        assert!(LeaseConfig::new(Duration::from_millis(10), Duration::from_secs(15)).is_err());
        assert!(LeaseConfig::new(Duration::from_secs(5), Duration::from_secs(10)).is_ok());
    }

    /// Runs commands with the local `sh`: the real scripts on a real filesystem.
    struct LocalShell {
        commands: Mutex<Vec<String>>,
    }

    impl Transport for LocalShell {
        fn host(&self) -> &str {
            "node-1"
        }

        async fn exec(&self, command: &str, _: &ExecOptions) -> Result<ExecOutput, ExecError> {
            self.commands.lock().unwrap().push(command.to_owned());
            let out = tokio::process::Command::new("sh")
                .arg("-c")
                .arg(command)
                .output()
                .await
                .unwrap();
            Ok(ExecOutput {
                stdout: out.stdout,
                stderr: out.stderr,
                status: ExitStatus::Code(out.status.code().unwrap_or(255) as u32),
                duration: Duration::ZERO,
                truncated: 0,
            })
        }

        async fn upload(
            &self,
            _: &[u8],
            _: &str,
            _: &str,
            _: u32,
            _: Progress<'_>,
        ) -> Result<UploadReport, UploadError> {
            unreachable!("the lock never uploads")
        }

        async fn http_get(
            &self,
            _: &str,
            _: u16,
            _: &str,
            _: Duration,
        ) -> Result<HttpResponse, HttpError> {
            unreachable!("the lock never probes HTTP")
        }
    }

    /// Each lock taken reports the run that took the node's lock before it (none at first), and
    /// a lock refused leaves that record alone.
    #[tokio::test]
    async fn a_lock_taken_reports_the_run_that_locked_the_node_before() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(&dir.path().to_string_lossy());
        let t = LocalShell {
            commands: Mutex::new(Vec::new()),
        };
        let (a, b) = (
            owner("20260125T174502Z-aaaaaa"),
            owner("20260125T174503Z-bbbbbb"),
        );
        assert_eq!(acquire(&t, &h, &a, &CFG).await.unwrap(), None);
        assert!(matches!(
            acquire(&t, &h, &b, &CFG).await,
            Err(LockError::Held { .. })
        ));
        release(&t, &h, &a.run_id).await.unwrap();
        assert_eq!(
            acquire(&t, &h, &b, &CFG).await.unwrap().as_deref(),
            Some(a.run_id.as_str())
        );
        release(&t, &h, &b.run_id).await.unwrap();
        assert_eq!(
            acquire(&t, &h, &a, &CFG).await.unwrap().as_deref(),
            Some(b.run_id.as_str())
        );
        // A generation that cannot be written is told (`!`, which no facts read) and the old
        // one removed, so no run trusts its facts across this lock.
        release(&t, &h, &a.run_id).await.unwrap();
        let g = generation_path(&h);
        std::fs::create_dir(format!("{g}.part")).unwrap();
        assert_eq!(
            acquire(&t, &h, &b, &CFG).await.unwrap().as_deref(),
            Some("!")
        );
        assert!(!std::path::Path::new(&g).exists());
    }

    /// The refresher refreshes each interval until stopped; a lock that is gone is reported
    /// once and no longer refreshed.
    #[tokio::test]
    async fn the_refresher_refreshes_until_stopped_and_reports_a_lost_lock() {
        let dir = tempfile::tempdir().unwrap();
        let h = host(&dir.path().to_string_lossy());
        let a = owner("20260125T174502Z-aaaaaa");
        let t = Arc::new(LocalShell {
            commands: Mutex::new(Vec::new()),
        });
        acquire(t.as_ref(), &h, &a, &CFG).await.unwrap();
        let failures = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = failures.clone();
        let cfg = LeaseConfig {
            refresh: Duration::from_millis(150),
            ttl: Duration::from_secs(60),
        };
        let refreshes = |t: &LocalShell| {
            t.commands
                .lock()
                .unwrap()
                .iter()
                .filter(|c| c.contains("refreshed_at"))
                .count()
        };
        let r = spawn_refresher(
            vec![(h.clone(), t.clone())],
            &a.run_id,
            cfg,
            Arc::new(move |host: &str, e: &LockError| {
                seen.lock().unwrap().push(format!("{host}: {e}"));
            }),
        );
        tokio::time::sleep(Duration::from_millis(700)).await;
        let n = refreshes(&t);
        // Every 150 ms: 4 in 700 ms on a quiet machine, fewer under load, never a busy loop.
        assert!((1..=5).contains(&n), "{n} refreshes in 700 ms");
        assert!(failures.lock().unwrap().is_empty());

        // The lock is removed behind the refresher's back: reported, then left alone.
        release(t.as_ref(), &h, &a.run_id).await.unwrap();
        // Reported at its next refresh, 150 ms on; a loaded machine may take longer.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while failures.lock().unwrap().is_empty() && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let after = refreshes(&t);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(refreshes(&t), after, "no refresh after the lock was lost");
        let f = failures.lock().unwrap().clone();
        assert_eq!(f.len(), 1, "{f:?}");
        // Gone, or caught between the owner file's removal and the dir's: either way not ours.
        assert!(
            f[0].starts_with("node-1: ")
                && (f[0].contains("is gone") || f[0].contains("unknown run")),
            "{f:?}"
        );
        r.stop().await;

        // Stopped: no refresh any more.
        acquire(t.as_ref(), &h, &a, &CFG).await.unwrap();
        let r = spawn_refresher(
            vec![(h.clone(), t.clone())],
            &a.run_id,
            cfg,
            Arc::new(|_: &str, _: &LockError| {}),
        );
        tokio::time::sleep(Duration::from_millis(400)).await;
        r.stop().await;
        let stopped = refreshes(&t);
        tokio::time::sleep(Duration::from_millis(400)).await;
        assert_eq!(refreshes(&t), stopped);
    }
}
