//! Checks of the new binary on this machine: its SHA-256 against the plan's, and its version
//! when it runs here (the lab's release files are shell wrappers that do; a Linux binary on a
//! Mac does not, and is then verified on each node after staging).

use std::io::Read;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

use super::{Finding, PreflightInput, check};
use crate::numary;
use crate::plan::BinarySource;
use crate::version::Version;

/// How long `<binary> version` may take here.
const VERSION_TIMEOUT: Duration = Duration::from_secs(10);

/// What running `<binary> version` here gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LocalRun {
    /// It ran and printed this version.
    Version(Version),
    /// It does not run here (not executable, another platform's binary, timed out): it will be
    /// verified on each node after staging.
    NotRunnable(String),
    /// It ran but its output is not what `numary version` prints.
    Unexpected(String),
}

/// The version `<path> version` prints, when the file runs on this machine.
pub fn local_binary_version(path: &Path) -> Option<Version> {
    match run_local_version(path) {
        LocalRun::Version(v) => Some(v),
        _ => None,
    }
}

/// The only `PATH` the local `version` run gets.
const LOCAL_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs `<path> version` here, with a timeout, in a scratch dir that stands in for `$HOME` and
/// the storage dir (every `numary` command creates its storage dir), with an empty environment
/// but `PATH` ([`LOCAL_PATH`]) and those two: the file is not trusted yet (its checksum may be
/// all that vouches for it), so it gets nothing of the operator's: no `SSH_AUTH_SOCK`, no
/// `FLEETUP_KEY_PASSPHRASE`, no `NUMARY_*`, no `PG*`.
pub fn run_local_version(path: &Path) -> LocalRun {
    // The command runs in a scratch dir: a relative path would no longer name the file.
    let absolute = std::path::absolute(path);
    let path = absolute.as_deref().unwrap_or(path);
    let executable =
        std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if !executable {
        return LocalRun::NotRunnable(format!("`{}` is not executable here", path.display()));
    }
    let scratch = match Scratch::new() {
        Ok(d) => d,
        Err(e) => return LocalRun::NotRunnable(format!("no scratch dir: {e}")),
    };
    let mut cmd = Command::new(path);
    cmd.arg("version")
        .current_dir(scratch.path())
        .env_clear()
        .env("PATH", LOCAL_PATH)
        .env("HOME", scratch.path())
        .env("NUMARY_STORAGE_DIR", scratch.path().join("data"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            return LocalRun::NotRunnable(format!("`{}` does not run here: {e}", path.display()));
        }
    };
    let start = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if start.elapsed() < VERSION_TIMEOUT => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Ok(None) | Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                return LocalRun::NotRunnable(format!(
                    "`{} version` did not finish within {}s",
                    path.display(),
                    VERSION_TIMEOUT.as_secs()
                ));
            }
        }
    };
    let mut stdout = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = out.read_to_string(&mut stdout);
    }
    if !status.success() {
        // An exec format error of another platform's binary shows up as a shell's 126/127.
        return LocalRun::NotRunnable(format!("`{} version` exited with {status}", path.display()));
    }
    match numary::parse_version(&stdout) {
        Ok(v) => LocalRun::Version(v),
        Err(e) => LocalRun::Unexpected(e.to_string()),
    }
}

