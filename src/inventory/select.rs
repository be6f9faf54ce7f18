//! Host selection (`--limit`): names, globs (`*`, `?`), groups (`@eu`, globs too) and exclusions
//! (`!pattern`). Every pattern must match at least one host: a typo in an exclusion would
//! otherwise silently upgrade the host it meant to spare.

use crate::error::Failure;
use crate::exit_code;

use super::ResolvedHost;
use super::diagnostics::closest;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Target<'p> {
    Name(&'p str),
    Group(&'p str),
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Pattern<'p> {
    text: &'p str,
    exclude: bool,
    target: Target<'p>,
}

fn parse_pattern(text: &str) -> Result<Pattern<'_>, Failure> {
    let (exclude, rest) = match text.strip_prefix('!') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let target = match rest.strip_prefix('@') {
        Some(group) => Target::Group(group),
        None => Target::Name(rest),
    };
    if matches!(target, Target::Name("") | Target::Group("")) {
        return Err(Failure::usage(format!("host pattern `{text}` is incomplete"))
            .hint("patterns are `NAME`, `GLOB` (`ledger-*`), `@GROUP`, or any of them after `!` to exclude"));
    }
    Ok(Pattern {
        text,
        exclude,
        target,
    })
}

/// `*` matches any run of characters, `?` one character; ASCII case is ignored, like host names.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let p: Vec<char> = pattern.to_ascii_lowercase().chars().collect();
    let t: Vec<char> = text.to_ascii_lowercase().chars().collect();
    let (mut pi, mut ti) = (0, 0);
    // Position of the last `*` and of the text when it was seen, to backtrack to.
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|c| *c == '*')
}

fn matches(target: &Target<'_>, host: &ResolvedHost) -> bool {
    match target {
        Target::Name(glob) => glob_match(glob, &host.name),
        Target::Group(glob) => host.groups.iter().any(|g| glob_match(glob, g)),
    }
}

/// The hosts `patterns` select, in inventory order. Patterns may be comma-separated; an empty
/// list selects every host; a list of exclusions only starts from every host. A pattern that
/// matches no host, or a selection left empty, is a [`exit_code::NO_HOSTS`] failure.
pub fn select<'h>(
    hosts: &'h [ResolvedHost],
    patterns: &[String],
) -> Result<Vec<&'h ResolvedHost>, Failure> {
    let parsed: Vec<Pattern<'_>> = patterns
        .iter()
        .flat_map(|p| p.split(','))
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .map(parse_pattern)
        .collect::<Result<_, _>>()?;

    let unmatched: Vec<&Pattern<'_>> = parsed
        .iter()
        .filter(|p| !hosts.iter().any(|h| matches(&p.target, h)))
        .collect();
    if !unmatched.is_empty() {
        return Err(no_match(hosts, &unmatched));
    }

    let any_include = parsed.iter().any(|p| !p.exclude);
    let chosen: Vec<&ResolvedHost> = hosts
        .iter()
        .filter(|h| !any_include || parsed.iter().any(|p| !p.exclude && matches(&p.target, h)))
        .filter(|h| !parsed.iter().any(|p| p.exclude && matches(&p.target, h)))
        .collect();
    if chosen.is_empty() {
        let all: Vec<&str> = parsed.iter().map(|p| p.text).collect();
        let message = if hosts.is_empty() {
            "the inventory has no host".to_string()
        } else {
            format!("host patterns `{}` select no host", all.join(","))
        };
        return Err(Failure::new(exit_code::NO_HOSTS, message)
            .hint("the exclusions (`!...`) remove every host the other patterns choose"));
    }
    Ok(chosen)
}

