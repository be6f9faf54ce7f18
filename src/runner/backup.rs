//! The backup step, verified before anything changes. Postgres: `pg_dump --format=custom` on the
//! migrator, the connection string taken from the service's environment inside the remote shell
//! (never on a command line fleetup builds, never in output), read back with `pg_restore --list`.
//! SQLite: every `<db_name>_*.db` copied on each node, SHA-256 of each original and copy compared.

use std::sync::Arc;

use crate::events::Artefact;
use crate::facts::StorageDriver;
use crate::plan::commands::DUMP_FILE;
use crate::plan::{Action, Step};
use crate::ssh::Transport;

use super::ctx::{Checked, Shared, StepError, per_host};
use super::params;

/// One file of a SQLite backup: name, size, SHA-256.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileSum {
    pub name: String,
    pub bytes: u64,
    pub sha256: String,
}

/// What the SQLite backup script reported.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SqliteBackup {
    pub dir: String,
    pub db_name: String,
    pub files: Vec<FileSum>,
}

/// Parses the SQLite backup output and checks every copy against its original.
pub fn parse_sqlite_backup(stdout: &str) -> Result<SqliteBackup, String> {
    let mut out = SqliteBackup::default();
    let (mut orig, mut copy) = (Vec::new(), Vec::new());
    let mut section = "";
    for line in stdout.lines().map(str::trim_end).filter(|l| !l.is_empty()) {
        if let Some(d) = line.strip_prefix("==dir ") {
            out.dir = d.to_string();
        } else if let Some(n) = line.strip_prefix("==name ") {
            out.db_name = n.to_string();
        } else if line == "==orig" || line == "==copy" {
            section = line;
        } else {
            let mut parts = line.splitn(3, ' ');
            let (Some(sha), Some(size), Some(name)) = (parts.next(), parts.next(), parts.next())
            else {
                return Err(format!("unexpected line `{line}`"));
            };
            let sum = FileSum {
                name: name.to_string(),
                bytes: size
                    .parse()
                    .map_err(|_| format!("unexpected size in `{line}`"))?,
                sha256: sha.to_string(),
            };
            match section {
                "==orig" => orig.push(sum),
                "==copy" => copy.push(sum),
                _ => return Err(format!("unexpected line `{line}`")),
            }
        }
    }
    if orig.is_empty() {
        return Err("no file was backed up".into());
    }
    if orig != copy {
        let bad: Vec<String> = orig
            .iter()
            .filter(|o| !copy.contains(o))
            .map(|o| format!("`{}`", o.name))
            .collect();
        return Err(format!(
            "the copies differ from the originals: {}",
            if bad.is_empty() {
                "a copy is missing".to_string()
            } else {
                bad.join(", ")
            }
        ));
    }
    out.files = orig;
    Ok(out)
}

/// What the Postgres backup script reported: the schemas in the dump, its SHA-256 and size.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PostgresBackup {
    pub schemas: Vec<String>,
    pub sha256: String,
    pub bytes: u64,
}

pub fn parse_postgres_backup(stdout: &str) -> Result<PostgresBackup, String> {
    let mut out = PostgresBackup::default();
    let mut seen = false;
    for line in stdout.lines().map(str::trim_end) {
        if let Some(s) = line.strip_prefix("==schema ") {
            out.schemas.push(s.trim_matches('"').to_string());
        } else if let Some(rest) = line.strip_prefix("==dump ") {
            let (sha, size) = rest
                .split_once(' ')
                .ok_or_else(|| format!("unexpected line `{line}`"))?;
            out.sha256 = sha.to_string();
            out.bytes = size
                .parse()
                .map_err(|_| format!("unexpected size in `{line}`"))?;
            seen = true;
        }
    }
    if !seen {
        return Err("no checksum line".into());
    }
    Ok(out)
}

/// Ledgers the node is known to hold (facts) that the backup does not contain: a sign the
/// service's environment points somewhere else than where the ledgers are.
fn missing(known: &[String], present: impl Fn(&str) -> bool) -> Vec<&String> {
    known.iter().filter(|l| !present(l)).collect()
}

