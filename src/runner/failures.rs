//! The failure policy: when a host's failure in a step stops the run, and when it is contained
//! (the host is dropped from the rest of the run while the others go on). Containing is allowed
//! only within the budget (`--max-fail N|N%`, per batch and over the whole run) and only where
//! dropping the host endangers nobody else: a host alone on its storage; on a shared storage, a
//! failed start or health gate (its database was migrated before, so no migration is skipped or
//! repeated by accident); in a zero-downtime run, any step but the storage's backup and
//! migration and the migrator's steps before it (rolling: the table's zero-downtime row lets
//! its old release serve the migrated schema, so it goes back to it; replace: a failed new node
//! is stopped again and the old node it replaces keeps serving; but replace's `--stop` of a new
//! node comes before the migration and follows the shared-storage rule).
//!
//! The operator's hooks follow the step they surround. A `post_hook` comes after its batch's
//! health gate: as contained as the gate. A `pre_hook` fails before anything of its batch changed
//! the host, so leaving the host behind is safe wherever its storage's migration is not still to
//! come: a host alone on its storage, or the batches of `rolling` and `replace`, which follow the
//! one explicit migration (the host keeps serving its old binary on the migrated schema, as every
//! node not upgraded yet does in a zero-downtime run; a new node simply does not start), except
//! rolling's canary, which migrates after its pre hook. Offline, the pre hooks come before every
//! stop and the migration: a node left out there would meet a schema migrated under it, so on a
//! shared storage that failure stops the run.

use std::fmt;
use std::str::FromStr;

use crate::exit_code;
use crate::plan::{HostAction, Plan, StepKind, Strategy};

/// `--max-fail`: how many hosts may fail while the run goes on without them, as a count or a
/// share. It applies to each batch (a share of the batch's hosts) and to the whole run (a share
/// of every host the plan touches); a share is rounded down, as Ansible's
/// `max_fail_percentage`: `25%` of a batch of one tolerates no failure there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailBudget {
    Count(usize),
    /// 0 to 100.
    Percent(u8),
}

impl Default for FailBudget {
    fn default() -> Self {
        FailBudget::Count(0)
    }
}

impl FailBudget {
    /// The failures tolerated out of `total` hosts.
    pub fn of(self, total: usize) -> usize {
        match self {
            FailBudget::Count(n) => n,
            FailBudget::Percent(p) => total * usize::from(p) / 100,
        }
    }

    /// No failure is ever tolerated.
    pub fn is_zero(self) -> bool {
        matches!(self, FailBudget::Count(0) | FailBudget::Percent(0))
    }
}

impl FromStr for FailBudget {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.trim();
        if let Some(p) = s.strip_suffix('%') {
            return match p.parse::<u8>() {
                Ok(p @ 0..=100) => Ok(FailBudget::Percent(p)),
                _ => Err(format!(
                    "`{s}` is not a percentage from 0% to 100%: give a host count (`1`) or a share (`25%`)"
                )),
            };
        }
        s.parse::<usize>().map(FailBudget::Count).map_err(|_| {
            format!(
                "`{s}` is not a failure budget: give a host count (`0`, `1`) or a share (`25%`)"
            )
        })
    }
}

impl fmt::Display for FailBudget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FailBudget::Count(n) => write!(f, "{n}"),
            FailBudget::Percent(p) => write!(f, "{p}%"),
        }
    }
}

/// How many hosts may fail while the run goes on without them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FailurePolicy {
    /// 0: the first failure stops the run (and what is safe is undone).
    pub max_failed: FailBudget,
}

