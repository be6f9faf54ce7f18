//! Our own OpenSSH known_hosts matcher, over the user file and the global files together (as
//! `UserKnownHostsFile` and `GlobalKnownHostsFile`): hashed `|1|salt|hmac` entries,
//! `[host]:port`, pattern lists with `*`, `?` and `!negation`, several key types per host,
//! `@revoked` in any file winning over everything, and `@cert-authority` for host certificates.
//! Also the locked append of a newly accepted host. russh's helper does none of this.

use std::fmt;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use russh::keys::ssh_key::certificate::CertType;
use russh::keys::ssh_key::public::KeyData;
use russh::keys::{Algorithm, Certificate, HashAlg, PublicKey};

use super::error::CertProblem;

/// The name known_hosts records for a host: `host` on port 22, `[host]:port` otherwise.
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// A line of a known_hosts file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    /// 1-based.
    pub line: usize,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)
    }
}

/// One parsed known_hosts file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    pub path: PathBuf,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// 1-based line number in the file.
    line: usize,
    marker: Marker,
    hosts: Hosts,
    key: PublicKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Marker {
    Plain,
    Revoked,
    CertAuthority,
}

#[derive(Debug, Clone)]
enum Hosts {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Patterns(Vec<String>),
}

/// What the files say about a host and the plain key it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is recorded for this host.
    Known { at: Location },
    /// The key is marked `@revoked`.
    Revoked { at: Location },
    /// The host is recorded with another key of the same type.
    Changed { at: Location },
    /// The key is not recorded. `other_types` lists the key types recorded for this host, with
    /// their first line; empty when the host is not in any file at all.
    Unknown {
        other_types: Vec<(String, Location)>,
    },
}

impl KnownHosts {
    /// Reads `path`; a missing file is an empty one. Lines that cannot be parsed (unknown key
    /// types, garbage) are skipped, as OpenSSH does.
    pub fn load(path: &Path) -> std::io::Result<Self> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        Ok(Self::parse(path, &text))
    }

    pub fn parse(path: &Path, text: &str) -> Self {
        let entries = text
            .lines()
            .enumerate()
            .filter_map(|(i, l)| parse_line(i + 1, l))
            .collect();
        KnownHosts {
            path: path.to_path_buf(),
            entries,
        }
    }

    /// [`KnownHostsFiles::check`] of this file alone.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        check_in(std::slice::from_ref(self), host, port, key)
    }

    /// Whether new entries should be hashed: most host entries of the file are (the operator
    /// hashes this file, `HashKnownHosts yes` or `ssh-keygen -H`).
    fn mostly_hashed(&self) -> bool {
        let plain = self.entries.iter().filter(|e| e.marker == Marker::Plain);
        let (hashed, total) = plain.fold((0, 0), |(h, t), e| {
            (
                h + usize::from(matches!(e.hosts, Hosts::Hashed { .. })),
                t + 1,
            )
        });
        hashed > 0 && hashed * 2 >= total
    }
}

/// The user's known_hosts file (first, the one new keys go to) and the global ones, read
/// together: a key recorded in any file is accepted, `@revoked` in any file refuses.
#[derive(Debug, Clone, Default)]
pub struct KnownHostsFiles {
    files: Vec<KnownHosts>,
}

impl KnownHostsFiles {
    /// Reads the user file and each global file; missing files are empty. An error names the
    /// file that could not be read.
    pub fn load(user: &Path, global: &[PathBuf]) -> Result<Self, (PathBuf, std::io::Error)> {
        let files = std::iter::once(user)
            .chain(global.iter().map(PathBuf::as_path))
            .map(|p| KnownHosts::load(p).map_err(|e| (p.to_path_buf(), e)))
            .collect::<Result<_, _>>()?;
        Ok(KnownHostsFiles { files })
    }

    pub fn from_files(files: Vec<KnownHosts>) -> Self {
        KnownHostsFiles { files }
    }

