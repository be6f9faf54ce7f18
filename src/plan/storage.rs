//! The selection grouped by storage ([`StorageId`]): each storage is backed up and migrated
//! once, by one of its nodes. The checks that need the grouping: storage known, drivers not
//! mixed, names that contradict the connections, and nodes left out of the selection on a
//! storage the plan migrates.

use std::collections::{BTreeMap, HashMap};

use super::build::{Findings, View};
use super::{BlockerKind, HostAction, LeftOut, PlanStorage};
use crate::facts::{HostFacts, StorageDriver, StorageId};

/// One storage of the selection: the touched nodes on it, inventory order. A node whose storage
/// is unknown is a group of its own (`id: None`), so that every node belongs to one.
pub(super) struct Group<'v, 'a> {
    pub id: Option<StorageId>,
    pub views: Vec<&'v View<'a>>,
    /// The node that backs the storage up and migrates it: one the plan starts.
    pub migrator: Option<&'v View<'a>>,
}

impl Group<'_, '_> {
    /// The storage's driver when its nodes agree.
    pub fn driver(&self) -> Option<StorageDriver> {
        let mut drivers = self.views.iter().filter_map(|v| v.driver());
        let first = drivers.next()?;
        drivers.all(|d| d == first).then_some(first)
    }

    pub fn to_plan(&self) -> PlanStorage {
        PlanStorage {
            id: self.id.clone(),
            driver: self.driver(),
            hosts: self.views.iter().map(|v| v.name().to_string()).collect(),
            migrator: self.migrator.map(|m| m.name().to_string()),
        }
    }
}

/// The touched nodes grouped by storage, groups in the inventory order of their first node.
/// Each group's migrator: its `migrator = true` node the plan starts and can reach, else its
/// first reachable starter, else its first starter; among the new nodes of a replacement when
/// there are any (they migrate before any of them starts, while the old nodes serve: an old node
/// without a replacement moves only after them).
pub(super) fn group<'v, 'a>(views: &'v [View<'a>]) -> Vec<Group<'v, 'a>> {
    let mut groups: Vec<Group> = Vec::new();
    // Each known storage's group, found in one look-up (SQLite nodes: one storage each).
    let mut at: HashMap<StorageId, usize> = HashMap::new();
    for v in views.iter().filter(|v| v.touched()) {
        let id = StorageId::of(v.host, v.facts);
        match id.as_ref().and_then(|id| at.get(id)) {
            Some(&i) => groups[i].views.push(v),
            None => {
                if let Some(id) = &id {
                    at.insert(id.clone(), groups.len());
                }
                groups.push(Group {
                    id,
                    views: vec![v],
                    migrator: None,
                });
            }
        }
    }
    for g in &mut groups {
        let mut starters: Vec<&View> = g.views.iter().copied().filter(|v| v.starts()).collect();
        if starters.iter().any(|v| v.action == HostAction::Deploy) {
            starters.retain(|v| v.action == HostAction::Deploy);
        }
        g.migrator = starters
            .iter()
            .find(|v| v.host.migrator && v.reachable())
            .or_else(|| starters.iter().find(|v| v.reachable()))
            .or_else(|| starters.first())
            .copied();
    }
    groups
}

