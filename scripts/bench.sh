#!/usr/bin/env bash
# Benchmark `fleetup check` and `fleetup upgrade` on Postgres lab fleets, optionally against a
# baseline build of fleetup measured in turn (A B A B) on the same machine in the same run.
#
#   scripts/bench.sh [--nodes N] [--upgrade-nodes M] [--runs R] [--upgrade-runs U]
#                    [--fleetup BIN] [--baseline BIN] [--dir DIR] [--pg-url URL]
#
#   --nodes N          lab size for `check` (default 50)
#   --upgrade-nodes M  lab size for `upgrade` (default 20); 0 skips the upgrade job
#   --runs R           timed `check` runs per binary, after one warm-up each (default 5)
#   --upgrade-runs U   timed `upgrade` runs per binary, each on its own fresh lab (default R)
#   --fleetup BIN      the fleetup under test (default target/release/fleetup; built with
#                      `cargo build --release --workspace` when that default is missing)
#   --baseline BIN     a baseline fleetup, measured in turn with BIN on the same lab; its
#                      inventory is a copy of the lab's with the keys it predates removed
#   --dir DIR          where labs, samples and logs go (default: a fresh /tmp/fleetup-bench.XXXXXX)
#   --pg-url URL       Postgres server for the labs (default FLEETUP_LAB_PG_URL, else
#                      FLEETUP_TEST_PG_URL, else a private server started with scripts/pg.sh)
#
# Labs are brought up with BIN (`fleetup lab up --driver postgres --version 1.7.4 --stopped`),
# the release with `fleetup lab release --version 1.8.2`. Wall time comes from `date +%s%N`;
# controller CPU (user+sys) and peak RSS from /usr/bin/time when it is installed. Every lab this
# script starts is brought down (`lab down --purge`) on exit, also on errors and Ctrl-C.
# It prints one table: per job and figure, BIN's median/min/max, the baseline's median/min/max,
# the ratio of the medians (BIN/baseline) and the median of the per-pair ratios.
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf 'bench.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

nodes=50
upgrade_nodes=20
runs=5
upgrade_runs=
fleetup=target/release/fleetup
fleetup_given=0
baseline=
dir=
pg_url=${FLEETUP_LAB_PG_URL:-${FLEETUP_TEST_PG_URL:-}}
from=1.7.4
to=1.8.2

