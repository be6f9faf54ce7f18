//! Plans built from the real `inventory.example.toml` (parsed and resolved by the inventory
//! module, groups and per-host overrides included) with hand-written facts: the inventory and the
//! plan builder agree on every setting the steps use.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fleetup::Version;
use fleetup::facts::{ApiInfo, HostFacts, ServiceState, StorageDriver, StorageFacts};
use fleetup::inventory::{Inventory, LocalEnv, Overrides, ResolvedHost};
use fleetup::plan::{
    BinarySource, BlockerKind, HostAction, Plan, PlanOptions, StepKind, Strategy, build_plan,
    render_text,
};
use fleetup::policy::PolicyTable;

const SHA: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn example() -> Inventory {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("inventory.example.toml");
    let source = std::fs::read_to_string(&path).expect("inventory.example.toml is readable");
    let local = LocalEnv {
        home: Some(PathBuf::from("/home/ops")),
        user: "ops".to_string(),
        default_identity_files: Vec::new(),
    };
    Inventory::parse(&source, &path, &Overrides::default(), &local)
        .expect("inventory.example.toml parses")
}

fn selected(inv: &Inventory, names: &[&str]) -> Vec<ResolvedHost> {
    let patterns: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    inv.select(&patterns)
        .expect("names select hosts")
        .into_iter()
        .cloned()
        .collect()
}

fn facts(version: Option<&str>, running: bool) -> HostFacts {
    let installed = version.map(|v| Version::parse(v).expect("test version"));
    HostFacts {
        installed_version: installed.clone(),
        service: if running {
            ServiceState::Running
        } else {
            ServiceState::Stopped
        },
        api: running.then(|| ApiInfo {
            healthy: true,
            version: installed,
        }),
        storage: Some(StorageFacts {
            driver: StorageDriver::Postgres,
            sqlite_dir: None,
            postgres: Some("postgresql://ledger:***@db.example.com/ledger".to_string()),
        }),
        ledgers: vec!["payments".to_string(), "wallets".to_string()],
        ..HostFacts::default()
    }
}

fn plan(
    hosts: &[ResolvedHost],
    facts: &BTreeMap<String, HostFacts>,
    to: &str,
    s: Strategy,
) -> Plan {
    let opts = PlanOptions {
        strategy: s,
        serial: None,
        canary: std::num::NonZeroUsize::MIN,
        hop_binaries: Vec::new(),
        stop_running: false,
        backup: true,
        binary: BinarySource::Url {
            url: "https://example.com/numary/1.8.2/numary-linux-amd64".to_string(),
            sha256: SHA.to_string(),
        },
    };
    let target = Version::parse(to).expect("target");
    build_plan(hosts, facts, &target, &opts, &PolicyTable::builtin())
}

fn commands_on<'p>(plan: &'p Plan, kind: StepKind, host: &str) -> Vec<&'p str> {
    plan.steps
        .iter()
        .filter(|s| s.kind == kind)
        .flat_map(|s| &s.commands)
        .filter(|hc| hc.host == host)
        .flat_map(|hc| &hc.commands)
        .map(String::as_str)
        .collect()
}

#[test]
fn eu_offline_uses_the_flagged_migrator_and_the_inventory_ledgers() {
    let inv = example();
    let hosts = selected(&inv, &["@eu"]);
    let facts = BTreeMap::from([
        ("ledger-eu-1".to_string(), facts(Some("1.7.4"), false)),
        ("ledger-eu-2".to_string(), facts(Some("1.7.4"), false)),
    ]);
    let p = plan(&hosts, &facts, "1.8.2", Strategy::Auto);
    assert!(!p.is_blocked(), "{:?}", p.blockers);
    assert_eq!(p.strategy, Strategy::Offline);
    assert_eq!(p.migrator.as_deref(), Some("ledger-eu-1"));
    let migrate = p
        .steps
        .iter()
        .find(|s| s.kind == StepKind::Migrate)
        .expect("a migrate step");
    assert!(
        migrate
            .checks
            .iter()
            .any(|c| c.contains("`payments`, `wallets`")),
        "{:?}",
        migrate.checks
    );
    let env = format!(
        "{}exec /opt/numary/releases/1.8.2/numary",
        fleetup::envfile::loader("/etc/numary/numary.env")
    );
    assert_eq!(
        commands_on(&p, StepKind::Migrate, "ledger-eu-1").last(),
        Some(&format!("{env} storage upgrade wallets").as_str())
    );
    assert!(
        commands_on(&p, StepKind::StartService, "ledger-eu-2")
            .contains(&"systemctl start numary.service")
    );
}

