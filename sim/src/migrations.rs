//! The per-ledger migrations each simulated release ships, by number and name as in the real
//! `migrations/` (≤1.6) and `migrates/N-name/` (1.7+) directories. The SQL is a simplification
//! that keeps what upgrades can observe: the version rows, the tables, and the index clash
//! between 1.7.5-1.7.8's `11-optimized-segments` and 1.8.1's `17-optimized-segments`.

use crate::version::SimVersion;

/// `VAR_LEDGER_NAME` is replaced by the ledger name, as the real runner does.
pub struct Migration {
    pub number: u32,
    pub name: &'static str,
    pub postgres: Option<String>,
    pub sqlite: Option<String>,
}

const PG_0: &str = r#"
CREATE SCHEMA IF NOT EXISTS "VAR_LEDGER_NAME";
CREATE TABLE IF NOT EXISTS "VAR_LEDGER_NAME".migrations (version varchar, date varchar, UNIQUE("version"));
CREATE TABLE IF NOT EXISTS "VAR_LEDGER_NAME".transactions (
  "id" bigint, "timestamp" varchar, "reference" varchar, "hash" varchar,
  "postings" jsonb, "metadata" jsonb DEFAULT '{}', UNIQUE("id"), UNIQUE("reference"));
CREATE TABLE IF NOT EXISTS "VAR_LEDGER_NAME".postings (
  "id" smallint, "txid" bigint, "source" varchar, "destination" varchar, "amount" bigint,
  "asset" varchar, UNIQUE("id", "txid"));
CREATE INDEX IF NOT EXISTS p_c0 ON "VAR_LEDGER_NAME".postings ("txid" DESC, "source", "destination");
CREATE TABLE IF NOT EXISTS "VAR_LEDGER_NAME".metadata (
  "meta_id" bigint, "meta_target_type" varchar, "meta_target_id" varchar, "meta_key" varchar,
  "meta_value" varchar, "timestamp" varchar, UNIQUE("meta_id"));
CREATE TABLE IF NOT EXISTS "VAR_LEDGER_NAME".contract ("contract_id" varchar, "contract_account" varchar, "contract_expr" varchar, UNIQUE("contract_id"));
CREATE TABLE IF NOT EXISTS "VAR_LEDGER_NAME".mapping ("mapping_id" varchar, "mapping" varchar, UNIQUE("mapping_id"));
"#;

const SQLITE_0: &str = r#"
CREATE TABLE IF NOT EXISTS transactions (
  "id" integer, "timestamp" varchar, "reference" varchar, "hash" varchar,
  "postings" varchar, "metadata" varchar DEFAULT '{}', UNIQUE("id"), UNIQUE("reference"));
CREATE TABLE IF NOT EXISTS migrations (version varchar, date varchar, UNIQUE("version"));
CREATE TABLE IF NOT EXISTS postings (
  "id" integer, "txid" integer, "source" varchar, "destination" varchar, "amount" integer,
  "asset" varchar, UNIQUE("id", "txid"));
CREATE INDEX IF NOT EXISTS 'p_c0' ON "postings" ("txid" DESC, "source", "destination");
CREATE TABLE IF NOT EXISTS metadata (
  "meta_id" integer, "meta_target_type" varchar, "meta_target_id" varchar, "meta_key" varchar,
  "meta_value" varchar, "timestamp" varchar, UNIQUE("meta_id"));
CREATE TABLE IF NOT EXISTS mapping ("mapping_id" varchar, "mapping" varchar, UNIQUE("mapping_id"));
"#;

const PG_1: &str = r#"
CREATE TABLE IF NOT EXISTS "VAR_LEDGER_NAME".volumes ("account" varchar, "asset" varchar, "input" bigint, "output" bigint, UNIQUE("account", "asset"));
CREATE TABLE IF NOT EXISTS "VAR_LEDGER_NAME".accounts ("address" varchar, "metadata" jsonb DEFAULT '{}', UNIQUE("address"));
CREATE TABLE IF NOT EXISTS "VAR_LEDGER_NAME".log ("id" bigint, "type" varchar, "hash" varchar, "date" timestamp with time zone, "data" jsonb, UNIQUE("id"));
CREATE INDEX IF NOT EXISTS volumes_account ON "VAR_LEDGER_NAME".volumes ("account");
"#;

const SQLITE_1: &str = r#"
CREATE TABLE IF NOT EXISTS volumes ("account" varchar, "asset" varchar, "input" integer, "output" integer, UNIQUE("account", "asset"));
CREATE TABLE IF NOT EXISTS accounts ("address" varchar, "metadata" varchar DEFAULT '{}', UNIQUE("address"));
CREATE TABLE IF NOT EXISTS log ("id" integer primary key autoincrement, "type" varchar, "hash" varchar, "date" date, "data" varchar);
"#;

