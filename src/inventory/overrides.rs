//! SSH settings that beat the inventory for every host: `FLEETUP_*` environment variables, and
//! above them the command-line flags. Parsed by the same value types as the inventory.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::Failure;

use super::values::{HumanDuration, Invalid, JumpHost, Port, UserName, expand_local};

/// Values set outside the inventory; `None` leaves the inventory's value.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub user: Option<String>,
    pub port: Option<u16>,
    pub identity_files: Option<Vec<PathBuf>>,
    pub known_hosts: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    pub command_timeout: Option<Duration>,
    pub migration_timeout: Option<Duration>,
    pub jump_host: Option<JumpHost>,
    /// `--ssh-config PATH|none` (no environment variable).
    pub ssh_config: Option<super::SshConfigChoice>,
}

/// The variables [`Overrides::from_env`] reads, for docs and `--help`.
pub const ENV_VARS: [&str; 8] = [
    "FLEETUP_SSH_USER",
    "FLEETUP_SSH_PORT",
    "FLEETUP_IDENTITY_FILE",
    "FLEETUP_KNOWN_HOSTS",
    "FLEETUP_CONNECT_TIMEOUT",
    "FLEETUP_COMMAND_TIMEOUT",
    "FLEETUP_MIGRATION_TIMEOUT",
    "FLEETUP_JUMP_HOST",
];

impl Overrides {
    /// Read the `FLEETUP_*` variables through `lookup` (pass `|k| std::env::var(k).ok()`).
    /// Empty variables count as unset. Local paths expand `~` with `HOME` (from `lookup`) and
    /// resolve relative to `cwd`. A bad value is a usage error naming the variable.
    pub fn from_env(
        lookup: impl Fn(&str) -> Option<String>,
        cwd: &Path,
    ) -> Result<Overrides, Failure> {
        let home = lookup("HOME").filter(|h| !h.is_empty()).map(PathBuf::from);
        let get = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let bad = |name: &str, value: &str, e: Invalid| {
            let mut f = Failure::usage(format!(
                "environment variable `{name}` is not valid: {}",
                e.message
            ));
            f.hints = e.hints;
            f.hints
                .push(format!("fix or unset `{name}` (current value `{value}`)"));
            f
        };
        let path = |name: &str, v: &str| {
            expand_local(v, home.as_deref(), cwd).map_err(|e| bad(name, v, e))
        };

        let mut out = Overrides::default();
        if let Some(v) = get("FLEETUP_SSH_USER") {
            out.user = Some(
                UserName::parse(&v)
                    .map_err(|e| bad("FLEETUP_SSH_USER", &v, e))?
                    .to_string(),
            );
        }
        if let Some(v) = get("FLEETUP_SSH_PORT") {
            out.port = Some(
                Port::parse(&v)
                    .map_err(|e| bad("FLEETUP_SSH_PORT", &v, e))?
                    .0,
            );
        }
        if let Some(v) = get("FLEETUP_IDENTITY_FILE") {
            let files = std::env::split_paths(&v)
                .filter(|p| !p.as_os_str().is_empty())
                .map(|p| path("FLEETUP_IDENTITY_FILE", &p.to_string_lossy()))
                .collect::<Result<Vec<_>, _>>()?;
            out.identity_files = Some(files);
        }
        if let Some(v) = get("FLEETUP_KNOWN_HOSTS") {
            out.known_hosts = Some(path("FLEETUP_KNOWN_HOSTS", &v)?);
        }
        for (name, slot) in [
            ("FLEETUP_CONNECT_TIMEOUT", &mut out.connect_timeout),
            ("FLEETUP_COMMAND_TIMEOUT", &mut out.command_timeout),
            ("FLEETUP_MIGRATION_TIMEOUT", &mut out.migration_timeout),
        ] {
            if let Some(v) = get(name) {
                *slot = Some(HumanDuration::parse(&v).map_err(|e| bad(name, &v, e))?.0);
            }
        }
        if let Some(v) = get("FLEETUP_JUMP_HOST") {
            out.jump_host = Some(JumpHost::parse(&v).map_err(|e| bad("FLEETUP_JUMP_HOST", &v, e))?);
        }
        Ok(out)
    }

