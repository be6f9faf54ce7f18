//! The plan is the program: what `fleetup check --format json` listed is what the run's journal
//! recorded, step by step and command by command. HTTP probes through the SSH connection are
//! listed as `# GET ...` lines and are not shell commands; they are left out of the commands'
//! comparison (their steps are compared by id).

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use fleetup::journal::{self, JournalFile};
use fleetup::lab::Lab;
use serde_json::Value;

type Commands = BTreeMap<(String, String), Vec<String>>;

fn push_distinct(map: &mut Commands, kind: &str, host: &str, command: &str) {
    if command.starts_with("# GET ") {
        return;
    }
    let list = map.entry((kind.to_string(), host.to_string())).or_default();
    if !list.iter().any(|c| c == command) {
        list.push(command.to_string());
    }
}

/// The newest journal of an `upgrade` of the lab's inventory.
pub fn last_upgrade(lab: &Lab) -> JournalFile {
    journal::list_journals(&journal::default_state_dir(&lab.inventory_path()))
        .unwrap()
        .into_iter()
        .rev()
        .find(|j| j.header.command == "upgrade")
        .expect("the upgrade's journal")
}

/// The newest upgrade journal ran exactly `audit`'s plan (`check --format json` output): the
/// same plan in its header, every planned `(step id, host)` recorded done (or already done) and
/// nothing else, and the same command lines per step kind and host (run id put in).
pub fn assert_journal_ran_the_plan(lab: &Lab, audit: &Value) -> JournalFile {
    let j = last_upgrade(lab);
    let run_id = &j.header.run_id;
    let header_plan: &Value = j.header.plan.as_ref().expect("the plan in the header");
    assert_eq!(
        header_plan["steps"], audit["plan"]["steps"],
        "the header's plan"
    );
    assert_eq!(j.header.plan_id.as_deref(), audit["plan_id"].as_str());

    let mut planned_steps = BTreeSet::new();
    let mut planned = Commands::new();
    for step in audit["plan"]["steps"].as_array().unwrap() {
        let kind = step["kind"].as_str().unwrap();
        let id = step["id"].as_str().unwrap();
        for hc in step["commands"].as_array().unwrap() {
            let host = hc["host"].as_str().unwrap();
            if !matches!(kind, "preflight" | "lock" | "unlock") {
                planned_steps.insert((id.to_string(), host.to_string()));
            }
            for c in hc["commands"].as_array().unwrap() {
                let c = c.as_str().unwrap().replace("@RUN_ID@", run_id);
                push_distinct(&mut planned, kind, host, &c);
            }
        }
    }
    let finished: BTreeSet<(String, String)> = j
        .steps
        .iter()
        .filter(|r| !matches!(r.kind.as_str(), "preflight" | "lock" | "unlock"))
        .filter(|r| matches!(r.state.as_str(), "done" | "already_done"))
        .map(|r| (r.id.clone(), r.host.clone()))
        .collect();
    let recorded: BTreeSet<(String, String)> = j
        .steps
        .iter()
        .filter(|r| !matches!(r.kind.as_str(), "preflight" | "lock" | "unlock"))
        .map(|r| (r.id.clone(), r.host.clone()))
        .collect();
    assert_eq!(
        finished, planned_steps,
        "the steps check listed are the steps the run finished"
    );
    assert_eq!(
        recorded, planned_steps,
        "the run recorded no step check did not list"
    );

    let mut ran = Commands::new();
    for e in j.events.iter().filter(|e| e["event"] == "step_started") {
        if let Some(c) = e["command"].as_str() {
            push_distinct(
                &mut ran,
                e["kind"].as_str().unwrap(),
                e["host"].as_str().unwrap(),
                c,
            );
        }
    }
    assert!(!planned.is_empty(), "the plan lists commands");
    for (key, cmds) in &planned {
        assert_eq!(
            ran.get(key),
            Some(cmds),
            "{key:?}: what check listed differs from what ran"
        );
    }
    for key in ran.keys() {
        assert!(
            planned.contains_key(key),
            "{key:?} ran commands check never listed"
        );
    }
    j
}

/// A run that stopped early (a failure, a pause) ran `audit`'s plan as far as it went: the
/// same plan in its header, and every `(step id, host)` it recorded is one `check` listed.
pub fn assert_journal_within_the_plan(lab: &Lab, audit: &Value) -> JournalFile {
    let j = last_upgrade(lab);
    let header_plan: &Value = j.header.plan.as_ref().expect("the plan in the header");
    assert_eq!(
        header_plan["steps"], audit["plan"]["steps"],
        "the header's plan"
    );
    let mut planned = BTreeSet::new();
    for step in audit["plan"]["steps"].as_array().unwrap() {
        for hc in step["commands"].as_array().unwrap() {
            planned.insert((
                step["id"].as_str().unwrap().to_string(),
                hc["host"].as_str().unwrap().to_string(),
            ));
        }
    }
    for r in &j.steps {
        assert!(
            planned.contains(&(r.id.clone(), r.host.clone())),
            "the run recorded `{}` on {}, which check did not list",
            r.id,
            r.host
        );
    }
    j
}
