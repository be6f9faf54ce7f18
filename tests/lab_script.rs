//! The README's first command, `scripts/lab.sh`, as an operator runs it: the whole demo (its own
//! private PostgreSQL server, a 3-node lab, check, upgrade, status, runs), then the hints it
//! prints run as shown from the repository root, then `scripts/lab.sh down --purge` leaves no
//! process and no file behind: no sshd, no node server, no PostgreSQL.
//!
//! One stand-in: `cargo` on the script's PATH is a shell script that copies the fleetup and
//! simulator binaries this test suite already built into `$CARGO_TARGET_DIR/release` (a release
//! build takes about 12 minutes here, more than the whole suite may). Everything else is the
//! script, the real binaries, real sshd and a real PostgreSQL server it starts itself on a port
//! of its own (not the suite's).

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use fleetup::lab::{process, sshd};

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn text(out: &Output) -> String {
    format!(
        "exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A scratch directory under /tmp itself: the `postgres` user (the script runs PostgreSQL as it
/// when run as root) must be able to reach its data directory.
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let p = std::env::temp_dir().join(format!("fleetup-labsh-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        Scratch(p)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Writes the stand-in `cargo` into `dir`: it copies the built binaries where
/// `cargo build --release` would put them and fails on any other use.
fn stand_in_cargo(dir: &Path, sim: &Path) {
    let script = format!(
        r#"#!/bin/sh
# Stand-in for `cargo build --release --workspace` (see tests/lab_script.rs).
[ "$1 $2" = "build --release" ] || {{ echo "stand-in cargo: unexpected: $*" >&2; exit 2; }}
out="${{CARGO_TARGET_DIR:?}}/release"
mkdir -p "$out"
cp {fleetup} "$out/fleetup"
cp {sim} "$out/numary-sim"
echo "stand-in cargo: copied the test build into $out" >&2
"#,
        fleetup = env!("CARGO_BIN_EXE_fleetup"),
        sim = sim.display(),
    );
    let path = dir.join("cargo");
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn lab_sh(bin: &Path, target: &Path, pg_dir: &Path, pg_port: u16, args: &[&str]) -> Output {
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    Command::new(repo().join("scripts/lab.sh"))
        .args(args)
        .current_dir(repo())
        .env("PATH", path)
        .env("CARGO_TARGET_DIR", target)
        .env("FLEETUP_PG_DIR", pg_dir)
        .env("FLEETUP_PG_PORT", pg_port.to_string())
        .env_remove("FLEETUP_LAB_PG_URL")
        .env_remove("FLEETUP_LAB_DIR")
        .env_remove("FLEETUP_TEST_PG_URL")
        .env("NO_COLOR", "1")
        .output()
        .expect("run scripts/lab.sh")
}

/// The hint lines the script prints after "try:", each a command to run from the repository.
fn hints(stdout: &str) -> Vec<String> {
    stdout
        .lines()
        .skip_while(|l| !l.ends_with("try:"))
        .skip(1)
        .take_while(|l| l.starts_with("  "))
        .map(|l| l.trim().to_owned())
        .collect()
}

#[test]
fn lab_sh_demo_then_down_purge_leaves_nothing_behind() {
    let scratch = Scratch::new("demo");
    let bin = scratch.0.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    stand_in_cargo(&bin, &lab_fixture::sim());
    let target = scratch.0.join("target");
    let pg_dir = scratch.0.join("pg");
    let lab_dir = scratch.0.join("lab");
    let lab = lab_dir.to_str().unwrap();
    let port = sshd::free_port().unwrap();

    let demo = lab_sh(&bin, &target, &pg_dir, port, &["--dir", lab]);
    assert_eq!(demo.status.code(), Some(0), "demo: {}", text(&demo));
    let out = String::from_utf8_lossy(&demo.stdout).into_owned();
    // The nodes serve the target: read from the nodes, not from the script's output.
    let recorded = fleetup::lab::Lab::load(&lab_dir).expect("the lab's record");
    lab_fixture::assert_serving(&recorded, "1.8.2", "after scripts/lab.sh");
    assert!(
        !process::mentioning(&pg_dir.to_string_lossy()).is_empty(),
        "the demo runs its own PostgreSQL server in {}",
        pg_dir.display()
    );

    let shown = hints(&out);
    assert!(shown.len() >= 3, "hints: {shown:?}\n{}", text(&demo));
    for hint in &shown {
        let run = Command::new("sh")
            .arg("-c")
            .arg(hint)
            .current_dir(repo())
            .env("NO_COLOR", "1")
            .output()
            .unwrap();
        assert_eq!(run.status.code(), Some(0), "hint `{hint}`: {}", text(&run));
    }

    let down = lab_sh(
        &bin,
        &target,
        &pg_dir,
        port,
        &["down", "--dir", lab, "--purge"],
    );
    assert_eq!(down.status.code(), Some(0), "down: {}", text(&down));
    let left: Vec<(u32, String)> = process::mentioning(&scratch.0.to_string_lossy());
    assert!(left.is_empty(), "processes left behind: {left:?}");
    assert!(!lab_dir.exists(), "the lab directory is purged");
    assert!(!pg_dir.exists(), "the private PostgreSQL data is purged");
}
