//! Typed errors of the transport, one enum per operation, so callers can branch (a host-key
//! problem is reported up front, a timeout is "unreachable", a failed command is a result) and
//! the CLI can turn each into a [`Failure`] with hints.

use std::path::PathBuf;
use std::time::Duration;

use super::known_hosts::Location;
use crate::error::Failure;
use crate::exit_code;

/// The host presented a key we must not trust.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HostKeyError {
    #[error(
        "host `{host}` (`{addr}`) presented an unknown {key_type} host key `{fingerprint}` \
         (not in `{known_hosts}`{})", also_in(.global_known_hosts)
    )]
    Unknown {
        host: String,
        addr: String,
        key_type: String,
        fingerprint: String,
        /// The user's file, where a new key would be recorded.
        known_hosts: PathBuf,
        /// The global files checked as well.
        global_known_hosts: Vec<PathBuf>,
        /// An `@cert-authority` entry vouches for this host, yet it presented a plain key.
        ca_for_host: Option<Location>,
    },
    #[error(
        "host `{host}` (`{addr}`) presented a {key_type} host key `{fingerprint}` that differs \
         from the one recorded at `{known_hosts}:{line}`: someone may be intercepting the connection"
    )]
    Changed {
        host: String,
        addr: String,
        key_type: String,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },
    #[error(
        "host `{host}` (`{addr}`) presented the {key_type} host key `{fingerprint}` that is \
         marked @revoked at `{known_hosts}:{line}`"
    )]
    Revoked {
        host: String,
        addr: String,
        key_type: String,
        fingerprint: String,
        known_hosts: PathBuf,
        line: usize,
    },
    /// Unknown key while accepting new keys, but the host is recorded with another key type:
    /// that is not a new host, so the key is not recorded.
    #[error(
        "host `{host}` (`{addr}`) presented a {key_type} host key `{fingerprint}` but is recorded \
         with a {known_type} key at `{known_hosts}:{line}`; not recording it"
    )]
    OtherTypeKnown {
        host: String,
        addr: String,
        key_type: String,
        fingerprint: String,
        known_type: String,
        known_hosts: PathBuf,
        line: usize,
    },
    #[error("cannot use known_hosts file `{known_hosts}`: {reason}")]
    File {
        known_hosts: PathBuf,
        reason: String,
    },
    /// A host certificate that does not prove the host's identity.
    #[error(
        "host `{host}` (`{addr}`) presented a host certificate (`{key_id}`, {key_type} key \
         `{fingerprint}`) signed by CA `{ca}`{}, refused: {problem}",
        trusted_at(.ca_at)
    )]
    Certificate {
        host: String,
        addr: String,
        key_id: String,
        key_type: String,
        fingerprint: String,
        /// `SHA256:...` of the CA key that signed it.
        ca: String,
        /// The `@cert-authority` entry that trusts that CA for this host, when one does.
        ca_at: Option<Location>,
        problem: CertProblem,
    },
}

/// Why a host certificate is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CertProblem {
    #[error("no @cert-authority entry for this host trusts that CA")]
    UnknownCa,
    #[error("the CA key is marked @revoked at `{at}`")]
    RevokedCa { at: Location },
    #[error("the certified host key `{key}` is marked @revoked at `{at}`")]
    RevokedKey { key: String, at: Location },
    #[error("it is a user certificate, not a host certificate")]
    NotHost,
    #[error("it expired at {}", unix_time(*.valid_before))]
    Expired { valid_before: u64 },
    #[error("it is not valid before {}", unix_time(*.valid_after))]
    NotYetValid { valid_after: u64 },
    #[error("its signature does not verify against the CA key")]
    BadSignature,
    #[error("it is valid for {} only, not for `{wanted}`", quoted_list(.principals))]
    WrongPrincipal {
        principals: Vec<String>,
        wanted: String,
    },
    #[error("it names no principal, and fleetup requires the host's name `{wanted}` among them")]
    NoPrincipals { wanted: String },
    #[error("it carries critical options fleetup does not know: {}", quoted_list(.options))]
    CriticalOptions { options: Vec<String> },
}

