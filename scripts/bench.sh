#!/usr/bin/env bash
# Benchmark fleetup against its peers on this machine, each job measured in turn in one run.
#
#   scripts/bench.sh [--nodes N] [--exec-hosts LIST] [--upgrade-nodes M] [--runs R]
#                    [--upgrade-runs U] [--jobs LIST] [--engine-hosts LIST]
#                    [--fleetup BIN] [--baseline BIN] [--dir DIR] [--pg-url URL]
#
#   --nodes N          lab size for `status` and `check` (default 50)
#   --exec-hosts LIST  fleet sizes for the fan-out jobs, comma-separated (default: N; the issue's
#                      sizes: 50,200,500)
#   --upgrade-nodes M  lab size for the offline upgrade (default 20)
#   --runs R           timed runs per tool and job, after one warm-up each (default 5)
#   --upgrade-runs U   timed upgrades per tool, each on a fresh lab (default 3)
#   --jobs LIST        any of exec,exec5,status,check,upgrade,engine (default: all)
#   --engine-hosts L   host counts of the engine-only benchmark (default 1000,2000,5000,10000)
#   --peers LIST       peers of the exec job, any of bssh,pssh,pssh-curve25519,ansible-raw,
#                      ansible-command (default: all installed; `none` for fleetup alone)
#   --fleetup BIN      the fleetup under test (default target/release/fleetup, built with
#                      `cargo build --release --workspace --examples` when missing)
#   --baseline BIN     another fleetup build measured in turn with BIN (A B A B), on the same
#                      fleets and labs (its journals go beside theirs)
#   --dir DIR          labs, samples and logs (default: a fresh /tmp/fleetup-bench.XXXXXX)
#   --pg-url URL       Postgres for the labs (default FLEETUP_LAB_PG_URL, else
#                      FLEETUP_TEST_PG_URL, else a private server started by scripts/pg.sh)
#
# Jobs:
#   exec     `exec -- true` on a fleet of bare sshd servers (scripts/bench/bare-fleet.py), one
#            per host; peers, when installed: bssh, parallel-ssh (default options, and with
#            KexAlgorithms=curve25519-sha256), Ansible ad-hoc `-m raw` and `-m command`,
#            forks = fleet size for every tool
#   exec5    five separate commands per host over one connection: `exec -c true` x5
#   status   `status` on a lab of N nodes (Postgres, stopped)
#   check    `check --to 1.8.2 --binary REL` on the same lab
#   upgrade  the offline upgrade 1.7.4 -> 1.8.2 on a fresh lab of M nodes per run: fleetup,
#            and the guide's procedure as an Ansible playbook (scripts/bench/ansible-upgrade.yml);
#            fleetup's run is split (from its journal) into time with a remote command in
#            flight, time in health gates and service waits, and the rest (its own work)
#   engine   the engine alone on the scripted transport (examples/engine_scale.rs)
#
# Wall time from `date +%s%N`; controller CPU (user+sys of the tool and every process it
# waited for: ssh clients, Python workers) and peak RSS (of its largest process) from GNU
# /usr/bin/time. Run as root, the script makes (once) the unprivileged user `fleetup-bench`,
# whose home has no shell startup files, and runs itself as that user: every server logs that
# user in, so root's startup files (pyenv, here) never run on the hosts. It prints one table
# per job with each tool's median, min and max and the ratio of its median to fleetup's, brings
# down every fleet and lab it started (also on errors and Ctrl-C), and exits non-zero only on
# errors.
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$(pwd)

