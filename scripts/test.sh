#!/usr/bin/env bash
# The test command: installs what the tests need when it is missing (OpenSSH server, PostgreSQL),
# starts a private PostgreSQL server on 127.0.0.1, then runs fmt, clippy and every test.
# Usage: scripts/test.sh [extra cargo test args]
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'test.sh: %s\n' "$*" >&2; }

need_pkgs=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v ssh-keygen >/dev/null 2>&1 || need_pkgs+=(openssh-client)
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
[ -n "$pg_bin" ] && [ -x "$pg_bin/initdb" ] || need_pkgs+=(postgresql postgresql-contrib)
command -v pg_dump >/dev/null 2>&1 || need_pkgs+=(postgresql-client)
if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    log "missing packages: ${need_pkgs[*]}; install them (apt-get install ${need_pkgs[*]}) or run as root"
    exit 2
  fi
  log "installing ${need_pkgs[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi

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
