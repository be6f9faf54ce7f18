//! The command line as cobra and pflag parse it for the real binary: the command tree, the
//! persistent flags each release defines, `--flag value` / `--flag=value`, deprecated-flag
//! warnings, unknown-flag errors, and the usage and help texts cobra prints.

use std::collections::BTreeMap;

use crate::version::SimVersion;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bool,
    Value(&'static str),
}

pub struct Flag {
    pub name: &'static str,
    pub kind: Kind,
    pub default: String,
    pub usage: String,
    pub deprecated: Option<&'static str>,
}

const SQLITE_DEPRECATION: &str = "SQLite is being deprecated and will not be supported starting from the v2 of the Formance Ledger. Only Postgres will be supported and this flag will be deprecated.";

type Gate = fn(SimVersion) -> bool;

fn all(_: SimVersion) -> bool {
    true
}
fn since_1_3(v: SimVersion) -> bool {
    v.minor >= 3
}
fn only_1_2(v: SimVersion) -> bool {
    v.minor < 3
}
fn otel_metrics(v: SimVersion) -> bool {
    v.has_otel_metrics_flags()
}
fn since_1_7_4(v: SimVersion) -> bool {
    v.has_configuration_table()
}
fn since_1_9(v: SimVersion) -> bool {
    v.minor >= 9
}
fn since_1_11(v: SimVersion) -> bool {
    v.minor >= 11
}

