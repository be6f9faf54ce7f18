//! Fuzz harnesses: each takes bytes from outside (an operator's file, a node's output or reply)
//! and runs one parser on them, checking what must hold whatever the input: no panic, bounds
//! kept, escapes complete. The cargo-fuzz targets in `fuzz/` call them, and so does the bounded
//! replay of their corpus with generated inputs that CI runs (`tests/fuzz_corpus.rs`): one
//! harness, two drivers. Not part of the API.

use std::path::Path;

/// A harness: bytes in, a panic when something that must hold does not.
pub type Harness = fn(&[u8]);

/// Every harness, by the name of its fuzz target and corpus dir.
pub const TARGETS: [(&str, Harness); 8] = [
    ("inventory", inventory),
    ("version", version),
    ("numary_output", numary_output),
    ("info_json", info_json),
    ("known_hosts", known_hosts),
    ("http_response", http_response),
    ("env_file", env_file),
    ("terminal", terminal),
];

fn text(data: &[u8]) -> std::borrow::Cow<'_, str> {
    String::from_utf8_lossy(data)
}

/// The inventory parser (TOML, then resolution and validation), and the rendering of its errors.
pub fn inventory(data: &[u8]) {
    let local = crate::inventory::LocalEnv {
        home: None,
        user: "fuzz".into(),
        default_identity_files: Vec::new(),
    };
    let overrides = crate::inventory::Overrides::default();
    match crate::inventory::Inventory::parse(
        &text(data),
        Path::new("fuzz.toml"),
        &overrides,
        &local,
    ) {
        Ok(inv) => {
            for h in inv.hosts() {
                assert!(!h.name.is_empty(), "a host without a name");
            }
        }
        Err(e) => {
            let _ = e.to_string();
        }
    }
}

/// `Version::parse` (round trip of what it accepts) and `numary version`'s output.
pub fn version(data: &[u8]) {
    let s = text(data);
    if let Ok(v) = crate::version::Version::parse(&s) {
        assert_eq!(
            crate::version::Version::parse(&v.to_string()).ok(),
            Some(v.clone()),
            "`{v}` does not parse back"
        );
    }
    let _ = crate::numary::parse_version(&s);
}

/// What `numary storage list|upgrade|scan` print.
pub fn numary_output(data: &[u8]) {
    let s = text(data);
    if let Ok(names) = crate::numary::parse_storage_list(&s) {
        for n in &names {
            assert!(!n.contains('\n'), "a ledger name holding a newline: {n:?}");
            // Exactly as listed: a name is a line's rest after `- `.
            assert!(s.contains(&format!("- {n}")), "`{n}` is not in the output");
        }
    }
    let _ = crate::numary::parse_storage_upgrade(&s, "default");
    let _ = crate::numary::parse_storage_scan(&s);
}

/// `GET /_info` bodies.
pub fn info_json(data: &[u8]) {
    let _ = crate::numary::parse_info(data);
}

/// known_hosts files.
pub fn known_hosts(data: &[u8]) {
    let _ = crate::ssh::known_hosts::KnownHosts::parse(Path::new("known_hosts"), &text(data));
}

/// HTTP replies, whole and cut at every 7th byte, with and without the end of the stream.
pub fn http_response(data: &[u8]) {
    use crate::ssh::http::{MAX_BODY, parse_response};
    let mut cut = 0;
    while cut <= data.len() {
        for eof in [false, true] {
            if let Ok(Some(r)) = parse_response(&data[..cut], eof) {
                assert!(r.body.len() <= MAX_BODY, "a body of {} bytes", r.body.len());
            }
        }
        cut += 7;
    }
    for eof in [false, true] {
        if let Ok(Some(r)) = parse_response(data, eof) {
            assert!(r.body.len() <= MAX_BODY, "a body of {} bytes", r.body.len());
        }
    }
}

/// Env files: names valid, line numbers in the file, the loader's input one value per line.
pub fn env_file(data: &[u8]) {
    let s = text(data);
    let f = crate::envfile::parse(&s);
    for (k, _) in &f.vars {
        assert!(crate::envfile::valid_name(k), "kept an invalid name `{k}`");
    }
    let lines = s.split('\n').count();
    for d in &f.divergent {
        assert!(d.line >= 1 && d.line <= lines, "line {} of {lines}", d.line);
        assert!(!d.text.chars().any(char::is_control), "{:?}", d.text);
    }
    let stdin = String::from_utf8(f.stdin()).expect("UTF-8 in, UTF-8 out");
    let mut it = stdin.split('\n');
    assert_eq!(it.next(), Some(crate::envfile::SENTINEL));
    for line in it.filter(|l| !l.is_empty()) {
        let (k, _) = line.split_once('=').expect("KEY=VALUE");
        assert!(crate::envfile::valid_name(k), "{line:?}");
    }
}

/// Terminal escaping: no control character survives but newline, tab and SGR colours.
pub fn terminal(data: &[u8]) {
    let s = text(data);
    let safe = crate::terminal::safe(&s);
    let mut rest: &str = &safe;
    while let Some(i) = rest.find(|c: char| c.is_control() && c != '\n' && c != '\t') {
        let tail = &rest[i..];
        let params = tail
            .strip_prefix("\x1b[")
            .unwrap_or_else(|| panic!("a raw control character in {safe:?}"));
        let n = params
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b';')
            .count();
        assert_eq!(params.as_bytes().get(n), Some(&b'm'), "not SGR: {safe:?}");
        rest = &params[n + 1..];
    }
    let cell = crate::terminal::cell(&s);
    assert!(!cell.chars().any(char::is_control), "{cell:?}");
    let _ = crate::shell::printable(&s, 80);
}

#[cfg(test)]
mod tests {
    #[test]
    fn every_harness_takes_empty_and_odd_input() {
        for (name, f) in super::TARGETS {
            for input in [
                &b""[..],
                b"\xff\xfe",
                b"\x1b[31m\r\n\0",
                b"[[host]]\nname=1",
            ] {
                f(input);
            }
            let _ = name;
        }
    }
}
