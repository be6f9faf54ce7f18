//! Keeping secrets out of everything that leaves the process: Postgres connection strings lose
//! their password (URL form `postgresql://user:pw@host/db`, key/value form `password=...`,
//! quoted or not), and every secret value the run has learnt (the database password, the key
//! passphrase) is masked wherever it appears, raw or in its obvious encodings.
//!
//! The known secrets live in one process-wide set, [`known()`]: registered where they are
//! learnt (the key cache registers the passphrase, [`redact`] every password it finds in a
//! connection string), applied by [`redact`] and [`redact_json`], which every writer calls (the
//! journal, the JSON stream, the display, error rendering, `-vvv` logs).

use std::sync::RwLock;

use serde_json::Value;

/// What a removed secret is replaced with.
pub const MASK: &str = "***";

/// Secrets shorter than this are not masked by value (a one-letter password would blank every
/// such letter of the output); connection strings still lose them by their shape.
pub const MIN_SECRET_LEN: usize = 4;

/// A set of secret values to mask. [`known()`] is the run's; others serve tests.
#[derive(Debug, Default)]
pub struct Secrets {
    /// Longest first, so a secret that contains another is masked whole.
    values: RwLock<Vec<String>>,
}

static KNOWN: Secrets = Secrets::new();

/// The secrets this process has learnt so far.
pub fn known() -> &'static Secrets {
    &KNOWN
}

/// [`Secrets::redact`] with the process's known secrets: what every writer applies.
pub fn redact(text: &str) -> String {
    known().redact(text)
}

/// [`Secrets::redact_json`] with the process's known secrets.
pub fn redact_json(value: &mut Value) {
    known().redact_json(value)
}

impl Secrets {
    pub const fn new() -> Secrets {
        Secrets {
            values: RwLock::new(Vec::new()),
        }
    }

    /// Remembers `secret` (whitespace around it is not part of it); too short ones and the
    /// mask itself are ignored.
    pub fn register(&self, secret: &str) {
        let secret = secret.trim_matches(|c: char| c == '\n' || c == '\r');
        if secret.len() < MIN_SECRET_LEN || secret == MASK {
            return;
        }
        if let Ok(mut values) = self.values.write()
            && !values.iter().any(|v| v == secret)
        {
            values.push(secret.to_owned());
            values.sort_by_key(|s| std::cmp::Reverse(s.len()));
        }
    }

    /// Remembers the password of a connection string (URL or key/value form), if it has one.
    pub fn register_conn_string(&self, conn: &str) {
        if let Some(pw) = conn_string_password(conn) {
            self.register(&pw);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.values.read().map(|v| v.is_empty()).unwrap_or(true)
    }

    /// `text` with every known secret masked (raw, percent-encoded, backslash- or
    /// shell-escaped, in any mix), then every connection string's password
    /// ([`redact_conn_strings`]). Passwords found that way are registered first, so they are
    /// masked also where they appear without their key.
    pub fn redact(&self, text: &str) -> String {
        for pw in found_passwords(text) {
            self.register(&pw);
        }
        let values = match self.values.read() {
            Ok(v) => v,
            Err(_) => return redact_conn_strings(text),
        };
        redact_conn_strings(&mask_values(text, &values))
    }

    /// Redacts every string of `value` in place (before it is serialized: an escaped form of a
    /// secret in the JSON text would not match).
    pub fn redact_json(&self, value: &mut Value) {
        match value {
            Value::String(s) => {
                let r = self.redact(s);
                if r != *s {
                    *s = r;
                }
            }
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_json(v)),
            Value::Object(map) => map.values_mut().for_each(|v| self.redact_json(v)),
            _ => {}
        }
    }
}

/// Masks each non-empty secret of `secrets` (in the encodings [`Secrets::redact`] knows)
/// wherever it occurs in `text`, then applies [`redact_conn_strings`].
pub fn redact_secrets<S: AsRef<str>>(text: &str, secrets: &[S]) -> String {
    let set = Secrets::new();
    for s in secrets {
        set.register(s.as_ref());
    }
    let values = set.values.read().map(|v| v.clone()).unwrap_or_default();
    redact_conn_strings(&mask_values(text, &values))
}

