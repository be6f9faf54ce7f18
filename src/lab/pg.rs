//! The lab's Postgres database: one fresh database per lab, created in the server the operator
//! names and dropped by `lab down`. Uses the system's `psql`, with the connection's parts passed
//! through libpq's `PG*` environment so the password never appears on a command line.

use std::process::{Command, Stdio};

use anyhow::{Context, bail};

use crate::error::Failure;
use crate::exit_code;
use crate::redact::redact;

/// A `postgres://` or `postgresql://` URL, split where the lab needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PgUrl {
    scheme: String,
    /// `user:password@host:port`, still percent-encoded.
    authority: String,
    pub database: String,
    /// `?a=b&c=d` or empty.
    query: String,
}

impl PgUrl {
    pub fn parse(url: &str) -> anyhow::Result<PgUrl> {
        let bad = || {
            Failure::usage(format!("`{}` is not a Postgres URL", redact(url)))
                .hint("expected `postgresql://USER:PASSWORD@HOST:PORT/DATABASE`")
        };
        let (scheme, rest) = url.split_once("://").ok_or_else(bad)?;
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(bad().into());
        }
        let (before_query, query) = match rest.find('?') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        let (authority, database) = before_query
            .split_once('/')
            .unwrap_or((before_query, "postgres"));
        Ok(PgUrl {
            scheme: scheme.to_owned(),
            authority: authority.to_owned(),
            database: if database.is_empty() {
                "postgres".to_owned()
            } else {
                percent_decode(database)
            },
            query: query.to_owned(),
        })
    }

    /// The same server and credentials, another database.
    pub fn with_database(&self, database: &str) -> String {
        format!(
            "{}://{}/{}{}",
            self.scheme, self.authority, database, self.query
        )
    }

    /// The URL with its password masked, for messages.
    pub fn redacted(&self) -> String {
        redact(&self.with_database(&self.database))
    }

    /// libpq environment variables equivalent to this URL.
    fn env(&self) -> Vec<(&'static str, String)> {
        let (userinfo, hostport) = match self.authority.rsplit_once('@') {
            Some((u, h)) => (Some(u), h),
            None => (None, self.authority.as_str()),
        };
        let mut env = vec![("PGDATABASE", self.database.clone())];
        if let Some(u) = userinfo {
            let (user, password) = match u.split_once(':') {
                Some((user, pw)) => (user, Some(pw)),
                None => (u, None),
            };
            if !user.is_empty() {
                env.push(("PGUSER", percent_decode(user)));
            }
            if let Some(pw) = password {
                env.push(("PGPASSWORD", percent_decode(pw)));
            }
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            match v6.split_once(']') {
                Some((h, rest)) => (h, rest.strip_prefix(':')),
                None => (v6, None),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if !host.is_empty() {
            env.push(("PGHOST", percent_decode(host)));
        }
        if let Some(p) = port.filter(|p| !p.is_empty()) {
            env.push(("PGPORT", p.to_owned()));
        }
        for pair in self.query.trim_start_matches('?').split('&') {
            if let Some(("sslmode", v)) = pair.split_once('=') {
                env.push(("PGSSLMODE", percent_decode(v)));
            }
        }
        env
    }

    /// Runs a Postgres client tool (`psql`, `pg_dump`, `pg_restore`) against this URL's
    /// database and returns its stdout. Errors never show the password.
    pub fn run(&self, tool: &str, args: &[&str]) -> anyhow::Result<Vec<u8>> {
        let program = find_client(tool)?;
        let out = Command::new(program)
            .args(args)
            .env_remove("PGSERVICE")
            .envs(self.env())
            .stdin(Stdio::null())
            .output()
            .with_context(|| format!("cannot run `{tool}`"))?;
        if !out.status.success() {
            bail!(
                "`{tool}` failed on `{}` ({}): {}",
                self.redacted(),
                out.status,
                redact(String::from_utf8_lossy(&out.stderr).trim())
            );
        }
        Ok(out.stdout)
    }

    /// Runs SQL with `psql`, stopping at the first error.
    pub fn execute(&self, sql: &str) -> anyhow::Result<()> {
        self.run("psql", &["-X", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .map(drop)
    }

    /// The rows of a query, one line per row, columns separated by `|`.
    pub fn query(&self, sql: &str) -> anyhow::Result<String> {
        let out = self.run("psql", &["-X", "-qAt", "-v", "ON_ERROR_STOP=1", "-c", sql])?;
        Ok(String::from_utf8_lossy(&out).trim_end().to_owned())
    }

    /// SHA-256 of a plain `pg_dump` of the database (schema and data), so a test can prove a
    /// command left it unchanged. Lines that differ between two dumps of the same data (the
    /// random `\restrict` key of recent `pg_dump` versions) are left out.
    pub fn dump_digest(&self) -> anyhow::Result<String> {
        use sha2::{Digest, Sha256};
        let dump = self.run(
            "pg_dump",
            &["--no-owner", "--no-privileges", "--format=plain"],
        )?;
        let mut h = Sha256::new();
        for line in String::from_utf8_lossy(&dump).lines() {
            if line.starts_with("\\restrict") || line.starts_with("\\unrestrict") {
                continue;
            }
            h.update(line.as_bytes());
            h.update(b"\n");
        }
        Ok(hex::encode(h.finalize()))
    }
}

/// A fresh database name, `fleetup_lab_` and 12 random hex digits.
pub fn unique_database_name() -> String {
    use rand::Rng;
    let n: u64 = rand::thread_rng().r#gen();
    format!("fleetup_lab_{:012x}", n & 0xffff_ffff_ffff)
}

/// Creates `name` (a name from [`unique_database_name`]) in the server of `server`.
pub fn create_database(server: &PgUrl, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    server
        .execute(&format!("CREATE DATABASE \"{name}\""))
        .with_context(|| format!("cannot create database `{name}`"))
}

/// Drops `name`, closing its sessions first; no error when it is already gone.
pub fn drop_database(server: &PgUrl, name: &str) -> anyhow::Result<()> {
    check_name(name)?;
    server
        .execute(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
        .with_context(|| format!("cannot drop database `{name}`"))
}

fn check_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
    {
        bail!("`{name}` is not a lab database name");
    }
    Ok(())
}

fn find_client(tool: &str) -> anyhow::Result<std::path::PathBuf> {
    let in_path = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .unwrap_or_default();
    in_path
        .into_iter()
        .chain(["/usr/bin".into(), "/usr/local/bin".into()])
        .map(|d| d.join(tool))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            Failure::new(exit_code::FAILURE, format!("`{tool}` is not installed"))
                .hint(
                    "the Postgres lab needs the client tools: `apt-get install postgresql-client`",
                )
                .into()
        })
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(url: &str) -> Vec<(&'static str, String)> {
        PgUrl::parse(url).unwrap().env()
    }

    #[test]
    fn splits_a_url_into_libpq_variables() {
        let env =
            env_of("postgresql://fleetup:p%40ss%3Aw@127.0.0.1:55432/postgres?sslmode=disable");
        assert_eq!(
            env,
            vec![
                ("PGDATABASE", "postgres".to_owned()),
                ("PGUSER", "fleetup".to_owned()),
                ("PGPASSWORD", "p@ss:w".to_owned()),
                ("PGHOST", "127.0.0.1".to_owned()),
                ("PGPORT", "55432".to_owned()),
                ("PGSSLMODE", "disable".to_owned()),
            ]
        );
        let v6 = env_of("postgres://u@[::1]:5433");
        assert!(v6.contains(&("PGHOST", "::1".to_owned())));
        assert!(v6.contains(&("PGPORT", "5433".to_owned())));
        assert!(v6.contains(&("PGDATABASE", "postgres".to_owned())));
    }

    #[test]
    fn swaps_the_database_and_keeps_the_rest() {
        let url = PgUrl::parse("postgresql://u:secret@h:1/postgres?sslmode=disable").unwrap();
        assert_eq!(
            url.with_database("fleetup_lab_1"),
            "postgresql://u:secret@h:1/fleetup_lab_1?sslmode=disable"
        );
        assert!(!url.redacted().contains("secret"), "{}", url.redacted());
    }

    #[test]
    fn rejects_other_schemes_without_echoing_the_password() {
        let err = PgUrl::parse("mysql://u:hunter2@h/db").unwrap_err();
        assert!(!format!("{err:#}").contains("hunter2"), "{err:#}");
        assert!(PgUrl::parse("not a url").is_err());
    }

    #[test]
    fn database_names_are_fresh_and_safe() {
        let a = unique_database_name();
        assert!(a.starts_with("fleetup_lab_") && a.len() == "fleetup_lab_".len() + 12);
        assert_ne!(a, unique_database_name());
        assert!(check_name(&a).is_ok());
        assert!(check_name("x\"; DROP DATABASE postgres; --").is_err());
    }

    #[test]
    fn creates_and_drops_a_database_in_the_test_server() {
        let url = std::env::var("FLEETUP_TEST_PG_URL")
            .expect("FLEETUP_TEST_PG_URL must name a Postgres server (scripts/pg.sh start)");
        let server = PgUrl::parse(&url).unwrap();
        let name = unique_database_name();
        create_database(&server, &name).unwrap();
        let lab = PgUrl::parse(&server.with_database(&name)).unwrap();
        lab.execute("CREATE TABLE t (x int)").unwrap();
        let empty = lab.dump_digest().unwrap();
        assert_eq!(lab.dump_digest().unwrap(), empty, "a dump digest is stable");
        lab.execute("INSERT INTO t VALUES (1), (2)").unwrap();
        assert_eq!(lab.query("SELECT count(*), sum(x) FROM t").unwrap(), "2|3");
        assert_ne!(lab.dump_digest().unwrap(), empty, "data counts");
        drop_database(&server, &name).unwrap();
        assert!(lab.execute("SELECT 1").is_err(), "the database is gone");
        drop_database(&server, &name).unwrap();
    }
}
