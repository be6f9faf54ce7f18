//! Advisories beyond the table, from the numary v1 contract (§4.2, §6.2, §8): the 1.7.5–1.7.8
//! migration-number collision, Postgres extensions, the `_system` registry, long migrations.

use crate::facts::StorageDriver;
use crate::version::Version;

pub(super) const COLLISION_SHORT: &str = "ledgers migrated by 1.7.5–1.7.8 collide with the migrations of 1.8.0 and 1.8.1; go to `>= 1.8.2` (better: the latest 1.9.x)";

fn triple(v: &Version) -> (u64, u64, u64) {
    (v.major(), v.minor(), v.patch())
}

/// 1.7.5–1.7.8 recorded migration `11` as `11-optimized-segments`.
pub(super) fn in_collision_range(v: &Version) -> bool {
    ((1, 7, 5)..=(1, 7, 8)).contains(&triple(v))
}

/// 1.8.0 and 1.8.1 mis-handle a ledger with that `11` recorded.
pub(super) fn is_collision_target(v: &Version) -> bool {
    matches!(triple(v), (1, 8, 0) | (1, 8, 1))
}

/// Advisories that refuse C → T whatever the table says.
pub(super) fn refusals(current: &Version, target: &Version) -> Vec<String> {
    if in_collision_range(current) && is_collision_target(target) {
        vec![format!(
            "refused: from `{current}` (1.7.5–1.7.8) the targets `1.8.0` and `1.8.1` are refused: 1.7.5+ recorded migration 11 as `11-optimized-segments`, so 1.8.x skips its own `11-remove-triggers` (1.8.0 keeps the old trigger and fails on duplicate keys; 1.8.1's `17-optimized-segments` collides on an index 1.7.5 created); upgrade to `>= 1.8.2` instead (better: the latest 1.9.x) and test it on a copy of the storage first"
        )]
    } else {
        Vec::new()
    }
}

/// Warnings for an allowed C → T (directly or through hops).
pub(super) fn warnings(
    current: &Version,
    target: &Version,
    driver: Option<StorageDriver>,
) -> Vec<String> {
    let mut out = Vec::new();
    if in_collision_range(current) && triple(target) >= (1, 8, 2) {
        out.push(format!(
            "from `{current}` (1.7.5–1.7.8): migration `17-optimized-segments` re-inserts all postings without de-duplicating, so these ledgers may end up with duplicated `postings` rows; test the upgrade on a copy of the storage first"
        ));
    }
    if triple(current) < (1, 4, 0) && triple(target) >= (1, 4, 0) {
        out.push(format!(
            "`{current}` predates the `_system` ledger registry (1.3.2/1.4.0): `numary storage scan` must register the existing ledgers before `storage upgrade` (fleetup runs it); compare `storage list` before and after"
        ));
    }
    if triple(target) >= (1, 8, 0) {
        let need = format!(
            "target `{target}` needs the `pgcrypto` and `pg_trgm` extensions: create them beforehand or let the ledger's role run `CREATE EXTENSION`"
        );
        match driver {
            Some(StorageDriver::Postgres) => out.push(format!("postgres storage: {need}")),
            None => out.push(format!("if the storage is Postgres: {need}")),
            Some(StorageDriver::Sqlite) => {}
        }
    }
    let crossed: Vec<&str> = LONG_MIGRATIONS
        .iter()
        .filter(|m| !(m.present)(current) && (m.present)(target))
        .map(|m| m.names)
        .collect();
    if !crossed.is_empty() {
        out.push(format!(
            "long migrations ahead: {}; they scale with ledger size and all pending migrations of a ledger run in one transaction: budget time, memory and disk (WAL) accordingly",
            crossed.join(", ")
        ));
    }
    out
}

/// A migration that is slow on big ledgers, and whether a version ships it.
struct LongMigration {
    names: &'static str,
    present: fn(&Version) -> bool,
}

const LONG_MIGRATIONS: &[LongMigration] = &[
    LongMigration {
        names: "`9-add-pre-post-volumes` (replays the whole log in memory)",
        present: |v| triple(v) >= (1, 7, 0),
    },
    LongMigration {
        names: "`14-update-timestamp-column-type` and `16-denormalize-addresses`",
        present: |v| triple(v) >= (1, 8, 0),
    },
    LongMigration {
        names: "`17-optimized-segments`",
        present: |v| triple(v) >= (1, 8, 1),
    },
    LongMigration {
        // 1.9.4 and 1.10.1 shipped them; 1.10.0 did not (extra recorded versions are ignored).
        names: "`18-optimized-accounts` and `19-optimized-volumes`",
        present: |v| match (v.major(), v.minor()) {
            (1, 9) => v.patch() >= 4,
            (1, 10) => v.patch() >= 1,
            (1, m) => m >= 11,
            _ => false,
        },
    },
];