/// `host` of a known_hosts name `[host]:port` (or `host`).
fn bare_host(name: &str) -> &str {
    name.strip_prefix('[')
        .and_then(|r| r.split_once("]:"))
        .map_or(name, |(h, _)| h)
}

fn also_in(global: &[PathBuf]) -> String {
    global
        .iter()
        .map(|p| format!(" nor in `{}`", p.display()))
        .collect()
}

fn trusted_at(at: &Option<Location>) -> String {
    at.as_ref()
        .map(|l| format!(" (trusted at `{l}`)"))
        .unwrap_or_default()
}

fn quoted_list(items: &[String]) -> String {
    items
        .iter()
        .map(|i| format!("`{i}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A certificate time (Unix seconds) as RFC 3339 UTC.
fn unix_time(secs: u64) -> String {
    std::time::UNIX_EPOCH
        .checked_add(Duration::from_secs(secs))
        .map(|t| humantime::format_rfc3339_seconds(t).to_string())
        .unwrap_or_else(|| "the end of time".to_owned())
}

impl HostKeyError {
    pub fn hints(&self) -> Vec<String> {
        match self {
            HostKeyError::Unknown {
                addr,
                known_hosts,
                ca_for_host,
                ..
            } => {
                let mut hints = Vec::new();
                if let Some(ca) = ca_for_host {
                    hints.push(format!(
                        "`{ca}` trusts a certificate authority for this host, but the host \
                         presented no certificate: check `HostCertificate` in its sshd_config"
                    ));
                }
                hints.push(format!(
                    "check the fingerprint with the host's owner, then add the key to `{}` \
                     (e.g. `ssh-keyscan` output for `{addr}`), or rerun with \
                     `--accept-new-host-keys` to record keys of hosts seen for the first time",
                    known_hosts.display()
                ));
                hints
            }
            HostKeyError::Changed {
                addr, known_hosts, ..
            }
            | HostKeyError::OtherTypeKnown {
                addr, known_hosts, ..
            } => vec![format!(
                "if the host was legitimately re-installed, check the new fingerprint with its \
                 owner, then remove the old entry with `ssh-keygen -R '{addr}' -f {}`",
                crate::shell::quote(&known_hosts.display().to_string())
            )],
            HostKeyError::Revoked { .. } => {
                vec!["the key was revoked on purpose: do not connect to this host until it is re-keyed".into()]
            }
            HostKeyError::File { .. } => {
                vec![
                    "check the `known_hosts` and `global_known_hosts` settings of the inventory \
                     and that the file is readable (and writable, to record new keys)"
                        .into(),
                ]
            }
            HostKeyError::Certificate { addr, problem, .. } => problem.hints(addr),
        }
    }
}

impl CertProblem {
    /// What to do, for the host known as `addr` in known_hosts.
    pub fn hints(&self, addr: &str) -> Vec<String> {
        let resign = |wanted: &str| {
            format!(
                "re-sign the host key on the CA, e.g. `ssh-keygen -s CA_KEY -h -I ID -n {wanted} \
                 -V +52w ssh_host_ed25519_key.pub`, install the certificate as the host's \
                 `HostCertificate` and reload its sshd"
            )
        };
        match self {
            CertProblem::UnknownCa => vec![format!(
                "if the CA is yours, add `@cert-authority PATTERN CA_PUBLIC_KEY` for `{addr}` to \
                 known_hosts (`ssh-keygen -l` shows a key's fingerprint); otherwise record the \
                 host's plain key, checked with its owner"
            )],
            CertProblem::RevokedCa { .. } | CertProblem::RevokedKey { .. } => vec![
                "the key was revoked on purpose: do not connect to this host until it is re-keyed \
                 and certified by a CA that is not revoked"
                    .into(),
            ],
            CertProblem::NotHost => vec![
                "the host serves a user certificate as `HostCertificate`: sign its host key with \
                 `ssh-keygen -h`"
                    .into(),
            ],
            CertProblem::Expired { .. } | CertProblem::NotYetValid { .. } => vec![
                resign(bare_host(addr)),
                "check that the clocks of this machine and the CA are right".into(),
            ],
            CertProblem::BadSignature => vec![
                "the certificate was not issued by that CA (or is corrupt): someone may be \
                 intercepting the connection"
                    .into(),
            ],
            CertProblem::WrongPrincipal { wanted, .. } | CertProblem::NoPrincipals { wanted } => {
                vec![
                    resign(wanted),
                    "or set the host's `address` in the inventory to one of the certificate's \
                     principals"
                        .into(),
                ]
            }
            CertProblem::CriticalOptions { .. } => vec![
                "host certificates take no critical options: re-sign the host key without `-O`"
                    .into(),
            ],
        }
    }
}

/// Connecting to one host failed.
#[derive(Debug, thiserror::Error)]
pub enum ConnectError {
    #[error("host `{host}` (`{addr}`): no SSH session within {}: {stage}", humantime::format_duration(*.after))]
    Timeout {
        host: String,
        addr: String,
        stage: &'static str,
        after: Duration,
    },
    #[error("host `{host}`: cannot connect to `{addr}`: {source}")]
    Tcp {
        host: String,
        addr: String,
        #[source]
        source: std::io::Error,
    },
    /// The address is not a name this machine can resolve.
    #[error("host `{host}`: cannot resolve the name `{name}`: {source}")]
    Lookup {
        host: String,
        name: String,
        #[source]
        source: std::io::Error,
        /// Which ssh_config was read and what it said, or `None` when none was read.
        ssh_config: Option<String>,
    },
    #[error(transparent)]
    HostKey(HostKeyError),
    #[error("host `{host}` (`{addr}`): SSH handshake failed: {source}")]
    Handshake {
        host: String,
        addr: String,
        #[source]
        source: russh::Error,
    },
    #[error("host `{host}` refused authentication as `{user}` (tried: {})", tried_list(.tried))]
    Auth {
        host: String,
        user: String,
        tried: Vec<String>,
    },
    #[error("cannot use key `{path}`: {reason}")]
    Key { path: PathBuf, reason: String },
    #[error("host `{host}`: {message}")]
    Config { host: String, message: String },
    #[error("host `{host}`: jump host `{jump}` failed: {reason}")]
    Jump {
        host: String,
        jump: String,
        reason: String,
    },
}

fn tried_list(tried: &[String]) -> String {
    if tried.is_empty() {
        "no key available".to_owned()
    } else {
        tried.join(", ")
    }
}

impl ConnectError {
    pub fn host_key(&self) -> Option<&HostKeyError> {
        match self {
            ConnectError::HostKey(e) => Some(e),
            _ => None,
        }
    }

    pub fn hints(&self) -> Vec<String> {
        match self {
            ConnectError::HostKey(e) => e.hints(),
            ConnectError::Timeout { .. } | ConnectError::Tcp { .. } => {
                vec![
                    "check that the host is up and that sshd listens on that address and port"
                        .into(),
                ]
            }
            ConnectError::Lookup {
                name, ssh_config, ..
            } => vec![
                format!(
                    "check the name, or define it in ssh_config: `Host {name}` with a `HostName` (and `Port`, `User`)"
                ),
                match ssh_config {
                    Some(note) => note.clone(),
                    None => "no ssh_config was read (`~/.ssh/config` does not exist, or `ssh_config = \"none\"` / `--ssh-config none`); name one with `--ssh-config FILE` or `ssh_config` in `[ssh]`".into(),
                },
            ],
            ConnectError::Auth { user, .. } => vec![format!(
                "check that one of the keys is in `~{user}/.ssh/authorized_keys` on the host, \
                 that `SSH_AUTH_SOCK` points at a running agent, or set `identity_files`"
            )],
            ConnectError::Key { .. } => vec![
                "set the passphrase in `FLEETUP_KEY_PASSPHRASE` or run on a terminal to be asked"
                    .into(),
            ],
            _ => Vec::new(),
        }
    }

    /// The operator-facing form, with the exit code for an unreachable host.
    pub fn to_failure(&self) -> Failure {
        let mut f = Failure::new(exit_code::UNREACHABLE, self.to_string());
        f.hints = self.hints();
        f
    }
}

/// Running one command failed before it could report an exit status. A command that ran and
/// exited non-zero is not an error: see [`super::ExitStatus`].
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error("host `{host}`: cannot open a channel: {source}")]
    Channel {
        host: String,
        #[source]
        source: russh::Error,
    },
    /// The SSH connection itself is gone (the node, its sshd or the link died).
    #[error("host `{host}`: the SSH connection is lost ({source}): the node is unreachable")]
    Disconnected {
        host: String,
        #[source]
        source: russh::Error,
    },
    #[error("host `{host}`: the server refused to run the command")]
    Refused { host: String },
    #[error(
        "host `{host}`: command did not finish within {}{}",
        humantime::format_duration(*.after),
        if *.ended_by_host {
            ": the host ended it (TERM, then KILL 3 s later)"
        } else {
            ": fleetup stopped waiting (the link may be down; a command that changes the host is ended there by the host's own deadline, a read-only probe is left to end)"
        }
    )]
    Timeout {
        host: String,
        after: Duration,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
        /// The host's own deadline ended the command and said so (`timeout` exited 124 or
        /// 137): nothing of it runs any more. Otherwise fleetup stopped waiting, the command
        /// may still be ending there.
        ended_by_host: bool,
    },
    #[error("host `{host}`: the command ended without an exit status ({reason})")]
    Lost {
        host: String,
        reason: String,
        stdout: Vec<u8>,
        stderr: Vec<u8>,
    },
    #[error("host `{host}`: `{name}` is not a valid environment variable name")]
    BadEnv { host: String, name: String },
    #[error("host `{host}`: cannot send to the command: {source}")]
    Send {
        host: String,
        #[source]
        source: russh::Error,
    },
    /// The transport cannot do this (a fake one in tests, say).
    #[error("host `{host}`: the transport cannot run {what}")]
    Unsupported { host: String, what: &'static str },
}