log() { printf 'bench.sh: %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

nodes=50
exec_hosts=
upgrade_nodes=20
runs=5
upgrade_runs=3
jobs=exec,exec5,status,check,upgrade,engine
engine_hosts=1000,2000,5000,10000
peers=bssh,pssh,pssh-curve25519,ansible-raw,ansible-command
fleetup=target/release/fleetup
fleetup_given=0
baseline=
dir=
pg_url=${FLEETUP_LAB_PG_URL:-${FLEETUP_TEST_PG_URL:-}}
from=1.7.4
to=1.8.2
args=("$@")

need_arg() { [ $# -ge 2 ] && [ -n "$2" ] || die "$1 needs a value"; }
while [ $# -gt 0 ]; do
  case $1 in
    --nodes) need_arg "$@"; nodes=$2; shift 2 ;;
    --exec-hosts) need_arg "$@"; exec_hosts=$2; shift 2 ;;
    --upgrade-nodes) need_arg "$@"; upgrade_nodes=$2; shift 2 ;;
    --runs) need_arg "$@"; runs=$2; shift 2 ;;
    --upgrade-runs) need_arg "$@"; upgrade_runs=$2; shift 2 ;;
    --jobs) need_arg "$@"; jobs=$2; shift 2 ;;
    --engine-hosts) need_arg "$@"; engine_hosts=$2; shift 2 ;;
    --peers) need_arg "$@"; peers=$2; shift 2 ;;
    --fleetup) need_arg "$@"; fleetup=$2; fleetup_given=1; shift 2 ;;
    --baseline) need_arg "$@"; baseline=$2; shift 2 ;;
    --dir) need_arg "$@"; dir=$2; shift 2 ;;
    --pg-url) need_arg "$@"; pg_url=$2; shift 2 ;;
    -h | --help) sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//'; exit 0 ;;
    *) die "unknown argument \`$1\` (see --help)" ;;
  esac
done
exec_hosts=${exec_hosts:-$nodes}
for v in nodes upgrade_nodes runs upgrade_runs; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "--${v//_/-} must be a number, not \`${!v}\`"
done
for v in exec_hosts engine_hosts; do
  [[ ${!v} =~ ^[0-9]+(,[0-9]+)*$ ]] || die "--${v//_/-} must be numbers separated by commas, not \`${!v}\`"
done
[ "$nodes" -ge 1 ] && [ "$runs" -ge 1 ] || die "--nodes and --runs must be at least 1"
for j in ${jobs//,/ }; do
  case $j in exec | exec5 | status | check | upgrade | engine) ;; *) die "unknown job \`$j\` in --jobs" ;; esac
done
want() { [[ ",$jobs," == *",$1,"* ]]; }
exec_peers=()
for p in ${peers//,/ }; do
  case $p in
    none) ;;
    bssh | pssh | pssh-curve25519 | ansible-raw | ansible-command) exec_peers+=("$p") ;;
    *) die "unknown peer \`$p\` in --peers" ;;
  esac
done

# --- as root: build, gather the peers, then run as the unprivileged bench user ----------------
bench_user=fleetup-bench
if [ "$(id -u)" -eq 0 ] && [ -z "${FLEETUP_BENCH_AS_USER:-}" ]; then
  if [ ! -x "$fleetup" ] || { want engine && [ ! -x target/release/examples/engine_scale ]; }; then
    [ "$fleetup_given" = 0 ] || [ -x "$fleetup" ] || die "--fleetup $fleetup is not an executable"
    log "cargo build --release --workspace --examples"
    cargo build --release --workspace --examples
  fi
  if ! [ -x /usr/bin/time ] && command -v apt-get >/dev/null; then
    log "installing GNU time (apt-get install time) for CPU and peak RSS"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq time >/dev/null 2>&1 || true
  fi
  if ! id "$bench_user" >/dev/null 2>&1; then
    log "creating the unprivileged user $bench_user (home /var/lib/$bench_user, no startup files)"
    useradd --system --no-create-home --home-dir "/var/lib/$bench_user" --shell /bin/bash "$bench_user"
  fi
  home=$(getent passwd "$bench_user" | cut -d: -f6)
  mkdir -p "$home"
  chown "$bench_user:" "$home"
  rm -f "$home"/.bashrc "$home"/.profile "$home"/.bash_profile "$home"/.bash_login
  if [ -z "$dir" ]; then dir=$(mktemp -d /tmp/fleetup-bench.XXXXXX); fi
  mkdir -p "$dir/bin"
  # The tools the bench user runs: copies it can read (root's home is closed to it).
  cp "$fleetup" "$dir/bin/fleetup"
  sim=$(dirname "$fleetup")/numary-sim
  [ -x "$sim" ] && cp "$sim" "$dir/bin/numary-sim"
  [ -z "$baseline" ] || cp "$baseline" "$dir/bin/fleetup-baseline"
  [ ! -x target/release/examples/engine_scale ] || cp target/release/examples/engine_scale "$dir/bin/"
  bssh=$(command -v bssh || ls "$HOME/.cargo/bin/bssh" 2>/dev/null || true)
  [ -z "$bssh" ] || cp "$bssh" "$dir/bin/bssh"
  chown -R "$bench_user:" "$dir"
  chmod -R a+rX "$dir"
  if [ -z "$pg_url" ]; then
    log "starting a private PostgreSQL server (scripts/pg.sh start)"
    eval "$(scripts/pg.sh start)"
    pg_url=$FLEETUP_TEST_PG_URL
  fi
  # The servers' own CPU: every sshd of a bare fleet, and all it starts, in one cpuacct cgroup
  # (v1 or v2) the bench user may put processes into.
  cg=
  for c in /sys/fs/cgroup/cpuacct /sys/fs/cgroup/unified /sys/fs/cgroup; do
    if [ -w "$c" ] && mkdir -p "$c/fleetup-bench" 2>/dev/null; then
      if [ -e "$c/fleetup-bench/cpuacct.usage" ] || [ -e "$c/fleetup-bench/cpu.stat" ]; then
        chown -R "$bench_user:" "$c/fleetup-bench" && cg=$c/fleetup-bench && break
      fi
    fi
  done
  [ -n "$cg" ] || log "no cpuacct cgroup: the servers' CPU is not measured"
  log "running as $bench_user (logs in as that user on every host)"
  rest=()
  skip=0
  for a in "${args[@]}"; do
    if [ "$skip" = 1 ]; then skip=0; continue; fi
    case $a in --fleetup | --baseline | --dir | --pg-url) skip=1 ;; *) rest+=("$a") ;; esac
  done
  base_args=()
  [ -z "$baseline" ] || base_args=(--baseline "$dir/bin/fleetup-baseline")
  exec runuser -u "$bench_user" -- env -i HOME="$home" PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin \
    LANG=C.UTF-8 FLEETUP_BENCH_AS_USER=1 FLEETUP_SIM="$dir/bin/numary-sim" FLEETUP_BENCH_CGROUP="$cg" \
    bash "$repo/scripts/bench.sh" "${rest[@]}" --fleetup "$dir/bin/fleetup" "${base_args[@]}" \
    --dir "$dir" --pg-url "$pg_url"
