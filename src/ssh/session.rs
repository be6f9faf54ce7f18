//! One SSH connection to one host: connecting (timeouts, host-key check, authentication,
//! optional jump host), then commands, uploads and HTTP requests over channels of that one
//! connection, at most `max_sessions` channels at a time.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex as StdMutex};
use std::time::Duration;

use russh::client::{self, DisconnectReason, Handle};
use russh::keys::PublicKeyOrCertificate;
use russh::{ChannelMsg, Sig};
use sha2::{Digest, Sha256};
use tokio::net::TcpStream;
use tokio::sync::{OnceCell, Semaphore};
use tokio::time::{Instant, timeout, timeout_at};

use super::auth::{AuthRequest, KeyCache, authenticate};
use super::error::{CertProblem, ConnectError, ExecError, HostKeyError, HttpError, UploadError};
use super::http::{HttpResponse, parse_response, request};
use super::known_hosts::{
    self, KnownHostsFiles, Location, Recorded, Verdict, fingerprint, key_data_type, key_type,
};
use crate::inventory::{JumpHop, ResolvedHost};
use crate::shell::quote;

/// What to do with a host key that is not in known_hosts. There is deliberately no "accept
/// anything" policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum HostKeyPolicy {
    /// Refuse the host.
    #[default]
    Strict,
    /// Record the key when the host is not in known_hosts at all; changed keys are still
    /// refused, and so is a host recorded with another key type.
    AcceptNew,
}

/// Settings shared by every connection of a run.
#[derive(Clone)]
pub struct ConnectOptions {
    pub host_keys: HostKeyPolicy,
    /// Decrypted identity files, shared by every host.
    pub keys: KeyCache,
    /// Hosts connected to at once (`--forks`).
    pub forks: usize,
    /// Channels open at once on one connection (stay at or below the server's `MaxSessions`).
    pub max_sessions: usize,
    /// Sent when the connection is idle, so a silent long command keeps it alive.
    pub keepalive: Duration,
    /// The connection is dropped after this long without any answer (must exceed `keepalive`).
    pub inactivity_timeout: Duration,
    /// The agent to ask when a host has `use_agent`; `None`: `SSH_AUTH_SOCK`.
    pub agent_socket: Option<PathBuf>,
    /// Jump-host connections of the run, shared by the hosts behind each; leave it default.
    pub jumps: JumpPool,
    /// The known_hosts files of the run, read once and shared by every connection; leave it
    /// default.
    pub known: KnownHostsCache,
}

/// known_hosts files read once per run: every host of a fleet usually shares one file that
/// lists them all, and reading it for each connection made the cost per host grow with the
/// fleet (500 hosts: 500 reads of a 500-line file, twice each). A key recorded during the run
/// (`AcceptNew`) is written under the file's lock, which re-reads the file, so a stale cache
/// only means a second host with the same new key finds it already recorded.
#[derive(Clone, Default)]
pub struct KnownHostsCache(Arc<StdMutex<HashMap<KnownHostsKey, Arc<KnownHostsFiles>>>>);

/// The user's known_hosts file and the global ones: what one cached reading holds.
type KnownHostsKey = (PathBuf, Vec<PathBuf>);

impl KnownHostsCache {
    fn load(&self, user: &Path, global: &[PathBuf]) -> Result<Arc<KnownHostsFiles>, HostKeyError> {
        let key = (user.to_path_buf(), global.to_vec());
        if let Some(k) = self.0.lock().ok().and_then(|m| m.get(&key).cloned()) {
            return Ok(k);
        }
        let files = Arc::new(load_known_hosts(user, global)?);
        if let Ok(mut m) = self.0.lock() {
            m.insert(key, files.clone());
        }
        Ok(files)
    }
}

/// Connections to jump hosts, opened once per run and shared.
#[derive(Clone, Default)]
pub struct JumpPool(Arc<tokio::sync::Mutex<HashMap<String, Arc<OnceCell<JumpResult>>>>>);

type JumpResult = Result<Session, (Option<HostKeyError>, String)>;

impl Default for ConnectOptions {
    fn default() -> Self {
        ConnectOptions {
            host_keys: HostKeyPolicy::Strict,
            keys: KeyCache::default(),
            forks: 50,
            max_sessions: 8,
            keepalive: Duration::from_secs(15),
            inactivity_timeout: Duration::from_secs(90),
            agent_socket: None,
            jumps: JumpPool::default(),
            known: KnownHostsCache::default(),
        }
    }
}

impl std::fmt::Debug for ConnectOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnectOptions")
            .field("host_keys", &self.host_keys)
            .field("forks", &self.forks)
            .field("max_sessions", &self.max_sessions)
            .field("keepalive", &self.keepalive)
            .field("inactivity_timeout", &self.inactivity_timeout)
            .finish_non_exhaustive()
    }
}

/// How a command ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ExitStatus {
    Code(u32),
    /// Killed by this signal (`TERM`, `KILL`, ...).
    Signal(String),
}

impl ExitStatus {
    pub fn success(&self) -> bool {
        *self == ExitStatus::Code(0)
    }
}

impl std::fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "{c}"),
            ExitStatus::Signal(s) => write!(f, "signal {s}"),
        }
    }
}

/// The result of a command that ran to the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecOutput {
    /// The last [`OUTPUT_CAP`] bytes of stdout.
    pub stdout: Vec<u8>,
    /// The last [`OUTPUT_CAP`] bytes of stderr.
    pub stderr: Vec<u8>,
    pub status: ExitStatus,
    pub duration: Duration,
    /// Bytes dropped from the start of stdout and stderr to keep them within the cap.
    pub truncated: u64,
}

/// The most output kept of each stream of one command: a node printing without end must not
/// exhaust the controller's memory. Every command fleetup parses prints a few KiB.
pub const OUTPUT_CAP: usize = 1024 * 1024;

/// Output kept up to [`OUTPUT_CAP`]: the newest bytes win.
#[derive(Default)]
struct Tail {
    buf: Vec<u8>,
    dropped: u64,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
        // Trimmed at twice the cap, so the copy is amortized over a cap's worth of output.
        if self.buf.len() > 2 * OUTPUT_CAP {
            self.trim();
        }
    }

    fn trim(&mut self) {
        if self.buf.len() > OUTPUT_CAP {
            let extra = self.buf.len() - OUTPUT_CAP;
            self.buf.drain(..extra);
            self.dropped += extra as u64;
        }
    }

    fn finish(mut self) -> (Vec<u8>, u64) {
        self.trim();
        (self.buf, self.dropped)
    }
}

impl ExecOutput {
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Which stream a piece of output came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutputStream {
    Stdout,
    Stderr,
}

/// Receives output as it arrives (for live events), in addition to the collected output.
pub type OutputCallback = Arc<dyn Fn(OutputStream, &[u8]) + Send + Sync>;

/// Options of one command.
#[derive(Clone, Default)]
pub struct ExecOptions {
    /// Bytes written to the command's stdin (then EOF). Without it, stdin gets EOF at once.
    pub stdin: Option<Vec<u8>>,
    /// Exported before the command runs (sshd refuses most `env` requests, so they are put on
    /// the command line, quoted).
    pub env: Vec<(String, String)>,
    /// Overrides the host's `command_timeout`.
    pub timeout: Option<Duration>,
    /// Only fleetup's own deadline: it stops waiting at `timeout`, and the host runs the
    /// command without a deadline of its own (one process less on the host, `timeout`, per
    /// command). For fleetup's read-only probes (a file read, `numary version`, the service
    /// manager's status), which change nothing if they outlive it, and for `exec` without
    /// `--timeout`, which runs as `ssh host CMD` would. Every other command is ended by the host
    /// at its deadline (see `with_remote_deadline`).
    pub local_deadline_only: bool,
    pub on_output: Option<OutputCallback>,
}

/// A file uploaded and verified on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UploadReport {
    pub bytes: u64,
    /// Hex SHA-256, as computed on the host (equal to the local one).
    pub sha256: String,
}

