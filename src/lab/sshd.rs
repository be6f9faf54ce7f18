//! Real OpenSSH `sshd` processes on 127.0.0.1 for the lab and the tests: each with its own host
//! keys, config, pid file and log in one dir, started as a daemon and stopped by pid.
//! Works as root (privsep dir, `PermitRootLogin prohibit-password`) and as an ordinary user
//! (no PAM, no strict modes; only that user can log in).

use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use super::keys::{self, KeyKind};

/// What to start.
#[derive(Debug, Clone)]
pub struct SshdSpec {
    /// Holds host keys, `sshd_config`, `authorized_keys`, `sshd.pid` and `sshd.log`; created when
    /// missing. Host keys already there are reused, so a restarted server keeps its identity.
    pub dir: PathBuf,
    /// 0 picks a free 127.0.0.1 port (and retries if another process grabs it first).
    pub port: u16,
    /// Public key lines allowed to log in.
    pub authorized_keys: Vec<String>,
    /// Concurrent channels per connection (`MaxSessions`).
    pub max_sessions: u32,
    /// Extra `sshd_config` lines. They come first, and sshd keeps the first value of a keyword,
    /// so they override the defaults. No `Match` blocks.
    pub extra_config: Vec<String>,
}

impl SshdSpec {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        SshdSpec {
            dir: dir.into(),
            port: 0,
            authorized_keys: Vec::new(),
            max_sessions: 10,
            extra_config: Vec::new(),
        }
    }
}

/// A running server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sshd {
    pub pid: u32,
    pub port: u16,
    pub dir: PathBuf,
    /// `ssh-ed25519 AAAA...` and `ssh-rsa AAAA...` (no comment).
    pub host_key_lines: Vec<String>,
}

impl Sshd {
    pub fn log_path(&self) -> PathBuf {
        self.dir.join(LOG_FILE)
    }
}

const CONFIG_FILE: &str = "sshd_config";
const PID_FILE: &str = "sshd.pid";
const LOG_FILE: &str = "sshd.log";
const HOST_KEYS: [(&str, KeyKind); 2] = [
    ("ssh_host_ed25519_key", KeyKind::Ed25519),
    ("ssh_host_rsa_key", KeyKind::Rsa(3072)),
];
const START_TIMEOUT: Duration = Duration::from_secs(15);
const BIND_ATTEMPTS: usize = 5;

/// The `sshd` binary, or a [`Failure`] that says how to install it.
pub fn find_sshd() -> anyhow::Result<PathBuf> {
    keys::find_tool("sshd", "openssh-server")
}

/// Starts a daemonized `sshd` and waits until it answers with an SSH banner.
pub fn start(spec: &SshdSpec) -> anyhow::Result<Sshd> {
    let sshd = find_sshd()?;
    std::fs::create_dir_all(&spec.dir)
        .with_context(|| format!("cannot create sshd dir `{}`", spec.dir.display()))?;
    let dir = std::fs::canonicalize(&spec.dir)
        .with_context(|| format!("cannot resolve `{}`", spec.dir.display()))?;
    let mut host_key_lines = Vec::new();
    for (name, kind) in HOST_KEYS {
        let path = dir.join(name);
        if !path.exists() {
            keys::generate_key(&path, kind, None, "fleetup-lab-host")?;
        }
        let line = keys::public_key_line(&path)?;
        host_key_lines.push(
            line.split_whitespace()
                .take(2)
                .collect::<Vec<_>>()
                .join(" "),
        );
    }
    let mut authorized = spec.authorized_keys.join("\n");
    authorized.push('\n');
    std::fs::write(dir.join("authorized_keys"), authorized)
        .context("cannot write sshd authorized_keys")?;
    if is_root() {
        // sshd refuses to start as root without its privilege-separation dir.
        std::fs::create_dir_all("/run/sshd").context("cannot create `/run/sshd`")?;
    }

    let mut last_err = None;
    for _ in 0..BIND_ATTEMPTS {
        let port = if spec.port == 0 {
            free_port()?
        } else {
            spec.port
        };
        std::fs::write(dir.join(CONFIG_FILE), config_text(spec, &dir, port))
            .context("cannot write sshd_config")?;
        match launch(&sshd, &dir, port) {
            Ok(pid) => {
                return Ok(Sshd {
                    pid,
                    port,
                    dir,
                    host_key_lines,
                });
            }
            Err(Launch::BindFailed(e)) if spec.port == 0 => last_err = Some(e),
            Err(Launch::BindFailed(e) | Launch::Other(e)) => return Err(e),
        }
    }
    Err(last_err.unwrap_or_else(|| anyhow::anyhow!("sshd could not bind a port")))
}

enum Launch {
    BindFailed(anyhow::Error),
    Other(anyhow::Error),
}