impl ExecError {
    /// A channel that did not open: on a lost connection, [`ExecError::Disconnected`].
    pub fn channel(host: String, source: russh::Error) -> ExecError {
        if connection_lost(&source) {
            ExecError::Disconnected { host, source }
        } else {
            ExecError::Channel { host, source }
        }
    }
}

/// The error says the SSH connection is gone, not that one channel was refused.
pub fn connection_lost(e: &russh::Error) -> bool {
    matches!(
        e,
        russh::Error::SendError
            | russh::Error::Disconnect
            | russh::Error::HUP
            | russh::Error::ConnectionTimeout
            | russh::Error::KeepaliveTimeout
            | russh::Error::InactivityTimeout
            | russh::Error::IO(_)
    )
}

/// Uploading a file failed; the remote temp file has been removed (best effort).
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error("cannot read `{path}`: {source}")]
    Local {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Exec(#[from] ExecError),
    #[error("host `{host}`: upload to `{remote}` failed (exit {status}): {stderr}")]
    Remote {
        host: String,
        remote: String,
        status: String,
        stderr: String,
    },
    #[error("host `{host}`: `{remote}` has sha256 `{got}` on the host, expected `{want}`")]
    Checksum {
        host: String,
        remote: String,
        want: String,
        got: String,
    },
}

/// An HTTP request through the node failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The node's sshd tried and could not connect: nothing listens there.
    #[error("host `{host}`: cannot reach `{target}` from the node: {reason}")]
    Connect {
        host: String,
        target: String,
        reason: String,
    },
    /// The node's sshd would not even try (`AllowTcpForwarding no`, `PermitOpen`, ...): nothing
    /// is known about the port, which must not be read as "nothing listens".
    #[error(
        "host `{host}`: cannot probe `{target}` from the node: its sshd refuses the forwarding channel ({reason})"
    )]
    Refused {
        host: String,
        target: String,
        reason: String,
    },
    /// The SSH connection itself is gone: nothing is known about the port.
    #[error("host `{host}`: cannot probe `{target}`: the SSH connection is lost ({reason})")]
    Disconnected {
        host: String,
        target: String,
        reason: String,
    },
    #[error("host `{host}`: no complete answer from `{target}` within {}", humantime::format_duration(*.after))]
    Timeout {
        host: String,
        target: String,
        after: Duration,
    },
    #[error("host `{host}`: bad HTTP answer from `{target}`: {reason}")]
    Protocol {
        host: String,
        target: String,
        reason: String,
    },
}

