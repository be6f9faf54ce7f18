//! The rollback's restore step: the rolled-back run's backup put back over its storage, nodes
//! stopped. The command (the step's [`crate::plan::RestoreParams`]) checks the backup's SHA-256 against
//! the journal's before it changes anything; for SQLite the restored files' sums are compared
//! with the backup's here. From its start the storage may differ from what the nodes last
//! served, so a failure leaves every node stopped (see `undo`).

use std::sync::Arc;
use std::time::Duration;

use crate::events::Artefact;
use crate::facts::StorageDriver;
use crate::plan::{Action, Step};
use crate::ssh::Transport;

use super::ctx::{Checked, Shared, StepError, per_host};
use super::params;

/// A restore may take as long as a dump did; an hour is the ceiling.
const RESTORE_TIMEOUT: Duration = Duration::from_secs(3600);

pub async fn run<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    per_host(sh, step, |sh, step, name| async move {
        one(&sh, &step, &name).await
    })
    .await
}

/// `(name, sha256)` of each file after `==restored` in the SQLite restore's output.
pub fn parse_restored(stdout: &str) -> Vec<(String, String)> {
    stdout
        .lines()
        .skip_while(|l| l.trim_end() != "==restored")
        .skip(1)
        .filter_map(|l| {
            let mut p = l.trim_end().splitn(3, ' ');
            let (sha, _, name) = (p.next()?, p.next()?, p.next()?);
            Some((name.to_string(), sha.to_string()))
        })
        .collect()
}

async fn one<T: Transport>(sh: &Shared<T>, step: &Step, name: &str) -> Result<(), StepError> {
    let p = params::of(sh, step, name, Action::restore)?;
    let source = &p.source;
    let cmd = p.command();
    sh.change(|c| c.touch_storage(name));
    let artefacts = sh
        .run_checked(
            step,
            name,
            &cmd,
            "the restore",
            Some(RESTORE_TIMEOUT),
            |out| {
                let stdout = out.stdout_lossy();
                let artefacts: Vec<Artefact> = source
                    .files
                    .iter()
                    .map(|f| Artefact {
                        kind: "restored-backup".into(),
                        host: name.to_string(),
                        path: f.path.clone(),
                        bytes: f.bytes,
                        sha256: Some(f.sha256.clone()),
                    })
                    .collect();
                let message = match source.driver {
                    StorageDriver::Postgres => {
                        if !stdout.lines().any(|l| l.starts_with("==restored ")) {
                            return Err(sh.error(step, name, "the restore did not report its end"));
                        }
                        format!(
                            "`{}` (sha256 as recorded) restored with `pg_restore --clean --if-exists`",
                            source.files.first().map_or("", |f| f.path.as_str())
                        )
                    }
                    StorageDriver::Sqlite => {
                        let restored = parse_restored(&stdout);
                        let bad: Vec<String> = source
                            .files
                            .iter()
                            .filter(|f| {
                                let n = f.path.rsplit_once('/').map_or(f.path.as_str(), |(_, n)| n);
                                !restored.iter().any(|(rn, rs)| rn == n && *rs == f.sha256)
                            })
                            .map(|f| format!("`{}`", f.path))
                            .collect();
                        if !bad.is_empty() {
                            return Err(sh.error(
                                step,
                                name,
                                format!(
                                    "after the restore, the storage's copy of {} differs from the backup",
                                    bad.join(", ")
                                ),
                            ));
                        }
                        format!(
                            "{} file(s) restored, each SHA-256 equal to the backup's",
                            restored.len()
                        )
                    }
                };
                Ok(Checked::with(artefacts.clone(), message, artefacts))
            },
        )
        .await?;
    sh.change(|c| c.artefacts.extend(artefacts));
    Ok(())
}
