//! `fleetup paths`: the table, or the verdict for `--from C --to T`.

use clap::{Args, ValueEnum};
use fleetup::facts::StorageDriver;
use fleetup::policy::{PathRow, PolicyTable, Verdict, VerdictKind};
use fleetup::{Failure, Version, exit_code};

use super::{Format, Global};

#[derive(Debug, Args)]
pub struct PathsArgs {
    /// Current version of the node (`1.7.6` or `v1.7.6`); needs `--to`.
    #[arg(long, value_name = "VERSION", requires = "to")]
    pub from: Option<String>,
    /// Target version; needs `--from`.
    #[arg(long, value_name = "VERSION", requires = "from")]
    pub to: Option<String>,
    /// Storage driver of the node, for driver-specific advisories (default: unknown, so they are
    /// phrased conditionally).
    #[arg(long, value_enum, value_name = "DRIVER", requires = "from")]
    pub storage: Option<DriverArg>,
    /// Print the table in use as TOML: a starting point for `--paths FILE`.
    #[arg(long, conflicts_with_all = ["from", "to"])]
    pub toml: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DriverArg {
    Sqlite,
    Postgres,
}

impl From<DriverArg> for StorageDriver {
    fn from(d: DriverArg) -> Self {
        match d {
            DriverArg::Sqlite => StorageDriver::Sqlite,
            DriverArg::Postgres => StorageDriver::Postgres,
        }
    }
}

pub fn run(global: &Global, args: &PathsArgs) -> anyhow::Result<i32> {
    let table = match &global.paths_file {
        Some(file) => PolicyTable::load(file)?,
        None => PolicyTable::builtin(),
    };
    if args.toml {
        out!("{}", table_toml(&table, global.paths_file.is_none()));
        return Ok(exit_code::SUCCESS);
    }
    let (from, to) = match (&args.from, &args.to) {
        (Some(from), Some(to)) => (parse_version("--from", from)?, parse_version("--to", to)?),
        (None, None) => {
            out!("{}", render_table(table.rows(), global.format)?);
            return Ok(exit_code::SUCCESS);
        }
        // clap's `requires` already refuses these; kept so the function stands on its own.
        _ => {
            return Err(Failure::usage("`--from` and `--to` go together")
                .hint("e.g. `fleetup paths --from 1.7.4 --to 1.8.2`")
                .into());
        }
    };
    let verdict = table.evaluate_for(&from, &to, args.storage.map(Into::into));
    match global.format {
        Format::Json => super::out::json(&verdict, true)?,
        Format::Human => out!("{}", render_verdict(&verdict)),
    }
    Ok(if verdict.supported {
        exit_code::SUCCESS
    } else {
        exit_code::BLOCKED
    })
}

fn parse_version(flag: &str, text: &str) -> Result<Version, Failure> {
    Version::parse(text).map_err(|e| {
        Failure::usage(format!("invalid `{flag}`: {e}"))
            .hint("versions are MAJOR.MINOR.PATCH as `numary version` prints them, e.g. `1.8.2` or `v1.8.2`")
    })
}

fn render_table(rows: &[PathRow], format: Format) -> anyhow::Result<String> {
    if format == Format::Json {
        return Ok(format!("{}\n", serde_json::to_string_pretty(rows)?));
    }
    let mut lines = vec![[
        "#".to_string(),
        "target".to_string(),
        "min current".to_string(),
        "zero-downtime".to_string(),
    ]];
    lines.extend(rows.iter().map(|r| {
        [
            r.index.to_string(),
            r.target.clone(),
            r.min_current.clone(),
            yes_no(r.zero_downtime).to_string(),
        ]
    }));
    let widths: Vec<usize> = (0..4)
        .map(|c| {
            lines
                .iter()
                .map(|l| l[c].chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    let mut out = String::new();
    for l in &lines {
        let text = format!(
            "{:>w0$}  {:<w1$}  {:<w2$}  {}",
            l[0],
            l[1],
            l[2],
            l[3],
            w0 = widths[0],
            w1 = widths[1],
            w2 = widths[2]
        );
        out.push_str(text.trim_end());
        out.push('\n');
    }
    Ok(out)
}

fn render_verdict(v: &Verdict) -> String {
    let status = match v.kind {
        VerdictKind::Direct => "supported",
        VerdictKind::AlreadyAtTarget => "nothing to do",
        VerdictKind::NeedsHops => "not supported directly",
        VerdictKind::Impossible => "not supported",
        _ => "refused",
    };
    let strategy = match (v.kind, v.zero_downtime) {
        (VerdictKind::AlreadyAtTarget, _) => "none needed",
        (VerdictKind::Direct, true) => "zero-downtime allowed (or offline)",
        (VerdictKind::Direct, false) => "offline only (stop every node, migrate once, restart)",
        (VerdictKind::NeedsHops, _) => "none directly: upgrade hop by hop",
        _ => "none",
    };
    let row = match &v.row {
        Some(r) => format!(
            "{} ({} from {}, zero-downtime: {})",
            r.index,
            r.target,
            r.min_current,
            yes_no(r.zero_downtime)
        ),
        None => "none".to_string(),
    };
    let hops = if v.hops.is_empty() {
        "none".to_string()
    } else {
        format!("{} → {}", v.current, v.hops.join(" → "))
    };
    let mut out = format!(
        "{} → {}: {status}\n  reason:     {}\n  strategy:   {strategy}\n  row:        {row}\n  hops:       {hops}\n",
        v.current, v.target, v.reason
    );
    if v.advisories.is_empty() {
        out.push_str("  advisories: none\n");
    } else {
        out.push_str("  advisories:\n");
        for a in &v.advisories {
            out.push_str(&format!("    - {a}\n"));
        }
    }
    out
}

/// The table as `paths.toml` text: the embedded file verbatim (with its comments) for the
/// built-in table, else generated from the rows.
fn table_toml(table: &PolicyTable, builtin: bool) -> String {
    if builtin {
        return fleetup::policy::BUILTIN_TOML.to_string();
    }
    table
        .rows()
        .iter()
        .map(|r| {
            format!(
                "[[path]]\ntarget = \"{}\"\nmin_current = \"{}\"\nzero_downtime = {}\n",
                r.target, r.min_current, r.zero_downtime
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn yes_no(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_columns_are_aligned_and_numbered() {
        let text = render_table(PolicyTable::builtin().rows(), Format::Human).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 18, "{text}");
        assert_eq!(lines[0], " #  target  min current  zero-downtime");
        assert_eq!(lines[1], " 1  1.9.x   1.4.x        yes");
        assert_eq!(lines[3], " 3  1.8.x   1.x          no");
        assert_eq!(lines[17], "17  1.1.x   1.1.x        yes");
    }

    #[test]
    fn generated_toml_round_trips() {
        let table = PolicyTable::builtin();
        let text = table_toml(&table, false);
        let back = PolicyTable::from_toml(&text, "generated").unwrap();
        assert_eq!(back.rows(), table.rows());
    }

    #[test]
    fn verdict_text_names_row_hops_and_advisories() {
        let table = PolicyTable::builtin();
        let v = table.evaluate(&Version::new(1, 7, 6), &Version::new(1, 8, 1));
        let text = render_verdict(&v);
        assert!(text.starts_with("1.7.6 → 1.8.1: refused\n"), "{text}");
        assert!(
            text.contains("  row:        2 (1.8.x from 1.4.x, zero-downtime: no)"),
            "{text}"
        );
        assert!(text.contains("    - refused: "), "{text}");
        let v = table.evaluate(&Version::new(1, 2, 3), &Version::new(1, 9, 0));
        let text = render_verdict(&v);
        assert!(
            text.contains("  hops:       1.2.3 → 1.8.x → 1.9.0\n"),
            "{text}"
        );
    }

    #[test]
    fn bad_version_is_a_usage_error_with_hint() {
        let e = parse_version("--from", "1.8").unwrap_err();
        assert_eq!(e.code, exit_code::USAGE);
        assert!(
            e.message
                .starts_with("invalid `--from`: `1.8` is not a version"),
            "{}",
            e.message
        );
        assert_eq!(e.hints.len(), 1);
    }
}
