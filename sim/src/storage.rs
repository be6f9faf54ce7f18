//! The ledger storage, shaped like the real `sqlstorage.Driver`: driver init (extensions,
//! `_system` registry), `GetLedgerStore` with its register-on-lookup bug, the migration runner
//! (all pending migrations in one transaction), and the transaction writes and reads the API
//! and `sim seed` share. Misuse checks and injected faults hook in here so every path sees them.

use std::collections::HashMap;
use std::collections::hash_map::Entry;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use serde_json::{Value, json};

use crate::config::Config;
use crate::db::{Conn, DbError, Engine, PgTarget, ident, lit};
use crate::migrations::{self, Migration};
use crate::paths;
use crate::state::{StateDir, kind, rfc3339};
use crate::version::SimVersion;

pub const SYSTEM: &str = "_system";

pub enum Backend {
    Sqlite { dir: PathBuf, db_name: String },
    Postgres { target: Box<PgTarget> },
}

pub struct Driver {
    pub backend: Backend,
    pub version: SimVersion,
    /// PostgreSQL: the one connection every store uses; SQLite: `numary__system.db`.
    system: Option<Conn>,
    /// SQLite ledger files stay open once used, as `database/sql`'s idle pool keeps them:
    /// `fuser`/`lsof` see a running server holding them.
    ledgers: HashMap<String, Conn>,
    /// What two processes must share to touch the same ledgers.
    pub identity: String,
}

#[derive(Debug, Clone)]
pub struct Posting {
    pub source: String,
    pub destination: String,
    pub amount: u64,
    pub asset: String,
}

pub struct NewTransaction {
    pub postings: Vec<Posting>,
    pub reference: Option<String>,
    pub metadata: Value,
}

/// The driver name is checked by the caller: an unknown one never reaches here.
pub fn backend_from(config: &Config, driver: &str) -> Result<Backend, DbError> {
    if driver == "postgres" {
        let target = PgTarget::parse(&config.conn_string())?;
        Ok(Backend::Postgres {
            target: Box::new(target),
        })
    } else {
        Ok(Backend::Sqlite {
            dir: config.storage_dir(),
            db_name: config.db_name(),
        })
    }
}

pub fn identity_of(backend: &Backend) -> String {
    match backend {
        Backend::Sqlite { dir, .. } => {
            let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.clone());
            format!("sqlite:{}", dir.display())
        }
        Backend::Postgres { target } => target.identity(),
    }
}

impl Driver {
    /// `Driver.Initialize`: extensions, the `_system` registry, and 1.4.0-1.4.2's pause.
    pub fn initialize(backend: Backend, version: SimVersion) -> Result<Self, DbError> {
        if version.init_sleeps() {
            std::thread::sleep(Duration::from_secs(2));
        }
        Self::connect(backend, version)
    }

    /// `initialize` without the pause: a second handle on storage that is already set up.
    pub fn connect(backend: Backend, version: SimVersion) -> Result<Self, DbError> {
        let identity = identity_of(&backend);
        let system = match &backend {
            Backend::Postgres { target } => {
                let mut conn = Conn::open_postgres(target)?;
                conn.batch("CREATE EXTENSION IF NOT EXISTS pgcrypto")?;
                if version.needs_pg_trgm() {
                    conn.batch("CREATE EXTENSION IF NOT EXISTS pg_trgm")?;
                }
                if version.has_system_store() {
                    conn.batch("CREATE SCHEMA IF NOT EXISTS \"_system\"")?;
                }
                Some(conn)
            }
            Backend::Sqlite { dir, db_name } if version.has_system_store() => Some(
                Conn::open_sqlite(&dir.join(format!("{db_name}__system.db")), false)?,
            ),
            Backend::Sqlite { .. } => None,
        };
        let mut driver = Self {
            backend,
            version,
            system,
            ledgers: HashMap::new(),
            identity,
        };
        if version.has_system_store() {
            let ledgers = driver.system_table("ledgers");
            let mut ddl = format!(
                "CREATE TABLE IF NOT EXISTS {ledgers} (ledger varchar(255) primary key, addedAt timestamp);"
            );
            if version.has_configuration_table() {
                let configuration = driver.system_table("configuration");
                ddl.push_str(&format!(
                    "CREATE TABLE IF NOT EXISTS {configuration} (key varchar(255) primary key, value text, addedAt timestamp);"
                ));
            }
            driver.system_conn()?.batch(&ddl)?;
        }
        Ok(driver)
    }

