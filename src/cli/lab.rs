//! `fleetup lab up|status|down|release`: the practice fleet on this machine.

use std::path::{Path, PathBuf};

use clap::{Args, Subcommand, ValueEnum};
use fleetup::Version;
use fleetup::exit_code;
use fleetup::lab::{Driver, Lab, LabSpec, NodeStatus};
use fleetup::redact::redact;
use sha2::{Digest, Sha256};

use super::{Format, Global};

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Start a local practice fleet: real sshd servers on 127.0.0.1, the ledger simulator as
    /// each node's `numary`, and `DIR/inventory.toml` for every other command.
    Up(UpArgs),
    /// Show each lab node: sshd, service, installed and served version, storage.
    Status(DirArgs),
    /// Stop every process the lab started (by pid) and drop its Postgres database.
    Down(DownArgs),
    /// Write a release "binary" of the simulator at a version, to upload with
    /// `fleetup upgrade --binary FILE`.
    Release(ReleaseArgs),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverArg {
    Sqlite,
    Postgres,
}

#[derive(Debug, Args)]
pub struct DirArgs {
    /// The lab's dir.
    #[arg(long, default_value = "lab")]
    pub dir: PathBuf,
}

#[derive(Debug, Args)]
pub struct UpArgs {
    /// Number of nodes.
    #[arg(long, default_value_t = 3)]
    pub nodes: usize,
    /// New nodes for `--strategy replace`: `new-1` … `new-N`, each `replaces = "node-i"`, with
    /// its own sshd and environment (the storage of the node it replaces) but no `numary`
    /// installed and its service stopped.
    #[arg(long, default_value_t = 0)]
    pub replacements: usize,
    /// `numary` version installed on every node.
    #[arg(long, default_value = "1.8.2")]
    pub version: Version,
    /// Storage: `sqlite` gives each node its own store (independent single-node deployments);
    /// `postgres` gives all nodes one shared database, as a real multi-node deployment.
    #[arg(long, value_enum, default_value_t = DriverArg::Sqlite)]
    pub driver: DriverArg,
    /// Postgres server to create the lab's database in (default: `FLEETUP_LAB_PG_URL`, else
    /// `FLEETUP_TEST_PG_URL`).
    #[arg(long, env = "FLEETUP_LAB_PG_URL", hide_env_values = true)]
    pub pg_url: Option<String>,
    /// The lab's dir (must not hold a lab yet).
    #[arg(long, default_value = "lab")]
    pub dir: PathBuf,
    /// Ledgers created on every store.
    #[arg(long, value_delimiter = ',', default_value = "default,payments")]
    pub ledgers: Vec<String>,
    /// Transactions seeded in each ledger.
    #[arg(long, default_value_t = 20)]
    pub transactions: u32,
    /// Leave every service stopped (a fleet ready for an offline upgrade).
    #[arg(long)]
    pub stopped: bool,
    /// The simulator binary (default: `FLEETUP_SIM`, else `numary-sim` beside fleetup, else PATH).
    #[arg(long)]
    pub sim: Option<PathBuf>,
    /// Chain N bastion sshd servers in front of the nodes (bastion-1 -> ... -> bastion-N ->
    /// nodes): the inventory reaches the nodes only through them, named in `DIR/ssh_config`.
    #[arg(long, value_name = "N", default_value_t = 0)]
    pub bastion: usize,
}

#[derive(Debug, Args)]
pub struct DownArgs {
    #[command(flatten)]
    pub dir: DirArgs,
    /// Also delete the lab's dir.
    #[arg(long)]
    pub purge: bool,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// Version the release reports.
    #[arg(long)]
    pub version: Version,
    /// File to write.
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub dir: DirArgs,
}

pub fn run(global: &Global, cmd: &LabCommand) -> anyhow::Result<i32> {
    match cmd {
        LabCommand::Up(args) => up(global, args),
        LabCommand::Status(args) => status(global, &args.dir),
        LabCommand::Down(args) => down(global, args),
        LabCommand::Release(args) => release(global, args),
    }
}

