//! The migrate step, with the new binary and exactly the service's environment: on every host
//! first `storage list`, `storage scan`, `storage list` (the difference shown) and the guards,
//! and only then `storage upgrade NAME` for each listed ledger, each result line checked. Guards:
//! only names `storage list` printed are passed (the real binary creates a ledger on a typo),
//! every ledger the fleet is known to hold must be listed, and `scan` may add only known ones.

use std::collections::HashMap;
use std::sync::Arc;

use crate::exit_code;
use crate::numary::{self, UpgradeOutcome};
use crate::plan::{Action, PlanStorage, Step, StepKind};
use crate::shell::validate_ledger_name;
use crate::ssh::Transport;

use super::ctx::{self, Checked, OwnSteps, Shared, StepError, tail};
use super::params;
use super::service::{self, notice};

/// Why the ledgers `storage list` printed must not be migrated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListProblem {
    /// Ledgers the fleet is known to hold (the nodes' facts, or the inventory when nothing is
    /// listed) that `storage list` does not print: the commands see another storage.
    WrongEnvironment {
        missing: Vec<String>,
        listed: Vec<String>,
    },
    /// Ledgers the inventory names that `storage list` did not print.
    Missing {
        missing: Vec<String>,
        listed: Vec<String>,
    },
    /// Ledgers `storage scan` registered that neither the facts nor the inventory know of: on
    /// Postgres scan registers any schema with a `transactions` table.
    ScanAdded { added: Vec<String> },
}

impl ListProblem {
    pub fn message(&self) -> String {
        match self {
            ListProblem::WrongEnvironment { missing, listed } if listed.is_empty() => format!(
                "`storage list` prints `No ledger found.` while the fleet has ledgers ({}): wrong storage environment",
                names(missing)
            ),
            ListProblem::WrongEnvironment { missing, listed } => format!(
                "`storage list` does not print {}, which the fleet is known to hold (it prints {}): wrong storage environment",
                names(missing),
                names(listed)
            ),
            ListProblem::Missing { missing, listed } => format!(
                "the inventory names ledger(s) {} that `storage list` does not print (it prints {})",
                names(missing),
                names(listed)
            ),
            ListProblem::ScanAdded { added } => format!(
                "`storage scan` registered {}, which neither the nodes nor the inventory know of: refusing to migrate them",
                names(added)
            ),
        }
    }

    /// What to do about it; `env_file` is the environment file the storage commands read.
    pub fn hint(&self, env_file: Option<&str>) -> String {
        match self {
            ListProblem::WrongEnvironment { .. } => match env_file {
                Some(env) => format!(
                    "the storage commands ran with the service's environment file `{env}` (`ledger.env_file`): make it name the storage the service uses (NUMARY_STORAGE_DRIVER, NUMARY_STORAGE_DIR, the connection string)"
                ),
                None => "the storage commands ran with no environment file (`ledger.env_file` is not set): set it to the file the service reads, so they see the storage the service uses".to_string(),
            },
            ListProblem::Missing { .. } => {
                "fix the ledger names in the inventory (`ledgers = [...]`); fleetup never passes a name `storage list` did not print, as `storage upgrade` would create it".to_string()
            }
            ListProblem::ScanAdded { .. } => {
                "review them: `storage scan` registers any Postgres schema with a `transactions` table (any `<db_name>_*.db` file on SQLite); if they are real ledgers from before numary 1.4, name them in the inventory's `ledgers = [...]` and run again. fleetup cannot safely undo the registration, but it changed no ledger's schema".to_string()
            }
        }
    }
}

