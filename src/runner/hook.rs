//! The hook steps: the operator's `pre_hook` / `post_hook` on each host of a batch, at once
//! (within `--forks`). A remote hook runs over the host's SSH session, a local one here in
//! `sh -c` (its working dir the inventory's, stdin closed, its process group killed on timeout).
//! Either way the line run is the plan's ([`HookParams::line`]) and only the tail of the output
//! is kept, redacted, for the events and the journal. Hooks have no probe (they always run, also
//! on `--resume`) and no undo.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt};

use crate::events::StepStatus;
use crate::plan::{Action, HookParams, Step};
use crate::redact::redact;
use crate::ssh::{ExecError, ExecOptions, ExitStatus, Transport};

use super::ctx::{Shared, StepError, per_host};
use super::params;

/// Bytes of a hook's output (stdout and stderr as they came) kept for its messages.
pub const OUTPUT_TAIL_BYTES: usize = 4096;

/// Lines of that output a failure's one-line message quotes.
const MESSAGE_LINES: usize = 3;

/// How long a local hook's output is still read once its shell exited (a command it left in the
/// background may hold the pipes open).
const DRAIN_GRACE: Duration = Duration::from_millis(500);

pub async fn run<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    per_host(sh, step, |sh, step, name| async move {
        one(&sh, &step, &name).await
    })
    .await
}

async fn one<T: Transport>(sh: &Shared<T>, step: &Step, name: &str) -> Result<(), StepError> {
    let p = params::of(sh, step, name, Action::hook)?;
    let line = p.line(&sh.cfg.run_id);
    let op = sh.begin(step, name, Some(&line));
    let ran = if p.local {
        run_local(p, &sh.cfg.run_id).await
    } else {
        run_remote(sh.session(name), p, &line).await
    };
    let tail = super::ctx::tail(&ran.output);
    let hook = format!("the `{}_hook` of `{name}`", p.phase.as_str());
    let outcome = match &ran.end {
        End::Exit(status) if status.success() => {
            op.finish(
                StepStatus::Ok,
                Some(status.to_string()),
                tail,
                Some(format!("{hook} ran")),
                Vec::new(),
            );
            return Ok(());
        }
        End::Exit(ExitStatus::Code(c)) => format!("exited with {c}"),
        End::Exit(ExitStatus::Signal(s)) => format!("was killed by signal {s}"),
        End::TimedOut => format!(
            "did not finish within its timeout of {} and was killed",
            humantime::format_duration(p.timeout)
        ),
        End::Error(e) => format!("could not be run: {e}"),
    };
    let place = if p.local { " (local)" } else { "" };
    let message = format!("{hook}{place} {outcome}; {}", last_lines(&ran.output));
    let exit = match &ran.end {
        End::Exit(s) => Some(s.to_string()),
        _ => None,
    };
    op.finish(
        StepStatus::Failed,
        exit,
        tail.clone(),
        Some(message.clone()),
        Vec::new(),
    );
    let mut e = sh.error(step, name, message);
    e.stderr = tail;
    e.hints.push(format!(
        "the hook is the inventory's `[rollout]` `{}_hook` (`{}`); run it by hand to see why, then run again",
        p.phase.as_str(),
        p.command
    ));
    Err(e)
}

/// "last output: `a` / `b`", or "no output": the end of a failed hook's output, for its
/// one-line message.
fn last_lines(output: &str) -> String {
    let lines: Vec<&str> = output
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.trim().is_empty())
        .collect();
    if lines.is_empty() {
        return "no output".to_string();
    }
    let start = lines.len().saturating_sub(MESSAGE_LINES);
    let quoted: Vec<String> = lines[start..]
        .iter()
        .map(|l| format!("`{}`", clip(l, 200)))
        .collect();
    format!("last output: {}", quoted.join(" / "))
}

/// `s` cut to at most `max` characters, `…` marking a cut.
fn clip(s: &str, max: usize) -> String {
    match s.char_indices().nth(max) {
        Some((at, _)) => format!("{}…", &s[..at]),
        None => s.to_string(),
    }
}

/// How a hook ended, with the tail of its output (redacted).
struct Ran {
    end: End,
    output: String,
}

enum End {
    Exit(ExitStatus),
    TimedOut,
    /// It could not be started, or the connection was lost.
    Error(String),
}

