//! The clap front end: global options, commands, error rendering and exit codes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};
use fleetup::exit_code;

#[macro_use]
mod out;

mod check;
mod connect;
mod display;
mod errors;
mod exec;
mod generated;
mod inventory;
mod lab;
mod logging;
mod paths;
mod rollback;
mod runs;
mod session;
mod signals;
mod status;
mod table;
mod upgrade;

/// Upgrade fleets of Formance Ledger v1 (`numary`) nodes over SSH, following the vendor's guide.
#[derive(Debug, Parser)]
#[command(name = "fleetup", version, about, max_term_width = 100)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command accepts.
#[derive(Debug, Args, Clone)]
pub struct Global {
    /// Inventory file (TOML). Default: `FLEETUP_INVENTORY`, else `./inventory.toml`.
    #[arg(
        short = 'i',
        long = "inventory",
        global = true,
        env = "FLEETUP_INVENTORY"
    )]
    pub inventory: Option<PathBuf>,
    /// Select hosts: names, globs (`ledger-*`), groups (`@eu`), exclusions (`!ledger-3`);
    /// comma-separated or repeated.
    #[arg(short = 'l', long = "limit", global = true, value_delimiter = ',')]
    pub limit: Vec<String>,
    /// Output format of results on stdout.
    #[arg(long, global = true, value_enum, default_value_t = Format::Human)]
    pub format: Format,
    /// Upgrade-path table replacing the built-in one (TOML, same shape as `fleetup paths --toml` prints).
    #[arg(long = "paths", global = true, env = "FLEETUP_PATHS")]
    pub paths_file: Option<PathBuf>,
    /// More detail on stderr (repeat for more; `-vvv` shows each host's SSH negotiation).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Colour ok / FAILED / BLOCKED on stderr: `auto` on a terminal unless `NO_COLOR` is set.
    #[arg(long, global = true, value_enum, default_value_t = display::ColorChoice::Auto)]
    pub color: display::ColorChoice,
    #[command(flatten)]
    pub ssh: inventory::SshFlags,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Human,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show the supported upgrade paths, or the verdict for one upgrade (`--from C --to T`).
    Paths(paths::PathsArgs),
    /// Validate the inventory or list its resolved hosts.
    #[command(subcommand)]
    Inventory(inventory::InventoryCommand),
    /// Facts about every selected host: reachable, installed version, service, API, storage.
    Status(status::StatusArgs),
    /// Run an ad-hoc command on the selected hosts (`fleetup exec -- uname -n`).
    Exec(exec::ExecArgs),
    /// Dry-run audit of an upgrade: every read-only check, the plan per host and step, a plan id.
    Check(check::CheckArgs),
    /// Upgrade the selected nodes to `--to`: preflight, lock, stop, backup, stage, migrate once,
    /// switch, start health-gated; journaled (`fleetup runs`).
    Upgrade(Box<upgrade::UpgradeArgs>),
    /// Roll an upgrade run back: switch its nodes back to the release it recorded, start them
    /// health-gated; `--restore-backup` restores its backup first (needed once it migrated).
    Rollback(Box<rollback::RollbackArgs>),
    /// Recorded runs: `runs list`, `runs show RUN_ID`.
    #[command(subcommand)]
    Runs(runs::RunsCommand),
    /// A local practice fleet: real sshd servers and the ledger simulator (`lab up|status|down`).
    #[command(subcommand)]
    Lab(lab::LabCommand),
    /// Shell completions on stdout: `fleetup completions bash > /etc/bash_completion.d/fleetup`.
    Completions(generated::CompletionsArgs),
    /// The man page (roff) on stdout: `fleetup man | man -l -`; `--dir DIR` writes every page.
    Man(generated::ManArgs),
}

/// What to add under clap's own message for a mistake it cannot explain: `exec` takes the
/// remote command after `--` (`fleetup exec uname -n` reads `uname` as an argument of its own).
fn usage_hint(args: &[String], kind: clap::error::ErrorKind) -> Option<&'static str> {
    let exec = args.iter().skip(1).any(|a| a == "exec");
    let dashes = args.iter().any(|a| a == "--");
    (kind == clap::error::ErrorKind::UnknownArgument && exec && !dashes)
        .then_some("put the remote command after `--`: `fleetup exec -- uname -n`")
}

/// Parse the command line, run the command, render errors; returns the process exit code.
pub fn main() -> i32 {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            let args: Vec<String> = std::env::args().collect();
            if let Some(hint) = usage_hint(&args, e.kind()) {
                errln!("hint: {hint}");
            }
            return if e.use_stderr() {
                exit_code::USAGE
            } else {
                exit_code::SUCCESS
            };
        }
    };
    logging::init(cli.global.verbose, cli.global.quiet);
    // Known before anything is written, whether or not a key ever needs it.
    if let Ok(p) = std::env::var(fleetup::ssh::PASSPHRASE_ENV) {
        fleetup::redact::known().register(&p);
    }
    let result = match &cli.command {
        Command::Paths(args) => paths::run(&cli.global, args),
        Command::Inventory(cmd) => inventory::run(&cli.global, cmd),
        Command::Status(args) => status::run(&cli.global, args),
        Command::Exec(args) => exec::run(&cli.global, args),
        Command::Check(args) => check::run(&cli.global, args),
        Command::Upgrade(args) => upgrade::run(&cli.global, args),
        Command::Rollback(args) => rollback::run(&cli.global, args),
        Command::Runs(cmd) => runs::run(&cli.global, cmd),
        Command::Lab(cmd) => lab::run(&cli.global, cmd),
        Command::Completions(args) => generated::completions(args),
        Command::Man(args) => generated::man(args),
    };
    match result {
        Ok(code) => code,
        Err(err) => errors::report(&err),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::error::ErrorKind;

    #[test]
    fn exec_without_dashes_gets_a_hint() {
        let args = |a: &str| a.split(' ').map(String::from).collect::<Vec<_>>();
        assert!(usage_hint(&args("fleetup exec uname -n"), ErrorKind::UnknownArgument).is_some());
        assert!(usage_hint(&args("fleetup exec -- uname"), ErrorKind::UnknownArgument).is_none());
        assert!(usage_hint(&args("fleetup status x"), ErrorKind::UnknownArgument).is_none());
    }
}
