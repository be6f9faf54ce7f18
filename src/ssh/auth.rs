//! Public-key authentication: the ssh-agent first (when enabled), then identity files. Key files
//! are decrypted once per run and shared by every host through [`KeyCache`] (bcrypt decryption
//! is slow on purpose; doing it per host would dominate a fleet run).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::client::Handle;
use russh::keys::agent::AgentIdentity;
use russh::keys::agent::client::AgentClient;
use russh::keys::{PrivateKey, PrivateKeyWithHashAlg, PublicKey};
use tokio::sync::{Mutex, OnceCell};
use tokio::time::{Instant, timeout_at};

use super::error::ConnectError;
use super::known_hosts::{fingerprint, key_type};
use super::session::Client;

/// Environment variable holding the passphrase of encrypted identity files.
pub const PASSPHRASE_ENV: &str = "FLEETUP_KEY_PASSPHRASE";

/// Asks for the passphrase of a key file (the CLI prompts on a TTY). Called at most once per
/// key, from a blocking thread; `None` means "no passphrase available".
pub type PassphrasePrompt = Arc<dyn Fn(&Path) -> Option<String> + Send + Sync>;

type Loaded = Result<Arc<PrivateKey>, String>;

/// Decrypted identity files of a run, shared across hosts.
#[derive(Clone, Default)]
pub struct KeyCache {
    keys: Arc<Mutex<HashMap<PathBuf, Arc<OnceCell<Loaded>>>>>,
    passphrase: Option<String>,
    prompt: Option<PassphrasePrompt>,
    /// Serializes prompts so two keys never ask on the terminal at once.
    prompt_lock: Arc<std::sync::Mutex<()>>,
}

impl std::fmt::Debug for KeyCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyCache")
            .field("has_passphrase", &self.passphrase.is_some())
            .finish()
    }
}

impl KeyCache {
    /// Passphrase from [`PASSPHRASE_ENV`] when set, else `prompt` (if any).
    pub fn from_env(prompt: Option<PassphrasePrompt>) -> Self {
        let passphrase = std::env::var(PASSPHRASE_ENV).ok().filter(|p| !p.is_empty());
        if let Some(p) = &passphrase {
            crate::redact::known().register(p);
        }
        KeyCache {
            passphrase,
            prompt,
            ..Default::default()
        }
    }

    pub fn with_passphrase(passphrase: Option<String>, prompt: Option<PassphrasePrompt>) -> Self {
        if let Some(p) = &passphrase {
            crate::redact::known().register(p);
        }
        KeyCache {
            passphrase,
            prompt,
            ..Default::default()
        }
    }

    /// Loads (and decrypts, asking for passphrases) every existing key of `paths` now, so
    /// prompts happen before connections start rather than in the middle of a run.
    pub async fn preload(&self, paths: &[PathBuf]) -> Result<(), ConnectError> {
        for p in paths {
            self.get(p).await?;
        }
        Ok(())
    }

    /// The decrypted key, loading it on first use. `Ok(None)`: the file does not exist.
    pub async fn get(&self, path: &Path) -> Result<Option<Arc<PrivateKey>>, ConnectError> {
        if !path.exists() {
            return Ok(None);
        }
        let cell = {
            let mut map = self.keys.lock().await;
            map.entry(path.to_path_buf()).or_default().clone()
        };
        let loaded = cell
            .get_or_init(|| {
                let this = self.clone();
                let path = path.to_path_buf();
                async move {
                    tokio::task::spawn_blocking(move || this.load_blocking(&path))
                        .await
                        .unwrap_or_else(|e| Err(format!("key loader panicked: {e}")))
                }
            })
            .await;
        match loaded {
            Ok(k) => Ok(Some(k.clone())),
            Err(reason) => Err(ConnectError::Key {
                path: path.to_path_buf(),
                reason: reason.clone(),
            }),
        }
    }

