//! The `numary` v1 CLI contract as parsers: what the real binary prints for `version`,
//! `storage list|scan|upgrade`, what `/_info` answers, and the service's environment file.
//! Every quirk here is documented in the contract: noise lines on stdout (`loading config file:`,
//! logrus lines in 1.9+), CRLF endings, trailing spaces, an optional leading `v`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::version::Version;

/// Output of a `numary` command that does not look like what the contract says it prints.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unexpected output from `numary {command}`: {what}")]
pub struct UnexpectedOutput {
    pub command: String,
    pub what: String,
}

fn unexpected(command: &str, what: impl Into<String>) -> UnexpectedOutput {
    UnexpectedOutput {
        command: command.to_string(),
        what: what.into(),
    }
}

/// Lines of stdout with `\r` and trailing white space removed.
fn clean_lines(stdout: &str) -> impl Iterator<Item = &str> {
    stdout
        .lines()
        .map(|l| l.trim_end_matches(['\r', ' ', '\t']))
}

/// `numary version`: the `Version: X ` line, wherever it is among noise lines.
pub fn parse_version(stdout: &str) -> Result<Version, UnexpectedOutput> {
    let raw = clean_lines(stdout)
        .find_map(|l| l.strip_prefix("Version:"))
        .map(str::trim)
        .ok_or_else(|| unexpected("version", "no `Version:` line"))?;
    Version::parse(raw).map_err(|_| {
        unexpected(
            "version",
            format!("`{raw}` is not a release version (a source build prints `develop`)"),
        )
    })
}

/// A logrus text-format line (`time="..." level=info msg="..."`), which 1.9+ prints on stdout.
fn is_log_line(line: &str) -> bool {
    line.starts_with("time=\"") || line.starts_with("level=")
}

/// `numary storage list`: the registered ledgers, or an error when the output is neither
/// `No ledger found.` nor a `Ledgers:` block (for instance help text printed after a typo).
pub fn parse_storage_list(stdout: &str) -> Result<Vec<String>, UnexpectedOutput> {
    let mut ledgers = Vec::new();
    let mut in_block = false;
    let mut seen = false;
    // A ledger line is taken exactly as printed (only its `\n`, and a `\r` before it, removed):
    // trimmed, a registered `"foo "` would read as `foo`, and `storage upgrade foo` would
    // create that other ledger (the contract's typo trap) while `"foo "` stays unmigrated.
    for raw in stdout.split('\n') {
        let raw = raw.strip_suffix('\r').unwrap_or(raw);
        let line = raw.trim_end_matches([' ', '\t']);
        if line == "No ledger found." {
            seen = true;
            in_block = false;
        } else if line == "Ledgers:" {
            seen = true;
            in_block = true;
        } else if in_block {
            match raw.strip_prefix("- ") {
                Some(name) => ledgers.push(name.to_string()),
                // 1.9+ logs to stdout (logrus text format), possibly between ledger lines.
                None if is_log_line(line) || line.is_empty() => {}
                None => {
                    return Err(unexpected(
                        "storage list",
                        format!("`{line}` inside the `Ledgers:` list"),
                    ));
                }
            }
        }
    }
    if !seen {
        return Err(unexpected(
            "storage list",
            "neither `Ledgers:` nor `No ledger found.`",
        ));
    }
    Ok(ledgers)
}

/// Result of `numary storage upgrade NAME`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpgradeOutcome {
    Migrated,
    LeftInPlace,
}

/// `numary storage upgrade NAME`: `Storage 'NAME' migrated` or `... left in place` (CRLF).
pub fn parse_storage_upgrade(
    stdout: &str,
    ledger: &str,
) -> Result<UpgradeOutcome, UnexpectedOutput> {
    let migrated = format!("Storage '{ledger}' migrated");
    let in_place = format!("Storage '{ledger}' left in place");
    for line in clean_lines(stdout) {
        if line == migrated {
            return Ok(UpgradeOutcome::Migrated);
        }
        if line == in_place {
            return Ok(UpgradeOutcome::LeftInPlace);
        }
    }
    Err(unexpected(
        &format!("storage upgrade {ledger}"),
        format!("no `Storage '{ledger}' migrated` or `left in place` line"),
    ))
}

