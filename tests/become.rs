//! `become = "sudo"` and the systemd service manager on the practice lab (real sshd, the
//! simulator as `numary`).
//!
//! STAND-INS: the lab's nodes have no systemd and the test machine has no usable sudo (and the
//! tests run as root, whom a real sudo always lets through), so these tests install stand-in
//! `sudo`, `systemctl` and `journalctl` scripts in a `stand-ins/` dir of each node and put that
//! dir first on the node's PATH: each node's `sshd_config` gets a `SetEnv PATH=...` line
//! (prepended, so it wins) and its sshd is sent SIGHUP (it re-reads its config and keeps its
//! pid, which `lab down` stops). fleetup itself is unchanged: it runs `sudo`, `systemctl` and
//! `journalctl` by name, as on a real host.
//! - `sudo` behaves like `sudo -n` with NOPASSWD (refuses without `-n`, records each call to
//!   `sudo.log`, then runs the command with `STANDIN_SUDO=1` set), or, with a `sudo.mode` file
//!   saying `password`, like a sudo without NOPASSWD: `sudo: a password is required`, exit 1.
//! - `systemctl start|stop|is-active|show|is-enabled|disable numary.service` drives the node's
//!   own `numary-service` script and records each call (with whether it came through sudo) to
//!   `systemctl.log`.
//! - `journalctl -u numary.service -n N --no-pager` prints the last N lines of the node's
//!   server log, after one line holding terminal escape sequences (which fleetup must strip).

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use fleetup::exit_code;
use fleetup::lab::{Driver, Lab, LabGuard, LabNode};
use lab_fixture::{assert_serving, both, code, fleetup, release, spec};

fn stand_ins(node: &LabNode) -> PathBuf {
    node.root.parent().unwrap().join("stand-ins")
}

fn write_exec(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// Installs the stand-ins on every node (`sudo`: whether a `sudo` is installed at all) and
/// restarts each sshd in place with the stand-ins first on its sessions' PATH.
fn install_stand_ins(lab: &Lab, sudo: bool) {
    for node in &lab.nodes {
        let dir = stand_ins(node);
        std::fs::create_dir_all(&dir).unwrap();
        let d = dir.display();
        let service = node.paths().service_script();
        let log = node.paths().log_file();
        if sudo {
            write_exec(
                &dir.join("sudo"),
                &format!(
                    r#"#!/bin/sh
# stand-in sudo (fleetup tests): NOPASSWD, or wants a password when sudo.mode says so
[ "$1" = "-n" ] || {{ echo "sudo: stand-in: called without -n" >&2; exit 90; }}
shift
[ "$1" = "--" ] && shift
printf '%s\n' "-n -- $*" | tr '\n' ' ' >> "{d}/sudo.log"; echo >> "{d}/sudo.log"
if [ "$(cat "{d}/sudo.mode" 2>/dev/null)" = password ]; then
  echo "sudo: a password is required" >&2
  exit 1
fi
STANDIN_SUDO=1 exec "$@"
"#
                ),
            );
        }
        write_exec(
            &dir.join("systemctl"),
            &format!(
                r#"#!/bin/sh
# stand-in systemctl (fleetup tests): numary.service is the lab node's numary-service script
echo "$* sudo=${{STANDIN_SUDO:-0}}" >> "{d}/systemctl.log"
verb=$1; shift
for a in "$@"; do unit=$a; done
[ "$unit" = numary.service ] || {{ echo "Unit $unit not found." >&2; exit 5; }}
running() {{ {service} status >/dev/null 2>&1; }}
case $verb in
  start|stop) {service} "$verb" || {{ echo "Job for numary.service failed." >&2; exit 1; }} ;;
  is-active) if running; then echo active; else echo failed; exit 3; fi ;;
  show) if running; then printf 'loaded\nactive\n'; else printf 'loaded\ninactive\n'; fi ;;
  is-enabled) echo enabled ;;
  disable) ;;
  *) echo "stand-in systemctl: unknown verb $verb" >&2; exit 1 ;;
esac
"#,
                service = service.display(),
            ),
        );
        write_exec(
            &dir.join("journalctl"),
            &format!(
                r#"#!/bin/sh
# stand-in journalctl (fleetup tests): the node's server log as the unit's journal
n=10
while [ $# -gt 0 ]; do [ "$1" = -n ] && n=$2; shift; done
printf 'stand-in journal: \033[31mred\033[0m \033]0;title\007line\n'
tail -n "$n" {log} | sed 's/^/numary[1]: /'
"#,
                log = log.display(),
            ),
        );
        restart_sshd_with_path(node, &dir);
    }
}

