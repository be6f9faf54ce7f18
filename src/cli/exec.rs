//! `fleetup exec -- CMD ...` (or `exec -c CMD -c CMD ...`): ad-hoc commands on the selected
//! hosts, output grouped per host and command, exit status per host and a summary. Each host
//! is connected, runs its commands, and is disconnected, at most `--forks` hosts at once
//! ([`fleetup::ssh::run_on_hosts`]).

use std::time::Duration;

use clap::Args;
use fleetup::exit_code;
use fleetup::inventory::ResolvedHost;
use fleetup::ssh::{ExecOptions, ExitStatus, HostRun};
use serde::Serialize;

use super::connect::{self, ConnectFlags};
use super::{Format, Global, inventory};

#[derive(Debug, Args)]
pub struct ExecArgs {
    #[command(flatten)]
    pub connect: ConnectFlags,
    /// Time allowed for each command on each host; the host itself ends a command still running
    /// then (TERM, KILL 3 s later). Without it, fleetup stops waiting after the inventory's
    /// `command_timeout` and leaves the command to end, as `ssh host CMD` would.
    #[arg(long, value_name = "DURATION", value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// A command to run, by the login shell of each host; give it several times to run several
    /// commands in turn over each host's one connection (a host stops at the first that fails).
    #[arg(short = 'c', long = "cmd", value_name = "CMD")]
    pub commands: Vec<String>,
    /// The command, run by the login shell of each host (as `ssh host CMD...` would); after
    /// the `-c` commands when both are given.
    #[arg(last = true, value_name = "CMD", required_unless_present = "commands")]
    pub command: Vec<String>,
}

impl ExecArgs {
    /// The commands to run on each host, in order.
    fn commands(&self) -> Vec<String> {
        let mut all = self.commands.clone();
        if !self.command.is_empty() {
            all.push(self.command.join(" "));
        }
        all
    }
}

/// What happened on one host.
#[derive(Debug, Serialize)]
struct HostResult {
    host: String,
    /// Which command (1 = the first), when several were given.
    #[serde(skip_serializing_if = "Option::is_none")]
    command: Option<usize>,
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
            command: None,
            exit_code: None,
            signal: None,
            error: Some(error),
            stdout: String::new(),
            stderr: String::new(),
            duration_ms: 0,
        }
    }

    /// A command that ran to the end.
    fn of(host: String, out: fleetup::ssh::ExecOutput) -> Self {
        HostResult {
            host,
            command: None,
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
    let commands = args.commands();
    let several = commands.len() > 1;
    let exec = ExecOptions {
        timeout: args.timeout,
        // As `ssh host CMD`: without `--timeout`, fleetup stops waiting at the inventory's
        // `command_timeout` and the host runs no `timeout` of its own (a process per command).
        local_deadline_only: args.timeout.is_none(),
        ..Default::default()
    };
    // Only `--forks` hosts are connected at a time.
    connect::ensure_open_files(hosts.len().min(usize::from(args.connect.forks)))?;
    let runtime = tokio::runtime::Runtime::new()?;
    let runs = runtime.block_on(fleetup::ssh::run_on_hosts(
        &hosts,
        &args.connect.options(),
        &commands,
        &exec,
    ));
    let mut results = Vec::new();
    for (host, run) in runs {
        match run {
            HostRun::Unreachable(e) => results.push(HostResult::failed(host, e.to_string())),
            HostRun::Lost(why) => results.push(HostResult::failed(host, why)),
            HostRun::Ran(ran) => {
                for (i, r) in ran.into_iter().enumerate() {
                    let mut one = match r {
                        Err(e) => HostResult::failed(host.clone(), e.to_string()),
                        Ok(out) => HostResult::of(host.clone(), out),
                    };
                    one.command = several.then_some(i + 1);
                    results.push(one);
                }
            }
        }
    }
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
        errln!("{}", summary(&results, hosts.len(), commands.len()));
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
    let which = r.command.map(|i| format!(" [{i}]")).unwrap_or_default();
    let mut out = format!(
        "== {}{which} ({}, {} ms)\n",
        r.host,
        status_text(r),
        r.duration_ms
    );
    for (prefix, text) in [("", &r.stdout), ("stderr: ", &r.stderr)] {
        for line in text.lines() {
            out.push_str(&format!("{prefix}{line}\n"));
        }
    }
    out
}

/// `N hosts: A ok, B failed: ...`: a host is ok when every command ran and succeeded; a
/// failed host is named with its first command that failed.
fn summary(results: &[HostResult], hosts: usize, commands: usize) -> String {
    let bad: Vec<String> = results
        .iter()
        .filter(|r| !r.ok())
        .map(|r| match r.command {
            Some(i) => format!("`{}` (command {i}: {})", r.host, status_text(r)),
            None => format!("`{}` ({})", r.host, status_text(r)),
        })
        .collect();
    let ok = hosts - bad.len();
    let mut s = format!("{hosts} hosts: {ok} ok, {} failed", bad.len());
    if commands > 1 {
        s = format!(
            "{hosts} hosts, {commands} commands each: {ok} ok, {} failed",
            bad.len()
        );
    }
    if !bad.is_empty() {
        let shown = bad.len().min(SUMMARY_NAMES);
        s.push_str(&format!(": {}", bad[..shown].join(", ")));
        if bad.len() > shown {
            s.push_str(&format!(
                " and {} more (each is shown above)",
                bad.len() - shown
            ));
        }
    }
    s
}

/// Failed hosts the summary line names; each host's own block above says what happened.
const SUMMARY_NAMES: usize = 10;
