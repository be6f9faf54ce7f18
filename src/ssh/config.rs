//! The operator's OpenSSH client config (`~/.ssh/config`, or the file named by the inventory's
//! `ssh_config` or `--ssh-config`), read with the `ssh2-config` crate and asked, per name, what
//! OpenSSH would use: first match wins, `Host` patterns with `*`, `?` and `!negation`.
//! The inventory decides what this feeds and where it ranks; this room only answers questions.

use std::collections::HashMap;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ssh2_config::{ParseRule, SshConfig};

/// A parsed ssh_config file.
#[derive(Debug, Clone)]
pub struct SshConfigFile {
    path: PathBuf,
    config: SshConfig,
    home: Option<PathBuf>,
    /// Lines of `Match` blocks, which are skipped (the crate cannot evaluate them).
    match_lines: Vec<usize>,
}

/// What the file says about one name; `None`/empty where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostConfig {
    /// The `Host` patterns of the blocks that matched, in file order (the leading options
    /// before any `Host` are not listed).
    pub matched: Vec<String>,
    pub host_name: Option<String>,
    pub user: Option<String>,
    pub port: Option<u16>,
    /// `~` expanded; `%` tokens left for [`expand_tokens`] once user and host are known.
    pub identity_files: Vec<PathBuf>,
    pub identities_only: Option<bool>,
    /// Each hop as written; `Some(empty)` is `ProxyJump none`.
    pub proxy_jump: Option<Vec<String>>,
    pub user_known_hosts: Vec<PathBuf>,
    pub global_known_hosts: Vec<PathBuf>,
    pub certificate_file: Option<PathBuf>,
    pub connect_timeout: Option<Duration>,
    pub server_alive_interval: Option<Duration>,
    /// As written (`yes`, `no`, `accept-new`, `ask`, `off`); see [`StrictHostKeyChecking`].
    pub strict_host_key_checking: Option<String>,
}

impl HostConfig {
    /// Whether a `Host` block (not only the leading options) matched.
    pub fn any_block_matched(&self) -> bool {
        !self.matched.is_empty()
    }
}

/// Why an ssh_config file could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read ssh_config `{}`: {reason}", path.display())]
pub struct SshConfigError {
    pub path: PathBuf,
    pub reason: String,
}

impl SshConfigFile {
    /// Reads and parses `path`; `home` expands `~` (and relative `Include`s).
    pub fn load(path: &Path, home: Option<&Path>) -> Result<SshConfigFile, SshConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| SshConfigError {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        SshConfigFile::parse(&text, path, home)
    }

    /// Parses `text` as the file `path` (used in messages).
    pub fn parse(
        text: &str,
        path: &Path,
        home: Option<&Path>,
    ) -> Result<SshConfigFile, SshConfigError> {
        let (text, match_lines) = disable_match_blocks(text);
        let mut parser = SshConfig::default();
        if let Some(home) = home {
            parser = parser.home_dir(home);
        }
        let rules = ParseRule::ALLOW_UNKNOWN_FIELDS | ParseRule::ALLOW_UNSUPPORTED_FIELDS;
        let config = parser
            .parse(&mut BufReader::new(text.as_bytes()), rules)
            .map_err(|e| SshConfigError {
                path: path.to_path_buf(),
                reason: e.to_string(),
            })?;
        Ok(SshConfigFile {
            path: path.to_path_buf(),
            config,
            home: home.map(Path::to_path_buf),
            match_lines,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Lines where a `Match` block starts: fleetup skips those blocks.
    pub fn match_lines(&self) -> &[usize] {
        &self.match_lines
    }

    /// What OpenSSH would use for `name` (the name given on its command line).
    pub fn query(&self, name: &str) -> HostConfig {
        let p = self.config.query(name);
        let matched = self
            .config
            .get_hosts()
            .iter()
            .skip(1) // the leading options, before any `Host`
            .filter(|h| h.intersects(name))
            .map(|h| {
                h.pattern
                    .iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(" ")
            })
            .filter(|pattern| pattern != DISABLED_MATCH)
            .collect();
        let raw = |key: &str| raw_field(&p.unsupported_fields, &p.ignored_fields, key);
        let paths = |key: &str| -> Vec<PathBuf> {
            raw(key)
                .map(|v| {
                    v.iter()
                        .filter(|f| f.as_str() != "none")
                        .map(|f| expand_tilde(f, self.home.as_deref()))
                        .collect()
                })
                .unwrap_or_default()
        };
        let proxy_jump = p.proxy_jump.as_ref().map(|hops| {
            let hops: Vec<String> = hops
                .iter()
                .map(|h| h.trim().to_owned())
                .filter(|h| !h.is_empty())
                .collect();
            if hops.len() == 1 && hops[0].eq_ignore_ascii_case("none") {
                Vec::new()
            } else {
                hops
            }
        });
        HostConfig {
            matched,
            host_name: p.host_name.clone(),
            user: p.user.clone(),
            port: p.port,
            identity_files: p.identity_file.clone().unwrap_or_default(),
            identities_only: raw("identitiesonly").and_then(|v| yes_no(v.first()?)),
            proxy_jump,
            user_known_hosts: paths("userknownhostsfile"),
            global_known_hosts: paths("globalknownhostsfile"),
            certificate_file: p.certificate_file.clone(),
            connect_timeout: p.connect_timeout,
            server_alive_interval: p.server_alive_interval.filter(|d| !d.is_zero()),
            strict_host_key_checking: raw("stricthostkeychecking")
                .and_then(|v| v.first().map(|s| s.to_ascii_lowercase())),
        }
    }
}

fn raw_field<'a>(
    unsupported: &'a HashMap<String, Vec<String>>,
    ignored: &'a HashMap<String, Vec<String>>,
    key: &str,
) -> Option<&'a Vec<String>> {
    unsupported.get(key).or_else(|| ignored.get(key))
}

fn yes_no(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "yes" | "true" => Some(true),
        "no" | "false" => Some(false),
        _ => None,
    }
}

