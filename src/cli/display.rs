//! The human display of a run on stderr, fed by events: progress bars on a terminal, one plain
//! line per finished step elsewhere (CI logs, pipes), nothing with `--quiet`. The mode is chosen
//! by one pure function, [`DisplayMode::resolve`]; the lines by another, [`line`].

use std::collections::HashMap;
use std::io::Write;
use std::sync::Mutex;
use std::time::Duration;

use fleetup::events::{Event, EventSink, StepState, StepStatus};
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::Format;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DisplayMode {
    /// indicatif spinners and bars for running steps, a line per finished step.
    Bars,
    /// A line per finished step (and per started step with `-v`).
    Lines,
    /// Nothing: errors are rendered by the CLI at the end.
    Quiet,
}

impl DisplayMode {
    /// `--quiet` wins; bars only on a terminal outside CI, when stdout does not carry JSON (the
    /// two would interleave on one screen) and `-vv` does not ask for every command.
    pub fn resolve(
        stderr_is_terminal: bool,
        is_ci: bool,
        verbose: u8,
        quiet: bool,
        format: Format,
    ) -> DisplayMode {
        if quiet {
            DisplayMode::Quiet
        } else if !stderr_is_terminal || is_ci || format == Format::Json || verbose >= 2 {
            DisplayMode::Lines
        } else {
            DisplayMode::Bars
        }
    }
}

