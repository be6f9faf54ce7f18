//! The migrate step, with the new binary and exactly the service's environment: `storage list`,
//! `storage scan`, `storage list` (the difference shown), then `storage upgrade NAME` for each
//! listed ledger, each result line checked. Guards: only names `storage list` printed are passed
//! (the real binary creates a ledger on a typo), the inventory's ledgers must all be listed, and
//! an empty list while the fleet has ledgers means the wrong storage environment.

use std::sync::Arc;

use crate::exit_code;
use crate::node;
use crate::numary::{self, UpgradeOutcome};
use crate::plan::{Step, StepKind};
use crate::shell::validate_ledger_name;
use crate::ssh::Transport;

use super::ctx::{Shared, StepError};
use super::service::{self, notice};
use super::stage::release_binary;

/// Why the ledgers `storage list` printed must not be migrated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ListProblem {
    /// `No ledger found.` while the fleet is known to hold these ledgers.
    WrongEnvironment { known: Vec<String> },
    /// Ledgers the inventory names that `storage list` did not print.
    Missing {
        missing: Vec<String>,
        listed: Vec<String>,
    },
}

impl ListProblem {
    pub fn message(&self) -> String {
        let names = |l: &[String]| {
            l.iter()
                .map(|n| format!("`{n}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            ListProblem::WrongEnvironment { known } => format!(
                "`storage list` prints `No ledger found.` while the fleet has ledgers ({}): wrong storage environment",
                names(known)
            ),
            ListProblem::Missing { missing, listed } => format!(
                "the inventory names ledger(s) {} that `storage list` does not print (it prints {})",
                names(missing),
                if listed.is_empty() {
                    "none".to_string()
                } else {
                    names(listed)
                }
            ),
        }
    }

    pub fn hint(&self) -> &'static str {
        match self {
            ListProblem::WrongEnvironment { .. } => {
                "the storage commands run with the service's environment file (`ledger.env_file`): make it name the storage the service uses (NUMARY_STORAGE_DRIVER, NUMARY_STORAGE_DIR, the connection string)"
            }
            ListProblem::Missing { .. } => {
                "fix the ledger names in the inventory (`ledgers = [...]`); fleetup never passes a name `storage list` did not print, as `storage upgrade` would create it"
            }
        }
    }
}

