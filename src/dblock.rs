//! The migration's lock on a shared Postgres database. Node locks keep two runs off one node;
//! they do not keep two inventories (or two disjoint `--limit`s) from migrating one database at
//! once. So the migrator holds the session-level advisory lock [`MIGRATE_LOCK_KEY`] in a `psql`
//! that fleetup keeps running on the node, on an SSH channel of its own, for the whole
//! migration; the session's `application_name` names the run, and a refused run is told the
//! holder's name and address from `pg_locks` and `pg_stat_activity`.
//!
//! The lock lives exactly as long as that session: [`DbLock::release`], a dropped [`DbLock`], or
//! fleetup killed (its connection closes, `psql`'s stdin reaches EOF and the wrapper stops it)
//! all end it, so no orphan keeps the database locked. The connection string reaches `psql`
//! through libpq's variables from the service's env file, never on a command line.
//!
//! Use: `let lock = dblock::hold(t, host, &dblock::holder_label(run_id, user, local_host)).await?;`
//! then migrate, [`DbLock::confirm`] before each step that must still be alone, and
//! `lock.release().await`.

use std::time::Duration;

use tokio::time::{Instant, timeout_at};

use crate::inventory::ResolvedHost;
use crate::redact::redact;
use crate::shell::quote;
use crate::ssh::{OutputStream, RemoteProcess, Transport};

/// The advisory lock's key: the first 8 bytes of SHA-256(`fleetup-migrate`), big-endian, top
/// bit cleared (`0x4c53850dc77d2cd4`). Fixed forever: every fleetup version must use the same.
pub const MIGRATE_LOCK_KEY: i64 = 0x4c53_850d_c77d_2cd4;

/// How long a `psql` answer may take (it connects within 10 s).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(30);
/// How long the holding session may take to end once released.
const END_TIMEOUT: Duration = Duration::from_secs(10);

/// Who holds the migration lock, as Postgres sees the session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DbHolder {
    /// The holder's `application_name` (fleetup sets [`holder_label`]).
    pub application_name: String,
    /// The client's address (`local` over a Unix socket).
    pub client: String,
    /// The backend's pid on the database server.
    pub pid: i64,
    /// When the session started (UTC).
    pub since: String,
}

