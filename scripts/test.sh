#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (OpenSSH server, PostgreSQL),
# starts a private PostgreSQL server on 127.0.0.1, then runs fmt, clippy and every test.
# Usage: scripts/test.sh [extra cargo test args]
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
log "cargo test"
cargo test --workspace "$@"
