//! Laying out the steps of each strategy, with what each checks and the remote command lines
//! it runs. Every interpolated value goes through [`crate::shell::quote`]; connection strings
//! never appear: storage commands source the service's environment file.

use super::HookPhase;
use super::build::View;
use super::hooks::hook;
use super::{
    Action, BackupParams, BinarySource, ConfirmParams, GateParams, HostAction, HostCommands,
    LockParams, MigrateParams, PlanOptions, RUN_ID_TOKEN, ServiceParams, StageParams, Step,
    StepKind, Strategy, SwitchParams, commands,
};
use crate::facts::StorageDriver;
use crate::inventory::Service;
use crate::version::Version;

/// Everything the builder decided, for laying out the steps.
pub(super) struct Layout<'v, 'a> {
    pub target: &'v Version,
    pub strategy: Strategy,
    pub opts: &'v PlanOptions,
    /// Every host the plan changes, inventory order.
    pub touched: Vec<&'v View<'a>>,
    /// Hosts started on the target (upgraded or deployed), inventory order.
    pub starters: Vec<&'v View<'a>>,
    /// Old nodes of the replace strategy.
    pub retiring: Vec<&'v View<'a>>,
    /// Nodes to stop first (`--stop`).
    pub to_stop: Vec<&'v View<'a>>,
    /// One node per storage that backs it up and migrates it (SQLite: every node, each its
    /// own files), inventory order.
    pub migrating: Vec<&'v View<'a>>,
    pub batches: Vec<Vec<&'v View<'a>>>,
    /// Postgres databases, each shared by its nodes (as opposed to SQLite files per node).
    pub shared_storage: bool,
}

pub(super) fn lay_out(l: &Layout) -> Vec<Step> {
    if l.touched.is_empty() {
        return Vec::new();
    }
    let mut steps = vec![preflight(l), lock(l)];
    match l.strategy {
        Strategy::Rolling => rolling(l, &mut steps),
        Strategy::Replace => replace(l, &mut steps),
        Strategy::Offline | Strategy::Auto => offline(l, &mut steps),
    }
    steps.push(unlock(l));
    for (i, step) in steps.iter_mut().enumerate() {
        step.number = i + 1;
        step.id = match step.batch {
            Some(b) => format!("{}-{b}", step.kind),
            None => step.kind.to_string(),
        };
    }
    steps
}

/// The guide's multi-node (and single-node) procedure.
fn offline(l: &Layout, steps: &mut Vec<Step>) {
    steps.extend(hook(l, &l.starters, None, HookPhase::Pre));
    if !l.to_stop.is_empty() {
        steps.push(stop(
            &l.to_stop,
            None,
            "`--stop`: the guide requires every instance cleanly shut down before migrating; numary has no lock, a running node would migrate ledgers lazily, concurrently with `storage upgrade`",
        ));
    }
    // What an earlier run already did is not done again: a storage holding every migration of
    // the target is neither backed up nor migrated, a binary already switched is not restaged.
    let migrating: Vec<&View> = l
        .migrating
        .iter()
        .copied()
        .filter(|v| !v.storage_migrated(l.target))
        .collect();
    let unswitched: Vec<&View> = l
        .starters
        .iter()
        .copied()
        .filter(|v| !v.switched(l.target))
        .collect();
    steps.push(confirm_stopped(&l.starters, &migrating));
    if l.opts.backup && !migrating.is_empty() {
        steps.push(backup(l, &migrating, None));
    }
    if !unswitched.is_empty() {
        steps.push(stage(l, &unswitched));
    }
    if !migrating.is_empty() {
        steps.push(migrate(l, &migrating, None));
    }
    if !unswitched.is_empty() {
        steps.push(switch(l, &unswitched, None));
    }
    start_batches(l, steps);
}

