"""Starting a :class:`~devcluster.api.Cluster`'s supervisor in the background.

:class:`Launch` is a part of :class:`~devcluster.api.Cluster` (a mixin: the methods
run on the cluster itself): flags over ``devcluster.toml``, the daemon process with
the state dir's lock, the ready pipe and the lifeline, its settings sent as JSON on
stdin, and its one-line answer read back within the settle budget.
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from devcluster import defaults
from devcluster.config.project import Resolved
from devcluster.errors import DevclusterError, UsageError
from devcluster.supervisor.logs import tail
from devcluster.supervisor.request import ReadyReport, UpRequest

if TYPE_CHECKING:
    from devcluster.api import Cluster


class Launch:
    """Cluster.up's plumbing: _resolve, _start_daemon, _request, _read_ready."""

    def _start_daemon(self: Cluster) -> ReadyReport:
        """Start ``python -m devcluster.daemon`` with the state dir's lock, the ready pipe
        and (``attach``) the lifeline; send it its settings; wait for its one line: what
        it started (or its error), as data."""
        from devcluster.statedir import prepare, take_lock

        prepare(self.state_dir)  # never changes the mode of a directory it did not create
        # Lock the state dir now and hand the lock to the daemon (the same open file):
        # from this moment `down` sees a cluster starting, and two `up -d` cannot race.
        lock = take_lock(self.state_dir)
        where = defaults.layout(self.state_dir)
        where.logs.mkdir(exist_ok=True)
        read_fd, write_fd = os.pipe()
        passed = [write_fd, lock.fileno()]
        lifeline = None
        if self.tied:
            # The daemon holds the read end; when this process ends (however), the write
            # end closes and the cluster shuts down gracefully.
            lifeline, self._lifeline = os.pipe()
            passed.append(lifeline)
        out = open(where.daemon_out, "ab")  # noqa: SIM115
        try:
            self._proc = subprocess.Popen(
                # --state-dir only labels the process (`ps`, the pytest plugin's leak guard
                # and sweeps find a cluster's supervisor by it); settings come on stdin.
                [sys.executable, "-m", "devcluster.daemon", "--state-dir", str(self.state_dir)],
                stdin=subprocess.PIPE,
                stdout=out, stderr=out, pass_fds=passed, start_new_session=True,
                cwd=self.procfile.parent)
        finally:
            for fd in passed[:1] + passed[2:]:
                os.close(fd)
            lock.close()  # the daemon holds it now
            out.close()
        # The settings go through a pipe, not argv: no size limit ("Argument list too
        # long"), and not on display in `ps` to every user.
        assert self._proc.stdin is not None
        try:
            self._proc.stdin.write(self._request(write_fd, lifeline, passed[1]).to_json().encode())
            self._proc.stdin.close()
        except BrokenPipeError:
            pass  # it died at once; _read_ready reports it
        try:
            payload = self._read_ready(read_fd)
        finally:
            os.close(read_fd)
        return payload

    def _resolve(self: Cluster) -> Resolved:
        """Flags over ``devcluster.toml`` (a bad file raises here: nothing has started)."""
        from devcluster.config.plan import plan
        from devcluster.config.policy import Policy
        from devcluster.config.project import Flags

        port, grace, ready_timeout, registry = self._flags
        try:
            restart = {k: Policy(str(v)) for k, v in self.restart_policies.items()}
        except ValueError as e:
            raise UsageError(f"bad restart policy: {e}; use no, on-failure or always") from None
        flags = Flags(port=port, grace=grace, ready_timeout=ready_timeout, registry=registry,
                      scale=self.scale_counts, restart=restart)
        resolved = self.resolved = plan(self.procfile, flags, self.config)
        # down() waits this long (+10 s): the longest any instance may take to stop.
        self.grace = max([resolved.grace, *(t.grace for t in resolved.types.values())])
        self.ready_timeout = resolved.ready_timeout
        self.registry_url = resolved.registry
        return resolved

    def _request(self: Cluster, ready_fd: int, lifeline_fd: int | None,
                 lock_fd: int) -> UpRequest:
        """What the daemon is asked for: the resolved flags and the fds it inherits."""
        r = self.resolved
        assert r is not None
        return UpRequest(
            procfile=self.procfile, state_dir=self.state_dir, env_files=self.env_files,
            scale=r.scale, base_port=r.port, grace=r.grace, ready_timeout=r.ready_timeout,
            restart=r.restart, ready_fd=ready_fd, lifeline_fd=lifeline_fd, lock_fd=lock_fd,
            registry=r.registry, config=self.config, types=r.types, waves=r.waves,
            watch=self.watch, console=self.console, console_port=self.console_port)

    def _read_ready(self: Cluster, fd: int) -> ReadyReport:
        from devcluster.config.plan import settle_budget

        r = self.resolved
        budget = settle_budget(r.types, r.waves, r.ready_timeout) if r else self.ready_timeout
        # Crash loops settle as `failed` after ~7.5 s of backoff; allow for that.
        deadline = time.monotonic() + budget + 60
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
            if not ready:
                raise DevclusterError(f"the cluster did not settle in time; see "
                                      f"`devcluster logs` (state dir {self.state_dir})")
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        if not data.strip():  # it died before it could say anything (killed, no memory...)
            assert self._proc is not None
            code = self._proc.wait(timeout=30)
            lines = tail(defaults.layout(self.state_dir).daemon_out, 5)
            why = next((ln for ln in reversed(lines) if ln.strip()), "no output")
            raise DevclusterError(f"the supervisor exited ({code}) before it was ready: {why}")
        return ReadyReport.from_json(data)

    def _not_ready_message(self: Cluster, bad: Mapping[str, Mapping[str, Any]]) -> str:
        parts = []
        for name, s in bad.items():
            why = s.get("last_exit") or ("not answering" if s["state"] == "starting" else "")
            log = tail(defaults.layout(self.state_dir).log(name), 3)
            last = f"; last log: {' / '.join(log)}" if log else ""
            parts.append(f"{name} {s['state']}{f' ({why})' if why else ''}{last}")
        return "not serving: " + "; ".join(parts)

