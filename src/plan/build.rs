//! Deciding the plan: assess each host against the table, choose the strategy, collect blockers
//! and warnings, pick the migrator and the start batches. `steps.rs` lays out the steps.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::steps::{self, Layout};
use super::storage;
use super::{
    Blocker, BlockerKind, HostAction, HostPlan, LeftOut, Mode, Plan, PlanOptions, Strategy,
};
use crate::facts::{HostFacts, ServiceState, StorageDriver, StorageId};
use crate::inventory::ResolvedHost;
use crate::policy::{PathRow, PolicyTable, Verdict, VerdictKind};
use crate::version::Version;

/// One selected host as the builder sees it.
pub(super) struct View<'a> {
    pub host: &'a ResolvedHost,
    pub facts: Option<&'a HostFacts>,
    /// Installed version; `None` when unreachable or unreadable.
    pub current: Option<Version>,
    pub verdict: Option<Verdict>,
    pub action: HostAction,
}

impl<'a> View<'a> {
    fn new(
        host: &'a ResolvedHost,
        facts: Option<&'a HostFacts>,
        target: &Version,
        policy: &PolicyTable,
    ) -> Self {
        let reachable = facts.filter(|f| f.reachable());
        let current = reachable.and_then(|f| f.installed_version.clone());
        let driver = reachable.and_then(|f| f.storage.as_ref()).map(|s| s.driver);
        let verdict = current
            .as_ref()
            .map(|c| policy.evaluate_for(c, target, driver));
        View {
            host,
            facts,
            current,
            verdict,
            action: HostAction::Upgrade,
        }
    }

    pub fn name(&self) -> &'a str {
        &self.host.name
    }

    pub(super) fn reachable_facts(&self) -> Option<&'a HostFacts> {
        self.facts.filter(|f| f.reachable())
    }

    pub(super) fn reachable(&self) -> bool {
        self.reachable_facts().is_some()
    }

    pub fn driver(&self) -> Option<StorageDriver> {
        self.reachable_facts()
            .and_then(|f| f.storage.as_ref())
            .map(|s| s.driver)
    }

    pub fn sqlite_dir(&self) -> Option<&'a str> {
        self.reachable_facts()
            .and_then(|f| f.storage.as_ref())
            .and_then(|s| s.sqlite_dir.as_deref())
    }

    /// Ledgers known now: the inventory's list, else what the node reported.
    pub fn known_ledgers(&self) -> Vec<String> {
        match &self.host.ledger.ledgers {
            Some(l) => l.clone(),
            None => self
                .reachable_facts()
                .map(|f| f.ledgers.clone())
                .unwrap_or_default(),
        }
    }

    /// The binary already resolves to the target's release (an earlier run switched it).
    pub fn switched(&self, target: &Version) -> bool {
        let release = super::commands::release_binary(self.host, target);
        self.reachable_facts()
            .and_then(|f| f.binary_target.as_deref())
            .is_some_and(|t| t == release)
    }

    /// This node's storage already holds every migration of the target (read-only probe of the
    /// `migrations` tables): backing it up or migrating it again would repeat a done step.
    pub fn storage_migrated(&self, target: &Version) -> bool {
        let Some(f) = self.reachable_facts() else {
            return false;
        };
        match (&f.schema, f.storage.as_ref()) {
            (Some(state), Some(storage)) => matches!(
                crate::schema::migrated(state, target, storage.driver),
                crate::schema::Migrated::Done { .. }
            ),
            _ => false,
        }
    }

    pub fn serves(&self, target: &Version) -> bool {
        self.reachable_facts().is_some_and(|f| f.serves(target))
    }

    pub fn staged(&self, target: &Version) -> bool {
        self.reachable_facts()
            .is_some_and(|f| f.staged.contains(target))
    }

    /// The node the plan starts on the target (as opposed to decommissions).
    pub(super) fn starts(&self) -> bool {
        matches!(self.action, HostAction::Upgrade | HostAction::Deploy)
    }

    pub(super) fn touched(&self) -> bool {
        self.action != HostAction::AlreadyAtTarget
    }
}

/// Blockers and warnings as they are found.
#[derive(Default)]
pub(super) struct Findings {
    blockers: Vec<Blocker>,
    warnings: Vec<String>,
    /// The warnings given, each once (a fleet can give one per host).
    warned: HashSet<String>,
}