/// What `numary storage scan` reported.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ScanReport {
    pub registered: Vec<String>,
    pub already_registered: Vec<String>,
    /// `(ledger, error)` for `Error registering ledger ...` lines (the command still exits 0).
    pub errors: Vec<(String, String)>,
    /// `Skip file ...` lines, verbatim.
    pub skipped: Vec<String>,
}

/// `numary storage scan`. Never fails: unknown lines are ignored, as scan prints little.
pub fn parse_storage_scan(stdout: &str) -> ScanReport {
    let mut report = ScanReport::default();
    for line in clean_lines(stdout) {
        if let Some(rest) = line.strip_prefix("Ledger '") {
            if let Some(name) = rest.strip_suffix("' registered") {
                report.registered.push(name.to_string());
            } else if let Some(name) = rest.strip_suffix("' already registered") {
                report.already_registered.push(name.to_string());
            }
        } else if let Some(rest) = line.strip_prefix("Error registering ledger '") {
            if let Some((name, err)) = rest.split_once("': ") {
                report.errors.push((name.to_string(), err.to_string()));
            }
        } else if line.starts_with("Skip file ") {
            report.skipped.push(line.to_string());
        }
    }
    report
}

/// The useful part of `GET /_info`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ServerInfo {
    pub version: String,
    pub driver: Option<String>,
    pub ledgers: Vec<String>,
}

#[derive(Deserialize)]
struct InfoEnvelope {
    data: InfoData,
}
#[derive(Deserialize)]
struct InfoData {
    version: String,
    #[serde(default)]
    config: Option<InfoConfig>,
}
#[derive(Deserialize)]
struct InfoConfig {
    storage: Option<InfoStorage>,
}
#[derive(Deserialize)]
struct InfoStorage {
    driver: Option<String>,
    #[serde(default)]
    ledgers: Option<Vec<String>>,
}

/// `GET /_info`: `{"data":{"version":..., "config":{"storage":{"driver":..., "ledgers":[...]}}}}`.
pub fn parse_info(body: &[u8]) -> Result<ServerInfo, UnexpectedOutput> {
    let env: InfoEnvelope = serde_json::from_slice(body)
        .map_err(|e| unexpected("server start", format!("`/_info` is not the v1 shape: {e}")))?;
    let storage = env.data.config.and_then(|c| c.storage);
    Ok(ServerInfo {
        version: env.data.version,
        driver: storage.as_ref().and_then(|s| s.driver.clone()),
        ledgers: storage.and_then(|s| s.ledgers).unwrap_or_default(),
    })
}

