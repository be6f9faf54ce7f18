//! The hop planner: when no row allows C → T directly, the shortest chain of supported upgrades
//! through the table's target families, ties broken toward families closest to the target.

use std::collections::BTreeMap;

use super::advisories::{in_collision_range, is_collision_target};
use super::table::ParsedRow;
use super::{Family, Version};

/// The hops from `current` to `target`: intermediate families (oldest first), then the target
/// itself. `None` when no chain exists. Assumes `current < target` and no direct row.
pub(super) fn plan(rows: &[ParsedRow], current: &Version, target: &Version) -> Option<Vec<String>> {
    let start = Family::of(current);
    let goal = Family::of(target);
    // Moving within a family never helps (row minimums are families), so each hop climbs.
    let mut candidates: Vec<Family> = rows
        .iter()
        .map(|r| r.target)
        .filter(|f| *f > start && *f < goal)
        .collect();
    candidates.sort();
    candidates.dedup();

    let can_enter = |from: Family, to: Family| {
        to > from && rows.iter().any(|r| r.target == to && r.min_current <= from)
    };

    // Steps left to reach the target from each candidate family. Hops only climb, so the graph
    // is acyclic: fill it from the highest family down.
    let mut steps: BTreeMap<Family, usize> = BTreeMap::new();
    for &f in candidates.iter().rev() {
        let best = if can_enter(f, goal) {
            Some(1)
        } else {
            steps
                .iter()
                .filter(|(g, _)| can_enter(f, **g))
                .map(|(_, n)| n + 1)
                .min()
        };
        if let Some(n) = best {
            steps.insert(f, n);
        }
    }

    // Walk forward: at each step the reachable family with the fewest steps left, the highest
    // on ties (closest to the target).
    let mut chain: Vec<Family> = Vec::new();
    let mut at = start;
    loop {
        let next = steps
            .iter()
            .filter(|(g, _)| can_enter(at, **g))
            .min_by(|(ga, na), (gb, nb)| na.cmp(nb).then(gb.cmp(ga)))
            .map(|(g, _)| *g)?;
        chain.push(next);
        if can_enter(next, goal) {
            break;
        }
        at = next;
    }
    Some(render(&chain, current, target))
}

/// Families as `1.8.x`, with the constraints the 1.7.5–1.7.8 migration collision puts on them,
/// then the target.
fn render(chain: &[Family], current: &Version, target: &Version) -> Vec<String> {
    const V1_7: Family = Family { major: 1, minor: 7 };
    const V1_8: Family = Family { major: 1, minor: 8 };
    let mut out = Vec::with_capacity(chain.len() + 1);
    for (i, &family) in chain.iter().enumerate() {
        // The previous stop may be 1.7.5–1.7.8: C itself, or any patch of a 1.7.x hop.
        let from_collision_range = match i.checked_sub(1).map(|p| chain[p]) {
            None => in_collision_range(current),
            Some(prev) => prev == V1_7,
        };
        let next_is_collision_target = i + 1 == chain.len() && is_collision_target(target);
        let text = if family == V1_8 && from_collision_range {
            format!("{family} (>= 1.8.2)")
        } else if family == V1_7 && next_is_collision_target {
            format!("{family} (<= 1.7.4)")
        } else {
            family.to_string()
        };
        out.push(text);
    }
    out.push(target.to_string());
    out
}