fi

# --- binaries and tools -------------------------------------------------------------------------
if [ ! -x "$fleetup" ]; then
  [ "$fleetup_given" = 0 ] || die "--fleetup $fleetup is not an executable"
  log "cargo build --release --workspace --examples (no $fleetup yet)"
  cargo build --release --workspace --examples
fi
fleetup=$(cd "$(dirname "$fleetup")" && pwd)/$(basename "$fleetup")
if [ -n "$baseline" ]; then
  [ -x "$baseline" ] || die "--baseline $baseline is not an executable"
  baseline=$(cd "$(dirname "$baseline")" && pwd)/$(basename "$baseline")
fi
engine_bin=$(dirname "$fleetup")/engine_scale
[ -x "$engine_bin" ] || engine_bin=$repo/target/release/examples/engine_scale
timebin=
if [ -x /usr/bin/time ] && /usr/bin/time -f '%U' -o /dev/null true 2>/dev/null; then
  timebin=/usr/bin/time
else
  log "no GNU /usr/bin/time: measuring wall time only"
fi
bssh=$(command -v bssh || true)
[ -n "$bssh" ] || [ ! -x "$(dirname "$fleetup")/bssh" ] || bssh=$(dirname "$fleetup")/bssh
pssh=$(command -v parallel-ssh || command -v pssh || true)
ansible=$(command -v ansible || true)
ansible_playbook=$(command -v ansible-playbook || true)