/// The last [`OUTPUT_TAIL_BYTES`] of what a hook printed, stdout and stderr as they came.
#[derive(Default)]
struct Tail {
    bytes: Vec<u8>,
    /// Bytes before these were dropped.
    cut: bool,
}

impl Tail {
    fn push(&mut self, data: &[u8]) {
        self.bytes.extend_from_slice(data);
        let over = self.bytes.len().saturating_sub(OUTPUT_TAIL_BYTES);
        if over > 0 {
            self.bytes.drain(..over);
            self.cut = true;
        }
    }

    /// The text, redacted. Once cut, its first line is left out: a connection string cut in
    /// its middle would no longer be recognised and masked.
    fn text(&self) -> String {
        let text = String::from_utf8_lossy(&self.bytes);
        let whole = match text.split_once('\n') {
            Some((_, rest)) if self.cut => rest,
            _ if self.cut => "",
            _ => &text,
        };
        redact(whole)
    }
}

type SharedTail = Arc<Mutex<Tail>>;

fn push(tail: &SharedTail, data: &[u8]) {
    if let Ok(mut t) = tail.lock() {
        t.push(data);
    }
}

fn text(tail: &SharedTail) -> String {
    tail.lock().map(|t| t.text()).unwrap_or_default()
}

/// On the node: the plan's line, with the hook's timeout (the session ends the command on the
/// node shortly after it). The output is kept as it arrives; a transport that does not report
/// it live gives it at the end.
async fn run_remote<T: Transport>(t: &T, p: &HookParams, line: &str) -> Ran {
    let tail = SharedTail::default();
    let live = tail.clone();
    let opts = ExecOptions {
        timeout: Some(p.timeout),
        on_output: Some(Arc::new(move |_, data: &[u8]| push(&live, data))),
        ..Default::default()
    };
    let collected = |stdout: &[u8], stderr: &[u8]| {
        if tail.lock().is_ok_and(|t| t.bytes.is_empty()) {
            push(&tail, stdout);
            push(&tail, stderr);
        }
    };
    let end = match t.exec(line, &opts).await {
        Ok(out) => {
            collected(&out.stdout, &out.stderr);
            End::Exit(out.status)
        }
        Err(ExecError::Timeout { stdout, stderr, .. }) => {
            collected(&stdout, &stderr);
            End::TimedOut
        }
        Err(e) => End::Error(e.to_string()),
    };
    Ran {
        end,
        output: text(&tail),
    }
}

/// Here: `sh -c COMMAND` with the hook's variables, in its dir, stdin closed, in a process
/// group of its own so that a timeout kills whatever it started too.
async fn run_local(p: &HookParams, run_id: &str) -> Ran {
    let mut cmd = tokio::process::Command::new("sh");
    cmd.arg("-c")
        .arg(&p.command)
        .envs(p.env_for(run_id))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    if let Some(dir) = &p.dir {
        cmd.current_dir(dir);
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let dir = p.dir.as_deref().unwrap_or(".");
            return Ran {
                end: End::Error(format!("cannot start `sh` in `{dir}`: {e}")),
                output: String::new(),
            };
        }
    };
    let tail = SharedTail::default();
    let readers = [
        child.stdout.take().map(|r| read_into(r, tail.clone())),
        child.stderr.take().map(|r| read_into(r, tail.clone())),
    ];
    let end = match tokio::time::timeout(p.timeout, child.wait()).await {
        Ok(Ok(status)) => End::Exit(exit_status(status)),
        Ok(Err(e)) => End::Error(format!("waiting for `sh` failed: {e}")),
        Err(_) => {
            kill_group(child.id());
            let _ = child.kill().await;
            End::TimedOut
        }
    };
    for reader in readers.into_iter().flatten() {
        let _ = tokio::time::timeout(DRAIN_GRACE, reader).await;
    }
    Ran {
        end,
        output: text(&tail),
    }
}

fn read_into<R: AsyncRead + Unpin + Send + 'static>(
    mut r: R,
    tail: SharedTail,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut buf = [0u8; 4096];
        while let Ok(n) = r.read(&mut buf).await {
            if n == 0 {
                break;
            }
            push(&tail, &buf[..n]);
        }
    })
}

