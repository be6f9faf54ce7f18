//! Validated values of the inventory: each newtype checks its rules while TOML is deserialized,
//! so a bad value is reported at its own line and column. The same parsers serve the `FLEETUP_*`
//! variables and the command-line flags.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize};

/// Separates the message from its hints inside a serde error string: serde errors carry one
/// string only, and the diagnostics code splits it back into message and hints.
pub(crate) const HINT_MARK: &str = "\nhint: ";

/// Why a value was refused, and what to write instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub message: String,
    pub hints: Vec<String>,
}

impl Invalid {
    fn new(message: impl Into<String>) -> Self {
        Invalid {
            message: message.into(),
            hints: Vec::new(),
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }

    /// The message and hints joined with [`HINT_MARK`], for a serde error.
    fn to_serde_message(&self) -> String {
        let mut out = self.message.clone();
        for hint in &self.hints {
            out.push_str(HINT_MARK);
            out.push_str(hint);
        }
        out
    }
}

impl fmt::Display for Invalid {
    /// One line, as clap prints a flag's value error: `message (hint; hint)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        if !self.hints.is_empty() {
            write!(f, " ({})", self.hints.join("; "))?;
        }
        Ok(())
    }
}

impl std::error::Error for Invalid {}

/// Deserialize a string and check it with `parse`; anything but a string is a type error that
/// names `expecting`.
fn de_checked_str<'de, D, T>(
    d: D,
    expecting: &'static str,
    parse: fn(&str) -> Result<T, Invalid>,
) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
{
    struct StrVisitor<T> {
        expecting: &'static str,
        parse: fn(&str) -> Result<T, Invalid>,
    }
    impl<T> Visitor<'_> for StrVisitor<T> {
        type Value = T;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str(self.expecting)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.parse)(v).map_err(|e| E::custom(e.to_serde_message()))
        }
    }
    d.deserialize_str(StrVisitor { expecting, parse })
}

/// Implements `Deserialize` (string checked by `$parse`), `FromStr`, `Display` and `Serialize`
/// for a newtype over `String`.
macro_rules! string_newtype {
    ($ty:ident, $expecting:literal, $parse:path) => {
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                de_checked_str(d, $expecting, $parse)
            }
        }
        impl FromStr for $ty {
            type Err = Invalid;
            fn from_str(s: &str) -> Result<Self, Invalid> {
                $parse(s)
            }
        }
        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }
        impl $ty {
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
    };
}

/// The first character of `s` outside `allowed`, for messages such as "`_` is not allowed".
fn first_disallowed(s: &str, allowed: impl Fn(char) -> bool) -> Option<char> {
    s.chars().find(|c| !allowed(*c))
}

fn describe_char(c: char) -> String {
    if c.is_whitespace() || c.is_control() {
        format!("{:?}", c)
    } else {
        format!("`{c}`")
    }
}

/// A host's unique name: one RFC 1123 label (letters, digits, `-`; 1 to 63 characters; no `-`
/// at either end). Compared ignoring ASCII case, like DNS names.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HostName(String);
string_newtype!(
    HostName,
    "a host name such as \"ledger-1\"",
    HostName::parse
);

const HOST_NAME_RULES: &str =
    "host names follow RFC 1123: letters, digits and `-`, 1 to 63 characters, no `-` at either end";

impl HostName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_label(s, "host name").map_err(|e| e.hint(HOST_NAME_RULES))?;
        Ok(HostName(s.to_string()))
    }
}

/// RFC 1123 label rules; `what` names the value in the message.
fn check_label(s: &str, what: &str) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(Invalid::new(format!("the {what} is empty")));
    }
    if let Some(c) = first_disallowed(s, |c| c.is_ascii_alphanumeric() || c == '-') {
        return Err(Invalid::new(format!(
            "`{s}` is not a valid {what}: {} is not allowed",
            describe_char(c)
        )));
    }
    if s.len() > 63 {
        return Err(Invalid::new(format!(
            "`{s}` is not a valid {what}: {} characters, at most 63 are allowed",
            s.len()
        )));
    }
    if s.starts_with('-') || s.ends_with('-') {
        return Err(Invalid::new(format!(
            "`{s}` is not a valid {what}: it starts or ends with `-`"
        )));
    }
    Ok(())
}

