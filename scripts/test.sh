#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (OpenSSH server, PostgreSQL),
# starts a private PostgreSQL server on 127.0.0.1, then runs fmt, clippy and every test.
# Usage: scripts/test.sh [extra cargo nextest run (or cargo test) args]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }

scripts/deps.sh

# A private PostgreSQL server for the tests (never the system one); stopped on exit.
eval "$(scripts/pg.sh start)"
# Stop it afterwards only if this run started it (a developer may have one running for the lab).
if [ "$FLEETUP_PG_STARTED" = 1 ]; then trap 'scripts/pg.sh stop >/dev/null 2>&1 || true' EXIT; fi
export FLEETUP_TEST_PG_URL

log "cargo fmt --check"
cargo fmt --all -- --check
log "cargo clippy"
cargo clippy --workspace --all-targets -- -D warnings
# The integration tests spend most of their time waiting on sshd, PostgreSQL and the lab's
# health gates, so they run as one pool across every test binary (cargo-nextest, when the
# machine has it) rather than one binary after another; FLEETUP_TEST_THREADS sets the pool.
if cargo nextest --version >/dev/null 2>&1; then
  # Each test process would otherwise ask cargo for the simulator (tests/common/lab_fixture.rs).
  cargo build --workspace --bins --quiet
  export FLEETUP_SIM="${CARGO_TARGET_DIR:-$PWD/target}/debug/numary-sim"
  log "cargo nextest run (${FLEETUP_TEST_THREADS:-4} at once)"
  cargo nextest run --workspace --no-fail-fast --test-threads "${FLEETUP_TEST_THREADS:-4}" "$@"
  log "cargo test --doc"
  cargo test --workspace --doc
else
  log "cargo test (cargo-nextest not found)"
  cargo test --workspace "$@"
fi