    fn system_table(&self, table: &str) -> String {
        match self.backend {
            Backend::Postgres { .. } => format!("\"_system\".{table}"),
            Backend::Sqlite { .. } => table.to_owned(),
        }
    }

    fn system_conn(&mut self) -> Result<&mut Conn, DbError> {
        self.system
            .as_mut()
            .ok_or_else(|| DbError("no system store in this release".to_owned()))
    }

    pub fn list_ledgers(&mut self) -> Result<Vec<String>, DbError> {
        if !self.version.has_system_store() {
            return self.discover_ledgers();
        }
        let table = self.system_table("ledgers");
        self.system_conn()?
            .column(&format!("SELECT ledger FROM {table}"))
    }

    /// `SystemStore.Register`: true when the row is new.
    pub fn register(&mut self, ledger: &str) -> Result<bool, DbError> {
        if !self.version.has_system_store() {
            return Ok(false);
        }
        let table = self.system_table("ledgers");
        let sql = format!(
            "INSERT INTO {table} (ledger, addedAt) VALUES ({}, {}) ON CONFLICT DO NOTHING RETURNING ledger",
            lit(ledger),
            lit(&rfc3339(SystemTime::now()))
        );
        Ok(!self.system_conn()?.query(&sql)?.is_empty())
    }

    /// Ledgers that exist in storage whether registered or not: what `storage scan` finds.
    pub fn discover_ledgers(&mut self) -> Result<Vec<String>, DbError> {
        match &self.backend {
            Backend::Sqlite { dir, db_name } => {
                let mut found = Vec::new();
                for entry in std::fs::read_dir(dir)
                    .map_err(|e| DbError(e.to_string()))?
                    .flatten()
                {
                    let name = entry.file_name().to_string_lossy().into_owned();
                    if let Some(stem) = name.strip_suffix(".db")
                        && let Some((prefix, ledger)) = stem.split_once('_')
                        && prefix == db_name
                        && ledger != SYSTEM
                    {
                        found.push(ledger.to_owned());
                    }
                }
                found.sort();
                Ok(found)
            }
            Backend::Postgres { .. } => self.system_conn()?.column(SCAN_PG_SQL),
        }
    }

    /// `GetLedgerStore`: registers the ledger (whatever `create` says: the real existence
    /// check always answers yes) and opens its schema or file. Returns whether it is new.
    pub fn get_ledger_store(&mut self, ledger: &str) -> Result<bool, String> {
        if ledger == SYSTEM {
            return Err("reserved name".to_owned());
        }
        let created = self
            .register(ledger)
            .map_err(|e| format!("registering ledger: {e}"))?;
        if let Backend::Postgres { .. } = self.backend {
            let sql = format!("CREATE SCHEMA IF NOT EXISTS {}", ident(ledger));
            self.system_conn()
                .and_then(|c| c.batch(&sql))
                .map_err(|e| e.to_string())?;
        }
        Ok(created)
    }

    /// Runs `f` with a connection to `ledger`'s store and the prefix of its tables.
    pub fn with_ledger<T>(
        &mut self,
        ledger: &str,
        f: impl FnOnce(&mut Conn, &Tables) -> Result<T, DbError>,
    ) -> Result<T, DbError> {
        match &self.backend {
            Backend::Sqlite { dir, db_name } => {
                let conn = match self.ledgers.entry(ledger.to_owned()) {
                    Entry::Occupied(open) => open.into_mut(),
                    Entry::Vacant(slot) => {
                        let path = dir.join(format!("{db_name}_{ledger}.db"));
                        slot.insert(Conn::open_sqlite(&path, self.version.sqlite_wal())?)
                    }
                };
                f(conn, &Tables { schema: None })
            }
            Backend::Postgres { .. } => {
                let tables = Tables {
                    schema: Some(ident(ledger)),
                };
                f(self.system_conn()?, &tables)
            }
        }
    }

