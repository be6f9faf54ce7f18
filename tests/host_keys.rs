//! Host keys as OpenSSH checks them, through the real `fleetup` binary against real sshd
//! servers: host certificates made with `ssh-keygen -s` and verified against `@cert-authority`
//! entries (and refused when revoked, expired, for another principal or from an unknown CA),
//! the global known_hosts file and its `@revoked` lines, two processes accepting new keys into
//! one file at once, hashed files getting hashed entries, and `-vvv` showing the negotiation.
//! Every refusal is checked on the host too: the command never ran and sshd logged no login.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;
#[path = "common/sshd_fixture.rs"]
mod sshd_fixture;

use std::path::{Path, PathBuf};
use std::process::Output;

use fleetup::exit_code;
use fleetup::lab::{Driver, LabGuard};
use fleetup::shell::quote;
use lab_fixture::{both, code, fleetup, fleetup_cmd, spec, stderr};
use sshd_fixture::{Fixture, Server, user};

/// An inventory of `hosts` (name, port) on 127.0.0.1 with the fixture's key, the user file
/// `known_hosts` and the global files `global` (all relative to the fixture dir).
fn inventory(fx: &Fixture, hosts: &[(&str, u16)], known_hosts: &str, global: &[&str]) -> PathBuf {
    let globals: Vec<String> = global.iter().map(|g| format!("{g:?}")).collect();
    let mut text = format!(
        "[ssh]\nuser = {:?}\nidentity_files = [\"id_ed25519\"]\nknown_hosts = {known_hosts:?}\n\
         global_known_hosts = [{}]\nuse_agent = false\nconnect_timeout = \"10s\"\n",
        user(),
        globals.join(", ")
    );
    for (name, port) in hosts {
        text.push_str(&format!(
            "\n[[host]]\nname = {name:?}\naddress = \"127.0.0.1\"\n[host.ssh]\nport = {port}\n"
        ));
    }
    let path = fx.path("inventory.toml");
    std::fs::write(&path, text).unwrap();
    path
}

/// `fleetup [GLOBAL] exec [EXEC_FLAGS] -- touch MARKER` on every host (the hosts are this
/// machine).
fn touch(inv: &Path, marker: &Path, global: &[&str], exec_flags: &[&str]) -> Output {
    let cmd = format!("touch {}", quote(&marker.display().to_string()));
    let mut args: Vec<&str> = global.to_vec();
    args.push("exec");
    args.extend(exec_flags);
    args.extend(["--", cmd.as_str()]);
    fleetup(inv, &args)
}

/// stderr of `fleetup status`, which reports each refused host with its hints.
fn status_stderr(inv: &Path) -> String {
    stderr(&fleetup(inv, &["status"]))
}

/// The host refused before anything ran: exit code, no command, no login.
fn assert_refused(out: &Output, marker: &Path, server: &Server) {
    assert_eq!(code(out), exit_code::UNREACHABLE, "{}", both(out));
    assert!(!marker.exists(), "the command ran on a refused host");
    assert_eq!(server.accepted_logins(), 0, "no login on a refused host");
}

