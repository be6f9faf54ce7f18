//! The second pass over a parsed inventory: checks that need more than one value (service
//! tables, cross-references between hosts and groups), then the layering of defaults, groups,
//! host, environment and flags into one [`ResolvedHost`] per host. Every problem is collected so
//! the operator sees them all at once.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use crate::version::Version;

use super::diagnostics::{Diagnostic, closest, line_of};
use super::overrides::Overrides;
use super::raw::{
    Manager, RawHookSetting, RawHost, RawInventory, RawLedger, RawRollout, RawService, RawSsh,
};
use super::values::{Invalid, JumpHost, LocalPath, split_host_port};
use super::{
    Hook, JumpHop, LedgerSettings, LocalEnv, OpenSshSettings, Release, ReleaseSource, ResolvedHost,
    RolloutSettings, Service, SshConfigChoice, SshSettings,
};
use crate::ssh::config::{HostConfig, SshConfigFile, StrictHostKeyChecking, Tokens, expand_tokens};

/// What the file means once every layer is applied.
pub struct Resolved {
    pub hosts: Vec<ResolvedHost>,
    pub groups: Vec<String>,
    pub releases: BTreeMap<Version, Release>,
}

/// Where local paths of the file are resolved and where diagnostics go.
struct Pass<'a> {
    source: &'a str,
    home: Option<&'a Path>,
    base: &'a Path,
    diags: Vec<Diagnostic>,
}

impl Pass<'_> {
    fn local_path(&mut self, path: &Spanned<LocalPath>) -> Option<PathBuf> {
        match path.get_ref().resolve(self.home, self.base) {
            Ok(p) => Some(p),
            Err(e) => {
                self.invalid(path.span(), e);
                None
            }
        }
    }

    fn invalid(&mut self, span: std::ops::Range<usize>, e: Invalid) {
        self.diags.push(Diagnostic {
            span: Some(span),
            message: e.message,
            hints: e.hints,
        });
    }

    fn line(&self, span: &std::ops::Range<usize>) -> usize {
        line_of(self.source, span.start)
    }
}

/// The default `migration_timeout`: a large ledger's `storage upgrade` runs for hours.
pub const DEFAULT_MIGRATION_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// OpenSSH's default `GlobalKnownHostsFile`.
pub const DEFAULT_GLOBAL_KNOWN_HOSTS: &str = "/etc/ssh/ssh_known_hosts";

/// SSH settings of one layer; `None` leaves the lower layer's value.
#[derive(Debug, Clone, Default)]
struct SshLayer {
    user: Option<String>,
    port: Option<u16>,
    identity_files: Option<Vec<PathBuf>>,
    known_hosts: Option<PathBuf>,
    global_known_hosts: Option<Vec<PathBuf>>,
    connect_timeout: Option<Duration>,
    command_timeout: Option<Duration>,
    migration_timeout: Option<Duration>,
    jump_host: Option<JumpHost>,
    use_agent: Option<bool>,
}

impl SshLayer {
    fn from_raw(raw: &RawSsh, pass: &mut Pass<'_>) -> SshLayer {
        SshLayer {
            user: raw.user.as_ref().map(|u| u.get_ref().to_string()),
            port: raw.port.as_ref().map(|p| p.get_ref().0),
            identity_files: raw
                .identity_files
                .as_ref()
                .map(|files| files.iter().filter_map(|f| pass.local_path(f)).collect()),
            known_hosts: raw.known_hosts.as_ref().and_then(|p| pass.local_path(p)),
            global_known_hosts: raw
                .global_known_hosts
                .as_ref()
                .map(|files| files.iter().filter_map(|f| pass.local_path(f)).collect()),
            connect_timeout: raw.connect_timeout.map(|d| d.0),
            command_timeout: raw.command_timeout.map(|d| d.0),
            migration_timeout: raw.migration_timeout.map(|d| d.0),
            jump_host: raw.jump_host.clone(),
            use_agent: raw.use_agent,
        }
    }

    fn from_overrides(o: &Overrides) -> SshLayer {
        SshLayer {
            user: o.user.clone(),
            port: o.port,
            identity_files: o.identity_files.clone(),
            known_hosts: o.known_hosts.clone(),
            global_known_hosts: None,
            connect_timeout: o.connect_timeout,
            command_timeout: o.command_timeout,
            migration_timeout: o.migration_timeout,
            jump_host: o.jump_host.clone(),
            use_agent: None,
        }
    }