/// (gate, name, kind, default, usage)
const PERSISTENT: &[(Gate, &str, Kind, &str, &str)] = &[
    (all, "debug", Kind::Bool, "false", "Debug mode"),
    (
        all,
        "storage.driver",
        Kind::Value("string"),
        "sqlite",
        "Storage driver",
    ),
    (
        all,
        "storage.dir",
        Kind::Value("string"),
        "",
        "Storage directory (for sqlite)",
    ),
    (
        all,
        "storage.sqlite.db_name",
        Kind::Value("string"),
        "numary",
        "SQLite database name",
    ),
    (
        all,
        "storage.postgres.conn_string",
        Kind::Value("string"),
        "postgresql://localhost/postgres",
        "Postgre connection string",
    ),
    (all, "storage.cache", Kind::Bool, "true", "Storage cache"),
    (
        all,
        "server.http.bind_address",
        Kind::Value("string"),
        "localhost:3068",
        "API bind address",
    ),
    (
        all,
        "ui.http.bind_address",
        Kind::Value("string"),
        "localhost:3068",
        "UI bind address",
    ),
    (
        since_1_11,
        "ui.browser",
        Kind::Bool,
        "false",
        "Open the UI in a browser",
    ),
    (
        all,
        "server.http.basic_auth",
        Kind::Value("string"),
        "",
        "Http basic auth",
    ),
    (
        only_1_2,
        "persist-config",
        Kind::Bool,
        "true",
        "Persist config",
    ),
    (
        only_1_2,
        "ledgers",
        Kind::Value("strings"),
        "[quickstart]",
        "Ledgers",
    ),
    (
        since_1_3,
        "lock-strategy",
        Kind::Value("string"),
        "memory",
        "Lock strategy (memory, none, redis)",
    ),
    (
        since_1_3,
        "lock-strategy-redis-url",
        Kind::Value("string"),
        "",
        "Redis url when using redis locking strategy",
    ),
    (
        since_1_3,
        "lock-strategy-redis-duration",
        Kind::Value("duration"),
        "1m0s",
        "Lock duration",
    ),
    (
        since_1_3,
        "lock-strategy-redis-retry",
        Kind::Value("duration"),
        "1s",
        "Retry lock period",
    ),
    (
        since_1_3,
        "lock-strategy-redis-tls-enabled",
        Kind::Bool,
        "false",
        "Use tls on redis",
    ),
    (
        since_1_3,
        "lock-strategy-redis-tls-insecure",
        Kind::Bool,
        "false",
        "Whether redis is trusted or not",
    ),
    (
        all,
        "otel-traces",
        Kind::Bool,
        "false",
        "Enable OpenTelemetry traces support",
    ),
    (
        since_1_3,
        "otel-traces-batch",
        Kind::Bool,
        "false",
        "Use OpenTelemetry batching",
    ),
    (
        all,
        "otel-traces-exporter",
        Kind::Value("string"),
        "stdout",
        "OpenTelemetry traces exporter",
    ),
    (
        all,
        "otel-traces-exporter-jaeger-endpoint",
        Kind::Value("string"),
        "",
        "OpenTelemetry traces Jaeger exporter endpoint",
    ),
    (
        all,
        "otel-traces-exporter-jaeger-user",
        Kind::Value("string"),
        "",
        "OpenTelemetry traces Jaeger exporter user",
    ),
    (
        all,
        "otel-traces-exporter-jaeger-password",
        Kind::Value("string"),
        "",
        "OpenTelemetry traces Jaeger exporter password",
    ),
    (
        all,
        "otel-traces-exporter-otlp-mode",
        Kind::Value("string"),
        "grpc",
        "OpenTelemetry traces OTLP exporter mode (grpc|http)",
    ),
    (
        all,
        "otel-traces-exporter-otlp-endpoint",
        Kind::Value("string"),
        "",
        "OpenTelemetry traces grpc endpoint",
    ),
    (
        all,
        "otel-traces-exporter-otlp-insecure",
        Kind::Bool,
        "false",
        "OpenTelemetry traces grpc insecure",
    ),
    (
        otel_metrics,
        "otel-metrics",
        Kind::Bool,
        "false",
        "Enable OpenTelemetry metrics support",
    ),
    (
        otel_metrics,
        "otel-metrics-exporter",
        Kind::Value("string"),
        "stdout",
        "OpenTelemetry metrics exporter",
    ),
    (
        otel_metrics,
        "otel-metrics-exporter-otlp-mode",
        Kind::Value("string"),
        "grpc",
        "OpenTelemetry metrics OTLP exporter mode (grpc|http)",
    ),
    (
        otel_metrics,
        "otel-metrics-exporter-otlp-endpoint",
        Kind::Value("string"),
        "",
        "OpenTelemetry metrics grpc endpoint",
    ),
    (
        otel_metrics,
        "otel-metrics-exporter-otlp-insecure",
        Kind::Bool,
        "false",
        "OpenTelemetry metrics grpc insecure",
    ),
    (
        since_1_3,
        "publisher-kafka-enabled",
        Kind::Bool,
        "false",
        "Publish write events to kafka",
    ),
    (
        since_1_3,
        "publisher-kafka-broker",
        Kind::Value("strings"),
        "[]",
        "Kafka address is kafka enabled",
    ),
    (
        since_1_3,
        "publisher-kafka-sasl-enabled",
        Kind::Bool,
        "false",
        "Enable SASL authentication on kafka publisher",
    ),
    (
        since_1_3,
        "publisher-kafka-sasl-username",
        Kind::Value("string"),
        "",
        "SASL username",
    ),
    (
        since_1_3,
        "publisher-kafka-sasl-password",
        Kind::Value("string"),
        "",
        "SASL password",
    ),
    (
        since_1_3,
        "publisher-kafka-sasl-mechanism",
        Kind::Value("string"),
        "",
        "SASL authentication mechanism",
    ),
    (
        since_1_3,
        "publisher-kafka-sasl-scram-sha-size",
        Kind::Value("int"),
        "512",
        "SASL SCRAM SHA size",
    ),
    (
        since_1_3,
        "publisher-kafka-tls-enabled",
        Kind::Bool,
        "false",
        "Enable TLS to connect on kafka",
    ),
    (
        since_1_3,
        "publisher-topic-mapping",
        Kind::Value("strings"),
        "[]",
        "Define mapping between internal event types and topics",
    ),
    (
        since_1_3,
        "publisher-http-enabled",
        Kind::Bool,
        "false",
        "Sent write event to http endpoint",
    ),
    (
        since_1_3,
        "auth-bearer-enabled",
        Kind::Bool,
        "false",
        "Enable bearer auth",
    ),
    (
        since_1_3,
        "auth-bearer-introspect-url",
        Kind::Value("string"),
        "",
        "OAuth2 introspect URL",
    ),
    (
        since_1_3,
        "auth-bearer-audience",
        Kind::Value("strings"),
        "[]",
        "Allowed audiences",
    ),
    (
        since_1_3,
        "auth-bearer-audiences-wildcard",
        Kind::Bool,
        "false",
        "Don't check audience",
    ),
    (
        since_1_3,
        "auth-bearer-use-scopes",
        Kind::Bool,
        "false",
        "Use scopes as defined by rfc https://datatracker.ietf.org/doc/html/rfc8693",
    ),
    (
        since_1_3,
        "auth-basic-enabled",
        Kind::Bool,
        "false",
        "Enable basic auth",
    ),
    (
        since_1_3,
        "auth-basic-credentials",
        Kind::Value("strings"),
        "[]",
        "HTTP basic auth credentials (<username>:<password>)",
    ),
    (
        since_1_3,
        "segment-enabled",
        Kind::Bool,
        "true",
        "Is segment enabled",
    ),
    (
        since_1_3,
        "segment-write-key",
        Kind::Value("string"),
        "",
        "Segment write key",
    ),
    (
        since_1_3,
        "segment-application-id",
        Kind::Value("string"),
        "",
        "Segment application id",
    ),
    (
        since_1_3,
        "segment-heartbeat-interval",
        Kind::Value("duration"),
        "4h0m0s",
        "Segment heartbeat interval",
    ),
    (
        since_1_7_4,
        "telemetry-enabled",
        Kind::Bool,
        "true",
        "Is telemetry enabled",
    ),
    (
        since_1_7_4,
        "telemetry-write-key",
        Kind::Value("string"),
        "",
        "Telemetry write key",
    ),
    (
        since_1_7_4,
        "telemetry-application-id",
        Kind::Value("string"),
        "",
        "Telemetry application id",
    ),
    (
        since_1_7_4,
        "telemetry-heartbeat-interval",
        Kind::Value("duration"),
        "4h0m0s",
        "Telemetry heartbeat interval",
    ),
    (
        since_1_7_4,
        "commit-policy",
        Kind::Value("string"),
        "",
        "Transaction commit policy (default or allow-past-timestamps)",
    ),
    (
        since_1_9,
        "cache-capacity-bytes",
        Kind::Value("int"),
        "100000000",
        "Capacity in bytes of the cache storing Numscript in RAM",
    ),
    (
        since_1_9,
        "cache-max-num-keys",
        Kind::Value("int"),
        "100",
        "Maximum number of Numscript to be stored in the cache in RAM",
    ),
];