impl Findings {
    pub(super) fn block(
        &mut self,
        kind: BlockerKind,
        hosts: &[&str],
        reason: String,
        hint: Option<String>,
    ) {
        self.blockers.push(Blocker {
            kind,
            hosts: hosts.iter().map(|h| (*h).to_string()).collect(),
            reason,
            hint,
        });
    }

    fn warn(&mut self, warning: String) {
        if self.warned.insert(warning.clone()) {
            self.warnings.push(warning);
        }
    }
}

/// Build the plan for moving the selected `hosts` (inventory order) to `target`, as if the
/// inventory held nothing else. Pure: no I/O. See [`build_plan_with`].
pub fn build_plan(
    hosts: &[ResolvedHost],
    facts: &BTreeMap<String, HostFacts>,
    target: &Version,
    opts: &PlanOptions,
    policy: &PolicyTable,
) -> Plan {
    build_plan_with(hosts, facts, &LeftOut::default(), target, opts, policy)
}

/// Build the plan for moving the selected `hosts` (inventory order) to `target`; `left_out` are
/// the inventory's other hosts, which the plan must not leave behind on a storage it migrates.
/// Pure: no I/O. The plan is always complete; whatever must not run is listed in
/// [`Plan::blockers`].
pub fn build_plan_with(
    hosts: &[ResolvedHost],
    facts: &BTreeMap<String, HostFacts>,
    left_out: &LeftOut,
    target: &Version,
    opts: &PlanOptions,
    policy: &PolicyTable,
) -> Plan {
    super::hops::build(hosts, facts, left_out, target, opts, policy)
}

/// The plan of one hop: every selected host straight to `target`.
pub(super) fn build_hop(
    hosts: &[ResolvedHost],
    facts: &BTreeMap<String, HostFacts>,
    left_out: &LeftOut,
    target: &Version,
    opts: &PlanOptions,
    policy: &PolicyTable,
) -> Plan {
    let mode = if hosts.len() == 1 {
        Mode::SingleNode
    } else {
        Mode::MultiNode
    };
    let mut views: Vec<View> = hosts
        .iter()
        .map(|h| View::new(h, facts.get(&h.name), target, policy))
        .collect();
    let (strategy, offline_why) = choose_strategy(opts.strategy, &views, mode, target);
    assign_actions(&mut views, strategy, target);

    let mut found = Findings::default();
    if hosts.is_empty() {
        found.block(
            BlockerKind::NoHosts,
            &[],
            "no host is selected".to_string(),
            Some("check `--limit` and the inventory's `[[host]]` entries".to_string()),
        );
    }
    host_blockers(&views, strategy, target, &mut found);
    strategy_blockers(&views, strategy, &mut found);
    if strategy == Strategy::Replace {
        replace_blockers(&views, &mut found);
    }
    let to_stop = stop_state(&views, strategy, opts.stop_running, &mut found);
    let groups = storage::group(&views);
    let driver = storage::checks(
        &views,
        &groups,
        strategy == Strategy::Replace,
        opts.backup,
        &mut found,
    );
    storage::name_conflicts(&views, left_out, &mut found);
    storage::left_out_blockers(&views, &groups, left_out, &mut found);
    warnings(&views, strategy, mode, target, opts, driver, &mut found);
    if let Some(why) = offline_why {
        found.warn(format!(
            "the upgrade-path table allows zero-downtime for every node, but {why}: strategy `offline`, every node to upgrade is stopped while its storage migrates"
        ));
    }
    if strategy.is_zero_downtime() {
        zero_downtime_storage_blockers(&views, &groups, strategy, &mut found);
    }

    let starters: Vec<&View> = views.iter().filter(|v| v.starts()).collect();
    let migrating: Vec<&View> = groups.iter().filter_map(|g| g.migrator).collect();
    let migrator = choose_migrator(&views, &migrating, &starters, &mut found);
    let batches = start_batches(&starters, migrator, strategy, opts);

    let layout = Layout {
        target,
        strategy,
        opts,
        touched: views.iter().filter(|v| v.touched()).collect(),
        starters: starters.clone(),
        retiring: views
            .iter()
            .filter(|v| v.action == HostAction::Decommission)
            .collect(),
        to_stop,
        migrating: migrating.clone(),
        batches: batches.clone(),
        shared_storage: driver != Some(StorageDriver::Sqlite),
    };
    let steps = steps::lay_out(&layout);

    let batch_names: Vec<Vec<String>> = batches
        .iter()
        .map(|b| b.iter().map(|v| v.name().to_string()).collect())
        .collect();
    // The migrator of a storage shared with other selected nodes is worth a mark.
    let shared_migrators: Vec<&str> = groups
        .iter()
        .filter(|g| g.views.len() > 1)
        .filter_map(|g| g.migrator.map(|m| m.name()))
        .collect();
    // Looked up once per host: maps, not searches of lists as long as the fleet.
    let mut batch_of: HashMap<&str, usize> = HashMap::new();
    for (i, b) in batch_names.iter().enumerate() {
        for n in b {
            batch_of.entry(n.as_str()).or_insert(i + 1);
        }
    }
    let mut blocked_by: HashMap<&str, Vec<&str>> = HashMap::new();
    for b in &found.blockers {
        let mut named: HashSet<&str> = HashSet::new();
        for h in b.hosts.iter().filter(|h| named.insert(h.as_str())) {
            blocked_by.entry(h.as_str()).or_default().push(&b.reason);
        }
    }
    let host_plans = views
        .iter()
        .map(|v| HostPlan {
            name: v.name().to_string(),
            current: v.current.clone(),
            action: v.action,
            migrator: migrator.is_some_and(|m| m.name() == v.name())
                || shared_migrators.contains(&v.name()),
            storage: StorageId::of(v.host, v.facts),
            replaces: v.host.replaces.clone(),
            batch: batch_of.get(v.name()).copied(),
            verdict: if v.action == HostAction::Deploy {
                None
            } else {
                v.verdict.clone()
            },
            blocked: blocked_by
                .get(v.name())
                .map(|r| r.iter().map(|r| r.to_string()).collect())
                .unwrap_or_default(),
        })
        .collect();

    Plan {
        target: target.clone(),
        strategy_requested: opts.strategy,
        strategy,
        mode,
        serial: opts.serial,
        canary: opts.canary,
        stop_running: opts.stop_running,
        backup: opts.backup,
        binary: opts.binary.clone(),
        migrator: migrator.map(|m| m.name().to_string()),
        storages: groups.iter().map(storage::Group::to_plan).collect(),
        batches: batch_names,
        steps,
        hosts: host_plans,
        blockers: found.blockers,
        warnings: found.warnings,
        hops: Vec::new(),
        rollback: None,
    }
}