fn launch(sshd: &Path, dir: &Path, port: u16) -> Result<u32, Launch> {
    let pid_file = dir.join(PID_FILE);
    let log = dir.join(LOG_FILE);
    let _ = std::fs::remove_file(&pid_file);
    let log_start = std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0);
    let log_since = || {
        let mut f = std::fs::File::open(&log).ok()?;
        let mut text = String::new();
        f.read_to_string(&mut text).ok()?;
        Some(text.get(log_start as usize..).unwrap_or("").to_owned())
    };
    // Without -D, sshd forks into the background once the config is valid; the parent's exit
    // status reports config errors. It binds and writes the pid file after the fork.
    let status = Command::new(sshd)
        .arg("-f")
        .arg(dir.join(CONFIG_FILE))
        .arg("-E")
        .arg(&log)
        .stdin(std::process::Stdio::null())
        .status()
        .map_err(|e| Launch::Other(anyhow::Error::new(e).context("cannot run sshd")))?;
    if !status.success() {
        let tail = log_since().unwrap_or_default();
        return Err(Launch::Other(anyhow::anyhow!(
            "sshd refused to start ({status}): {}; see `{}`",
            tail.trim(),
            log.display()
        )));
    }
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let logged = log_since().unwrap_or_default();
        if logged.contains("Cannot bind any address") || logged.contains("Address already in use") {
            return Err(Launch::BindFailed(anyhow::anyhow!(
                "sshd could not bind 127.0.0.1:{port}: {}",
                logged.trim()
            )));
        }
        if let Some(pid) = read_pid(&pid_file)
            && process_alive(pid)
            && answers_ssh(port)
        {
            return Ok(pid);
        }
        if Instant::now() > deadline {
            return Err(Launch::Other(anyhow::anyhow!(
                "sshd did not answer on 127.0.0.1:{port} within {}s; see `{}`",
                START_TIMEOUT.as_secs(),
                log.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Replaces the host keys in `dir` (an sshd dir of [`start`]) with fresh ones; the running sshd
/// serves them once it re-reads its config (SIGHUP).
pub fn regenerate_host_keys(dir: &Path) -> anyhow::Result<()> {
    for (name, kind) in HOST_KEYS {
        let path = dir.join(name);
        for p in [path.clone(), path.with_extension("pub")] {
            match std::fs::remove_file(&p) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    return Err(
                        anyhow::Error::new(e).context(format!("cannot remove `{}`", p.display()))
                    );
                }
                _ => {}
            }
        }
        keys::generate_key(&path, kind, None, "fleetup-lab-host")?;
    }
    Ok(())
}

fn config_text(spec: &SshdSpec, dir: &Path, port: u16) -> String {
    let mut lines: Vec<String> = spec.extra_config.clone();
    lines.push(format!("ListenAddress 127.0.0.1:{port}"));
    for (name, _) in HOST_KEYS {
        lines.push(format!("HostKey {}", dir.join(name).display()));
    }
    lines.push(format!("PidFile {}", dir.join(PID_FILE).display()));
    lines.push(format!(
        "AuthorizedKeysFile {}",
        dir.join("authorized_keys").display()
    ));
    lines.push(format!("MaxSessions {}", spec.max_sessions));
    lines.extend(
        [
            "LogLevel VERBOSE",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "AuthenticationMethods publickey",
            "UsePAM no",
            "StrictModes no",
            "UseDNS no",
            "PrintMotd no",
            "PrintLastLog no",
            "X11Forwarding no",
            "AllowTcpForwarding yes",
            "AllowAgentForwarding no",
            // Tests and the lab connect to many servers at once; do not drop unauthenticated
            // connections early.
            "MaxStartups 100:30:200",
            "Subsystem sftp internal-sftp",
        ]
        .map(str::to_owned),
    );
    if is_root() {
        lines.push("PermitRootLogin prohibit-password".into());
    } else if let Some(user) = current_user() {
        lines.push(format!("AllowUsers {user}"));
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// Stops a server by pid (TERM, then KILL after 5 s) and waits until it is gone. Refuses a pid
/// that is alive but is not an sshd (the pid was reused).
pub fn stop(pid: u32) -> anyhow::Result<()> {
    if !process_alive(pid) {
        return Ok(());
    }
    if let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        && comm.trim() != "sshd"
    {
        bail!("process {pid} is not an sshd; not stopping it");
    }
    let pid_t = libc::pid_t::try_from(pid).context("pid out of range")?;
    signal(pid_t, libc::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(5);
    while process_alive(pid) {
        if Instant::now() > deadline {
            signal(pid_t, libc::SIGKILL);
        }
        if Instant::now() > deadline + Duration::from_secs(5) {
            bail!("sshd {pid} did not exit");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

/// Lines for a known_hosts file: `[host]:PORT key` (or `host key` on port 22).
pub fn known_hosts_lines(sshd: &Sshd, host: &str) -> Vec<String> {
    let name = if sshd.port == 22 {
        host.to_owned()
    } else {
        format!("[{host}]:{}", sshd.port)
    };
    sshd.host_key_lines
        .iter()
        .map(|k| format!("{name} {k}"))
        .collect()
}

/// A port that was free on 127.0.0.1 a moment ago and that no lab on this machine was handed
/// in the last [`RESERVATION`]: the kernel can give the same free port to two labs (two up at
/// once, or one whose stopped node left its API port free), so each port handed out is
/// reserved by a file in `<tmp>/fleetup-lab-ports`.
pub fn free_port() -> anyhow::Result<u16> {
    for _ in 0..200 {
        let l = TcpListener::bind("127.0.0.1:0").context("cannot bind 127.0.0.1:0")?;
        let port = l.local_addr()?.port();
        if reserve(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no free port on 127.0.0.1 that another lab was not handed recently")
}

/// How long a port handed to a lab stays reserved (longer than any lab a test or a benchmark
/// brings up).
pub const RESERVATION: Duration = Duration::from_secs(2 * 3600);

/// Reserves `port` for this lab; false when another lab holds it. Without a writable
/// reservation dir, nothing is reserved.
fn reserve(port: u16) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join("fleetup-lab-ports");
    if std::fs::create_dir(&dir).is_ok() {
        // Shared by every user's labs (the benchmark runs as another user than the tests).
        let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777));
    }
    let path = dir.join(port.to_string());
    let create = || {
        std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
    };
    match create() {
        Ok(_) => true,
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            let stale = std::fs::metadata(&path)
                .and_then(|m| m.modified())
                .ok()
                .and_then(|t| t.elapsed().ok())
                .is_some_and(|age| age > RESERVATION);
            // Of two labs taking over a stale reservation, one creates the file again.
            stale && std::fs::remove_file(&path).is_ok() && create().is_ok()
        }
        Err(_) => true,
    }
}

fn answers_ssh(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 8];
    s.read_exact(&mut buf).is_ok() && buf.starts_with(b"SSH-2.0")
}

fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Alive and not a zombie (a zombie still answers `kill(pid, 0)`).
fn process_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid_t, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => {
            let state = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.trim_start().chars().next());
            state != Some('Z')
        }
        Err(_) => true,
    }
}

fn signal(pid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: plain kill(2) on a pid we checked belongs to an sshd.
    unsafe {
        libc::kill(pid, sig);
    }
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn current_user() -> Option<String> {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .or_else(|| {
            let out = Command::new("id").arg("-un").output().ok()?;
            Some(String::from_utf8_lossy(&out.stdout).trim().to_owned()).filter(|u| !u.is_empty())
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_port_handed_to_one_lab_is_not_handed_to_another() {
        let port = free_port().unwrap();
        assert!(!reserve(port), "reserved once already");
        let others: Vec<u16> = (0..20).map(|_| free_port().unwrap()).collect();
        assert!(
            !others.contains(&port),
            "{port} handed out twice: {others:?}"
        );
    }

    #[test]
    fn starts_answers_and_stops_by_pid() {
        let dir = tempfile::tempdir().unwrap();
        let spec = SshdSpec::new(dir.path().join("node"));
        let sshd = start(&spec).unwrap();
        assert!(answers_ssh(sshd.port));
        assert_eq!(sshd.host_key_lines.len(), 2);
        assert!(sshd.host_key_lines[0].starts_with("ssh-ed25519 AAAA"));
        assert!(sshd.host_key_lines[1].starts_with("ssh-rsa AAAA"));
        let kh = known_hosts_lines(&sshd, "127.0.0.1");
        assert_eq!(
            kh[0],
            format!("[127.0.0.1]:{} {}", sshd.port, sshd.host_key_lines[0])
        );
        stop(sshd.pid).unwrap();
        assert!(!process_alive(sshd.pid));
        assert!(!answers_ssh(sshd.port));

        // A restart in the same dir keeps the host identity.
        let again = start(&spec).unwrap();
        assert_eq!(again.host_key_lines, sshd.host_key_lines);
        stop(again.pid).unwrap();
    }

    #[test]
    fn a_taken_fixed_port_is_an_error_naming_the_port() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = taken.local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let spec = SshdSpec {
            port,
            ..SshdSpec::new(dir.path())
        };
        let err = start(&spec).unwrap_err();
        assert!(format!("{err:#}").contains(&port.to_string()), "{err:#}");
    }

    #[test]
    fn stop_refuses_a_pid_that_is_not_sshd() {
        let me = std::process::id();
        let err = stop(me).unwrap_err();
        assert!(err.to_string().contains("not an sshd"), "{err}");
    }
}