if [ -z "$pg_url" ] && { want status || want check || want upgrade; }; then
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
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# --- fleets and labs, always brought down -------------------------------------------------------
live_labs=()
live_fleets=()
forget() { # NAME VALUE: drops VALUE from the array NAME
  local -n arr=$1
  local keep=() x
  for x in "${arr[@]}"; do [ "$x" = "$2" ] || keep+=("$x"); done
  arr=("${keep[@]}")
}
lab_down() {
  "$fleetup" lab down --dir "$1" --purge >>"$logs/lab-down.log" 2>&1 || log "could not bring down the lab in $1 (see $logs/lab-down.log)"
  forget live_labs "$1"
}
fleet_down() {
  python3 scripts/bench/bare-fleet.py down "$1" || log "could not stop the fleet in $1"
  forget live_fleets "$1"
}
cleanup() {
  local rc=$? l
  trap - EXIT INT TERM
  for l in "${live_labs[@]}"; do lab_down "$l"; done
  for l in "${live_fleets[@]}"; do fleet_down "$l"; done
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
    [ ! -e "$d" ] || lab_down "$d"
    live_labs+=("$d")
    "$fleetup" -q lab up --dir "$d" --nodes "$n" --version "$from" --driver postgres \
      --pg-url "$pg_url" --stopped >>"$logs/lab-up.log" 2>&1 ||
      { tail -n 20 "$logs/lab-up.log" >&2; die "lab up in $d failed"; }
    # `lab up` can hand one port number to two servers, which the audit rightly refuses
    # (`api-port`): such a lab is made again.
    dup=$(lab_ports "$d" | sort | uniq -d | tr '\n' ' ')
    [ -n "$dup" ] || break
    log "warning: lab in $d uses port(s) ${dup}twice (attempt $try): bringing it up again"
    echo "$d: ${dup}" >>"$samples/port-clashes"
    lab_down "$d"
    [ "$try" -lt 3 ] || die "lab up in $d gave duplicate ports three times"
  done
  "$fleetup" -q lab release --dir "$d" --version "$to" --out "$d/numary-$to" >>"$logs/lab-up.log" 2>&1 ||
    die "lab release in $d failed"
}
peers_for() { # DIR [bare]: the peers' inventories in DIR/peers
  bash scripts/bench/peer-inventories.sh ${2:+--bare} "$1" "$1/peers" >>"$logs/peers.log" 2>&1 ||
    { tail -n 5 "$logs/peers.log" >&2; die "peer-inventories.sh $1 failed"; }
}

# The CPU (ns) of every process in the bench's cgroup so far: the bare fleet's servers.
cg=${FLEETUP_BENCH_CGROUP:-}
server_cg_live=0
server_cpu() {
  if [ -z "$cg" ]; then return; fi
  if [ -e "$cg/cpuacct.usage" ]; then cat "$cg/cpuacct.usage"
  else awk '$1 == "usage_usec" { print $2 * 1000 }' "$cg/cpu.stat"; fi
}

# measure JOB TOOL LABEL CMD...: runs CMD once, appends wall/cpu/rss to $samples/JOB.TOOL.*
measure() {
  local job=$1 tool=$2 label=$3 rc=0 t0 t1 wall u s m
  shift 3
  local out=$logs/$job-$tool-$label c0
  c0=$(server_cpu)
  t0=$(date +%s%N)
  if [ -n "$timebin" ]; then
    "$timebin" -f '%U %S %M' -o "$out.time" "$@" >"$out.out" 2>"$out.err" </dev/null || rc=$?
  else
    "$@" >"$out.out" 2>"$out.err" </dev/null || rc=$?
  fi
  t1=$(date +%s%N)
  if [ "$rc" -ne 0 ] && [ "$job" = check ] && grep -q '"outcome": *"blocked"' "$out.out"; then
    # A check that ran to its verdict but found a transient blocker (seen: `db-sessions`, one
    # node's probe seeing another's psql session) did its full work: the sample counts.
    log "warning: $job $tool $label exited $rc (blocked): counted"
    echo "$job $tool $label" >>"$samples/blocked"
    rc=0
  fi
  if [ "$rc" -ne 0 ]; then
    tail -n 20 "$out.err" "$out.out" >&2
    die "$job with $tool failed (exit $rc): $* (output in $out.out, $out.err)"
  fi
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }')
  echo "$wall" >>"$samples/$job.$tool.wall"
  if [ -n "$c0" ] && [ "$server_cg_live" = 1 ]; then
    sleep 0.2 # sessions still ending on the servers
    awk -v a="$c0" -v b="$(server_cpu)" 'BEGIN { printf "%.3f\n", (b - a) / 1e9 }' >>"$samples/$job.$tool.srv"
  fi
  [ -s "$samples/$job.tools" ] && grep -qx "$tool" "$samples/$job.tools" || echo "$tool" >>"$samples/$job.tools"
  if [ -n "$timebin" ]; then
    read -r u s m < <(tail -n 1 "$out.time")
    awk -v u="$u" -v s="$s" 'BEGIN { printf "%.3f\n", u + s }' >>"$samples/$job.$tool.cpu"
    awk -v m="$m" 'BEGIN { printf "%.1f\n", m / 1024 }' >>"$samples/$job.$tool.rss"
    log "$job $tool $label: ${wall}s wall, $(tail -n 1 "$samples/$job.$tool.cpu")s cpu, $(tail -n 1 "$samples/$job.$tool.rss") MB"
  else
    log "$job $tool $label: ${wall}s wall"
  fi
}