    /// What ssh_config says for the host, under every inventory layer. A `ProxyJump` that is
    /// not a valid chain is reported and left out.
    fn from_config(q: &HostConfig, file: &Path, alias: &str, pass: &mut Pass<'_>) -> SshLayer {
        let jump_host = q.proxy_jump.as_ref().and_then(|hops| {
            if hops.is_empty() {
                return Some(JumpHost::Direct);
            }
            let chain = hops.join(",");
            match JumpHost::parse(&chain) {
                Ok(j) => Some(j),
                Err(e) => {
                    pass.diags.push(Diagnostic {
                        span: None,
                        message: format!(
                            "ssh_config `{}`: `ProxyJump {chain}` (for `{alias}`): {}",
                            file.display(),
                            e.message
                        ),
                        hints: vec![
                            "fix the ssh_config, or set `jump_host` for this host in the inventory"
                                .into(),
                        ],
                    });
                    None
                }
            }
        });
        SshLayer {
            user: q.user.clone(),
            port: q.port,
            identity_files: (!q.identity_files.is_empty()).then(|| q.identity_files.clone()),
            known_hosts: q.user_known_hosts.first().cloned(),
            connect_timeout: q.connect_timeout,
            command_timeout: None,
            migration_timeout: None,
            jump_host,
            use_agent: None,
            global_known_hosts: (!q.global_known_hosts.is_empty())
                .then(|| q.global_known_hosts.clone()),
        }
    }

    /// The built-in defaults; `known_hosts` stays unset without a home directory.
    fn builtin(local: &LocalEnv) -> SshLayer {
        SshLayer {
            user: Some(local.user.clone()),
            port: Some(22),
            identity_files: Some(local.default_identity_files.clone()),
            known_hosts: local.home.as_ref().map(|h| h.join(".ssh/known_hosts")),
            global_known_hosts: Some(vec![PathBuf::from(DEFAULT_GLOBAL_KNOWN_HOSTS)]),
            connect_timeout: Some(Duration::from_secs(10)),
            command_timeout: Some(Duration::from_secs(30 * 60)),
            migration_timeout: Some(DEFAULT_MIGRATION_TIMEOUT),
            jump_host: Some(JumpHost::Direct),
            use_agent: Some(true),
        }
    }

    fn over(&self, lower: SshLayer) -> SshLayer {
        SshLayer {
            user: self.user.clone().or(lower.user),
            port: self.port.or(lower.port),
            identity_files: self.identity_files.clone().or(lower.identity_files),
            known_hosts: self.known_hosts.clone().or(lower.known_hosts),
            global_known_hosts: self.global_known_hosts.clone().or(lower.global_known_hosts),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            command_timeout: self.command_timeout.or(lower.command_timeout),
            migration_timeout: self.migration_timeout.or(lower.migration_timeout),
            jump_host: self.jump_host.clone().or(lower.jump_host),
            use_agent: self.use_agent.or(lower.use_agent),
        }
    }

    /// Settings from a stack that starts with [`SshLayer::builtin`], which sets every key but
    /// `known_hosts` when there is no home directory: `None` means that one is missing.
    fn finish(self) -> Option<SshSettings> {
        Some(SshSettings {
            user: self.user?,
            port: self.port?,
            identity_files: self.identity_files?,
            known_hosts: self.known_hosts?,
            global_known_hosts: self.global_known_hosts?,
            connect_timeout: self.connect_timeout?,
            command_timeout: self.command_timeout?,
            migration_timeout: self.migration_timeout?,
            jump_host: self.jump_host?.into_option(),
            use_agent: self.use_agent?,
            jump_chain: Vec::new(),
            openssh: OpenSshSettings::default(),
        })
    }
}

/// Ledger settings of one layer; `service` replaces the lower layer's table as a whole.
#[derive(Debug, Clone, Default)]
struct LedgerLayer {
    binary: Option<String>,
    releases_dir: Option<String>,
    service: Option<Service>,
    env_file: Option<String>,
    api: Option<String>,
    ledgers: Option<Vec<String>>,
    backup_dir: Option<String>,
    storage: Option<String>,
    escalate: Option<super::Become>,
}

impl LedgerLayer {
    fn from_raw(raw: &RawLedger, pass: &mut Pass<'_>) -> LedgerLayer {
        LedgerLayer {
            binary: raw.binary.as_ref().map(|p| p.to_string()),
            releases_dir: raw.releases_dir.as_ref().map(|p| p.to_string()),
            service: raw.service.as_ref().and_then(|s| match check_service(s) {
                Ok(service) => Some(service),
                Err(d) => {
                    pass.diags.push(d);
                    None
                }
            }),
            env_file: raw.env_file.as_ref().map(|p| p.to_string()),
            api: raw.api.as_ref().map(|a| a.to_string()),
            ledgers: raw
                .ledgers
                .as_ref()
                .map(|l| l.0.iter().map(|n| n.to_string()).collect()),
            backup_dir: raw.backup_dir.as_ref().map(|p| p.to_string()),
            storage: raw.storage.as_ref().map(|n| n.to_string()),
            escalate: raw.escalate,
        }
    }