/// Checks what `storage list` printed (after `scan`) against what the fleet is known to hold
/// (`known`: ledgers any node reported) and what the inventory names (`expected`).
pub fn check_listed(
    listed: &[String],
    known: &[String],
    expected: Option<&[String]>,
) -> Result<(), ListProblem> {
    if listed.is_empty() {
        let mut all: Vec<String> = known.to_vec();
        all.extend(expected.unwrap_or_default().iter().cloned());
        all.sort();
        all.dedup();
        if !all.is_empty() {
            return Err(ListProblem::WrongEnvironment { known: all });
        }
    }
    if let Some(expected) = expected {
        let missing: Vec<String> = expected
            .iter()
            .filter(|e| !listed.contains(e))
            .cloned()
            .collect();
        if !missing.is_empty() {
            return Err(ListProblem::Missing {
                missing,
                listed: listed.to_vec(),
            });
        }
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
    // One host after the other: on SQLite each node migrates its own files, and a failure must
    // stop the run before the next node is touched.
    for name in &step.hosts {
        one(sh, step, name).await?;
    }
    Ok(())
}

/// Right before the storage changes: every node of the run still stopped, API silent (a node
/// started behind fleetup's back since `confirm_stopped` would race the migration).
async fn recheck_stopped<T: Transport>(sh: &Shared<T>, step: &Step) -> Result<(), StepError> {
    let hosts: Vec<String> = sh
        .plan
        .steps
        .iter()
        .find(|s| s.kind == StepKind::ConfirmStopped)
        .map_or_else(|| step.hosts.clone(), |s| s.hosts.clone());
    for name in &hosts {
        let host = sh.host(name);
        let t = sh.session(name);
        let running = service::service_running(t, host).await;
        let api = service::api_answers(t, host).await;
        if running != Some(false) || api.is_some() {
            let op = sh.begin(step, name, None);
            let mut e = sh.error(
                step,
                name,
                format!(
                    "the node is no longer cleanly stopped ({}): refusing to migrate",
                    service::live_state(t, host).await
                ),
            );
            e.code = exit_code::BLOCKED;
            e.hints
                .push("something restarted it; stop it and run again".into());
            op.fail(&e.message);
            return Err(e);
        }
    }
    Ok(())
}

async fn one<T: Transport>(sh: &Shared<T>, step: &Step, name: &str) -> Result<(), StepError> {
    let host = sh.host(name);
    let binary = release_binary(host, &sh.plan.target);
    let numary = |args: &[&str]| node::numary(host, &binary, args);

    let list = |out: &crate::ssh::ExecOutput| {
        numary::parse_storage_list(&out.stdout_lossy())
            .map_err(|e| sh.error(step, name, e.to_string()))
    };
    let before = sh
        .run(
            step,
            name,
            &numary(&["storage", "list"]),
            "`storage list` failed",
            None,
        )
        .await?;
    let before = list(&before)?;
    let scan = sh
        .run(
            step,
            name,
            &numary(&["storage", "scan"]),
            "`storage scan` failed",
            None,
        )
        .await?;
    let report = numary::parse_storage_scan(&scan.stdout_lossy());
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
        e.stderr = Some(crate::redact::redact_conn_strings(&scan.stdout_lossy()));
        return Err(e);
    }
    let after = sh
        .run(
            step,
            name,
            &numary(&["storage", "list"]),
            "`storage list` failed",
            None,
        )
        .await?;
    let after = list(&after)?;
    let new = added(&before, &after);
    notice(
        sh,
        name,
        if new.is_empty() {
            format!(
                "`storage scan` registered no new ledger; `storage list` prints {} ledger(s): {}",
                after.len(),
                after.join(", ")
            )
        } else {
            format!(
                "`storage scan` registered {} ledger(s) `storage list` did not print before: {}",
                new.len(),
                new.join(", ")
            )
        },
    );

    let mut known: Vec<String> = sh.facts.values().flat_map(|f| f.ledgers.clone()).collect();
    known.sort();
    known.dedup();
    if let Err(problem) = check_listed(&after, &known, host.ledger.ledgers.as_deref()) {
        let op = sh.begin(step, name, None);
        let mut e = sh.error(step, name, problem.message());
        e.code = exit_code::BLOCKED;
        e.hints.push(problem.hint().to_string());
        op.fail(&e.message);
        return Err(e);
    }
    for ledger in &after {
        if let Err(err) = validate_ledger_name(ledger) {
            let op = sh.begin(step, name, None);
            let mut e = sh.error(step, name, format!("`storage list` printed {err}"));
            e.code = exit_code::BLOCKED;
            op.fail(&e.message);
            return Err(e);
        }
    }
    for ledger in &after {
        sh.change(|c| c.storage_touched = true);
        let out = sh
            .run(
                step,
                name,
                &numary(&["storage", "upgrade", ledger]),
                &format!("`storage upgrade {ledger}` failed"),
                None,
            )
            .await?;
        match numary::parse_storage_upgrade(&out.stdout_lossy(), ledger) {
            Ok(outcome) => {
                let word = match outcome {
                    UpgradeOutcome::Migrated => "migrated",
                    UpgradeOutcome::LeftInPlace => "left in place",
                };
                sh.change(|c| {
                    c.ledgers
                        .push((name.to_string(), ledger.clone(), word.to_string()))
                });
                notice(sh, name, format!("ledger `{ledger}`: {word}"));
            }
            Err(err) => {
                let mut e = sh.error(step, name, err.to_string());
                e.stderr = super::ctx::tail(&out.stdout_lossy());
                return Err(e);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    #[test]
    fn empty_list_with_known_ledgers_is_the_wrong_environment() {
        let p = check_listed(&[], &s(&["default"]), None).unwrap_err();
        assert_eq!(
            p,
            ListProblem::WrongEnvironment {
                known: s(&["default"])
            }
        );
        assert!(p.message().contains("No ledger found."), "{}", p.message());
        // The inventory's names count as known ledgers too.
        assert!(matches!(
            check_listed(&[], &[], Some(&s(&["payments"]))),
            Err(ListProblem::WrongEnvironment { .. })
        ));
        // A fleet with no ledger at all has nothing to migrate: not an error.
        assert_eq!(check_listed(&[], &[], None), Ok(()));
    }

    #[test]
    fn every_inventory_ledger_must_be_listed() {
        let listed = s(&["default", "payments"]);
        assert_eq!(check_listed(&listed, &[], Some(&s(&["payments"]))), Ok(()));
        let p = check_listed(&listed, &[], Some(&s(&["default", "paymnets"]))).unwrap_err();
        assert_eq!(
            p,
            ListProblem::Missing {
                missing: s(&["paymnets"]),
                listed: listed.clone()
            }
        );
        assert!(p.message().contains("`paymnets`"), "{}", p.message());
        // Ledgers listed but not in the inventory are migrated, not refused.
        assert_eq!(check_listed(&listed, &s(&["default"]), None), Ok(()));
    }

    #[test]
    fn scan_difference() {
        assert_eq!(added(&s(&["a"]), &s(&["a", "b"])), s(&["b"]));
        assert!(added(&s(&["a", "b"]), &s(&["b", "a"])).is_empty());
    }
}