    /// Checks the plain key `host:port` presented. Revocation (in any file) wins over
    /// everything, then an exact match, then a recorded key of the same type (changed), else
    /// unknown.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        check_in(&self.files, host, port, key)
    }

    /// The host-key algorithms to offer, with the families recorded for this host first, so a
    /// host known only by its RSA key is asked for that key (as OpenSSH does).
    pub fn preferred_for_host(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let name = lookup_name(host, port);
        let known: Vec<Algorithm> = matching(&self.files, &name)
            .filter(|(_, e)| e.marker == Marker::Plain)
            .map(|(_, e)| e.key.algorithm())
            .collect();
        let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) = russh::Preferred::DEFAULT
            .key
            .iter()
            .cloned()
            .partition(|alg| known.iter().any(|k| same_family(k, alg)));
        first.extend(rest);
        first
    }

    /// The host-certificate algorithms to offer: none unless an `@cert-authority` entry
    /// matches the host, so a host nobody vouches for is never asked for a certificate. The
    /// SHA-1 `ssh-rsa` variant is left out, as OpenSSH does.
    pub fn certificate_algorithms_for_host(&self, host: &str, port: u16) -> Vec<Algorithm> {
        if self.cert_authorities(host, port).is_empty() {
            return Vec::new();
        }
        self.preferred_for_host(host, port)
            .into_iter()
            .filter(|a| *a != Algorithm::Rsa { hash: None })
            .collect()
    }

    /// The `@cert-authority` entries that apply to `host:port`, with their location.
    pub fn cert_authorities(&self, host: &str, port: u16) -> Vec<(Location, &PublicKey)> {
        let name = lookup_name(host, port);
        matching(&self.files, &name)
            .filter(|(_, e)| e.marker == Marker::CertAuthority)
            .map(|(path, e)| (at(path, e), &e.key))
            .collect()
    }

    /// Where `key` is marked `@revoked` for `host:port`, if anywhere.
    pub fn revoked(&self, host: &str, port: u16, key: &KeyData) -> Option<Location> {
        let name = lookup_name(host, port);
        matching(&self.files, &name)
            .find(|(_, e)| e.marker == Marker::Revoked && e.key.key_data() == key)
            .map(|(path, e)| at(path, e))
    }

    /// Validates a host certificate `host:port` presented, at `now` (Unix seconds): signed by a
    /// CA an `@cert-authority` entry for this host trusts, neither the CA nor the certified key
    /// `@revoked`, a host certificate, inside its validity window, with a good signature,
    /// naming the host among its principals (the address as written, or its known_hosts
    /// name) and carrying no critical option. Ok: where the CA is trusted.
    pub fn check_certificate(
        &self,
        host: &str,
        port: u16,
        cert: &Certificate,
        now: u64,
    ) -> Result<Location, (Option<Location>, CertProblem)> {
        let ca_key = cert.signature_key();
        let Some(ca_at) = self
            .cert_authorities(host, port)
            .into_iter()
            .find(|(_, k)| k.key_data() == ca_key)
            .map(|(l, _)| l)
        else {
            return Err((None, CertProblem::UnknownCa));
        };
        let fail = |p: CertProblem| Err((Some(ca_at.clone()), p));
        if let Some(at) = self.revoked(host, port, ca_key) {
            return fail(CertProblem::RevokedCa { at });
        }
        if let Some(at) = self.revoked(host, port, cert.public_key()) {
            return fail(CertProblem::RevokedKey {
                key: cert.public_key().fingerprint(HashAlg::Sha256).to_string(),
                at,
            });
        }
        if cert.cert_type() != CertType::Host {
            return fail(CertProblem::NotHost);
        }
        if now < cert.valid_after() {
            return fail(CertProblem::NotYetValid {
                valid_after: cert.valid_after(),
            });
        }
        if now >= cert.valid_before() {
            return fail(CertProblem::Expired {
                valid_before: cert.valid_before(),
            });
        }
        let ca_fp = ca_key.fingerprint(HashAlg::Sha256);
        if cert.validate_at(now, [&ca_fp]).is_err() {
            return fail(CertProblem::BadSignature);
        }
        let principals = cert.valid_principals();
        let (wanted, name) = (host.to_ascii_lowercase(), lookup_name(host, port));
        if principals.is_empty() {
            return fail(CertProblem::NoPrincipals { wanted });
        }
        if !principals
            .iter()
            .any(|p| p.eq_ignore_ascii_case(&wanted) || p.eq_ignore_ascii_case(&name))
        {
            return fail(CertProblem::WrongPrincipal {
                principals: principals.to_vec(),
                wanted,
            });
        }
        if !cert.critical_options().is_empty() {
            return fail(CertProblem::CriticalOptions {
                options: cert.critical_options().keys().cloned().collect(),
            });
        }
        Ok(ca_at)
    }
}