/// Stands for the real migrations that only (re)define SQL functions, triggers or indexes the
/// simulator does not use: their version row is what upgrades can observe. (SQLite halves of
/// such migrations are left without a handler, which records the row all the same.)
const PG_FUNCTIONS: &str = "SELECT 1;";

const PG_3: &str = r#"
CREATE INDEX IF NOT EXISTS account_address ON "VAR_LEDGER_NAME".accounts ("address");
CREATE INDEX IF NOT EXISTS log_id ON "VAR_LEDGER_NAME".log ("id");
"#;

const PG_5: &str = r#"
DROP TABLE IF EXISTS "VAR_LEDGER_NAME".metadata;
DROP TABLE IF EXISTS "VAR_LEDGER_NAME".contract;
DROP TABLE IF EXISTS "VAR_LEDGER_NAME".postings CASCADE;
"#;

const PG_8: &str = r#"
ALTER TABLE "VAR_LEDGER_NAME".transactions ADD COLUMN IF NOT EXISTS "pre_commit_volumes" jsonb;
ALTER TABLE "VAR_LEDGER_NAME".transactions ADD COLUMN IF NOT EXISTS "post_commit_volumes" jsonb;
"#;

const SQLITE_2: &str = r#"
ALTER TABLE transactions ADD COLUMN "pre_commit_volumes" varchar;
ALTER TABLE transactions ADD COLUMN "post_commit_volumes" varchar;
"#;

const PG_12: &str = r#"
ALTER TABLE "VAR_LEDGER_NAME".volumes ALTER COLUMN "input" TYPE numeric, ALTER COLUMN "output" TYPE numeric;
"#;

const PG_14: &str = r#"
ALTER TABLE "VAR_LEDGER_NAME".transactions ALTER COLUMN "timestamp" TYPE timestamptz USING "timestamp"::timestamptz;
"#;

const PG_15: &str = r#"
CREATE TABLE IF NOT EXISTS "VAR_LEDGER_NAME".idempotency ("key" varchar, "date" varchar, "status_code" int, "headers" varchar, "body" varchar, "request_hash" varchar, PRIMARY KEY("key"));
"#;

const SQLITE_15: &str = r#"
CREATE TABLE IF NOT EXISTS idempotency ("key" varchar, "date" varchar, "status_code" int, "headers" varchar, "body" varchar, "request_hash" varchar, PRIMARY KEY("key"));
"#;

/// Needs `pg_trgm`, like the real one.
const PG_16: &str = r#"
alter table "VAR_LEDGER_NAME".transactions add column if not exists sources text;
alter table "VAR_LEDGER_NAME".transactions add column if not exists destinations text;
create index transactions_sources ON "VAR_LEDGER_NAME".transactions USING GIN (sources gin_trgm_ops);
create index transactions_destinations ON "VAR_LEDGER_NAME".transactions USING GIN (destinations gin_trgm_ops);
"#;

const SQLITE_16: &str = r#"
ALTER TABLE transactions ADD COLUMN sources text;
ALTER TABLE transactions ADD COLUMN destinations text;
"#;

/// The `postings` table of the optimized-segments migrations, backfilled from
/// `transactions.postings`. 1.7.5-1.7.8's #11 guards nothing; 1.8.1's #17 (which also drops
/// 1.8.0's denormalized columns) guards only the table, so its indexes clash with #11's;
/// 1.8.2 added `IF NOT EXISTS` to the indexes ("Upgrade sql index #404").
fn optimized_segments(from_1_8: bool, guard_indexes: bool) -> String {
    let table_guard = if from_1_8 { "if not exists " } else { "" };
    let index_guard = if guard_indexes { "if not exists " } else { "" };
    let mut sql = String::new();
    if from_1_8 {
        sql.push_str(
            r#"alter table "VAR_LEDGER_NAME".transactions drop column if exists sources;
alter table "VAR_LEDGER_NAME".transactions drop column if exists destinations;
"#,
        );
    }
    sql.push_str(&format!(
        r#"create table {table_guard}"VAR_LEDGER_NAME".postings (txid bigint, posting_index integer, source jsonb, destination jsonb);
create index {index_guard}postings_src on "VAR_LEDGER_NAME".postings using GIN(source);
create index {index_guard}postings_dest on "VAR_LEDGER_NAME".postings using GIN(destination);
create index {index_guard}postings_txid on "VAR_LEDGER_NAME".postings (txid asc);
insert into "VAR_LEDGER_NAME".postings(txid, posting_index, source, destination)
select txs.id as txid, i - 1 as posting_index,
    array_to_json(string_to_array(t.posting->>'source', ':'))::jsonb as source,
    array_to_json(string_to_array(t.posting->>'destination', ':'))::jsonb as destination
from "VAR_LEDGER_NAME".transactions txs
join lateral jsonb_array_elements(txs.postings) with ordinality as t(posting, i) on true;
"#
    ));
    sql
}

