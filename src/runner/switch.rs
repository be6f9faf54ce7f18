//! The switch step: each node's `ledger.binary` becomes a symlink to the new release, swapped
//! atomically (`ln -sfn` to a temp link, then `mv -T` over the binary). The previous target is
//! recorded for rollback; a binary that is a plain file is first kept as its version's release
//! (`<releases_dir>/<old V>/numary`).

use std::sync::Arc;

use crate::events::Artefact;
use crate::plan::{Action, Step, SwitchParams};
use crate::ssh::Transport;

use super::ctx::{Checked, Shared, StepError, per_host};
use super::params;

/// What the swap script reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swapped {
    /// The previous symlink target, or where the previous plain file was kept.
    pub previous: Option<String>,
    pub was_file: bool,
    pub now: String,
}

pub fn parse_switch(stdout: &str) -> Result<Swapped, String> {
    let mut previous = None;
    let mut was_file = false;
    let mut now = None;
    for line in stdout.lines() {
        if let Some(p) = line.strip_prefix("prev-link ") {
            previous = Some(p.to_string());
        } else if let Some(p) = line.strip_prefix("prev-file ") {
            previous = Some(p.to_string());
            was_file = true;
        } else if let Some(p) = line.strip_prefix("now ") {
            now = Some(p.to_string());
        }
    }
    Ok(Swapped {
        previous,
        was_file,
        now: now.ok_or("the swap did not report the new target")?,
    })
}

pub async fn run<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    per_host(sh, step, |sh, step, name| async move {
        one(&sh, &step, &name).await
    })
    .await
}

async fn one<T: Transport>(sh: &Shared<T>, step: &Step, name: &str) -> Result<(), StepError> {
    let p = params::of(sh, step, name, Action::switch)?;
    let swapped = swap(
        sh,
        step,
        name,
        p,
        ("the binary switch", "the switch"),
        |s| {
            (
                format!(
                    "`{}` now points to `{}` (previously {})",
                    p.link,
                    s.now,
                    previously(s)
                ),
                artefacts(sh, name, s),
            )
        },
    )
    .await?;
    sh.change(|c| c.artefacts.extend(artefacts(sh, name, &swapped)));
    Ok(())
}

/// The rollback's switch back: each binary to the release the rolled-back run recorded.
pub async fn run_back<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    per_host(sh, step, |sh, step, name| async move {
        back_one(&sh, &step, &name).await
    })
    .await
}

async fn back_one<T: Transport>(sh: &Shared<T>, step: &Step, name: &str) -> Result<(), StepError> {
    let p = params::of(sh, step, name, Action::switch)?;
    let swapped = swap(
        sh,
        step,
        name,
        p,
        ("the switch back", "the switch back"),
        |s| {
            (
                format!(
                    "`{}` points to `{}` again (it pointed to {})",
                    p.link,
                    s.now,
                    previously(s)
                ),
                back_artefacts(name, s),
            )
        },
    )
    .await?;
    sh.change(|c| c.artefacts.extend(back_artefacts(name, &swapped)));
    Ok(())
}

/// The undo of a rolling batch: `link` back to `release` (the one the node ran before this run
/// switched it), which must still be an executable file. Not a step of the plan: it reports
/// through the undo's events. `Ok`: what now holds.
pub async fn back_to<T: Transport>(
    sh: &Shared<T>,
    name: &str,
    link: &str,
    release: &str,
) -> Result<String, String> {
    let p = SwitchParams {
        link: link.to_string(),
        release: release.to_string(),
        keep_plain_as: None,
        escalate: sh.host(name).ledger.escalate,
    };
    let cmd = format!(
        "test -x {} || {{ echo 'the previous release is gone' >&2; exit 1; }}; {}",
        crate::shell::quote(release),
        p.command()
    );
    let opts = crate::ssh::ExecOptions {
        timeout: Some(std::time::Duration::from_secs(60)),
        ..Default::default()
    };
    let out = sh
        .session(name)
        .exec(&cmd, &opts)
        .await
        .map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "the switch back exited with {}: {}",
            out.status,
            out.stderr_lossy().trim()
        ));
    }
    let swapped = parse_switch(&out.stdout_lossy())?;
    if swapped.now != release {
        return Err(format!(
            "`{link}` points to `{}` after the switch back, not `{release}`",
            swapped.now
        ));
    }
    Ok(format!("`{link}` points to `{release}` again"))
}

