//! The plan is the program: for the offline Postgres and SQLite labs, the remote command lines
//! `fleetup check` lists for each step and host are exactly the ones the real run records in its
//! journal (with the run id put in for `@RUN_ID@`). HTTP probes through the SSH connection are
//! listed as `# GET ...` lines and are not shell commands; they are left out of the comparison.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;
#[path = "common/plan_match.rs"]
mod plan_match;

use fleetup::exit_code;
use fleetup::lab::{Driver, LabGuard};
use lab_fixture::{code, fleetup, json, release, spec, stderr, stdout};

fn same_commands(driver: Driver, nodes: usize, from: &str, to: &str) {
    let lab = LabGuard::up(&spec(driver, nodes, from)).expect("lab up");
    let new = release(&lab, to);
    let args =
        |cmd: &'static str| vec![cmd, "--to", to, "--binary", new.to_str().unwrap(), "--stop"];
    let mut check_args = args("check");
    check_args.extend(["--format", "json"]);
    let audit = fleetup(&lab.inventory_path(), &check_args);
    assert_eq!(code(&audit), exit_code::SUCCESS, "{}", stderr(&audit));
    let audit = json(&audit);
    let plan_id = audit["plan_id"].as_str().unwrap().to_string();

    let mut run_args = args("upgrade");
    run_args.extend(["--plan", &plan_id]);
    let out = fleetup(&lab.inventory_path(), &run_args);
    assert_eq!(
        code(&out),
        exit_code::SUCCESS,
        "{}\n{}",
        stdout(&out),
        stderr(&out)
    );
    plan_match::assert_journal_ran_the_plan(&lab, &audit);
}

#[test]
fn postgres_offline_check_lists_exactly_the_commands_the_run_records() {
    same_commands(Driver::Postgres, 3, "1.7.4", "1.8.2");
}

#[test]
fn sqlite_offline_check_lists_exactly_the_commands_the_run_records() {
    same_commands(Driver::Sqlite, 2, "1.6.1", "1.8.3");
}