/// An SSH connection to one host, cheap to clone and to share between tasks.
#[derive(Clone)]
pub struct Session {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    handle: Handle<Client>,
    channels: Arc<Semaphore>,
    command_timeout: Duration,
    disconnect_reason: Arc<StdMutex<Option<String>>>,
    /// The service's environment as [`crate::envfile::EnvFile::stdin`] gives it: written first
    /// on the stdin of every command holding [`crate::envfile::LOADER`].
    service_env: StdMutex<Option<Arc<Vec<u8>>>>,
    /// Keeps the jump host's connection open as long as this one lives.
    _jump: Option<Session>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("host", &self.inner.name)
            .finish_non_exhaustive()
    }
}

/// Told how many bytes of how many were sent.
pub type Progress<'a> = &'a (dyn Fn(u64, u64) + Sync);
/// Told, for one host, how many bytes of how many were sent.
pub type HostProgress = Arc<dyn Fn(&str, u64, u64) + Send + Sync>;

/// Chunk size of uploads: big enough that russh splits it into full packets without copying.
const CHUNK: usize = 1 << 20;
/// After the exit status arrives, output still in flight gets this long to arrive.
const EXIT_GRACE: Duration = Duration::from_secs(2);

/// Connects to one host: TCP (or a tunnel through the jump host), SSH handshake with the host
/// key checked against known_hosts, then authentication, all within `connect_timeout`.
pub async fn connect(host: &ResolvedHost, opts: &ConnectOptions) -> Result<Session, ConnectError> {
    let deadline = Instant::now() + host.ssh.connect_timeout;
    let target = Target::of(host);
    let hops = jump_hops(host)?;
    let jump = match hops.is_empty() {
        true => None,
        false => Some(jump_chain(host, &hops, opts, deadline).await?),
    };
    connect_target(&target, opts, deadline, jump).await
}

