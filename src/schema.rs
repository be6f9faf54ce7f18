//! The ledgers' schema state: which migration numbers each numary release ships (from the
//! contract's table), and a read-only probe of what a storage holds (`sqlite3 -readonly` on the
//! SQLite files, one `psql` query on Postgres, connection through libpq's variables). The
//! migrate step is already done when every registered ledger holds its target's last migration:
//! a re-run after a crash then never runs a storage command again next to a node that serves.

use std::collections::BTreeMap;

use crate::facts::StorageDriver;
use crate::inventory::ResolvedHost;
use crate::node;
use crate::shell::quote;
use crate::version::Version;

/// The highest migration number `v` ships for `driver`, `None` for releases before the
/// `migrations` table (1.3.2) or outside 1.x. Postgres-only migrations of 1.7+ still record their
/// row on SQLite; 1.4-1.6 kept one directory per engine (SQLite 0-1, and 2 from 1.6).
pub fn last_migration(v: &Version, driver: StorageDriver) -> Option<u32> {
    if v.major() != 1 {
        return None;
    }
    let (minor, patch) = (v.minor(), v.patch());
    let sqlite = driver == StorageDriver::Sqlite;
    Some(match minor {
        0..=2 => return None,
        3 if patch < 2 => return None,
        3 | 5 if sqlite => 1,
        3 | 5 => 7,
        4 if sqlite => 1,
        4 => 6,
        6 if sqlite => 2,
        6 => 8,
        7 if patch >= 5 => 11,
        7 => 10,
        8 if patch == 0 => 16,
        8 => 17,
        9 if patch >= 6 => 20,
        9 if patch >= 4 => 19,
        9 => 17,
        10 if patch >= 3 => 20,
        10 if patch >= 1 => 19,
        10 => 17,
        _ => 21,
    })
}

/// The shell command printing `ledger|NAME` for each registered ledger and `mig|NAME|N` for each
/// migration row it holds, read-only, with the service's environment.
pub fn state_command(host: &ResolvedHost, driver: StorageDriver) -> String {
    let env = crate::node::env_prefix(host);
    match driver {
        StorageDriver::Sqlite => format!(
            "{env}command -v sqlite3 >/dev/null 2>&1 || {{ echo 'sqlite3 is not installed on the node' >&2; exit 7; }}; \
             src=\"${{NUMARY_STORAGE_DIR:-$HOME/.numary/data}}\"; n=\"${{NUMARY_STORAGE_SQLITE_DB_NAME:-numary}}\"; \
             s=\"$src/${{n}}__system.db\"; [ -f \"$s\" ] || {{ echo \"no $s\" >&2; exit 3; }}; \
             sqlite3 -readonly \"$s\" 'select ledger from ledgers' > /dev/null || exit 4; \
             sqlite3 -readonly \"$s\" 'select ledger from ledgers' | while IFS= read -r l; do \
               printf 'ledger|%s\\n' \"$l\"; f=\"$src/${{n}}_$l.db\"; [ -f \"$f\" ] || continue; \
               sqlite3 -readonly \"$f\" 'select version from migrations' 2>/dev/null | while IFS= read -r v; do printf 'mig|%s|%s\\n' \"$l\" \"$v\"; done; \
             done"
        ),
        StorageDriver::Postgres => format!(
            "{env}command -v psql >/dev/null 2>&1 || {{ echo 'psql is not installed on the node (postgresql-client)' >&2; exit 7; }}; \
             {} && {}PGCONNECT_TIMEOUT=10 exec psql -X -q -At -F '|' -v ON_ERROR_STOP=1 -c {}",
            node::pg_env_from_conn_string(),
            node::pg_probe_application(),
            quote(POSTGRES_STATE_QUERY),
        ),
    }
}

/// The Postgres half of [`state_command`] for the facts probe: with the service's environment,
/// prints nothing unless the driver is `postgres` and `psql` is installed.
pub fn postgres_probe(host: &ResolvedHost) -> String {
    format!(
        "{env}[ \"${{NUMARY_STORAGE_DRIVER:-}}\" = postgres ] && command -v psql >/dev/null 2>&1 || exit 0; \
         {} && {}PGCONNECT_TIMEOUT=10 exec psql -X -q -At -F '|' -v ON_ERROR_STOP=1 -c {}",
        node::pg_env_from_conn_string(),
        node::pg_probe_application(),
        quote(POSTGRES_STATE_QUERY),
        env = node::env_prefix(host),
    )
}

/// Every registered ledger, then each migration row of each (one query: `query_to_xml` reads a
/// table whose name is data, without a function or a second round trip).
const POSTGRES_STATE_QUERY: &str = "select 'ledger', ledger from _system.ledgers \
     union all select 'mig|' || l.ledger, x.version from _system.ledgers l, \
     xmltable('/table/row' passing query_to_xml(format('select version from %I.migrations', l.ledger), false, false, '') columns version text path 'version') x \
     where to_regclass(format('%I.migrations', l.ledger)) is not null";

/// Each registered ledger with the migration numbers it holds (rows that are not numbers are
/// ignored: they never count as a migration done).
pub type SchemaState = BTreeMap<String, Vec<u32>>;