impl HttpError {
    /// What to do about [`HttpError::Refused`] when probing the API port.
    pub const FORWARDING_HINT: &'static str = "allow local port forwarding for fleetup's SSH user on the node (`AllowTcpForwarding local` in its sshd_config, or in a `Match User` block), then run again: fleetup checks through it that nothing answers on the API port";

    /// Why a direct-tcpip channel to `target` did not open: only sshd's own "connect failed"
    /// says the port is closed; any other refusal, or a lost connection, says nothing about it.
    pub fn channel_open(host: String, target: String, error: &russh::Error) -> HttpError {
        use russh::ChannelOpenFailure as F;
        match error {
            russh::Error::ChannelOpenFailure(F::ConnectFailed) => HttpError::Connect {
                host,
                target,
                reason: "connection refused".into(),
            },
            russh::Error::ChannelOpenFailure(F::AdministrativelyProhibited) => HttpError::Refused {
                host,
                target,
                reason: "administratively prohibited: port forwarding is not allowed".into(),
            },
            other if connection_lost(other) => HttpError::Disconnected {
                host,
                target,
                reason: other.to_string(),
            },
            other => HttpError::Refused {
                host,
                target,
                reason: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_failed_connect_means_the_port_is_closed() {
        use russh::ChannelOpenFailure as F;
        let map =
            |e: russh::Error| HttpError::channel_open("n".into(), "127.0.0.1:3068".into(), &e);
        let closed = map(russh::Error::ChannelOpenFailure(F::ConnectFailed));
        assert!(matches!(closed, HttpError::Connect { .. }), "{closed}");
        let prohibited = map(russh::Error::ChannelOpenFailure(
            F::AdministrativelyProhibited,
        ));
        assert!(
            matches!(prohibited, HttpError::Refused { .. }),
            "{prohibited}"
        );
        assert!(
            prohibited
                .to_string()
                .contains("port forwarding is not allowed"),
            "{prohibited}"
        );
        for e in [
            russh::Error::ChannelOpenFailure(F::ResourceShortage),
            russh::Error::ChannelOpenFailure(F::UnknownChannelType),
        ] {
            let mapped = map(e);
            assert!(matches!(mapped, HttpError::Refused { .. }), "{mapped}");
        }
        // A lost connection is neither a closed port nor a forwarding refusal.
        for e in [russh::Error::Disconnect, russh::Error::SendError] {
            let mapped = map(e);
            assert!(
                matches!(mapped, HttpError::Disconnected { .. })
                    && mapped.to_string().contains("the SSH connection is lost"),
                "{mapped}"
            );
        }
        let exec = ExecError::channel("n".into(), russh::Error::SendError);
        assert!(
            exec.to_string().contains("the node is unreachable"),
            "{exec}"
        );
        let refused = ExecError::channel("n".into(), russh::Error::Inconsistent);
        assert!(matches!(refused, ExecError::Channel { .. }), "{refused}");
    }
}