/// Zero-downtime in place, on one shared Postgres storage (the builder blocks anything else):
/// the dump (online) and the staging everywhere first, while every node serves; then batch by
/// batch stop, switch, start, gate, the others serving meanwhile. The canary batch migrates the
/// storage once, with the new binary, between its stop and its switch: before any node runs the
/// target, so no client request waits for a lazy migration, and while the old nodes serve (the
/// table's zero-downtime row is the promise that they may serve the migrated schema).
fn rolling(l: &Layout, steps: &mut Vec<Step>) {
    let migrating: Vec<&View> = l
        .migrating
        .iter()
        .copied()
        .filter(|v| !v.storage_migrated(l.target))
        .collect();
    if l.opts.backup && !migrating.is_empty() {
        steps.push(backup(l, &migrating, None));
    }
    let to_stage = unswitched(l, &l.starters);
    if !to_stage.is_empty() {
        steps.push(stage(l, &to_stage));
    }
    for (i, batch) in l.batches.iter().enumerate() {
        let n = Some(i + 1);
        steps.extend(hook(l, batch, n, HookPhase::Pre));
        steps.push(stop(
            batch,
            n,
            "rolling: this batch leaves service while the other nodes keep serving",
        ));
        if i == 0 && !migrating.is_empty() {
            steps.push(migrate(l, &migrating, n));
        }
        let to_switch = unswitched(l, batch);
        if !to_switch.is_empty() {
            steps.push(switch(l, &to_switch, n));
        }
        steps.push(start(l, batch, i));
        steps.push(gate(l, batch, n));
        steps.extend(hook(l, batch, n, HookPhase::Post));
    }
}

/// The hosts of `hosts` whose binary does not point at the target's release yet.
fn unswitched<'v, 'a>(l: &Layout, hosts: &[&'v View<'a>]) -> Vec<&'v View<'a>> {
    hosts
        .iter()
        .copied()
        .filter(|v| !v.switched(l.target))
        .collect()
}

/// Zero-downtime by replacement, on one shared Postgres storage (the builder blocks anything
/// else): the dump (online) while the old nodes serve; the new release staged on the new nodes
/// (and on the old nodes without a replacement); the storage migrated once, on a new node,
/// before any new node starts; the new nodes' binaries switched (they do not serve yet); then
/// batch by batch each new node started and health-gated beside the old node it replaces, and
/// those old nodes decommissioned once their replacements passed: the fleet never serves with
/// fewer nodes than it started with, and a new node that fails leaves its old node serving.
/// The old nodes without a replacement follow rolling in batches of their own, while the last
/// batch's old nodes still serve (they are decommissioned last).
fn replace(l: &Layout, steps: &mut Vec<Step>) {
    let migrating: Vec<&View> = l
        .migrating
        .iter()
        .copied()
        .filter(|v| !v.storage_migrated(l.target))
        .collect();
    if l.opts.backup && !migrating.is_empty() {
        steps.push(backup(l, &migrating, None));
    }
    if !l.to_stop.is_empty() {
        steps.push(stop(
            &l.to_stop,
            None,
            "`--stop`: a new node must be stopped before it is switched, or it would keep running what it runs now",
        ));
    }
    let to_stage = unswitched(l, &l.starters);
    if !to_stage.is_empty() {
        steps.push(stage(l, &to_stage));
    }
    let is_new = |v: &&View| v.action == HostAction::Deploy;
    // The migrator is a new node whenever there is one to start (`storage::group`); otherwise
    // the old nodes without a replacement move as in rolling, the first batch migrating.
    let new_migrates = migrating.iter().all(is_new);
    if new_migrates && !migrating.is_empty() {
        steps.push(migrate(l, &migrating, None));
    }
    let new_nodes: Vec<&View> = l.starters.iter().copied().filter(is_new).collect();
    let to_switch = unswitched(l, &new_nodes);
    if !to_switch.is_empty() {
        steps.push(switch(l, &to_switch, None));
    }
    let retire = retire_after(l);
    let last_new = l.batches.iter().rposition(|b| b.iter().all(is_new));
    for (i, batch) in l.batches.iter().enumerate() {
        let n = Some(i + 1);
        // The operator's hooks wrap each batch: a new node's pre hook right before it starts,
        // an old node's (no replacement) before it stops; the post hook once healthy.
        steps.extend(hook(l, batch, n, HookPhase::Pre));
        if batch.iter().all(is_new) {
            steps.push(start(l, batch, i));
            steps.push(gate(l, batch, n));
            steps.extend(hook(l, batch, n, HookPhase::Post));
            if Some(i) != last_new && !retire[i].is_empty() {
                steps.push(decommission(&retire[i], batch, n));
            }
            continue;
        }
        steps.push(stop(
            batch,
            n,
            "no new node replaces these: they follow rolling, this batch leaving service while the others serve",
        ));
        if i == 0 && !new_migrates && !migrating.is_empty() {
            steps.push(migrate(l, &migrating, n));
        }
        let to_switch = unswitched(l, batch);
        if !to_switch.is_empty() {
            steps.push(switch(l, &to_switch, n));
        }
        steps.push(start(l, batch, i));
        steps.push(gate(l, batch, n));
        steps.extend(hook(l, batch, n, HookPhase::Post));
    }
    match last_new {
        Some(i) if !retire[i].is_empty() => {
            steps.push(decommission(&retire[i], &l.batches[i], Some(i + 1)));
        }
        Some(_) => {}
        // No new node to start (they all serve the target already): the old ones go last.
        None if !l.retiring.is_empty() => steps.push(decommission(&l.retiring, &[], None)),
        None => {}
    }
}

