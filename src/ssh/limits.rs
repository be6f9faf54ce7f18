//! Open files: every connection holds a socket, so a run over many hosts needs a file
//! descriptor per connection it keeps open. Checked before the first connection, so a fleet
//! too big for the process's limit fails at once with what to do, instead of as a scatter of
//! `Too many open files` errors on the hosts that happened to connect last.

use crate::error::Failure;
use crate::exit_code;

/// Descriptors a run needs beyond one per connection: stdio, the runtime's own (epoll, event
/// fds, its threads' pipes), the journal, the lock files, known_hosts and key files being read.
pub const SPARE_FDS: u64 = 64;

/// The soft and hard limits on open files (`ulimit -Sn`, `ulimit -Hn`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFiles {
    pub soft: u64,
    pub hard: u64,
}

impl OpenFiles {
    pub fn current() -> std::io::Result<Self> {
        let mut r = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes the limit into the struct we own.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(OpenFiles {
            soft: r.rlim_cur,
            hard: r.rlim_max,
        })
    }
}

/// The descriptors `connections` open connections need.
pub fn needed_for(connections: usize) -> u64 {
    connections as u64 + SPARE_FDS
}

/// Makes sure `connections` connections can be open at once: raises the soft limit up to the
/// hard one when it is too low (as most network tools do; a process may), and fails, naming
/// both numbers and what to do, when even the hard limit is too low.
pub fn ensure_open_files(connections: usize) -> Result<OpenFiles, Failure> {
    let needed = needed_for(connections);
    let now = OpenFiles::current().map_err(|e| {
        Failure::new(
            exit_code::FAILURE,
            format!("cannot read the open-files limit: {e}"),
        )
    })?;
    if now.soft >= needed {
        return Ok(now);
    }
    if now.hard < needed {
        return Err(too_low(connections, needed, now));
    }
    let raised = libc::rlimit {
        rlim_cur: needed.max(now.soft),
        rlim_max: now.hard,
    };
    // SAFETY: setrlimit reads the struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(
            too_low(connections, needed, now).hint(format!("raising the soft limit failed: {e}"))
        );
    }
    Ok(OpenFiles {
        soft: raised.rlim_cur,
        hard: now.hard,
    })
}

fn too_low(connections: usize, needed: u64, now: OpenFiles) -> Failure {
    Failure::new(
        exit_code::FAILURE,
        format!(
            "{connections} connections at once need about {needed} open files, but this process may open at most {} (soft limit {}, hard limit {})",
            now.hard, now.soft, now.hard
        ),
    )
    .hint(format!(
        "raise the limit before running fleetup: `ulimit -n {needed}` in the shell (the hard limit is raised as root, in /etc/security/limits.conf or with `LimitNOFILE=` for a service)"
    ))
    .hint("or select fewer hosts (`--hosts`, `--group`); `fleetup exec` keeps only `--forks` connections open, so a lower `--forks` is enough there")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_limit_too_low_is_raised_up_to_the_hard_one_or_refused_naming_both() {
        let before = OpenFiles::current().unwrap();
        // What the process already may open needs no change.
        assert_eq!(ensure_open_files(1).unwrap(), before);
        // More than the hard limit allows: refused, with the numbers and what to do.
        if before.hard < u64::MAX / 2 {
            let too_many = usize::try_from(before.hard).unwrap();
            let e = ensure_open_files(too_many).unwrap_err();
            assert!(
                e.message.contains(&format!("at most {}", before.hard)),
                "{e}"
            );
            assert!(
                e.hints.iter().any(|h| h.contains("ulimit -n")),
                "{:?}",
                e.hints
            );
            assert_eq!(OpenFiles::current().unwrap(), before);
        }
        // Between the soft and the hard limit: the soft one is raised (benign for the other
        // tests of this process: they may only open more).
        if before.soft < before.hard && before.soft > SPARE_FDS {
            let wanted = usize::try_from(before.soft - SPARE_FDS + 1).unwrap();
            let after = ensure_open_files(wanted).unwrap();
            assert_eq!(after.soft, before.soft + 1);
            assert_eq!(OpenFiles::current().unwrap(), after);
        }
    }
}