    /// `storage delete`: drops the schema or file and the registry row.
    pub fn delete_ledger(&mut self, ledger: &str) -> Result<(), DbError> {
        if ledger == SYSTEM {
            return Err(DbError("cannot delete system schema".to_owned()));
        }
        match &self.backend {
            Backend::Sqlite { dir, db_name } => {
                self.ledgers.remove(ledger);
                let path = dir.join(format!("{db_name}_{ledger}.db"));
                std::fs::remove_file(&path).map_err(|e| DbError(e.to_string()))?;
            }
            Backend::Postgres { .. } => {
                let sql = format!("DROP SCHEMA {} CASCADE", ident(ledger));
                self.system_conn()?.batch(&sql)?;
            }
        }
        if self.version.has_system_store() {
            let table = self.system_table("ledgers");
            self.system_conn()?.batch(&format!(
                "DELETE FROM {table} WHERE ledger = {}",
                lit(ledger)
            ))?;
        }
        Ok(())
    }

    /// Migration versions recorded for `ledger` (empty when it has no `migrations` table).
    pub fn migrations_done(&mut self, ledger: &str) -> Result<Vec<(String, String)>, DbError> {
        self.with_ledger(ledger, |conn, t| {
            if !t.exists(conn, "migrations")? {
                return Ok(Vec::new());
            }
            let rows = conn.query(&format!(
                "SELECT version, date FROM {}",
                t.name("migrations")
            ))?;
            Ok(rows
                .into_iter()
                .map(|r| {
                    let mut it = r.into_iter();
                    (
                        it.next().flatten().unwrap_or_default(),
                        it.next().flatten().unwrap_or_default(),
                    )
                })
                .collect())
        })
    }

    /// Versions recorded for `ledger` that this release does not ship, in numeric order.
    pub fn unknown_migrations(&mut self, ledger: &str) -> Vec<String> {
        let known: Vec<String> = migrations::for_version(self.version)
            .iter()
            .map(|m| m.number.to_string())
            .collect();
        let mut unknown: Vec<String> = self
            .migrations_done(ledger)
            .unwrap_or_default()
            .into_iter()
            .map(|(v, _)| v)
            .filter(|v| !known.contains(v))
            .collect();
        unknown.sort_by_key(|v| v.parse::<u64>().unwrap_or(u64::MAX));
        unknown
    }

    /// The release the newest of `unknown` (versions this release does not ship) comes from,
    /// as this release sees it: the first later release that ships it.
    fn schema_source(&self, unknown: &[String]) -> Option<SimVersion> {
        let newest = unknown.iter().filter_map(|v| v.parse::<u32>().ok()).max()?;
        migrations::first_shipped_after(self.version, newest)
    }

    /// Serving a ledger that carries `unknown` is misuse: the guide's table does not let this
    /// release keep serving, zero-downtime, the schema of the release those versions come from
    /// (a 1.8.2 node may serve 1.9.6's 18-20; a 1.7.4 node may not serve 1.8.x's 11-17).
    pub fn may_not_serve(&self, unknown: &[String]) -> bool {
        !unknown.is_empty()
            && !self
                .schema_source(unknown)
                .is_some_and(|release| paths::zero_downtime(self.version, release))
    }

    pub fn record_schema_misuse(
        &self,
        state: &StateDir,
        ledger: &str,
        action: &str,
        unknown: &[String],
    ) {
        let source = match self.schema_source(unknown) {
            Some(release) => format!(
                "; the newest comes with {release}, and the upgrade table gives no zero-downtime path from {} to {}.{}.x",
                self.version, release.major, release.minor
            ),
            None => "; no release the simulator knows ships them".to_owned(),
        };
        let detail = format!(
            "{action}: ledger has migrations [{}] that {} does not ship{source}",
            unknown.join(", "),
            self.version
        );
        state.record_misuse(
            kind::SCHEMA_NEWER_THAN_BINARY,
            Some(ledger),
            &self.identity,
            &detail,
        );
    }

    /// Records misuse when `ledger` carries migrations this release does not ship and may not
    /// serve ([`Driver::may_not_serve`]).
    pub fn check_schema(&mut self, state: &StateDir, ledger: &str, action: &str) {
        let unknown = self.unknown_migrations(ledger);
        if self.may_not_serve(&unknown) {
            self.record_schema_misuse(state, ledger, action, &unknown);
        }
    }