#[test]
fn a_host_certificate_from_a_trusted_ca_connects_and_a_revoked_one_is_refused() {
    let fx = Fixture::new();
    let ca = fx.ca("host_ca");
    let server = fx.server_with_cert("node", &ca, "127.0.0.1", "-5m:+1h");
    // Only the CA is trusted: no key of the host is recorded anywhere.
    let kh = fx.known_hosts("known_hosts", &[fx.ca_line("[127.0.0.1]:*", &ca)]);
    let inv = inventory(
        &fx,
        &[("node-1", server.port())],
        "known_hosts",
        &["global"],
    );
    let marker = fx.path("ran");
    let out = touch(&inv, &marker, &["-vvv"], &[]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(marker.exists(), "the command ran on the host");
    let err = stderr(&out);
    assert!(
        err.contains("node-1: host certificate `node-host-cert`")
            && err.contains(&format!("trusted at `{}:1`", kh.display())),
        "{err}"
    );
    assert!(
        err.contains("ssh-ed25519-cert-v01@openssh.com"),
        "certificates offered: {err}"
    );
    assert_eq!(
        std::fs::read_to_string(&kh).unwrap().lines().count(),
        1,
        "a certified host is never recorded as a plain key"
    );
    std::fs::remove_file(&marker).unwrap();
    let logins = server.accepted_logins();

    // The certified key revoked in the global file: refused, even though the CA vouches.
    let host_key = &server.sshd.host_key_lines[0];
    let global = fx.known_hosts("global", &[format!("@revoked * {host_key}")]);
    let out = touch(&inv, &marker, &[], &[]);
    assert_eq!(code(&out), exit_code::UNREACHABLE, "{}", both(&out));
    assert!(!marker.exists());
    assert_eq!(
        server.accepted_logins(),
        logins,
        "no login on a refused host"
    );
    let err = stderr(&out);
    assert!(
        err.contains("host `node-1`")
            && err.contains("presented a host certificate (`node-host-cert`")
            && err.contains(&format!("is marked @revoked at `{}:1`", global.display())),
        "{err}"
    );
    let err = status_stderr(&inv);
    assert!(
        err.contains("hint: the key was revoked on purpose"),
        "{err}"
    );

    // The CA itself revoked (in the user file this time).
    std::fs::remove_file(&global).unwrap();
    let ca_pub = fleetup::lab::keys::public_key_line(&ca).unwrap();
    fx.known_hosts(
        "known_hosts",
        &[
            fx.ca_line("[127.0.0.1]:*", &ca),
            format!("@revoked * {ca_pub}"),
        ],
    );
    let out = touch(&inv, &marker, &[], &[]);
    assert_eq!(code(&out), exit_code::UNREACHABLE, "{}", both(&out));
    assert!(!marker.exists());
    assert_eq!(server.accepted_logins(), logins);
    assert!(
        stderr(&out).contains(&format!(
            "refused: the CA key is marked @revoked at `{}:2`",
            kh.display()
        )),
        "{}",
        stderr(&out)
    );
}

#[test]
fn expired_wrong_principal_and_unknown_ca_certificates_are_refused_with_the_reason() {
    let fx = Fixture::new();
    let (ca, other_ca) = (fx.ca("host_ca"), fx.ca("other_ca"));
    let expired = fx.server_with_cert("expired", &ca, "127.0.0.1", "20200101:20200102");
    let elsewhere = fx.server_with_cert("elsewhere", &ca, "db.example,10.9.9.9", "-5m:+1h");
    let stranger = fx.server_with_cert("stranger", &other_ca, "127.0.0.1", "-5m:+1h");
    // The CA trusted through the global file.
    let global = fx.known_hosts("global", &[fx.ca_line("*", &ca)]);
    let inv = inventory(
        &fx,
        &[
            ("expired", expired.port()),
            ("elsewhere", elsewhere.port()),
            ("stranger", stranger.port()),
        ],
        "known_hosts",
        &["global"],
    );
    let marker = fx.path("ran");
    let out = touch(&inv, &marker, &[], &[]);
    let err = stderr(&out);
    for server in [&expired, &elsewhere, &stranger] {
        assert_refused(&out, &marker, server);
    }
    let trusted = format!("(trusted at `{}:1`)", global.display());
    let expired_line = err
        .lines()
        .find(|l| l.contains("host `expired`"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        expired_line.contains(&trusted)
            && expired_line.contains("refused: it expired at 2020-01-02T"),
        "{expired_line}"
    );
    let elsewhere_line = err
        .lines()
        .find(|l| l.contains("host `elsewhere`"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        elsewhere_line
            .contains("it is valid for `db.example`, `10.9.9.9` only, not for `127.0.0.1`"),
        "{elsewhere_line}"
    );
    let other_fp = sshd_fixture::fingerprint_of(
        &fleetup::lab::keys::public_key_line(&other_ca).unwrap(),
        fx.dir.path(),
    );
    let stranger_line = err
        .lines()
        .find(|l| l.contains("host `stranger`"))
        .unwrap_or_else(|| panic!("{err}"));
    assert!(
        stranger_line.contains(&format!("signed by CA `{other_fp}`"))
            && stranger_line.contains("no @cert-authority entry for this host trusts that CA"),
        "{stranger_line}"
    );
    let err = status_stderr(&inv);
    assert!(
        err.contains("hint: re-sign the host key on the CA"),
        "{err}"
    );
    assert!(err.contains("-n 127.0.0.1"), "{err}");
    assert!(
        err.contains("@cert-authority PATTERN CA_PUBLIC_KEY"),
        "{err}"
    );

    // A host whose certificate fails but whose plain key is recorded still connects, as with
    // OpenSSH (the plain key proves the host; the certificate adds nothing).
    let only_expired = inventory(
        &fx,
        &[("expired", expired.port())],
        "known_hosts",
        &["global"],
    );
    fx.known_hosts("known_hosts", &expired.known_hosts_lines()[..1]);
    let out = touch(&only_expired, &marker, &[], &[]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(marker.exists());
}

#[test]
fn the_global_known_hosts_file_counts_and_its_revoked_lines_win() {
    let fx = Fixture::new();
    let server = fx.server("node", &[], &[]);
    let ed25519 = &server.sshd.host_key_lines[0];
    // Known only through the global file (the user's file does not exist).
    fx.known_hosts("global", &server.known_hosts_lines());
    let inv = inventory(
        &fx,
        &[("node-1", server.port())],
        "known_hosts",
        &["global"],
    );
    let marker = fx.path("ran");
    let out = touch(&inv, &marker, &[], &[]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    assert!(marker.exists());
    assert!(!fx.path("known_hosts").exists(), "nothing is written");
    std::fs::remove_file(&marker).unwrap();
    let logins = server.accepted_logins();

    // Recorded in the user's file, revoked in the global one: refused.
    fx.known_hosts("known_hosts", &server.known_hosts_lines());
    let global = fx.known_hosts("global", &[format!("@revoked * {ed25519}")]);
    let out = touch(&inv, &marker, &[], &["--accept-new-host-keys"]);
    assert_eq!(code(&out), exit_code::UNREACHABLE, "{}", both(&out));
    assert!(!marker.exists());
    assert_eq!(server.accepted_logins(), logins);
    assert!(
        stderr(&out).contains(&format!("marked @revoked at `{}:1`", global.display())),
        "{}",
        stderr(&out)
    );

    // An unknown host names every file it was looked up in.
    std::fs::remove_file(fx.path("known_hosts")).unwrap();
    // A CA vouches for the host, which serves no certificate: refused, and the hint says so.
    let ca = fx.ca("host_ca");
    fx.known_hosts("global", &[fx.ca_line("*", &ca)]);
    let out = touch(&inv, &marker, &[], &[]);
    assert_eq!(code(&out), exit_code::UNREACHABLE, "{}", both(&out));
    assert!(!marker.exists());
    assert!(
        stderr(&out).contains(&format!("nor in `{}`", global.display())),
        "{}",
        stderr(&out)
    );
    let err = status_stderr(&inv);
    assert!(
        err.contains(&format!(
            "hint: `{}:1` trusts a certificate authority for this host, but the host presented \
             no certificate",
            global.display()
        )),
        "{err}"
    );
}

/// The known_hosts lines `ssh-keygen -F NAME -f FILE` finds (it exits 1 when there is none).
fn keygen_find(name: &str, file: &Path) -> Vec<String> {
    let out = std::process::Command::new("ssh-keygen")
        .args(["-F", name, "-f"])
        .arg(file)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(str::to_owned)
        .collect()
}

/// Every line of the file parses as a key (`ssh-keygen -l` lists each one).
fn assert_parseable(file: &Path, lines: usize) {
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listed = String::from_utf8_lossy(&out.stdout).lines().count();
    assert_eq!(listed, lines, "{}", std::fs::read_to_string(file).unwrap());
}

#[test]
fn two_processes_accepting_new_keys_at_once_record_each_host_exactly_once() {
    let fx = Fixture::new();
    let servers: Vec<Server> = (1..=5)
        .map(|i| fx.server(&format!("n{i}"), &[], &[]))
        .collect();
    let names: Vec<String> = (1..=5).map(|i| format!("node-{i}")).collect();
    let hosts: Vec<(&str, u16)> = names
        .iter()
        .zip(&servers)
        .map(|(n, s)| (n.as_str(), s.port()))
        .collect();
    let inv = inventory(&fx, &hosts, "ssh/known_hosts", &[]);
    let spawn = || {
        fleetup_cmd(&inv, &["exec", "--accept-new-host-keys", "--", "true"])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (a, b) = (spawn(), spawn());
    for out in [a.wait_with_output().unwrap(), b.wait_with_output().unwrap()] {
        assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    }
    let kh = fx.path("ssh/known_hosts");
    let text = std::fs::read_to_string(&kh).unwrap();
    for s in &servers {
        let name = format!("[127.0.0.1]:{}", s.port());
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with(&name)).collect();
        assert_eq!(lines, [s.known_hosts_lines()[0].as_str()], "{text}");
    }
    assert_parseable(&kh, servers.len());
    // Now strict: every host connects with what was recorded.
    let out = fleetup(&inv, &["exec", "--", "true"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
}

#[test]
fn a_hashed_known_hosts_file_gets_hashed_entries() {
    let fx = Fixture::new();
    let (a, b) = (fx.server("a", &[], &[]), fx.server("b", &[], &[]));
    let other = fx.server("other", &[], &[]);
    // An operator's hashed file: one host, hashed by ssh-keygen.
    let kh = fx.known_hosts("known_hosts", &other.known_hosts_lines()[..1]);
    let hashed = std::process::Command::new("ssh-keygen")
        .arg("-H")
        .arg("-f")
        .arg(&kh)
        .output()
        .unwrap();
    assert!(hashed.status.success());
    let inv = inventory(
        &fx,
        &[("node-a", a.port()), ("node-b", b.port())],
        "known_hosts",
        &[],
    );
    let out = fleetup(&inv, &["exec", "--accept-new-host-keys", "--", "true"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    let text = std::fs::read_to_string(&kh).unwrap();
    assert!(!text.contains("127.0.0.1"), "host names leaked: {text}");
    assert!(text.lines().all(|l| l.starts_with("|1|")), "{text}");
    for s in [&a, &b] {
        let found = keygen_find(&format!("[127.0.0.1]:{}", s.port()), &kh);
        assert_eq!(found.len(), 1, "{text}");
        assert!(found[0].ends_with(&s.sshd.host_key_lines[0]), "{found:?}");
    }
    assert_parseable(&kh, 3);
    let out = fleetup(&inv, &["exec", "--", "true"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
}

#[test]
fn vvv_status_shows_each_hosts_ssh_negotiation() {
    let lab = LabGuard::up(&spec(Driver::Sqlite, 2, "1.8.2")).expect("lab up");
    let out = fleetup(&lab.inventory_path(), &["-vvv", "status"]);
    assert_eq!(code(&out), exit_code::SUCCESS, "{}", both(&out));
    let err = stderr(&out);
    for node in &lab.nodes {
        let lines: Vec<&str> = err
            .lines()
            .filter(|l| l.starts_with(&format!("debug: ssh: {}: ", node.name)))
            .collect();
        let has = |needle: &str| lines.iter().any(|l| l.contains(needle));
        assert!(has("host key algorithms offered: ssh-ed25519"), "{err}");
        assert!(
            has(": kex curve25519-sha256, host key ssh-ed25519, cipher "),
            "{err}"
        );
        assert!(has("host key ssh-ed25519 `SHA256:"), "{err}");
        assert!(
            lines
                .iter()
                .any(|l| l.contains(": auth publickey `") && l.ends_with("`: accepted")),
            "{err}"
        );
    }
    // Without -vvv, none of it.
    let quiet = fleetup(&lab.inventory_path(), &["-vv", "status"]);
    assert!(
        !stderr(&quiet).contains("debug: ssh:"),
        "{}",
        stderr(&quiet)
    );
}
