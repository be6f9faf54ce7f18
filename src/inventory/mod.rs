//! The inventory: what an operator writes once per fleet (TOML), parsed strictly and resolved into
//! one [`ResolvedHost`] per `[[host]]` with every setting decided.
//!
//! Precedence, lowest to highest: built-in defaults < `[ssh]`/`[ledger]`/`[rollout]` <
//! `[groups.NAME]` (in the order the host lists its groups) < `[[host]]` < `FLEETUP_*`
//! environment < command-line flags.
//! See `inventory.example.toml` for every key.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::error::Failure;
use crate::version::Version;

mod diagnostics;
mod overrides;
mod raw;
mod resolve;
mod select;
#[cfg(test)]
mod ssh_config_tests;
pub mod values;

pub use overrides::{ENV_VARS, Overrides};
pub use select::select;
pub use values::JumpHost;

/// One host with every setting resolved. Everything downstream (facts, plan, SSH, lab) uses this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResolvedHost {
    /// Unique name (`[[host]] name`), used in output, `--limit` and the journal.
    pub name: String,
    /// DNS name or IP address to connect to.
    pub address: String,
    /// Groups in the order the host lists them.
    pub groups: Vec<String>,
    /// Preferred node for running migrations.
    pub migrator: bool,
    /// For zero-downtime replacement: the old host this new node replaces.
    pub replaces: Option<String>,
    pub ssh: SshSettings,
    pub ledger: LedgerSettings,
    pub rollout: RolloutSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SshSettings {
    pub user: String,
    pub port: u16,
    /// Local private key files to offer, in order (after the agent, when `use_agent`).
    pub identity_files: Vec<PathBuf>,
    /// Local OpenSSH known_hosts file that host keys are checked against.
    pub known_hosts: PathBuf,
    /// System-wide known_hosts files read as well (never written), like OpenSSH's
    /// `GlobalKnownHostsFile`; a missing file is empty.
    pub global_known_hosts: Vec<PathBuf>,
    /// TCP connect + banner + key exchange + authentication.
    #[serde(with = "humantime_serde_compat")]
    pub connect_timeout: Duration,
    /// Upper bound for one remote command.
    #[serde(with = "humantime_serde_compat")]
    pub command_timeout: Duration,
    /// Upper bound for one migration command (`storage upgrade NAME`, `storage scan`), which
    /// scales with the ledger's size: hours, not the minutes of `command_timeout`.
    #[serde(with = "humantime_serde_compat")]
    pub migration_timeout: Duration,
    /// The bastions to go through (ProxyJump), as written: `[user@]host[:port]`, several
    /// separated by commas, first hop first.
    pub jump_host: Option<String>,
    /// Offer the keys of the ssh-agent at `SSH_AUTH_SOCK`.
    pub use_agent: bool,
    /// [`SshSettings::jump_host`] resolved hop by hop, each with its own ssh_config block.
    /// Empty with a `jump_host` set: each hop uses this host's user, keys and known_hosts.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub jump_chain: Vec<JumpHop>,
    /// What ssh_config adds that the inventory has no key for.
    pub openssh: OpenSshSettings,
}

/// Settings from ssh_config with no inventory key, and where each resolved setting came from.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct OpenSshSettings {
    /// `CertificateFile`: a user certificate offered with its identity file's key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_file: Option<PathBuf>,
    /// `IdentitiesOnly yes`: offer only agent keys whose `.pub` is one of the identity files.
    pub identities_only: bool,
    /// `ServerAliveInterval`: the keepalive of this host's connection.
    #[serde(
        skip_serializing_if = "Option::is_none",
        with = "humantime_serde_compat::option"
    )]
    pub server_alive_interval: Option<Duration>,
    /// `StrictHostKeyChecking yes` makes this host strict even with `--accept-new-host-keys`;
    /// other values never weaken fleetup's policy.
    pub strict_host_key_checking: bool,
    /// The inventory's `address` when ssh_config's `HostName` replaced it (an alias).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub alias: Option<String>,
    /// The ssh_config file read, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ssh_config: Option<PathBuf>,
    /// Where `address`, `user`, `port`, `jump_host`, `identity_files`, `known_hosts` and
    /// `connect_timeout` came from (`[[host]] NAME`, `[ssh]`, `ssh_config FILE (Host PATTERN)`...).
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub origins: BTreeMap<String, String>,
}

/// One bastion of a jump chain, resolved like a host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct JumpHop {
    /// As written in the chain (`ops@bastion:2222`, or an ssh_config alias).
    pub spec: String,
    pub address: String,
    pub port: u16,
    pub user: String,
    pub identity_files: Vec<PathBuf>,
    pub known_hosts: PathBuf,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub global_known_hosts: Vec<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub certificate_file: Option<PathBuf>,
    pub identities_only: bool,
    pub strict_host_key_checking: bool,
}

