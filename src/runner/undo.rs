//! Undo after a failure, step by step in reverse order of what was applied, each only where it
//! is safe. Before any binary was switched, staged releases this run created are removed; while
//! no `storage upgrade` ran, the storage is as the backup holds it, so the backup is dropped and
//! the nodes this run stopped are started again on their old binary. Once a ledger may have been
//! migrated the backup is the way back: it is kept, and no node is started (an old binary must
//! not serve a migrated schema). The same rules judge one failed host the run leaves behind, by
//! what happened to its own storage ([`undo_host`]). The operator's hooks are never undone.
//!
//! A zero-downtime run is undone host by host instead ([`back_out`]). Rolling ([`revert`]): a
//! node that did not pass its health gate goes back to the release it ran and is started again,
//! since the table's zero-downtime row (which rolling requires) lets that release serve the
//! migrated schema; the nodes that passed keep serving the target, the others were never
//! touched. Replace: a new node that did not pass is stopped again (it never served the fleet,
//! and its old node, decommissioned only after it passed, still serves); an old node without a
//! replacement is reverted as in rolling; an old node is left as its decommission left it.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use crate::events::{Event, StepState};
use crate::plan::{Action, HostAction, ServiceParams, StepKind, Strategy};
use crate::shell::quote;
use crate::ssh::{ExecOptions, Transport};

use super::ctx::{Changes, Shared, kind_name};
use super::{service, switch};

/// Undoes `applied` (`(kind, host)` in the order they were applied) in reverse, where safe for
/// the whole run: once any storage was touched or any binary switched, nothing is restarted.
/// `strategy`: that of the step the run stopped at (a multi-hop plan's hops may differ).
pub async fn undo<T: Transport>(
    sh: &Shared<T>,
    applied: &[(StepKind, String)],
    strategy: Strategy,
) {
    if strategy.is_zero_downtime() {
        return undo_zero_downtime(sh, applied).await;
    }
    let c = sh.changes();
    let (touched, switched) = (c.storage_touched, !c.switched.is_empty());
    undo_as(sh, applied, &c, touched, switched).await;
}

/// The own undo of `host`, which failed and is left behind while the run goes on: what it
/// applied, judged by its storage (touched, or a binary switched onto it, by any of its nodes).
pub async fn undo_host<T: Transport>(
    sh: &Shared<T>,
    applied: &[(StepKind, String)],
    host: &str,
    strategy: Strategy,
) {
    if strategy.is_zero_downtime() {
        // A node that passed its health gate (a post hook failed after it) serves the target:
        // it is left out of the rest of the run as it is, not taken back.
        if sh.changes().healthy.iter().any(|h| h == host) {
            restored(
                sh,
                host,
                "keep-serving",
                true,
                "left serving the target: it passed its health gate before it failed".into(),
            );
            return;
        }
        return back_out(sh, host).await;
    }
    let c = sh.changes();
    let on_storage: Vec<String> = sh
        .plan
        .storage_of(host)
        .map_or_else(|| vec![host.to_string()], |s| s.hosts.clone());
    let touched = on_storage.iter().any(|h| c.touched_on.contains(h));
    let switched = c.switched.iter().any(|(h, _)| on_storage.contains(h));
    let mine: Vec<(StepKind, String)> =
        applied.iter().filter(|(_, h)| h == host).cloned().collect();
    undo_as(sh, &mine, &c, touched, switched).await;
}