pub async fn run<T: Transport + 'static>(
    sh: &Arc<Shared<T>>,
    step: &Step,
) -> Result<(), StepError> {
    per_host(sh, step, |sh, step, name| async move {
        one(&sh, &step, &name).await
    })
    .await
}

async fn one<T: Transport>(sh: &Shared<T>, step: &Step, name: &str) -> Result<(), StepError> {
    let p = params::of(sh, step, name, Action::backup)?;
    let dir = p.dir_for(&sh.cfg.run_id);
    let known: Vec<String> = sh
        .facts(name)
        .map(|f| f.ledgers.clone())
        .unwrap_or_default();
    sh.change(|c| c.backups.push((name.to_string(), dir.clone())));
    let wrong_env = |mut e: StepError| {
        e.code = crate::exit_code::BLOCKED;
        e.hints.push("the service's environment file (`ledger.env_file`) must name the storage the service really uses".into());
        e
    };
    let names = |l: &[&String]| {
        l.iter()
            .map(|n| format!("`{n}`"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let cmd = p.command(&dir);
    let artefacts = match p.driver {
        StorageDriver::Postgres => {
            sh.run_checked(step, name, &cmd, "the Postgres backup", None, |out| {
                let dump = parse_postgres_backup(&out.stdout_lossy())
                    .map_err(|e| sh.error(step, name, format!("the Postgres backup: {e}")))?;
                let lost = missing(&known, |l| dump.schemas.iter().any(|s| s == l));
                if !lost.is_empty() {
                    return Err(wrong_env(sh.error(
                        step,
                        name,
                        format!(
                            "the dump has no schema for the ledger(s) {} the node reported: wrong storage environment",
                            names(&lost)
                        ),
                    )));
                }
                let path = format!("{dir}/{DUMP_FILE}");
                let message = format!(
                    "`{path}`: {} bytes, sha256 `{}`, {} schema(s), read back by `pg_restore --list`",
                    dump.bytes,
                    dump.sha256,
                    dump.schemas.len()
                );
                let artefacts = vec![Artefact {
                    kind: "backup".into(),
                    host: name.to_string(),
                    path,
                    bytes: Some(dump.bytes),
                    sha256: Some(dump.sha256),
                }];
                Ok(Checked::with(artefacts.clone(), message, artefacts))
            })
            .await?
        }
        StorageDriver::Sqlite => {
            sh.run_checked(step, name, &cmd, "the SQLite backup", None, |out| {
                let backup = parse_sqlite_backup(&out.stdout_lossy())
                    .map_err(|e| sh.error(step, name, format!("the SQLite backup: {e}")))?;
                let lost = missing(&known, |l| {
                    backup
                        .files
                        .iter()
                        .any(|f| f.name == format!("{}_{l}.db", backup.db_name))
                });
                if !lost.is_empty() {
                    return Err(wrong_env(sh.error(
                        step,
                        name,
                        format!(
                            "`{}` holds no file for the ledger(s) {} the node reported: wrong storage environment",
                            backup.dir,
                            names(&lost)
                        ),
                    )));
                }
                let artefacts: Vec<Artefact> = backup
                    .files
                    .iter()
                    .map(|f| Artefact {
                        kind: "backup".into(),
                        host: name.to_string(),
                        path: format!("{dir}/{}", f.name),
                        bytes: Some(f.bytes),
                        sha256: Some(f.sha256.clone()),
                    })
                    .collect();
                let message = format!(
                    "`{dir}`: {} file(s) copied from `{}`, each copy's SHA-256 equal to its original's",
                    artefacts.len(),
                    backup.dir
                );
                Ok(Checked::with(artefacts.clone(), message, artefacts))
            })
            .await
            .map_err(|e| {
                // No ledger file at all while the fleet is known to hold ledgers.
                let fleet_has_ledgers = sh.facts.values().any(|f| !f.ledgers.is_empty());
                if e.stderr.as_deref().is_some_and(|s| s.contains(" file in ")) && fleet_has_ledgers {
                    let mut e = wrong_env(e);
                    e.message = format!("{}: no ledger file where the service's environment points, while the fleet has ledgers: wrong storage environment", e.message);
                    e
                } else {
                    e
                }
            })?
        }
    };
    sh.change(|c| c.artefacts.extend(artefacts));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::commands::backup_sqlite;
    use crate::shell::quote;

    #[test]
    fn sqlite_backup_output_checks_every_copy() {
        let ok = "==dir /d\n==name numary\n==orig\naa 10 numary__system.db\nbb 20 numary_default.db\n==copy\naa 10 numary__system.db\nbb 20 numary_default.db\n";
        let b = parse_sqlite_backup(ok).unwrap();
        assert_eq!(b.dir, "/d");
        assert_eq!(b.db_name, "numary");
        assert_eq!(b.files.len(), 2);
        assert_eq!(b.files[1].bytes, 20);

        let differs = ok.replace(
            "==copy\naa 10 numary__system.db\nbb 20",
            "==copy\naa 10 numary__system.db\ncc 20",
        );
        let err = parse_sqlite_backup(&differs).unwrap_err();
        assert!(err.contains("`numary_default.db`"), "{err}");
        let short = "==orig\naa 10 a.db\n==copy\n";
        assert!(parse_sqlite_backup(short).is_err());
        assert!(parse_sqlite_backup("==dir /d\n").is_err());
    }

    #[test]
    fn postgres_backup_output_lists_schemas_and_checksum() {
        let out = "==schema _system\n==schema default\n==schema \"pay ments\"\n==dump abc 1234\n";
        let b = parse_postgres_backup(out).unwrap();
        assert_eq!(b.schemas, vec!["_system", "default", "pay ments"]);
        assert_eq!((b.sha256.as_str(), b.bytes), ("abc", 1234));
        assert!(parse_postgres_backup("==schema x\n").is_err());
    }

    /// The SQLite script run by a real shell on a real dir: the copy lands in the run's dir,
    /// with the env file's variables, and the report parses.
    #[test]
    fn sqlite_script_copies_with_the_service_environment() {
        let tmp = tempfile::tempdir().unwrap();
        let data = tmp.path().join("da ta");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("led_default.db"), b"one").unwrap();
        std::fs::write(data.join("led__system.db"), b"two").unwrap();
        std::fs::write(data.join("numary_other.db"), b"not ours").unwrap();
        let env = tmp.path().join("env");
        std::fs::write(
            &env,
            format!(
                "NUMARY_STORAGE_DIR={}\nNUMARY_STORAGE_SQLITE_DB_NAME=led\n",
                quote(&data.to_string_lossy())
            ),
        )
        .unwrap();
        let mut host = crate::runner::tests::host("n");
        host.ledger.env_file = Some(env.to_string_lossy().into_owned());
        let dst = tmp.path().join("backups/run 1");
        let out = crate::envfile::sh_with_env_file(
            &backup_sqlite(host.ledger.env_file.as_deref(), &dst.to_string_lossy()),
            &env,
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let b = parse_sqlite_backup(&String::from_utf8_lossy(&out.stdout)).unwrap();
        let names: Vec<&str> = b.files.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(names, vec!["led__system.db", "led_default.db"]);
        assert_eq!(std::fs::read(dst.join("led_default.db")).unwrap(), b"one");
        assert!(!dst.join("numary_other.db").exists());

        // An empty storage dir is an error, not an empty backup.
        std::fs::write(
            &env,
            format!(
                "NUMARY_STORAGE_DIR={}\n",
                quote(&tmp.path().join("backups").to_string_lossy())
            ),
        )
        .unwrap();
        let out = crate::envfile::sh_with_env_file(
            &backup_sqlite(
                host.ledger.env_file.as_deref(),
                &tmp.path().join("b2").to_string_lossy(),
            ),
            &env,
        );
        assert_eq!(out.status.code(), Some(3));
        assert!(String::from_utf8_lossy(&out.stderr).contains("no numary_*.db file in"));
    }
}
