//! `upgrade --plan ID`: is the fleet still the one `check` audited? An id no audit produced is
//! a mistake of its own (a typo is not drift); a changed fleet names the facts that changed,
//! never the new id (it must be reviewed with `check` before it is run).

use serde_json::Value;

use crate::Failure;
use crate::exit_code;

/// The shortest plan id prefix `--plan` takes: 12 hex digits, as the display shows it.
pub const MIN_PLAN_PREFIX: usize = 12;

/// The audit an id given to `--plan` names, as its journal recorded it.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditedPlan {
    pub run_id: String,
    pub plan_id: String,
    /// The facts the audit's plan was built from (absent in journals of older fleetups).
    pub facts: Option<Value>,
}

/// What `--plan` asks for: the id (or a prefix of it) and the audit it names, if one of the
/// journals holds it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExpectedPlan {
    pub given: String,
    pub audited: Option<AuditedPlan>,
}

/// `given` as a plan id prefix (lower case), or why it cannot be one.
pub fn parse_plan_prefix(given: &str) -> Result<String, Failure> {
    let id = given.trim().to_ascii_lowercase();
    if id.len() < MIN_PLAN_PREFIX || id.len() > 64 || !id.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(Failure::usage(format!(
            "`{given}` is not a plan id: give at least {MIN_PLAN_PREFIX} of its hex digits (at most 64)"
        ))
        .hint("`fleetup check` prints the plan id; its first 12 digits are enough"));
    }
    Ok(id)
}

/// The fleet must still give the plan the audit named by `expected` produced.
pub fn verify_plan(
    expected: &ExpectedPlan,
    actual_id: &str,
    actual_facts: &Value,
) -> Result<(), Failure> {
    if actual_id.starts_with(&expected.given) {
        return Ok(());
    }
    let Some(audited) = &expected.audited else {
        return Err(Failure::usage(format!(
            "no audit of this inventory produced plan id `{}`",
            expected.given
        ))
        .hint("copy the plan id `fleetup check` printed (its first 12 digits are enough); `fleetup runs list --command check` lists the audits beside this inventory"));
    };
    let changes = audited
        .facts
        .as_ref()
        .map(|before| changed_facts(before, actual_facts))
        .unwrap_or_default();
    let what = if changes.is_empty() {
        "the plan differs (the audit recorded no facts to compare)".to_owned()
    } else {
        const SHOWN: usize = 8;
        let mut text = changes
            .iter()
            .take(SHOWN)
            .cloned()
            .collect::<Vec<_>>()
            .join("; ");
        if changes.len() > SHOWN {
            text.push_str(&format!("; and {} more", changes.len() - SHOWN));
        }
        text
    };
    Err(Failure::new(
        exit_code::BLOCKED,
        format!(
            "the fleet changed since the audit `{}` (plan id {}): {what}; nothing was changed",
            audited.run_id,
            &audited.plan_id[..MIN_PLAN_PREFIX.min(audited.plan_id.len())],
        ),
    )
    .hint("run `fleetup check` again with the same options, review the new plan, then pass its plan id to `fleetup upgrade --plan`"))
}

/// Each fact that differs between two fact maps (`{host: facts}`), as
/// `node-2: installed_version 1.7.4 → 1.8.2`, hosts in order.
pub fn changed_facts(before: &Value, after: &Value) -> Vec<String> {
    let mut out = Vec::new();
    let empty = serde_json::Map::new();
    let b = before.as_object().unwrap_or(&empty);
    let a = after.as_object().unwrap_or(&empty);
    let mut hosts: Vec<&String> = b.keys().chain(a.keys()).collect();
    hosts.sort();
    hosts.dedup();
    for host in hosts {
        match (b.get(host), a.get(host)) {
            (Some(_), None) => out.push(format!("{host}: no longer selected")),
            (None, Some(_)) => out.push(format!("{host}: newly selected")),
            (Some(x), Some(y)) => {
                let mut paths = Vec::new();
                diff(x, y, String::new(), &mut paths);
                out.extend(paths.into_iter().map(|p| format!("{host}: {p}")));
            }
            (None, None) => {}
        }
    }
    out
}

