//! One SQL connection, SQLite (rusqlite) or PostgreSQL (sync `postgres`), behind a tiny text
//! interface: run statements, read rows as strings. Errors carry the text the real binary's
//! drivers (go-sqlite3, pgx) would print, so stderr looks the same to whoever parses it.

use std::path::Path;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Engine {
    Sqlite,
    Postgres,
}

#[derive(Debug, Clone)]
pub struct DbError(pub String);

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

pub type Rows = Vec<Vec<Option<String>>>;

pub enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres(Box<postgres::Client>),
}

/// A SQL string literal; both engines use standard-conforming strings.
pub fn lit(value: &str) -> String {
    format!("'{}'", value.replace('\'', "''"))
}

/// A quoted SQL identifier.
pub fn ident(value: &str) -> String {
    format!("\"{}\"", value.replace('"', "\"\""))
}

impl Conn {
    /// Opens `path` as mattn/go-sqlite3 does: rollback journal (WAL for releases before the
    /// system store) and a 5 s busy timeout.
    pub fn open_sqlite(path: &Path, wal: bool) -> Result<Self, DbError> {
        let conn = rusqlite::Connection::open(path).map_err(sqlite_error)?;
        conn.busy_timeout(Duration::from_secs(5))
            .map_err(sqlite_error)?;
        if wal {
            conn.query_row("PRAGMA journal_mode=WAL", [], |row| row.get::<_, String>(0))
                .map_err(sqlite_error)?;
        }
        Ok(Self::Sqlite(conn))
    }

    pub fn open_postgres(target: &PgTarget) -> Result<Self, DbError> {
        let mut config = target.config.clone();
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(10));
        }
        match config.connect(postgres::NoTls) {
            Ok(client) => Ok(Self::Postgres(Box::new(client))),
            Err(err) => Err(DbError(format!(
                "failed to connect to `host={} user={} database={}`: {}",
                target.host,
                target.user,
                target.database,
                connect_error_detail(&err, target)
            ))),
        }
    }

    pub fn engine(&self) -> Engine {
        match self {
            Self::Sqlite(_) => Engine::Sqlite,
            Self::Postgres(_) => Engine::Postgres,
        }
    }

    pub fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Self::Sqlite(conn) => conn.execute_batch(sql).map_err(sqlite_error),
            Self::Postgres(client) => client.batch_execute(sql).map_err(|e| pg_error(&e)),
        }
    }

    pub fn query(&mut self, sql: &str) -> Result<Rows, DbError> {
        match self {
            Self::Sqlite(conn) => {
                let mut stmt = conn.prepare(sql).map_err(sqlite_error)?;
                let columns = stmt.column_count();
                let mut rows = stmt.query([]).map_err(sqlite_error)?;
                let mut out = Vec::new();
                while let Some(row) = rows.next().map_err(sqlite_error)? {
                    let mut values = Vec::with_capacity(columns);
                    for i in 0..columns {
                        values.push(sqlite_text(row.get_ref(i).map_err(sqlite_error)?));
                    }
                    out.push(values);
                }
                Ok(out)
            }
            Self::Postgres(client) => {
                let messages = client.simple_query(sql).map_err(|e| pg_error(&e))?;
                Ok(messages
                    .into_iter()
                    .filter_map(|message| match message {
                        postgres::SimpleQueryMessage::Row(row) => Some(
                            (0..row.len())
                                .map(|i| row.get(i).map(str::to_owned))
                                .collect(),
                        ),
                        _ => None,
                    })
                    .collect())
            }
        }
    }

    /// The first column of every row, NULLs skipped.
    pub fn column(&mut self, sql: &str) -> Result<Vec<String>, DbError> {
        Ok(self
            .query(sql)?
            .into_iter()
            .filter_map(|row| row.into_iter().next().flatten())
            .collect())
    }

    pub fn scalar_i64(&mut self, sql: &str) -> Result<i64, DbError> {
        let values = self.column(sql)?;
        Ok(values.first().and_then(|v| v.parse().ok()).unwrap_or(0))
    }
}

fn sqlite_text(value: rusqlite::types::ValueRef<'_>) -> Option<String> {
    use rusqlite::types::ValueRef;
    match value {
        ValueRef::Null => None,
        ValueRef::Integer(i) => Some(i.to_string()),
        ValueRef::Real(f) => Some(f.to_string()),
        ValueRef::Text(t) | ValueRef::Blob(t) => Some(String::from_utf8_lossy(t).into_owned()),
    }
}

/// go-sqlite3 prints SQLite's own message (`database is locked`, `no such table: x`).
pub fn sqlite_error(err: rusqlite::Error) -> DbError {
    match err {
        rusqlite::Error::SqliteFailure(code, Some(message)) if !message.is_empty() => {
            let _ = code;
            DbError(message)
        }
        other => DbError(other.to_string()),
    }
}

