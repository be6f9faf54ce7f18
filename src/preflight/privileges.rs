//! `become = "sudo"`: whether `sudo -n` lets the SSH user run the privileged steps as root,
//! asked once per host before any change (bounded by the host's connect timeout, so a sudo
//! that would wait for a password never hangs the audit), and what a sudo refusal means, for
//! the preflight's `become` finding and for a step that fails through sudo at run time.

use std::time::Duration;

use crate::inventory::ResolvedHost;
use crate::shell;
use crate::ssh::{ExecOptions, ExitStatus, Transport};

/// The exit status the probe gives when the node has no `sudo` (the shell's "not found").
const NOT_INSTALLED: u32 = 127;

/// The probe: `sudo` is there, then the same wrapping every privileged command gets
/// ([`shell::sudo`]) prints the uid it runs as (`0`).
pub fn probe_command() -> String {
    format!(
        "command -v sudo >/dev/null 2>&1 || {{ echo 'sudo: command not found' >&2; exit {NOT_INSTALLED}; }}; {}",
        shell::sudo("id -u")
    )
}

/// Why the privileged commands of a host cannot run through `sudo -n`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BecomeError {
    #[error(
        "sudo on `{host}` wants a password for `{user}` to {kind}: fleetup runs `sudo -n`, which never asks for one"
    )]
    PasswordRequired {
        host: String,
        user: String,
        kind: String,
    },
    #[error("`become = \"sudo\"`, but `sudo` is not installed on `{host}` (needed to {kind})")]
    NotInstalled { host: String, kind: String },
    #[error("`sudo -n` on `{host}` refused `{user}` (needed to {kind}): {stderr}")]
    Refused {
        host: String,
        user: String,
        kind: String,
        stderr: String,
    },
    #[error("`sudo -n` on `{host}` did not answer within {timeout} (needed to {kind}): {reason}")]
    NoAnswer {
        host: String,
        kind: String,
        timeout: String,
        reason: String,
    },
    #[error("`sudo -n` on `{host}` runs commands as uid `{uid}`, not root (needed to {kind})")]
    NotRoot {
        host: String,
        kind: String,
        uid: String,
    },
}

impl BecomeError {
    /// What to do about it.
    pub fn hint(&self) -> String {
        let become_none = "or set `become = \"none\"` for this host and log in as a user that may run the service manager and write `releases_dir`, `binary` and `backup_dir` itself";
        match self {
            BecomeError::PasswordRequired { user, .. } | BecomeError::Refused { user, .. } => {
                format!(
                    "give `{user}` NOPASSWD in /etc/sudoers.d (e.g. `{user} ALL=(root) NOPASSWD: ALL`, checked with `sudo -n true` as `{user}`), {become_none}"
                )
            }
            BecomeError::NotInstalled { .. } => {
                format!("install sudo on the node (`apt-get install sudo`), {become_none}")
            }
            BecomeError::NoAnswer { .. } => {
                "check `sudo -n true` by hand on the node: sudo must answer at once (no password prompt, no slow name lookup)".to_string()
            }
            BecomeError::NotRoot { .. } => {
                "sudo's default target user must be root (`Defaults runas_default` in sudoers)"
                    .to_string()
            }
        }
    }
}

/// A refusal of sudo in a command's result (`sudo -n` prints `sudo: a password is required`
/// and exits 1; a shell without sudo exits 127): `None` when the failure is not sudo's.
pub fn classify(
    host: &ResolvedHost,
    kind: &str,
    status: &ExitStatus,
    stderr: &str,
) -> Option<BecomeError> {
    let (name, user, kind) = (host.name.clone(), host.ssh.user.clone(), kind.to_string());
    let lower = stderr.to_ascii_lowercase();
    if lower.contains("sudo:") && lower.contains("password is required")
        || lower.contains("sudo:") && lower.contains("a terminal is required")
    {
        return Some(BecomeError::PasswordRequired {
            host: name,
            user,
            kind,
        });
    }
    if *status == ExitStatus::Code(NOT_INSTALLED) && lower.contains("sudo") {
        return Some(BecomeError::NotInstalled { host: name, kind });
    }
    if lower.contains("sudo:")
        && (lower.contains("not in the sudoers")
            || lower.contains("not allowed to")
            || lower.contains("may not run sudo"))
    {
        return Some(BecomeError::Refused {
            host: name,
            user,
            kind,
            stderr: shell::printable(stderr.trim(), 300),
        });
    }
    None
}

