//! The rollback plan (`fleetup rollback`): a pure function from what an upgrade run's journal
//! recorded ([`RunRecord`]), the facts gathered now and the storages' live migration state to a
//! [`Plan`] the same runner carries out: lock, stop, confirm stopped, restore the run's backup
//! (only with `--restore-backup`), switch each binary back to the release the run recorded,
//! start, health-gate on the old version, unlock. A storage the run migrated refuses a plain
//! rollback unless the upgrade-path table has a zero-downtime row between the two versions
//! (numary has no down-migrations: the old version would serve a schema it does not know).

use std::collections::BTreeMap;
use std::num::NonZeroUsize;

use serde::Serialize;
use serde_json::Value;

use super::{
    Action, BinarySource, Blocker, BlockerKind, ConfirmParams, GateParams, HostAction,
    HostCommands, HostPlan, LockParams, Mode, Plan, PlanStorage, RestoreParams, ServiceParams,
    Step, StepKind, Strategy, SwitchParams, commands,
};
use crate::events::StepState;
use crate::facts::{HostFacts, StorageDriver, StorageId};
use crate::inventory::ResolvedHost;
use crate::journal::JournalFile;
use crate::policy::PolicyTable;
use crate::version::Version;

/// What an upgrade run's journal says about each node it touched.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RunRecord {
    pub run_id: String,
    /// The version the run upgraded to (what the rollback goes back from).
    pub target: Option<Version>,
    /// The nodes the run changed, in plan order.
    pub hosts: Vec<RecordedHost>,
    /// The run plan's storages (hosts and migrator).
    pub storages: Vec<RecordedStorage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordedHost {
    pub name: String,
    /// Its version before the run.
    pub from: Option<Version>,
    /// Where its binary pointed before the run's switch (the `previous-release` or
    /// `previous-binary-kept` artefact).
    pub previous_release: Option<String>,
    /// The last state of the `migrate` step on it.
    pub migrate: Option<StepState>,
    /// The files of the backup it took (`backup` artefacts).
    pub backups: Vec<BackupFile>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RecordedStorage {
    pub hosts: Vec<String>,
    pub migrator: Option<String>,
}

/// One file of a backup, as the journal recorded it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BackupFile {
    pub path: String,
    pub sha256: String,
    pub bytes: Option<u64>,
}

impl RunRecord {
    /// Reads the record of an upgrade run from its journal (its header's plan and the
    /// `step_finished` artefacts and step records).
    pub fn from_journal(j: &JournalFile) -> Result<RunRecord, String> {
        let plan = j
            .header
            .plan
            .as_ref()
            .ok_or_else(|| format!("the journal of run `{}` holds no plan", j.header.run_id))?;
        let target = plan["target"].as_str().and_then(|t| Version::parse(t).ok());
        let mut hosts = Vec::new();
        for h in plan["hosts"].as_array().into_iter().flatten() {
            let Some(name) = h["name"].as_str() else {
                continue;
            };
            if h["action"] == "already_at_target" {
                continue;
            }
            let mut rec = RecordedHost {
                name: name.to_string(),
                from: h["current"].as_str().and_then(|v| Version::parse(v).ok()),
                migrate: j.last_state("migrate", name),
                ..RecordedHost::default()
            };
            for e in j.events.iter().filter(|e| e["event"] == "step_finished") {
                for a in e["artefacts"].as_array().into_iter().flatten() {
                    if a["host"] != name {
                        continue;
                    }
                    let path = a["path"].as_str().unwrap_or_default().to_string();
                    match a["kind"].as_str() {
                        Some("previous-release" | "previous-binary-kept") => {
                            rec.previous_release = Some(path);
                        }
                        Some("backup") => {
                            if let Some(sha) = a["sha256"].as_str()
                                && !rec.backups.iter().any(|b| b.path == path)
                            {
                                rec.backups.push(BackupFile {
                                    path,
                                    sha256: sha.to_string(),
                                    bytes: a["bytes"].as_u64(),
                                });
                            }
                        }
                        _ => {}
                    }
                }
            }
            hosts.push(rec);
        }
        let names = |v: &Value| -> Vec<String> {
            v.as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x.as_str().map(str::to_string))
                .collect()
        };
        let storages = plan["storages"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|s| RecordedStorage {
                hosts: names(&s["hosts"]),
                migrator: s["migrator"].as_str().map(str::to_string),
            })
            .collect();
        Ok(RunRecord {
            run_id: j.header.run_id.clone(),
            target,
            hosts,
            storages,
        })
    }

    pub fn host(&self, name: &str) -> Option<&RecordedHost> {
        self.hosts.iter().find(|h| h.name == name)
    }
}

