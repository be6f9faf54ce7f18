//! Plan builder tests on hand-built fleets: one [`Node`] builder for host + facts, the real
//! built-in upgrade-path table.

use std::collections::BTreeMap;
use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::time::Duration;

use super::*;
use crate::facts::{ApiInfo, HostFacts, ServiceState, StorageDriver, StorageFacts};
use crate::inventory::{LedgerSettings, ResolvedHost, Service, SshSettings};
use crate::policy::PolicyTable;

#[path = "hook_tests.rs"]
mod hooks;

const SHA: &str = "4f2b9c1e0d8a7b6c5d4e3f2a1b0c9d8e7f6a5b4c3d2e1f0a9b8c7d6e5f4a3b2c";
const PG: &str = "postgresql://ledger:***@db.internal:5432/ledger";

fn v(s: &str) -> Version {
    Version::parse(s).expect("test version")
}

/// One host and its facts. Defaults: reachable, stopped, Postgres (shared `PG`), systemd unit.
struct Node {
    host: ResolvedHost,
    facts: HostFacts,
}

fn node(name: &str, version: &str) -> Node {
    Node {
        host: ResolvedHost {
            name: name.to_string(),
            address: format!("{name}.internal"),
            groups: Vec::new(),
            migrator: false,
            replaces: None,
            ssh: SshSettings {
                user: "root".to_string(),
                port: 22,
                identity_files: Vec::new(),
                known_hosts: PathBuf::from("/root/.ssh/known_hosts"),
                global_known_hosts: vec![],
                connect_timeout: Duration::from_secs(10),
                command_timeout: Duration::from_secs(600),
                migration_timeout: Duration::from_secs(6 * 3600),
                jump_host: None,
                use_agent: false,
                jump_chain: Vec::new(),
                openssh: Default::default(),
            },
            ledger: LedgerSettings {
                binary: "/usr/local/bin/numary".to_string(),
                releases_dir: "/opt/numary/releases".to_string(),
                service: Service::Systemd {
                    unit: "numary.service".to_string(),
                },
                env_file: Some("/etc/numary/env".to_string()),
                api: "127.0.0.1:3068".to_string(),
                ledgers: None,
                backup_dir: "/var/backups/numary".to_string(),
                storage: None,
                escalate: Default::default(),
            },
            rollout: Default::default(),
        },
        facts: HostFacts {
            unreachable: None,
            installed_version: Some(v(version)),
            service: ServiceState::Stopped,
            api: None,
            storage: Some(StorageFacts {
                driver: StorageDriver::Postgres,
                sqlite_dir: None,
                postgres: Some(PG.to_string()),
            }),
            ledgers: vec!["default".to_string(), "payments".to_string()],
            staged: Vec::new(),
            hot_journals: Vec::new(),
            ..HostFacts::default()
        },
    }
}

impl Node {
    fn running(mut self) -> Self {
        self.facts.service = ServiceState::Running;
        self.facts.api = Some(ApiInfo {
            healthy: true,
            version: self.facts.installed_version.clone(),
        });
        self
    }

    fn sqlite(mut self) -> Self {
        self.facts.storage = Some(StorageFacts {
            driver: StorageDriver::Sqlite,
            sqlite_dir: Some("/var/lib/numary/data".to_string()),
            postgres: None,
        });
        self
    }

    fn migrator(mut self) -> Self {
        self.host.migrator = true;
        self
    }

    fn replaces(mut self, old: &str) -> Self {
        self.host.replaces = Some(old.to_string());
        self
    }

    /// A new machine: no `numary` installed yet.
    fn fresh(mut self) -> Self {
        self.facts.installed_version = None;
        self.facts.ledgers.clear();
        self
    }

    fn unreachable(mut self) -> Self {
        self.facts = HostFacts {
            unreachable: Some("connection timed out after 10s".to_string()),
            ..HostFacts::default()
        };
        self
    }

    fn hot_journal(mut self, file: &str) -> Self {
        self.facts.hot_journals.push(file.to_string());
        self
    }

    fn inventory_ledgers(mut self, names: &[&str]) -> Self {
        self.host.ledger.ledgers = Some(names.iter().map(|n| n.to_string()).collect());
        self
    }
}

fn opts(strategy: Strategy) -> PlanOptions {
    PlanOptions {
        strategy,
        serial: None,
        canary: std::num::NonZeroUsize::MIN,
        hop_binaries: Vec::new(),
        stop_running: false,
        backup: true,
        binary: BinarySource::File {
            path: PathBuf::from("./numary-1.8.2"),
            sha256: SHA.to_string(),
        },
    }
}

fn split(nodes: Vec<Node>) -> (Vec<ResolvedHost>, BTreeMap<String, HostFacts>) {
    let mut hosts = Vec::new();
    let mut facts = BTreeMap::new();
    for n in nodes {
        facts.insert(n.host.name.clone(), n.facts);
        hosts.push(n.host);
    }
    (hosts, facts)
}

fn plan_with(nodes: Vec<Node>, target: &str, opts: &PlanOptions) -> Plan {
    let (hosts, facts) = split(nodes);
    build_plan(&hosts, &facts, &v(target), opts, &PolicyTable::builtin())
}

fn plan(nodes: Vec<Node>, target: &str, strategy: Strategy) -> Plan {
    plan_with(nodes, target, &opts(strategy))
}

fn kinds(plan: &Plan) -> Vec<StepKind> {
    plan.steps.iter().map(|s| s.kind).collect()
}

fn steps_of(plan: &Plan, kind: StepKind) -> Vec<&Step> {
    plan.steps.iter().filter(|s| s.kind == kind).collect()
}

fn hosts_of(step: &Step) -> Vec<&str> {
    step.hosts.iter().map(String::as_str).collect()
}

fn position(plan: &Plan, kind: StepKind) -> usize {
    plan.steps
        .iter()
        .position(|s| s.kind == kind)
        .unwrap_or_else(|| panic!("no {kind} step in {:?}", kinds(plan)))
}

fn blocker_kinds(plan: &Plan) -> Vec<BlockerKind> {
    plan.blockers.iter().map(|b| b.kind).collect()
}

fn all_commands(plan: &Plan) -> Vec<&str> {
    plan.steps
        .iter()
        .flat_map(|s| &s.commands)
        .flat_map(|hc| &hc.commands)
        .map(String::as_str)
        .collect()
}

fn commands_of<'p>(step: &'p Step, host: &str) -> Vec<&'p str> {
    step.commands
        .iter()
        .find(|c| c.host == host)
        .map(|c| c.commands.iter().map(String::as_str).collect())
        .unwrap_or_default()
}

fn ids(plan: &Plan) -> Vec<&str> {
    plan.steps.iter().map(|s| s.id.as_str()).collect()
}

fn step_by_id<'p>(plan: &'p Plan, id: &str) -> &'p Step {
    plan.steps
        .iter()
        .find(|s| s.id == id)
        .unwrap_or_else(|| panic!("no step `{id}` in {:?}", ids(plan)))
}

/// `n` old nodes at `version`, serving, and `replaced` new nodes without `numary` (`new-i`
/// replaces `old-i`).
fn old_and_new(n: usize, replaced: usize, version: &str) -> Vec<Node> {
    let mut nodes: Vec<Node> = (1..=n)
        .map(|i| node(&format!("old-{i}"), version).running())
        .collect();
    nodes.extend((1..=replaced).map(|i| {
        node(&format!("new-{i}"), version)
            .fresh()
            .replaces(&format!("old-{i}"))
    }));
    nodes
}

fn three(version: &str) -> Vec<Node> {
    vec![
        node("ledger-1", version),
        node("ledger-2", version),
        node("ledger-3", version),
    ]
}

use StepKind::*;

/// The guide's offline procedure up to the restarts.
const OFFLINE_HEAD: [StepKind; 7] = [
    Preflight,
    Lock,
    ConfirmStopped,
    Backup,
    Stage,
    Migrate,
    Switch,
];

/// `head`, then a start and a health gate per batch, then `tail`, then the unlock.
fn starting_in_batches(head: &[StepKind], batches: usize, tail: &[StepKind]) -> Vec<StepKind> {
    let mut kinds = head.to_vec();
    for _ in 0..batches {
        kinds.extend([StartService, HealthGate]);
    }
    kinds.extend(tail);
    kinds.push(Unlock);
    kinds
}

