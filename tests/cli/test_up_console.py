"""``devcluster up --console``: the web console lives exactly as long as the cluster."""

from __future__ import annotations

import json
import re
import signal
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

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


def test_up_console_with_detach_is_refused(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    (tmp_path / "Procfile").write_text(f"greeter: {GREETER}\n")
    result = run_cli("up", "-d", "--console")
    assert result.returncode == 2
    assert "devcluster console" in result.stderr
    assert not (tmp_path / ".devcluster").exists()
