//! Tests of the policy: every row of the guide's table, the hop planner, the advisories and the
//! refusals.

use super::*;

fn v(s: &str) -> Version {
    Version::parse(s).unwrap()
}

fn eval(c: &str, t: &str) -> Verdict {
    PolicyTable::builtin().evaluate(&v(c), &v(t))
}

fn custom(rows: &[(&str, &str, bool)]) -> PolicyTable {
    let text: String = rows
        .iter()
        .map(|(t, m, z)| {
            format!("[[path]]\ntarget = \"{t}\"\nmin_current = \"{m}\"\nzero_downtime = {z}\n")
        })
        .collect();
    PolicyTable::from_toml(&text, "custom.toml").unwrap()
}

#[test]
fn builtin_table_has_the_guides_rows() {
    let table = PolicyTable::builtin();
    let rows: Vec<(usize, &str, &str, bool)> = table
        .rows()
        .iter()
        .map(|r| {
            (
                r.index,
                r.target.as_str(),
                r.min_current.as_str(),
                r.zero_downtime,
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (1, "1.9.x", "1.4.x", true),
            (2, "1.8.x", "1.4.x", false),
            (3, "1.8.x", "1.x", false),
            (4, "1.7.x", "1.4.x", true),
            (5, "1.7.x", "1.x", false),
            (6, "1.6.x", "1.x", false),
            (7, "1.6.x", "1.4.x", true),
            (8, "1.5.x", "1.x", false),
            (9, "1.5.x", "1.4.x", true),
            (10, "1.4.x", "1.x", false),
            (11, "1.4.x", "1.4.x", true),
            (12, "1.3.x", "1.x", false),
            (13, "1.3.x", "1.3.x", true),
            (14, "1.2.x", "1.x", false),
            (15, "1.2.x", "1.2.x", true),
            (16, "1.1.x", "1.x", false),
            (17, "1.1.x", "1.1.x", true),
        ]
    );
}

/// For every row of the guide's table, one upgrade that row decides, with its strategy.
#[test]
fn every_row_decides_an_upgrade() {
    let cases = [
        ("1.4.0", "1.9.0", 1, true),
        ("1.5.0", "1.8.0", 2, false),
        ("1.2.0", "1.8.3", 3, false),
        ("1.4.6", "1.7.0", 4, true),
        ("1.3.3", "1.7.4", 5, false),
        ("1.2.0", "1.6.0", 6, false),
        ("1.5.0", "1.6.1", 7, true),
        ("1.3.1", "1.5.0", 8, false),
        ("1.4.2", "1.5.0", 9, true),
        ("1.3.1", "1.4.0", 10, false),
        ("1.4.0", "1.4.6", 11, true),
        ("1.2.0", "1.3.0", 12, false),
        ("1.3.1", "1.3.3", 13, true),
        ("1.1.0", "1.2.0", 14, false),
        ("1.2.0", "1.2.1", 15, true),
        ("1.0.0", "1.1.0", 16, false),
        ("1.1.0", "1.1.1", 17, true),
    ];
    let mut decided = Vec::new();
    for (c, t, row, zero_downtime) in cases {
        let verdict = eval(c, t);
        assert_eq!(
            verdict.kind,
            VerdictKind::Direct,
            "{c} → {t}: {}",
            verdict.reason
        );
        assert!(verdict.supported, "{c} → {t}");
        assert!(verdict.hops.is_empty(), "{c} → {t}: {:?}", verdict.hops);
        let got = verdict.row.as_ref().map(|r| r.index);
        assert_eq!(got, Some(row), "{c} → {t}: {}", verdict.reason);
        assert_eq!(verdict.zero_downtime, zero_downtime, "{c} → {t}");
        assert!(
            verdict.reason.contains(&format!("row {row} ")),
            "{}",
            verdict.reason
        );
        decided.push(row);
    }
    decided.sort();
    assert_eq!(decided, (1..=17).collect::<Vec<_>>());
}

#[test]
fn zero_downtime_row_wins_whatever_its_position() {
    // Rows 6 (1.x, no) and 7 (1.4.x, yes) both apply; 7 comes later but allows zero-downtime.
    let verdict = eval("1.4.0", "1.6.0");
    assert_eq!(verdict.row.map(|r| r.index), Some(7));
    assert!(verdict.zero_downtime);
}

#[test]
fn versions_with_leading_v_evaluate_like_bare_ones() {
    let with_v = eval("v1.7.4", "v1.8.2");
    let bare = eval("1.7.4", "1.8.2");
    assert_eq!(with_v, bare);
    assert_eq!(with_v.kind, VerdictKind::Direct);
    assert_eq!(with_v.current.to_string(), "1.7.4");
}

#[test]
fn same_version_is_nothing_to_do() {
    let verdict = eval("1.9.6", "v1.9.6");
    assert_eq!(verdict.kind, VerdictKind::AlreadyAtTarget);
    assert!(verdict.supported);
    assert!(
        verdict.zero_downtime,
        "a node with nothing to do must not constrain the strategy"
    );
    assert!(
        verdict.reason.contains("already at target"),
        "{}",
        verdict.reason
    );
}

/// Refusals that do not depend on the table: each kind with the words its reason must carry.
#[test]
fn downgrades_and_other_majors_are_refused() {
    let cases = [
        (
            "1.9.0",
            "1.8.2",
            VerdictKind::Downgrade,
            "restore the backup",
        ),
        (
            "1.8.2",
            "1.8.1",
            VerdictKind::Downgrade,
            "restore the backup",
        ),
        (
            "1.10.3",
            "1.9.6",
            VerdictKind::Downgrade,
            "no down-migrations",
        ),
        ("1.9.6", "2.0.0", VerdictKind::MajorTwo, "`ledger migrate`"),
        ("2.1.0", "2.2.0", VerdictKind::MajorTwo, "`ledger migrate`"),
        ("2.0.0", "2.0.0", VerdictKind::MajorTwo, "`ledger migrate`"),
        ("0.9.0", "1.4.0", VerdictKind::UnsupportedMajor, "`0.9.0`"),
        ("1.9.0", "3.0.0", VerdictKind::UnsupportedMajor, "`3.0.0`"),
    ];
    for (c, t, kind, needle) in cases {
        let verdict = eval(c, t);
        assert_eq!(verdict.kind, kind, "{c} → {t}");
        assert!(!verdict.supported, "{c} → {t}");
        assert!(!verdict.zero_downtime, "{c} → {t}");
        assert!(verdict.hops.is_empty(), "{c} → {t}");
        assert!(
            verdict.reason.contains(needle),
            "{c} → {t}: {}",
            verdict.reason
        );
    }
}

#[test]
fn target_without_rows_is_unknown_and_points_at_paths_file() {
    for t in ["1.10.0", "1.11.2"] {
        let verdict = eval("1.9.6", t);
        assert_eq!(verdict.kind, VerdictKind::UnknownTarget, "{t}");
        assert!(!verdict.supported);
        assert!(verdict.hops.is_empty());
        assert!(
            verdict.reason.contains("--paths FILE"),
            "{}",
            verdict.reason
        );
    }
}

#[test]
fn operator_rows_make_new_targets_known() {
    let table = custom(&[("1.10.x", "1.9.x", false), ("1.9.x", "1.4.x", true)]);
    let verdict = table.evaluate(&v("1.9.6"), &v("1.10.3"));
    assert_eq!(verdict.kind, VerdictKind::Direct);
    assert_eq!(verdict.row.map(|r| r.index), Some(1));
    assert!(!verdict.zero_downtime);
}

#[test]
fn hops_direct_path_has_none() {
    let verdict = eval("1.4.0", "1.9.0");
    assert!(verdict.hops.is_empty());
}

#[test]
fn hops_one_intermediate_prefers_the_family_closest_to_the_target() {
    // 1.9.x needs >= 1.4.x; from 1.2.3 both 1.4.x..=1.8.x are one hop away: 1.8.x is closest.
    for c in ["1.2.3", "v1.0.0", "1.3.3"] {
        let verdict = eval(c, "1.9.0");
        assert_eq!(
            verdict.kind,
            VerdictKind::NeedsHops,
            "{c}: {}",
            verdict.reason
        );
        assert!(!verdict.supported);
        assert!(!verdict.zero_downtime);
        assert_eq!(verdict.row, None);
        assert_eq!(verdict.hops, vec!["1.8.x", "1.9.0"], "{c}");
        assert!(
            verdict.reason.contains("1.8.x → 1.9.0"),
            "{}",
            verdict.reason
        );
        assert!(verdict.reason.contains("`1.4.x`"), "{}", verdict.reason);
    }
}

#[test]
fn hops_two_intermediates_with_tie_break() {
    let table = custom(&[
        ("1.9.x", "1.7.x", true),
        ("1.7.x", "1.5.x", false),
        ("1.6.x", "1.x", false),
        ("1.5.x", "1.x", false),
    ]);
    let verdict = table.evaluate(&v("1.2.3"), &v("1.9.1"));
    assert_eq!(verdict.kind, VerdictKind::NeedsHops);
    // 1.5.x and 1.6.x both lead to 1.7.x: the closer one (1.6.x) is chosen.
    assert_eq!(verdict.hops, vec!["1.6.x", "1.7.x", "1.9.1"]);
    // From inside the chain, fewer hops remain.
    let verdict = table.evaluate(&v("1.5.0"), &v("1.9.1"));
    assert_eq!(verdict.hops, vec!["1.7.x", "1.9.1"]);
}

#[test]
fn hops_impossible_when_no_chain_exists() {
    let table = custom(&[("1.9.x", "1.4.x", true), ("1.3.x", "1.x", false)]);
    let verdict = table.evaluate(&v("1.2.3"), &v("1.9.0"));
    assert_eq!(verdict.kind, VerdictKind::Impossible);
    assert!(!verdict.supported);
    assert!(verdict.hops.is_empty());
    assert!(verdict.reason.contains("no chain"), "{}", verdict.reason);
}

#[test]
fn hops_through_1_8_from_collision_range_require_1_8_2() {
    let table = custom(&[("1.9.x", "1.8.x", true), ("1.8.x", "1.x", false)]);
    let verdict = table.evaluate(&v("1.7.6"), &v("1.9.0"));
    assert_eq!(verdict.hops, vec!["1.8.x (>= 1.8.2)", "1.9.0"]);
    let verdict = table.evaluate(&v("1.7.4"), &v("1.9.0"));
    assert_eq!(verdict.hops, vec!["1.8.x", "1.9.0"]);
    // A 1.7.x stop may land on 1.7.5–1.7.8 too.
    let table = custom(&[
        ("1.9.x", "1.8.x", true),
        ("1.8.x", "1.7.x", false),
        ("1.7.x", "1.x", false),
    ]);
    let verdict = table.evaluate(&v("1.5.0"), &v("1.9.0"));
    assert_eq!(verdict.hops, vec!["1.7.x", "1.8.x (>= 1.8.2)", "1.9.0"]);
    let verdict = table.evaluate(&v("1.5.0"), &v("1.8.1"));
    assert_eq!(verdict.hops, vec!["1.7.x (<= 1.7.4)", "1.8.1"]);
}

#[test]
fn collision_range_refuses_1_8_0_and_1_8_1() {
    for c in ["1.7.5", "1.7.6", "1.7.7", "1.7.8"] {
        for t in ["1.8.0", "1.8.1"] {
            let verdict = eval(c, t);
            assert_eq!(verdict.kind, VerdictKind::Refused, "{c} → {t}");
            assert!(!verdict.supported);
            assert!(!verdict.zero_downtime);
            assert!(verdict.hops.is_empty());
            // The row that would have allowed it is still named.
            assert_eq!(verdict.row.as_ref().map(|r| r.index), Some(2));
            assert!(
                verdict.advisories[0].starts_with("refused: "),
                "{:?}",
                verdict.advisories
            );
            assert!(
                verdict.advisories[0].contains(">= 1.8.2"),
                "{:?}",
                verdict.advisories
            );
            assert!(verdict.reason.contains(">= 1.8.2"), "{}", verdict.reason);
        }
    }
}

#[test]
fn collision_range_to_1_8_2_and_later_warns_about_duplicated_postings() {
    for t in ["1.8.2", "1.8.3", "1.9.6"] {
        let verdict = eval("1.7.6", t);
        assert_eq!(verdict.kind, VerdictKind::Direct, "{t}");
        assert!(verdict.supported);
        let warned = verdict
            .advisories
            .iter()
            .any(|a| a.contains("duplicated `postings` rows"));
        assert!(warned, "{t}: {:?}", verdict.advisories);
    }
    // Outside the range: neither refusal nor warning.
    for c in ["1.7.4", "1.6.1"] {
        let verdict = eval(c, "1.8.1");
        assert_eq!(verdict.kind, VerdictKind::Direct, "{c}");
        assert!(
            !verdict.advisories.iter().any(|a| a.contains("postings")),
            "{c}"
        );
    }
}

#[test]
fn postgres_extension_advisory_follows_the_driver() {
    let table = PolicyTable::builtin();
    let (c, t) = (v("1.7.4"), v("1.8.2"));
    let has =
        |verdict: &Verdict, needle: &str| verdict.advisories.iter().any(|a| a.contains(needle));

    let unknown = table.evaluate_for(&c, &t, None);
    assert!(has(
        &unknown,
        "if the storage is Postgres: target `1.8.2` needs the `pgcrypto` and `pg_trgm`"
    ));
    let pg = table.evaluate_for(&c, &t, Some(StorageDriver::Postgres));
    assert!(
        has(&pg, "postgres storage: target `1.8.2` needs"),
        "{:?}",
        pg.advisories
    );
    let sqlite = table.evaluate_for(&c, &t, Some(StorageDriver::Sqlite));
    assert!(!has(&sqlite, "pg_trgm"), "{:?}", sqlite.advisories);
    let before_1_8 = table.evaluate_for(&v("1.6.0"), &v("1.7.4"), Some(StorageDriver::Postgres));
    assert!(!has(&before_1_8, "pg_trgm"), "{:?}", before_1_8.advisories);
}

#[test]
fn pre_registry_versions_need_storage_scan() {
    let verdict = eval("1.3.3", "1.4.6");
    assert!(
        verdict
            .advisories
            .iter()
            .any(|a| a.contains("`numary storage scan`"))
    );
    let hops = eval("1.2.3", "1.9.0");
    assert!(
        hops.advisories
            .iter()
            .any(|a| a.contains("`numary storage scan`"))
    );
    let verdict = eval("1.4.0", "1.4.6");
    assert!(verdict.advisories.is_empty(), "{:?}", verdict.advisories);
}

#[test]
fn long_migrations_are_listed_when_crossed() {
    let long = |verdict: &Verdict| {
        verdict
            .advisories
            .iter()
            .find(|a| a.starts_with("long migrations ahead"))
            .cloned()
    };
    let all = long(&eval("1.6.1", "1.9.4")).expect("long migrations advisory");
    for name in ["`9-add", "`14-", "`16-", "`17-", "`18-", "`19-"] {
        assert!(all.contains(name), "{name} missing from {all}");
    }
    let only_9 = long(&eval("1.6.1", "1.7.0")).expect("migration 9 advisory");
    assert!(
        only_9.contains("`9-") && !only_9.contains("`14-"),
        "{only_9}"
    );
    assert_eq!(long(&eval("1.9.4", "1.9.6")), None);
    assert_eq!(long(&eval("1.8.2", "1.9.3")), None);
    // 1.10.0 does not ship 18/19; 1.10.1 does.
    let table = custom(&[("1.10.x", "1.9.x", false)]);
    let to_1_10_0 = table.evaluate(&v("1.9.5"), &v("1.10.0"));
    assert!(!to_1_10_0.advisories.iter().any(|a| a.starts_with("long")));
    let to_1_10_1 = table.evaluate(&v("1.10.0"), &v("1.10.1"));
    assert!(
        to_1_10_1
            .advisories
            .iter()
            .any(|a| a.contains("`18-optimized-accounts`"))
    );
}

#[test]
fn verdict_json_has_the_contract_fields() {
    let json = serde_json::to_value(eval("1.2.3", "1.9.0")).unwrap();
    assert_eq!(json["supported"], false);
    assert_eq!(json["zero_downtime"], false);
    assert_eq!(json["hops"], serde_json::json!(["1.8.x", "1.9.0"]));
    assert_eq!(json["kind"], "needs_hops");
    assert_eq!(json["current"], "1.2.3");
    assert_eq!(json["target"], "1.9.0");
    assert!(json["row"].is_null());
    assert!(json["advisories"].is_array());
    assert!(json["reason"].is_string());
}
