"""Starting a :class:`~devcluster.api.Cluster`'s supervisor in the background.

:func:`resolve` puts the flags over ``devcluster.toml``; a :class:`Launcher` (one per
cluster, a collaborator of :class:`~devcluster.api.Cluster`) starts the daemon process
with the state dir's lock, the ready pipe and the lifeline, sends it its
:class:`~devcluster.supervisor.request.UpRequest` as JSON on stdin, reads its one-line
:class:`~devcluster.supervisor.request.ReadyReport` back within the settle budget, and
later waits for it to exit. It knows nothing of the Cluster: what it needs comes as
plain values (:class:`Ask`).
"""

from __future__ import annotations

import os
import select
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from devcluster import daemonfork, defaults
from devcluster.config.project import Resolved
from devcluster.errors import DevclusterError, UsageError
from devcluster.supervisor import early
from devcluster.supervisor.logs import tail
from devcluster.supervisor.request import ReadyReport, UpRequest

#: port, grace, ready_timeout, registry as given to the Cluster (None: not given).
FlagValues = tuple[int | None, float | None, float | None, str | None]


@dataclass(frozen=True)
class Ask:
    """What a cluster asks of its daemon besides the resolved flags."""

    procfile: Path
    state_dir: Path
    env_files: tuple[Path, ...] = ()
    config: Path | None = None
    tied: bool = True
    """The cluster dies with this process (a lifeline pipe; the Cluster's ``attach``)."""
    watch: tuple[Path, ...] | None = None
    console: bool = False
    console_port: int = 0


def resolve(procfile: Path, config: Path | None, flags: FlagValues,
            scale: Mapping[str, int], restart: Mapping[str, str]) -> Resolved:
    """Flags over ``devcluster.toml`` (a bad file raises here: nothing has started)."""
    from devcluster.config.plan import plan
    from devcluster.config.policy import Policy
    from devcluster.config.project import Flags

    port, grace, ready_timeout, registry = flags
    try:
        policies = {k: Policy(str(v)) for k, v in restart.items()}
    except ValueError as e:
        raise UsageError(f"bad restart policy: {e}; use no, on-failure or always") from None
    return plan(procfile, Flags(port=port, grace=grace, ready_timeout=ready_timeout,
                                registry=registry, scale=dict(scale), restart=policies), config)


def longest_grace(resolved: Resolved) -> float:
    """The longest any instance may take to stop (``down`` waits this, +10 s)."""
    return max([resolved.grace, *(t.grace for t in resolved.types.values())])


def request(ask: Ask, resolved: Resolved, ready_fd: int | None = None,
            lifeline_fd: int | None = None, lock_fd: int | None = None) -> UpRequest:
    """What the daemon is asked for: the resolved flags and the fds it inherits."""
    r = resolved
    return UpRequest(
        procfile=ask.procfile, state_dir=ask.state_dir, env_files=ask.env_files,
        scale=r.scale, base_port=r.port, grace=r.grace, ready_timeout=r.ready_timeout,
        restart=r.restart, ready_fd=ready_fd, lifeline_fd=lifeline_fd, lock_fd=lock_fd,
        registry=r.registry, config=ask.config, types=r.types, waves=r.waves,
        watch=ask.watch, console=ask.console, console_port=ask.console_port, flags=r.flags,
        log_max=r.log_max, log_keep=r.log_keep)


def _early(text: str, resolved: Resolved) -> early.Plan | None:
    """The instances to start before the daemon (None: none may, or it cannot be done
    safely here); a failure only means they start the usual way."""
    from devcluster.supervisor.request import boot_view

    try:
        return early.plan(boot_view(text), resolved.types, resolved.grace)
    except (OSError, ValueError, DevclusterError):
        return None


def _spawn(ask: Ask, out: IO[bytes], passed: list[int],
           plan: early.Plan | None) -> subprocess.Popen[bytes]:
    """``python -m devcluster.daemon`` (its request goes on stdin: :func:`_send`);
    ``plan``'s instances start between its fork and exec."""
    proc = subprocess.Popen(
        # --state-dir only labels the process (`ps`, the pytest plugin's leak guard
        # and sweeps find a cluster's supervisor by it); settings come on stdin.
        [sys.executable, "-m", "devcluster.daemon", "--state-dir", str(ask.state_dir)],
        stdin=subprocess.PIPE, stdout=out, stderr=out,
        pass_fds=passed + (plan.fds() if plan else []), start_new_session=True,
        cwd=ask.procfile.parent, env=plan.environment(os.environ) if plan else None,
        preexec_fn=plan.spawn if plan else None)
    return proc