/// Asks `sudo -n` on the node, within `timeout`. `Ok`: it runs commands as root.
pub async fn probe<T: Transport>(
    t: &T,
    host: &ResolvedHost,
    kind: &str,
    timeout: Duration,
) -> Result<(), BecomeError> {
    let opts = ExecOptions {
        timeout: Some(timeout),
        // Read-only: see `ExecOptions::local_deadline_only`.
        local_deadline_only: true,
        ..Default::default()
    };
    let no_answer = |reason: String| BecomeError::NoAnswer {
        host: host.name.clone(),
        kind: kind.to_string(),
        timeout: humantime::format_duration(timeout).to_string(),
        reason,
    };
    let out = t
        .exec(&probe_command(), &opts)
        .await
        .map_err(|e| no_answer(e.to_string()))?;
    let stderr = out.stderr_lossy();
    if let Some(e) = classify(host, kind, &out.status, &stderr) {
        return Err(e);
    }
    let uid = out.stdout_lossy().trim().to_string();
    match (out.status.success(), uid.as_str()) {
        (true, "0") => Ok(()),
        (true, _) => Err(BecomeError::NotRoot {
            host: host.name.clone(),
            kind: kind.to_string(),
            uid: shell::printable(&uid, 40),
        }),
        (false, _) => Err(BecomeError::Refused {
            host: host.name.clone(),
            user: host.ssh.user.clone(),
            kind: kind.to_string(),
            stderr: format!(
                "exit {}: {}",
                out.status,
                shell::printable(stderr.trim(), 300)
            ),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host() -> ResolvedHost {
        let mut h = crate::runner::tests::host("n1");
        h.ssh.user = "deploy".into();
        h
    }

    #[test]
    fn a_sudo_that_wants_a_password_is_named_with_a_hint() {
        let e = classify(
            &host(),
            "stop the service",
            &ExitStatus::Code(1),
            "sudo: a password is required\n",
        )
        .unwrap();
        assert_eq!(
            e.to_string(),
            "sudo on `n1` wants a password for `deploy` to stop the service: fleetup runs `sudo -n`, which never asks for one"
        );
        assert!(e.hint().contains("NOPASSWD"), "{}", e.hint());
        assert!(e.hint().contains("become = \"none\""), "{}", e.hint());
    }

    #[test]
    fn a_missing_sudo_and_a_refusal_are_told_apart_from_other_failures() {
        let h = host();
        assert!(matches!(
            classify(&h, "x", &ExitStatus::Code(127), "sudo: command not found"),
            Some(BecomeError::NotInstalled { .. })
        ));
        assert!(matches!(
            classify(
                &h,
                "x",
                &ExitStatus::Code(1),
                "deploy is not in the sudoers file.  This incident will be reported.\nsudo: \x1b[31mno\x1b[0m"
            ),
            Some(BecomeError::Refused { stderr, .. }) if !stderr.contains('\x1b')
        ));
        assert_eq!(
            classify(&h, "x", &ExitStatus::Code(1), "mkdir: permission denied"),
            None
        );
    }

    #[test]
    fn the_probe_tells_a_missing_sudo_from_a_refusing_one_for_real() {
        let run = |path: &str| {
            std::process::Command::new("/bin/sh")
                .arg("-c")
                .arg(probe_command())
                .env_clear()
                .env("PATH", path)
                .env("HOME", "/nonexistent")
                .output()
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        // No sudo at all on this PATH (only `sh` through its absolute path).
        let out = run(&dir.path().display().to_string());
        assert_eq!(out.status.code(), Some(127));
        let status = ExitStatus::Code(127);
        assert!(matches!(
            classify(&host(), "x", &status, &String::from_utf8_lossy(&out.stderr)),
            Some(BecomeError::NotInstalled { .. })
        ));
        // A stand-in sudo that behaves like one without NOPASSWD.
        let sudo = dir.path().join("sudo");
        std::fs::write(
            &sudo,
            "#!/bin/sh\necho 'sudo: a password is required' >&2\nexit 1\n",
        )
        .unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sudo, std::fs::Permissions::from_mode(0o755)).unwrap();
        let out = run(&format!("{}:/usr/bin:/bin", dir.path().display()));
        assert_eq!(out.status.code(), Some(1));
        assert!(matches!(
            classify(
                &host(),
                "x",
                &ExitStatus::Code(1),
                &String::from_utf8_lossy(&out.stderr)
            ),
            Some(BecomeError::PasswordRequired { .. })
        ));
    }
}