/// Connects to every host, at most `opts.forks` at once. Every host gets its result, in the
/// order given, so all problems (host keys above all) can be reported together.
pub async fn connect_all(
    hosts: &[ResolvedHost],
    opts: &ConnectOptions,
) -> Vec<(String, Result<Session, ConnectError>)> {
    let forks = Arc::new(Semaphore::new(opts.forks.max(1)));
    let tasks: Vec<_> = hosts
        .iter()
        .map(|h| {
            let (h, opts, forks) = (h.clone(), opts.clone(), forks.clone());
            tokio::spawn(async move {
                let _permit = forks.acquire_owned().await;
                connect(&h, &opts).await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(hosts.len());
    for (h, task) in hosts.iter().zip(tasks) {
        let result = task.await.unwrap_or_else(|e| {
            Err(ConnectError::Config {
                host: h.name.clone(),
                message: format!("connect task failed: {e}"),
            })
        });
        out.push((h.name.clone(), result));
    }
    out
}

/// The host-key problems among connection results, for reporting them all at once.
pub fn host_key_problems<T>(
    results: &[(String, Result<T, ConnectError>)],
) -> Vec<(&str, &HostKeyError)> {
    results
        .iter()
        .filter_map(|(name, r)| {
            r.as_ref()
                .err()
                .and_then(ConnectError::host_key)
                .map(|e| (name.as_str(), e))
        })
        .collect()
}

/// Where and as whom to connect.
#[derive(Debug, Clone)]
struct Target {
    name: String,
    address: String,
    port: u16,
    user: String,
    identity_files: Vec<PathBuf>,
    known_hosts: PathBuf,
    global_known_hosts: Vec<PathBuf>,
    certificate_file: Option<PathBuf>,
    identities_only: bool,
    /// ssh_config's `StrictHostKeyChecking yes`: strict whatever the run's policy.
    strict: bool,
    /// ssh_config's `ServerAliveInterval`, over the run's keepalive.
    keepalive: Option<Duration>,
    use_agent: bool,
    command_timeout: Duration,
    connect_timeout: Duration,
    /// Where the settings came from, for hints (`ssh_config FILE (Host lab3)`).
    config_note: Option<String>,
}

impl Target {
    fn of(h: &ResolvedHost) -> Self {
        Target {
            name: h.name.clone(),
            address: h.address.clone(),
            port: h.ssh.port,
            user: h.ssh.user.clone(),
            identity_files: h.ssh.identity_files.clone(),
            known_hosts: h.ssh.known_hosts.clone(),
            global_known_hosts: h.ssh.global_known_hosts.clone(),
            certificate_file: h.ssh.openssh.certificate_file.clone(),
            identities_only: h.ssh.openssh.identities_only,
            strict: h.ssh.openssh.strict_host_key_checking,
            keepalive: h.ssh.openssh.server_alive_interval,
            use_agent: h.ssh.use_agent,
            command_timeout: h.ssh.command_timeout,
            connect_timeout: h.ssh.connect_timeout,
            config_note: config_note(h),
        }
    }

    /// A bastion of `host`'s chain: the hop's own settings, the host's timeouts and agent.
    fn of_hop(host: &ResolvedHost, hop: &JumpHop) -> Self {
        Target {
            name: hop.spec.clone(),
            address: hop.address.clone(),
            port: hop.port,
            user: hop.user.clone(),
            identity_files: hop.identity_files.clone(),
            known_hosts: hop.known_hosts.clone(),
            global_known_hosts: hop.global_known_hosts.clone(),
            certificate_file: hop.certificate_file.clone(),
            identities_only: hop.identities_only,
            strict: hop.strict_host_key_checking,
            config_note: host
                .ssh
                .openssh
                .ssh_config
                .as_ref()
                .map(|f| format!("ssh_config `{}`", f.display())),
            ..Target::of(host)
        }
    }

    fn addr(&self) -> String {
        if self.address.contains(':') {
            format!("[{}]:{}", self.address, self.port)
        } else {
            format!("{}:{}", self.address, self.port)
        }
    }
}

/// Which ssh_config was read for `h` and what matched, for the hint of a failed name lookup.
fn config_note(h: &ResolvedHost) -> Option<String> {
    let o = &h.ssh.openssh;
    let file = o.ssh_config.as_ref()?;
    Some(match o.origins.get("address") {
        Some(from) if from.starts_with("ssh_config") => format!("the address came from {from}"),
        _ => format!(
            "ssh_config `{}` was read, and no `Host` block gave `{}` a `HostName`",
            file.display(),
            h.address
        ),
    })
}

async fn connect_target(
    t: &Target,
    opts: &ConnectOptions,
    deadline: Instant,
    jump: Option<Session>,
) -> Result<Session, ConnectError> {
    let addr = t.addr();
    let timed_out = |stage| ConnectError::Timeout {
        host: t.name.clone(),
        addr: addr.clone(),
        stage,
        after: t.connect_timeout,
    };
    let known = opts
        .known
        .load(&t.known_hosts, &t.global_known_hosts)
        .map_err(ConnectError::HostKey)?;
    let mut config = client_config(
        opts,
        known.preferred_for_host(&t.address, t.port),
        t.keepalive,
    );
    config.preferred.host_key_certificates =
        Cow::Owned(known.certificate_algorithms_for_host(&t.address, t.port));
    log::debug!(
        target: LOG_TARGET,
        "{}: connecting to `{addr}` as `{}`; host key algorithms offered: {}",
        t.name,
        t.user,
        offered_host_keys(&config.preferred)
    );
    let config = Arc::new(config);
    let disconnect_reason = Arc::new(StdMutex::new(None));
    let handler = Client {
        name: t.name.clone(),
        address: t.address.clone(),
        port: t.port,
        known_hosts: t.known_hosts.clone(),
        global_known_hosts: t.global_known_hosts.clone(),
        // ssh_config can make a host stricter, never weaker.
        policy: if t.strict {
            HostKeyPolicy::Strict
        } else {
            opts.host_keys
        },
        disconnect_reason: disconnect_reason.clone(),
        known_cache: opts.known.clone(),
    };
    let handshake_err = |e: ClientError| match e {
        ClientError::HostKey(k) => ConnectError::HostKey(k),
        ClientError::Russh(source) => ConnectError::Handshake {
            host: t.name.clone(),
            addr: addr.clone(),
            source,
        },
    };
    // A server that closes a new connection before its banner is most likely shedding load:
    // sshd drops unauthenticated connections beyond `MaxStartups` (by default at random from
    // the 10th at once on). That connection is made again after a pause, within the connect
    // timeout, so a high fan-out never loses a host to it.
    let mut attempt = 0;
    let mut handle = loop {
        let shake = match &jump {
            None => {
                let stream = timeout_at(deadline, tcp_connect(&t.address, t.port, deadline))
                    .await
                    .map_err(|_| timed_out("tcp connect"))?
                    .map_err(|e| match e {
                        TcpFailure::Lookup(source) => ConnectError::Lookup {
                            host: t.name.clone(),
                            name: t.address.clone(),
                            source,
                            ssh_config: t.config_note.clone(),
                        },
                        TcpFailure::Connect(source) => ConnectError::Tcp {
                            host: t.name.clone(),
                            addr: addr.clone(),
                            source,
                        },
                    })?;
                timeout_at(
                    deadline,
                    client::connect_stream(config.clone(), stream, handler.clone()),
                )
                .await
                .map_err(|_| timed_out("ssh handshake (banner and key exchange)"))?
            }
            Some(j) => {
                let channel = timeout_at(
                    deadline,
                    j.inner.handle.channel_open_direct_tcpip(
                        t.address.clone(),
                        u32::from(t.port),
                        "127.0.0.1",
                        0,
                    ),
                )
                .await
                .map_err(|_| timed_out("tunnel through the jump host"))?
                .map_err(|e| ConnectError::Jump {
                    host: t.name.clone(),
                    jump: j.inner.name.clone(),
                    reason: format!("cannot open a tunnel to `{addr}`: {e}"),
                })?;
                timeout_at(
                    deadline,
                    client::connect_stream(config.clone(), channel.into_stream(), handler.clone()),
                )
                .await
                .map_err(|_| timed_out("ssh handshake through the jump host"))?
            }
        };
        match shake {
            Err(ClientError::Russh(e)) if attempt < STARTUP_RETRIES && shed_by_server(&e) => {
                attempt += 1;
                let pause = startup_pause(attempt);
                if Instant::now() + pause >= deadline {
                    return Err(handshake_err(ClientError::Russh(e)));
                }
                log::debug!(
                    target: LOG_TARGET,
                    "{}: `{addr}` closed the connection before the handshake ({e}; sshd's MaxStartups?): connecting again in {} ms (attempt {})",
                    t.name,
                    pause.as_millis(),
                    attempt + 1
                );
                tokio::time::sleep(pause).await;
            }
            other => break other.map_err(handshake_err)?,
        }
    };
    let agent = t.use_agent.then(|| {
        opts.agent_socket
            .clone()
            .or_else(|| std::env::var_os("SSH_AUTH_SOCK").map(PathBuf::from))
    });
    let agent = agent.flatten();
    let request = AuthRequest {
        host: &t.name,
        addr: &addr,
        user: &t.user,
        agent: agent.as_deref(),
        identity_files: &t.identity_files,
        certificate_file: t.certificate_file.as_deref(),
        identities_only: t.identities_only,
        keys: &opts.keys,
        deadline,
        connect_timeout: t.connect_timeout,
    };
    authenticate(&mut handle, &request).await?;
    Ok(Session {
        inner: Arc::new(Inner {
            name: t.name.clone(),
            handle,
            channels: Arc::new(Semaphore::new(opts.max_sessions.max(1))),
            command_timeout: t.command_timeout,
            disconnect_reason,
            service_env: StdMutex::new(None),
            _jump: jump,
        }),
    })
}

/// The bastions of `host`, first hop first: the inventory's resolved chain, or (for settings
/// built by hand) `jump_host` parsed with the host's own user, keys and known_hosts.
fn jump_hops(host: &ResolvedHost) -> Result<Vec<JumpHop>, ConnectError> {
    if !host.ssh.jump_chain.is_empty() {
        return Ok(host.ssh.jump_chain.clone());
    }
    let Some(chain) = &host.ssh.jump_host else {
        return Ok(Vec::new());
    };
    chain
        .split(',')
        .map(|spec| {
            let spec = spec.trim();
            let (user, address, port) =
                parse_jump(spec, &host.ssh.user).ok_or_else(|| ConnectError::Config {
                    host: host.name.clone(),
                    message: format!("`{spec}` is not a jump host (expected `[user@]host[:port]`)"),
                })?;
            Ok(JumpHop {
                spec: spec.to_owned(),
                address,
                port,
                user,
                identity_files: host.ssh.identity_files.clone(),
                known_hosts: host.ssh.known_hosts.clone(),
                global_known_hosts: host.ssh.global_known_hosts.clone(),
                certificate_file: host.ssh.openssh.certificate_file.clone(),
                identities_only: host.ssh.openssh.identities_only,
                strict_host_key_checking: host.ssh.openssh.strict_host_key_checking,
            })
        })
        .collect()
}

/// The session of the last bastion of the chain, each hop tunnelled through the one before
/// (nested direct-tcpip) and checked against its own known_hosts. Each prefix of a chain is
/// opened once per run and shared by every host behind it; a session keeps the one it goes
/// through alive.
async fn jump_chain(
    host: &ResolvedHost,
    hops: &[JumpHop],
    opts: &ConnectOptions,
    deadline: Instant,
) -> Result<Session, ConnectError> {
    let mut via: Option<Session> = None;
    let mut key = String::new();
    for hop in hops {
        if !key.is_empty() {
            key.push(',');
        }
        key.push_str(&format!("{}@{}:{}", hop.user, hop.address, hop.port));
        let cell = opts
            .jumps
            .0
            .lock()
            .await
            .entry(key.clone())
            .or_default()
            .clone();
        let t = Target::of_hop(host, hop);
        let result = cell
            .get_or_init(|| async {
                connect_target(&t, opts, deadline, via.clone())
                    .await
                    .map_err(|e| (e.host_key().cloned(), e.to_string()))
            })
            .await;
        via = Some(match result {
            Ok(s) => s.clone(),
            Err((Some(hk), _)) => return Err(ConnectError::HostKey(hk.clone())),
            Err((None, reason)) => {
                return Err(ConnectError::Jump {
                    host: host.name.clone(),
                    jump: hop.spec.clone(),
                    reason: reason.clone(),
                });
            }
        });
    }
    via.ok_or_else(|| ConnectError::Config {
        host: host.name.clone(),
        message: "an empty jump chain".into(),
    })
}

/// `[user@]host[:port]`, with `[v6addr]:port` for IPv6.
fn parse_jump(spec: &str, default_user: &str) -> Option<(String, String, u16)> {
    let spec = spec.trim();
    let (user, rest) = match spec.rsplit_once('@') {
        Some((u, r)) if !u.is_empty() => (u.to_owned(), r),
        Some(_) => return None,
        None => (default_user.to_owned(), spec),
    };
    let (host, port) = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6.split_once(']')?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().ok()?,
            None if after.is_empty() => 22,
            None => return None,
        };
        (h.to_owned(), port)
    } else {
        match rest.split_once(':') {
            Some((h, p)) => (h.to_owned(), p.parse().ok()?),
            None => (rest.to_owned(), 22),
        }
    };
    if host.is_empty() || host.contains(char::is_whitespace) {
        return None;
    }
    Some((user, host, port))
}

/// Connections a server closed before the handshake that are made again (see
/// [`shed_by_server`]).
const STARTUP_RETRIES: u32 = 6;

/// Whether the server closed the connection before any handshake: what sshd does to a
/// connection beyond its `MaxStartups` (and what a server restarting does).
fn shed_by_server(e: &russh::Error) -> bool {
    use std::io::ErrorKind;
    match e {
        russh::Error::Disconnect => true,
        russh::Error::IO(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionReset | ErrorKind::UnexpectedEof | ErrorKind::BrokenPipe
        ),
        _ => false,
    }
}

/// The pause before attempt `attempt + 1` of a shed connection: doubling from 50 ms, with up to
/// half of it again at random, so the retries of many hosts do not arrive together.
fn startup_pause(attempt: u32) -> Duration {
    use rand::Rng;
    let base = 50u64 << attempt.min(6);
    Duration::from_millis(base + rand::thread_rng().gen_range(0..=base / 2))
}

/// Tries each address of `host` in turn, giving each a fair share of the time left.
enum TcpFailure {
    /// The name did not resolve.
    Lookup(std::io::Error),
    Connect(std::io::Error),
}

async fn tcp_connect(host: &str, port: u16, deadline: Instant) -> Result<TcpStream, TcpFailure> {
    let addrs: Vec<_> = tokio::net::lookup_host((host, port))
        .await
        .map_err(TcpFailure::Lookup)?
        .collect();
    let mut last = std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the name resolved to no address",
    );
    for (i, a) in addrs.iter().enumerate() {
        let left = deadline.saturating_duration_since(Instant::now());
        let share = left / u32::try_from(addrs.len() - i).unwrap_or(1);
        match timeout(share, TcpStream::connect(a)).await {
            Ok(Ok(s)) => {
                s.set_nodelay(true).map_err(TcpFailure::Connect)?;
                return Ok(s);
            }
            Ok(Err(e)) => last = e,
            Err(_) => {
                last = std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    format!("`{a}` did not answer"),
                )
            }
        }
    }
    Err(TcpFailure::Connect(last))
}

