//! The one audited function that quotes values for a remote POSIX shell, and validators for
//! values (ledger names) before they reach a command line.
//!
//! Every value fleetup interpolates into a remote command goes through [`quote`]; nothing else
//! in the crate builds quoting by hand.

/// Quotes `s` as one word for a POSIX shell (`sh`, `bash`, `dash`, `zsh` in sh mode).
///
/// Words made only of `[A-Za-z0-9_@%+:,./-]` are returned as they are (no expansion, globbing or
/// word splitting applies to them, and without `=` they cannot be read as an assignment); every
/// other word, including the empty one, is wrapped in single quotes, inside which the shell
/// interprets nothing, and each `'` becomes `'\''` (close, escaped quote, reopen).
///
/// A NUL byte cannot be passed in a command line at all; it ends the command sshd hands to the
/// shell, which then sees an unterminated quote and fails rather than running anything else.
pub fn quote(s: &str) -> String {
    let plain = !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_@%+:,./-".contains(&b));
    if plain {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        if c == '\'' {
            out.push_str("'\\''");
        } else {
            out.push(c);
        }
    }
    out.push('\'');
    out
}

/// Quotes each word and joins them with spaces: a whole command line from argv.
pub fn join<S: AsRef<str>>(words: &[S]) -> String {
    words
        .iter()
        .map(|w| quote(w.as_ref()))
        .collect::<Vec<_>>()
        .join(" ")
}

/// `sudo -n -- sh -c 'HOME="$1"; export HOME; COMMAND' sh "$HOME"`: `command` (a whole shell
/// line) run as root by a shell of its own, quoted as one word so it means to that shell exactly
/// what it meant unwrapped. `-n`: sudo fails at once ("a password is required", exit 1) rather
/// than waiting for a password no one will type; `--` ends sudo's options. The SSH user's
/// `$HOME` is kept (sudo usually resets it to root's): `numary` defaults its SQLite dir to
/// `$HOME/.numary/data`, and a storage command must see the service's store, not root's.
/// Arguments appended to the result are `$2`, `$3`, ... of `command`.
pub fn sudo(command: &str) -> String {
    format!(
        "sudo -n -- sh -c {} sh \"$HOME\"",
        quote(&format!("HOME=\"$1\"; export HOME; {command}"))
    )
}

/// Text a node printed, made safe to show on a terminal: ANSI escape sequences (`ESC [ ... X`,
/// `ESC ] ... BEL`) removed, every other control character but newline and tab shown as
/// `\u{..}`, and at most `max` characters kept (then `…`). A node's output is untrusted: raw,
/// it could move the cursor, rewrite earlier lines or set the terminal's title.
pub fn printable(text: &str, max: usize) -> String {
    let mut out = String::new();
    let mut chars = text.chars().peekable();
    let mut kept = 0;
    while let Some(c) = chars.next() {
        if kept >= max {
            out.push('…');
            break;
        }
        match c {
            '\x1b' => match chars.peek() {
                // CSI: parameters and intermediates up to a final byte in `@`..`~`.
                Some('[') => {
                    chars.next();
                    for c in chars.by_ref() {
                        if ('@'..='~').contains(&c) {
                            break;
                        }
                    }
                }
                // OSC: up to BEL or ESC `\`.
                Some(']') => {
                    chars.next();
                    while let Some(c) = chars.next() {
                        if c == '\x07' || (c == '\x1b' && chars.next_if_eq(&'\\').is_some()) {
                            break;
                        }
                    }
                }
                _ => {
                    chars.next();
                }
            },
            '\n' | '\t' => {
                out.push(c);
                kept += 1;
            }
            c if c.is_control() => {
                out.push_str(&c.escape_unicode().to_string());
                kept += 1;
            }
            c => {
                out.push(c);
                kept += 1;
            }
        }
    }
    out
}

/// A ledger name fleetup will not put on a command line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{name}` is not a valid ledger name: {reason}")]
pub struct LedgerNameError {
    pub name: String,
    pub reason: &'static str,
}