/// Where to connect: a DNS name, an IPv4 address or an IPv6 address (without brackets).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Address(String);
string_newtype!(Address, "a DNS name or an IP address", Address::parse);

const ADDRESS_RULES: &str = "write a DNS name (`ledger-1.example.com`), an IPv4 address \
     (`10.0.0.11`) or an IPv6 address (`fd00::11`); the SSH port goes in `port`";

impl Address {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.parse::<IpAddr>().is_ok() {
            return Ok(Address(s.to_string()));
        }
        if let Some(inner) = s.strip_prefix('[').and_then(|r| r.strip_suffix(']'))
            && inner.parse::<Ipv6Addr>().is_ok()
        {
            return Err(Invalid::new(format!(
                "`{s}`: IPv6 addresses are written without brackets"
            ))
            .hint(format!("write `{inner}`")));
        }
        if let Some((host, port)) = s.rsplit_once(':')
            && !host.contains(':')
            && port.parse::<u16>().is_ok()
        {
            return Err(
                Invalid::new(format!("`{s}` is not an address: it includes a port"))
                    .hint(format!("write `address = \"{host}\"` and `port = {port}`")),
            );
        }
        check_dns_name(s).map_err(|e| e.hint(ADDRESS_RULES))?;
        Ok(Address(s.to_string()))
    }

    /// The address in canonical form for comparisons: IPs normalized, names lowercased without
    /// a trailing dot.
    pub fn canonical(&self) -> String {
        match self.0.parse::<IpAddr>() {
            Ok(ip) => ip.to_string(),
            Err(_) => self.0.trim_end_matches('.').to_ascii_lowercase(),
        }
    }

    /// `address:port`, with brackets around IPv6 addresses.
    pub fn with_port(&self, port: u16) -> String {
        if self.0.contains(':') {
            format!("[{}]:{port}", self.0)
        } else {
            format!("{}:{port}", self.0)
        }
    }
}

fn check_dns_name(s: &str) -> Result<(), Invalid> {
    let bare = s.strip_suffix('.').unwrap_or(s);
    if bare.is_empty() {
        return Err(Invalid::new("the address is empty"));
    }
    if bare.len() > 253 {
        return Err(Invalid::new(format!(
            "`{s}` is not a valid DNS name: {} characters, at most 253 are allowed",
            bare.len()
        )));
    }
    for label in bare.split('.') {
        if label.is_empty() {
            return Err(Invalid::new(format!(
                "`{s}` is not a valid DNS name: empty label"
            )));
        }
        check_label(label, "DNS label").map_err(|e| Invalid {
            message: format!("`{s}` is not a valid address: {}", e.message),
            hints: e.hints,
        })?;
    }
    // RFC 3696: a top-level label is never all digits, so `10.0.0.256` is a bad IPv4 address
    // rather than a DNS name.
    if bare
        .rsplit('.')
        .next()
        .is_some_and(|tld| tld.chars().all(|c| c.is_ascii_digit()))
    {
        return Err(Invalid::new(format!("`{s}` is not a valid IPv4 address")));
    }
    Ok(())
}

/// A group name: letters, digits, `_` and `-`, 1 to 63 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GroupName(String);
string_newtype!(GroupName, "a group name such as \"eu\"", GroupName::parse);

impl GroupName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_word(s, "group name").map_err(|e| {
            e.hint("group names use letters, digits, `_` and `-`, 1 to 63 characters")
        })?;
        Ok(GroupName(s.to_string()))
    }
}

/// The name of a storage several nodes share (`storage = "main-db"`): nodes naming the same
/// storage are one database, whatever their connection strings say. Letters, digits, `_`, `-`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StorageName(String);
string_newtype!(
    StorageName,
    "a storage name such as \"main-db\"",
    StorageName::parse
);