/// The `log` target of fleetup's SSH negotiation events (shown by the CLI at `-vvv`).
pub const LOG_TARGET: &str = "fleetup::ssh";

/// Reads the user's known_hosts and the global files (missing files are empty).
fn load_known_hosts(user: &Path, global: &[PathBuf]) -> Result<KnownHostsFiles, HostKeyError> {
    KnownHostsFiles::load(user, global).map_err(|(path, e)| HostKeyError::File {
        known_hosts: path,
        reason: e.to_string(),
    })
}

/// `ssh-ed25519-cert-v01@openssh.com,ssh-ed25519,...` as sent to the server.
fn offered_host_keys(p: &russh::Preferred) -> String {
    p.host_key_certificates
        .iter()
        .map(|a| a.to_certificate_type())
        .chain(p.key.iter().map(|a| a.to_string()))
        .collect::<Vec<_>>()
        .join(",")
}

/// `keepalive`: the host's own interval (ssh_config's `ServerAliveInterval`), over the run's.
fn client_config(
    opts: &ConnectOptions,
    host_key_order: Vec<russh::keys::Algorithm>,
    keepalive: Option<Duration>,
) -> client::Config {
    // curve25519 first: cheapest for both ends. The strict-kex and ext-info markers stay.
    let defaults = russh::Preferred::DEFAULT;
    let curve = [russh::kex::CURVE25519, russh::kex::CURVE25519_PRE_RFC_8731];
    let mut kex: Vec<_> = curve.to_vec();
    kex.extend(defaults.kex.iter().filter(|k| !curve.contains(k)).cloned());
    let keepalive = keepalive
        .unwrap_or(opts.keepalive)
        .max(Duration::from_millis(100));
    let inactivity = if opts.inactivity_timeout > keepalive {
        opts.inactivity_timeout
    } else {
        keepalive * 4
    };
    client::Config {
        preferred: russh::Preferred {
            kex: Cow::Owned(kex),
            key: Cow::Owned(host_key_order),
            ..defaults
        },
        inactivity_timeout: Some(inactivity),
        keepalive_interval: Some(keepalive),
        keepalive_max: 3,
        nodelay: true,
        gex: client::GexParams::new(2048, 3072, 4096).unwrap_or_default(),
        ..Default::default()
    }
}

/// The russh handler of one connection: checks the host key, remembers why it ended.
#[derive(Clone)]
pub(crate) struct Client {
    name: String,
    address: String,
    port: u16,
    known_hosts: PathBuf,
    global_known_hosts: Vec<PathBuf>,
    policy: HostKeyPolicy,
    disconnect_reason: Arc<StdMutex<Option<String>>>,
    known_cache: KnownHostsCache,
}

#[derive(Debug)]
pub(crate) enum ClientError {
    Russh(russh::Error),
    HostKey(HostKeyError),
}

impl From<russh::Error> for ClientError {
    fn from(e: russh::Error) -> Self {
        ClientError::Russh(e)
    }
}

/// How long a new host's key waits for another process's lock on known_hosts.
const KNOWN_HOSTS_LOCK_WAIT: Duration = Duration::from_secs(10);

impl client::Handler for Client {
    type Error = ClientError;

    async fn check_server_key(
        &mut self,
        key: &PublicKeyOrCertificate,
    ) -> Result<bool, ClientError> {
        let result = match key {
            PublicKeyOrCertificate::PublicKey { key, .. } => self.verify(key).await,
            PublicKeyOrCertificate::Certificate(cert) => self.verify_certificate(cert),
        };
        if let Err(e) = &result {
            log::debug!(target: LOG_TARGET, "{}: host key refused: {e}", self.name);
        }
        result.map(|()| true).map_err(ClientError::HostKey)
    }

