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
    /// two would interleave on one screen) and `-v` does not ask for more than bars show.
    pub fn resolve(
        stderr_is_terminal: bool,
        is_ci: bool,
        verbose: u8,
        quiet: bool,
        format: Format,
    ) -> DisplayMode {
        if quiet {
            DisplayMode::Quiet
        } else if !stderr_is_terminal || is_ci || format == Format::Json || verbose >= 1 {
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
        Event::Notice { host, message } => Some(match host {
            Some(host) => format!("{host}: {message}"),
            None => message.clone(),
        }),
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

/// Whether the display colours ok / FAILED / blocked: `--color always|never`, else (auto) on a
/// terminal unless `NO_COLOR` is set (<https://no-color.org>).
pub fn use_color(choice: ColorChoice, no_color_env: bool, stderr_is_terminal: bool) -> bool {
    match choice {
        ColorChoice::Always => true,
        ColorChoice::Never => false,
        ColorChoice::Auto => stderr_is_terminal && !no_color_env,
    }
}

/// `--color`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ColorChoice {
    Auto,
    Always,
    Never,
}

/// The status words of a display line in colour: ok green, FAILED red, BLOCKED yellow.
pub fn colorize(text: &str) -> String {
    const GREEN: &str = "\x1b[32m";
    const RED: &str = "\x1b[31m";
    const YELLOW: &str = "\x1b[33m";
    const RESET: &str = "\x1b[0m";
    text.replace(": ok (", &format!(": {GREEN}ok{RESET} ("))
        .replace("FAILED", &format!("{RED}FAILED{RESET}"))
        .replace("BLOCKED", &format!("{YELLOW}BLOCKED{RESET}"))
        .replace("unreachable", &format!("{RED}unreachable{RESET}"))
}

/// The display: an [`EventSink`] writing to stderr.
pub struct Display {
    mode: DisplayMode,
    verbose: u8,
    color: bool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    total: usize,
    multi: Option<MultiProgress>,
    /// The overall bar (bars mode): step k/n, hosts done/failed, elapsed.
    overall: Option<ProgressBar>,
    /// One line per host in flight: its current step and how long it has been on it.
    hosts: HashMap<String, (usize, ProgressBar)>,
    /// Upload progress bars, by `(step, host)`.
    uploads: HashMap<(usize, String), ProgressBar>,
    /// Each host's last step in the plan: done once it finished that one.
    last_step: HashMap<String, usize>,
    all_hosts: usize,
    done: Vec<String>,
    failed: Vec<String>,
    step: usize,
    kind: String,
}

impl Display {
    pub fn new(mode: DisplayMode, verbose: u8, color: bool) -> Display {
        let multi = (mode == DisplayMode::Bars)
            .then(|| MultiProgress::with_draw_target(ProgressDrawTarget::stderr()));
        Display {
            mode,
            verbose,
            color,
            state: Mutex::new(State {
                multi,
                ..State::default()
            }),
        }
    }

    /// Runs `f` (a prompt) with the bars off the screen, so what it writes stays readable.
    pub fn suspend<R>(&self, f: impl FnOnce() -> R) -> R {
        let multi = self.state.lock().ok().and_then(|s| s.multi.clone());
        match multi {
            Some(m) => m.suspend(f),
            None => f(),
        }
    }

    pub fn is_bars(&self) -> bool {
        self.mode == DisplayMode::Bars
    }

    fn print(&self, state: &State, text: &str) {
        // Escaped before it is coloured: the colours are ours, any escape before is a node's.
        let text = fleetup::redact::redact(&fleetup::terminal::cell_lines(text));
        let text = if self.color { colorize(&text) } else { text };
        match &state.multi {
            Some(m) => {
                let _ = m.println(&text);
            }
            None => {
                // Plain lines carry the time they were written (UTC), for logs.
                let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now());
                let clock = now.to_string().get(11..19).unwrap_or("").to_string();
                let mut err = std::io::stderr().lock();
                for (i, l) in text.lines().enumerate() {
                    let _ = if i == 0 {
                        writeln!(err, "{clock} {l}")
                    } else {
                        writeln!(err, "         {l}")
                    };
                }
            }
        }
    }

    /// The bars of a terminal: the overall one and a line per host in flight.
    fn draw(state: &mut State, multi: &MultiProgress, event: &Event) {
        let host_style = || {
            ProgressStyle::with_template("  {spinner} {prefix:<16} {msg} {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
        };
        let host_bar = |state: &mut State, host: &str, step: usize, msg: String| {
            let fresh = state.hosts.get(host).is_none_or(|(s, _)| *s != step);
            if fresh {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(host_style());
                bar.set_prefix(host.to_string());
                bar.enable_steady_tick(Duration::from_millis(120));
                if let Some((_, old)) = state.hosts.insert(host.to_string(), (step, bar)) {
                    old.finish_and_clear();
                    multi.remove(&old);
                }
            }
            if let Some((_, bar)) = state.hosts.get(host) {
                bar.set_message(fleetup::terminal::cell(&msg).into_owned());
            }
        };
        match event {
            Event::RunStarted {
                command,
                hosts,
                target,
                ..
            } => {
                let bar = multi.add(ProgressBar::new_spinner());
                bar.set_style(
                    ProgressStyle::with_template("{spinner} {msg}  {elapsed}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                bar.set_message(format!(
                    "{command} to {target}: connecting to {} host(s)",
                    hosts.len()
                ));
                state.overall = Some(bar);
                state.all_hosts = hosts.len();
                for h in hosts {
                    host_bar(state, h, 0, "connecting".into());
                }
            }
            Event::HostConnected { host } => {
                host_bar(state, host, 0, "connected, reading facts".into());
            }
            Event::HostUnreachable { host, .. } => {
                if let Some((_, bar)) = state.hosts.remove(host) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
            }
            Event::PlanReady { steps, .. } => {
                for (_, (_, bar)) in state.hosts.drain() {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                for s in steps {
                    for h in &s.hosts {
                        let last = state.last_step.entry(h.clone()).or_default();
                        *last = (*last).max(s.step);
                    }
                }
                state.all_hosts = state.last_step.len().max(state.all_hosts);
            }
            Event::StepStarted {
                step, kind, host, ..
            } => {
                state.step = state.step.max(*step);
                state.kind = kind.clone();
                host_bar(
                    state,
                    host,
                    *step,
                    format!("[{step}/{}] {kind}", state.total),
                );
            }
            Event::StepProgress {
                step,
                host,
                done,
                total,
            } => {
                let key = (*step, host.clone());
                let bar = state.uploads.entry(key).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(*total));
                    bar.set_style(
                        ProgressStyle::with_template(
                            "    {prefix:<16} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
                        )
                        .unwrap_or_else(|_| ProgressStyle::default_bar()),
                    );
                    bar.set_prefix(host.clone());
                    bar
                });
                bar.set_position(*done);
            }
            Event::StepFinished {
                step, host, status, ..
            } => {
                if let Some(bar) = state.uploads.remove(&(*step, host.clone())) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                if let Some((_, bar)) = state.hosts.remove(host) {
                    bar.finish_and_clear();
                    multi.remove(&bar);
                }
                if *status == StepStatus::Failed && !state.failed.contains(host) {
                    state.failed.push(host.clone());
                } else if state.last_step.get(host) == Some(step) && !state.done.contains(host) {
                    state.done.push(host.clone());
                }
            }
            Event::RunFinished { .. } => {
                for (_, (_, bar)) in state.hosts.drain() {
                    bar.finish_and_clear();
                }
                if let Some(bar) = state.overall.take() {
                    bar.finish_and_clear();
                }
                return;
            }
            _ => return,
        }
        if let Some(bar) = &state.overall
            && state.total > 0
        {
            bar.set_message(format!(
                "step {}/{} {} · hosts {} done, {} failed, of {}",
                state.step,
                state.total,
                state.kind,
                state.done.len(),
                state.failed.len(),
                state.all_hosts
            ));
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
            Display::draw(&mut state, &multi, event);
        }
        if let Some(text) = line(event, state.total, self.verbose) {
            self.print(&state, &text);
        }
    }
}