/// The strategy the steps follow. `auto` is zero-downtime ([`zero_downtime_choice`]) when the
/// table allows it for every node, the nodes to upgrade share one Postgres storage, there are at
/// least two, and at least one of them serves now (a fleet already down has no service to keep:
/// the guide's offline procedure is then shorter; for replace, a new node serving the target is
/// service to keep too: an earlier replace decommissioned the old nodes, which must stay so);
/// otherwise offline, and when only the fleet's state ruled zero-downtime out, why (for a
/// warning). A forced strategy is kept; what the table or the storage does not allow for it is a
/// blocker.
fn choose_strategy(
    requested: Strategy,
    views: &[View],
    mode: Mode,
    target: &Version,
) -> (Strategy, Option<&'static str>) {
    if requested != Strategy::Auto {
        return (requested, None);
    }
    let Some(zero) = zero_downtime_choice(views, mode) else {
        return (Strategy::Offline, None);
    };
    let old: Vec<&View> = views.iter().filter(|v| v.host.replaces.is_none()).collect();
    let postgres = old
        .iter()
        .all(|v| v.driver() == Some(StorageDriver::Postgres));
    let storages: BTreeSet<Option<StorageId>> =
        old.iter().map(|v| StorageId::of(v.host, v.facts)).collect();
    let pending = |v: &&&View| {
        v.verdict
            .as_ref()
            .is_none_or(|x| x.kind != VerdictKind::AlreadyAtTarget)
    };
    let serving = old.iter().filter(pending).any(|v| {
        v.reachable_facts()
            .is_some_and(|f| f.service == ServiceState::Running)
    }) || (zero == Strategy::Replace
        && views
            .iter()
            .any(|v| v.host.replaces.is_some() && v.serves(target)));
    let why = if !postgres {
        "not every node is on Postgres (SQLite nodes are single-node deployments: each must stop while its files migrate)"
    } else if storages.len() != 1 || storages.contains(&None) {
        "the nodes are not on one shared storage"
    } else if !serving {
        "no node to upgrade is running"
    } else {
        return (zero, None);
    };
    (Strategy::Offline, Some(why))
}