    async fn kex_done(
        &mut self,
        _shared_secret: Option<&[u8]>,
        names: &russh::Names,
        _session: &mut client::Session,
    ) -> Result<(), ClientError> {
        let cipher = names.cipher.as_ref();
        // An AEAD cipher authenticates itself: the negotiated MAC is not used.
        let mac = if cipher.contains("poly1305") || cipher.contains("gcm") {
            "implicit".to_owned()
        } else {
            names.client_mac.as_ref().to_string()
        };
        log::debug!(
            target: LOG_TARGET,
            "{}: kex {}, host key {}, cipher {cipher}, mac {mac}, strict kex {}",
            self.name,
            names.kex.as_ref(),
            names.key,
            if names.strict_kex() { "on" } else { "off" },
        );
        Ok(())
    }

    async fn disconnected(
        &mut self,
        reason: DisconnectReason<ClientError>,
    ) -> Result<(), ClientError> {
        let (text, result) = match reason {
            DisconnectReason::ReceivedDisconnect(info) => {
                (format!("the server disconnected: {info:?}"), Ok(()))
            }
            DisconnectReason::Error(ClientError::Russh(e)) => {
                (e.to_string(), Err(ClientError::Russh(e)))
            }
            DisconnectReason::Error(e) => (format!("{e:?}"), Err(e)),
        };
        if let Ok(mut slot) = self.disconnect_reason.lock() {
            slot.get_or_insert(text);
        }
        result
    }
}

impl Client {
    fn known(&self) -> Result<Arc<KnownHostsFiles>, HostKeyError> {
        self.known_cache
            .load(&self.known_hosts, &self.global_known_hosts)
    }

    fn log_accepted(&self, what: &str, key: &russh::keys::PublicKey, at: &Location) {
        log::debug!(
            target: LOG_TARGET,
            "{}: {what} {} `{}` accepted: recorded at `{at}`",
            self.name,
            key_type(key),
            fingerprint(key)
        );
    }

    async fn verify(&self, key: &russh::keys::PublicKey) -> Result<(), HostKeyError> {
        let verdict = self.known()?.check(&self.address, self.port, key);
        match (verdict, self.policy) {
            (Verdict::Known { at }, _) => {
                self.log_accepted("host key", key, &at);
                Ok(())
            }
            (Verdict::Unknown { other_types }, HostKeyPolicy::AcceptNew)
                if other_types.is_empty() =>
            {
                self.record(key).await
            }
            (v, _) => self.refuse(v, key),
        }
    }

    /// A host certificate: valid against an `@cert-authority` entry for this host. One that is
    /// not still passes when its plain key is recorded for the host (as OpenSSH falls back to
    /// the plain key), unless that key is revoked; it is never recorded as a new key.
    fn verify_certificate(&self, cert: &russh::keys::Certificate) -> Result<(), HostKeyError> {
        let known = self.known()?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let plain = russh::keys::PublicKey::new(cert.public_key().clone(), "");
        let ca = cert
            .signature_key()
            .fingerprint(russh::keys::HashAlg::Sha256);
        match known.check_certificate(&self.address, self.port, cert, now) {
            Ok(ca_at) => {
                log::debug!(
                    target: LOG_TARGET,
                    "{}: host certificate `{}` (serial {}) for {} `{}` accepted: signed by CA `{ca}` trusted at `{ca_at}`, principals {}",
                    self.name,
                    cert.key_id(),
                    cert.serial(),
                    key_type(&plain),
                    fingerprint(&plain),
                    cert.valid_principals().join(",")
                );
                Ok(())
            }
            Err((ca_at, problem)) => {
                if !matches!(
                    problem,
                    CertProblem::RevokedCa { .. } | CertProblem::RevokedKey { .. }
                ) && let Verdict::Known { at } = known.check(&self.address, self.port, &plain)
                {
                    log::debug!(
                        target: LOG_TARGET,
                        "{}: host certificate refused ({problem}); falling back to its plain key",
                        self.name
                    );
                    self.log_accepted("host key", &plain, &at);
                    return Ok(());
                }
                Err(HostKeyError::Certificate {
                    host: self.name.clone(),
                    addr: known_hosts::lookup_name(&self.address, self.port),
                    key_id: cert.key_id().to_owned(),
                    key_type: key_data_type(cert.public_key()),
                    fingerprint: fingerprint(&plain),
                    ca: ca.to_string(),
                    ca_at,
                    problem,
                })
            }
        }
    }

    fn refuse(&self, verdict: Verdict, key: &russh::keys::PublicKey) -> Result<(), HostKeyError> {
        let (host, addr) = (
            self.name.clone(),
            known_hosts::lookup_name(&self.address, self.port),
        );
        let (key_type, fingerprint) = (key_type(key), fingerprint(key));
        Err(match verdict {
            Verdict::Known { .. } => return Ok(()),
            Verdict::Revoked { at } => HostKeyError::Revoked {
                host,
                addr,
                key_type,
                fingerprint,
                known_hosts: at.file,
                line: at.line,
            },
            Verdict::Changed { at } => HostKeyError::Changed {
                host,
                addr,
                key_type,
                fingerprint,
                known_hosts: at.file,
                line: at.line,
            },
            Verdict::Unknown { other_types } => match other_types.into_iter().next() {
                None => HostKeyError::Unknown {
                    host,
                    addr,
                    key_type,
                    fingerprint,
                    known_hosts: self.known_hosts.clone(),
                    global_known_hosts: self.global_known_hosts.clone(),
                    ca_for_host: self.known().ok().and_then(|k| {
                        k.cert_authorities(&self.address, self.port)
                            .into_iter()
                            .next()
                            .map(|(at, _)| at)
                    }),
                },
                Some((known_type, at)) => HostKeyError::OtherTypeKnown {
                    host,
                    addr,
                    key_type,
                    fingerprint,
                    known_type,
                    known_hosts: at.file,
                    line: at.line,
                },
            },
        })
    }

    /// Records the key of a host seen for the first time in the user's known_hosts, under a
    /// lock on the file that other fleetup processes respect too.
    async fn record(&self, key: &russh::keys::PublicKey) -> Result<(), HostKeyError> {
        let (path, address, port, k) = (
            self.known_hosts.clone(),
            self.address.clone(),
            self.port,
            key.clone(),
        );
        let result = tokio::task::spawn_blocking(move || {
            known_hosts::record_new_host(&path, &address, port, &k, KNOWN_HOSTS_LOCK_WAIT)
        })
        .await
        .unwrap_or_else(|e| Err(format!("the writer failed: {e}")));
        let file_err = |reason: String| HostKeyError::File {
            known_hosts: self.known_hosts.clone(),
            reason,
        };
        match result.map_err(file_err)? {
            Recorded::Added { hashed } => {
                log::debug!(
                    target: LOG_TARGET,
                    "{}: new host key {} `{}` recorded in `{}`{}",
                    self.name,
                    key_type(key),
                    fingerprint(key),
                    self.known_hosts.display(),
                    if hashed { " (hashed)" } else { "" }
                );
                Ok(())
            }
            Recorded::AlreadyKnown => Ok(()),
            Recorded::Refused(v) => self.refuse(v, key),
        }
    }
}

impl Session {
    /// The inventory name of the host.
    pub fn host(&self) -> &str {
        &self.inner.name
    }

    pub fn is_closed(&self) -> bool {
        self.inner.handle.is_closed()
    }