/// The persistent flags `version` defines, storage flags marked deprecated in 1.10+.
pub fn persistent_flags(version: SimVersion, home: &str) -> Vec<Flag> {
    PERSISTENT
        .iter()
        .filter(|(gate, ..)| gate(version))
        .map(|&(_, name, kind, default, usage)| {
            let deprecated = match name {
                "storage.driver" | "storage.dir" | "storage.sqlite.db_name"
                    if version.sqlite_deprecated() =>
                {
                    Some(SQLITE_DEPRECATION)
                }
                "storage.cache" if version.sqlite_deprecated() => Some(
                    "Storage cache is being deprecated and will not be supported from the v2 of the Formance Ledger.",
                ),
                _ => None,
            };
            let default =
                if name == "storage.dir" { format!("{home}/.numary/data") } else { default.to_owned() };
            Flag { name, kind, default, usage: usage.to_owned(), deprecated }
        })
        .collect()
}

/// A command of the tree: its path (`["storage", "upgrade"]`) and local flags.
pub struct Command {
    pub path: Vec<&'static str>,
    pub runnable: bool,
    pub subcommands: Vec<&'static str>,
    pub local: Vec<Flag>,
}

/// Finds the command named by the leading non-flag words of `args`, as cobra's `Find` does.
/// Returns the command and the remaining arguments, or an unknown-command error.
pub fn find(
    version: SimVersion,
    args: &[String],
    persistent: &[Flag],
) -> Result<(Command, Vec<String>), String> {
    let words = strip_flags(args, persistent);
    let mut path: Vec<&'static str> = Vec::new();
    for word in &words {
        let children = children(version, &path);
        match children.iter().find(|c| **c == word.as_str()) {
            Some(child) => path.push(child),
            None => {
                if path.is_empty() && !children.is_empty() {
                    return Err(format!("unknown command \"{word}\" for \"numary\""));
                }
                break;
            }
        }
    }
    // Remove the command words (first occurrence of each, in order) from the arguments.
    let mut rest = Vec::new();
    let mut to_skip = path.iter().peekable();
    for arg in args {
        if to_skip.peek().is_some_and(|w| **w == arg.as_str()) {
            to_skip.next();
        } else {
            rest.push(arg.clone());
        }
    }
    let subcommands = children(version, &path);
    let runnable = subcommands.is_empty() && !path.is_empty();
    let local = local_flags(version, &path);
    Ok((
        Command {
            path,
            runnable,
            subcommands,
            local,
        },
        rest,
    ))
}

fn children(version: SimVersion, path: &[&str]) -> Vec<&'static str> {
    match path {
        [] => {
            let mut list = vec![
                "check", "config", "exec", "server", "sim", "stickers", "storage", "ui", "version",
            ];
            if version.minor >= 3 {
                list.insert(2, "doc");
            }
            list
        }
        ["config"] => vec!["init"],
        ["doc"] => vec!["flags"],
        ["server"] => vec!["start"],
        ["sim"] => vec!["seed"],
        ["storage"] if version.has_system_store() => {
            vec!["delete", "init", "list", "scan", "upgrade"]
        }
        ["storage"] => vec!["init"],
        _ => Vec::new(),
    }
}

