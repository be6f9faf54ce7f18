//! How many nodes leave service at once: `--serial N|N%` and `--canary N`.

use std::fmt;
use std::num::NonZeroUsize;
use std::str::FromStr;

use serde::{Serialize, Serializer};

/// A batch size: a count of nodes, or a percentage of the nodes the plan starts (rounded down,
/// at least one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BatchSize {
    Count(NonZeroUsize),
    /// 1 to 100.
    Percent(u8),
}

impl BatchSize {
    /// The number of nodes of a batch out of `total`: never 0, never more than `total` (at
    /// least 1).
    pub fn of(self, total: usize) -> usize {
        let n = match self {
            BatchSize::Count(n) => n.get(),
            BatchSize::Percent(p) => total * usize::from(p) / 100,
        };
        n.clamp(1, total.max(1))
    }
}

impl FromStr for BatchSize {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return match p.parse::<u8>() {
                Ok(p @ 1..=100) => Ok(BatchSize::Percent(p)),
                _ => Err(format!(
                    "`{s}` is not a percentage from 1% to 100%: give a node count (`2`) or a share of the nodes (`25%`)"
                )),
            };
        }
        s.parse::<NonZeroUsize>()
            .map(BatchSize::Count)
            .map_err(|_| {
                format!(
                    "`{s}` is not a batch size: give a node count of at least 1 (`2`) or a share of the nodes (`25%`)"
                )
            })
    }
}

impl fmt::Display for BatchSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BatchSize::Count(n) => write!(f, "{n}"),
            BatchSize::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// A count as a JSON number (as plans always had it), a percentage as a string (`"25%"`).
impl Serialize for BatchSize {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            BatchSize::Count(n) => s.serialize_u64(n.get() as u64),
            BatchSize::Percent(_) => s.collect_str(self),
        }
    }
}

impl BatchSize {
    /// Read back from a plan's JSON (a number or a `"N%"` string).
    pub fn from_json(v: &serde_json::Value) -> Option<BatchSize> {
        match v {
            serde_json::Value::Number(n) => {
                NonZeroUsize::new(usize::try_from(n.as_u64()?).ok()?).map(BatchSize::Count)
            }
            serde_json::Value::String(s) => s.parse().ok(),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_percentages_parse_and_resolve_to_at_least_one_node() {
        let b = |s: &str| s.parse::<BatchSize>().unwrap();
        assert_eq!(b("2").of(10), 2);
        assert_eq!(b("2").of(1), 1);
        assert_eq!(b("25%").of(10), 2);
        assert_eq!(b("25%").of(3), 1);
        assert_eq!(b("100%").of(7), 7);
        assert_eq!(b("25%").to_string(), "25%");
        for bad in ["0", "0%", "101%", "-1", "x", "2.5"] {
            let e = bad.parse::<BatchSize>().unwrap_err();
            assert!(e.contains(bad), "{e}");
        }
        assert_eq!(serde_json::to_value(b("3")).unwrap(), serde_json::json!(3));
        assert_eq!(
            BatchSize::from_json(&serde_json::json!("50%")),
            Some(BatchSize::Percent(50))
        );
        assert_eq!(BatchSize::from_json(&serde_json::json!(3)), Some(b("3")));
    }
}
