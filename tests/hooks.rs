//! The operator's `[rollout]` hooks on the practice lab (real sshd, the simulator), offline
//! strategy on SQLite: a remote `pre_hook` runs on each node before anything stops, a local
//! `post_hook` here after each batch's health gate, each with its `FLEETUP_*` variables; `check`
//! lists exactly the hook lines the run journals; a failing pre hook stops the run before
//! anything changed, with the hook's output in the error.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::collections::BTreeMap;
use std::io::Write as _;

use fleetup::events::StepState;
use fleetup::exit_code;
use fleetup::journal::{self, JournalFile};
use fleetup::lab::{Driver, Lab, LabGuard};
use fleetup::shell::quote;
use lab_fixture::{assert_serving, both, code, fleetup, json, release, spec, stderr};
use serde_json::Value;

const FROM: &str = "1.6.1";
const TO: &str = "1.8.3";

/// Appends `[rollout]` with `pre` and `post` hook tables to the lab's generated inventory.
fn add_rollout(lab: &Lab, pre: &str, post: &str) {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(lab.inventory_path())
        .unwrap();
    write!(f, "\n[rollout]\npre_hook = {pre}\npost_hook = {post}\n").unwrap();
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// A shell command writing `$FLEETUP_HOST $FLEETUP_PHASE $FLEETUP_BATCH` into `hooks.log` under
/// the root of the node it runs on (each lab node's files are a dir of this machine).
fn remote_writer(lab: &Lab) -> String {
    let cases: Vec<String> = lab
        .nodes
        .iter()
        .map(|n| format!("{}) f={};;", n.name, quote(&n.root.display().to_string())))
        .collect();
    format!(
        "case \"$FLEETUP_HOST\" in {} esac; echo \"$FLEETUP_HOST $FLEETUP_PHASE $FLEETUP_BATCH\" >> \"$f/hooks.log\"",
        cases.join(" ")
    )
}

fn upgrade_args<'a>(command: &'a str, binary: &'a str) -> Vec<&'a str> {
    vec![command, "--to", TO, "--binary", binary, "--stop"]
}

fn last_journal(lab: &Lab, command: &str) -> JournalFile {
    journal::list_journals(&journal::default_state_dir(&lab.inventory_path()))
        .unwrap()
        .into_iter()
        .rev()
        .find(|j| j.header.command == command)
        .expect("the run's journal")
}

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

/// `(kind, host) → commands` of every step `check` listed, with the run id put in.
fn planned(audit: &Value, run_id: &str) -> Commands {
    let mut out = Commands::new();
    for step in audit["plan"]["steps"].as_array().unwrap() {
        let kind = step["kind"].as_str().unwrap();
        for hc in step["commands"].as_array().unwrap() {
            for c in hc["commands"].as_array().unwrap() {
                let c = c.as_str().unwrap().replace("@RUN_ID@", run_id);
                push_distinct(&mut out, kind, hc["host"].as_str().unwrap(), &c);
            }
        }
    }
    out
}

/// The same, from the commands the journal recorded as started.
fn journaled(j: &JournalFile) -> Commands {
    let mut out = Commands::new();
    for e in j.events.iter().filter(|e| e["event"] == "step_started") {
        if let Some(c) = e["command"].as_str() {
            push_distinct(
                &mut out,
                e["kind"].as_str().unwrap(),
                e["host"].as_str().unwrap(),
                c,
            );
        }
    }
    out
}

/// Index among the journal's step records of the first `state` of step `id` on `host`.
fn state_at(j: &JournalFile, id: &str, host: &str, state: StepState) -> usize {
    j.steps
        .iter()
        .position(|r| r.id == id && r.host == host && r.state == state)
        .unwrap_or_else(|| panic!("no `{state:?}` of `{id}` on {host} in the journal"))
}

#[test]
fn offline_runs_remote_pre_hooks_before_any_stop_and_local_post_hooks_after_each_gate() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 2, FROM)).expect("lab up");
    let new = release(&lab, TO);
    let local = "echo \"$FLEETUP_HOST $FLEETUP_PHASE $FLEETUP_BATCH\" >> local-hooks.log";
    add_rollout(
        &lab,
        &format!(
            "{{ command = {}, timeout = \"20s\" }}",
            toml_str(&remote_writer(&lab))
        ),
        &format!("{{ command = {}, local = true }}", toml_str(local)),
    );
    let binary = new.to_str().unwrap();

    let mut check = upgrade_args("check", binary);
    check.extend(["--format", "json"]);
    let audit = fleetup(&lab.inventory_path(), &check);
    assert_eq!(code(&audit), exit_code::SUCCESS, "{}", both(&audit));
    let audit = json(&audit);
    let plan_id = audit["plan_id"].as_str().unwrap().to_string();
    let ids: Vec<&str> = audit["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["id"].as_str().unwrap())
        .collect();
    assert_eq!(&ids[..3], ["preflight", "lock", "pre-hook"], "{ids:?}");

    let mut run = upgrade_args("upgrade", binary);
    run.extend(["--plan", &plan_id]);
    let out = fleetup(&lab.inventory_path(), &run);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert_serving(&lab, TO, "after the hooked upgrade");

    // On each node, its own pre hook, with its start batch (the migrator first).
    for (n, batch) in lab.nodes.iter().zip(["1", "2"]) {
        let log = std::fs::read_to_string(n.root.join("hooks.log")).expect("the pre hook's file");
        assert_eq!(log, format!("{} pre {batch}\n", n.name), "{}", n.name);
    }
    // Here, in the inventory's dir: batch 1's post hook, then batch 2's.
    let log = std::fs::read_to_string(lab.dir.join("local-hooks.log")).unwrap();
    assert_eq!(log, "node-1 post 1\nnode-2 post 2\n");

    let j = last_journal(&lab, "upgrade");
    for n in &lab.nodes {
        let name = n.name.as_str();
        // The pre hook is done before the node is stopped.
        assert!(
            state_at(&j, "pre-hook", name, StepState::Done)
                < state_at(&j, "stop-service", name, StepState::Started)
        );
    }
    assert!(
        state_at(&j, "health-gate-1", "node-1", StepState::Done)
            < state_at(&j, "post-hook-1", "node-1", StepState::Started)
    );
    assert!(
        state_at(&j, "post-hook-1", "node-1", StepState::Done)
            < state_at(&j, "start-service-2", "node-2", StepState::Started)
    );
    assert!(
        state_at(&j, "health-gate-2", "node-2", StepState::Done)
            < state_at(&j, "post-hook-2", "node-2", StepState::Started)
    );

    // The plan is the program: check listed exactly the lines the journal recorded, hooks
    // included (the local hook's as its `# local:` line).
    let planned = planned(&audit, &j.header.run_id);
    let ran = journaled(&j);
    for (key, cmds) in &planned {
        assert_eq!(
            ran.get(key),
            Some(cmds),
            "{key:?}: check listed other lines than ran"
        );
    }
    for key in ran.keys() {
        assert!(
            planned.contains_key(key),
            "{key:?} ran lines check never listed"
        );
    }
    let local_line = &planned[&("post_hook".to_string(), "node-2".to_string())][0];
    assert!(
        local_line.starts_with(&format!(
            "# local: cd {} && FLEETUP_HOST=node-2 ",
            quote(&lab.dir.display().to_string())
        )),
        "{local_line}"
    );
    assert!(planned.contains_key(&("pre_hook".to_string(), "node-1".to_string())));
}

