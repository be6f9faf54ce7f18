//! The hook steps on scripted nodes: the plan's line runs where it says (the node, or here), its
//! states are journaled like any step's, and a failing hook fails its node with the hook's
//! output before anything else changed there.

use std::path::Path;

use super::*;
use crate::plan::{Action, HookParams, HookPhase, HostCommands, RUN_ID_TOKEN};

const RUN_ID: &str = "20260125T174502Z-00ab12";

fn params(host: &str, phase: HookPhase, command: &str, local: Option<&Path>) -> HookParams {
    HookParams {
        phase,
        command: command.into(),
        local: local.is_some(),
        timeout: Duration::from_secs(10),
        env: vec![
            ("FLEETUP_HOST".into(), host.into()),
            ("FLEETUP_PHASE".into(), phase.as_str().into()),
            ("FLEETUP_RUN_ID".into(), RUN_ID_TOKEN.into()),
        ],
        dir: local.map(|d| d.display().to_string()),
    }
}

/// Puts a hook step of `kind` on `hosts` at index `at` of the plan's steps (as the builder
/// would), then numbers the steps again.
fn insert_hook(
    plan: &mut Plan,
    at: usize,
    kind: StepKind,
    hosts: &[&str],
    p: impl Fn(&str) -> HookParams,
) {
    let step = Step {
        id: kind.to_string(),
        number: 0,
        kind,
        hosts: hosts.iter().map(|h| h.to_string()).collect(),
        batch: None,
        hop: None,
        action: "run the hook".into(),
        why: "the operator's".into(),
        checks: vec![],
        commands: hosts
            .iter()
            .map(|h| HostCommands::new(h, Action::Hook(p(h))))
            .collect(),
    };
    plan.steps.insert(at, step);
    for (i, s) in plan.steps.iter_mut().enumerate() {
        s.number = i + 1;
    }
}

/// After the lock, before anything else.
fn pre_hook_everywhere(plan: &mut Plan, command: &str) {
    let hosts: Vec<String> = plan.touched_hosts().iter().map(|h| h.to_string()).collect();
    let hosts: Vec<&str> = hosts.iter().map(String::as_str).collect();
    let at = plan
        .steps
        .iter()
        .position(|s| s.kind == StepKind::Lock)
        .unwrap()
        + 1;
    insert_hook(plan, at, StepKind::PreHook, &hosts, |h| {
        params(h, HookPhase::Pre, command, None)
    });
}

