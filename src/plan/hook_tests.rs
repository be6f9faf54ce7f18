//! The operator's hooks in the plan: where each strategy puts them, on which hosts, with which
//! parameters and command lines.

use super::*;
use crate::inventory::{Hook, RolloutSettings};

fn remote(command: &str) -> Hook {
    Hook {
        command: command.to_string(),
        local: false,
        timeout: Duration::from_secs(60),
        dir: PathBuf::from("/fleet"),
    }
}

fn local(command: &str) -> Hook {
    Hook {
        local: true,
        timeout: Duration::from_secs(5),
        ..remote(command)
    }
}

impl Node {
    fn hooks(mut self, pre: Option<Hook>, post: Option<Hook>) -> Self {
        self.host.rollout = RolloutSettings {
            pre_hook: pre,
            post_hook: post,
            ..RolloutSettings::default()
        };
        self
    }
}

/// Every node drained remotely before, put back locally after.
fn hooked(nodes: Vec<Node>) -> Vec<Node> {
    nodes
        .into_iter()
        .map(|n| n.hooks(Some(remote("drain")), Some(local("lb enable"))))
        .collect()
}

fn ids(p: &Plan) -> Vec<&str> {
    p.steps.iter().map(|s| s.id.as_str()).collect()
}

fn hook_params<'p>(step: &'p Step, host: &str) -> &'p HookParams {
    step.params(host)
        .and_then(Action::hook)
        .unwrap_or_else(|| panic!("no hook params for {host} in {}", step.id))
}

fn var<'p>(p: &'p HookParams, name: &str) -> &'p str {
    p.env
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or_else(|| panic!("no {name} in {:?}", p.env))
}

#[test]
fn offline_runs_every_pre_hook_before_anything_stops_and_each_post_hook_after_its_gate() {
    let p = plan(hooked(three("1.7.4")), "1.8.2", Strategy::Offline);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(
        ids(&p),
        [
            "preflight",
            "lock",
            "pre-hook",
            "confirm-stopped",
            "backup",
            "stage",
            "migrate",
            "switch",
            "start-service-1",
            "health-gate-1",
            "post-hook-1",
            "start-service-2",
            "health-gate-2",
            "post-hook-2",
            "unlock",
        ]
    );
    let pre = steps_of(&p, StepKind::PreHook);
    assert_eq!(pre.len(), 1);
    assert_eq!(hosts_of(pre[0]), ["ledger-1", "ledger-2", "ledger-3"]);
    assert_eq!(pre[0].batch, None);
    let post = steps_of(&p, StepKind::PostHook);
    assert_eq!(hosts_of(post[0]), ["ledger-1"]);
    assert_eq!(hosts_of(post[1]), ["ledger-2", "ledger-3"]);
    assert_eq!(post[1].batch, Some(2));

    // Each host's variables: its own start batch, even in the one pre hook step.
    let h1 = hook_params(pre[0], "ledger-1");
    assert_eq!(h1.phase, HookPhase::Pre);
    assert_eq!(
        (h1.command.as_str(), h1.local, h1.dir.as_deref()),
        ("drain", false, None)
    );
    assert_eq!(h1.timeout, Duration::from_secs(60));
    assert_eq!(
        h1.env,
        [
            ("FLEETUP_HOST", "ledger-1"),
            ("FLEETUP_ADDRESS", "ledger-1.internal"),
            ("FLEETUP_BATCH", "1"),
            ("FLEETUP_PHASE", "pre"),
            ("FLEETUP_RUN_ID", RUN_ID_TOKEN),
            ("FLEETUP_TARGET", "1.8.2"),
        ]
        .map(|(k, v)| (k.to_string(), v.to_string()))
    );
    assert_eq!(var(hook_params(pre[0], "ledger-3"), "FLEETUP_BATCH"), "2");
    let h3 = hook_params(post[1], "ledger-3");
    assert_eq!((h3.phase, h3.local), (HookPhase::Post, true));
    assert_eq!(h3.dir.as_deref(), Some("/fleet"));
    assert_eq!(var(h3, "FLEETUP_PHASE"), "post");
    assert_eq!(var(h3, "FLEETUP_BATCH"), "2");
}

#[test]
fn hook_commands_are_the_quoted_variables_and_the_command_as_one_word() {
    let n = node("ledger-1", "1.7.4").hooks(
        Some(remote("lb drain \"$FLEETUP_ADDRESS\" && echo 'ok'")),
        Some(local("./lb enable")),
    );
    let p = plan(vec![n], "1.8.2", Strategy::Offline);
    let vars = "FLEETUP_HOST=ledger-1 FLEETUP_ADDRESS=ledger-1.internal FLEETUP_BATCH=1";
    let pre = steps_of(&p, StepKind::PreHook)[0];
    assert_eq!(
        pre.commands[0].commands,
        [format!(
            "{vars} FLEETUP_PHASE=pre FLEETUP_RUN_ID=@RUN_ID@ FLEETUP_TARGET=1.8.2 sh -c 'lb drain \"$FLEETUP_ADDRESS\" && echo '\\''ok'\\'''"
        )]
    );
    let post = steps_of(&p, StepKind::PostHook)[0];
    assert_eq!(
        post.commands[0].commands,
        [format!(
            "# local: cd /fleet && {vars} FLEETUP_PHASE=post FLEETUP_RUN_ID=@RUN_ID@ FLEETUP_TARGET=1.8.2 sh -c './lb enable'"
        )]
    );
    // The run's line is the plan's with the run id put in, byte for byte.
    let h = hook_params(pre, "ledger-1");
    assert_eq!(
        h.line("20260125T174502Z-00ab12"),
        pre.commands[0].commands[0].replace(RUN_ID_TOKEN, "20260125T174502Z-00ab12")
    );
    assert_eq!(var(h, "FLEETUP_RUN_ID"), RUN_ID_TOKEN);
    assert_eq!(
        h.env_for("r-1")
            .iter()
            .find(|(k, _)| k == "FLEETUP_RUN_ID")
            .map(|(_, v)| v.as_str()),
        Some("r-1")
    );
    assert!(
        pre.action.contains("on each node over SSH"),
        "{}",
        pre.action
    );
    assert!(post.action.contains("on this machine"), "{}", post.action);
    assert!(
        post.checks.iter().any(|c| c.contains("timeout `5s`")),
        "{:?}",
        post.checks
    );
}

