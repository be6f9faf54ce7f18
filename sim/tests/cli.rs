//! The command-line contract: exact outputs, line endings, noise lines, exit codes and the
//! typo behaviours of the real `numary` v1 CLI, on SQLite storage.

mod common;

use common::{Node, range, sqlite_versions};

#[test]
fn version_output_is_byte_exact_with_trailing_spaces() {
    let node = Node::new()
        .env("NUMARY_SIM_BUILD_DATE", "2024-04-04T10:00:00Z")
        .env("NUMARY_SIM_COMMIT", "8e46822");
    let run = node.run("1.10.16", &["version"]);
    assert_eq!(run.code, 0);
    let noise = format!(
        "loading config file: Config File \"numary\" Not Found in \"[{}/.numary /etc/numary]\"\n",
        node.home.display()
    );
    assert_eq!(
        run.stdout,
        format!("{noise}Version: 1.10.16 \nDate: 2024-04-04T10:00:00Z \nCommit: 8e46822 \n")
    );
    assert_eq!(
        run.stderr,
        "WARNING: SQLite is being deprecated and will not be supported starting from the v2 of the Formance Ledger. Please use Postgres instead.\n"
    );
}

#[test]
fn old_releases_print_no_noise_and_no_deprecation() {
    let run = Node::new().run("1.4.3", &["version"]);
    assert!(
        run.stdout.starts_with("loading config file: "),
        "{}",
        run.stdout
    );
    let run = Node::new().run("1.3.3", &["version"]);
    assert!(
        run.stdout.starts_with("Version: 1.3.3 \n"),
        "{}",
        run.stdout
    );
    assert_eq!(run.stderr, "");
    // A Docker-style version string keeps its `v`.
    let run = Node::new().run("v1.9.2", &["version"]);
    assert!(
        run.body().starts_with("Version: v1.9.2 \n"),
        "{}",
        run.stdout
    );
}

#[test]
fn missing_or_invalid_version_fails_clearly() {
    let node = Node::new();
    let out = node
        .command("", &["version"])
        .env_remove("NUMARY_SIM_VERSION")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("NUMARY_SIM_VERSION is not set"));
    let run = node.run("2.1.0", &["version"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("not a Formance Ledger v1 release"),
        "{}",
        run.stderr
    );
}

#[test]
fn list_upgrade_and_the_typo_that_creates_a_ledger() {
    let node = Node::new();
    let run = node.run("1.8.2", &["storage", "list"]);
    assert_eq!((run.code, run.body()), (0, "No ledger found.\n"));

    let run = node.run("1.8.2", &["storage", "upgrade", "typo"]);
    assert_eq!((run.code, run.body()), (0, "Storage 'typo' migrated\r\n"));
    assert!(node.data_dir().join("numary_typo.db").is_file());
    assert!(node.data_dir().join("numary__system.db").is_file());

    let run = node.run("1.8.2", &["storage", "upgrade", "typo"]);
    assert_eq!(run.body(), "Storage 'typo' left in place\r\n");

    node.run("1.8.2", &["storage", "upgrade", "alpha"]);
    let run = node.run("1.8.2", &["storage", "list"]);
    let mut lines: Vec<&str> = run.body().lines().collect();
    assert_eq!(lines.remove(0), "Ledgers:");
    lines.sort_unstable();
    assert_eq!(lines, vec!["- alpha", "- typo"]);
}

#[test]
fn storage_dir_is_created_0700_by_every_command() {
    use std::os::unix::fs::PermissionsExt;
    let node = Node::new();
    let dir = node.home.join("custom/data");
    let run = node.run(
        "1.7.4",
        &["version", "--storage.dir", dir.to_str().unwrap()],
    );
    assert_eq!(run.code, 0);
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700);
}

#[test]
fn storage_typo_prints_help_and_exits_zero_without_touching_storage() {
    let node = Node::new();
    let run = node.run("1.8.2", &["storage", "upgarde", "default"]);
    assert_eq!(run.code, 0);
    assert!(
        run.body()
            .starts_with("Usage:\n  numary storage [command]\n"),
        "{}",
        run.stdout
    );
    assert!(run.body().contains("\n  upgrade"), "{}", run.stdout);
    assert!(
        !node.data_dir().exists(),
        "help must not run PersistentPreRunE"
    );
}