/// Checks what `storage list` printed after `scan` (`after`; `before` it) against what this
/// node's storage is known to hold (`known`: what the nodes sharing it reported), what the whole
/// fleet reported (`fleet`) and what the inventory names (`expected`).
pub fn check_listed(
    before: &[String],
    after: &[String],
    known: &[String],
    fleet: &[String],
    expected: Option<&[String]>,
) -> Result<(), ListProblem> {
    let expected = expected.unwrap_or_default();
    let mut missing: Vec<String> = known
        .iter()
        .filter(|k| !after.contains(k))
        .cloned()
        .collect();
    if after.is_empty() {
        // Nothing listed at all while the fleet has ledgers: a SQLite node's own facts read the
        // same wrong environment file, so the other nodes' ledgers and the inventory's names
        // count here too.
        missing.extend(fleet.iter().chain(expected).cloned());
    }
    missing.sort();
    missing.dedup();
    if !missing.is_empty() {
        return Err(ListProblem::WrongEnvironment {
            missing,
            listed: after.to_vec(),
        });
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| !after.contains(e))
        .cloned()
        .collect();
    if !missing.is_empty() {
        return Err(ListProblem::Missing {
            missing,
            listed: after.to_vec(),
        });
    }
    let unknown: Vec<String> = added(before, after)
        .into_iter()
        .filter(|l| !known.contains(l) && !expected.contains(l))
        .collect();
    if !unknown.is_empty() {
        return Err(ListProblem::ScanAdded { added: unknown });
    }
    Ok(())
}

/// `scan` registered these (in `after`, not in `before`).
pub fn added(before: &[String], after: &[String]) -> Vec<String> {
    after
        .iter()
        .filter(|l| !before.contains(l))
        .cloned()
        .collect()
}

pub async fn run<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    recheck_stopped(sh, step).await?;
    // Right before the first `storage upgrade`: a node outside the run may have connected
    // since the stops. A zero-downtime run migrates while the other nodes serve, by design (the
    // table's zero-downtime row allows it; its params are not `exclusive`).
    service::confirm_database_free(sh, step).await?;
    // Each Postgres database is migrated under its advisory lock, held for the whole step in a
    // session of its own: another inventory, or a disjoint `--limit`, on the same database is
    // refused with this run named, and never migrates at the same time.
    let own = OwnSteps::new(step);
    let mut db_locks = Vec::new();
    for name in &step.hosts {
        if !params::of(sh, &own.of(name), name, Action::migrate)?.is_postgres() {
            continue;
        }
        match hold_db_lock(sh, step, name).await {
            Ok(l) => db_locks.push(l),
            Err(e) => {
                release_db_locks(db_locks).await;
                return Err(e);
            }
        }
    }
    let result = survey_and_migrate(sh, step, &own).await;
    release_db_locks(db_locks).await;
    result
}

/// `own`: `step`'s copy for each host (its parameters found at once, not searched for).
async fn survey_and_migrate<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
    own: &OwnSteps<'_>,
) -> Result<(), StepError> {
    // Every host's lists and guards before the first `storage upgrade` anywhere: a refusal on the
    // second SQLite node must not come after the first one migrated (nothing would be unchanged).
    // What the guards compare with, gathered once (not once per host: each is as long as the
    // fleet): every ledger the fleet's facts know of, and the storage of each host.
    let mut fleet: Vec<String> = sh.facts.values().flat_map(|f| f.ledgers.clone()).collect();
    fleet.sort();
    fleet.dedup();
    let mut storages: HashMap<&str, &PlanStorage> = HashMap::new();
    for s in &sh.plan.storages {
        for h in &s.hosts {
            storages.entry(h.as_str()).or_insert(s);
        }
    }
    let mut ledgers = Vec::new();
    for name in &step.hosts {
        let known = known_ledgers(sh, storages.get(name.as_str()).copied(), name);
        ledgers.push(survey(sh, &own.of(name), name, &known, &fleet).await?);
    }
    // One host after the other: on SQLite each node migrates its own files, and a failure must
    // stop the run before the next node is touched.
    for (name, ledgers) in step.hosts.iter().zip(ledgers) {
        migrate(sh, &own.of(name), name, &ledgers).await?;
    }
    Ok(())
}

