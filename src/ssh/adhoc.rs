//! Ad-hoc commands on many hosts (`fleetup exec`): each host is connected, runs its commands
//! one after the other over that one connection, and is disconnected, at most `forks` hosts at
//! once. A host's first command starts as soon as that host is connected (no waiting for the
//! slowest handshake of the fleet), and at most `forks` connections are open at any time, so
//! memory and file descriptors stay bounded by `forks`, not by the size of the fleet.

use std::sync::Arc;

use tokio::sync::Semaphore;

use super::error::{ConnectError, ExecError};
use super::session::{ConnectOptions, ExecOptions, ExecOutput, connect};
use crate::inventory::ResolvedHost;
use crate::tasks::HostTasks;

/// What happened on one host.
#[derive(Debug)]
pub enum HostRun {
    /// The host could not be connected to: no command ran.
    Unreachable(Box<ConnectError>),
    /// The commands that ran, in order: the first one that did not succeed is the last.
    Ran(Vec<Result<ExecOutput, ExecError>>),
    /// The host's task ended without a result (a bug): why.
    Lost(String),
}

/// Runs `commands` in turn on every host, stopping a host at its first command that fails
/// (exit status other than 0, or an error), at most `opts.forks` hosts at once. Results come
/// back in the order of `hosts`.
pub async fn run_on_hosts(
    hosts: &[ResolvedHost],
    opts: &ConnectOptions,
    commands: &[String],
    exec: &ExecOptions,
) -> Vec<(String, HostRun)> {
    let forks = Arc::new(Semaphore::new(opts.forks.max(1)));
    let commands: Arc<[String]> = commands.into();
    let mut tasks = HostTasks::new();
    for (i, h) in hosts.iter().enumerate() {
        // Taken here, in the order of `hosts`: the hosts start in that order (with `--forks 1`,
        // one after the other as listed), and no task exists yet for a host still waiting.
        let Ok(permit) = forks.clone().acquire_owned().await else {
            break;
        };
        let (h, opts, exec, commands) = (h.clone(), opts.clone(), exec.clone(), commands.clone());
        tasks.spawn(&i.to_string(), async move {
            let _permit = permit;
            let session = match connect(&h, &opts).await {
                Ok(s) => s,
                Err(e) => return HostRun::Unreachable(Box::new(e)),
            };
            let mut ran = Vec::with_capacity(commands.len());
            for c in commands.iter() {
                let r = session.exec(c, &exec).await;
                let go_on = matches!(&r, Ok(out) if out.status.success());
                ran.push(r);
                if !go_on {
                    break;
                }
            }
            session.close().await;
            HostRun::Ran(ran)
        });
    }
    let mut out: Vec<Option<HostRun>> = hosts.iter().map(|_| None).collect();
    while let Some((index, result)) = tasks.next().await {
        let run = result.unwrap_or_else(HostRun::Lost);
        if let Some(slot) = index.parse::<usize>().ok().and_then(|i| out.get_mut(i)) {
            *slot = Some(run);
        }
    }
    hosts
        .iter()
        .zip(out)
        .map(|(h, r)| {
            let run = r.unwrap_or_else(|| HostRun::Lost("the host's task gave no result".into()));
            (h.name.clone(), run)
        })
        .collect()
}
