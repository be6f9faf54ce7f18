//! The service's environment file, read the way systemd's `EnvironmentFile=` reads it, and never
//! executed. A node's env file is input: sourced by a shell (`. FILE`), `$(...)`, backticks and
//! `;` would run as the SSH user, and a line such as `NUMARY_STORAGE_DIR=/srv/ledger data` would
//! mean one thing to the shell (an empty value, then a command `data`) and another to systemd
//! (`/srv/ledger data`), so fleetup's storage commands could target another directory or
//! database than the service.
//!
//! [`parse`] follows systemd's rules (`systemd.exec(5)`, `EnvironmentFile=`): `#` and `;`
//! comment lines; `KEY=VALUE` with white space around the key and before the value dropped;
//! unquoted values with shell backslash escapes, interior white space and quotes kept verbatim;
//! `'...'` verbatim; `"..."` with `\"`, `\\`, `` \` ``, `\$` escapes; a backslash before a newline
//! continues the line; no substitution of any kind. Each line a POSIX shell would read
//! differently is a [`Divergence`] naming the line: fleetup refuses to work with such a file.
//!
//! The values reach the commands that need them as `KEY=VALUE` lines on stdin, read by
//! [`LOADER`] (`export "$line"`: assigned verbatim, never evaluated), never on a command line.

use std::fmt;

/// The most bytes of an env file fleetup reads (a real one is a few hundred).
pub const MAX_LEN: usize = 256 * 1024;

/// The first line of [`EnvFile::stdin`]: without it the loader refuses to run the command (the
/// session was given no environment), rather than run it in the SSH user's.
pub const SENTINEL: &str = "fleetup-service-env";

/// Reads `KEY=VALUE` lines from stdin up to an empty line and exports each verbatim; exits 6
/// when stdin does not start with [`SENTINEL`]. Put first in a command: the SSH session feeds
/// [`EnvFile::stdin`] to every command holding it (`Session::set_service_env`), found by this
/// text, so it holds no single quote: quoted into `sudo -n -- sh -c '...'` it stays the same.
pub const LOADER: &str = "{ IFS= read -r fleetup_kv && [ \"$fleetup_kv\" = fleetup-service-env ]; } || { echo \"fleetup: the service environment was not passed on stdin\" >&2; exit 6; }; \
     while IFS= read -r fleetup_kv && [ -n \"$fleetup_kv\" ]; do export \"$fleetup_kv\" || exit 6; done; unset fleetup_kv; ";

/// [`LOADER`] introduced by a no-op naming the file it stands for, so a printed plan says where
/// the values come from.
pub fn loader(file: &str) -> String {
    format!(": service env {}; {LOADER}", crate::shell::quote(file))
}

/// One env file as systemd reads it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EnvFile {
    /// The assignments in file order (a later one of a key wins, as in systemd).
    pub vars: Vec<(String, String)>,
    /// Lines a shell would read differently, in file order.
    pub divergent: Vec<Divergence>,
}

/// A line whose meaning differs between systemd and a POSIX shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Divergence {
    /// 1-based line number where the assignment starts.
    pub line: usize,
    /// The line as written (escaped, shortened).
    pub text: String,
    pub why: String,
}

impl fmt::Display for Divergence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "line {} `{}`: {}", self.line, self.text, self.why)
    }
}

impl EnvFile {
    /// The value systemd gives `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .iter()
            .rev()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// The variables as [`LOADER`] reads them: `KEY=VALUE` lines, then an empty line. A value
    /// holding a line break cannot pass this way: [`parse`] reports it as divergent.
    pub fn stdin(&self) -> Vec<u8> {
        let mut out = format!("{SENTINEL}\n");
        for (k, v) in &self.vars {
            if !v.contains(['\n', '\r']) {
                out.push_str(k);
                out.push('=');
                out.push_str(v);
                out.push('\n');
            }
        }
        out.push('\n');
        out.into_bytes()
    }
}