/// Runs the swap of `p` on `name`, checks the link points to its release afterwards and records
/// the previous target. `(label, what)`: what the step does, and how the error names it;
/// `report` gives the finished line's message and artefacts.
async fn swap<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
    p: &SwitchParams,
    (label, what): (&str, &str),
    report: impl FnOnce(&Swapped) -> (String, Vec<Artefact>),
) -> Result<Swapped, StepError> {
    let swapped = sh
        .run_checked(step, name, &p.command(), label, None, |out| {
            let swapped = parse_switch(&out.stdout_lossy()).map_err(|e| sh.error(step, name, e))?;
            if swapped.now != p.release {
                return Err(sh.error(
                    step,
                    name,
                    format!(
                        "`{}` points to `{}` after {what}, not `{}`",
                        p.link, swapped.now, p.release
                    ),
                ));
            }
            let (message, artefacts) = report(&swapped);
            Ok(Checked::with(swapped, message, artefacts))
        })
        .await?;
    sh.change(|c| {
        c.switched.push((
            name.to_string(),
            swapped.previous.clone().unwrap_or_default(),
        ))
    });
    Ok(swapped)
}

fn previously(s: &Swapped) -> String {
    s.previous
        .as_deref()
        .map(|p| format!("`{p}`"))
        .unwrap_or_else(|| "nothing".into())
}

fn back_artefacts(name: &str, swapped: &Swapped) -> Vec<Artefact> {
    let mut out = vec![Artefact {
        kind: "restored-release".into(),
        host: name.to_string(),
        path: swapped.now.clone(),
        bytes: None,
        sha256: None,
    }];
    if let Some(prev) = &swapped.previous {
        out.push(Artefact {
            kind: "rolled-back-release".into(),
            host: name.to_string(),
            path: prev.clone(),
            bytes: None,
            sha256: None,
        });
    }
    out
}