    /// `self` over `lower`: each value of `self` that is set wins (flags over environment).
    pub fn over(self, lower: Overrides) -> Overrides {
        Overrides {
            user: self.user.or(lower.user),
            port: self.port.or(lower.port),
            identity_files: self.identity_files.or(lower.identity_files),
            known_hosts: self.known_hosts.or(lower.known_hosts),
            connect_timeout: self.connect_timeout.or(lower.connect_timeout),
            command_timeout: self.command_timeout.or(lower.command_timeout),
            migration_timeout: self.migration_timeout.or(lower.migration_timeout),
            jump_host: self.jump_host.or(lower.jump_host),
            ssh_config: self.ssh_config.or(lower.ssh_config),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |k| {
            vars.iter()
                .find(|(name, _)| name == k)
                .map(|(_, v)| v.clone())
        }
    }

    #[test]
    fn reads_every_variable() {
        let o = Overrides::from_env(
            env(&[
                ("HOME", "/home/op"),
                ("FLEETUP_SSH_USER", "deploy"),
                ("FLEETUP_SSH_PORT", "2222"),
                ("FLEETUP_IDENTITY_FILE", "~/.ssh/a:keys/b"),
                ("FLEETUP_KNOWN_HOSTS", "kh"),
                ("FLEETUP_CONNECT_TIMEOUT", "3s"),
                ("FLEETUP_COMMAND_TIMEOUT", "1h"),
                ("FLEETUP_JUMP_HOST", "ops@bastion:22"),
            ]),
            Path::new("/work"),
        )
        .unwrap();
        assert_eq!(o.user.as_deref(), Some("deploy"));
        assert_eq!(o.port, Some(2222));
        assert_eq!(
            o.identity_files,
            Some(vec![
                PathBuf::from("/home/op/.ssh/a"),
                PathBuf::from("/work/keys/b")
            ])
        );
        assert_eq!(o.known_hosts, Some(PathBuf::from("/work/kh")));
        assert_eq!(o.connect_timeout, Some(Duration::from_secs(3)));
        assert_eq!(o.command_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(o.jump_host, Some(JumpHost::Via("ops@bastion:22".into())));
    }

    #[test]
    fn empty_variables_are_unset() {
        let o = Overrides::from_env(
            env(&[("FLEETUP_SSH_PORT", ""), ("FLEETUP_SSH_USER", "")]),
            Path::new("/"),
        )
        .unwrap();
        assert_eq!(o, Overrides::default());
    }

    #[test]
    fn bad_values_name_the_variable() {
        for (name, value, needle) in [
            ("FLEETUP_SSH_PORT", "0", "port 0"),
            ("FLEETUP_SSH_PORT", "ssh", "not a port"),
            ("FLEETUP_CONNECT_TIMEOUT", "10", "not a duration"),
            ("FLEETUP_COMMAND_TIMEOUT", "soon", "not a duration"),
            ("FLEETUP_SSH_USER", "a b", "not a valid user"),
            ("FLEETUP_JUMP_HOST", "h:0", "port 0"),
            ("FLEETUP_KNOWN_HOSTS", "~/kh", "`HOME` is not set"),
        ] {
            let f = Overrides::from_env(env(&[(name, value)]), Path::new("/")).unwrap_err();
            assert_eq!(f.code, crate::exit_code::USAGE);
            assert!(f.message.contains(&format!("`{name}`")), "{}", f.message);
            assert!(f.message.contains(needle), "{}", f.message);
            assert!(f.hints.iter().any(|h| h.contains(name)), "{:?}", f.hints);
        }
    }

    #[test]
    fn higher_layer_wins_field_by_field() {
        let flags = Overrides {
            port: Some(1),
            ..Overrides::default()
        };
        let env = Overrides {
            port: Some(2),
            user: Some("env".into()),
            ..Overrides::default()
        };
        let merged = flags.over(env);
        assert_eq!(merged.port, Some(1));
        assert_eq!(merged.user.as_deref(), Some("env"));
    }
}