# runs_of JOB: one warm-up, then R rounds of every tool in turn. Tools come from `tool_cmd`, which
# sets cmd=(...) for a tool or returns 1 when the tool is not installed.
runs_of() {
  local job=$1 t r
  shift
  local tools=("$@")
  for t in "${tools[@]}"; do
    tool_cmd "$t" || continue
    measure "warmup-$job" "$t" 0 "${cmd[@]}"
  done
  for ((r = 1; r <= runs; r++)); do
    for t in "${tools[@]}"; do
      tool_cmd "$t" || continue
      measure "$job" "$t" "$r" "${cmd[@]}"
    done
  done
}

log "fleetup:  $fleetup"
[ -z "$baseline" ] || log "baseline: $baseline"
log "peers: bssh ${bssh:-none}, parallel-ssh ${pssh:-none}, ansible ${ansible:-none}"
log "work dir: $dir"
fleetups=(fleetup)
[ -z "$baseline" ] || fleetups=(fleetup baseline)
bin_for() { if [ "$1" = baseline ]; then echo "$baseline"; else echo "$fleetup"; fi; }

# --- exec and exec5: bare fleets of each size ---------------------------------------------------
if want exec || want exec5; then
  for n in ${exec_hosts//,/ }; do
    f=$dir/fleet-$n
    log "fleet up: $n bare sshd servers in $f"
    live_fleets+=("$f")
    python3 scripts/bench/bare-fleet.py up "$f" "$n" || die "bare-fleet.py up $f $n failed"
    if [ -n "$cg" ]; then
      server_cg_live=1
      for pf in "$f"/sshd-*.pid; do cat "$pf" >"$cg/$( [ -e "$cg/tasks" ] && echo tasks || echo cgroup.procs)"; done
    fi
    peers_for "$f" bare
    p=$f/peers
    tool_cmd() {
      local inv=$f/inventory.toml ssh_args
      ssh_args=$(cat "$p/ssh-args")
      case $1 in
        fleetup | baseline) cmd=("$(bin_for "$1")" -q -i "$inv" exec --forks "$n" -- true) ;;
        bssh)
          [ -n "$bssh" ] || return 1
          cmd=(env HOME="$p/bssh-home" "$bssh" -H "$(cat "$p/bssh-hosts")" -i "$f/id_ed25519"
            --strict-host-key-checking yes --parallel "$n" --require-all-success true)
          ;;
        pssh)
          [ -n "$pssh" ] || return 1
          cmd=("$pssh" -h "$p/pssh-hosts" -p "$n" -t 60 -x "$ssh_args" true)
          ;;
        pssh-curve25519)
          [ -n "$pssh" ] || return 1
          cmd=("$pssh" -h "$p/pssh-hosts" -p "$n" -t 60 -x "$ssh_args -o KexAlgorithms=curve25519-sha256" true)
          ;;
        ansible-raw)
          [ -n "$ansible" ] || return 1
          cmd=(env ANSIBLE_CONFIG="$p/ansible.cfg" ANSIBLE_SSH_CONTROL_PATH_DIR="$(mktemp -d "$dir/cp.XXXXXX")"
            "$ansible" all -f "$n" -m raw -a true)
          ;;
        ansible-command)
          [ -n "$ansible" ] || return 1
          cmd=(env ANSIBLE_CONFIG="$p/ansible.cfg" ANSIBLE_SSH_CONTROL_PATH_DIR="$(mktemp -d "$dir/cp.XXXXXX")"
            "$ansible" all -f "$n" -m command -a true)
          ;;
      esac
    }
    if want exec; then
      runs_of "exec-$n" "${fleetups[@]}" "${exec_peers[@]}"
    fi
    if want exec5; then
      tool_cmd() {
        local inv=$f/inventory.toml
        case $1 in
          fleetup | baseline) cmd=("$(bin_for "$1")" -q -i "$inv" exec --forks "$n" -c true -c true -c true -c true -c true) ;;
        esac
      }
      # The baseline may predate `-c`: fleetup only.
      runs_of "exec5-$n" fleetup
    fi
    fleet_down "$f"
    server_cg_live=0
  done
fi

