"""Injected faults: delay and/or abort a share of the calls an instance serves.

Pure data, parsing and the per-call decision; no I/O. A fault lives in the registry on
each record it targets (:attr:`devcluster.registry.record.Record.fault`), so both
backends store it, every supervisor's xDS server turns it into an HTTPFault filter
(gRFC A33), and the balanced clients' core applies the same decision to the calls it
sends to that instance.

>>> f = parse("greeter.2", delay="200ms:50", abort="UNAVAILABLE:10")
>>> f.describe()
'delay 200ms 50%, abort UNAVAILABLE 10%'
>>> f.decide(0.3, 0.05)      # the two draws: delayed (0.3 < 0.5), then aborted (0.05 < 0.1)
(0.2, 14)
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from devcluster.errors import UsageError

__all__ = ["CODES", "Fault", "parse", "parse_abort", "parse_delay", "targets"]

#: gRPC status codes by name (those a server may answer with; OK is no fault).
CODES: dict[str, int] = {
    "CANCELLED": 1, "UNKNOWN": 2, "INVALID_ARGUMENT": 3, "DEADLINE_EXCEEDED": 4,
    "NOT_FOUND": 5, "ALREADY_EXISTS": 6, "PERMISSION_DENIED": 7, "RESOURCE_EXHAUSTED": 8,
    "FAILED_PRECONDITION": 9, "ABORTED": 10, "OUT_OF_RANGE": 11, "UNIMPLEMENTED": 12,
    "INTERNAL": 13, "UNAVAILABLE": 14, "DATA_LOSS": 15, "UNAUTHENTICATED": 16,
}
_NAMES = {code: name for name, code in CODES.items()}
#: The longest delay a fault may ask for (an hour: longer is a typo, not a test).
MAX_DELAY_S = 3600.0
_DURATION = re.compile(r"(?P<n>[0-9]+(?:\.[0-9]+)?)(?P<unit>ms|s|m)?", re.ASCII)
_NUMBER = re.compile(r"[0-9]+(?:\.[0-9]+)?", re.ASCII)
_SCALE = {"ms": 0.001, "s": 1.0, "m": 60.0, None: 1.0}


@dataclass(frozen=True)
class Fault:
    """Delay ``delay_percent`` % of calls by ``delay_s`` and fail ``abort_percent`` % with
    gRPC status ``abort_code`` (0: no abort). The two are drawn independently, delay first,
    as gRPC's fault filter does.

    >>> Fault(abort_code=14, abort_percent=10.0).active   # 10 % of calls fail UNAVAILABLE
    True
    """

    delay_s: float = 0.0
    delay_percent: float = 0.0
    abort_code: int = 0
    """A gRPC status code (14: UNAVAILABLE); 0 means no abort."""
    abort_percent: float = 0.0

    def __post_init__(self) -> None:
        for name in ("delay_percent", "abort_percent"):
            value = getattr(self, name)
            if not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} must be 0..100, got {value}")
        if not 0 <= self.delay_s <= MAX_DELAY_S:
            raise ValueError(f"delay_s must be 0..{MAX_DELAY_S:g}, got {self.delay_s}")
        if not 0 <= self.abort_code <= 16:
            raise ValueError(f"abort_code must be a gRPC status code 1..16, got {self.abort_code}")

    @property
    def active(self) -> bool:
        return (self.delay_s > 0 and self.delay_percent > 0) or (
            self.abort_code > 0 and self.abort_percent > 0)

    def decide(self, draw_delay: float, draw_abort: float) -> tuple[float, int]:
        """(seconds to delay, status code to abort with or 0) for one call, given two
        uniform draws in [0, 1)."""
        delay = self.delay_s if draw_delay * 100 < self.delay_percent else 0.0
        abort = self.abort_code if draw_abort * 100 < self.abort_percent else 0
        return delay, abort

    def describe(self) -> str:
        """Short text for ``ps``, ``top``, the console and ``events``."""
        parts = []
        if self.delay_s > 0 and self.delay_percent > 0:
            parts.append(f"delay {_ms(self.delay_s)} {self.delay_percent:g}%")
        if self.abort_code > 0 and self.abort_percent > 0:
            parts.append(f"abort {_NAMES[self.abort_code]} {self.abort_percent:g}%")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        return {"delay_s": self.delay_s, "delay_percent": self.delay_percent,
                "abort_code": self.abort_code, "abort_percent": self.abort_percent}

    @classmethod
    def from_dict(cls, obj: Any) -> Fault:
        """From :meth:`to_dict`'s form; ValueError naming the field if anything is off."""
        if not isinstance(obj, dict) or set(obj) - set(cls().to_dict()):
            raise ValueError(f"must be an object with keys {', '.join(cls().to_dict())}")
        values: dict[str, Any] = {}
        for key, value in obj.items():
            if isinstance(value, bool) or not isinstance(value, int | float) \
                    or not math.isfinite(value):
                raise ValueError(f"{key} must be a number, got {value!r}")
            values[key] = int(value) if key == "abort_code" else float(value)
        return cls(**values)