    /// Ends the connection politely. Clones of this session stop working.
    pub async fn close(&self) {
        let _ = self
            .inner
            .handle
            .disconnect(russh::Disconnect::ByApplication, "", "en")
            .await;
    }

    /// The service's environment, fed to every command that loads it (see [`Inner`]).
    pub fn set_service_env(&self, stdin: Option<Vec<u8>>) {
        if let Ok(mut env) = self.inner.service_env.lock() {
            *env = stdin.map(Arc::new);
        }
    }

    /// What a command's stdin starts with: the service's environment when it loads it.
    fn env_for(&self, command: &str) -> Option<Arc<Vec<u8>>> {
        if !command.contains(crate::envfile::LOADER) {
            return None;
        }
        self.inner.service_env.lock().ok().and_then(|e| e.clone())
    }

    /// Runs `command` through the remote user's shell and collects its output. A command that
    /// ends with no exit status and no signal (the connection died) is an error, never success.
    pub async fn exec(&self, command: &str, opts: &ExecOptions) -> Result<ExecOutput, ExecError> {
        let env = self.env_for(command);
        let command = with_env(&self.inner.name, command, &opts.env)?;
        let timeout = opts.timeout.unwrap_or(self.inner.command_timeout);
        let (command, local) = if opts.local_deadline_only {
            (command, timeout)
        } else {
            (
                with_remote_deadline(&command, timeout),
                local_deadline(timeout),
            )
        };
        let no_progress = |_: u64, _: u64| {};
        let joined: Option<Vec<u8>> = match (&env, &opts.stdin) {
            (Some(env), Some(data)) => Some([env.as_slice(), data].concat()),
            _ => None,
        };
        let data = joined
            .as_deref()
            .or(env.as_deref().map(Vec::as_slice))
            .or(opts.stdin.as_deref());
        let stdin: Option<(&[u8], Progress<'_>)> =
            data.map(|data| (data, &no_progress as &(dyn Fn(u64, u64) + Sync)));
        self.run(&command, stdin, (timeout, local), opts.on_output.as_ref())
            .await
    }

    /// Starts `command` through the remote user's shell and keeps it running, on a channel of
    /// its own, until the handle is dropped or waited for; no command timeout applies. The
    /// channel counts towards `max_sessions` while it lives.
    pub async fn spawn(
        &self,
        command: &str,
        env: &[(String, String)],
    ) -> Result<super::RemoteProcess, ExecError> {
        let command = with_env(&self.inner.name, command, env)?;
        let host = || self.inner.name.clone();
        let permit = self
            .inner
            .channels
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| ExecError::Lost {
                host: host(),
                reason: "the session is closed".into(),
                stdout: Vec::new(),
                stderr: Vec::new(),
            })?;
        let channel = self
            .open_session_channel()
            .await
            .map_err(|source| ExecError::channel(host(), source))?;
        let env = self.env_for(&command);
        let process = super::process::spawn(self.clone(), permit, channel, &command).await?;
        if let Some(env) = env {
            process.write(&env)?;
        }
        Ok(process)
    }

