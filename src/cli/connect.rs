//! Connecting to the selected hosts for a command: connection options from the flags, the
//! passphrase prompt on a terminal, and the up-front report of every host-key problem.

use std::io::IsTerminal;
use std::sync::Arc;

use clap::Args;
use fleetup::inventory::ResolvedHost;
use fleetup::operation::{Connections, Hooks};
use fleetup::ssh::{self, ConnectError, ConnectOptions, HostKeyPolicy, KeyCache};

/// Connection flags of the commands that talk to hosts.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Connections")]
pub struct ConnectFlags {
    /// Hosts contacted at once.
    #[arg(long, env = "FLEETUP_FORKS", default_value_t = 50, value_parser = clap::value_parser!(u16).range(1..))]
    pub forks: u16,
    /// Record the host key of hosts absent from known_hosts (never a changed key).
    #[arg(long)]
    pub accept_new_host_keys: bool,
}

impl ConnectFlags {
    // ConnectOptions has a private field (the jump-host cache), so struct-update syntax is out.
    #[allow(clippy::field_reassign_with_default)]
    pub fn options(&self) -> ConnectOptions {
        let prompt: Option<ssh::PassphrasePrompt> = std::io::stdin().is_terminal().then(|| {
            Arc::new(|path: &std::path::Path| {
                rpassword::prompt_password(format!("passphrase for `{}`: ", path.display())).ok()
            }) as ssh::PassphrasePrompt
        });
        let mut opts = ConnectOptions::default();
        opts.host_keys = if self.accept_new_host_keys {
            HostKeyPolicy::AcceptNew
        } else {
            HostKeyPolicy::Strict
        };
        opts.keys = KeyCache::from_env(prompt);
        opts.forks = usize::from(self.forks);
        opts
    }
}

/// Makes sure this process may keep `connections` connections open (raising its soft limit on
/// open files when needed), before the first one is made.
pub fn ensure_open_files(connections: usize) -> anyhow::Result<()> {
    let limits = ssh::limits::ensure_open_files(connections)?;
    log::debug!(
        "open files: {connections} connections need {}; the limit is {} (hard {})",
        ssh::limits::needed_for(connections),
        limits.soft,
        limits.hard
    );
    Ok(())
}

/// Connect to every host (in parallel, bounded by `--forks`).
pub async fn connect(hosts: &[ResolvedHost], flags: &ConnectFlags) -> Connections {
    ssh::connect_all(hosts, &flags.options()).await
}

/// The hooks of a read-only operation: connection failures printed unless `--quiet`.
pub struct Reporter {
    pub quiet: bool,
}

impl Hooks for Reporter {
    fn connected(&self, conns: &Connections) {
        if !self.quiet {
            report_failures(conns);
        }
    }
}

/// Print every connection failure at once on stderr, host-key problems first (each with its
/// hints), and return how many hosts failed.
pub fn report_failures(conns: &Connections) -> usize {
    let failed: Vec<&ConnectError> = conns.iter().filter_map(|(_, r)| r.as_ref().err()).collect();
    let (keys, other): (Vec<&ConnectError>, Vec<&ConnectError>) =
        failed.iter().partition(|e| e.host_key().is_some());
    for e in keys.iter().chain(other.iter()) {
        errln!("error: {e}");
        for hint in e.hints() {
            errln!("  hint: {hint}");
        }
    }
    failed.len()
}
