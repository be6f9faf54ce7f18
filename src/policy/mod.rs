//! Upgrade-path policy: the vendor guide's table of supported paths as data
//! (`src/policy/paths.toml`, embedded; replaceable with `--paths FILE`), its evaluation for a
//! current version C and a target T, the hop planner for paths the table does not allow directly,
//! and the advisories beyond the table (from the numary v1 contract).

mod advisories;
mod hops;
mod table;

use std::fmt;
use std::path::Path;

use serde::Serialize;

use crate::error::Failure;
use crate::facts::StorageDriver;
use crate::version::Version;

/// The built-in table, the guide's rows in the guide's order.
pub const BUILTIN_TOML: &str = include_str!("paths.toml");

/// One row of the table: upgrades to `target` (a `MAJOR.MINOR.x` family) are supported from any
/// current version `>= min_current` (a family such as `1.4.x`, or `1.x`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PathRow {
    /// 1-based position in the table file, so verdicts can name the row that decided.
    pub index: usize,
    pub target: String,
    pub min_current: String,
    pub zero_downtime: bool,
}

/// What kind of answer a [`Verdict`] is; the text is in `reason` and `advisories`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum VerdictKind {
    /// A row allows C → T and no advisory refuses it.
    Direct,
    /// C == T: nothing to do.
    AlreadyAtTarget,
    /// T < C: no down-migrations exist.
    Downgrade,
    /// C or T is a ledger v2 version: v2 migrates with `ledger migrate`, out of scope.
    MajorTwo,
    /// C or T has a major other than 1 or 2 (e.g. `0.x` pre-releases of numary).
    UnsupportedMajor,
    /// No row targets T's family (e.g. 1.10.x with the built-in table).
    UnknownTarget,
    /// No row allows C → T directly, but a chain of supported upgrades does (see `hops`).
    NeedsHops,
    /// A row allows C → T but an advisory refuses it (the first advisory says why).
    Refused,
    /// No row and no chain of rows leads from C to T.
    Impossible,
}

/// The verdict for C → T.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub current: Version,
    pub target: Version,
    pub kind: VerdictKind,
    /// True when the table allows C → T directly and no advisory refuses it, or when C == T
    /// (nothing to do).
    pub supported: bool,
    /// True when the row that decided allows zero-downtime strategies. Also true when C == T:
    /// a node with nothing to do never constrains the fleet's strategy. False when unsupported.
    pub zero_downtime: bool,
    /// The row that decided: for `direct`, the zero-downtime applying row if any, else the first
    /// applying one; for `refused`, the row that would have allowed it. `None` otherwise.
    pub row: Option<PathRow>,
    /// When not supported directly: the shortest chain of supported upgrades, each a version or a
    /// family (`1.8.x`, possibly with a constraint: `1.8.x (>= 1.8.2)`), ending with the target.
    /// Empty when direct or impossible.
    pub hops: Vec<String>,
    /// Warnings and refusals beyond the table (refusals first, starting with `refused:`).
    pub advisories: Vec<String>,
    /// One sentence saying why.
    pub reason: String,
}

/// A `MAJOR.MINOR` family; `1.x` as a minimum is `1.0`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Family {
    pub major: u64,
    pub minor: u64,
}

impl Family {
    fn of(v: &Version) -> Family {
        Family {
            major: v.major(),
            minor: v.minor(),
        }
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.x", self.major, self.minor)
    }
}

/// The table of supported upgrade paths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyTable {
    rows: Vec<PathRow>,
    parsed: Vec<table::ParsedRow>,
}

impl PolicyTable {
    /// The embedded table (the vendor guide's 17 rows).
    pub fn builtin() -> PolicyTable {
        match table::parse(BUILTIN_TOML, "<built-in paths.toml>") {
            Ok(table) => table,
            // The embedded file is checked by `builtin_table_has_the_guides_rows`.
            Err(e) => unreachable!("built-in upgrade-path table is invalid: {e}"),
        }
    }

    /// Parse a table strictly; errors name `origin:line:col` and map to [`crate::exit_code::USAGE`].
    pub fn from_toml(text: &str, origin: &str) -> Result<PolicyTable, Failure> {
        table::parse(text, origin)
    }

    /// Read and parse a table file (`--paths FILE`).
    pub fn load(path: &Path) -> anyhow::Result<PolicyTable> {
        table::load(path)
    }

    pub fn rows(&self) -> &[PathRow] {
        &self.rows
    }

    /// The verdict for C → T when the storage driver is unknown (driver-specific advisories are
    /// phrased conditionally).
    pub fn evaluate(&self, current: &Version, target: &Version) -> Verdict {
        self.evaluate_for(current, target, None)
    }

