//! Rendering errors as `error:` / `caused by:` / `hint:` lines on stderr.

use fleetup::error::find_failure;
use fleetup::exit_code;

/// Render an error chain in the house style and return the exit code it maps to.
pub fn report(err: &anyhow::Error) -> i32 {
    eprint!("{}", render(err));
    find_failure(err)
        .map(|f| f.code)
        .unwrap_or(exit_code::FAILURE)
}

/// `error: <top>` then one `caused by: <source>` per further link, then the hints of any
/// [`fleetup::Failure`] in the chain.
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
        for hint in &f.hints {
            out.push_str(&format!("  hint: {hint}\n"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use fleetup::Failure;

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
