//! `fleetup check`: the dry-run audit. Connects, gathers facts, builds the plan, runs every
//! read-only preflight check and prints the plan with each step marked, all findings, the plan
//! id and the outcome. Changes nothing on any host. `fleetup upgrade --dry-run` calls
//! [`dry_run`] with the same options.

use std::num::NonZeroUsize;
use std::path::PathBuf;

use clap::{Args, ValueEnum};
use fleetup::events::{EventSink, Fanout};
use fleetup::inventory::{Inventory, ReleaseSource, ResolvedHost};
use fleetup::plan::{BinarySource, PlanOptions, Strategy};
use fleetup::policy::PolicyTable;
use fleetup::preflight::{self, Audit};
use fleetup::{Failure, Version};

use super::connect::{self, ConnectFlags};
use super::{Format, Global, inventory};

/// What to upgrade to and how: shared by `check` and `upgrade`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Plan")]
pub struct PlanArgs {
    /// Target version (`1.8.2` or `v1.8.2`).
    #[arg(long, value_name = "VERSION")]
    pub to: String,
    /// The new `numary` binary, on this machine (uploaded to each node). Default: the
    /// inventory's `[releases."VERSION"]`.
    #[arg(long, value_name = "FILE", conflicts_with = "binary_url")]
    pub binary: Option<PathBuf>,
    /// URL each node downloads the new binary from (needs `--sha256`).
    #[arg(long, value_name = "URL", requires = "sha256")]
    pub binary_url: Option<String>,
    /// Expected SHA-256 of the binary (hex). With `--binary`, the file must match it.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// How the fleet is moved to the target.
    #[arg(long, value_enum, default_value_t = StrategyArg::Auto)]
    pub strategy: StrategyArg,
    /// Nodes started at once after the migrator.
    #[arg(long, value_name = "N")]
    pub serial: Option<NonZeroUsize>,
    /// Stop running nodes (through the service manager) instead of refusing.
    #[arg(long)]
    pub stop: bool,
    /// Take no backup before migrating (recorded; migrations cannot be undone without one).
    #[arg(long)]
    pub no_backup: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StrategyArg {
    Auto,
    Offline,
    Rolling,
    Replace,
}

impl From<StrategyArg> for Strategy {
    fn from(s: StrategyArg) -> Self {
        match s {
            StrategyArg::Auto => Strategy::Auto,
            StrategyArg::Offline => Strategy::Offline,
            StrategyArg::Rolling => Strategy::Rolling,
            StrategyArg::Replace => Strategy::Replace,
        }
    }
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub plan: PlanArgs,
    #[command(flatten)]
    pub connect: ConnectFlags,
}

/// Everything a plan is built from, resolved from the command line and the inventory.
pub struct PlanInputs {
    pub target: Version,
    pub options: PlanOptions,
    pub policy: PolicyTable,
    /// The new binary's version when it runs on this machine.
    pub local_binary_version: Option<Version>,
}

impl PlanArgs {
    /// The target, options, upgrade-path table and local binary version. Errors are usage
    /// errors: nothing has been contacted yet.
    pub fn resolve(&self, global: &Global, inventory: &Inventory) -> anyhow::Result<PlanInputs> {
        let target = Version::parse(&self.to).map_err(|e| {
            Failure::usage(format!("invalid `--to`: {e}")).hint(
                "versions are MAJOR.MINOR.PATCH as `numary version` prints them, e.g. `1.8.2`",
            )
        })?;
        let expected = self.sha256.as_deref().map(parse_sha256).transpose()?;
        let binary = match (&self.binary, &self.binary_url) {
            (Some(path), _) => file_source(path, expected)?,
            (None, Some(url)) => BinarySource::Url {
                url: url.clone(),
                sha256: expected.unwrap_or_default(),
            },
            (None, None) => match inventory.releases().get(&target) {
                Some(release) => {
                    let expected = match (expected, &release.sha256) {
                        (Some(e), _) => Some(e),
                        (None, Some(s)) => Some(parse_sha256(s)?),
                        (None, None) => None,
                    };
                    match &release.source {
                        ReleaseSource::File(path) => file_source(path, expected)?,
                        ReleaseSource::Url(url) => BinarySource::Url {
                            url: url.clone(),
                            sha256: expected.ok_or_else(|| {
                                Failure::usage(format!(
                                    "the inventory's release `{target}` is a URL without `sha256`"
                                ))
                                .hint("add `sha256 = \"...\"` to its `[releases]` entry, or pass `--sha256`")
                            })?,
                        },
                    }
                }
                None => {
                    return Err(Failure::usage(format!("no binary for `{target}`"))
                        .hint("pass `--binary FILE`, or `--binary-url URL --sha256 HEX`")
                        .hint(format!(
                            "or name it in the inventory: `[releases.\"{target}\"]` with `file` or `url`"
                        ))
                        .into());
                }
            },
        };
        let local_binary_version = match &binary {
            BinarySource::File { path, .. } => preflight::local_binary_version(path),
            BinarySource::Url { .. } => None,
        };
        let policy = match &global.paths_file {
            Some(file) => PolicyTable::load(file)?,
            None => PolicyTable::builtin(),
        };
        Ok(PlanInputs {
            target,
            options: PlanOptions {
                strategy: self.strategy.into(),
                serial: self.serial,
                stop_running: self.stop,
                backup: !self.no_backup,
                binary,
            },
            policy,
            local_binary_version,
        })
    }
}

fn parse_sha256(text: &str) -> Result<String, Failure> {
    let t = text.trim().to_ascii_lowercase();
    if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(t)
    } else {
        Err(
            Failure::usage(format!("`{text}` is not a SHA-256 (64 hex digits)"))
                .hint("`sha256sum FILE` prints it"),
        )
    }
}