/// Takes the migration lock of `name`'s database; a lock held elsewhere stops the run with
/// its holder named (exit [`exit_code::LOCK_HELD`]).
async fn hold_db_lock<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
    name: &str,
) -> Result<crate::dblock::DbLock, StepError> {
    let label =
        crate::dblock::holder_label(&sh.cfg.run_id, &sh.cfg.owner.user, &sh.cfg.owner.local_host);
    let op = sh.begin(step, name, Some(&crate::plan::commands::db_lock_line()));
    match crate::dblock::hold(sh.session(name), sh.host(name), &label).await {
        Ok(l) => {
            op.ok("the database's migration lock is held", Vec::new());
            Ok(l)
        }
        Err(err) => {
            let mut e = sh.error(step, name, err.to_string());
            if matches!(err, crate::dblock::DbLockError::Held { .. }) {
                e.code = exit_code::LOCK_HELD;
                e.hints.push("another fleetup run (another inventory, or another `--limit`) is migrating this database: let it finish, then run again; nothing was migrated here".into());
            } else {
                e.code = exit_code::BLOCKED;
                e.hints.push("fleetup holds a Postgres advisory lock while it migrates: check that `psql` runs on the migrator and may connect".into());
            }
            op.fail(&e.message);
            Err(e)
        }
    }
}

async fn release_db_locks(locks: Vec<crate::dblock::DbLock>) {
    for l in locks {
        let _ = l.release().await;
    }
}

/// Right before the storage changes: every node of the run still stopped, API silent (a node
/// started behind fleetup's back since `confirm_stopped` would race the migration). Only reads,
/// so every node at once (within `--forks`); the first one found running, in host order, stops
/// the run.
async fn recheck_stopped<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    // What "stopped" was confirmed against: the confirm step's parameters (this step's hosts,
    // with their own settings, when the plan has none).
    let confirm = sh
        .plan
        .steps
        .iter()
        .find(|s| s.kind == StepKind::ConfirmStopped && s.hop == step.hop);
    // A host left behind after its own failure is alone on its storage (the failure policy).
    let hosts: Vec<String> = confirm
        .map_or(&step.hosts, |s| &s.hosts)
        .iter()
        .filter(|h| sh.going(h))
        .cloned()
        .collect();
    let own = confirm.map(OwnSteps::new);
    let found = ctx::each_host(sh, &hosts, |sh, name| {
        let confirm = own.as_ref().map(|o| o.of(&name));
        async move {
            let host = sh.host(&name);
            let t = sh.session(&name);
            let (service, api) = match confirm
                .as_ref()
                .and_then(|s| s.params(&name))
                .and_then(Action::confirm)
            {
                Some(p) => (&p.service, p.api.as_str()),
                None => (&host.ledger.service, host.ledger.api.as_str()),
            };
            let running = service::service_running(t, service).await;
            let api = service::api_answers(t, api).await;
            if running != Some(false) || api.is_some() {
                Some(service::live_state(t, host).await)
            } else {
                None
            }
        }
    })
    .await;
    for (name, found) in hosts.iter().zip(found) {
        let message = match found {
            Ok(None) => continue,
            Ok(Some(live)) => {
                format!("the node is no longer cleanly stopped ({live}): refusing to migrate")
            }
            Err(why) => format!(
                "cannot tell whether the node is still stopped ({why}): refusing to migrate"
            ),
        };
        let op = sh.begin(step, name, None);
        let mut e = sh.error(step, name, message);
        e.code = exit_code::BLOCKED;
        e.hints
            .push("something restarted it; stop it and run again".into());
        op.fail(&e.message);
        return Err(e);
    }
    Ok(())
}