impl StorageName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_word(s, "storage name").map_err(|e| {
            e.hint("storage names use letters, digits, `_` and `-`, 1 to 63 characters")
        })?;
        Ok(StorageName(s.to_string()))
    }
}

/// Letters, digits, `_`, `-`; 1 to 63 characters.
fn check_word(s: &str, what: &str) -> Result<(), Invalid> {
    if s.is_empty() {
        return Err(Invalid::new(format!("the {what} is empty")));
    }
    if let Some(c) = first_disallowed(s, |c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
        return Err(Invalid::new(format!(
            "`{s}` is not a valid {what}: {} is not allowed",
            describe_char(c)
        )));
    }
    if s.len() > 63 {
        return Err(Invalid::new(format!(
            "`{s}` is not a valid {what}: {} characters, at most 63 are allowed",
            s.len()
        )));
    }
    Ok(())
}

/// A ledger name as `numary storage upgrade NAME` takes it: letters, digits, `_`, `-`, 1 to 63
/// characters, and not the registry's reserved `_system`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LedgerName(String);
string_newtype!(
    LedgerName,
    "a ledger name such as \"payments\"",
    LedgerName::parse
);

impl LedgerName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        check_word(s, "ledger name").map_err(|e| {
            e.hint("ledger names use letters, digits, `_` and `-`, 1 to 63 characters")
        })?;
        if s == "_system" {
            return Err(
                Invalid::new("`_system` is not a ledger: it is the ledger registry")
                    .hint("list only the ledgers `numary storage list` prints"),
            );
        }
        Ok(LedgerName(s.to_string()))
    }
}

/// A non-empty list of distinct ledger names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LedgerList(pub Vec<LedgerName>);

impl<'de> Deserialize<'de> for LedgerList {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names = Vec::<LedgerName>::deserialize(d)?;
        if names.is_empty() {
            return Err(de::Error::custom(
                Invalid::new("`ledgers` is empty")
                    .hint(
                        "list the ledgers each node must hold, or remove the key to skip the check",
                    )
                    .to_serde_message(),
            ));
        }
        for (i, name) in names.iter().enumerate() {
            if names[..i].contains(name) {
                return Err(de::Error::custom(
                    Invalid::new(format!("ledger `{name}` is listed twice"))
                        .hint("list each ledger once")
                        .to_serde_message(),
                ));
            }
        }
        Ok(LedgerList(names))
    }
}

/// An SSH login name: letters, digits, `_`, `-`, `.`; 1 to 64 characters; no `-` first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserName(String);
string_newtype!(UserName, "a user name such as \"deploy\"", UserName::parse);

impl UserName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let rules = "user names use letters, digits, `_`, `-` and `.`, 1 to 64 characters";
        if s.is_empty() {
            return Err(Invalid::new("the user name is empty").hint(rules));
        }
        if let Some(c) = first_disallowed(s, |c| {
            c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.')
        }) {
            let invalid = Invalid::new(format!(
                "`{s}` is not a valid user name: {} is not allowed",
                describe_char(c)
            ));
            return Err(if c == '@' {
                invalid.hint("write only the user; the host goes in `address`")
            } else {
                invalid.hint(rules)
            });
        }
        if s.len() > 64 || s.starts_with('-') {
            return Err(Invalid::new(format!("`{s}` is not a valid user name")).hint(rules));
        }
        Ok(UserName(s.to_string()))
    }
}

/// A TCP port, 1 to 65535.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Port(pub u16);

impl Port {
    fn check(n: i128) -> Result<Port, Invalid> {
        if n == 0 {
            return Err(
                Invalid::new("port 0 is not valid").hint("use a port from 1 to 65535, such as 22")
            );
        }
        u16::try_from(n).map(Port).map_err(|_| {
            Invalid::new(format!("port {n} is out of range"))
                .hint("use a port from 1 to 65535, such as 22")
        })
    }

    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s.trim().parse::<i128>() {
            Ok(n) => Port::check(n),
            Err(_) => Err(Invalid::new(format!("`{s}` is not a port number"))
                .hint("use a port from 1 to 65535, such as 22")),
        }
    }
}

