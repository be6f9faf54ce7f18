//! The simulator's own bookkeeping in the lab-wide state dir (`NUMARY_SIM_STATE_DIR`): the
//! misuse log tests read, the registry of running servers, per-ledger migration locks and
//! fault markers. None of this exists in the real binary; it only observes what a real
//! deployment would have done wrong, and never changes the ledger's own behaviour.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};

pub struct StateDir {
    pub root: PathBuf,
    pub node: Option<String>,
    pub version: String,
}

pub mod kind {
    /// The ledger's `migrations` table holds versions this binary does not know.
    pub const SCHEMA_NEWER_THAN_BINARY: &str = "schema-newer-than-binary";
    /// `storage upgrade|scan|init|delete` while a live server uses the same storage.
    pub const STORAGE_COMMAND_WHILE_SERVING: &str = "storage-command-while-server-running";
    /// A second process started migrating a ledger another live process is migrating.
    pub const CONCURRENT_MIGRATION: &str = "concurrent-migration";
}

/// A server found in the registry.
pub struct ServerRecord {
    pub pid: u32,
    pub value: Value,
}

pub struct Fault {
    /// Seconds given by `slow-migration` (a bare number line, or the env var's value).
    pub seconds: Option<u64>,
    /// `never-healthy` with a `hang` line hangs instead of answering 500.
    pub hang: bool,
}

impl StateDir {
    fn ensure(&self, sub: &str) -> PathBuf {
        let dir = self.root.join(sub);
        let _ = fs::create_dir_all(&dir);
        dir
    }

    /// Who this process is, in a form `holder_alive` can check later (pid + start time).
    fn holder_record(&self, storage: &str) -> Value {
        let pid = std::process::id();
        json!({
            "pid": pid,
            "start_time": process_start_time(pid),
            "node": self.node,
            "version": self.version,
            "storage": storage,
        })
    }

    pub fn record_misuse(&self, kind: &str, ledger: Option<&str>, storage: &str, detail: &str) {
        let line = json!({
            "kind": kind,
            "node": self.node,
            "version": self.version,
            "ledger": ledger,
            "storage": storage,
            "pid": std::process::id(),
            "time": rfc3339(SystemTime::now()),
            "detail": detail,
        });
        self.append("misuse.log", &line);
    }

    /// Appends to `migrations.log` one line per run of pending migrations, so tests can tell
    /// which node migrated which ledger, how, and whether it committed.
    pub fn record_migration(
        &self,
        ledger: &str,
        storage: &str,
        via: &str,
        numbers: &[u32],
        outcome: Result<(), &str>,
    ) {
        let mut line = self.holder_record(storage);
        line["ledger"] = Value::from(ledger);
        line["via"] = Value::from(via);
        line["migrations"] = Value::from(numbers.to_vec());
        line["time"] = Value::from(rfc3339(SystemTime::now()));
        line["result"] = Value::from(match outcome {
            Ok(()) => "committed".to_owned(),
            Err(e) => format!("rolled back: {e}"),
        });
        self.append("migrations.log", &line);
    }

