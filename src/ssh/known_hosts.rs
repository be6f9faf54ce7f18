//! Our own OpenSSH known_hosts matcher: hashed `|1|salt|hmac` entries, `[host]:port`, pattern
//! lists with `*`, `?` and `!negation`, several key types per host, `@revoked` honoured and
//! `@cert-authority` skipped. russh's helper ignores `@revoked`, wildcards and tabs.

use std::path::{Path, PathBuf};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use hmac::{Hmac, Mac};
use russh::keys::{Algorithm, HashAlg, PublicKey};

/// The name known_hosts records for a host: `host` on port 22, `[host]:port` otherwise.
pub fn lookup_name(host: &str, port: u16) -> String {
    let host = host.to_ascii_lowercase();
    if port == 22 {
        host
    } else {
        format!("[{host}]:{port}")
    }
}

/// A parsed known_hosts file.
#[derive(Debug, Clone, Default)]
pub struct KnownHosts {
    pub path: PathBuf,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
struct Entry {
    /// 1-based line number in the file.
    line: usize,
    revoked: bool,
    hosts: Hosts,
    key: PublicKey,
}

#[derive(Debug, Clone)]
enum Hosts {
    Hashed { salt: Vec<u8>, hash: Vec<u8> },
    Patterns(Vec<String>),
}

/// What the file says about a host and the key it presented.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// The key is recorded for this host (at this line).
    Known { line: usize },
    /// The key is marked `@revoked` (at this line).
    Revoked { line: usize },
    /// The host is recorded with another key of the same type (at this line).
    Changed { line: usize },
    /// The key is not recorded. `other_types` lists the key types recorded for this host, with
    /// their first line; empty when the host is not in the file at all.
    Unknown { other_types: Vec<(String, usize)> },
}

impl KnownHosts {
    /// Reads `path`; a missing file is an empty one. Lines that cannot be parsed (unknown key
    /// types, `@cert-authority`, garbage) are skipped, as OpenSSH does.
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

    /// Checks the key `host:port` presented. Revocation wins over everything, then an exact
    /// match, then a recorded key of the same type (changed), else unknown.
    pub fn check(&self, host: &str, port: u16, key: &PublicKey) -> Verdict {
        let name = lookup_name(host, port);
        let matching: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.hosts.matches(&name))
            .collect();
        if let Some(e) = matching.iter().find(|e| e.revoked && same_key(&e.key, key)) {
            return Verdict::Revoked { line: e.line };
        }
        let plain: Vec<&&Entry> = matching.iter().filter(|e| !e.revoked).collect();
        if let Some(e) = plain.iter().find(|e| same_key(&e.key, key)) {
            return Verdict::Known { line: e.line };
        }
        if let Some(e) = plain
            .iter()
            .find(|e| same_family(&e.key.algorithm(), &key.algorithm()))
        {
            return Verdict::Changed { line: e.line };
        }
        let mut other_types: Vec<(String, usize)> = Vec::new();
        for e in plain {
            let t = e.key.algorithm().as_str().to_owned();
            if !other_types.iter().any(|(k, _)| *k == t) {
                other_types.push((t, e.line));
            }
        }
        Verdict::Unknown { other_types }
    }

    /// Key algorithms recorded (not revoked) for `host:port`, in file order.
    pub fn known_algorithms(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let name = lookup_name(host, port);
        self.entries
            .iter()
            .filter(|e| !e.revoked && e.hosts.matches(&name))
            .map(|e| e.key.algorithm())
            .collect()
    }

    /// The host-key algorithms to offer, with the families recorded for this host first, so a
    /// host known only by its RSA key is asked for that key (as OpenSSH does).
    pub fn preferred_for_host(&self, host: &str, port: u16) -> Vec<Algorithm> {
        let known = self.known_algorithms(host, port);
        let (mut first, rest): (Vec<Algorithm>, Vec<Algorithm>) = russh::Preferred::DEFAULT
            .key
            .iter()
            .cloned()
            .partition(|alg| known.iter().any(|k| same_family(k, alg)));
        first.extend(rest);
        first
    }
}

