//! What one step does on one host, as typed parameters ([`Action`]): the plan builders fill them
//! in from the inventory, the facts and the target, the dry run shows them, and both the dry
//! run's command lines ([`Action::commands`]) and the runner's commands are rendered from them
//! by the methods below, so what `check` prints cannot drift from what `upgrade` runs.

use std::time::Duration;

use serde::{Serialize, Serializer};

use super::{BinarySource, RUN_ID_TOKEN, RestoreSource, commands};
use crate::facts::StorageDriver;
use crate::inventory::{Become, ResolvedHost, Service};
use crate::node::{self, ServiceAction};
use crate::shell::quote;
use crate::version::Version;

/// One step on one host, with every parameter it needs. Serialized with `kind` (the step's kind
/// in snake case) beside the parameters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Action {
    /// Read-only checks of the caller (no parameters).
    Preflight,
    Lock(LockParams),
    StopService(ServiceParams),
    ConfirmStopped(ConfirmParams),
    Backup(BackupParams),
    Stage(StageParams),
    Migrate(MigrateParams),
    Switch(SwitchParams),
    /// Rollback: the rolled-back run's backup put back.
    Restore(RestoreParams),
    /// Rollback: the binary back to the release the rolled-back run recorded.
    SwitchBack(SwitchParams),
    StartService(ServiceParams),
    HealthGate(GateParams),
    Decommission(ServiceParams),
    /// The operator's hook around a batch (`pre_hook`, `post_hook`).
    Hook(HookParams),
    Unlock(LockParams),
}

/// The fleetup lock of a node (taken and released by the runner's own mechanism).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LockParams {
    /// The lock dir on the node.
    pub path: String,
}

/// The node's service: how its manager drives it, and where its API answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServiceParams {
    pub service: Service,
    /// `host:port` of the API as the node sees it (a restart after an undo waits for it).
    pub api: String,
    /// `become`: how this step's privileged commands run ([`Become::wrap`]).
    #[serde(rename = "become", skip_serializing_if = "Become::is_none")]
    pub escalate: Become,
}

/// What "cleanly stopped" is checked against.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ConfirmParams {
    pub service: Service,
    pub api: String,
    /// SQLite: the storage dir, looked at for hot journals and open files.
    pub sqlite_dir: Option<String>,
    /// Postgres migrator: the other sessions on its database are counted, with the service's
    /// environment.
    pub count_db_sessions: bool,
    pub env_file: Option<String>,
}

/// One backup of a storage, into a fresh dir of the run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupParams {
    pub driver: StorageDriver,
    /// `<backup_dir>/@RUN_ID@`: the runner puts the run id in ([`BackupParams::dir_for`]).
    pub dir: String,
    pub env_file: Option<String>,
    /// `become`: how this step's privileged commands run ([`Become::wrap`]).
    #[serde(rename = "become", skip_serializing_if = "Become::is_none")]
    pub escalate: Become,
}

/// The new binary put beside the running one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StageParams {
    /// `<releases_dir>/<V>`.
    pub release_dir: String,
    /// `<releases_dir>/<V>/numary`.
    pub binary: String,
    pub source: BinarySource,
    /// What the staged binary's `version` must print.
    pub version: Version,
    pub env_file: Option<String>,
    /// `become`: how this step's privileged commands run ([`Become::wrap`]).
    #[serde(rename = "become", skip_serializing_if = "Become::is_none")]
    pub escalate: Become,
}

/// The storage commands of the new binary, with the service's environment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MigrateParams {
    /// The staged binary that migrates.
    pub binary: String,
    pub driver: Option<StorageDriver>,
    pub env_file: Option<String>,
    /// The ledgers known when the plan was built (the inventory's, else the node's), shown as
    /// one `storage upgrade` each; the run takes the names from `storage list`.
    pub ledgers: Vec<String>,
    /// Postgres, offline: the database must have no other session right before the first
    /// `storage upgrade` (counted). False for zero-downtime, where the other nodes serve from
    /// it by design.
    pub exclusive: bool,
    /// `become`: how this step's privileged commands run ([`Become::wrap`]).
    #[serde(rename = "become", skip_serializing_if = "Become::is_none")]
    pub escalate: Become,
}