    fn load_blocking(&self, path: &Path) -> Loaded {
        match russh::keys::load_secret_key(path, None) {
            Ok(k) => return Ok(Arc::new(k)),
            Err(russh::keys::Error::KeyIsEncrypted) => {}
            Err(e) => return Err(format!("cannot read the key: {e}")),
        }
        let (passphrase, source) = match &self.passphrase {
            Some(p) => (Some(p.clone()), format!("`{PASSPHRASE_ENV}`")),
            None => {
                let asked = self.prompt.as_ref().and_then(|prompt| {
                    let _one_at_a_time = self.prompt_lock.lock();
                    prompt(path)
                });
                if let Some(p) = &asked {
                    crate::redact::known().register(p);
                }
                (asked, "the prompt".to_owned())
            }
        };
        let Some(passphrase) = passphrase else {
            return Err(format!(
                "the key is encrypted and no passphrase is available (set `{PASSPHRASE_ENV}`)"
            ));
        };
        russh::keys::load_secret_key(path, Some(&passphrase))
            .map(Arc::new)
            .map_err(|e| format!("cannot decrypt the key with the passphrase from {source} (wrong passphrase?): {e}"))
    }
}

/// Who to authenticate as, with what, and until when.
pub(crate) struct AuthRequest<'a> {
    pub host: &'a str,
    pub addr: &'a str,
    pub user: &'a str,
    /// The agent socket, when the host uses the agent.
    pub agent: Option<&'a Path>,
    pub identity_files: &'a [PathBuf],
    /// ssh_config's `CertificateFile`, offered with the identity file whose key it certifies
    /// (besides each identity file's own `FILE-cert.pub`).
    pub certificate_file: Option<&'a Path>,
    /// ssh_config's `IdentitiesOnly`: agent keys only when an identity file's `.pub` is theirs.
    pub identities_only: bool,
    pub keys: &'a KeyCache,
    /// End of the connect timeout. Time spent decrypting keys (a passphrase prompt above all)
    /// does not count against it.
    pub deadline: Instant,
    pub connect_timeout: Duration,
}

impl AuthRequest<'_> {
    fn timed_out(&self) -> ConnectError {
        ConnectError::Timeout {
            host: self.host.to_owned(),
            addr: self.addr.to_owned(),
            stage: "authentication",
            after: self.connect_timeout,
        }
    }

    fn handshake(&self, source: russh::Error) -> ConnectError {
        ConnectError::Handshake {
            host: self.host.to_owned(),
            addr: self.addr.to_owned(),
            source,
        }
    }
}

/// Authenticates on a fresh handle: keys of the agent first, then each identity file not
/// already offered through the agent.
pub(crate) async fn authenticate(
    handle: &mut Handle<Client>,
    req: &AuthRequest<'_>,
) -> Result<(), ConnectError> {
    let mut tried: Vec<String> = Vec::new();
    let mut offered: Vec<PublicKey> = Vec::new();
    let mut deadline = req.deadline;

    if let Some(sock) = req.agent {
        let sock = sock.display().to_string();
        let agent = timeout_at(deadline, AgentClient::connect_uds(sock.clone()))
            .await
            .map_err(|_| req.timed_out())?;
        match agent {
            Err(e) => tried.push(format!("agent `{sock}` (unavailable: {e})")),
            Ok(mut agent) => {
                let ids = match timeout_at(deadline, agent.request_identities())
                    .await
                    .map_err(|_| req.timed_out())?
                {
                    Ok(ids) => ids,
                    Err(e) => {
                        tried.push(format!("agent `{sock}` (cannot list keys: {e})"));
                        Vec::new()
                    }
                };
                let allowed: Vec<PublicKey> = req
                    .identity_files
                    .iter()
                    .filter_map(|p| russh::keys::load_public_key(pub_path(p)).ok())
                    .collect();
                for id in ids {
                    let AgentIdentity::PublicKey { key, .. } = id else {
                        continue;
                    };
                    if req.identities_only
                        && !allowed.iter().any(|k| k.key_data() == key.key_data())
                    {
                        continue;
                    }
                    let hash = timeout_at(deadline, rsa_hash(handle, &key))
                        .await
                        .map_err(|_| req.timed_out())?
                        .map_err(|e| req.handshake(e))?;
                    tried.push(format!("agent {} `{}`", key_type(&key), fingerprint(&key)));
                    offered.push(key.clone());
                    let attempt =
                        handle.authenticate_publickey_with(req.user, key, hash, &mut agent);
                    let result = timeout_at(deadline, attempt)
                        .await
                        .map_err(|_| req.timed_out())?;
                    log_attempt(
                        req,
                        tried.last(),
                        result.as_ref().map_err(|e| e.to_string()),
                    );
                    match result {
                        Ok(r) if r.success() => return Ok(()),
                        Ok(_) => {}
                        Err(e) => {
                            if let Some(last) = tried.last_mut() {
                                last.push_str(&format!(" (agent could not sign: {e})"));
                            }
                        }
                    }
                }
            }
        }
    }

    for path in req.identity_files {
        let loading = Instant::now();
        let key = req.keys.get(path).await?;
        deadline += loading.elapsed();
        let Some(key) = key else {
            tried.push(format!("`{}` (missing)", path.display()));
            continue;
        };
        let public = key.public_key();
        for cert_path in certificates_for(path, req.certificate_file) {
            let Ok(cert) = russh::keys::load_openssh_certificate(&cert_path) else {
                continue;
            };
            if cert.public_key() != public.key_data() {
                continue;
            }
            tried.push(format!("certificate `{}`", cert_path.display()));
            let attempt = handle.authenticate_openssh_cert(req.user, key.clone(), cert);
            match timeout_at(deadline, attempt)
                .await
                .map_err(|_| req.timed_out())?
            {
                Ok(r) if r.success() => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(req.handshake(e)),
            }
        }
        if offered.iter().any(|k| k.key_data() == public.key_data()) {
            continue;
        }
        let hash = timeout_at(deadline, rsa_hash(handle, public))
            .await
            .map_err(|_| req.timed_out())?
            .map_err(|e| req.handshake(e))?;
        tried.push(format!("`{}`", path.display()));
        let with_hash = PrivateKeyWithHashAlg::new(key.clone(), hash);
        let attempt = handle.authenticate_publickey(req.user, with_hash);
        let result = timeout_at(deadline, attempt)
            .await
            .map_err(|_| req.timed_out())?;
        log_attempt(
            req,
            tried.last(),
            result.as_ref().map_err(|e| e.to_string()),
        );
        match result {
            Ok(r) if r.success() => return Ok(()),
            Ok(_) => {}
            Err(e) => return Err(req.handshake(e)),
        }
    }
    Err(ConnectError::Auth {
        host: req.host.to_owned(),
        user: req.user.to_owned(),
        tried,
    })
}

