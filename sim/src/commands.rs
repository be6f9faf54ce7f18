//! The subcommands: `version`, `storage list|upgrade|scan|init|delete`, `doc flags`, and the
//! simulator-only `sim seed`. Output strings, line endings and exit paths are the real ones
//! (`cmd/storage.go`, `cmd/version.go`); misuse checks run where the real command would
//! touch storage another process is using.

use std::io::Write;

use serde_json::json;

use crate::config::{Config, env_name};
use crate::paths;
use crate::state::{StateDir, kind};
use crate::storage::{self, Driver, NewTransaction, Posting};
use crate::version::SimVersion;

/// How a command fails, as the real binary would show it.
pub enum Failure {
    /// A `RunE` error: `Error: ...` + usage on stderr, the error again, exit 1.
    Run(String),
    /// A Go panic while building the container: panic text on stderr, exit 2.
    Panic(String),
}

pub struct App {
    pub version: SimVersion,
    /// The version as `numary version` and `/_info` print it (a `v` prefix is kept).
    pub version_text: String,
    pub config: Config,
    pub state: StateDir,
}

impl App {
    /// Builds the storage driver the way `NewContainer` does, panicking on an unknown driver.
    pub fn driver(&self) -> Result<Driver, Failure> {
        let name = self.config.driver();
        if name != "sqlite" && name != "postgres" {
            return Err(Failure::Panic(format!("Unsupported driver: {name}")));
        }
        let backend = storage::backend_from(&self.config, &name).map_err(|e| Failure::Run(e.0))?;
        Driver::initialize(backend, self.version).map_err(|e| Failure::Run(e.0))
    }

    /// Records misuse when a live server uses the storage a storage command is about to touch,
    /// unless the command leaves a schema the guide's table lets that server keep serving
    /// zero-downtime (a 1.8.2 server beside 1.9.6's `storage upgrade`). `delete` takes ledgers
    /// away from under the server: the table promises nothing for it.
    fn check_servers(&self, driver: &Driver, command: &str, ledger: Option<&str>) {
        for server in self.state.live_servers(&driver.identity) {
            let server_version = server.value["version"]
                .as_str()
                .and_then(|v| SimVersion::parse(v).ok());
            let tolerated = command != "delete"
                && server_version.is_some_and(|v| paths::zero_downtime(v, self.version));
            if tolerated {
                continue;
            }
            let detail = format!(
                "`storage {command}` while server pid {} (node {}, version {}, bind {}) uses the same storage",
                server.pid,
                server.value["node"].as_str().unwrap_or("-"),
                server.value["version"].as_str().unwrap_or("-"),
                server.value["bind"].as_str().unwrap_or("-"),
            );
            self.state.record_misuse(
                kind::STORAGE_COMMAND_WHILE_SERVING,
                ledger,
                &driver.identity,
                &detail,
            );
        }
    }
}

pub fn out(text: &str) {
    let mut stdout = std::io::stdout().lock();
    let _ = stdout.write_all(text.as_bytes());
    let _ = stdout.flush();
}

pub fn version(app: &App) {
    let date = std::env::var("NUMARY_SIM_BUILD_DATE").unwrap_or_else(|_| build_date(app.version));
    let commit = std::env::var("NUMARY_SIM_COMMIT").unwrap_or_else(|_| short_commit(app.version));
    out(&format!(
        "Version: {} \nDate: {date} \nCommit: {commit} \n",
        app.version_text
    ));
}

/// A stable, plausible goreleaser date per release (not the real one).
fn build_date(version: SimVersion) -> String {
    let month = 1 + (version.minor % 12);
    let day = 1 + (version.patch % 28);
    let year = 2022 + version.minor / 8;
    format!("{year}-{month:02}-{day:02}T10:00:00Z")
}

fn short_commit(version: SimVersion) -> String {
    let hash = version
        .to_string()
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
    format!("{hash:016x}")[..7].to_owned()
}

