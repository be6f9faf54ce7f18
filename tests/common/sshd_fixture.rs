//! Real OpenSSH servers for transport tests: each test starts its own `sshd` (stopped on drop),
//! with a client key and a known_hosts file made the way an operator would make them.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use fleetup::inventory::{LedgerSettings, ResolvedHost, SshSettings};
use fleetup::lab::keys::{self, KeyKind};
use fleetup::lab::sshd::{self, Sshd, SshdSpec};

/// A started server, stopped when dropped.
pub struct Server {
    pub sshd: Sshd,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = sshd::stop(self.sshd.pid);
    }
}

impl Server {
    pub fn port(&self) -> u16 {
        self.sshd.port
    }

    /// `[127.0.0.1]:PORT type key` lines for every host key.
    pub fn known_hosts_lines(&self) -> Vec<String> {
        sshd::known_hosts_lines(&self.sshd, "127.0.0.1")
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.sshd.log_path()).unwrap_or_default()
    }

    /// How many logins the server accepted so far.
    pub fn accepted_logins(&self) -> usize {
        self.log().matches("Accepted publickey").count()
    }
}

/// A temp dir with one client key (`id_ed25519`), an empty known_hosts path and servers.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub key: PathBuf,
}

impl Fixture {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fleetup-ssh-test-")
            .tempdir()
            .unwrap();
        let key = dir.path().join("id_ed25519");
        keys::generate_key(&key, KeyKind::Ed25519, None, "fleetup-test").unwrap();
        Fixture { dir, key }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A new key in the fixture dir.
    pub fn new_key(&self, name: &str, kind: KeyKind, passphrase: Option<&str>) -> PathBuf {
        let p = self.path(name);
        keys::generate_key(&p, kind, passphrase, name).unwrap();
        p
    }

    /// Starts a server that accepts the fixture key plus `extra_keys`.
    pub fn server(&self, name: &str, extra_keys: &[&Path], extra_config: &[&str]) -> Server {
        let mut authorized = vec![keys::public_key_line(&self.key).unwrap()];
        authorized.extend(extra_keys.iter().map(|k| keys::public_key_line(k).unwrap()));
        let spec = SshdSpec {
            authorized_keys: authorized,
            extra_config: extra_config.iter().map(|s| s.to_string()).collect(),
            ..SshdSpec::new(self.path(name))
        };
        Server {
            sshd: sshd::start(&spec).unwrap(),
        }
    }

    /// A certificate authority's key pair made by `ssh-keygen`: the private key's path (the
    /// public key is beside it, `.pub`).
    pub fn ca(&self, name: &str) -> PathBuf {
        self.new_key(name, KeyKind::Ed25519, None)
    }

    /// Starts a server whose ed25519 host key is certified by `ca` the way an operator does
    /// it, `ssh-keygen -s CA -h -I ID -n PRINCIPALS -V VALIDITY`, and served as its
    /// `HostCertificate`. `validity` is ssh-keygen's (`-5m:+1h`, `20200101:20200102`).
    pub fn server_with_cert(
        &self,
        name: &str,
        ca: &Path,
        principals: &str,
        validity: &str,
    ) -> Server {
        let dir = self.path(name);
        std::fs::create_dir_all(&dir).unwrap();
        // sshd::start keeps host keys already in its dir.
        let host_key = dir.join("ssh_host_ed25519_key");
        keys::generate_key(&host_key, KeyKind::Ed25519, None, "fleetup-lab-host").unwrap();
        let out = std::process::Command::new("ssh-keygen")
            .arg("-q")
            .arg("-s")
            .arg(ca)
            .args(["-h", "-I", &format!("{name}-host-cert"), "-n", principals])
            .args(["-V", validity])
            .arg(host_key.with_extension("pub"))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ssh-keygen -s: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let cert = dir.join("ssh_host_ed25519_key-cert.pub");
        assert!(cert.exists());
        let cert_line = format!("HostCertificate {}", cert.display());
        self.server(name, &[], &[cert_line.as_str()])
    }

    /// `@cert-authority PATTERNS <CA public key>`.
    pub fn ca_line(&self, patterns: &str, ca: &Path) -> String {
        format!(
            "@cert-authority {patterns} {}",
            keys::public_key_line(ca).unwrap()
        )
    }

    /// Writes a known_hosts file with these lines and returns its path.
    pub fn known_hosts(&self, name: &str, lines: &[String]) -> PathBuf {
        let p = self.path(name);
        let mut text = lines.join("\n");
        text.push('\n');
        std::fs::write(&p, text).unwrap();
        p
    }
}

/// The user the servers let in: the one running the tests.
pub fn user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| "root".into())
}

/// A host entry as the inventory would resolve it.
pub fn host(name: &str, port: u16, key: Option<&Path>, known_hosts: &Path) -> ResolvedHost {
    ResolvedHost {
        name: name.into(),
        address: "127.0.0.1".into(),
        groups: vec![],
        migrator: false,
        replaces: None,
        ssh: SshSettings {
            user: user(),
            port,
            identity_files: key.map(Path::to_path_buf).into_iter().collect(),
            known_hosts: known_hosts.to_path_buf(),
            global_known_hosts: vec![],
            connect_timeout: Duration::from_secs(10),
            command_timeout: Duration::from_secs(30),
            migration_timeout: Duration::from_secs(30),
            jump_host: None,
            use_agent: false,
            jump_chain: Vec::new(),
            openssh: Default::default(),
        },
        ledger: LedgerSettings::default(),
        rollout: Default::default(),
    }
}

/// `SHA256:...` of a public key line, from `ssh-keygen -l` (independent of fleetup's code).
pub fn fingerprint_of(pub_line: &str, dir: &Path) -> String {
    let f = dir.join("fp.pub");
    std::fs::write(&f, format!("{pub_line}\n")).unwrap();
    let out = std::process::Command::new("ssh-keygen")
        .arg("-lf")
        .arg(&f)
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    text.split_whitespace().nth(1).unwrap().to_owned()
}

/// An ssh-agent on its own socket, killed on drop.
pub struct Agent {
    pub socket: PathBuf,
    pid: u32,
}

impl Agent {
    pub fn start(dir: &Path) -> Self {
        let socket = dir.join("agent.sock");
        let out = std::process::Command::new("ssh-agent")
            .arg("-s")
            .arg("-a")
            .arg(&socket)
            .output()
            .unwrap();
        let text = String::from_utf8(out.stdout).unwrap();
        let pid = text
            .split(';')
            .find_map(|p| p.trim().strip_prefix("SSH_AGENT_PID="))
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no agent pid in {text}"));
        Agent { socket, pid }
    }

    pub fn add(&self, key: &Path) {
        let st = std::process::Command::new("ssh-add")
            .arg(key)
            .env("SSH_AUTH_SOCK", &self.socket)
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert!(
            st.status.success(),
            "ssh-add: {}",
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        // SAFETY: kill(2) on the agent this fixture started.
        unsafe {
            libc::kill(self.pid as libc::pid_t, libc::SIGTERM);
        }
    }
}