    fn over(&self, lower: LedgerLayer) -> LedgerLayer {
        LedgerLayer {
            binary: self.binary.clone().or(lower.binary),
            releases_dir: self.releases_dir.clone().or(lower.releases_dir),
            service: self.service.clone().or(lower.service),
            env_file: self.env_file.clone().or(lower.env_file),
            api: self.api.clone().or(lower.api),
            ledgers: self.ledgers.clone().or(lower.ledgers),
            backup_dir: self.backup_dir.clone().or(lower.backup_dir),
            storage: self.storage.clone().or(lower.storage),
            escalate: self.escalate.or(lower.escalate),
        }
    }

    fn finish(self) -> LedgerSettings {
        let builtin = LedgerSettings::default();
        LedgerSettings {
            binary: self.binary.unwrap_or(builtin.binary),
            releases_dir: self.releases_dir.unwrap_or(builtin.releases_dir),
            service: self.service.unwrap_or(builtin.service),
            env_file: self.env_file.or(builtin.env_file),
            api: self.api.unwrap_or(builtin.api),
            ledgers: self.ledgers.or(builtin.ledgers),
            backup_dir: self.backup_dir.unwrap_or(builtin.backup_dir),
            storage: self.storage.or(builtin.storage),
            escalate: self.escalate.unwrap_or(builtin.escalate),
        }
    }
}

/// Rollout settings of one layer; a hook replaces the lower layer's as a whole, `Some(None)`
/// cancels it (`"none"`).
#[derive(Debug, Clone, Default)]
struct RolloutLayer {
    pre_hook: Option<Option<Hook>>,
    post_hook: Option<Option<Hook>>,
    min_healthy_time: Option<Duration>,
}

impl RolloutLayer {
    fn from_raw(raw: &RawRollout, pass: &Pass<'_>) -> RolloutLayer {
        let hook = |h: &Option<RawHookSetting>| {
            h.as_ref().map(|h| match h {
                RawHookSetting::None => None,
                RawHookSetting::Run(h) => Some(Hook {
                    command: h.command.to_string(),
                    local: h.local.unwrap_or(false),
                    timeout: h.timeout.map_or(Hook::DEFAULT_TIMEOUT, |d| d.0),
                    dir: pass.base.to_path_buf(),
                }),
            })
        };
        RolloutLayer {
            pre_hook: hook(&raw.pre_hook),
            post_hook: hook(&raw.post_hook),
            min_healthy_time: raw.min_healthy_time.map(|d| d.0),
        }
    }

    fn over(&self, lower: RolloutLayer) -> RolloutLayer {
        RolloutLayer {
            pre_hook: self.pre_hook.clone().or(lower.pre_hook),
            post_hook: self.post_hook.clone().or(lower.post_hook),
            min_healthy_time: self.min_healthy_time.or(lower.min_healthy_time),
        }
    }

    fn finish(self) -> RolloutSettings {
        let builtin = RolloutSettings::default();
        RolloutSettings {
            pre_hook: self.pre_hook.unwrap_or(builtin.pre_hook),
            post_hook: self.post_hook.unwrap_or(builtin.post_hook),
            min_healthy_time: self.min_healthy_time.unwrap_or(builtin.min_healthy_time),
        }
    }
}

/// A service table must be complete for its manager (systemd when `manager` is left out).
fn check_service(raw: &Spanned<RawService>) -> Result<Service, Diagnostic> {
    let s = raw.get_ref();
    let at = |msg: String| Diagnostic::at(raw.span(), msg);
    match s.manager.unwrap_or(Manager::Systemd) {
        Manager::Systemd => {
            let extra: Vec<&str> = [
                ("start", &s.start),
                ("stop", &s.stop),
                ("status", &s.status),
            ]
            .iter()
            .filter(|(_, v)| v.is_some())
            .map(|(k, _)| *k)
            .collect();
            if !extra.is_empty() {
                return Err(at(format!(
                    "{} only apply to `manager = \"command\"`, and this service is managed by systemd",
                    backticks(&extra)
                ))
                .hint("add `manager = \"command\"` to run your own commands, or remove them to use a systemd unit"));
            }
            let unit = s
                .unit
                .as_ref()
                .map(|u| u.to_string())
                .unwrap_or_else(|| "numary.service".into());
            Ok(Service::Systemd { unit })
        }
        Manager::Command => {
            if s.unit.is_some() {
                return Err(
                    at("`unit` only applies to `manager = \"systemd\"`".to_string())
                        .hint("remove `unit`, or use `manager = \"systemd\"`"),
                );
            }
            match (&s.start, &s.stop, &s.status) {
                (Some(start), Some(stop), Some(status)) => Ok(Service::Command {
                    start: start.to_string(),
                    stop: stop.to_string(),
                    status: status.to_string(),
                }),
                _ => {
                    let missing: Vec<&str> = [
                        ("start", &s.start),
                        ("stop", &s.stop),
                        ("status", &s.status),
                    ]
                    .iter()
                    .filter(|(_, v)| v.is_none())
                    .map(|(k, _)| *k)
                    .collect();
                    Err(at(format!("`manager = \"command\"` needs `start`, `stop` and `status`; missing {}", backticks(&missing)))
                        .hint("`status` must exit 0 while the ledger runs and non-zero once it is stopped"))
                }
            }
        }
    }
}

