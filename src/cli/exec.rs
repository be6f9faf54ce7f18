//! `fleetup exec -- CMD ...`: an ad-hoc command on the selected hosts, output grouped per host,
//! exit status per host and a summary.

use std::time::Duration;

use clap::Args;
use fleetup::exit_code;
use fleetup::inventory::ResolvedHost;
use fleetup::ssh::{ExecOptions, ExitStatus};
use serde::Serialize;

use super::connect::{self, ConnectFlags};
use super::{Format, Global, inventory};

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub connect: ConnectFlags,
    /// Time allowed for the command on each host (default: the inventory's `command_timeout`).
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// The command, run by the login shell of each host (as `ssh host CMD...` would).
    #[arg(required = true, last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

/// What happened on one host.
#[derive(Debug, Serialize)]
struct HostResult {
    host: String,
    /// Exit code when the command ran to the end.
    exit_code: Option<u32>,
    /// Signal name when the command was killed.
    signal: Option<String>,
    /// Why the command could not run (unreachable host, channel failure, timeout).
    error: Option<String>,
    stdout: String,
    stderr: String,
    duration_ms: u128,
}

impl HostResult {
    /// A host where the command could not run at all.
    fn failed(host: String, error: String) -> Self {
        HostResult {
            host,
            exit_code: None,
            signal: None,
            error: Some(error),
            stdout: String::new(),
            stderr: String::new(),
            duration_ms: 0,
        }
    }

    fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }
}

pub fn run(global: &Global, args: &ExecArgs) -> anyhow::Result<i32> {
    let inventory = inventory::load_inventory(global)?;
    let hosts: Vec<ResolvedHost> = inventory::select_hosts(global, &inventory)?
        .into_iter()
        .cloned()
        .collect();
    let command = args.command.join(" ");
    let runtime = tokio::runtime::Runtime::new()?;
    let results = runtime.block_on(async {
        let conns = connect::connect(&hosts, &args.connect).await;
        let mut set = fleetup::tasks::HostTasks::new();
        let mut results = Vec::new();
        for (name, conn) in conns {
            match conn {
                Ok(session) => {
                    let opts = ExecOptions {
                        timeout: args.timeout,
                        ..Default::default()
                    };
                    let command = command.clone();
                    set.spawn(&name, async move { session.exec(&command, &opts).await });
                }
                Err(e) => results.push(HostResult::failed(name, e.to_string())),
            }
        }
        while let Some((host, joined)) = set.next().await {
            results.push(match joined {
                Err(why) => HostResult::failed(host, why),
                Ok(Err(e)) => HostResult::failed(host, e.to_string()),
                Ok(Ok(out)) => HostResult {
                    host,
                    exit_code: match out.status {
                        ExitStatus::Code(c) => Some(c),
                        ExitStatus::Signal(_) => None,
                    },
                    signal: match &out.status {
                        ExitStatus::Signal(s) => Some(s.clone()),
                        ExitStatus::Code(_) => None,
                    },
                    error: None,
                    stdout: out.stdout_lossy(),
                    stderr: out.stderr_lossy(),
                    duration_ms: out.duration.as_millis(),
                },
            });
        }
        results
    });
    // Inventory order, whatever order the hosts finished in.
    let mut results = results;
    results.sort_by_key(|r| hosts.iter().position(|h| h.name == r.host));

    match global.format {
        // JSON Lines, one `exec_result` per host, in inventory order (docs/json-events.md).
        Format::Json => {
            for r in &results {
                let mut v = serde_json::to_value(r)?;
                v["event"] = "exec_result".into();
                super::display::print_json_line(&v);
            }
        }
        Format::Human => {
            for r in &results {
                out!("{}", render_host(r));
            }
        }
    }
    let unreachable = results.iter().filter(|r| r.error.is_some()).count();
    let failed = results
        .iter()
        .filter(|r| r.error.is_none() && !r.ok())
        .count();
    if !global.quiet {
        errln!("{}", summary(&results));
    }
    Ok(if unreachable > 0 {
        exit_code::UNREACHABLE
    } else if failed > 0 {
        exit_code::FAILURE
    } else {
        exit_code::SUCCESS
    })
}

fn status_text(r: &HostResult) -> String {
    match (&r.error, r.exit_code, &r.signal) {
        (Some(e), _, _) => format!("error: {e}"),
        (None, Some(c), _) => format!("exit {c}"),
        (None, None, Some(s)) => format!("killed by signal {s}"),
        (None, None, None) => "no exit status".into(),
    }
}

fn render_host(r: &HostResult) -> String {
    let mut out = format!("== {} ({}, {} ms)\n", r.host, status_text(r), r.duration_ms);
    for (prefix, text) in [("", &r.stdout), ("stderr: ", &r.stderr)] {
        for line in text.lines() {
            out.push_str(&format!("{prefix}{line}\n"));
        }
    }
    out
}

fn summary(results: &[HostResult]) -> String {
    let ok = results.iter().filter(|r| r.ok()).count();
    let bad: Vec<String> = results
        .iter()
        .filter(|r| !r.ok())
        .map(|r| format!("`{}` ({})", r.host, status_text(r)))
        .collect();
    let mut s = format!("{} hosts: {ok} ok, {} failed", results.len(), bad.len());
    if !bad.is_empty() {
        s.push_str(&format!(": {}", bad.join(", ")));
    }
    s
}