fn quoted(names: &[&str]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Storage must be known; SQLite and Postgres are not mixed in one selection (each storage's
/// backup and migration are laid out for one driver; select each driver's nodes separately);
/// several Postgres storages are fine, each migrated by its own migrator. Returns the fleet's
/// driver when every known driver agrees.
pub(super) fn checks(
    views: &[View],
    groups: &[Group],
    replace: bool,
    backup: bool,
    found: &mut Findings,
) -> Option<StorageDriver> {
    let mut sqlite: Vec<&str> = Vec::new();
    let mut postgres: Vec<&str> = Vec::new();
    for v in views.iter().filter(|v| v.touched() && v.reachable()) {
        let name = v.name();
        let storage = v.reachable_facts().and_then(|f| f.storage.as_ref());
        match storage {
            None if v.starts() => found.block(
                BlockerKind::StorageUnknown,
                &[name],
                format!("the storage driver of `{name}` is unknown"),
                Some("set `ledger.env_file` to the environment file the service reads (`NUMARY_STORAGE_DRIVER`, `NUMARY_STORAGE_DIR`, ...)".to_string()),
            ),
            None => {}
            Some(s) => match s.driver {
                StorageDriver::Sqlite => {
                    sqlite.push(name);
                    if s.sqlite_dir.is_none() && backup && v.starts() {
                        found.block(
                            BlockerKind::StorageUnknown,
                            &[name],
                            format!("the SQLite storage dir of `{name}` is unknown: it cannot be backed up"),
                            Some("set `NUMARY_STORAGE_DIR` in the service's environment file (`ledger.env_file`)".to_string()),
                        );
                    }
                }
                StorageDriver::Postgres => {
                    postgres.push(name);
                    if StorageId::of(v.host, v.facts).is_none() && v.starts() {
                        found.block(
                            BlockerKind::StorageUnknown,
                            &[name],
                            format!("the Postgres database of `{name}` is unknown: the connection string in its environment was not understood"),
                            Some("check `NUMARY_STORAGE_POSTGRES_CONN_STRING` in the service's environment file (`ledger.env_file`), or name the node's storage in the inventory (`storage = \"NAME\"`)".to_string()),
                        );
                    }
                }
            },
        }
    }
    let separate_hint = Some(
        "upgrade each storage driver separately, selecting its nodes with `--limit`".to_string(),
    );
    if !sqlite.is_empty() && !postgres.is_empty() {
        let mut all = sqlite.clone();
        all.extend(&postgres);
        found.block(
            BlockerKind::MixedStorage,
            &all,
            format!(
                "the selection mixes storage drivers: sqlite on {}; postgres on {}",
                quoted(&sqlite),
                quoted(&postgres)
            ),
            separate_hint,
        );
    } else {
        // A storage named in the inventory whose nodes use both drivers.
        for g in groups {
            let Some(id @ StorageId::Named { .. }) = &g.id else {
                continue;
            };
            if g.driver().is_none() && g.views.iter().filter_map(|v| v.driver()).count() > 1 {
                let names: Vec<&str> = g.views.iter().map(|v| v.name()).collect();
                found.block(
                    BlockerKind::MixedStorage,
                    &names,
                    format!("{id} is named by nodes with different storage drivers ({})", quoted(&names)),
                    Some("nodes naming one `storage` must use one database: fix `storage` in the inventory or the nodes' environment files".to_string()),
                );
            }
        }
    }
    if replace && !sqlite.is_empty() {
        found.block(
            BlockerKind::ReplaceNeedsPostgres,
            &sqlite,
            format!(
                "strategy `replace` needs shared Postgres storage, but {} use SQLite (a new node cannot take over an old node's files)",
                quoted(&sqlite)
            ),
            Some("use `--strategy rolling` or `offline`".to_string()),
        );
    }
    match (sqlite.is_empty(), postgres.is_empty()) {
        (false, true) => Some(StorageDriver::Sqlite),
        (true, false) => Some(StorageDriver::Postgres),
        _ => None,
    }
}

/// Nodes reaching the same Postgres server and database must be one storage: a `storage` name
/// on some and not the others (or two names) would back up and migrate it twice, and hide a
/// left-out node on it.
pub(super) fn name_conflicts(views: &[View], left_out: &LeftOut, found: &mut Findings) {
    /// A node reaching an endpoint: its name, its storage, whether the plan touches it.
    type Reaching<'n> = (&'n str, Option<StorageId>, bool);
    let mut by_endpoint: BTreeMap<StorageId, Vec<Reaching>> = BTreeMap::new();
    let selected = views.iter().map(|v| (v.host, v.facts, v.touched())).chain(
        left_out
            .hosts
            .iter()
            .map(|h| (h, left_out.facts.get(&h.name), false)),
    );
    for (host, facts, touched) in selected {
        if let Some(endpoint) = StorageId::network_endpoint(facts) {
            by_endpoint.entry(endpoint).or_default().push((
                host.name.as_str(),
                StorageId::of(host, facts),
                touched,
            ));
        }
    }
    for (endpoint, nodes) in by_endpoint {
        let first = &nodes[0].1;
        if nodes.iter().all(|(_, id, _)| id == first) || !nodes.iter().any(|(_, _, t)| *t) {
            continue;
        }
        let names: Vec<&str> = nodes.iter().map(|(n, _, _)| *n).collect();
        let parts: Vec<String> = nodes
            .iter()
            .map(|(n, id, _)| match id {
                Some(StorageId::Named { name }) => format!("`{n}` names storage `{name}`"),
                _ => format!("`{n}` names none"),
            })
            .collect();
        found.block(
            BlockerKind::StorageConflict,
            &names,
            format!(
                "{} reach the same database ({endpoint}) but name different storages: {}",
                quoted(&names),
                parts.join(", ")
            ),
            Some("give every node of one database the same `storage = \"NAME\"` in the inventory (or none)".to_string()),
        );
    }
}

/// Inventory nodes outside the selection on a storage the plan migrates would next start their
/// old binary on the migrated schema. A left-out node whose storage cannot be told (unreachable,
/// its settings unreadable, no `storage` name) counts as one when the plan migrates a storage
/// other nodes may share.
pub(super) fn left_out_blockers(
    views: &[View],
    groups: &[Group],
    left_out: &LeftOut,
    found: &mut Findings,
) {
    let migrated: Vec<&StorageId> = groups
        .iter()
        .filter(|g| g.migrator.is_some())
        .filter_map(|g| g.id.as_ref())
        .collect();
    if migrated.is_empty() {
        return;
    }
    let shareable: Vec<&&StorageId> = migrated
        .iter()
        .filter(|id| id.own_node().is_none())
        .collect();
    let selected: Vec<&str> = views.iter().map(|v| v.name()).collect();
    let mut on: BTreeMap<&StorageId, Vec<&str>> = BTreeMap::new();
    let mut unknown: Vec<(&str, String)> = Vec::new();
    for host in &left_out.hosts {
        let facts = left_out.facts.get(&host.name);
        match StorageId::of(host, facts) {
            Some(id) => {
                if let Some(m) = migrated.iter().find(|m| ***m == id) {
                    on.entry(*m).or_default().push(host.name.as_str());
                }
            }
            None if !shareable.is_empty() => {
                let why = match facts {
                    None => "no facts were gathered".to_string(),
                    Some(HostFacts {
                        unreachable: Some(why),
                        ..
                    }) => format!("it is unreachable: {why}"),
                    Some(_) => "its storage settings could not be read".to_string(),
                };
                unknown.push((host.name.as_str(), why));
            }
            None => {}
        }
    }
    let limit = |extra: &[&str]| {
        let mut all = selected.clone();
        all.extend(extra);
        format!("`--limit {}`", all.join(","))
    };
    for (id, names) in on {
        let versions: Vec<String> = names
            .iter()
            .map(|n| {
                let version = left_out
                    .facts
                    .get(*n)
                    .and_then(|f| f.installed_version.as_ref())
                    .map_or_else(String::new, |v| format!(" (runs `{v}`)"));
                format!("`{n}`{version}")
            })
            .collect();
        found.block(
            BlockerKind::LeftOut,
            &names,
            format!(
                "{} {} on {id}, which this upgrade migrates, but left out of the selection: it would next start its old binary on the migrated schema",
                versions.join(", "),
                if names.len() == 1 { "is" } else { "are" },
            ),
            Some(format!(
                "select every node of the storage ({}), or remove retired nodes from the inventory",
                limit(&names)
            )),
        );
    }
    if !unknown.is_empty() {
        let names: Vec<&str> = unknown.iter().map(|(n, _)| *n).collect();
        let reasons: Vec<String> = unknown
            .iter()
            .map(|(n, why)| format!("`{n}`: {why}"))
            .collect();
        let ids: Vec<String> = shareable.iter().map(|id| id.to_string()).collect();
        found.block(
            BlockerKind::LeftOut,
            &names,
            format!(
                "cannot tell the storage of {}, left out of the selection ({}): it may be on {}, which this upgrade migrates",
                quoted(&names),
                reasons.join("; "),
                ids.join(", ")
            ),
            Some(format!(
                "make it reachable, or name its storage in the inventory (`storage = \"NAME\"`), or select it ({}); remove retired nodes from the inventory",
                limit(&names)
            )),
        );
    }
}