fn artefacts<T: Transport>(sh: &Shared<T>, name: &str, swapped: &Swapped) -> Vec<Artefact> {
    let mut out = vec![Artefact {
        kind: "new-release".into(),
        host: name.to_string(),
        path: swapped.now.clone(),
        bytes: None,
        sha256: Some(sh.plan.binary.sha256().to_string()),
    }];
    if let Some(prev) = &swapped.previous {
        out.push(Artefact {
            kind: if swapped.was_file {
                "previous-binary-kept".into()
            } else {
                "previous-release".into()
            },
            host: name.to_string(),
            path: prev.clone(),
            bytes: None,
            sha256: None,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::ResolvedHost;
    use crate::version::Version;

    fn sh(cmd: &str) -> (i32, String, String) {
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(cmd)
            .output()
            .unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// The plan's swap of `h` to `target`, its binary now at `current`.
    fn switch_command(h: &ResolvedHost, target: &Version, current: &Version) -> String {
        SwitchParams::to_release(h, target, Some(current)).command()
    }

    fn layout(tmp: &std::path::Path) -> ResolvedHost {
        let mut h = crate::runner::tests::host("n");
        h.ledger.binary = tmp.join("usr bin/numary").to_string_lossy().into_owned();
        h.ledger.releases_dir = tmp.join("releases").to_string_lossy().into_owned();
        std::fs::create_dir_all(tmp.join("usr bin")).unwrap();
        let new = tmp.join("releases/1.8.2");
        std::fs::create_dir_all(&new).unwrap();
        std::fs::write(new.join("numary"), "#!/bin/sh\n").unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(new.join("numary"), std::fs::Permissions::from_mode(0o755))
            .unwrap();
        h
    }

    #[test]
    fn a_symlink_is_swapped_and_its_previous_target_reported() {
        let tmp = tempfile::tempdir().unwrap();
        let h = layout(tmp.path());
        let old = tmp.path().join("releases/1.7.4/numary");
        std::fs::create_dir_all(old.parent().unwrap()).unwrap();
        std::fs::write(&old, "old").unwrap();
        std::os::unix::fs::symlink(&old, &h.ledger.binary).unwrap();
        let v = |s: &str| Version::parse(s).unwrap();
        let (code, out, err) = sh(&switch_command(&h, &v("1.8.2"), &v("1.7.4")));
        assert_eq!(code, 0, "{err}");
        let s = parse_switch(&out).unwrap();
        assert_eq!(s.previous.as_deref(), Some(old.to_str().unwrap()));
        assert!(!s.was_file);
        assert_eq!(
            s.now,
            crate::plan::commands::release_binary(&h, &v("1.8.2"))
        );
        assert_eq!(
            std::fs::read_link(&h.ledger.binary)
                .unwrap()
                .to_string_lossy(),
            s.now
        );
        assert!(!std::path::Path::new(&format!("{}.fleetup-new", h.ledger.binary)).exists());
    }

    #[test]
    fn a_missing_binary_becomes_the_symlink() {
        // A new node of a replacement: no `numary` at `ledger.binary` yet, its version unknown.
        let tmp = tempfile::tempdir().unwrap();
        let h = layout(tmp.path());
        let v = Version::parse("1.8.2").unwrap();
        let (code, out, err) = sh(&SwitchParams::to_release(&h, &v, None).command());
        assert_eq!(code, 0, "{err}");
        assert!(out.starts_with("prev-none\n"), "{out}");
        let s = parse_switch(&out).unwrap();
        assert_eq!(s.previous, None);
        assert_eq!(s.now, crate::plan::commands::release_binary(&h, &v));
        assert_eq!(
            std::fs::read_link(&h.ledger.binary)
                .unwrap()
                .to_string_lossy(),
            s.now
        );
    }

    #[test]
    fn a_plain_file_is_kept_as_its_release_before_the_swap() {
        let tmp = tempfile::tempdir().unwrap();
        let h = layout(tmp.path());
        std::fs::write(&h.ledger.binary, "old bytes").unwrap();
        let v = |s: &str| Version::parse(s).unwrap();
        let (code, out, err) = sh(&switch_command(&h, &v("1.8.2"), &v("1.6.1")));
        assert_eq!(code, 0, "{err}");
        let s = parse_switch(&out).unwrap();
        assert!(s.was_file);
        let kept = tmp.path().join("releases/1.6.1/numary");
        assert_eq!(s.previous.as_deref(), Some(kept.to_str().unwrap()));
        assert_eq!(std::fs::read_to_string(&kept).unwrap(), "old bytes");
        assert!(
            std::fs::symlink_metadata(&h.ledger.binary)
                .unwrap()
                .file_type()
                .is_symlink()
        );

        // A plain file that differs from an existing release of the same version is not clobbered.
        let tmp2 = tempfile::tempdir().unwrap();
        let h2 = layout(tmp2.path());
        std::fs::write(&h2.ledger.binary, "mine").unwrap();
        let other = tmp2.path().join("releases/1.6.1");
        std::fs::create_dir_all(&other).unwrap();
        std::fs::write(other.join("numary"), "theirs").unwrap();
        let (code, _, err) = sh(&switch_command(&h2, &v("1.8.2"), &v("1.6.1")));
        assert_eq!(code, 4, "{err}");
        assert_eq!(std::fs::read_to_string(&h2.ledger.binary).unwrap(), "mine");
    }
}