/// `storage list`, `scan`, `list` on `name` and the guards: the ledgers to migrate there.
/// `known`: the ledgers `name`'s storage is known to hold; `fleet`: every ledger the fleet's
/// facts know of (sorted, once each).
async fn survey<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
    known: &[String],
    fleet: &[String],
) -> Result<Vec<String>, StepError> {
    let host = sh.host(name);
    let p = params::of(sh, step, name, Action::migrate)?;
    let numary = |args: &[&str]| p.numary(args);
    let list = |label: &'static str| {
        let cmd = numary(&["storage", "list"]);
        async move {
            sh.run_checked(step, name, &cmd, label, None, |out| {
                let listed = numary::parse_storage_list(&out.stdout_lossy())
                    .map_err(|e| sh.error(step, name, e.to_string()))?;
                let message = format!("{label}: {}", names(&listed));
                Ok(Checked::with(listed, message, Vec::new()))
            })
            .await
        }
    };

    let before = list("`storage list` before `scan`").await?;
    let cmd = numary(&["storage", "scan"]);
    // `scan` registers (and, before 1.4, migrates into the registry) every ledger: a
    // migration's time, not a command's.
    let migration = Some(host.ssh.migration_timeout);
    sh.run_checked(step, name, &cmd, "`storage scan`", migration, |out| {
        let report = numary::parse_storage_scan(&out.stdout_lossy());
        if !report.errors.is_empty() {
            let mut e = sh.error(
                step,
                name,
                format!(
                    "`storage scan` could not register: {}",
                    report
                        .errors
                        .iter()
                        .map(|(l, why)| format!("`{l}` ({why})"))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
            e.stderr = tail(&out.stdout_lossy());
            return Err(e);
        }
        let message = format!(
            "`storage scan`: {} registered, {} already registered, {} file(s) skipped",
            report.registered.len(),
            report.already_registered.len(),
            report.skipped.len()
        );
        Ok(Checked::with((), message, Vec::new()))
    })
    .await?;
    let after = list("`storage list` after `scan`").await?;
    let new = added(&before, &after);
    notice(
        sh,
        name,
        if new.is_empty() {
            "`storage scan` made no difference to `storage list`".to_string()
        } else {
            format!(
                "`storage scan` added to `storage list`: {} (each must be a ledger the nodes or the inventory know of)",
                names(&new)
            )
        },
    );

    let refuse = |message: String, hint: Option<&str>| {
        let op = sh.begin(step, name, None);
        let mut e = sh.error(step, name, message);
        e.code = exit_code::BLOCKED;
        e.hints.extend(hint.map(str::to_string));
        op.fail(&e.message);
        e
    };
    if let Err(problem) = check_listed(
        &before,
        &after,
        known,
        fleet,
        host.ledger.ledgers.as_deref(),
    ) {
        let hint = problem.hint(p.env_file.as_deref());
        return Err(refuse(problem.message(), Some(&hint)));
    }
    for ledger in &after {
        if let Err(err) = validate_ledger_name(ledger) {
            return Err(refuse(format!("`storage list` printed {err}"), None));
        }
    }
    Ok(after)
}

/// `storage upgrade NAME` on `name` for each of `ledgers`, each result line checked.
async fn migrate<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
    ledgers: &[String],
) -> Result<(), StepError> {
    let p = params::of(sh, step, name, Action::migrate)?;
    // Each ledger's pending migrations run in one transaction that scales with its size.
    let migration = Some(sh.host(name).ssh.migration_timeout);
    for ledger in ledgers {
        sh.change(|c| c.touch_storage(name));
        let cmd = p.numary(&["storage", "upgrade", ledger]);
        let label = format!("`storage upgrade {ledger}`");
        let word = sh
            .run_checked(step, name, &cmd, &label, migration, |out| {
                match numary::parse_storage_upgrade(&out.stdout_lossy(), ledger) {
                    Ok(outcome) => {
                        let word = match outcome {
                            UpgradeOutcome::Migrated => "migrated",
                            UpgradeOutcome::LeftInPlace => "left in place",
                        };
                        Ok(Checked::with(word, format!("{label}: {word}"), Vec::new()))
                    }
                    Err(err) => {
                        let mut e = sh.error(step, name, err.to_string());
                        e.stderr = tail(&out.stdout_lossy());
                        Err(e)
                    }
                }
            })
            .await?;
        sh.change(|c| {
            c.ledgers
                .push((name.to_string(), ledger.clone(), word.to_string()))
        });
    }
    Ok(())
}

/// The ledgers `name`'s storage (`storage`, as the plan has it) is known to hold: what every node
/// on it reported (a SQLite node holds its own files; nodes sharing a Postgres database report
/// the same ledgers).
fn known_ledgers<T: Transport>(
    sh: &Shared<T>,
    storage: Option<&PlanStorage>,
    name: &str,
) -> Vec<String> {
    let on_storage: Vec<&str> = match storage {
        Some(s) => s.hosts.iter().map(String::as_str).collect(),
        None => vec![name],
    };
    let mut known: Vec<String> = on_storage
        .iter()
        .filter_map(|h| sh.facts(h))
        .flat_map(|f| f.ledgers.clone())
        .collect();
    known.sort();
    known.dedup();
    known
}