    /// `Store.Initialize`: runs every pending migration of `ledger` in one transaction.
    /// Returns whether any version row was added (`migrated` vs `left in place`).
    /// `via` names the caller in the state dir's migration log (`storage upgrade`, ...).
    pub fn migrate(&mut self, state: &StateDir, ledger: &str, via: &str) -> Result<bool, String> {
        let version = self.version;
        let catalogue = migrations::for_version(version);
        if !version.records_migrations() {
            // 1.2.x re-runs its idempotent `v001.sql` and keeps no record.
            return self
                .with_ledger(ledger, |conn, _| {
                    conn.batch(&render(&catalogue[0], conn.engine(), ledger))
                })
                .map(|()| false)
                .map_err(|e| e.to_string());
        }
        let done: Vec<String> = self
            .migrations_done(ledger)
            .map_err(|e| e.to_string())?
            .into_iter()
            .map(|(v, _)| v)
            .collect();
        let pending: Vec<&Migration> = catalogue
            .iter()
            .filter(|m| !done.contains(&m.number.to_string()))
            .collect();
        if pending.is_empty() {
            return Ok(false);
        }
        let (_lock, holder) = state.lock_migration(&self.identity, ledger);
        if let Some(holder) = holder {
            let detail = format!(
                "migrating while pid {} (node {}, version {}) is migrating the same ledger",
                holder["pid"],
                holder["node"].as_str().unwrap_or("-"),
                holder["version"].as_str().unwrap_or("-")
            );
            state.record_misuse(
                kind::CONCURRENT_MIGRATION,
                Some(ledger),
                &self.identity,
                &detail,
            );
        }
        let slow = state
            .fault("slow-migration")
            .map(|f| f.seconds.unwrap_or(5));
        // `fail-migration-ledgers` lists ledgers whose migration fails (the others commit): a
        // migration that fails halfway through a node's ledgers.
        let fail = state.fault("fail-migration").is_some()
            || state
                .fault_lines("fail-migration-ledgers")
                .iter()
                .any(|l| l == ledger);
        let old_layout = version.minor <= 6;
        let result = self.with_ledger(ledger, |conn, t| {
            if !old_layout {
                conn.batch(&format!(
                    "CREATE TABLE IF NOT EXISTS {} (version varchar, date varchar, UNIQUE(\"version\"))",
                    t.name("migrations")
                ))?;
            }
            conn.batch("BEGIN")?;
            let outcome = run_pending(conn, t, ledger, &pending, slow, fail, old_layout);
            match outcome {
                Ok(()) => conn.batch("COMMIT"),
                Err(e) => {
                    let _ = conn.batch("ROLLBACK");
                    Err(e)
                }
            }
        });
        let numbers: Vec<u32> = pending.iter().map(|m| m.number).collect();
        let outcome = result.as_ref().map(|_| ()).map_err(|e| e.0.as_str());
        state.record_migration(ledger, &self.identity, via, &numbers, outcome);
        result.map(|()| true).map_err(|e| e.to_string())
    }

    /// Writes `txs` in one database transaction; returns them as the API shows them.
    pub fn write_transactions(
        &mut self,
        ledger: &str,
        txs: &[NewTransaction],
    ) -> Result<Vec<Value>, DbError> {
        self.with_ledger(ledger, |conn, t| {
            let layout = Layout::read(conn, t)?;
            conn.batch("BEGIN")?;
            let result = txs
                .iter()
                .map(|tx| insert_transaction(conn, t, &layout, tx))
                .collect();
            match result {
                Ok(out) => conn.batch("COMMIT").map(|()| out),
                Err(e) => {
                    let _ = conn.batch("ROLLBACK");
                    Err(e)
                }
            }
        })
    }

    pub fn list_transactions(&mut self, ledger: &str, limit: u32) -> Result<Vec<Value>, DbError> {
        self.with_ledger(ledger, |conn, t| {
            let rows = conn.query(&format!(
                "SELECT id, \"timestamp\", reference, postings, metadata FROM {} ORDER BY id DESC LIMIT {limit}",
                t.name("transactions")
            ))?;
            Ok(rows.into_iter().map(transaction_json).collect())
        })
    }

