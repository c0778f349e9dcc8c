"""``devcluster meta``: arguments are checked now; the registry write comes in phase 2."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from subprocess import CompletedProcess

import pytest

from devcluster.config.check import parse_meta_items
from devcluster.errors import UsageError


def test_meta_items() -> None:
    assert parse_meta_items(["zone=a", "tier=", "k=v=w"]) == {"zone": "a", "tier": None,
                                                              "k": "v=w"}
    for bad in ("zone", "=a", "a b=c"):
        with pytest.raises(UsageError, match="expected KEY=VALUE"):
            parse_meta_items([bad])


def test_meta_cli_is_one_line(tmp_path: Path,
                              run_cli: Callable[..., CompletedProcess[str]]) -> None:
    (tmp_path / "Procfile").write_text("a: run\n")
    bad = run_cli("meta", "a", "zone")
    assert bad.returncode == 2 and "expected KEY=VALUE" in bad.stderr
    later = run_cli("meta", "a", "zone=b")
    assert later.returncode == 1 and len(later.stderr.strip().splitlines()) == 1
    assert "unknown instance 'a'" in later.stderr  # no cluster has registered it
