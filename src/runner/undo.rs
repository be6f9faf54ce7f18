//! Undo after a failure, step by step in reverse order of what was applied, each only where it
//! is safe. Before any binary was switched, staged releases this run created are removed; while
//! no `storage upgrade` ran, the storage is as the backup holds it, so the backup is dropped and
//! the nodes this run stopped are started again on their old binary. Once a ledger may have been
//! migrated the backup is the way back: it is kept, and no node is started (an old binary must
//! not serve a migrated schema). The same rules judge one failed host the run leaves behind, by
//! what happened to its own storage ([`undo_host`]). The operator's hooks are never undone.

use std::time::Duration;

use crate::events::{Event, StepState};
use crate::plan::{Action, StepKind};
use crate::shell::quote;
use crate::ssh::{ExecOptions, Transport};

use super::ctx::{Changes, Shared, kind_name};
use super::service;

/// Undoes `applied` (`(kind, host)` in the order they were applied) in reverse, where safe for
/// the whole run: once any storage was touched or any binary switched, nothing is restarted.
pub async fn undo<T: Transport>(sh: &Shared<T>, applied: &[(StepKind, String)]) {
    let c = sh.changes();
    let (touched, switched) = (c.storage_touched, !c.switched.is_empty());
    undo_as(sh, applied, &c, touched, switched).await;
}

/// The own undo of `host`, which failed and is left behind while the run goes on: what it
/// applied, judged by its storage (touched, or a binary switched onto it, by any of its nodes).
pub async fn undo_host<T: Transport>(sh: &Shared<T>, applied: &[(StepKind, String)], host: &str) {
    let c = sh.changes();
    let on_storage: Vec<String> = sh
        .plan
        .storage_of(host)
        .map_or_else(|| vec![host.to_string()], |s| s.hosts.clone());
    let touched = c.touched_on.iter().any(|h| on_storage.contains(h));
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
    let restored = |host: &str, action: &str, ok: bool, detail: String| {
        sh.emit(Event::Restored {
            host: host.to_string(),
            action: action.to_string(),
            ok,
            detail,
        });
    };
    let undone = |kind: StepKind, host: &str, detail: &str| {
        let step = sh.plan.steps.iter().find(|s| s.kind == kind);
        sh.emit(Event::StepState {
            id: step.map_or_else(|| kind.to_string(), |s| s.id.clone()),
            step: step.map_or(0, |s| s.number),
            kind: kind_name(kind),
            host: host.to_string(),
            state: StepState::Undone,
            message: Some(detail.to_string()),
        });
    };
    // Once a binary was switched, the storage was migrated before it: nothing is undone.
    let mut seen: Vec<(StepKind, &str)> = Vec::new();
    for (kind, host) in applied.iter().rev() {
        if seen.contains(&(*kind, host.as_str())) {
            continue;
        }
        seen.push((*kind, host.as_str()));
        match kind {
            StepKind::Stage if !switched => {
                for (h, dir, created) in c.staged.iter().filter(|(h, _, _)| h == host) {
                    if !created {
                        continue;
                    }
                    let cmd = format!(
                        "d={}; rm -f \"$d/numary\" \"$d/numary.fleetup-part\" && rmdir \"$d\" 2>/dev/null; [ ! -e \"$d/numary\" ]",
                        quote(dir)
                    );
                    let r = sh.session(h).exec(&cmd, &opts).await;
                    let ok = matches!(&r, Ok(o) if o.status.success());
                    let detail = if ok {
                        format!("removed `{dir}`")
                    } else {
                        format!("could not remove `{dir}`")
                    };
                    if ok {
                        undone(*kind, h, &detail);
                    }
                    restored(h, "remove-staged-release", ok, detail);
                }
            }
            StepKind::Backup => {
                for (h, dir) in c.backups.iter().filter(|(h, _)| h == host) {
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
                    let r = sh
                        .session(h)
                        .exec(&format!("rm -rf -- {}", quote(dir)), &opts)
                        .await;
                    let ok = matches!(&r, Ok(o) if o.status.success());
                    let detail = if ok {
                        format!("removed `{dir}`: the storage was not touched")
                    } else {
                        format!("could not remove `{dir}`")
                    };
                    if ok {
                        undone(*kind, h, &detail);
                    }
                    restored(h, "remove-backup", ok, detail);
                }
            }
            StepKind::StopService if c.stopped.contains(host) => {
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
}