/// Per batch, the old nodes decommissioned after it: each after the batch of its last
/// replacement; one whose replacements all serve the target already (no batch starts them),
/// after the first batch of new nodes.
fn retire_after<'v, 'a>(l: &Layout<'v, 'a>) -> Vec<Vec<&'v View<'a>>> {
    let mut out: Vec<Vec<&View>> = vec![Vec::new(); l.batches.len()];
    let first_new = l
        .batches
        .iter()
        .position(|b| b.iter().all(|v| v.action == HostAction::Deploy));
    for old in &l.retiring {
        let last = l.batches.iter().rposition(|b| {
            b.iter()
                .any(|v| v.host.replaces.as_deref() == Some(old.name()))
        });
        if let Some(i) = last.or(first_new) {
            out[i].push(old);
        }
    }
    out
}

/// Offline's starts (its pre hooks ran before every node stopped); every batch its post hook
/// once healthy.
fn start_batches(l: &Layout, steps: &mut Vec<Step>) {
    for (i, batch) in l.batches.iter().enumerate() {
        steps.push(start(l, batch, i));
        steps.push(gate(l, batch, Some(i + 1)));
        steps.extend(hook(l, batch, Some(i + 1), HookPhase::Post));
    }
}

fn step(
    kind: StepKind,
    hosts: &[&View],
    batch: Option<usize>,
    action: String,
    why: &str,
    checks: Vec<String>,
    params: impl Fn(&View) -> Action,
) -> Step {
    let commands = hosts
        .iter()
        .map(|v| HostCommands::new(v.name(), params(v)))
        .collect();
    Step {
        id: String::new(),
        number: 0,
        kind,
        hosts: hosts.iter().map(|v| v.name().to_string()).collect(),
        batch,
        hop: None,
        action,
        why: why.to_string(),
        checks,
        commands,
    }
}

