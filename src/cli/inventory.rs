//! `fleetup inventory check|list`, the SSH override flags, and the helpers every command uses to
//! load the inventory and apply `--limit`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::{Args, Subcommand};
use fleetup::Failure;
use fleetup::exit_code;
use fleetup::inventory::values::{HumanDuration, Invalid, JumpHost, Port, UserName, expand_local};
use fleetup::inventory::{Inventory, Overrides, ResolvedHost, Service, SshConfigChoice};

use super::{Format, Global};

#[derive(Debug, Subcommand)]
pub enum InventoryCommand {
    /// Validate the inventory: syntax, types, values and cross-references (all reported at once).
    Check,
    /// Print the resolved hosts (after `--limit`).
    List,
}

/// SSH settings for every host, beating the inventory and the `FLEETUP_*` variables.
#[derive(Debug, Args, Clone, Default)]
#[command(next_help_heading = "SSH overrides (beat the inventory and FLEETUP_* variables)")]
pub struct SshFlags {
    /// SSH login user [env: FLEETUP_SSH_USER].
    #[arg(long = "ssh-user", global = true, value_name = "USER", value_parser = parse_user)]
    pub user: Option<String>,
    /// SSH port [env: FLEETUP_SSH_PORT].
    #[arg(long = "ssh-port", global = true, value_name = "PORT", value_parser = parse_port)]
    pub port: Option<u16>,
    /// Private key file to offer; repeat for several [env: FLEETUP_IDENTITY_FILE, `:`-separated].
    #[arg(long = "identity", global = true, value_name = "FILE")]
    pub identity: Vec<PathBuf>,
    /// known_hosts file to check host keys against [env: FLEETUP_KNOWN_HOSTS].
    #[arg(long = "known-hosts", global = true, value_name = "FILE")]
    pub known_hosts: Option<PathBuf>,
    /// Time allowed to connect and authenticate, such as `10s` [env: FLEETUP_CONNECT_TIMEOUT].
    #[arg(long = "connect-timeout", global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub connect_timeout: Option<Duration>,
    /// Time allowed for one remote command, such as `30m` [env: FLEETUP_COMMAND_TIMEOUT].
    #[arg(long = "command-timeout", global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub command_timeout: Option<Duration>,
    /// Time allowed for one migration command (`storage upgrade`, `storage scan`), such as
    /// `6h` (the default) [env: FLEETUP_MIGRATION_TIMEOUT].
    #[arg(long = "migration-timeout", global = true, value_name = "DURATION", value_parser = parse_duration)]
    pub migration_timeout: Option<Duration>,
    /// Bastion to go through, `[user@]host[:port]`, or `none` [env: FLEETUP_JUMP_HOST].
    #[arg(long = "jump", global = true, value_name = "HOST", value_parser = JumpHost::parse)]
    pub jump: Option<JumpHost>,
    /// OpenSSH client config to read (default `~/.ssh/config`), or `none`; the inventory's
    /// own settings beat it.
    #[arg(long = "ssh-config", global = true, value_name = "FILE")]
    pub ssh_config: Option<PathBuf>,
}

fn parse_user(s: &str) -> Result<String, Invalid> {
    UserName::parse(s).map(|u| u.to_string())
}

fn parse_port(s: &str) -> Result<u16, Invalid> {
    Port::parse(s).map(|p| p.0)
}

fn parse_duration(s: &str) -> Result<Duration, Invalid> {
    HumanDuration::parse(s).map(|d| d.0)
}

