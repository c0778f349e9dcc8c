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
from collections.abc import Callable, Mapping, Sequence
from typing import Any, ClassVar, Final

from devcluster.errors import UsageError

#: Orders instance names for a picker ("name order"); None means the names themselves.
#: A static target passes each address's position in its list instead.
OrderKey = Callable[[str], Any]


class NoCandidateError(LookupError):
    """``pick`` was given no candidate with a weight above zero."""


class Picker(abc.ABC):
    """Chooses one of ``candidates`` per call; weight 0 is never chosen.

    A new policy is a subclass (with a one-line ``summary`` for ``--help``) and one
    entry in :data:`POLICIES`.
    """

    #: One line for ``devcluster client --help``.
    summary: ClassVar[str] = ""

    @abc.abstractmethod
    def __init__(self, key: OrderKey | None = None) -> None:
        """``key`` orders instance names (None: the names themselves)."""

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

    __slots__ = ("_current", "_key", "_last", "_total")
    summary = "smooth weighted round robin: exact shares by weight, no bursts"

    def __init__(self, key: OrderKey | None = None) -> None:
        self._key = key
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
        key = self._key
        best: str | None = None
        best_value = 0
        for name, weight in candidates:
            if weight <= 0:
                continue
            value = current[name] + weight
            current[name] = value
            if best is None or value > best_value or (
                    value == best_value
                    and (name < best if key is None else key(name) < key(best))):
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

    __slots__ = ("_key", "_last")
    summary = "each instance in turn, weights ignored"

    def __init__(self, key: OrderKey | None = None) -> None:
        self._key = key
        self._last: Any = None  # the order key of the last name picked

    def pick(self, candidates: Sequence[tuple[str, int]]) -> str:
        """See :meth:`Picker.pick`."""
        key = self._key
        first = after = None
        first_k = after_k = None
        last = self._last
        for name, weight in candidates:
            if weight <= 0:
                continue
            k = name if key is None else key(name)
            if first is None or k < first_k:
                first, first_k = name, k
            if last is not None and k > last and (after is None or k < after_k):
                after, after_k = name, k
        if first is None:
            raise NoCandidateError("no candidate with a weight above 0")
        if after is not None:
            self._last = after_k
            return after
        self._last = first_k
        return first


class PickFirst(Picker):
    """Always the first candidate with a positive weight in name order (grpc's default).

    >>> PickFirst().pick([("server2", 1), ("server1", 0), ("server3", 1)])
    'server2'
    """

    __slots__ = ("_key",)
    summary = "always the first instance in name order (grpc's default)"

    def __init__(self, key: OrderKey | None = None) -> None:
        self._key = key

    def pick(self, candidates: Sequence[tuple[str, int]]) -> str:
        """See :meth:`Picker.pick`."""
        names = [name for name, weight in candidates if weight > 0]
        if not names:
            raise NoCandidateError("no candidate with a weight above 0")
        return min(names) if self._key is None else min(names, key=self._key)


#: Every ``--policy``: name -> picker class, in the order ``--help`` lists them. Adding
#: a policy is one Picker subclass and one line here; the CLI reads its choices from it.
POLICIES: Final[Mapping[str, type[Picker]]] = {
    "weighted": SmoothWRR,
    "round_robin": RoundRobin,
    "pick_first": PickFirst,
}

#: The policy of a balanced channel when none is given.
DEFAULT_POLICY: Final = "weighted"


def make_picker(policy: str, key: OrderKey | None = None) -> Picker:
    """The picker for a ``--policy`` name; ``key`` orders names (default: the names).

    >>> type(make_picker("round_robin")).__name__
    'RoundRobin'
    """
    cls = POLICIES.get(policy)
    if cls is None:
        raise UsageError(f"unknown policy {policy!r}; choose one of: {', '.join(POLICIES)}")
    return cls(key)


def policies_help() -> str:
    """``name: summary`` of every policy, for ``--help``.

    >>> policies_help().split("; ")[0]
    'weighted: smooth weighted round robin: exact shares by weight, no bursts'
    """
    return "; ".join(f"{name}: {cls.summary}" for name, cls in POLICIES.items())