fn up(global: &Global, args: &UpArgs) -> anyhow::Result<i32> {
    let driver = match args.driver {
        DriverArg::Sqlite => Driver::Sqlite,
        DriverArg::Postgres => Driver::Postgres,
    };
    let pg_url = match driver {
        Driver::Postgres => args
            .pg_url
            .clone()
            .or_else(|| std::env::var("FLEETUP_TEST_PG_URL").ok())
            .filter(|u| !u.is_empty()),
        Driver::Sqlite => None,
    };
    let spec = LabSpec {
        dir: args.dir.clone(),
        nodes: args.nodes,
        version: args.version.clone(),
        driver,
        pg_url,
        ledgers: args.ledgers.clone(),
        transactions: args.transactions,
        start: !args.stopped,
        sim: args.sim.clone(),
        pg_per_node: false,
        replacements: args.replacements,
        bastions: args.bastion,
    };
    if !global.quiet {
        let replacements = match spec.replacements {
            0 => String::new(),
            n => format!(" + {n} replacement(s)"),
        };
        errln!(
            "starting a {}-node{replacements} lab in `{}` (numary {}, {})...",
            spec.nodes,
            spec.dir.display(),
            spec.version,
            driver.as_str()
        );
    }
    let lab = Lab::up(&spec)?;
    if global.format == Format::Json {
        super::out::json(&lab_json(&lab), true)?;
        return Ok(exit_code::SUCCESS);
    }
    out!("{}", summary(&lab, &args.dir, args.stopped));
    Ok(exit_code::SUCCESS)
}

/// The lab state without the Postgres password.
fn lab_json(lab: &Lab) -> serde_json::Value {
    let mut v = serde_json::to_value(lab).unwrap_or_default();
    if let Some(url) = v.pointer_mut("/postgres/server_url") {
        *url = serde_json::Value::String(redact(url.as_str().unwrap_or_default()));
    }
    v["inventory"] = serde_json::Value::String(lab.inventory_path().display().to_string());
    v
}

fn summary(lab: &Lab, dir_arg: &Path, stopped: bool) -> String {
    let storage = match &lab.postgres {
        Some(pg) => format!("postgres, shared database `{}`", pg.database),
        None => "sqlite (one store per node)".to_owned(),
    };
    let new_nodes = lab.nodes.iter().filter(|n| n.replaces.is_some()).count();
    let replacements = match new_nodes {
        0 => String::new(),
        n => format!(" + {n} replacement(s)"),
    };
    let mut out = format!(
        "lab up in {}: {} node(s){replacements}, numary {}, {}, services {}\n",
        lab.dir.display(),
        lab.nodes.len() - new_nodes,
        lab.version,
        storage,
        if stopped { "stopped" } else { "running" }
    );
    for n in &lab.nodes {
        let role = match &n.replaces {
            Some(old) => format!("  (replaces {old}; no numary, stopped)"),
            None if n.migrator => "  (migrator)".to_owned(),
            None => String::new(),
        };
        out.push_str(&format!(
            "  {:<8} ssh 127.0.0.1:{:<5}  api 127.0.0.1:{:<5}  root {}{role}\n",
            n.name,
            n.ssh_port,
            n.api_port,
            n.root.display(),
        ));
    }
    // Paths as the user typed them, fleetup too (`target/release/fleetup` is not on PATH), so
    // the commands can be pasted.
    let d = dir_arg.display();
    let f = invoked_as();
    let first = lab.nodes.first();
    out.push_str("\nnext:\n");
    out.push_str(&format!("  {f} -i {d}/inventory.toml status\n"));
    out.push_str(&format!("  {f} -i {d}/inventory.toml exec -- uname -n\n"));
    if let Some(n) = first {
        out.push_str(&format!(
            "  ssh -i {d}/client/id_ed25519 -o UserKnownHostsFile={d}/client/known_hosts -p {} {}@127.0.0.1 {} version\n",
            n.ssh_port,
            lab.user,
            n.paths().binary().display()
        ));
    }
    out.push_str(&format!(
        "  {f} lab release --dir {d} --version 1.9.0 --out {d}/numary-1.9.0\n"
    ));
    out.push_str(&format!("  {f} lab status --dir {d}\n"));
    out.push_str(&format!(
        "  {f} lab down --dir {d}        (add --purge to delete {d})\n"
    ));
    out
}

/// fleetup as this process was started (`target/release/fleetup`, `fleetup` from PATH), for
/// hints that run as shown.
fn invoked_as() -> String {
    let argv0 = std::env::args().next().unwrap_or_default();
    if argv0.is_empty() || argv0.contains(char::is_whitespace) {
        "fleetup".into()
    } else {
        argv0
    }
}

fn status(global: &Global, dir: &Path) -> anyhow::Result<i32> {
    let lab = Lab::load(dir)?;
    let rows = lab.status();
    if global.format == Format::Json {
        super::out::json(&rows, true)?;
        return Ok(exit_code::SUCCESS);
    }
    out!("{}", status_table(&rows));
    Ok(exit_code::SUCCESS)
}