fn local_flags(version: SimVersion, path: &[&str]) -> Vec<Flag> {
    let flag = |name, kind, default: &str, usage: &str| Flag {
        name,
        kind,
        default: default.to_owned(),
        usage: usage.to_owned(),
        deprecated: None,
    };
    match path {
        // Before the registry (≤1.3.1) `storage init` always initialised `default`.
        ["storage", "init"] if version.has_system_store() => {
            vec![flag(
                "name",
                Kind::Value("string"),
                "default",
                "Ledger name",
            )]
        }
        ["sim", "seed"] => vec![
            flag(
                "ledger",
                Kind::Value("string"),
                "default",
                "Ledger to write to (simulator only)",
            ),
            flag(
                "transactions",
                Kind::Value("int"),
                "10",
                "Number of transactions to write",
            ),
        ],
        _ => Vec::new(),
    }
}

/// cobra's `stripFlags`: the words left once flags (and values of non-bool flags) are removed.
fn strip_flags(args: &[String], persistent: &[Flag]) -> Vec<String> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        if arg == "--" {
            break;
        }
        if let Some(name) = arg.strip_prefix("--") {
            let takes_value = !name.contains('=')
                && persistent
                    .iter()
                    .find(|f| f.name == name)
                    .is_none_or(|f| f.kind != Kind::Bool);
            let local_value = matches!(name, "name" | "ledger" | "transactions");
            if takes_value && (local_value || persistent.iter().any(|f| f.name == name)) {
                i += 1;
            }
        } else if !arg.starts_with('-') || arg == "-" {
            words.push(arg.clone());
        }
        i += 1;
    }
    words
}

pub struct Parsed {
    pub values: BTreeMap<String, String>,
    pub positional: Vec<String>,
    pub help: bool,
    /// pflag's deprecation notices, printed to stderr as flags are parsed.
    pub warnings: Vec<String>,
}

/// pflag parsing with interspersed positional arguments.
pub fn parse_flags(args: &[String], persistent: &[Flag], local: &[Flag]) -> Result<Parsed, String> {
    let mut parsed = Parsed {
        values: BTreeMap::new(),
        positional: Vec::new(),
        help: false,
        warnings: Vec::new(),
    };
    let lookup = |name: &str| local.iter().chain(persistent).find(|f| f.name == name);
    let mut i = 0;
    while i < args.len() {
        let arg = &args[i];
        i += 1;
        if arg == "--" {
            parsed.positional.extend(args[i..].iter().cloned());
            break;
        }
        if let Some(body) = arg.strip_prefix("--") {
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n, Some(v.to_owned())),
                None => (body, None),
            };
            if name == "help" {
                parsed.help = true;
                continue;
            }
            let Some(flag) = lookup(name) else {
                return Err(format!("unknown flag: --{name}"));
            };
            let value = match (flag.kind, inline) {
                (_, Some(v)) => v,
                (Kind::Bool, None) => "true".to_owned(),
                (Kind::Value(_), None) => match args.get(i) {
                    Some(v) => {
                        i += 1;
                        v.clone()
                    }
                    None => return Err(format!("flag needs an argument: --{name}")),
                },
            };
            if flag.kind == Kind::Bool
                && value.parse::<bool>().is_err()
                && ![
                    "0", "1", "t", "f", "T", "F", "TRUE", "FALSE", "True", "False",
                ]
                .contains(&value.as_str())
            {
                return Err(format!(
                    "invalid argument \"{value}\" for \"--{name}\" flag: strconv.ParseBool: parsing \"{value}\": invalid syntax"
                ));
            }
            if let Some(message) = flag.deprecated {
                parsed
                    .warnings
                    .push(format!("Flag --{name} has been deprecated, {message}"));
            }
            parsed.values.insert(name.to_owned(), value);
        } else if let Some(shorts) = arg.strip_prefix('-').filter(|s| !s.is_empty()) {
            for c in shorts.chars() {
                if c == 'h' {
                    parsed.help = true;
                } else {
                    return Err(format!("unknown shorthand flag: '{c}' in {arg}"));
                }
            }
        } else {
            parsed.positional.push(arg.clone());
        }
    }
    Ok(parsed)
}