/// Where a storage's backup is restored from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RestoreSource {
    /// The node that took the backup and restores it.
    pub host: String,
    pub driver: StorageDriver,
    /// Postgres: the dump; SQLite: the copies, each with its recorded SHA-256.
    pub files: Vec<BackupFile>,
}

/// What a rollback plan carries beyond its steps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RollbackSpec {
    /// The upgrade run rolled back.
    pub of_run: String,
    /// The version that run upgraded to (the plan's `target` is the one gone back to).
    pub from: Version,
    pub restore_backup: bool,
    /// A storage the run migrated (or holding migrations of `from`).
    pub migrated: bool,
    /// The table allows `target` → `from` with zero downtime: the old version may serve the
    /// new schema.
    pub zero_downtime: bool,
    /// `host → release binary` each node switches back to.
    pub releases: BTreeMap<String, String>,
    /// One per storage, with `--restore-backup`.
    pub restores: Vec<RestoreSource>,
}

impl RollbackSpec {
    pub fn restore_of(&self, host: &str) -> Option<&RestoreSource> {
        self.restores.iter().find(|r| r.host == host)
    }
}

/// Everything [`build_rollback`] needs.
pub struct RollbackRequest<'a> {
    pub record: &'a RunRecord,
    /// The run's nodes as the inventory resolves them now (a node no longer in the inventory
    /// is missing here).
    pub hosts: &'a [ResolvedHost],
    pub facts: &'a BTreeMap<String, HostFacts>,
    /// `host → true` when its storage holds a migration newer than the version gone back to
    /// (read live; absent when it could not be read).
    pub schema_beyond: &'a BTreeMap<String, bool>,
    pub restore_backup: bool,
    pub policy: &'a PolicyTable,
}

