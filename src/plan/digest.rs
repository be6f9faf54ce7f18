//! The plan id: SHA-256 over a canonical JSON of the facts and the plan, so `upgrade --plan ID`
//! can refuse a fleet that changed since `check` audited it.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::Plan;
use crate::facts::HostFacts;

/// Bumped whenever the canonical form changes, so old ids never match new plans by accident.
const DIGEST_FORMAT: u32 = 1;

#[derive(Serialize)]
struct Canonical<'a> {
    format: u32,
    facts: &'a BTreeMap<String, HostFacts>,
    plan: &'a Plan,
}

/// Lowercase hex SHA-256 of `{"facts":..,"format":1,"plan":..}` with object keys sorted at every
/// level and no white space: independent of map insertion order and of serde_json features.
pub fn plan_digest(plan: &Plan, facts: &BTreeMap<String, HostFacts>) -> String {
    let value = serde_json::to_value(Canonical {
        format: DIGEST_FORMAT,
        facts,
        plan,
    })
    // These types only hold strings, numbers, bools, lists and string-keyed maps: serializing
    // cannot fail; should it ever, the id still differs from every real plan's.
    .unwrap_or_else(|e| Value::String(format!("unserializable plan: {e}")));
    let mut text = String::new();
    write_canonical(&value, &mut text);
    hex::encode(Sha256::digest(text.as_bytes()))
}

fn write_canonical(value: &Value, out: &mut String) {
    match value {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, key) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(key.clone()).to_string());
                out.push(':');
                write_canonical(&map[key], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_canonical(item, out);
            }
            out.push(']');
        }
        scalar => out.push_str(&scalar.to_string()),
    }
}
