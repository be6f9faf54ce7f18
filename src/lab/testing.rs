//! For the lab's own unit tests: the simulator (built on demand, as the integration tests'
//! fixture does) and a small lab spec in a fresh temp dir.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

use super::{Driver, LabSpec};

/// `numary-sim`, built once per test binary when it is not beside it yet.
pub fn sim() -> PathBuf {
    static SIM: OnceLock<PathBuf> = OnceLock::new();
    SIM.get_or_init(|| {
        if let Ok(found) = super::find_sim(None) {
            return found;
        }
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let status = Command::new(cargo)
            .args([
                "build",
                "--quiet",
                "-p",
                "numary-sim",
                "--bin",
                "numary-sim",
            ])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo build");
        assert!(status.success(), "cannot build numary-sim");
        super::find_sim(None).expect("numary-sim beside the test binary")
    })
    .clone()
}

/// `nodes` SQLite nodes at 1.8.2, one ledger with a few transactions, services started.
pub fn spec(nodes: usize) -> LabSpec {
    let dir = tempfile::Builder::new()
        .prefix("fleetup-lab-unit-")
        .tempdir()
        .expect("temp dir")
        .keep();
    let mut spec = LabSpec::new(dir);
    spec.nodes = nodes;
    spec.driver = Driver::Sqlite;
    spec.ledgers = vec!["default".into()];
    spec.transactions = 2;
    spec.sim = Some(sim());
    spec
}