#[test]
fn offline_three_nodes_follow_the_guides_multi_node_order() {
    let p = plan(three("1.7.4"), "1.8.2", Strategy::Auto);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(p.strategy, Strategy::Offline);
    assert_eq!(p.mode, Mode::MultiNode);
    assert_eq!(kinds(&p), starting_in_batches(&OFFLINE_HEAD, 2, &[]));
    let numbers: Vec<usize> = p.steps.iter().map(|s| s.number).collect();
    assert_eq!(numbers, (1..=p.steps.len()).collect::<Vec<_>>());
    assert_eq!(p.migrator.as_deref(), Some("ledger-1"));
    assert_eq!(hosts_of(steps_of(&p, Backup)[0]), ["ledger-1"]);
    assert_eq!(hosts_of(steps_of(&p, Migrate)[0]), ["ledger-1"]);
    assert_eq!(
        hosts_of(steps_of(&p, Switch)[0]),
        ["ledger-1", "ledger-2", "ledger-3"]
    );
    // Offline default: the migrator alone, then everyone else at once.
    assert_eq!(p.batches, [vec!["ledger-1"], vec!["ledger-2", "ledger-3"]]);
    let starts = steps_of(&p, StartService);
    assert_eq!(hosts_of(starts[0]), ["ledger-1"]);
    assert_eq!(hosts_of(starts[1]), ["ledger-2", "ledger-3"]);
    assert!(p.hosts.iter().all(|h| h.action == HostAction::Upgrade));
    // No StopService without --stop: the nodes were stopped already.
    assert!(steps_of(&p, StopService).is_empty());
}

#[test]
fn migrate_runs_scan_list_and_upgrade_with_the_new_binary_and_the_service_env() {
    let p = plan(three("1.7.4"), "1.8.2", Strategy::Offline);
    let migrate = steps_of(&p, Migrate)[0];
    assert_eq!(migrate.commands.len(), 1);
    let cmds = &migrate.commands[0].commands;
    let env = format!(
        "{}exec /opt/numary/releases/1.8.2/numary",
        crate::envfile::loader("/etc/numary/env")
    );
    // Postgres: the other sessions counted again and the migration lock held first.
    assert!(cmds[0].contains("pg_stat_activity"), "{}", cmds[0]);
    assert!(cmds[1].contains("pg_try_advisory_lock"), "{}", cmds[1]);
    assert_eq!(
        &cmds[2..],
        &[
            format!("{env} storage list"),
            format!("{env} storage scan"),
            format!("{env} storage list"),
            format!("{env} storage upgrade default"),
            format!("{env} storage upgrade payments"),
        ]
    );
    // The connection string (even redacted) never reaches a command line.
    assert!(
        all_commands(&p)
            .iter()
            .all(|c| !c.contains("db.internal") && !c.contains("ledger:"))
    );
    let backup = steps_of(&p, Backup)[0];
    let dump = &backup.commands[0].commands;
    assert_eq!(dump.len(), 1, "{dump:?}");
    assert!(
        dump[0].starts_with(&crate::envfile::loader("/etc/numary/env")),
        "{}",
        dump[0]
    );
    assert!(dump[0].contains("f=/var/backups/numary/@RUN_ID@/postgres.dump"));
    assert!(dump[0].contains("exec pg_dump --format=custom --file=\"$f\""));
    assert!(dump[0].contains("pg_restore --list \"$f\""));
}

#[test]
fn inventory_ledgers_are_listed_as_checks_and_drive_the_upgrade_commands() {
    let nodes = vec![
        node("ledger-1", "1.7.4").inventory_ledgers(&["default", "orders"]),
        node("ledger-2", "1.7.4").inventory_ledgers(&["default", "orders"]),
    ];
    let p = plan(nodes, "1.8.2", Strategy::Offline);
    let migrate = steps_of(&p, Migrate)[0];
    assert!(
        migrate
            .checks
            .iter()
            .any(|c| c.contains("must each be listed") && c.contains("`default`, `orders`")),
        "{:?}",
        migrate.checks
    );
    let cmds = &migrate.commands[0].commands;
    assert!(
        cmds.last()
            .is_some_and(|c| c.ends_with("storage upgrade orders"))
    );
    assert!(!cmds.iter().any(|c| c.ends_with("storage upgrade payments")));
}

#[test]
fn single_sqlite_node_runs_the_single_node_procedure() {
    let p = plan(
        vec![node("solo", "1.6.1").sqlite()],
        "1.8.3",
        Strategy::Auto,
    );
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(p.mode, Mode::SingleNode);
    assert_eq!(p.strategy, Strategy::Offline);
    assert_eq!(kinds(&p), starting_in_batches(&OFFLINE_HEAD, 1, &[]));
    assert!(p.steps.iter().all(|s| hosts_of(s) == ["solo"]));
    let backup = &steps_of(&p, Backup)[0].commands[0].commands;
    assert_eq!(backup.len(), 1, "{backup:?}");
    assert!(backup[0].contains("dst=/var/backups/numary/@RUN_ID@"));
    assert!(backup[0].contains("cp -p -- \"$@\" \"$dst\"/"));
    assert!(
        backup[0].contains("echo ==orig; sums") && backup[0].contains("echo ==copy; sums"),
        "originals and copies are both hashed: {backup:?}"
    );
    let confirm = &steps_of(&p, ConfirmStopped)[0];
    assert!(confirm.checks.iter().any(|c| c.contains("hot journal")));
}

#[test]
fn auto_is_rolling_where_the_table_allows_it_on_a_serving_shared_fleet_and_offline_otherwise() {
    // 1.5.0 → 1.7.2: row `1.7.x` from `1.4.x`, zero-downtime, one shared Postgres.
    let serving: Vec<Node> = three("1.5.0").into_iter().map(Node::running).collect();
    let rolling = plan(serving, "1.7.2", Strategy::Auto);
    assert_eq!(rolling.strategy, Strategy::Rolling);
    assert!(!rolling.is_blocked(), "{:?}", rolling.blockers);
    assert!(
        !rolling.warnings.iter().any(|w| w.contains("zero-downtime")),
        "{:?}",
        rolling.warnings
    );
    // The same fleet already stopped: nothing to keep serving, the guide's procedure, said why.
    let all_modern = plan(three("1.5.0"), "1.7.2", Strategy::Auto);
    assert_eq!(all_modern.strategy, Strategy::Offline);
    assert!(!all_modern.is_blocked(), "{:?}", all_modern.blockers);
    assert!(
        all_modern
            .warnings
            .iter()
            .any(|w| w.contains("allows zero-downtime")
                && w.contains("no node to upgrade is running")
                && w.contains("offline")),
        "{:?}",
        all_modern.warnings
    );

    // One node on 1.3.0: only row `1.7.x` from `1.x` (offline) applies to it.
    let nodes = vec![
        node("ledger-1", "1.5.0"),
        node("ledger-2", "1.5.0"),
        node("ledger-3", "1.3.0"),
    ];
    let mixed = plan(nodes, "1.7.2", Strategy::Auto);
    assert_eq!(mixed.strategy, Strategy::Offline);
    assert_eq!(mixed.strategy_requested, Strategy::Auto);
    assert!(!mixed.is_blocked(), "{:?}", mixed.blockers);
    assert!(
        !mixed.warnings.iter().any(|w| w.contains("zero-downtime")),
        "{:?}",
        mixed.warnings
    );

    // SQLite fleets of 2 and 50 serving nodes: single-node deployments, offline, said why.
    for n in [2, 50] {
        let nodes = (1..=n)
            .map(|i| node(&format!("ledger-{i}"), "1.5.0").sqlite().running())
            .collect();
        let mut o = opts(Strategy::Auto);
        o.stop_running = true;
        let p = plan_with(nodes, "1.9.0", &o);
        assert_eq!(p.strategy, Strategy::Offline, "{n} nodes");
        assert!(!p.is_blocked(), "{n} nodes: {:?}", p.blockers);
        assert!(
            p.warnings.iter().any(|w| w.contains("SQLite")),
            "{:?}",
            p.warnings
        );
    }
    // A single node: the guide's single-node procedure, no zero-downtime to speak of.
    let single = plan(
        vec![node("ledger-1", "1.5.0").running()],
        "1.7.2",
        Strategy::Auto,
    );
    assert_eq!(single.strategy, Strategy::Offline);
}