pub fn storage_list(app: &App) -> Result<(), Failure> {
    let mut driver = app.driver()?;
    let ledgers = driver.list_ledgers().map_err(|e| Failure::Run(e.0))?;
    if ledgers.is_empty() {
        out("No ledger found.\n");
    } else {
        let mut text = String::from("Ledgers:\n");
        for ledger in ledgers {
            text.push_str(&format!("- {ledger}\n"));
        }
        out(&text);
    }
    Ok(())
}

pub fn storage_upgrade(app: &App, name: &str) -> Result<(), Failure> {
    let mut driver = app.driver()?;
    app.check_servers(&driver, "upgrade", Some(name));
    driver.get_ledger_store(name).map_err(Failure::Run)?;
    let migrated = driver
        .migrate(&app.state, name, "storage upgrade")
        .map_err(Failure::Run)?;
    driver.check_schema(&app.state, name, "storage upgrade");
    if migrated {
        out(&format!("Storage '{name}' migrated\r\n"));
    } else {
        out(&format!("Storage '{name}' left in place\r\n"));
    }
    Ok(())
}

pub fn storage_scan(app: &App) -> Result<(), Failure> {
    let driver_name = app.config.driver();
    if driver_name != "sqlite" && driver_name != "postgres" {
        return Err(Failure::Run(format!(
            "Invalid storage driver: {driver_name}"
        )));
    }
    let mut driver = app.driver()?;
    app.check_servers(&driver, "scan", None);
    let entries: Vec<ScanEntry> = if driver_name == "postgres" {
        driver
            .discover_ledgers()
            .map_err(|e| Failure::Run(e.0))?
            .into_iter()
            .filter(|l| l != storage::SYSTEM)
            .map(ScanEntry::Ledger)
            .collect()
    } else {
        sqlite_scan_entries(&app.config)?
    };
    for entry in entries {
        let ledger = match entry {
            ScanEntry::Skip(line) => {
                out(&line);
                continue;
            }
            ScanEntry::Ledger(ledger) => ledger,
        };
        out(&format!("Registering ledger '{ledger}'\r\n"));
        match driver.register(&ledger) {
            Ok(true) => out(&format!("Ledger '{ledger}' registered\r\n")),
            Ok(false) => out(&format!("Ledger '{ledger}' already registered\r\n")),
            Err(e) => out(&format!("Error registering ledger '{ledger}': {e}\r\n")),
        }
    }
    Ok(())
}

/// One directory entry as `storage scan` sees it, in `os.ReadDir` (name) order.
enum ScanEntry {
    Skip(String),
    Ledger(String),
}

/// Classifies the entries of `storage.dir` the way the SQLite branch of `storage scan` does.
fn sqlite_scan_entries(config: &Config) -> Result<Vec<ScanEntry>, Failure> {
    let dir = config.storage_dir();
    let entries = std::fs::read_dir(&dir)
        .map_err(|e| Failure::Run(format!("open {}: {}", dir.display(), go_io_error(&e))))?;
    let mut names: Vec<String> = entries
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let db_name = config.db_name();
    let mut entries = Vec::new();
    for name in names {
        let Some(stem) = name.strip_suffix(".db") else {
            entries.push(ScanEntry::Skip(format!("Skip file {name}\n")));
            continue;
        };
        let Some((prefix, ledger)) = stem.split_once('_') else {
            entries.push(ScanEntry::Skip(format!("Skip file {stem}.db : Bad name\n")));
            continue;
        };
        if prefix != db_name {
            entries.push(ScanEntry::Skip(format!(
                "Skip file {stem}.db : DB name not mathing\n"
            )));
        } else if ledger != storage::SYSTEM {
            entries.push(ScanEntry::Ledger(ledger.to_owned()));
        }
    }
    Ok(entries)
}

fn go_io_error(err: &std::io::Error) -> String {
    match err.kind() {
        std::io::ErrorKind::NotFound => "no such file or directory".to_owned(),
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        _ => err.to_string(),
    }
}

