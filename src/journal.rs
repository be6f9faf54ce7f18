//! The run journal: one append-only JSON Lines file per run, `<state dir>/<run id>.jsonl`, mode
//! 0600. A versioned header line (holding the whole plan and its id), then every event of the
//! run with a timestamp, and a typed [`StepRecord`] line (`"record": "step"`) each time a step
//! changes state on a host. Written as the events happen (a crash leaves a readable journal);
//! read back by `fleetup runs list|show` and by `fleetup upgrade --resume`, which appends to the
//! same file. Every line is redacted again before it is written: a journal never holds a secret.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::events::{Event, EventSink, StepState};
use crate::redact::redact_json;

/// Bumped when a line changes meaning; readers refuse what they do not know.
pub const FORMAT_VERSION: u32 = 2;
/// Older versions this fleetup still reads (version 1 has no plan and no step records).
const READS: &[u32] = &[1, 2];

/// The state dir when none is given: `.fleetup/runs/` beside the inventory file.
pub fn default_state_dir(inventory: &Path) -> PathBuf {
    let dir = match inventory.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    dir.join(".fleetup").join("runs")
}

/// A new run id: the UTC start time to the second, then 6 random hex digits, so ids sort by
/// start time and two runs started in the same second still differ (`20260125T174502Z-3f9a0c`).
pub fn new_run_id(now: SystemTime) -> String {
    // Milliseconds: two runs in the same second (a check, then the upgrade) must still sort in
    // the order they started.
    let stamp: String = humantime::format_rfc3339_millis(now)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    format!("{stamp}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Whether `id` has the shape [`new_run_id`] produces (it names a file: nothing else may pass).
pub fn valid_run_id(id: &str) -> bool {
    let Some((stamp, suffix)) = id.split_once('-') else {
        return false;
    };
    // `YYYYMMDDTHHMMSS.mmmZ`; the 16-character form without milliseconds is still read.
    let digits_at = |skip: &[usize]| {
        stamp
            .bytes()
            .enumerate()
            .all(|(i, b)| skip.contains(&i) || b.is_ascii_digit())
    };
    let b = stamp.as_bytes();
    let stamp_ok = match stamp.len() {
        20 => b[8] == b'T' && b[15] == b'.' && b[19] == b'Z' && digits_at(&[8, 15, 19]),
        16 => b[8] == b'T' && b[15] == b'Z' && digits_at(&[8, 15]),
        _ => false,
    };
    stamp_ok && suffix.len() == 6 && suffix.bytes().all(|b| b.is_ascii_hexdigit())
}

/// The first line of a journal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Header {
    pub format_version: u32,
    pub run_id: String,
    /// `upgrade` or `check`.
    pub command: String,
    pub fleetup_version: String,
    /// The inventory file as given.
    pub inventory: String,
    /// SHA-256 of the inventory file's bytes.
    pub inventory_sha256: String,
    pub target: String,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// Local user and machine that ran fleetup.
    pub user: String,
    pub local_host: String,
    /// `--no-backup` was given.
    pub no_backup: bool,
    /// The command line's options that change what runs (`--stop`, `--serial 2`, ...).
    pub options: Vec<String>,
    /// The plan the run follows, as `fleetup check --format json` prints it (absent when the
    /// run stopped before a plan was built, and in version 1 journals).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub plan_id: Option<String>,
}

/// One step's state on one host, as the journal records it (a line with `"record": "step"`).
/// Its own type, not the runtime event: its fields are the journal's format.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepRecord {
    /// RFC 3339 with milliseconds, UTC.
    pub ts: String,
    /// The step's stable id in the plan (`migrate`, `start-service-2`).
    pub id: String,
    pub step: usize,
    pub kind: String,
    pub host: String,
    pub state: StepState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// The path of run `run_id`'s journal in `state_dir`.
pub fn journal_path(state_dir: &Path, run_id: &str) -> PathBuf {
    state_dir.join(format!("{run_id}.jsonl"))
}

/// An open journal: an [`EventSink`] that appends one line per event. Write errors do not stop
/// the run (the hosts matter more than the file); the first one is kept for the final report.
pub struct Journal {
    path: PathBuf,
    file: Mutex<File>,
    error: Mutex<Option<String>>,
}

impl Journal {
    /// Creates `<state_dir>/<run_id>.jsonl` (0600, never overwriting) and writes the header. The
    /// state dir is created 0700 when missing.
    pub fn create(state_dir: &Path, header: &Header) -> anyhow::Result<Journal> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(state_dir)
            .with_context(|| format!("cannot create the state dir `{}`", state_dir.display()))?;
        let path = journal_path(state_dir, &header.run_id);
        let mut file = OpenOptions::new()
            .append(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .with_context(|| format!("cannot create the journal `{}`", path.display()))?;
        let mut header_value = serde_json::to_value(header)?;
        redact_json(&mut header_value);
        let line = header_value.to_string();
        file.write_all(format!("{line}\n").as_bytes())
            .with_context(|| format!("cannot write the journal `{}`", path.display()))?;
        Ok(Journal {
            path,
            file: Mutex::new(file),
            error: Mutex::new(None),
        })
    }

    /// Opens the existing journal of `run_id` to append to it (`--resume`).
    pub fn open_append(state_dir: &Path, run_id: &str) -> anyhow::Result<Journal> {
        let path = journal_path(state_dir, run_id);
        let file = OpenOptions::new()
            .append(true)
            .open(&path)
            .with_context(|| format!("cannot open the journal `{}`", path.display()))?;
        Ok(Journal {
            path,
            file: Mutex::new(file),
            error: Mutex::new(None),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first write error, if any line could not be written.
    pub fn error(&self) -> Option<String> {
        self.error.lock().ok().and_then(|e| e.clone())
    }

    fn append(&self, event: &Event) -> Result<(), String> {
        let ts = humantime::format_rfc3339_millis(SystemTime::now()).to_string();
        let mut value = match event {
            Event::StepState {
                id,
                step,
                kind,
                host,
                state,
                message,
            } => {
                let record = StepRecord {
                    ts,
                    id: id.clone(),
                    step: *step,
                    kind: kind.clone(),
                    host: host.clone(),
                    state: *state,
                    message: message.clone(),
                };
                let mut v = serde_json::to_value(record).map_err(|e| e.to_string())?;
                v["record"] = Value::String("step".into());
                v
            }
            _ => {
                let mut v = serde_json::to_value(event).map_err(|e| e.to_string())?;
                if let Value::Object(map) = &mut v {
                    map.insert("ts".into(), Value::String(ts));
                }
                v
            }
        };

        redact_json(&mut value);
        let line = value.to_string();
        let mut file = self.file.lock().map_err(|_| "journal lock poisoned")?;
        // One write per line, flushed at once: a crash leaves whole lines only.
        file.write_all(format!("{line}\n").as_bytes())
            .map_err(|e| e.to_string())
    }
}

impl EventSink for Journal {
    fn emit(&self, event: &Event) {
        if let Err(e) = self.append(event)
            && let Ok(mut slot) = self.error.lock()
            && slot.is_none()
        {
            *slot = Some(format!(
                "cannot write the journal `{}`: {e}",
                self.path.display()
            ));
        }
    }
}

/// The journal of a run whose header needs the plan: events before the plan is built are kept
/// in memory, then written once [`DeferredJournal::attach`] opened the file.
#[derive(Default)]
pub struct DeferredJournal {
    inner: Mutex<(Option<std::sync::Arc<Journal>>, Vec<Event>)>,
}

impl DeferredJournal {
    /// Starts writing to `journal`, the events so far first.
    pub fn attach(&self, journal: std::sync::Arc<Journal>) {
        if let Ok(mut g) = self.inner.lock() {
            for e in g.1.drain(..) {
                journal.emit(&e);
            }
            g.0 = Some(journal);
        }
    }

    pub fn journal(&self) -> Option<std::sync::Arc<Journal>> {
        self.inner.lock().ok().and_then(|g| g.0.clone())
    }
}

impl EventSink for DeferredJournal {
    fn emit(&self, event: &Event) {
        if let Ok(mut g) = self.inner.lock() {
            match &g.0 {
                Some(j) => j.emit(event),
                None => g.1.push(event.clone()),
            }
        }
    }
}

/// A journal read back: its header and every event line as JSON (old journals may hold event
/// kinds this version does not know; they are kept as they are).
#[derive(Debug, Clone)]
pub struct JournalFile {
    pub path: PathBuf,
    pub header: Header,
    pub events: Vec<Value>,
    /// Every step record, in the order written.
    pub steps: Vec<StepRecord>,
}

impl JournalFile {
    /// The last `run_finished` event, absent when the run was interrupted.
    pub fn finished(&self) -> Option<&Value> {
        self.events
            .iter()
            .rev()
            .find(|e| e["event"] == "run_finished")
    }

    /// Each `(step id, host)` whose last record is `started`: the run stopped (killed) while the
    /// step was applied there, so it may have changed the host. In the order they started.
    pub fn in_progress(&self) -> Vec<&StepRecord> {
        let mut last: Vec<&StepRecord> = Vec::new();
        for r in &self.steps {
            match last.iter().position(|l| l.id == r.id && l.host == r.host) {
                Some(i) => last[i] = r,
                None => last.push(r),
            }
        }
        last.retain(|r| r.state == StepState::Started);
        last
    }

    /// The last state of step `kind` (snake case) on `host`, if recorded.
    pub fn last_state(&self, kind: &str, host: &str) -> Option<StepState> {
        self.steps
            .iter()
            .rev()
            .find(|r| r.kind == kind && r.host == host)
            .map(|r| r.state)
    }

    /// `succeeded`, `failed`, `blocked`, ... or `interrupted` when the run never finished.
    pub fn outcome(&self) -> String {
        self.finished()
            .and_then(|e| e["outcome"].as_str())
            .unwrap_or("interrupted")
            .to_string()
    }

    pub fn duration_ms(&self) -> Option<u64> {
        self.finished().and_then(|e| e["duration_ms"].as_u64())
    }

    /// The distinct `(step, kind, host)` of every finished step, in the order they finished.
    pub fn finished_steps(&self) -> Vec<(u64, String, String)> {
        let mut out: Vec<(u64, String, String)> = Vec::new();
        for e in self.events.iter().filter(|e| e["event"] == "step_finished") {
            let key = (
                e["step"].as_u64().unwrap_or(0),
                e["kind"].as_str().unwrap_or("").to_string(),
                e["host"].as_str().unwrap_or("").to_string(),
            );
            if !out.contains(&key) {
                out.push(key);
            }
        }
        out
    }
}

/// Reads the journal at `path`.
pub fn read_journal(path: &Path) -> anyhow::Result<JournalFile> {
    let file = File::open(path)
        .with_context(|| format!("cannot open the journal `{}`", path.display()))?;
    let mut lines = BufReader::new(file).lines();
    let first = lines
        .next()
        .transpose()
        .with_context(|| format!("cannot read `{}`", path.display()))?
        .ok_or_else(|| anyhow::anyhow!("the journal `{}` is empty", path.display()))?;
    let header: Header = serde_json::from_str(&first)
        .with_context(|| format!("`{}` does not start with a journal header", path.display()))?;
    if !READS.contains(&header.format_version) {
        anyhow::bail!(
            "the journal `{}` has format version {}; this fleetup reads versions 1 to {FORMAT_VERSION}",
            path.display(),
            header.format_version
        );
    }
    let mut events = Vec::new();
    let mut steps = Vec::new();
    for (n, line) in lines.enumerate() {
        let line = line.with_context(|| format!("cannot read `{}`", path.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        // A run killed mid-write leaves at most a partial last line: skip it, keep the rest.
        match serde_json::from_str::<Value>(&line) {
            Ok(v) if v["record"] == "step" => match serde_json::from_value::<StepRecord>(v) {
                Ok(r) => steps.push(r),
                Err(_) => events.push(serde_json::json!({
                    "event": "unreadable_line",
                    "line": n + 2,
                })),
            },
            Ok(v) => events.push(v),
            Err(_) => events.push(serde_json::json!({
                "event": "unreadable_line",
                "line": n + 2,
            })),
        }
    }
    Ok(JournalFile {
        path: path.to_path_buf(),
        header,
        events,
        steps,
    })
}

/// Every journal in `state_dir`, oldest first (run ids sort by start time). Files that are not
/// journals are skipped; a missing state dir holds no run.
pub fn list_journals(state_dir: &Path) -> anyhow::Result<Vec<JournalFile>> {
    let entries = match fs::read_dir(state_dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot list the state dir `{}`",
                state_dir.display()
            )));
        }
    };
    let mut paths: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| run_id_of(p).is_some())
        .collect();
    paths.sort();
    Ok(paths.iter().filter_map(|p| read_journal(p).ok()).collect())
}

/// The run id a journal's path names, if it is a journal's.
fn run_id_of(path: &Path) -> Option<&str> {
    if path.extension().is_none_or(|x| x != "jsonl") {
        return None;
    }
    path.file_stem()
        .and_then(|s| s.to_str())
        .filter(|s| valid_run_id(s))
}

/// What a run named on the command line (`last`, a full id, or the start of one) comes to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunMatch {
    Found(String),
    /// No journal in the state dir has such an id.
    NoMatch,
    /// The prefix names several runs: their ids, oldest first.
    Ambiguous(Vec<String>),
}

