//! `fleetup check`: the dry-run audit. Connects, gathers facts, builds the plan, runs every
//! read-only preflight check and prints the plan with each step marked, all findings, the plan
//! id and the outcome. Changes nothing on any host. `fleetup upgrade --dry-run` calls
//! [`dry_run`] with the same options.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use anyhow::Context;
use clap::{Args, ValueEnum};
use fleetup::events::{Event, EventSink, Fanout};
use fleetup::inventory::{Inventory, ReleaseSource, ResolvedHost};
use fleetup::journal::{self, Header, Journal};
use fleetup::operation::{self, PlanInputs, Scope};
use fleetup::plan::{BatchSize, BinarySource, PlanOptions, Strategy};
use fleetup::policy::PolicyTable;
use fleetup::preflight::{self, Audit};
use fleetup::{Failure, Version};
use sha2::{Digest, Sha256};

use super::connect::{self, ConnectFlags};
use super::{Format, Global, inventory};

/// What to upgrade to and how: shared by `check` and `upgrade`.
#[derive(Debug, Args, Clone)]
#[command(next_help_heading = "Plan")]
pub struct PlanArgs {
    /// Target version (`1.8.2` or `v1.8.2`); required unless `upgrade --resume` takes it from
    /// the journal.
    #[arg(long, value_name = "VERSION")]
    pub to: Option<String>,
    /// The new `numary` binary, on this machine (uploaded to each node). Default: the
    /// inventory's `[releases."VERSION"]`. `VERSION=FILE` (repeatable) gives the binary of an
    /// intermediate hop when the nodes need several (`fleetup paths --from C --to T`).
    #[arg(long, value_name = "[VERSION=]FILE")]
    pub binary: Vec<String>,
    /// URL each node downloads the new binary from (needs `--sha256`).
    #[arg(long, value_name = "URL", requires = "sha256")]
    pub binary_url: Option<String>,
    /// Expected SHA-256 of the binary (hex). With `--binary`, the file must match it.
    #[arg(long, value_name = "HEX")]
    pub sha256: Option<String>,
    /// How the fleet is moved to the target.
    #[arg(long, value_enum, default_value_t = StrategyArg::Auto)]
    pub strategy: StrategyArg,
    /// Nodes per batch after the canary batch: a count (`2`) or a share of the nodes to start
    /// (`25%`). Default: one at a time for `rolling`, all at once otherwise.
    #[arg(long, value_name = "N|N%")]
    pub serial: Option<BatchSize>,
    /// Nodes in the first batch, the migrator among them. In a rolling or replace run a failure
    /// there stops the run whatever `--max-fail` tolerates, with the other nodes untouched.
    #[arg(long, value_name = "N", default_value = "1")]
    pub canary: NonZeroUsize,
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
    /// Where run journals go. Default: `.fleetup/runs/` beside the inventory.
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(flatten)]
    pub connect: ConnectFlags,
}

impl PlanArgs {
    /// The target, options, upgrade-path table and local binary version. Errors are usage
    /// errors: nothing has been contacted yet.
    pub fn resolve(&self, global: &Global, inventory: &Inventory) -> anyhow::Result<PlanInputs> {
        let to = self.to.as_deref().ok_or_else(|| {
            Failure::usage("`--to VERSION` is required")
                .hint("name the target version, e.g. `--to 1.8.2` (`fleetup paths` lists the supported ones)")
        })?;
        let target = Version::parse(to).map_err(|e| {
            Failure::usage(format!("invalid `--to`: {e}")).hint(
                "versions are MAJOR.MINOR.PATCH as `numary version` prints them, e.g. `1.8.2`",
            )
        })?;
        let expected = self.sha256.as_deref().map(parse_sha256).transpose()?;
        let (own, hops) = split_binaries(&self.binary)?;
        if own.is_some() && self.binary_url.is_some() {
            return Err(Failure::usage(
                "`--binary FILE` and `--binary-url` both name the target's binary",
            )
            .hint("give one of them; `--binary VERSION=FILE` names an intermediate hop's")
            .into());
        }
        let hop_binaries = hop_binaries(&hops, inventory, &target)?;
        let binary = match (&own, &self.binary_url) {
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
                canary: self.canary,
                hop_binaries,
                stop_running: self.stop,
                backup: !self.no_backup,
                binary,
            },
            policy,
            local_binary_version,
        })
    }
}

/// The `--binary` values of a journal's plan: each hop's file (`VERSION=FILE`), the target's.
fn journal_binaries(plan: &serde_json::Value) -> Vec<String> {
    let mut out = Vec::new();
    let hops = plan["hops"].as_array().map_or(&[][..], Vec::as_slice);
    for hop in hops.iter().take(hops.len().saturating_sub(1)) {
        if hop["binary"]["kind"] == "file"
            && let (Some(v), Some(p)) = (hop["target"].as_str(), hop["binary"]["path"].as_str())
        {
            out.push(format!("{v}={p}"));
        }
    }
    let binary = &plan["binary"];
    if binary["kind"] == "file"
        && let Some(p) = binary["path"].as_str()
    {
        out.push(p.to_string());
    }
    out
}