impl<'de> Deserialize<'de> for Port {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct PortVisitor;
        impl Visitor<'_> for PortVisitor {
            type Value = Port;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number such as 22")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Port, E> {
                Port::check(i128::from(v)).map_err(|e| E::custom(e.to_serde_message()))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Port, E> {
                Port::check(i128::from(v)).map_err(|e| E::custom(e.to_serde_message()))
            }
        }
        d.deserialize_u16(PortVisitor)
    }
}

/// A duration written the humantime way (`10s`, `5m`, `1h 30m`); never zero.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HumanDuration(pub Duration);

impl HumanDuration {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let hint = "write a number with a unit, such as `10s`, `5m` or `1h 30m`";
        match humantime::parse_duration(s.trim()) {
            Ok(d) if d.is_zero() => Err(Invalid::new(format!(
                "`{s}`: a duration of zero is not allowed"
            ))
            .hint("use a positive duration such as `10s`")),
            Ok(d) => Ok(HumanDuration(d)),
            Err(e) => Err(Invalid::new(format!("`{s}` is not a duration: {e}")).hint(hint)),
        }
    }
}

impl<'de> Deserialize<'de> for HumanDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_checked_str(d, "a duration string such as \"10s\"", HumanDuration::parse)
    }
}

/// A duration that may be zero (`"0s"`): a time to wait that is off by default
/// (`min_healthy_time`), as opposed to a [`HumanDuration`] bound, which zero would make useless.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurationOrZero(pub Duration);

impl DurationOrZero {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match humantime::parse_duration(s.trim()) {
            Ok(d) => Ok(DurationOrZero(d)),
            Err(e) => Err(Invalid::new(format!("`{s}` is not a duration: {e}"))
                .hint("write a number with a unit, such as `0s`, `30s` or `5m`")),
        }
    }
}

impl<'de> Deserialize<'de> for DurationOrZero {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_checked_str(
            d,
            "a duration string such as \"30s\"",
            DurationOrZero::parse,
        )
    }
}

/// An absolute path on the node. `~` is refused: it would expand to a different home per user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePath(String);
string_newtype!(
    RemotePath,
    "an absolute path such as \"/usr/local/bin/numary\"",
    RemotePath::parse
);

impl RemotePath {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.starts_with('~') {
            return Err(Invalid::new(format!("`{s}` is not an absolute path")).hint(
                "`~` is not expanded on the node; write the full path, such as `/home/numary/...`",
            ));
        }
        if !s.starts_with('/') {
            return Err(Invalid::new(format!("`{s}` is not an absolute path"))
                .hint("paths on the node must be absolute, such as `/usr/local/bin/numary`"));
        }
        if let Some(c) = s.chars().find(|c| c.is_control()) {
            return Err(Invalid::new(format!(
                "`{}` contains the control character {:?}",
                s.escape_debug(),
                c
            ))
            .hint("remote paths are single lines of printable characters"));
        }
        if s.split('/').any(|part| part == "..") {
            return Err(Invalid::new(format!("`{s}` contains a `..` component"))
                .hint("write the path without `..`"));
        }
        Ok(RemotePath(s.to_string()))
    }
}

/// A path on the operator's machine, as written; resolved (`~`, relative) by [`LocalPath::resolve`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalPath(String);
string_newtype!(LocalPath, "a file path", LocalPath::parse);

impl LocalPath {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.is_empty() {
            return Err(Invalid::new("the path is empty")
                .hint("write a file path, such as `~/.ssh/id_ed25519`"));
        }
        if s.contains('\0') {
            return Err(Invalid::new("the path contains a NUL character").hint("write a file path"));
        }
        if s.starts_with('~') && !(s == "~" || s.starts_with("~/")) {
            return Err(Invalid::new(format!("`{s}`: `~user` is not supported"))
                .hint("write `~/...` for your own home, or the full path"));
        }
        Ok(LocalPath(s.to_string()))
    }

    /// Expand a leading `~` to `home` and make relative paths absolute against `base`.
    pub fn resolve(
        &self,
        home: Option<&std::path::Path>,
        base: &std::path::Path,
    ) -> Result<PathBuf, Invalid> {
        expand_local(&self.0, home, base)
    }
}

