//! What an operator reads when something is wrong: stderr snapshots of seven kinds of failure (the unit tests of `preflight::drift` add an id no audit made and a changed fleet),
//! each `error:` once, its hints under it, and the documented exit code. Run from a scratch
//! directory with relative paths, so the snapshots hold no machine-specific path; clock
//! prefixes, run ids and durations are redacted.

use std::path::Path;
use std::process::Command;

use fleetup::exit_code;

/// `fleetup ARGS` in `dir`: (exit code, stderr from its first `error:` line, redacted).
fn run(dir: &Path, args: &[&str]) -> (i32, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_fleetup"))
        .args(args)
        .current_dir(dir)
        .env_remove("FLEETUP_INVENTORY")
        .env_remove("SSH_AUTH_SOCK")
        .env("NO_COLOR", "1")
        .output()
        .expect("run fleetup");
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    let from = err.find("error:").unwrap_or(0);
    (out.status.code().unwrap_or(-1), redact(&err[from..]))
}

/// Run ids and durations vary from run to run.
fn redact(text: &str) -> String {
    text.split_inclusive('\n')
        .map(|l| {
            l.split(' ')
                .map(|w| {
                    let id = w.trim_matches(|c: char| "`.,;:()".contains(c));
                    if fleetup::journal::valid_run_id(id) {
                        w.replace(id, "<RUN>")
                    } else if w.ends_with("ms") && w[..w.len() - 2].parse::<f64>().is_ok() {
                        "<DURATION>".to_string()
                    } else {
                        w.to_string()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect()
}

fn scratch() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write(
        "bracket.toml",
        "[ssh]\nuser = \"root\"\n[host]\nname = \"a\"\naddress = \"10.0.0.1\"\n",
    );
    write(
        "group.toml",
        "[groups.eu]\n[[host]]\nname = \"a\"\naddress = \"127.0.0.1\"\ngroups = [\"euro\"]\n",
    );
    // A host on a port nothing listens on (port 1 needs root to bind: nobody does here).
    write(
        "inventory.toml",
        "[groups.eu]\n[[host]]\nname = \"a\"\naddress = \"127.0.0.1\"\nport = 1\ngroups = [\"eu\"]\n\
         [host.ssh]\nconnect_timeout = \"2s\"\nknown_hosts = \"known_hosts\"\n\
         [host.ledger]\nenv_file = \"/etc/numary/env\"\n",
    );
    write("known_hosts", "");
    write("numary-1.8.2", "#!/bin/sh\necho 'Version: 1.8.2'\n");
    dir
}

#[test]
fn a_list_of_tables_written_with_one_bracket() {
    let dir = scratch();
    let (code, err) = run(dir.path(), &["-i", "bracket.toml", "inventory", "check"]);
    assert_eq!(code, exit_code::USAGE);
    assert_eq!(
        err,
        "error: `bracket.toml`:3:1: invalid type: map, expected a sequence\n  \
         hint: a list of tables takes two brackets: write `[[host]]` (one per host), not `[host]`\n"
    );
}

#[test]
fn a_misspelt_group_gets_did_you_mean() {
    let dir = scratch();
    let (code, err) = run(dir.path(), &["-i", "group.toml", "inventory", "check"]);
    assert_eq!(code, exit_code::USAGE);
    assert_eq!(
        err,
        "error: `group.toml`:5:11: host `a` lists group `euro`, which is not defined\n  \
         hint: did you mean `eu`?\n  \
         hint: declare it with a `[groups.euro]` table (it may be empty)\n"
    );
}

#[test]
fn a_limit_that_matches_nothing() {
    let dir = scratch();
    let (code, err) = run(dir.path(), &["--limit", "@us", "inventory", "list"]);
    assert_eq!(code, exit_code::NO_HOSTS);
    assert_eq!(
        err,
        "error: host pattern `@us` matches no host in the inventory\n  \
         hint: hosts: `a`\n  hint: groups with hosts: `eu`\n"
    );
}

#[test]
fn a_plan_id_that_is_not_one() {
    let dir = scratch();
    let base = [
        "upgrade",
        "--to",
        "1.8.2",
        "--binary",
        "numary-1.8.2",
        "--plan",
    ];
    let (code, err) = run(dir.path(), &[&base[..], &["abc"]].concat());
    assert_eq!(code, exit_code::USAGE);
    assert_eq!(
        err,
        "error: `abc` is not a plan id: give at least 12 of its hex digits (at most 64)\n  \
         hint: `fleetup check` prints the plan id; its first 12 digits are enough\n"
    );
}

#[test]
fn a_run_that_is_not_recorded() {
    let dir = scratch();
    let (code, err) = run(dir.path(), &["runs", "show", "2026"]);
    assert_eq!(code, exit_code::USAGE);
    assert_eq!(
        err,
        "error: no run `2026` in `./.fleetup/runs`\n  \
         hint: `fleetup runs list` shows the runs; `-i INVENTORY` or `--state-dir DIR` names another state dir\n"
    );
}

#[test]
fn exec_without_the_double_dash() {
    let dir = scratch();
    let (code, err) = run(dir.path(), &["exec", "uname", "-n"]);
    assert_eq!(code, exit_code::USAGE);
    assert_eq!(
        err,
        "error: unexpected argument 'uname' found\n\nUsage: fleetup exec [OPTIONS] [-- <CMD>...]\n\n\
         For more information, try '--help'.\n\
         hint: put the remote command after `--`: `fleetup exec -- uname -n`\n"
    );
}

#[test]
fn an_unreachable_host_is_named_once_with_its_hint() {
    let dir = scratch();
    let (code, err) = run(
        dir.path(),
        &[
            "upgrade",
            "--to",
            "1.8.2",
            "--binary",
            "numary-1.8.2",
            "--yes",
        ],
    );
    assert_eq!(code, exit_code::UNREACHABLE, "{err}");
    assert_eq!(
        err,
        "error: 1 host(s) could not be reached; nothing was changed:\n  \
         - host `a`: cannot connect to `127.0.0.1:1`: Connection refused (os error 111)\n    \
         hint: check that the host is up and that sshd listens on that address and port\n  \
         hint: every selected host must answer before an upgrade starts; fix them or leave them out with `--limit`\n"
    );
}
