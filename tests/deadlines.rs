//! Deadlines that tell the truth, on a real one-node SQLite lab (real sshd, the simulator as
//! `numary`): migrations get their own timeout (`--migration-timeout`, default 6 h) apart from
//! `command_timeout`, and when a deadline fires the host has ended the command before fleetup
//! reports it, so nothing of a timed-out migration still runs afterwards.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::time::{Duration, Instant};

use fleetup::exit_code;
use fleetup::lab::{Driver, LabGuard};
use lab_fixture::{api_version, both, code, release, spec, stderr, upgrade_stop};

/// `numary storage ...` processes of the simulator still alive on the machine, from this lab.
fn storage_commands(lab: &fleetup::lab::Lab) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmd = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmd.contains(" storage upgrade ") && cmd.contains(&*lab.dir.to_string_lossy()) {
            found.push(cmd);
        }
    }
    found
}

#[test]
fn a_migration_longer_than_the_command_timeout_runs_to_its_end() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 1, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");
    // Each ledger's migration takes 5 s; any other command gets 3 s.
    lab.set_fault_with("slow-migration", &[], &["5"]).unwrap();
    let out = upgrade_stop(&lab, &new, &["--command-timeout", "3s"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert_eq!(api_version(&lab, "node-1").as_deref(), Some("1.8.2"));
}

#[test]
fn a_migration_past_its_timeout_is_ended_by_the_host_before_fleetup_reports_it() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 1, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");
    lab.set_fault_with("slow-migration", &[], &["60"]).unwrap();
    let started = Instant::now();
    let out = upgrade_stop(&lab, &new, &["--migration-timeout", "2s"]);
    let took = started.elapsed();
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    let err = stderr(&out);
    assert!(
        err.contains("storage upgrade")
            && err.contains("did not finish within 2s")
            && err.contains("the host ended it"),
        "{}",
        both(&out)
    );
    // Reported after the host's TERM (2 s), well before the slow migration's 60 s would have
    // ended it (the whole run takes 15-30 s on a loaded 2-core machine), and the migration no
    // longer runs when fleetup says it failed.
    assert!(took < Duration::from_secs(55), "{took:?}\n{}", both(&out));
    assert_eq!(storage_commands(&lab), Vec::<String>::new());
    // The node is left as the report says: the old release, its service started again by the
    // undo of the stop, the migration's transaction not committed.
    assert_eq!(
        lab.nodes[0].installed_version().as_deref(),
        Some("1.7.4"),
        "{}",
        both(&out)
    );
}
