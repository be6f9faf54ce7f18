#!/usr/bin/env bash
# Start or stop a private PostgreSQL server for tests and the lab, on 127.0.0.1.
#   scripts/pg.sh start   prints `FLEETUP_TEST_PG_URL=...` (eval it); idempotent
#   scripts/pg.sh stop
# Data lives in $FLEETUP_PG_DIR (default /tmp/fleetup-pg); port $FLEETUP_PG_PORT (default 55432).
# The role `fleetup` has a password on purpose: tests prove it never reaches any output.
set -euo pipefail
dir=${FLEETUP_PG_DIR:-/tmp/fleetup-pg}
port=${FLEETUP_PG_PORT:-55432}
password=${FLEETUP_PG_PASSWORD:-fleetup-Secr3t-pw}
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n1)
[ -n "$pg_bin" ] || { echo "pg.sh: PostgreSQL is not installed (apt-get install postgresql)" >&2; exit 2; }

as_owner() {
  if [ "$(id -u)" -eq 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi
}

case "${1:-}" in
  start)
    if [ ! -f "$dir/data/PG_VERSION" ]; then
      mkdir -p "$dir"
      [ "$(id -u)" -eq 0 ] && chown postgres: "$dir"
      as_owner "$pg_bin/initdb" -D "$dir/data" -U postgres --auth-local=trust --auth-host=scram-sha-256 >"$dir/initdb.log" 2>&1 \
        || { cat "$dir/initdb.log" >&2; exit 1; }
    fi
    started=0
    if ! as_owner "$pg_bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then
      started=1
      as_owner "$pg_bin/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -c port=$port -c unix_socket_directories=$dir -c max_connections=200" start >&2
    fi
    as_owner "$pg_bin/psql" -h "$dir" -p "$port" -U postgres -d postgres -qAt -v ON_ERROR_STOP=1 >/dev/null <<SQL
DO \$\$ BEGIN
  IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'fleetup') THEN
    CREATE ROLE fleetup LOGIN SUPERUSER PASSWORD '$password';
  END IF;
END \$\$;
SQL
    echo "FLEETUP_TEST_PG_URL=postgresql://fleetup:$password@127.0.0.1:$port/postgres"
    echo "FLEETUP_PG_STARTED=$started"
    ;;
  stop)
    [ -f "$dir/data/PG_VERSION" ] && as_owner "$pg_bin/pg_ctl" -D "$dir/data" -m fast stop >&2 || true
    ;;
  *)
    echo "usage: scripts/pg.sh start|stop" >&2; exit 2 ;;
esac