fn expand_tilde(s: &str, home: Option<&Path>) -> PathBuf {
    match (s.strip_prefix("~/"), home) {
        (Some(rest), Some(home)) => home.join(rest),
        _ if s == "~" => home.map_or_else(|| PathBuf::from(s), Path::to_path_buf),
        _ => PathBuf::from(s),
    }
}

/// A `Host` line that never matches, put in place of each `Match` line so its body applies to
/// no host (rather than being merged into the block above, as the crate would do).
const DISABLED_MATCH: &str = "!*";

fn disable_match_blocks(text: &str) -> (String, Vec<usize>) {
    let mut lines = Vec::new();
    let mut out = String::with_capacity(text.len());
    for (i, line) in text.lines().enumerate() {
        let keyword = line
            .trim_start()
            .split(|c: char| c.is_whitespace() || c == '=')
            .next()
            .unwrap_or("");
        if keyword.eq_ignore_ascii_case("match") {
            lines.push(i + 1);
            out.push_str("Host ");
            out.push_str(DISABLED_MATCH);
        } else {
            out.push_str(line);
        }
        out.push('\n');
    }
    (out, lines)
}

/// The `%` tokens OpenSSH expands in `IdentityFile`, `CertificateFile` and known_hosts paths:
/// `%h` host name, `%n` the name as given, `%p` port, `%r` remote user, `%u` local user,
/// `%d` local home, `%%` a percent sign. Unknown tokens are left as written.
#[derive(Debug, Clone, Copy)]
pub struct Tokens<'a> {
    pub host_name: &'a str,
    pub alias: &'a str,
    pub port: u16,
    pub remote_user: &'a str,
    pub local_user: &'a str,
    pub home: Option<&'a Path>,
}

pub fn expand_tokens(path: &Path, t: &Tokens<'_>) -> PathBuf {
    let s = path.to_string_lossy();
    if !s.contains('%') {
        return path.to_path_buf();
    }
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('%') => out.push('%'),
            Some('h') => out.push_str(t.host_name),
            Some('n') => out.push_str(t.alias),
            Some('p') => out.push_str(&t.port.to_string()),
            Some('r') => out.push_str(t.remote_user),
            Some('u') => out.push_str(t.local_user),
            Some('d') => out.push_str(&t.home.map(|h| h.to_string_lossy()).unwrap_or_default()),
            Some(other) => {
                out.push('%');
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    PathBuf::from(out)
}

/// What fleetup makes of `StrictHostKeyChecking`: it can make a host stricter (`yes` refuses
/// unknown keys even with `--accept-new-host-keys`), never weaker (`no`, `off`, `accept-new`
/// and `ask` leave fleetup's own policy, which is strict unless the operator asked for more).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StrictHostKeyChecking {
    /// `yes`: refuse every key not already known.
    Always,
    /// Anything else, or not set: fleetup's own policy applies.
    FleetupPolicy,
}