impl std::fmt::Display for DbHolder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let name = if self.application_name.is_empty() {
            "a session without an application name"
        } else {
            &self.application_name
        };
        write!(
            f,
            "`{name}` (backend pid {} from `{}`, since {})",
            self.pid, self.client, self.since
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DbLockError {
    /// Another session holds the lock: another run migrates this database.
    #[error("the migration lock of the database of `{host}` is held by {}", .holder.as_ref().map_or("a session that could not be named".to_string(), |h| h.to_string()))]
    Held {
        host: String,
        holder: Option<DbHolder>,
    },
    #[error("host `{host}`: cannot hold the migration lock of its database: {reason}")]
    Failed { host: String, reason: String },
    /// The session holding the lock ended: the lock is no longer held.
    #[error("host `{host}`: the session holding the migration lock ended: {reason}")]
    Lost { host: String, reason: String },
}

/// `fleetup <run_id> <user>@<local_host>`: the holding session's `application_name` (Postgres
/// keeps 63 bytes of it).
pub fn holder_label(run_id: &str, user: &str, local_host: &str) -> String {
    format!("fleetup {run_id} {user}@{local_host}")
}

fn key_parts() -> (u32, u32) {
    let k = MIGRATE_LOCK_KEY as u64;
    ((k >> 32) as u32, k as u32)
}

/// The lock's row in `pg_locks`, for the database of the session.
fn lock_rows() -> String {
    let (hi, lo) = key_parts();
    format!(
        "from pg_locks l where l.locktype = 'advisory' and l.granted and l.database = (select oid from pg_database where datname = current_database()) and l.classid = {hi}::oid and l.objid = {lo}::oid and l.objsubid = 1"
    )
}

fn try_sql() -> String {
    format!("select 'fleetup-try', pg_try_advisory_lock({MIGRATE_LOCK_KEY});\n")
}

fn holder_sql() -> String {
    format!(
        "select 'fleetup-holder', a.pid, coalesce(host(a.client_addr), 'local'), coalesce(to_char(a.backend_start at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'), ''), coalesce(a.application_name, '') {rows} and a.pid = l.pid;\nselect 'fleetup-end';\n",
        rows = lock_rows().replacen("from pg_locks l", "from pg_locks l, pg_stat_activity a", 1)
    )
}

fn confirm_sql() -> String {
    format!(
        "select 'fleetup-held', count(*) {} and l.pid = pg_backend_pid();\n",
        lock_rows()
    )
}

fn unlock_sql() -> String {
    format!("select 'fleetup-unlock', pg_advisory_unlock({MIGRATE_LOCK_KEY});\n")
}

/// The remote command: the service's env file, libpq's variables from its connection string,
/// then `psql` reading SQL from a FIFO that `cat` feeds from the channel's stdin. When stdin
/// reaches EOF (release, a dropped handle, the connection gone) `cat` ends, `psql` reads EOF
/// and quits (and is killed if it has not within 5 s); when `psql` ends first, the next write kills `cat`. The FIFO is removed as soon as
/// both ends are open, and carries only SQL.
pub fn command(host: &ResolvedHost, holder_label: &str) -> String {
    let env = crate::node::env_prefix(host);
    format!(
        "{env}[ \"${{NUMARY_STORAGE_DRIVER:-}}\" = postgres ] && [ -n \"${{NUMARY_STORAGE_POSTGRES_CONN_STRING:-}}\" ] \
           || {{ echo 'the node does not use Postgres storage (NUMARY_STORAGE_DRIVER)' >&2; exit 8; }}; \
         command -v psql >/dev/null 2>&1 || {{ echo 'psql is not installed on the node (postgresql-client)' >&2; exit 7; }}; \
         {pg} || exit 9; export PGAPPNAME={label}; \
         t=$(mktemp -d \"${{TMPDIR:-/tmp}}/fleetup-dblock.XXXXXX\") && mkfifo \"$t/in\" || {{ echo 'cannot make a FIFO' >&2; exit 9; }}; \
         PGCONNECT_TIMEOUT=10 psql -X -q -At -F '|' -v ON_ERROR_STOP=1 <\"$t/in\" & p=$!; \
         trap 'kill $p 2>/dev/null' HUP INT TERM; \
         exec 3>\"$t/in\"; rm -rf \"$t\"; \
         cat >&3; exec 3>&-; \
         ( sleep 5; kill $p ) >/dev/null 2>&1 </dev/null & k=$!; \
         wait $p; s=$?; kill $k 2>/dev/null; exit $s",
        pg = crate::node::pg_env_from_conn_string(),
        label = quote(holder_label),
    )
}

/// The migration lock, held by a live session on the migrator.
#[derive(Debug)]
pub struct DbLock {
    session: Psql,
}

impl DbLock {
    pub fn host(&self) -> &str {
        &self.session.host
    }

    /// Checks the holding session still holds the lock (it may have died with the database
    /// server or the node's connection).
    pub async fn confirm(&mut self) -> Result<(), DbLockError> {
        let lines = self
            .session
            .ask(&confirm_sql(), "fleetup-held")
            .await
            .map_err(|reason| self.session.lost(reason))?;
        match lines.last().map(String::as_str) {
            Some("fleetup-held|1") => Ok(()),
            _ => Err(self
                .session
                .lost("the session no longer holds the lock".into())),
        }
    }

    /// Unlocks and ends the holding session.
    pub async fn release(mut self) -> Result<(), DbLockError> {
        let unlocked = self.session.ask(&unlock_sql(), "fleetup-unlock").await;
        let host = self.session.host.clone();
        let ended = self.session.process.wait(END_TIMEOUT).await;
        match unlocked {
            Ok(lines) if lines.last().map(String::as_str) == Some("fleetup-unlock|t") => {}
            Ok(_) => {
                return Err(DbLockError::Lost {
                    host,
                    reason: "the session did not hold the lock any more".into(),
                });
            }
            Err(reason) => return Err(DbLockError::Lost { host, reason }),
        }
        // Unlocked: the session's end is tidying only; a failure to end is still reported.
        match ended {
            Ok(_) => Ok(()),
            Err(e) => Err(DbLockError::Failed {
                host,
                reason: format!("the lock is released but its session did not end: {e}"),
            }),
        }
    }
}

/// The `psql` session on the node and what it printed so far.
#[derive(Debug)]
struct Psql {
    host: String,
    process: RemoteProcess,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Psql {
    /// Sends `sql` and collects the stdout lines up to the first one tagged `marker`; `Err`
    /// with what `psql` said when it ends first or takes too long.
    async fn ask(&mut self, sql: &str, marker: &str) -> Result<Vec<String>, String> {
        self.process
            .write(sql.as_bytes())
            .map_err(|e| format!("{e}{}", self.said()))?;
        let deadline = Instant::now() + ANSWER_TIMEOUT;
        let mut lines = Vec::new();
        loop {
            while let Some(i) = self.stdout.iter().position(|b| *b == b'\n') {
                let line: Vec<u8> = self.stdout.drain(..=i).collect();
                let line = String::from_utf8_lossy(&line).trim_end().to_owned();
                let done = line == marker || line.starts_with(&format!("{marker}|"));
                lines.push(line);
                if done {
                    return Ok(lines);
                }
            }
            match timeout_at(deadline, self.process.next_output()).await {
                Ok(Some((OutputStream::Stdout, data))) => self.stdout.extend_from_slice(&data),
                Ok(Some((OutputStream::Stderr, data))) => self.stderr.extend_from_slice(&data),
                Ok(None) => return Err(format!("`psql` ended{}", self.said())),
                Err(_) => {
                    return Err(format!(
                        "`psql` did not answer within {}{}",
                        humantime::format_duration(ANSWER_TIMEOUT),
                        self.said()
                    ));
                }
            }
        }
    }

    /// `: <what psql wrote on stderr>`, redacted, or nothing.
    fn said(&self) -> String {
        let text = String::from_utf8_lossy(&self.stderr);
        let tail: Vec<&str> = text.lines().rev().take(3).collect();
        if tail.is_empty() {
            return String::new();
        }
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        format!(": {}", redact(&tail.join(" / ")))
    }

    fn lost(&self, reason: String) -> DbLockError {
        DbLockError::Lost {
            host: self.host.clone(),
            reason,
        }
    }
}

fn parse_holder(line: &str) -> Option<DbHolder> {
    let mut f = line.splitn(5, '|');
    if f.next()? != "fleetup-holder" {
        return None;
    }
    Some(DbHolder {
        pid: f.next()?.trim().parse().ok()?,
        client: f.next()?.to_owned(),
        since: f.next()?.to_owned(),
        application_name: f.next()?.to_owned(),
    })
}

/// Takes the migration lock of the database `host`'s service uses, in a session that stays
/// open until the returned [`DbLock`] is released or dropped. Refused with
/// [`DbLockError::Held`] (naming the holder) when another session holds it.
pub async fn hold<T: Transport + ?Sized>(
    t: &T,
    host: &ResolvedHost,
    holder_label: &str,
) -> Result<DbLock, DbLockError> {
    let failed = |reason: String| DbLockError::Failed {
        host: host.name.clone(),
        reason,
    };
    let process = t
        .spawn(&command(host, holder_label), &[])
        .await
        .map_err(|e| failed(e.to_string()))?;
    let mut psql = Psql {
        host: host.name.clone(),
        process,
        stdout: Vec::new(),
        stderr: Vec::new(),
    };
    // A holder that lets go between our try and our look is gone: try once more.
    let mut holder = None;
    for _ in 0..2 {
        let lines = psql.ask(&try_sql(), "fleetup-try").await.map_err(failed)?;
        if lines.last().map(String::as_str) == Some("fleetup-try|t") {
            return Ok(DbLock { session: psql });
        }
        let rows = psql
            .ask(&holder_sql(), "fleetup-end")
            .await
            .map_err(failed)?;
        holder = rows.iter().find_map(|l| parse_holder(l));
        if holder.is_some() {
            break;
        }
    }
    let _ = psql.process.wait(END_TIMEOUT).await;
    Err(DbLockError::Held {
        host: host.name.clone(),
        holder,
    })
}

#[cfg(test)]
mod tests {
    use sha2::{Digest, Sha256};

    use super::*;

    #[test]
    fn the_key_is_derived_from_its_name() {
        let d = Sha256::digest(b"fleetup-migrate");
        let k = u64::from_be_bytes(d[..8].try_into().unwrap()) & (u64::MAX >> 1);
        assert_eq!(MIGRATE_LOCK_KEY as u64, k);
        assert_eq!(key_parts(), (1_280_541_965, 3_346_869_460));
    }

    #[test]
    fn holder_rows_parse_with_pipes_in_the_application_name() {
        let h = parse_holder("fleetup-holder|4242|127.0.0.1|2026-01-25T17:45:02Z|fleetup r1 a|b@c")
            .unwrap();
        assert_eq!(h.pid, 4242);
        assert_eq!(h.client, "127.0.0.1");
        assert_eq!(h.application_name, "fleetup r1 a|b@c");
        assert_eq!(
            h.to_string(),
            "`fleetup r1 a|b@c` (backend pid 4242 from `127.0.0.1`, since 2026-01-25T17:45:02Z)"
        );
        assert_eq!(parse_holder("fleetup-end"), None);
        assert_eq!(parse_holder("fleetup-holder|x|a|b|c"), None);
    }

    #[test]
    fn the_command_names_no_connection_string_and_quotes_the_label() {
        let mut h = crate::runner::tests::host("n");
        h.ledger.env_file = Some("/etc/numary/env".into());
        let cmd = command(&h, "fleetup r1 o'ps@lap top");
        assert!(cmd.starts_with(&crate::envfile::loader("/etc/numary/env")));
        assert!(
            cmd.contains("export PGAPPNAME='fleetup r1 o'\\''ps@lap top'"),
            "{cmd}"
        );
        assert!(!cmd.contains("psql \"$NUMARY_STORAGE_POSTGRES_CONN_STRING\""));
        // psql gets no connection argument: libpq's variables carry it.
        assert!(
            cmd.contains("psql -X -q -At -F '|' -v ON_ERROR_STOP=1 <\"$t/in\" &"),
            "{cmd}"
        );
        let (hi, lo) = key_parts();
        assert!(holder_sql().contains(&format!("l.classid = {hi}::oid and l.objid = {lo}::oid")));
    }
}
