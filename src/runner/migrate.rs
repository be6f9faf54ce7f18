//! The migrate step, with the new binary and exactly the service's environment: on every host
//! first `storage list`, `storage scan`, `storage list` (the difference shown) and the guards,
//! and only then `storage upgrade NAME` for each listed ledger, each result line checked. Guards:
//! only names `storage list` printed are passed (the real binary creates a ledger on a typo), the
//! inventory's ledgers must all be listed, and an empty list while the fleet has ledgers means
//! the wrong storage environment.

use std::sync::Arc;

use crate::exit_code;
use crate::node;
use crate::numary::{self, UpgradeOutcome};
use crate::plan::{Step, StepKind};
use crate::shell::validate_ledger_name;
use crate::ssh::Transport;

use super::ctx::{Checked, Shared, StepError, tail};
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
    // Every host's lists and guards before the first `storage upgrade` anywhere: a refusal on the
    // second SQLite node must not come after the first one migrated (nothing would be unchanged).
    let mut ledgers = Vec::new();
    for name in &step.hosts {
        ledgers.push(survey(sh, step, name).await?);
    }
    // One host after the other: on SQLite each node migrates its own files, and a failure must
    // stop the run before the next node is touched.
    for (name, ledgers) in step.hosts.iter().zip(ledgers) {
        migrate(sh, step, name, &ledgers).await?;
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

/// `storage list`, `scan`, `list` on `name` and the guards: the ledgers to migrate there.
async fn survey<T: Transport>(
    sh: &Shared<T>,
    step: &Step,
    name: &str,
) -> Result<Vec<String>, StepError> {
    let host = sh.host(name);
    let binary = release_binary(host, &sh.plan.target);
    let numary = |args: &[&str]| node::numary(host, &binary, args);
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
    sh.run_checked(step, name, &cmd, "`storage scan`", None, |out| {
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
                "`storage scan` added to `storage list`: {} (review them: scan registers any schema or file that looks like a ledger)",
                names(&new)
            )
        },
    );

    let mut known: Vec<String> = sh.facts.values().flat_map(|f| f.ledgers.clone()).collect();
    known.sort();
    known.dedup();
    let refuse = |message: String, hint: Option<&str>| {
        let op = sh.begin(step, name, None);
        let mut e = sh.error(step, name, message);
        e.code = exit_code::BLOCKED;
        e.hints.extend(hint.map(str::to_string));
        op.fail(&e.message);
        e
    };
    if let Err(problem) = check_listed(&after, &known, host.ledger.ledgers.as_deref()) {
        return Err(refuse(problem.message(), Some(problem.hint())));
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
    let host = sh.host(name);
    let binary = release_binary(host, &sh.plan.target);
    for ledger in ledgers {
        sh.change(|c| c.storage_touched = true);
        let cmd = node::numary(host, &binary, &["storage", "upgrade", ledger]);
        let label = format!("`storage upgrade {ledger}`");
        let word = sh
            .run_checked(
                step,
                name,
                &cmd,
                &label,
                None,
                |out| match numary::parse_storage_upgrade(&out.stdout_lossy(), ledger) {
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
                },
            )
            .await?;
        sh.change(|c| {
            c.ledgers
                .push((name.to_string(), ledger.clone(), word.to_string()))
        });
    }
    Ok(())
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