def _send(proc: subprocess.Popen[bytes], text: str) -> None:
    """The request goes through a pipe, not argv: no size limit ("Argument list too
    long"), and not on display in `ps` to every user. Sent once our copies of the
    hand-over pipe are closed: the daemon reads that first."""
    assert proc.stdin is not None
    try:
        proc.stdin.write(text.encode())
        proc.stdin.close()
    except BrokenPipeError:
        pass  # it died at once; _read_ready reports it


class Launcher:
    """The daemon process of one cluster: started once, waited for at ``down``."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | daemonfork.Forked | None = None
        self.lifeline: int | None = None
        """Our end of the lifeline pipe (``attach``): closing it stops the cluster."""

    def start(self, ask: Ask, resolved: Resolved) -> ReadyReport:
        """Start ``python -m devcluster.daemon`` with the state dir's lock, the ready pipe
        and (``ask.tied``) the lifeline; send it its request; wait for its one line: what
        it started (or its error), as data."""
        from devcluster.statedir import open_nofollow, prepare, take_lock

        prepare(ask.state_dir)  # never changes the mode of a directory it did not create
        where = defaults.layout(ask.state_dir)  # prepare() made its logs/ and private/
        try:
            out = open(where.daemon_out, "ab", opener=open_nofollow)  # noqa: SIM115
        except OSError as e:
            raise DevclusterError(f"cannot write {where.daemon_out} ({e.strerror})") from None
        # Lock the state dir now and hand the lock to the daemon (the same open file):
        # from this moment `down` sees a cluster starting, and two `up -d` cannot race.
        try:
            lock = take_lock(ask.state_dir)
        except BaseException:
            out.close()
            raise
        read_fd, write_fd = os.pipe()
        passed = [write_fd, lock.fileno()]
        lifeline = None
        if ask.tied:
            # The daemon holds the read end; when this process ends (however), the write
            # end closes and the cluster shuts down gracefully.
            lifeline, self.lifeline = os.pipe()
            passed.append(lifeline)
        text = request(ask, resolved, write_fd, lifeline, passed[1]).to_json()
        # The instances start between the daemon's fork and exec: they boot while its
        # interpreter starts and imports, and it adopts them (devcluster.supervisor.early).
        plan = _early(text, resolved)
        try:
            if daemonfork.usable():  # the CLI: this process, forked (no second interpreter)
                self.proc = daemonfork.start(text, ask.state_dir, ask.procfile.parent,
                                             out.fileno(), passed, plan)
            else:
                self.proc = _spawn(ask, out, passed, plan)
        finally:
            for fd in passed[:1] + passed[2:]:
                os.close(fd)
            lock.close()  # the daemon holds it now
            out.close()
            if plan is not None:
                plan.close()
        if isinstance(self.proc, subprocess.Popen):
            _send(self.proc, text)
        try:
            return self._read_ready(read_fd, ask.state_dir, resolved)
        finally:
            os.close(read_fd)

    def _read_ready(self, fd: int, state_dir: Path, resolved: Resolved) -> ReadyReport:
        from devcluster.config.plan import settle_budget

        r = resolved
        # Crash loops settle as `failed` after ~7.5 s of backoff; allow for that.
        deadline = time.monotonic() + settle_budget(r.types, r.waves, r.ready_timeout) + 60
        data = b""
        while not data.endswith(b"\n"):
            remaining = deadline - time.monotonic()
            ready, _, _ = select.select([fd], [], [], max(0.0, remaining))
            if not ready:
                raise DevclusterError(f"the cluster did not settle in time; see "
                                      f"`devcluster logs` (state dir {state_dir})")
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            data += chunk
        if not data.strip():  # it died before it could say anything (killed, no memory...)
            assert self.proc is not None
            code = self.proc.wait(timeout=30)
            lines = tail(defaults.layout(state_dir).daemon_out, 5)
            why = next((ln for ln in reversed(lines) if ln.strip()), "no output")
            raise DevclusterError(f"the supervisor exited ({code}) before it was ready: {why}")
        return ReadyReport.from_json(data)

    def wait(self, timeout: float) -> None:
        """After ``down``: wait for the daemon to exit (SIGKILL it after ``timeout``: it
        hung; PDEATHSIG takes its children), then cut the lifeline."""
        if self.proc is not None:
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
            self.proc = None
        if self.lifeline is not None:
            os.close(self.lifeline)
            self.lifeline = None