/// One line to append for a newly accepted key: `[host]:port type base64`.
pub fn entry_line(host: &str, port: u16, key: &PublicKey) -> anyhow::Result<String> {
    let mut k = key.clone();
    k.set_comment("");
    let encoded = k.to_openssh()?;
    Ok(format!(
        "{} {}",
        lookup_name(host, port),
        encoded.trim_end()
    ))
}

/// `SHA256:...` as OpenSSH prints it.
pub fn fingerprint(key: &PublicKey) -> String {
    key.fingerprint(HashAlg::Sha256).to_string()
}

/// The type name as it appears in known_hosts (`ssh-ed25519`, `ssh-rsa`, `ecdsa-sha2-nistp256`).
pub fn key_type(key: &PublicKey) -> String {
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
    let mut revoked = false;
    if first.starts_with('@') {
        match first {
            "@revoked" => revoked = true,
            // Host certificates are not supported: a CA line can never vouch for a key here.
            _ => return None,
        }
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
        revoked,
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

    #[test]
    fn port_22_uses_bare_name_and_other_ports_brackets() {
        let f = kh(&format!(
            "10.0.0.1 ssh-ed25519 {ED_A}\n[10.0.0.2]:2222 ssh-ed25519 {ED_A}\n"
        ));
        assert_eq!(
            f.check("10.0.0.1", 22, &key(ED_A)),
            Verdict::Known { line: 1 }
        );
        assert!(matches!(
            f.check("10.0.0.1", 2222, &key(ED_A)),
            Verdict::Unknown { .. }
        ));
        assert_eq!(
            f.check("10.0.0.2", 2222, &key(ED_A)),
            Verdict::Known { line: 2 }
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
            Verdict::Changed { line: 3 }
        );
        assert_eq!(
            f.check("10.0.0.1", 22, &key(ED_A)),
            Verdict::Known { line: 3 }
        );
    }

    #[test]
    fn revoked_wins_even_over_a_plain_entry() {
        let f = kh(&format!(
            "h ssh-ed25519 {ED_A}\n@revoked * ssh-ed25519 {ED_A}\n"
        ));
        assert_eq!(f.check("h", 22, &key(ED_A)), Verdict::Revoked { line: 2 });
        assert_eq!(f.check("h", 22, &key(ED_B)), Verdict::Changed { line: 1 });
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
            Verdict::Known { line: 1 }
        );
        assert_eq!(
            f.check("web.prod", 22, &key(ED_B)),
            Verdict::Known { line: 2 }
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
            Verdict::Known { line: 1 }
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
            Verdict::Known { line: 1 }
        );
        assert_eq!(
            f.check("127.0.0.1", 2222, &key(ED_B)),
            Verdict::Known { line: 2 }
        );
        assert_eq!(
            f.check("127.0.0.1", 2222, &key(ED_A)),
            Verdict::Changed { line: 2 }
        );
    }

    #[test]
    fn unknown_lists_other_types_and_preference_puts_them_first() {
        let f = kh(&format!("h ssh-rsa {RSA}\n"));
        assert_eq!(
            f.check("h", 22, &key(ED_A)),
            Verdict::Unknown {
                other_types: vec![("ssh-rsa".to_owned(), 1)]
            }
        );
        let pref = f.preferred_for_host("h", 22);
        assert!(matches!(pref[0], Algorithm::Rsa { .. }), "{pref:?}");
        assert_eq!(pref.len(), russh::Preferred::DEFAULT.key.len());
        assert_eq!(kh("").preferred_for_host("h", 22)[0], Algorithm::Ed25519);
    }

    #[test]
    fn entry_line_round_trips() {
        let line = entry_line("127.0.0.1", 2201, &key(ED_A)).unwrap();
        assert_eq!(line, format!("[127.0.0.1]:2201 ssh-ed25519 {ED_A}"));
        assert_eq!(
            kh(&line).check("127.0.0.1", 2201, &key(ED_A)),
            Verdict::Known { line: 1 }
        );
    }
}