/// Resolves `query` against the journals in `state_dir`: `last` is the newest run, anything
/// else a run id or the start of exactly one (`20261202T1530`).
pub fn match_run(state_dir: &Path, query: &str) -> anyhow::Result<RunMatch> {
    let mut ids: Vec<String> = match fs::read_dir(state_dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|e| run_id_of(&e.path()).map(str::to_string))
            .collect(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => {
            return Err(anyhow::Error::new(e).context(format!(
                "cannot list the state dir `{}`",
                state_dir.display()
            )));
        }
    };
    ids.sort();
    if query == "last" {
        return Ok(ids.pop().map_or(RunMatch::NoMatch, RunMatch::Found));
    }
    if ids.iter().any(|id| id == query) {
        return Ok(RunMatch::Found(query.to_string()));
    }
    let mut hits: Vec<String> = ids.into_iter().filter(|id| id.starts_with(query)).collect();
    Ok(match hits.len() {
        0 => RunMatch::NoMatch,
        1 => RunMatch::Found(hits.remove(0)),
        _ => RunMatch::Ambiguous(hits),
    })
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::time::{Duration, UNIX_EPOCH};

    use super::*;
    use crate::events::StepStatus;

    #[test]
    fn a_run_is_named_by_last_its_id_or_a_unique_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let ids = [
            "20260125T174502.001Z-00000a",
            "20260125T174502.002Z-00000b",
            "20260126T090000.000Z-00000c",
        ];
        for id in ids {
            Journal::create(dir.path(), &header(id)).unwrap();
        }
        std::fs::write(dir.path().join("notes.jsonl"), "x").unwrap();
        let m = |q: &str| match_run(dir.path(), q).unwrap();
        assert_eq!(m("last"), RunMatch::Found(ids[2].into()));
        assert_eq!(m(ids[0]), RunMatch::Found(ids[0].into()));
        assert_eq!(m("20260126"), RunMatch::Found(ids[2].into()));
        assert_eq!(
            m("20260125T1745"),
            RunMatch::Ambiguous(vec![ids[0].into(), ids[1].into()])
        );
        assert_eq!(m("2027"), RunMatch::NoMatch);
        let empty = tempfile::tempdir().unwrap();
        assert_eq!(
            match_run(&empty.path().join("none"), "last").unwrap(),
            RunMatch::NoMatch
        );
    }

    fn header(run_id: &str) -> Header {
        Header {
            format_version: FORMAT_VERSION,
            run_id: run_id.into(),
            command: "upgrade".into(),
            fleetup_version: "0.1.0".into(),
            inventory: "lab/inventory.toml".into(),
            inventory_sha256: "ab".repeat(32),
            target: "1.8.2".into(),
            started_at: "2026-01-25T17:45:02Z".into(),
            user: "ops".into(),
            local_host: "laptop".into(),
            no_backup: false,
            options: vec!["--stop".into()],
            plan: None,
            plan_id: None,
        }
    }

    #[test]
    fn run_ids_sort_by_time_and_validate() {
        let a = new_run_id(UNIX_EPOCH + Duration::from_secs(1_769_363_102));
        let b = new_run_id(UNIX_EPOCH + Duration::from_millis(1_769_363_102_001));
        let c = new_run_id(UNIX_EPOCH + Duration::from_secs(1_769_363_103));
        assert!(a.starts_with("20260125T174502.000Z-"), "{a}");
        assert!(a < b && b < c, "{a} {b} {c}");
        assert!(valid_run_id(&a) && valid_run_id(&b) && valid_run_id(&c));
        assert!(valid_run_id("20260125T174502Z-00ab12"), "the older form");
        for bad in [
            "",
            "../etc/passwd",
            "20260125T174502Z",
            "20260125T174502Z-xyz123",
            "2026012xT174502Z-abcdef",
            "20260125T174502Z-abcdef/..",
            "20260125T174502.12Z-abcdef",
            "20260125T174502x123Z-abcdef",
        ] {
            assert!(!valid_run_id(bad), "{bad}");
        }
    }

    #[test]
    fn journal_is_private_append_only_and_redacted() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("runs");
        let id = "20260125T174502Z-00ab12";
        let j = Journal::create(&state, &header(id)).unwrap();
        assert_eq!(
            fs::metadata(j.path()).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert_eq!(
            fs::metadata(&state).unwrap().permissions().mode() & 0o777,
            0o700
        );
        j.emit(&Event::StepFinished {
            step: 6,
            kind: "backup".into(),
            host: "node-1".into(),
            status: StepStatus::Failed,
            exit_status: Some("1".into()),
            duration_ms: 12,
            stderr_tail: Some("pg_dump: cannot connect to postgresql://u:hunter2@db/x".into()),
            message: None,
            artefacts: vec![],
        });
        j.emit(&Event::RunFinished {
            run_id: id.into(),
            outcome: "failed".into(),
            exit_code: 1,
            duration_ms: 1500,
        });
        assert!(j.error().is_none());
        // A second journal with the same id is refused rather than overwriting the first.
        assert!(Journal::create(&state, &header(id)).is_err());

        let text = fs::read_to_string(j.path()).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert_eq!(text.lines().count(), 3);
        let read = read_journal(j.path()).unwrap();
        assert_eq!(read.header, header(id));
        assert_eq!(read.outcome(), "failed");
        assert_eq!(read.duration_ms(), Some(1500));
        assert_eq!(
            read.finished_steps(),
            vec![(6, "backup".to_string(), "node-1".to_string())]
        );
        assert!(read.events[0]["ts"].as_str().is_some());
    }

    #[test]
    fn listing_skips_strangers_and_reports_interrupted_runs() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            list_journals(&dir.path().join("missing"))
                .unwrap()
                .is_empty()
        );
        let later = "20260125T180000Z-000002";
        let earlier = "20260125T170000Z-000001";
        Journal::create(dir.path(), &header(later)).unwrap();
        Journal::create(dir.path(), &header(earlier)).unwrap();
        fs::write(dir.path().join("notes.jsonl"), "{}\n").unwrap();
        fs::write(
            dir.path().join("20260125T190000Z-000003.jsonl"),
            "not json\n",
        )
        .unwrap();
        let runs = list_journals(dir.path()).unwrap();
        let ids: Vec<&str> = runs.iter().map(|r| r.header.run_id.as_str()).collect();
        assert_eq!(ids, vec![earlier, later]);
        assert_eq!(runs[0].outcome(), "interrupted");
    }

    #[test]
    fn default_state_dir_sits_beside_the_inventory() {
        assert_eq!(
            default_state_dir(Path::new("lab/inventory.toml")),
            PathBuf::from("lab/.fleetup/runs")
        );
        assert_eq!(
            default_state_dir(Path::new("inventory.toml")),
            PathBuf::from("./.fleetup/runs")
        );
    }
}