    /// `(transactions, accounts)`.
    pub fn stats(&mut self, ledger: &str) -> Result<(i64, i64), DbError> {
        self.with_ledger(ledger, |conn, t| {
            let txs =
                conn.scalar_i64(&format!("SELECT COUNT(*) FROM {}", t.name("transactions")))?;
            let accounts = if t.exists(conn, "accounts")? {
                conn.scalar_i64(&format!("SELECT COUNT(*) FROM {}", t.name("accounts")))?
            } else {
                0
            };
            Ok((txs, accounts))
        })
    }
}

/// The health check: `os.Open(storage.dir)` for SQLite, a fresh round trip for PostgreSQL
/// (a fresh connection, so a long migration holding the main one does not block it).
pub fn ping(backend: &Backend) -> Result<(), DbError> {
    match backend {
        Backend::Sqlite { dir, .. } => std::fs::File::open(dir)
            .map(drop)
            .map_err(|e| DbError(format!("open {}: {}", dir.display(), e))),
        Backend::Postgres { target } => Conn::open_postgres(target)?.batch("SELECT 1"),
    }
}

const SCAN_PG_SQL: &str = "SELECT s.schema_name FROM information_schema.schemata s \
     JOIN pg_catalog.pg_tables t ON t.schemaname = s.schema_name AND t.tablename = 'transactions'";

/// Table names of one ledger: `"ledger".table` on PostgreSQL, bare in the ledger's SQLite file.
pub struct Tables {
    schema: Option<String>,
}

impl Tables {
    pub fn name(&self, table: &str) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{table}"),
            None => table.to_owned(),
        }
    }

    pub fn exists(&self, conn: &mut Conn, table: &str) -> Result<bool, DbError> {
        let sql = match &self.schema {
            Some(_) => format!("SELECT to_regclass({})::text", lit(&self.name(table))),
            None => format!(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = {}",
                lit(table)
            ),
        };
        Ok(!conn.column(&sql)?.is_empty())
    }

    fn has_column(&self, conn: &mut Conn, table: &str, column: &str) -> Result<bool, DbError> {
        let sql = match &self.schema {
            Some(schema) => format!(
                "SELECT column_name FROM information_schema.columns WHERE table_schema = {} AND table_name = {} AND column_name = {}",
                lit(schema.trim_matches('"').replace("\"\"", "\"").as_str()),
                lit(table),
                lit(column)
            ),
            None => format!(
                "SELECT name FROM pragma_table_info({}) WHERE name = {}",
                lit(table),
                lit(column)
            ),
        };
        Ok(!conn.column(&sql)?.is_empty())
    }
}

fn render(migration: &Migration, engine: Engine, ledger: &str) -> String {
    let sql = match engine {
        Engine::Postgres => migration.postgres.as_deref(),
        Engine::Sqlite => migration.sqlite.as_deref(),
    };
    sql.unwrap_or_default()
        .replace("VAR_LEDGER_NAME", &ledger.replace('"', "\"\""))
}

fn run_pending(
    conn: &mut Conn,
    t: &Tables,
    ledger: &str,
    pending: &[&Migration],
    slow: Option<u64>,
    fail: bool,
    old_layout: bool,
) -> Result<(), DbError> {
    for (i, migration) in pending.iter().enumerate() {
        let sql = render(migration, conn.engine(), ledger);
        if !sql.trim().is_empty() {
            conn.batch(&sql).map_err(|e| {
                // ≤1.6 wrapped statement errors (`errors.Wrapf(..., "failed to run statement %d")`).
                if old_layout {
                    DbError(format!("failed to run statement {i}: {e}"))
                } else {
                    e
                }
            })?;
        }
        let date = rfc3339(SystemTime::now());
        conn.batch(&format!(
            "INSERT INTO {} (version, date) VALUES ({}, {})",
            t.name("migrations"),
            lit(&migration.number.to_string()),
            lit(&date)
        ))?;
        if i == 0
            && let Some(seconds) = slow
        {
            std::thread::sleep(Duration::from_secs(seconds));
        }
    }
    if fail {
        return Err(DbError(match conn.engine() {
            Engine::Postgres => "ERROR: could not extend file \"base/16384/2619\": No space left on device (SQLSTATE 53100)".to_owned(),
            Engine::Sqlite => "database or disk is full".to_owned(),
        }));
    }
    Ok(())
}

/// Which optional tables and columns the ledger's schema has, so writes follow the schema.
struct Layout {
    log: bool,
    accounts: bool,
    volumes: bool,
    new_postings: bool,
}