fn backticks(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// "`a` (line 3) and `b` (line 9) both" / "`a` (line 3), `b` (line 5) and `c` (line 9) all":
/// the hosts involved in one cross-reference error, with the lines of their names.
fn hosts_with_lines(pass: &Pass<'_>, hosts: &[&RawHost]) -> String {
    let parts: Vec<String> = hosts
        .iter()
        .map(|h| {
            format!(
                "`{}` (line {})",
                h.name.get_ref(),
                pass.line(&h.name.span())
            )
        })
        .collect();
    let listed = match parts.split_last() {
        Some((last, rest)) if !rest.is_empty() => format!("{} and {last}", rest.join(", ")),
        _ => parts.join(""),
    };
    let quantifier = if hosts.len() == 2 { "both" } else { "all" };
    format!("{listed} {quantifier}")
}

/// One host's own layers, before groups and overrides are stacked under and over them.
struct HostLayers<'a> {
    raw: &'a RawHost,
    ssh: SshLayer,
    ledger: LedgerLayer,
    rollout: RolloutLayer,
}

pub fn resolve(
    raw: &RawInventory,
    source: &str,
    base: &Path,
    local: &LocalEnv,
    overrides: &Overrides,
) -> Result<Resolved, Vec<Diagnostic>> {
    let mut pass = Pass {
        source,
        home: local.home.as_deref(),
        base,
        diags: Vec::new(),
    };

    let default_ssh = SshLayer::from_raw(&raw.ssh, &mut pass);
    let default_ledger = LedgerLayer::from_raw(&raw.ledger, &mut pass);
    let default_rollout = RolloutLayer::from_raw(&raw.rollout, &pass);
    let groups: BTreeMap<String, (SshLayer, LedgerLayer, RolloutLayer)> = raw
        .groups
        .iter()
        .map(|(name, g)| {
            let layers = (
                SshLayer::from_raw(&g.ssh, &mut pass),
                LedgerLayer::from_raw(&g.ledger, &mut pass),
                RolloutLayer::from_raw(&g.rollout, &pass),
            );
            (name.get_ref().to_string(), layers)
        })
        .collect();
    let hosts: Vec<HostLayers<'_>> = raw
        .hosts
        .iter()
        .map(|h| host_layers(h.get_ref(), &mut pass))
        .collect();

    check_cross_references(raw, &mut pass);

    let ssh_config = ssh_config_file(raw, overrides, local, &mut pass);
    let top = SshLayer::from_overrides(overrides);
    let mut resolved = Vec::with_capacity(hosts.len());
    let mut missing_known_hosts = false;
    for host in &hosts {
        let name = host.raw.name.get_ref().to_string();
        let alias = host.raw.address.get_ref().to_string();
        // Highest first: flags and environment, the host, its groups (the last listed wins),
        // `[ssh]`, then ssh_config, which fills only what the inventory leaves unset.
        let mut layers: Vec<(String, SshLayer)> = vec![
            ("a flag or `FLEETUP_*` variable".into(), top.clone()),
            (format!("[[host]] `{name}`"), host.ssh.clone()),
        ];
        for group in host.raw.groups.iter().rev() {
            if let Some((g_ssh, _, _)) = groups.get(group.get_ref().as_str()) {
                layers.push((format!("[groups.{}]", group.get_ref()), g_ssh.clone()));
            }
        }
        layers.push(("[ssh]".into(), default_ssh.clone()));
        let config = ssh_config.as_ref().map(|f| (f, f.query(&alias)));
        if let Some((file, q)) = &config {
            let layer = SshLayer::from_config(q, file.path(), &alias, &mut pass);
            layers.push((config_label(file, q), layer));
        }
        layers.push(("the default".into(), SshLayer::builtin(local)));
        let (ssh, origins) = fold(&layers);

        let mut ledger = default_ledger.clone();
        let mut rollout = default_rollout.clone();
        for group in &host.raw.groups {
            if let Some((_, g_ledger, g_rollout)) = groups.get(group.get_ref().as_str()) {
                ledger = g_ledger.over(ledger);
                rollout = g_rollout.over(rollout);
            }
        }
        let ledger = host.ledger.over(ledger);
        let rollout = host.rollout.over(rollout);
        let Some(mut ssh) = ssh.finish() else {
            missing_known_hosts = true;
            continue;
        };
        let address = apply_config(&mut ssh, origins, &alias, config.as_ref(), local);
        ssh.jump_chain = match &ssh.jump_host {
            None => Vec::new(),
            Some(chain) => chain
                .split(',')
                .map(|hop| resolve_hop(hop.trim(), &ssh, ssh_config.as_ref(), local))
                .collect(),
        };
        resolved.push(ResolvedHost {
            name,
            address,
            groups: host
                .raw
                .groups
                .iter()
                .map(|g| g.get_ref().to_string())
                .collect(),
            migrator: host.raw.is_migrator(),
            replaces: host.raw.replaces.as_ref().map(|r| r.get_ref().to_string()),
            ssh,
            ledger: ledger.finish(),
            rollout: rollout.finish(),
        });
    }
    if missing_known_hosts {
        pass.diags.push(Diagnostic {
            span: None,
            message:
                "cannot find the default known_hosts file `~/.ssh/known_hosts`: `HOME` is not set"
                    .into(),
            hints: vec!["set `known_hosts` in `[ssh]`, or `FLEETUP_KNOWN_HOSTS`".into()],
        });
    } else {
        check_duplicate_endpoints(raw, &resolved, &mut pass);
    }

    let releases = releases(raw, &mut pass);
    if pass.diags.is_empty() {
        Ok(Resolved {
            hosts: resolved,
            groups: groups.into_keys().collect(),
            releases,
        })
    } else {
        Err(pass.diags)
    }
}