/// Parses [`state_command`]'s output.
pub fn parse_state(stdout: &str) -> SchemaState {
    let mut out = SchemaState::new();
    for line in stdout.lines().map(|l| l.trim_end_matches('\r')) {
        if let Some(name) = line.strip_prefix("ledger|") {
            out.entry(name.to_string()).or_default();
        } else if let Some(rest) = line.strip_prefix("mig|") {
            let Some((name, v)) = rest.rsplit_once('|') else {
                continue;
            };
            if let Ok(n) = v.trim().parse::<u32>() {
                out.entry(name.to_string()).or_default().push(n);
            }
        }
    }
    for versions in out.values_mut() {
        versions.sort_unstable();
        versions.dedup();
    }
    out
}

/// Whether a storage in `state` is migrated for `target`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Migrated {
    /// Every registered ledger holds every migration up to the target's last one.
    Done { ledgers: Vec<String> },
    /// These ledgers still lack migrations of the target.
    Pending { ledgers: Vec<String> },
    /// Nothing can be told (no ledger registered, or a release without a `migrations` table).
    Unknown(String),
}

pub fn migrated(state: &SchemaState, target: &Version, driver: StorageDriver) -> Migrated {
    let Some(last) = last_migration(target, driver) else {
        return Migrated::Unknown(format!("`{target}` keeps no migration record"));
    };
    if state.is_empty() {
        return Migrated::Unknown("no ledger is registered".into());
    }
    let pending: Vec<String> = state
        .iter()
        .filter(|(_, v)| !(0..=last).all(|n| v.contains(&n)))
        .map(|(l, _)| l.clone())
        .collect();
    if pending.is_empty() {
        Migrated::Done {
            ledgers: state.keys().cloned().collect(),
        }
    } else {
        Migrated::Pending { ledgers: pending }
    }
}

/// Whether a ledger in `state` holds a migration `v` does not ship (a newer release migrated
/// it): `v` must then not serve it. False when `v` keeps no migration record.
pub fn holds_beyond(state: &SchemaState, v: &Version, driver: StorageDriver) -> bool {
    let Some(last) = last_migration(v, driver) else {
        return false;
    };
    state.values().any(|m| m.iter().any(|n| *n > last))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap()
    }

    #[test]
    fn last_migration_follows_the_contract_table() {
        let pg = StorageDriver::Postgres;
        for (version, last) in [
            ("1.4.6", 6),
            ("1.5.0", 7),
            ("1.6.1", 8),
            ("1.7.4", 10),
            ("1.7.6", 11),
            ("1.8.0", 16),
            ("1.8.2", 17),
            ("1.9.3", 17),
            ("1.9.4", 19),
            ("1.9.6", 20),
            ("1.10.0", 17),
            ("1.10.2", 19),
            ("1.10.16", 20),
            ("1.11.0", 21),
        ] {
            assert_eq!(last_migration(&v(version), pg), Some(last), "{version}");
        }
        assert_eq!(last_migration(&v("1.6.1"), StorageDriver::Sqlite), Some(2));
        assert_eq!(last_migration(&v("1.8.2"), StorageDriver::Sqlite), Some(17));
        assert_eq!(last_migration(&v("1.2.1"), pg), None);
        assert_eq!(last_migration(&v("2.0.0"), pg), None);
    }

    #[test]
    fn a_storage_is_migrated_when_every_ledger_holds_every_number() {
        let out = "ledger|default\nledger|pay|ments\nmig|default|0\nmig|pay|ments|0\n";
        let mut text = out.to_string();
        for n in 1..=17 {
            text.push_str(&format!("mig|default|{n}\r\n"));
        }
        let state = parse_state(&text);
        assert_eq!(state["pay|ments"], vec![0]);
        assert_eq!(
            migrated(&state, &v("1.8.2"), StorageDriver::Postgres),
            Migrated::Pending {
                ledgers: vec!["pay|ments".into()]
            }
        );
        for n in 1..=17 {
            text.push_str(&format!("mig|pay|ments|{n}\n"));
        }
        let state = parse_state(&text);
        assert!(matches!(
            migrated(&state, &v("1.8.2"), StorageDriver::Postgres),
            Migrated::Done { .. }
        ));
        // 1.9.4 needs 18 and 19 too.
        assert!(matches!(
            migrated(&state, &v("1.9.4"), StorageDriver::Postgres),
            Migrated::Pending { .. }
        ));
        assert!(matches!(
            migrated(&SchemaState::new(), &v("1.8.2"), StorageDriver::Postgres),
            Migrated::Unknown(_)
        ));
    }

    #[test]
    fn the_sqlite_probe_reads_real_files_read_only() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let run = |sql: &str, file: &str| {
            let ok = std::process::Command::new("sqlite3")
                .arg(d.join(file))
                .arg(sql)
                .status()
                .unwrap()
                .success();
            assert!(ok);
        };
        run(
            "create table ledgers(ledger varchar primary key, addedAt timestamp); insert into ledgers values ('default', 0), ('b''q', 0);",
            "numary__system.db",
        );
        run(
            "create table migrations(version varchar, date varchar); insert into migrations values ('0',''),('1','');",
            "numary_default.db",
        );
        let env = d.join("env");
        std::fs::write(&env, format!("NUMARY_STORAGE_DIR={}\n", d.display())).unwrap();
        let mut h = crate::runner::tests::host("n");
        h.ledger.env_file = Some(env.to_string_lossy().into_owned());
        let out = crate::envfile::sh_with_env_file(&state_command(&h, StorageDriver::Sqlite), &env);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let state = parse_state(&String::from_utf8_lossy(&out.stdout));
        assert_eq!(state["default"], vec![0, 1]);
        assert_eq!(state["b'q"], Vec::<u32>::new());
    }
}
