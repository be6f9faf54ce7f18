//! `fleetup status`: facts about every selected host, gathered in parallel.

use clap::Args;
use fleetup::exit_code;
use fleetup::facts::{self, HostFacts, ServiceState};
use fleetup::inventory::ResolvedHost;
use serde::Serialize;

use super::connect::{self, ConnectFlags};
use super::{Format, Global, inventory};

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    pub connect: ConnectFlags,
}

/// One host of `status --format json`.
#[derive(Serialize)]
struct HostStatus<'a> {
    host: &'a str,
    address: &'a str,
    port: u16,
    reachable: bool,
    #[serde(flatten)]
    facts: &'a HostFacts,
}

pub fn run(global: &Global, args: &StatusArgs) -> anyhow::Result<i32> {
    let inventory = inventory::load_inventory(global)?;
    // Every host of the inventory is connected: the selected ones and, for the plan's
    // left-out check, the others.
    connect::ensure_open_files(inventory.hosts().len())?;
    let hosts: Vec<ResolvedHost> = inventory::select_hosts(global, &inventory)?
        .into_iter()
        .cloned()
        .collect();
    let runtime = tokio::runtime::Runtime::new()?;
    let facts = runtime.block_on(async {
        let conns = connect::connect(&hosts, &args.connect).await;
        if !global.quiet {
            connect::report_failures(&conns);
        }
        facts::gather_all(&hosts, &conns).await
    });
    let missing = HostFacts::default();
    let rows: Vec<HostStatus> = hosts
        .iter()
        .map(|h| {
            let f = facts.get(&h.name).unwrap_or(&missing);
            HostStatus {
                host: &h.name,
                address: &h.address,
                port: h.ssh.port,
                reachable: f.reachable(),
                facts: f,
            }
        })
        .collect();
    match global.format {
        // JSON Lines, one `host_status` per host, in inventory order (docs/json-events.md).
        Format::Json => {
            for r in &rows {
                let mut v = serde_json::to_value(r)?;
                v["event"] = "host_status".into();
                super::display::print_json_line(&v);
            }
        }
        Format::Human => out!("{}", render(&rows)),
    }
    let unreachable = rows.iter().filter(|r| !r.reachable).count();
    Ok(if unreachable > 0 {
        exit_code::UNREACHABLE
    } else {
        exit_code::SUCCESS
    })
}

fn render(rows: &[HostStatus]) -> String {
    let mut table = vec![
        [
            "HOST",
            "REACHABLE",
            "VERSION",
            "SERVICE",
            "API",
            "STORAGE",
            "LEDGERS",
        ]
        .map(String::from),
    ];
    let mut notes = Vec::new();
    for r in rows {
        let f = r.facts;
        let dash = || "-".to_string();
        let api = match &f.api {
            None => dash(),
            Some(a) => format!(
                "{}{}",
                if a.healthy { "healthy" } else { "unhealthy" },
                a.version
                    .as_ref()
                    .map(|v| format!(" {v}"))
                    .unwrap_or_default()
            ),
        };
        let storage = match &f.storage {
            None => dash(),
            Some(s) => match (&s.sqlite_dir, &s.postgres) {
                (Some(dir), _) => format!("sqlite {dir}"),
                (_, Some(pg)) => format!("postgres {pg}"),
                _ => dash(),
            },
        };
        table.push([
            r.host.to_string(),
            if r.reachable {
                "yes".into()
            } else {
                "no".into()
            },
            f.installed_version
                .as_ref()
                .map(ToString::to_string)
                .unwrap_or_else(dash),
            match f.service {
                ServiceState::Running => "running".into(),
                ServiceState::Stopped => "stopped".into(),
                ServiceState::Unknown => "unknown".into(),
            },
            api,
            storage,
            if f.ledgers.is_empty() {
                dash()
            } else {
                f.ledgers.join(",")
            },
        ]);
        if let Some(why) = &f.unreachable {
            notes.push(format!("{}: unreachable: {why}", r.host));
        }
        for j in &f.hot_journals {
            notes.push(format!(
                "{}: hot SQLite journal `{j}` (the last stop was not clean)",
                r.host
            ));
        }
        for p in &f.problems {
            notes.push(format!("{}: {p}", r.host));
        }
        for d in &f.env_divergent {
            notes.push(format!(
                "{}: env file read differently by systemd and a shell: {d}",
                r.host
            ));
        }
    }
    let mut out = super::table::render(&table);
    let reachable = rows.iter().filter(|r| r.reachable).count();
    out.push_str(&format!("\n{} hosts, {reachable} reachable\n", rows.len()));
    for n in notes {
        out.push_str(&format!("note: {n}\n"));
    }
    out
}