/// `[A-Za-z_][A-Za-z0-9_]*`: a name systemd and shells accept.
pub fn valid_name(key: &str) -> bool {
    let mut chars = key.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// Characters with a meaning to a shell in an unquoted word, which systemd keeps verbatim.
const SHELL_SPECIAL: &[char] = &[
    '$', '`', ';', '&', '|', '<', '>', '(', ')', '\'', '"', ' ', '\t',
];

/// Parses `text` with systemd's rules and notes every line a shell reads differently.
pub fn parse(text: &str) -> EnvFile {
    let mut out = EnvFile::default();
    let chars: Vec<char> = text.chars().collect();
    let mut i = 0;
    let mut line = 1;
    let n = chars.len();
    while i < n {
        let start_line = line;
        let line_start = i;
        // Leading white space (both skip it).
        while i < n && matches!(chars[i], ' ' | '\t') {
            i += 1;
        }
        if i >= n {
            break;
        }
        let c = chars[i];
        if c == '\n' || c == '\r' {
            if c == '\r' {
                out.divergent.push(diverge(
                    &chars,
                    line_start,
                    start_line,
                    "a carriage return (CRLF line end): systemd ends the line there, a shell keeps it in the value",
                ));
            }
            if c == '\n' {
                line += 1;
            }
            i += 1;
            continue;
        }
        if c == '#' || c == ';' {
            // A comment; in systemd a backslash at its end continues it onto the next line.
            let mut continued = false;
            while i < n && chars[i] != '\n' && chars[i] != '\r' {
                continued = chars[i] == '\\' && !continued;
                i += 1;
            }
            if c == ';' {
                out.divergent.push(diverge(
                    &chars,
                    line_start,
                    start_line,
                    "a `;` comment: systemd skips it, a shell runs it",
                ));
            } else if continued {
                out.divergent.push(diverge(
                    &chars,
                    line_start,
                    start_line,
                    "a comment ending in `\\`: systemd skips the next line with it, a shell runs that line",
                ));
            }
            continue;
        }
        // The key, up to `=` or the end of the line.
        let key_start = i;
        while i < n && chars[i] != '=' && chars[i] != '\n' && chars[i] != '\r' {
            i += 1;
        }
        let raw_key: String = chars[key_start..i].iter().collect();
        if i >= n || chars[i] != '=' {
            out.divergent.push(diverge(
                &chars,
                line_start,
                start_line,
                "not an assignment: systemd ignores the line, a shell runs it as a command",
            ));
            continue;
        }
        i += 1; // '='
        let key = raw_key.trim_end_matches([' ', '\t']);
        let mut whys: Vec<&str> = Vec::new();
        if let Some(name) = key.strip_prefix("export ") {
            whys.push(if valid_name(name.trim()) {
                "`export`: systemd ignores the line, a shell sets the variable"
            } else {
                "`export` and a name that is not a variable name"
            });
        } else if !valid_name(key) {
            whys.push("not a variable name (letters, digits, `_`): systemd ignores the line");
        } else if key.len() != raw_key.len() {
            whys.push("white space before `=`: systemd drops it, a shell runs a command");
        }
        if i < n && matches!(chars[i], ' ' | '\t') {
            whys.push(
                "white space after `=`: systemd drops it, a shell runs the value as a command",
            );
        }
        let (value, value_whys, next, lines) = parse_value(&chars, i);
        whys.extend(value_whys);
        i = next;
        line += lines;
        if whys.is_empty() {
            out.vars.push((key.to_owned(), value));
        } else {
            // Kept too, as systemd would: the check reports the line and refuses the file.
            if valid_name(key) {
                out.vars.push((key.to_owned(), value));
            }
            let mut d = diverge(&chars, line_start, start_line, "");
            d.why = whys.join("; ");
            out.divergent.push(d);
        }
    }
    out
}

/// The value starting at `i` (after `=`): the value, why a shell reads it differently, the index
/// after its line, and how many line breaks it consumed (the one ending it included).
fn parse_value(chars: &[char], mut i: usize) -> (String, Vec<&'static str>, usize, usize) {
    #[derive(PartialEq)]
    enum St {
        Pre,
        Plain,
        Single,
        Double,
    }
    let n = chars.len();
    let mut st = St::Pre;
    let mut value = String::new();
    let mut whys = Vec::new();
    let mut lines = 0;
    let mut quoted = false;
    let mut after_quote = false;
    let mut gap_after_quote = false;
    let mut trailing_ws = 0usize;
    let why = |w: &'static str, whys: &mut Vec<&'static str>| {
        if !whys.contains(&w) {
            whys.push(w);
        }
    };
    while i < n {
        let c = chars[i];
        match st {
            St::Pre | St::Plain => {
                if c == '\n' || c == '\r' {
                    if c == '\r' {
                        why(
                            "a carriage return (CRLF line end): systemd ends the value there, a shell keeps it",
                            &mut whys,
                        );
                        // A lone `\r` ends the value for systemd, but not the line's count.
                        if chars.get(i + 1) != Some(&'\n') {
                            i += 1;
                            break;
                        }
                        i += 1;
                    }
                    i += 1;
                    lines += 1;
                    break;
                }
                if st == St::Pre && (c == ' ' || c == '\t') {
                    // After a closing quote, systemd skips white space and joins what follows;
                    // a shell ends the assignment there.
                    gap_after_quote |= after_quote;
                    i += 1;
                    continue;
                }
                if gap_after_quote {
                    why(
                        "more after the closing quote and a space: systemd joins it to the value, a shell runs it",
                        &mut whys,
                    );
                }
                if st == St::Pre && (c == '\'' || c == '"') {
                    st = if c == '\'' { St::Single } else { St::Double };
                    quoted = true;
                    i += 1;
                    continue;
                }
                if c == '\\' {
                    match chars.get(i + 1) {
                        Some('\n') => {
                            lines += 1;
                            i += 2;
                        }
                        Some(&e) => {
                            value.push(e);
                            i += 2;
                        }
                        None => i += 1,
                    }
                    st = St::Plain;
                    trailing_ws = 0;
                    continue;
                }
                if st == St::Pre && c == '~' && !quoted {
                    why(
                        "a leading `~`: a shell replaces it by a home directory, systemd keeps it",
                        &mut whys,
                    );
                }
                if SHELL_SPECIAL.contains(&c) {
                    why(
                        match c {
                            '$' | '`' => {
                                "`$` or a backtick unquoted: a shell substitutes (or runs) it, systemd keeps it verbatim"
                            }
                            ' ' | '\t' => {
                                "white space inside an unquoted value: systemd keeps it, a shell ends the value there and runs the rest"
                            }
                            '\'' | '"' => {
                                "a quote inside an unquoted value: systemd keeps it, a shell removes it"
                            }
                            _ => {
                                "a shell operator (`;`, `&`, `|`, `<`, `>`, `(`, `)`) unquoted: systemd keeps it, a shell acts on it"
                            }
                        },
                        &mut whys,
                    );
                }
                if c == ' ' || c == '\t' {
                    trailing_ws += 1;
                } else {
                    trailing_ws = 0;
                }
                value.push(c);
                st = St::Plain;
                i += 1;
            }
            St::Single => {
                if c == '\'' {
                    st = St::Pre;
                    after_quote = true;
                } else {
                    if c == '\n' {
                        lines += 1;
                    }
                    value.push(c);
                }
                i += 1;
            }
            St::Double => {
                match c {
                    '"' => {
                        st = St::Pre;
                        after_quote = true;
                    }
                    '\\' => match chars.get(i + 1) {
                        Some(&e @ ('"' | '\\' | '`' | '$')) => {
                            value.push(e);
                            i += 1;
                        }
                        Some('\n') => {
                            lines += 1;
                            i += 1;
                        }
                        Some(&e) => {
                            value.push('\\');
                            value.push(e);
                            i += 1;
                        }
                        None => value.push('\\'),
                    },
                    '$' | '`' => {
                        why(
                            "`$` or a backtick in double quotes: a shell substitutes (or runs) it, systemd keeps it verbatim",
                            &mut whys,
                        );
                        value.push(c);
                    }
                    '\n' => {
                        lines += 1;
                        value.push(c);
                    }
                    _ => value.push(c),
                }
                i += 1;
            }
        }
    }
    if st == St::Single || st == St::Double {
        why(
            "a quote that is never closed: systemd reads to the end of the file, a shell fails",
            &mut whys,
        );
    }
    // systemd drops the trailing white space of an unquoted value; a shell ends the word there.
    let keep = value.chars().count() - trailing_ws;
    let mut value: String = value.chars().take(keep).collect();
    if value.contains(['\n', '\r']) {
        why(
            "a value spanning lines: fleetup passes values one per line and cannot pass it",
            &mut whys,
        );
    }
    if value.contains('\0') {
        value.retain(|c| c != '\0');
    }
    (value, whys, i, lines)
}

fn diverge(chars: &[char], from: usize, line: usize, why: &str) -> Divergence {
    let text: String = chars[from..].iter().take_while(|c| **c != '\n').collect();
    Divergence {
        line,
        text: crate::terminal::cell(&crate::shell::printable(text.trim_end_matches('\r'), 80))
            .into_owned(),
        why: why.to_owned(),
    }
}

/// Runs `command` in a local `sh` with the env file at `file` fed on stdin as a session would
/// (for tests of the scripts that load it).
#[cfg(test)]
pub fn sh_with_env_file(command: &str, file: &std::path::Path) -> std::process::Output {
    use std::io::Write;
    let text = std::fs::read_to_string(file).unwrap_or_default();
    let mut child = std::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run sh");
    let _ = child
        .stdin
        .take()
        .map(|mut i| i.write_all(&parse(&text).stdin()));
    child.wait_with_output().expect("wait for sh")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(text: &str) -> Vec<(String, String)> {
        let f = parse(text);
        assert_eq!(f.divergent, Vec::new(), "{text:?}");
        f.vars
    }

    fn kv(k: &str, v: &str) -> (String, String) {
        (k.to_owned(), v.to_owned())
    }

    #[test]
    fn plain_assignments_comments_and_quotes_read_as_systemd_and_a_shell_both_do() {
        let text = "# the ledger\n\nNUMARY_STORAGE_DRIVER=postgres\n  NUMARY_STORAGE_DIR='/srv/ledger data'\n\
                    NUMARY_SERVER_HTTP_BIND_ADDRESS=\"127.0.0.1:3068\"\nA=x\\ y\nB=\"say \\\"hi\\\" \\\\ ok\"\nEMPTY=\n";
        assert_eq!(
            vars(text),
            vec![
                kv("NUMARY_STORAGE_DRIVER", "postgres"),
                kv("NUMARY_STORAGE_DIR", "/srv/ledger data"),
                kv("NUMARY_SERVER_HTTP_BIND_ADDRESS", "127.0.0.1:3068"),
                kv("A", "x y"),
                kv("B", "say \"hi\" \\ ok"),
                kv("EMPTY", ""),
            ]
        );
        let f = parse(text);
        assert_eq!(f.get("A"), Some("x y"));
        assert_eq!(
            String::from_utf8(f.stdin()).unwrap(),
            "fleetup-service-env\nNUMARY_STORAGE_DRIVER=postgres\nNUMARY_STORAGE_DIR=/srv/ledger data\n\
             NUMARY_SERVER_HTTP_BIND_ADDRESS=127.0.0.1:3068\nA=x y\nB=say \"hi\" \\ ok\nEMPTY=\n\n"
        );
    }

    #[test]
    fn a_quote_only_opens_at_the_start_of_the_value() {
        // Joined without space, a quoted part then a plain one read the same.
        assert_eq!(vars("B=\"x\"y\n"), vec![kv("B", "xy")]);
        // But systemd opens no quote after that: what `shell::quote` writes for a value
        // holding a quote, `'a'\''b'`, is `a''b'` to systemd and `a'b` to a shell.
        let f = parse("A='a'\\''b'\n");
        assert_eq!(f.get("A"), Some("a''b'"));
        assert!(
            f.divergent[0].why.contains("a quote inside"),
            "{:#?}",
            f.divergent
        );
    }

    #[test]
    fn substitutions_are_kept_verbatim_and_named() {
        let f = parse("A=$(touch /tmp/owned)\nB=`id`\nC=\"$HOME/x\"\nD='$HOME'\n");
        assert_eq!(f.get("A"), Some("$(touch /tmp/owned)"));
        assert_eq!(f.get("B"), Some("`id`"));
        assert_eq!(f.get("C"), Some("$HOME/x"));
        assert_eq!(f.get("D"), Some("$HOME"));
        let lines: Vec<usize> = f.divergent.iter().map(|d| d.line).collect();
        assert_eq!(lines, vec![1, 2, 3], "{:#?}", f.divergent);
        assert!(
            f.divergent[0].why.contains("substitutes"),
            "{}",
            f.divergent[0]
        );
    }

    #[test]
    fn a_value_with_white_space_is_the_issue_case() {
        let f = parse("NUMARY_STORAGE_DIR=/srv/ledger data\n");
        assert_eq!(f.get("NUMARY_STORAGE_DIR"), Some("/srv/ledger data"));
        assert_eq!(f.divergent.len(), 1);
        let d = f.divergent[0].to_string();
        assert!(
            d.starts_with("line 1 `NUMARY_STORAGE_DIR=/srv/ledger data`: white space"),
            "{d}"
        );
    }

    #[test]
    fn each_line_read_differently_is_named() {
        let cases = [
            ("export A=b\n", "`export`"),
            ("A =b\n", "before `=`"),
            ("A= b\n", "after `=`"),
            ("A=b;touch x\n", "operator"),
            ("A=foo\"bar\"\n", "a quote inside"),
            ("A=\"b\" c\n", "after the closing quote"),
            ("A='b' 'c'\n", "after the closing quote"),
            ("A=~/data\n", "`~`"),
            ("A-B=c\n", "not a variable name"),
            ("touch /tmp/x\n", "not an assignment"),
            ("; comment\n", "`;` comment"),
            ("# note \\\nA=b\n", "comment ending"),
            ("A=b\r\n", "carriage return"),
            ("A='never closed\n", "never closed"),
            ("A=\"two\nlines\"\n", "spanning lines"),
        ];
        for (text, says) in cases {
            let f = parse(text);
            assert!(
                f.divergent.iter().any(|d| d.why.contains(says)),
                "{text:?} should say {says:?}: {:#?}",
                f.divergent
            );
            assert_eq!(f.divergent[0].line, 1, "{text:?}");
        }
    }

    #[test]
    fn line_numbers_count_continuations_and_quoted_newlines() {
        let f = parse("A='x\ny'\nB=c\\\nd\nC=$x\n");
        assert_eq!(f.get("B"), Some("cd"));
        let c = f
            .divergent
            .iter()
            .find(|d| d.text.starts_with("C="))
            .unwrap();
        assert_eq!(c.line, 5, "{:#?}", f.divergent);
    }

    #[test]
    fn a_lone_carriage_return_ends_a_value_but_not_a_line() {
        // Found by tests/fuzz_corpus.rs: the next assignment was said to be on line 2.
        let f = parse("A=b\rC=$x\n");
        assert!(
            f.divergent.iter().all(|d| d.line == 1),
            "{:#?}",
            f.divergent
        );
    }

    #[test]
    fn the_text_shown_is_escaped_and_short() {
        let f = parse(&format!("A=$\x1b]0;x\x07{}\n", "y".repeat(200)));
        let d = &f.divergent[0];
        assert!(
            !d.text.contains('\x1b') && d.text.chars().count() < 100,
            "{d}"
        );
    }

    #[test]
    fn the_loader_is_found_in_a_command_quoted_for_sudo() {
        let cmd = crate::shell::sudo(&format!("{}exec numary version", loader("/etc/it's env")));
        assert!(cmd.contains(LOADER), "{cmd}");
        assert!(!LOADER.contains('\''));
    }

    #[test]
    fn the_loader_exports_values_verbatim() {
        let f = parse("A='$(echo owned) x;y'\nB=plain\n");
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{}printf '%s|%s' \"$A\" \"$B\"", loader("/etc/x")))
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .and_then(|mut child| {
                use std::io::Write;
                child.stdin.take().unwrap().write_all(&f.stdin())?;
                child.wait_with_output()
            })
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "$(echo owned) x;y|plain"
        );
        // Without the environment on stdin, nothing runs.
        let out = std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("{LOADER}echo ran"))
            .stdin(std::process::Stdio::null())
            .output()
            .unwrap();
        assert_eq!(
            (out.status.code(), out.stdout.as_slice()),
            (Some(6), &b""[..])
        );
    }
}
