//! SSH key files for the lab and the tests, made by the system's `ssh-keygen` so they are exactly
//! what an operator's own tooling would produce (OpenSSH format, bcrypt-encrypted when a
//! passphrase is given).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::error::Failure;
use crate::exit_code;

/// The kind of key to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Ed25519,
    /// RSA with this many bits (2048 or more).
    Rsa(u32),
}

/// `ssh-keygen`, or a [`Failure`] that says how to install it.
pub fn find_ssh_keygen() -> anyhow::Result<PathBuf> {
    find_tool("ssh-keygen", "openssh-client")
}

/// A program from the OpenSSH suite, searched in `PATH` and the usual system dirs.
pub(crate) fn find_tool(name: &str, package: &str) -> anyhow::Result<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for d in [
        "/usr/bin",
        "/usr/sbin",
        "/bin",
        "/sbin",
        "/usr/local/bin",
        "/usr/local/sbin",
    ] {
        dirs.push(PathBuf::from(d));
    }
    dirs.into_iter()
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Failure::new(exit_code::FAILURE, format!("`{name}` is not installed"))
                .hint(format!("install it, e.g. `apt-get install {package}`"))
                .into()
        })
}

/// Writes a new private key to `path` and its public half to `path.pub`. Refuses to overwrite an
/// existing file (`ssh-keygen` would ask on a terminal).
///
/// The passphrase is passed on `ssh-keygen`'s command line, which is fine for lab and test keys
/// but not for keys that guard anything real.
pub fn generate_key(
    path: &Path,
    kind: KeyKind,
    passphrase: Option<&str>,
    comment: &str,
) -> anyhow::Result<()> {
    if path.exists() {
        bail!("key file `{}` already exists", path.display());
    }
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("cannot create dir `{}`", parent.display()))?;
    }
    let mut cmd = Command::new(find_ssh_keygen()?);
    cmd.arg("-q");
    match kind {
        KeyKind::Ed25519 => cmd.args(["-t", "ed25519"]),
        KeyKind::Rsa(bits) => cmd.args(["-t", "rsa", "-b", &bits.to_string()]),
    };
    cmd.args(["-N", passphrase.unwrap_or(""), "-C", comment])
        .arg("-f")
        .arg(path);
    run(&mut cmd).with_context(|| format!("cannot generate key `{}`", path.display()))
}

/// The public key line (`ssh-ed25519 AAAA... comment`) of a private key or `.pub` file. Reads
/// `KEY.pub` when it exists; otherwise derives it with `ssh-keygen -y` (unencrypted keys only).
pub fn public_key_line(private_or_pub_path: &Path) -> anyhow::Result<String> {
    let p = private_or_pub_path;
    let pub_path = if p.extension().is_some_and(|e| e == "pub") {
        p.to_path_buf()
    } else {
        let mut s = p.as_os_str().to_owned();
        s.push(".pub");
        PathBuf::from(s)
    };
    if pub_path.is_file() {
        let text = std::fs::read_to_string(&pub_path)
            .with_context(|| format!("cannot read `{}`", pub_path.display()))?;
        return first_key_line(&text)
            .with_context(|| format!("`{}` holds no public key", pub_path.display()));
    }
    let mut cmd = Command::new(find_ssh_keygen()?);
    cmd.args(["-y", "-P", ""]).arg("-f").arg(p);
    let out = output(&mut cmd)
        .with_context(|| format!("cannot derive the public key of `{}`", p.display()))?;
    first_key_line(&out)
        .with_context(|| format!("`ssh-keygen -y` printed no key for `{}`", p.display()))
}

fn first_key_line(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty() && !l.starts_with('#'))
        .map(str::to_owned)
}

fn run(cmd: &mut Command) -> anyhow::Result<()> {
    output(cmd).map(|_| ())
}

/// Runs a tool with no stdin (so it can never wait on a prompt) and returns its stdout.
pub(crate) fn output(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run `{}`", cmd.get_program().to_string_lossy()))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            cmd.get_program().to_string_lossy(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generates_ed25519_and_reads_its_public_line() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("sub/id_ed25519");
        generate_key(&key, KeyKind::Ed25519, None, "lab@fleetup").unwrap();
        let line = public_key_line(&key).unwrap();
        assert!(line.starts_with("ssh-ed25519 AAAA"), "{line}");
        assert!(line.ends_with(" lab@fleetup"), "{line}");
        std::fs::remove_file(dir.path().join("sub/id_ed25519.pub")).unwrap();
        let derived = public_key_line(&key).unwrap();
        assert_eq!(derived.split(' ').nth(1), line.split(' ').nth(1));
        let again = generate_key(&key, KeyKind::Ed25519, None, "x").unwrap_err();
        assert!(again.to_string().contains("already exists"), "{again}");
    }

    #[test]
    fn encrypted_key_needs_pub_file_to_read_public_line() {
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("id_enc");
        generate_key(&key, KeyKind::Ed25519, Some("s3cret pass"), "enc").unwrap();
        assert!(public_key_line(&key).unwrap().starts_with("ssh-ed25519 "));
        std::fs::remove_file(dir.path().join("id_enc.pub")).unwrap();
        assert!(
            public_key_line(&key).is_err(),
            "an encrypted key cannot be read without its passphrase"
        );
    }
}
