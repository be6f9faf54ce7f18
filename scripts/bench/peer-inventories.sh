#!/usr/bin/env bash
# Write the peers' views of a fleetup lab: the same hosts, key and known_hosts as the lab's
# inventory.toml, in the formats Ansible, parallel-ssh and bssh read.
#
#   scripts/bench/peer-inventories.sh [--bare] LAB_DIR OUT_DIR
#
# --bare: a fleet of bare sshd servers (scripts/bench/bare-fleet.py) for the fan-out peers only:
# no ledger settings and no migrator are needed, and hosts.ini has no playbook vars.
#
# Reads LAB_DIR/inventory.toml (written by `fleetup lab up`; any inventory of that format whose
# hosts share one SSH user, key and known_hosts works) and writes into OUT_DIR (created):
#
#   hosts.ini        Ansible inventory: group `ledger` (every host, the migrator first), group
#                    `migrator`; per host ansible_host/port/user/key, strict host keys against
#                    the lab's known_hosts (ansible_ssh_common_args), and the vars
#                    ansible-upgrade.yml needs (numary_binary, numary_releases_dir,
#                    numary_env_file, numary_api, numary_backup_dir, numary_service_start|stop|
#                    status); group vars numary_ledgers (the inventory's `ledgers`, if any).
#   ansible.cfg      for ANSIBLE_CONFIG=OUT_DIR/ansible.cfg: that inventory, host key checking on,
#                    pipelining on, no tty for `-m raw`, no retry files, the interpreter,
#                    forks = number of hosts, a ControlPath dir of its own.
#   ssh-args         one line: the OpenSSH options every host needs (-F, -i, -o ...), shell-quoted,
#                    for `parallel-ssh -x "$(cat OUT_DIR/ssh-args)"`.
#   pssh-hosts       one `user@host:port` a line, for `parallel-ssh -h OUT_DIR/pssh-hosts`.
#   bssh-hosts       the same hosts on one line, comma-separated, for
#                    `bssh -H "$(cat OUT_DIR/bssh-hosts)"` (bssh 2.4.1 refuses its documented
#                    `-H ^FILE`: "Invalid hostname in node").
#   bssh-home/       HOME for bssh: .ssh/known_hosts is a copy of the lab's (bssh 2.4.1 checks
#                    host keys against $HOME/.ssh/known_hosts only; it parses but ignores
#                    UserKnownHostsFile), .config/bssh/config.yaml a cluster `lab` of the hosts.
#   peers.env        shell assignments (PEER_NODES, PEER_USER, PEER_KEY, PEER_KNOWN_HOSTS,
#                    PEER_OUT) for `. OUT_DIR/peers.env`.
#
# Needs python3 with tomllib (3.11+). Exits non-zero, saying why, when the inventory cannot be
# read or its hosts do not share one user, key and known_hosts.
set -euo pipefail