#[test]
fn auto_is_replace_where_new_nodes_replace_old_ones_the_table_allows_it_and_they_serve() {
    // 1.8.2 → 1.9.6: row `1.9.x` from `1.4.x`, zero-downtime; one shared Postgres; serving.
    let p = plan(old_and_new(3, 3, "1.8.2"), "1.9.6", Strategy::Auto);
    assert_eq!(p.strategy, Strategy::Replace);
    assert_eq!(p.strategy_requested, Strategy::Auto);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    // The new nodes' missing `numary` is expected: no unknown version, no mixed versions.
    assert!(
        !p.warnings
            .iter()
            .any(|w| w.contains("zero-downtime") || w.contains("mixed")),
        "{:?}",
        p.warnings
    );
    for i in 1..=3 {
        let new = p.host(&format!("new-{i}")).unwrap();
        assert_eq!(new.action, HostAction::Deploy);
        assert_eq!(new.verdict, None);
        assert!(new.blocked.is_empty(), "{:?}", new.blocked);
        let old = p.host(&format!("old-{i}")).unwrap();
        assert_eq!(old.action, HostAction::Decommission);
        assert_eq!(old.batch, None);
    }
    // The same fleet with the table's offline row (1.8.x targets): offline, and the new nodes
    // have nothing to upgrade in place (their version is unknown), said with a hint.
    let offline = plan(old_and_new(3, 3, "1.7.4"), "1.8.2", Strategy::Auto);
    assert_eq!(offline.strategy, Strategy::Offline);
    let b = offline
        .blockers
        .iter()
        .find(|b| b.kind == BlockerKind::UnknownVersion && b.hosts == ["new-1"])
        .unwrap_or_else(|| panic!("{:?}", offline.blockers));
    assert!(
        b.hint
            .as_deref()
            .is_some_and(|h| h.contains("--strategy replace")),
        "{:?}",
        b.hint
    );
}

#[test]
fn replace_three_by_three_migrates_on_a_new_node_then_replaces_batch_by_batch() {
    let p = plan(old_and_new(3, 3, "1.8.2"), "1.9.6", Strategy::Replace);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(
        ids(&p),
        [
            "preflight",
            "lock",
            "backup",
            "stage",
            "migrate",
            "switch",
            "start-service-1",
            "health-gate-1",
            "decommission-1",
            "start-service-2",
            "health-gate-2",
            "decommission-2",
            "unlock",
        ]
    );
    assert_eq!(p.migrator.as_deref(), Some("new-1"));
    assert_eq!(p.batches, [vec!["new-1"], vec!["new-2", "new-3"]]);
    for id in ["backup", "migrate"] {
        assert_eq!(hosts_of(step_by_id(&p, id)), ["new-1"], "{id}");
    }
    for id in ["stage", "switch"] {
        assert_eq!(
            hosts_of(step_by_id(&p, id)),
            ["new-1", "new-2", "new-3"],
            "{id}"
        );
    }
    // Each old node goes once its replacement passed: the canary's right after it.
    assert_eq!(hosts_of(step_by_id(&p, "decommission-1")), ["old-1"]);
    assert_eq!(
        hosts_of(step_by_id(&p, "decommission-2")),
        ["old-2", "old-3"]
    );
    // The migration runs while the old nodes serve: no exclusivity asked of the database.
    let Some(Action::Migrate(m)) = step_by_id(&p, "migrate").params("new-1") else {
        panic!("migrate params");
    };
    assert!(!m.exclusive);
    assert!(
        !all_commands(&p)
            .iter()
            .any(|c| c.contains("pg_stat_activity"))
    );
    // The decommission stops through the service manager and disables the unit (systemd);
    // nothing removes the old binary or data.
    assert_eq!(
        commands_of(step_by_id(&p, "decommission-2"), "old-3"),
        [
            "systemctl stop numary.service",
            "systemctl show --property=LoadState,ActiveState --value -- numary.service",
            "systemctl disable numary.service",
        ]
    );
    // Nothing touches an old node before its decommission.
    let first = position(&p, Decommission);
    for step in &p.steps[2..first] {
        assert!(
            !step.hosts.iter().any(|h| h.starts_with("old-")),
            "{}: {:?}",
            step.id,
            step.hosts
        );
    }
    assert!(steps_of(&p, StopService).is_empty());
    // `--canary 2 --serial 1`: two new nodes first, then one at a time.
    let mut o = opts(Strategy::Replace);
    o.canary = NonZeroUsize::new(2).unwrap();
    o.serial = Some("1".parse().unwrap());
    let p = plan_with(old_and_new(3, 3, "1.8.2"), "1.9.6", &o);
    assert_eq!(p.batches, [vec!["new-1", "new-2"], vec!["new-3"]]);
    assert_eq!(
        hosts_of(step_by_id(&p, "decommission-1")),
        ["old-1", "old-2"]
    );
    assert_eq!(hosts_of(step_by_id(&p, "decommission-2")), ["old-3"]);
}

#[test]
fn replace_moves_old_nodes_without_a_replacement_as_rolling_while_the_last_batch_old_nodes_serve() {
    // old-3 has no replacement: it follows rolling, after the new nodes, before old-2 goes.
    let mut o = opts(Strategy::Replace);
    o.serial = Some("1".parse().unwrap());
    let p = plan_with(old_and_new(3, 2, "1.8.2"), "1.9.6", &o);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(p.batches, [vec!["new-1"], vec!["new-2"], vec!["old-3"]]);
    assert_eq!(
        ids(&p),
        [
            "preflight",
            "lock",
            "backup",
            "stage",
            "migrate",
            "switch",
            "start-service-1",
            "health-gate-1",
            "decommission-1",
            "start-service-2",
            "health-gate-2",
            "stop-service-3",
            "switch-3",
            "start-service-3",
            "health-gate-3",
            "decommission-2",
            "unlock",
        ]
    );
    assert_eq!(p.host("old-3").map(|h| h.action), Some(HostAction::Upgrade));
    assert_eq!(
        hosts_of(step_by_id(&p, "stage")),
        ["old-3", "new-1", "new-2"]
    );
    assert_eq!(hosts_of(step_by_id(&p, "switch")), ["new-1", "new-2"]);
    assert_eq!(hosts_of(step_by_id(&p, "decommission-2")), ["old-2"]);

    // A rolling batch is never larger than the last batch of new nodes: while it is down, that
    // batch's old nodes still serve, so the fleet keeps its starting count.
    let mut o = opts(Strategy::Replace);
    o.serial = Some("3".parse().unwrap());
    let p = plan_with(old_and_new(5, 2, "1.8.2"), "1.9.6", &o);
    assert_eq!(
        p.batches,
        [
            vec!["new-1"],
            vec!["new-2"],
            vec!["old-3"],
            vec!["old-4"],
            vec!["old-5"]
        ]
    );

    // The unpaired node's own path must allow zero-downtime too: refused naming its row.
    let mut nodes = old_and_new(3, 2, "1.8.2");
    nodes[2] = node("old-3", "1.3.0").running();
    let p = plan(nodes, "1.9.6", Strategy::Replace);
    assert!(
        p.blockers.iter().any(|b| b.hosts == ["old-3"]
            && matches!(
                b.kind,
                BlockerKind::StrategyNotAllowed | BlockerKind::UnsupportedPath
            )),
        "{:?}",
        p.blockers
    );
}

#[test]
fn replace_migrates_on_a_new_node_even_when_an_old_one_is_marked_migrator() {
    let mut nodes = old_and_new(3, 2, "1.8.2");
    nodes[0] = node("old-1", "1.8.2").running().migrator();
    nodes[2] = node("old-3", "1.8.2").running().migrator();
    let p = plan(nodes, "1.9.6", Strategy::Replace);
    assert_eq!(p.migrator.as_deref(), Some("new-1"));
    assert_eq!(hosts_of(step_by_id(&p, "migrate")), ["new-1"]);
    // old-3 starts (rolling) but cannot migrate: the new nodes start first on the storage.
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("`old-3` is marked `migrator = true`")
                && w.contains("a new node migrates")),
        "{:?}",
        p.warnings
    );
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("`old-1` is marked `migrator = true`")
                && w.contains("does not start it")),
        "{:?}",
        p.warnings
    );
}

#[test]
fn replace_decommissions_an_old_node_whose_replacement_already_serves_after_the_first_batch() {
    // A run that died before its decommissions: new-1 serves the target already.
    let mut nodes = old_and_new(2, 2, "1.8.2");
    nodes[2] = node("new-1", "1.9.6").running().replaces("old-1");
    let p = plan(nodes, "1.9.6", Strategy::Replace);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(
        p.host("new-1").map(|h| h.action),
        Some(HostAction::AlreadyAtTarget)
    );
    assert_eq!(p.batches, [vec!["new-2"]]);
    assert_eq!(
        hosts_of(step_by_id(&p, "decommission-1")),
        ["old-1", "old-2"]
    );
    // Every new node serves the target: only the decommissions are left.
    let mut nodes = old_and_new(2, 2, "1.8.2");
    nodes[2] = node("new-1", "1.9.6").running().replaces("old-1");
    nodes[3] = node("new-2", "1.9.6").running().replaces("old-2");
    let p = plan(nodes, "1.9.6", Strategy::Replace);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(ids(&p), ["preflight", "lock", "decommission", "unlock"]);
    assert_eq!(hosts_of(step_by_id(&p, "decommission")), ["old-1", "old-2"]);
}