pub(super) fn names(hosts: &[&View]) -> String {
    hosts
        .iter()
        .map(|v| format!("`{}`", v.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn preflight(l: &Layout) -> Step {
    let zero = if l.strategy.is_zero_downtime() {
        " with zero downtime"
    } else {
        ""
    };
    let mut checks = vec![
        "each node answers over SSH and its `numary version` is readable".to_string(),
        format!(
            "the upgrade-path table allows each node's current version → `{}`{zero}",
            l.target
        ),
        "free disk for the new binary under the releases dir".to_string(),
    ];
    if l.opts.backup {
        checks.push("free disk for the backup under the backup dir".to_string());
    }
    let postgres = l
        .touched
        .iter()
        .any(|v| v.driver() == Some(StorageDriver::Postgres));
    if postgres && *l.target >= Version::new(1, 8, 0) {
        checks.push("Postgres: the extensions `pgcrypto` and `pg_trgm` exist or the role may create them (1.8.0+ creates `pg_trgm` at every start)".to_string());
    }
    checks.push(format!(
        "the new binary's SHA-256 is `{}`",
        l.opts.binary.sha256()
    ));
    step(
        StepKind::Preflight,
        &l.touched,
        None,
        "check every node, read-only, and report all findings at once before anything changes"
            .to_string(),
        "the guide: verify the upgrade path requirements for each node first; nothing may change while any node would be refused",
        checks,
        |_| Action::Preflight,
    )
}

fn lock(l: &Layout) -> Step {
    step(
        StepKind::Lock,
        &l.touched,
        None,
        "take the fleetup lock on each node (who, from where, run id, pid, start time)".to_string(),
        "two runs against the same fleet would interleave stops, migrations and restarts",
        vec!["no other run holds the lock on any node (a stale lock is broken only with `--break-lock`)".to_string()],
        |v| Action::Lock(LockParams::of(v.host)),
    )
}

fn stop(hosts: &[&View], batch: Option<usize>, why: &str) -> Step {
    let checks = vec!["the service manager reports stopped within the timeout".to_string()];
    step(
        StepKind::StopService,
        hosts,
        batch,
        format!(
            "stop the service on {} and wait until it is stopped",
            names(hosts)
        ),
        why,
        checks,
        |v| Action::StopService(ServiceParams::of(v.host)),
    )
}

fn confirm_stopped(hosts: &[&View], migrating: &[&View]) -> Step {
    let mut checks = vec![
        "the service manager says stopped".to_string(),
        "no `numary` process runs".to_string(),
        "the API does not answer".to_string(),
    ];
    if hosts
        .iter()
        .any(|v| v.driver() == Some(StorageDriver::Sqlite))
    {
        checks.push("SQLite: no hot journal (`*.db-journal`, `*-wal`) in the storage dir; one means the last stop was not clean".to_string());
    }
    step(
        StepKind::ConfirmStopped,
        hosts,
        None,
        "confirm every node to upgrade is cleanly stopped".to_string(),
        "the guide: confirm that all your ledger instances were cleanly shut down; numary has no lock and a running instance races the migration",
        checks,
        |v| {
            Action::ConfirmStopped(ConfirmParams {
                service: v.host.ledger.service.clone(),
                api: v.host.ledger.api.clone(),
                sqlite_dir: v.sqlite_dir().map(str::to_string),
                count_db_sessions: v.driver() == Some(StorageDriver::Postgres)
                    && migrating.iter().any(|m| m.name() == v.name()),
                env_file: v.host.ledger.env_file.clone(),
            })
        },
    )
}

fn backup(l: &Layout, hosts: &[&View], batch: Option<usize>) -> Step {
    let sqlite = !l.shared_storage;
    let (action, why, checks) = if sqlite {
        (
            format!(
                "copy every `numary_*.db` (`numary__system.db` included) of {} to `<backup dir>/{RUN_ID_TOKEN}/` and compare SHA-256",
                names(hosts)
            ),
            "the guide: create a backup of your database (by copying the SQLite files); migrations have no down path, a restore is the only way back",
            vec![
                "the node is stopped, so the files are consistent".to_string(),
                "each copy's SHA-256 equals its original's; location, size and checksum go to the journal".to_string(),
            ],
        )
    } else {
        (
            if hosts.len() > 1 {
                format!(
                    "dump each Postgres database once, from its migrator ({}), with `pg_dump --format=custom` into `<backup dir>/{RUN_ID_TOKEN}/` and verify it",
                    names(hosts)
                )
            } else {
                format!(
                    "dump the Postgres database from {} with `pg_dump --format=custom` into `<backup dir>/{RUN_ID_TOKEN}/` and verify it",
                    names(hosts)
                )
            },
            "the guide: create a backup of your database (pg_dump for Postgres); migrations have no down path, a restore is the only way back",
            vec![
                "the connection string comes from the service's environment file, never a command line".to_string(),
                "`pg_restore --list` reads the dump; location, size and checksum go to the journal".to_string(),
            ],
        )
    };
    step(StepKind::Backup, hosts, batch, action, why, checks, |v| {
        Action::Backup(BackupParams {
            driver: if sqlite {
                StorageDriver::Sqlite
            } else {
                StorageDriver::Postgres
            },
            dir: commands::backup_dir(v.host, RUN_ID_TOKEN),
            env_file: v.host.ledger.env_file.clone(),
        })
    })
}

fn stage(l: &Layout, hosts: &[&View]) -> Step {
    let action = match &l.opts.binary {
        BinarySource::File { path, .. } => format!(
            "upload `{}` to `<releases dir>/{}/numary` on each node and verify it",
            path.display(),
            l.target
        ),
        BinarySource::Url { url, .. } => format!(
            "download `{url}` to `<releases dir>/{}/numary` on each node and verify it",
            l.target
        ),
    };
    let mut checks = vec![
        format!("the SHA-256 is `{}`", l.opts.binary.sha256()),
        format!("`numary version` prints `{}`", l.target),
    ];
    let staged: Vec<&View> = hosts
        .iter()
        .copied()
        .filter(|v| v.staged(l.target))
        .collect();
    if !staged.is_empty() {
        checks.push(format!(
            "already staged on {}: verified, not transferred again",
            names(&staged)
        ));
    }
    step(
        StepKind::Stage,
        hosts,
        None,
        action,
        "the guide: download the target version; it is staged beside the running one, so nothing that runs changes yet",
        checks,
        |v| {
            Action::Stage(StageParams {
                release_dir: commands::release_dir(v.host, l.target),
                binary: commands::release_binary(v.host, l.target),
                source: l.opts.binary.clone(),
                version: l.target.clone(),
                env_file: v.host.ledger.env_file.clone(),
            })
        },
    )
}

fn migrate(l: &Layout, hosts: &[&View], batch: Option<usize>) -> Step {
    let (action, why) = if l.shared_storage {
        (
            if hosts.len() > 1 {
                format!(
                    "with the new binary and the service's environment, one node per database, on {} only, one after the other: `storage list` (the ledgers before), `storage scan`, `storage list` again (scan must add none), then `storage upgrade NAME` for each ledger listed",
                    names(hosts)
                )
            } else {
                format!(
                    "with the new binary and the service's environment, on {} only: `storage list` (the ledgers before), `storage scan`, `storage list` again (scan must add none), then `storage upgrade NAME` for each ledger listed",
                    names(hosts)
                )
            },
            if l.strategy == Strategy::Offline {
                "the guide: choose one node and, using the new binary, run `storage scan`, `storage list`, `storage upgrade {LEDGER_NAME}`; the shared database is migrated once, while no node runs"
            } else if l.strategy == Strategy::Rolling {
                "migrating once, explicitly, while the canary is stopped and before any node runs the target: no client request waits for a lazy migration, no new nodes race one (numary has no migration lock); the other nodes keep serving, as the table's zero-downtime row allows"
            } else {
                "migrating once, explicitly, before any node runs the target: no racing lazy migrations between new nodes (numary has no migration lock), each ledger's result checked, and a failure stops the run before any node changed"
            },
        )
    } else {
        (
            format!(
                "on each of {}, against its own SQLite files, with the new binary and the service's environment: `storage list` (the ledgers before), `storage scan`, `storage list` again (scan must add none), then `storage upgrade NAME` for each ledger listed",
                names(hosts)
            ),
            "the guide: using the new binary, run `storage scan`, `storage list`, `storage upgrade {LEDGER_NAME}`; SQLite nodes each hold their own ledgers, so each migrates its own",
        )
    };
    let mut checks = vec![
        "`storage list` before and after `scan` is compared and the difference shown".to_string(),
        "only names printed by `storage list` are passed (`storage upgrade` creates a ledger on a typo)".to_string(),
        "`No ledger found.` while the fleet has ledgers aborts: wrong storage environment".to_string(),
        "each `storage upgrade` prints `migrated` or `left in place` for its ledger, not just exit 0".to_string(),
    ];
    for v in hosts {
        if let Some(expected) = &v.host.ledger.ledgers {
            let listed: Vec<String> = expected.iter().map(|n| format!("`{n}`")).collect();
            checks.push(format!(
                "`{}`: the inventory's ledgers must each be listed: {}",
                v.name(),
                listed.join(", ")
            ));
        }
    }
    step(StepKind::Migrate, hosts, batch, action, why, checks, |v| {
        Action::Migrate(MigrateParams {
            binary: commands::release_binary(v.host, l.target),
            driver: v.driver(),
            env_file: v.host.ledger.env_file.clone(),
            ledgers: v.known_ledgers(),
            exclusive: !l.strategy.is_zero_downtime(),
        })
    })
}

fn switch(l: &Layout, hosts: &[&View], batch: Option<usize>) -> Step {
    step(
        StepKind::Switch,
        hosts,
        batch,
        format!(
            "point each node's binary at `<releases dir>/{}/numary` with an atomic symlink swap; the previous release stays for rollback",
            l.target
        ),
        "the guide: restart the nodes with the upgraded binary; renaming a symlink is atomic and reversible",
        vec!["the previous target of the binary is recorded for rollback (a plain file is first kept as its version's release)".to_string()],
        |v| {
            Action::Switch(SwitchParams::to_release(
                v.host,
                l.target,
                v.current.as_ref(),
            ))
        },
    )
}

fn start(l: &Layout, hosts: &[&View], index: usize) -> Step {
    let first = index == 0;
    let action = if first && hosts.len() > 1 {
        format!(
            "start the canary batch {} first (the migrator first), on `{}`",
            names(hosts),
            l.target
        )
    } else if first {
        format!(
            "start the migrator {} first, on `{}`",
            names(hosts),
            l.target
        )
    } else {
        format!(
            "start batch {} on `{}`: {}",
            index + 1,
            l.target,
            names(hosts)
        )
    };
    let why = if first {
        "the canary batch goes first: a bad binary or environment stops the run with few nodes affected, the others untouched"
    } else if l.strategy == Strategy::Offline {
        "the guide: restart all your nodes with the upgraded binary, in batches after the migrator"
    } else {
        "new nodes join batch by batch, each health-gated before the next"
    };
    step(
        StepKind::StartService,
        hosts,
        Some(index + 1),
        action,
        why,
        vec!["the service manager accepts the start".to_string()],
        |v| Action::StartService(ServiceParams::of(v.host)),
    )
}

fn gate(l: &Layout, hosts: &[&View], batch: Option<usize>) -> Step {
    step(
        StepKind::HealthGate,
        hosts,
        batch,
        format!(
            "wait until `/_info` reports `{}` and `/_health` answers on {}, within the timeout",
            l.target,
            names(hosts)
        ),
        "a node that does not come up healthy on the target stops the run before the next batch, with a report of each node's state",
        vec![
            format!("`/_info` reports version `{}`", l.target),
            "`/_health` answers 200".to_string(),
            "every ledger answers a read (`GET /{ledger}/stats` 200)".to_string(),
        ],
        |v| {
            Action::HealthGate(GateParams::new(
                &v.host.ledger.api,
                l.target,
                &v.known_ledgers(),
                v.host.rollout.min_healthy_time,
            ))
        },
    )
}

/// Stops the old nodes `hosts`, whose replacements (in `batch`, when one started them) passed
/// their health gate; with systemd their unit is disabled too, so a reboot does not bring an old
/// release back. Binary, releases and data stay: the node can be started again by hand.
fn decommission(hosts: &[&View], batch: &[&View], n: Option<usize>) -> Step {
    let pairs: Vec<String> = hosts
        .iter()
        .map(|old| {
            let by = batch
                .iter()
                .filter(|v| v.host.replaces.as_deref() == Some(old.name()))
                .map(|v| format!("`{}`", v.name()))
                .collect::<Vec<_>>();
            if by.is_empty() {
                format!("`{}`", old.name())
            } else {
                format!("`{}` (replaced by {})", old.name(), by.join(", "))
            }
        })
        .collect();
    let systemd = hosts
        .iter()
        .any(|v| matches!(v.host.ledger.service, Service::Systemd { .. }));
    let mut checks = vec![
        "each replacement passed its health gate and serves the target now; an old node whose replacement failed is not stopped".to_string(),
        "the service manager reports stopped within the timeout".to_string(),
    ];
    if systemd {
        checks.push("systemd: the unit is disabled (`systemctl disable`), so a reboot does not start the old release again".to_string());
    }
    checks.push(
        "the old node's binary, releases and data stay: it can be started again by hand"
            .to_string(),
    );
    step(
        StepKind::Decommission,
        hosts,
        n,
        format!(
            "decommission {}: stop {} now that {} healthy",
            pairs.join(", "),
            if hosts.len() > 1 { "them" } else { "it" },
            if batch.is_empty() {
                "their replacements serve the target and are"
            } else {
                "the replacements are"
            }
        ),
        "the guide (zero-downtime): deploy new nodes with the upgraded version, then decommission the old nodes with the previous version; only after its replacement serves, so capacity never drops",
        checks,
        |v| Action::Decommission(ServiceParams::of(v.host)),
    )
}

fn unlock(l: &Layout) -> Step {
    step(
        StepKind::Unlock,
        &l.touched,
        None,
        "release the locks and summarize: per node old → new version, backup location, timings"
            .to_string(),
        "the fleet is consistent again; the next run may start",
        Vec::new(),
        |v| Action::Unlock(LockParams::of(v.host)),
    )
}