/// The ssh_config to read: `--ssh-config` over the inventory's `[ssh] ssh_config` over
/// `~/.ssh/config` when it exists; `none` reads none. `ssh_config` below `[ssh]` is refused.
fn ssh_config_file(
    raw: &RawInventory,
    overrides: &Overrides,
    local: &LocalEnv,
    pass: &mut Pass<'_>,
) -> Option<SshConfigFile> {
    let misplaced = raw
        .groups
        .values()
        .filter_map(|g| g.ssh.ssh_config.as_ref())
        .chain(
            raw.hosts
                .iter()
                .filter_map(|h| h.get_ref().ssh.ssh_config.as_ref()),
        );
    for at in misplaced.map(|p| p.span()).collect::<Vec<_>>() {
        pass.diags.push(
            Diagnostic::at(
                at,
                "`ssh_config` applies to the whole inventory".to_string(),
            )
            .hint("set it once in the top-level `[ssh]` table (or pass `--ssh-config`)"),
        );
    }
    let (path, span) = match &overrides.ssh_config {
        Some(SshConfigChoice::Off) => return None,
        Some(SshConfigChoice::File(p)) => (p.clone(), None),
        None => match &raw.ssh.ssh_config {
            Some(p) if p.get_ref().as_str() == "none" => return None,
            Some(p) => (pass.local_path(p)?, Some(p.span())),
            None => {
                let default = local.home.as_ref()?.join(".ssh/config");
                if !default.is_file() {
                    return None;
                }
                (default, None)
            }
        },
    };
    match SshConfigFile::load(&path, local.home.as_deref()) {
        Ok(f) => Some(f),
        Err(e) => {
            pass.diags.push(Diagnostic {
                span,
                message: e.to_string(),
                hints: vec![
                    "fix the file, or read none with `ssh_config = \"none\"` in `[ssh]` or `--ssh-config none`".into(),
                ],
            });
            None
        }
    }
}

fn config_label(file: &SshConfigFile, q: &HostConfig) -> String {
    match q.matched.first() {
        Some(pattern) => format!("ssh_config `{}` (Host {pattern})", file.path().display()),
        None => format!("ssh_config `{}`", file.path().display()),
    }
}

/// Stacks `layers` (highest first) into one, and records which layer gave each key.
fn fold(layers: &[(String, SshLayer)]) -> (SshLayer, BTreeMap<String, String>) {
    let mut origins = BTreeMap::new();
    let mut pick = |key: &str, has: &dyn Fn(&SshLayer) -> bool| {
        if let Some((label, _)) = layers.iter().find(|(_, l)| has(l)) {
            origins.insert(key.to_owned(), label.clone());
        }
    };
    pick("user", &|l| l.user.is_some());
    pick("port", &|l| l.port.is_some());
    pick("identity_files", &|l| l.identity_files.is_some());
    pick("known_hosts", &|l| l.known_hosts.is_some());
    pick("connect_timeout", &|l| l.connect_timeout.is_some());
    pick("jump_host", &|l| l.jump_host.is_some());
    pick("global_known_hosts", &|l| l.global_known_hosts.is_some());
    let folded = layers
        .iter()
        .rev()
        .fold(SshLayer::default(), |lower, (_, l)| l.over(lower));
    (folded, origins)
}

