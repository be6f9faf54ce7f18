//! The fleet lock: one lock per node, `<releases_dir>/.fleetup.lock/`, taken with `mkdir` (atomic
//! on every POSIX filesystem) and holding `owner.json` (who, from where, run id, pid, start time,
//! fleetup version). Released only by the run that holds it; a stale lock is broken only on the
//! operator's word (`--break-lock`), after its holder was shown.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::inventory::ResolvedHost;
use crate::shell::quote;
use crate::ssh::{ExecOptions, ExitStatus, Transport};

/// Name of the lock dir inside the releases dir (the preflight reads it there too).
pub const LOCK_DIR: &str = crate::preflight::LOCK_FILE_NAME;
const OWNER_FILE: &str = "owner.json";
/// Exit status of the acquire script when another run holds the lock.
const HELD: u32 = 10;
const LOCK_TIMEOUT: Duration = Duration::from_secs(30);

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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    #[error("host `{host}` is locked by {}", .holder.describe())]
    Held { host: String, holder: Holder },
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
    crate::preflight::lock_path(host)
}

/// `mkdir` the lock dir and write the owner file; when the dir exists, print its owner file and
/// exit [`HELD`].
pub fn acquire_command(host: &ResolvedHost, owner: &LockOwner) -> String {
    let json = serde_json::to_string(owner).unwrap_or_default();
    format!(
        "r={r}; d={d}; mkdir -p \"$r\" || exit 20; \
         if mkdir \"$d\" 2>/dev/null; then \
           if printf '%s\\n' {json} > \"$d/{OWNER_FILE}.part\" && mv -f \"$d/{OWNER_FILE}.part\" \"$d/{OWNER_FILE}\"; then exit 0; fi; \
           rm -f \"$d/{OWNER_FILE}.part\"; rmdir \"$d\"; exit 21; \
         fi; \
         cat \"$d/{OWNER_FILE}\" 2>/dev/null; exit {HELD}",
        r = quote(&host.ledger.releases_dir),
        d = quote(&lock_path(host)),
        json = quote(&json),
    )
}

/// Remove the lock only when its owner file names `run_id` (never another run's lock).
pub fn release_command(host: &ResolvedHost, run_id: &str) -> String {
    format!(
        "d={d}; [ -d \"$d\" ] || {{ echo 'the lock is gone' >&2; exit 11; }}; \
         grep -qF {id} \"$d/{OWNER_FILE}\" 2>/dev/null || {{ echo 'the lock belongs to another run' >&2; exit 12; }}; \
         rm -f \"$d/{OWNER_FILE}\" && rmdir \"$d\"",
        d = quote(&lock_path(host)),
        id = quote(&format!("\"run_id\":\"{run_id}\"")),
    )
}

/// Remove whatever lock is there (only the lock dir's own files).
pub fn break_command(host: &ResolvedHost) -> String {
    format!(
        "d={d}; rm -f \"$d/{OWNER_FILE}\" \"$d/{OWNER_FILE}.part\" && rmdir \"$d\"",
        d = quote(&lock_path(host))
    )
}

pub fn parse_holder(stdout: &str) -> Holder {
    match serde_json::from_str::<LockOwner>(stdout.trim()) {
        Ok(o) => Holder::Known(o),
        Err(_) => Holder::Unknown(stdout.to_string()),
    }
}

fn opts() -> ExecOptions {
    ExecOptions {
        timeout: Some(LOCK_TIMEOUT),
        ..Default::default()
    }
}

/// Takes the lock of one node.
pub async fn acquire<T: Transport>(
    t: &T,
    host: &ResolvedHost,
    owner: &LockOwner,
) -> Result<(), LockError> {
    let failed = |reason: String| LockError::Failed {
        host: host.name.clone(),
        action: "take",
        path: lock_path(host),
        reason,
    };
    let out = t
        .exec(&acquire_command(host, owner), &opts())
        .await
        .map_err(|e| failed(e.to_string()))?;
    match &out.status {
        ExitStatus::Code(0) => Ok(()),
        ExitStatus::Code(HELD) => Err(LockError::Held {
            host: host.name.clone(),
            holder: parse_holder(&out.stdout_lossy()),
        }),
        other => Err(failed(format!(
            "exit {other}: {}",
            out.stderr_lossy().trim()
        ))),
    }
}

