//! fleetup: upgrade fleets of Formance Ledger v1 (`numary`) nodes over SSH.
//!
//! This crate is the engine. It never prints and never exits: it returns data (plans, facts,
//! verdicts) and emits events; the `fleetup` binary (`src/main.rs`, `src/cli/`) renders them and
//! maps outcomes to the exit codes of [`exit_code`].
#![deny(clippy::print_stdout, clippy::print_stderr, clippy::exit)]

pub mod dblock;
pub mod envfile;
pub mod error;
pub mod events;
pub mod exit_code;
pub mod facts;
#[doc(hidden)]
pub mod fuzz;
pub mod inventory;
pub mod journal;
pub mod lab;
pub mod lock;
pub mod node;
pub mod numary;
pub mod operation;
pub mod plan;
pub mod policy;
pub mod preflight;
pub mod redact;
pub mod runner;
pub mod schema;
pub mod scripted;
pub mod shell;
pub mod ssh;
pub mod tasks;
pub mod terminal;
pub mod version;

pub use error::Failure;
pub use version::Version;
