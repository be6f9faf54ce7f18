//! Reading the upgrade-path table from TOML: strict shape (`[[path]]` entries, no unknown keys),
//! validated family strings, and errors that name `origin:line:col`.

use std::ops::Range;
use std::path::Path;

use serde::Deserialize;
use toml::Spanned;

use super::{Family, PathRow, PolicyTable};
use crate::error::Failure;

const SHAPE_HINT: &str = "each row is a `[[path]]` entry with `target = \"1.9.x\"`, \
     `min_current = \"1.4.x\"` (or `\"1.x\"`) and `zero_downtime = true|false`; \
     `fleetup paths --toml` prints the built-in table as a starting point";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTable {
    path: Vec<Spanned<RawRow>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRow {
    target: Spanned<String>,
    min_current: Spanned<String>,
    zero_downtime: bool,
}

/// One row with its families parsed, kept beside the [`PathRow`] it came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct ParsedRow {
    pub target: Family,
    pub min_current: Family,
}

pub(super) fn parse(text: &str, origin: &str) -> Result<PolicyTable, Failure> {
    let raw: RawTable = toml::from_str(text).map_err(|e| {
        let at = location(text, origin, e.span());
        Failure::usage(format!("{at}: {}", e.message().trim_end())).hint(SHAPE_HINT)
    })?;
    if raw.path.is_empty() {
        return Err(
            Failure::usage(format!("{origin}: the upgrade-path table has no rows"))
                .hint(SHAPE_HINT),
        );
    }
    let mut rows = Vec::with_capacity(raw.path.len());
    let mut parsed: Vec<ParsedRow> = Vec::with_capacity(raw.path.len());
    for (i, spanned) in raw.path.iter().enumerate() {
        let row = spanned.get_ref();
        let target = parse_target(row.target.get_ref())
            .map_err(|msg| field_error(text, origin, row.target.span(), msg))?;
        let min_current = parse_min_current(row.min_current.get_ref())
            .map_err(|msg| field_error(text, origin, row.min_current.span(), msg))?;
        if min_current > target {
            return Err(field_error(
                text,
                origin,
                row.min_current.span(),
                format!(
                    "minimum current `{}` is above the target family `{}`, so the row could never apply",
                    row.min_current.get_ref(),
                    row.target.get_ref()
                ),
            ));
        }
        let this = ParsedRow {
            target,
            min_current,
        };
        if let Some(first) = parsed.iter().position(|p| *p == this) {
            return Err(Failure::usage(format!(
                "{}: row {} repeats row {} (`{}` from `{}`)",
                location(text, origin, Some(spanned.span())),
                i + 1,
                first + 1,
                row.target.get_ref(),
                row.min_current.get_ref()
            ))
            .hint("keep one row per target and minimum current version"));
        }
        parsed.push(this);
        rows.push(PathRow {
            index: i + 1,
            target: row.target.get_ref().clone(),
            min_current: row.min_current.get_ref().clone(),
            zero_downtime: row.zero_downtime,
        });
    }
    Ok(PolicyTable { rows, parsed })
}

pub(super) fn load(path: &Path) -> anyhow::Result<PolicyTable> {
    let text = std::fs::read_to_string(path).map_err(|e| {
        Failure::usage(format!(
            "cannot read upgrade-path table `{}`: {e}",
            path.display()
        ))
        .hint("pass an existing TOML file with `--paths FILE` (or FLEETUP_PATHS)")
    })?;
    // The origin in every parse error is the file name already; no extra context needed.
    Ok(parse(&text, &path.display().to_string())?)
}

/// `1.9.x` → (1, 9). Only major 1 is in scope: v2 migrates with its own tool.
fn parse_target(s: &str) -> Result<Family, String> {
    parse_family(s, false)?.ok_or_else(|| {
        format!("target `{s}` is not a version family: expected `MAJOR.MINOR.x` such as `1.9.x`")
    })
}

/// `1.4.x` → (1, 4); `1.x` → (1, 0), the whole major.
fn parse_min_current(s: &str) -> Result<Family, String> {
    parse_family(s, true)?.ok_or_else(|| {
        format!(
            "minimum current `{s}` is not a version family: expected `MAJOR.MINOR.x` (such as `1.4.x`) or `MAJOR.x` (such as `1.x`)"
        )
    })
}

/// `Ok(None)` when `s` does not have the shape of a family at all.
fn parse_family(s: &str, allow_whole_major: bool) -> Result<Option<Family>, String> {
    let parts: Vec<&str> = s.split('.').collect();
    let (major, minor) = match parts.as_slice() {
        [major, minor, "x"] => (number(major, s)?, number(minor, s)?),
        [major, "x"] if allow_whole_major => (number(major, s)?, 0),
        _ => return Ok(None),
    };
    in_scope(major, s)?;
    Ok(Some(Family { major, minor }))
}

fn number(part: &str, whole: &str) -> Result<u64, String> {
    // Reject `+1`, ` 1` and `01` that `parse` would accept or that semver would not.
    let canonical = !part.is_empty()
        && part.bytes().all(|b| b.is_ascii_digit())
        && (part == "0" || !part.starts_with('0'));
    if !canonical {
        return Err(format!("`{whole}`: `{part}` is not a version number"));
    }
    part.parse()
        .map_err(|_| format!("`{whole}`: `{part}` is too large"))
}