/// The `--binary` values: the target's own file, if given, and each hop's `(VERSION, FILE)`.
type Binaries = (Option<PathBuf>, Vec<(Version, PathBuf)>);

/// `--binary` values: the target's own (`FILE`, at most one) and the hops' (`VERSION=FILE`).
fn split_binaries(values: &[String]) -> anyhow::Result<Binaries> {
    let mut own = None;
    let mut hops = Vec::new();
    for v in values {
        match v.split_once('=').map(|(a, b)| (Version::parse(a), b)) {
            Some((Ok(version), file)) => hops.push((version, PathBuf::from(file))),
            _ if own.is_some() => {
                return Err(Failure::usage(format!(
                    "`--binary {v}`: the target's binary is already given"
                ))
                .hint("name an intermediate hop's binary as `--binary VERSION=FILE`")
                .into());
            }
            _ => own = Some(PathBuf::from(v)),
        }
    }
    Ok((own, hops))
}

/// The binaries a multi-hop route may take its hops from: each `--binary VERSION=FILE`, then
/// the inventory's releases older than `target` that name a readable file or a URL with its
/// SHA-256 (one that cannot be used is left out: the plan says when a hop lacks a binary).
fn hop_binaries(
    given: &[(Version, PathBuf)],
    inventory: &Inventory,
    target: &Version,
) -> anyhow::Result<Vec<(Version, BinarySource)>> {
    let mut out: Vec<(Version, BinarySource)> = Vec::new();
    for (version, path) in given {
        if version >= target {
            return Err(Failure::usage(format!(
                "`--binary {version}=...`: a hop's version must be older than the target `{target}`"
            ))
            .hint("give the target's own binary as `--binary FILE`")
            .into());
        }
        out.push((version.clone(), file_source(path, None)?));
    }
    for (version, release) in inventory.releases() {
        if version >= target || out.iter().any(|(v, _)| v == version) {
            continue;
        }
        let sha = release.sha256.as_deref().and_then(|s| parse_sha256(s).ok());
        let source = match &release.source {
            ReleaseSource::File(path) => file_source(path, sha).ok(),
            ReleaseSource::Url(url) => sha.map(|sha256| BinarySource::Url {
                url: url.clone(),
                sha256,
            }),
        };
        out.extend(source.map(|s| (version.clone(), s)));
    }
    Ok(out)
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
    dry_run_in(global, &args.plan, &args.connect, args.state_dir.as_deref())
}

/// The audit of `check` and `upgrade --dry-run`: prints it, journals it in the default state
/// dir and returns the exit code.
pub fn dry_run(global: &Global, plan: &PlanArgs, connect: &ConnectFlags) -> anyhow::Result<i32> {
    dry_run_in(global, plan, connect, None)
}

/// [`dry_run`] with the journal in `state_dir` (default: `.fleetup/runs/` beside the inventory).
pub fn dry_run_in(
    global: &Global,
    plan: &PlanArgs,
    connect: &ConnectFlags,
    state_dir: Option<&Path>,
) -> anyhow::Result<i32> {
    let inventory = inventory::load_inventory(global)?;
    // Every host of the inventory is connected: the selected ones and, for the plan's
    // left-out check, the others.
    connect::ensure_open_files(inventory.hosts().len())?;
    let hosts: Vec<ResolvedHost> = inventory::select_hosts(global, &inventory)?
        .into_iter()
        .cloned()
        .collect();
    let inputs = plan.resolve(global, &inventory)?;
    let now = SystemTime::now();
    let run_id = journal::new_run_id(now);
    // The audit does not depend on its journal: one that cannot be written is only a warning.
    let journal = match open_journal(global, plan, state_dir, &inputs, &run_id, now) {
        Ok(j) => Some(Arc::new(j)),
        Err(e) => {
            errln!("warning: no journal for this check: {e:#}");
            None
        }
    };
    let mut sink = Fanout::new();
    if let Some(j) = &journal {
        sink = sink.with(j.clone());
    }
    if global.format == Format::Json {
        sink = sink.with(Arc::new(super::display::JsonLines));
    }
    // On a terminal, the bars show the connections and facts being read; plain lines only
    // with `-v` (the audit itself is what `check` prints).
    let display = super::session::display_for(global);
    if display.is_bars() || global.verbose > 0 {
        sink = sink.with(Arc::new(display));
    }
    let started = Instant::now();
    sink.emit(&Event::RunStarted {
        run_id: run_id.clone(),
        command: "check".into(),
        target: inputs.target.to_string(),
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
    });
    let audit = audit(global, &inventory, &hosts, &inputs, connect, &sink)?;
    // The whole audit (plan, marked steps, findings, facts, id) as one line, before the
    // stream's last, `run_finished`.
    if global.format == Format::Json {
        let mut v = serde_json::to_value(&audit)?;
        v["event"] = "audit".into();
        super::display::print_json_line(&v);
    }
    sink.emit(&Event::RunFinished {
        run_id,
        outcome: audit.outcome.as_str().into(),
        exit_code: audit.exit_code,
        duration_ms: u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX),
    });
    if global.format == Format::Human {
        out!("{}", audit.render_text(global.verbose));
    }
    if let Some(j) = &journal {
        if let Some(err) = j.error() {
            errln!("warning: {err}");
        }
        if global.format == Format::Human && !global.quiet {
            errln!("journal: {}", j.path().display());
        }
    }
    Ok(audit.exit_code)
}