#[test]
fn auto_after_a_replace_keeps_the_old_nodes_decommissioned() {
    // The run finished: the new nodes serve the target, the old ones are stopped. Run again,
    // `auto` must not upgrade the old nodes in place and start them (offline would: none of
    // them runs); it stays replace, whose only step left is their (done) decommission.
    let nodes = vec![
        node("old-1", "1.8.2"),
        node("old-2", "1.8.2"),
        node("new-1", "1.9.6").running().replaces("old-1"),
        node("new-2", "1.9.6").running().replaces("old-2"),
    ];
    let p = plan(nodes, "1.9.6", Strategy::Auto);
    assert_eq!(p.strategy, Strategy::Replace);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(ids(&p), ["preflight", "lock", "decommission", "unlock"]);
}

#[test]
fn replace_refuses_a_new_node_on_another_database_than_its_old_node() {
    let mut nodes = old_and_new(2, 2, "1.8.2");
    nodes[3].facts.storage = Some(StorageFacts {
        driver: StorageDriver::Postgres,
        sqlite_dir: None,
        postgres: Some("postgresql://ledger:***@db2.internal:5432/ledger".to_string()),
    });
    let p = plan(nodes, "1.9.6", Strategy::Replace);
    let b = p
        .blockers
        .iter()
        .find(|b| b.kind == BlockerKind::ReplacementOnOtherStorage)
        .unwrap_or_else(|| panic!("{:?}", p.blockers));
    assert_eq!(b.hosts, ["new-2", "old-2"]);
    assert!(b.reason.contains("db2.internal"), "{}", b.reason);
}

#[test]
fn a_forced_rolling_on_sqlite_or_over_several_storages_is_refused() {
    let sqlite = vec![
        node("ledger-1", "1.5.0").sqlite().running(),
        node("ledger-2", "1.5.0").sqlite().running(),
    ];
    let p = plan(sqlite, "1.9.0", Strategy::Rolling);
    let b = &p.blockers[0];
    assert_eq!(
        blocker_kinds(&p),
        [BlockerKind::ZeroDowntimeNeedsSharedStorage]
    );
    assert_eq!(b.hosts, ["ledger-1", "ledger-2"]);
    assert!(b.reason.contains("single-node deployment"), "{}", b.reason);

    let mut two_dbs = vec![
        node("ledger-1", "1.5.0").running(),
        node("ledger-2", "1.5.0").running(),
    ];
    two_dbs[1].host.ledger.storage = Some("other".to_string());
    two_dbs[0].host.ledger.storage = Some("main".to_string());
    let p = plan(two_dbs, "1.9.0", Strategy::Rolling);
    assert!(
        p.blockers
            .iter()
            .any(|b| b.kind == BlockerKind::ZeroDowntimeNeedsSharedStorage
                && b.reason.contains("2 storages")),
        "{:?}",
        p.blockers
    );
}

#[test]
fn auto_ignores_nodes_already_at_target_when_choosing() {
    // ledger-3 at 1.9.0 would be offline-only if it were upgraded from an old version; at the
    // target it does not count.
    let nodes = vec![
        node("ledger-1", "1.5.0"),
        node("ledger-2", "1.5.0"),
        node("ledger-3", "1.9.0").running(),
    ];
    let p = plan(nodes, "1.9.0", Strategy::Auto);
    assert_eq!(p.strategy, Strategy::Offline);
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("allows zero-downtime")
                && w.contains("no node to upgrade is running")),
        "{:?}",
        p.warnings
    );
    assert_eq!(p.touched_hosts(), ["ledger-1", "ledger-2"]);
}

#[test]
fn rolling_migrates_postgres_once_before_any_node_restarts_then_goes_batch_by_batch() {
    let p = plan(
        vec![
            node("ledger-1", "1.5.0").running(),
            node("ledger-2", "1.5.0").running(),
            node("ledger-3", "1.5.0").running(),
        ],
        "1.9.0",
        Strategy::Rolling,
    );
    assert_eq!(p.strategy, Strategy::Rolling);
    // Running nodes are fine when rolling.
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    let batch = [StopService, Switch, StartService, HealthGate];
    // The canary batch migrates, once, between its stop and its switch.
    let mut expected = vec![Preflight, Lock, Backup, Stage, StopService, Migrate];
    expected.extend(&batch[1..]);
    for _ in 0..2 {
        expected.extend(batch);
    }
    expected.push(Unlock);
    assert_eq!(kinds(&p), expected);
    // Rolling default: one node at a time, the migrator first.
    assert_eq!(
        p.batches,
        [vec!["ledger-1"], vec!["ledger-2"], vec!["ledger-3"]]
    );
    assert_eq!(hosts_of(steps_of(&p, Migrate)[0]), ["ledger-1"]);
    assert_eq!(steps_of(&p, Migrate)[0].id, "migrate-1");
    assert!(position(&p, Migrate) < position(&p, Switch));
    assert!(steps_of(&p, ConfirmStopped).is_empty());
    let stops = steps_of(&p, StopService);
    assert_eq!(
        stops.iter().map(|s| s.batch).collect::<Vec<_>>(),
        [Some(1), Some(2), Some(3)]
    );
}

#[test]
fn the_canary_batch_holds_canary_nodes_and_serial_may_be_a_share_of_the_nodes() {
    let nodes: Vec<Node> = (1..=8)
        .map(|i| node(&format!("ledger-{i}"), "1.5.0").running())
        .collect();
    let mut o = opts(Strategy::Rolling);
    o.canary = NonZeroUsize::new(2).unwrap();
    o.serial = Some("25%".parse().unwrap());
    let p = plan_with(nodes, "1.9.0", &o);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(
        p.batches,
        [
            vec!["ledger-1", "ledger-2"],
            vec!["ledger-3", "ledger-4"],
            vec!["ledger-5", "ledger-6"],
            vec!["ledger-7", "ledger-8"],
        ]
    );
    // The canary batch is stopped together; only the migrator migrates.
    assert_eq!(
        hosts_of(steps_of(&p, StopService)[0]),
        ["ledger-1", "ledger-2"]
    );
    assert_eq!(hosts_of(steps_of(&p, Migrate)[0]), ["ledger-1"]);
    // A canary larger than the fleet is the whole fleet, in one batch.
    o.canary = NonZeroUsize::new(20).unwrap();
    let nodes: Vec<Node> = (1..=3)
        .map(|i| node(&format!("ledger-{i}"), "1.5.0").running())
        .collect();
    let p = plan_with(nodes, "1.9.0", &o);
    assert_eq!(p.batches, [vec!["ledger-1", "ledger-2", "ledger-3"]]);
}

#[test]
fn replace_is_refused_without_pairs_or_with_a_missing_old_node() {
    let no_pairs = plan(three("1.5.0"), "1.9.0", Strategy::Replace);
    assert!(blocker_kinds(&no_pairs).contains(&BlockerKind::NoReplacePairs));

    let nodes = vec![
        node("old-1", "1.5.0").running(),
        node("new-1", "1.5.0").fresh().replaces("old-1"),
        node("new-2", "1.5.0").fresh().replaces("old-9"),
    ];
    let missing = plan(nodes, "1.9.0", Strategy::Replace);
    let b = missing
        .blockers
        .iter()
        .find(|b| b.kind == BlockerKind::ReplacedHostMissing)
        .expect("missing old node blocks");
    assert_eq!(b.hosts, ["new-2"]);
    assert!(b.reason.contains("`old-9`"), "{}", b.reason);
}

#[test]
fn replace_on_sqlite_is_refused() {
    let nodes = vec![
        node("old-1", "1.5.0").sqlite().running(),
        node("new-1", "1.5.0").sqlite().fresh().replaces("old-1"),
    ];
    let p = plan(nodes, "1.9.0", Strategy::Replace);
    assert!(blocker_kinds(&p).contains(&BlockerKind::ReplaceNeedsPostgres));
}

#[test]
fn mixed_versions_are_reported_with_each_version_and_its_hosts() {
    let nodes = vec![
        node("ledger-1", "1.7.4"),
        node("ledger-2", "1.7.3"),
        node("ledger-3", "1.7.4"),
    ];
    let p = plan(nodes, "1.8.2", Strategy::Auto);
    assert!(
        !p.is_blocked(),
        "mixed versions alone do not block: {:?}",
        p.blockers
    );
    let w = p
        .warnings
        .iter()
        .find(|w| w.contains("mixed versions"))
        .expect("a mixed-version warning");
    assert!(w.contains("`1.7.3` on `ledger-2`"), "{w}");
    assert!(w.contains("`1.7.4` on `ledger-1`, `ledger-3`"), "{w}");
}