/// Ledger names fleetup accepts: 1 to 63 ASCII letters, digits, `_` and `-`, not starting with
/// `-` (the `numary` CLI would read it as a flag). The real ledger is laxer; these are the names
/// that are safe as a file name (`numary_<name>.db`), a Postgres schema and a URL path segment.
pub fn validate_ledger_name(name: &str) -> Result<(), LedgerNameError> {
    let err = |reason| {
        Err(LedgerNameError {
            name: name.escape_debug().to_string(),
            reason,
        })
    };
    if name.is_empty() {
        return err("it is empty");
    }
    if name.len() > 63 {
        return err("it is longer than 63 characters");
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return err("only letters, digits, `_` and `-` are allowed");
    }
    if name.starts_with('-') {
        return err("it starts with `-`");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_words_stay_unquoted() {
        for w in [
            "numary",
            "/usr/local/bin/numary",
            "v1.8.2",
            "a_b-c:d,e@f%g+h",
        ] {
            assert_eq!(quote(w), w);
        }
    }

    #[test]
    fn hostile_values_are_single_quoted() {
        let cases = [
            ("", "''"),
            ("two words", "'two words'"),
            ("it's", "'it'\\''s'"),
            ("'", "''\\'''"),
            ("$(rm -rf /)", "'$(rm -rf /)'"),
            ("`id`", "'`id`'"),
            ("a;b", "'a;b'"),
            ("a\nb", "'a\nb'"),
            ("x=1", "'x=1'"),
            ("~root", "'~root'"),
            ("*", "'*'"),
            ("\"$HOME\"", "'\"$HOME\"'"),
            ("h\\n", "'h\\n'"),
            ("grüße", "'grüße'"),
            ("-rf", "-rf"),
        ];
        for (input, want) in cases {
            assert_eq!(quote(input), want, "quote({input:?})");
        }
    }

    #[test]
    fn quoted_words_round_trip_through_a_local_sh() {
        let hostile = [
            "",
            "it's",
            "$(echo pwned)",
            "`echo pwned`",
            "a;echo b",
            "x\ny",
            "é ü",
            "'\"\\",
        ];
        for w in hostile {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(format!("printf %s {}", quote(w)))
                .output()
                .unwrap();
            assert_eq!(String::from_utf8(out.stdout).unwrap(), w);
        }
    }

    #[test]
    fn sudo_wraps_a_whole_line_as_one_word() {
        assert_eq!(
            sudo("systemctl stop 'my unit' && echo \"$x\""),
            "sudo -n -- sh -c 'HOME=\"$1\"; export HOME; systemctl stop '\\''my unit'\\'' && echo \"$x\"' sh \"$HOME\""
        );
        // The wrapped line means to its own shell what it meant unwrapped (here run by `sh`
        // standing in for sudo, which hands the words to `sh -c` unchanged).
        let line = "printf '%s|' \"$0\" \"$HOME\" 'it'\\''s' \"$(echo a b)\"; exit 3";
        let wrapped = sudo(line).replacen("sudo -n -- ", "", 1);
        let run = |l: &str| {
            std::process::Command::new("sh")
                .arg("-c")
                .arg(l)
                .output()
                .unwrap()
        };
        let (plain, via) = (run(line), run(&wrapped));
        assert_eq!(plain.stdout, via.stdout);
        assert_eq!(via.status.code(), Some(3));
    }

    #[test]
    fn printable_drops_escape_sequences_and_shows_control_characters() {
        assert_eq!(
            printable(
                "\x1b[31mred\x1b[0m \x1b]0;title\x07ok\r\x08\nnext\tcol",
                100
            ),
            "red ok\\u{d}\\u{8}\nnext\tcol"
        );
        assert_eq!(printable("abcdef", 3), "abc…");
        assert_eq!(printable("\x1b]2;t\x1b\\x", 10), "x");
    }

    #[test]
    fn join_quotes_each_word() {
        assert_eq!(join(&["mv", "-f", "a b", "c"]), "mv -f 'a b' c");
    }

    #[test]
    fn ledger_names() {
        for ok in ["default", "ledger-1", "EU_payments", "a", &"x".repeat(63)] {
            assert_eq!(validate_ledger_name(ok), Ok(()), "{ok}");
        }
        for bad in [
            "",
            "a b",
            "a;b",
            "$(id)",
            "a'b",
            "a\nb",
            "é",
            "a/b",
            "a.b",
            "-x",
            &"x".repeat(64),
        ] {
            assert!(
                validate_ledger_name(bad).is_err(),
                "{bad:?} must be refused"
            );
        }
        let e = validate_ledger_name("a;b").unwrap_err();
        assert_eq!(
            e.to_string(),
            "`a;b` is not a valid ledger name: only letters, digits, `_` and `-` are allowed"
        );
    }
}