/// Every password [`redact_conn_strings`] would mask in `text`, decoded.
fn found_passwords(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut pos = 0;
    while let Some((start, end)) = url_password_span(text, pos) {
        out.push(percent_decode(&text[start..end]));
        pos = end;
    }
    for (s, e) in password_key_spans(text) {
        out.push(unquote_value(&text[s..e]));
    }
    out.retain(|p| p != MASK && !p.contains(MASK));
    out
}

/// `text` with each of `values` (longest first) masked wherever some encoding of it matches.
fn mask_values(text: &str, values: &[String]) -> String {
    if values.is_empty() {
        return text.to_owned();
    }
    let bytes = text.as_bytes();
    let mut out: Vec<u8> = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let matched = values
            .iter()
            .find_map(|v| match_encoded(bytes, i, v.as_bytes()));
        match matched {
            Some(end) => {
                out.extend_from_slice(MASK.as_bytes());
                i = end;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    // Only whole matches of valid UTF-8 secrets were replaced, at byte positions where such a
    // match starts: the result is valid UTF-8 unless a match began inside a character, which
    // a UTF-8 secret cannot.
    String::from_utf8(out).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// The end of an encoding of `secret` that starts at `text[i]`: each byte may appear raw,
/// percent-encoded (`%2F`, `%2f`), backslash-escaped (`\"`, JSON's `\\`), a space as `+`
/// (form encoding), a `'` as the shell's `'\''` or `'"'"'`.
fn match_encoded(text: &[u8], i: usize, secret: &[u8]) -> Option<usize> {
    let Some((&b, rest)) = secret.split_first() else {
        return Some(i);
    };
    let hex = |h: &[u8]| {
        std::str::from_utf8(h)
            .ok()
            .and_then(|h| u8::from_str_radix(h, 16).ok())
    };
    let mut candidates: [Option<usize>; 5] = [None; 5];
    if text.get(i) == Some(&b) {
        candidates[0] = Some(i + 1);
    }
    if text.get(i) == Some(&b'%') && text.get(i + 1..i + 3).and_then(hex) == Some(b) {
        candidates[1] = Some(i + 3);
    }
    if text.get(i) == Some(&b'\\') && text.get(i + 1) == Some(&b) {
        candidates[2] = Some(i + 2);
    }
    if b == b' ' && text.get(i) == Some(&b'+') {
        candidates[3] = Some(i + 1);
    }
    if b == b'\'' {
        for form in [&b"'\\''"[..], &b"'\"'\"'"[..]] {
            if text[i..].starts_with(form) {
                candidates[4] = Some(i + form.len());
            }
        }
    }
    candidates
        .into_iter()
        .flatten()
        .find_map(|next| match_encoded(text, next, rest))
}

/// Masks every password in connection strings found anywhere in `text`:
/// - the password of a URL's user info (`scheme://user:PASSWORD@host`), for any scheme, also
///   one holding whitespace or percent-escapes;
/// - the value of any `...password=VALUE` key (case-insensitive, so also `PGPASSWORD=` and URL
///   query parameters), quoted (`password='a b'`, `PGPASSWORD="x"`, the shell's `'it'\''s'`)
///   or not, with optional spaces around `=`.
///
/// Errs on the side of masking too much: a password cannot be told apart from its surroundings
/// with certainty once it contains separators.
pub fn redact_conn_strings(text: &str) -> String {
    redact_password_keys(&redact_url_userinfo(text))
}

/// The password of a connection string, if it has one, so callers can add it to the secrets
/// they mask (e.g. in the output of a remote command that might echo it).
pub fn conn_string_password(conn: &str) -> Option<String> {
    if let Some((start, end)) = url_password_span(conn, 0) {
        return Some(percent_decode(&conn[start..end]));
    }
    password_key_spans(conn)
        .into_iter()
        .next()
        .map(|(s, e)| unquote_value(&conn[s..e]))
}

/// A `password=` value as its reader sees it: quotes taken off, escapes resolved.
fn unquote_value(v: &str) -> String {
    let mut out = String::new();
    let mut chars = v.chars().peekable();
    let mut quote: Option<char> = None;
    while let Some(c) = chars.next() {
        match (quote, c) {
            (None, '\'' | '"') => quote = Some(c),
            (Some(q), c) if c == q => quote = None,
            (_, '\\') => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            _ => out.push(c),
        }
    }
    out
}

fn redact_url_userinfo(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    while let Some((start, end)) = url_password_span(text, pos) {
        out.push_str(&text[pos..start]);
        out.push_str(MASK);
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

/// Byte span of the password in the first `scheme://user:PASSWORD@` at or after `from`. The
/// user holds no `:`; the password runs to the last `@` before the authority ends (`/`, `?`,
/// `#`, `<`, `>`, a line end, or whitespace after that `@`), so it may hold `@`, quotes and
/// spaces: a `postgresql://u:my pass@h/db` loses `my pass`.
fn url_password_span(text: &str, from: usize) -> Option<(usize, usize)> {
    let mut search = from;
    while let Some(rel) = text[search..].find("://") {
        let auth_start = search + rel + 3;
        search = auth_start;
        let rest = &text[auth_start..];
        let Some(colon) = rest.find(|c: char| {
            c == ':' || c.is_whitespace() || matches!(c, '/' | '?' | '#' | '@' | '<' | '>')
        }) else {
            continue;
        };
        if colon == 0 || !rest[colon..].starts_with(':') {
            continue;
        }
        let after = &rest[colon + 1..];
        // Where the authority surely ends: no password of a URL holds these unencoded.
        let hard_end = after
            .find(['/', '?', '#', '<', '>', '\n', '\r', '\0'])
            .unwrap_or(after.len());
        let scope = &after[..hard_end];
        let Some(first_at) = scope.find('@') else {
            continue;
        };
        // More `@` before the host ends belong to the password (`p@ss@db`).
        let host_end = scope[first_at..]
            .find(char::is_whitespace)
            .map_or(scope.len(), |e| first_at + e);
        let at = scope[..host_end].rfind('@').unwrap_or(first_at);
        if at == 0 {
            continue;
        }
        let start = auth_start + colon + 1;
        return Some((start, start + at));
    }
    None
}

fn redact_password_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (start, end) in password_key_spans(text) {
        out.push_str(&text[pos..start]);
        let value = &text[start..end];
        match value.chars().next() {
            Some(q @ ('\'' | '"')) if value.len() > 1 && value.ends_with(q) => {
                out.push(q);
                out.push_str(MASK);
                out.push(q);
            }
            _ => out.push_str(MASK),
        }
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

/// Byte spans of the values of `...password=VALUE` keys: one shell-like word, where quotes
/// (`'...'`, `"..."`, with `\` escaping in both, as libpq reads them) may hold spaces and
/// words join (`'it'\''s'`). An unquoted word also ends at `&`, `#`, `;` or a `"` (the end
/// of an enclosing quoted value).
fn password_key_spans(text: &str) -> Vec<(usize, usize)> {
    let lower = text.to_ascii_lowercase();
    let bytes = text.as_bytes();
    let mut spans = Vec::new();
    let mut search = 0;
    while let Some(rel) = lower[search..].find("password") {
        let mut i = search + rel + "password".len();
        search = i;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        if i >= bytes.len() || bytes[i] != b'=' {
            continue;
        }
        i += 1;
        while i < bytes.len() && bytes[i] == b' ' {
            i += 1;
        }
        let start = i;
        let mut quote: Option<u8> = None;
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Some(q) if b == q => {
                    quote = None;
                    i += 1;
                }
                Some(_) => i += if b == b'\\' { 2 } else { 1 },
                None if (b == b'\'' || b == b'"') && (i == start || bytes[i - 1] != b'\\') => {
                    // A `"` after a word ends an enclosing quoted value, not a new quote.
                    if b == b'"' && i > start && !matches!(bytes[i - 1], b'\'' | b'"') {
                        break;
                    }
                    quote = Some(b);
                    i += 1;
                }
                None if b == b'\\' => i += 2,
                None if b.is_ascii_whitespace() || b"&#;".contains(&b) => break,
                None => i += 1,
            }
        }
        let i = i.min(bytes.len());
        if i > start {
            spans.push((start, i));
        }
        search = i.max(search);
    }
    spans
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && let Some(h) = s.get(i + 1..i + 3)
            && let Ok(v) = u8::from_str_radix(h, 16)
        {
            out.push(v);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn url_password_is_masked() {
        let cases = [
            (
                "postgresql://fleetup:fleetup-Secr3t-pw@127.0.0.1:55432/postgres?sslmode=disable",
                "postgresql://fleetup:***@127.0.0.1:55432/postgres?sslmode=disable",
            ),
            ("postgres://u:p%40ss@db/x", "postgres://u:***@db/x"),
            ("postgres://u:p@ss@db/x", "postgres://u:***@db/x"),
            (
                "conn=postgresql://u:pw@h/db other",
                "conn=postgresql://u:***@h/db other",
            ),
            (
                "postgresql://ledger:it's-s3cret@db/ledger",
                "postgresql://ledger:***@db/ledger",
            ),
            (
                r#"postgresql://u:a"b'c@h:5432"#,
                "postgresql://u:***@h:5432",
            ),
            (
                "url='postgresql://u:pw@h' next",
                "url='postgresql://u:***@h' next",
            ),
            ("postgresql://u@h/db", "postgresql://u@h/db"),
            ("postgresql://h:5432/db", "postgresql://h:5432/db"),
            (
                "a postgresql://u:one@h/db and postgresql://v:two@k/db",
                "a postgresql://u:***@h/db and postgresql://v:***@k/db",
            ),
        ];
        for (input, want) in cases {
            assert_eq!(redact_conn_strings(input), want, "{input}");
        }
    }

    #[test]
    fn key_value_password_is_masked() {
        let cases = [
            (
                "host=db user=u password=s3cret dbname=x",
                "host=db user=u password=*** dbname=x",
            ),
            (
                "host=db password = 's3 cr\\'et' dbname=x",
                "host=db password = '***' dbname=x",
            ),
            (
                "postgresql://h/db?user=u&password=s3cret&sslmode=require",
                "postgresql://h/db?user=u&password=***&sslmode=require",
            ),
            ("PGPASSWORD=s3cret psql", "PGPASSWORD=*** psql"),
            (
                "NUMARY_STORAGE_POSTGRES_CONN_STRING=\"host=h Password=x\"",
                "NUMARY_STORAGE_POSTGRES_CONN_STRING=\"host=h Password=***\"",
            ),
            ("the password is fine", "the password is fine"),
            ("password=", "password="),
        ];
        for (input, want) in cases {
            assert_eq!(redact_conn_strings(input), want, "{input}");
        }
    }

    #[test]
    fn quoted_and_shell_escaped_values_are_masked() {
        let cases = [
            (r#"PGPASSWORD="s3 cret" psql"#, r#"PGPASSWORD="***" psql"#),
            (
                r#"export PGPASSWORD="a\"b"; x"#,
                r#"export PGPASSWORD="***"; x"#,
            ),
            (r"PGPASSWORD='it'\''s' psql", r"PGPASSWORD='***' psql"),
            ("password=a\\ b next", "password=*** next"),
            ("db_password = \"x y\"\nnext", "db_password = \"***\"\nnext"),
            ("PGPASSWORD=s3cret; psql", "PGPASSWORD=***; psql"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_conn_strings(input), want, "{input}");
        }
    }

    #[test]
    fn url_passwords_with_whitespace_or_escapes_are_masked() {
        let cases = [
            ("postgresql://u:my pass@h/db", "postgresql://u:***@h/db"),
            (
                "NUMARY_STORAGE_POSTGRES_CONN_STRING=\"postgresql://u:a%20b c@h:5432/db?x=1\"",
                "NUMARY_STORAGE_POSTGRES_CONN_STRING=\"postgresql://u:***@h:5432/db?x=1\"",
            ),
            (
                "postgresql://u:pw@[::1]:5432/db",
                "postgresql://u:***@[::1]:5432/db",
            ),
            ("postgresql://u:a b@c@h db", "postgresql://u:***@h db"),
            // Not user info: left alone.
            (
                "http://host:8080/path and me@x",
                "http://host:8080/path and me@x",
            ),
            ("ssh://user@host:22", "ssh://user@host:22"),
            ("postgresql://[::1]:5432/db", "postgresql://[::1]:5432/db"),
        ];
        for (input, want) in cases {
            assert_eq!(redact_conn_strings(input), want, "{input}");
        }
    }

    #[test]
    fn known_secrets_are_masked_everywhere() {
        let text =
            "pw fleetup-Secr3t-pw and encoded a%2Fbcd and a/bcd, plus postgresql://u:other@h/d";
        let out = redact_secrets(text, &["fleetup-Secr3t-pw", "a/bcd", ""]);
        assert_eq!(
            out,
            "pw *** and encoded *** and ***, plus postgresql://u:***@h/d"
        );
    }

    #[test]
    fn known_secrets_are_masked_in_every_encoding() {
        let set = Secrets::new();
        set.register("it's a \"s3cret\"/%");
        let cases = [
            "it's a \"s3cret\"/%",
            "it%27s%20a%20%22s3cret%22%2F%25",
            "it%27s%20a%20%22s3cret%22%2f%25",
            "it's+a+\"s3cret\"/%",
            r#"it\'s a \"s3cret\"\/%"#,
            r#"'it'\''s a "s3cret"/%'"#,
            r#"'it'"'"'s a "s3cret"/%'"#,
            "it%27s a \"s3cret%22/%",
        ];
        for c in cases {
            let out = set.redact(&format!("<{c}>"));
            assert!(!out.contains("s3cret"), "{c} -> {out}");
            assert!(out.starts_with('<') && out.ends_with('>'), "{c} -> {out}");
        }
        assert_eq!(set.redact("nothing here"), "nothing here");
    }

    #[test]
    fn too_short_secrets_and_the_mask_are_not_registered() {
        let set = Secrets::new();
        set.register("abc");
        set.register(MASK);
        set.register("");
        assert!(set.is_empty());
        assert_eq!(set.redact("abc"), "abc");
        set.register("abcd\n");
        assert_eq!(set.redact("xabcdx"), "x***x");
    }

    #[test]
    fn a_password_seen_in_a_conn_string_is_masked_afterwards_everywhere() {
        let set = Secrets::new();
        assert_eq!(
            set.redact("postgresql://u:le%40ky-pw@h/db"),
            "postgresql://u:***@h/db"
        );
        assert_eq!(set.redact("psql: le@ky-pw rejected"), "psql: *** rejected");
        set.register_conn_string("host=h password='other pw'");
        assert_eq!(set.redact("said other pw"), "said ***");
    }

    #[test]
    fn json_strings_are_redacted_before_serialization() {
        let set = Secrets::new();
        set.register("quo\"te-pw");
        let mut v = serde_json::json!({
            "event": "step_finished",
            "stderr_tail": "FATAL quo\"te-pw",
            "nested": [{"cmd": "PGPASSWORD='x y' psql"}],
            "n": 3,
        });
        set.redact_json(&mut v);
        let text = v.to_string();
        assert!(!text.contains("te-pw"), "{text}");
        assert_eq!(v["stderr_tail"], "FATAL ***");
        assert_eq!(v["nested"][0]["cmd"], "PGPASSWORD='***' psql");
        assert_eq!(v["n"], 3);
    }

    #[test]
    fn password_is_extracted_from_both_forms() {
        assert_eq!(
            conn_string_password("postgresql://u:p%40ss@h/db").as_deref(),
            Some("p@ss")
        );
        assert_eq!(
            conn_string_password("host=h password='a \\'b'").as_deref(),
            Some("a 'b")
        );
        assert_eq!(
            conn_string_password("host=h password=plain user=u").as_deref(),
            Some("plain")
        );
        assert_eq!(conn_string_password("postgresql://u@h/db"), None);
    }
}