bare=0
if [ "${1:-}" = --bare ]; then bare=1; shift; fi
if [ $# -ne 2 ]; then
  sed -n '2,/^set -euo/p' "$0" | sed '$d; s/^# \{0,1\}//' >&2
  exit 2
fi
lab_dir=$1
out_dir=$2
inv=$lab_dir/inventory.toml
[ -f "$inv" ] || { echo "peer-inventories.sh: no $inv (is there a lab in $lab_dir?)" >&2; exit 1; }

py=
for c in python3 python3.11 /usr/bin/python3; do
  if command -v "$c" >/dev/null 2>&1 && "$c" -c 'import tomllib' 2>/dev/null; then py=$c; break; fi
done
[ -n "$py" ] || { echo "peer-inventories.sh: needs python3 (3.11+, tomllib)" >&2; exit 1; }

mkdir -p "$out_dir"
PEER_BARE=$bare exec "$py" - "$inv" "$out_dir" <<'PY'
import ast, json, os, shlex, shutil, sys, tomllib

inv_path, out = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
inv_dir = os.path.dirname(inv_path)
bare = os.environ.get("PEER_BARE") == "1"

def die(msg):
    sys.exit(f"peer-inventories.sh: {inv_path}: {msg}")

with open(inv_path, "rb") as f:
    try:
        doc = tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        die(f"not TOML: {e}")

def local_path(p):
    p = os.path.expanduser(p)
    return p if os.path.isabs(p) else os.path.normpath(os.path.join(inv_dir, p))

# fleetup's precedence: defaults < [ssh]/[ledger] < groups (in the host's order) < the host.
SSH_DEFAULTS = {"user": os.environ.get("USER") or os.environ.get("LOGNAME") or "root", "port": 22}
LEDGER_DEFAULTS = {
    "binary": "/usr/local/bin/numary",
    "releases_dir": "/opt/numary/releases",
    "service": {"manager": "systemd", "unit": "numary.service"},
    "api": "127.0.0.1:3068",
    "backup_dir": "/var/backups/numary",
    "become": "none",
}
groups = doc.get("groups", {})
hosts = doc.get("host", [])
if not hosts:
    die("no [[host]]")

def layered(table, host, defaults):
    v = dict(defaults)
    v.update(doc.get(table, {}))
    for g in host.get("groups", []):
        if g not in groups:
            die(f"host {host.get('name')}: unknown group {g}")
        v.update(groups[g].get(table, {}))
    v.update(host.get(table, {}))
    return v

top_ssh = doc.get("ssh", {})
ssh_config = top_ssh.get("ssh_config", "none")
resolved = []
for h in hosts:
    name = h.get("name") or die("a [[host]] without name")
    ssh = layered("ssh", h, SSH_DEFAULTS)
    for k in ("port", "user"):  # the host-level shortcuts
        if k in h:
            ssh[k] = h[k]
    led = layered("ledger", h, LEDGER_DEFAULTS)
    if h.get("replaces"):
        die(f"host {name} is a replacement node (`replaces`): these peers do the offline upgrade only")
    if led.get("become", "none") != "none":
        die(f"host {name}: become = {led['become']!r} is not supported here")
    ids = ssh.get("identity_files")
    if not ids:
        die(f"host {name}: no identity_files (the peers need the key file)")
    svc = led["service"]
    if svc.get("manager", "systemd") == "command":
        start, stop, status = svc["start"], svc["stop"], svc["status"]
    else:
        unit = shlex.quote(svc.get("unit", "numary.service"))
        start, stop, status = (f"systemctl {a} {unit}" for a in ("start", "stop", "is-active --quiet"))
    resolved.append({
        "name": name,
        "address": h.get("address") or die(f"host {name}: no address"),
        "port": int(ssh["port"]),
        "user": ssh["user"],
        "key": local_path(ids[0]),
        "known_hosts": local_path(ssh.get("known_hosts", "~/.ssh/known_hosts")),
        "jump": ssh.get("jump_host", "none"),
        "migrator": bool(h.get("migrator", False)),
        "vars": {
            "numary_binary": led["binary"],
            "numary_releases_dir": led["releases_dir"],
            "numary_env_file": led.get("env_file") or ("" if bare else die(f"host {name}: no env_file (the playbook loads the service's env from it)")),
            "numary_api": led["api"],
            "numary_backup_dir": led["backup_dir"],
            "numary_service_start": start,
            "numary_service_stop": stop,
            "numary_service_status": status,
        },
    })

# The peers take one user, key and known_hosts for every host (pssh -x, bssh -i, its HOME).
for k in ("user", "key", "known_hosts", "jump"):
    vals = {r[k] for r in resolved}
    if len(vals) != 1:
        die(f"hosts differ in ssh {k} ({', '.join(sorted(map(str, vals)))}): not supported")
user, key, known_hosts, jump = (resolved[0][k] for k in ("user", "key", "known_hosts", "jump"))
for p in (key, known_hosts):
    if not os.path.isfile(p):
        die(f"{p} does not exist")
migrators = [r for r in resolved if r["migrator"]]
if not bare and len(migrators) != 1:
    die(f"needs exactly one host with migrator = true, found {len(migrators)}")
# The migrator first: the playbook's `serial: [1, "100%"]` starts it alone, before the others.
resolved.sort(key=lambda r: not r["migrator"])

if ssh_config == "none":
    ssh_args = ["-F", "/dev/null"]
else:
    ssh_args = ["-F", local_path(ssh_config)]
if jump not in ("none", ""):
    ssh_args += ["-J", jump]
common = ssh_args + [
    "-o", f"UserKnownHostsFile={known_hosts}",
    "-o", "StrictHostKeyChecking=yes",
    "-o", "IdentitiesOnly=yes",
]
if not top_ssh.get("use_agent", True):
    common += ["-o", "IdentityAgent=none"]
pssh_args = common + ["-i", key, "-o", "BatchMode=yes"]

def ini_value(v):
    """A value Ansible's INI parser (ast.literal_eval, else the raw text) reads back as `v`."""
    if not isinstance(v, str):
        return str(v)
    try:
        ast.literal_eval(v)
    except (ValueError, SyntaxError):
        return v  # stays a string as written
    return repr(v)  # would turn into a number, list...: a Python string literal

def host_line(r):
    # Host lines are split with shlex first, so each key=value is one shell word.
    fields = {"ansible_host": r["address"], "ansible_port": r["port"], **({} if bare else r["vars"])}
    words = [f"{k}={shlex.quote(ini_value(v))}" for k, v in fields.items()]
    return " ".join([r["name"]] + words)

interp = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else "auto_silent"
ledgers = doc.get("ledger", {}).get("ledgers")
lines = [f"# Generated from {inv_path} by scripts/bench/peer-inventories.sh.", "[ledger]"]
lines += [host_line(r) for r in resolved]
lines += ["", "[migrator]", *(shlex.quote(m["name"]) for m in migrators[:1]), "", "[ledger:vars]",
          f"ansible_user={ini_value(user)}",
          f"ansible_ssh_private_key_file={ini_value(key)}",
          f"ansible_ssh_common_args={ini_value(shlex.join(common))}",
          f"ansible_python_interpreter={ini_value(interp)}"]
if ledgers:
    lines.append(f"numary_ledgers={ledgers!r}")

def write(name, text, mode=0o644):
    path = os.path.join(out, name)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)
    return path