    /// The verdict for C → T on a node whose storage driver is known (`None`: unknown).
    pub fn evaluate_for(
        &self,
        current: &Version,
        target: &Version,
        driver: Option<StorageDriver>,
    ) -> Verdict {
        let mut v = Verdict {
            current: current.clone(),
            target: target.clone(),
            kind: VerdictKind::Impossible,
            supported: false,
            zero_downtime: false,
            row: None,
            hops: Vec::new(),
            advisories: Vec::new(),
            reason: String::new(),
        };
        if let Some(odd) = [current, target]
            .into_iter()
            .find(|x| x.major() != 1 && x.major() != 2)
        {
            v.kind = VerdictKind::UnsupportedMajor;
            v.reason = format!(
                "`{odd}` is not a Formance Ledger v1 version: only `1.x.y` nodes and targets are supported"
            );
            return v;
        }
        if current.major() == 2 || target.major() == 2 {
            v.kind = VerdictKind::MajorTwo;
            v.reason = "ledger v2 is out of scope: v2 migrates with `ledger migrate`, not `numary storage upgrade`, which fleetup drives".to_string();
            return v;
        }
        if current == target {
            v.kind = VerdictKind::AlreadyAtTarget;
            v.supported = true;
            v.zero_downtime = true;
            v.reason = format!("already at target `{target}`: nothing to do");
            return v;
        }
        if target < current {
            v.kind = VerdictKind::Downgrade;
            v.reason = format!(
                "`{current}` → `{target}` is a downgrade: no down-migrations exist; restore the backup instead"
            );
            return v;
        }
        let t_family = Family::of(target);
        if !self.parsed.iter().any(|p| p.target == t_family) {
            v.kind = VerdictKind::UnknownTarget;
            v.reason = format!(
                "no row of the upgrade-path table targets `{t_family}`: read its release notes, then add rows with `--paths FILE`"
            );
            return v;
        }

        let refusals = advisories::refusals(current, target);
        let decided = self.deciding_row(current, target);
        if !refusals.is_empty() {
            v.kind = VerdictKind::Refused;
            v.row = decided.cloned();
            v.reason = format!(
                "`{current}` → `{target}` is refused: {}",
                advisories::COLLISION_SHORT
            );
            v.advisories = refusals;
            return v;
        }
        if let Some(row) = decided {
            v.kind = VerdictKind::Direct;
            v.supported = true;
            v.zero_downtime = row.zero_downtime;
            v.row = Some(row.clone());
            v.reason = format!(
                "row {} allows `{target}` ({}) from `{current}` (>= {}): {}",
                row.index,
                row.target,
                row.min_current,
                if row.zero_downtime {
                    "zero-downtime allowed"
                } else {
                    "offline only"
                }
            );
            v.advisories = advisories::warnings(current, target, driver);
            return v;
        }
        match hops::plan(&self.parsed, current, target) {
            Some(hops) => {
                v.kind = VerdictKind::NeedsHops;
                v.reason = format!(
                    "no row allows `{current}` → `{target}` directly ({}); upgrade in {} steps: {}",
                    self.minimums_for(t_family),
                    hops.len(),
                    hops.join(" → ")
                );
                v.hops = hops;
                v.advisories = advisories::warnings(current, target, driver);
            }
            None => {
                v.kind = VerdictKind::Impossible;
                v.reason = format!(
                    "no row and no chain of supported upgrades leads from `{current}` to `{target}` ({})",
                    self.minimums_for(t_family)
                );
            }
        }
        v
    }

    /// Among the rows that apply to C → T (T in the row's family, C >= its minimum, C < T), the
    /// zero-downtime one if any, else the first.
    fn deciding_row(&self, current: &Version, target: &Version) -> Option<&PathRow> {
        if current >= target {
            return None;
        }
        let (c, t) = (Family::of(current), Family::of(target));
        let applying: Vec<&PathRow> = self
            .rows
            .iter()
            .zip(&self.parsed)
            .filter(|(_, p)| p.target == t && p.min_current <= c)
            .map(|(row, _)| row)
            .collect();
        applying
            .iter()
            .find(|r| r.zero_downtime)
            .or(applying.first())
            .copied()
    }

    /// "rows for `1.9.x` need at least `1.4.x`" for reasons.
    fn minimums_for(&self, family: Family) -> String {
        let mins: Vec<String> = self
            .rows
            .iter()
            .zip(&self.parsed)
            .filter(|(_, p)| p.target == family)
            .map(|(row, _)| format!("`{}`", row.min_current))
            .collect();
        format!("rows for `{family}` need at least {}", mins.join(" or "))
    }
}

#[cfg(test)]
mod tests;