/// Applies what ssh_config says beyond the inventory's keys: `HostName` (the address to
/// connect to, returned), `%` tokens in paths it gave, and [`OpenSshSettings`].
fn apply_config(
    ssh: &mut SshSettings,
    mut origins: BTreeMap<String, String>,
    alias: &str,
    config: Option<&(&SshConfigFile, HostConfig)>,
    local: &LocalEnv,
) -> String {
    let Some((file, q)) = config else {
        origins.insert("address".into(), "the inventory".into());
        ssh.openssh.origins = origins;
        return alias.to_owned();
    };
    let from_config = |key: &str, origins: &BTreeMap<String, String>| {
        origins
            .get(key)
            .is_some_and(|o| o.starts_with("ssh_config"))
    };
    let address = match &q.host_name {
        Some(h) => {
            origins.insert("address".into(), config_label(file, q));
            h.replace("%h", alias).replace("%%", "%")
        }
        None => {
            origins.insert("address".into(), "the inventory".into());
            alias.to_owned()
        }
    };
    let tokens = Tokens {
        host_name: &address,
        alias,
        port: ssh.port,
        remote_user: &ssh.user,
        local_user: &local.user,
        home: local.home.as_deref(),
    };
    if from_config("identity_files", &origins) {
        ssh.identity_files = ssh
            .identity_files
            .iter()
            .map(|p| expand_tokens(p, &tokens))
            .collect();
    }
    if from_config("known_hosts", &origins) {
        ssh.known_hosts = expand_tokens(&ssh.known_hosts, &tokens);
    }
    if from_config("global_known_hosts", &origins) {
        ssh.global_known_hosts = ssh
            .global_known_hosts
            .iter()
            .map(|p| expand_tokens(p, &tokens))
            .collect();
    }
    ssh.openssh = OpenSshSettings {
        certificate_file: q
            .certificate_file
            .as_ref()
            .map(|p| expand_tokens(p, &tokens)),
        identities_only: q.identities_only.unwrap_or(false),
        server_alive_interval: q.server_alive_interval,
        strict_host_key_checking: StrictHostKeyChecking::from_config(
            q.strict_host_key_checking.as_deref(),
        ) == StrictHostKeyChecking::Always,
        alias: (address != alias).then(|| alias.to_owned()),
        ssh_config: Some(file.path().to_path_buf()),
        origins,
    };
    address
}

/// One hop of a jump chain: what the hop says (`user@`, `:port`) over the hop's own ssh_config
/// block over the target host's user, keys and known_hosts.
fn resolve_hop(
    spec: &str,
    target: &SshSettings,
    config: Option<&SshConfigFile>,
    local: &LocalEnv,
) -> JumpHop {
    let (user, rest) = match spec.rsplit_once('@') {
        Some((u, r)) => (Some(u.to_owned()), r),
        None => (None, spec),
    };
    // Validated by `JumpHost::parse`; a hop that does not split keeps its text as the name.
    let (name, port) = split_host_port(rest).unwrap_or((rest, None));
    let port: Option<u16> = port.and_then(|p| p.parse().ok());
    let q = config.map(|f| f.query(name)).unwrap_or_default();
    let address = q
        .host_name
        .as_ref()
        .map_or_else(|| name.to_owned(), |h| h.replace("%h", name));
    let user = user
        .or(q.user.clone())
        .unwrap_or_else(|| target.user.clone());
    let port = port.or(q.port).unwrap_or(22);
    let tokens = Tokens {
        host_name: &address,
        alias: name,
        port,
        remote_user: &user,
        local_user: &local.user,
        home: local.home.as_deref(),
    };
    let identity_files = if q.identity_files.is_empty() {
        target.identity_files.clone()
    } else {
        q.identity_files
            .iter()
            .map(|p| expand_tokens(p, &tokens))
            .collect()
    };
    let known_hosts = q
        .user_known_hosts
        .first()
        .map_or_else(|| target.known_hosts.clone(), |p| expand_tokens(p, &tokens));
    let global_known_hosts = if q.global_known_hosts.is_empty() {
        target.global_known_hosts.clone()
    } else {
        q.global_known_hosts
            .iter()
            .map(|p| expand_tokens(p, &tokens))
            .collect()
    };
    JumpHop {
        spec: spec.to_owned(),
        certificate_file: q
            .certificate_file
            .as_ref()
            .map(|p| expand_tokens(p, &tokens)),
        identities_only: q.identities_only.unwrap_or(false),
        strict_host_key_checking: StrictHostKeyChecking::from_config(
            q.strict_host_key_checking.as_deref(),
        ) == StrictHostKeyChecking::Always,
        address,
        port,
        user,
        identity_files,
        known_hosts,
        global_known_hosts,
    }
}