fn open_journal(
    global: &Global,
    plan: &PlanArgs,
    state_dir: Option<&Path>,
    inputs: &PlanInputs,
    run_id: &str,
    now: SystemTime,
) -> anyhow::Result<Journal> {
    let inventory_path = inventory::inventory_path(global);
    let bytes = std::fs::read(&inventory_path)
        .with_context(|| format!("cannot read `{}`", inventory_path.display()))?;
    let state_dir = state_dir.map_or_else(
        || journal::default_state_dir(&inventory_path),
        Path::to_path_buf,
    );
    let header = Header {
        format_version: journal::FORMAT_VERSION,
        run_id: run_id.to_owned(),
        command: "check".into(),
        fleetup_version: env!("CARGO_PKG_VERSION").into(),
        inventory: inventory_path.display().to_string(),
        inventory_sha256: hex::encode(Sha256::digest(&bytes)),
        target: inputs.target.to_string(),
        started_at: humantime::format_rfc3339_seconds(now).to_string(),
        user: local_user(),
        local_host: local_host(),
        no_backup: plan.no_backup,
        options: plan.recorded_options(),
        plan: None,
        plan_id: None,
    };
    Journal::create(&state_dir, &header)
}

impl PlanArgs {
    /// The plan options a journal's plan (its header) was built with: what `--resume` runs again.
    pub fn from_journal_plan(plan: &serde_json::Value) -> Option<PlanArgs> {
        let binary = &plan["binary"];
        let strategy = match plan["strategy_requested"].as_str()? {
            "offline" => StrategyArg::Offline,
            "rolling" => StrategyArg::Rolling,
            "replace" => StrategyArg::Replace,
            _ => StrategyArg::Auto,
        };
        Some(PlanArgs {
            to: Some(plan["target"].as_str()?.to_string()),
            binary: journal_binaries(plan),
            binary_url: (binary["kind"] == "url")
                .then(|| binary["url"].as_str().map(str::to_string))
                .flatten(),
            sha256: binary["sha256"].as_str().map(str::to_string),
            strategy,
            serial: BatchSize::from_json(&plan["serial"]),
            canary: plan["canary"]
                .as_u64()
                .and_then(|n| NonZeroUsize::new(usize::try_from(n).ok()?))
                .unwrap_or(NonZeroUsize::MIN),
            stop: plan["stop_running"].as_bool().unwrap_or(false),
            no_backup: !plan["backup"].as_bool().unwrap_or(true),
        })
    }

    /// The options that change the plan, as a journal header records them.
    pub fn recorded_options(&self) -> Vec<String> {
        let strategy: Strategy = self.strategy.into();
        let mut o = vec![format!("--strategy {strategy}")];
        if let Some(n) = self.serial {
            o.push(format!("--serial {n}"));
        }
        if self.canary.get() > 1 {
            o.push(format!("--canary {}", self.canary));
        }
        if self.stop {
            o.push("--stop".into());
        }
        if self.no_backup {
            o.push("--no-backup".into());
        }
        o
    }
}

/// The local login name, for journal headers and lock owners.
pub fn local_user() -> String {
    ["USER", "LOGNAME"]
        .iter()
        .find_map(|k| std::env::var(k).ok().filter(|v| !v.is_empty()))
        // SAFETY: getuid has no preconditions and cannot fail.
        .unwrap_or_else(|| format!("uid {}", unsafe { libc::getuid() }))
}

/// This machine's host name, for journal headers and lock owners.
pub fn local_host() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname NUL-terminates within it.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "unknown".into();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

/// Connects to `hosts` and audits them ([`operation::check`]); connection problems are printed
/// on stderr (host-key problems first, each with its hints) unless `--quiet`.
pub fn audit(
    global: &Global,
    inventory: &Inventory,
    hosts: &[ResolvedHost],
    inputs: &PlanInputs,
    connect: &ConnectFlags,
    sink: &dyn EventSink,
) -> anyhow::Result<Audit> {
    let options = connect.options();
    let scope = Scope {
        inventory,
        hosts,
        connect: &options,
    };
    let runtime = tokio::runtime::Runtime::new()?;
    Ok(runtime.block_on(operation::check(
        &scope,
        inputs,
        sink,
        &connect::Reporter {
            quiet: global.quiet,
        },
    )))
}