fn diff(before: &Value, after: &Value, path: String, out: &mut Vec<String>) {
    if before == after {
        return;
    }
    if let (Value::Object(b), Value::Object(a)) = (before, after) {
        let mut keys: Vec<&String> = b.keys().chain(a.keys()).collect();
        keys.sort();
        keys.dedup();
        for k in keys {
            let sub = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            diff(
                b.get(k).unwrap_or(&Value::Null),
                a.get(k).unwrap_or(&Value::Null),
                sub,
                out,
            );
        }
        return;
    }
    out.push(format!("{path} {} → {}", short(before), short(after)));
}

/// A value in a few characters: node-reported text is bounded and kept on one line.
fn short(v: &Value) -> String {
    let text = match v {
        Value::Null => "none".to_owned(),
        Value::String(s) if s.is_empty() => "none".to_owned(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if one_line.chars().count() > 60 {
        format!("{}…", one_line.chars().take(59).collect::<String>())
    } else {
        one_line
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn expected(given: &str, audited: Option<AuditedPlan>) -> ExpectedPlan {
        ExpectedPlan {
            given: parse_plan_prefix(given).unwrap(),
            audited,
        }
    }

    #[test]
    fn a_prefix_of_twelve_hex_digits_or_more_is_a_plan_id() {
        assert_eq!(parse_plan_prefix(" D709EAC76EA9 ").unwrap(), "d709eac76ea9");
        for bad in ["d709eac76ea", "d709eac76eaz", &"a".repeat(65)] {
            let e = parse_plan_prefix(bad).unwrap_err();
            assert_eq!(e.code, exit_code::USAGE, "{bad}");
        }
    }

    #[test]
    fn the_audited_id_or_its_prefix_passes() {
        let id = "d709eac76ea96379c0bb6e463513abdf";
        let facts = json!({});
        assert!(verify_plan(&expected(id, None), id, &facts).is_ok());
        assert!(verify_plan(&expected(&id[..12], None), id, &facts).is_ok());
    }

    #[test]
    fn an_id_no_audit_produced_is_its_own_error_and_not_drift() {
        let e =
            verify_plan(&expected("0123456789ab", None), "d709eac76ea9", &json!({})).unwrap_err();
        assert_eq!(e.code, exit_code::USAGE);
        assert!(e.message.contains("no audit"), "{}", e.message);
        assert!(!e.message.contains("d709"), "{}", e.message);
    }

    #[test]
    fn a_changed_fleet_names_the_facts_that_changed_not_the_new_id() {
        let before = json!({
            "node-1": {"installed_version": "1.7.4", "service": {"active": false}},
            "node-2": {"installed_version": "1.7.4", "service": {"active": false}},
        });
        let after = json!({
            "node-1": {"installed_version": "1.7.4", "service": {"active": false}},
            "node-2": {"installed_version": "1.8.2", "service": {"active": true}},
            "node-3": {"installed_version": "1.7.4"},
        });
        let audited = AuditedPlan {
            run_id: "20261202T160009.381Z-859bdb".into(),
            plan_id: "0123456789abcdef".into(),
            facts: Some(before),
        };
        let new_id = "fedcba9876543210";
        let e = verify_plan(&expected("0123456789ab", Some(audited)), new_id, &after).unwrap_err();
        assert_eq!(e.code, exit_code::BLOCKED);
        assert!(
            e.message.contains(
                "node-2: installed_version 1.7.4 → 1.8.2; node-2: service.active false → true; node-3: newly selected"
            ),
            "{}",
            e.message
        );
        assert!(!e.message.contains("fedcba"), "{}", e.message);
    }
}