fn flag_usages(flags: &[&Flag]) -> String {
    let mut lines: Vec<(String, String)> = Vec::new();
    let mut sorted: Vec<&&Flag> = flags.iter().filter(|f| f.deprecated.is_none()).collect();
    sorted.sort_by_key(|f| f.name);
    for flag in sorted {
        let mut left = if flag.name == "help" {
            "  -h, --help".to_owned()
        } else {
            format!("      --{}", flag.name)
        };
        if let Kind::Value(ty) = flag.kind {
            left.push(' ');
            left.push_str(ty);
        }
        let mut right = flag.usage.clone();
        let zero = matches!(flag.default.as_str(), "" | "false" | "0" | "[]");
        if !zero && flag.name != "help" {
            match flag.kind {
                Kind::Value("string") => {
                    right.push_str(&format!(" (default \"{}\")", flag.default))
                }
                _ => right.push_str(&format!(" (default {})", flag.default)),
            }
        }
        lines.push((left, right));
    }
    let width = lines.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
    lines
        .iter()
        .map(|(l, r)| format!("{l:width$}   {r}\n"))
        .collect()
}

/// cobra's default usage template for `command`.
pub fn usage(command: &Command, persistent: &[Flag]) -> String {
    let path = std::iter::once("numary")
        .chain(command.path.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut out = String::from("Usage:");
    if command.runnable {
        out.push_str(&format!("\n  {path} [flags]"));
    }
    if !command.subcommands.is_empty() {
        out.push_str(&format!("\n  {path} [command]"));
        out.push_str("\n\nAvailable Commands:");
        let width = command
            .subcommands
            .iter()
            .map(|c| c.len())
            .max()
            .unwrap_or(0)
            .max(11);
        for sub in &command.subcommands {
            out.push_str(&format!("\n  {sub:width$} "));
        }
    }
    let name = command.path.last().copied().unwrap_or("numary");
    let help = Flag {
        name: "help",
        kind: Kind::Bool,
        default: "false".to_owned(),
        usage: format!("help for {name}"),
        deprecated: None,
    };
    let mut local: Vec<&Flag> = command.local.iter().collect();
    local.push(&help);
    if command.path.is_empty() {
        local.extend(persistent.iter());
    }
    out.push_str("\n\nFlags:\n");
    out.push_str(flag_usages(&local).trim_end());
    if !command.path.is_empty() {
        out.push_str("\n\nGlobal Flags:\n");
        out.push_str(flag_usages(&persistent.iter().collect::<Vec<_>>()).trim_end());
    }
    if !command.subcommands.is_empty() {
        out.push_str(&format!(
            "\n\nUse \"{path} [command] --help\" for more information about a command."
        ));
    }
    out.push('\n');
    out
}

/// cobra's help: `Short` (root only has one) then the usage.
pub fn help(command: &Command, persistent: &[Flag]) -> String {
    let short = if command.path.is_empty() {
        "Numary\n\n"
    } else {
        ""
    };
    format!("{short}{}", usage(command, persistent))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> SimVersion {
        SimVersion::parse(s).unwrap()
    }

    fn args(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    #[test]
    fn finds_commands_past_flags_with_values() {
        let flags = persistent_flags(v("1.8.2"), "/root");
        let (cmd, rest) = find(
            v("1.8.2"),
            &args(&["--storage.driver", "postgres", "storage", "upgrade", "foo"]),
            &flags,
        )
        .unwrap();
        assert_eq!(cmd.path, vec!["storage", "upgrade"]);
        assert_eq!(rest, args(&["--storage.driver", "postgres", "foo"]));
    }

    #[test]
    fn typo_under_storage_is_not_an_error_but_at_root_it_is() {
        let flags = persistent_flags(v("1.8.2"), "/root");
        let (cmd, _) = find(v("1.8.2"), &args(&["storage", "upgarde", "x"]), &flags).unwrap();
        assert!(!cmd.runnable);
        assert!(find(v("1.8.2"), &args(&["stroage"]), &flags).is_err());
    }

    #[test]
    fn otel_metrics_flag_is_unknown_from_1_9() {
        let flags = persistent_flags(v("1.9.0"), "/root");
        let err = parse_flags(&args(&["--otel-metrics"]), &flags, &[]).err();
        assert_eq!(err.as_deref(), Some("unknown flag: --otel-metrics"));
        let flags = persistent_flags(v("1.8.3"), "/root");
        assert!(parse_flags(&args(&["--otel-metrics"]), &flags, &[]).is_ok());
    }

    #[test]
    fn storage_flags_warn_from_1_10() {
        let flags = persistent_flags(v("1.10.3"), "/root");
        let parsed = parse_flags(&args(&["--storage.driver=postgres"]), &flags, &[]).unwrap();
        assert_eq!(parsed.values["storage.driver"], "postgres");
        assert!(
            parsed.warnings[0].starts_with("Flag --storage.driver has been deprecated, SQLite")
        );
    }
}
