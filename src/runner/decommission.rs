//! The decommission step of the replace strategy: an old node leaves the fleet once its
//! replacement serves the target. Through its service manager only: stopped and waited for, and
//! with systemd its unit disabled (a reboot must not start the old release again). Its binary,
//! releases and data stay, so it can be started again by hand. An old node whose replacement
//! failed and was left behind (`--max-fail`) is not stopped: it keeps serving in its place.

use std::sync::Arc;

use crate::plan::{Action, ServiceParams, Step};
use crate::ssh::Transport;
use crate::version::Version;

use super::ctx::{Shared, StepError, per_host};
use super::{params, service};

/// The new nodes that replace `old` in the plan.
fn replacements<'p, T: Transport>(sh: &'p Shared<T>, old: &str) -> Vec<&'p str> {
    sh.plan
        .hosts
        .iter()
        .filter(|h| h.replaces.as_deref() == Some(old))
        .map(|h| h.name.as_str())
        .collect()
}

/// Why `old` stays up instead of being decommissioned: a replacement of it failed and was left
/// out of the run. `None`: it goes.
pub fn held_back<T: Transport>(sh: &Shared<T>, old: &str) -> Option<String> {
    let failed = sh.failed_hosts();
    let gone: Vec<String> = replacements(sh, old)
        .into_iter()
        .filter(|r| failed.iter().any(|f| f == r))
        .map(|r| format!("`{r}`"))
        .collect();
    (!gone.is_empty()).then(|| {
        format!(
            "not decommissioned: its replacement {} failed, so it keeps serving",
            gone.join(", ")
        )
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
    let p = params::of(sh, step, name, Action::service)?;
    replacements_serve(sh, step, name, &sh.plan.target).await?;
    service::stop_and_wait(sh, step, name, p, || {}).await?;
    disable(sh, step, name, p).await?;
    sh.change(|c| c.decommissioned.push(name.to_string()));
    Ok(())
}

/// Right before `old` stops: each of its replacements serves `target` now (`/_info`, `/_health`),
/// whatever an earlier step recorded. A refusal stops nothing.
async fn replacements_serve<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    old: &str,
    target: &Version,
) -> Result<(), StepError> {
    let op = sh.begin(step, old, None);
    let mut seen = Vec::new();
    for new in replacements(sh, old) {
        let api = &sh.host(new).ledger.api;
        let t = sh.session(new);
        let why = match service::api_version(t, api).await {
            Ok(v) if Version::parse(&v).ok().as_ref() != Some(target) => {
                Some(format!("`/_info` reports `{v}`"))
            }
            Ok(_) if !service::healthy(t, api).await => {
                Some("`/_health` does not answer 200".to_string())
            }
            Ok(_) => None,
            Err(e) => Some(format!("its API does not answer: {e}")),
        };
        if let Some(why) = why {
            let mut e = sh.error(
                step,
                old,
                format!(
                    "not decommissioned: its replacement `{new}` does not serve `{target}` ({why})"
                ),
            );
            e.hints.push(format!(
                "`{old}` keeps serving; bring `{new}` up on `{target}`, then run again"
            ));
            op.fail(&e.message);
            return Err(e);
        }
        seen.push(format!("`{new}`"));
    }
    op.ok(
        format!("replaced by {}, serving `{target}`", seen.join(", ")),
        Vec::new(),
    );
    Ok(())
}

/// systemd: `systemctl disable`, so the old release does not come back at the next boot.
async fn disable<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
    p: &ServiceParams,
) -> Result<(), StepError> {
    let Some(cmd) = p.disable_command() else {
        return Ok(());
    };
    sh.run(step, name, &cmd, "disable the unit", None)
        .await
        .map(drop)
        .map_err(|mut e| {
            e.hints.push(format!(
                "the node is stopped; disable its unit by hand (`{cmd}`) or run again"
            ));
            e
        })
}

/// The probe: done once the service manager says stopped and, with systemd, the unit is not
/// enabled.
pub async fn done<T: Transport>(t: &T, p: &ServiceParams) -> Option<String> {
    if service::service_running(t, &p.service).await != Some(false) {
        return None;
    }
    let Some(cmd) = crate::node::service_enabled_command(&p.service) else {
        return Some("already stopped".into());
    };
    let opts = crate::ssh::ExecOptions {
        timeout: Some(std::time::Duration::from_secs(30)),
        ..Default::default()
    };
    let out = t.exec(&cmd, &opts).await.ok()?;
    (!crate::node::parse_enabled(&out.stdout_lossy()))
        .then(|| "already stopped and its unit disabled".into())
}