fn at(path: &Path, e: &Entry) -> Location {
    Location {
        file: path.to_path_buf(),
        line: e.line,
    }
}

/// Every entry of `files` whose host patterns match `name`, in file order.
fn matching<'a, 'n>(
    files: &'a [KnownHosts],
    name: &'n str,
) -> impl Iterator<Item = (&'a Path, &'a Entry)> + use<'a, 'n> {
    files.iter().flat_map(move |f| {
        f.entries
            .iter()
            .filter(move |e| e.hosts.matches(name))
            .map(move |e| (f.path.as_path(), e))
    })
}

fn check_in(files: &[KnownHosts], host: &str, port: u16, key: &PublicKey) -> Verdict {
    let name = lookup_name(host, port);
    let entries: Vec<(&Path, &Entry)> = matching(files, &name).collect();
    if let Some((p, e)) = entries
        .iter()
        .find(|(_, e)| e.marker == Marker::Revoked && same_key(&e.key, key))
    {
        return Verdict::Revoked { at: at(p, e) };
    }
    let plain: Vec<&(&Path, &Entry)> = entries
        .iter()
        .filter(|(_, e)| e.marker == Marker::Plain)
        .collect();
    if let Some((p, e)) = plain.iter().find(|(_, e)| same_key(&e.key, key)) {
        return Verdict::Known { at: at(p, e) };
    }
    if let Some((p, e)) = plain
        .iter()
        .find(|(_, e)| same_family(&e.key.algorithm(), &key.algorithm()))
    {
        return Verdict::Changed { at: at(p, e) };
    }
    let mut other_types: Vec<(String, Location)> = Vec::new();
    for (p, e) in plain {
        let t = e.key.algorithm().as_str().to_owned();
        if !other_types.iter().any(|(k, _)| *k == t) {
            other_types.push((t, at(p, e)));
        }
    }
    Verdict::Unknown { other_types }
}

/// What [`record_new_host`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recorded {
    /// Appended, hashed or plain like the file's other entries.
    Added { hashed: bool },
    /// Another process recorded this very key meanwhile.
    AlreadyKnown,
    /// The file changed meanwhile and now says something else about the host.
    Refused(Verdict),
}

/// Appends the key of a host seen for the first time to the user's known_hosts file, under an
/// exclusive lock on the file (so fleetup processes running at once serialise), after reading
/// it again under that lock: another process may have recorded the host meanwhile. The entry is
/// hashed when the file's entries mostly are. Waits at most `wait` for the lock.
pub fn record_new_host(
    path: &Path,
    host: &str,
    port: u16,
    key: &PublicKey,
    wait: Duration,
) -> Result<Recorded, String> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("cannot create `{}`: {e}", dir.display()))?;
    }
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + wait;
    loop {
        match file.try_lock() {
            Ok(()) => break,
            Err(std::fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(std::fs::TryLockError::WouldBlock) => {
                return Err(format!(
                    "another process has held its lock for more than {}",
                    humantime::format_duration(wait)
                ));
            }
            Err(std::fs::TryLockError::Error(e)) => return Err(format!("cannot lock it: {e}")),
        }
    }
    // The lock is released when `file` is closed, on every return below.
    let mut text = String::new();
    file.rewind()
        .and_then(|_| file.read_to_string(&mut text))
        .map_err(|e| e.to_string())?;
    let current = KnownHosts::parse(path, &text);
    match current.check(host, port, key) {
        Verdict::Known { .. } => return Ok(Recorded::AlreadyKnown),
        Verdict::Unknown { other_types } if other_types.is_empty() => {}
        other => return Ok(Recorded::Refused(other)),
    }
    let hashed = current.mostly_hashed();
    let line = if hashed {
        format!("{} {}", hashed_name(host, port), key_text(key)?)
    } else {
        entry_line(host, port, key).map_err(|e| e.to_string())?
    };
    let newline = if text.is_empty() || text.ends_with('\n') {
        ""
    } else {
        "\n"
    };
    file.write_all(format!("{newline}{line}\n").as_bytes())
        .and_then(|()| file.sync_data())
        .map_err(|e| e.to_string())?;
    Ok(Recorded::Added { hashed })
}

/// `type base64` of a key, without comment.
fn key_text(key: &PublicKey) -> Result<String, String> {
    let mut k = key.clone();
    k.set_comment("");
    k.to_openssh()
        .map(|t| t.trim_end().to_owned())
        .map_err(|e| e.to_string())
}