/// The zero-downtime strategy the table would allow: only when it allows it for every node
/// still to upgrade (new nodes of a replacement excluded: their own binary does not matter, the
/// storage's does), and never for a single node (the guide's single-node procedure is offline).
fn zero_downtime_choice(views: &[View], mode: Mode) -> Option<Strategy> {
    if mode == Mode::SingleNode {
        return None;
    }
    let has_pairs = views.iter().any(|v| v.host.replaces.is_some());
    let pending: Vec<&View> = views
        .iter()
        .filter(|v| v.host.replaces.is_none())
        .filter(|v| {
            v.verdict
                .as_ref()
                .is_none_or(|x| x.kind != VerdictKind::AlreadyAtTarget)
        })
        .collect();
    if pending.is_empty() && !has_pairs {
        return None;
    }
    let zero_downtime = pending.iter().all(|v| {
        v.verdict
            .as_ref()
            .is_some_and(|x| x.supported && x.zero_downtime)
    });
    match (zero_downtime, has_pairs) {
        (true, true) => Some(Strategy::Replace),
        (true, false) => Some(Strategy::Rolling),
        (false, _) => None,
    }
}

fn assign_actions(views: &mut [View], strategy: Strategy, target: &Version) {
    let replaced: BTreeSet<String> = if strategy == Strategy::Replace {
        views
            .iter()
            .filter_map(|v| v.host.replaces.clone())
            .collect()
    } else {
        BTreeSet::new()
    };
    for v in views.iter_mut() {
        v.action = if strategy == Strategy::Replace && v.host.replaces.is_some() {
            // A new node already serving the target has been deployed before.
            if v.serves(target) {
                HostAction::AlreadyAtTarget
            } else {
                HostAction::Deploy
            }
        } else if replaced.contains(v.name()) {
            HostAction::Decommission
        } else if v.serves(target) {
            // The goal: the node serves the target. A binary that points at the target is not
            // enough (a run may have crashed between the switch and the start).
            HostAction::AlreadyAtTarget
        } else {
            HostAction::Upgrade
        };
    }
}

fn host_blockers(views: &[View], strategy: Strategy, target: &Version, found: &mut Findings) {
    for v in views {
        let name = v.name();
        let Some(facts) = v.facts else {
            found.block(
                BlockerKind::NoFacts,
                &[name],
                format!("no facts were gathered for `{name}`"),
                None,
            );
            continue;
        };
        if let Some(why) = &facts.unreachable {
            found.block(
                BlockerKind::Unreachable,
                &[name],
                format!("`{name}` is unreachable: {why}"),
                Some(format!(
                    "check its address and SSH settings with `fleetup status --limit {name}`, or leave it out with `--limit '!{name}'`"
                )),
            );
            continue;
        }
        if !matches!(v.action, HostAction::Upgrade | HostAction::Decommission) {
            continue;
        }
        let (Some(current), Some(verdict)) = (&v.current, &v.verdict) else {
            let hint = match &v.host.replaces {
                Some(old) if strategy != Strategy::Replace => format!(
                    "`{name}` is a new node (`replaces = \"{old}\"`), nothing to upgrade in place: use `--strategy replace` where the table allows it, or leave it out with `--limit '!{name}'`"
                ),
                _ => format!(
                    "check `ledger.binary` (`{}`) in the inventory and that `numary version` runs there",
                    v.host.ledger.binary
                ),
            };
            found.block(
                BlockerKind::UnknownVersion,
                &[name],
                format!("the installed `numary` version of `{name}` is unknown"),
                Some(hint),
            );
            continue;
        };
        if verdict.supported {
            continue;
        }
        if verdict.kind == VerdictKind::Downgrade {
            found.block(
                BlockerKind::Downgrade,
                &[name],
                format!("`{name}` runs `{current}`, newer than the target `{target}`: {}", verdict.reason),
                Some(format!("pick a target of at least `{current}`, or leave `{name}` out with `--limit '!{name}'`")),
            );
            continue;
        }
        let mut reason = format!(
            "`{name}`: `{current}` → `{target}` is not supported: {}",
            verdict.reason
        );
        let hint = if verdict.hops.is_empty() {
            None
        } else {
            let route = format!("{current} → {}", verdict.hops.join(" → "));
            reason.push_str(&format!(" (supported route: {route})"));
            Some(format!(
                "one run carries out the route {route} once each hop has a binary (`--binary VERSION=FILE`, repeatable, or `[releases.\"VERSION\"]` in the inventory); or upgrade one hop per run"
            ))
        };
        found.block(BlockerKind::UnsupportedPath, &[name], reason, hint);
    }
}