/// Releases the lock of one node, if this run holds it.
pub async fn release<T: Transport>(
    t: &T,
    host: &ResolvedHost,
    run_id: &str,
) -> Result<(), LockError> {
    run_simple(t, host, &release_command(host, run_id), "release").await
}

/// Breaks the lock of one node, whoever holds it.
pub async fn break_lock<T: Transport>(t: &T, host: &ResolvedHost) -> Result<(), LockError> {
    run_simple(t, host, &break_command(host), "break").await
}

async fn run_simple<T: Transport>(
    t: &T,
    host: &ResolvedHost,
    command: &str,
    action: &'static str,
) -> Result<(), LockError> {
    let failed = |reason: String| LockError::Failed {
        host: host.name.clone(),
        action,
        path: lock_path(host),
        reason,
    };
    let out = t
        .exec(command, &opts())
        .await
        .map_err(|e| failed(e.to_string()))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(failed(format!(
            "exit {}: {}",
            out.status,
            out.stderr_lossy().trim()
        )))
    }
}

/// Whether the holder is a live fleetup process on this very machine: such a lock is not stale,
/// and `--break-lock` must not break it. A holder elsewhere cannot be checked from here.
pub fn holder_alive_here(owner: &LockOwner, local_host: &str) -> bool {
    if owner.local_host != local_host {
        return false;
    }
    let Ok(pid) = libc::pid_t::try_from(owner.pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks that the process exists.
    let exists = unsafe { libc::kill(pid, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    // A recycled pid is another program: only a process that is fleetup counts.
    exists
        && std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains("fleetup"))
            .unwrap_or(true)
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

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
        }
    }

    fn sh(cmd: &str) -> (i32, String) {
        let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    }

    /// The scripts, run by a real shell: the first run takes the lock, a second sees the first's
    /// owner, cannot release it, and the holder's release leaves nothing behind.
    #[test]
    fn scripts_take_report_and_release_the_lock() {
        let dir = tempfile::tempdir().unwrap();
        let releases = dir.path().join("rel eases");
        let h = host(&releases.to_string_lossy());
        let (a, b) = (
            owner("20260125T174502Z-aaaaaa"),
            owner("20260125T174503Z-bbbbbb"),
        );

        assert_eq!(sh(&acquire_command(&h, &a)).0, 0);
        let (code, out) = sh(&acquire_command(&h, &b));
        assert_eq!(code, HELD as i32);
        assert_eq!(parse_holder(&out), Holder::Known(a.clone()));

        assert_eq!(sh(&release_command(&h, &b.run_id)).0, 12);
        assert!(releases.join(LOCK_DIR).is_dir());
        assert_eq!(sh(&release_command(&h, &a.run_id)).0, 0);
        assert!(!releases.join(LOCK_DIR).exists());
        assert!(releases.is_dir());
        assert_eq!(sh(&release_command(&h, &a.run_id)).0, 11);

        // A lock left without an owner file is still a lock, and breaking removes it.
        std::fs::create_dir(releases.join(LOCK_DIR)).unwrap();
        let (code, out) = sh(&acquire_command(&h, &a));
        assert_eq!(code, HELD as i32);
        assert!(matches!(parse_holder(&out), Holder::Unknown(_)));
        assert_eq!(sh(&break_command(&h)).0, 0);
        assert_eq!(sh(&acquire_command(&h, &a)).0, 0);
    }

    #[test]
    fn holder_description_names_who_where_and_which_run() {
        let text = Holder::Known(owner("20260125T174502Z-aaaaaa")).describe();
        assert!(text.contains("o'ps@lap top"), "{text}");
        assert!(text.contains("`20260125T174502Z-aaaaaa`"), "{text}");
        assert!(text.contains("pid 4242"), "{text}");
    }

    #[test]
    fn only_a_live_local_fleetup_holder_counts_as_alive() {
        let mut me = owner("x");
        me.local_host = "here".into();
        me.pid = std::process::id();
        // This test binary is named after the crate (`fleetup-<hash>`).
        assert!(holder_alive_here(&me, "here"));
        assert!(!holder_alive_here(&me, "elsewhere"));
        me.pid = u32::MAX;
        assert!(!holder_alive_here(&me, "here"));
    }
}
