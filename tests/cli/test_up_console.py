"""``devcluster up --console``: the web console lives exactly as long as the cluster."""

from __future__ import annotations

import json
import re
import signal
import socket
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from devcluster.statedir import layout

GREETER = "python -m devcluster.greeter --port $PORT"


def test_up_console_serves_the_cluster_and_stops_with_it(
        tmp_path: Path, foreground: Callable[..., Any], wait_until: Callable[..., Any]) -> None:
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    up = foreground("-p", "0", "--console")
    text = up.wait_for("greeter listening on")
    url = re.search(r"console: (http://127\.0\.0\.1:\d+/)\?token=(\S+)", text)
    assert url, text
    base, token = url.groups()

    def instances() -> list[dict[str, Any]]:
        request = urllib.request.Request(base + "api/instances",
                                         headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(request, timeout=5) as reply:
            return json.loads(reply.read())

    wait_until(lambda: [r["state"] for r in instances()] == ["serving"], 20, "serving via API")
    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(20) == 0
    with pytest.raises(OSError):  # the console went with the cluster
        instances()


def _instances(base: str, token: str) -> list[dict[str, Any]]:
    request = urllib.request.Request(base + "api/instances",
                                     headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=5) as reply:
        return json.loads(reply.read())


def test_up_detach_console_lives_in_the_supervisor_until_down(
        tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    up = run_cli("up", "-d", "-p", "0", "--console", "--json")
    assert up.returncode == 0, up.stderr
    assert [d["state"] for d in json.loads(up.stdout)] == ["serving"]  # JSON stays clean
    url = re.search(r"console: (http://127\.0\.0\.1:\d+/)\?token=(\S+)", up.stderr)
    assert url, up.stderr
    base, token = url.groups()
    saved = layout(tmp_path / ".devcluster").console_url
    assert saved.read_text().strip() == f"{base}?token={token}"
    assert oct(saved.stat().st_mode & 0o777) == "0o600"  # the token is a key
    assert [r["state"] for r in _instances(base, token)] == ["serving"]  # up -d has returned
    assert run_cli("down").returncode == 0
    with pytest.raises(OSError):  # the console went with the cluster
        _instances(base, token)
    assert not saved.exists()


def test_up_detach_console_on_a_taken_port_starts_nothing(
        tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run_cli("up", "-d", "-p", "0", "--console", "--console-port", str(port))
    assert result.returncode == 2, result.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in result.stderr
    assert "Traceback" not in result.stderr
    assert run_cli("ps").returncode == 1  # no cluster was left running


def test_up_console_port_out_of_range_is_a_usage_error(
        tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    result = run_cli("up", "-d", "--console", "--console-port", "70000")
    assert result.returncode == 2
    assert "--console-port must be 0..65535" in result.stderr
    assert not (tmp_path / ".devcluster").exists()


def test_api_cluster_with_console(make_cluster: Callable[..., Any]) -> None:
    cluster = make_cluster(console=True)
    url = cluster.console_url
    assert url and f"console: {url}" in cluster.notes
    base, _, token = url.partition("?token=")
    assert [r["state"] for r in _instances(base, token)] == ["serving"]
    cluster.down()
    assert cluster.console_url is None
    with pytest.raises(OSError):
        _instances(base, token)