/// A local path as the operator wrote it: a leading `~` becomes `home`, a relative path goes
/// under `base` (expected absolute).
pub fn expand_local(
    s: &str,
    home: Option<&std::path::Path>,
    base: &std::path::Path,
) -> Result<PathBuf, Invalid> {
    if s == "~" || s.starts_with("~/") {
        let home = home.ok_or_else(|| {
            Invalid::new(format!("cannot expand `~` in `{s}`: `HOME` is not set"))
                .hint("write the full path")
        })?;
        return Ok(match s.strip_prefix("~/") {
            Some(rest) => home.join(rest),
            None => home.to_path_buf(),
        });
    }
    Ok(base.join(s))
}

/// A ProxyJump chain: `[user@]host[:port]`, or several separated by commas (the first hop
/// first, as OpenSSH's `ProxyJump a,b`), or `none` to connect directly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JumpHost {
    /// Connect to the host directly (`none`), overriding a jump host set lower down.
    Direct,
    /// Go through these bastions, written `[user@]host[:port][,[user@]host[:port]...]`.
    Via(String),
}

impl JumpHost {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let hint = "write `[user@]host[:port]`, such as `ops@bastion.example.com:2222`, several separated by commas (first hop first), or `none`";
        if s == "none" {
            return Ok(JumpHost::Direct);
        }
        for hop in s.split(',') {
            let wrap = |e: Invalid| Invalid {
                message: format!("jump host `{s}`: {}", e.message),
                hints: vec![hint.to_string()],
            };
            if hop.trim().is_empty() {
                return Err(wrap(Invalid::new("a hop of the chain is empty")));
            }
            JumpHost::check_hop(hop.trim()).map_err(wrap)?;
        }
        Ok(JumpHost::Via(s.to_string()))
    }

    fn check_hop(hop: &str) -> Result<(), Invalid> {
        let (user, rest) = match hop.split_once('@') {
            Some((user, rest)) => (Some(user), rest),
            None => (None, hop),
        };
        if let Some(user) = user {
            UserName::parse(user)?;
        }
        let (host, port) = split_host_port(rest)?;
        if let Some(port) = port {
            Port::parse(port)?;
        }
        Address::parse(host)?;
        Ok(())
    }

    /// The bastions as written, or `None` for a direct connection.
    pub fn into_option(self) -> Option<String> {
        match self {
            JumpHost::Direct => None,
            JumpHost::Via(s) => Some(s),
        }
    }
}

impl<'de> Deserialize<'de> for JumpHost {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        de_checked_str(
            d,
            "a jump host such as \"ops@bastion:22\", or \"none\"",
            JumpHost::parse,
        )
    }
}

impl FromStr for JumpHost {
    type Err = Invalid;
    fn from_str(s: &str) -> Result<Self, Invalid> {
        JumpHost::parse(s)
    }
}

/// `host[:port]` or `[ipv6][:port]` → (host without brackets, port text).
pub(crate) fn split_host_port(s: &str) -> Result<(&str, Option<&str>), Invalid> {
    if let Some(rest) = s.strip_prefix('[') {
        let (inner, after) = rest
            .split_once(']')
            .ok_or_else(|| Invalid::new(format!("`{s}`: `[` without `]`")))?;
        return match after {
            "" => Ok((inner, None)),
            _ => match after.strip_prefix(':') {
                Some(port) => Ok((inner, Some(port))),
                None => Err(Invalid::new(format!("`{s}`: expected `:PORT` after `]`"))),
            },
        };
    }
    if s.matches(':').count() > 1 {
        return Err(Invalid::new(format!(
            "`{s}`: write IPv6 addresses in brackets, such as `[fd00::1]:22`"
        )));
    }
    Ok(match s.split_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (s, None),
    })
}

/// `host:port` of the ledger API as seen from the node (`127.0.0.1:3068`, `[::1]:3068`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiAddr(String);
string_newtype!(
    ApiAddr,
    "an address such as \"127.0.0.1:3068\"",
    ApiAddr::parse
);