fn in_scope(major: u64, whole: &str) -> Result<(), String> {
    if major == 1 {
        Ok(())
    } else {
        Err(format!(
            "`{whole}`: only Formance Ledger v1 (major 1) upgrades are in scope (v2 migrates with `ledger migrate`)"
        ))
    }
}

fn field_error(text: &str, origin: &str, span: Range<usize>, msg: String) -> Failure {
    Failure::usage(format!("{}: {msg}", location(text, origin, Some(span)))).hint(SHAPE_HINT)
}

/// `origin:line:col` (1-based, columns in characters) for the start of `span`.
fn location(text: &str, origin: &str, span: Option<Range<usize>>) -> String {
    let Some(span) = span else {
        return origin.to_string();
    };
    let offset = span.start.min(text.len());
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before
        .get(line_start..)
        .map(|s| s.chars().count())
        .unwrap_or(0)
        + 1;
    format!("{origin}:{line}:{col}")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(text: &str) -> Failure {
        match parse(text, "t.toml") {
            Ok(table) => panic!("expected an error, parsed {:?}", table.rows()),
            Err(e) => e,
        }
    }

    #[test]
    fn unknown_key_names_line_and_column() {
        let e = err(
            "[[path]]\ntarget = \"1.9.x\"\nmin_current = \"1.4.x\"\nzero_downtime = true\nnote = 1\n",
        );
        assert!(e.message.starts_with("t.toml:5:1: "), "{}", e.message);
        assert!(e.message.contains("note"), "{}", e.message);
        assert_eq!(e.code, crate::exit_code::USAGE);
        assert!(!e.hints.is_empty());
    }

    #[test]
    fn bad_target_family_points_at_the_value() {
        let e = err("[[path]]\ntarget = \"1.9\"\nmin_current = \"1.4.x\"\nzero_downtime = true\n");
        assert!(e.message.starts_with("t.toml:2:10: "), "{}", e.message);
        assert!(e.message.contains("`1.9`"), "{}", e.message);
    }

    #[test]
    fn bad_min_current_points_at_the_value() {
        let e =
            err("[[path]]\ntarget = \"1.9.x\"\n  min_current = \"1.x.4\"\nzero_downtime = true\n");
        assert!(e.message.starts_with("t.toml:3:17: "), "{}", e.message);
    }

    #[test]
    fn wrong_type_names_line() {
        let e =
            err("[[path]]\ntarget = \"1.9.x\"\nmin_current = \"1.4.x\"\nzero_downtime = \"yes\"\n");
        assert!(e.message.starts_with("t.toml:4:"), "{}", e.message);
    }

    #[test]
    fn missing_key_and_syntax_errors_name_the_origin() {
        let e = err("[[path]]\ntarget = \"1.9.x\"\nzero_downtime = true\n");
        assert!(e.message.starts_with("t.toml:"), "{}", e.message);
        assert!(e.message.contains("min_current"), "{}", e.message);
        let e = err("[[path]\n");
        assert!(e.message.starts_with("t.toml:1:"), "{}", e.message);
    }

    #[test]
    fn rejects_out_of_scope_and_inverted_and_duplicate_rows() {
        let e = err("[[path]]\ntarget = \"2.0.x\"\nmin_current = \"1.x\"\nzero_downtime = false\n");
        assert!(e.message.contains("major 1"), "{}", e.message);
        let e =
            err("[[path]]\ntarget = \"1.4.x\"\nmin_current = \"1.9.x\"\nzero_downtime = false\n");
        assert!(e.message.starts_with("t.toml:3:15: "), "{}", e.message);
        let row = "[[path]]\ntarget = \"1.4.x\"\nmin_current = \"1.x\"\nzero_downtime = false\n";
        let e = err(&format!("{row}{row}"));
        assert!(
            e.message.starts_with("t.toml:5:1: row 2 repeats row 1"),
            "{}",
            e.message
        );
        let e = err("path = []\n");
        assert!(e.message.contains("no rows"), "{}", e.message);
        let e =
            err("[[path]]\ntarget = \"1.09.x\"\nmin_current = \"1.x\"\nzero_downtime = false\n");
        assert!(e.message.contains("`09`"), "{}", e.message);
    }

    #[test]
    fn load_reports_missing_file_as_usage() {
        let err = load(Path::new("/nonexistent/paths.toml")).unwrap_err();
        let failure = crate::error::find_failure(&err).expect("a Failure in the chain");
        assert_eq!(failure.code, crate::exit_code::USAGE);
        assert!(failure.message.contains("/nonexistent/paths.toml"));
    }

    #[test]
    fn load_wraps_parse_errors_with_the_file_name() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("p.toml");
        std::fs::write(
            &file,
            "[[path]]\ntarget = \"x\"\nmin_current = \"1.x\"\nzero_downtime = true\n",
        )
        .unwrap();
        let err = load(&file).unwrap_err();
        let failure = crate::error::find_failure(&err).expect("a Failure in the chain");
        assert!(
            failure
                .message
                .starts_with(&format!("{}:2:10: ", file.display())),
            "{}",
            failure.message
        );
    }
}