    /// `limits`: the command's deadline, and when fleetup stops waiting for its end.
    async fn run(
        &self,
        command: &str,
        stdin: Option<(&[u8], Progress<'_>)>,
        (limit, local): (Duration, Duration),
        on_output: Option<&OutputCallback>,
    ) -> Result<ExecOutput, ExecError> {
        let host = || self.inner.name.clone();
        let _permit = self
            .inner
            .channels
            .acquire()
            .await
            .map_err(|_| ExecError::Lost {
                host: host(),
                reason: "the session is closed".into(),
                stdout: Vec::new(),
                stderr: Vec::new(),
            })?;
        let started = Instant::now();
        let channel = self
            .open_session_channel()
            .await
            .map_err(|source| ExecError::channel(host(), source))?;
        let (mut rx, tx) = channel.split();
        tx.exec(true, command)
            .await
            .map_err(|source| ExecError::Send {
                host: host(),
                source,
            })?;

        let mut stdout = Tail::default();
        let mut stderr = Tail::default();
        let mut status: Option<ExitStatus> = None;
        let mut refused = false;
        let mut closed = false;
        let writer = async {
            if let Some((data, progress)) = stdin {
                let total = data.len() as u64;
                for (i, chunk) in data.chunks(CHUNK).enumerate() {
                    tx.data_bytes(chunk.to_vec()).await?;
                    progress((i * CHUNK + chunk.len()) as u64, total);
                }
            }
            tx.eof().await
        };
        let reader = async {
            let mut grace_until = None;
            loop {
                let msg = match grace_until {
                    None => rx.wait().await,
                    Some(until) => timeout_at(until, rx.wait()).await.unwrap_or(None),
                };
                let Some(msg) = msg else { break };
                match msg {
                    ChannelMsg::Data { data } => {
                        if let Some(cb) = on_output {
                            cb(OutputStream::Stdout, &data);
                        }
                        stdout.push(&data);
                    }
                    ChannelMsg::ExtendedData { data, ext: 1 } => {
                        if let Some(cb) = on_output {
                            cb(OutputStream::Stderr, &data);
                        }
                        stderr.push(&data);
                    }
                    ChannelMsg::ExitStatus { exit_status } => {
                        status = Some(ExitStatus::Code(exit_status));
                        grace_until = Some(Instant::now() + EXIT_GRACE);
                    }
                    ChannelMsg::ExitSignal { signal_name, .. } => {
                        status = Some(ExitStatus::Signal(signal_name_text(&signal_name)));
                        grace_until = Some(Instant::now() + EXIT_GRACE);
                    }
                    ChannelMsg::Failure if status.is_none() => {
                        refused = true;
                        break;
                    }
                    ChannelMsg::Close => {
                        closed = true;
                        break;
                    }
                    _ => {}
                }
            }
        };
        let both = async {
            tokio::pin!(writer, reader);
            let mut write_result = None;
            loop {
                tokio::select! {
                    () = &mut reader => break,
                    w = &mut writer, if write_result.is_none() => write_result = Some(w),
                }
            }
            write_result
        };
        // The host's deadline comes first (see `with_remote_deadline`); ours only for a host
        // that cannot say it ended the command (or for a read-only probe, which has none).
        let outcome = timeout(local, both).await;
        if !closed {
            // Never wait for the server's answer to our close (russh drops it, see the notes).
            if outcome.is_err() {
                let _ = tx.signal(Sig::TERM).await;
            }
            let _ = tx.close().await;
        }
        drop((rx, tx));
        let ((stdout, dropped_out), (stderr, dropped_err)) = (stdout.finish(), stderr.finish());
        let truncated = dropped_out + dropped_err;
        let write_result = match outcome {
            Err(_) => {
                return Err(ExecError::Timeout {
                    host: host(),
                    after: limit,
                    stdout,
                    stderr,
                    ended_by_host: false,
                });
            }
            Ok(w) => w,
        };
        if let Some(st) = &status
            && ended_by_remote_deadline(st)
            && started.elapsed() >= limit
        {
            return Err(ExecError::Timeout {
                host: host(),
                after: limit,
                stdout,
                stderr,
                ended_by_host: true,
            });
        }
        if refused {
            return Err(ExecError::Refused { host: host() });
        }
        match status {
            Some(status) => Ok(ExecOutput {
                stdout,
                stderr,
                status,
                duration: started.elapsed(),
                truncated,
            }),
            None => {
                let reason = match write_result {
                    Some(Err(e)) => format!("sending stdin failed: {e}"),
                    _ => self.lost_reason(),
                };
                Err(ExecError::Lost {
                    host: host(),
                    reason,
                    stdout,
                    stderr,
                })
            }
        }
    }

    /// Opens a session channel, retrying briefly when the server is at `MaxSessions`: the
    /// server frees a channel only once it has our close, which can trail our own bookkeeping.
    async fn open_session_channel(&self) -> Result<russh::Channel<client::Msg>, russh::Error> {
        let mut attempt = 0u32;
        loop {
            match self.inner.handle.channel_open_session().await {
                Err(russh::Error::ChannelOpenFailure(russh::ChannelOpenFailure::ConnectFailed))
                    if attempt < 20 =>
                {
                    attempt += 1;
                    tokio::time::sleep(Duration::from_millis(25 * u64::from(attempt))).await;
                }
                other => return other,
            }
        }
    }

    fn lost_reason(&self) -> String {
        let recorded = self
            .inner
            .disconnect_reason
            .lock()
            .ok()
            .and_then(|r| r.clone());
        match recorded {
            Some(r) => r,
            None if self.inner.handle.is_closed() => "the connection closed".into(),
            None => "the channel closed".into(),
        }
    }

    /// Uploads `local` to `remote_path`: streamed into a temp file in the same remote dir, synced,
    /// SHA-256 checked on the host against the local digest, then `chmod` and an atomic
    /// `mv -f`. The temp file is removed on any failure.
    pub async fn upload(
        &self,
        local: &Path,
        remote_path: &str,
        mode: u32,
        progress: impl Fn(u64, u64) + Sync,
    ) -> Result<UploadReport, UploadError> {
        let data = read_local(local).await?;
        let digest = hex::encode(Sha256::digest(&data));
        self.upload_bytes(&data, &digest, remote_path, mode, &progress)
            .await
    }

    /// [`Session::upload`] of bytes already in memory with their known hex SHA-256.
    pub async fn upload_bytes(
        &self,
        data: &[u8],
        sha256: &str,
        remote_path: &str,
        mode: u32,
        progress: Progress<'_>,
    ) -> Result<UploadReport, UploadError> {
        let dir = match remote_path.rsplit_once('/') {
            Some(("", _)) => "/".to_owned(),
            Some((d, _)) => d.to_owned(),
            None => ".".to_owned(),
        };
        let tmp = format!(
            "{}/.fleetup-tmp-{:016x}",
            dir.trim_end_matches('/'),
            rand::random::<u64>()
        );
        let (qt, qd) = (quote(&tmp), quote(remote_path));
        // Generous: the command timeout plus one second per MiB.
        let limit =
            self.inner.command_timeout + Duration::from_secs(data.len() as u64 / CHUNK as u64);
        let result = async {
            let sent = self
                .run(
                    &format!("umask 077 && cat > {qt}"),
                    Some((data, progress)),
                    (limit, local_deadline(limit)),
                    None,
                )
                .await?;
            self.check_step(&sent, remote_path)?;
            let finish = finish_script(&qt, &qd, &quote(&dir), sha256, mode);
            let done = self
                .run(
                    &finish,
                    None,
                    (
                        self.inner.command_timeout,
                        local_deadline(self.inner.command_timeout),
                    ),
                    None,
                )
                .await?;
            if done.status == ExitStatus::Code(FINISH_MISMATCH) {
                return Err(UploadError::Checksum {
                    host: self.inner.name.clone(),
                    remote: remote_path.to_owned(),
                    want: sha256.to_owned(),
                    got: done.stdout_lossy().trim().to_owned(),
                });
            }
            self.check_step(&done, remote_path)?;
            Ok(UploadReport {
                bytes: data.len() as u64,
                sha256: done.stdout_lossy().trim().to_owned(),
            })
        }
        .await;
        if result.is_err() {
            let cleanup = ExecOptions {
                timeout: Some(Duration::from_secs(10)),
                ..Default::default()
            };
            let _ = self.exec(&format!("rm -f {qt}"), &cleanup).await;
        }
        result
    }

    fn check_step(&self, out: &ExecOutput, remote: &str) -> Result<(), UploadError> {
        if out.status.success() {
            return Ok(());
        }
        Err(UploadError::Remote {
            host: self.inner.name.clone(),
            remote: remote.to_owned(),
            status: out.status.to_string(),
            stderr: out.stderr_lossy().trim().to_owned(),
        })
    }

    /// GET `http://host:port/path` as seen from the node (a direct-tcpip channel: the node's sshd
    /// opens the TCP connection), with `Connection: close`.
    pub async fn http_get(
        &self,
        host: &str,
        port: u16,
        path: &str,
        limit: Duration,
    ) -> Result<HttpResponse, HttpError> {
        let target = format!("{host}:{port}");
        let node = || self.inner.name.clone();
        let timed_out = || HttpError::Timeout {
            host: node(),
            target: target.clone(),
            after: limit,
        };
        let deadline = Instant::now() + limit;
        let channel = timeout_at(
            deadline,
            self.inner
                .handle
                .channel_open_direct_tcpip(host, u32::from(port), "127.0.0.1", 0),
        )
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| HttpError::channel_open(node(), target.clone(), &e))?;
        let (mut rx, tx) = channel.split();
        let exchange = async {
            tx.data_bytes(request(host, port, path).into_bytes())
                .await
                .map_err(|e| HttpError::Connect {
                    host: node(),
                    target: target.clone(),
                    reason: e.to_string(),
                })?;
            let mut buf = Vec::new();
            loop {
                let (eof, closed) = match rx.wait().await {
                    Some(ChannelMsg::Data { data }) => {
                        buf.extend_from_slice(&data);
                        (false, false)
                    }
                    Some(ChannelMsg::Eof) => (true, false),
                    Some(ChannelMsg::Close) | None => (true, true),
                    Some(_) => continue,
                };
                let parsed = parse_response(&buf, eof).map_err(|reason| HttpError::Protocol {
                    host: node(),
                    target: target.clone(),
                    reason,
                })?;
                if let Some(resp) = parsed {
                    return Ok((resp, closed));
                }
            }
        };
        let result = timeout_at(deadline, exchange).await;
        if !matches!(result, Ok(Ok((_, true)))) {
            let _ = tx.close().await;
        }
        match result {
            Err(_) => Err(timed_out()),
            Ok(r) => r.map(|(resp, _)| resp),
        }
    }
}

const FINISH_MISMATCH: u32 = 92;

/// Sync, hash on the host, compare, then chmod and rename. Prints the host's digest.
fn finish_script(tmp: &str, dst: &str, dir: &str, want: &str, mode: u32) -> String {
    format!(
        "t={tmp}; d={dst}; \
         sync \"$t\" 2>/dev/null || sync; \
         if command -v sha256sum >/dev/null 2>&1; then h=$(sha256sum < \"$t\") && h=${{h%% *}}; \
         elif command -v shasum >/dev/null 2>&1; then h=$(shasum -a 256 < \"$t\") && h=${{h%% *}}; \
         elif command -v openssl >/dev/null 2>&1; then h=$(openssl dgst -sha256 < \"$t\") && h=${{h##* }}; \
         else echo 'no sha256sum, shasum or openssl on the host' >&2; exit 91; fi; \
         if [ \"$h\" != {want} ]; then echo \"$h\"; exit {FINISH_MISMATCH}; fi; \
         chmod {mode:o} \"$t\" && mv -f \"$t\" \"$d\" || exit 93; \
         sync {dir} 2>/dev/null; echo \"$h\"",
        want = quote(want),
    )
}

