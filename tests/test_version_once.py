"""The version is written once, as ``devcluster.__version__``: pyproject.toml reads it at build
time (``.ci/wheel-check`` checks that the built wheel and ``devcluster --version`` agree)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

import devcluster

ROOT = Path(__file__).resolve().parents[1]


def test_pyproject_reads_the_version_from_the_package() -> None:
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
    assert "version" not in pyproject["project"], "pyproject.toml must not write the version again"
    assert "version" in pyproject["project"]["dynamic"]
    assert pyproject["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "devcluster.__version__"}


def test_the_version_is_a_literal_setuptools_reads_without_importing() -> None:
    # setuptools takes `attr` statically only from a plain assignment of a string; anything
    # else makes it import devcluster at build time, where its dependencies are not installed.
    tree = ast.parse((ROOT / "devcluster" / "__init__.py").read_text("utf-8"))
    values = [node.value for node in tree.body if isinstance(node, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "__version__" for t in node.targets)]
    assert len(values) == 1 and isinstance(values[0], ast.Constant)
    assert values[0].value == devcluster.__version__
