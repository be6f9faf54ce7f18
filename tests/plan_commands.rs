//! The plan is the program: for the offline Postgres and SQLite labs, the remote command lines
//! `fleetup check` lists for each step and host are exactly the ones the real run records in its
//! journal (with the run id put in for `@RUN_ID@`). HTTP probes through the SSH connection are
//! listed as `# GET ...` lines and are not shell commands; they are left out of the comparison.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::collections::BTreeMap;

use fleetup::exit_code;
use fleetup::journal;
use fleetup::lab::{Driver, LabGuard};
use lab_fixture::{code, fleetup, json, release, spec, stderr, stdout};
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

fn same_commands(driver: Driver, nodes: usize, from: &str, to: &str) {
    let lab = LabGuard::up(&spec(driver, nodes, from)).expect("lab up");
    let new = release(&lab, to);
    let args =
        |cmd: &'static str| vec![cmd, "--to", to, "--binary", new.to_str().unwrap(), "--stop"];
    let mut check_args = args("check");
    check_args.extend(["--format", "json"]);
    let audit = fleetup(&lab.inventory_path(), &check_args);
    assert_eq!(code(&audit), exit_code::SUCCESS, "{}", stderr(&audit));
    let audit = json(&audit);
    let plan_id = audit["plan_id"].as_str().unwrap().to_string();

    let mut run_args = args("upgrade");
    run_args.extend(["--plan", &plan_id]);
    let out = fleetup(&lab.inventory_path(), &run_args);
    assert_eq!(
        code(&out),
        exit_code::SUCCESS,
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    let j = journal::list_journals(&journal::default_state_dir(&lab.inventory_path()))
        .unwrap()
        .into_iter()
        .rev()
        .find(|j| j.header.command == "upgrade")
        .expect("the upgrade's journal");
    let run_id = &j.header.run_id;

    let mut planned = Commands::new();
    for step in audit["plan"]["steps"].as_array().unwrap() {
        let kind = step["kind"].as_str().unwrap();
        for hc in step["commands"].as_array().unwrap() {
            let host = hc["host"].as_str().unwrap();
            for c in hc["commands"].as_array().unwrap() {
                let c = c.as_str().unwrap().replace("@RUN_ID@", run_id);
                push_distinct(&mut planned, kind, host, &c);
            }
        }
    }
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
    // The journal's header holds the same plan.
    let header_plan: &Value = j.header.plan.as_ref().expect("the plan in the header");
    assert_eq!(header_plan["steps"], audit["plan"]["steps"]);
    assert_eq!(j.header.plan_id.as_deref(), Some(plan_id.as_str()));
}

#[test]
fn postgres_offline_check_lists_exactly_the_commands_the_run_records() {
    same_commands(Driver::Postgres, 3, "1.7.4", "1.8.2");
}

#[test]
fn sqlite_offline_check_lists_exactly_the_commands_the_run_records() {
    same_commands(Driver::Sqlite, 2, "1.6.1", "1.8.3");
}
