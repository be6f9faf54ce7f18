//! Text made safe for a terminal. What a node sends (command output, `/_info` fields, ledger
//! names, error text) is untrusted: raw, an escape sequence could move the cursor, rewrite
//! earlier lines, set the window title or hide text. Every line the CLI writes passes through
//! [`safe`]; table cells through [`cell`].

use std::borrow::Cow;

/// `text` with every control character shown escaped (`\u{1b}`), except newline and tab, and
/// fleetup's own colours: SGR sequences (`ESC [ digits ; ... m`) are kept, as they only colour.
pub fn safe(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 16);
    let mut rest = text;
    while let Some(c) = rest.chars().next() {
        if c == '\x1b'
            && let Some(len) = sgr_len(rest)
        {
            out.push_str(&rest[..len]);
            rest = &rest[len..];
            continue;
        }
        match c {
            '\n' | '\t' => out.push(c),
            c => out.push_str(&escape_char(c)),
        }
        rest = &rest[c.len_utf8()..];
    }
    Cow::Owned(out)
}

/// One table cell or one-line value: every control character escaped, newline and tab too,
/// so a cell is exactly as wide as it looks and cannot break the table.
pub fn cell(text: &str) -> Cow<'_, str> {
    if !text.chars().any(char::is_control) {
        return Cow::Borrowed(text);
    }
    Cow::Owned(text.chars().map(escape_char).collect())
}

/// `text` with every control character but newline and tab escaped, SGR sequences too: for
/// text that fleetup colours itself afterwards.
pub fn cell_lines(text: &str) -> Cow<'_, str> {
    if !text
        .chars()
        .any(|c| c.is_control() && c != '\n' && c != '\t')
    {
        return Cow::Borrowed(text);
    }
    Cow::Owned(
        text.chars()
            .map(|c| match c {
                '\n' | '\t' => c.to_string(),
                c => escape_char(c),
            })
            .collect(),
    )
}

/// The length of an SGR sequence at the start of `text`: `ESC [`, digits and `;`, then `m`.
fn sgr_len(text: &str) -> Option<usize> {
    let params = text.strip_prefix("\x1b[")?;
    let n = params
        .bytes()
        .take_while(|b| b.is_ascii_digit() || *b == b';')
        .count();
    (n <= 16 && params.as_bytes().get(n) == Some(&b'm')).then_some(2 + n + 1)
}

fn escape_char(c: char) -> String {
    if c.is_control() {
        c.escape_unicode().to_string()
    } else {
        c.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_what_moves_the_cursor_or_sets_the_title() {
        let node = "v1.8.2\x1b]0;owned\x07\x1b[2J\x1b[1A\rX";
        let s = safe(node);
        assert!(
            !s.contains('\x1b') && !s.contains('\x07') && !s.contains('\r'),
            "{s:?}"
        );
        assert_eq!(s, "v1.8.2\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\u{1b}[1A\\u{d}X");
    }

    #[test]
    fn keeps_lines_tabs_and_colours() {
        let ours = "\x1b[32mok\x1b[0m\tnext\n\x1b[1;31mfailed\x1b[0m\n";
        assert_eq!(safe(ours), ours);
        assert!(matches!(safe("plain\n"), Cow::Borrowed(_)));
    }

    #[test]
    fn a_cell_is_one_line() {
        assert_eq!(cell("a\nb\tc\x1b[31m"), "a\\u{a}b\\u{9}c\\u{1b}[31m");
        assert_eq!(cell("foo"), "foo");
    }
}