#[test]
fn mixed_versions_with_one_unsupported_path_block_that_node_only() {
    let nodes = vec![node("ledger-1", "1.5.0"), node("ledger-2", "1.2.0")];
    let p = plan(nodes, "1.9.0", Strategy::Auto);
    let b = p
        .blockers
        .iter()
        .find(|b| b.kind == BlockerKind::UnsupportedPath)
        .expect("1.2.0 → 1.9.0 is unsupported");
    assert_eq!(b.hosts, ["ledger-2"]);
    assert!(
        b.reason.contains("supported route: 1.2.0 →"),
        "{}",
        b.reason
    );
    let hint = b.hint.as_deref().unwrap_or_default();
    assert!(hint.contains("--binary VERSION=FILE"), "{hint}");
    assert!(p.host("ledger-1").is_some_and(|h| h.blocked.is_empty()));
    assert!(p.host("ledger-2").is_some_and(|h| !h.blocked.is_empty()));
}

#[test]
fn nodes_already_at_target_are_not_touched() {
    let nodes = vec![
        node("ledger-1", "1.7.4"),
        node("ledger-2", "1.8.2").running(),
        node("ledger-3", "1.7.4"),
    ];
    let p = plan(nodes, "1.8.2", Strategy::Offline);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert!(
        p.steps
            .iter()
            .all(|s| !s.hosts.iter().any(|h| h == "ledger-2"))
    );
    let h = p.host("ledger-2").expect("listed");
    assert_eq!(h.action, HostAction::AlreadyAtTarget);
    assert_eq!(h.batch, None);
    assert_eq!(p.batches, [vec!["ledger-1"], vec!["ledger-3"]]);
    // It keeps serving on the shared database while the others migrate: said out loud.
    assert!(
        p.warnings
            .iter()
            .any(|w| w.contains("`ledger-2` already runs `1.8.2`"))
    );
}

#[test]
fn all_nodes_at_target_means_nothing_to_do() {
    let serving: Vec<Node> = three("1.8.2").into_iter().map(Node::running).collect();
    let p = plan(serving, "1.8.2", Strategy::Auto);
    assert!(p.nothing_to_do());
    assert!(p.steps.is_empty());
    assert!(p.batches.is_empty());
    assert!(
        p.hosts
            .iter()
            .all(|h| h.action == HostAction::AlreadyAtTarget)
    );
    assert!(render_text(&p).contains("nothing to do"));
}

#[test]
fn forced_zero_downtime_the_table_forbids_is_refused_naming_the_row_and_hosts() {
    let policy = PolicyTable::builtin();
    let row = policy
        .evaluate(&v("1.7.4"), &v("1.8.2"))
        .row
        .expect("a row decides 1.7.4 → 1.8.2");
    assert!(!row.zero_downtime);
    for strategy in [Strategy::Rolling, Strategy::Replace] {
        let mut nodes = three("1.7.4");
        if strategy == Strategy::Replace {
            nodes.push(node("ledger-4", "1.8.2").fresh().replaces("ledger-3"));
        }
        let p = plan(nodes, "1.8.2", strategy);
        assert_eq!(p.strategy, strategy, "a forced strategy is kept");
        let b = p
            .blockers
            .iter()
            .find(|b| b.kind == BlockerKind::StrategyNotAllowed)
            .unwrap_or_else(|| panic!("{strategy} refused: {:?}", p.blockers));
        assert!(
            b.reason.contains(&format!("table row {}", row.index)),
            "{}",
            b.reason
        );
        assert!(b.reason.contains(&format!("`{strategy}`")), "{}", b.reason);
        assert!(b.hosts.contains(&"ledger-1".to_string()));
        assert!(b.hosts.contains(&"ledger-3".to_string()));
    }
}

#[test]
fn forced_offline_is_allowed_where_zero_downtime_would_be() {
    let p = plan(three("1.5.0"), "1.9.0", Strategy::Offline);
    assert_eq!(p.strategy, Strategy::Offline);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
}

#[test]
fn an_unreachable_host_blocks_the_plan_but_the_steps_are_still_listed() {
    let nodes = vec![
        node("ledger-1", "1.7.4").unreachable(),
        node("ledger-2", "1.7.4"),
    ];
    let p = plan(nodes, "1.8.2", Strategy::Auto);
    assert!(p.is_blocked());
    let b = &p.blockers[0];
    assert_eq!(b.kind, BlockerKind::Unreachable);
    assert_eq!(b.hosts, ["ledger-1"]);
    assert!(b.reason.contains("connection timed out"), "{}", b.reason);
    assert!(!p.steps.is_empty());
    assert!(!p.nothing_to_do());
    // The first reachable host migrates.
    assert_eq!(p.migrator.as_deref(), Some("ledger-2"));
}

#[test]
fn missing_facts_block_like_an_unreachable_host() {
    let (hosts, mut facts) = split(three("1.7.4"));
    facts.remove("ledger-2");
    let p = build_plan(
        &hosts,
        &facts,
        &v("1.8.2"),
        &opts(Strategy::Auto),
        &PolicyTable::builtin(),
    );
    assert_eq!(blocker_kinds(&p), [BlockerKind::NoFacts]);
}

#[test]
fn a_running_node_blocks_offline_without_stop_and_is_stopped_first_with_it() {
    let nodes = || {
        vec![
            node("ledger-1", "1.7.4"),
            node("ledger-2", "1.7.4").running(),
            node("ledger-3", "1.7.4"),
        ]
    };
    let refused = plan(nodes(), "1.8.2", Strategy::Offline);
    assert_eq!(blocker_kinds(&refused), [BlockerKind::Running]);
    assert_eq!(refused.blockers[0].hosts, ["ledger-2"]);
    assert!(
        refused.blockers[0]
            .hint
            .as_deref()
            .is_some_and(|h| h.contains("--stop"))
    );
    assert!(steps_of(&refused, StopService).is_empty());

    let mut with_stop = opts(Strategy::Offline);
    with_stop.stop_running = true;
    let p = plan_with(nodes(), "1.8.2", &with_stop);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    let stop = steps_of(&p, StopService);
    assert_eq!(stop.len(), 1);
    assert_eq!(hosts_of(stop[0]), ["ledger-2"]);
    assert!(position(&p, StopService) < position(&p, ConfirmStopped));
    assert!(position(&p, ConfirmStopped) < position(&p, Backup));
    assert_eq!(
        stop[0].commands[0].commands[0],
        "systemctl stop numary.service"
    );
}

#[test]
fn an_api_answering_while_the_service_manager_says_stopped_blocks_even_with_stop() {
    let mut stray = node("ledger-1", "1.7.4");
    stray.facts.api = Some(ApiInfo {
        healthy: true,
        version: Some(v("1.7.4")),
    });
    let mut with_stop = opts(Strategy::Offline);
    with_stop.stop_running = true;
    let p = plan_with(vec![stray, node("ledger-2", "1.7.4")], "1.8.2", &with_stop);
    assert_eq!(
        blocker_kinds(&p),
        [BlockerKind::RunningOutsideServiceManager]
    );
}

#[test]
fn a_hot_sqlite_journal_blocks_with_a_recovery_hint() {
    let nodes = vec![
        node("solo", "1.6.1")
            .sqlite()
            .hot_journal("/var/lib/numary/data/numary_default.db-journal"),
    ];
    let p = plan(nodes, "1.8.3", Strategy::Auto);
    assert_eq!(blocker_kinds(&p), [BlockerKind::HotJournal]);
    let b = &p.blockers[0];
    assert!(
        b.reason.contains("numary_default.db-journal"),
        "{}",
        b.reason
    );
    assert!(
        b.hint
            .as_deref()
            .is_some_and(|h| h.contains("stop it cleanly") && h.contains("never delete"))
    );
}

#[test]
fn unknown_version_and_downgrade_block() {
    let nodes = vec![
        node("ledger-1", "1.7.4").fresh(),
        node("ledger-2", "1.9.0"),
        node("ledger-3", "1.7.4"),
    ];
    let p = plan(nodes, "1.8.2", Strategy::Offline);
    let find = |kind| {
        p.blockers
            .iter()
            .find(|b| b.kind == kind)
            .map(|b| b.hosts.clone())
    };
    assert_eq!(
        find(BlockerKind::UnknownVersion),
        Some(vec!["ledger-1".to_string()])
    );
    assert_eq!(
        find(BlockerKind::Downgrade),
        Some(vec!["ledger-2".to_string()])
    );
}