/// A zero-downtime strategy must be allowed by the table for every node it upgrades or retires
/// (the old nodes of a replacement serve the migrated schema until they are decommissioned); one
/// blocker per deciding row, naming its hosts.
fn strategy_blockers(views: &[View], strategy: Strategy, found: &mut Findings) {
    if !strategy.is_zero_downtime() {
        return;
    }
    let mut by_row: BTreeMap<Option<usize>, (Option<PathRow>, Vec<&View>)> = BTreeMap::new();
    for v in views {
        if !matches!(v.action, HostAction::Upgrade | HostAction::Decommission) {
            continue;
        }
        if let Some(verdict) = &v.verdict
            && verdict.supported
            && !verdict.zero_downtime
        {
            let entry = by_row
                .entry(verdict.row.as_ref().map(|r| r.index))
                .or_insert_with(|| (verdict.row.clone(), Vec::new()));
            entry.1.push(v);
        }
    }
    for (row, group) in by_row.values() {
        let row_text = match row {
            Some(r) => format!(
                "table row {} (target `{}`, from `{}`, zero-downtime: no)",
                r.index, r.target, r.min_current
            ),
            None => "the table".to_string(),
        };
        let names: Vec<&str> = group.iter().map(|v| v.name()).collect();
        let paths: Vec<String> = group
            .iter()
            .map(|v| {
                let current = v
                    .current
                    .as_ref()
                    .map_or_else(String::new, |c| c.to_string());
                format!("`{}` ({current})", v.name())
            })
            .collect();
        found.block(
            BlockerKind::StrategyNotAllowed,
            &names,
            format!(
                "strategy `{strategy}` needs zero-downtime, but {row_text} decides for {}",
                paths.join(", ")
            ),
            Some(
                "use `--strategy offline` (the guide's procedure, every node stopped) or `--strategy auto`"
                    .to_string(),
            ),
        );
    }
}

/// Zero-downtime keeps old nodes serving while their storage migrates: only a storage shared by
/// several nodes allows it. SQLite nodes are single-node deployments (each must stop while its
/// files migrate), and one run migrates one shared storage while the others serve.
fn zero_downtime_storage_blockers(
    views: &[View],
    groups: &[storage::Group],
    strategy: Strategy,
    found: &mut Findings,
) {
    let sqlite: Vec<&str> = views
        .iter()
        .filter(|v| v.touched() && v.driver() == Some(StorageDriver::Sqlite))
        .map(|v| v.name())
        .collect();
    if !sqlite.is_empty() {
        found.block(
            BlockerKind::ZeroDowntimeNeedsSharedStorage,
            &sqlite,
            format!(
                "strategy `{strategy}` keeps nodes serving while their storage migrates, but {} on SQLite: a SQLite node is a single-node deployment and must stop while its files migrate",
                names_list(&sqlite)
            ),
            Some("use `--strategy offline` (or `auto`) for SQLite nodes".to_string()),
        );
    }
    let shared: Vec<&storage::Group> = groups
        .iter()
        .filter(|g| g.driver() == Some(StorageDriver::Postgres))
        .collect();
    if shared.len() > 1 {
        let hosts: Vec<&str> = shared
            .iter()
            .flat_map(|g| g.views.iter().map(|v| v.name()))
            .collect();
        found.block(
            BlockerKind::ZeroDowntimeNeedsSharedStorage,
            &hosts,
            format!(
                "strategy `{strategy}` migrates one shared storage while its other nodes serve, but the selection is on {} storages",
                shared.len()
            ),
            Some("upgrade one storage's nodes per run (`--limit`), or name the storage the nodes share with `storage = \"NAME\"` in the inventory".to_string()),
        );
    }
}