async fn read_local(local: &Path) -> Result<Vec<u8>, UploadError> {
    tokio::fs::read(local)
        .await
        .map_err(|source| UploadError::Local {
            path: local.to_path_buf(),
            source,
        })
}

/// Uploads one local file to many hosts at once (at most `parallel`), reading and hashing it
/// once. `progress(host, bytes_sent, total)`.
pub async fn upload_to_many(
    sessions: &[Session],
    local: &Path,
    remote_path: &str,
    mode: u32,
    parallel: usize,
    progress: HostProgress,
) -> Result<Vec<(String, Result<UploadReport, UploadError>)>, UploadError> {
    let data = Arc::new(read_local(local).await?);
    let digest = Arc::new(hex::encode(Sha256::digest(data.as_slice())));
    let gate = Arc::new(Semaphore::new(parallel.max(1)));
    let tasks: Vec<_> = sessions
        .iter()
        .map(|s| {
            let (s, data, digest, gate, progress) = (
                s.clone(),
                data.clone(),
                digest.clone(),
                gate.clone(),
                progress.clone(),
            );
            let remote = remote_path.to_owned();
            tokio::spawn(async move {
                let _permit = gate.acquire_owned().await;
                let name = s.host().to_owned();
                s.upload_bytes(&data, &digest, &remote, mode, &|done, total| {
                    progress(&name, done, total)
                })
                .await
            })
        })
        .collect();
    let mut out = Vec::with_capacity(sessions.len());
    for (s, t) in sessions.iter().zip(tasks) {
        let r = t.await.unwrap_or_else(|e| {
            Err(UploadError::Exec(ExecError::Lost {
                host: s.host().to_owned(),
                reason: format!("upload task failed: {e}"),
                stdout: Vec::new(),
                stderr: Vec::new(),
            }))
        });
        out.push((s.host().to_owned(), r));
    }
    Ok(out)
}

/// `export K='v'; command`, after checking each name is a plain shell variable name.
/// How long the host's `timeout` waits after its TERM before it sends KILL.
const REMOTE_KILL_AFTER: Duration = Duration::from_secs(3);
/// How long fleetup waits past a command's deadline for the host to report it ended: the
/// host's KILL plus time for the exit status to arrive. Only a host that does not answer at all
/// (a cut link, a frozen sshd) is waited for this long.
const LOCAL_DEADLINE_GRACE: Duration = Duration::from_secs(5);

/// The exit status of a command `timeout` ended: 124 after TERM; after KILL, `timeout` kills
/// its own process group, itself included (signal KILL, or 137 = 128 + 9 through a shell).
fn ended_by_remote_deadline(status: &ExitStatus) -> bool {
    match status {
        ExitStatus::Code(c) => matches!(c, 124 | 137),
        ExitStatus::Signal(s) => s == "KILL",
    }
}

/// Wraps `command` so the host ends it itself at the deadline: TERM at `limit` (whole seconds,
/// rounded up), KILL [`REMOTE_KILL_AFTER`] later. The host acts before fleetup's own deadline
/// ([`LOCAL_DEADLINE_GRACE`] later), so a report of a timeout means the command no longer runs
/// (a migration must not go on once fleetup said it failed); our signal request is not
/// enough: OpenSSH refuses signals for root sessions ("session signalling requires privilege
/// separation"). The login shell still runs the command (`$SHELL -c`); hosts without `timeout`
/// (coreutils, busybox) run it unwrapped.
fn with_remote_deadline(command: &str, limit: Duration) -> String {
    let secs = remote_seconds(limit);
    let kill = REMOTE_KILL_AFTER.as_secs();
    let q = quote(command);
    format!(
        "if command -v timeout >/dev/null 2>&1; then exec timeout -k {kill} {secs} \"${{SHELL:-/bin/sh}}\" -c {q}; else exec \"${{SHELL:-/bin/sh}}\" -c {q}; fi"
    )
}

/// When fleetup stops waiting for a command the host ends at `limit`.
fn local_deadline(limit: Duration) -> Duration {
    Duration::from_secs(remote_seconds(limit)) + LOCAL_DEADLINE_GRACE
}

/// `limit` in whole seconds for `timeout`, rounded up, at least 1.
fn remote_seconds(limit: Duration) -> u64 {
    limit.as_millis().div_ceil(1000).max(1) as u64
}

fn with_env(host: &str, command: &str, env: &[(String, String)]) -> Result<String, ExecError> {
    if env.is_empty() {
        return Ok(command.to_owned());
    }
    let mut prefix = String::from("export");
    for (k, v) in env {
        let valid = k
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
            && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if !valid {
            return Err(ExecError::BadEnv {
                host: host.to_owned(),
                name: k.clone(),
            });
        }
        prefix.push_str(&format!(" {k}={}", quote(v)));
    }
    Ok(format!("{prefix}; {command}"))
}

pub(super) fn signal_name_text(sig: &Sig) -> String {
    match sig {
        Sig::Custom(s) => s.clone(),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jump_specs() {
        assert_eq!(
            parse_jump("bastion", "root"),
            Some(("root".into(), "bastion".into(), 22))
        );
        assert_eq!(
            parse_jump("ops@bastion:2222", "root"),
            Some(("ops".into(), "bastion".into(), 2222))
        );
        assert_eq!(
            parse_jump("[::1]:2200", "u"),
            Some(("u".into(), "::1".into(), 2200))
        );
        assert_eq!(parse_jump("@bastion", "u"), None);
        assert_eq!(parse_jump("bastion:notaport", "u"), None);
        assert_eq!(parse_jump("", "u"), None);
    }

    #[test]
    fn env_is_exported_quoted_and_names_are_checked() {
        let env = vec![
            ("A_1".to_owned(), "x y".to_owned()),
            ("B".to_owned(), "$(id)".to_owned()),
        ];
        assert_eq!(
            with_env("h", "run", &env).unwrap(),
            "export A_1='x y' B='$(id)'; run"
        );
        let bad = vec![("A;B".to_owned(), "x".to_owned())];
        assert!(matches!(
            with_env("h", "run", &bad),
            Err(ExecError::BadEnv { .. })
        ));
        assert_eq!(with_env("h", "run", &[]).unwrap(), "run");
    }

    #[test]
    fn config_prefers_curve25519_and_keeps_strict_kex() {
        let cfg = client_config(
            &ConnectOptions::default(),
            russh::Preferred::DEFAULT.key.to_vec(),
            None,
        );
        assert_eq!(cfg.preferred.kex[0], russh::kex::CURVE25519);
        assert!(
            cfg.preferred
                .kex
                .contains(&russh::kex::EXTENSION_OPENSSH_STRICT_KEX_AS_CLIENT)
        );
        assert_eq!(cfg.preferred.kex.len(), russh::Preferred::DEFAULT.kex.len());
        assert_eq!(cfg.gex.max_group_size(), 4096);
        assert!(cfg.keepalive_interval < cfg.inactivity_timeout);
    }
}