fn status_table(rows: &[NodeStatus]) -> String {
    let mut table = vec![
        [
            "NODE", "SSHD", "SSH", "API", "SERVICE", "BINARY", "SERVING", "STORAGE",
        ]
        .map(str::to_owned),
    ];
    for r in rows {
        table.push([
            match &r.replaces {
                Some(old) => format!("{} (replaces {old})", r.name),
                None => r.name.clone(),
            },
            if r.sshd_running {
                format!("up (pid {})", r.sshd_pid)
            } else {
                "down".to_owned()
            },
            r.ssh_port.to_string(),
            r.api_port.to_string(),
            match (r.service_running, r.server_pid) {
                (true, Some(pid)) => format!("running (pid {pid})"),
                (true, None) => "running".to_owned(),
                (false, _) => "stopped".to_owned(),
            },
            match (&r.installed_version, r.binary_installed) {
                (Some(v), _) => v.clone(),
                (None, true) => "?".to_owned(),
                (None, false) => "none".to_owned(),
            },
            r.api_version.clone().unwrap_or_else(|| "-".into()),
            r.storage.clone(),
        ]);
    }
    let widths: Vec<usize> = (0..8)
        .map(|i| table.iter().map(|row| row[i].len()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in &table {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

fn down(global: &Global, args: &DownArgs) -> anyhow::Result<i32> {
    let dir = &args.dir.dir;
    if !dir.join("lab.json").exists() {
        if !global.quiet {
            errln!("no lab in `{}`; nothing to stop", dir.display());
        }
        return Ok(exit_code::SUCCESS);
    }
    let lab = Lab::load(dir)?;
    let report = lab.down()?;
    if args.purge {
        std::fs::remove_dir_all(&lab.dir)
            .map_err(|e| anyhow::anyhow!("cannot remove `{}`: {e}", lab.dir.display()))?;
    }
    if global.format == Format::Json {
        super::out::json(&report, true)?;
    } else {
        for (node, pid) in &report.servers_stopped {
            outln!("stopped numary server {pid} ({node})");
        }
        for (node, pid) in &report.sshd_stopped {
            outln!("stopped sshd {pid} ({node})");
        }
        if let Some(db) = &report.database_dropped {
            outln!("dropped database `{db}`");
        }
        if args.purge {
            outln!("removed {}", lab.dir.display());
        }
        outln!("lab down");
    }
    if !report.survivors.is_empty() {
        anyhow::bail!(
            "processes still alive after SIGKILL: {:?}",
            report.survivors
        );
    }
    Ok(exit_code::SUCCESS)
}

fn release(global: &Global, args: &ReleaseArgs) -> anyhow::Result<i32> {
    let lab = Lab::load(&args.dir.dir)?;
    lab.write_release(&args.version, &args.out)?;
    let sha = hex::encode(Sha256::digest(
        lab.release_wrapper(&args.version).as_bytes(),
    ));
    if global.format == Format::Json {
        outln!(
            "{}",
            serde_json::json!({ "file": args.out, "version": args.version, "sha256": sha })
        );
    } else {
        outln!(
            "wrote {} (numary {}, sha256 {sha})",
            args.out.display(),
            args.version
        );
    }
    Ok(exit_code::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_table_aligns_columns_and_says_what_is_down() {
        let row = |name: &str, up: bool| NodeStatus {
            name: name.into(),
            replaces: None,
            binary_installed: true,
            ssh_port: 40001,
            sshd_pid: 77,
            sshd_running: up,
            api_port: 40002,
            service_running: up,
            server_pid: up.then_some(88),
            installed_version: Some("1.8.2".into()),
            api_version: up.then(|| "1.8.2".into()),
            storage: "sqlite /x".into(),
        };
        let t = status_table(&[row("node-1", true), row("node-10", false)]);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NODE     SSHD"), "{t}");
        assert!(
            lines[1].contains("up (pid 77)") && lines[1].contains("running (pid 88)"),
            "{t}"
        );
        assert!(
            lines[2].contains("down") && lines[2].contains("stopped"),
            "{t}"
        );
        // Every row puts the SSH port at the same column.
        let col = lines[1].find("40001").unwrap();
        assert_eq!(lines[2].find("40001"), Some(col));

        let new = NodeStatus {
            replaces: Some("node-1".into()),
            binary_installed: false,
            installed_version: None,
            ..row("new-1", false)
        };
        let t = status_table(&[row("node-1", true), new]);
        let line = t.lines().nth(2).unwrap();
        assert!(line.starts_with("new-1 (replaces node-1)  down"), "{t}");
        let cells: Vec<&str> = line.split_whitespace().collect();
        assert!(cells.contains(&"none") && !cells.contains(&"?"), "{t}");
    }
}
