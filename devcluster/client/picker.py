"""Pure pickers: which instance gets the next call.

A picker sees the candidates of one call as ``(name, weight)`` pairs and returns a
name. It keeps only its own small state (per-name current weights, the last pick),
does no I/O and takes no locks: the channel calls it under its own lock. Candidates
may change between picks (instances come, go, get reweighted); every picker copes.

>>> p = SmoothWRR()
>>> "".join(p.pick([("a", 5), ("b", 1), ("c", 1)]) for _ in range(7))
'aabacaa'
"""

from __future__ import annotations

import abc
from collections.abc import Sequence
from typing import Final

from devcluster.errors import UsageError

#: The ``--policy`` names, in the order the CLI lists them.
POLICIES: Final = ("weighted", "round_robin", "pick_first")


class NoCandidateError(LookupError):
    """``pick`` was given no candidate with a weight above zero."""


class Picker(abc.ABC):
    """Chooses one of ``candidates`` per call; weight 0 is never chosen."""

    @abc.abstractmethod
    def pick(self, candidates: Sequence[tuple[str, int]]) -> str:
        """The name of the candidate that gets the next call.

        Raises :class:`NoCandidateError` when no candidate has a positive weight.
        """


class SmoothWRR(Picker):
    """nginx's smooth weighted round robin: exact shares and no bursts.

    Every pick adds each candidate's weight to its *current* weight, picks the
    largest current (ties go to the smaller name) and takes the total weight off
    the winner. Over any ``sum(weights)`` picks in a row each name is picked
    exactly ``weight`` times, spread out (5:1:1 gives ``aabacaa``, never five
    ``a`` in a row even across cycles).

    When the candidates change, names that stay keep their current weight, so a
    registry change does not restart the rotation at the heaviest instance; new
    names start at 0 and departed names are forgotten. (What they leave behind is
    a common offset of all currents; only differences decide, so it is harmless.)

    >>> p = SmoothWRR()
    >>> [p.pick([("server1", 1), ("server2", 1)]) for _ in range(3)]
    ['server1', 'server2', 'server1']
    """

    __slots__ = ("_current", "_last", "_total")

    def __init__(self) -> None:
        self._current: dict[str, int] = {}
        # The candidates of the previous pick when they were a tuple: when the
        # channel passes the same (immutable) tuple again, the usual case, the
        # names and the total are unchanged and need no reconciling.
        self._last: Sequence[tuple[str, int]] | None = None
        self._total = 0

    @property
    def currents(self) -> dict[str, int]:
        """A copy of the current weights (for tests and debugging)."""
        return dict(self._current)

    def _reconcile(self, candidates: Sequence[tuple[str, int]]) -> None:
        live = {name: weight for name, weight in candidates if weight > 0}
        if not live:
            raise NoCandidateError("no candidate with a weight above 0")
        current = self._current
        for name in [n for n in current if n not in live]:
            del current[name]
        for name in live:
            current.setdefault(name, 0)
        self._total = sum(live.values())
        self._last = candidates if type(candidates) is tuple else None

    def pick(self, candidates: Sequence[tuple[str, int]]) -> str:
        """See :meth:`Picker.pick`."""
        if candidates is not self._last:
            self._reconcile(candidates)
        current = self._current
        best: str | None = None
        best_value = 0
        for name, weight in candidates:
            if weight <= 0:
                continue
            value = current[name] + weight
            current[name] = value
            if best is None or value > best_value or (value == best_value and name < best):
                best, best_value = name, value
        assert best is not None  # _reconcile saw a positive weight in these candidates
        current[best] = best_value - self._total
        return best


class RoundRobin(Picker):
    """Every candidate with a positive weight in turn, in name order; weights ignored.

    It remembers the last name picked, not a position, so a candidate that comes
    or goes does not make the rotation skip or repeat the others.

    >>> p = RoundRobin()
    >>> [p.pick([("b", 5), ("a", 1)]) for _ in range(3)]
    ['a', 'b', 'a']
    """

    __slots__ = ("_last_name",)

    def __init__(self) -> None:
        self._last_name: str | None = None

    def pick(self, candidates: Sequence[tuple[str, int]]) -> str:
        """See :meth:`Picker.pick`."""
        first = after = None
        last = self._last_name
        for name, weight in candidates:
            if weight <= 0:
                continue
            if first is None or name < first:
                first = name
            if last is not None and name > last and (after is None or name < after):
                after = name
        if first is None:
            raise NoCandidateError("no candidate with a weight above 0")
        self._last_name = chosen = after or first
        return chosen


class PickFirst(Picker):
    """Always the first candidate with a positive weight in name order (grpc's default).

    >>> PickFirst().pick([("server2", 1), ("server1", 0), ("server3", 1)])
    'server2'
    """

    __slots__ = ()

    def pick(self, candidates: Sequence[tuple[str, int]]) -> str:
        """See :meth:`Picker.pick`."""
        names = [name for name, weight in candidates if weight > 0]
        if not names:
            raise NoCandidateError("no candidate with a weight above 0")
        return min(names)


def make_picker(policy: str) -> Picker:
    """The picker for a ``--policy`` name.

    >>> type(make_picker("round_robin")).__name__
    'RoundRobin'
    """
    if policy == "weighted":
        return SmoothWRR()
    if policy == "round_robin":
        return RoundRobin()
    if policy == "pick_first":
        return PickFirst()
    raise UsageError(f"unknown policy {policy!r}; choose one of: {', '.join(POLICIES)}")