/// A local binary. Without an expected checksum, the file's own is used; with one, the file
/// keeps the expected value and the preflight compares them (a mismatch is a finding).
fn file_source(path: &std::path::Path, expected: Option<String>) -> anyhow::Result<BinarySource> {
    let sha256 = match expected {
        Some(e) => e,
        None => preflight::file_sha256(path).map_err(|e| {
            Failure::usage(format!("cannot read the binary `{}`: {e}", path.display()))
                .hint("pass the release file of the target with `--binary FILE`")
        })?,
    };
    Ok(BinarySource::File {
        path: path.to_path_buf(),
        sha256,
    })
}

pub fn run(global: &Global, args: &CheckArgs) -> anyhow::Result<i32> {
    dry_run(global, &args.plan, &args.connect)
}

/// The audit of `check` and `upgrade --dry-run`: prints it and returns the exit code.
pub fn dry_run(global: &Global, plan: &PlanArgs, connect: &ConnectFlags) -> anyhow::Result<i32> {
    let inventory = inventory::load_inventory(global)?;
    let hosts: Vec<ResolvedHost> = inventory::select_hosts(global, &inventory)?
        .into_iter()
        .cloned()
        .collect();
    let inputs = plan.resolve(global, &inventory)?;
    let sink = Fanout::new();
    let audit = audit(global, &hosts, &inputs, connect, &sink)?;
    match global.format {
        Format::Json => println!("{}", serde_json::to_string_pretty(&audit)?),
        Format::Human => print!("{}", audit.render_text()),
    }
    Ok(audit.exit_code)
}

/// Connects to `hosts` and audits them; connection problems are printed on stderr (host-key
/// problems first, each with its hints) unless `--quiet`.
pub fn audit(
    global: &Global,
    hosts: &[ResolvedHost],
    inputs: &PlanInputs,
    connect: &ConnectFlags,
    sink: &dyn EventSink,
) -> anyhow::Result<Audit> {
    let runtime = tokio::runtime::Runtime::new()?;
    Ok(runtime.block_on(async {
        let conns = connect::connect(hosts, connect).await;
        if !global.quiet {
            connect::report_failures(&conns);
        }
        let audit = preflight::audit_fleet(
            hosts,
            &conns,
            &inputs.target,
            &inputs.options,
            &inputs.policy,
            inputs.local_binary_version.clone(),
            sink,
        )
        .await;
        for (_, conn) in &conns {
            if let Ok(session) = conn {
                session.close().await;
            }
        }
        audit
    }))
}