const PG_18: &str = r#"
alter table "VAR_LEDGER_NAME".accounts add column if not exists address_json jsonb;
update "VAR_LEDGER_NAME".accounts set address_json = to_jsonb(string_to_array(address, ':'));
create index if not exists accounts_address_json on "VAR_LEDGER_NAME".accounts using GIN(address_json);
"#;

const PG_19: &str = r#"
alter table "VAR_LEDGER_NAME".volumes add column if not exists account_json jsonb;
update "VAR_LEDGER_NAME".volumes set account_json = to_jsonb(string_to_array(account, ':'));
create index if not exists volumes_account_json on "VAR_LEDGER_NAME".volumes using GIN(account_json);
"#;

const PG_20: &str = r#"
create index if not exists transactions_id_timestamp on "VAR_LEDGER_NAME".transactions(id, "timestamp");
"#;

const PG_21: &str = r#"
create index if not exists log_date on "VAR_LEDGER_NAME".log("date");
"#;

fn m(number: u32, name: &'static str, postgres: Option<&str>, sqlite: Option<&str>) -> Migration {
    Migration {
        number,
        name,
        postgres: postgres.map(str::to_owned),
        sqlite: sqlite.map(str::to_owned),
    }
}

/// The migrations of `version`, in the order the real runner applies them.
pub fn for_version(version: SimVersion) -> Vec<Migration> {
    let (minor, patch) = (version.minor, version.patch);
    let mut list = vec![m(0, "init-schema", Some(PG_0), Some(SQLITE_0))];
    if minor < 3 || (minor == 3 && patch < 2) {
        return list;
    }
    list.push(m(1, "add-triggers", Some(PG_1), Some(SQLITE_1)));
    list.push(m(2, "add-meta-compare", Some(PG_FUNCTIONS), None));
    list.push(m(3, "function-use_account", Some(PG_3), None));
    list.push(m(
        4,
        "rewrite-function-use_account",
        Some(PG_FUNCTIONS),
        None,
    ));
    list.push(m(5, "drop-unused-index", Some(PG_5), None));
    list.push(m(
        6,
        "add-functions-to-filter-on-tx-addresses",
        Some(PG_FUNCTIONS),
        None,
    ));
    // 1.3.2-1.3.3 shipped 7.sql; 1.4.x did not; 1.5.0 brought it back.
    if minor == 3 || minor >= 5 {
        list.push(m(7, "fix-meta_compare", Some(PG_FUNCTIONS), None));
    }
    if minor < 6 {
        return list;
    }
    list.push(m(8, "add-columns-on-transactions", Some(PG_8), None));
    // SQLite's `2.sql` (1.6.0) is the sqlite half of the 1.7 `2-add-meta-compare` directory.
    if let Some(two) = list.iter_mut().find(|x| x.number == 2) {
        two.sqlite = Some(SQLITE_2.to_owned());
    }
    if minor < 7 {
        return list;
    }
    list.push(m(9, "add-pre-post-volumes", None, None));
    list.push(m(
        10,
        "filter-transactions-using-regex",
        Some(PG_FUNCTIONS),
        None,
    ));
    if minor == 7 {
        if patch >= 5 {
            list.push(m(
                11,
                "optimized-segments",
                Some(&optimized_segments(false, false)),
                None,
            ));
        }
        return list;
    }
    list.push(m(11, "remove-triggers", Some(PG_FUNCTIONS), None));
    list.push(m(12, "amounts-numeric", Some(PG_12), None));
    list.push(m(13, "clean-logs", Some(PG_FUNCTIONS), None));
    list.push(m(14, "update-timestamp-column-type", Some(PG_14), None));
    list.push(m(15, "add-idempotency-table", Some(PG_15), Some(SQLITE_15)));
    list.push(m(16, "denormalize-addresses", Some(PG_16), Some(SQLITE_16)));
    if minor == 8 && patch == 0 {
        return list;
    }
    let seventeen = optimized_segments(true, !(minor == 8 && patch == 1));
    list.push(m(17, "optimized-segments", Some(&seventeen), None));
    // 18-19 came with 1.9.4 and 1.10.1, 20 with 1.9.6 and 1.10.3 (1.10.0 ships 0-17 only).
    let (has_18, has_20) = match minor {
        9 => (patch >= 4, patch >= 6),
        10 => (patch >= 1, patch >= 3),
        8 => (false, false),
        _ => (true, true),
    };
    if has_18 {
        list.push(m(18, "optimized-accounts", Some(PG_18), None));
        list.push(m(19, "optimized-volumes", Some(PG_19), None));
    }
    if has_20 {
        list.push(m(20, "optimized-indexes", Some(PG_20), None));
    }
    if minor >= 11 {
        list.push(m(21, "optimized-temporal", Some(PG_21), None));
    }
    list
}