/// One plain line for a newly accepted key: `[host]:port type base64`.
pub fn entry_line(host: &str, port: u16, key: &PublicKey) -> anyhow::Result<String> {
    let text = key_text(key).map_err(anyhow::Error::msg)?;
    Ok(format!("{} {text}", lookup_name(host, port)))
}

/// `SHA256:...` as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The type name as it appears in known_hosts (`ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`).
pub fn key_type(key: &PublicKey) -> String {
    key_data_type(key.key_data())
}

/// [`key_type`] of bare key data (a certificate's key, a CA key).
pub fn key_data_type(key: &KeyData) -> String {
    match key.algorithm() {
        Algorithm::Rsa { .. } => "ssh-rsa".to_owned(),
        a => a.as_str().to_owned(),
    }
}

fn same_key(a: &PublicKey, b: &PublicKey) -> bool {
    a.key_data() == b.key_data()
}

/// RSA keys are one family whatever signature hash is negotiated.
pub(crate) fn same_family(a: &Algorithm, b: &Algorithm) -> bool {
    matches!((a, b), (Algorithm::Rsa { .. }, Algorithm::Rsa { .. })) || a == b
}

fn parse_line(line_no: usize, line: &str) -> Option<Entry> {
    let mut fields = line.split_ascii_whitespace().peekable();
    let first = *fields.peek()?;
    if first.starts_with('#') {
        return None;
    }
    let mut marker = Marker::Plain;
    if first.starts_with('@') {
        marker = match first {
            "@revoked" => Marker::Revoked,
            "@cert-authority" => Marker::CertAuthority,
            // An unknown marker: skip the line rather than read it as a plain entry.
            _ => return None,
        };
        fields.next();
    }
    let hosts = fields.next()?;
    let _key_type = fields.next()?;
    let b64 = fields.next()?;
    let key = russh::keys::parse_public_key_base64(b64).ok()?;
    let hosts = if let Some(rest) = hosts.strip_prefix("|1|") {
        let (salt, hash) = rest.split_once('|')?;
        Hosts::Hashed {
            salt: B64.decode(salt).ok()?,
            hash: B64.decode(hash).ok()?,
        }
    } else {
        Hosts::Patterns(hosts.split(',').map(|p| p.to_ascii_lowercase()).collect())
    };
    Some(Entry {
        line: line_no,
        marker,
        hosts,
        key,
    })
}

impl Hosts {
    fn matches(&self, name: &str) -> bool {
        match self {
            Hosts::Hashed { salt, hash } => {
                let Ok(mut mac) = Hmac::<sha1::Sha1>::new_from_slice(salt) else {
                    return false;
                };
                mac.update(name.as_bytes());
                mac.verify_slice(hash).is_ok()
            }
            Hosts::Patterns(patterns) => {
                let mut positive = false;
                for p in patterns {
                    if let Some(neg) = p.strip_prefix('!') {
                        if wildcard_match(neg.as_bytes(), name.as_bytes()) {
                            return false;
                        }
                    } else if wildcard_match(p.as_bytes(), name.as_bytes()) {
                        positive = true;
                    }
                }
                positive
            }
        }
    }
}

/// `*` matches any run of characters, `?` exactly one; everything else literally.
fn wildcard_match(pattern: &[u8], text: &[u8]) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && (pattern[p] == b'?' || pattern[p] == text[t]) {
            p += 1;
            t += 1;
        } else if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// `|1|salt|hmac` for `host:port` with a random salt, as `ssh-keygen -H` writes it.
