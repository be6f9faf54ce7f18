//! Ledger versions: semver with the leniency real `numary` builds need (a leading `v`, as Docker
//! images print it; surrounding white space, as `numary version` prints it).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A ledger version such as `1.8.2` (also accepted: `v1.8.2`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Version(pub semver::Version);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "`{input}` is not a version: {reason} (expected MAJOR.MINOR.PATCH such as `1.8.2`, a leading `v` is allowed)"
)]
pub struct VersionError {
    pub input: String,
    pub reason: String,
}

impl Version {
    pub fn new(major: u64, minor: u64, patch: u64) -> Self {
        Version(semver::Version::new(major, minor, patch))
    }

    pub fn parse(input: &str) -> Result<Self, VersionError> {
        let trimmed = input.trim();
        let bare = trimmed.strip_prefix('v').unwrap_or(trimmed);
        semver::Version::parse(bare)
            .map(Version)
            .map_err(|e| VersionError {
                input: input.to_string(),
                reason: e.to_string(),
            })
    }

    pub fn major(&self) -> u64 {
        self.0.major
    }

    pub fn minor(&self) -> u64 {
        self.0.minor
    }

    pub fn patch(&self) -> u64 {
        self.0.patch
    }

    /// The `MAJOR.MINOR.x` family this version belongs to, as the guide's table names them.
    pub fn family(&self) -> String {
        format!("{}.{}.x", self.0.major, self.0.minor)
    }
}

impl FromStr for Version {
    type Err = VersionError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Version::parse(s)
    }
}

impl fmt::Display for Version {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl Serialize for Version {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Version {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Version::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_leading_v_and_whitespace() {
        assert_eq!(Version::parse("v1.10.16").unwrap(), Version::new(1, 10, 16));
        assert_eq!(Version::parse(" 1.8.2 ").unwrap(), Version::new(1, 8, 2));
    }

    #[test]
    fn rejects_partial_and_garbage() {
        for bad in ["1.8", "develop", "", "v", "1.x"] {
            let err = Version::parse(bad).unwrap_err();
            assert!(err.to_string().contains(&format!("`{bad}`")), "{err}");
        }
    }

    #[test]
    fn orders_numerically() {
        assert!(Version::parse("1.10.0").unwrap() > Version::parse("1.9.6").unwrap());
        assert_eq!(Version::parse("1.7.6").unwrap().family(), "1.7.x");
    }
}