/// `touched`: a `storage upgrade` may have changed the storage; `switched`: a binary points at
/// the new release (so the storage was migrated before it).
async fn undo_as<T: Transport>(
    sh: &Shared<T>,
    applied: &[(StepKind, String)],
    c: &Changes,
    touched: bool,
    switched: bool,
) {
    let opts = ExecOptions {
        timeout: Some(Duration::from_secs(60)),
        ..Default::default()
    };
    let restored =
        |host: &str, action: &str, ok: bool, detail: String| restored(sh, host, action, ok, detail);
    let undone = |kind: StepKind, host: &str, detail: &str| undone(sh, kind, host, detail);
    // Looked up per host: maps and sets, not the lists (each as long as the fleet).
    let mut staged: HashMap<&str, Vec<&(String, String, bool)>> = HashMap::new();
    for s in &c.staged {
        staged.entry(s.0.as_str()).or_default().push(s);
    }
    let mut backups: HashMap<&str, Vec<&(String, String)>> = HashMap::new();
    for b in &c.backups {
        backups.entry(b.0.as_str()).or_default().push(b);
    }
    let stopped: HashSet<&str> = c.stopped.iter().map(String::as_str).collect();
    // `(host, dir)` of each artefact dir removed: forgotten all at once at the end.
    let mut removed: Vec<(&str, &str)> = Vec::new();
    // Once a binary was switched, the storage was migrated before it: nothing is undone.
    let mut seen: HashSet<(&'static str, &str)> = HashSet::new();
    for (kind, host) in applied.iter().rev() {
        if !seen.insert((kind.as_str(), host.as_str())) {
            continue;
        }
        match kind {
            StepKind::Stage if !switched => {
                let mine = staged.get(host.as_str()).map_or(&[][..], Vec::as_slice);
                for (h, dir, created) in mine.iter().copied() {
                    if !created {
                        continue;
                    }
                    let cmd = format!(
                        "d={}; rm -f \"$d/numary\" \"$d/numary.fleetup-part\" && rmdir \"$d\" 2>/dev/null; [ ! -e \"$d/numary\" ]",
                        quote(dir)
                    );
                    // Under `releases_dir`: with the host's `become` privileges.
                    let cmd = sh.host(h).ledger.escalate.wrap(&cmd);
                    let r = sh.session(h).exec(&cmd, &opts).await;
                    let ok = matches!(&r, Ok(o) if o.status.success());
                    let detail = if ok {
                        format!("removed `{dir}`")
                    } else {
                        format!("could not remove `{dir}`")
                    };
                    if ok {
                        undone(*kind, h, &detail);
                        removed.push((h.as_str(), dir.as_str()));
                    }
                    restored(h, "remove-staged-release", ok, detail);
                }
            }
            StepKind::Backup => {
                let mine = backups.get(host.as_str()).map_or(&[][..], Vec::as_slice);
                for (h, dir) in mine.iter().copied() {
                    if touched || switched {
                        restored(
                            h,
                            "keep-backup",
                            true,
                            format!(
                                "kept `{dir}`: a ledger may already be migrated, restore from it to go back"
                            ),
                        );
                        continue;
                    }
                    let cmd = format!("rm -rf -- {}", quote(dir));
                    let r = sh
                        .session(h)
                        .exec(&sh.host(h).ledger.escalate.wrap(&cmd), &opts)
                        .await;
                    let ok = matches!(&r, Ok(o) if o.status.success());
                    let detail = if ok {
                        format!("removed `{dir}`: the storage was not touched")
                    } else {
                        format!("could not remove `{dir}`")
                    };
                    if ok {
                        undone(*kind, h, &detail);
                        removed.push((h.as_str(), dir.as_str()));
                    }
                    restored(h, "remove-backup", ok, detail);
                }
            }
            StepKind::StopService if stopped.contains(host.as_str()) => {
                if touched || switched {
                    restored(
                        host,
                        "leave-stopped",
                        true,
                        "left stopped: its old binary must not serve a storage that may be migrated"
                            .into(),
                    );
                    continue;
                }
                // The service as the stop step drove it.
                let stopped_by = sh
                    .plan
                    .steps
                    .iter()
                    .filter(|s| s.kind == StepKind::StopService)
                    .find_map(|s| s.params(host).and_then(Action::service));
                let Some(p) = stopped_by else {
                    restored(
                        host,
                        "restart",
                        false,
                        "the plan gives no service parameters to restart it with".into(),
                    );
                    continue;
                };
                match service::restart_old(sh, host, p).await {
                    Ok(detail) => {
                        undone(*kind, host, &detail);
                        restored(host, "restart", true, detail);
                    }
                    Err(detail) => restored(host, "restart", false, detail),
                }
            }
            // The operator's hooks are not undone: fleetup cannot know what would undo them
            // (a drained node is put back by the operator's `post_hook`, which runs only once
            // the node is healthy on the target). The report names the failed step.
            StepKind::PreHook | StepKind::PostHook => {}
            _ => {}
        }
    }
    forget_artefacts(sh, &removed);
}

/// The artefacts under each `(host, dir)` of `removed` are gone (the undo removed them): the
/// end report must not name them.
fn forget_artefacts<T: Transport>(sh: &Shared<T>, removed: &[(&str, &str)]) {
    if removed.is_empty() {
        return;
    }
    let mut dirs: HashMap<&str, Vec<(&str, String)>> = HashMap::new();
    for (host, dir) in removed {
        let under = format!("{}/", dir.trim_end_matches('/'));
        dirs.entry(host).or_default().push((dir, under));
    }
    sh.change(|c| {
        c.artefacts.retain(|a| {
            !dirs.get(a.host.as_str()).is_some_and(|ds| {
                ds.iter()
                    .any(|(dir, under)| a.path == *dir || a.path.starts_with(under.as_str()))
            })
        })
    });
}

fn restored<T: Transport>(sh: &Shared<T>, host: &str, action: &str, ok: bool, detail: String) {
    sh.emit(Event::Restored {
        host: host.to_string(),
        action: action.to_string(),
        ok,
        detail,
    });
}

/// The step of `kind` that names `host` (the first of that kind otherwise) marked undone there.
fn undone<T: Transport>(sh: &Shared<T>, kind: StepKind, host: &str, detail: &str) {
    let step = sh
        .step_naming(kind, host)
        .or_else(|| sh.plan.steps.iter().find(|s| s.kind == kind));
    sh.emit(Event::StepState {
        id: step.map_or_else(|| kind.to_string(), |s| s.id.clone()),
        step: step.map_or(0, |s| s.number),
        kind: kind_name(kind),
        host: host.to_string(),
        state: StepState::Undone,
        message: Some(detail.to_string()),
    });
}

/// A zero-downtime run that stopped: every host it changed that did not pass its health gate is
/// backed out ([`back_out`]), in the order they were changed; staged releases and the backup are
/// judged as in the offline undo (kept once a binary was switched or the storage migrated).
async fn undo_zero_downtime<T: Transport>(sh: &Shared<T>, applied: &[(StepKind, String)]) {
    let healthy: HashSet<String> = sh.changed(|c| c.healthy.iter().cloned().collect());
    let mut seen: HashSet<&str> = HashSet::new();
    let mut hosts: Vec<&str> = Vec::new();
    for (_, h) in applied {
        if !healthy.contains(h) && seen.insert(h) {
            hosts.push(h);
        }
    }
    for host in hosts {
        back_out(sh, host).await;
    }
    let artefacts: Vec<(StepKind, String)> = applied
        .iter()
        .filter(|(k, _)| matches!(k, StepKind::Stage | StepKind::Backup))
        .cloned()
        .collect();
    let c = sh.changes();
    let (touched, switched) = (c.storage_touched, !c.switched.is_empty());
    undo_as(sh, &artefacts, &c, touched, switched).await;
}

/// One host of a zero-downtime run that did not pass its health gate, by what the plan does
/// to it: a new node of a replacement stopped again ([`stop_new`]), a node upgraded in place
/// reverted ([`revert`]), an old node of a replacement left as it is (its decommission either
/// did not start, and it serves, or stopped it after its replacement served: the state report
/// says which).
async fn back_out<T: Transport>(sh: &Shared<T>, host: &str) {
    match sh.plan.host(host).map(|h| h.action) {
        Some(HostAction::Deploy) => stop_new(sh, host).await,
        Some(HostAction::Decommission) => {}
        _ => revert(sh, host).await,
    }
}

/// Replace: a new node that failed its start or health gate is stopped again. It never served
/// the fleet and the old node it replaces keeps serving (decommissioned only after it passed).
/// Its binary stays switched to the target (it had none before) and its staged release stays
/// (judged with the others), so `--resume` picks it up where it stopped.
async fn stop_new<T: Transport>(sh: &Shared<T>, host: &str) {
    if !sh.changed(|c| c.started.iter().any(|n| n == host)) {
        return;
    }
    let old = sh
        .plan
        .host(host)
        .and_then(|h| h.replaces.clone())
        .unwrap_or_default();
    match service::stop_outside_step(sh, host, &ServiceParams::of(sh.host(host))).await {
        Ok(()) => {
            let detail = format!(
                "stopped again: it never served the fleet; `{old}`, which it replaces, keeps serving"
            );
            undone(sh, StepKind::StartService, host, &detail);
            restored(sh, host, "stop-new-node", true, detail);
        }
        Err(e) => restored(
            sh,
            host,
            "stop-new-node",
            false,
            format!("could not stop it again ({e}): left as it is"),
        ),
    }
}

/// Rolling: `host` back to the release it ran before this run, serving again if this run
/// stopped it: its new server stopped, its binary switched back, its service started on the
/// old release. Where the table gives no zero-downtime row from its version (the plan would
/// not be rolling then), it is left stopped, said why.
pub async fn revert<T: Transport>(sh: &Shared<T>, host: &str) {
    let h = sh.host(host);
    let plan_host = sh.plan.host(host);
    // Read in place: a copy of the changes per host reverted would cost the fleet's size each.
    let (previous, started, stopped, switched) = sh.changed(|c| {
        (
            // The latest switch's previous target: in a multi-hop run, the release of the hop
            // before.
            c.switched
                .iter()
                .rev()
                .find(|(n, _)| n == host)
                .map(|(_, p)| p.clone()),
            c.started.iter().any(|n| n == host),
            c.stopped.iter().any(|n| n == host),
            c.switched.iter().any(|(n, _)| n == host),
        )
    });
    let previous = previous.or_else(|| {
        // Switched by the run this one resumes: the release of its version before.
        let current = plan_host.and_then(|p| p.current.as_ref())?;
        (current != &sh.plan.target).then(|| crate::plan::commands::release_binary(h, current))
    });
    if !(started || stopped || switched) {
        return;
    }
    // A multi-hop plan's hosts carry the first hop's verdict; a later hop the undo reverts is
    // zero-downtime by its own plan (which the table allowed for it).
    let may_serve = !sh.plan.hops.is_empty()
        || plan_host
            .and_then(|p| p.verdict.as_ref())
            .is_some_and(|v| v.supported && v.zero_downtime);
    if !may_serve {
        restored(
            sh,
            host,
            "leave-stopped",
            true,
            "left stopped: the table gives no zero-downtime row from its version, so its old release must not serve the migrated schema".into(),
        );
        return;
    }
    let p = ServiceParams::of(h);
    if started {
        match service::stop_outside_step(sh, host, &p).await {
            Ok(()) => {
                undone(
                    sh,
                    StepKind::StartService,
                    host,
                    "the new release's server stopped",
                );
            }
            Err(e) => {
                restored(
                    sh,
                    host,
                    "stop-new-release",
                    false,
                    format!("could not stop the new release's server ({e}): left as it is"),
                );
                return;
            }
        }
    }
    if switched || started {
        match previous.filter(|p| !p.is_empty()) {
            Some(release) => match switch::back_to(sh, host, &h.ledger.binary, &release).await {
                Ok(detail) => {
                    // What the report and a later rollback read: this node is back.
                    sh.change(|c| {
                        c.switched.retain(|(n, _)| n != host);
                        c.started.retain(|n| n != host);
                    });
                    undone(sh, StepKind::Switch, host, &detail);
                    restored(sh, host, "switch-back", true, detail);
                }
                Err(e) => {
                    restored(
                        sh,
                        host,
                        "switch-back",
                        false,
                        format!("left stopped: could not switch back ({e})"),
                    );
                    return;
                }
            },
            None => {
                restored(
                    sh,
                    host,
                    "switch-back",
                    false,
                    "left stopped: the release it ran before is not known".into(),
                );
                return;
            }
        }
    }
    // Started again only where this run stopped it: a node stopped before the run stays so.
    if stopped {
        match service::restart_old(sh, host, &p).await {
            Ok(detail) => {
                undone(sh, StepKind::StopService, host, &detail);
                restored(sh, host, "restart", true, detail);
            }
            Err(detail) => restored(sh, host, "restart", false, detail),
        }
    }
}