# --- status and check: one lab --------------------------------------------------------------------
if want status || want check; then
  lab=$dir/lab-$nodes
  log "lab up: $nodes nodes at $from (postgres, stopped) in $lab"
  lab_up "$lab" "$nodes"
  inv_for() { echo "$lab/inventory.toml"; }
  if want status; then
    tool_cmd() { cmd=("$(bin_for "$1")" -q -i "$(inv_for "$1")" status --format json); }
    runs_of "status-$nodes" "${fleetups[@]}"
  fi
  if want check; then
    tool_cmd() {
      cmd=("$(bin_for "$1")" -q -i "$(inv_for "$1")" check --to "$to" --binary "$lab/numary-$to" --format json)
    }
    runs_of "check-$nodes" "${fleetups[@]}"
  fi
  lab_down "$lab"
fi

# --- upgrade: a fresh lab per run and tool --------------------------------------------------------
# split JOURNAL: "remote gates own" seconds of fleetup's run: time with a remote command in flight
# (steps with a command line), in health gates and service waits (steps without one), and the rest.
split_journal() {
  python3 - "$1" <<'EOF'
import json, sys
from datetime import datetime
ev = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
def t(e):
    ts = e.get("ts") or e.get("time") or e.get("at")
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp() if ts else None
times = [t(e) for e in ev if t(e) is not None]
if not times:
    print("- - -"); sys.exit()
start, end = min(times), max(times)
open_ = {}
cmd_iv, wait_iv = [], []
for e in ev:
    k = (e.get("step"), e.get("host"))
    if e.get("event") == "step_started":
        open_[k] = (t(e), bool(e.get("command")))
    elif e.get("event") == "step_finished" and k in open_:
        b, has_cmd = open_.pop(k)
        (cmd_iv if has_cmd else wait_iv).append((b, t(e)))
def union(iv):
    iv = sorted(x for x in iv if x[0] is not None and x[1] is not None)
    out = []
    for a, b in iv:
        if out and a <= out[-1][1]:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return out
def length(iv):
    return sum(b - a for a, b in iv)
def minus(iv, cut):
    out = []
    for a, b in iv:
        pieces = [(a, b)]
        for c, d in cut:
            nxt = []
            for x, y in pieces:
                if d <= x or c >= y:
                    nxt.append((x, y))
                else:
                    if x < c: nxt.append((x, c))
                    if d < y: nxt.append((d, y))
            pieces = nxt
        out += pieces
    return out
cmd = union(cmd_iv)
wait = union(minus(union(wait_iv), cmd))
total = end - start
print(f"{length(cmd):.3f} {length(wait):.3f} {total - length(cmd) - length(wait):.3f}")
EOF
}