#[test]
fn a_pre_hook_exiting_3_fails_the_run_before_anything_changed_with_its_output() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 2, FROM)).expect("lab up");
    let new = release(&lab, TO);
    let refuse = "echo \"draining $FLEETUP_HOST\"; if [ \"$FLEETUP_HOST\" = node-2 ]; then echo \"lb refused $FLEETUP_HOST\" >&2; exit 3; fi";
    add_rollout(
        &lab,
        &format!("{{ command = {} }}", toml_str(refuse)),
        "\"none\"",
    );
    let before = lab.tree_digest().unwrap();
    let out = fleetup(
        &lab.inventory_path(),
        &upgrade_args("upgrade", new.to_str().unwrap()),
    );
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    let err = stderr(&out);
    for part in [
        "the `pre_hook` of `node-2` exited with 3",
        "`lb refused node-2`",
        "`[rollout]` `pre_hook`",
    ] {
        assert!(err.contains(part), "no `{part}` in:\n{}", both(&out));
    }

    // Nothing changed: every node still serves its old binary, nothing staged or left locked.
    assert_serving(&lab, FROM, "after the refused pre hook");
    for n in &lab.nodes {
        assert!(
            !n.paths().releases_dir().join(TO).exists(),
            "{}: a release was staged",
            n.name
        );
    }
    assert_eq!(
        lab.tree_digest().unwrap(),
        before,
        "the nodes' files changed"
    );

    let j = last_journal(&lab, "upgrade");
    let failed = state_at(&j, "pre-hook", "node-2", StepState::Failed);
    let message = j.steps[failed].message.as_deref().unwrap_or_default();
    assert!(message.contains("exited with 3"), "{message}");
    assert!(message.contains("lb refused node-2"), "{message}");
    for kind in ["stop_service", "backup", "stage", "migrate", "switch"] {
        assert!(
            !j.events
                .iter()
                .any(|e| e["event"] == "step_started" && e["kind"] == kind),
            "{kind} started after the failed pre hook"
        );
    }
}