/// When each host's first step started and its last one finished: the end table's time.
#[derive(Default)]
pub struct HostClock(Mutex<HashMap<String, (std::time::Instant, std::time::Instant)>>);

impl HostClock {
    /// How long `host` was worked on, if any step ran there.
    pub fn elapsed(&self, host: &str) -> Option<Duration> {
        let times = self.0.lock().ok()?;
        times.get(host).map(|(a, b)| b.duration_since(*a))
    }
}

impl EventSink for HostClock {
    fn emit(&self, event: &Event) {
        let host = match event {
            Event::StepStarted { host, .. } | Event::StepFinished { host, .. } => host,
            _ => return,
        };
        if let Ok(mut times) = self.0.lock() {
            let now = std::time::Instant::now();
            times
                .entry(host.clone())
                .and_modify(|(_, last)| *last = now)
                .or_insert((now, now));
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

/// [`json_line`] on stdout, its strings redacted, flushed (a reader sees each event as it
/// happens).
pub fn print_json_line(value: &serde_json::Value) {
    let mut value = value.clone();
    fleetup::redact::redact_json(&mut value);
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", json_line(&value));
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
        assert_eq!(r(true, false, 1, false, Format::Human), Lines);
        assert_eq!(r(true, false, 2, false, Format::Human), Lines);
        assert_eq!(r(false, false, 0, false, Format::Human), Lines);
        assert_eq!(r(true, true, 0, false, Format::Human), Lines);
        assert_eq!(r(true, false, 0, false, Format::Json), Lines);
        assert_eq!(r(true, false, 3, true, Format::Human), Quiet);
        assert_eq!(r(false, true, 0, true, Format::Json), Quiet);
    }

    #[test]
    fn colour_follows_the_flag_then_no_color_then_the_terminal() {
        use ColorChoice::*;
        assert!(use_color(Always, true, false));
        assert!(!use_color(Never, false, true));
        assert!(use_color(Auto, false, true));
        assert!(!use_color(Auto, true, true));
        assert!(!use_color(Auto, false, false));
        assert_eq!(
            colorize("[3/9] backup node-2: FAILED (1s)"),
            "[3/9] backup node-2: [31mFAILED[0m (1s)"
        );
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