impl SshFlags {
    /// The flags as [`Overrides`]; `~` expands to `home`, relative paths resolve against `cwd`.
    fn overrides(&self, cwd: &Path, home: Option<&Path>) -> anyhow::Result<Overrides> {
        let path = |flag: &str, p: &Path| {
            expand_local(&p.to_string_lossy(), home, cwd).map_err(|e| {
                let mut f = Failure::usage(format!("`{flag}`: {}", e.message));
                f.hints = e.hints;
                f
            })
        };
        let identity_files = self
            .identity
            .iter()
            .map(|p| path("--identity", p))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Overrides {
            user: self.user.clone(),
            port: self.port,
            identity_files: (!identity_files.is_empty()).then_some(identity_files),
            known_hosts: self
                .known_hosts
                .as_deref()
                .map(|p| path("--known-hosts", p))
                .transpose()?,
            connect_timeout: self.connect_timeout,
            command_timeout: self.command_timeout,
            migration_timeout: self.migration_timeout,
            jump_host: self.jump.clone(),
            ssh_config: match self.ssh_config.as_deref() {
                None => None,
                Some(p) if p == Path::new("none") => Some(SshConfigChoice::Off),
                Some(p) => Some(SshConfigChoice::File(path("--ssh-config", p)?)),
            },
        })
    }
}

/// The inventory path: `-i`, else `FLEETUP_INVENTORY` (both through clap), else `./inventory.toml`.
pub fn inventory_path(global: &Global) -> PathBuf {
    global
        .inventory
        .clone()
        .unwrap_or_else(|| PathBuf::from("inventory.toml"))
}

/// Load the inventory with the `FLEETUP_*` variables and the SSH flags applied.
pub fn load_inventory(global: &Global) -> anyhow::Result<Inventory> {
    let path = inventory_path(global);
    let cwd = std::env::current_dir()?;
    let env = Overrides::from_env(|k| std::env::var(k).ok(), &cwd)?;
    let home = std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from);
    let overrides = global.ssh.overrides(&cwd, home.as_deref())?.over(env);
    Inventory::load(&path, &overrides)
}

/// The hosts `--limit` selects, in inventory order.
pub fn select_hosts<'i>(
    global: &Global,
    inventory: &'i Inventory,
) -> anyhow::Result<Vec<&'i ResolvedHost>> {
    Ok(inventory.select(&global.limit)?)
}

pub fn run(global: &Global, cmd: &InventoryCommand) -> anyhow::Result<i32> {
    let inventory = load_inventory(global)?;
    match cmd {
        InventoryCommand::Check => {
            let (hosts, groups) = (inventory.hosts().len(), inventory.groups().len());
            match global.format {
                Format::Human => outln!(
                    "inventory `{}` is valid: {hosts} host{}, {groups} group{}",
                    inventory.path().display(),
                    plural(hosts),
                    plural(groups)
                ),
                Format::Json => outln!(
                    "{}",
                    serde_json::json!({
                        "path": inventory.path(),
                        "valid": true,
                        "hosts": hosts,
                        "groups": groups,
                    })
                ),
            }
        }
        InventoryCommand::List => {
            let hosts = select_hosts(global, &inventory)?;
            match global.format {
                Format::Human => {
                    out!("{}", render_table(&hosts));
                    if global.verbose > 0 {
                        out!("{}", render_origins(&hosts));
                    }
                }
                Format::Json => super::out::json(&hosts, true)?,
            }
        }
    }
    Ok(exit_code::SUCCESS)
}

fn plural(n: usize) -> &'static str {
    if n == 1 { "" } else { "s" }
}

/// One row per host, columns padded to the widest cell.
fn render_table(hosts: &[&ResolvedHost]) -> String {
    let mut header = ["NAME", "ADDRESS", "USER", "GROUPS", "ROLE", "SERVICE"].map(String::from);
    let jumps = hosts.iter().any(|h| h.ssh.jump_host.is_some());
    let rows: Vec<[String; 6]> = hosts
        .iter()
        .map(|h| {
            let endpoint = if h.address.contains(':') {
                format!("[{}]:{}", h.address, h.ssh.port)
            } else {
                format!("{}:{}", h.address, h.ssh.port)
            };
            let mut role: Vec<String> = Vec::new();
            if h.migrator {
                role.push("migrator".into());
            }
            if let Some(old) = &h.replaces {
                role.push(format!("replaces {old}"));
            }
            let service = match &h.ledger.service {
                Service::Systemd { unit } => format!("systemd {unit}"),
                Service::Command { .. } => "command".to_string(),
            };
            [
                h.name.clone(),
                endpoint,
                h.ssh.user.clone(),
                if h.groups.is_empty() {
                    "-".into()
                } else {
                    h.groups.join(",")
                },
                if role.is_empty() {
                    "-".into()
                } else {
                    role.join(", ")
                },
                match (&h.ssh.jump_host, jumps) {
                    (Some(chain), _) => format!("{service}  via {chain}"),
                    (None, true) => format!("{service}  direct"),
                    (None, false) => service,
                },
            ]
        })
        .collect();
    if jumps {
        header[5] = "SERVICE  JUMP".into();
    }
    let mut widths = header.clone().map(|c| c.chars().count());
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for row in std::iter::once(&header).chain(&rows) {
        let cells: Vec<String> = row
            .iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        out.push_str(cells.join("  ").trim_end());
        out.push('\n');
    }
    out
}

