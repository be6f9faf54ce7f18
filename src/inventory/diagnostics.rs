//! Inventory errors as the operator reads them: "`inv.toml`:12:5: what" plus hints, one line per
//! problem, all problems of a pass in one [`Failure`]. Also the "did you mean" helper shared with
//! host selection.

use std::ops::Range;
use std::path::Path;

use crate::error::Failure;
use crate::exit_code;

use super::values::HINT_MARK;

/// One problem at one place of the inventory file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// Byte range in the source; `None` when the problem has no single place.
    pub span: Option<Range<usize>>,
    pub message: String,
    pub hints: Vec<String>,
}

impl Diagnostic {
    pub fn at(span: Range<usize>, message: impl Into<String>) -> Self {
        Diagnostic {
            span: Some(span),
            message: message.into(),
            hints: Vec::new(),
        }
    }

    pub fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hints.push(hint.into());
        self
    }

    /// From a TOML/serde error: its span, its message split from any hints our value types
    /// embedded, and a hint chosen from the kind of error when there is none.
    pub fn from_toml(err: &toml::de::Error) -> Self {
        let raw = err.message().trim_end();
        let mut parts = raw.split(HINT_MARK);
        let message = parts.next().unwrap_or_default().to_string();
        let hints: Vec<String> = parts.map(str::to_string).collect();
        let diag = Diagnostic {
            span: err.span(),
            message,
            hints,
        };
        if diag.hints.is_empty() {
            diag.with_default_hints()
        } else {
            diag
        }
    }

    /// Rewrite serde's stock messages into ours and give each a hint.
    fn with_default_hints(mut self) -> Self {
        let msg = self.message.clone();
        if let Some(rest) = msg.strip_prefix("unknown field ") {
            let (key, allowed) = match rest.split_once(", expected ") {
                Some((key, allowed)) => (key, Some(allowed)),
                None => (rest, None),
            };
            self.message = format!("unknown key {key}");
            let names: Vec<&str> = allowed.map(backticked).unwrap_or_default();
            if let Some(best) = closest(key.trim_matches('`'), names.iter().copied()).first() {
                self.hints.push(format!("did you mean `{best}`?"));
            }
            if let Some(allowed) = allowed {
                let allowed = allowed.trim_start_matches("one of ");
                self.hints.push(format!("keys allowed here: {allowed}"));
            }
            self.hints
                .push("inventory.example.toml documents every key".to_string());
        } else if let Some(rest) = msg.strip_prefix("missing field ") {
            self.message = format!("missing key {rest}");
            self.hints.push(if rest == "`command`" {
                "a hook needs `command`, the shell command it runs; see inventory.example.toml"
                    .to_string()
            } else {
                format!(
                    "add {rest}; every `[[host]]` needs `name` and `address`, see inventory.example.toml"
                )
            });
        } else if msg.starts_with("invalid type: map, expected a sequence") {
            self.hints.push(
                "a list of tables takes two brackets: write `[[host]]` (one per host), not `[host]`"
                    .to_string(),
            );
        } else if msg.starts_with("invalid type") {
            self.hints.push(
                "strings go in double quotes, numbers and booleans (`true`, `false`) do not, lists in `[...]`"
                    .to_string(),
            );
        } else if msg.starts_with("unknown variant") {
            self.hints
                .push("use one of the values the message lists".to_string());
        } else if msg.contains("is not a version") {
            self.hints
                .push("versions look like `1.9.6` (a leading `v` is allowed)".to_string());
        } else {
            self.hints
                .push("the TOML syntax is described at https://toml.io".to_string());
        }
        // Multi-line parser messages read better on one line after the location.
        self.message = self.message.replace('\n', "; ");
        self
    }
}

/// The `` `name` `` items of a serde "expected one of ..." list.
fn backticked(s: &str) -> Vec<&str> {
    s.split('`').skip(1).step_by(2).collect()
}

/// 1-based line and column (in characters) of byte offset `at` in `source`.
pub fn line_col(source: &str, at: usize) -> (usize, usize) {
    let at = at.min(source.len());
    let before = source.get(..at).unwrap_or(source);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map(|i| i + 1).unwrap_or(0);
    let col = before[line_start..].chars().count() + 1;
    (line, col)
}

/// 1-based line of byte offset `at`.
pub fn line_of(source: &str, at: usize) -> usize {
    line_col(source, at).0
}

/// "`file`:line:col: message" (or "`file`: message" without a place).
pub fn locate(file: &Path, source: &str, diag: &Diagnostic) -> String {
    match &diag.span {
        Some(span) => {
            let (line, col) = line_col(source, span.start);
            format!("`{}`:{line}:{col}: {}", file.display(), diag.message)
        }
        None => format!("`{}`: {}", file.display(), diag.message),
    }
}

/// All diagnostics of one pass as one usage [`Failure`], in file order. One problem keeps its
/// hints as the failure's hints; several put each one's hints under its own line, where they
/// make sense.
pub fn to_failure(file: &Path, source: &str, mut diags: Vec<Diagnostic>) -> Failure {
    diags.sort_by_key(|d| d.span.as_ref().map(|s| s.start).unwrap_or(0));
    diags.dedup();
    match diags.as_slice() {
        [one] => Failure {
            code: exit_code::USAGE,
            message: locate(file, source, one),
            hints: one.hints.clone(),
        },
        many => {
            let mut message = format!("inventory `{}` has {} errors:", file.display(), many.len());
            for d in many {
                message.push_str("\n  ");
                message.push_str(&locate(file, source, d));
                for hint in &d.hints {
                    message.push_str("\n      hint: ");
                    message.push_str(hint);
                }
            }
            Failure::usage(message)
        }
    }
}

