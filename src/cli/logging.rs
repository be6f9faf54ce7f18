//! `-vvv`: the SSH negotiation of each host on stderr. The library reports it through the `log`
//! crate under [`fleetup::ssh::LOG_TARGET`] (kex, host key and how it was verified, cipher,
//! each authentication attempt and its result), each line starting with the host's name.
//! russh's own log lines are not shown: they name no host and interleave across connections.

use std::io::Write;

use log::{Level, LevelFilter, Log, Metadata, Record};

/// The verbosity at which the negotiation is shown.
pub const SSH_DEBUG_VERBOSITY: u8 = 3;

struct SshLog;

impl Log for SshLog {
    fn enabled(&self, m: &Metadata<'_>) -> bool {
        shown(m.target(), m.level())
    }

    fn log(&self, record: &Record<'_>) {
        if self.enabled(record.metadata()) {
            let line = fleetup::terminal::safe(&record.args().to_string()).into_owned();
            let line = fleetup::redact::redact(&line);
            let _ = writeln!(std::io::stderr().lock(), "debug: ssh: {line}");
        }
    }

    fn flush(&self) {}
}

fn shown(target: &str, level: Level) -> bool {
    level <= Level::Debug && target == fleetup::ssh::LOG_TARGET
}

/// Installs the logger at `-vvv` (unless `--quiet`).
pub fn init(verbose: u8, quiet: bool) {
    static LOGGER: SshLog = SshLog;
    if verbose >= SSH_DEBUG_VERBOSITY && !quiet && log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(LevelFilter::Debug);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_fleetups_ssh_events_are_shown() {
        assert!(shown(fleetup::ssh::LOG_TARGET, Level::Debug));
        assert!(shown(fleetup::ssh::LOG_TARGET, Level::Warn));
        assert!(!shown(fleetup::ssh::LOG_TARGET, Level::Trace));
        assert!(!shown("russh::client", Level::Debug));
    }
}