/// `-v`: where each host's SSH settings came from, and each hop of its jump chain.
fn render_origins(hosts: &[&ResolvedHost]) -> String {
    let mut out = String::new();
    for h in hosts {
        out.push_str(&format!("\n{}:\n", h.name));
        if let Some(alias) = &h.ssh.openssh.alias {
            out.push_str(&format!("  {:<16} {alias}\n", "alias"));
        }
        for (key, from) in &h.ssh.openssh.origins {
            out.push_str(&format!("  {key:<16} from {from}\n"));
        }
        for (i, hop) in h.ssh.jump_chain.iter().enumerate() {
            out.push_str(&format!(
                "  {:<16} {} = {}@{}:{} (known_hosts {})\n",
                format!("hop {}", i + 1),
                hop.spec,
                hop.user,
                hop.address,
                hop.port,
                hop.known_hosts.display()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetup::inventory::{LedgerSettings, SshSettings};

    fn host(name: &str, address: &str) -> ResolvedHost {
        ResolvedHost {
            name: name.into(),
            address: address.into(),
            groups: vec!["eu".into()],
            migrator: name == "a",
            replaces: (name == "b").then(|| "a".to_string()),
            ssh: SshSettings {
                user: "deploy".into(),
                port: 2222,
                identity_files: vec![],
                known_hosts: "/kh".into(),
                global_known_hosts: vec![],
                connect_timeout: Duration::from_secs(1),
                command_timeout: Duration::from_secs(1),
                migration_timeout: Duration::from_secs(1),
                jump_host: None,
                use_agent: true,
                jump_chain: Vec::new(),
                openssh: Default::default(),
            },
            ledger: LedgerSettings::default(),
            rollout: Default::default(),
        }
    }

    #[test]
    fn table_aligns_columns_and_brackets_ipv6() {
        let (a, b) = (host("a", "10.0.0.1"), host("b", "fd00::2"));
        let table = render_table(&[&a, &b]);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[0].starts_with("NAME  ADDRESS"), "{table}");
        assert!(lines[1].contains("10.0.0.1:2222"), "{table}");
        assert!(lines[1].contains("migrator"), "{table}");
        assert!(lines[2].contains("[fd00::2]:2222"), "{table}");
        assert!(lines[2].contains("replaces a"), "{table}");
        assert!(lines[2].ends_with("systemd numary.service"), "{table}");
        let col = |line: &str| line.find("deploy");
        assert_eq!(col(lines[1]), col(lines[2]));
    }

    #[test]
    fn flags_resolve_relative_paths_against_cwd() {
        let flags = SshFlags {
            identity: vec!["k".into(), "/abs".into(), "~/.ssh/id".into()],
            known_hosts: Some("kh".into()),
            ..SshFlags::default()
        };
        let o = flags
            .overrides(Path::new("/work"), Some(Path::new("/home/op")))
            .unwrap();
        assert_eq!(
            o.identity_files,
            Some(vec![
                PathBuf::from("/work/k"),
                PathBuf::from("/abs"),
                PathBuf::from("/home/op/.ssh/id")
            ])
        );
        assert_eq!(o.known_hosts, Some(PathBuf::from("/work/kh")));
        assert_eq!(
            SshFlags::default().overrides(Path::new("/"), None).unwrap(),
            Overrides::default()
        );
        let err = flags.overrides(Path::new("/"), None).unwrap_err();
        assert!(err.to_string().contains("`--identity`"), "{err}");
    }
}
