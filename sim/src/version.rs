//! The simulated release (`NUMARY_SIM_VERSION`) and every behaviour that depends on it.
//! Each method names one difference between real 1.x releases, read from the tags of
//! formancehq/ledger; callers ask "does this release do X" and never compare numbers themselves.

use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct SimVersion {
    pub major: u64,
    pub minor: u64,
    pub patch: u64,
}

impl SimVersion {
    /// Accepts `1.8.2` or `v1.8.2`; only 1.x releases exist as the `numary` binary.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bare = text.trim().strip_prefix('v').unwrap_or(text.trim());
        let parts: Vec<&str> = bare.split('.').collect();
        let numbers: Option<Vec<u64>> = if parts.len() == 3 {
            parts.iter().map(|p| p.parse::<u64>().ok()).collect()
        } else {
            None
        };
        match numbers.as_deref() {
            Some(&[1, minor, patch]) if minor <= 12 => Ok(Self {
                major: 1,
                minor,
                patch,
            }),
            Some(_) => Err(format!(
                "version `{text}` is not a Formance Ledger v1 release (1.0.0 to 1.12.x)"
            )),
            None => Err(format!("version `{text}` is not of the form 1.MINOR.PATCH")),
        }
    }

    fn at_least(&self, minor: u64, patch: u64) -> bool {
        (self.minor, self.patch) >= (minor, patch)
    }

    /// `_system.ledgers` and `storage list/upgrade/scan/delete` (v1.3.2, v1.4.0).
    pub fn has_system_store(&self) -> bool {
        self.at_least(3, 2)
    }

    /// 1.3.0-1.3.1 record migration rows; 1.2.x's single `v001.sql` records nothing.
    pub fn records_migrations(&self) -> bool {
        self.at_least(3, 0)
    }

    /// Releases before the system store opened SQLite files with `?_journal=WAL`.
    pub fn sqlite_wal(&self) -> bool {
        !self.has_system_store()
    }

    /// `Driver.Initialize` waited two seconds in 1.4.0-1.4.2.
    pub fn init_sleeps(&self) -> bool {
        self.minor == 4 && self.patch <= 2
    }

    /// `loading config file: ...` on stdout when no config file exists.
    pub fn prints_config_noise(&self) -> bool {
        self.at_least(4, 3)
    }

    /// SQLite deprecation warning and deprecated storage flags.
    pub fn sqlite_deprecated(&self) -> bool {
        self.minor >= 10
    }

    /// `_system.configuration` was added in 1.7.4.
    pub fn has_configuration_table(&self) -> bool {
        self.at_least(7, 4)
    }

    /// `CREATE EXTENSION IF NOT EXISTS pg_trgm` at driver init.
    pub fn needs_pg_trgm(&self) -> bool {
        self.minor >= 8
    }

    /// `/_healthcheck` and `/{ledger}/_info` with migration states.
    pub fn has_healthcheck(&self) -> bool {
        self.minor >= 9
    }

    /// `/_health` reports `{"sqlite":"OK"}` from 1.8 on, `{}` before.
    pub fn sqlite_health_named(&self) -> bool {
        self.minor >= 8
    }

    /// `storage init` reports ` OK` for every ledger not yet cached by the process.
    pub fn init_always_ok(&self) -> bool {
        self.minor == 10 && self.patch >= 16
    }

    /// The otel metrics flags come from go-libs until 1.8.x and are gone in 1.9.0
    /// (`sharedotlpmetrics.InitOTLPMetricsFlags` is still called by v1.8.3 `cmd/root.go`).
    pub fn has_otel_metrics_flags(&self) -> bool {
        self.minor <= 8
    }
}

impl fmt::Display for SimVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.patch)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_with_and_without_v() {
        assert_eq!(SimVersion::parse("v1.8.2").unwrap().to_string(), "1.8.2");
        assert_eq!(SimVersion::parse("1.10.16").unwrap().minor, 10);
    }

    #[test]
    fn rejects_non_v1_and_garbage() {
        assert!(SimVersion::parse("2.0.0").is_err());
        assert!(SimVersion::parse("1.8").is_err());
        assert!(SimVersion::parse("latest").is_err());
    }

    #[test]
    fn release_specific_behaviours() {
        let v = |s| SimVersion::parse(s).unwrap();
        assert!(v("1.4.2").init_sleeps() && !v("1.4.3").init_sleeps());
        assert!(!v("1.4.2").prints_config_noise() && v("1.4.3").prints_config_noise());
        assert!(!v("1.3.1").has_system_store() && v("1.3.2").has_system_store());
        assert!(v("1.10.16").init_always_ok() && !v("1.10.0").init_always_ok());
        assert!(v("1.8.3").has_otel_metrics_flags() && !v("1.9.0").has_otel_metrics_flags());
    }
}
