//! Tasks run per host at once. A task that panics (a bug, or input no parser foresaw) becomes
//! that host's failure with the panic's message: never a silent gap in a table, never a host
//! that looks fine because nothing was said about it.

use std::collections::HashMap;
use std::future::Future;

use tokio::task::{Id, JoinError, JoinSet};

/// One task per host, joined in the order they end.
pub struct HostTasks<R> {
    set: JoinSet<R>,
    hosts: HashMap<Id, String>,
}

impl<R: Send + 'static> Default for HostTasks<R> {
    fn default() -> Self {
        HostTasks {
            set: JoinSet::new(),
            hosts: HashMap::new(),
        }
    }
}

impl<R: Send + 'static> HostTasks<R> {
    pub fn new() -> Self {
        Self::default()
    }

    /// Runs `task` for `host`.
    pub fn spawn(&mut self, host: &str, task: impl Future<Output = R> + Send + 'static) {
        let handle = self.set.spawn(task);
        self.hosts.insert(handle.id(), host.to_owned());
    }

    /// The next task to end: its host and its result, or why it ended without one.
    pub async fn next(&mut self) -> Option<(String, Result<R, String>)> {
        let joined = self.set.join_next_with_id().await?;
        let (id, result) = match joined {
            Ok((id, r)) => (id, Ok(r)),
            Err(e) => (e.id(), Err(ended_without_answer(e))),
        };
        let host = self.hosts.remove(&id).unwrap_or_default();
        Some((host, result))
    }
}

/// What to say of a task that ended without its result.
pub fn ended_without_answer(e: JoinError) -> String {
    if !e.is_panic() {
        return "internal error: the task for this host was cancelled".into();
    }
    let payload = e.into_panic();
    let message = payload
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!(
        "internal error: the task for this host panicked ({}); please report it",
        crate::shell::printable(&message, 300)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panic_is_that_hosts_failure_with_its_message() {
        let mut tasks = HostTasks::new();
        tasks.spawn("good", async { 1 });
        tasks.spawn("bad", async {
            let v: Vec<u8> = Vec::new();
            #[allow(clippy::indexing_slicing)]
            let x = v[usize::MAX / 2];
            u32::from(x)
        });
        let mut seen = std::collections::BTreeMap::new();
        while let Some((host, r)) = tasks.next().await {
            seen.insert(host, r);
        }
        assert_eq!(seen["good"], Ok(1));
        let err = seen["bad"].clone().unwrap_err();
        assert!(
            err.contains("panicked") && err.contains("index out of bounds"),
            "{err}"
        );
    }
}