/// Which ssh_config file to read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SshConfigChoice {
    /// Read none (`none`).
    Off,
    File(PathBuf),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LedgerSettings {
    /// Absolute remote path of the `numary` binary the service runs (a symlink fleetup manages).
    pub binary: String,
    /// Absolute remote dir where releases are staged as `<releases_dir>/<version>/numary`.
    pub releases_dir: String,
    pub service: Service,
    /// Absolute remote path of the environment file the service reads (`NUMARY_*` variables).
    pub env_file: Option<String>,
    /// `host:port` of the ledger HTTP API as seen from the node itself.
    pub api: String,
    /// Ledgers the operator expects; when set, each must be listed by `storage list`.
    pub ledgers: Option<Vec<String>>,
    /// Absolute remote dir for backups.
    pub backup_dir: String,
    /// The storage this node shares with the other nodes naming it (`storage = "NAME"`):
    /// one database, backed up and migrated once, whatever the connection strings say.
    /// `None`: told by the node's storage settings (see [`crate::facts::StorageId`]).
    pub storage: Option<String>,
    /// How the privileged steps gain root on the node (`become`; see [`Become`]).
    #[serde(rename = "become")]
    pub escalate: Become,
}

/// `become`: how fleetup runs the steps that need root on a node (the service manager's
/// start/stop/disable, writes under `releases_dir`, `binary` and `backup_dir`, the storage
/// commands that read the env file). `none`: as the SSH user, who must be allowed all that;
/// `sudo`: each such command as `sudo -n -- sh -c '...'`, never waiting for a password.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Become {
    #[default]
    None,
    Sudo,
}

impl Become {
    /// `command` as it runs with these privileges: unchanged for `none`, through
    /// [`crate::shell::sudo`] for `sudo`.
    pub fn wrap(self, command: &str) -> String {
        match self {
            Become::None => command.to_string(),
            Become::Sudo => crate::shell::sudo(command),
        }
    }

    pub fn is_none(&self) -> bool {
        *self == Become::None
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Become::None => "none",
            Become::Sudo => "sudo",
        }
    }
}

/// How the ledger service is started, stopped and queried on a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "manager", rename_all = "lowercase")]
pub enum Service {
    /// A systemd unit (`systemctl start|stop|is-active UNIT`).
    Systemd { unit: String },
    /// Shell commands run on the node; `status` exits 0 when running, non-zero when stopped.
    Command {
        start: String,
        stop: String,
        status: String,
    },
}

/// How the run moves through the node's batch: commands of the operator's around it (a load
/// balancer drained before the node leaves service, put back once it is healthy) and how long it
/// must stay healthy before the next batch. The default: no hooks, no wait.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct RolloutSettings {
    /// Run before the node's batch leaves service (or, replace, before a new node starts).
    pub pre_hook: Option<Hook>,
    /// Run once the node's batch passed its health gate.
    pub post_hook: Option<Hook>,
    /// How long the node must stay healthy after its health gate passed before the next batch.
    #[serde(with = "humantime_serde_compat")]
    pub min_healthy_time: Duration,
}

/// An operator's shell command run around a batch. It is run as written, never with a value
/// put into it: what fleetup tells it comes as `FLEETUP_*` environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Hook {
    pub command: String,
    /// On the machine running fleetup (`sh -c`, in [`Hook::dir`]) instead of on the node over
    /// its SSH session.
    pub local: bool,
    /// The hook fails once it ran this long (it is killed).
    #[serde(with = "humantime_serde_compat")]
    pub timeout: Duration,
    /// The inventory file's directory: where a local hook runs (a remote one runs where the
    /// SSH user's shell starts).
    pub dir: PathBuf,
}

impl Hook {
    /// How long a hook may run when the inventory does not say.
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(60);
}

/// Serialize durations as humantime strings (`10s`, `5m`).
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::Serializer;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&humantime::format_duration(*d))
    }

    pub mod option {
        use std::time::Duration;

        use serde::Serializer;

        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }
    }
}

impl Default for LedgerSettings {
    /// The built-in defaults, what a `numary` install from the release archive usually looks like.
    fn default() -> Self {
        LedgerSettings {
            binary: "/usr/local/bin/numary".into(),
            releases_dir: "/opt/numary/releases".into(),
            service: Service::Systemd {
                unit: "numary.service".into(),
            },
            env_file: None,
            api: "127.0.0.1:3068".into(),
            ledgers: None,
            backup_dir: "/var/backups/numary".into(),
            storage: None,
            escalate: Become::None,
        }
    }
}

/// A release binary named under `[releases."VERSION"]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Release {
    pub source: ReleaseSource,
    /// Expected SHA-256 of the binary (lowercase hex), checked after staging when set.
    pub sha256: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReleaseSource {
    /// A binary on the operator's machine, uploaded to each node.
    File(PathBuf),
    /// An http(s) URL each node downloads.
    Url(String),
}

/// What the operator's machine contributes to the built-in defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalEnv {
    /// Expands `~`; the default known_hosts is `~/.ssh/known_hosts`.
    pub home: Option<PathBuf>,
    /// The default SSH user: the operator's own login name.
    pub user: String,
    /// The default identity files: OpenSSH's usual keys that exist.
    pub default_identity_files: Vec<PathBuf>,
}

