"""The health-check rule (sans-IO): misses in a row, one success, liveness."""

from __future__ import annotations

import pytest

from devcluster.supervisor.checkup import Tally, Verdict

H, U, R = Verdict.HEALTHY, Verdict.UNHEALTHY, Verdict.RESTART


@pytest.mark.parametrize(("failures", "liveness", "outcomes", "verdicts"), [
    (2, False, "ff", [None, U]),
    (2, False, "fftf", [None, U, H, None]),          # one success is enough
    (2, False, "ftft", [None, None, None, None]),     # misses must be in a row
    (1, False, "fft", [U, None, H]),
    (2, True, "ffff", [None, U, None, R]),            # liveness: as many misses again
    (2, False, "ffff", [None, U, None, None]),        # without it, never a restart
    (3, True, "tttfff", [None, None, None, None, None, U]),
])
def test_tally(failures: int, liveness: bool, outcomes: str,
               verdicts: list[Verdict | None]) -> None:
    tally = Tally(failures, liveness)
    assert [tally.observe(o == "t") for o in outcomes] == verdicts
