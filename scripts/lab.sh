#!/usr/bin/env bash
# The main job on a local practice fleet. With no arguments (or `demo`): installs what is missing
# (scripts/deps.sh), builds the workspace, starts a private PostgreSQL, brings up a 3-node lab at
# numary 1.7.4 sharing one database (real sshd servers on 127.0.0.1, the simulator as each node's
# `numary`), audits the upgrade to 1.8.2 with `fleetup check`, runs it with `fleetup upgrade
# --plan ID`, and shows the fleet's status and the run journal.
#
#   scripts/lab.sh [demo]                   the whole job, in ./lab
#   scripts/lab.sh up [fleetup lab up flags] just a lab, e.g. --nodes 1 --version 1.6.1 --driver sqlite
#   scripts/lab.sh down [--purge]           stop it (and delete its dir)
#   scripts/lab.sh status                   the lab's processes, versions and storage
#
# The lab lives in ./lab (or $FLEETUP_LAB_DIR, or --dir DIR). With --driver postgres and no
# --pg-url / FLEETUP_LAB_PG_URL, a private PostgreSQL server is started with scripts/pg.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'lab.sh: %s\n' "$*" >&2; }

dir=${FLEETUP_LAB_DIR:-lab}
action=demo
case "${1:-}" in
  demo | up | down | status) action=$1; shift ;;
esac
if [ "$action" = demo ]; then
  [ $# -eq 0 ] || { log "demo takes no flags; use \`scripts/lab.sh up ...\`"; exit 2; }
  set -- --nodes 3 --version 1.7.4 --driver postgres
fi

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

[ "$action" = down ] || scripts/deps.sh
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

if [ "$action" = demo ] && [ -f "$dir/lab.json" ]; then
  log "an earlier lab is in $dir: bringing it down first"
  "$fleetup" lab down --dir "$dir" --purge
fi
"$fleetup" lab up "${args[@]}"
inv=$dir/inventory.toml

echo
log "fleetup -i $inv status"
"$fleetup" -i "$inv" status

if [ "$action" = demo ]; then
  release=$dir/numary-1.8.2
  "$fleetup" lab release --dir "$dir" --version 1.8.2 --out "$release"
  echo
  log "fleetup -i $inv check --to 1.8.2 --binary $release --stop   (the dry-run audit: changes nothing)"
  "$fleetup" -i "$inv" check --to 1.8.2 --binary "$release" --stop
  plan=$("$fleetup" -i "$inv" -q check --to 1.8.2 --binary "$release" --stop --format json |
    sed -n 's/^ *"plan_id": *"\([0-9a-f]*\)".*/\1/p' | head -n1)
  echo
  log "fleetup -i $inv upgrade --to 1.8.2 --binary $release --stop --plan $plan"
  "$fleetup" -i "$inv" upgrade --to 1.8.2 --binary "$release" --stop --plan "$plan"
  echo
  log "fleetup -i $inv status"
  "$fleetup" -i "$inv" status
  echo
  log "fleetup -i $inv runs list"
  "$fleetup" -i "$inv" runs list
fi

cat <<EOF

The lab runs in the background. Try:
  $fleetup -i $inv status
  $fleetup -i $inv exec -- uname -n
  $fleetup -i $inv runs list
  $fleetup lab status --dir $dir
Stop it with:
  scripts/lab.sh down --dir $dir [--purge]
EOF