/// The host's `[host.ssh]` with the host-level `user`/`port` shortcuts folded in.
fn host_layers<'a>(raw: &'a RawHost, pass: &mut Pass<'_>) -> HostLayers<'a> {
    let mut ssh = SshLayer::from_raw(&raw.ssh, pass);
    let name = raw.name.get_ref();
    if let Some(user) = &raw.user {
        if raw.ssh.user.is_some() {
            pass.diags.push(
                Diagnostic::at(
                    user.span(),
                    format!("host `{name}` sets `user` twice: here and in `[host.ssh]`"),
                )
                .hint("keep one of them"),
            );
        }
        ssh.user = Some(user.get_ref().to_string());
    }
    if let Some(port) = &raw.port {
        if raw.ssh.port.is_some() {
            pass.diags.push(
                Diagnostic::at(
                    port.span(),
                    format!("host `{name}` sets `port` twice: here and in `[host.ssh]`"),
                )
                .hint("keep one of them"),
            );
        }
        ssh.port = Some(port.get_ref().0);
    }
    HostLayers {
        raw,
        ssh,
        ledger: LedgerLayer::from_raw(&raw.ledger, pass),
        rollout: RolloutLayer::from_raw(&raw.rollout, pass),
    }
}

fn check_cross_references(raw: &RawInventory, pass: &mut Pass<'_>) {
    let hosts: Vec<&RawHost> = raw.hosts.iter().map(|h| h.get_ref()).collect();
    let mut first_by_name: HashMap<String, &RawHost> = HashMap::new();
    for host in &hosts {
        let key = host.name.get_ref().as_str().to_ascii_lowercase();
        if let Some(first) = first_by_name.get(&key) {
            let line = pass.line(&first.name.span());
            pass.diags.push(
                Diagnostic::at(
                    host.name.span(),
                    format!(
                        "duplicate host name `{}`: `{}` is already defined at line {line}",
                        host.name.get_ref(),
                        first.name.get_ref()
                    ),
                )
                .hint(
                    "host names must be unique (ignoring case); rename or remove one of the hosts",
                ),
            );
        } else {
            first_by_name.insert(key, host);
        }
    }

    let defined: Vec<&str> = raw.groups.keys().map(|g| g.get_ref().as_str()).collect();
    for host in &hosts {
        for (i, group) in host.groups.iter().enumerate() {
            let g = group.get_ref().as_str();
            if host.groups[..i]
                .iter()
                .any(|earlier| earlier.get_ref().as_str() == g)
            {
                pass.diags.push(
                    Diagnostic::at(
                        group.span(),
                        format!("host `{}` lists group `{g}` twice", host.name.get_ref()),
                    )
                    .hint("list each group once"),
                );
            } else if !defined.contains(&g) {
                let mut d = Diagnostic::at(
                    group.span(),
                    format!(
                        "host `{}` lists group `{g}`, which is not defined",
                        host.name.get_ref()
                    ),
                );
                if let Some(best) = closest(g, defined.iter().copied()).first() {
                    d = d.hint(format!("did you mean `{best}`?"));
                }
                pass.diags.push(d.hint(format!(
                    "declare it with a `[groups.{g}]` table (it may be empty)"
                )));
            }
        }
    }

    // One migrator per storage: hosts naming no storage count as one, as their storages are
    // only known once the nodes are asked.
    let mut migrators: BTreeMap<Option<String>, Vec<&RawHost>> = BTreeMap::new();
    for host in hosts.iter().copied().filter(|h| h.is_migrator()) {
        migrators
            .entry(storage_of(raw, host))
            .or_default()
            .push(host);
    }
    let mut contested: Vec<(&Option<String>, &Vec<&RawHost>)> =
        migrators.iter().filter(|(_, m)| m.len() > 1).collect();
    contested.sort_by_key(|(_, m)| m[1].name.span().start);
    for (storage, migrators) in contested {
        let second = migrators[1];
        let span = second
            .migrator
            .as_ref()
            .map(|m| m.span())
            .unwrap_or_else(|| second.name.span());
        let (on, hint) = match storage {
            Some(name) => (
                format!(" on storage `{name}`"),
                format!("keep `migrator = true` on one host of storage `{name}`: each storage is migrated once, on that node"),
            ),
            None => (
                String::new(),
                "keep `migrator = true` on one host: migrations run once, on that node; hosts on different storages each may have one once they name their storage (`storage = \"NAME\"`)".to_string(),
            ),
        };
        pass.diags.push(
            Diagnostic::at(
                span,
                format!(
                    "{} migrators{on}: hosts {} set `migrator = true`",
                    migrators.len(),
                    hosts_with_lines(pass, migrators)
                ),
            )
            .hint(hint),
        );
    }

    let names: Vec<&str> = hosts.iter().map(|h| h.name.get_ref().as_str()).collect();
    let mut replaced_by: HashMap<String, Vec<&RawHost>> = HashMap::new();
    for host in &hosts {
        let Some(target) = &host.replaces else {
            continue;
        };
        let t = target.get_ref().as_str();
        let this = host.name.get_ref().as_str();
        let found = first_by_name.get(&t.to_ascii_lowercase());
        match found {
            _ if t.eq_ignore_ascii_case(this) => pass.diags.push(
                Diagnostic::at(target.span(), format!("host `{this}` replaces itself"))
                    .hint("`replaces` names the old host this new node takes over from"),
            ),
            None => {
                let mut d = Diagnostic::at(
                    target.span(),
                    format!("host `{this}` replaces `{t}`, which is not in the inventory"),
                );
                if let Some(best) = closest(t, names.iter().copied()).first() {
                    d = d.hint(format!("did you mean `{best}`?"));
                }
                pass.diags.push(d.hint("`replaces` names the `[[host]]` this new node takes over from; keep the old host in the inventory until it is decommissioned"));
            }
            Some(old) => {
                if let Some(further) = &old.replaces {
                    pass.diags.push(
                        Diagnostic::at(
                            target.span(),
                            format!(
                                "host `{this}` replaces `{t}`, which itself replaces `{}`",
                                further.get_ref()
                            ),
                        )
                        .hint("point `replaces` at a node running today; replace in one step"),
                    );
                }
                replaced_by
                    .entry(t.to_ascii_lowercase())
                    .or_default()
                    .push(host);
            }
        }
    }
    let mut contested: Vec<&Vec<&RawHost>> = replaced_by.values().filter(|v| v.len() > 1).collect();
    contested.sort_by_key(|v| v[1].name.span().start);
    for replacers in contested {
        let second = replacers[1];
        let target = second
            .replaces
            .as_ref()
            .map(|r| r.get_ref().to_string())
            .unwrap_or_default();
        let span = second
            .replaces
            .as_ref()
            .map(|r| r.span())
            .unwrap_or_else(|| second.name.span());
        pass.diags.push(
            Diagnostic::at(
                span,
                format!(
                    "hosts {} replace `{target}`",
                    hosts_with_lines(pass, replacers)
                ),
            )
            .hint("each old host is replaced by exactly one new node"),
        );
    }
}