fn started_commands(ran: &Ran, kind: StepKind) -> Vec<(String, String)> {
    ran.events
        .iter()
        .filter_map(|e| match e {
            Event::StepStarted {
                kind: k,
                host,
                command: Some(c),
                ..
            } if *k == kind_name(kind) => Some((host.clone(), c.clone())),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn the_plans_hook_lines_run_on_the_node_and_here_and_are_journaled_as_they_ran() {
    let dir = tempfile::tempdir().unwrap();
    let local_dir = dir.path().to_path_buf();
    let ran = run_fleet_edited(nodes(2), Setup::default(), |plan| {
        pre_hook_everywhere(plan, "drain");
        let at = plan
            .steps
            .iter()
            .rposition(|s| s.kind == StepKind::HealthGate)
            .unwrap()
            + 1;
        insert_hook(plan, at, StepKind::PostHook, &["node-1", "node-2"], |h| {
            params(
                h,
                HookPhase::Post,
                "echo \"$FLEETUP_HOST $FLEETUP_PHASE $FLEETUP_RUN_ID\" >> hooks.log",
                Some(&local_dir),
            )
        });
    })
    .await;
    assert_eq!(
        ran.report.outcome,
        Outcome::Succeeded,
        "{:?}",
        ran.report.error
    );
    for f in &ran.fakes {
        let line = format!(
            "FLEETUP_HOST={} FLEETUP_PHASE=pre FLEETUP_RUN_ID={RUN_ID} sh -c drain",
            f.name
        );
        let cmds = f.commands();
        let at = cmds
            .iter()
            .position(|c| *c == line)
            .expect("the pre hook ran");
        let first_change = cmds.iter().position(|c| c.contains("==orig")).unwrap();
        assert!(at < first_change, "{:#?}", cmds);
        assert!(
            !cmds.iter().any(|c| c.contains("hooks.log")),
            "the local hook ran on the node"
        );
    }
    // The local hook ran here, in its dir, with its variables.
    let log = std::fs::read_to_string(dir.path().join("hooks.log")).unwrap();
    let mut lines: Vec<&str> = log.lines().collect();
    lines.sort();
    assert_eq!(
        lines,
        [
            format!("node-1 post {RUN_ID}"),
            format!("node-2 post {RUN_ID}")
        ]
    );
    // Journaled like any step: the line that ran, started then done on each host.
    let post = started_commands(&ran, StepKind::PostHook);
    assert_eq!(post.len(), 2);
    for (host, c) in &post {
        assert!(
            c.starts_with(&format!(
                "# local: cd {} && FLEETUP_HOST={host} ",
                crate::shell::quote(&dir.path().display().to_string())
            )),
            "{c}"
        );
    }
    for kind in [StepKind::PreHook, StepKind::PostHook] {
        let states = ran.states(kind);
        for host in ["node-1", "node-2"] {
            assert_eq!(
                states
                    .iter()
                    .filter(|(h, _)| h == host)
                    .map(|(_, s)| *s)
                    .collect::<Vec<_>>(),
                [StepState::Started, StepState::Done],
                "{kind} on {host}"
            );
        }
    }
    assert_scripted(&ran.fakes);
}

#[tokio::test]
async fn a_failing_pre_hook_fails_the_run_before_anything_changed_with_its_output() {
    let mut n = nodes(2);
    n[0].fail = Some("sh -c drain");
    let ran = run_fleet_edited(n, Setup::default(), |plan| {
        pre_hook_everywhere(plan, "drain")
    })
    .await;
    let r = &ran.report;
    assert_eq!(r.outcome, Outcome::Failed, "{:?}", r.error);
    assert_eq!(r.outcome.exit_code(), exit_code::FAILURE);
    let e = r.error.as_ref().unwrap();
    assert_eq!((e.kind, e.host.as_str()), (StepKind::PreHook, "node-1"));
    assert!(
        e.message
            .contains("the `pre_hook` of `node-1` exited with 1; last output: `boom: "),
        "{}",
        e.message
    );
    assert!(e.stderr.as_deref().is_some_and(|s| s.contains("boom")));
    assert!(
        e.hints.iter().any(|h| h.contains("`drain`")),
        "{:?}",
        e.hints
    );
    assert!(!r.changes.storage_touched);
    for f in &ran.fakes {
        // Locked, hooked, its state read for the report, unlocked: nothing else.
        assert!(
            !f.ran("==orig")
                && !f.ran("# upload")
                && !f.ran("systemctl start")
                && !f.ran("systemctl stop"),
            "{}: {:#?}",
            f.name,
            f.commands()
        );
        assert!(f.commands().last().unwrap().contains("grep -qF"));
    }
    let states = ran.states(StepKind::PreHook);
    assert!(states.contains(&("node-1".into(), StepState::Failed)));
    assert!(states.contains(&("node-2".into(), StepState::Done)));
    assert!(ran.states(StepKind::Backup).is_empty(), "no later step ran");
    assert_scripted(&ran.fakes);
}

#[tokio::test]
async fn a_pre_hook_failing_on_a_node_alone_on_its_storage_is_contained_within_the_budget() {
    let mut n = nodes(3);
    n[1].fail = Some("sh -c drain");
    let ran = run_fleet_edited(
        n,
        Setup {
            max_failed: crate::runner::failures::FailBudget::Count(1),
            ..Setup::default()
        },
        |plan| pre_hook_everywhere(plan, "drain"),
    )
    .await;
    let r = &ran.report;
    assert_eq!(r.outcome, Outcome::Failed, "{:?}", r.error);
    assert_eq!(r.changes.healthy, ["node-1", "node-3"]);
    assert_eq!(r.failed.len(), 1);
    assert_eq!(
        (
            r.failed[0].host.as_str(),
            r.failed[0].kind,
            r.failed[0].contained
        ),
        ("node-2", StepKind::PreHook, true)
    );
    let n2 = &ran.fakes[1];
    assert!(!n2.ran("==orig") && !n2.ran("# upload") && upgrades(n2).is_empty());
    assert_scripted(&ran.fakes);
}

#[tokio::test]
async fn a_local_hook_past_its_timeout_fails_its_node_saying_so() {
    let dir = tempfile::tempdir().unwrap();
    let local_dir = dir.path().to_path_buf();
    let ran = run_fleet_edited(nodes(1), Setup::default(), |plan| {
        let at = plan
            .steps
            .iter()
            .position(|s| s.kind == StepKind::Lock)
            .unwrap()
            + 1;
        insert_hook(plan, at, StepKind::PreHook, &["node-1"], |h| HookParams {
            timeout: Duration::from_millis(200),
            ..params(
                h,
                HookPhase::Pre,
                "echo waiting; sleep 30",
                Some(&local_dir),
            )
        });
    })
    .await;
    let e = ran.report.error.as_ref().expect("the hook failed");
    assert_eq!(e.kind, StepKind::PreHook);
    assert!(
        e.message.contains(
            "the `pre_hook` of `node-1` (local) did not finish within its timeout of 200ms and was killed; last output: `waiting`"
        ),
        "{}",
        e.message
    );
    assert!(!ran.fakes[0].ran("==orig"));
}