#[test]
fn wrong_argument_count_and_unknown_flag_exit_one() {
    let node = Node::new();
    let run = node.run("1.8.2", &["storage", "upgrade"]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.starts_with(
        "Error: accepts 1 arg(s), received 0\nUsage:\n  numary storage upgrade [flags]"
    ));
    assert!(
        run.stderr.ends_with("\naccepts 1 arg(s), received 0\n"),
        "{}",
        run.stderr
    );

    let run = node.run("1.8.2", &["storage", "list", "--nope"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("Error: unknown flag: --nope\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn otel_metrics_flags_exist_until_1_8_and_break_1_9() {
    let node = Node::new();
    assert_eq!(
        node.run("1.8.3", &["storage", "list", "--otel-metrics"])
            .code,
        0
    );
    let run = node.run("1.9.0", &["storage", "list", "--otel-metrics"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("Error: unknown flag: --otel-metrics"),
        "{}",
        run.stderr
    );
}

#[test]
fn storage_flags_on_the_command_line_are_deprecated_from_1_10() {
    let node = Node::new();
    let run = node.run("1.10.3", &["storage", "list", "--storage.driver", "sqlite"]);
    assert_eq!(run.code, 0);
    assert!(
        run.stderr
            .starts_with("Flag --storage.driver has been deprecated, SQLite is being deprecated")
    );
    let run = node.run_env(
        "1.10.3",
        &["storage", "list"],
        &[("NUMARY_STORAGE_DRIVER", "sqlite")],
    );
    assert!(
        !run.stderr.contains("has been deprecated"),
        "{}",
        run.stderr
    );
    let run = node.run("1.9.6", &["storage", "list", "--storage.driver", "sqlite"]);
    assert_eq!(run.stderr, "");
}

#[test]
fn invalid_driver_scan_errors_others_panic() {
    let node = Node::new().env("NUMARY_STORAGE_DRIVER", "mysql");
    let run = node.run("1.8.2", &["storage", "scan"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .starts_with("Error: Invalid storage driver: mysql\n"),
        "{}",
        run.stderr
    );
    let run = node.run("1.8.2", &["storage", "list"]);
    assert_eq!(run.code, 2);
    assert!(
        run.stderr
            .starts_with("panic: Unsupported driver: mysql\n\ngoroutine 1 [running]:")
    );
}

#[test]
fn scan_prints_skip_lines_and_registers_ledger_files() {
    let node = Node::new();
    let dir = node.data_dir();
    // A ledger created by a release without the registry, then strays.
    assert_eq!(
        node.run("1.3.1", &["storage", "init", "--name", "x"]).code,
        1,
        "no --name in 1.3.1"
    );
    assert_eq!(node.run("1.3.1", &["storage", "init"]).code, 0);
    assert!(dir.join("numary_default.db").is_file());
    assert!(
        !dir.join("numary__system.db").exists(),
        "1.3.1 has no registry"
    );
    std::fs::write(dir.join("numary_default.db-journal"), "").unwrap();
    std::fs::write(dir.join("other_thing.db"), "").unwrap();
    std::fs::write(dir.join("nounderscore.db"), "").unwrap();
    std::fs::create_dir(dir.join("subdir")).unwrap();

    let run = node.run("1.8.2", &["storage", "scan"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        run.body(),
        "Skip file nounderscore.db : Bad name\n\
         Registering ledger 'default'\r\nLedger 'default' registered\r\n\
         Skip file numary_default.db-journal\n\
         Skip file other_thing.db : DB name not mathing\n\
         Skip file subdir\n"
    );
    let run = node.run("1.8.2", &["storage", "scan"]);
    assert!(
        run.body()
            .contains("Ledger 'default' already registered\r\n"),
        "{}",
        run.stdout
    );
    assert_eq!(
        node.run("1.8.2", &["storage", "list"]).body(),
        "Ledgers:\n- default\n"
    );
}

#[test]
fn init_creates_then_reports_already_initialized() {
    let node = Node::new();
    let run = node.run("1.8.2", &["storage", "init"]);
    assert_eq!(run.body(), "Creating ledger 'default'... OK\r\n");
    let run = node.run("1.8.2", &["storage", "init"]);
    assert_eq!(
        run.body(),
        "Creating ledger 'default'...Already initialized!\r\n"
    );
    // 1.10.16 reports OK for any ledger not cached by the process.
    let run = node.run("1.10.16", &["storage", "init"]);
    assert_eq!(run.body(), "Creating ledger 'default'... OK\r\n");
    let run = node.run("1.8.2", &["storage", "init", "--name", "books"]);
    assert_eq!(run.body(), "Creating ledger 'books'... OK\r\n");
    assert_eq!(
        sqlite_versions(&node.data_dir().join("numary_books.db")),
        range(0, 17)
    );
}

#[test]
fn delete_removes_file_and_registry_row() {
    let node = Node::new();
    node.run("1.8.2", &["storage", "upgrade", "gone"]);
    let run = node.run("1.8.2", &["storage", "delete", "gone"]);
    assert_eq!((run.code, run.body()), (0, "Storage deleted!\n"));
    assert!(!node.data_dir().join("numary_gone.db").exists());
    assert_eq!(
        node.run("1.8.2", &["storage", "list"]).body(),
        "No ledger found.\n"
    );
    let run = node.run("1.8.2", &["storage", "delete", "_system"]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.starts_with("Error: reserved name\n"),
        "{}",
        run.stderr
    );
}

#[test]
fn config_file_is_read_and_silences_the_noise_line() {
    let node = Node::new();
    let cfg = node.home.join(".numary");
    std::fs::create_dir_all(&cfg).unwrap();
    let dir = node.home.join("from-config");
    std::fs::write(
        cfg.join("numary.yaml"),
        format!(
            "storage:\n  dir: {}\n  sqlite:\n    db_name: books\n",
            dir.display()
        ),
    )
    .unwrap();
    let run = node.run("1.8.2", &["storage", "upgrade", "main"]);
    assert_eq!(run.stdout, "Storage 'main' migrated\r\n");
    assert!(dir.join("books_main.db").is_file());
    // The environment beats the file.
    let env_dir = node.home.join("from-env");
    let run = node.run_env(
        "1.8.2",
        &["storage", "upgrade", "main"],
        &[("NUMARY_STORAGE_DIR", env_dir.to_str().unwrap())],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(env_dir.join("books_main.db").is_file());
}

#[test]
fn releases_without_the_registry_have_no_list_command() {
    let node = Node::new();
    let run = node.run("1.3.1", &["storage", "list"]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.starts_with("Usage:\n  numary storage [command]"),
        "{}",
        run.stdout
    );
    assert!(!run.stdout.contains("upgrade"));
}

#[test]
fn early_1_4_releases_pause_two_seconds_at_driver_init() {
    let node = Node::new();
    let start = std::time::Instant::now();
    let run = node.run("1.4.1", &["storage", "list"]);
    assert_eq!((run.code, run.stdout.as_str()), (0, "No ledger found.\n"));
    assert!(start.elapsed() >= std::time::Duration::from_secs(2));
}