impl LocalEnv {
    /// From this process: `HOME`, `USER` (else `LOGNAME`, else `root`), and which of
    /// `~/.ssh/id_ed25519`, `id_ecdsa`, `id_rsa` exist.
    pub fn from_process() -> LocalEnv {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let home = var("HOME").map(PathBuf::from);
        let user = var("USER")
            .or_else(|| var("LOGNAME"))
            .unwrap_or_else(|| "root".into());
        let default_identity_files = home
            .iter()
            .flat_map(|h| ["id_ed25519", "id_ecdsa", "id_rsa"].map(|k| h.join(".ssh").join(k)))
            .filter(|p| p.is_file())
            .collect();
        LocalEnv {
            home,
            user,
            default_identity_files,
        }
    }
}

/// A parsed, validated and resolved inventory.
#[derive(Debug, Clone)]
pub struct Inventory {
    path: PathBuf,
    hosts: Vec<ResolvedHost>,
    groups: Vec<String>,
    releases: BTreeMap<Version, Release>,
}

impl Inventory {
    /// Read and resolve the inventory at `path` with this process's environment (`HOME`,
    /// `USER`) for the built-in defaults. Errors hold a usage [`Failure`] with every problem.
    pub fn load(path: &Path, overrides: &Overrides) -> anyhow::Result<Inventory> {
        let source = std::fs::read_to_string(path).map_err(|e| {
            Failure::usage(format!("cannot read inventory `{}`: {e}", path.display()))
                .hint("pass the inventory with `-i FILE` or `FLEETUP_INVENTORY`")
        })?;
        Ok(Inventory::parse(
            &source,
            path,
            overrides,
            &LocalEnv::from_process(),
        )?)
    }