impl Layout {
    fn read(conn: &mut Conn, t: &Tables) -> Result<Self, DbError> {
        Ok(Self {
            log: t.exists(conn, "log")?,
            accounts: t.exists(conn, "accounts")?,
            volumes: t.exists(conn, "volumes")?,
            new_postings: t.exists(conn, "postings")?
                && t.has_column(conn, "postings", "posting_index")?,
        })
    }
}

fn insert_transaction(
    conn: &mut Conn,
    t: &Tables,
    layout: &Layout,
    tx: &NewTransaction,
) -> Result<Value, DbError> {
    let id = conn.scalar_i64(&format!(
        "SELECT COALESCE(MAX(id), -1) + 1 FROM {}",
        t.name("transactions")
    ))?;
    let timestamp = rfc3339(SystemTime::now());
    let postings: Vec<Value> = tx
        .postings
        .iter()
        .map(|p| json!({"source": p.source, "destination": p.destination, "amount": p.amount, "asset": p.asset}))
        .collect();
    let postings_json = Value::Array(postings.clone()).to_string();
    let hash = format!("{:016x}", fnv_str(&format!("{id}{postings_json}")));
    let reference = tx
        .reference
        .as_deref()
        .map(lit)
        .unwrap_or_else(|| "NULL".to_owned());
    conn.batch(&format!(
        "INSERT INTO {} (id, \"timestamp\", reference, hash, postings, metadata) VALUES ({id}, {}, {reference}, {}, {}, {})",
        t.name("transactions"),
        lit(&timestamp),
        lit(&hash),
        lit(&postings_json),
        lit(&tx.metadata.to_string())
    ))?;
    let out = json!({
        "txid": id,
        "postings": postings,
        "reference": tx.reference.clone().unwrap_or_default(),
        "metadata": tx.metadata,
        "timestamp": timestamp,
    });
    if layout.log {
        let log_id = conn.scalar_i64(&format!(
            "SELECT COALESCE(MAX(id), -1) + 1 FROM {}",
            t.name("log")
        ))?;
        conn.batch(&format!(
            "INSERT INTO {} (id, type, hash, date, data) VALUES ({log_id}, 'NEW_TRANSACTION', {}, {}, {})",
            t.name("log"),
            lit(&hash),
            lit(&timestamp),
            lit(&out.to_string())
        ))?;
    }
    for (index, p) in tx.postings.iter().enumerate() {
        for address in [&p.source, &p.destination] {
            if layout.accounts {
                conn.batch(&format!(
                    "INSERT INTO {} (address, metadata) VALUES ({}, '{{}}') ON CONFLICT (address) DO NOTHING",
                    t.name("accounts"),
                    lit(address)
                ))?;
            }
        }
        if layout.volumes {
            for (address, input, output) in
                [(&p.destination, p.amount, 0), (&p.source, 0, p.amount)]
            {
                conn.batch(&format!(
                    "INSERT INTO {} (account, asset, input, output) VALUES ({}, {}, {input}, {output}) \
                     ON CONFLICT (account, asset) DO UPDATE SET input = volumes.input + excluded.input, output = volumes.output + excluded.output",
                    t.name("volumes"),
                    lit(address),
                    lit(&p.asset)
                ))?;
            }
        }
        if layout.new_postings {
            let segments = |a: &str| Value::from(a.split(':').collect::<Vec<_>>()).to_string();
            conn.batch(&format!(
                "INSERT INTO {} (txid, posting_index, source, destination) VALUES ({id}, {index}, {}, {})",
                t.name("postings"),
                lit(&segments(&p.source)),
                lit(&segments(&p.destination))
            ))?;
        }
    }
    Ok(out)
}

fn transaction_json(row: Vec<Option<String>>) -> Value {
    let mut it = row.into_iter();
    let id: i64 = it
        .next()
        .flatten()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let timestamp = it.next().flatten().unwrap_or_default();
    let reference = it.next().flatten().unwrap_or_default();
    let postings = it
        .next()
        .flatten()
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or(json!([]));
    let metadata = it
        .next()
        .flatten()
        .and_then(|v| serde_json::from_str(&v).ok())
        .unwrap_or(json!({}));
    json!({"txid": id, "timestamp": timestamp, "reference": reference, "postings": postings, "metadata": metadata})
}

fn fnv_str(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}