if want upgrade && [ "$upgrade_nodes" -gt 0 ] && [ "$upgrade_runs" -gt 0 ]; then
  mkdir -p "$dir/journals"
  up_tools=("${fleetups[@]}")
  [ -z "$ansible_playbook" ] || up_tools+=(ansible-playbook)
  for ((r = 1; r <= upgrade_runs; r++)); do
    for t in "${up_tools[@]}"; do
      ul=$dir/lab-upgrade-$t-$r
      log "lab up: $upgrade_nodes nodes at $from (postgres, stopped) in $ul"
      lab_up "$ul" "$upgrade_nodes"
      case $t in
        fleetup | baseline)
          inv=$ul/inventory.toml
          measure "upgrade-$upgrade_nodes" "$t" "$r" "$(bin_for "$t")" -i "$inv" \
            upgrade --to "$to" --binary "$ul/numary-$to"
          for j in "$(dirname "$inv")"/.fleetup/runs/*.jsonl; do
            [ -e "$j" ] || continue
            cp "$j" "$dir/journals/upgrade-$t-$r-$(basename "$j")"
            if [ "$t" = fleetup ] && grep -q '"event": *"step_started"\|"event":"step_started"' "$j"; then
              split_journal "$j" >>"$samples/upgrade-split"
            fi
          done
          ;;
        ansible-playbook)
          peers_for "$ul"
          measure "upgrade-$upgrade_nodes" "$t" "$r" env ANSIBLE_CONFIG="$ul/peers/ansible.cfg" \
            ANSIBLE_SSH_CONTROL_PATH_DIR="$(mktemp -d "$dir/cp.XXXXXX")" \
            "$ansible_playbook" -f "$upgrade_nodes" scripts/bench/ansible-upgrade.yml \
            -e "numary_release=$ul/numary-$to" -e "numary_target=$to"
          ;;
      esac
      # Both must leave every node serving the target: the lab says what each node serves.
      "$fleetup" lab status --dir "$ul" --format json >"$logs/upgrade-$t-$r-status.json" 2>>"$logs/lab-status.log" ||
        die "lab status in $ul failed"
      served=$(grep -o '"api_version": *"[^"]*"' "$logs/upgrade-$t-$r-status.json" | grep -c "\"$to\"" || true)
      [ "$served" -eq "$upgrade_nodes" ] ||
        die "after the $t upgrade only $served of $upgrade_nodes nodes serve $to (see $logs/upgrade-$t-$r-status.json)"
      lab_down "$ul"
    done
  done
fi

# --- engine alone -------------------------------------------------------------------------------
if want engine; then
  if [ -x "$engine_bin" ]; then
    log "engine benchmark: $engine_bin --hosts $engine_hosts"
    "$engine_bin" --hosts "$engine_hosts" >"$logs/engine.out" 2>"$logs/engine.err" ||
      { tail -n 20 "$logs/engine.err" >&2; die "the engine benchmark failed"; }
  else
    log "no $engine_bin (cargo build --release --examples): engine job skipped"
  fi
fi

# --- the tables ---------------------------------------------------------------------------------
stats() { # FILE -> "median min max"
  sort -g "$1" | awk '{ a[NR] = $1 } END {
    m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
    printf "%.3f %.3f %.3f\n", m, a[1], a[NR] }'
}
figures=(wall)
[ -z "$timebin" ] || figures=(wall cpu rss)
figures+=(srv)
unit() { case $1 in wall | cpu | srv) echo s ;; rss) echo MB ;; esac; }

echo
echo "fleetup $fleetup${baseline:+, baseline $baseline}; $(nproc) cores; $(uname -r); $(sshd -V 2>&1 | head -n 1 || true)"
echo "runs: $runs after 1 warm-up per tool (upgrade: $upgrade_runs, fresh lab each); ratio = median / fleetup's median"
echo "cpu: the tool's own (and its children's); srv: every sshd of the fleet and all it started (the servers' floor is srv / $(nproc) cores)"
for jf in "$samples"/*.tools; do
  [ -e "$jf" ] || continue
  job=$(basename "$jf" .tools)
  [[ $job == warmup-* ]] && continue
  echo
  printf '%-22s %-6s %9s %9s %9s %7s\n' "$job" "" median min max ratio
  for f in "${figures[@]}"; do
    ref=$samples/$job.fleetup.$f
    refm=
    [ -s "$ref" ] && refm=$(stats "$ref" | cut -d' ' -f1)
    while read -r tool; do
      sf=$samples/$job.$tool.$f
      [ -s "$sf" ] || continue
      read -r m mn mx < <(stats "$sf")
      ratio=$(awk -v a="$m" -v b="${refm:-0}" 'BEGIN { if (b > 0) printf "%.2f", a / b; else print "-" }')
      printf '%-22s %-6s %9s %9s %9s %7s\n' "$tool" "$f($(unit "$f"))" "$m" "$mn" "$mx" "$ratio"
    done <"$jf"
  done
done
if [ -s "$samples/upgrade-split" ]; then
  echo
  echo "fleetup's upgrade runs, from their journals (median seconds): remote commands in flight | health gates and service waits | the rest (fleetup's own)"
  for i in 1 2 3; do cut -d' ' -f"$i" "$samples/upgrade-split" >"$samples/split.$i"; done
  printf '%-22s %9s %9s %9s\n' "upgrade split" "$(stats "$samples/split.1" | cut -d' ' -f1)" \
    "$(stats "$samples/split.2" | cut -d' ' -f1)" "$(stats "$samples/split.3" | cut -d' ' -f1)"
fi
if [ -s "$logs/engine.out" ]; then
  echo
  echo "engine alone (scripted transport):"
  cat "$logs/engine.out"
fi
echo
[ ! -s "$samples/blocked" ] || echo "check runs that reported a transient blocker (counted): $(tr '\n' ',' <"$samples/blocked" | sed 's/,$//')"
[ ! -s "$samples/port-clashes" ] || echo "labs made again because lab up gave one port twice: $(wc -l <"$samples/port-clashes")"
echo "samples: $samples; logs: $logs"
