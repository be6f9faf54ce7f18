//! Probes: before a step runs on a host, the engine asks the host whether that step is already
//! done (an earlier run, or the run being resumed, did it). A probe only reads. A step that is
//! done is recorded `already_done` and not applied again, so a re-run from any state converges
//! and repeats nothing: no second upload, switch, start, backup or migration.

use std::time::{Duration, Instant};

use crate::plan::commands::resolves_to_command;
use crate::plan::{Action, Step};
use crate::schema::{self, Migrated};
use crate::shell::quote;
use crate::ssh::{ExecOptions, Transport};

use super::ctx::Shared;
use super::service;

/// What a probe found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Probe {
    /// Nothing to do on this host: why, one line.
    Done(String),
    /// The step must run.
    ToDo,
}

const PROBE_TIMEOUT: Duration = Duration::from_secs(60);

fn opts() -> ExecOptions {
    ExecOptions {
        timeout: Some(PROBE_TIMEOUT),
        ..Default::default()
    }
}

/// Whether `step` is already done on `host`. Steps without a probe (the checks: confirm
/// stopped, the health gate; the operator's hooks) always run.
pub async fn probe<T: Transport>(sh: &Shared<T>, step: &Step, host: &str) -> Probe {
    let t = sh.session(host);
    // A multi-hop plan's step moves its hosts to its own hop's version.
    let target = step.target(&sh.plan);
    let Some(params) = step.params(host) else {
        // A plan without this host's parameters: the step itself reports it.
        return Probe::ToDo;
    };
    match params {
        Action::StopService(p) => match service::service_running(t, &p.service).await {
            Some(false) => Probe::Done("already stopped".into()),
            _ => Probe::ToDo,
        },
        Action::Decommission(p) => match super::decommission::done(t, p).await {
            Some(why) => Probe::Done(why),
            None => Probe::ToDo,
        },
        Action::StartService(p) => match service::service_running(t, &p.service).await {
            Some(true) => Probe::Done("already running".into()),
            _ => Probe::ToDo,
        },
        Action::Switch(p) => {
            let cmd = format!("readlink -f {}", quote(&p.link));
            match t.exec(&cmd, &opts()).await {
                Ok(out) if out.status.success() && out.stdout_lossy().trim() == p.release => {
                    Probe::Done(format!("`{}` already points to `{}`", p.link, p.release))
                }
                _ => Probe::ToDo,
            }
        }
        Action::SwitchBack(p) => match t.exec(&p.resolves_command(), &opts()).await {
            Ok(out) if out.status.success() => {
                Probe::Done(format!("`{}` already resolves to `{}`", p.link, p.release))
            }
            _ => Probe::ToDo,
        },
        Action::Restore(p) => {
            // Done once a rollback finished this storage: its schema holds nothing newer than
            // the version gone back to and its node runs that release again. Restoring then
            // would only lose the writes made since.
            let link = &p.link;
            let back = matches!(
                t.exec(&resolves_to_command(link, &p.release), &opts()).await,
                Ok(o) if o.status.success()
            );
            if !back && !sh.cfg.prior.restore_done(host) {
                return Probe::ToDo;
            }
            if schema_beyond(sh, host, target).await != Some(false) {
                return Probe::ToDo;
            }
            Probe::Done(if back {
                format!(
                    "the storage holds no migration newer than `{target}` and `{link}` runs `{}` again: already rolled back",
                    p.release
                )
            } else {
                format!(
                    "the run being resumed restored this storage, which holds no migration newer than `{target}`"
                )
            })
        }
        Action::Stage(p) => {
            let cmd = format!(
                "f={}; [ -x \"$f\" ] && sha256sum < \"$f\"",
                quote(&p.binary)
            );
            let sha256 = p.source.sha256();
            match t.exec(&cmd, &opts()).await {
                Ok(out)
                    if out.status.success()
                        && out.stdout_lossy().split_whitespace().next() == Some(sha256) =>
                {
                    Probe::Done(format!(
                        "`{}` is already staged with sha256 `{sha256}`",
                        p.binary
                    ))
                }
                _ => Probe::ToDo,
            }
        }
        Action::Backup(_) => {
            if let Some(dir) = sh.cfg.prior.backup_done(host) {
                let cmd = format!("test -d {}", quote(dir));
                if matches!(t.exec(&cmd, &opts()).await, Ok(o) if o.status.success()) {
                    return Probe::Done(format!(
                        "this run's backup `{dir}` was taken and verified before it was interrupted"
                    ));
                }
            }
            match schema_state(sh, host, target).await {
                Some(Migrated::Done { .. }) => Probe::Done(format!(
                    "the storage already holds every migration of `{target}`: there is nothing left to back up before migrating"
                )),
                _ => Probe::ToDo,
            }
        }
        Action::Migrate(_) => {
            // A storage command left running by an interrupted run (the remote process outlives
            // the SSH connection) must end before anything else touches the storage.
            wait_storage_commands(sh, host).await;
            match schema_state(sh, host, target).await {
                Some(Migrated::Done { ledgers }) => Probe::Done(format!(
                    "every ledger ({}) already holds every migration of `{target}`",
                    ledgers
                        .iter()
                        .map(|l| format!("`{l}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
                _ => Probe::ToDo,
            }
        }
        // A hook's effect lives outside the fleet (a load balancer, say): nothing on the node
        // tells whether it still holds, so a hook always runs, on `--resume` too.
        Action::Hook(_) => Probe::ToDo,
        _ => Probe::ToDo,
    }
}

/// The migration state of `host`'s storage, read-only; `None` when it cannot be read.
pub async fn schema_state<T: Transport>(
    sh: &Shared<T>,
    host: &str,
    target: &crate::version::Version,
) -> Option<Migrated> {
    let driver = sh.facts(host)?.storage.as_ref()?.driver;
    let cmd = schema::state_command(sh.host(host), driver);
    let out = sh.session(host).exec(&cmd, &opts()).await.ok()?;
    if !out.status.success() {
        return None;
    }
    let state = schema::parse_state(&out.stdout_lossy());
    Some(schema::migrated(&state, target, driver))
}

/// Whether `host`'s storage holds a migration newer than `v`'s last one (`None`: unreadable).
pub async fn schema_beyond<T: Transport>(
    sh: &Shared<T>,
    host: &str,
    v: &crate::version::Version,
) -> Option<bool> {
    let driver = sh.facts(host)?.storage.as_ref()?.driver;
    let cmd = schema::state_command(sh.host(host), driver);
    let out = sh.session(host).exec(&cmd, &opts()).await.ok()?;
    if !out.status.success() {
        return None;
    }
    Some(schema::holds_beyond(
        &schema::parse_state(&out.stdout_lossy()),
        v,
        driver,
    ))
}

/// Lists the pids of `numary` processes running a storage command on the node.
pub fn storage_commands_command() -> String {
    crate::node::STORAGE_COMMANDS.to_string()
}

/// Waits (up to the health timeout) until no `numary storage ...` process runs on `host`.
pub async fn wait_storage_commands<T: Transport>(sh: &Shared<T>, host: &str) {
    let deadline = Instant::now() + sh.cfg.health_timeout.max(Duration::from_secs(60));
    let t = sh.session(host);
    let mut told = false;
    loop {
        let busy = storage_commands(t).await;
        if busy.is_empty() || Instant::now() >= deadline {
            return;
        }
        if !told {
            told = true;
            service::notice(
                sh,
                host,
                format!(
                    "a `numary storage` command (pid {}) still runs, left by an interrupted run: waiting for it to end before probing the storage",
                    busy.join(", ")
                ),
            );
        }
        tokio::time::sleep(sh.cfg.poll_interval).await;
    }
}

/// The pids of `numary storage ...` commands running on the node behind `t`.
pub async fn storage_commands<T: Transport>(t: &T) -> Vec<String> {
    match t.exec(&storage_commands_command(), &opts()).await {
        Ok(out) => out
            .stdout_lossy()
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        Err(_) => Vec::new(),
    }
}

/// Waits (up to two minutes) while a `numary storage` command runs on any of `sessions`' nodes,
/// told once as a notice; true when there was one.
pub async fn wait_storage_commands_on<T: Transport + Clone + 'static>(
    sessions: &std::collections::BTreeMap<String, T>,
    sink: &dyn crate::events::EventSink,
) -> bool {
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut waited = false;
    loop {
        let mut set = crate::tasks::HostTasks::new();
        for (name, t) in sessions {
            let t = t.clone();
            set.spawn(name, async move { storage_commands(&t).await });
        }
        let mut busy = Vec::new();
        while let Some((name, joined)) = set.next().await {
            // A host whose probe failed is not known to be free: it counts as busy.
            match joined {
                Ok(pids) if pids.is_empty() => {}
                Ok(pids) => busy.push(format!("`{name}` (pid {})", pids.join(", "))),
                Err(why) => busy.push(format!("`{name}` ({why})")),
            }
        }
        busy.sort();
        if busy.is_empty() || Instant::now() >= deadline {
            return waited;
        }
        if !waited {
            sink.emit(&crate::events::Event::Notice {
                host: None,
                message: format!(
                    "a `numary storage` command still runs on {}, left by an interrupted run: waiting for it to end",
                    busy.join(", ")
                ),
            });
        }
        waited = true;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
