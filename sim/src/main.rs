//! `numary-sim`: a stand-in for the Formance Ledger v1 `numary` binary, playing the release
//! named by `NUMARY_SIM_VERSION`, for fleetup's practice lab and tests. It keeps real SQLite
//! files or a real PostgreSQL schema, prints what the real CLI prints, and records in a state
//! dir the misuse a real upgrade could commit (see docs/simulator.md).

mod cli;
mod commands;
mod config;
mod db;
mod migrations;
mod paths;
mod server;
mod state;
mod storage;
mod version;

use std::io::Write;

use commands::{App, Failure};
use config::Config;
use version::SimVersion;

fn main() {
    let code = run();
    let _ = std::io::stdout().flush();
    std::process::exit(code);
}

fn err(text: &str) {
    let mut stderr = std::io::stderr().lock();
    let _ = stderr.write_all(text.as_bytes());
}

/// Shows up as `numary` to `pgrep -x numary` and `ps -o comm`, as the real binary would
/// (`NUMARY_SIM_PROCESS_NAME` overrides; the command line still says `numary-sim`).
fn set_process_name() {
    let name = std::env::var("NUMARY_SIM_PROCESS_NAME").unwrap_or_else(|_| "numary".to_owned());
    if let Ok(name) = std::ffi::CString::new(name) {
        // SAFETY: PR_SET_NAME reads a NUL-terminated string (truncated to 15 bytes by the kernel).
        unsafe { libc::prctl(libc::PR_SET_NAME, name.as_ptr()) };
    }
}

fn run() -> i32 {
    set_process_name();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let version_text = match std::env::var("NUMARY_SIM_VERSION") {
        Ok(v) if !v.trim().is_empty() => v.trim().to_owned(),
        _ => {
            err(
                "numary-sim: NUMARY_SIM_VERSION is not set; set it to the release to play, e.g. NUMARY_SIM_VERSION=1.8.2\n",
            );
            return 1;
        }
    };
    let version = match SimVersion::parse(&version_text) {
        Ok(v) => v,
        Err(e) => {
            err(&format!("numary-sim: NUMARY_SIM_VERSION: {e}\n"));
            return 1;
        }
    };
    let mut config = Config::load();
    // viper.ReadInConfig runs while the command tree is built: before any parsing.
    if version.prints_config_noise()
        && let Some(error) = &config.load_error
    {
        commands::out(&format!("loading config file: {error}\n"));
    }
    let persistent = cli::persistent_flags(version, &config.home);
    let (command, rest) = match cli::find(version, &args, &persistent) {
        Ok(found) => found,
        Err(e) => {
            err(&format!(
                "Error: {e}\nRun 'numary --help' for usage.\n{e}\n"
            ));
            return 1;
        }
    };
    let parsed = match cli::parse_flags(&rest, &persistent, &command.local) {
        Ok(parsed) => parsed,
        Err(e) => return fail(&command, &persistent, Failure::Run(e)),
    };
    for warning in &parsed.warnings {
        err(&format!("{warning}\n"));
    }
    if parsed.help || !command.runnable {
        commands::out(&cli::help(&command, &persistent));
        return 0;
    }
    let exact_one = matches!(command.path.as_slice(), ["storage", "upgrade" | "delete"]);
    if exact_one && parsed.positional.len() != 1 {
        let e = format!("accepts 1 arg(s), received {}", parsed.positional.len());
        return fail(&command, &persistent, Failure::Run(e));
    }
    let local = |name: &str| {
        parsed.values.get(name).cloned().unwrap_or_else(|| {
            command
                .local
                .iter()
                .find(|f| f.name == name)
                .map(|f| f.default.clone())
                .unwrap_or_default()
        })
    };
    let name_value = parsed.values.get("name").cloned();
    let (ledger_value, count_value) = (local("ledger"), local("transactions"));
    let mut flag_values = parsed.values.clone();
    flag_values.retain(|k, _| persistent.iter().any(|f| f.name == k));
    config.set_flags(flag_values);
    // `name` is bound to viper too (NUMARY_NAME works).
    let init_name = name_value
        .or_else(|| config.lookup("name"))
        .unwrap_or_else(|| "default".to_owned());

    // Root PersistentPreRunE.
    if version.sqlite_deprecated() && config.driver() == "sqlite" {
        err(
            "WARNING: SQLite is being deprecated and will not be supported starting from the v2 of the Formance Ledger. Please use Postgres instead.\n",
        );
    }
    let dir = config.storage_dir();
    if let Err(e) = mkdir_all(&dir) {
        let e = format!(
            "creating storage directory: mkdir {}: {}",
            dir.display(),
            go_error(&e)
        );
        return fail(&command, &persistent, Failure::Run(e));
    }

    let state = commands::state_dir(&config, version);
    let app = App {
        version,
        version_text,
        config,
        state,
    };
    let positional = parsed.positional.first().cloned().unwrap_or_default();
    let result = match command.path.as_slice() {
        ["version"] => {
            commands::version(&app);
            Ok(())
        }
        ["storage", "list"] => commands::storage_list(&app),
        ["storage", "upgrade"] => commands::storage_upgrade(&app, &positional),
        ["storage", "scan"] => commands::storage_scan(&app),
        ["storage", "init"] => commands::storage_init(&app, &init_name),
        ["storage", "delete"] => commands::storage_delete(&app, &positional),
        ["server", "start"] => server::start(app),
        ["sim", "seed"] => commands::sim_seed(&app, &ledger_value, &count_value),
        ["doc", "flags"] => {
            commands::doc_flags(&persistent);
            Ok(())
        }
        // `config init` only logs its errors; the simulator writes no config file.
        ["config", "init"] => Ok(()),
        other => Err(Failure::Run(format!(
            "`numary {}` is not simulated by numary-sim",
            other.join(" ")
        ))),
    };
    match result {
        Ok(()) => 0,
        Err(failure) => fail(&command, &persistent, failure),
    }
}

fn fail(command: &cli::Command, persistent: &[cli::Flag], failure: Failure) -> i32 {
    let _ = std::io::stdout().flush();
    match failure {
        Failure::Run(e) => {
            // cobra: `Error: ...` and the usage; then `Execute` prints the error once more.
            err(&format!(
                "Error: {e}\n{}\n{e}\n",
                cli::usage(command, persistent)
            ));
            1
        }
        Failure::Panic(message) => {
            err(&format!(
                "panic: {message}\n\ngoroutine 1 [running]:\ngithub.com/numary/ledger/pkg/storage/sqlstorage.DriverModule(...)\n\t/home/runner/work/ledger/ledger/pkg/storage/sqlstorage/module.go:46 +0x4e5\ngithub.com/numary/ledger/cmd.NewContainer(...)\n\t/home/runner/work/ledger/ledger/cmd/container.go:120 +0x1d2\n"
            ));
            2
        }
    }
}

/// `os.MkdirAll(dir, 0700)`.
fn mkdir_all(dir: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

fn go_error(e: &std::io::Error) -> String {
    match e.kind() {
        std::io::ErrorKind::PermissionDenied => "permission denied".to_owned(),
        std::io::ErrorKind::NotADirectory => "not a directory".to_owned(),
        _ => e.to_string(),
    }
}
