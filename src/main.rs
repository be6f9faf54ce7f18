//! The `fleetup` command: parses flags, runs one command of the library, renders the outcome.

mod cli;

fn main() {
    let code = cli::main();
    std::process::exit(code);
}