/// pgconn's `PgError.Error()`: `SEVERITY: message (SQLSTATE code)`.
pub fn pg_error(err: &postgres::Error) -> DbError {
    match err.as_db_error() {
        Some(db) => DbError(format!(
            "{}: {} (SQLSTATE {})",
            db.severity(),
            db.message(),
            db.code().code()
        )),
        None => DbError(err.to_string()),
    }
}

fn connect_error_detail(err: &postgres::Error, target: &PgTarget) -> String {
    if let Some(db) = err.as_db_error() {
        return format!(
            "server error ({}: {} (SQLSTATE {}))",
            db.severity(),
            db.message(),
            db.code().code()
        );
    }
    let io = std::error::Error::source(err).and_then(|s| s.downcast_ref::<std::io::Error>());
    match io {
        Some(io) => {
            let reason = match io.kind() {
                std::io::ErrorKind::ConnectionRefused => "connect: connection refused".to_owned(),
                std::io::ErrorKind::TimedOut => "i/o timeout".to_owned(),
                _ => io.to_string(),
            };
            format!(
                "dial error (dial tcp {}:{}: {})",
                target.host, target.port, reason
            )
        }
        None => err.to_string(),
    }
}

/// Where a connection string points, without its password.
#[derive(Clone)]
pub struct PgTarget {
    pub config: postgres::Config,
    pub host: String,
    pub port: u16,
    pub user: String,
    pub database: String,
}

impl PgTarget {
    pub fn parse(conn_string: &str) -> Result<Self, DbError> {
        let mut config: postgres::Config = conn_string.parse().map_err(|e: postgres::Error| {
            DbError(format!("cannot parse `{}`: {}", redact(conn_string), e))
        })?;
        let user = match config.get_user() {
            Some(user) => user.to_owned(),
            None => {
                let user = os_user();
                config.user(&user);
                user
            }
        };
        let host = match config.get_hosts().first() {
            Some(postgres::config::Host::Tcp(h)) => h.clone(),
            Some(postgres::config::Host::Unix(p)) => p.display().to_string(),
            None => {
                config.host("localhost");
                "localhost".to_owned()
            }
        };
        let port = config.get_ports().first().copied().unwrap_or(5432);
        let database = config
            .get_dbname()
            .map(str::to_owned)
            .unwrap_or_else(|| user.clone());
        Ok(Self {
            config,
            host,
            port,
            user,
            database,
        })
    }

    /// The storage identity used to tell whether two processes share a database.
    pub fn identity(&self) -> String {
        // `localhost` and `127.0.0.1` are the same server: compare addresses, not spellings.
        let host = std::net::ToSocketAddrs::to_socket_addrs(&(self.host.as_str(), self.port))
            .ok()
            .and_then(|mut addrs| addrs.find(std::net::SocketAddr::is_ipv4))
            .map_or_else(|| self.host.clone(), |addr| addr.ip().to_string());
        format!("postgres://{host}:{}/{}", self.port, self.database)
    }
}

fn os_user() -> String {
    std::env::var("USER")
        .ok()
        .filter(|u| !u.is_empty())
        .unwrap_or_else(|| {
            // SAFETY: getpwuid returns a pointer into static storage or NULL; we copy the name out
            // immediately and the process is single-threaded at this point.
            unsafe {
                let pw = libc::getpwuid(libc::getuid());
                if pw.is_null() {
                    "root".to_owned()
                } else {
                    std::ffi::CStr::from_ptr((*pw).pw_name)
                        .to_string_lossy()
                        .into_owned()
                }
            }
        })
}

/// Removes the password from a URL-form connection string for messages.
pub fn redact(conn_string: &str) -> String {
    if let Some((scheme, rest)) = conn_string.split_once("://")
        && let Some((userinfo, tail)) = rest.split_once('@')
        && let Some((user, _)) = userinfo.split_once(':')
    {
        return format!("{scheme}://{user}:xxxxx@{tail}");
    }
    conn_string.to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_and_identifiers_are_escaped() {
        assert_eq!(lit("it's"), "'it''s'");
        assert_eq!(ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn redact_hides_password_only() {
        assert_eq!(
            redact("postgresql://u:secret@h:1/db"),
            "postgresql://u:xxxxx@h:1/db"
        );
        assert_eq!(
            redact("postgresql://localhost/postgres"),
            "postgresql://localhost/postgres"
        );
    }

    #[test]
    fn target_identity_ignores_credentials() {
        let t = PgTarget::parse("postgresql://u:pw@127.0.0.1:55432/ledgers").unwrap();
        assert_eq!(t.user, "u");
        assert_eq!(t.identity(), "postgres://127.0.0.1:55432/ledgers");
        let t = PgTarget::parse("postgresql://other@localhost:55432/ledgers").unwrap();
        assert_eq!(t.identity(), "postgres://127.0.0.1:55432/ledgers");
    }
}