#[test]
fn the_example_rollout_hooks_surround_each_batch_with_their_group_and_host_overrides() {
    let inv = example();
    let hosts = selected(&inv, &["@eu"]);
    let eu = BTreeMap::from([
        ("ledger-eu-1".to_string(), facts(Some("1.7.4"), false)),
        ("ledger-eu-2".to_string(), facts(Some("1.7.4"), false)),
    ]);
    let p = plan(&hosts, &eu, "1.8.2", Strategy::Auto);
    let ids: Vec<&str> = p.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(
        &ids[..4],
        ["preflight", "lock", "pre-hook", "confirm-stopped"]
    );
    assert!(
        ids.contains(&"post-hook-1") && ids.contains(&"post-hook-2"),
        "{ids:?}"
    );
    let dir = fleetup::shell::quote(&Path::new(env!("CARGO_MANIFEST_DIR")).display().to_string());
    let pre = commands_on(&p, StepKind::PreHook, "ledger-eu-1");
    assert_eq!(pre.len(), 1);
    assert!(
        pre[0].starts_with(&format!("# local: cd {dir} && FLEETUP_HOST=ledger-eu-1 ")),
        "{}",
        pre[0]
    );
    assert!(
        pre[0].ends_with("sh -c 'lb-ctl drain \"$FLEETUP_ADDRESS\"'"),
        "{}",
        pre[0]
    );

    // The US group's own hooks run on the node; `ledger-us-1` cancels its post hook.
    let hosts = selected(&inv, &["@us"]);
    let us = BTreeMap::from([
        ("ledger-us-1".to_string(), facts(Some("1.7.4"), false)),
        ("ledger-us-2".to_string(), facts(Some("1.7.4"), false)),
    ]);
    let p = plan(&hosts, &us, "1.8.2", Strategy::Offline);
    let pre = commands_on(&p, StepKind::PreHook, "ledger-us-2");
    assert!(
        pre[0].starts_with("FLEETUP_HOST=ledger-us-2 "),
        "{}",
        pre[0]
    );
    assert!(
        pre[0].ends_with("sh -c /opt/numary/bin/leave-pool"),
        "{}",
        pre[0]
    );
    assert!(commands_on(&p, StepKind::PostHook, "ledger-us-1").is_empty());
    assert_eq!(commands_on(&p, StepKind::PostHook, "ledger-us-2").len(), 1);
}

#[test]
fn us_replace_forced_deploys_the_new_node_then_stops_the_old_one_with_its_own_commands() {
    let inv = example();
    let hosts = selected(&inv, &["@us"]);
    let facts = BTreeMap::from([
        ("ledger-us-1".to_string(), facts(Some("1.5.0"), true)),
        ("ledger-us-2".to_string(), facts(None, false)),
    ]);
    // `auto` picks replace: the table allows zero-downtime, the old node serves, one storage.
    let auto = plan(&hosts, &facts, "1.9.0", Strategy::Auto);
    assert_eq!(auto.strategy, Strategy::Replace);
    // Forced, the same plan; nothing blocks it.
    let p = plan(&hosts, &facts, "1.9.0", Strategy::Replace);
    assert_eq!(p.steps, auto.steps);
    assert!(p.blockers.is_empty(), "{:?}", p.blockers);
    assert_eq!(p.strategy, Strategy::Replace);
    assert_eq!(p.migrator.as_deref(), Some("ledger-us-2"));
    assert_eq!(
        p.host("ledger-us-1").map(|h| h.action),
        Some(HostAction::Decommission)
    );
    // The group's systemd unit on the new node, the host's own stop command on the old one.
    assert!(
        commands_on(&p, StepKind::StartService, "ledger-us-2")
            .contains(&"systemctl start numary@us.service")
    );
    assert!(
        commands_on(&p, StepKind::Decommission, "ledger-us-1").contains(&"/opt/numary/bin/stop")
    );
    // The old node is not touched before the end.
    let last = p.steps.len() - 1;
    for (i, step) in p.steps.iter().enumerate() {
        if step.hosts.iter().any(|h| h == "ledger-us-1") {
            assert!(
                matches!(
                    step.kind,
                    StepKind::Preflight
                        | StepKind::Lock
                        | StepKind::Decommission
                        | StepKind::Unlock
                ),
                "step {} ({}) touches the old node",
                step.number,
                step.kind
            );
            if step.kind == StepKind::Decommission {
                assert_eq!(i, last - 1, "decommission comes just before unlock");
            }
        }
    }
}

#[test]
fn whole_example_fleet_offline_refuses_the_running_and_the_fresh_nodes() {
    let inv = example();
    let hosts = inv.hosts().to_vec();
    let facts = BTreeMap::from([
        ("ledger-eu-1".to_string(), facts(Some("1.7.4"), false)),
        ("ledger-eu-2".to_string(), facts(Some("1.7.4"), true)),
        ("ledger-us-1".to_string(), facts(Some("1.7.4"), false)),
        ("ledger-us-2".to_string(), facts(None, false)),
    ]);
    let p = plan(&hosts, &facts, "1.8.2", Strategy::Auto);
    assert_eq!(p.strategy, Strategy::Offline, "1.8.x is offline only");
    let kinds: Vec<(BlockerKind, Vec<String>)> = p
        .blockers
        .iter()
        .map(|b| (b.kind, b.hosts.clone()))
        .collect();
    assert_eq!(
        kinds,
        [
            (BlockerKind::UnknownVersion, vec!["ledger-us-2".to_string()]),
            (BlockerKind::Running, vec!["ledger-eu-2".to_string()]),
        ]
    );
    let text = render_text(&p);
    assert!(text.contains("`ledger-us-2` is a new node"), "{text}");
    assert!(text.contains("result: blocked by 2 finding(s)"), "{text}");
}