#[test]
fn mixed_storage_drivers_block() {
    let nodes = vec![
        node("ledger-1", "1.7.4"),
        node("ledger-2", "1.7.4").sqlite(),
    ];
    let p = plan(nodes, "1.8.2", Strategy::Offline);
    assert_eq!(blocker_kinds(&p), [BlockerKind::MixedStorage]);
    assert_eq!(p.blockers[0].hosts, ["ledger-2", "ledger-1"]);
}

impl Node {
    fn conn(mut self, conn: &str) -> Self {
        if let Some(s) = self.facts.storage.as_mut() {
            s.postgres = Some(conn.to_string());
        }
        self
    }

    fn storage(mut self, name: &str) -> Self {
        self.host.ledger.storage = Some(name.to_string());
        self
    }
}

const LOCAL_PG: &str = "postgresql://ledger@localhost:5432/ledger";

fn plan_left_out(nodes: Vec<Node>, left: Vec<Node>, target: &str) -> Plan {
    let (hosts, facts) = split(nodes);
    let (left_hosts, left_facts) = split(left);
    let left_out = LeftOut {
        hosts: left_hosts,
        facts: left_facts,
    };
    build_plan_with(
        &hosts,
        &facts,
        &left_out,
        &v(target),
        &opts(Strategy::Offline),
        &PolicyTable::builtin(),
    )
}

fn storage_hosts(p: &Plan) -> Vec<Vec<&str>> {
    p.storages
        .iter()
        .map(|s| s.hosts.iter().map(String::as_str).collect())
        .collect()
}

#[test]
fn different_postgres_databases_are_each_backed_up_and_migrated_once() {
    let p = plan(
        vec![
            node("ledger-1", "1.7.4"),
            node("ledger-2", "1.7.4").migrator(),
            node("ledger-3", "1.7.4").conn("postgresql://ledger@db-2.internal:5432/ledger"),
            node("ledger-4", "1.7.4").conn("postgresql://ledger@db-2.internal:5432/ledger"),
        ],
        "1.8.2",
        Strategy::Offline,
    );
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(
        storage_hosts(&p),
        [vec!["ledger-1", "ledger-2"], vec!["ledger-3", "ledger-4"]]
    );
    assert_eq!(p.migrators(), ["ledger-2", "ledger-3"]);
    assert_eq!(hosts_of(steps_of(&p, Backup)[0]), ["ledger-2", "ledger-3"]);
    assert_eq!(hosts_of(steps_of(&p, Migrate)[0]), ["ledger-2", "ledger-3"]);
    // Every node stopped before either migrates; the flagged migrator starts first, alone.
    assert!(position(&p, ConfirmStopped) < position(&p, Migrate));
    assert_eq!(hosts_of(steps_of(&p, ConfirmStopped)[0]).len(), 4);
    assert_eq!(p.migrator.as_deref(), Some("ledger-2"));
    assert_eq!(
        p.batches,
        [vec!["ledger-2"], vec!["ledger-1", "ledger-3", "ledger-4"]]
    );
    assert!(p.host("ledger-3").is_some_and(|h| h.migrator));
    assert!(p.host("ledger-4").is_some_and(|h| !h.migrator));
    assert_eq!(
        p.storage_of("ledger-4").and_then(|s| s.migrator.as_deref()),
        Some("ledger-3")
    );
    let text = render_text(&p);
    assert!(
        text.contains("storage: postgres `db-2.internal:5432/ledger`, migrated by ledger-3 (nodes: ledger-3, ledger-4)"),
        "{text}"
    );
}

#[test]
fn nodes_each_on_their_own_localhost_postgres_are_two_storages() {
    let p = plan(
        vec![
            node("ledger-1", "1.7.4").conn(LOCAL_PG),
            node("ledger-2", "1.7.4").conn(LOCAL_PG),
        ],
        "1.8.2",
        Strategy::Offline,
    );
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(storage_hosts(&p), [vec!["ledger-1"], vec!["ledger-2"]]);
    assert_eq!(hosts_of(steps_of(&p, Backup)[0]), ["ledger-1", "ledger-2"]);
    assert_eq!(hosts_of(steps_of(&p, Migrate)[0]), ["ledger-1", "ledger-2"]);
    assert_eq!(p.batches, [vec!["ledger-1"], vec!["ledger-2"]]);

    // The same nodes naming one storage (one machine's Postgres, say): migrated once.
    let named = plan(
        vec![
            node("ledger-1", "1.7.4").conn(LOCAL_PG).storage("box"),
            node("ledger-2", "1.7.4").conn(LOCAL_PG).storage("box"),
        ],
        "1.8.2",
        Strategy::Offline,
    );
    assert!(!named.is_blocked(), "{:?}", named.blockers);
    assert_eq!(storage_hosts(&named), [vec!["ledger-1", "ledger-2"]]);
    assert_eq!(hosts_of(steps_of(&named, Migrate)[0]), ["ledger-1"]);
    assert_eq!(hosts_of(steps_of(&named, Backup)[0]), ["ledger-1"]);
}

#[test]
fn one_database_under_two_storage_names_is_refused() {
    let p = plan(
        vec![
            node("ledger-1", "1.7.4").storage("main"),
            node("ledger-2", "1.7.4"),
        ],
        "1.8.2",
        Strategy::Offline,
    );
    assert_eq!(blocker_kinds(&p), [BlockerKind::StorageConflict]);
    let b = &p.blockers[0];
    assert_eq!(b.hosts, ["ledger-1", "ledger-2"]);
    assert!(
        b.reason.contains("`ledger-1` names storage `main`")
            && b.reason.contains("`ledger-2` names none")
            && b.reason.contains("db.internal:5432/ledger"),
        "{}",
        b.reason
    );
}

#[test]
fn a_storage_name_over_both_drivers_is_refused() {
    let p = plan(
        vec![
            node("ledger-1", "1.7.4").sqlite().storage("x"),
            node("ledger-2", "1.7.4").sqlite().storage("x"),
        ],
        "1.8.2",
        Strategy::Offline,
    );
    // All SQLite naming one storage (a shared file system): one storage, migrated once.
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(hosts_of(steps_of(&p, Migrate)[0]), ["ledger-1"]);
    let mixed = plan(
        vec![
            node("ledger-1", "1.7.4").conn(LOCAL_PG).storage("x"),
            node("ledger-2", "1.7.4").sqlite().storage("x"),
        ],
        "1.8.2",
        Strategy::Offline,
    );
    assert!(blocker_kinds(&mixed).contains(&BlockerKind::MixedStorage));
}

#[test]
fn a_node_left_out_on_a_migrated_storage_blocks_and_is_named() {
    let selected = || vec![node("ledger-1", "1.7.4"), node("ledger-2", "1.7.4")];
    let p = plan_left_out(selected(), vec![node("ledger-3", "1.7.4")], "1.8.2");
    assert_eq!(blocker_kinds(&p), [BlockerKind::LeftOut]);
    let b = &p.blockers[0];
    assert_eq!(b.hosts, ["ledger-3"]);
    assert!(
        b.reason
            .contains("`ledger-3` (runs `1.7.4`) is on postgres `db.internal:5432/ledger`"),
        "{}",
        b.reason
    );
    assert!(
        b.hint
            .as_deref()
            .is_some_and(|h| h.contains("`--limit ledger-1,ledger-2,ledger-3`")
                && h.contains("remove retired nodes")),
        "{:?}",
        b.hint
    );
    // Only the selected hosts' plans: the left-out node is no host of the plan.
    assert!(p.host("ledger-3").is_none());

    // On another database, or on its own: nothing to say.
    let other = node("ledger-3", "1.7.4").conn("postgresql://ledger@db-2.internal:5432/ledger");
    assert!(!plan_left_out(selected(), vec![other], "1.8.2").is_blocked());
    let own = node("ledger-3", "1.7.4").conn(LOCAL_PG);
    assert!(!plan_left_out(selected(), vec![own], "1.8.2").is_blocked());
    // Named in the inventory: it tells even when the node cannot be reached.
    let named = |n: &str| node("ledger-3", "1.7.4").unreachable().storage(n);
    let sel_named = || {
        vec![
            node("ledger-1", "1.7.4").storage("main"),
            node("ledger-2", "1.7.4").storage("main"),
        ]
    };
    let p = plan_left_out(sel_named(), vec![named("main")], "1.8.2");
    assert_eq!(blocker_kinds(&p), [BlockerKind::LeftOut]);
    assert!(!plan_left_out(sel_named(), vec![named("other")], "1.8.2").is_blocked());
}