/// The rollback plan of `req.record`'s run. Blockers say why it must not run.
pub fn build_rollback(req: &RollbackRequest) -> Plan {
    let rec = req.record;
    let mut blockers = Vec::new();
    let mut block = |kind, hosts: Vec<String>, reason: String, hint: Option<String>| {
        blockers.push(Blocker {
            kind,
            hosts,
            reason,
            hint,
        })
    };
    let from = rec.target.clone();
    // The version gone back to: every node's pre-run version, which must agree.
    let mut olds: Vec<&Version> = rec.hosts.iter().filter_map(|h| h.from.as_ref()).collect();
    olds.sort();
    olds.dedup();
    let unknown: Vec<String> = rec
        .hosts
        .iter()
        .filter(|h| h.from.is_none())
        .map(|h| h.name.clone())
        .collect();
    if !unknown.is_empty() {
        block(
            BlockerKind::NoRelease,
            unknown.clone(),
            format!(
                "the journal of run `{}` does not tell the version {} ran before",
                rec.run_id,
                list(&unknown)
            ),
            Some("switch those nodes back by hand (`ledger.binary` → the old release)".into()),
        );
    }
    if olds.len() > 1 {
        block(
            BlockerKind::NoRelease,
            Vec::new(),
            format!(
                "the nodes of run `{}` ran different versions before it ({}): one rollback goes back to one version",
                rec.run_id,
                olds.iter()
                    .map(|v| format!("`{v}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
            Some("roll back each group with `--limit`".into()),
        );
    }
    let target = olds
        .first()
        .map(|v| (*v).clone())
        .or_else(|| from.clone())
        .unwrap_or_else(|| Version::new(0, 0, 0));
    let from = from.unwrap_or_else(|| {
        block(
            BlockerKind::NoRelease,
            Vec::new(),
            format!("the journal of run `{}` names no target", rec.run_id),
            None,
        );
        target.clone()
    });
    if rec.hosts.is_empty() {
        block(
            BlockerKind::NoHosts,
            Vec::new(),
            format!("run `{}` changed no node: nothing to roll back", rec.run_id),
            None,
        );
    }

    let resolved = |name: &str| req.hosts.iter().find(|h| h.name == name);
    let mut releases = BTreeMap::new();
    let mut host_plans = Vec::new();
    let mut touched: Vec<&ResolvedHost> = Vec::new();
    for rh in &rec.hosts {
        let Some(host) = resolved(&rh.name) else {
            block(
                BlockerKind::NoFacts,
                vec![rh.name.clone()],
                format!(
                    "`{}` of run `{}` is not in the inventory (or not selected)",
                    rh.name, rec.run_id
                ),
                Some(
                    "select every node of the run: drop `--limit`, or put it back in the inventory"
                        .into(),
                ),
            );
            continue;
        };
        let facts = req.facts.get(&rh.name);
        if !facts.is_some_and(HostFacts::reachable) {
            block(
                BlockerKind::Unreachable,
                vec![rh.name.clone()],
                format!("`{}` could not be reached", rh.name),
                Some("every node of the run must answer before a rollback starts".into()),
            );
        }
        let release = rh
            .previous_release
            .clone()
            .unwrap_or_else(|| commands::release_binary(host, &target));
        releases.insert(rh.name.clone(), release);
        let current = facts.and_then(|f| f.installed_version.clone());
        let running = facts.is_some_and(|f| f.service == crate::facts::ServiceState::Running);
        let done = current.as_ref() == Some(&target) && running;
        if !done {
            touched.push(host);
        }
        host_plans.push(HostPlan {
            name: rh.name.clone(),
            current,
            action: if done {
                HostAction::AlreadyAtTarget
            } else {
                HostAction::RollBack
            },
            migrator: false,
            storage: StorageId::of(host, facts),
            replaces: None,
            batch: (!done).then_some(1),
            verdict: Some(req.policy.evaluate(&target, &from)),
            blocked: Vec::new(),
        });
    }

    // Storages: the run's groups (a node the plan lost is its own).
    let mut groups: Vec<RecordedStorage> = rec
        .storages
        .iter()
        .map(|s| RecordedStorage {
            hosts: s
                .hosts
                .iter()
                .filter(|h| rec.host(h).is_some())
                .cloned()
                .collect(),
            migrator: s.migrator.clone(),
        })
        .filter(|s| !s.hosts.is_empty())
        .collect();
    for h in &rec.hosts {
        if !groups.iter().any(|g| g.hosts.contains(&h.name)) {
            groups.push(RecordedStorage {
                hosts: vec![h.name.clone()],
                migrator: None,
            });
        }
    }
    let zero_downtime = req.policy.evaluate(&target, &from).zero_downtime;
    let mut migrated_any = false;
    let mut restores = Vec::new();
    let mut storages = Vec::new();
    for g in &groups {
        let recs: Vec<&RecordedHost> = g.hosts.iter().filter_map(|h| rec.host(h)).collect();
        let by_journal = recs.iter().any(|r| {
            matches!(
                r.migrate,
                Some(
                    StepState::Done
                        | StepState::Failed
                        | StepState::Started
                        | StepState::AlreadyDone
                        | StepState::Cancelled
                )
            )
        });
        let by_schema = g
            .hosts
            .iter()
            .any(|h| req.schema_beyond.get(h) == Some(&true));
        let migrated = by_journal || by_schema;
        migrated_any |= migrated;
        let driver = g
            .hosts
            .iter()
            .find_map(|h| req.facts.get(h)?.storage.as_ref().map(|s| s.driver));
        let backup = recs
            .iter()
            .find(|r| !r.backups.is_empty())
            .map(|r| (r.name.clone(), r.backups.clone()));
        if migrated && !zero_downtime && !req.restore_backup {
            block(
                BlockerKind::Migrated,
                g.hosts.clone(),
                format!(
                    "run `{}` migrated the storage of {} to `{from}` and `{target}` must not serve that schema (the upgrade-path table has no zero-downtime row for `{target}` → `{from}`, and numary has no down-migrations)",
                    rec.run_id,
                    list(&g.hosts)
                ),
                Some(format!(
                    "restore the backup that run took: `fleetup rollback {} --restore-backup` (writes made since the backup are lost)",
                    rec.run_id
                )),
            );
        }
        let mut restorer = None;
        if req.restore_backup {
            match (&backup, driver) {
                (Some((host, files)), Some(driver)) => {
                    restorer = Some(host.clone());
                    restores.push(RestoreSource {
                        host: host.clone(),
                        driver,
                        files: files.clone(),
                    });
                }
                (None, _) => block(
                    BlockerKind::NoBackup,
                    g.hosts.clone(),
                    format!(
                        "run `{}` recorded no backup of the storage of {}",
                        rec.run_id,
                        list(&g.hosts)
                    ),
                    Some(if migrated {
                        "restore that storage from your own backup, then run `fleetup rollback` without `--restore-backup`".into()
                    } else {
                        "its storage was not migrated: run `fleetup rollback` without `--restore-backup`".into()
                    }),
                ),
                (Some(_), None) => block(
                    BlockerKind::StorageUnknown,
                    g.hosts.clone(),
                    format!("the storage driver of {} is unknown", list(&g.hosts)),
                    None,
                ),
            }
        }
        for hp in host_plans.iter_mut() {
            if restorer.as_deref() == Some(hp.name.as_str()) {
                hp.migrator = true;
            }
        }
        storages.push(PlanStorage {
            id: g
                .hosts
                .first()
                .and_then(|h| StorageId::of(resolved(h)?, req.facts.get(h))),
            driver,
            hosts: g.hosts.clone(),
            migrator: restorer,
        });
    }
    for hp in host_plans.iter_mut() {
        hp.blocked = blockers
            .iter()
            .filter(|b| b.hosts.contains(&hp.name))
            .map(|b| b.reason.clone())
            .collect();
    }
    let spec = RollbackSpec {
        of_run: rec.run_id.clone(),
        from: from.clone(),
        restore_backup: req.restore_backup,
        migrated: migrated_any,
        zero_downtime,
        releases,
        restores,
    };
    let steps = lay_out(&touched, &spec, &target, req.facts);
    let batch: Vec<String> = touched.iter().map(|h| h.name.clone()).collect();
    Plan {
        target: target.clone(),
        strategy_requested: Strategy::Offline,
        strategy: Strategy::Offline,
        mode: if rec.hosts.len() > 1 {
            Mode::MultiNode
        } else {
            Mode::SingleNode
        },
        serial: NonZeroUsize::new(batch.len()).map(super::BatchSize::Count),
        canary: NonZeroUsize::MIN,
        stop_running: true,
        backup: false,
        binary: BinarySource::File {
            path: spec
                .releases
                .values()
                .next()
                .cloned()
                .unwrap_or_default()
                .into(),
            sha256: String::new(),
        },
        migrator: None,
        storages,
        batches: if batch.is_empty() {
            Vec::new()
        } else {
            vec![batch]
        },
        steps,
        hosts: host_plans,
        blockers,
        warnings: Vec::new(),
        hops: Vec::new(),
        rollback: Some(spec),
    }
}

fn list(names: &[String]) -> String {
    names
        .iter()
        .map(|n| format!("`{n}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn step(
    kind: StepKind,
    hosts: &[&ResolvedHost],
    action: String,
    why: &str,
    checks: Vec<String>,
    params: impl Fn(&ResolvedHost) -> Action,
) -> Step {
    Step {
        id: kind.to_string(),
        number: 0,
        kind,
        hosts: hosts.iter().map(|h| h.name.clone()).collect(),
        batch: None,
        hop: None,
        action,
        why: why.to_string(),
        checks,
        commands: hosts
            .iter()
            .map(|h| HostCommands::new(&h.name, params(h)))
            .collect(),
    }
}

fn lay_out(
    touched: &[&ResolvedHost],
    spec: &RollbackSpec,
    target: &Version,
    facts: &BTreeMap<String, HostFacts>,
) -> Vec<Step> {
    if touched.is_empty() {
        return Vec::new();
    }
    let names = list(&touched.iter().map(|h| h.name.clone()).collect::<Vec<_>>());
    // Every touched node has its release in the spec (the recorded one, else the target's).
    let release_of = |h: &ResolvedHost| {
        spec.releases
            .get(&h.name)
            .cloned()
            .unwrap_or_else(|| commands::release_binary(h, target))
    };
    let mut steps = vec![
        step(
            StepKind::Lock,
            touched,
            "take the fleetup lock on each node".into(),
            "two runs against the same fleet would interleave stops, restores and restarts",
            vec!["no other run holds the lock on any node".into()],
            |h| Action::Lock(LockParams::of(h)),
        ),
        step(
            StepKind::StopService,
            touched,
            format!("stop the service on {names} and wait until it is stopped"),
            "the old binary must not start next to the new one, and a restore needs every node on its storage stopped",
            vec!["the service manager reports stopped within the timeout".into()],
            |h| Action::StopService(ServiceParams::of(h)),
        ),
        step(
            StepKind::ConfirmStopped,
            touched,
            "confirm every node is cleanly stopped".into(),
            "nothing may write to a storage while it is restored or served by another release",
            vec![
                "the service manager says stopped".into(),
                "no `numary` process runs".into(),
                "the API does not answer".into(),
            ],
            |h| {
                Action::ConfirmStopped(ConfirmParams {
                    service: h.ledger.service.clone(),
                    api: h.ledger.api.clone(),
                    sqlite_dir: facts
                        .get(&h.name)
                        .and_then(|f| f.storage.as_ref())
                        .and_then(|s| s.sqlite_dir.clone()),
                    count_db_sessions: false,
                    env_file: h.ledger.env_file.clone(),
                })
            },
        ),
    ];
    if spec.restore_backup && !spec.restores.is_empty() {
        let restorers: Vec<&ResolvedHost> = touched
            .iter()
            .copied()
            .filter(|h| spec.restore_of(&h.name).is_some())
            .collect();
        steps.push(step(
            StepKind::Restore,
            &restorers,
            format!(
                "restore the backup of run `{}` over each storage (writes made since it are lost)",
                spec.of_run
            ),
            "numary has no down-migrations: going back from a migrated schema is restoring the backup taken before the migration",
            vec![
                "the backup's SHA-256 equals the one the journal recorded".into(),
                "Postgres: `pg_restore --list` reads the dump".into(),
                "SQLite: each restored file's SHA-256 equals the backup's".into(),
            ],
            |h| {
                Action::Restore(RestoreParams {
                    // Only the restorers are on this step.
                    source: spec.restore_of(&h.name).cloned().unwrap_or_else(|| RestoreSource {
                        host: h.name.clone(),
                        driver: StorageDriver::Sqlite,
                        files: Vec::new(),
                    }),
                    env_file: h.ledger.env_file.clone(),
                    link: h.ledger.binary.clone(),
                    release: release_of(h),
                    escalate: h.ledger.escalate,
                })
            },
        ));
    }
    steps.push(step(
        StepKind::SwitchBack,
        touched,
        format!("switch `ledger.binary` back to the `{target}` release on {names}"),
        "the release the rolled-back run recorded before its switch",
        vec![format!(
            "the binary resolves to the `{target}` release afterwards"
        )],
        |h| {
            Action::SwitchBack(SwitchParams {
                link: h.ledger.binary.clone(),
                release: release_of(h),
                keep_plain_as: Some(commands::release_dir(h, &spec.from)),
                escalate: h.ledger.escalate,
            })
        },
    ));
    steps.push(step(
        StepKind::StartService,
        touched,
        format!("start {names} on `{target}`"),
        "the nodes serve again, on the old release",
        vec!["the service manager accepts the start".into()],
        |h| Action::StartService(ServiceParams::of(h)),
    ));
    steps.push(step(
        StepKind::HealthGate,
        touched,
        format!("wait until `/_info` reports `{target}` and `/_health` answers on {names}"),
        "a node that does not come up healthy on the old version stops the run with a report",
        vec![
            format!("`/_info` reports version `{target}`"),
            "`/_health` answers 200".into(),
        ],
        |h| {
            Action::HealthGate(GateParams::new(
                &h.ledger.api,
                target,
                h.ledger.ledgers.as_deref().unwrap_or_default(),
                h.rollout.min_healthy_time,
            ))
        },
    ));
    steps.push(step(
        StepKind::Unlock,
        touched,
        "release the locks and summarize".into(),
        "the fleet is consistent again; the next run may start",
        Vec::new(),
        |h| Action::Unlock(LockParams::of(h)),
    ));
    for (i, s) in steps.iter_mut().enumerate() {
        s.number = i + 1;
    }
    steps
}

/// The restore command of `r` on a node with the service's environment file `env_file`.
pub fn restore_command(env_file: Option<&str>, r: &RestoreSource) -> String {
    match r.driver {
        StorageDriver::Postgres => {
            let dump = r.files.first();
            commands::restore_postgres(
                env_file,
                dump.map_or("", |f| f.path.as_str()),
                dump.map_or("", |f| f.sha256.as_str()),
            )
        }
        StorageDriver::Sqlite => {
            let dir = r
                .files
                .first()
                .and_then(|f| f.path.rsplit_once('/'))
                .map_or("", |(d, _)| d);
            let files: Vec<(String, String)> = r
                .files
                .iter()
                .map(|f| {
                    let name = f.path.rsplit_once('/').map_or(f.path.as_str(), |(_, n)| n);
                    (name.to_string(), f.sha256.clone())
                })
                .collect();
            commands::restore_sqlite(env_file, dir, &files)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::facts::{ServiceState, StorageFacts};

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    /// A run of `from` → `to` on Postgres nodes sharing one database, node-1 the migrator with
    /// the backup; `migrate` the journal's last state of the migrate step there.
    fn record(from: &str, to: &str, names: &[&str], migrate: Option<StepState>) -> RunRecord {
        RunRecord {
            run_id: "20260125T174502.000Z-00ab12".into(),
            target: Some(v(to)),
            hosts: names
                .iter()
                .enumerate()
                .map(|(i, n)| RecordedHost {
                    name: n.to_string(),
                    from: Some(v(from)),
                    previous_release: Some(format!("/opt/numary/releases/{from}/numary")),
                    migrate: (i == 0).then_some(migrate).flatten(),
                    backups: if i == 0 {
                        vec![BackupFile {
                            path: "/var/backups/numary/R/postgres.dump".into(),
                            sha256: "ab".repeat(32),
                            bytes: Some(10),
                        }]
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
            storages: vec![RecordedStorage {
                hosts: names.iter().map(|n| n.to_string()).collect(),
                migrator: names.first().map(|n| n.to_string()),
            }],
        }
    }

    fn facts(names: &[&str], version: &str) -> BTreeMap<String, HostFacts> {
        names
            .iter()
            .map(|n| {
                (
                    n.to_string(),
                    HostFacts {
                        installed_version: Some(v(version)),
                        service: ServiceState::Running,
                        storage: Some(StorageFacts {
                            driver: StorageDriver::Postgres,
                            sqlite_dir: None,
                            postgres: Some("postgres://db.internal:5432/ledger".into()),
                        }),
                        ..HostFacts::default()
                    },
                )
            })
            .collect()
    }

    fn build(
        rec: &RunRecord,
        facts: &BTreeMap<String, HostFacts>,
        beyond: bool,
        restore: bool,
    ) -> Plan {
        let hosts: Vec<ResolvedHost> = rec
            .hosts
            .iter()
            .map(|h| crate::runner::tests::host(&h.name))
            .collect();
        let schema_beyond = hosts.iter().map(|h| (h.name.clone(), beyond)).collect();
        build_rollback(&RollbackRequest {
            record: rec,
            hosts: &hosts,
            facts,
            schema_beyond: &schema_beyond,
            restore_backup: restore,
            policy: &PolicyTable::builtin(),
        })
    }

    fn kinds(p: &Plan) -> Vec<&'static str> {
        p.steps.iter().map(|s| s.kind.as_str()).collect()
    }

    const NODES: &[&str] = &["node-1", "node-2", "node-3"];

    #[test]
    fn a_migrated_storage_refuses_a_plain_rollback_with_a_restore_hint() {
        let rec = record("1.7.4", "1.8.2", NODES, Some(StepState::Done));
        let p = build(&rec, &facts(NODES, "1.8.2"), true, false);
        assert!(p.is_blocked());
        let b = &p.blockers[0];
        assert_eq!(b.kind, BlockerKind::Migrated);
        assert_eq!(b.hosts, NODES);
        assert!(b.reason.contains("`1.7.4` must not serve"), "{}", b.reason);
        assert!(b.hint.as_deref().unwrap().contains("--restore-backup"));
        assert!(p.rollback.as_ref().unwrap().migrated);
    }

    #[test]
    fn the_journal_alone_or_the_schema_alone_tells_a_storage_migrated() {
        for state in [StepState::Failed, StepState::Started] {
            let rec = record("1.7.4", "1.8.2", NODES, Some(state));
            let p = build(&rec, &facts(NODES, "1.8.2"), false, false);
            assert_eq!(p.blockers[0].kind, BlockerKind::Migrated, "{state:?}");
        }
        let rec = record("1.7.4", "1.8.2", NODES, None);
        let p = build(&rec, &facts(NODES, "1.8.2"), true, false);
        assert_eq!(p.blockers[0].kind, BlockerKind::Migrated);
        // Neither: the old release may serve the storage again.
        let p = build(&rec, &facts(NODES, "1.8.2"), false, false);
        assert!(!p.is_blocked(), "{:?}", p.blockers);
        assert!(!kinds(&p).contains(&"restore"));
    }

    #[test]
    fn a_zero_downtime_row_between_the_versions_allows_a_plain_rollback() {
        let rec = record("1.8.2", "1.9.6", NODES, Some(StepState::Done));
        let p = build(&rec, &facts(NODES, "1.9.6"), true, false);
        assert!(!p.is_blocked(), "{:?}", p.blockers);
        let spec = p.rollback.as_ref().unwrap();
        assert!(spec.migrated && spec.zero_downtime);
        assert_eq!(p.target, v("1.8.2"));
        assert_eq!(
            kinds(&p),
            [
                "lock",
                "stop-service",
                "confirm-stopped",
                "switch-back",
                "start-service",
                "health-gate",
                "unlock"
            ]
        );
    }

    #[test]
    fn restore_backup_restores_once_per_storage_then_switches_every_node_back() {
        let rec = record("1.7.4", "1.8.2", NODES, Some(StepState::Done));
        let p = build(&rec, &facts(NODES, "1.8.2"), true, true);
        assert!(!p.is_blocked(), "{:?}", p.blockers);
        assert_eq!(
            kinds(&p),
            [
                "lock",
                "stop-service",
                "confirm-stopped",
                "restore",
                "switch-back",
                "start-service",
                "health-gate",
                "unlock"
            ]
        );
        let restore = p
            .steps
            .iter()
            .find(|s| s.kind == StepKind::Restore)
            .unwrap();
        assert_eq!(restore.hosts, ["node-1"]);
        let cmd = &restore.commands[0].commands[0];
        assert!(cmd.contains("pg_restore --clean --if-exists"), "{cmd}");
        assert!(cmd.contains(&"ab".repeat(32)), "checks the recorded sha256");
        assert!(!cmd.contains("postgres://"), "no connection string: {cmd}");
        for s in &p.steps {
            if s.kind != StepKind::Restore {
                assert_eq!(s.hosts, NODES, "{}", s.kind);
            }
        }
        let back = p
            .steps
            .iter()
            .find(|s| s.kind == StepKind::SwitchBack)
            .unwrap();
        assert!(back.commands[1].commands[0].contains("/opt/numary/releases/1.7.4/numary"));
        assert_eq!(p.storages[0].migrator.as_deref(), Some("node-1"));
        assert_eq!(p.hosts[0].action, HostAction::RollBack);
    }

    #[test]
    fn restore_backup_without_a_recorded_backup_is_refused() {
        let mut rec = record("1.7.4", "1.8.2", NODES, Some(StepState::Done));
        rec.hosts[0].backups.clear();
        let p = build(&rec, &facts(NODES, "1.8.2"), true, true);
        assert_eq!(p.blockers[0].kind, BlockerKind::NoBackup);
    }

    #[test]
    fn nodes_already_back_and_running_have_nothing_left_to_do() {
        let rec = record("1.7.4", "1.8.2", NODES, Some(StepState::Done));
        let p = build(&rec, &facts(NODES, "1.7.4"), false, true);
        assert!(!p.is_blocked(), "{:?}", p.blockers);
        assert!(p.steps.is_empty());
        assert!(
            p.hosts
                .iter()
                .all(|h| h.action == HostAction::AlreadyAtTarget)
        );
    }

    #[test]
    fn different_versions_before_the_run_are_refused() {
        let mut rec = record("1.7.4", "1.8.2", NODES, None);
        rec.hosts[1].from = Some(v("1.7.3"));
        let p = build(&rec, &facts(NODES, "1.8.2"), false, false);
        assert_eq!(p.blockers[0].kind, BlockerKind::NoRelease);
    }
}