/// Prepends `SetEnv PATH=DIR:...` to the node's sshd_config and has its sshd re-read it (SIGHUP:
/// same pid), then waits until it listens again.
fn restart_sshd_with_path(node: &LabNode, dir: &Path) {
    let config = node.sshd_dir.join("sshd_config");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(
        &config,
        format!(
            "SetEnv PATH={}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin\n{text}",
            dir.display()
        ),
    )
    .unwrap();
    let log = node.sshd_dir.join("sshd.log");
    let listening =
        || std::fs::read_to_string(&log).map_or(0, |t| t.matches("Server listening").count());
    let before = listening();
    let pid = i32::try_from(node.sshd_pid).unwrap();
    assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0, "HUP sshd");
    let deadline = Instant::now() + Duration::from_secs(15);
    while listening() <= before {
        assert!(
            Instant::now() < deadline,
            "sshd of {} did not restart",
            node.name
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The lab's inventory with the systemd manager for `numary.service` on every node and
/// `become` set in `[ledger]` (`None`: not set).
fn systemd_inventory(lab: &Lab, become_: Option<&str>) -> PathBuf {
    let text = std::fs::read_to_string(lab.inventory_path()).unwrap();
    let mut out = String::new();
    for line in text.lines() {
        if line.starts_with("service = ") {
            out.push_str("service = { manager = \"systemd\", unit = \"numary.service\" }\n");
        } else {
            out.push_str(line);
            out.push('\n');
            if line == "[ledger]"
                && let Some(b) = become_
            {
                out.push_str(&format!("become = \"{b}\"\n"));
            }
        }
    }
    let path = lab.dir.join("inventory-systemd.toml");
    std::fs::write(&path, out).unwrap();
    path
}

fn read(path: PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

fn all(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// A full offline upgrade (`--stop`) with `become = "sudo"` and a NOPASSWD sudo: the node ends
/// on the target, serving and healthy; every privileged step went through `sudo -n` (service
/// stop and start, the release dir, the switch, the backup, the migration, the lock), while the
/// service manager's reads (`show`, `is-active`) did not.
#[test]
fn become_sudo_runs_the_privileged_steps_through_sudo_n() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 1, "1.7.4")).expect("lab up");
    install_stand_ins(&lab, true);
    let inventory = systemd_inventory(&lab, Some("sudo"));
    let new = release(&lab, "1.8.2");

    let out = fleetup(
        &inventory,
        &[
            "upgrade",
            "--to",
            "1.8.2",
            "--binary",
            new.to_str().unwrap(),
            "--stop",
        ],
    );
    assert_eq!(code(&out), 0, "{}", both(&out));
    assert_serving(&lab, "1.8.2", "after a become = sudo upgrade");

    let node = &lab.nodes[0];
    let sudo = read(stand_ins(node).join("sudo.log"));
    let p = node.paths();
    let has = |what: &str, part: &str| {
        assert!(
            sudo.lines().any(|l| l.contains(part)),
            "{what}: no sudo call with `{part}` in:\n{sudo}"
        )
    };
    has("the probe", "id -u");
    has("the stop", "systemctl stop numary.service");
    has("the start", "systemctl start numary.service");
    has(
        "the release dir",
        &format!("mkdir -p {}", p.releases_dir().join("1.8.2").display()),
    );
    has("the switch", &p.binary().display().to_string());
    has("the backup", &p.backup_dir().display().to_string());
    has("the migration", "storage upgrade");
    has("the lock", ".fleetup.lock");
    assert!(
        sudo.lines().all(|l| l.starts_with("-n -- sh -c ")),
        "every call is `sudo -n -- sh -c`:\n{sudo}"
    );
    let systemctl = read(stand_ins(node).join("systemctl.log"));
    for (call, via_sudo) in [
        ("stop numary.service", true),
        ("start numary.service", true),
        ("is-active -- numary.service", false),
        (
            "show --property=LoadState,ActiveState --value -- numary.service",
            false,
        ),
    ] {
        let want = format!("{call} sudo={}", u8::from(via_sudo));
        assert!(
            systemctl.lines().any(|l| l == want),
            "no `{want}` in:\n{systemctl}"
        );
    }
}

/// A sudo that wants a password: `check` reports it as a `become` finding naming the host, with
/// the NOPASSWD hint, within the connect timeout and with a non-zero exit; `upgrade` refuses
/// before any change. A node without sudo at all gets its own finding. No file on any node
/// changes.
#[test]
fn a_sudo_that_wants_a_password_is_a_finding_before_any_change() {
    let mut s = spec(Driver::Sqlite, 2, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    install_stand_ins(&lab, true);
    std::fs::write(stand_ins(&lab.nodes[0]).join("sudo.mode"), "password").unwrap();
    // node-2 has no sudo.
    std::fs::remove_file(stand_ins(&lab.nodes[1]).join("sudo")).unwrap();
    let inventory = systemd_inventory(&lab, Some("sudo"));
    let new = release(&lab, "1.8.2");
    let before = lab.tree_digest().unwrap();
    let args = [
        "--to",
        "1.8.2",
        "--binary",
        new.to_str().unwrap(),
        "--connect-timeout",
        "5s",
    ];

    let started = Instant::now();
    let mut check = vec!["check"];
    check.extend(args);
    let out = fleetup(&inventory, &check);
    let took = started.elapsed();
    assert_ne!(code(&out), 0, "{}", both(&out));
    assert!(took < Duration::from_secs(20), "check took {took:?}");
    let text = all(&out);
    for part in [
        "sudo on `node-1` wants a password for",
        "fleetup runs `sudo -n`, which never asks for one",
        "NOPASSWD",
        "become = \"none\"",
        "`sudo` is not installed on `node-2`",
    ] {
        assert!(text.contains(part), "no `{part}` in:\n{}", both(&out));
    }
    assert_eq!(lab.tree_digest().unwrap(), before, "check changed a node");

    let mut upgrade = vec!["upgrade"];
    upgrade.extend(args);
    let out = fleetup(&inventory, &upgrade);
    assert_eq!(code(&out), exit_code::BLOCKED, "{}", both(&out));
    assert!(all(&out).contains("wants a password"), "{}", both(&out));
    assert_eq!(lab.tree_digest().unwrap(), before, "upgrade changed a node");
    let sudo = read(stand_ins(&lab.nodes[0]).join("sudo.log"));
    assert!(
        sudo.lines().all(|l| l.contains("id -u")),
        "only the probe asked sudo:\n{sudo}"
    );
    assert!(!lab.nodes[0].service_running() && !lab.nodes[1].service_running());
}

/// The systemd manager: a node that starts but never becomes healthy fails its health gate, and
/// the error carries the unit's last journal lines (escape sequences stripped) and a hint.
#[test]
fn a_failed_start_shows_the_units_journal() {
    let mut s = spec(Driver::Sqlite, 1, "1.7.4");
    s.start = false;
    let lab = LabGuard::up(&s).expect("lab up");
    install_stand_ins(&lab, false);
    let inventory = systemd_inventory(&lab, None);
    let new = release(&lab, "1.8.2");
    lab.set_fault("never-healthy", &["node-1"]).unwrap();

    let out = fleetup(
        &inventory,
        &[
            "upgrade",
            "--to",
            "1.8.2",
            "--binary",
            new.to_str().unwrap(),
            "--health-timeout",
            "3s",
        ],
    );
    lab.clear_fault("never-healthy").unwrap();
    assert_eq!(code(&out), exit_code::FAILURE, "{}", both(&out));
    let text = all(&out);
    for part in [
        "not healthy on `1.8.2` within 3s",
        "-- journalctl -u numary.service -n 50 --no-pager --",
        "stand-in journal: red line",
        "numary[1]: ",
        "read more with `journalctl -u numary.service --no-pager` on `node-1`",
    ] {
        assert!(text.contains(part), "no `{part}` in:\n{}", both(&out));
    }
    assert!(
        !text.contains('\u{1b}'),
        "an escape sequence got through:\n{text}"
    );
    let systemctl = read(stand_ins(&lab.nodes[0]).join("systemctl.log"));
    assert!(
        systemctl
            .lines()
            .any(|l| l == "start numary.service sudo=0"),
        "{systemctl}"
    );
    assert!(
        systemctl
            .lines()
            .any(|l| l == "is-active -- numary.service sudo=0"),
        "{systemctl}"
    );
}