/// Whether this process runs in CI (the convention most CI systems follow).
pub fn is_ci() -> bool {
    std::env::var_os("CI").is_some_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// The text line for `event`, or `None` when the event shows nothing at this verbosity. `total`
/// is the number of steps of the plan, once known.
pub fn line(event: &Event, total: usize, verbose: u8) -> Option<String> {
    let pos = |step: &usize| {
        if total > 0 {
            format!("[{step}/{total}]")
        } else {
            format!("[{step}]")
        }
    };
    match event {
        Event::RunStarted {
            run_id,
            command,
            target,
            hosts,
        } => Some(format!(
            "{command} to {target} on {} host(s), run {run_id}",
            hosts.len()
        )),
        // Refusals (an unreachable host, a failed check) end the run with an error that lists
        // each once, grouped, with its hint: shown live only with `-v`.
        Event::HostUnreachable { host, reason } if verbose > 0 => {
            Some(format!("{host}: unreachable: {reason}"))
        }
        Event::HostConnected { host } if verbose > 0 => Some(format!("{host}: connected")),
        Event::CheckResult {
            host,
            check,
            ok,
            detail,
            hint,
        } if verbose > 0 => {
            let who = host.as_deref().unwrap_or("fleet");
            let mut s = format!(
                "{} {who}: {check}: {detail}",
                if *ok { "check ok" } else { "check FAILED" }
            );
            if let Some(h) = hint.as_ref().filter(|_| !ok) {
                s.push_str(&format!("\n    hint: {h}"));
            }
            Some(s)
        }
        Event::PlanReady {
            plan_id,
            strategy,
            mode,
            migrator,
            steps,
            warnings,
            ..
        } => {
            let mut s = format!(
                "plan {}: {strategy}, {}, {} steps{}",
                &plan_id[..plan_id.len().min(12)],
                mode.replace('_', "-"),
                steps.len(),
                migrator
                    .as_ref()
                    .map(|m| format!(", migrator {m}"))
                    .unwrap_or_default()
            );
            for w in warnings {
                s.push_str(&format!("\n  warning: {w}"));
            }
            Some(s)
        }
        Event::StepStarted {
            step,
            kind,
            host,
            command,
        } if verbose > 0 => Some(match command {
            Some(c) if verbose > 1 => format!("{} {kind} {host}: $ {c}", pos(step)),
            _ => format!("{} {kind} {host}: started", pos(step)),
        }),
        Event::StepFinished {
            step,
            kind,
            host,
            status,
            exit_status,
            duration_ms,
            stderr_tail,
            message,
            ..
        } if verbose > 0 || !(kind == "preflight" && *status == StepStatus::Failed) => {
            let word = match status {
                StepStatus::Ok => "ok",
                StepStatus::Failed => "FAILED",
                StepStatus::Skipped => "skipped",
            };
            let mut s = format!(
                "{} {kind} {host}: {word} ({})",
                pos(step),
                humantime::format_duration(Duration::from_millis(*duration_ms - duration_ms % 100))
            );
            if let Some(m) = message {
                s.push_str(&format!(": {m}"));
            }
            if *status == StepStatus::Failed {
                if let Some(code) = exit_status {
                    s.push_str(&format!(" [exit {code}]"));
                }
                if let Some(tail) = stderr_tail {
                    for l in tail.lines() {
                        s.push_str(&format!("\n    | {l}"));
                    }
                }
            }
            Some(s)
        }
        Event::StepState {
            step,
            kind,
            host,
            state,
            message,
            ..
        } if matches!(
            state,
            StepState::AlreadyDone | StepState::Cancelled | StepState::Undone | StepState::Skipped
        ) || verbose > 1 =>
        {
            let word = match state {
                StepState::AlreadyDone => "already done".to_string(),
                other => other.as_str().replace('_', " "),
            };
            Some(format!(
                "{} {kind} {host}: {word}{}",
                pos(step),
                message
                    .as_deref()
                    .map(|m| format!(": {m}"))
                    .unwrap_or_default()
            ))
        }
        Event::Notice { host, message } => Some(format!("{host}: {message}")),
        Event::LockBroken { host, holder } => {
            Some(format!("{host}: broke the fleet lock held by {holder}"))
        }
        Event::Restored {
            host,
            action,
            ok,
            detail,
        } => Some(format!(
            "{host}: undo {action}: {}{detail}",
            if *ok { "" } else { "FAILED: " }
        )),
        _ => None,
    }
}

/// The display: an [`EventSink`] writing to stderr.
pub struct Display {
    mode: DisplayMode,
    verbose: u8,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    multi: Option<MultiProgress>,
    bars: HashMap<(usize, String), ProgressBar>,
}

impl Display {
    pub fn new(mode: DisplayMode, verbose: u8) -> Display {
        let multi = (mode == DisplayMode::Bars)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Display {
            mode,
            verbose,
            state: Mutex::new(State {
                multi,
                ..State::default()
            }),
        }
    }

    fn print(state: &State, text: &str) {
        match &state.multi {
            Some(m) => {
                let _ = m.println(text);
            }
            None => {
                let _ = writeln!(std::io::stderr().lock(), "{text}");
            }
        }
    }
}

impl EventSink for Display {
    fn emit(&self, event: &Event) {
        if self.mode == DisplayMode::Quiet {
            return;
        }
        let Ok(mut state) = self.state.lock() else {
            return;
        };
        if let Event::PlanReady { steps, .. } = event {
            state.total = steps.len();
        }
        if let Some(multi) = state.multi.clone() {
            match event {
                Event::StepStarted {
                    step, kind, host, ..
                } => {
                    let bar = multi.add(ProgressBar::new_spinner());
                    bar.set_style(
                        ProgressStyle::with_template("{spinner} {msg} {elapsed}")
                            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                    );
                    bar.set_message(format!("[{step}/{}] {kind} {host}", state.total));
                    bar.enable_steady_tick(Duration::from_millis(120));
                    if let Some(old) = state.bars.insert((*step, host.clone()), bar) {
                        old.finish_and_clear();
                    }
                }
                Event::StepProgress {
                    step,
                    host,
                    done,
                    total,
                } => {
                    if let Some(bar) = state.bars.get(&(*step, host.clone())) {
                        if bar.length() != Some(*total) {
                            bar.set_length(*total);
                            bar.set_style(
                                ProgressStyle::with_template(
                                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                                )
                                .unwrap_or_else(|_| ProgressStyle::default_bar()),
                            );
                        }
                        bar.set_position(*done);
                    }
                }
                Event::StepFinished { step, host, .. } => {
                    if let Some(bar) = state.bars.remove(&(*step, host.clone())) {
                        bar.finish_and_clear();
                        multi.remove(&bar);
                    }
                }
                _ => {}
            }
        }
        if let Some(text) = line(event, state.total, self.verbose) {
            Display::print(&state, &text);
        }
    }
}

/// JSON Lines of every event on stdout (`--format json`).
pub struct JsonLines;

impl EventSink for JsonLines {
    fn emit(&self, event: &Event) {
        if let Ok(value) = serde_json::to_value(event) {
            print_json_line(&value);
        }
    }
}

/// One line of the `--format json` stream: `value` (an object with its `event`) with the
/// stream's schema version first (see docs/json-events.md).
pub fn json_line(value: &serde_json::Value) -> String {
    let mut line = format!("{{\"schema\":{}", fleetup::events::JSON_SCHEMA);
    if let Some(map) = value.as_object() {
        for (k, v) in map {
            if k == "schema" {
                continue;
            }
            line.push(',');
            line.push_str(&serde_json::Value::String(k.clone()).to_string());
            line.push(':');
            line.push_str(&v.to_string());
        }
    }
    line.push('}');
    line
}

/// [`json_line`] on stdout, flushed (a reader sees each event as it happens).
pub fn print_json_line(value: &serde_json::Value) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", json_line(value));
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mode_follows_terminal_ci_verbosity_quiet_and_format() {
        use DisplayMode::*;
        let r = DisplayMode::resolve;
        assert_eq!(r(true, false, 0, false, Format::Human), Bars);
        assert_eq!(r(true, false, 1, false, Format::Human), Bars);
        assert_eq!(r(true, false, 2, false, Format::Human), Lines);
        assert_eq!(r(false, false, 0, false, Format::Human), Lines);
        assert_eq!(r(true, true, 0, false, Format::Human), Lines);
        assert_eq!(r(true, false, 0, false, Format::Json), Lines);
        assert_eq!(r(true, false, 3, true, Format::Human), Quiet);
        assert_eq!(r(false, true, 0, true, Format::Json), Quiet);
    }

    #[test]
    fn each_json_line_leads_with_the_schema_and_a_fleet_wide_host_is_null() {
        let ev = Event::CheckResult {
            host: None,
            check: "binary-sha256".into(),
            ok: true,
            detail: "matches".into(),
            hint: None,
        };
        let line = json_line(&serde_json::to_value(&ev).unwrap());
        assert!(line.starts_with("{\"schema\":1,"), "{line}");
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["event"], "check_result");
        assert_eq!(v["host"], serde_json::Value::Null);
        assert_eq!(v["schema"], 1);
    }

    #[test]
    fn a_failed_step_shows_exit_status_and_stderr_tail() {
        let ev = Event::StepFinished {
            step: 7,
            kind: "migrate".into(),
            host: "node-1".into(),
            status: StepStatus::Failed,
            exit_status: Some("1".into()),
            duration_ms: 1234,
            stderr_tail: Some("boom\nmigration 12 failed".into()),
            message: Some("`storage upgrade default` failed: exit 1".into()),
            artefacts: vec![],
        };
        let text = line(&ev, 12, 0).unwrap();
        assert_eq!(
            text,
            "[7/12] migrate node-1: FAILED (1s 200ms): `storage upgrade default` failed: exit 1 [exit 1]\n    | boom\n    | migration 12 failed"
        );
    }

    #[test]
    fn verbosity_gates_starts_passes_and_commands() {
        let started = Event::StepStarted {
            step: 3,
            kind: "backup".into(),
            host: "node-2".into(),
            command: Some("pg_dump ...".into()),
        };
        assert_eq!(line(&started, 9, 0), None);
        assert_eq!(
            line(&started, 9, 1).as_deref(),
            Some("[3/9] backup node-2: started")
        );
        assert_eq!(
            line(&started, 9, 2).as_deref(),
            Some("[3/9] backup node-2: $ pg_dump ...")
        );
        let pass = Event::CheckResult {
            host: None,
            check: "binary-sha256".into(),
            ok: true,
            detail: "matches".into(),
            hint: None,
        };
        assert_eq!(line(&pass, 0, 0), None);
        assert_eq!(
            line(&pass, 0, 1).as_deref(),
            Some("check ok fleet: binary-sha256: matches")
        );
    }
}
