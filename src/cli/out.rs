//! Everything the CLI writes goes through here, redacted ([`fleetup::redact::redact`]: the run's
//! known secrets and connection-string passwords), so no secret reaches a terminal or a log
//! file, and with control characters escaped ([`fleetup::terminal::safe`]), so no text a node
//! sent can drive the terminal. `print!`/`eprint!` are denied elsewhere in the binary (see `main.rs`); use the macros.
#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::io::Write;

/// `text` on stdout, redacted and escaped.
pub fn stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(fleetup::redact::redact(&fleetup::terminal::safe(text)).as_bytes());
    let _ = out.flush();
}

/// `text` on stderr, redacted and escaped.
pub fn stderr(text: &str) {
    let _ = std::io::stderr()
        .lock()
        .write_all(fleetup::redact::redact(&fleetup::terminal::safe(text)).as_bytes());
}

/// `print!`, redacted.
macro_rules! out {
    ($($arg:tt)*) => { $crate::cli::out::stdout(&format!($($arg)*)) };
}

/// `println!`, redacted.
macro_rules! outln {
    () => { $crate::cli::out::stdout("\n") };
    ($($arg:tt)*) => { $crate::cli::out::stdout(&format!("{}\n", format_args!($($arg)*))) };
}

/// `eprint!`, redacted.
macro_rules! err {
    ($($arg:tt)*) => { $crate::cli::out::stderr(&format!($($arg)*)) };
}

/// `eprintln!`, redacted.
macro_rules! errln {
    () => { $crate::cli::out::stderr("\n") };
    ($($arg:tt)*) => { $crate::cli::out::stderr(&format!("{}\n", format_args!($($arg)*))) };
}

/// `value` as one JSON document on stdout (pretty, or one line), its strings redacted before
/// it is serialized: masking the text could cut through its quoting.
pub fn json(value: &impl serde::Serialize, pretty: bool) -> anyhow::Result<()> {
    let mut value = serde_json::to_value(value)?;
    fleetup::redact::redact_json(&mut value);
    let text = if pretty {
        serde_json::to_string_pretty(&value)?
    } else {
        value.to_string()
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{text}");
    let _ = out.flush();
    Ok(())
}
