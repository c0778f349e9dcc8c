"""Which commands a fork server can run (devcluster.config.preloadcheck): pure checks."""

from __future__ import annotations

import pytest

from devcluster.config.preloadcheck import command_problem, python_command


@pytest.mark.parametrize(("argv", "shape"), [
    (["python", "-m", "devcluster.greeter", "--port", "5000"], ("-m", "devcluster.greeter")),
    (["python3", "-u", "-m", "svc"], ("-m", "svc")),
    (["/usr/bin/python3.11", "app.py", "x"], ("file", "app.py")),
    (["python", "-c", "print(1)"], None),
    (["python", "-X", "dev", "-m", "svc"], None),
    (["python", "-m", "my-mod"], None),
    (["/bin/sh", "-c", "python -m x"], None),
    (["node", "app.py"], None),
    (["python"], None),
])
def test_python_command(argv: list[str], shape: tuple[str, str] | None) -> None:
    assert python_command(argv) == shape


@pytest.mark.parametrize(("command", "problem"), [
    ("python -m svc --port $PORT", None),
    ("python app.py ${PORT}", None),
    ("python -m svc | tee log", "it needs a shell"),
    ("cd x && python -m svc", "it needs a shell"),
    ("python -m svc --name 'a b'", "it needs a shell"),
    ("$PY -m svc", "it is not `python -m MODULE` or `python FILE.py`"),
    ("gunicorn app:app", "it is not `python -m MODULE` or `python FILE.py`"),
])
def test_command_problem(command: str, problem: str | None) -> None:
    assert command_problem(command) == problem