fn names_list(names: &[&str]) -> String {
    let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    match quoted.len() {
        1 => format!("{} is", quoted[0]),
        _ => format!("{} are", quoted.join(", ")),
    }
}

fn replace_blockers(views: &[View], found: &mut Findings) {
    let selected: BTreeSet<&str> = views.iter().map(|v| v.name()).collect();
    if views.iter().all(|v| v.host.replaces.is_none()) {
        found.block(
            BlockerKind::NoReplacePairs,
            &[],
            "strategy `replace` needs new nodes, but no selected host has `replaces = \"old-host\"`".to_string(),
            Some("add `replaces` to the new nodes' `[[host]]` entries, or use `--strategy rolling` or `offline`".to_string()),
        );
    }
    for v in views {
        let name = v.name();
        match &v.host.replaces {
            Some(old) if !selected.contains(old.as_str()) => found.block(
                BlockerKind::ReplacedHostMissing,
                &[name],
                format!("`{name}` replaces `{old}`, which is not selected"),
                Some(format!("select both: `--limit {name},{old}`")),
            ),
            Some(old) => {
                // The new node takes over the old one's storage: its environment must reach the
                // database the old node serves from (the one the plan migrates).
                let Some(old_view) = views.iter().find(|o| o.name() == old) else {
                    continue;
                };
                let (mine, theirs) = (
                    StorageId::of(v.host, v.facts),
                    StorageId::of(old_view.host, old_view.facts),
                );
                if let (Some(mine), Some(theirs)) = (mine, theirs)
                    && mine != theirs
                {
                    found.block(
                        BlockerKind::ReplacementOnOtherStorage,
                        &[name, old],
                        format!("`{name}` replaces `{old}` but is on {mine}, while `{old}` is on {theirs}"),
                        Some(format!("point `{name}`'s environment file (`ledger.env_file`) at the database `{old}` uses, or give both the same `storage = \"NAME\"` if they reach it differently")),
                    );
                }
            }
            // An old node without a replacement follows rolling, in batches of its own after the
            // new nodes' (`steps::replace`); the table's zero-downtime row is checked for it as
            // for the retired ones (`strategy_blockers`).
            None => {}
        }
    }
}

/// Offline: every node to upgrade must be stopped; replace: every new node. Returns the nodes
/// to stop first (`--stop`). Rolling stops nodes itself, batch by batch.
fn stop_state<'v, 'a>(
    views: &'v [View<'a>],
    strategy: Strategy,
    stop_running: bool,
    found: &mut Findings,
) -> Vec<&'v View<'a>> {
    let must_be_stopped = |v: &View| match strategy {
        Strategy::Offline | Strategy::Auto => v.action == HostAction::Upgrade,
        Strategy::Replace => v.action == HostAction::Deploy,
        Strategy::Rolling => false,
    };
    let mut to_stop = Vec::new();
    for v in views.iter().filter(|v| must_be_stopped(v)) {
        let Some(facts) = v.reachable_facts() else {
            continue;
        };
        let name = v.name();
        let stop_hint = Some(
            "stop it cleanly first, or pass `--stop` to have fleetup stop running nodes and wait"
                .to_string(),
        );
        match facts.service {
            ServiceState::Running if stop_running => to_stop.push(v),
            ServiceState::Running => found.block(
                BlockerKind::Running,
                &[name],
                format!("`{name}` is running: the offline procedure needs every node to upgrade cleanly stopped"),
                stop_hint,
            ),
            ServiceState::Unknown if stop_running => to_stop.push(v),
            ServiceState::Unknown => found.block(
                BlockerKind::ServiceStateUnknown,
                &[name],
                format!("could not tell whether the service on `{name}` is stopped"),
                stop_hint,
            ),
            ServiceState::Stopped => {
                if let Some(api) = &facts.api {
                    let version = api
                        .version
                        .as_ref()
                        .map_or_else(String::new, |x| format!(" (version `{x}`)"));
                    found.block(
                        BlockerKind::RunningOutsideServiceManager,
                        &[name],
                        format!(
                            "`{name}`: the service manager says stopped but the API at `{}` answers{version}: a `numary` runs outside the service manager",
                            v.host.ledger.api
                        ),
                        Some("find and stop that process (`pgrep -a numary`); fleetup stops nodes only through the service manager".to_string()),
                    );
                }
            }
        }
    }
    // A journal next to a running SQLite database is normal; next to a stopped one it is the
    // trace of an unclean stop.
    for v in views.iter().filter(|v| v.starts()) {
        let Some(facts) = v.reachable_facts() else {
            continue;
        };
        if facts.hot_journals.is_empty() || facts.service == ServiceState::Running {
            continue;
        }
        let name = v.name();
        let files: Vec<String> = facts
            .hot_journals
            .iter()
            .map(|f| format!("`{f}`"))
            .collect();
        found.block(
            BlockerKind::HotJournal,
            &[name],
            format!("`{name}` has a hot SQLite journal ({}): its last stop was not clean", files.join(", ")),
            Some("start the ledger once with its current binary and stop it cleanly (SQLite rolls the journal back when it opens the database), then check again; never delete a hot journal, it holds what must be rolled back".to_string()),
        );
    }
    to_stop
}

