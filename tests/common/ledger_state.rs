//! What the nodes and the simulator say about the ledgers, for the zero-downtime and multi-hop
//! tests: transaction counts as a node serves them, and who migrated each ledger to a version.

#![allow(dead_code)]

use fleetup::lab::Lab;
use serde_json::Value;

/// `(ledger, transactions)` of every ledger, as node `name` serves them.
pub fn transaction_counts(lab: &Lab, name: &str) -> Vec<(String, u64)> {
    let node = lab.node(name).unwrap();
    lab.ledgers
        .iter()
        .map(|l| {
            let (status, body) = node.api_get(&format!("/{l}/stats")).unwrap();
            assert_eq!(status, 200, "{name} {l}: {body}");
            let v: Value = serde_json::from_str(&body).unwrap();
            (l.clone(), v["data"]["transactions"].as_u64().unwrap())
        })
        .collect()
}

/// The simulator's committed migration runs to `version`: `(ledger, via)`, sorted.
pub fn migrations(lab: &Lab, version: &str) -> Vec<(String, String)> {
    let text =
        std::fs::read_to_string(lab.sim_state_dir().join("migrations.log")).unwrap_or_default();
    let mut out: Vec<(String, String)> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["version"] == version && v["result"] == "committed")
        .map(|v| {
            (
                v["ledger"].as_str().unwrap_or("").to_string(),
                v["via"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    out.sort();
    out
}

/// Each ledger migrated to `version` exactly once, by `storage upgrade` (fleetup's), never
/// lazily by a server request: so before any node on `version` served it.
pub fn assert_migrated_once_by_fleetup(lab: &Lab, version: &str) {
    let mut want: Vec<(String, String)> = lab
        .ledgers
        .iter()
        .map(|l| (l.clone(), "storage upgrade".to_string()))
        .collect();
    want.sort();
    assert_eq!(
        migrations(lab, version),
        want,
        "each ledger migrated once to {version}, by fleetup"
    );
}
