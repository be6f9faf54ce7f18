//! Keeping secrets out of output and journals: Postgres connection strings lose their password
//! (URL form `postgresql://user:pw@host/db` and key/value form `password=...`), and known secret
//! values are masked wherever they appear in a text.

/// What a removed secret is replaced with.
pub const MASK: &str = "***";

/// Masks every password in connection strings found anywhere in `text`:
/// - the password of a URL's user info (`scheme://user:PASSWORD@host`), for any scheme;
/// - the value of any `...password=VALUE` key (case-insensitive, so also `PGPASSWORD=` and URL
///   query parameters), quoted (`password='a b'`) or not, with optional spaces around `=`.
///
/// Errs on the side of masking too much: a password cannot be told apart from its surroundings
/// with certainty once it contains separators.
pub fn redact_conn_strings(text: &str) -> String {
    redact_password_keys(&redact_url_userinfo(text))
}

/// Masks each non-empty secret of `secrets` (and its percent-encoded form, as it would appear in
/// a URL) wherever it occurs in `text`, then applies [`redact_conn_strings`].
pub fn redact_secrets<S: AsRef<str>>(text: &str, secrets: &[S]) -> String {
    let mut out = text.to_owned();
    let mut all: Vec<String> = Vec::new();
    for s in secrets.iter().map(AsRef::as_ref).filter(|s| !s.is_empty()) {
        all.push(s.to_owned());
        let encoded = percent_encode(s);
        if encoded != s {
            all.push(encoded);
        }
    }
    // Longest first, so a secret that contains another is masked whole.
    all.sort_by_key(|s| std::cmp::Reverse(s.len()));
    for s in &all {
        out = out.replace(s.as_str(), MASK);
    }
    redact_conn_strings(&out)
}

/// The password of a connection string, if it has one, so callers can add it to the secrets
/// they mask (e.g. in the output of a remote command that might echo it).
pub fn conn_string_password(conn: &str) -> Option<String> {
    if let Some((start, end)) = url_password_span(conn, 0) {
        return Some(percent_decode(&conn[start..end]));
    }
    password_key_spans(conn).into_iter().next().map(|(s, e)| {
        let v = &conn[s..e];
        v.strip_prefix('\'')
            .and_then(|v| v.strip_suffix('\''))
            .unwrap_or(v)
            .replace("\\'", "'")
    })
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

/// Byte span of the password in the first `scheme://user:PASSWORD@` at or after `from`.
fn url_password_span(text: &str, from: usize) -> Option<(usize, usize)> {
    let mut search = from;
    while let Some(rel) = text[search..].find("://") {
        let auth_start = search + rel + 3;
        let rest = &text[auth_start..];
        let auth_len = rest
            // Not at quotes: a password may hold `'` or `"` (Go's URL parser accepts them), and
            // the password runs to the LAST `@` of the authority anyway.
            .find(|c: char| c.is_whitespace() || matches!(c, '/' | '?' | '#' | '<' | '>'))
            .unwrap_or(rest.len());
        let authority = &rest[..auth_len];
        if let Some(at) = authority.rfind('@')
            && let Some(colon) = authority[..at].find(':')
            && colon + 1 < at
        {
            return Some((auth_start + colon + 1, auth_start + at));
        }
        search = auth_start;
    }
    None
}

fn redact_password_keys(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut pos = 0;
    for (start, end) in password_key_spans(text) {
        out.push_str(&text[pos..start]);
        if text[start..end].starts_with('\'') {
            out.push('\'');
            out.push_str(MASK);
            out.push('\'');
        } else {
            out.push_str(MASK);
        }
        pos = end;
    }
    out.push_str(&text[pos..]);
    out
}

/// Byte spans of the values of `...password=VALUE` keys (a quoted value includes its quotes).
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
        if i < bytes.len() && bytes[i] == b'\'' {
            i += 1;
            while i < bytes.len() && bytes[i] != b'\'' {
                i += if bytes[i] == b'\\' { 2 } else { 1 };
            }
            i = (i + 1).min(bytes.len());
        } else {
            while i < bytes.len() && !bytes[i].is_ascii_whitespace() && !b"&#\"".contains(&bytes[i])
            {
                i += 1;
            }
        }
        if i > start {
            spans.push((start, i));
        }
        search = i.max(search);
    }
    spans
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
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
    fn known_secrets_are_masked_everywhere() {
        let text = "pw fleetup-Secr3t-pw and encoded a%2Fb and a/b, plus postgresql://u:other@h/d";
        let out = redact_secrets(text, &["fleetup-Secr3t-pw", "a/b", ""]);
        assert_eq!(
            out,
            "pw *** and encoded *** and ***, plus postgresql://u:***@h/d"
        );
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