fn warnings(
    views: &[View],
    strategy: Strategy,
    mode: Mode,
    target: &Version,
    opts: &PlanOptions,
    driver: Option<StorageDriver>,
    found: &mut Findings,
) {
    // New nodes of a replacement do not run the fleet: their versions are not "mixed in".
    let mut by_version: BTreeMap<&Version, Vec<&str>> = BTreeMap::new();
    for v in views.iter().filter(|v| v.action != HostAction::Deploy) {
        if let Some(c) = &v.current {
            by_version.entry(c).or_default().push(v.name());
        }
    }
    if by_version.len() > 1 {
        let parts: Vec<String> = by_version
            .iter()
            .map(|(version, names)| {
                let names: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                format!("`{version}` on {}", names.join(", "))
            })
            .collect();
        found.warn(format!(
            "the selection runs mixed versions: {}",
            parts.join("; ")
        ));
    }
    for v in views.iter().filter(|v| v.touched()) {
        let Some(verdict) = &v.verdict else { continue };
        for advisory in &verdict.advisories {
            // Refusals are already the reason of an unsupported-path blocker.
            if !advisory.starts_with("refused:") {
                found.warn(advisory.clone());
            }
        }
    }
    for v in views {
        let Some(facts) = v.reachable_facts() else {
            continue;
        };
        let name = v.name();
        if let (Some(installed), Some(api_version)) = (
            &v.current,
            facts.api.as_ref().and_then(|a| a.version.as_ref()),
        ) && installed != api_version
            && facts.service == ServiceState::Running
        {
            found.warn(format!(
                "`{name}` serves `{api_version}` (per `/_info`) but its binary is `{installed}`: it has not been restarted since its binary changed"
            ));
        }
        if v.action == HostAction::AlreadyAtTarget
            && strategy == Strategy::Offline
            && driver != Some(StorageDriver::Sqlite)
            && facts.service == ServiceState::Running
            && views.iter().any(|o| o.action == HostAction::Upgrade)
        {
            found.warn(format!(
                "`{name}` already runs `{target}` and stays up: it migrates ledgers lazily when they are used, concurrently with `storage upgrade`; stop it first to follow the guide strictly"
            ));
        }
    }
    for v in views.iter().filter(|v| v.touched()) {
        for problem in v.reachable_facts().map_or(&[][..], |f| &f.problems) {
            found.warn(format!("`{}`: {problem}", v.name()));
        }
    }
    for v in views
        .iter()
        .filter(|v| v.starts() && v.host.ledger.env_file.is_none())
    {
        found.warn(format!(
            "`{}` has no `ledger.env_file`: storage commands run with the SSH user's environment, which may point at another storage than the service's",
            v.name()
        ));
    }
    if !opts.backup && views.iter().any(|v| v.touched()) {
        found.warn(
            "no backup (`--no-backup`): migrations cannot be undone, only a backup taken elsewhere can restore the ledgers".to_string(),
        );
    }
    if strategy == Strategy::Rolling && mode == Mode::SingleNode {
        found.warn(
            "strategy `rolling` on a single node still stops it: expect downtime while it restarts"
                .to_string(),
        );
    }
}

