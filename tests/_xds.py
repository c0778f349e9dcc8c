"""Unmodified xDS clients of a running cluster, for the integration tests.

``XdsClient`` is tests/xds/_xds_client.py (grpcio, ``xds:///greeter``) in a subprocess,
driven with JSON lines; ``NodeClient`` is examples/node-xds-client/client.js (grpc-js
with @grpc/grpc-js-xds), which makes N calls and prints its counts. Both read the
cluster's bootstrap from ``GRPC_XDS_BOOTSTRAP``: nothing of devcluster is in them.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests._servers import ROOT

CLIENT = ROOT / "tests" / "xds" / "_xds_client.py"
NODE_EXAMPLE = ROOT / "examples" / "node-xds-client"
NODE = shutil.which("node")
#: Appended by the grpcio client to the code of a call that failed after response headers.
COMMITTED = "_AFTER_HEADERS"


class XdsClient:
    """tests/xds/_xds_client.py in a subprocess: JSON commands in, JSON answers out."""

    def __init__(self, bootstrap: str, log: Path, target: str = "xds:///greeter") -> None:
        env = {**os.environ, "GRPC_XDS_BOOTSTRAP": bootstrap, "PYTHONPATH": str(ROOT)}
        with open(log, "w") as err:
            self.proc = subprocess.Popen([sys.executable, str(CLIENT), target],
                                         stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True, cwd=ROOT, env=env)
        assert self.proc.stdout is not None
        assert json.loads(self.proc.stdout.readline() or '{"ready": false}')["ready"], \
            f"the xDS client never got ready: see {log}"

    def ask(self, **cmd: Any) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, f"the xDS client exited with {self.proc.poll()}"
        out: dict[str, Any] = json.loads(line)
        return out

    def wait(self, **cmd: Any) -> float:
        """``await`` (present/absent, since, k, timeout): the ms it took; fails on a timeout."""
        out = self.ask(op="await", **cmd)
        assert "ms" in out, f"timed out waiting for {cmd}: {out}"
        return float(out["ms"])

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()


def lost(errors: dict[str, int]) -> dict[str, int]:
    """The failed calls that had not reached a server: a SIGKILL may fail the others, which
    were committed (gRFC A6: a call whose response headers arrived is never retried)."""
    return {code: n for code, n in errors.items() if not code.endswith(COMMITTED)}


def node_modules() -> Path:
    """examples/node-xds-client/node_modules, after ``npm ci`` if it is missing."""
    if NODE is None:
        pytest.skip("node is not installed (apt-get install nodejs npm): the grpc-js xDS "
                    "client cannot run")
    modules = NODE_EXAMPLE / "node_modules"
    if not (modules / "@grpc" / "grpc-js-xds").is_dir():
        npm = shutil.which("npm")
        if npm is None:
            pytest.fail(f"node is installed but npm is not: install npm to set up "
                        f"{NODE_EXAMPLE} (npm ci)")
        done = subprocess.run([npm, "ci", "--no-audit", "--no-fund"], cwd=NODE_EXAMPLE,
                              capture_output=True, text=True, timeout=600, check=False)
        assert done.returncode == 0, f"npm ci failed in {NODE_EXAMPLE}:\n{done.stdout}{done.stderr}"
    return modules


class NodeClient:
    """``node client.js xds:///greeter N``: N calls in a row, then one JSON line of counts."""

    def __init__(self, bootstrap: str, n: int) -> None:
        assert NODE is not None
        self.proc = subprocess.Popen([NODE, str(NODE_EXAMPLE / "client.js"), "xds:///greeter",
                                      str(n)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True, env={**os.environ, "GRPC_XDS_BOOTSTRAP": bootstrap})

    def result(self, timeout: float = 60) -> dict[str, Any]:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        finally:
            self.close()
        assert self.proc.returncode == 0, f"node client failed ({self.proc.returncode}): {err}"
        parsed: dict[str, Any] = json.loads(out)
        return parsed

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait()