impl StrictHostKeyChecking {
    pub fn from_config(value: Option<&str>) -> Self {
        match value.map(str::to_ascii_lowercase).as_deref() {
            Some("yes" | "true") => StrictHostKeyChecking::Always,
            _ => StrictHostKeyChecking::FleetupPolicy,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(text: &str) -> SshConfigFile {
        SshConfigFile::parse(
            text,
            Path::new("/home/op/.ssh/config"),
            Some(Path::new("/home/op")),
        )
        .unwrap()
    }

    #[test]
    fn first_match_wins_across_blocks() {
        let f = file(
            "Host lab3\n  HostName 127.0.0.1\n  Port 2201\n\
             Host lab*\n  User labuser\n  Port 9999\n\
             Host *\n  User fallback\n  ConnectTimeout 7\n",
        );
        let q = f.query("lab3");
        assert_eq!(q.host_name.as_deref(), Some("127.0.0.1"));
        assert_eq!(q.port, Some(2201), "the first block's Port wins");
        assert_eq!(
            q.user.as_deref(),
            Some("labuser"),
            "then the next block fills the rest"
        );
        assert_eq!(q.connect_timeout, Some(Duration::from_secs(7)));
        assert_eq!(q.matched, ["lab3", "lab*", "*"]);
        let other = f.query("db1");
        assert_eq!(other.user.as_deref(), Some("fallback"));
        assert_eq!(other.host_name, None);
    }

    #[test]
    fn options_before_any_host_beat_later_blocks() {
        let f = file("User early\nHost web\n  User late\n  Port 2\n");
        let q = f.query("web");
        assert_eq!(q.user.as_deref(), Some("early"));
        assert_eq!(q.port, Some(2));
    }

    #[test]
    fn negated_patterns_exclude_a_host_and_globs_match() {
        let f = file(
            "Host web-* !web-legacy\n  User deploy\n\
             Host web-?\n  Port 2222\n\
             Host *\n  User root\n",
        );
        assert_eq!(f.query("web-1").user.as_deref(), Some("deploy"));
        assert_eq!(f.query("web-1").port, Some(2222));
        assert_eq!(f.query("web-12").port, None, "`?` is one character");
        let legacy = f.query("web-legacy");
        assert_eq!(
            legacy.user.as_deref(),
            Some("root"),
            "negation skips the block"
        );
        assert_eq!(legacy.matched, ["*"]);
    }

    #[test]
    fn identity_files_accumulate_and_expand_tilde_and_tokens() {
        let f = file(
            "Host lab3\n  IdentityFile ~/.ssh/lab_%h_%r\n  IdentitiesOnly yes\n\
             Host *\n  IdentityFile ~/.ssh/id_ed25519\n  UserKnownHostsFile ~/.ssh/kh_%h /x/two\n\
             \x20 GlobalKnownHostsFile /etc/ssh/site_known_hosts\n  CertificateFile ~/.ssh/id-cert.pub\n",
        );
        let q = f.query("lab3");
        assert_eq!(
            q.identity_files,
            [
                PathBuf::from("/home/op/.ssh/lab_%h_%r"),
                PathBuf::from("/home/op/.ssh/id_ed25519")
            ]
        );
        assert_eq!(q.identities_only, Some(true));
        assert_eq!(
            q.user_known_hosts,
            [
                PathBuf::from("/home/op/.ssh/kh_%h"),
                PathBuf::from("/x/two")
            ]
        );
        assert_eq!(
            q.global_known_hosts,
            [PathBuf::from("/etc/ssh/site_known_hosts")]
        );
        assert_eq!(
            q.certificate_file,
            Some(PathBuf::from("/home/op/.ssh/id-cert.pub"))
        );
        let t = Tokens {
            host_name: "10.0.0.3",
            alias: "lab3",
            port: 22,
            remote_user: "deploy",
            local_user: "op",
            home: Some(Path::new("/home/op")),
        };
        assert_eq!(
            expand_tokens(&q.identity_files[0], &t),
            PathBuf::from("/home/op/.ssh/lab_10.0.0.3_deploy")
        );
        assert_eq!(
            expand_tokens(Path::new("%d/%u/%n:%p/100%%/%z"), &t),
            PathBuf::from("/home/op/op/lab3:22/100%/%z")
        );
    }

    #[test]
    fn proxy_jump_is_a_chain_and_none_means_direct() {
        let f = file(
            "Host inner\n  ProxyJump ops@bastion-1:2200,bastion-2\n\
             Host direct\n  ProxyJump none\n",
        );
        assert_eq!(
            f.query("inner").proxy_jump,
            Some(vec![
                "ops@bastion-1:2200".to_owned(),
                "bastion-2".to_owned()
            ])
        );
        assert_eq!(f.query("direct").proxy_jump, Some(Vec::new()));
        assert_eq!(f.query("other").proxy_jump, None);
    }

    #[test]
    fn match_blocks_are_skipped_not_merged_into_the_block_above() {
        let f = file("Host web\n  Port 1\nMatch host web\n  User dbadmin\nHost *\n  User deploy\n");
        assert_eq!(f.match_lines(), [3]);
        let q = f.query("web");
        assert_eq!(q.user.as_deref(), Some("deploy"));
        assert_eq!(q.matched, ["web", "*"]);
    }

    #[test]
    fn strict_host_key_checking_never_weakens() {
        let f = file(
            "Host strict\n  StrictHostKeyChecking yes\nHost lax\n  StrictHostKeyChecking no\n\
             Host new\n  StrictHostKeyChecking accept-new\n",
        );
        let policy = |h: &str| {
            StrictHostKeyChecking::from_config(f.query(h).strict_host_key_checking.as_deref())
        };
        assert_eq!(policy("strict"), StrictHostKeyChecking::Always);
        assert_eq!(policy("lax"), StrictHostKeyChecking::FleetupPolicy);
        assert_eq!(policy("new"), StrictHostKeyChecking::FleetupPolicy);
        assert_eq!(policy("unset"), StrictHostKeyChecking::FleetupPolicy);
    }

    #[test]
    fn a_broken_file_names_itself() {
        let e = SshConfigFile::parse("Host a\n  Port notaport\n", Path::new("/x/cfg"), None)
            .unwrap_err();
        assert_eq!(e.path, PathBuf::from("/x/cfg"));
        assert!(
            e.to_string().starts_with("cannot read ssh_config `/x/cfg`"),
            "{e}"
        );
    }
}