#[test]
fn a_left_out_node_whose_storage_cannot_be_told_blocks_a_shared_migration() {
    let unreachable = || node("ledger-3", "1.7.4").unreachable();
    let p = plan_left_out(
        vec![node("ledger-1", "1.7.4"), node("ledger-2", "1.7.4")],
        vec![unreachable()],
        "1.8.2",
    );
    assert_eq!(blocker_kinds(&p), [BlockerKind::LeftOut]);
    let b = &p.blockers[0];
    assert!(
        b.reason.contains("cannot tell the storage of `ledger-3`")
            && b.reason.contains("connection timed out"),
        "{}",
        b.reason
    );
    assert!(
        b.hint
            .as_deref()
            .is_some_and(|h| h.contains("`storage = \"NAME\"`")),
        "{:?}",
        b.hint
    );
    // Nodes on their own storages (SQLite, a local Postgres) cannot share it with anyone.
    let sqlite = plan_left_out(
        vec![node("ledger-1", "1.7.4").sqlite()],
        vec![unreachable()],
        "1.8.2",
    );
    assert!(!sqlite.is_blocked(), "{:?}", sqlite.blockers);
    let local = plan_left_out(
        vec![node("ledger-1", "1.7.4").conn(LOCAL_PG)],
        vec![unreachable()],
        "1.8.2",
    );
    assert!(!local.is_blocked(), "{:?}", local.blockers);
    // Nothing migrated (every selected node already at the target): nothing left behind.
    let done = plan_left_out(
        vec![node("ledger-1", "1.8.2").running()],
        vec![node("ledger-3", "1.7.4")],
        "1.8.2",
    );
    assert!(!done.is_blocked(), "{:?}", done.blockers);
}

#[test]
fn migrator_is_the_flagged_host_else_the_first_reachable_in_inventory_order() {
    let flagged = plan(
        vec![
            node("ledger-1", "1.7.4"),
            node("ledger-2", "1.7.4").migrator(),
            node("ledger-3", "1.7.4"),
        ],
        "1.8.2",
        Strategy::Offline,
    );
    assert_eq!(flagged.migrator.as_deref(), Some("ledger-2"));
    assert_eq!(
        flagged.batches,
        [vec!["ledger-2"], vec!["ledger-1", "ledger-3"]]
    );
    assert!(flagged.host("ledger-2").is_some_and(|h| h.migrator));

    let unflagged = plan(three("1.7.4"), "1.8.2", Strategy::Offline);
    assert_eq!(unflagged.migrator.as_deref(), Some("ledger-1"));

    // A flagged node that is already at the target does not start: the next candidate migrates.
    let flagged_done = plan(
        vec![
            node("ledger-1", "1.8.2").migrator().running(),
            node("ledger-2", "1.7.4"),
        ],
        "1.8.2",
        Strategy::Offline,
    );
    assert_eq!(flagged_done.migrator.as_deref(), Some("ledger-2"));
    assert!(
        flagged_done
            .warnings
            .iter()
            .any(|w| w.contains("`ledger-1` is marked `migrator = true`"))
    );
}

#[test]
fn serial_batches_follow_the_migrator_alone() {
    let nodes: Vec<Node> = (1..=5)
        .map(|i| {
            let n = node(&format!("ledger-{i}"), "1.5.0");
            if i == 3 { n.migrator() } else { n }
        })
        .collect();
    let mut o = opts(Strategy::Offline);
    o.serial = NonZeroUsize::new(2).map(crate::plan::BatchSize::Count);
    let p = plan_with(nodes, "1.9.0", &o);
    assert_eq!(
        p.batches,
        [
            vec!["ledger-3"],
            vec!["ledger-1", "ledger-2"],
            vec!["ledger-4", "ledger-5"]
        ]
    );
    let starts: Vec<Vec<&str>> = steps_of(&p, StartService)
        .into_iter()
        .map(hosts_of)
        .collect();
    assert_eq!(starts, p.batches);
    let gates: Vec<Option<usize>> = steps_of(&p, HealthGate).iter().map(|s| s.batch).collect();
    assert_eq!(gates, [Some(1), Some(2), Some(3)]);
    assert_eq!(p.host("ledger-5").and_then(|h| h.batch), Some(3));
}

#[test]
fn no_backup_drops_the_backup_step_and_says_so() {
    let mut o = opts(Strategy::Offline);
    o.backup = false;
    let p = plan_with(three("1.7.4"), "1.8.2", &o);
    assert!(steps_of(&p, Backup).is_empty());
    assert!(p.warnings.iter().any(|w| w.contains("--no-backup")));
}

#[test]
fn staging_uses_the_release_dir_and_verifies_checksum_and_version() {
    let mut n = node("ledger-1", "1.7.4");
    n.facts.staged.push(v("1.8.2"));
    let mut o = opts(Strategy::Offline);
    o.binary = BinarySource::Url {
        url: "https://example.invalid/numary_1.8.2".to_string(),
        sha256: SHA.to_string(),
    };
    let p = plan_with(vec![n, node("ledger-2", "1.7.4")], "1.8.2", &o);
    let stage = steps_of(&p, Stage)[0];
    let cmds = &stage.commands[0].commands;
    assert_eq!(
        cmds[0],
        commands::download_command(
            "/opt/numary/releases/1.8.2",
            "https://example.invalid/numary_1.8.2",
            SHA
        )
    );
    assert!(
        cmds[0].contains("curl -fsSL --retry 2 -o \"$p\" https://example.invalid/numary_1.8.2")
    );
    assert!(cmds[0].contains("if [ \"$h\" != 4f2b"), "{}", cmds[0]);
    assert!(cmds[1].ends_with("exec /opt/numary/releases/1.8.2/numary version"));
    assert!(stage.checks.iter().any(|c| c.contains(SHA)));
    assert!(
        stage
            .checks
            .iter()
            .any(|c| c.contains("already staged on `ledger-1`"))
    );
}

#[test]
fn switch_keeps_the_previous_release_and_swaps_atomically() {
    let p = plan(three("1.7.4"), "1.8.2", Strategy::Offline);
    let cmds = &steps_of(&p, Switch)[0].commands[0].commands;
    // Exactly the script the runner runs: the previous target kept, an atomic swap.
    assert_eq!(
        cmds,
        &[crate::plan::SwitchParams::to_release(
            &three("1.7.4")[0].host,
            &v("1.8.2"),
            Some(&v("1.7.4"))
        )
        .command()]
    );
    assert!(cmds[0].contains("o=/opt/numary/releases/1.7.4"));
    assert!(
        cmds[0].contains("ln -sfn \"$n\" \"$b.fleetup-new\" && mv -Tf \"$b.fleetup-new\" \"$b\"")
    );
}

#[test]
fn digest_is_stable_across_map_order_and_changes_with_the_facts() {
    let (hosts, facts) = split(three("1.7.4"));
    let target = v("1.8.2");
    let o = opts(Strategy::Auto);
    let policy = PolicyTable::builtin();
    let p = build_plan(&hosts, &facts, &target, &o, &policy);

    let mut reversed = BTreeMap::new();
    for (k, f) in facts.iter().rev() {
        reversed.insert(k.clone(), f.clone());
    }
    let again = build_plan(&hosts, &reversed, &target, &o, &policy);
    let id = plan_digest(&p, &facts);
    assert_eq!(id, plan_digest(&again, &reversed));
    assert_eq!(id.len(), 64);
    assert!(id.bytes().all(|b| b.is_ascii_hexdigit()));

    // A fact that does not change the plan still changes the id (the fleet is not as audited).
    let mut changed = facts.clone();
    if let Some(f) = changed.get_mut("ledger-3") {
        f.ledgers.push("new-ledger".to_string());
    }
    assert_ne!(id, plan_digest(&p, &changed));
    // And a different plan for the same facts too.
    let offline = build_plan(&hosts, &facts, &target, &opts(Strategy::Offline), &policy);
    assert_ne!(id, plan_digest(&offline, &facts));
}

#[test]
fn text_rendering_lists_numbered_steps_hosts_blockers_and_hints() {
    let nodes = vec![
        node("ledger-1", "1.7.4"),
        node("ledger-2", "1.7.4").running(),
    ];
    let p = plan(nodes, "1.8.2", Strategy::Auto);
    let text = render_text(&p);
    for step in &p.steps {
        let line = format!("{:>2}. {}", step.number, step.kind);
        assert!(text.contains(&line), "missing `{line}` in:\n{text}");
    }
    assert!(
        text.starts_with(
            "plan: upgrade to 1.8.2, strategy offline (requested auto), multi-node, 2 of 2 hosts change\n"
        ),
        "{text}"
    );
    assert!(
        text.contains(" 1. preflight on ledger-1, ledger-2"),
        "{text}"
    );
    assert!(text.contains("why: "), "{text}");
    assert!(text.contains(": service env /etc/numary/env;"), "{text}");
    assert!(text.contains("ledger-2  1.7.4 → 1.8.2"), "{text}");
    assert!(text.contains("`ledger-2` is running"), "{text}");
    assert!(text.contains("hint: stop it cleanly first"), "{text}");
    assert!(text.contains("result: blocked by 1 finding(s)"), "{text}");
}