/// The atomic swap of the node's binary to a release.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SwitchParams {
    /// `ledger.binary`, the symlink swapped.
    pub link: String,
    /// The release binary it points to afterwards.
    pub release: String,
    /// The release dir a plain-file binary is first kept in, as its version's release (`None`:
    /// the version is unknown, and a plain file is not replaced).
    pub keep_plain_as: Option<String>,
    /// `become`: how this step's privileged commands run ([`Become::wrap`]).
    #[serde(rename = "become", skip_serializing_if = "Become::is_none")]
    pub escalate: Become,
}

/// A backup restored over its storage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreParams {
    pub source: RestoreSource,
    pub env_file: Option<String>,
    /// `ledger.binary`, and the release it switches back to: the restore is done once the
    /// link resolves to it on a storage holding nothing newer.
    pub link: String,
    pub release: String,
    /// `become`: how this step's privileged commands run ([`Become::wrap`]).
    #[serde(rename = "become", skip_serializing_if = "Become::is_none")]
    pub escalate: Become,
}

/// What the health gate waits for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GateParams {
    pub api: String,
    /// The version `/_info` must report.
    pub expect: Version,
    /// Ledgers that must each answer a read (`GET /{ledger}/stats`): names the inventory gives
    /// or the node listed, valid ledger names only (a name goes into a URL path).
    pub ledgers: Vec<String>,
    /// `min_healthy_time`: once healthy, the node must still be so this long after, before the
    /// next batch goes.
    #[serde(serialize_with = "humantime_str")]
    pub min_healthy: Duration,
}

impl GateParams {
    /// The gate of the node at `api` on `expect`, reading each valid name of `ledgers`, healthy
    /// for `min_healthy` after.
    pub fn new(api: &str, expect: &Version, ledgers: &[String], min_healthy: Duration) -> Self {
        GateParams {
            min_healthy,
            api: api.to_string(),
            expect: expect.clone(),
            ledgers: ledgers
                .iter()
                .filter(|l| crate::shell::validate_ledger_name(l).is_ok())
                .cloned()
                .collect(),
        }
    }

    /// The line the hold of `min_healthy_time` runs under (none without one).
    pub fn hold_line(&self) -> Option<String> {
        (!self.min_healthy.is_zero()).then(|| {
            format!(
                "# wait {} (`min_healthy_time`), then the same probes again",
                humantime::format_duration(self.min_healthy)
            )
        })
    }

    /// The path of the read that proves `ledger` answers.
    pub fn read_path(ledger: &str) -> String {
        format!("/{ledger}/stats")
    }
}

/// Which of a host's hooks: before its batch leaves service, or once it is healthy again.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum HookPhase {
    Pre,
    Post,
}

impl HookPhase {
    /// `pre` or `post`, as `FLEETUP_PHASE` gives it to the hook.
    pub fn as_str(self) -> &'static str {
        match self {
            HookPhase::Pre => "pre",
            HookPhase::Post => "post",
        }
    }
}

/// The operator's hook on one host: its command, run as written, with what fleetup tells it in
/// `FLEETUP_*` environment variables.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HookParams {
    pub phase: HookPhase,
    /// The inventory's command, never edited (no value is put into it).
    pub command: String,
    /// On the machine running fleetup (`sh -c`, in `dir`) instead of on the node.
    pub local: bool,
    #[serde(serialize_with = "humantime_str")]
    pub timeout: Duration,
    /// `FLEETUP_*` name and value, in the order they are set; `FLEETUP_RUN_ID` is `@RUN_ID@`
    /// ([`HookParams::env_for`] puts the run id in).
    pub env: Vec<(String, String)>,
    /// A local hook's working directory (the inventory file's); `None` for a remote one.
    pub dir: Option<String>,
}

fn humantime_str<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&humantime::format_duration(*d))
}