fn exit_status(status: std::process::ExitStatus) -> ExitStatus {
    use std::os::unix::process::ExitStatusExt;
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitStatus::Code(u32::try_from(c).unwrap_or(u32::MAX)),
        (None, Some(s)) => ExitStatus::Signal(s.to_string()),
        (None, None) => ExitStatus::Signal("unknown".to_string()),
    }
}

/// SIGKILL to the hook's process group (its shell's pid: [`tokio::process::Command::process_group`]
/// made it the leader), so what it started in the background ends with it.
fn kill_group(pid: Option<u32>) {
    let Some(pgid) = pid.and_then(|p| libc::pid_t::try_from(p).ok()) else {
        return;
    };
    // SAFETY: kill(2) with a negative pid only sends a signal to that process group; no memory
    // is involved.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::HookPhase;

    fn local(command: &str, timeout: Duration, dir: &std::path::Path) -> HookParams {
        HookParams {
            phase: HookPhase::Pre,
            command: command.into(),
            local: true,
            timeout,
            env: vec![
                ("FLEETUP_HOST".into(), "node-1".into()),
                ("FLEETUP_RUN_ID".into(), crate::plan::RUN_ID_TOKEN.into()),
            ],
            dir: Some(dir.display().to_string()),
        }
    }

    #[tokio::test]
    async fn a_local_hook_runs_in_its_dir_with_its_variables_and_no_stdin() {
        let dir = tempfile::tempdir().unwrap();
        let p = local(
            "pwd; echo \"$FLEETUP_HOST $FLEETUP_RUN_ID\"; cat; echo err >&2",
            Duration::from_secs(10),
            dir.path(),
        );
        let ran = run_local(&p, "run-7").await;
        assert!(matches!(ran.end, End::Exit(ExitStatus::Code(0))));
        let real = dir.path().canonicalize().unwrap();
        assert!(
            ran.output.contains(&real.display().to_string()),
            "{}",
            ran.output
        );
        assert!(ran.output.contains("node-1 run-7\n"), "{}", ran.output);
        assert!(ran.output.contains("err"), "{}", ran.output);
    }

    #[tokio::test]
    async fn a_local_hook_past_its_timeout_is_killed_with_what_it_started() {
        let dir = tempfile::tempdir().unwrap();
        let marker = dir.path().join("survived");
        let p = local(
            &format!(
                "(sleep 2; touch {}) & echo started; sleep 30",
                crate::shell::quote(&marker.display().to_string())
            ),
            Duration::from_millis(300),
            dir.path(),
        );
        let started = std::time::Instant::now();
        let ran = run_local(&p, "r").await;
        assert!(matches!(ran.end, End::TimedOut));
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(ran.output.contains("started"), "{}", ran.output);
        tokio::time::sleep(Duration::from_millis(2500)).await;
        assert!(!marker.exists(), "the hook's background job outlived it");
    }

    #[tokio::test]
    async fn a_local_hook_exit_code_and_output_tail_are_kept_bounded_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let p = local(
            "i=0; while [ $i -lt 2000 ]; do echo line-$i; i=$((i+1)); done; echo postgres://u:s3cret@db/x; exit 3",
            Duration::from_secs(10),
            dir.path(),
        );
        let ran = run_local(&p, "r").await;
        assert!(matches!(ran.end, End::Exit(ExitStatus::Code(3))));
        assert!(
            ran.output.len() <= OUTPUT_TAIL_BYTES + 16,
            "{}",
            ran.output.len()
        );
        assert!(ran.output.contains("line-1999"));
        assert!(!ran.output.contains("line-1\n"));
        assert!(!ran.output.contains("s3cret"), "{}", ran.output);
        let last = last_lines(&ran.output);
        assert!(
            last.starts_with("last output: `line-1998` / `line-1999`"),
            "{last}"
        );
    }

    #[test]
    fn the_tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(&[b'a'; OUTPUT_TAIL_BYTES]);
        t.push(b"end");
        assert_eq!(t.bytes.len(), OUTPUT_TAIL_BYTES);
        assert!(t.bytes.ends_with(b"aend"));
        assert_eq!(t.text(), "", "a cut first line is left out");
        t.push(b"\npostgres://u:pw@db/x\n");
        assert_eq!(t.text(), "postgres://u:***@db/x\n");
        assert_eq!(last_lines(""), "no output");
        assert_eq!(clip("abcdef", 3), "abc…");
    }
}