/// The releases that ship migrations, as tagged in formancehq/ledger (`(minor, last patch)`;
/// 1.11 and 1.12 by their first tag). Older releases ship migration 0 only.
const RELEASES: &[(u64, u64)] = &[
    (3, 3),
    (4, 6),
    (5, 0),
    (6, 1),
    (7, 8),
    (8, 3),
    (9, 6),
    (10, 16),
    (11, 0),
    (12, 0),
];

/// The first release after `after` that ships migration `number`: the release whose schema a
/// ledger carrying `number` (unknown to `after`) comes from, as `after` sees it. For 1.10.0 a
/// 20 comes from 1.10.3, not 1.9.6; for 1.7.4 an 11 comes from 1.7.5.
pub fn first_shipped_after(after: SimVersion, number: u32) -> Option<SimVersion> {
    RELEASES
        .iter()
        .flat_map(|&(minor, last)| {
            let first = if minor == 3 { 2 } else { 0 };
            (first..=last).map(move |patch| SimVersion {
                major: 1,
                minor,
                patch,
            })
        })
        .filter(|release| *release > after)
        .find(|release| for_version(*release).iter().any(|m| m.number == number))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbers(v: &str) -> Vec<u32> {
        for_version(SimVersion::parse(v).unwrap())
            .iter()
            .map(|m| m.number)
            .collect()
    }

    #[test]
    fn release_families_ship_the_documented_numbers() {
        assert_eq!(numbers("1.4.6"), (0..=6).collect::<Vec<_>>());
        assert_eq!(numbers("1.5.0"), (0..=7).collect::<Vec<_>>());
        assert_eq!(numbers("1.6.1"), (0..=8).collect::<Vec<_>>());
        assert_eq!(numbers("1.7.4"), (0..=10).collect::<Vec<_>>());
        assert_eq!(numbers("1.7.6"), (0..=11).collect::<Vec<_>>());
        assert_eq!(numbers("1.8.0"), (0..=16).collect::<Vec<_>>());
        assert_eq!(numbers("1.8.1"), (0..=17).collect::<Vec<_>>());
        assert_eq!(numbers("1.9.3"), (0..=17).collect::<Vec<_>>());
        assert_eq!(numbers("1.9.4"), (0..=19).collect::<Vec<_>>());
        assert_eq!(numbers("1.9.6"), (0..=20).collect::<Vec<_>>());
        assert_eq!(numbers("1.10.0"), (0..=17).collect::<Vec<_>>());
        assert_eq!(numbers("1.10.1"), (0..=19).collect::<Vec<_>>());
        assert_eq!(numbers("1.10.16"), (0..=20).collect::<Vec<_>>());
        assert_eq!(numbers("1.11.0"), (0..=21).collect::<Vec<_>>());
        assert_eq!(numbers("1.2.1"), vec![0]);
    }

    #[test]
    fn a_migration_comes_from_the_first_later_release_that_ships_it() {
        let from = |after: &str, n: u32| {
            first_shipped_after(SimVersion::parse(after).unwrap(), n).map(|v| v.to_string())
        };
        assert_eq!(from("1.8.2", 20).as_deref(), Some("1.9.6"));
        assert_eq!(from("1.8.2", 18).as_deref(), Some("1.9.4"));
        assert_eq!(from("1.10.0", 20).as_deref(), Some("1.10.3"));
        assert_eq!(from("1.7.4", 11).as_deref(), Some("1.7.5"));
        assert_eq!(from("1.7.4", 17).as_deref(), Some("1.8.1"));
        assert_eq!(from("1.4.6", 7).as_deref(), Some("1.5.0"));
        assert_eq!(from("1.11.0", 22), None);
    }

    #[test]
    fn number_eleven_means_different_things() {
        let name = |v: &str| {
            for_version(SimVersion::parse(v).unwrap())
                .into_iter()
                .find(|m| m.number == 11)
                .map(|m| m.name)
        };
        assert_eq!(name("1.7.5"), Some("optimized-segments"));
        assert_eq!(name("1.8.0"), Some("remove-triggers"));
        assert_eq!(name("1.7.4"), None);
    }

    #[test]
    fn only_1_8_1_lacks_if_not_exists_on_17() {
        let sql = |v: &str| {
            for_version(SimVersion::parse(v).unwrap())
                .into_iter()
                .find(|m| m.number == 17)
                .and_then(|m| m.postgres)
                .unwrap_or_default()
        };
        assert!(sql("1.8.1").contains("create index postings_src"));
        assert!(sql("1.8.2").contains("create index if not exists postings_src"));
    }
}