impl Action {
    /// The remote command lines of this action, as the dry run shows them and the runner runs
    /// them (`@RUN_ID@` for the run id; `# ...` lines describe what is no shell command).
    pub fn commands(&self) -> Vec<String> {
        match self {
            Action::Preflight | Action::Lock(_) | Action::Unlock(_) => Vec::new(),
            Action::StopService(p) => vec![p.command(ServiceAction::Stop), p.state_command()],
            Action::Decommission(p) => {
                let mut c = vec![p.command(ServiceAction::Stop), p.state_command()];
                c.extend(p.disable_command());
                c
            }
            Action::StartService(p) => {
                let mut c = vec![p.command(ServiceAction::Start)];
                c.extend(p.active_command());
                c
            }
            Action::ConfirmStopped(p) => p.commands(),
            Action::Backup(p) => vec![p.command(&p.dir)],
            Action::Stage(p) => p.commands(),
            Action::Migrate(p) => p.commands(),
            Action::Switch(p) | Action::SwitchBack(p) => vec![p.command()],
            Action::Restore(p) => vec![p.command()],
            Action::HealthGate(p) => {
                let mut lines = vec![
                    commands::http_probe(&p.api, "/_info"),
                    commands::http_probe(&p.api, "/_health"),
                ];
                lines.extend(
                    p.ledgers
                        .iter()
                        .map(|l| commands::http_probe(&p.api, &GateParams::read_path(l))),
                );
                lines.extend(p.hold_line());
                lines
            }
            Action::Hook(p) => vec![p.line(RUN_ID_TOKEN)],
        }
    }
}

/// `Action::$variant`'s parameters, for the runner's module of that kind.
macro_rules! accessor {
    ($($name:ident: $($variant:ident)|+ => $params:ty;)*) => {
        impl Action {
            $(
                pub fn $name(&self) -> Option<&$params> {
                    match self {
                        $(Action::$variant(p))|+ => Some(p),
                        _ => None,
                    }
                }
            )*
        }
    };
}

accessor! {
    service: StopService | StartService | Decommission => ServiceParams;
    confirm: ConfirmStopped => ConfirmParams;
    backup: Backup => BackupParams;
    stage: Stage => StageParams;
    migrate: Migrate => MigrateParams;
    switch: Switch | SwitchBack => SwitchParams;
    restore: Restore => RestoreParams;
    gate: HealthGate => GateParams;
    hook: Hook => HookParams;
}

impl LockParams {
    pub fn of(host: &ResolvedHost) -> Self {
        LockParams {
            path: crate::lock::lock_path(host),
        }
    }
}

impl ServiceParams {
    pub fn of(host: &ResolvedHost) -> Self {
        ServiceParams {
            service: host.ledger.service.clone(),
            api: host.ledger.api.clone(),
            escalate: host.ledger.escalate,
        }
    }

    /// The manager's command for `action`; start and stop with the step's privileges (a status
    /// is a read: it runs as the SSH user, see [`ServiceParams::state_command`]).
    pub fn command(&self, action: ServiceAction) -> String {
        let cmd = node::service_command(&self.service, action);
        match action {
            ServiceAction::Start | ServiceAction::Stop => self.escalate.wrap(&cmd),
            ServiceAction::Status => cmd,
        }
    }

    pub fn state_command(&self) -> String {
        node::service_state_command(&self.service)
    }

    /// systemd: `is-active`, right after the start (a read, as the SSH user).
    pub fn active_command(&self) -> Option<String> {
        node::service_active_command(&self.service)
    }

    /// Keeps the service from starting at boot (systemd's `disable`; `None` for an operator's
    /// own commands, which have no such notion).
    pub fn disable_command(&self) -> Option<String> {
        node::service_disable_command(&self.service).map(|c| self.escalate.wrap(&c))
    }
}

impl ConfirmParams {
    pub fn commands(&self) -> Vec<String> {
        let mut c = vec![
            node::service_state_command(&self.service),
            commands::http_probe(&self.api, "/_info"),
        ];
        if let Some(dir) = &self.sqlite_dir {
            c.push(commands::storage_use_command(dir));
        }
        if self.count_db_sessions {
            c.push(crate::preflight::db_sessions_command(
                self.env_file.as_deref(),
            ));
        }
        c
    }
}

impl BackupParams {
    /// The backup dir of run `run_id`.
    pub fn dir_for(&self, run_id: &str) -> String {
        self.dir.replace(RUN_ID_TOKEN, run_id)
    }