/// The node that starts first: among the storages' migrators (`migrating`), the one marked
/// `migrator = true`, else the first (inventory order); without any, the first starter (so
/// that a blocked plan still shows its steps). A node marked `migrator = true` that migrates
/// nothing gets a warning.
fn choose_migrator<'v, 'a>(
    views: &'v [View<'a>],
    migrating: &[&'v View<'a>],
    starters: &[&'v View<'a>],
    found: &mut Findings,
) -> Option<&'v View<'a>> {
    let chosen = migrating
        .iter()
        .find(|v| v.host.migrator && v.reachable())
        .or_else(|| migrating.iter().find(|v| v.reachable()))
        .or_else(|| migrating.first())
        .or_else(|| starters.first())
        .copied();
    for flagged in views.iter().filter(|v| v.host.migrator) {
        if migrating.iter().any(|m| m.name() == flagged.name()) {
            continue;
        }
        let Some(instead) = chosen else { continue };
        let why = if !flagged.reachable() {
            "it is unreachable"
        } else if flagged.starts() {
            // Replace: the new nodes migrate the storage before any of them starts.
            "a new node migrates the storage before any new node starts"
        } else {
            "the plan does not start it"
        };
        found.warn(format!(
            "`{}` is marked `migrator = true` but {why}: migrating on `{}` instead",
            flagged.name(),
            instead.name()
        ));
    }
    chosen
}

/// The canary batch first: the migrator, then `canary - 1` more starters (a bad binary or
/// environment stops the run with few nodes affected); then the other starters in inventory
/// order, `serial` at a time (a share of every starter for `N%`). Replace: the new nodes so
/// first ([`replace_batches`]), then the old nodes without a replacement.
fn start_batches<'v, 'a>(
    starters: &[&'v View<'a>],
    migrator: Option<&'v View<'a>>,
    strategy: Strategy,
    opts: &PlanOptions,
) -> Vec<Vec<&'v View<'a>>> {
    let Some(migrator) = migrator else {
        return Vec::new();
    };
    if strategy == Strategy::Replace && migrator.action == HostAction::Deploy {
        return replace_batches(starters, migrator, opts);
    }
    let one_by_one = strategy.is_zero_downtime();
    canary_then_serial(starters, migrator, one_by_one, opts)
}

/// `group`'s batches: the migrator with `canary - 1` more, then `serial` at a time (default:
/// one at a time with `one_by_one`, else all the others at once).
fn canary_then_serial<'v, 'a>(
    group: &[&'v View<'a>],
    migrator: &'v View<'a>,
    one_by_one: bool,
    opts: &PlanOptions,
) -> Vec<Vec<&'v View<'a>>> {
    let rest: Vec<&View> = group
        .iter()
        .filter(|v| v.name() != migrator.name())
        .copied()
        .collect();
    let canary = (opts.canary.get() - 1).min(rest.len());
    let (with_migrator, rest) = rest.split_at(canary);
    let size = match (opts.serial, one_by_one) {
        (Some(n), _) => n.of(group.len()),
        (None, true) => 1,
        (None, false) => rest.len().max(1),
    };
    let mut first = vec![migrator];
    first.extend_from_slice(with_migrator);
    let mut batches = vec![first];
    batches.extend(rest.chunks(size).map(<[_]>::to_vec));
    batches
}

/// Replace: the new nodes in batches (canary first, then `serial` at a time, default all the
/// others at once: each comes up beside the old node it replaces, so no capacity is lost),
/// then the old nodes without a replacement in rolling batches (`serial`, default one), each
/// at most as large as the last batch of new nodes: they move while that batch's old nodes
/// still serve (`steps::replace` decommissions those last), so the fleet never serves with
/// fewer nodes than it started with.
fn replace_batches<'v, 'a>(
    starters: &[&'v View<'a>],
    migrator: &'v View<'a>,
    opts: &PlanOptions,
) -> Vec<Vec<&'v View<'a>>> {
    let (new, unpaired): (Vec<&View>, Vec<&View>) = starters
        .iter()
        .copied()
        .partition(|v| v.action == HostAction::Deploy);
    let mut batches = canary_then_serial(&new, migrator, false, opts);
    let last = batches.last().map_or(1, Vec::len);
    let size = opts.serial.map_or(1, |n| n.of(unpaired.len())).min(last);
    batches.extend(unpaired.chunks(size.max(1)).map(<[_]>::to_vec));
    batches
}