/// The `storage` a host names, through its layers: the host's own, else its last group's that
/// sets one, else `[ledger]`'s.
fn storage_of(raw: &RawInventory, host: &RawHost) -> Option<String> {
    let from_groups = || {
        host.groups.iter().rev().find_map(|g| {
            raw.groups
                .iter()
                .find(|(name, _)| name.get_ref() == g.get_ref())
                .and_then(|(_, group)| group.ledger.storage.as_ref())
        })
    };
    host.ledger
        .storage
        .as_ref()
        .or_else(from_groups)
        .or(raw.ledger.storage.as_ref())
        .map(|s| s.to_string())
}

/// Two entries for one machine (same address, port and jump host) would upgrade it twice.
fn check_duplicate_endpoints(raw: &RawInventory, resolved: &[ResolvedHost], pass: &mut Pass<'_>) {
    let mut seen: HashMap<(String, u16, Option<String>), usize> = HashMap::new();
    for (i, (host, raw_host)) in resolved.iter().zip(&raw.hosts).enumerate() {
        let key = (
            raw_host.get_ref().address.get_ref().canonical(),
            host.ssh.port,
            host.ssh.jump_host.clone(),
        );
        let Some(&first) = seen.get(&key) else {
            seen.insert(key, i);
            continue;
        };
        let first_raw = raw.hosts[first].get_ref();
        let both = hosts_with_lines(pass, &[first_raw, raw_host.get_ref()]);
        let endpoint = raw_host
            .get_ref()
            .address
            .get_ref()
            .with_port(host.ssh.port);
        pass.diags.push(
            Diagnostic::at(
                raw_host.get_ref().address.span(),
                format!("hosts {both} point at `{endpoint}`"),
            )
            .hint("one machine listed twice would be upgraded twice; fix the address or port, or remove one entry"),
        );
    }
}

fn releases(raw: &RawInventory, pass: &mut Pass<'_>) -> BTreeMap<Version, Release> {
    let mut out = BTreeMap::new();
    for (version, release) in &raw.releases {
        let r = release.get_ref();
        let source = match (&r.file, &r.url) {
            (Some(file), None) => match file.resolve(pass.home, pass.base) {
                Ok(path) => ReleaseSource::File(path),
                Err(e) => {
                    pass.invalid(release.span(), e);
                    continue;
                }
            },
            (None, Some(url)) => ReleaseSource::Url(url.to_string()),
            _ => {
                pass.diags.push(
                    Diagnostic::at(release.span(), format!("release `{}` needs exactly one of `file` and `url`", version.get_ref()))
                        .hint("`file` is a binary on this machine that fleetup uploads; `url` is downloaded by each node"),
                );
                continue;
            }
        };
        let sha256 = r.sha256.as_ref().map(|s| s.to_string());
        out.insert(version.get_ref().clone(), Release { source, sha256 });
    }
    out
}
