//! Findings as people read them: the same finding on several hosts once, with the host list.
//! Two findings are the same when their check, detail and hint agree once each one's own host
//! name (written `` `node-1` ``) is set aside; the group's text then says "the node".

use super::Finding;

/// One finding as printed: its hosts (`None` is fleet-wide) and the shared text.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FindingGroup {
    pub check: &'static str,
    pub ok: bool,
    /// In the order the findings came; `None` stands for the fleet.
    pub hosts: Vec<Option<String>>,
    pub detail: String,
    pub hint: Option<String>,
}

impl FindingGroup {
    /// `node-1, node-2` or `fleet`.
    pub fn hosts_text(&self) -> String {
        self.hosts
            .iter()
            .map(|h| h.as_deref().unwrap_or("fleet"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// `findings` grouped, in the order each group first appears.
pub fn group_findings<'a>(findings: impl IntoIterator<Item = &'a Finding>) -> Vec<FindingGroup> {
    // The key: the text with the host's own name replaced, so `node-1` and `node-2` agree.
    let generic = |text: &str, host: Option<&str>| match host {
        Some(h) => text.replace(&format!("`{h}`"), "the node"),
        None => text.to_owned(),
    };
    let mut groups: Vec<(FindingGroup, String, Option<String>)> = Vec::new();
    for f in findings {
        let host = f.host.as_deref();
        let detail = generic(&f.detail, host);
        let hint = f.hint.as_deref().map(|h| generic(h, host));
        match groups
            .iter_mut()
            .find(|(g, d, h)| g.check == f.check && g.ok == f.ok && *d == detail && *h == hint)
        {
            Some((g, _, _)) => {
                if !g.hosts.contains(&f.host) {
                    g.hosts.push(f.host.clone());
                }
            }
            None => groups.push((
                FindingGroup {
                    check: f.check,
                    ok: f.ok,
                    hosts: vec![f.host.clone()],
                    detail: f.detail.clone(),
                    hint: f.hint.clone(),
                },
                detail,
                hint,
            )),
        }
    }
    groups
        .into_iter()
        .map(|(mut g, detail, hint)| {
            // A finding on one host keeps its own words; a group speaks of "the node".
            if g.hosts.len() > 1 {
                g.detail = detail;
                g.hint = hint;
            }
            g
        })
        .collect()
}

/// The failed findings as lines: `check on hosts: detail`, each hint on the line under it.
/// What an `error:` lists and what `check` prints by default.
pub fn render_failures<'a>(
    findings: impl IntoIterator<Item = &'a Finding>,
    indent: &str,
) -> String {
    let mut out = String::new();
    for g in group_findings(findings.into_iter().filter(|f| !f.ok)) {
        out.push_str(&format!(
            "{indent}- {} on {}: {}\n",
            g.check,
            g.hosts_text(),
            g.detail
        ));
        if let Some(h) = &g.hint {
            out.push_str(&format!("{indent}  hint: {h}\n"));
        }
    }
    out
}

/// `stopped (node-1, node-2), db-sessions (node-1)`: the failed checks and where, for a result
/// line.
pub fn failure_names<'a>(findings: impl IntoIterator<Item = &'a Finding>) -> String {
    let mut names: Vec<(&'static str, Vec<String>)> = Vec::new();
    for f in findings.into_iter().filter(|f| !f.ok) {
        let host = f.host.clone().unwrap_or_else(|| "fleet".into());
        match names.iter_mut().find(|(c, _)| *c == f.check) {
            Some((_, hosts)) if hosts.contains(&host) => {}
            Some((_, hosts)) => hosts.push(host),
            None => names.push((f.check, vec![host])),
        }
    }
    names
        .iter()
        .map(|(c, hosts)| format!("{c} ({})", hosts.join(", ")))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fail(host: Option<&str>, check: &'static str, detail: &str, hint: Option<&str>) -> Finding {
        Finding {
            host: host.map(str::to_owned),
            check,
            ok: false,
            detail: detail.into(),
            hint: hint.map(str::to_owned),
        }
    }

    #[test]
    fn one_finding_on_three_hosts_is_printed_once_with_its_hint_under_it() {
        let findings: Vec<Finding> = ["node-1", "node-2", "node-3"]
            .into_iter()
            .map(|h| {
                fail(
                    Some(h),
                    "stopped",
                    &format!("`{h}` is running: the offline procedure needs every node stopped"),
                    Some("pass `--stop`"),
                )
            })
            .chain([fail(
                Some("node-1"),
                "db-sessions",
                "6 other sessions on the database",
                Some("stop every node"),
            )])
            .collect();
        let text = render_failures(&findings, "  ");
        assert_eq!(
            text,
            "  - stopped on node-1, node-2, node-3: the node is running: the offline procedure needs every node stopped\n    \
             hint: pass `--stop`\n  \
             - db-sessions on node-1: 6 other sessions on the database\n    hint: stop every node\n"
        );
        assert_eq!(
            failure_names(&findings),
            "stopped (node-1, node-2, node-3), db-sessions (node-1)"
        );
    }

    #[test]
    fn different_details_stay_apart_and_a_lone_finding_keeps_its_host_name() {
        let findings = [
            fail(Some("a"), "disk-space", "`a` has 1 GiB free", None),
            fail(Some("b"), "disk-space", "`b` has 2 GiB free", None),
            fail(None, "binary-sha256", "mismatch", None),
        ];
        let groups = group_findings(&findings);
        assert_eq!(groups.len(), 3);
        assert_eq!(groups[0].detail, "`a` has 1 GiB free");
        assert_eq!(groups[2].hosts_text(), "fleet");
    }
}