/// Edit distance counting a swap of two neighbours as one edit (optimal string alignment),
/// ignoring ASCII case: `nmae` is one edit from `name`.
fn distance(a: &str, b: &str) -> usize {
    let a: Vec<char> = a.to_ascii_lowercase().chars().collect();
    let b: Vec<char> = b.to_ascii_lowercase().chars().collect();
    let mut d = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for (i, row) in d.iter_mut().enumerate() {
        row[0] = i;
    }
    for (j, cell) in d[0].iter_mut().enumerate() {
        *cell = j;
    }
    for i in 1..=a.len() {
        for j in 1..=b.len() {
            let cost = usize::from(a[i - 1] != b[j - 1]);
            let mut best = (d[i - 1][j] + 1)
                .min(d[i][j - 1] + 1)
                .min(d[i - 1][j - 1] + cost);
            if i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] {
                best = best.min(d[i - 2][j - 2] + 1);
            }
            d[i][j] = best;
        }
    }
    d[a.len()][b.len()]
}

/// Candidates close to `wanted` (few edits, or containing it), best first, at most three.
pub fn closest<'a>(wanted: &str, candidates: impl IntoIterator<Item = &'a str>) -> Vec<&'a str> {
    let wanted_lower = wanted.to_ascii_lowercase();
    let len = wanted.chars().count();
    let limit = (len / 4).max(1);
    let mut scored: Vec<(usize, &str)> = candidates
        .into_iter()
        .filter_map(|c| {
            let d = distance(wanted, c);
            let c_lower = c.to_ascii_lowercase();
            // `eu` for `euro`, `ledger-1` for `ledger`: one name the start of the other.
            let contains = !wanted_lower.is_empty()
                && (c_lower.contains(&wanted_lower)
                    || (c_lower.len() >= 2 && wanted_lower.starts_with(&c_lower)));
            // An edit count equal to the length would suggest any name as short as the typo.
            ((d <= limit && d < len) || contains).then_some((d, c))
        })
        .collect();
    scored.sort();
    scored.dedup_by(|a, b| a.1 == b.1);
    scored.into_iter().take(3).map(|(_, c)| c).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_and_column_are_one_based_and_count_characters() {
        let src = "a = 1\nbé = \"x\"\n";
        assert_eq!(line_col(src, 0), (1, 1));
        assert_eq!(line_col(src, 6), (2, 1));
        // `=` after the two-byte `é`: byte 9, column 4.
        assert_eq!(line_col(src, src.find("= \"x").unwrap()), (2, 4));
        assert_eq!(line_col(src, 999), (3, 1));
    }

    #[test]
    fn closest_prefers_few_edits() {
        let names = ["ledger-1", "ledger-2", "db-1"];
        assert_eq!(closest("ledgr-1", names), vec!["ledger-1"]);
        assert_eq!(closest("ledger-3", names), vec!["ledger-1", "ledger-2"]);
        assert_eq!(closest("db", names), vec!["db-1"]);
        assert!(closest("zzzzzz", names).is_empty());
        assert!(closest("us", ["eu"]).is_empty());
        assert_eq!(closest("euro", ["eu", "us"]), vec!["eu"]);
        assert!(closest("c", ["a"]).is_empty());
        assert_eq!(closest("usr", ["user", "port"]), vec!["user"]);
        assert_eq!(closest("ue", ["eu", "us", "west"]), vec!["eu", "us"]);
        assert_eq!(distance("nmae", "name"), 1);
        assert_eq!(distance("Ledger", "ledger"), 0);
        assert_eq!(distance("", "abc"), 3);
    }

    #[test]
    fn many_diagnostics_become_one_failure_in_file_order_with_hints_inline() {
        let src = "one\ntwo\nthree\n";
        let third = Diagnostic::at(8..13, "third").hint("h3");
        let diags = vec![
            third.clone(),
            Diagnostic::at(0..3, "first").hint("h1"),
            third,
        ];
        let f = to_failure(Path::new("inv.toml"), src, diags);
        assert_eq!(f.code, exit_code::USAGE);
        assert_eq!(
            f.message,
            "inventory `inv.toml` has 2 errors:\n  `inv.toml`:1:1: first\n      hint: h1\n  \
             `inv.toml`:3:1: third\n      hint: h3"
        );
        assert!(f.hints.is_empty());
    }

    #[test]
    fn one_diagnostic_keeps_its_hints_on_the_failure() {
        let f = to_failure(
            Path::new("a/inv.toml"),
            "x = 1\n",
            vec![Diagnostic::at(4..5, "bad").hint("h")],
        );
        assert_eq!(f.message, "`a/inv.toml`:1:5: bad");
        assert_eq!(f.hints, vec!["h"]);
    }

    #[test]
    fn unknown_field_gets_a_suggestion() {
        let err = toml::from_str::<Strict>("nmae = 1").unwrap_err();
        let d = Diagnostic::from_toml(&err);
        assert_eq!(d.message, "unknown key `nmae`");
        assert_eq!(d.hints[0], "did you mean `name`?");
        assert_eq!(d.span, Some(0..4));
    }

    #[derive(Debug, serde::Deserialize)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Strict {
        name: Option<i64>,
        other: Option<i64>,
    }
}