pub fn hashed_name(host: &str, port: u16) -> String {
    let salt: [u8; 20] = rand::random();
    let mut mac = Hmac::<sha1::Sha1>::new_from_slice(&salt).expect("HMAC takes any key length");
    mac.update(lookup_name(host, port).as_bytes());
    format!(
        "|1|{}|{}",
        B64.encode(salt),
        B64.encode(mac.finalize().into_bytes())
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const ED_A: &str = "AAAAC3NzaC1lZDI1NTE5AAAAINodVyxZQeju3yS9wWpllJ2kVqT+vndLcFnz2gxSVQOh";
    const ED_B: &str = "AAAAC3NzaC1lZDI1NTE5AAAAIE2L6Mt3DSkxNDdUlocqjH6UOeKvmnsaRLVKi2cMrDyO";
    const RSA: &str = "AAAAB3NzaC1yc2EAAAADAQABAAABAQC7wzl7ZtMa3eL9NewFpNFkM4izrNlF01tE3b6MuYC+1U7I7VPx6MF33FAWe6W3O0ZF6tLmfD+QLE/u7uvIdayWa6S4xDeR78rlburlX+Q2opkPEG87kzuYv72KR4RA1RSyfGMgbk5/qvnZsbu8j0uwEJCzwKt1jtk7YsYrnuiq/YimDMxZoI1ugnxkka989Mu2WDl3u52n2mUUi+znPIgjVIPrTT2tnE7VCFNi4WlQTzruDkR1Dq90k+gDh9S09rwt9AHWeHmuU1InDlgpPxm23LSEoN8KjEiPc+tC0uQS185SukoSUER5x7mhgsdZBPHHLMyw1+ArloxioCoEpN9t";

    fn key(b64: &str) -> PublicKey {
        russh::keys::parse_public_key_base64(b64).unwrap()
    }

    fn kh(text: &str) -> KnownHosts {
        KnownHosts::parse(Path::new("/k"), text)
    }

    fn l(line: usize) -> Location {
        Location {
            file: "/k".into(),
            line,
        }
    }

    fn files(f: KnownHosts) -> KnownHostsFiles {
        KnownHostsFiles::from_files(vec![f])
    }

    #[test]
    fn port_22_uses_bare_name_and_other_ports_brackets() {
        let f = kh(&format!(
            "10.0.0.1 ssh-ed25519 {ED_A}\n[10.0.0.2]:2222 ssh-ed25519 {ED_A}\n"
        ));
        assert_eq!(
            f.check("10.0.0.1", 22, &key(ED_A)),
            Verdict::Known { at: l(1) }
        );
        assert!(matches!(
            f.check("10.0.0.1", 2222, &key(ED_A)),
            Verdict::Unknown { .. }
        ));
        assert_eq!(
            f.check("10.0.0.2", 2222, &key(ED_A)),
            Verdict::Known { at: l(2) }
        );
        assert!(matches!(
            f.check("10.0.0.2", 22, &key(ED_A)),
            Verdict::Unknown { .. }
        ));
    }

    #[test]
    fn changed_key_names_the_line() {
        let f = kh(&format!(
            "# comment\n\nweb1,10.0.0.1\tssh-ed25519\t{ED_A} c\n"
        ));
        assert_eq!(
            f.check("WEB1", 22, &key(ED_B)),
            Verdict::Changed { at: l(3) }
        );
        assert_eq!(
            f.check("10.0.0.1", 22, &key(ED_A)),
            Verdict::Known { at: l(3) }
        );
    }

    #[test]
    fn revoked_wins_even_over_a_plain_entry() {
        let f = kh(&format!(
            "h ssh-ed25519 {ED_A}\n@revoked * ssh-ed25519 {ED_A}\n"
        ));
        assert_eq!(f.check("h", 22, &key(ED_A)), Verdict::Revoked { at: l(2) });
        assert_eq!(f.check("h", 22, &key(ED_B)), Verdict::Changed { at: l(1) });
    }

    #[test]
    fn cert_authority_and_garbage_lines_are_skipped() {
        let f = kh(&format!(
            "@cert-authority *.example ssh-ed25519 {ED_A}\nnot a key line\nh ssh-foo AAAA\nh\n"
        ));
        assert_eq!(
            f.check("a.example", 22, &key(ED_A)),
            Verdict::Unknown {
                other_types: vec![]
            }
        );
    }

    #[test]
    fn patterns_with_wildcards_and_negation() {
        let f = kh(&format!(
            "[127.0.0.*]:2222,!127.0.0.9 ssh-ed25519 {ED_A}\n*.prod,!db?.prod ssh-ed25519 {ED_B}\n"
        ));
        assert_eq!(
            f.check("127.0.0.5", 2222, &key(ED_A)),
            Verdict::Known { at: l(1) }
        );
        assert_eq!(
            f.check("web.prod", 22, &key(ED_B)),
            Verdict::Known { at: l(2) }
        );
        assert!(matches!(
            f.check("db1.prod", 22, &key(ED_B)),
            Verdict::Unknown { .. }
        ));
        assert!(matches!(
            f.check("db12.prod", 22, &key(ED_B)),
            Verdict::Known { .. }
        ));
        assert!(wildcard_match(b"a*b*c", b"aXXbYc"));
        assert!(!wildcard_match(b"a*b?c", b"abc"));
    }

    #[test]
    fn hashed_entries_match_only_their_host() {
        let name = hashed_name("10.1.2.3", 2200);
        let f = kh(&format!("{name} ssh-ed25519 {ED_A}\n"));
        assert_eq!(
            f.check("10.1.2.3", 2200, &key(ED_A)),
            Verdict::Known { at: l(1) }
        );
        assert!(matches!(
            f.check("10.1.2.3", 22, &key(ED_A)),
            Verdict::Unknown { .. }
        ));
        // Lines written by `ssh-keygen -H` for `localhost` and `[127.0.0.1]:2222`.
        let f = kh(&format!(
            "|1|j970MMzWJM+5uHOwzGDKyuWfC08=|SCBifzsdqm9qfF5d45fXEZzsvAs= ssh-ed25519 {ED_A}\n\
             |1|IHI4qsd74NKq1SYKoaudJ9d0hbs=|kEVCwfGEP0Pv7a36IReB3nVqGAQ= ssh-ed25519 {ED_B}\n"
        ));
        assert_eq!(
            f.check("localhost", 22, &key(ED_A)),
            Verdict::Known { at: l(1) }
        );
        assert_eq!(
            f.check("127.0.0.1", 2222, &key(ED_B)),
            Verdict::Known { at: l(2) }
        );
        assert_eq!(
            f.check("127.0.0.1", 2222, &key(ED_A)),
            Verdict::Changed { at: l(2) }
        );
    }

    #[test]
    fn unknown_lists_other_types_and_preference_puts_them_first() {
        let f = kh(&format!("h ssh-rsa {RSA}\n"));
        assert_eq!(
            f.check("h", 22, &key(ED_A)),
            Verdict::Unknown {
                other_types: vec![("ssh-rsa".to_owned(), l(1))]
            }
        );
        let pref = files(f).preferred_for_host("h", 22);
        assert!(matches!(pref[0], Algorithm::Rsa { .. }), "{pref:?}");
        assert_eq!(pref.len(), russh::Preferred::DEFAULT.key.len());
        assert_eq!(
            files(kh("")).preferred_for_host("h", 22)[0],
            Algorithm::Ed25519
        );
    }

    #[test]
    fn entry_line_round_trips() {
        let line = entry_line("127.0.0.1", 2201, &key(ED_A)).unwrap();
        assert_eq!(line, format!("[127.0.0.1]:2201 ssh-ed25519 {ED_A}"));
        assert_eq!(
            kh(&line).check("127.0.0.1", 2201, &key(ED_A)),
            Verdict::Known { at: l(1) }
        );
    }

    mod certificates {
        use super::*;
        use russh::keys::PrivateKey;
        use russh::keys::ssh_key::certificate::Builder;
        use russh::keys::ssh_key::private::Ed25519Keypair;

        const NOW: u64 = 1_800_000_000;

        fn private(seed: u8) -> PrivateKey {
            PrivateKey::from(Ed25519Keypair::from_seed(&[seed; 32]))
        }

        #[derive(Clone, Copy)]
        struct Cert<'a> {
            ca: &'a PrivateKey,
            host_key: &'a PrivateKey,
            kind: CertType,
            principals: &'a [&'a str],
            window: (u64, u64),
            critical: Option<&'a str>,
        }

        impl<'a> Cert<'a> {
            /// A host certificate for `127.0.0.1`, valid a minute either side of `NOW`.
            fn valid(ca: &'a PrivateKey, host_key: &'a PrivateKey) -> Cert<'a> {
                Cert {
                    ca,
                    host_key,
                    kind: CertType::Host,
                    principals: &["127.0.0.1"],
                    window: (NOW - 60, NOW + 60),
                    critical: None,
                }
            }

            fn sign(&self) -> Certificate {
                let mut b = Builder::new(
                    [7u8; 32],
                    self.host_key.public_key().key_data().clone(),
                    self.window.0,
                    self.window.1,
                )
                .unwrap();
                b.cert_type(self.kind).unwrap();
                b.key_id("node-1").unwrap();
                for p in self.principals {
                    b.valid_principal(*p).unwrap();
                }
                if self.principals.is_empty() {
                    b.all_principals_valid().unwrap();
                }
                if let Some(o) = self.critical {
                    b.critical_option(o, "").unwrap();
                }
                b.sign(self.ca).unwrap()
            }
        }

        fn line(marker: &str, hosts: &str, key: &PrivateKey) -> String {
            let text = key.public_key().to_openssh().unwrap();
            format!("{marker}{hosts} {}", text.trim_end())
        }

        fn check(kh_text: &str, cert: &Certificate) -> Result<usize, CertProblem> {
            files(kh(kh_text))
                .check_certificate("127.0.0.1", 2201, cert, NOW)
                .map(|l| l.line)
                .map_err(|(_, p)| p)
        }

        #[test]
        fn a_valid_host_certificate_names_the_trusting_entry() {
            let (ca, other_ca, host) = (private(1), private(2), private(3));
            let good = Cert::valid(&ca, &host);
            let text = format!(
                "{}\n{}\n",
                line("@cert-authority ", "*.example", &other_ca),
                line("@cert-authority ", "[127.0.0.*]:*", &ca)
            );
            assert_eq!(check(&text, &good.sign()), Ok(2));
            // The known_hosts name is a valid principal too.
            let by_name = Cert {
                principals: &["[127.0.0.1]:2201"],
                ..good
            };
            assert_eq!(check(&text, &by_name.sign()), Ok(2));
            // Certificate algorithms are offered only where a CA entry matches.
            let f = files(kh(&text));
            assert!(
                !f.certificate_algorithms_for_host("127.0.0.1", 2201)
                    .is_empty()
            );
            assert!(
                f.certificate_algorithms_for_host("10.0.0.1", 2201)
                    .is_empty()
            );
            assert!(
                !f.certificate_algorithms_for_host("127.0.0.1", 2201)
                    .contains(&Algorithm::Rsa { hash: None })
            );
        }

        #[test]
        fn each_reason_to_refuse_a_certificate_is_its_own() {
            let (ca, other_ca, host) = (private(1), private(2), private(3));
            let good = Cert::valid(&ca, &host);
            let trusted = line("@cert-authority ", "*", &ca);
            let refused = |c: Cert<'_>, text: &str| check(text, &c.sign()).unwrap_err();

            assert_eq!(
                refused(
                    Cert {
                        ca: &other_ca,
                        ..good
                    },
                    &trusted
                ),
                CertProblem::UnknownCa
            );
            // A CA trusted for other hosts only does not vouch for this one.
            assert_eq!(
                refused(good, &line("@cert-authority ", "*.prod", &ca)),
                CertProblem::UnknownCa
            );
            assert!(matches!(
                refused(
                    Cert {
                        window: (NOW - 120, NOW - 60),
                        ..good
                    },
                    &trusted
                ),
                CertProblem::Expired { valid_before } if valid_before == NOW - 60
            ));
            assert!(matches!(
                refused(
                    Cert {
                        window: (NOW + 60, NOW + 120),
                        ..good
                    },
                    &trusted
                ),
                CertProblem::NotYetValid { .. }
            ));
            assert_eq!(
                refused(
                    Cert {
                        principals: &["10.0.0.9", "db.example"],
                        ..good
                    },
                    &trusted
                ),
                CertProblem::WrongPrincipal {
                    principals: vec!["10.0.0.9".into(), "db.example".into()],
                    wanted: "127.0.0.1".into()
                }
            );
            assert!(matches!(
                refused(
                    Cert {
                        principals: &[],
                        ..good
                    },
                    &trusted
                ),
                CertProblem::NoPrincipals { .. }
            ));
            assert_eq!(
                refused(
                    Cert {
                        kind: CertType::User,
                        ..good
                    },
                    &trusted
                ),
                CertProblem::NotHost
            );
            assert!(matches!(
                refused(
                    Cert {
                        critical: Some("force-command"),
                        ..good
                    },
                    &trusted
                ),
                CertProblem::CriticalOptions { .. }
            ));
            // Revoked CA, revoked certified key: in another file than the CA entry.
            for revoked in [&ca, &host] {
                let f = KnownHostsFiles::from_files(vec![
                    kh(&trusted),
                    KnownHosts::parse(Path::new("/etc/g"), &line("@revoked ", "*", revoked)),
                ]);
                let (ca_at, problem) = f
                    .check_certificate("127.0.0.1", 2201, &good.sign(), NOW)
                    .unwrap_err();
                assert_eq!(ca_at, Some(l(1)));
                let at = match problem {
                    CertProblem::RevokedCa { at } | CertProblem::RevokedKey { at, .. } => at,
                    p => panic!("{p:?}"),
                };
                assert_eq!(at.file, Path::new("/etc/g"));
            }
        }

        #[test]
        fn a_tampered_certificate_fails_its_signature() {
            let (ca, host, intruder) = (private(1), private(3), private(4));
            let cert = Cert {
                ca: &ca,
                host_key: &host,
                kind: CertType::Host,
                principals: &["127.0.0.1"],
                window: (NOW - 60, NOW + 60),
                critical: None,
            }
            .sign();
            // Same fields and signature, another certified key.
            let mut bytes = cert.to_bytes().unwrap();
            let (old, new) = (
                host.public_key().key_data().ed25519().unwrap().0,
                intruder.public_key().key_data().ed25519().unwrap().0,
            );
            let pos = bytes.windows(32).position(|w| w == old).unwrap();
            bytes[pos..pos + 32].copy_from_slice(&new);
            let forged = Certificate::from_bytes(&bytes).unwrap();
            assert_eq!(
                check(&line("@cert-authority ", "*", &ca), &forged),
                Err(CertProblem::BadSignature)
            );
        }
    }

    #[test]
    fn revoked_in_a_global_file_wins_and_either_file_may_know_the_key() {
        let user = kh(&format!("h ssh-ed25519 {ED_A}\n"));
        let global = KnownHosts::parse(
            Path::new("/etc/ssh/ssh_known_hosts"),
            &format!("# fleet\nh,g ssh-ed25519 {ED_B}\n@revoked * ssh-ed25519 {ED_A}\n"),
        );
        let f = KnownHostsFiles::from_files(vec![user, global]);
        let g = |line| Location {
            file: "/etc/ssh/ssh_known_hosts".into(),
            line,
        };
        assert_eq!(f.check("h", 22, &key(ED_A)), Verdict::Revoked { at: g(3) });
        assert_eq!(f.check("h", 22, &key(ED_B)), Verdict::Known { at: g(2) });
        assert_eq!(f.check("g", 22, &key(ED_B)), Verdict::Known { at: g(2) });
        let f = KnownHostsFiles::load(Path::new("/nonexistent/kh"), &["/nonexistent/g".into()])
            .unwrap();
        assert!(matches!(
            f.check("h", 22, &key(ED_A)),
            Verdict::Unknown { .. }
        ));
    }

    #[test]
    fn a_new_host_is_appended_once_hashed_like_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let wait = Duration::from_secs(1);
        let plain = dir.path().join("sub/plain");
        let add = |p: &Path, port| record_new_host(p, "10.0.0.1", port, &key(ED_A), wait);
        assert_eq!(add(&plain, 22), Ok(Recorded::Added { hashed: false }));
        assert_eq!(add(&plain, 22), Ok(Recorded::AlreadyKnown));
        assert_eq!(
            std::fs::read_to_string(&plain).unwrap(),
            format!("10.0.0.1 ssh-ed25519 {ED_A}\n")
        );

        let hashed = dir.path().join("hashed");
        std::fs::write(
            &hashed,
            format!("{} ssh-ed25519 {ED_B}", hashed_name("other", 22)),
        )
        .unwrap();
        assert_eq!(add(&hashed, 2200), Ok(Recorded::Added { hashed: true }));
        let text = std::fs::read_to_string(&hashed).unwrap();
        assert!(!text.contains("10.0.0.1"), "{text}");
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(
            kh(&text).check("10.0.0.1", 2200, &key(ED_A)),
            Verdict::Known { at: l(2) }
        );

        // A file that now records another key for the host: not appended.
        let changed = dir.path().join("changed");
        std::fs::write(&changed, format!("10.0.0.1 ssh-ed25519 {ED_B}\n")).unwrap();
        assert!(matches!(
            add(&changed, 22),
            Ok(Recorded::Refused(Verdict::Changed { .. }))
        ));

        // Held by someone else past the wait: a clear error, nothing written.
        let held = std::fs::File::open(&plain).unwrap();
        held.lock().unwrap();
        let err = record_new_host(
            &plain,
            "10.0.0.2",
            22,
            &key(ED_B),
            Duration::from_millis(100),
        )
        .unwrap_err();
        assert!(err.contains("another process"), "{err}");
        drop(held);
        assert_eq!(
            record_new_host(&plain, "10.0.0.2", 22, &key(ED_B), wait),
            Ok(Recorded::Added { hashed: false })
        );
    }
}