#[test]
fn only_hosts_with_the_hook_are_in_its_step_and_none_without_any() {
    let nodes = vec![
        node("ledger-1", "1.7.4").hooks(Some(remote("drain")), None),
        node("ledger-2", "1.7.4"),
        node("ledger-3", "1.7.4").hooks(None, Some(remote("enable"))),
    ];
    let p = plan(nodes, "1.8.2", Strategy::Offline);
    let pre = steps_of(&p, StepKind::PreHook);
    assert_eq!(hosts_of(pre[0]), ["ledger-1"]);
    assert_eq!(pre[0].commands.len(), 1);
    // Batch 1 (the migrator) has no post hook; batch 2's is ledger-3's alone.
    let post = steps_of(&p, StepKind::PostHook);
    assert_eq!(post.len(), 1);
    assert_eq!(
        (hosts_of(post[0]), post[0].batch),
        (vec!["ledger-3"], Some(2))
    );
    assert_eq!(post[0].id, "post-hook-2");

    let bare = plan(three("1.7.4"), "1.8.2", Strategy::Offline);
    assert!(!kinds(&bare).contains(&StepKind::PreHook));
    assert!(!kinds(&bare).contains(&StepKind::PostHook));
}

#[test]
fn offline_with_stop_drains_before_the_first_stop() {
    let nodes: Vec<Node> = hooked(three("1.7.4"))
        .into_iter()
        .map(Node::running)
        .collect();
    let p = plan_with(
        nodes,
        "1.8.2",
        &PlanOptions {
            stop_running: true,
            ..opts(Strategy::Offline)
        },
    );
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(
        position(&p, StepKind::PreHook) + 1,
        position(&p, StopService)
    );
}

#[test]
fn rolling_drains_each_batch_before_its_stop_and_puts_it_back_after_its_gate() {
    let nodes: Vec<Node> = hooked(three("1.5.0"))
        .into_iter()
        .map(Node::running)
        .collect();
    let p = plan(nodes, "1.9.0", Strategy::Rolling);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    let batch = [
        PreHook,
        StopService,
        Switch,
        StartService,
        HealthGate,
        PostHook,
    ];
    // The canary batch migrates between its stop and its switch.
    let mut expected = vec![
        Preflight,
        Lock,
        Backup,
        Stage,
        PreHook,
        StopService,
        Migrate,
    ];
    expected.extend(&batch[2..]);
    for _ in 0..2 {
        expected.extend(batch);
    }
    expected.push(Unlock);
    assert_eq!(kinds(&p), expected);
    for (i, s) in steps_of(&p, StepKind::PreHook).iter().enumerate() {
        assert_eq!(s.id, format!("pre-hook-{}", i + 1));
        assert_eq!(s.hosts, [format!("ledger-{}", i + 1)]);
        assert_eq!(
            var(hook_params(s, &s.hosts[0]), "FLEETUP_BATCH"),
            (i + 1).to_string()
        );
    }
    assert!(ids(&p).contains(&"post-hook-3"));
}

#[test]
fn replace_prepares_each_new_batch_before_its_start_and_never_hooks_the_old_nodes() {
    let nodes = vec![
        node("old-1", "1.5.0").running(),
        node("old-2", "1.5.0").running(),
        node("new-1", "1.5.0").fresh().replaces("old-1"),
        node("new-2", "1.5.0").fresh().replaces("old-2"),
    ];
    let p = plan(hooked(nodes), "1.9.0", Strategy::Replace);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    let mut expected = vec![Preflight, Lock, Backup, Stage, Migrate, Switch];
    for _ in 0..2 {
        // The old nodes of a batch go once its new ones are back in (post hook).
        expected.extend([PreHook, StartService, HealthGate, PostHook, Decommission]);
    }
    expected.push(Unlock);
    assert_eq!(kinds(&p), expected);
    let hooked_hosts: Vec<&str> = p
        .steps
        .iter()
        .filter(|s| matches!(s.kind, PreHook | PostHook))
        .flat_map(|s| s.hosts.iter().map(String::as_str))
        .collect();
    assert_eq!(hooked_hosts, ["new-1", "new-1", "new-2", "new-2"]);
}

#[test]
fn hook_params_serialize_with_their_kind_and_a_readable_timeout() {
    let p = plan(
        vec![node("ledger-1", "1.7.4").hooks(Some(local("x")), None)],
        "1.8.2",
        Strategy::Offline,
    );
    let json = serde_json::to_value(&p).unwrap();
    let step = json["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["kind"] == "pre_hook")
        .expect("a pre_hook step");
    let params = &step["commands"][0]["params"];
    assert_eq!(params["kind"], "hook");
    assert_eq!(params["phase"], "pre");
    assert_eq!(params["timeout"], "5s");
    assert_eq!(params["local"], true);
    assert_eq!(params["dir"], "/fleet");
    assert_eq!(
        params["env"][0],
        serde_json::json!(["FLEETUP_HOST", "ledger-1"])
    );
}
