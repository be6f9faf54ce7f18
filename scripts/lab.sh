#!/usr/bin/env bash
# The main job on a local practice fleet. With no arguments (or `demo`): installs what is missing
# (scripts/deps.sh), builds fleetup and the simulator in release mode (the README's install build,
# once: later runs reuse it), starts a private PostgreSQL, brings up a 3-node lab at numary 1.7.4
# sharing one database (real sshd servers on 127.0.0.1, the simulator as each node's `numary`),
# audits the upgrade to 1.8.2 with `fleetup check`, runs it with `fleetup upgrade --plan ID`, and
# shows the fleet's status and the run journal.
#
#   scripts/lab.sh [demo] [--nodes N] [--driver sqlite|postgres] [--dir DIR] [--pg-url URL]
#                                           the whole job, in ./lab
#   scripts/lab.sh up [fleetup lab up flags] just a lab, e.g. --nodes 1 --version 1.6.1 --driver sqlite
#   scripts/lab.sh down [--dir DIR] [--purge]
#                                           stop it, and the PostgreSQL server this script started
#                                           (--purge: delete the lab dir and that server's data)
#   scripts/lab.sh status                   the lab's processes, versions and storage
#
# The lab lives in ./lab (or $FLEETUP_LAB_DIR, or --dir DIR). With --driver postgres and no
# --pg-url / FLEETUP_LAB_PG_URL, a private PostgreSQL server is started with scripts/pg.sh; the
# labs using it are listed in $FLEETUP_PG_DIR/labs (default /tmp/fleetup-pg/labs), and `down`
# stops it once no lab is left on it. fleetup is built in ${CARGO_TARGET_DIR:-target}/release.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD

log() { printf 'lab.sh: %s\n' "$*" >&2; }

dir=${FLEETUP_LAB_DIR:-lab}
pg_dir=${FLEETUP_PG_DIR:-/tmp/fleetup-pg}
action=demo
case "${1:-}" in
  demo | up | down | status) action=$1; shift ;;
esac

args=("$@")
postgres=0
pg_url_given=0
purge=0
has_dir=0
for ((i = 0; i < ${#args[@]}; i++)); do
  a=${args[$i]}
  case "$a" in
    --dir) dir=${args[$((i + 1))]:-$dir}; has_dir=1 ;;
    --dir=*) dir=${a#--dir=}; has_dir=1 ;;
    --driver) [ "${args[$((i + 1))]:-}" = postgres ] && postgres=1 ;;
    --driver=postgres) postgres=1 ;;
    --pg-url | --pg-url=*) pg_url_given=1 ;;
    --purge) purge=1 ;;
  esac
  if [ "$action" = demo ]; then
    case "$a" in
      --nodes | --driver | --dir | --pg-url) i=$((i + 1)) ;;
      --nodes=* | --driver=* | --dir=* | --pg-url=*) ;;
      *)
        log "the demo takes --nodes, --driver, --dir and --pg-url, not \`$a\`; for any other lab use \`scripts/lab.sh up $*\`"
        exit 2
        ;;
    esac
  fi
done
if [ "$action" = demo ]; then
  has() { for a in "${args[@]}"; do case $a in "$1" | "$1"=*) return 0 ;; esac; done; return 1; }
  has --nodes || args+=(--nodes 3)
  has --driver || { args+=(--driver postgres); postgres=1; }
  args+=(--version 1.7.4)
fi
if [ "$has_dir" = 0 ]; then
  args+=(--dir "$dir")
fi
lab_abs=$(realpath -m "$dir")

target=${CARGO_TARGET_DIR:-target}
fleetup=$target/release/fleetup

build() {
  log "cargo build --release --workspace   (fleetup and the simulator; the first build takes a few minutes)"
  cargo build --release --workspace
}

# The labs using the private PostgreSQL server this script started, one absolute dir per line.
pg_labs=$pg_dir/labs
pg_forget_lab() {
  [ -f "$pg_labs" ] || return 0
  grep -vxF "$lab_abs" "$pg_labs" >"$pg_labs.new" || true
  mv "$pg_labs.new" "$pg_labs"
}
pg_stop_if_unused() {
  [ -f "$pg_labs" ] || return 0
  if [ -s "$pg_labs" ]; then
    log "the private PostgreSQL server stays up: still used by $(tr '\n' ' ' <"$pg_labs")"
    return 0
  fi
  log "stopping the private PostgreSQL server it started (scripts/pg.sh stop)"
  scripts/pg.sh stop
  rm -f "$pg_labs"
  if [ "$purge" = 1 ]; then
    log "deleting its data ($pg_dir)"
    rm -rf "$pg_dir"
  fi
}

case $action in
  down)
    [ -x "$fleetup" ] || build
    "$fleetup" lab down "${args[@]}"
    pg_forget_lab
    pg_stop_if_unused
    exit 0
    ;;
  status)
    [ -x "$fleetup" ] || build
    exec "$fleetup" lab status "${args[@]}"
    ;;
esac

scripts/deps.sh
build

if [ "$postgres" = 1 ] && [ "$pg_url_given" = 0 ] && [ -z "${FLEETUP_LAB_PG_URL:-}" ]; then
  log "starting a private PostgreSQL server (scripts/pg.sh start)"
  eval "$(scripts/pg.sh start)"
  export FLEETUP_LAB_PG_URL=$FLEETUP_TEST_PG_URL
  # Only a server this script started is this script's to stop.
  if [ "$FLEETUP_PG_STARTED" = 1 ] || [ -f "$pg_labs" ]; then
    touch "$pg_labs"
    grep -qxF "$lab_abs" "$pg_labs" || echo "$lab_abs" >>"$pg_labs"
  fi
fi

if [ "$action" = demo ] && [ -f "$dir/lab.json" ]; then
  log "an earlier lab is in $dir: bringing it down first"
  "$fleetup" lab down --dir "$dir" --purge
fi
"$fleetup" lab up "${args[@]}"
inv=$dir/inventory.toml

echo
log "$fleetup -i $inv status"
"$fleetup" -i "$inv" status

if [ "$action" = demo ]; then
  release=$dir/numary-1.8.2
  "$fleetup" lab release --dir "$dir" --version 1.8.2 --out "$release"
  echo
  log "$fleetup -i $inv check --to 1.8.2 --binary $release --stop   (the dry-run audit: changes nothing)"
  "$fleetup" -i "$inv" check --to 1.8.2 --binary "$release" --stop
  plan=$("$fleetup" -i "$inv" -q check --to 1.8.2 --binary "$release" --stop --format json |
    sed -n 's/.*"plan_id": *"\([0-9a-f]*\)".*/\1/p' | head -n1)
  echo
  log "$fleetup -i $inv upgrade --to 1.8.2 --binary $release --stop --plan $plan"
  "$fleetup" -i "$inv" upgrade --to 1.8.2 --binary "$release" --stop --plan "$plan"
  echo
  log "$fleetup -i $inv status"
  "$fleetup" -i "$inv" status
  echo
  log "$fleetup -i $inv runs list"
  "$fleetup" -i "$inv" runs list
fi

cat <<EOF

The lab runs in the background. From $repo, try:
  $fleetup -i $inv status
  $fleetup -i $inv exec -- uname -n
  $fleetup -i $inv runs list
  $fleetup lab status --dir $dir
(or put fleetup on your PATH: export PATH="$(realpath -m "$target")/release:\$PATH")
Stop it with:
  scripts/lab.sh down --dir $dir          # add --purge to delete it
EOF
