//! Processes the lab started, handled strictly by pid: liveness (a zombie counts as gone), the
//! processes running the lab's own copy of the simulator, and stopping one with TERM then KILL.

use std::path::Path;
use std::time::{Duration, Instant};

/// Alive and not a zombie: servers the lab starts are reparented to init, which may not reap
/// them in a container, and a zombie still answers `kill(pid, 0)`.
pub fn alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid_t <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    if unsafe { libc::kill(pid_t, 0) } != 0 {
        return std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    !is_zombie(pid)
}

fn is_zombie(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            let (_, rest) = stat.rsplit_once(')')?;
            rest.trim_start().chars().next()
        })
        == Some('Z')
}

/// The command line of a process, arguments joined by spaces (empty when unreadable).
pub fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .split('\0')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join(" ")
        })
        .unwrap_or_default()
}

/// Pids of live processes whose executable is `exe` (compared after canonicalization; a binary
/// replaced since the process started still matches).
pub fn running_exe(exe: &Path) -> Vec<u32> {
    let Ok(target) = std::fs::canonicalize(exe) else {
        return Vec::new();
    };
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut pids: Vec<u32> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_link(format!("/proc/{pid}/exe")).is_ok_and(|p| {
                let s = p.to_string_lossy();
                Path::new(s.strip_suffix(" (deleted)").unwrap_or(&s)) == target
            })
        })
        .filter(|pid| alive(*pid))
        .collect();
    pids.sort_unstable();
    pids
}

/// Every live descendant of `pid` (children, their children, ...), by pid.
pub fn descendants(pid: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let parents: Vec<(u32, u32)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter_map(|p| {
            let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
            let (_, rest) = stat.rsplit_once(')')?;
            let ppid = rest.split_whitespace().nth(1)?.parse::<u32>().ok()?;
            Some((p, ppid))
        })
        .collect();
    let mut found = vec![pid];
    let mut i = 0;
    while i < found.len() {
        let parent = found[i];
        found.extend(
            parents
                .iter()
                .filter(|(_, pp)| *pp == parent)
                .map(|(p, _)| *p),
        );
        i += 1;
    }
    found.remove(0);
    found.sort_unstable();
    found.retain(|p| alive(*p));
    found
}

/// Live processes whose command line contains `needle`: `(pid, command line)`, by pid.
pub fn mentioning(needle: &str) -> Vec<(u32, String)> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<(u32, String)> = entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != std::process::id())
        .map(|pid| (pid, cmdline(pid)))
        .filter(|(pid, line)| line.contains(needle) && alive(*pid))
        .collect();
    found.sort_unstable();
    found
}

/// Sends SIGTERM, waits up to `grace`, then SIGKILL; returns once the process is gone (or after
/// a further 5 s, reporting whether it is).
pub fn terminate(pid: u32, grace: Duration) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return true;
    };
    if pid_t <= 0 || !alive(pid) {
        return true;
    }
    // SAFETY: kill(2) on a pid the caller identified as one of the lab's processes.
    unsafe { libc::kill(pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + grace;
    let mut killed = false;
    while alive(pid) {
        if !killed && Instant::now() > deadline {
            // SAFETY: as above.
            unsafe { libc::kill(pid_t, libc::SIGKILL) };
            killed = true;
        }
        if Instant::now() > deadline + Duration::from_secs(5) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_and_terminates_a_process_by_its_executable() {
        let dir = tempfile::tempdir().unwrap();
        let exe = dir.path().join("my-sleep");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let mut child = std::process::Command::new(&exe).arg("30").spawn().unwrap();
        let pid = child.id();
        assert!(alive(pid));
        // Right after fork the child may not have exec'd yet: /proc still shows the parent.
        let deadline = Instant::now() + Duration::from_secs(5);
        while !cmdline(pid).ends_with("my-sleep 30") && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(cmdline(pid).ends_with("my-sleep 30"), "{}", cmdline(pid));
        // Only processes of that very file, not every `sleep`.
        assert_eq!(running_exe(&exe), vec![pid]);
        assert!(terminate(pid, Duration::from_secs(2)));
        // Our own child is a zombie until waited for: it counts as gone.
        assert!(!alive(pid));
        assert!(running_exe(&exe).is_empty());
        child.wait().unwrap();
    }

    #[test]
    fn nonsense_pids_are_not_alive() {
        assert!(!alive(0));
        assert!(!alive(u32::MAX));
        assert!(alive(std::process::id()));
    }
}
