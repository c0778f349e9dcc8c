"""Several "hosts" on one machine: network namespaces on one switch, for fault tests.

    with Network("part") as net:                 # root only; see missing_reason()
        a, b = net.add_host(), net.add_host()    # 10.77.0.1, 10.77.0.2 (each its own netns)
        proc = net.popen(b, ["python", "-m", "devcluster", ...], log)
        net.cut(b)                               # b's cable pulled: packets to and
        net.heal(b)                              # from it vanish; then plugged back

Each host is a network namespace with loopback up and one veth pair whose other end
sits in a bridge, itself in a namespace of its own (the "switch"): nothing is added
to the machine's own namespace, so its firewall (Docker's FORWARD DROP on bridged
traffic, say) plays no part, and two runs at once do not collide. Cutting a host
takes its switch port down: established connections black-hole (no RST, no ICMP), as
when a cable or a switch fails, which is the harder case for a client.

:meth:`Network.close` (the context manager's exit) always runs: it kills what still
runs in the namespaces (only processes started there, i.e. by the test) and deletes
every namespace, which takes the veth pairs and the bridge with them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import cast

from devcluster.supervisor.process import with_pdeathsig

SUBNET = "10.77.0"
BRIDGE = "br0"


def missing_reason() -> str | None:
    """Why network namespaces cannot be used here, or None if they can."""
    if os.geteuid() != 0:
        return "network namespaces need root (CI runs this test as root)"
    if shutil.which("ip") is None:
        return "`ip` not found; install it with `apt-get install -y iproute2` (CI does)"
    probe = f"dcprobe-{os.getpid()}"
    made = _ip("netns", "add", probe, check=False)
    if made.returncode != 0:
        return f"`ip netns add` failed: {made.stderr.strip()}"
    _ip("netns", "delete", probe, check=False)
    return None


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    if check and done.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done


@dataclass(frozen=True)
class Host:
    """One namespace on the switch: ``address`` is how the other hosts reach it."""

    netns: str
    address: str
    port: str  # its veth end in the switch namespace

    def argv(self, command: Sequence[str]) -> list[str]:
        """``command`` run inside this host."""
        return ["ip", "netns", "exec", self.netns, *command]


class Network:
    """Hosts in namespaces named ``<tag>-<pid>-...`` on one bridge; see the module doc."""

    def __init__(self, tag: str) -> None:
        self.prefix = f"{tag}-{os.getpid()}"
        self.switch = f"{self.prefix}-sw"
        self.hosts: list[Host] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        self._namespaces: list[str] = []

    def __enter__(self) -> Network:
        self._add_namespace(self.switch)
        _ip("-n", self.switch, "link", "add", BRIDGE, "type", "bridge")
        _ip("-n", self.switch, "link", "set", BRIDGE, "up")
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _add_namespace(self, name: str) -> None:
        _ip("netns", "delete", name, check=False)  # a leftover of a killed run of this pid
        _ip("netns", "add", name)
        self._namespaces.append(name)
        _ip("-n", name, "link", "set", "lo", "up")

    def add_host(self) -> Host:
        """A new host on the switch, addressed ``10.77.0.<n>``."""
        n = len(self.hosts) + 1
        host = Host(f"{self.prefix}-h{n}", f"{SUBNET}.{n}", f"port{n}")
        self._add_namespace(host.netns)
        # Both ends are made straight in their namespaces: no name in the machine's own.
        _ip("link", "add", "eth0", "netns", host.netns, "type", "veth",
            "peer", "name", host.port, "netns", self.switch)
        _ip("-n", self.switch, "link", "set", host.port, "master", BRIDGE, "up")
        _ip("-n", host.netns, "addr", "add", f"{host.address}/24", "dev", "eth0")
        _ip("-n", host.netns, "link", "set", "eth0", "up")
        self.hosts.append(host)
        return host

    def cut(self, host: Host) -> None:
        """Pull ``host``'s cable: its switch port goes down (packets vanish both ways)."""
        _ip("-n", self.switch, "link", "set", host.port, "down")

    def heal(self, host: Host) -> None:
        """Plug ``host`` back in."""
        _ip("-n", self.switch, "link", "set", host.port, "up")

    def popen(self, host: Host, command: Sequence[str], log: Path,
              env: dict[str, str] | None = None, cwd: Path | None = None,
              ) -> subprocess.Popen[bytes]:
        """Start ``command`` inside ``host``, output to ``log``; it dies with this process."""
        argv, preexec = with_pdeathsig(host.argv(command))
        with open(log, "ab") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out,
                                    stderr=subprocess.STDOUT, env=env, cwd=cwd,
                                    preexec_fn=cast("Callable[[], object] | None", preexec))
        self.procs.append(proc)
        return proc

    def run(self, host: Host, command: Sequence[str], timeout: float,
            ) -> subprocess.CompletedProcess[str]:
        """Run ``command`` inside ``host`` to its end; output captured."""
        return subprocess.run(host.argv(command), capture_output=True, text=True,
                              timeout=timeout, stdin=subprocess.DEVNULL)

    def close(self) -> None:
        """Stop whatever still runs in the namespaces, then delete them all (idempotent)."""
        for proc in self.procs:
            stop(proc, signal.SIGKILL, 0)
        for name in reversed(self._namespaces):
            _kill_inside(name)
            _ip("netns", "delete", name, check=False)
        self._namespaces.clear()


def stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, wait: float = 10.0) -> None:
    """Send ``sig`` (if still running), wait up to ``wait`` s, then SIGKILL."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(wait)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _kill_inside(netns: str) -> None:
    """SIGKILL every process whose network namespace is ``netns`` (ones the test began)."""
    listed = _ip("netns", "pids", netns, check=False)
    pids = [int(p) for p in listed.stdout.split() if p.isdigit()]
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _alive(p)]
        time.sleep(0.02)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead enough: its parent reaps it.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(") ")[-1][0] != "Z"
    except OSError:
        return False