    /// Parse `source` as the inventory file `path` (used in messages; relative local paths
    /// resolve against its directory).
    pub fn parse(
        source: &str,
        path: &Path,
        overrides: &Overrides,
        local: &LocalEnv,
    ) -> Result<Inventory, Failure> {
        let raw: raw::RawInventory = toml::from_str(source).map_err(|e| {
            diagnostics::to_failure(path, source, vec![diagnostics::Diagnostic::from_toml(&e)])
        })?;
        let dir = match path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d,
            _ => Path::new("."),
        };
        let base = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
        let resolved = resolve::resolve(&raw, source, &base, local, overrides)
            .map_err(|diags| diagnostics::to_failure(path, source, diags))?;
        if resolved.hosts.is_empty() {
            return Err(Failure::new(
                crate::exit_code::NO_HOSTS,
                format!("inventory `{}` defines no host", path.display()),
            )
            .hint("add one `[[host]]` table per node, with `name` and `address`; see inventory.example.toml"));
        }
        Ok(Inventory {
            path: path.to_path_buf(),
            hosts: resolved.hosts,
            groups: resolved.groups,
            releases: resolved.releases,
        })
    }

    /// The file this inventory was read from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Every host, in inventory order.
    pub fn hosts(&self) -> &[ResolvedHost] {
        &self.hosts
    }

    /// The names of the `[groups.NAME]` tables, sorted.
    pub fn groups(&self) -> &[String] {
        &self.groups
    }

    pub fn releases(&self) -> &BTreeMap<Version, Release> {
        &self.releases
    }

    pub fn host(&self, name: &str) -> Option<&ResolvedHost> {
        self.hosts
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
    }

    /// The hosts `patterns` select (see [`select`]).
    pub fn select(&self, patterns: &[String]) -> Result<Vec<&ResolvedHost>, Failure> {
        select(&self.hosts, patterns)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::exit_code;

    fn local() -> LocalEnv {
        LocalEnv {
            home: Some("/home/op".into()),
            user: "op".into(),
            default_identity_files: vec!["/home/op/.ssh/id_ed25519".into()],
        }
    }

    fn parse_with(src: &str, overrides: &Overrides) -> Result<Inventory, Failure> {
        Inventory::parse(src, Path::new("/fleet/inv.toml"), overrides, &local())
    }

    fn parse(src: &str) -> Result<Inventory, Failure> {
        parse_with(src, &Overrides::default())
    }

    fn err(src: &str) -> Failure {
        parse(src).expect_err("the inventory should be refused")
    }

    const ONE: &str = "[[host]]\nname = \"a\"\naddress = \"10.0.0.1\"\n";

    #[test]
    fn example_inventory_parses_and_resolves_every_layer() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory.example.toml");
        let src = std::fs::read_to_string(&path).unwrap();
        let inv = Inventory::parse(&src, &path, &Overrides::default(), &local()).unwrap();
        let names: Vec<&str> = inv.hosts().iter().map(|h| h.name.as_str()).collect();
        assert_eq!(
            names,
            ["ledger-eu-1", "ledger-eu-2", "ledger-us-1", "ledger-us-2"]
        );
        assert_eq!(inv.groups(), ["canary", "eu", "us"]);

        let eu1 = inv.host("ledger-eu-1").unwrap();
        assert!(eu1.migrator);
        assert_eq!(eu1.ssh.user, "deploy");
        assert_eq!(
            eu1.ssh.jump_host.as_deref(),
            Some("ops@bastion-eu.example.com:22")
        );
        assert_eq!(
            eu1.ssh.identity_files,
            [PathBuf::from("/home/op/.ssh/id_ed25519")]
        );
        assert_eq!(
            eu1.ledger.ledgers,
            Some(vec!["payments".into(), "wallets".into()])
        );
        assert_eq!(
            eu1.ledger.env_file.as_deref(),
            Some("/etc/numary/numary.env")
        );

        let eu2 = inv.host("ledger-eu-2").unwrap();
        assert_eq!((eu2.ssh.user.as_str(), eu2.ssh.port), ("numary-ops", 2222));

        let us1 = inv.host("ledger-us-1").unwrap();
        let dir = path.parent().unwrap();
        assert_eq!(us1.ssh.identity_files, [dir.join("keys/us-deploy")]);
        assert_eq!(us1.ssh.connect_timeout, Duration::from_secs(20));
        assert_eq!(us1.ssh.command_timeout, Duration::from_secs(3600));
        assert_eq!(us1.ledger.api, "[::1]:3068");
        assert!(
            matches!(&us1.ledger.service, Service::Command { start, .. } if start == "/opt/numary/bin/start")
        );

        let us2 = inv.host("ledger-us-2").unwrap();
        assert_eq!(us2.replaces.as_deref(), Some("ledger-us-1"));
        assert_eq!(
            us2.ledger.service,
            Service::Systemd {
                unit: "numary@us.service".into()
            }
        );
        assert_eq!(us2.ssh.command_timeout, Duration::from_secs(30 * 60));
        assert_eq!(eu1.ledger.storage.as_deref(), Some("main-db"));
        assert_eq!(us2.ledger.storage.as_deref(), Some("main-db"));

        let pre = eu1.rollout.pre_hook.as_ref().unwrap();
        assert!(pre.local && pre.command.starts_with("lb-ctl drain"));
        assert_eq!(
            (pre.timeout, pre.dir.as_path()),
            (Duration::from_secs(60), dir)
        );
        assert!(eu1.rollout.post_hook.as_ref().unwrap().local);
        assert_eq!(eu1.rollout.min_healthy_time, Duration::ZERO);
        let us_pre = us2.rollout.pre_hook.as_ref().unwrap();
        assert_eq!(us_pre.command, "/opt/numary/bin/leave-pool");
        assert!(!us_pre.local);
        assert_eq!(us_pre.timeout, Duration::from_secs(120));
        assert_eq!(
            us2.rollout.post_hook.as_ref().unwrap().command,
            "/opt/numary/bin/join-pool"
        );
        assert_eq!(us2.rollout.min_healthy_time, Duration::from_secs(30));
        assert_eq!(us1.rollout.post_hook, None, "cancelled for one host");

        let v196 = &inv.releases()[&Version::new(1, 9, 6)];
        assert_eq!(
            v196.source,
            ReleaseSource::File(dir.join("dist/numary-1.9.6-linux-amd64"))
        );
        assert!(
            matches!(&inv.releases()[&Version::new(1, 8, 2)].source, ReleaseSource::Url(u) if u.starts_with("https://"))
        );
    }

    #[test]
    fn built_in_defaults_apply_to_a_bare_host() {
        let inv = parse(ONE).unwrap();
        let h = &inv.hosts()[0];
        assert_eq!(
            h.ssh,
            SshSettings {
                user: "op".into(),
                port: 22,
                identity_files: vec!["/home/op/.ssh/id_ed25519".into()],
                known_hosts: "/home/op/.ssh/known_hosts".into(),
                global_known_hosts: vec!["/etc/ssh/ssh_known_hosts".into()],
                connect_timeout: Duration::from_secs(10),
                command_timeout: Duration::from_secs(1800),
                migration_timeout: Duration::from_secs(6 * 3600),
                jump_host: None,
                use_agent: true,
                jump_chain: Vec::new(),
                openssh: OpenSshSettings {
                    origins: [
                        ("address", "the inventory"),
                        ("connect_timeout", "the default"),
                        ("global_known_hosts", "the default"),
                        ("identity_files", "the default"),
                        ("jump_host", "the default"),
                        ("known_hosts", "the default"),
                        ("port", "the default"),
                        ("user", "the default"),
                    ]
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect(),
                    ..Default::default()
                },
            }
        );
        assert_eq!(h.ledger, LedgerSettings::default());
        assert_eq!(h.ledger.api, "127.0.0.1:3068");
        assert!(!h.migrator);
        assert!(inv.releases().is_empty());
    }

    /// `port` is set at every level; each case removes the highest level left.
    #[test]
    fn precedence_defaults_ssh_groups_host_env_flags() {
        let src = |host_port: bool, groups: &str| {
            format!(
                "[ssh]\nport = 1001\n[groups.g1.ssh]\nport = 1002\n[groups.g2.ssh]\nport = 1003\n\
                 [groups.g3]\n[[host]]\nname = \"a\"\naddress = \"h\"\ngroups = {groups}\n{}",
                if host_port { "port = 1004\n" } else { "" }
            )
        };
        let port = |src: String, o: &Overrides| parse_with(&src, o).unwrap().hosts()[0].ssh.port;
        let none = Overrides::default();
        let env = Overrides {
            port: Some(1005),
            ..Overrides::default()
        };
        let flags = Overrides {
            port: Some(1006),
            ..Overrides::default()
        };
        assert_eq!(
            port(src(true, "[\"g1\"]"), &flags.clone().over(env.clone())),
            1006
        );
        assert_eq!(
            port(src(true, "[\"g1\"]"), &none.clone().over(env.clone())),
            1005
        );
        assert_eq!(port(src(true, "[\"g1\", \"g2\"]"), &none), 1004);
        assert_eq!(
            port(src(false, "[\"g1\", \"g2\"]"), &none),
            1003,
            "later group wins"
        );
        assert_eq!(
            port(src(false, "[\"g2\", \"g1\"]"), &none),
            1002,
            "later group wins"
        );
        assert_eq!(
            port(src(false, "[\"g3\"]"), &none),
            1001,
            "a group without the key"
        );
        assert_eq!(port(ONE.to_string(), &none), 22);
    }

    #[test]
    fn env_beats_host_and_flags_beat_env_for_every_override() {
        let src = "[[host]]\nname = \"a\"\naddress = \"h\"\nuser = \"host-user\"\n[host.ssh]\n\
                   identity_files = [\"k\"]\nknown_hosts = \"kh\"\nconnect_timeout = \"1s\"\n\
                   command_timeout = \"1m\"\njump_host = \"bastion\"\n";
        let env = Overrides {
            user: Some("env-user".into()),
            port: Some(2),
            identity_files: Some(vec!["/env/k".into()]),
            known_hosts: Some("/env/kh".into()),
            connect_timeout: Some(Duration::from_secs(2)),
            command_timeout: Some(Duration::from_secs(120)),
            migration_timeout: Some(Duration::from_secs(7200)),
            jump_host: Some(JumpHost::Direct),
            ssh_config: None,
        };
        let h = parse_with(src, &env).unwrap().hosts()[0].clone();
        assert_eq!(h.ssh.migration_timeout, Duration::from_secs(7200));
        assert_eq!(h.ssh.user, "env-user");
        assert_eq!(h.ssh.port, 2);
        assert_eq!(h.ssh.identity_files, [PathBuf::from("/env/k")]);
        assert_eq!(h.ssh.known_hosts, PathBuf::from("/env/kh"));
        assert_eq!(h.ssh.connect_timeout, Duration::from_secs(2));
        assert_eq!(h.ssh.command_timeout, Duration::from_secs(120));
        assert_eq!(h.ssh.jump_host, None);

        let flags = Overrides {
            user: Some("flag-user".into()),
            ..Overrides::default()
        };
        let h = parse_with(src, &flags.over(env)).unwrap().hosts()[0].clone();
        assert_eq!(h.ssh.user, "flag-user");
        assert_eq!(h.ssh.port, 2, "unset flags leave the environment's value");

        let h = parse(src).unwrap().hosts()[0].clone();
        assert_eq!(h.ssh.user, "host-user");
        assert_eq!(h.ssh.identity_files, [PathBuf::from("/fleet/k")]);
        assert_eq!(h.ssh.jump_host.as_deref(), Some("bastion"));
    }

    #[test]
    fn a_host_can_cancel_a_group_jump_host_and_replace_the_service() {
        let src = "[ledger]\nservice = { manager = \"command\", start = \"a\", stop = \"b\", status = \"c\" }\n\
                   [groups.eu.ssh]\njump_host = \"bastion\"\n[[host]]\nname = \"a\"\naddress = \"h\"\n\
                   groups = [\"eu\"]\n[host.ssh]\njump_host = \"none\"\n[host.ledger]\nservice = { unit = \"x.service\" }\n";
        let h = parse(src).unwrap().hosts()[0].clone();
        assert_eq!(h.ssh.jump_host, None);
        assert_eq!(
            h.ledger.service,
            Service::Systemd {
                unit: "x.service".into()
            }
        );
    }

    fn assert_refused(src: &str, at: &str, needle: &str) {
        let f = err(src);
        assert_eq!(f.code, exit_code::USAGE, "{}", f.message);
        assert!(
            f.message.contains(&format!("`/fleet/inv.toml`:{at}: ")),
            "{at}: {}",
            f.message
        );
        assert!(f.message.contains(needle), "{needle}: {}", f.message);
        assert!(
            !f.hints.is_empty() || f.message.contains("hint: "),
            "no hint: {}",
            f.message
        );
    }

    #[test]
    fn bad_values_point_at_line_and_column() {
        assert_refused(
            &format!("{ONE}[host.ledger]\nbinary = \"numary\"\n"),
            "5:10",
            "not an absolute path",
        );
        assert_refused(
            &format!("{ONE}[host.ledger]\nledgers = []\n"),
            "5:11",
            "`ledgers` is empty",
        );
        assert_refused(
            &format!("{ONE}[host.ledger]\nledgers = [\"a\", \"a\"]\n"),
            "5:11",
            "listed twice",
        );
        assert_refused(
            &format!("{ONE}[host.ledger]\nledgers = [\"ok\", \"a.b\"]\n"),
            "5:18",
            "not a valid ledger name",
        );
        assert_refused(
            &format!("{ONE}[host.ledger]\nledgers = [\"_system\"]\n"),
            "5:12",
            "ledger registry",
        );
        assert_refused(&format!("{ONE}port = 0\n"), "4:8", "port 0");
        assert_refused(&format!("{ONE}port = 70000\n"), "4:8", "out of range");
        assert_refused(
            &format!("{ONE}[host.ssh]\nconnect_timeout = \"10\"\n"),
            "5:19",
            "not a duration",
        );
        assert_refused(
            &format!("{ONE}[host.ledger]\napi = \"localhost\"\n"),
            "5:7",
            "has no port",
        );
        assert_refused(
            &format!("{ONE}[host.ledger]\nservice = {{ manager = \"upstart\" }}\n"),
            "5:23",
            "unknown variant",
        );
        assert_refused(
            &format!("{ONE}migrator = \"yes\"\n"),
            "4:12",
            "invalid type",
        );
        assert_refused(
            "[releases.\"v1.9\"]\nurl = \"https://x/y\"\n",
            "1:11",
            "not a version",
        );
    }

    #[test]
    fn service_tables_must_fit_their_manager() {
        let with = |service: &str| format!("{ONE}[host.ledger]\nservice = {service}\n");
        assert_refused(
            &with("{ start = \"x\" }"),
            "5:11",
            "only apply to `manager = \"command\"`",
        );
        assert_refused(
            &with("{ manager = \"command\", unit = \"a\" }"),
            "5:11",
            "`unit` only applies",
        );
        assert_refused(
            &with("{ manager = \"command\", start = \"a\" }"),
            "5:11",
            "missing `stop`, `status`",
        );
    }

    #[test]
    fn user_or_port_set_twice_on_a_host_is_refused() {
        assert_refused(
            &format!("{ONE}user = \"x\"\n[host.ssh]\nuser = \"y\"\n"),
            "4:8",
            "sets `user` twice",
        );
        assert_refused(
            &format!("{ONE}port = 1\n[host.ssh]\nport = 2\n"),
            "4:8",
            "sets `port` twice",
        );
    }

    #[test]
    fn releases_need_exactly_one_source() {
        assert_refused(
            &format!(
                "{ONE}[releases.\"1.9.6\"]\nsha256 = \"{}\"\n",
                "a".repeat(64)
            ),
            "4:1",
            "exactly one of `file` and `url`",
        );
        assert_refused(
            &format!("{ONE}[releases.\"1.9.6\"]\nfile = \"a\"\nurl = \"https://x/y\"\n"),
            "4:1",
            "exactly one",
        );
    }

    #[test]
    fn duplicate_endpoints_consider_port_and_jump_host() {
        let two =
            |extra: &str| format!("{ONE}[[host]]\nname = \"b\"\naddress = \"10.0.0.1\"\n{extra}");
        assert_refused(
            &two(""),
            "6:11",
            "hosts `a` (line 2) and `b` (line 5) both point at `10.0.0.1:22`",
        );
        assert!(parse(&two("port = 2222\n")).is_ok());
        assert!(parse(&two("[host.ssh]\njump_host = \"bastion\"\n")).is_ok());
    }

    #[test]
    fn cross_reference_errors_are_all_reported_at_once() {
        let src = "[groups.eu]\n\
                   [[host]]\nname = \"a\"\naddress = \"h1\"\nmigrator = true\ngroups = [\"eu\", \"ue\", \"eu\"]\n\
                   [[host]]\nname = \"b\"\naddress = \"h2\"\nmigrator = true\nreplaces = \"zz\"\n\
                   [[host]]\nname = \"a\"\naddress = \"h3\"\nreplaces = \"a\"\n";
        let f = err(src);
        for needle in [
            "has 6 errors",
            "`/fleet/inv.toml`:6:17: host `a` lists group `ue`, which is not defined",
            "hint: did you mean `eu`?",
            "`/fleet/inv.toml`:6:23: host `a` lists group `eu` twice",
            "`/fleet/inv.toml`:10:12: 2 migrators: hosts `a` (line 3) and `b` (line 8) both set",
            "`/fleet/inv.toml`:11:12: host `b` replaces `zz`, which is not in the inventory",
            "`/fleet/inv.toml`:13:8: duplicate host name `a`: `a` is already defined at line 3",
        ] {
            assert!(f.message.contains(needle), "{needle}\n{}", f.message);
        }
        // `a` replacing itself is hidden behind the duplicate name only if we stop early; we don't.
        let f = err(&format!("{ONE}replaces = \"a\"\n"));
        assert!(
            f.message.contains("host `a` replaces itself"),
            "{}",
            f.message
        );
    }

    #[test]
    fn storage_is_layered_like_the_other_ledger_keys() {
        let src = "[ledger]\nstorage = \"main\"\n\
                   [groups.eu.ledger]\nstorage = \"eu-db\"\n[groups.none]\n\
                   [[host]]\nname = \"a\"\naddress = \"h1\"\n\
                   [[host]]\nname = \"b\"\naddress = \"h2\"\ngroups = [\"eu\"]\n\
                   [[host]]\nname = \"c\"\naddress = \"h3\"\ngroups = [\"eu\", \"none\"]\n[host.ledger]\nstorage = \"own-c\"\n";
        let inv = parse(src).unwrap();
        let storage = |n: &str| inv.host(n).unwrap().ledger.storage.clone();
        assert_eq!(storage("a").as_deref(), Some("main"));
        assert_eq!(storage("b").as_deref(), Some("eu-db"));
        assert_eq!(storage("c").as_deref(), Some("own-c"));
        assert_eq!(parse(ONE).unwrap().hosts()[0].ledger.storage, None);
        assert_refused(
            "[ledger]\nstorage = \"db.internal\"\n",
            "2:11",
            "`db.internal` is not a valid storage name: `.` is not allowed",
        );
    }

    #[test]
    fn one_migrator_per_storage() {
        let host = |n: &str, storage: &str| {
            format!(
                "[[host]]\nname = \"{n}\"\naddress = \"{n}.internal\"\nmigrator = true\n[host.ledger]\nstorage = \"{storage}\"\n"
            )
        };
        // Two storages, one migrator each.
        assert!(parse(&format!("{}{}", host("a", "one"), host("b", "two"))).is_ok());
        assert_refused(
            &format!("{}{}", host("a", "one"), host("b", "one")),
            "10:12",
            "2 migrators on storage `one`: hosts `a` (line 2) and `b` (line 8) both set `migrator = true`",
        );
        // Hosts naming no storage may share one: at most one migrator among them.
        let f = err(&format!(
            "{ONE}migrator = true\n[[host]]\nname = \"b\"\naddress = \"h2\"\nmigrator = true\n"
        ));
        assert!(f.message.contains("2 migrators: hosts"), "{}", f.message);
        let all = format!("{}\n{}", f.message, f.hints.join("\n"));
        assert!(all.contains("`storage = \"NAME\"`"), "{all}");
    }

    #[test]
    fn two_hosts_replacing_one_are_named_together() {
        let src = format!(
            "{ONE}[[host]]\nname = \"b\"\naddress = \"h2\"\nreplaces = \"a\"\n\
             [[host]]\nname = \"c\"\naddress = \"h3\"\nreplaces = \"A\"\n"
        );
        assert_refused(
            &src,
            "11:12",
            "hosts `b` (line 5) and `c` (line 9) both replace `A`",
        );
    }

    /// Each hook is set at every level; a later group wins, the host beats its groups,
    /// `"none"` cancels what a lower level set, and a hook is replaced as a whole.
    #[test]
    fn rollout_keys_are_layered_defaults_top_groups_host() {
        let src = "[rollout]\npre_hook = { command = \"top-pre\" }\n\
                   post_hook = { command = \"top-post\", local = true }\nmin_healthy_time = \"10s\"\n\
                   [groups.g1.rollout]\npre_hook = { command = \"g1-pre\", timeout = \"5m\" }\n\
                   [groups.g2.rollout]\npre_hook = { command = \"g2-pre\" }\nmin_healthy_time = \"0s\"\n\
                   [groups.quiet.rollout]\npost_hook = \"none\"\n\
                   [[host]]\nname = \"a\"\naddress = \"h1\"\n\
                   [[host]]\nname = \"b\"\naddress = \"h2\"\ngroups = [\"g1\", \"g2\"]\n\
                   [[host]]\nname = \"c\"\naddress = \"h3\"\ngroups = [\"g2\", \"g1\", \"quiet\"]\n\
                   [[host]]\nname = \"d\"\naddress = \"h4\"\ngroups = [\"g1\"]\n\
                   [host.rollout]\npre_hook = \"none\"\npost_hook = { command = \"d-post\" }\n\
                   min_healthy_time = \"1m\"\n";
        let inv = parse(src).unwrap();
        let r = |n: &str| inv.host(n).unwrap().rollout.clone();
        let cmd = |h: &Option<Hook>| h.as_ref().map(|h| h.command.clone());

        let a = r("a");
        assert_eq!(cmd(&a.pre_hook).as_deref(), Some("top-pre"));
        let pre = a.pre_hook.unwrap();
        assert!(!pre.local, "remote by default");
        assert_eq!(pre.timeout, Duration::from_secs(60), "default timeout");
        assert_eq!(pre.dir, PathBuf::from("/fleet"), "the inventory's dir");
        let post = a.post_hook.unwrap();
        assert!(post.local);
        assert_eq!(a.min_healthy_time, Duration::from_secs(10));

        let b = r("b");
        assert_eq!(
            cmd(&b.pre_hook).as_deref(),
            Some("g2-pre"),
            "later group wins"
        );
        assert_eq!(
            b.pre_hook.unwrap().timeout,
            Duration::from_secs(60),
            "a hook replaces the lower one whole: g1's timeout does not stay"
        );
        assert_eq!(b.min_healthy_time, Duration::ZERO);
        assert_eq!(cmd(&b.post_hook).as_deref(), Some("top-post"));

        let c = r("c");
        assert_eq!(
            cmd(&c.pre_hook).as_deref(),
            Some("g1-pre"),
            "later group wins"
        );
        assert_eq!(c.pre_hook.unwrap().timeout, Duration::from_secs(300));
        assert_eq!(c.post_hook, None, "a group cancels the top level's hook");

        let d = r("d");
        assert_eq!(d.pre_hook, None, "the host cancels its group's hook");
        assert_eq!(cmd(&d.post_hook).as_deref(), Some("d-post"));
        assert!(!d.post_hook.unwrap().local, "not the top level's `local`");
        assert_eq!(d.min_healthy_time, Duration::from_secs(60));

        assert_eq!(
            parse(ONE).unwrap().hosts()[0].rollout,
            RolloutSettings::default()
        );
        assert_eq!(RolloutSettings::default().min_healthy_time, Duration::ZERO);
    }

    #[test]
    fn bad_rollout_keys_point_at_line_and_column() {
        let with = |table: &str| format!("{ONE}[host.rollout]\n{table}\n");
        assert_refused(
            &with("pre_hook = { comand = \"x\" }"),
            "5:14",
            "unknown key `comand`",
        );
        assert_refused(
            &with("pre_hook = { local = true }"),
            "5:12",
            "missing key `command`",
        );
        let f = err(&with("pre_hook = { local = true }"));
        assert!(
            f.hints[0].contains("a hook needs `command`"),
            "{:?}",
            f.hints
        );
        assert_refused(
            &with("post_hook = { command = \" \" }"),
            "5:25",
            "the command is empty",
        );
        assert_refused(
            &with("post_hook = { command = \"x\", timeout = \"0s\" }"),
            "5:40",
            "a duration of zero is not allowed",
        );
        assert_refused(
            &with("post_hook = { command = \"x\", timeout = \"60\" }"),
            "5:40",
            "`60` is not a duration",
        );
        assert_refused(
            &with("pre_hook = { command = \"x\", local = \"yes\" }"),
            "5:37",
            "invalid type",
        );
        assert_refused(
            &with("pre_hook = \"lb-drain\""),
            "5:12",
            "`lb-drain` is not a hook",
        );
        assert_refused(&with("pre_hook = 3"), "5:12", "invalid type");
        assert_refused(
            &with("min_healthy_time = \"30\""),
            "5:20",
            "`30` is not a duration",
        );
        assert_refused(&with("prehook = \"none\""), "5:1", "unknown key `prehook`");
        let top = format!("[rollout]\npost_hooks = \"none\"\n{ONE}");
        assert_refused(&top, "2:1", "unknown key `post_hooks`");
        assert!(
            err(&top)
                .hints
                .contains(&"did you mean `post_hook`?".to_string())
        );
    }

    #[test]
    fn an_inventory_without_hosts_is_no_hosts() {
        let f = err("[ssh]\nuser = \"x\"\n");
        assert_eq!(f.code, exit_code::NO_HOSTS);
        assert!(f.message.contains("defines no host"), "{}", f.message);
    }

    #[test]
    fn known_hosts_default_needs_home() {
        let no_home = LocalEnv {
            home: None,
            ..local()
        };
        let f = Inventory::parse(ONE, Path::new("inv.toml"), &Overrides::default(), &no_home)
            .unwrap_err();
        assert!(f.message.contains("`HOME` is not set"), "{}", f.message);
        let ok = format!("[ssh]\nknown_hosts = \"/etc/kh\"\n{ONE}");
        let inv =
            Inventory::parse(&ok, Path::new("inv.toml"), &Overrides::default(), &no_home).unwrap();
        assert_eq!(inv.hosts()[0].ssh.known_hosts, PathBuf::from("/etc/kh"));
    }

    #[test]
    fn global_known_hosts_default_to_openssh_and_follow_precedence() {
        let src = "[ssh]\nglobal_known_hosts = [\"/etc/fleet_known_hosts\", \"kh.d/global\"]\n\
                   [groups.eu.ssh]\nglobal_known_hosts = []\n\
                   [[host]]\nname = \"a\"\naddress = \"10.0.0.1\"\n\
                   [[host]]\nname = \"b\"\naddress = \"10.0.0.2\"\ngroups = [\"eu\"]\n\
                   [[host]]\nname = \"c\"\naddress = \"10.0.0.3\"\ngroups = [\"eu\"]\n\
                   [host.ssh]\nglobal_known_hosts = [\"~/ca_known_hosts\"]\n";
        let inv = parse(src).unwrap();
        let globals: Vec<&[PathBuf]> = inv
            .hosts()
            .iter()
            .map(|h| h.ssh.global_known_hosts.as_slice())
            .collect();
        assert_eq!(
            globals,
            [
                &[
                    PathBuf::from("/etc/fleet_known_hosts"),
                    PathBuf::from("/fleet/kh.d/global")
                ][..],
                &[][..],
                &[PathBuf::from("/home/op/ca_known_hosts")][..],
            ]
        );
        assert_eq!(
            parse(ONE).unwrap().hosts()[0].ssh.global_known_hosts,
            [PathBuf::from("/etc/ssh/ssh_known_hosts")]
        );
    }

    #[test]
    fn resolved_hosts_serialize_with_readable_durations_and_service() {
        let inv = parse(ONE).unwrap();
        let json = serde_json::to_value(inv.hosts()).unwrap();
        assert_eq!(json[0]["ssh"]["connect_timeout"], "10s");
        assert_eq!(json[0]["ssh"]["command_timeout"], "30m");
        assert_eq!(json[0]["ledger"]["service"]["manager"], "systemd");
        assert_eq!(json[0]["ledger"]["service"]["unit"], "numary.service");
    }

    #[test]
    fn load_reports_a_missing_file_as_usage() {
        let err =
            Inventory::load(Path::new("/nonexistent/inv.toml"), &Overrides::default()).unwrap_err();
        let f = crate::error::find_failure(&err).unwrap();
        assert_eq!(f.code, exit_code::USAGE);
        assert!(
            f.message
                .contains("cannot read inventory `/nonexistent/inv.toml`"),
            "{}",
            f.message
        );
    }
}