    /// The backup script into `dir` (the plan's, or [`BackupParams::dir_for`] the run).
    pub fn command(&self, dir: &str) -> String {
        let env = self.env_file.as_deref();
        self.escalate.wrap(&match self.driver {
            StorageDriver::Sqlite => commands::backup_sqlite(env, dir),
            StorageDriver::Postgres => commands::backup_postgres(env, dir),
        })
    }
}

/// How a staged binary gets to the node, as command lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetch {
    /// `mkdir -p` of the release dir, then the upload from this machine (`upload` is the line
    /// that shows it; it runs through the transport).
    Upload { mkdir: String, upload: String },
    /// The node downloads the binary itself, checking its SHA-256.
    Download { command: String },
}

impl StageParams {
    /// How the binary gets there.
    pub fn fetch(&self) -> Fetch {
        match &self.source {
            BinarySource::Url { url, sha256 } => Fetch::Download {
                command: self.escalate.wrap(&commands::download_command(
                    &self.release_dir,
                    url,
                    sha256,
                )),
            },
            BinarySource::File { path, .. } => Fetch::Upload {
                mkdir: self.mkdir_command(),
                upload: commands::upload_line(&path.display().to_string(), &self.binary),
            },
        }
    }

    /// The release dir created. With `become`, it is created as root and handed to the SSH
    /// user (who uploads into it: the upload runs as the SSH user), read-only to others.
    pub fn mkdir_command(&self) -> String {
        let mkdir = commands::mkdir(&self.release_dir);
        match self.escalate {
            Become::None => mkdir,
            // `$2`: the SSH user's uid, read outside sudo.
            Become::Sudo => format!(
                "{} \"$(id -u)\"",
                crate::shell::sudo(&format!(
                    "{mkdir} && chown \"$2\" {d} && chmod 755 {d}",
                    d = quote(&self.release_dir)
                ))
            ),
        }
    }

    /// `<staged> version`, run as the service would run it (its env file read with the step's
    /// privileges).
    pub fn version_command(&self) -> String {
        self.escalate.wrap(&node::numary_with(
            self.env_file.as_deref(),
            &self.binary,
            &["version"],
        ))
    }

    fn commands(&self) -> Vec<String> {
        let mut c = match self.fetch() {
            Fetch::Upload { mkdir, upload } => vec![mkdir, upload],
            Fetch::Download { command } => vec![command],
        };
        c.push(self.version_command());
        c
    }
}

impl MigrateParams {
    pub fn is_postgres(&self) -> bool {
        self.driver == Some(StorageDriver::Postgres)
    }

    /// `numary ARGS...` with the staged binary and the service's environment.
    pub fn numary(&self, args: &[&str]) -> String {
        self.escalate.wrap(&node::numary_with(
            self.env_file.as_deref(),
            &self.binary,
            args,
        ))
    }

    /// Counts the other sessions on the database (Postgres, right before the first upgrade).
    pub fn db_sessions_command(&self) -> String {
        crate::preflight::db_sessions_command(self.env_file.as_deref())
    }

    fn commands(&self) -> Vec<String> {
        let mut c = Vec::new();
        if self.is_postgres() {
            // Right before the first `storage upgrade`: the database to itself (offline),
            // under its lock.
            if self.exclusive {
                c.push(self.db_sessions_command());
            }
            c.push(commands::db_lock_line());
        }
        c.extend([
            self.numary(&["storage", "list"]),
            self.numary(&["storage", "scan"]),
            self.numary(&["storage", "list"]),
        ]);
        if self.ledgers.is_empty() {
            c.push(
                "# then `storage upgrade NAME` for each ledger `storage list` prints".to_string(),
            );
        }
        for name in &self.ledgers {
            c.push(self.numary(&["storage", "upgrade", name]));
        }
        c
    }
}

impl SwitchParams {
    /// The switch of `host` to `target`'s release; `current`: the version of its binary now,
    /// kept as its release when the binary is a plain file.
    pub fn to_release(host: &ResolvedHost, target: &Version, current: Option<&Version>) -> Self {
        SwitchParams {
            link: host.ledger.binary.clone(),
            release: commands::release_binary(host, target),
            keep_plain_as: current.map(|v| commands::release_dir(host, v)),
            escalate: host.ledger.escalate,
        }
    }

    pub fn command(&self) -> String {
        self.escalate.wrap(&commands::switch_to_command(
            &self.link,
            &self.release,
            self.keep_plain_as.as_deref(),
        ))
    }