    fn append(&self, file: &str, line: &Value) {
        let _ = fs::create_dir_all(&self.root);
        // One write of one line with O_APPEND keeps concurrent writers' lines whole.
        if let Ok(mut f) = OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.root.join(file))
        {
            let _ = f.write_all(format!("{line}\n").as_bytes());
        }
    }

    /// Registers this process as a server on `storage`; returns the file to remove on exit.
    pub fn register_server(&self, storage: &str, bind: &str) -> PathBuf {
        let path = self
            .ensure("servers")
            .join(format!("{}.json", std::process::id()));
        let mut record = self.holder_record(storage);
        record["bind"] = Value::from(bind);
        let _ = fs::write(&path, record.to_string());
        path
    }

    /// Live servers (other than this process) registered on `storage`.
    pub fn live_servers(&self, storage: &str) -> Vec<ServerRecord> {
        let Ok(entries) = fs::read_dir(self.root.join("servers")) else {
            return Vec::new();
        };
        let me = std::process::id();
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Some(value) = read_json(&entry.path()) else {
                continue;
            };
            let Some(pid) = value["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else {
                continue;
            };
            if pid == me || value["storage"].as_str() != Some(storage) {
                continue;
            }
            if holder_alive(&value) {
                found.push(ServerRecord { pid, value });
            } else {
                let _ = fs::remove_file(entry.path());
            }
        }
        found
    }

    /// The lines of the fault marker `name` (`faults/<name>`), trimmed, blank ones left out;
    /// empty when it is absent. For faults that name something other than nodes (ledgers).
    pub fn fault_lines(&self, name: &str) -> Vec<String> {
        fs::read_to_string(self.root.join("faults").join(name))
            .map(|t| {
                t.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(str::to_owned)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The fault marker `name` if it applies to this node: `faults/<name>` (empty, or node
    /// names one per line, bare numbers being seconds, `hang` a mode) or `NUMARY_SIM_<NAME>`.
    pub fn fault(&self, name: &str) -> Option<Fault> {
        let env_name = format!("NUMARY_SIM_{}", name.to_uppercase().replace('-', "_"));
        if let Ok(value) = std::env::var(&env_name)
            && !value.is_empty()
            && value != "0"
        {
            return Some(Fault {
                seconds: value.parse().ok(),
                hang: value == "hang",
            });
        }
        let text = fs::read_to_string(self.root.join("faults").join(name)).ok()?;
        let mut nodes = Vec::new();
        let mut fault = Fault {
            seconds: None,
            hang: false,
        };
        for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
            if let Ok(seconds) = line.parse() {
                fault.seconds = Some(seconds);
            } else if line == "hang" {
                fault.hang = true;
            } else {
                nodes.push(line);
            }
        }
        let applies =
            nodes.is_empty() || self.node.as_deref().is_some_and(|me| nodes.contains(&me));
        applies.then_some(fault)
    }

    fn lock_path(&self, storage: &str, ledger: &str) -> PathBuf {
        let safe: String = ledger
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                    c
                } else {
                    '_'
                }
            })
            .collect();
        self.ensure("locks").join(format!(
            "{:016x}-{safe}-{:08x}.lock",
            fnv(storage),
            fnv(ledger)
        ))
    }

    /// Takes the migration lock of `ledger`. When a live process already holds it, the
    /// migration goes on anyway (the real binary has no lock) and the returned holder is
    /// what the caller records as misuse.
    pub fn lock_migration(
        &self,
        storage: &str,
        ledger: &str,
    ) -> (Option<MigrationLock>, Option<Value>) {
        let path = self.lock_path(storage, ledger);
        let mut record = self.holder_record(storage);
        record["ledger"] = Value::from(ledger);
        for _ in 0..3 {
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(mut file) => {
                    let _ = file.write_all(record.to_string().as_bytes());
                    return (Some(MigrationLock { path }), None);
                }
                Err(_) => match read_json(&path) {
                    Some(holder) if holder_alive(&holder) => return (None, Some(holder)),
                    Some(_) => {
                        let _ = fs::remove_file(&path);
                    }
                    // Being written by its creator right now: it is alive by definition.
                    None if path.exists() => {
                        std::thread::sleep(Duration::from_millis(50));
                        if let Some(holder) = read_json(&path) {
                            if holder_alive(&holder) {
                                return (None, Some(holder));
                            }
                            let _ = fs::remove_file(&path);
                        }
                    }
                    None => {}
                },
            }
        }
        (None, None)
    }
}

pub struct MigrationLock {
    path: PathBuf,
}

impl Drop for MigrationLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

fn read_json(path: &Path) -> Option<Value> {
    serde_json::from_str(&fs::read_to_string(path).ok()?).ok()
}

fn holder_alive(value: &Value) -> bool {
    let Some(pid) = value["pid"].as_u64().and_then(|p| u32::try_from(p).ok()) else {
        return false;
    };
    if !process_alive(pid) {
        return false;
    }
    // A recycled pid has another start time.
    match (value["start_time"].as_u64(), process_start_time(pid)) {
        (Some(recorded), Some(now)) => recorded == now,
        _ => true,
    }
}

/// Alive and not a zombie (a killed server its parent has not reaped yet is gone for us).
pub fn process_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks for existence and permission.
    let exists = unsafe { libc::kill(pid_t, 0) } == 0
        || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    match stat_fields(pid) {
        Some(fields) => fields
            .first()
            .is_none_or(|state| *state != "Z" && *state != "X"),
        None => true,
    }
}

/// Fields of /proc/PID/stat after the command name: state is [0], starttime is [19].
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &text[text.rfind(')')? + 1..];
    Some(after.split_whitespace().map(str::to_owned).collect())
}

fn process_start_time(pid: u32) -> Option<u64> {
    stat_fields(pid)?.get(19)?.parse().ok()
}

fn fnv(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// UTC RFC 3339 with seconds, as Go's `time.RFC3339` prints it.
pub fn rfc3339(time: SystemTime) -> String {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(i64::try_from(days).unwrap_or(0));
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = u32::try_from(doy - (153 * mp + 2) / 5 + 1).unwrap_or(1);
    let m = u32::try_from(if mp < 10 { mp + 3 } else { mp - 9 }).unwrap_or(1);
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_formats_known_instants() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
        let t = UNIX_EPOCH + Duration::from_secs(1_709_251_199);
        assert_eq!(rfc3339(t), "2024-02-29T23:59:59Z");
    }

    #[test]
    fn own_process_is_alive_and_pid_zero_is_not_ours() {
        assert!(process_alive(std::process::id()));
        assert!(!process_alive(u32::MAX));
    }
}
