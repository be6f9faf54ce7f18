//! The commands the README and docs/getting-started.md show run as written. The README's
//! "A first look" runs from the repository root against the example inventory; the getting
//! started guide's by-hand section runs in a scratch directory, in order, as one shell script,
//! on a real lab. Each line must exit 0, or the code its `# exit N` comment names. `fleetup`
//! and `target/release/fleetup` stand for the fleetup under test; `cargo build` lines are
//! what built it.

#[path = "common/lab_fixture.rs"]
mod lab_fixture;

use std::path::Path;
use std::process::Command;

/// The commands of the first ```sh block after the heading `heading` in `file`, up to the
/// next `## ` heading when `whole_section` (all its sh blocks), else that one block.
fn commands(file: &str, heading: &str, whole_section: bool) -> Vec<String> {
    let text = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(file))
        .unwrap_or_else(|e| panic!("{file}: {e}"));
    let start = text
        .find(heading)
        .unwrap_or_else(|| panic!("{file} has no `{heading}`"));
    let section = &text[start + heading.len()..];
    let section = &section[..section.find("\n## ").unwrap_or(section.len())];
    let mut out = Vec::new();
    let mut in_sh = false;
    for line in section.lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" if in_sh => {
                in_sh = false;
                if !whole_section {
                    break;
                }
            }
            l if in_sh && !l.is_empty() && !l.starts_with('#') => out.push(l.to_string()),
            _ => {}
        }
    }
    assert!(!out.is_empty(), "{file}: no commands under `{heading}`");
    out
}

/// A bash script running `lines` in order; each must exit with the code its `# exit N`
/// comment names (0 without one).
fn script(lines: &[String], fleetup: &Path) -> String {
    let mut s = String::from("set -u\n");
    for (i, line) in lines.iter().enumerate() {
        if line.starts_with("cargo ") || line.starts_with("scripts/") {
            continue;
        }
        let expected = line
            .split_once(" # ")
            .and_then(|(_, c)| c.split("exit ").nth(1))
            .and_then(|n| {
                n.trim_matches(|c: char| !c.is_ascii_digit())
                    .parse::<i32>()
                    .ok()
            })
            .unwrap_or(0);
        let bin = fleetup.display().to_string();
        let cmd = line.replace("target/release/fleetup", &bin);
        let cmd = match cmd.strip_prefix("fleetup ") {
            Some(rest) => format!("{bin} {rest}"),
            None => cmd,
        };
        s.push_str(&format!(
            "{cmd} </dev/null >/dev/null 2>&1\nrc=$?\n[ $rc -eq {expected} ] || {{ echo \"line {}: exit $rc, wanted {expected}: {}\" >&2; exit 1; }}\n",
            i + 1,
            line.replace('"', "'").replace('$', "\\$").replace('`', "'")
        ));
    }
    s
}

fn run_script(script: &str, dir: &Path) -> std::process::Output {
    Command::new("bash")
        .arg("-c")
        .arg(script)
        .current_dir(dir)
        .env("FLEETUP_SIM", lab_fixture::sim())
        .env_remove("FLEETUP_INVENTORY")
        .env_remove("SSH_AUTH_SOCK")
        .output()
        .expect("run bash")
}

#[test]
fn the_readme_first_look_runs_as_written() {
    let lines = commands("README.md", "## A first look", false);
    assert!(lines.len() >= 5, "{lines:?}");
    let out = run_script(
        &script(&lines, Path::new(env!("CARGO_BIN_EXE_fleetup"))),
        Path::new(env!("CARGO_MANIFEST_DIR")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_getting_started_guide_runs_as_written_on_a_lab() {
    let lines = commands("docs/getting-started.md", "## 2. The same, by hand", true);
    assert!(
        lines.iter().any(|l| l.contains("upgrade")) && lines.iter().any(|l| l.contains("lab down")),
        "{lines:?}"
    );
    let dir = tempfile::tempdir().unwrap();
    let bin = Path::new(env!("CARGO_BIN_EXE_fleetup"));
    let out = run_script(&script(&lines, bin), dir.path());
    // Whatever happened, no lab process outlives the test.
    if dir.path().join("lab/lab.json").exists() {
        let _ = Command::new(bin)
            .args(["lab", "down", "--dir", "lab", "--purge"])
            .current_dir(dir.path())
            .status();
    }
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !dir.path().join("lab").exists(),
        "the guide's last command deletes the lab"
    );
}