need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) need_arg "$@"; nodes=$2; shift 2 ;;
    --upgrade-nodes) need_arg "$@"; upgrade_nodes=$2; shift 2 ;;
    --runs) need_arg "$@"; runs=$2; shift 2 ;;
    --upgrade-runs) need_arg "$@"; upgrade_runs=$2; shift 2 ;;
    --fleetup) need_arg "$@"; fleetup=$2; fleetup_given=1; shift 2 ;;
    --baseline) need_arg "$@"; baseline=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    --pg-url) need_arg "$@"; pg_url=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument \`$1\` (see --help)" ;;
  esac
done
upgrade_runs=${upgrade_runs:-$runs}
for v in nodes upgrade_nodes runs upgrade_runs; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v//_/-} must be a number, not \`${!v}\`"
done
[ "$nodes" -ge 1 ] && [ "$runs" -ge 1 ] || die "--nodes and --runs must be at least 1"

# --- binaries -------------------------------------------------------------------------------
if [ ! -x "$fleetup" ]; then
  [ "$fleetup_given" = 0 ] || die "--fleetup $fleetup is not an executable"
  log "cargo build --release --workspace (no $fleetup yet)"
  cargo build --release --workspace
fi
fleetup=$(cd "$(dirname "$fleetup")" && pwd)/$(basename "$fleetup")
if [ -n "$baseline" ]; then
  [ -x "$baseline" ] || die "--baseline $baseline is not an executable"
  baseline=$(cd "$(dirname "$baseline")" && pwd)/$(basename "$baseline")
fi

# --- measuring ------------------------------------------------------------------------------
timebin=
if [ -x /usr/bin/time ] && /usr/bin/time -f '%U' -o /dev/null true 2>/dev/null; then
  timebin=/usr/bin/time
elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
  log "installing GNU time (apt-get install time) for CPU and peak RSS"
  if DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null 2>&1 &&
    [ -x /usr/bin/time ]; then
    timebin=/usr/bin/time
  fi
fi
[ -n "$timebin" ] || log "no GNU /usr/bin/time: measuring wall time only"

if [ -z "$pg_url" ]; then
  log "starting a private PostgreSQL server (scripts/pg.sh start)"
  eval "$(scripts/pg.sh start)"
  pg_url=$FLEETUP_TEST_PG_URL
fi

if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/fleetup-bench.XXXXXX); fi
mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
samples=$dir/samples
logs=$dir/logs
rm -rf "$samples"
mkdir -p "$samples" "$logs"

# --- labs, always brought down ----------------------------------------------------------------
live_labs=()
lab_down() { # DIR
  local d=$1 keep=() l
  "$fleetup" lab down --dir "$d" --purge >>"$logs/lab-down.log" 2>&1 || log "could not bring down the lab in $d (see $logs/lab-down.log)"
  for l in "${live_labs[@]}"; do [ "$l" = "$d" ] || keep+=("$l"); done
  live_labs=("${keep[@]}")
}
cleanup() {
  local rc=$? l
  trap - EXIT INT TERM
  for l in "${live_labs[@]}"; do
    log "bringing down the lab in $l"
    "$fleetup" lab down --dir "$l" --purge >>"$logs/lab-down.log" 2>&1 || log "could not bring down the lab in $l"
  done
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# Every port of the lab (SSH and API), one a line, from its inventory.
lab_ports() { sed -n 's/^port = \([0-9]*\)$/\1/p; s/^api = "[^"]*:\([0-9]*\)"$/\1/p' "$1/inventory.toml"; }
lab_up() { # DIR NODES
  local d=$1 n=$2 try dup
  for try in 1 2 3; do
    [ ! -e "$d" ] || "$fleetup" lab down --dir "$d" --purge >>"$logs/lab-down.log" 2>&1 || true
    live_labs+=("$d")
    "$fleetup" -q lab up --dir "$d" --nodes "$n" --version "$from" --driver postgres \
      --pg-url "$pg_url" --stopped >>"$logs/lab-up.log" 2>&1 ||
      { tail -n 20 "$logs/lab-up.log" >&2; die "lab up in $d failed"; }
    # `lab up` can hand one port number to two servers (seen: node-3's API port was node-20's
    # SSH port), which the audit then rightly refuses (`api-port`): such a lab is made again.
    dup=$(lab_ports "$d" | sort | uniq -d | tr '\n' ' ')
    [ -n "$dup" ] || break
    log "warning: lab in $d uses port(s) ${dup}twice (attempt $try): bringing it up again"
    echo "$d: ${dup}" >>"$samples/port-clashes"
    lab_down "$d"
    [ "$try" -lt 3 ] || die "lab up in $d gave duplicate ports three times"
  done
  "$fleetup" -q lab release --dir "$d" --version "$to" --out "$d/numary-$to" >>"$logs/lab-up.log" 2>&1 ||
    die "lab release in $d failed"
  if [ -n "$baseline" ]; then
    # The baseline's inventory is strict and predates some keys the lab writes (`storage = ...`
    # under [ledger]): a copy without them, in its own dir so its journals stay apart.
    mkdir -p "$d/baseline"
    grep -v '^storage = ' "$d/inventory.toml" >"$d/baseline/inventory.toml"
    "$baseline" -q -i "$d/baseline/inventory.toml" inventory check >>"$logs/lab-up.log" 2>&1 ||
      { tail -n 20 "$logs/lab-up.log" >&2; die "the baseline rejects $d/baseline/inventory.toml"; }
  fi
}

inventory_for() { # WHICH DIR
  if [ "$1" = base ]; then echo "$2/baseline/inventory.toml"; else echo "$2/inventory.toml"; fi
}
bin_for() { if [ "$1" = base ]; then echo "$baseline"; else echo "$fleetup"; fi; }

# measure JOB WHICH LABEL CMD...: runs CMD once, appends wall/cpu/rss to $samples/JOB.WHICH.*
measure() {
  local job=$1 which=$2 label=$3 rc=0 t0 t1 wall u s m
  shift 3
  local out=$logs/$job-$which-$label
  t0=$(date +%s%N)
  if [ -n "$timebin" ]; then
    "$timebin" -f '%U %S %M' -o "$out.time" "$@" >"$out.out" 2>"$out.err" </dev/null || rc=$?
  else
    "$@" >"$out.out" 2>"$out.err" </dev/null || rc=$?
  fi
  t1=$(date +%s%N)
  if [ "$rc" -ne 0 ] && [ "$job" != upgrade ] && grep -q '"outcome": *"blocked"' "$out.out"; then
    # A check that ran to its verdict but found a blocker on this stopped, fresh lab (seen: a
    # transient `db-sessions` finding, one node's probe seeing another's psql session): the audit
    # did its full work, so the sample counts; the finding is reported.
    log "warning: $job $which $label exited $rc (blocked): $(awk -F'"' '/"check": /{c=$4} /"ok": false/{print c}' "$out.out" | sort -u | tr '\n' ' ')"
    echo "$job $which $label" >>"$samples/blocked"
    rc=0
  fi
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$out.err" >&2
    die "$job with $which failed (exit $rc): $* (output in $out.out, $out.err)"
  fi
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  echo "$wall" >>"$samples/$job.$which.wall"
  if [ -n "$timebin" ]; then
    read -r u s m < <(tail -n 1 "$out.time")
    awk -v u="$u" -v s="$s" 'BEGIN { printf "%.2f\n", u + s }' >>"$samples/$job.$which.cpu"
    awk -v m="$m" 'BEGIN { printf "%.1f\n", m / 1024 }' >>"$samples/$job.$which.rss"
    log "$job $which $label: ${wall}s wall, $(tail -n 1 "$samples/$job.$which.cpu")s cpu, $(tail -n 1 "$samples/$job.$which.rss") MB"
  else
    log "$job $which $label: ${wall}s wall"
  fi
}

which_list=(new)
[ -z "$baseline" ] || which_list=(new base)
log "fleetup:  $fleetup"
[ -z "$baseline" ] || log "baseline: $baseline"
log "work dir: $dir"

# --- check: one lab, warm-up, then R runs in turn ---------------------------------------------
check_lab=$dir/lab-check
log "lab up: $nodes nodes at $from (postgres, stopped) in $check_lab"
lab_up "$check_lab" "$nodes"
check_cmd() { # WHICH: sets cmd=(...)
  cmd=("$(bin_for "$1")" -i "$(inventory_for "$1" "$check_lab")" check --to "$to"
    --binary "$check_lab/numary-$to" --format json)
}
cmd=()
for w in "${which_list[@]}"; do
  check_cmd "$w"
  measure warmup "$w" check "${cmd[@]}"
done
for ((r = 1; r <= runs; r++)); do
  for w in "${which_list[@]}"; do
    check_cmd "$w"
    measure check "$w" "$r" "${cmd[@]}"
  done
done
lab_down "$check_lab"

# --- upgrade: a fresh lab per run and binary --------------------------------------------------
if [ "$upgrade_nodes" -gt 0 ] && [ "$upgrade_runs" -gt 0 ]; then
  mkdir -p "$dir/journals"
  for ((r = 1; r <= upgrade_runs; r++)); do
    for w in "${which_list[@]}"; do
      ul=$dir/lab-upgrade-$w-$r
      log "lab up: $upgrade_nodes nodes at $from (postgres, stopped) in $ul"
      lab_up "$ul" "$upgrade_nodes"
      measure upgrade "$w" "$r" "$(bin_for "$w")" -i "$(inventory_for "$w" "$ul")" \
        upgrade --to "$to" --binary "$ul/numary-$to"
      jdir=$(dirname "$(inventory_for "$w" "$ul")")/.fleetup/runs
      for j in "$jdir"/*.jsonl; do
        [ -e "$j" ] && cp "$j" "$dir/journals/upgrade-$w-$r-$(basename "$j")"
      done
      lab_down "$ul"
    done
  done
fi

# --- the table --------------------------------------------------------------------------------
stats() { # FILE -> "median min max"
  sort -g "$1" | awk '{ a[NR] = $1 } END {
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf "%.3f %.3f %.3f\n", m, a[1], a[NR] }'
}
pair_ratio() { # NEWFILE BASEFILE -> median of per-run ratios
  paste "$1" "$2" | awk '$2 > 0 { print $1 / $2 }' | sort -g | awk '{ a[NR] = $1 } END {
    if (NR == 0) { print "-"; exit }
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf "%.2f\n", m }'
}
figures=(wall)
[ -z "$timebin" ] || figures=(wall cpu rss)
unit() { case $1 in wall | cpu) echo s ;; rss) echo MB ;; esac; }

echo
printf 'fleetup %s, baseline %s\n' "$fleetup" "${baseline:-none}"
printf 'check: %s nodes, %s runs after 1 warm-up; upgrade %s -> %s: %s nodes, %s runs (fresh lab each)\n' \
  "$nodes" "$runs" "$from" "$to" "$upgrade_nodes" "$upgrade_runs"
printf '%-22s %9s %9s %9s   %9s %9s %9s   %6s %6s\n' job "median" min max "base med" "base min" "base max" ratio "pair"
for job in check upgrade; do
  for f in "${figures[@]}"; do
    nf=$samples/$job.new.$f
    [ -s "$nf" ] || continue
    read -r nm nmin nmax < <(stats "$nf")
    bm=- bmin=- bmax=- ratio=- pair=-
    bf=$samples/$job.base.$f
    if [ -s "$bf" ]; then
      read -r bm bmin bmax < <(stats "$bf")
      ratio=$(awk -v a="$nm" -v b="$bm" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
      pair=$(pair_ratio "$nf" "$bf")
    fi
    printf '%-22s %9s %9s %9s   %9s %9s %9s   %6s %6s\n' "$job $f ($(unit "$f"))" \
      "$nm" "$nmin" "$nmax" "$bm" "$bmin" "$bmax" "$ratio" "$pair"
  done
done
echo
if [ -s "$samples/blocked" ]; then
  echo "check runs that reported a blocker (counted, see $logs): $(tr '\n' ',' <"$samples/blocked" | sed 's/,$//')"
fi
if [ -s "$samples/port-clashes" ]; then
  echo "labs made again because lab up gave one port twice: $(wc -l <"$samples/port-clashes")"
fi
echo "samples: $samples; logs: $logs; upgrade journals: $dir/journals"