impl ApiAddr {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let hint =
            "write `host:port` as seen from the node, such as `127.0.0.1:3068` or `[::1]:3068`";
        let wrap = |e: Invalid| Invalid {
            message: e.message,
            hints: vec![hint.to_string()],
        };
        let (host, port) = split_host_port(s).map_err(wrap)?;
        let port = port.ok_or_else(|| Invalid::new(format!("`{s}` has no port")).hint(hint))?;
        Port::parse(port).map_err(|e| wrap(Invalid::new(format!("`{s}`: {}", e.message))))?;
        if host.parse::<Ipv4Addr>().is_err() && host.parse::<Ipv6Addr>().is_err() {
            check_dns_name(host).map_err(wrap)?;
        }
        Ok(ApiAddr(s.to_string()))
    }
}

/// A systemd unit name such as `numary.service` or `numary@eu.service`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnitName(String);
string_newtype!(
    UnitName,
    "a systemd unit name such as \"numary.service\"",
    UnitName::parse
);

impl UnitName {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let hint = "unit names use letters, digits and `:-_.@\\`, such as `numary.service`";
        if s.is_empty() {
            return Err(Invalid::new("the unit name is empty").hint(hint));
        }
        if let Some(c) = first_disallowed(s, |c| {
            c.is_ascii_alphanumeric() || matches!(c, ':' | '-' | '_' | '.' | '@' | '\\')
        }) {
            return Err(Invalid::new(format!(
                "`{s}` is not a valid unit name: {} is not allowed",
                describe_char(c)
            ))
            .hint(hint));
        }
        Ok(UnitName(s.to_string()))
    }
}

/// A shell command run on the node (service start/stop/status): one non-empty line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShellCommand(String);
string_newtype!(ShellCommand, "a shell command", ShellCommand::parse);

impl ShellCommand {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.trim().is_empty() {
            return Err(Invalid::new("the command is empty")
                .hint("write the shell command to run on the node"));
        }
        if s.contains('\0') {
            return Err(Invalid::new("the command contains a NUL character")
                .hint("write a plain shell command"));
        }
        Ok(ShellCommand(s.to_string()))
    }
}

/// A SHA-256 digest, 64 hexadecimal digits (stored lowercase).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sha256Hex(String);
string_newtype!(
    Sha256Hex,
    "a SHA-256 digest (64 hexadecimal digits)",
    Sha256Hex::parse
);

impl Sha256Hex {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        if s.len() != 64 || !s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Err(Invalid::new(format!("`{s}` is not a SHA-256 digest"))
                .hint("write the 64 hexadecimal digits `sha256sum FILE` prints"));
        }
        Ok(Sha256Hex(s.to_ascii_lowercase()))
    }
}

/// Where a release binary comes from when it is downloaded on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl(String);
string_newtype!(HttpUrl, "an http(s) URL", HttpUrl::parse);

