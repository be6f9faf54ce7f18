//! The vendor guide's table of supported upgrade paths ("Upgrade existing deployment", rows
//! verbatim), and the one rule the simulator draws from it: whether a node at one release may
//! keep serving, with zero downtime, a schema another release migrated. The misuse checks ask
//! this so a rolling upgrade the guide allows records nothing.

use crate::version::SimVersion;

/// One row of the guide's table, as printed there.
pub struct Row {
    pub target: &'static str,
    pub minimum_current: &'static str,
    pub zero_downtime: &'static str,
}

const fn row(
    target: &'static str,
    minimum_current: &'static str,
    zero_downtime: &'static str,
) -> Row {
    Row {
        target,
        minimum_current,
        zero_downtime,
    }
}

/// The table, rows in the guide's order (it never got a 1.10.x row).
pub const TABLE: &[Row] = &[
    row("1.9.x", "1.4.x", "Yes"),
    row(
        "1.8.x",
        "1.4.x",
        "No (but its link points to the zero-downtime anchor)",
    ),
    row("1.8.x", "1.x", "No"),
    row("1.7.x", "1.4.x", "Yes"),
    row("1.7.x", "1.x", "No"),
    row("1.6.x", "1.x", "No"),
    row("1.6.x", "1.4.x", "Yes"),
    row("1.5.x", "1.x", "No"),
    row("1.5.x", "1.4.x", "Yes"),
    row("1.4.x", "1.x", "No"),
    row("1.4.x", "1.4.x", "Yes"),
    row("1.3.x", "1.x", "No"),
    row("1.3.x", "1.3.x", "Yes"),
    row("1.2.x", "1.x", "No"),
    row("1.2.x", "1.2.x", "Yes"),
    row("1.1.x", "1.x", "No"),
    row("1.1.x", "1.1.x", "Yes"),
];

/// `1.9.x` → `[1, 9]`, `1.x` → `[1]`: the fixed leading numbers of a pattern.
fn fixed(pattern: &str) -> Vec<u64> {
    pattern
        .split('.')
        .take_while(|part| *part != "x")
        .filter_map(|part| part.parse().ok())
        .collect()
}

fn numbers(version: SimVersion) -> [u64; 3] {
    [version.major, version.minor, version.patch]
}

/// `version` is one of the releases `pattern` names (`1.9.6` is a `1.9.x`).
fn in_line(version: SimVersion, pattern: &str) -> bool {
    let fixed = fixed(pattern);
    numbers(version).starts_with(&fixed)
}

/// `version` is at least the oldest release `pattern` names (`1.8.2` meets `1.4.x`).
fn meets(version: SimVersion, pattern: &str) -> bool {
    numbers(version).as_slice() >= fixed(pattern).as_slice()
}

impl Row {
    fn says_yes(&self) -> bool {
        self.zero_downtime == "Yes"
    }
}

/// Whether a node at `current` may keep serving what `target` leaves in the storage (its
/// schema, migrated while `current` serves): `current` is not newer than `target`, and a row
/// for `target`'s line whose minimum current version `current` meets says zero-downtime Yes.
pub fn zero_downtime(current: SimVersion, target: SimVersion) -> bool {
    current <= target
        && TABLE
            .iter()
            .any(|r| in_line(target, r.target) && meets(current, r.minimum_current) && r.says_yes())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(text: &str) -> SimVersion {
        SimVersion::parse(text).unwrap()
    }

    #[test]
    fn every_pattern_of_the_table_is_understood() {
        for r in TABLE {
            assert_eq!(fixed(r.target).len(), 2, "{}", r.target);
            assert!(
                !fixed(r.minimum_current).is_empty(),
                "{}",
                r.minimum_current
            );
            assert!(r.zero_downtime == "Yes" || r.zero_downtime.starts_with("No"));
        }
    }

    #[test]
    fn the_rows_decide_zero_downtime() {
        // 1.9.x from 1.4.x: Yes.
        assert!(zero_downtime(v("1.8.2"), v("1.9.6")));
        assert!(zero_downtime(v("1.4.0"), v("1.9.0")));
        assert!(zero_downtime(v("1.9.6"), v("1.9.6")));
        // 1.8.x: No from anywhere.
        assert!(!zero_downtime(v("1.7.4"), v("1.8.2")));
        assert!(!zero_downtime(v("1.8.1"), v("1.8.2")));
        // 1.7.x from 1.3.x: only the `1.x` row applies, and it says No.
        assert!(zero_downtime(v("1.7.4"), v("1.7.5")));
        assert!(!zero_downtime(v("1.3.3"), v("1.7.5")));
        // No 1.10.x row at all.
        assert!(!zero_downtime(v("1.9.6"), v("1.10.3")));
        // A newer node serving what an older release leaves is not what the table promises.
        assert!(!zero_downtime(v("1.9.6"), v("1.9.4")));
    }
}
