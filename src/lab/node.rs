//! One lab node's filesystem root, laid out like a real host: the `numary` release wrapper under
//! `opt/numary/releases/<V>/`, the `usr/local/bin/numary` symlink the service runs, the env file,
//! the data, backup and log dirs, and the `command` service script that stands in for systemd.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::Context;

use crate::version::Version;

use crate::shell::quote;

/// Paths inside a node's root, mirroring where a real node keeps each thing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePaths {
    pub root: PathBuf,
}

impl NodePaths {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        NodePaths { root: root.into() }
    }

    /// What the service runs and the inventory's `ledger.binary`: a symlink to a release.
    pub fn binary(&self) -> PathBuf {
        self.root.join("usr/local/bin/numary")
    }

    pub fn releases_dir(&self) -> PathBuf {
        self.root.join("opt/numary/releases")
    }

    pub fn release_binary(&self, version: &Version) -> PathBuf {
        self.releases_dir().join(version.to_string()).join("numary")
    }

    pub fn env_file(&self) -> PathBuf {
        self.root.join("etc/numary/env")
    }

    /// `NUMARY_STORAGE_DIR`: the SQLite files, and the dir every `numary` command creates.
    pub fn data_dir(&self) -> PathBuf {
        self.root.join("var/lib/numary/data")
    }

    pub fn backup_dir(&self) -> PathBuf {
        self.root.join("var/backups/numary")
    }

    pub fn log_file(&self) -> PathBuf {
        self.root.join("var/log/numary.log")
    }

    pub fn pid_file(&self) -> PathBuf {
        self.root.join("run/numary.pid")
    }

    pub fn service_script(&self) -> PathBuf {
        self.root.join("bin/numary-service")
    }

    /// The inventory's `service.start|stop|status` command for `action`.
    pub fn service_command(&self, action: &str) -> String {
        format!(
            "{} {action}",
            quote(&self.service_script().to_string_lossy())
        )
    }

    /// The server pid the service recorded, if any (alive or not).
    pub fn recorded_pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.pid_file())
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// The version of the release the binary symlink points to, read from its wrapper script
    /// (running it would create dirs and could log misuse).
    pub fn installed_version(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.binary()).ok()?;
        wrapper_version(&text)
    }

    /// Runs the service script with `action` and the node's environment untouched; returns its
    /// exit code and combined output.
    pub fn service(&self, action: &str) -> anyhow::Result<(i32, String)> {
        let out = Command::new(self.service_script())
            .arg(action)
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{}`", self.service_script().display()))?;
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Ok((out.status.code().unwrap_or(-1), text.trim().to_owned()))
    }

    /// Creates the dirs and writes the env file, the service script, the release wrapper for
    /// `version` and the binary symlink to it.
    pub fn install(
        &self,
        env: &[(String, String)],
        version: &Version,
        wrapper: &str,
    ) -> anyhow::Result<()> {
        self.lay_out(env)?;
        self.install_release(version, wrapper)
    }

    /// A host prepared for `numary` but without it (a replacement node before its deploy):
    /// the dirs, the env file and the service script; no release, no `binary`.
    pub fn lay_out(&self, env: &[(String, String)]) -> anyhow::Result<()> {
        for dir in [
            self.root.join("bin"),
            self.root.join("etc/numary"),
            self.root.join("run"),
            self.root.join("var/log"),
            self.root.join("usr/local/bin"),
            self.data_dir(),
            self.backup_dir(),
            self.releases_dir(),
        ] {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("cannot create `{}`", dir.display()))?;
        }
        // The data dir holds the ledgers, as `numary` itself creates it.
        set_mode(&self.data_dir(), 0o700)?;
        // It may hold a Postgres password.
        write_file(&self.env_file(), &env_file_text(env), 0o600)?;
        write_file(&self.service_script(), &service_script(self), 0o755)
    }

    /// Writes the release wrapper for `version` and points the binary symlink at it.
    fn install_release(&self, version: &Version, wrapper: &str) -> anyhow::Result<()> {
        let release = self.release_binary(version);
        if let Some(parent) = release.parent() {
            std::fs::create_dir_all(parent)
                .with_context(|| format!("cannot create `{}`", parent.display()))?;
        }
        write_file(&release, wrapper, 0o755)?;
        std::os::unix::fs::symlink(&release, self.binary()).with_context(|| {
            format!(
                "cannot link `{}` to `{}`",
                self.binary().display(),
                release.display()
            )
        })
    }
}

/// A release "binary": a script that runs the lab's simulator as `numary` at `version`. It holds
/// nothing node-specific (the node's env file names the node), so every node stages the same
/// bytes, as with a real release.
pub fn release_wrapper(version: &Version, sim_state_dir: &Path, sim: &Path) -> String {
    format!(
        "#!/bin/sh\n\
         # numary {version} (fleetup lab: the ledger simulator pinned to this version)\n\
         NUMARY_SIM_VERSION={version} NUMARY_SIM_STATE_DIR={state} exec {sim} \"$@\"\n",
        state = quote(&sim_state_dir.to_string_lossy()),
        sim = quote(&sim.to_string_lossy()),
    )
}

/// The version a [`release_wrapper`] pins.
pub fn wrapper_version(text: &str) -> Option<String> {
    text.split_whitespace()
        .find_map(|w| w.strip_prefix("NUMARY_SIM_VERSION="))
        .map(str::to_owned)
}

/// `KEY='value'` lines, readable by `set -a; . FILE` and by systemd's `EnvironmentFile=`.
pub fn env_file_text(env: &[(String, String)]) -> String {
    let mut text = String::from("# numary service environment (fleetup lab)\n");
    for (k, v) in env {
        text.push_str(&format!("{k}={}\n", quote(v)));
    }
    text
}

/// The `command` service manager: `start` runs `numary server start` in the background with the
/// env file's variables, `stop` sends SIGTERM and waits up to 10 s, `status` exits 0 when the
/// recorded pid is alive and 3 (LSB "not running") when not.
fn service_script(paths: &NodePaths) -> String {
    let q = |p: PathBuf| quote(&p.to_string_lossy());
    format!(
        r#"#!/bin/sh
# numary service for a fleetup lab node (stands in for a systemd unit): start|stop|status
BINARY={binary}
ENV_FILE={env}
PID_FILE={pid}
LOG_FILE={log}
ROOT={root}

# Alive and not a zombie: a server whose parent does not reap it must count as stopped.
alive() {{
  kill -0 "$1" 2>/dev/null || return 1
  [ -r "/proc/$1/stat" ] || return 0
  state=$(sed 's/.*) //' "/proc/$1/stat" | cut -c1)
  [ "$state" != Z ]
}}

running() {{
  [ -f "$PID_FILE" ] || return 1
  pid=$(cat "$PID_FILE" 2>/dev/null)
  [ -n "$pid" ] && alive "$pid"
}}

case "$1" in
  start)
    if running; then echo "numary is already running (pid $pid)"; exit 0; fi
    set -a
    . "$ENV_FILE"
    set +a
    cd "$ROOT" || exit 1
    nohup "$BINARY" server start </dev/null >>"$LOG_FILE" 2>&1 &
    pid=$!
    echo "$pid" >"$PID_FILE"
    sleep 0.2
    if ! alive "$pid"; then
      echo "numary exited right after start; last lines of $LOG_FILE:" >&2
      tail -n 20 "$LOG_FILE" >&2
      rm -f "$PID_FILE"
      exit 1
    fi
    echo "numary started (pid $pid)"
    ;;
  stop)
    if ! running; then rm -f "$PID_FILE"; echo "numary is not running"; exit 0; fi
    kill -TERM "$pid"
    i=0
    while alive "$pid"; do
      i=$((i + 1))
      if [ "$i" -ge 100 ]; then echo "numary (pid $pid) did not stop within 10s" >&2; exit 1; fi
      sleep 0.1
    done
    rm -f "$PID_FILE"
    echo "numary stopped"
    ;;
  status)
    if running; then echo "numary is running (pid $pid)"; exit 0; fi
    echo "numary is stopped"
    exit 3
    ;;
  *)
    echo "usage: $0 start|stop|status" >&2
    exit 2
    ;;
esac
"#,
        binary = q(paths.binary()),
        env = q(paths.env_file()),
        pid = q(paths.pid_file()),
        log = q(paths.log_file()),
        root = q(paths.root.clone()),
    )
}

pub(crate) fn write_file(path: &Path, text: &str, mode: u32) -> anyhow::Result<()> {
    std::fs::write(path, text).with_context(|| format!("cannot write `{}`", path.display()))?;
    set_mode(path, mode)
}

pub(crate) fn set_mode(path: &Path, mode: u32) -> anyhow::Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of `{}`", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_pins_version_and_paths_and_names_no_node() {
        let v = Version::new(1, 8, 2);
        let w = release_wrapper(
            &v,
            Path::new("/lab dir/sim-state"),
            Path::new("/lab/bin/sim"),
        );
        assert!(w.starts_with("#!/bin/sh\n"));
        assert!(
            w.contains("NUMARY_SIM_VERSION=1.8.2 NUMARY_SIM_STATE_DIR='/lab dir/sim-state' exec /lab/bin/sim \"$@\""),
            "{w}"
        );
        assert!(!w.contains("NUMARY_SIM_NODE"));
        assert_eq!(wrapper_version(&w).as_deref(), Some("1.8.2"));
        assert_eq!(
            wrapper_version("#!/bin/sh\nexec /usr/bin/numary \"$@\"\n"),
            None
        );
    }

    #[test]
    fn env_file_round_trips_through_the_env_parser() {
        let env = vec![
            ("NUMARY_STORAGE_DRIVER".to_owned(), "postgres".to_owned()),
            (
                "NUMARY_STORAGE_POSTGRES_CONN_STRING".to_owned(),
                "postgresql://u:p'w$x@127.0.0.1:5432/db".to_owned(),
            ),
        ];
        let text = env_file_text(&env);
        let parsed = crate::numary::parse_env_file(&text);
        assert_eq!(parsed["NUMARY_STORAGE_DRIVER"], "postgres");
        // The shell reads it back verbatim (the Rust parser does not undo `'\''`).
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "set -a; {}\nprintf %s \"$NUMARY_STORAGE_POSTGRES_CONN_STRING\"",
                text
            ))
            .output()
            .unwrap();
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "postgresql://u:p'w$x@127.0.0.1:5432/db"
        );
    }

    #[test]
    fn service_script_runs_stops_and_reports_a_server() {
        let dir = tempfile::tempdir().unwrap();
        let paths = NodePaths::new(dir.path().join("root"));
        // A stand-in server: sleeps until signalled, and proves it saw the env file.
        let wrapper = "#!/bin/sh\necho \"serving $LAB_MARK $1 $2\"\nexec sleep 60\n";
        let env = vec![("LAB_MARK".to_owned(), "from env file".to_owned())];
        paths
            .install(&env, &Version::new(1, 8, 2), wrapper)
            .unwrap();
        assert_eq!(
            std::fs::read_link(paths.binary()).unwrap(),
            paths.release_binary(&Version::new(1, 8, 2))
        );
        assert_eq!(paths.service("status").unwrap().0, 3);

        let (code, out) = paths.service("start").unwrap();
        assert_eq!(code, 0, "{out}");
        let pid = paths.recorded_pid().expect("pid file");
        assert_eq!(paths.service("status").unwrap().0, 0);
        let log = std::fs::read_to_string(paths.log_file()).unwrap();
        assert!(log.contains("serving from env file server start"), "{log}");

        let (code, out) = paths.service("stop").unwrap();
        assert_eq!(code, 0, "{out}");
        assert!(!paths.pid_file().exists());
        assert_eq!(paths.service("status").unwrap().0, 3);
        assert!(!super::super::process::alive(pid));
        assert_eq!(paths.service("bogus").unwrap().0, 2);
    }
}
