#!/usr/bin/env python3
"""A fleet of bare OpenSSH servers for the fan-out benchmarks (`fleetup exec`, bssh,
parallel-ssh, Ansible ad-hoc): N `sshd` processes on 127.0.0.1, one a host, nothing else.

    scripts/bench/bare-fleet.py up DIR N     start N servers, write DIR/inventory.toml
    scripts/bench/bare-fleet.py down DIR     stop every server of DIR (by pid)

A `fleetup lab` node also runs the ledger simulator and a database; for `exec -- true` only the
SSH server matters, and 500 of these start in seconds. Every server has its own port and
process (each host of a real fleet is its own sshd, so `MaxStartups` applies per host, as
here), sshd's default settings otherwise (`LogLevel INFO`, `MaxStartups 10:30:100`), one shared
ed25519 host key, and lets in only the user who runs this. DIR/inventory.toml is a fleetup
inventory (hosts `h-1` ... `h-N`) with the client key and a known_hosts holding every server's
key: scripts/bench/peer-inventories.sh turns it into the peers' inventories.
"""

import os
import pwd
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

SSHD = "/usr/sbin/sshd"


def die(msg):
    print(f"bare-fleet.py: error: {msg}", file=sys.stderr)
    sys.exit(1)


def free_ports(n):
    """n distinct ports the kernel handed out and that were free a moment ago."""
    socks, ports = [], []
    for _ in range(n):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        socks.append(s)
        ports.append(s.getsockname()[1])
    for s in socks:
        s.close()
    return ports


def keygen(path, comment):
    if not path.exists():
        subprocess.run(
            ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
            check=True,
        )


def config(d, i, port, user):
    lines = [
        f"ListenAddress 127.0.0.1:{port}",
        f"HostKey {d}/host_ed25519",
        f"PidFile {d}/sshd-{i}.pid",
        f"AuthorizedKeysFile {d}/authorized_keys",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "UsePAM no",
        "StrictModes no",
        "UseDNS no",
        "PrintMotd no",
        "PrintLastLog no",
        "X11Forwarding no",
    ]
    if os.geteuid() == 0:
        lines.append("PermitRootLogin prohibit-password")
    else:
        lines.append(f"AllowUsers {user}")
    return "\n".join(lines) + "\n"


def answers(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
            return s.recv(8).startswith(b"SSH-")
    except OSError:
        return False


def up(d, n):
    d.mkdir(parents=True, exist_ok=True)
    d = d.resolve()
    if list(d.glob("sshd-*.pid")):
        die(f"{d} already holds a fleet (bare-fleet.py down {d} first)")
    user = pwd.getpwuid(os.geteuid()).pw_name
    keygen(d / "host_ed25519", "bare-fleet-host")
    keygen(d / "id_ed25519", "bare-fleet-client")
    (d / "authorized_keys").write_text((d / "id_ed25519.pub").read_text())
    host_key = " ".join((d / "host_ed25519.pub").read_text().split()[:2])
    ports = free_ports(n)
    for i, port in enumerate(ports, 1):
        cfg = d / f"sshd-{i}.conf"
        cfg.write_text(config(d, i, port, user))
        subprocess.run([SSHD, "-f", str(cfg), "-E", str(d / f"sshd-{i}.log")], check=True)
    deadline = time.time() + 60
    for i, port in enumerate(ports, 1):
        while not answers(port):
            if time.time() > deadline:
                die(f"sshd {i} on port {port} does not answer (see {d}/sshd-{i}.log)")
            time.sleep(0.05)
    (d / "known_hosts").write_text("".join(f"[127.0.0.1]:{p} {host_key}\n" for p in ports))
    inv = [
        f"# {n} bare sshd servers on 127.0.0.1, written by scripts/bench/bare-fleet.py.\n",
        "[ssh]\n",
        f'user = "{user}"\n',
        f'identity_files = ["{d}/id_ed25519"]\n',
        f'known_hosts = "{d}/known_hosts"\n',
        "use_agent = false\n",
        'ssh_config = "none"\n',
    ]
    for i, port in enumerate(ports, 1):
        inv.append(f'\n[[host]]\nname = "h-{i}"\naddress = "127.0.0.1"\nport = {port}\n')
    (d / "inventory.toml").write_text("".join(inv))


def down(d):
    pids = []
    for f in d.glob("sshd-*.pid"):
        try:
            pids.append(int(f.read_text().strip()))
        except ValueError:
            pass
        f.unlink()
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "up":
        if not sys.argv[3].isdigit() or int(sys.argv[3]) < 1:
            die(f"N must be a number of servers, not `{sys.argv[3]}`")
        up(Path(sys.argv[2]), int(sys.argv[3]))
    elif len(sys.argv) == 3 and sys.argv[1] == "down":
        down(Path(sys.argv[2]))
    else:
        print(__doc__, file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
