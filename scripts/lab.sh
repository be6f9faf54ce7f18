#!/usr/bin/env bash
# Run fleetup on a local practice fleet: builds the workspace (fleetup and the numary simulator),
# starts a lab (real sshd servers on 127.0.0.1, the simulator as each node's `numary`) and shows
# the fleet's status through the lab's inventory.
#
#   scripts/lab.sh [fleetup lab up flags]   e.g. --nodes 1, --version 1.7.4, --driver postgres
#   scripts/lab.sh down [--purge]           stop it (and delete its dir)
#   scripts/lab.sh status                   the lab's processes, versions and storage
#
# The lab lives in ./lab (or $FLEETUP_LAB_DIR, or --dir DIR). With --driver postgres and no
# --pg-url / FLEETUP_LAB_PG_URL, a private PostgreSQL server is started with scripts/pg.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'lab.sh: %s\n' "$*" >&2; }

dir=${FLEETUP_LAB_DIR:-lab}
action=up
case "${1:-}" in
  down | status) action=$1; shift ;;
esac

args=("$@")
postgres=0
pg_url_given=0
for ((i = 0; i < ${#args[@]}; i++)); do
  case "${args[$i]}" in
    --dir) dir=${args[$((i + 1))]:-$dir} ;;
    --dir=*) dir=${args[$i]#--dir=} ;;
    --driver) [ "${args[$((i + 1))]:-}" = postgres ] && postgres=1 ;;
    --driver=postgres) postgres=1 ;;
    --pg-url | --pg-url=*) pg_url_given=1 ;;
  esac
done

has_dir=0
for a in "${args[@]}"; do case $a in --dir | --dir=*) has_dir=1 ;; esac; done
if [ "$has_dir" = 0 ]; then args+=(--dir "$dir"); fi

log "cargo build --workspace"
cargo build --quiet --workspace
fleetup=target/debug/fleetup

case $action in
  down | status) exec "$fleetup" lab "$action" "${args[@]}" ;;
esac

if [ "$postgres" = 1 ] && [ "$pg_url_given" = 0 ] && [ -z "${FLEETUP_LAB_PG_URL:-}" ]; then
  log "starting a private PostgreSQL server (scripts/pg.sh start)"
  eval "$(scripts/pg.sh start)"
  export FLEETUP_LAB_PG_URL=$FLEETUP_TEST_PG_URL
fi

"$fleetup" lab up "${args[@]}"

echo
if "$fleetup" status --help >/dev/null 2>&1; then
  log "fleetup -i $dir/inventory.toml status"
  "$fleetup" -i "$dir/inventory.toml" status
else
  log "fleetup -i $dir/inventory.toml inventory list"
  "$fleetup" -i "$dir/inventory.toml" inventory list
fi

cat <<EOF

The lab runs in the background. Try:
  $fleetup -i $dir/inventory.toml status
  $fleetup -i $dir/inventory.toml exec -- uname -n
  $fleetup lab status --dir $dir
Stop it with:
  scripts/lab.sh down --dir $dir [--purge]
EOF