def _ms(seconds: float) -> str:
    return f"{seconds * 1000:g}ms" if seconds < 1 else f"{seconds:g}s"


def parse_delay(text: str) -> tuple[float, float]:
    """``DURATION[:PERCENT]`` (``200ms``, ``1.5s``, ``2`` seconds; percent default 100)."""
    duration, _, percent = text.partition(":")
    match = _DURATION.fullmatch(duration.strip())
    seconds = float(match["n"]) * _SCALE[match["unit"]] if match else -1.0
    if not 0 < seconds <= MAX_DELAY_S:
        raise UsageError(f"--delay {text!r}: give a duration up to 1h such as 200ms, 1.5s or 2 "
                         "(seconds), optionally :PERCENT (e.g. 200ms:50)")
    return seconds, _percent(percent, "--delay", text)


def parse_abort(text: str) -> tuple[int, float]:
    """``CODE[:PERCENT]``: a gRPC status name (``UNAVAILABLE``) or number (14)."""
    code_text, _, percent = text.partition(":")
    name = code_text.strip().upper()
    code = CODES.get(name) or (int(name) if name.isascii() and name.isdigit() else 0)
    if code not in _NAMES:
        raise UsageError(f"--abort {text!r}: give a gRPC status such as UNAVAILABLE or 14 "
                         f"(one of {', '.join(CODES)}), optionally :PERCENT (e.g. "
                         "UNAVAILABLE:10)")
    return code, _percent(percent, "--abort", text)


def _percent(text: str, flag: str, whole: str) -> float:
    if not text:
        return 100.0
    match = _NUMBER.fullmatch(text.strip())
    value = float(text) if match else -1.0
    if not 0 < value <= 100:
        raise UsageError(f"{flag} {whole!r}: the percent after ':' must be a number in (0, 100]")
    return value


def parse(target: str, delay: str | None = None, abort: str | None = None) -> Fault:
    """The fault the ``fault`` command asks for; UsageError (exit 2) if it asks for none."""
    if delay is None and abort is None:
        raise UsageError(f"fault {target}: say --delay DURATION[:PERCENT], --abort "
                         "CODE[:PERCENT] or --clear")
    delay_s, delay_percent = parse_delay(delay) if delay is not None else (0.0, 0.0)
    code, abort_percent = parse_abort(abort) if abort is not None else (0, 0.0)
    return Fault(delay_s, delay_percent, code, abort_percent)


def targets(names_by_service: Mapping[str, str], target: str) -> list[str]:
    """The instances ``target`` names: one instance, a process type (``greeter`` ->
    ``greeter.1``...) or a registry service (``server`` -> ``server1``...), by name.
    ``names_by_service``: every instance's service. UnknownInstanceError if none."""
    from devcluster.errors import UnknownInstanceError

    if target in names_by_service:
        return [target]
    names = sorted(n for n, service in names_by_service.items()
                   if n.split(".")[0] == target or service == target)
    if not names:
        raise UnknownInstanceError(target, sorted(names_by_service))
    return names