impl HttpUrl {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let rest = s
            .strip_prefix("https://")
            .or_else(|| s.strip_prefix("http://"));
        match rest {
            Some(rest)
                if !rest.is_empty()
                    && !rest.chars().any(|c| c.is_whitespace() || c.is_control()) =>
            {
                Ok(HttpUrl(s.to_string()))
            }
            _ => Err(Invalid::new(format!("`{s}` is not an http(s) URL"))
                .hint("write a URL such as `https://example.com/numary_1.9.6_linux_amd64`")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_names_follow_rfc_1123_labels() {
        for good in ["ledger-1", "a", "L1", &"x".repeat(63)] {
            assert!(HostName::parse(good).is_ok(), "{good}");
        }
        for (bad, why) in [
            ("ledger_1", "`_` is not allowed"),
            ("-a", "starts or ends with `-`"),
            ("a-", "starts or ends with `-`"),
            ("", "empty"),
            ("a.b", "`.` is not allowed"),
            ("a b", "' ' is not allowed"),
        ] {
            let err = HostName::parse(bad).unwrap_err();
            assert!(err.message.contains(why), "{bad}: {}", err.message);
            assert!(err.hints[0].contains("RFC 1123"), "{bad}: {:?}", err.hints);
        }
        assert!(
            HostName::parse(&"x".repeat(64))
                .unwrap_err()
                .message
                .contains("at most 63")
        );
    }

    #[test]
    fn addresses_are_dns_names_or_ips() {
        for good in [
            "10.0.0.1",
            "fd00::11",
            "::1",
            "ledger-1.example.com",
            "ledger-1.example.com.",
            "localhost",
        ] {
            assert!(Address::parse(good).is_ok(), "{good}");
        }
        assert!(Address::parse("[fd00::1]").unwrap_err().hints[0].contains("`fd00::1`"));
        assert!(Address::parse("10.0.0.1:22").unwrap_err().hints[0].contains("port = 22"));
        assert!(
            Address::parse("10.0.0.256")
                .unwrap_err()
                .message
                .contains("not a valid IPv4")
        );
        assert!(
            Address::parse("a..b")
                .unwrap_err()
                .message
                .contains("empty label")
        );
        assert!(
            Address::parse("ledger_1.example.com")
                .unwrap_err()
                .message
                .contains("`_` is not allowed")
        );
        assert!(Address::parse("").is_err());
    }

    #[test]
    fn canonical_addresses_compare_ips_and_names_loosely() {
        assert_eq!(
            Address::parse("fd00:0::1").unwrap().canonical(),
            Address::parse("fd00::1").unwrap().canonical()
        );
        assert_eq!(
            Address::parse("Ledger.Example.").unwrap().canonical(),
            "ledger.example"
        );
        assert_eq!(
            Address::parse("fd00::1").unwrap().with_port(22),
            "[fd00::1]:22"
        );
        assert_eq!(Address::parse("h").unwrap().with_port(2222), "h:2222");
    }

    #[test]
    fn ledger_names_allow_letters_digits_underscore_dash() {
        for good in ["payments", "ledger_2", "a-b", &"x".repeat(63)] {
            assert!(LedgerName::parse(good).is_ok(), "{good}");
        }
        for bad in ["", "a.b", "a b", "é", "a;rm", &"x".repeat(64), "_system"] {
            assert!(LedgerName::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ports_refuse_zero_and_overflow() {
        assert_eq!(Port::parse("22").unwrap(), Port(22));
        assert!(Port::parse("0").unwrap_err().message.contains("port 0"));
        assert!(
            Port::parse("65536")
                .unwrap_err()
                .message
                .contains("out of range")
        );
        assert!(
            Port::parse("ssh")
                .unwrap_err()
                .message
                .contains("not a port")
        );
    }

    #[test]
    fn durations_are_humantime_and_positive() {
        assert_eq!(
            HumanDuration::parse("10s").unwrap().0,
            Duration::from_secs(10)
        );
        assert_eq!(
            HumanDuration::parse("1h 30m").unwrap().0,
            Duration::from_secs(5400)
        );
        assert!(
            HumanDuration::parse("0s")
                .unwrap_err()
                .message
                .contains("zero")
        );
        let err = HumanDuration::parse("10").unwrap_err();
        assert!(
            err.message.contains("`10` is not a duration"),
            "{}",
            err.message
        );
        assert!(err.hints[0].contains("`10s`"));
    }

    #[test]
    fn a_wait_may_be_zero_but_must_be_a_duration() {
        assert_eq!(DurationOrZero::parse("0s").unwrap().0, Duration::ZERO);
        assert_eq!(
            DurationOrZero::parse("1m 30s").unwrap().0,
            Duration::from_secs(90)
        );
        let err = DurationOrZero::parse("30").unwrap_err();
        assert!(
            err.message.contains("`30` is not a duration"),
            "{}",
            err.message
        );
        assert!(err.hints[0].contains("`0s`"));
    }

    #[test]
    fn remote_paths_must_be_absolute() {
        assert!(RemotePath::parse("/usr/local/bin/numary").is_ok());
        assert!(
            RemotePath::parse("bin/numary")
                .unwrap_err()
                .message
                .contains("not an absolute path")
        );
        assert!(
            RemotePath::parse("~/numary").unwrap_err().hints[0].contains("`~` is not expanded")
        );
        assert!(
            RemotePath::parse("/opt/../etc")
                .unwrap_err()
                .message
                .contains("`..`")
        );
        assert!(
            RemotePath::parse("/opt/a\nb")
                .unwrap_err()
                .message
                .contains("control character")
        );
    }

    #[test]
    fn local_paths_expand_home_and_resolve_relative() {
        let home = std::path::Path::new("/home/op");
        let base = std::path::Path::new("/etc/fleet");
        let p = |s: &str| {
            LocalPath::parse(s)
                .unwrap()
                .resolve(Some(home), base)
                .unwrap()
        };
        assert_eq!(p("~/.ssh/id"), PathBuf::from("/home/op/.ssh/id"));
        assert_eq!(p("keys/id"), PathBuf::from("/etc/fleet/keys/id"));
        assert_eq!(p("/abs/id"), PathBuf::from("/abs/id"));
        assert!(
            LocalPath::parse("~bob/id")
                .unwrap_err()
                .message
                .contains("`~user`")
        );
        let no_home = LocalPath::parse("~/id")
            .unwrap()
            .resolve(None, base)
            .unwrap_err();
        assert!(no_home.message.contains("`HOME` is not set"));
    }

    #[test]
    fn jump_hosts_accept_user_host_port_and_none() {
        assert_eq!(JumpHost::parse("none").unwrap(), JumpHost::Direct);
        for good in [
            "bastion",
            "ops@bastion.example.com:2222",
            "[fd00::1]:22",
            "ops@10.0.0.1",
            "ops@b1:2200,b2,root@[fd00::1]:22",
        ] {
            assert_eq!(
                JumpHost::parse(good).unwrap(),
                JumpHost::Via(good.to_string()),
                "{good}"
            );
        }
        for bad in [
            "ops@",
            "bastion:0",
            "fd00::1",
            "a b",
            "@host",
            "bastion:ssh",
            "b1,,b2",
            "b1,",
            "b1,bad:port",
        ] {
            let err = JumpHost::parse(bad).unwrap_err();
            assert!(
                err.message.starts_with("jump host"),
                "{bad}: {}",
                err.message
            );
        }
    }

    #[test]
    fn api_addresses_need_host_and_port() {
        for good in ["127.0.0.1:3068", "[::1]:3068", "localhost:3068"] {
            assert!(ApiAddr::parse(good).is_ok(), "{good}");
        }
        assert!(
            ApiAddr::parse("127.0.0.1")
                .unwrap_err()
                .message
                .contains("no port")
        );
        assert!(
            ApiAddr::parse("127.0.0.1:0")
                .unwrap_err()
                .message
                .contains("port 0")
        );
        assert!(ApiAddr::parse("http://x:1").is_err());
    }

    #[test]
    fn user_names_refuse_at_sign_with_a_hint() {
        assert!(UserName::parse("deploy").is_ok());
        assert!(UserName::parse("a@b").unwrap_err().hints[0].contains("`address`"));
        assert!(UserName::parse("-x").is_err());
        assert!(UserName::parse("").is_err());
    }

    #[test]
    fn small_values() {
        assert!(UnitName::parse("numary@eu.service").is_ok());
        assert!(UnitName::parse("numary service").is_err());
        assert!(ShellCommand::parse("  ").is_err());
        assert_eq!(
            Sha256Hex::parse(&"AB".repeat(32)).unwrap().as_str(),
            "ab".repeat(32)
        );
        assert!(Sha256Hex::parse("abc").is_err());
        assert!(HttpUrl::parse("https://example.com/x").is_ok());
        assert!(HttpUrl::parse("ftp://example.com/x").is_err());
        assert!(GroupName::parse("eu_west-1").is_ok());
        assert!(GroupName::parse("eu west").is_err());
        assert!(StorageName::parse("main-db_2").is_ok());
        let err = StorageName::parse("db.internal").unwrap_err();
        assert!(err.message.contains("`.` is not allowed"), "{err}");
        assert!(StorageName::parse("").is_err());
    }
}