write("hosts.ini", "\n".join(lines) + "\n")
# A short ControlPath dir: a socket path must stay under 108 bytes (the dir plus 41 for %C).
cp_dir = os.path.join(out, "cp")
if len(cp_dir) > 60:
    cp_dir = os.path.join("/tmp", "ansible-cp-" + str(os.getuid()))
write("ansible.cfg", "\n".join([
    "# Generated by scripts/bench/peer-inventories.sh: ANSIBLE_CONFIG=THIS_FILE",
    "[defaults]",
    f"inventory = {os.path.join(out, 'hosts.ini')}",
    "host_key_checking = True",
    f"forks = {len(resolved)}",
    f"interpreter_python = {interp}",
    "retry_files_enabled = False",
    "gathering = explicit",
    "",
    "[ssh_connection]",
    "pipelining = True",
    # `-m raw` asks for a tty (-tt) by default: an sshd not running as root cannot allocate one
    # (the session closes, ssh exits 255, Ansible says unreachable); nor do the other peers.
    "usetty = False",
    f"control_path_dir = {cp_dir}",
    "",
]))
hostlist = "".join(f"{r['user']}@{r['address']}:{r['port']}\n" for r in resolved)
write("pssh-hosts", hostlist)
write("bssh-hosts", ",".join(hostlist.split()) + "\n")
write("ssh-args", shlex.join(pssh_args) + "\n")

home = os.path.join(out, "bssh-home")
os.makedirs(os.path.join(home, ".ssh"), mode=0o700, exist_ok=True)
shutil.copyfile(known_hosts, os.path.join(home, ".ssh", "known_hosts"))
os.chmod(os.path.join(home, ".ssh", "known_hosts"), 0o600)
def yq(s):  # a YAML double-quoted scalar (JSON strings are valid YAML)
    return json.dumps(s)
cfg = [f"# Generated by scripts/bench/peer-inventories.sh from {inv_path}",
       "defaults:", f"  user: {yq(user)}", f"  ssh_key: {yq(key)}", f"  parallel: {len(resolved)}",
       "clusters:", "  lab:", "    nodes:"]
cfg += [f"      - host: {yq(r['address'])}\n        port: {r['port']}\n        user: {yq(r['user'])}" for r in resolved]
cfg += [f"    ssh_key: {yq(key)}"]
write("bssh-home/.config/bssh/config.yaml", "\n".join(cfg) + "\n")

env = {"PEER_NODES": str(len(resolved)), "PEER_USER": user, "PEER_KEY": key,
       "PEER_KNOWN_HOSTS": known_hosts, "PEER_OUT": out}
write("peers.env", "".join(f"{k}={shlex.quote(v)}\n" for k, v in env.items()))
print(f"peer-inventories.sh: {len(resolved)} hosts from {inv_path} -> {out}", file=sys.stderr)
PY
