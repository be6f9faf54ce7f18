//! Upgrade-path policy: the vendor guide's table of supported paths as data
//! (`src/policy/paths.toml`, embedded; replaceable with `--paths FILE`), its evaluation for a
//! current version C and a target T, the hop planner for paths the table does not allow directly,
//! and the advisories beyond the table (from the numary v1 contract).

use serde::Serialize;

use crate::version::Version;

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

/// The verdict for C → T.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub current: Version,
    pub target: Version,
    /// True when the table allows C → T directly and no advisory refuses it.
    pub supported: bool,
    /// True when the row that decided allows zero-downtime strategies.
    pub zero_downtime: bool,
    /// The row that decided (for supported paths), if any.
    pub row: Option<PathRow>,
    /// When not supported directly: the shortest chain of supported upgrades, each a version or a
    /// family (`1.8.x`), ending with the target. Empty when direct or impossible.
    pub hops: Vec<String>,
    /// Warnings and refusals beyond the table.
    pub advisories: Vec<String>,
    /// One sentence saying why.
    pub reason: String,
}