/// A private dir under the system temp dir, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new() -> std::io::Result<Scratch> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let dir =
            std::env::temp_dir().join(format!("fleetup-version-{}-{nanos}", std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(&dir)
            .map(|()| Scratch(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Hex SHA-256 of a local file.
pub fn file_sha256(path: &Path) -> std::io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The binary's checksum and version, fleet-wide findings.
pub(super) fn binary_findings(input: &PreflightInput) -> Vec<Finding> {
    let target = &input.plan.target;
    let mut out = Vec::new();
    match input.binary {
        BinarySource::File { path, sha256 } => {
            match file_sha256(path) {
                Ok(actual) if actual.eq_ignore_ascii_case(sha256) => out.push(Finding::pass(
                    None,
                    check::BINARY_SHA256,
                    format!("`{}` has SHA-256 `{actual}`", path.display()),
                )),
                Ok(actual) => out.push(Finding::fail(
                    None,
                    check::BINARY_SHA256,
                    format!(
                        "`{}` has SHA-256 `{actual}`, not the expected `{sha256}`",
                        path.display()
                    ),
                    Some("check that the file is the release you meant, and the checksum you passed with `--sha256`".to_owned()),
                )),
                Err(e) => out.push(Finding::fail(
                    None,
                    check::BINARY_SHA256,
                    format!("cannot read `{}`: {e}", path.display()),
                    None,
                )),
            }
            out.push(version_finding(
                path,
                target,
                input.local_binary_version.as_ref(),
            ));
        }
        BinarySource::Url { url, sha256 } => {
            out.push(Finding::pass(
                None,
                check::BINARY_SHA256,
                format!("`{url}` is downloaded by each node and must have SHA-256 `{sha256}`: verified there"),
            ));
            out.push(Finding::pass(
                None,
                check::BINARY_VERSION,
                format!("`{url}`: its `numary version` is verified on each node after staging (must print `{target}`)"),
            ));
        }
    }
    out
}

fn version_finding(path: &Path, target: &Version, local: Option<&Version>) -> Finding {
    let verify_later = |why: String| {
        Finding::pass(
            None,
            check::BINARY_VERSION,
            format!(
                "{why}: its `numary version` is verified on each node after staging (must print `{target}`)"
            ),
        )
    };
    let run = match local {
        Some(v) => LocalRun::Version(v.clone()),
        None => run_local_version(path),
    };
    match run {
        LocalRun::Version(v) if &v == target => Finding::pass(
            None,
            check::BINARY_VERSION,
            format!("`{}` prints version `{v}` here", path.display()),
        ),
        LocalRun::Version(v) => Finding::fail(
            None,
            check::BINARY_VERSION,
            format!(
                "`{}` prints version `{v}`, not the target `{target}`",
                path.display()
            ),
            Some(format!(
                "pass the release of `{target}`, or `--to {v}` if that is the version you meant"
            )),
        ),
        LocalRun::NotRunnable(why) => verify_later(why),
        LocalRun::Unexpected(why) => Finding::fail(
            None,
            check::BINARY_VERSION,
            format!("`{}` ran here but {why}", path.display()),
            Some("pass a release build of `numary` (a source build prints `develop`)".to_owned()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_run_gets_only_path_home_and_a_storage_dir_in_its_scratch_dir() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let bin = dir.path().join("numary");
        // A stand-in that records its environment and working dir, then answers as 1.8.2.
        std::fs::write(
            &bin,
            format!(
                "#!/bin/sh\nenv > '{s}.env'\npwd > '{s}.pwd'\necho 'Version: 1.8.2'\n",
                s = seen.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        assert_eq!(
            run_local_version(&bin),
            LocalRun::Version(Version::new(1, 8, 2))
        );
        let env = std::fs::read_to_string(seen.with_extension("env")).unwrap();
        let pwd = std::fs::read_to_string(seen.with_extension("pwd")).unwrap();
        let keys: Vec<&str> = env
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, _)| k)
            .collect();
        // `sh` itself adds PWD (and some add SHLVL, `_`); the test process has many more
        // (CARGO_*, HOME, maybe SSH_AUTH_SOCK): none of them may show.
        for k in &keys {
            assert!(
                [
                    "PATH",
                    "HOME",
                    "NUMARY_STORAGE_DIR",
                    "PWD",
                    "SHLVL",
                    "_",
                    "OLDPWD"
                ]
                .contains(k),
                "`{k}` reached the local binary:\n{env}"
            );
        }
        assert!(env.contains(&format!("PATH={LOCAL_PATH}\n")), "{env}");
        let scratch = pwd.trim();
        assert!(env.contains(&format!("HOME={scratch}\n")), "{env}");
        assert!(
            env.contains(&format!("NUMARY_STORAGE_DIR={scratch}/data\n")),
            "{env}"
        );
        assert!(
            !Path::new(scratch).exists(),
            "the scratch dir `{scratch}` is left behind"
        );
    }
}
