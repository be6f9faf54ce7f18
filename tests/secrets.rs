//! No secret anywhere: a full offline upgrade of a 3-node PostgreSQL lab (real sshd, the
//! simulator as `numary`, a real database whose role has a password) with an encrypted SSH key
//! whose passphrase comes from `FLEETUP_KEY_PASSPHRASE`, at `-vvv`. Every byte of stdout and
//! stderr, of the journal, of every file the run left on the nodes and in the temp dir, and of
//! every process's command line sampled on the machine (the nodes' too: they run here) all
//! through the run, is searched for the database password and the passphrase.
//! Needs `FLEETUP_TEST_PG_URL`.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use fleetup::exit_code;
use fleetup::lab::{Driver, LabGuard};
use lab_fixture::{api_version, fleetup_cmd, pg_url, release, spec};

const PASSPHRASE: &str = "Correct-Horse-Passphrase-7731";

/// The password of the test server's URL (`scheme://user:PASSWORD@host...`).
fn password() -> String {
    let url = pg_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let userinfo = rest.split_once('@').map(|(u, _)| u).unwrap_or_default();
    let pw = userinfo.split_once(':').map(|(_, p)| p).unwrap_or_default();
    assert!(
        pw.len() >= 8,
        "the test server's role needs a password: {url}"
    );
    pw.to_owned()
}

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    for e in rd.flatten() {
        let p = e.path();
        match e.file_type() {
            Ok(t) if t.is_dir() => files_under(&p, out),
            Ok(t) if t.is_file() => out.push(p),
            _ => {}
        }
    }
}

fn holds(bytes: &[u8], secret: &str) -> bool {
    bytes.windows(secret.len()).any(|w| w == secret.as_bytes())
}

#[test]
fn a_full_upgrade_leaks_neither_the_database_password_nor_the_key_passphrase() {
    let password = password();
    let lab = LabGuard::up(&spec(Driver::Postgres, 3, "1.7.4")).expect("lab up");
    let new = release(&lab, "1.8.2");
    // An encrypted copy of the lab's client key.
    let key = lab.dir.join("client/id_encrypted");
    std::fs::copy(lab.client_key_path(), &key).unwrap();
    let st = Command::new("ssh-keygen")
        .args(["-q", "-p", "-P", "", "-N", PASSPHRASE, "-f"])
        .arg(&key)
        .status()
        .unwrap();
    assert!(st.success());
    let key_text = std::fs::read(&key).unwrap();

    // Sample every process's command line until the run ends.
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let done = done.clone();
        let secrets = [password.clone(), PASSPHRASE.to_owned()];
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            let mut samples = 0u32;
            while !done.load(Ordering::Relaxed) {
                for entry in std::fs::read_dir("/proc").unwrap().flatten() {
                    if let Ok(c) = std::fs::read(entry.path().join("cmdline"))
                        && secrets.iter().any(|s| holds(&c, s))
                    {
                        seen.push(String::from_utf8_lossy(&c).replace('\0', " "));
                    }
                }
                samples += 1;
                std::thread::sleep(Duration::from_millis(5));
            }
            (seen, samples)
        })
    };
    let out = fleetup_cmd(
        &lab.inventory_path(),
        &[
            "-vvv",
            "upgrade",
            "--to",
            "1.8.2",
            "--binary",
            new.to_str().unwrap(),
            "--stop",
            "--identity",
            key.to_str().unwrap(),
        ],
    )
    .env("FLEETUP_KEY_PASSPHRASE", PASSPHRASE)
    .stdin(Stdio::null())
    .output()
    .unwrap();
    done.store(true, Ordering::Relaxed);
    let (cmdlines, samples) = sampler.join().unwrap();
    let shown = || {
        format!(
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    };
    assert_eq!(out.status.code(), Some(exit_code::SUCCESS), "{}", shown());
    for n in &lab.nodes {
        assert_eq!(api_version(&lab, &n.name).as_deref(), Some("1.8.2"));
    }
    // The run really authenticated with the encrypted key at -vvv (so the passphrase was used).
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("id_encrypted"),
        "{}",
        shown()
    );
    assert!(samples > 20, "only {samples} samples of the process table");

    let secrets = [
        ("the database password", password.as_str()),
        ("the key passphrase", PASSPHRASE),
    ];
    for (what, s) in secrets {
        assert!(!holds(&out.stdout, s), "{what} on stdout:\n{}", shown());
        assert!(!holds(&out.stderr, s), "{what} on stderr:\n{}", shown());
    }
    assert_eq!(cmdlines, Vec::<String>::new(), "a secret on a command line");

    // Every file of the lab (the nodes' roots, backups, releases, locks, the journal) and every
    // fleetup temp file. The service's own env files hold the password by design (the
    // service reads it there), and the encrypted key is the key.
    let mut files = Vec::new();
    files_under(&lab.dir, &mut files);
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            if e.file_name()
                .to_string_lossy()
                .starts_with("fleetup-dblock")
            {
                files_under(&e.path(), &mut files);
            }
        }
    }
    let journals = files
        .iter()
        .filter(|p| p.to_string_lossy().contains("/.fleetup/runs/"))
        .count();
    assert!(journals >= 1, "no journal among {} files", files.len());
    let env_files: Vec<PathBuf> = lab.nodes.iter().map(|n| n.paths().env_file()).collect();
    for f in &files {
        let Ok(bytes) = std::fs::read(f) else {
            continue;
        };
        if f == &key || bytes == key_text {
            continue;
        }
        assert!(
            !holds(&bytes, PASSPHRASE),
            "the passphrase in `{}`",
            f.display()
        );
        if env_files.contains(f) || f.file_name().is_some_and(|n| n == "lab.json") {
            continue;
        }
        assert!(
            !holds(&bytes, &password),
            "the password in `{}`",
            f.display()
        );
    }
}
