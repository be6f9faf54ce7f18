//! Rendering errors as `error:` / `caused by:` / `hint:` lines on stderr.

use std::path::Path;

use fleetup::error::find_failure;
use fleetup::exit_code;

/// Render an error chain in the house style and return the exit code it maps to.
pub fn report(err: &anyhow::Error) -> i32 {
    err!("{}", render(err));
    find_failure(err)
        .map(|f| f.code)
        .unwrap_or(exit_code::FAILURE)
}

/// `error: <top>` then one `caused by: <source>` per further link, then the hints of any
/// [`fleetup::Failure`] in the chain; redacted (an error may quote a command or its output).
pub fn render(err: &anyhow::Error) -> String {
    let mut out = String::new();
    let mut links = err.chain();
    if let Some(top) = links.next() {
        out.push_str(&format!("error: {top}\n"));
    }
    for cause in links {
        out.push_str(&format!("  caused by: {cause}\n"));
    }
    if let Some(f) = find_failure(err) {
        for hint in f.hints.iter().filter_map(|h| fit_hint(h, Path::new("."))) {
            out.push_str(&format!("  hint: {hint}\n"));
        }
    }
    fleetup::redact::redact(&out)
}

/// A hint that points at the repository's files (`inventory.example.toml`, `scripts/`) only
/// where they are, in `dir`: an installed fleetup has neither.
fn fit_hint(hint: &str, dir: &Path) -> Option<String> {
    let mut hint = hint.to_string();
    if hint.contains("inventory.example.toml") && !dir.join("inventory.example.toml").is_file() {
        if hint.starts_with("inventory.example.toml") {
            return Some("`fleetup inventory check --help` and the inventory reference (docs/inventory.md) list every key".into());
        }
        for tail in [
            ", see inventory.example.toml",
            "; see inventory.example.toml",
        ] {
            hint = hint.replace(tail, "");
        }
    }
    if hint.contains("scripts/") && !dir.join("scripts").is_dir() {
        return None;
    }
    Some(hint)
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetup::Failure;

    #[test]
    fn hints_name_repository_files_only_where_they_are() {
        let empty = tempfile::tempdir().unwrap();
        let h =
            "add `name`; every `[[host]]` needs `name` and `address`, see inventory.example.toml";
        assert_eq!(
            fit_hint(h, empty.path()).unwrap(),
            "add `name`; every `[[host]]` needs `name` and `address`"
        );
        assert_eq!(fit_hint("run scripts/pg.sh start", empty.path()), None);
        std::fs::write(empty.path().join("inventory.example.toml"), "").unwrap();
        assert_eq!(fit_hint(h, empty.path()).unwrap(), h);
    }

    #[test]
    fn rendering_masks_known_secrets_and_conn_string_passwords() {
        fleetup::redact::known().register("render-Pass-phrase");
        let err = anyhow::Error::new(
            Failure::usage("`PGPASSWORD=\"x y\" psql` failed").hint("not render-Pass-phrase"),
        )
        .context("cannot decrypt with `render-Pass-phrase` for postgresql://u:pw@h/db");
        let text = render(&err);
        assert!(!text.contains("render-Pass-phrase"), "{text}");
        assert!(!text.contains("x y") && !text.contains(":pw@"), "{text}");
        assert!(text.contains("PGPASSWORD=\"***\""), "{text}");
    }

    #[test]
    fn renders_chain_and_hints() {
        let err = anyhow::Error::new(Failure::usage("bad inventory").hint("fix line 3"))
            .context("cannot load `inv.toml`");
        assert_eq!(
            render(&err),
            "error: cannot load `inv.toml`\n  caused by: bad inventory\n  hint: fix line 3\n"
        );
        assert_eq!(find_failure(&err).unwrap().code, exit_code::USAGE);
    }
}
