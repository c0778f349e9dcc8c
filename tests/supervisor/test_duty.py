"""The supervisor's duties: an error is said once and the duty runs again; it never
escapes (it would cancel the task group and stop every instance)."""

from __future__ import annotations

import asyncio
import errno

import pytest

from devcluster.supervisor.duty import guarded


def test_a_failing_duty_is_said_once_and_runs_again_until_it_returns() -> None:
    said: list[str] = []
    runs = 0

    async def duty() -> None:
        nonlocal runs
        runs += 1
        if runs <= 3:
            raise OSError(errno.EMFILE, "Too many open files")

    asyncio.run(guarded("the keeper", duty, said.append, pauses=(0.0,)))
    assert runs == 4
    assert len(said) == 1
    assert said[0].startswith("the keeper failed (OSError(24, 'Too many open files'))")


def test_a_different_error_is_said_too() -> None:
    said: list[str] = []
    errors: list[Exception] = [OSError(errno.EMFILE, "x"), ValueError("y"), OSError(errno.EMFILE, "x")]

    async def duty() -> None:
        if errors:
            raise errors.pop(0)

    asyncio.run(guarded("d", duty, said.append, pauses=(0.0,)))
    assert [s.split(" (")[1].split("(")[0] for s in said] == ["OSError", "ValueError"]


def test_the_pauses_double_then_stay_at_the_last() -> None:
    slept: list[float] = []
    runs = 0

    async def duty() -> None:
        nonlocal runs
        runs += 1
        if runs <= 4:
            raise RuntimeError("again")

    async def main() -> None:
        real = asyncio.sleep

        async def record(delay: float) -> None:
            slept.append(delay)
            await real(0)

        asyncio.sleep = record  # type: ignore[assignment]
        try:
            await guarded("d", duty, lambda _: None, pauses=(0.5, 1.0, 2.0))
        finally:
            asyncio.sleep = real

    asyncio.run(main())
    assert slept == [0.5, 1.0, 2.0, 2.0]


def test_cancelling_ends_a_duty_at_once() -> None:
    async def forever() -> None:
        await asyncio.Event().wait()

    async def main() -> None:
        task = asyncio.ensure_future(guarded("d", forever, lambda _: None))
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