    /// Succeeds when the link resolves to the release already.
    pub fn resolves_command(&self) -> String {
        commands::resolves_to_command(&self.link, &self.release)
    }
}

impl RestoreParams {
    pub fn command(&self) -> String {
        self.escalate.wrap(&super::restore_command(
            self.env_file.as_deref(),
            &self.source,
        ))
    }
}

impl HookParams {
    /// The variables of run `run_id`, as the hook gets them.
    pub fn env_for(&self, run_id: &str) -> Vec<(String, String)> {
        self.env
            .iter()
            .map(|(k, v)| (k.clone(), v.replace(RUN_ID_TOKEN, run_id)))
            .collect()
    }

    /// `FLEETUP_HOST=… … sh -c COMMAND`: the hook with its variables, for a POSIX shell. The
    /// values are quoted (the names are fleetup's own); the command is one quoted word, so it
    /// runs in a shell of its own that sees every variable, whatever it is made of.
    pub fn shell_line(&self, run_id: &str) -> String {
        let vars: Vec<String> = self
            .env_for(run_id)
            .iter()
            .map(|(k, v)| format!("{k}={}", quote(v)))
            .collect();
        format!("{} sh -c {}", vars.join(" "), quote(&self.command))
    }

    /// The line the dry run shows and the journal records for run `run_id`: the remote shell
    /// line the node runs, or, for a local hook, the same after `# local: cd DIR &&` (it runs
    /// here, not on the node).
    pub fn line(&self, run_id: &str) -> String {
        if !self.local {
            return self.shell_line(run_id);
        }
        let cd = self
            .dir
            .as_deref()
            .map_or_else(String::new, |d| format!("cd {} && ", quote(d)));
        format!("# local: {cd}{}", self.shell_line(run_id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shell::quote;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    const ENV: &str = "/etc/numary/env";
    fn sourced() -> String {
        crate::envfile::loader(ENV)
    }

    fn systemd() -> Service {
        Service::Systemd {
            unit: "numary".into(),
        }
    }

    #[test]
    fn service_actions_render_through_the_service_manager() {
        let p = ServiceParams {
            service: systemd(),
            api: "127.0.0.1:3068".into(),
            escalate: Become::None,
        };
        let state = "systemctl show --property=LoadState,ActiveState --value -- numary";
        assert_eq!(
            Action::StopService(p.clone()).commands(),
            ["systemctl stop numary", state]
        );
        // An old node's unit is disabled too, so a reboot does not start it again.
        assert_eq!(
            Action::Decommission(p.clone()).commands(),
            ["systemctl stop numary", state, "systemctl disable numary"]
        );
        assert_eq!(
            Action::StartService(p.clone()).commands(),
            ["systemctl start numary", "systemctl is-active -- numary"]
        );
        // With `become = "sudo"`, what changes the service goes through `sudo -n`; reads do not.
        let sudo = ServiceParams {
            escalate: Become::Sudo,
            ..p
        };
        assert_eq!(
            Action::StopService(sudo.clone()).commands(),
            [crate::shell::sudo("systemctl stop numary").as_str(), state]
        );
        assert_eq!(
            Action::StartService(sudo.clone()).commands(),
            [
                crate::shell::sudo("systemctl start numary").as_str(),
                "systemctl is-active -- numary"
            ]
        );
        assert_eq!(
            Action::Decommission(sudo).commands()[2],
            crate::shell::sudo("systemctl disable numary")
        );
        let own = ServiceParams {
            service: Service::Command {
                start: "my-start".into(),
                stop: "my-stop".into(),
                status: "my-status".into(),
            },
            api: "x:1".into(),
            escalate: Become::None,
        };
        assert_eq!(
            Action::StopService(own.clone()).commands(),
            ["my-stop", "my-status"]
        );
        assert_eq!(
            Action::Decommission(own).commands(),
            ["my-stop", "my-status"]
        );
    }

    #[test]
    fn lock_and_preflight_have_no_command_lines() {
        let lock = LockParams {
            path: "/opt/numary/releases/.fleetup.lock".into(),
        };
        assert!(Action::Lock(lock.clone()).commands().is_empty());
        assert!(Action::Unlock(lock).commands().is_empty());
        assert!(Action::Preflight.commands().is_empty());
    }

    #[test]
    fn confirm_stopped_looks_at_the_sqlite_dir_and_counts_sessions_where_asked() {
        let mut p = ConfirmParams {
            service: systemd(),
            api: "10.0.0.1:3068".into(),
            sqlite_dir: None,
            count_db_sessions: false,
            env_file: Some(ENV.into()),
        };
        let c = Action::ConfirmStopped(p.clone()).commands();
        assert_eq!(c.len(), 2);
        assert_eq!(
            c[1],
            "# GET http://10.0.0.1:3068/_info (through the SSH connection)"
        );
        p.sqlite_dir = Some("/da ta".into());
        p.count_db_sessions = true;
        let c = Action::ConfirmStopped(p).commands();
        assert_eq!(c[2], commands::storage_use_command("/da ta"));
        assert!(c[3].starts_with(&crate::envfile::loader("/etc/numary/env")));
        assert!(c[3].contains("psql"), "{}", c[3]);
    }

    #[test]
    fn backup_renders_per_driver_into_its_dir_and_takes_the_run_id() {
        let p = BackupParams {
            driver: StorageDriver::Postgres,
            dir: format!("/var/backups/numary/{RUN_ID_TOKEN}"),
            env_file: Some(ENV.into()),
            escalate: Become::None,
        };
        let c = Action::Backup(p.clone()).commands();
        assert_eq!(c.len(), 1);
        assert!(c[0].contains("pg_dump --format=custom"), "{}", c[0]);
        assert!(
            c[0].contains(&quote(&format!(
                "/var/backups/numary/{RUN_ID_TOKEN}/postgres.dump"
            ))),
            "{}",
            c[0]
        );
        assert_eq!(p.dir_for("run-1"), "/var/backups/numary/run-1");
        // The run's command is the plan's with the run id put in, byte for byte.
        assert_eq!(
            p.command(&p.dir_for("run-1")),
            c[0].replace(RUN_ID_TOKEN, "run-1")
        );
        let sqlite = BackupParams {
            driver: StorageDriver::Sqlite,
            ..p
        };
        let c = Action::Backup(sqlite).commands();
        assert!(c[0].contains("echo ==orig"), "{}", c[0]);
        assert!(!c[0].contains("pg_dump"));
    }

    #[test]
    fn stage_uploads_or_downloads_to_its_release_dir_then_checks_the_version() {
        let mut p = StageParams {
            release_dir: "/srv/rel/1.8.2".into(),
            binary: "/srv/rel/1.8.2/numary".into(),
            source: BinarySource::File {
                path: "./numary".into(),
                sha256: "ab".repeat(32),
            },
            version: v("1.8.2"),
            env_file: Some(ENV.into()),
            escalate: Become::None,
        };
        assert_eq!(
            Action::Stage(p.clone()).commands(),
            [
                "mkdir -p /srv/rel/1.8.2".to_string(),
                "# upload `./numary` to /srv/rel/1.8.2/numary".to_string(),
                format!("{}exec /srv/rel/1.8.2/numary version", sourced()),
            ]
        );
        p.source = BinarySource::Url {
            url: "https://example.com/numary".into(),
            sha256: "cd".repeat(32),
        };
        let c = Action::Stage(p).commands();
        assert_eq!(
            c[0],
            commands::download_command(
                "/srv/rel/1.8.2",
                "https://example.com/numary",
                &"cd".repeat(32)
            )
        );
        assert_eq!(c.len(), 2);
    }

    #[test]
    fn migrate_lists_scans_and_upgrades_each_known_ledger_with_its_binary() {
        let mut p = MigrateParams {
            binary: "/srv/rel/1.8.2/numary".into(),
            driver: Some(StorageDriver::Sqlite),
            env_file: Some(ENV.into()),
            ledgers: vec!["default".into(), "pay ments".into()],
            exclusive: true,
            escalate: Become::None,
        };
        let n = |args: &str| format!("{}exec /srv/rel/1.8.2/numary {args}", sourced());
        assert_eq!(
            Action::Migrate(p.clone()).commands(),
            [
                n("storage list"),
                n("storage scan"),
                n("storage list"),
                n("storage upgrade default"),
                n("storage upgrade 'pay ments'"),
            ]
        );
        p.driver = Some(StorageDriver::Postgres);
        p.ledgers.clear();
        let c = Action::Migrate(p.clone()).commands();
        assert_eq!(c[0], p.db_sessions_command());
        assert_eq!(c[1], commands::db_lock_line());
        assert!(
            c[5].starts_with("# then `storage upgrade NAME`"),
            "{}",
            c[5]
        );
        assert_eq!(c.len(), 6);
    }

    #[test]
    fn switch_and_switch_back_swap_the_link_to_their_release() {
        let mut h = crate::runner::tests::host("n");
        h.ledger.binary = "/usr/bin/numary".into();
        h.ledger.releases_dir = "/srv/rel".into();
        let p = SwitchParams::to_release(&h, &v("1.8.2"), Some(&v("1.7.4")));
        assert_eq!(p.link, "/usr/bin/numary");
        assert_eq!(p.release, "/srv/rel/1.8.2/numary");
        assert_eq!(p.keep_plain_as.as_deref(), Some("/srv/rel/1.7.4"));
        let c = Action::Switch(p.clone()).commands();
        assert_eq!(
            c,
            [commands::switch_to_command(
                "/usr/bin/numary",
                "/srv/rel/1.8.2/numary",
                Some("/srv/rel/1.7.4")
            )]
        );
        assert!(c[0].starts_with("b=/usr/bin/numary; n=/srv/rel/1.8.2/numary; "));
        assert!(c[0].contains("o=/srv/rel/1.7.4;"), "{}", c[0]);
        assert_eq!(Action::SwitchBack(p).commands(), c);
        let unknown = SwitchParams::to_release(&h, &v("1.8.2"), None);
        assert!(unknown.command().contains("plain file of unknown version"));
    }

    #[test]
    fn restore_renders_the_recorded_backup() {
        let p = RestoreParams {
            source: RestoreSource {
                host: "n".into(),
                driver: StorageDriver::Postgres,
                files: vec![super::super::BackupFile {
                    path: "/b/run/postgres.dump".into(),
                    sha256: "ef".repeat(32),
                    bytes: Some(3),
                }],
            },
            env_file: Some(ENV.into()),
            link: "/usr/bin/numary".into(),
            release: "/srv/rel/1.7.4/numary".into(),
            escalate: Become::None,
        };
        assert_eq!(
            Action::Restore(p).commands(),
            [commands::restore_postgres(
                Some(ENV),
                "/b/run/postgres.dump",
                &"ef".repeat(32)
            )]
        );
    }

    #[test]
    fn the_health_gate_probes_its_api() {
        let ledgers = ["payments".to_string(), "../x?y".to_string()];
        let mut p = GateParams::new("127.0.0.1:3068", &v("1.8.2"), &ledgers, Duration::ZERO);
        // A name the node reported that is no ledger name never reaches a URL.
        assert_eq!(p.ledgers, ["payments"]);
        assert_eq!(
            Action::HealthGate(p.clone()).commands(),
            [
                "# GET http://127.0.0.1:3068/_info (through the SSH connection)",
                "# GET http://127.0.0.1:3068/_health (through the SSH connection)",
                "# GET http://127.0.0.1:3068/payments/stats (through the SSH connection)",
            ]
        );
        p.min_healthy = Duration::from_secs(10);
        let c = Action::HealthGate(p).commands();
        assert_eq!(
            c.last().unwrap(),
            "# wait 10s (`min_healthy_time`), then the same probes again"
        );
    }

    #[test]
    fn params_serialize_with_the_kind_beside_them() {
        let p = Action::Switch(SwitchParams {
            link: "/usr/bin/numary".into(),
            release: "/srv/rel/1.8.2/numary".into(),
            keep_plain_as: None,
            escalate: Become::None,
        });
        assert_eq!(
            serde_json::to_value(&p).unwrap(),
            serde_json::json!({"kind": "switch", "link": "/usr/bin/numary",
                "release": "/srv/rel/1.8.2/numary", "keep_plain_as": null})
        );
        assert_eq!(
            serde_json::to_value(Action::Preflight).unwrap(),
            serde_json::json!({"kind": "preflight"})
        );
    }
}