/// `FILE.pub`, where OpenSSH looks for an identity file's public key.
fn pub_path(identity: &Path) -> PathBuf {
    let mut p = identity.as_os_str().to_owned();
    p.push(".pub");
    PathBuf::from(p)
}

/// The certificates to try with `identity`'s key: the configured `CertificateFile`, then
/// `FILE-cert.pub` as OpenSSH does; only existing files.
fn certificates_for(identity: &Path, configured: Option<&Path>) -> Vec<PathBuf> {
    let mut implicit = identity.as_os_str().to_owned();
    implicit.push("-cert.pub");
    let mut out: Vec<PathBuf> = configured.map(Path::to_path_buf).into_iter().collect();
    out.push(PathBuf::from(implicit));
    out.dedup();
    out.retain(|p| p.is_file());
    out
}

/// The `-vvv` line of one authentication attempt: method, key, result, what the server offers
/// next. Keys are named by file or fingerprint; nothing secret is logged.
fn log_attempt(
    req: &AuthRequest<'_>,
    what: Option<&String>,
    result: Result<&russh::client::AuthResult, String>,
) {
    let outcome = match result {
        Ok(russh::client::AuthResult::Success) => "accepted".to_owned(),
        Ok(russh::client::AuthResult::Failure {
            remaining_methods,
            partial_success,
        }) => {
            let left: Vec<&str> = remaining_methods.iter().map(<&str>::from).collect();
            format!(
                "refused{} (the server accepts: {})",
                if *partial_success {
                    ", partial success"
                } else {
                    ""
                },
                left.join(",")
            )
        }
        Err(e) => format!("failed: {e}"),
    };
    log::debug!(
        target: super::session::LOG_TARGET,
        "{}: auth publickey {} as `{}`: {outcome}",
        req.host,
        what.map_or("?", String::as_str),
        req.user
    );
}

/// SHA-2 for RSA keys (OpenSSH >= 8.8 refuses SHA-1 `ssh-rsa`); asked only for RSA because the
/// server's answer can take a second to arrive.
async fn rsa_hash(
    handle: &Handle<Client>,
    key: &PublicKey,
) -> Result<Option<russh::keys::HashAlg>, russh::Error> {
    if !key.algorithm().is_rsa() {
        return Ok(None);
    }
    Ok(handle
        .best_supported_rsa_hash()
        .await?
        .flatten()
        .or(Some(russh::keys::HashAlg::Sha256)))
}