fn names(l: &[String]) -> String {
    if l.is_empty() {
        "no ledger".to_string()
    } else {
        l.iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn empty_list_with_known_ledgers_is_the_wrong_environment() {
        let p = check_listed(&[], &[], &s(&["default"]), &[], None).unwrap_err();
        assert_eq!(
            p,
            ListProblem::WrongEnvironment {
                missing: s(&["default"]),
                listed: vec![]
            }
        );
        assert!(p.message().contains("No ledger found."), "{}", p.message());
        assert!(
            p.hint(Some("/etc/numary.env"))
                .contains("`/etc/numary.env`")
        );
        assert!(p.hint(None).contains("`ledger.env_file` is not set"));
        // Another node's ledgers, or the inventory's names, count when nothing is listed.
        assert!(matches!(
            check_listed(&[], &[], &[], &s(&["default"]), None),
            Err(ListProblem::WrongEnvironment { .. })
        ));
        assert!(matches!(
            check_listed(&[], &[], &[], &[], Some(&s(&["payments"]))),
            Err(ListProblem::WrongEnvironment { .. })
        ));
        // A fleet with no ledger at all has nothing to migrate: not an error.
        assert_eq!(check_listed(&[], &[], &[], &[], None), Ok(()));
    }

    #[test]
    fn a_known_ledger_missing_from_a_non_empty_list_is_the_wrong_environment() {
        // Another storage that happens to hold a `default` too.
        let listed = s(&["default"]);
        let p =
            check_listed(&listed, &listed, &s(&["default", "payments"]), &[], None).unwrap_err();
        assert_eq!(
            p,
            ListProblem::WrongEnvironment {
                missing: s(&["payments"]),
                listed: listed.clone()
            }
        );
        let m = p.message();
        assert!(
            m.contains("`payments`") && m.contains("wrong storage environment"),
            "{m}"
        );
        assert!(!m.contains("No ledger found."), "{m}");
        // Another SQLite node holding other ledgers is no reason to refuse this one.
        assert_eq!(
            check_listed(&listed, &listed, &listed, &s(&["default", "orders"]), None),
            Ok(())
        );
    }

    #[test]
    fn every_inventory_ledger_must_be_listed() {
        let listed = s(&["default", "payments"]);
        assert_eq!(
            check_listed(&listed, &listed, &[], &[], Some(&s(&["payments"]))),
            Ok(())
        );
        let p = check_listed(
            &listed,
            &listed,
            &[],
            &[],
            Some(&s(&["default", "paymnets"])),
        )
        .unwrap_err();
        assert_eq!(
            p,
            ListProblem::Missing {
                missing: s(&["paymnets"]),
                listed: listed.clone()
            }
        );
        assert!(p.message().contains("`paymnets`"), "{}", p.message());
        // Ledgers listed but not in the inventory are migrated, not refused.
        assert_eq!(
            check_listed(&listed, &listed, &s(&["default"]), &[], None),
            Ok(())
        );
    }

    #[test]
    fn a_ledger_scan_registers_must_be_known() {
        let before = s(&["default"]);
        let after = s(&["default", "billing"]);
        let p = check_listed(&before, &after, &s(&["default"]), &[], None).unwrap_err();
        assert_eq!(
            p,
            ListProblem::ScanAdded {
                added: s(&["billing"])
            }
        );
        assert!(p.message().contains("`billing`"), "{}", p.message());
        assert!(p.hint(None).contains("`ledgers = [...]`"));
        // Named in the inventory, or reported by the nodes (a fleet from before 1.4, whose
        // ledgers scan registers for the first time): accepted.
        assert_eq!(
            check_listed(
                &before,
                &after,
                &s(&["default"]),
                &[],
                Some(&s(&["billing"]))
            ),
            Ok(())
        );
        assert_eq!(
            check_listed(&[], &after, &s(&["billing", "default"]), &[], None),
            Ok(())
        );
    }

    #[test]
    fn scan_difference() {
        assert_eq!(added(&s(&["a"]), &s(&["a", "b"])), s(&["b"]));
        assert!(added(&s(&["a", "b"]), &s(&["b", "a"])).is_empty());
    }
}
