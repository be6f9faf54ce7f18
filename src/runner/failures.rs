//! The failure policy: when a host's failure in a step stops the run, and when it is contained
//! (the host is dropped from the rest of the run while the others go on). Containing is allowed
//! only within the budget (`--max-fail N`) and only where dropping the host endangers nobody
//! else: a host alone on its storage, or, on a shared storage, a failed start or health gate
//! (its database was migrated before, so no migration is skipped or repeated by accident).
//!
//! The operator's hooks follow the step they surround. A `post_hook` comes after its batch's
//! health gate: as contained as the gate. A `pre_hook` fails before anything of its batch changed
//! the host, so leaving the host behind is safe wherever its storage's migration is not still to
//! come: a host alone on its storage, or the batches of `rolling` and `replace`, which follow the
//! one explicit migration (the host keeps serving its old binary on the migrated schema, as every
//! node not upgraded yet does in a zero-downtime run; a new node simply does not start). Offline,
//! the pre hooks come before every stop and the migration: a node left out there would meet a
//! schema migrated under it, so on a shared storage that failure stops the run.

use crate::exit_code;
use crate::plan::{Plan, StepKind};

/// How many hosts may fail while the run goes on without them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailurePolicy {
    /// 0: the first failure stops the run (and what is safe is undone).
    pub max_failed: usize,
}

/// A host that failed a step: named in the report, left out of every later step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostFailure {
    pub host: String,
    pub step: usize,
    pub kind: StepKind,
    pub message: String,
    /// The run went on without it (within the budget); false for the failure that stopped it.
    pub contained: bool,
}

/// Why a failure stops the run instead of being contained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uncontained {
    /// `--max-fail 0`: today's policy, nothing to say.
    NoPolicy,
    /// The budget is spent: these hosts failed already.
    Budget { max: usize, failed: Vec<String> },
    /// A held lock or a cancellation is never a host's own problem.
    NotAHostFailure,
    /// Others still going share the host's storage, and the step comes before that storage
    /// was migrated (or is the switch onto it).
    SharedStorage { others: Vec<String> },
    /// The plan does not tell which storage the host is on.
    UnknownStorage,
}