/// Parse an environment file locally, for the simple cases systemd's `EnvironmentFile=` and
/// POSIX shells agree on (the lab's own files). Facts about a node never rely on this: the node's
/// shell sources its env file itself ([`crate::node::probe`]). Understood: `KEY=value`, `export KEY=value`, single or double quotes, `#` comments, blank lines.
/// Returns the variables in file order (later assignments win).
pub fn parse_env_file(text: &str) -> BTreeMap<String, String> {
    let mut vars = BTreeMap::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let line = line
            .strip_prefix("export ")
            .map(str::trim_start)
            .unwrap_or(line);
        let Some((key, value)) = line.split_once('=') else {
            continue;
        };
        let key = key.trim();
        if key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            continue;
        }
        let value = value.trim();
        let value = if value.len() >= 2
            && ((value.starts_with('"') && value.ends_with('"'))
                || (value.starts_with('\'') && value.ends_with('\'')))
        {
            value[1..value.len() - 1].to_string()
        } else {
            value.to_string()
        };
        vars.insert(key.to_string(), value);
    }
    vars
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOISE: &str = "loading config file: Config File \"numary\" Not Found in \"[/root/.numary /etc/numary]\"\n";

    #[test]
    fn version_with_noise_trailing_spaces_and_v() {
        let out =
            format!("{NOISE}Version: v1.10.16 \nDate: 2024-04-04T10:00:00Z \nCommit: 8e46822 \n");
        assert_eq!(parse_version(&out).unwrap(), Version::new(1, 10, 16));
        let crlf = "Version: 1.8.2 \r\nDate: x \r\n";
        assert_eq!(parse_version(crlf).unwrap(), Version::new(1, 8, 2));
    }

    #[test]
    fn version_from_source_build_is_an_error() {
        let err = parse_version("Version: develop \nDate: - \n").unwrap_err();
        assert!(err.to_string().contains("`develop`"), "{err}");
        assert!(parse_version("Usage: numary [command]\n").is_err());
    }

    #[test]
    fn storage_list_forms() {
        assert_eq!(
            parse_storage_list(&format!("{NOISE}No ledger found.\n")).unwrap(),
            Vec::<String>::new()
        );
        let out = format!("{NOISE}time=\"x\" level=info msg=\"y\"\nLedgers:\n- default\n- foo\n");
        assert_eq!(parse_storage_list(&out).unwrap(), vec!["default", "foo"]);
        // A log line between ledger lines does not end the list.
        let out = "Ledgers:\n- default\ntime=\"2024\" level=info msg=\"telemetry\"\n- payments\n";
        assert_eq!(
            parse_storage_list(out).unwrap(),
            vec!["default", "payments"]
        );
        // Anything else inside the list is not understood: refuse rather than drop ledgers.
        assert!(parse_storage_list("Ledgers:\n- default\nsomething odd\n- payments\n").is_err());
        // Help text (a typo'd subcommand exits 0) is not a listing.
        assert!(parse_storage_list("Usage:\n  numary storage [command]\n").is_err());
    }

    #[test]
    fn ledger_names_are_kept_exactly_as_listed() {
        let out = "Ledgers:\n- foo \n- \tbar\n- baz\r\n";
        let names = parse_storage_list(out).unwrap();
        assert_eq!(names, vec!["foo ", "\tbar", "baz"]);
        // So validation (which refuses white space) sees the real name, not `foo`.
        assert!(crate::shell::validate_ledger_name(&names[0]).is_err());
        assert!(crate::shell::validate_ledger_name(&names[1]).is_err());
    }

    #[test]
    fn storage_upgrade_crlf_and_wrong_ledger() {
        let out = format!("{NOISE}Storage 'foo' migrated\r\n");
        assert_eq!(
            parse_storage_upgrade(&out, "foo").unwrap(),
            UpgradeOutcome::Migrated
        );
        let out = "Storage 'foo' left in place\r\n";
        assert_eq!(
            parse_storage_upgrade(out, "foo").unwrap(),
            UpgradeOutcome::LeftInPlace
        );
        assert!(parse_storage_upgrade("Storage 'bar' migrated\r\n", "foo").is_err());
    }

    #[test]
    fn storage_scan_lines() {
        let out = "Skip file numary_foo.db-journal\nRegistering ledger 'a'\r\nLedger 'a' registered\r\n\
                   Registering ledger 'b'\r\nLedger 'b' already registered\r\n\
                   Error registering ledger 'c': boom: x\r\n";
        let r = parse_storage_scan(out);
        assert_eq!(r.registered, vec!["a"]);
        assert_eq!(r.already_registered, vec!["b"]);
        assert_eq!(r.errors, vec![("c".to_string(), "boom: x".to_string())]);
        assert_eq!(r.skipped, vec!["Skip file numary_foo.db-journal"]);
    }

    #[test]
    fn info_shape() {
        let body = br#"{"data":{"server":"numary-ledger","version":"1.8.2","config":{"storage":{"driver":"postgres","ledgers":["a","b"]}}}}"#;
        let info = parse_info(body).unwrap();
        assert_eq!(info.version, "1.8.2");
        assert_eq!(info.driver.as_deref(), Some("postgres"));
        assert_eq!(info.ledgers, vec!["a", "b"]);
        assert!(parse_info(b"{\"version\":\"1\"}").is_err());
    }

    #[test]
    fn env_file_forms() {
        let text = "# comment\nexport NUMARY_STORAGE_DRIVER=postgres\nNUMARY_STORAGE_POSTGRES_CONN_STRING=\"postgresql://u:p@h/db\"\n\nNUMARY_SERVER_HTTP_BIND_ADDRESS='127.0.0.1:4000'\nbad line\n";
        let vars = parse_env_file(text);
        assert_eq!(vars["NUMARY_STORAGE_DRIVER"], "postgres");
        assert_eq!(
            vars["NUMARY_STORAGE_POSTGRES_CONN_STRING"],
            "postgresql://u:p@h/db"
        );
        assert_eq!(vars["NUMARY_SERVER_HTTP_BIND_ADDRESS"], "127.0.0.1:4000");
        assert_eq!(vars.len(), 3);
    }
}
