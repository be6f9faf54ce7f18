#!/usr/bin/env bash
# Installs what the lab and the tests need when it is missing: OpenSSH server and client,
# PostgreSQL server, client and contrib (pgcrypto, pg_trgm), curl, sqlite3. Uses apt-get as root; as an
# ordinary user it only names what to install. Sourced or run by scripts/test.sh and scripts/lab.sh.
set -euo pipefail

need_pkgs=()
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need_pkgs+=(openssh-server)
command -v ssh >/dev/null 2>&1 && command -v ssh-keygen >/dev/null 2>&1 || need_pkgs+=(openssh-client)
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1 || true)
if [ -z "$pg_bin" ] || [ ! -x "$pg_bin/initdb" ]; then need_pkgs+=(postgresql postgresql-contrib); fi
command -v pg_dump >/dev/null 2>&1 && command -v psql >/dev/null 2>&1 || need_pkgs+=(postgresql-client)
command -v curl >/dev/null 2>&1 || need_pkgs+=(curl)
# The read-only schema probe reads SQLite nodes' `migrations` tables with it.
command -v sqlite3 >/dev/null 2>&1 || need_pkgs+=(sqlite3)

if [ ${#need_pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps.sh: missing packages: ${need_pkgs[*]}; install them (sudo apt-get install ${need_pkgs[*]}) or run as root" >&2
    exit 2
  fi
  echo "deps.sh: installing ${need_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need_pkgs[@]}" >/dev/null
fi