impl Uncontained {
    /// The hint for the error that stopped the run; `None` when no budget was given.
    pub fn hint(&self, host: &str) -> Option<String> {
        let names = |v: &[String]| {
            v.iter()
                .map(|h| format!("`{h}`"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        match self {
            Uncontained::NoPolicy | Uncontained::NotAHostFailure => None,
            Uncontained::Budget { max, failed } => Some(format!(
                "`--max-fail {max}` was spent ({} failed already), so this failure stopped the run",
                names(failed)
            )),
            Uncontained::SharedStorage { others } => Some(format!(
                "`--max-fail` cannot leave `{host}` behind: it shares its storage with {}, still going, and the failure came before that storage was migrated and its nodes started (an old binary must not serve a migrated schema, and a migration must not be skipped or repeated)",
                names(others)
            )),
            Uncontained::UnknownStorage => Some(format!(
                "`--max-fail` cannot leave `{host}` behind: the plan does not tell which storage it is on"
            )),
        }
    }
}

/// Whether `host`'s failure (exit code `code`) in a step of `kind` may be contained, given the
/// hosts that failed (and were contained) before it.
pub fn containable(
    plan: &Plan,
    policy: FailurePolicy,
    kind: StepKind,
    code: i32,
    host: &str,
    failed: &[String],
) -> Result<(), Uncontained> {
    if policy.max_failed == 0 {
        return Err(Uncontained::NoPolicy);
    }
    if code == exit_code::CANCELLED || code == exit_code::LOCK_HELD {
        return Err(Uncontained::NotAHostFailure);
    }
    if failed.len() >= policy.max_failed {
        return Err(Uncontained::Budget {
            max: policy.max_failed,
            failed: failed.to_vec(),
        });
    }
    let storage = plan.storage_of(host).ok_or(Uncontained::UnknownStorage)?;
    let others: Vec<String> = storage
        .hosts
        .iter()
        .filter(|h| *h != host && !failed.contains(h))
        .cloned()
        .collect();
    // Start and health gate (and the post hook after it) come after the storage's migration and
    // its switch: the others serve the migrated schema on the new binary, the failed one is
    // simply not serving. A pre hook does too in the zero-downtime strategies, whose batches
    // follow the migration; offline's come before it.
    let after_migration = match kind {
        StepKind::StartService | StepKind::HealthGate | StepKind::PostHook => true,
        StepKind::PreHook => plan.strategy.is_zero_downtime(),
        _ => false,
    };
    if !others.is_empty() && !after_migration {
        return Err(Uncontained::SharedStorage { others });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{BinarySource, Mode, PlanStorage, Strategy};

    fn plan(storages: &[&[&str]]) -> Plan {
        Plan {
            target: crate::Version::new(1, 8, 2),
            strategy_requested: Strategy::Offline,
            strategy: Strategy::Offline,
            mode: Mode::MultiNode,
            serial: None,
            stop_running: false,
            backup: true,
            binary: BinarySource::File {
                path: "numary".into(),
                sha256: "ab".repeat(32),
            },
            migrator: None,
            storages: storages
                .iter()
                .map(|hosts| PlanStorage {
                    id: None,
                    driver: None,
                    hosts: hosts.iter().map(|h| h.to_string()).collect(),
                    migrator: hosts.first().map(|h| h.to_string()),
                })
                .collect(),
            batches: vec![],
            steps: vec![],
            hosts: vec![],
            blockers: vec![],
            warnings: vec![],
            rollback: None,
        }
    }

    const BUDGET_1: FailurePolicy = FailurePolicy { max_failed: 1 };

    #[test]
    fn no_budget_contains_nothing() {
        let p = plan(&[&["a"]]);
        let r = containable(
            &p,
            FailurePolicy::default(),
            StepKind::StartService,
            1,
            "a",
            &[],
        );
        assert_eq!(r, Err(Uncontained::NoPolicy));
    }

    #[test]
    fn a_host_alone_on_its_storage_is_contained_at_any_step_within_the_budget() {
        let p = plan(&[&["a"], &["b"]]);
        for kind in [
            StepKind::Backup,
            StepKind::Stage,
            StepKind::Migrate,
            StepKind::Switch,
        ] {
            assert_eq!(containable(&p, BUDGET_1, kind, 1, "a", &[]), Ok(()));
        }
        assert_eq!(
            containable(&p, BUDGET_1, StepKind::Stage, 1, "b", &["a".into()]),
            Err(Uncontained::Budget {
                max: 1,
                failed: vec!["a".into()]
            })
        );
    }

    #[test]
    fn a_shared_storage_contains_only_failures_after_its_migration() {
        let p = plan(&[&["a", "b", "c"]]);
        let budget = FailurePolicy { max_failed: 5 };
        for kind in [
            StepKind::StopService,
            StepKind::ConfirmStopped,
            StepKind::Backup,
            StepKind::Stage,
            StepKind::Migrate,
            StepKind::Switch,
        ] {
            assert!(
                matches!(
                    containable(&p, budget, kind, 1, "b", &[]),
                    Err(Uncontained::SharedStorage { ref others }) if others == &["a", "c"]
                ),
                "{kind}"
            );
        }
        for kind in [StepKind::StartService, StepKind::HealthGate] {
            assert_eq!(containable(&p, budget, kind, 1, "b", &[]), Ok(()), "{kind}");
        }
        // Once every other node of the storage failed, nobody is left to endanger.
        assert_eq!(
            containable(
                &p,
                budget,
                StepKind::Stage,
                1,
                "c",
                &["a".into(), "b".into()]
            ),
            Ok(())
        );
    }

    #[test]
    fn a_hook_is_contained_like_the_step_it_surrounds() {
        let budget = FailurePolicy { max_failed: 5 };
        let shared = plan(&[&["a", "b"]]);
        let alone = plan(&[&["a"], &["b"]]);
        // After the health gate: as contained as the gate, shared storage or not.
        assert_eq!(
            containable(&shared, budget, StepKind::PostHook, 1, "a", &[]),
            Ok(())
        );
        // Offline, before every stop and the migration: only a host alone on its storage.
        assert_eq!(
            containable(&alone, budget, StepKind::PreHook, 1, "a", &[]),
            Ok(())
        );
        assert!(matches!(
            containable(&shared, budget, StepKind::PreHook, 1, "a", &[]),
            Err(Uncontained::SharedStorage { ref others }) if others == &["b"]
        ));
        // Rolling and replace batches come after the storage's one migration.
        for strategy in [Strategy::Rolling, Strategy::Replace] {
            let mut p = plan(&[&["a", "b"]]);
            p.strategy = strategy;
            assert_eq!(
                containable(&p, budget, StepKind::PreHook, 1, "a", &[]),
                Ok(()),
                "{strategy}"
            );
            // The stop it precedes keeps its own rule.
            assert!(containable(&p, budget, StepKind::StopService, 1, "a", &[]).is_err());
        }
        // The budget still counts.
        assert!(matches!(
            containable(&alone, BUDGET_1, StepKind::PostHook, 1, "b", &["a".into()]),
            Err(Uncontained::Budget { .. })
        ));
    }

    #[test]
    fn a_held_lock_or_a_cancellation_always_stops_the_run() {
        let p = plan(&[&["a"]]);
        for code in [exit_code::LOCK_HELD, exit_code::CANCELLED] {
            assert_eq!(
                containable(&p, BUDGET_1, StepKind::Migrate, code, "a", &[]),
                Err(Uncontained::NotAHostFailure)
            );
        }
        assert_eq!(
            containable(&p, BUDGET_1, StepKind::Migrate, 1, "zz", &[]),
            Err(Uncontained::UnknownStorage)
        );
    }
}
