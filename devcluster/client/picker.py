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

    def rotation(self) -> tuple[Sequence[str], int] | None:
        """``(names, position)`` when the picks from now on, for as long as the caller
        passes the same candidates object, are ``names`` from ``position`` on, round and
        round; None when there is no such rotation (yet).

        A caller may replay it itself (the balancer does: no call into the picker per
        pick); it then says with :meth:`replayed` where it stopped before it calls
        :meth:`pick` again.
        """
        return None

    def replayed(self, position: int) -> None:
        """The caller replayed :meth:`rotation` up to ``position`` (the next pick's)."""
        return None  # no rotation given, nothing to move on


#: The longest rotation :class:`SmoothWRR` keeps to replay (entries: the total weight);
#: a longer one (many heavy instances) is computed pick by pick, as before.
MAX_CYCLE: Final = 1 << 16


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

    One pick by that rule looks at every candidate: O(n), 20 us a call at 100
    instances. But the rule is deterministic and its state comes back to where it
    was after ``sum(weights)`` picks (the rotation is periodic, after at most a few
    rotations following a change), so once a rotation ends where it began, the
    picker replays it: O(1) a pick, the same sequence. A change of the candidates
    computes the currents where the replay stands and starts over.

    >>> p = SmoothWRR()
    >>> [p.pick([("server1", 1), ("server2", 1)]) for _ in range(3)]
    ['server1', 'server2', 'server1']
    """

    __slots__ = ("_current", "_cycle", "_from", "_key", "_last", "_pos", "_record", "_total",
                 "_weights")
    summary = "smooth weighted round robin: exact shares by weight, no bursts"

    def __init__(self, key: OrderKey | None = None) -> None:
        self._key = key
        self._current: dict[str, int] = {}
        # The candidates of the previous pick when they were a tuple: when the
        # channel passes the same (immutable) tuple again, the usual case, the
        # names and the total are unchanged and need no reconciling.
        self._last: Sequence[tuple[str, int]] | None = None
        self._total = 0
        self._weights: dict[str, int] = {}
        # The picks since the currents were ``_from`` (None: not recording), and,
        # once a rotation ended where it began, that rotation and where we are in it.
        self._record: list[str] | None = None
        self._from: dict[str, int] = {}
        self._cycle: list[str] | None = None
        self._pos = 0

    @property
    def currents(self) -> dict[str, int]:
        """A copy of the current weights (for tests and debugging)."""
        return self._currents_now()

    def _currents_now(self) -> dict[str, int]:
        cycle = self._cycle
        if cycle is None:
            return dict(self._current)
        # Replaying from _from: each pick added every weight, and took the total off
        # the winner.
        pos, total = self._pos, self._total
        current = {name: value + pos * self._weights[name] for name, value in self._from.items()}
        for name in cycle[:pos]:
            current[name] -= total
        return current

    def _reconcile(self, candidates: Sequence[tuple[str, int]]) -> None:
        live = {name: weight for name, weight in candidates if weight > 0}
        if not live:
            raise NoCandidateError("no candidate with a weight above 0")
        current = self._current = self._currents_now()
        for name in [n for n in current if n not in live]:
            del current[name]
        for name in live:
            current.setdefault(name, 0)
        self._weights = live
        self._total = sum(live.values())
        self._last = candidates if type(candidates) is tuple else None
        self._cycle = None
        self._record = [] if self._last is not None and self._total <= MAX_CYCLE else None
        self._from = dict(current)

    def pick(self, candidates: Sequence[tuple[str, int]]) -> str:
        """See :meth:`Picker.pick`."""
        if candidates is not self._last:
            if type(candidates) is tuple and candidates == self._last:
                self._last = candidates  # an equal tuple: nothing changed
            else:
                self._reconcile(candidates)
        cycle = self._cycle
        if cycle is not None:
            pos = self._pos
            self._pos = pos + 1 if pos + 1 < len(cycle) else 0
            return cycle[pos]
        best = self._step(candidates)
        record = self._record
        if record is not None:
            record.append(best)
            if len(record) == self._total:
                if self._current == self._from:  # back where it began: it repeats
                    self._cycle, self._pos, self._record = record, 0, None
                else:  # still settling after a change: try the next rotation
                    self._record, self._from = [], dict(self._current)
        return best

    def rotation(self) -> tuple[Sequence[str], int] | None:
        """See :meth:`Picker.rotation`: the replayed rotation, once there is one."""
        if self._cycle is None or self._last is None:
            return None
        return self._cycle, self._pos

    def replayed(self, position: int) -> None:
        """See :meth:`Picker.replayed`."""
        if self._cycle is not None:
            self._pos = position

    def _step(self, candidates: Sequence[tuple[str, int]]) -> str:
        """One pick by the rule, O(n): the currents move on."""
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
        # Sort keys: whatever ``key`` returns (names themselves without one).
        first_k: Any = None
        after_k: Any = None
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