#[test]
fn json_has_the_documented_field_names() {
    let p = plan(three("1.7.4"), "1.8.2", Strategy::Auto);
    let json = serde_json::to_value(&p).expect("plan serializes");
    for key in [
        "target",
        "strategy_requested",
        "strategy",
        "mode",
        "serial",
        "stop_running",
        "backup",
        "binary",
        "migrator",
        "batches",
        "steps",
        "hosts",
        "blockers",
        "warnings",
    ] {
        assert!(json.get(key).is_some(), "missing `{key}`");
    }
    assert_eq!(json["strategy"], "offline");
    assert_eq!(json["strategy_requested"], "auto");
    assert_eq!(json["mode"], "multi_node");
    assert_eq!(json["binary"]["kind"], "file");
    assert_eq!(json["steps"][0]["kind"], "preflight");
    assert_eq!(json["steps"][0]["number"], 1);
    assert_eq!(json["steps"][5]["kind"], "migrate");
    assert_eq!(json["steps"][5]["commands"][0]["host"], "ledger-1");
    // Each host's typed parameters beside the lines rendered from them.
    let params = &json["steps"][5]["commands"][0]["params"];
    assert_eq!(params["kind"], "migrate");
    assert_eq!(params["binary"], "/opt/numary/releases/1.8.2/numary");
    let stage = &json["steps"][4]["commands"][1]["params"];
    assert_eq!(
        (&stage["kind"], &stage["release_dir"], &stage["version"]),
        (
            &serde_json::json!("stage"),
            &serde_json::json!("/opt/numary/releases/1.8.2"),
            &serde_json::json!("1.8.2")
        )
    );
    // A step without command lines still names each host's parameters.
    assert_eq!(json["steps"][1]["commands"][0]["params"]["kind"], "lock");
    assert_eq!(json["hosts"][0]["action"], "upgrade");
    assert_eq!(json["hosts"][0]["verdict"]["supported"], true);
}

#[test]
fn a_journal_beside_a_running_sqlite_node_is_not_a_hot_journal() {
    let nodes = vec![
        node("ledger-1", "1.5.0")
            .sqlite()
            .running()
            .hot_journal("numary_default.db-journal"),
        node("ledger-2", "1.5.0").sqlite().running(),
    ];
    let mut o = opts(Strategy::Offline);
    o.stop_running = true;
    let p = plan_with(nodes, "1.9.0", &o);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    let confirm = steps_of(&p, ConfirmStopped)[0];
    assert!(confirm.checks.iter().any(|c| c.contains("hot journal")));
}

#[test]
fn an_unknown_service_state_blocks_offline_unless_stop_is_given() {
    let mut unsure = node("ledger-1", "1.7.4");
    unsure.facts.service = ServiceState::Unknown;
    let refused = plan(vec![unsure], "1.8.2", Strategy::Offline);
    assert_eq!(blocker_kinds(&refused), [BlockerKind::ServiceStateUnknown]);

    let mut unsure = node("ledger-1", "1.7.4");
    unsure.facts.service = ServiceState::Unknown;
    let mut with_stop = opts(Strategy::Offline);
    with_stop.stop_running = true;
    let p = plan_with(vec![unsure], "1.8.2", &with_stop);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(hosts_of(steps_of(&p, StopService)[0]), ["ledger-1"]);
}

/// A node an earlier run switched to `target` (its binary resolves to the release) whose storage
/// holds every migration of `target`, stopped.
fn switched_and_migrated(name: &str, target: &str) -> Node {
    let mut n = node(name, target);
    n.facts.binary_target = Some(format!("/opt/numary/releases/{target}/numary"));
    let last = crate::schema::last_migration(&v(target), StorageDriver::Postgres).unwrap();
    n.facts.schema = Some(
        ["default", "payments"]
            .iter()
            .map(|l| (l.to_string(), (0..=last).collect()))
            .collect(),
    );
    n
}

#[test]
fn a_fleet_switched_and_migrated_but_stopped_is_started_not_upgraded_again() {
    let nodes = vec![
        switched_and_migrated("ledger-1", "1.8.2"),
        switched_and_migrated("ledger-2", "1.8.2"),
    ];
    let p = plan(nodes, "1.8.2", Strategy::Offline);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert!(!p.nothing_to_do(), "a stopped fleet is not done");
    assert_eq!(
        kinds(&p),
        [
            Preflight,
            Lock,
            ConfirmStopped,
            StartService,
            HealthGate,
            StartService,
            HealthGate,
            Unlock
        ]
    );
    assert!(p.hosts.iter().all(|h| h.action == HostAction::Upgrade));
    // Serving the target is the goal: once they serve, nothing is left.
    let serving: Vec<Node> = vec![
        switched_and_migrated("ledger-1", "1.8.2").running(),
        switched_and_migrated("ledger-2", "1.8.2").running(),
    ];
    assert!(plan(serving, "1.8.2", Strategy::Offline).nothing_to_do());
}

#[test]
fn a_switched_node_on_an_unmigrated_storage_is_migrated_but_not_restaged() {
    let mut n1 = switched_and_migrated("ledger-1", "1.8.2");
    n1.facts.schema = Some(
        [("default".to_string(), (0..=10).collect::<Vec<u32>>())]
            .into_iter()
            .collect(),
    );
    let n2 = node("ledger-2", "1.7.4");
    let mut n2 = n2;
    n2.facts.schema = n1.facts.schema.clone();
    let p = plan(vec![n1, n2], "1.8.2", Strategy::Offline);
    assert_eq!(hosts_of(steps_of(&p, Stage)[0]), ["ledger-2"]);
    assert_eq!(hosts_of(steps_of(&p, Switch)[0]), ["ledger-2"]);
    assert_eq!(hosts_of(steps_of(&p, Migrate)[0]), ["ledger-1"]);
    assert_eq!(steps_of(&p, Backup).len(), 1);
}

#[test]
fn a_route_of_hops_is_planned_end_to_end_with_one_backup_and_the_hop_in_each_id() {
    let nodes = || three("1.2.5");
    // Without a binary for the intermediate hop: blocked, saying which and how.
    let p = plan(nodes(), "1.9.0", Strategy::Auto);
    assert!(
        p.blockers.iter().any(|b| b.reason.contains("`1.8.x`")
            && b.hint
                .as_deref()
                .is_some_and(|h| h.contains("--binary VERSION=FILE"))),
        "{:?}",
        p.blockers
    );
    let mut o = opts(Strategy::Auto);
    o.hop_binaries = vec![
        (
            v("1.8.1"),
            BinarySource::File {
                path: PathBuf::from("./numary-1.8.1"),
                sha256: "11".repeat(32),
            },
        ),
        (
            v("1.8.2"),
            BinarySource::File {
                path: PathBuf::from("./numary-1.8.2"),
                sha256: "22".repeat(32),
            },
        ),
    ];
    let p = plan_with(nodes(), "1.9.0", &o);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    // The newest release of the hop's family is taken.
    let targets: Vec<String> = p.hops.iter().map(|h| h.target.to_string()).collect();
    assert_eq!(targets, ["1.8.2", "1.9.0"]);
    assert_eq!(p.hops[0].strategy, Strategy::Offline);
    // After the first hop every node serves: the second may roll.
    assert_eq!(p.hops[1].strategy, Strategy::Rolling);
    let ids: Vec<&str> = p.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(&ids[..2], ["preflight", "lock"]);
    assert_eq!(ids.last(), Some(&"unlock"));
    assert_eq!(ids.iter().filter(|i| **i == "lock").count(), 1);
    assert_eq!(ids.iter().filter(|i| i.ends_with("backup")).count(), 1);
    assert!(ids.contains(&"1.8.2/migrate"), "{ids:?}");
    assert!(ids.contains(&"1.9.0/migrate-1"), "{ids:?}");
    // Each hop stages its own binary.
    let staged: Vec<String> = steps_of(&p, Stage)
        .iter()
        .map(|s| match s.params("ledger-1") {
            Some(crate::plan::Action::Stage(sp)) => sp.version.to_string(),
            _ => String::new(),
        })
        .collect();
    assert_eq!(staged, ["1.8.2", "1.9.0"]);
    // Every hop's steps carry it, the numbers run on.
    assert!(
        p.steps[2..p.steps.len() - 1]
            .iter()
            .all(|s| s.hop.is_some())
    );
    assert!(p.steps.iter().enumerate().all(|(i, s)| s.number == i + 1));
    assert_eq!(p.target, v("1.9.0"));
}