/// Which budget a failure spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetScope {
    /// The failures of one batch (1-based).
    Batch(usize),
    /// Every failure of the run.
    Run,
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
    /// The budget is spent: these hosts failed already (in that batch, or in the run), `max`
    /// of them were tolerated there.
    Budget {
        scope: BudgetScope,
        budget: FailBudget,
        max: usize,
        failed: Vec<String>,
    },
    /// A held lock or a cancellation is never a host's own problem.
    NotAHostFailure,
    /// Others still going share the host's storage, and the step comes before that storage
    /// was migrated (or is the switch onto it).
    SharedStorage { others: Vec<String> },
    /// Rolling: the backup or migration of the storage every node serves from.
    WholeStorage,
    /// Zero-downtime: a node of the canary batch failed.
    Canary,
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
            Uncontained::Budget {
                scope,
                budget,
                max,
                failed,
            } => {
                let already = if failed.is_empty() {
                    "none failed before".to_string()
                } else {
                    format!("{} failed before", names(failed))
                };
                let where_ = match scope {
                    BudgetScope::Batch(b) => format!("in batch {b}"),
                    BudgetScope::Run => "over the whole run".to_string(),
                };
                Some(format!(
                    "the failure budget tripped {where_}: `--max-fail {budget}` tolerates {max} failed host(s) there and {already}, so no new batch was started"
                ))
            }
            Uncontained::Canary => Some(format!(
                "`{host}` is in the canary batch: its failure stops the run before any other batch, whatever `--max-fail` tolerates"
            )),
            Uncontained::WholeStorage => Some(format!(
                "`--max-fail` cannot leave `{host}` behind: it backs up or migrates the storage every node serves from"
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
    if code == exit_code::CANCELLED || code == exit_code::LOCK_HELD {
        return Err(Uncontained::NotAHostFailure);
    }
    if policy.max_failed.is_zero() {
        return Err(Uncontained::NoPolicy);
    }
    let budget = policy.max_failed;
    let batch = plan.host(host).and_then(|h| h.batch);
    if let Some(b) = batch
        && let Some(hosts) = plan.batches.get(b - 1)
    {
        let max = budget.of(hosts.len());
        let there: Vec<String> = failed
            .iter()
            .filter(|f| hosts.contains(f))
            .cloned()
            .collect();
        if there.len() >= max {
            return Err(Uncontained::Budget {
                scope: BudgetScope::Batch(b),
                budget,
                max,
                failed: there,
            });
        }
    }
    let max = budget.of(plan.touched_hosts().len());
    if failed.len() >= max {
        return Err(Uncontained::Budget {
            scope: BudgetScope::Run,
            budget,
            max,
            failed: failed.to_vec(),
        });
    }
    if plan.strategy.is_zero_downtime() {
        // Every node serves from the one storage: its backup and migration are everyone's, and
        // so is the migrator until it migrated (its stage, its stop: without it the storage
        // would not be migrated before the first node runs the target). Any other step leaves
        // the node alone: rolling reverts it, replace stops a new node again (its old node
        // keeps serving) or leaves an old one as its decommission found it.
        let migrator = plan.migrators().contains(&host);
        let before_its_migration = migrator
            && match kind {
                StepKind::Stage | StepKind::StopService => true,
                // Rolling's canary migrates after its pre hook; replace's new migrator before it.
                StepKind::PreHook => {
                    plan.strategy == Strategy::Rolling
                        || plan
                            .host(host)
                            .is_none_or(|h| h.action != HostAction::Deploy)
                }
                _ => false,
            };
        match kind {
            StepKind::Backup | StepKind::Migrate => return Err(Uncontained::WholeStorage),
            _ if before_its_migration => return Err(Uncontained::WholeStorage),
            // The canary batch proves the release before any other node is touched: its
            // failure stops the run, whatever the budget.
            _ if batch == Some(1) && plan.batches.len() > 1 => return Err(Uncontained::Canary),
            // Replace stops only new nodes that run something (`--stop`), before the migration:
            // one left running would serve the migrated schema with a binary no table row
            // vouches for. The shared-storage rule below refuses it.
            StepKind::StopService if plan.strategy == Strategy::Replace => {}
            _ => return Ok(()),
        }
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
            canary: std::num::NonZeroUsize::MIN,
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
            hops: vec![],
            rollback: None,
        }
    }

    const BUDGET_1: FailurePolicy = FailurePolicy {
        max_failed: FailBudget::Count(1),
    };

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
                scope: BudgetScope::Run,
                budget: FailBudget::Count(1),
                max: 1,
                failed: vec!["a".into()]
            })
        );
    }

    #[test]
    fn a_shared_storage_contains_only_failures_after_its_migration() {
        let p = plan(&[&["a", "b", "c"]]);
        let budget = FailurePolicy {
            max_failed: FailBudget::Count(5),
        };
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

    /// A rolling plan on one storage with `batches`.
    fn rolling(batches: &[&[&str]]) -> Plan {
        let all: Vec<&str> = batches.iter().flat_map(|b| b.iter().copied()).collect();
        let mut p = plan(&[&all]);
        p.strategy = Strategy::Rolling;
        p.batches = batches
            .iter()
            .map(|b| b.iter().map(|h| h.to_string()).collect())
            .collect();
        p.hosts = batches
            .iter()
            .enumerate()
            .flat_map(|(i, b)| {
                b.iter().map(move |h| crate::plan::HostPlan {
                    name: h.to_string(),
                    current: None,
                    action: crate::plan::HostAction::Upgrade,
                    migrator: false,
                    storage: None,
                    replaces: None,
                    batch: Some(i + 1),
                    verdict: None,
                    blocked: vec![],
                })
            })
            .collect();
        p
    }

    #[test]
    fn budgets_apply_per_batch_and_over_the_run_and_say_which_tripped() {
        let p = rolling(&[&["a"], &["b", "c"], &["d", "e"]]);
        let policy = |s: &str| FailurePolicy {
            max_failed: s.parse().unwrap(),
        };
        // Rolling: a node of a batch may be left behind at any step but the storage's own.
        for kind in [
            StepKind::StopService,
            StepKind::Switch,
            StepKind::StartService,
            StepKind::HealthGate,
        ] {
            assert_eq!(containable(&p, policy("1"), kind, 1, "b", &[]), Ok(()));
        }
        assert_eq!(
            containable(&p, policy("1"), StepKind::Migrate, 1, "a", &[]),
            Err(Uncontained::WholeStorage)
        );
        // 50% of a batch of two is one host; of the run's five, two.
        assert_eq!(
            containable(
                &p,
                policy("50%"),
                StepKind::HealthGate,
                1,
                "c",
                &["b".into()]
            ),
            Err(Uncontained::Budget {
                scope: BudgetScope::Batch(2),
                budget: FailBudget::Percent(50),
                max: 1,
                failed: vec!["b".into()],
            })
        );
        assert_eq!(
            containable(
                &p,
                policy("50%"),
                StepKind::HealthGate,
                1,
                "d",
                &["b".into()]
            ),
            Ok(())
        );
        assert!(matches!(
            containable(
                &p,
                policy("50%"),
                StepKind::HealthGate,
                1,
                "e",
                &["b".into(), "d".into()]
            ),
            Err(Uncontained::Budget {
                scope: BudgetScope::Batch(3),
                ..
            })
        ));
        // Two tolerated per batch, two over the run: the run's budget trips first.
        assert!(matches!(
            containable(
                &p,
                policy("2"),
                StepKind::HealthGate,
                1,
                "e",
                &["b".into(), "d".into()]
            ),
            Err(Uncontained::Budget {
                scope: BudgetScope::Run,
                max: 2,
                ..
            })
        ));
        // 25% of a batch of one is none: rounded down, as Ansible does.
        assert!(matches!(
            containable(&p, policy("25%"), StepKind::HealthGate, 1, "a", &[]),
            Err(Uncontained::Budget {
                scope: BudgetScope::Batch(1),
                max: 0,
                ..
            })
        ));
        let hint = Uncontained::Budget {
            scope: BudgetScope::Batch(2),
            budget: FailBudget::Percent(50),
            max: 1,
            failed: vec!["b".into()],
        }
        .hint("c")
        .unwrap();
        assert!(
            hint.contains("in batch 2") && hint.contains("`--max-fail 50%`"),
            "{hint}"
        );
        for bad in ["-1", "101%", "x"] {
            assert!(bad.parse::<FailBudget>().unwrap_err().contains(bad));
        }
        assert!("0%".parse::<FailBudget>().unwrap().is_zero());
    }

    #[test]
    fn replace_leaves_a_failed_new_node_behind_but_never_the_migrator_before_it_migrated() {
        // new-1 migrates; old-1..2 are decommissioned after their replacements.
        let mut p = rolling(&[&["new-1"], &["new-2"]]);
        p.strategy = Strategy::Replace;
        p.storages[0]
            .hosts
            .extend(["old-1".to_string(), "old-2".to_string()]);
        for (i, h) in p.hosts.iter_mut().enumerate() {
            h.action = crate::plan::HostAction::Deploy;
            h.replaces = Some(format!("old-{}", i + 1));
        }
        for kind in [
            StepKind::Stage,
            StepKind::Switch,
            StepKind::StartService,
            StepKind::HealthGate,
        ] {
            assert_eq!(
                containable(&p, BUDGET_1, kind, 1, "new-2", &[]),
                Ok(()),
                "{kind}"
            );
        }
        // The canary batch stops the run, whatever the budget.
        for kind in [StepKind::StartService, StepKind::HealthGate] {
            assert_eq!(
                containable(&p, BUDGET_1, kind, 1, "new-1", &[]),
                Err(Uncontained::Canary)
            );
        }
        // An old node failing its decommission keeps serving the schema its row allows.
        assert_eq!(
            containable(&p, BUDGET_1, StepKind::Decommission, 1, "old-1", &[]),
            Ok(())
        );
        for kind in [StepKind::Stage, StepKind::Backup, StepKind::Migrate] {
            assert_eq!(
                containable(&p, BUDGET_1, kind, 1, "new-1", &[]),
                Err(Uncontained::WholeStorage),
                "{kind}"
            );
        }
    }

    #[test]
    fn a_hook_is_contained_like_the_step_it_surrounds() {
        let budget = FailurePolicy {
            max_failed: FailBudget::Count(5),
        };
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
            // (`b`: the migrator `a` is never left behind before its migration.)
            assert_eq!(
                containable(&p, budget, StepKind::PreHook, 1, "b", &[]),
                Ok(()),
                "{strategy}"
            );
            // The stop it precedes keeps its own rule: rolling leaves a node of its batch behind
            // (its old release may serve), replace does not.
            assert_eq!(
                containable(&p, budget, StepKind::StopService, 1, "b", &[]).is_ok(),
                strategy == Strategy::Rolling,
                "{strategy}"
            );
            assert_eq!(
                containable(&p, budget, StepKind::PreHook, 1, "a", &[]),
                Err(Uncontained::WholeStorage),
                "{strategy}: the migrator's pre hook"
            );
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
