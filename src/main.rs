//! The `fleetup` command: parses flags, runs one command of the library, renders the outcome.

// Output goes through `cli::out`, which redacts it.
#![deny(clippy::print_stdout, clippy::print_stderr)]

mod cli;

fn main() {
    let code = cli::main();
    std::process::exit(code);
}