pub fn storage_init(app: &App, name: &str) -> Result<(), Failure> {
    let mut driver = app.driver()?;
    app.check_servers(&driver, "init", Some(name));
    if !app.version.has_system_store() {
        // ≤1.3.1: no registry and no output; the store is simply initialised.
        driver
            .migrate(&app.state, name, "storage init")
            .map_err(Failure::Run)?;
        return Ok(());
    }
    if name.is_empty() {
        return Err(Failure::Run("name is empty".to_owned()));
    }
    out(&format!("Creating ledger '{name}'..."));
    let created = driver.get_ledger_store(name).map_err(Failure::Run)?;
    if !created && !app.version.init_always_ok() {
        out("Already initialized!\r\n");
        return Ok(());
    }
    driver
        .migrate(&app.state, name, "storage init")
        .map_err(Failure::Run)?;
    driver.check_schema(&app.state, name, "storage init");
    out(" OK\r\n");
    Ok(())
}

pub fn storage_delete(app: &App, name: &str) -> Result<(), Failure> {
    let mut driver = app.driver()?;
    app.check_servers(&driver, "delete", Some(name));
    driver.get_ledger_store(name).map_err(Failure::Run)?;
    driver.delete_ledger(name).map_err(|e| Failure::Run(e.0))?;
    out("Storage deleted!\n");
    Ok(())
}

/// Simulator only: writes `count` transactions through the same path as `POST
/// /{ledger}/transactions`, including the server's lazy migration of the ledger.
pub fn sim_seed(app: &App, ledger: &str, count: &str) -> Result<(), Failure> {
    let count: u64 = count.parse().map_err(|_| {
        Failure::Run(format!(
            "invalid argument \"{count}\" for \"--transactions\" flag"
        ))
    })?;
    let mut driver = app.driver()?;
    driver.get_ledger_store(ledger).map_err(Failure::Run)?;
    driver
        .migrate(&app.state, ledger, "sim seed")
        .map_err(Failure::Run)?;
    driver.check_schema(&app.state, ledger, "sim seed");
    let (existing, _) = driver.stats(ledger).map_err(|e| Failure::Run(e.0))?;
    let txs: Vec<NewTransaction> = (0..count)
        .map(|i| {
            let n = u64::try_from(existing).unwrap_or(0) + i;
            NewTransaction {
                postings: vec![Posting {
                    source: "world".to_owned(),
                    destination: format!("users:{:03}", n % 50),
                    amount: n + 1,
                    asset: "USD/2".to_owned(),
                }],
                reference: Some(format!("seed-{n}")),
                metadata: json!({"seeded": "true"}),
            }
        })
        .collect();
    driver
        .write_transactions(ledger, &txs)
        .map_err(|e| Failure::Run(e.0))?;
    out(&format!(
        "Seeded {count} transactions into ledger '{ledger}'\n"
    ));
    Ok(())
}

/// `numary doc flags`: the flag/env table, CRLF rows.
pub fn doc_flags(flags: &[crate::cli::Flag]) {
    let mut text = String::from("Flag | Env var | Default value | Description\r\n");
    text.push_str("--- | --- | --- | ---\r\n");
    for flag in flags {
        text.push_str(&format!(
            "--{} | {} | {} | {}\r\n",
            flag.name,
            env_name(flag.name),
            flag.default,
            flag.usage
        ));
    }
    out(&text);
}

/// The default state dir: `sim-state` beside the storage dir.
pub fn default_state_dir(config: &Config) -> std::path::PathBuf {
    let dir = config.storage_dir();
    dir.parent()
        .map(|p| p.join("sim-state"))
        .unwrap_or_else(|| dir.join("sim-state"))
}

pub fn state_dir(config: &Config, version: SimVersion) -> StateDir {
    let root = std::env::var_os("NUMARY_SIM_STATE_DIR")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| default_state_dir(config));
    let node = std::env::var("NUMARY_SIM_NODE")
        .ok()
        .filter(|n| !n.is_empty());
    StateDir {
        root,
        node,
        version: version.to_string(),
    }
}