fn no_match(hosts: &[ResolvedHost], unmatched: &[&Pattern<'_>]) -> Failure {
    let texts: Vec<String> = unmatched.iter().map(|p| format!("`{}`", p.text)).collect();
    let message = match texts.as_slice() {
        [one] => format!("host pattern {one} matches no host in the inventory"),
        many => format!(
            "host patterns {} match no host in the inventory",
            many.join(", ")
        ),
    };
    let mut failure = Failure::new(exit_code::NO_HOSTS, message);
    let names: Vec<&str> = hosts.iter().map(|h| h.name.as_str()).collect();
    let mut groups: Vec<&str> = hosts
        .iter()
        .flat_map(|h| h.groups.iter().map(String::as_str))
        .collect();
    groups.sort_unstable();
    groups.dedup();
    for p in unmatched {
        let (wanted, pool, prefix) = match p.target {
            Target::Name(n) => (n, &names, ""),
            Target::Group(g) => (g, &groups, "@"),
        };
        let close = closest(&wanted.replace(['*', '?'], ""), pool.iter().copied());
        if !close.is_empty() {
            let close: Vec<String> = close.iter().map(|c| format!("`{prefix}{c}`")).collect();
            failure = failure.hint(format!(
                "for `{}`, did you mean {}?",
                p.text,
                close.join(" or ")
            ));
        }
    }
    failure
        .hint(format!("hosts: {}", preview(&names)))
        .hint(if groups.is_empty() {
            "no host is in a group".to_string()
        } else {
            format!("groups with hosts: {}", preview(&groups))
        })
}

/// Up to eight names, then how many more.
fn preview(names: &[&str]) -> String {
    let shown: Vec<String> = names.iter().take(8).map(|n| format!("`{n}`")).collect();
    match names.len().saturating_sub(8) {
        0 => shown.join(", "),
        more => format!("{} and {more} more", shown.join(", ")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{LedgerSettings, SshSettings};

    fn host(name: &str, groups: &[&str]) -> ResolvedHost {
        ResolvedHost {
            name: name.into(),
            address: format!("{name}.example"),
            groups: groups.iter().map(|g| g.to_string()).collect(),
            migrator: false,
            replaces: None,
            ssh: SshSettings {
                user: "op".into(),
                port: 22,
                identity_files: vec![],
                known_hosts: "/kh".into(),
                global_known_hosts: vec![],
                connect_timeout: std::time::Duration::from_secs(1),
                command_timeout: std::time::Duration::from_secs(1),
                migration_timeout: std::time::Duration::from_secs(1),
                jump_host: None,
                use_agent: true,
                jump_chain: Vec::new(),
                openssh: Default::default(),
            },
            ledger: LedgerSettings::default(),
            rollout: Default::default(),
        }
    }

    fn fleet() -> Vec<ResolvedHost> {
        vec![
            host("ledger-1", &["eu"]),
            host("ledger-2", &["eu", "canary"]),
            host("ledger-3", &["us"]),
            host("db-1", &[]),
        ]
    }

    fn names(hosts: &[ResolvedHost], patterns: &[&str]) -> Result<Vec<String>, Failure> {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        select(hosts, &patterns).map(|v| v.iter().map(|h| h.name.clone()).collect())
    }

    #[test]
    fn globs_match_like_shells() {
        assert!(glob_match("ledger-*", "ledger-12"));
        assert!(glob_match("*-1", "ledger-1"));
        assert!(glob_match("l?dger-?", "ledger-3"));
        assert!(glob_match("*", ""));
        assert!(glob_match("a*b*c", "aXXbYYc"));
        assert!(glob_match("LEDGER-1", "ledger-1"));
        assert!(!glob_match("ledger-?", "ledger-12"));
        assert!(!glob_match("a*b", "acbd"));
        assert!(!glob_match("ledger-1", "ledger-10"));
    }

    #[test]
    fn no_pattern_selects_every_host_in_order() {
        assert_eq!(
            names(&fleet(), &[]).unwrap(),
            ["ledger-1", "ledger-2", "ledger-3", "db-1"]
        );
    }

    #[test]
    fn names_globs_and_groups_union_in_inventory_order() {
        assert_eq!(
            names(&fleet(), &["db-1", "ledger-1"]).unwrap(),
            ["ledger-1", "db-1"]
        );
        assert_eq!(
            names(&fleet(), &["ledger-*"]).unwrap(),
            ["ledger-1", "ledger-2", "ledger-3"]
        );
        assert_eq!(names(&fleet(), &["@eu"]).unwrap(), ["ledger-1", "ledger-2"]);
        assert_eq!(
            names(&fleet(), &["@u*", "db-1"]).unwrap(),
            ["ledger-3", "db-1"]
        );
    }

    #[test]
    fn exclusions_subtract_and_alone_start_from_all() {
        assert_eq!(
            names(&fleet(), &["ledger-*", "!ledger-3"]).unwrap(),
            ["ledger-1", "ledger-2"]
        );
        assert_eq!(names(&fleet(), &["!@eu"]).unwrap(), ["ledger-3", "db-1"]);
        assert_eq!(names(&fleet(), &["@eu,!@canary"]).unwrap(), ["ledger-1"]);
    }

    #[test]
    fn a_pattern_matching_nothing_is_no_hosts_with_suggestions() {
        let f = names(&fleet(), &["ledgr-1", "ledger-1"]).unwrap_err();
        assert_eq!(f.code, exit_code::NO_HOSTS);
        assert_eq!(
            f.message,
            "host pattern `ledgr-1` matches no host in the inventory"
        );
        assert!(
            f.hints[0].contains("did you mean `ledger-1`"),
            "{:?}",
            f.hints
        );
        assert!(
            f.hints.iter().any(|h| h.starts_with("hosts: `ledger-1`")),
            "{:?}",
            f.hints
        );

        let f = names(&fleet(), &["@ue", "!nope"]).unwrap_err();
        assert_eq!(f.code, exit_code::NO_HOSTS);
        assert!(f.message.contains("`@ue`, `!nope`"), "{}", f.message);
        assert!(f.hints.iter().any(|h| h.contains("`@us`")), "{:?}", f.hints);
    }

    #[test]
    fn an_empty_selection_is_no_hosts() {
        let f = names(&fleet(), &["@eu", "!ledger-*"]).unwrap_err();
        assert_eq!(f.code, exit_code::NO_HOSTS);
        assert!(f.message.contains("select no host"), "{}", f.message);
    }

    #[test]
    fn incomplete_patterns_are_usage_errors() {
        for bad in ["!", "@", "!@"] {
            assert_eq!(
                names(&fleet(), &[bad]).unwrap_err().code,
                exit_code::USAGE,
                "{bad}"
            );
        }
    }
}
