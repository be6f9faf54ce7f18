//! The service's env file on a real one-node lab (real sshd, the simulator as `numary`): read
//! and parsed as systemd's `EnvironmentFile=` reads it, never run by a shell, and refused when
//! a shell would read a line differently, naming the file and the line.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use fleetup::exit_code;
use fleetup::lab::{Driver, LabGuard};
use lab_fixture::{both, code, fleetup, release, spec, stderr, stdout, upgrade_stop};

#[test]
fn an_env_file_with_shell_code_is_never_run_and_is_refused_naming_its_lines() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 1, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");
    let n = &lab.nodes[0];
    let env = n.paths().env_file();
    let before = std::fs::read_to_string(&env).unwrap();
    let lines_before = before.lines().count();
    let owned = lab.dir.join("owned-by-dollar-paren");
    let owned2 = lab.dir.join("owned-by-backticks");
    let hostile = format!(
        "{before}FLEETUP_X=$(touch {})\nFLEETUP_Y=`touch {}`\nexport FLEETUP_Z=1\n",
        owned.display(),
        owned2.display()
    );
    std::fs::write(&env, hostile).unwrap();
    let env_path = env.display().to_string();

    // status, check and upgrade read the file: none of them runs it.
    let status = fleetup(&lab.inventory_path(), &["status"]);
    let check = fleetup(
        &lab.inventory_path(),
        &["check", "--to", "1.8.2", "--binary", new.to_str().unwrap()],
    );
    let upgrade = upgrade_stop(&lab, &new, &[]);
    assert!(!owned.exists(), "`$(...)` in the env file ran");
    assert!(!owned2.exists(), "backticks in the env file ran");

    // status names the lines; check and upgrade refuse, naming file and lines.
    assert!(
        stdout(&status).contains(&format!("line {} `FLEETUP_X=$(touch", lines_before + 1)),
        "{}",
        both(&status)
    );
    for out in [&check, &upgrade] {
        assert_eq!(code(out), exit_code::BLOCKED, "{}", both(out));
        let text = format!("{}{}", stdout(out), stderr(out));
        for part in [
            env_path.as_str(),
            "reads differently to systemd",
            &format!("line {} `FLEETUP_X", lines_before + 1),
            &format!("line {} `FLEETUP_Y", lines_before + 2),
            &format!("line {} `export FLEETUP_Z=1`", lines_before + 3),
        ] {
            assert!(text.contains(part), "no `{part}` in:\n{}", both(out));
        }
    }
    // Nothing changed on the node.
    assert_eq!(n.installed_version().as_deref(), Some("1.7.4"));
    assert!(n.service_running());

    // Once the lines are written so both read them alike, the upgrade goes through and the
    // node serves the target with the storage the file names.
    std::fs::write(
        &env,
        format!("{before}FLEETUP_X='$(touch {})'\n", owned.display()),
    )
    .unwrap();
    let out = upgrade_stop(&lab, &new, &[]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(!owned.exists(), "a single-quoted `$(...)` ran");
    assert_eq!(
        lab_fixture::api_version(&lab, "node-1").as_deref(),
        Some("1.8.2")
    );
}
