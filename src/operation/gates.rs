//! The gates between an audit and the first change: every host reachable, every preflight
//! check passed, the plan something this fleetup carries out, the binary the one audited; and
//! the locks a dead run left on nodes the plan does not touch.

use std::collections::BTreeMap;
use std::sync::Arc;

use anyhow::Context;
use sha2::{Digest, Sha256};

use super::{Connections, RunSettings};
use crate::events::{Event, EventSink, StepStatus};
use crate::inventory::ResolvedHost;
use crate::lock::{self, Liveness};
use crate::plan::{BinarySource, Plan, StepKind};
use crate::preflight::{Finding, check};
use crate::runner::kind_name;
use crate::ssh::{ExecOptions, Session};
use crate::{Failure, exit_code};

/// Every selected host must answer before an upgrade starts. The refusal names each host
/// once, with why and what to do under it (host-key problems first: they are all shown at
/// once, so one `--accept-new-host-keys` or one known_hosts fix settles them).
pub fn all_reachable(conns: &Connections) -> Result<(), Failure> {
    let mut failed: Vec<&crate::ssh::ConnectError> =
        conns.iter().filter_map(|(_, c)| c.as_ref().err()).collect();
    if failed.is_empty() {
        return Ok(());
    }
    failed.sort_by_key(|e| e.host_key().is_none());
    let mut list = String::new();
    for e in &failed {
        list.push_str(&format!("\n  - {e}"));
        for h in e.hints() {
            list.push_str(&format!("\n    hint: {h}"));
        }
    }
    Err(Failure::new(
        exit_code::UNREACHABLE,
        format!(
            "{} host(s) could not be reached; nothing was changed:{list}",
            failed.len()
        ),
    )
    .hint("every selected host must answer before an upgrade starts; fix them or leave them out with `--limit`"))
}

/// The plan's `preflight` step, per host, as started and finished events; then a failure
/// naming every failed finding (a held lock excepted when `lock_handled`: the engine breaks or
/// takes it over), or one for a plan this fleetup does not carry out.
pub fn preflight_passed(
    plan: &Plan,
    findings: &[Finding],
    lock_handled: bool,
    sink: &dyn EventSink,
) -> Result<(), Failure> {
    let failures: Vec<&Finding> = findings
        .iter()
        .filter(|f| !f.ok)
        .filter(|f| !(lock_handled && f.check == check::LOCK))
        .collect();
    preflight_events(plan, &failures, sink);
    if !failures.is_empty() {
        let code = if failures.iter().all(|f| f.check == check::LOCK) {
            exit_code::LOCK_HELD
        } else {
            exit_code::BLOCKED
        };
        let f = Failure::new(
            code,
            format!(
                "the preflight found {} problem(s); nothing was changed:\n{}",
                failures.len(),
                crate::preflight::render_failures(failures.iter().copied(), "  ").trim_end()
            ),
        );
        return Err(f);
    }
    // The preflight reports every blocker as a finding; should one ever slip through, the
    // plan still does not run.
    if plan.is_blocked() {
        let reasons: Vec<String> = plan.blockers.iter().map(|b| b.reason.clone()).collect();
        return Err(Failure::new(
            exit_code::BLOCKED,
            format!(
                "the plan is blocked; nothing was changed: {}",
                reasons.join("; ")
            ),
        ));
    }
    Ok(())
}

fn preflight_events(plan: &Plan, failures: &[&Finding], sink: &dyn EventSink) {
    let Some(step) = plan.steps.iter().find(|s| s.kind == StepKind::Preflight) else {
        return;
    };
    for host in &step.hosts {
        sink.emit(&Event::StepStarted {
            step: step.number,
            kind: kind_name(step.kind),
            host: host.clone(),
            command: None,
        });
        let mine: Vec<String> = failures
            .iter()
            .filter(|f| f.host.as_deref().is_none_or(|h| h == host))
            .map(|f| format!("{}: {}", f.check, f.detail))
            .collect();
        sink.emit(&Event::StepFinished {
            step: step.number,
            kind: kind_name(step.kind),
            host: host.clone(),
            status: if mine.is_empty() {
                StepStatus::Ok
            } else {
                StepStatus::Failed
            },
            exit_status: None,
            duration_ms: 0,
            stderr_tail: None,
            message: Some(if mine.is_empty() {
                "every check passed".into()
            } else {
                mine.join("; ")
            }),
            artefacts: vec![],
        });
    }
}

/// The bytes of each local binary the plan uploads (`--binary FILE`, and each hop's), read once
/// and checked against the checksum the plan (and so its id) holds, by checksum; a URL is
/// downloaded and checked by each node itself.
pub fn binaries(plan: &Plan) -> anyhow::Result<BTreeMap<String, Arc<Vec<u8>>>> {
    let mut out = BTreeMap::new();
    let sources = std::iter::once(&plan.binary).chain(plan.hops.iter().map(|h| &h.binary));
    for source in sources {
        if let BinarySource::File { sha256, .. } = source
            && !out.contains_key(sha256)
        {
            out.insert(sha256.clone(), binary(source)?);
        }
    }
    Ok(out)
}

/// The bytes of one local binary, checked against its checksum.
fn binary(source: &BinarySource) -> anyhow::Result<Arc<Vec<u8>>> {
    let BinarySource::File { path, sha256 } = source else {
        unreachable!("only files are read")
    };
    let data = std::fs::read(path)
        .with_context(|| format!("cannot read the binary `{}`", path.display()))?;
    let got = hex::encode(Sha256::digest(&data));
    if &got != sha256 {
        return Err(Failure::new(
            exit_code::BLOCKED,
            format!(
                "`{}` has sha256 `{got}`, expected `{sha256}`; nothing was changed",
                path.display()
            ),
        )
        .into());
    }
    Ok(Arc::new(data))
}

/// Locks left on `hosts` by another run (a dead one, typically): reported, and removed with
/// `--break-lock` (when [`lock::break_decision`] allows it) or `--resume` (its own run's).
/// Returns those that stay, as `` `host` by HOLDER ``.
pub async fn leftover_locks(
    sessions: &BTreeMap<String, Session>,
    hosts: &[&ResolvedHost],
    run: &RunSettings,
    sink: &dyn EventSink,
) -> Vec<String> {
    let mut left = Vec::new();
    let ttl = run.lease.ttl;
    let here = &run.owner.local_host;
    for h in hosts.iter().copied() {
        let Some(t) = sessions.get(&h.name) else {
            continue;
        };
        let Ok(out) = t
            .exec(&lock::read_command(h), &ExecOptions::default())
            .await
        else {
            continue;
        };
        if !out.status.success() {
            continue;
        }
        let held = lock::parse_held(&out.stdout_lossy());
        let shown = held.describe(ttl);
        sink.emit(&Event::Notice {
            host: Some(h.name.clone()),
            message: format!("the lock `{}` is held by {shown}", lock::lock_path(h)),
        });
        let owner = held.holder.owner();
        let ours = owner.is_some_and(|o| o.run_id == run.owner.run_id);
        let liveness = owner.map_or(Liveness::Unknown, |o| lock::liveness_here(o, here));
        let breakable = (run.break_lock
            && lock::break_decision(&held, here, liveness, ttl).is_ok())
            || (run.resumed && ours);
        if breakable && lock::break_lock(t, h, &held).await.is_ok() {
            sink.emit(&Event::LockBroken {
                host: h.name.clone(),
                holder: shown,
            });
        } else {
            left.push(format!("`{}` by {shown}", h.name));
        }
    }
    left
}
