//! The stage step: the new binary lands at `<releases_dir>/<V>/numary` on every node (uploaded
//! from memory, read once, or downloaded by the node itself), its SHA-256 checked on the host,
//! then `<staged> version`, run with the service's environment, must print the target. Nothing
//! that runs has changed yet.

use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::events::{Artefact, Event};
use crate::numary;
use crate::plan::{Action, Fetch, Step};
use crate::ssh::Transport;

use super::ctx::{Checked, Shared, StepError, per_host};
use super::params;

pub async fn run<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    let slots = Arc::new(Semaphore::new(sh.cfg.parallel_uploads.max(1)));
    per_host(sh, step, |sh, step, name| {
        let slots = slots.clone();
        async move {
            let _slot = slots.acquire_owned().await;
            one(&sh, &step, &name).await
        }
    })
    .await
}

async fn one<T: Transport>(sh: &Shared<T>, step: &Step, name: &str) -> Result<(), StepError> {
    let p = params::of(sh, step, name, Action::stage)?;
    let t = sh.session(name);
    let target = &p.version;
    let dir = p.release_dir.clone();
    let path = p.binary.clone();
    let existed = sh.facts(name).is_some_and(|f| f.staged.contains(target));
    sh.change(|c| c.staged.push((name.to_string(), dir.clone(), !existed)));
    let sha256 = p.source.sha256().to_string();
    match p.fetch() {
        Fetch::Upload { mkdir, upload } => {
            let data = sh.cfg.binaries.get(&sha256).cloned().unwrap_or_default();
            sh.run(step, name, &mkdir, "create the release dir", None)
                .await?;
            let op = sh.begin(step, name, Some(&upload));
            let sink = sh.sink.clone();
            let (number, host_name) = (step.number, name.to_string());
            let progress = move |done: u64, total: u64| {
                sink.emit(&Event::StepProgress {
                    step: number,
                    host: host_name.clone(),
                    done,
                    total,
                });
            };
            match t.upload(&data, &sha256, &path, 0o755, &progress).await {
                Ok(report) => op.ok(
                    format!("{} bytes, sha256 verified on the host", report.bytes),
                    Vec::new(),
                ),
                Err(e) => {
                    let message = format!("the upload failed: {e}");
                    op.fail(&message);
                    return Err(sh.error(step, name, message));
                }
            }
        }
        Fetch::Download { command } => {
            sh.run(
                step,
                name,
                &command,
                "download the binary on the node",
                None,
            )
            .await?;
        }
    }
    // The staged binary must be the release it claims to be, run as the service would run it.
    let cmd = p.version_command();
    let what = format!("`{path} version`");
    sh.run_checked(
        step,
        name,
        &cmd,
        &what,
        None,
        |out| match numary::parse_version(&out.stdout_lossy()) {
            Ok(v) if &v == target => {
                let artefact = Artefact {
                    kind: "staged-binary".into(),
                    host: name.to_string(),
                    path: path.clone(),
                    bytes: sh.cfg.binaries.get(&sha256).map(|d| d.len() as u64),
                    sha256: Some(sha256.clone()),
                };
                sh.change(|c| c.artefacts.push(artefact.clone()));
                Ok(Checked::with(
                    (),
                    format!("prints version `{v}`"),
                    vec![artefact],
                ))
            }
            Ok(v) => {
                let mut e = sh.error(
                    step,
                    name,
                    format!("the staged binary prints version `{v}`, not `{target}`"),
                );
                e.hints
                    .push("check that `--binary` / `--binary-url` is the release of `--to`".into());
                Err(e)
            }
            Err(err) => Err(sh.error(step, name, format!("the staged binary: {err}"))),
        },
    )
    .await
}

#[cfg(test)]
mod tests {
    use crate::plan::commands::download_command;

    #[test]
    fn download_script_checks_the_digest_before_putting_the_binary_in_place() {
        let tmp = tempfile::tempdir().unwrap();
        let src = tmp.path().join("numary");
        std::fs::write(&src, b"#!/bin/sh\necho hi\n").unwrap();
        let url = format!("file://{}", src.display());
        let good = {
            use sha2::{Digest, Sha256};
            hex::encode(Sha256::digest(b"#!/bin/sh\necho hi\n"))
        };
        let dir = tmp.path().join("rel/1.8.2");
        let run = |sha: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(download_command(&dir.to_string_lossy(), &url, sha))
                .output()
                .unwrap()
        };
        let bad = run(&"0".repeat(64));
        assert_eq!(bad.status.code(), Some(9));
        assert!(!dir.join("numary").exists());
        assert!(!dir.join("numary.fleetup-part").exists());
        let ok = run(&good);
        assert!(
            ok.status.success(),
            "{}",
            String::from_utf8_lossy(&ok.stderr)
        );
        assert!(dir.join("numary").is_file());
    }
}
