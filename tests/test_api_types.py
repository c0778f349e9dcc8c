"""The typed public API: InstanceInfo rows with the old dict access (deprecated, still
working), ``Cluster(owned=...)`` and its old spelling ``attach=...``, and what
``import devcluster`` shows. No cluster is started: these are the pure parts (the
verbs returning InstanceInfo are in integration/test_control.py)."""

from __future__ import annotations

import subprocess
import sys
import warnings
from pathlib import Path

import pytest

import devcluster
from devcluster.api import Cluster
from devcluster.schema import InstanceInfo


def _info() -> InstanceInfo:
    return InstanceInfo(name="greeter.2", service="greeter", process_type="greeter",
                        state="serving", pid=42, weight=3, enabled=True, metadata={})


def test_old_dict_access_still_answers_but_warns() -> None:
    info = _info()
    with pytest.warns(DeprecationWarning, match=r"info\['state'\].*use info\.state"):
        assert info["state"] == "serving"
    with pytest.warns(DeprecationWarning):
        assert info.get("pid") == 42
    with pytest.warns(DeprecationWarning):
        assert info.get("nope", "x") == "x"
    with pytest.warns(DeprecationWarning):
        assert dict(info) == info.to_dict()  # dict(row) kept working through keys()
    with pytest.warns(DeprecationWarning), pytest.raises(KeyError):
        info["nope"]
    with pytest.warns(DeprecationWarning):
        assert sorted(info) == sorted(info.to_dict())  # iterating gave the keys
    with pytest.warns(DeprecationWarning):
        assert "state" in info and "nope" not in info
    with pytest.warns(DeprecationWarning):
        assert len(info) == len(info.to_dict())


def test_attribute_access_does_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = _info()
        assert (info.state, info.weight, info.to_dict()["name"]) == ("serving", 3, "greeter.2")
        assert info  # truth is not a dict use


def test_owned_is_the_default_and_means_dies_with_this_process(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Cluster(tmp_path / "Procfile").owned is True
        cluster = Cluster(tmp_path / "Procfile", owned=False)
    assert cluster.owned is False
    assert cluster.tied is False  # what the launcher reads


@pytest.mark.parametrize("value", [True, False])
def test_old_attach_spelling_still_works_with_a_warning(tmp_path: Path, value: bool) -> None:
    with pytest.warns(DeprecationWarning, match=r"Cluster\(owned=\.\.\.\)"):
        cluster = Cluster(tmp_path / "Procfile", attach=value)
    assert cluster.owned is value
    assert cluster.tied is value


def test_dir_shows_the_exported_names_and_import_stays_lazy() -> None:
    shown = dir(devcluster)
    for name in devcluster.__all__:
        assert name in shown
    assert {"Cluster", "InstanceInfo", "BalancedChannel", "DevclusterError"} <= set(shown)
    # A server importing devcluster.server must not pay for the API, the client or grpc's
    # balancing machinery: importing the package loads none of them.
    code = ("import sys, devcluster, devcluster.server; "
            "print(sorted(m for m in ('devcluster.api', 'devcluster.client.channel', "
            "'devcluster.registry.file') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "[]"


def test_every_public_member_of_cluster_says_what_it_does() -> None:
    import inspect

    undocumented = [
        name for name, member in inspect.getmembers(Cluster) if not name.startswith("_")
        and not inspect.getdoc(member.fget if isinstance(member, property) else member)]
    assert undocumented == []


def test_attach_options_are_the_constructors_keywords() -> None:
    """``Cluster.attach(**options)`` is typed by ClusterOptions: every keyword of the
    constructor but ``owned`` (attach's cluster is never owned) and the deprecated
    ``attach``, and nothing else."""
    import inspect

    from devcluster.api import ClusterOptions

    keywords = {n for n, p in inspect.signature(Cluster).parameters.items()
                if p.kind is inspect.Parameter.KEYWORD_ONLY}
    assert set(ClusterOptions.__annotations__) == keywords - {"owned", "attach"}
