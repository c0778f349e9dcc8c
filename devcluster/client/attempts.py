"""Every decision of one balanced call, sans-IO: where each attempt goes, what its
outcome means, when a hedge is due, how much time is left, what the CallInfo says.

A driver (the sync or the asyncio channel) runs a call as a loop over the actions
an :class:`Attempts` returns, and does only the I/O they name::

    attempts = Attempts(balancer, timeout, hedge_after=0.1)
    action = attempts.start()
    # Send(inst, timeout, hedge_in): call inst with that timeout; if it has not
    #     answered after hedge_in s, ask attempts.hedge(inst) for a further Send
    #     (which has a hedge_in of its own: hedge again while nothing answers).
    # Wait(seconds, generation): no instance now; wait for the view to change (or
    #     the seconds), then attempts.resume().
    # Delay(inst, seconds): a fault on inst (devcluster fault): sleep, then
    #     attempts.delayed() for the Send (or the GiveUp the fault or deadline says).
    # GiveUp(error): the call fails with error (None: the last attempt's own).
    # PENDING: another attempt is still in flight; its outcome decides.
    # (failed() may also return a Send while others are in flight: start it too.)
    # An answer:  attempts.succeeded(inst)            -> the call is done
    # A failure:  attempts.failed(inst, code, reached) -> the next action

:class:`Probe` is the same for an ejected instance's health checks. Nothing here
blocks, sleeps or reads a clock other than the one it is given, so it is tested
with plain values and a fake clock (tests/test_client_core.py).
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any, Final, NamedTuple

import grpc

from devcluster.client.balancer import Balancer, Instance
from devcluster.client.calls import BalancedRpcError, CallInfo, header_instance

#: How long a call with no deadline waits for a usable instance before failing.
DEFAULT_WAIT: Final = 10.0

#: When every candidate failed this call and none could be ejected, only a new
#: attempt shows when one is back: pause this long (doubling up to PAUSE_MAX) first.
PAUSE_FIRST: Final = 0.02
PAUSE_MAX: Final = 0.5

#: Probing an ejected instance: first after 0.2 s, then doubling up to 5 s; each
#: health Check gets a short deadline so a hung server costs the prober little.
PROBE_FIRST: Final = 0.2
PROBE_MAX: Final = 5.0
PROBE_TIMEOUT: Final = 0.3

_OK = grpc.StatusCode.OK
_DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED


class Send(NamedTuple):
    """Start an attempt on ``inst`` with ``timeout`` seconds (None: no deadline).

    ``hedge_in``: if the attempt has not answered after that many seconds, call
    :meth:`Attempts.hedge` (None: no hedging for this attempt).
    """

    inst: Instance
    timeout: float | None
    hedge_in: float | None = None


class Wait(NamedTuple):
    """No instance may take the call now: wait up to ``seconds`` for the balancer's
    ``generation`` to move past this one, then call :meth:`Attempts.resume`."""

    seconds: float
    generation: int


class GiveUp(NamedTuple):
    """The call fails: with ``error``, or (None) with the last attempt's own error."""

    error: BalancedRpcError | None


class Delay(NamedTuple):
    """A fault (``devcluster fault``) delays the attempt on ``inst``: sleep ``seconds``,
    then call :meth:`Attempts.delayed` for the next action."""

    inst: Instance
    seconds: float


class _Pending:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PENDING"


#: Another attempt of the call is still in flight: wait for its outcome.
PENDING: Final = _Pending()

Action = Send | Wait | GiveUp | Delay | _Pending

#: ``Send(inst, timeout, None)`` without the Python frame of a NamedTuple's ``__new__``:
#: the common call makes one per call.
_unhedged: Final[Callable[[tuple[Instance, float | None, None]], Send]] = partial(
    tuple.__new__, Send)

#: gRPC status codes by number (a fault stores its abort code as a number).
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class Attempts:
    """The decisions of one call (not thread-safe: one call runs in one place at a time).

    ``replayable`` is False for streaming calls (a request stream cannot be sent
    again): their outcome is booked, but they never go to a second instance.
    ``hedge_after`` (idempotent calls only) sends an attempt unanswered for that
    long to a second instance too; the first answer wins.
    """

    # One of these is made per call, so what most calls never change is a class-level
    # default, set on the instance only when a call needs its own (a failure, a hedge,
    # a fault): the common call answered at once stores six attributes and makes no
    # list or set (bench scenario 20 counts the instructions per call). What it reads
    # is stored, though: Python 3.11 reads a class-level default through its slow,
    # unspecialized attribute lookup.
    _abort = 0
    _replayable = True
    _rand: Callable[[], float] = staticmethod(random.random)
    # Made on first use: the common call succeeds at once and needs neither.
    _exclude: set[str] | None = None
    _stalled: list[Instance] | None = None
    #: Attempts in flight: a list of its own only for a hedged call (the one case with
    #: more than one at a time); for the others the empty tuple, never changed.
    _in_flight: list[Instance] = ()  # type: ignore[assignment]
    _pause = PAUSE_FIRST
    _own_error = False
    #: The failed attempts so far, in order: (instance, code).
    tried: Sequence[tuple[Instance, grpc.StatusCode]] = ()
    #: The instance of the latest attempt (the winner, once the call succeeded).
    inst: Instance | None = None

    def __init__(self, balancer: Balancer, timeout: float | None,
                 hedge_after: float | None = None, replayable: bool = True,
                 default_wait: float = DEFAULT_WAIT,
                 clock: Callable[[], float] = time.monotonic,
                 rand: Callable[[], float] | None = None) -> None:
        self._balancer = balancer
        self._clock = clock
        self.started = now = clock()
        #: When the caller's deadline passes (None: never).
        self.deadline = None if timeout is None else now + timeout
        # A call with no deadline still waits for an instance only so long.
        self._default_wait = default_wait
        if hedge_after is None and replayable and rand is None:
            self._hedge_after: float | None = None  # the usual call: class defaults for the rest
        else:
            self._options(hedge_after, replayable, rand)

    def _options(self, hedge_after: float | None, replayable: bool,
                 rand: Callable[[], float] | None) -> None:
        self._hedge_after = hedge_after if replayable else None
        if hedge_after is not None and replayable:
            self._in_flight = []
        if not replayable:
            self._replayable = False
        if rand is not None:
            #: Draws for faults (tests give a fixed sequence).
            self._rand = rand

    def __repr__(self) -> str:
        tried = ", ".join(f"{i.name} {c.name}" for i, c in self.tried)
        return f"<Attempts in flight={[i.name for i in self._in_flight]} tried=[{tried}]>"

    # -- where the next attempt goes ---------------------------------------------

    def start(self) -> Send | Wait | GiveUp | Delay:
        """The first action: an instance by the policy, or wait for one."""
        inst = self._balancer.pick()
        if inst is None:
            return self._next()
        if inst.record.fault is not None or self._hedge_after is not None:
            return self._send(inst)
        # The common call, in this one frame (bench scenario 20): what _send and
        # _send_now decide for an instance with no fault on it, and no hedging.
        self.inst = inst
        deadline = self.deadline
        if deadline is None:
            return _unhedged((inst, None, None))
        clock = self._clock  # a local: 3.11 cannot specialize ``self._clock()``
        timeout = deadline - clock()
        return _unhedged((inst, timeout, None)) if timeout > 0.0 else self._send_now(inst)

    def resume(self) -> Send | Wait | GiveUp | Delay:
        """The action after a :class:`Wait`: an instance now, or wait again."""
        return self._next()

    def elapsed_ms(self) -> float:
        """Milliseconds since the call started (its latency, once it ended)."""
        clock = self._clock  # a local: 3.11 cannot specialize ``self._clock()``
        return (clock() - self.started) * 1000.0

    def remaining(self) -> float | None:
        """Seconds left of the caller's deadline (None: no deadline; may be <= 0)."""
        return None if self.deadline is None else self.deadline - self._clock()

    def _next(self) -> Send | Wait | GiveUp | Delay:
        balancer = self._balancer
        generation = balancer.generation
        exclude = self._exclude
        if exclude:
            last = self.tried[-1][0].name if self.tried else ""
            inst = balancer.next_after(last, exclude)
        else:
            inst = balancer.pick()
        if inst is not None:
            return self._send(inst)
        end = self.deadline if self.deadline is not None else self.started + self._default_wait
        remaining = end - self._clock()
        if remaining <= 0:
            return self._give_up(balancer.out_of_time(self.tried))
        if exclude and balancer.has_candidates():
            # Every candidate failed this call and none could be ejected: after a
            # short, growing pause the ones tried become eligible again.
            wait = min(remaining, self._pause)
            self._pause = min(self._pause * 2, PAUSE_MAX)
            exclude.clear()
            return Wait(wait, generation)
        return Wait(remaining, generation)

    def _send(self, inst: Instance) -> Send | GiveUp | Delay:
        self.inst = inst
        fault = inst.record.fault
        if fault is None:
            return self._send_now(inst)
        delay, self._abort = fault.decide(self._rand(), self._rand())
        if delay > 0:
            remaining = self.remaining()
            return Delay(inst, delay if remaining is None else max(0.0, min(delay, remaining)))
        if self._abort:
            return self._aborted(inst)
        return self._send_now(inst)

    def delayed(self) -> Send | GiveUp:
        """The action after a :class:`Delay`: the attempt, or the fault's abort, or the
        deadline the delay used up (as gRPC's fault filter: delay first, then abort)."""
        inst = self.inst
        assert inst is not None
        if self._abort:
            return self._aborted(inst)
        remaining = self.remaining()
        if remaining is not None and remaining <= 0:
            return self._give_up(BalancedRpcError(
                _DEADLINE, f"deadline exceeded during the delay injected on {inst.name} "
                           "(devcluster fault)"))
        return self._send_now(inst)

    def _aborted(self, inst: Instance) -> GiveUp:
        code, self._abort = _CODES[self._abort], 0
        return self._give_up(BalancedRpcError(
            code, f"aborted by the fault injected on {inst.name} (devcluster fault)"))

    def _send_now(self, inst: Instance) -> Send | GiveUp:
        deadline = self.deadline
        if deadline is None:
            timeout = None
        else:
            timeout = deadline - self._clock()
            if timeout <= 0:
                # Out of time while failing over: say which instances failed and why.
                return self._give_up(self._balancer.out_of_time(self.tried))
        hedge = self._hedge_after
        if hedge is None:
            return _unhedged((inst, timeout, None))
        self._in_flight.append(inst)
        return Send(inst, timeout, hedge if timeout is None or timeout > hedge else None)

    def _give_up(self, error: BalancedRpcError) -> GiveUp:
        self._own_error = False
        return GiveUp(error)

    # -- what an outcome means -----------------------------------------------------

    def succeeded(self, inst: Instance) -> None:
        """``inst`` answered: the call is done (cancel any other attempt in flight)."""
        self.inst = inst
        if inst.timeouts:
            self._balancer.succeeded(inst)
        if self._hedge_after is None:
            return  # one attempt at a time: nothing in flight, nothing stalled
        if self._stalled:
            # A stalled attempt that lost to its hedge counts as the deadline it
            # would have hit: it shows in CallInfo.retried.
            self.tried = [*self.tried, *((i, _DEADLINE) for i in self._stalled
                                         if i is not inst and i in self._in_flight)]
        if self._in_flight:
            self._in_flight.clear()

    def answered(self, inst: Instance,
                 count_ok: Callable[[tuple[str, float]], None] | None) -> None:
        """The first attempt, on ``inst``, answered: :meth:`succeeded`, and counted by
        ``count_ok`` (the channel's statistics, if any) with the latency in ms, in one
        Python frame (the common call's end; bench scenario 20 counts it)."""
        if inst.timeouts or self._hedge_after is not None:
            self.succeeded(inst)
        else:
            self.inst = inst
        if count_ok is not None:
            clock = self._clock  # a local: 3.11 cannot specialize ``self._clock()``
            count_ok((inst.name, (clock() - self.started) * 1000.0))

    def failed(self, inst: Instance, code: grpc.StatusCode, reached: bool, *,
               cancelled: bool = False) -> Action:
        """An attempt on ``inst`` failed with ``code``; the call's next action.

        ``reached``: the server sent its response header, so its application saw
        the call (repeated only for ``retry_on`` codes). ``cancelled``: the caller
        cancelled the call, which books nothing and ends it.
        """
        in_flight = self._in_flight
        if inst in in_flight:
            in_flight.remove(inst)
        if cancelled:
            self.inst, self._own_error = inst, False
            return GiveUp(None)
        retry = self._balancer.failed(inst, code, reached)
        self.tried = [*self.tried, (inst, code)]
        if self._exclude is None:
            self._exclude = set()
        self._exclude.add(inst.name)
        if in_flight:
            return self._while_others_run(inst, retry)
        self.inst = inst
        if retry and self._replayable:
            other = self._balancer.next_after(inst.name, self._exclude)
            if other is not None:
                return self._send(other)
            if not reached:
                return self._next()  # nobody saw the call: wait for an instance
        self._own_error = True
        return GiveUp(None)

    def ended(self, inst: Instance, code: grpc.StatusCode, reached: bool,
              cancelled: bool = False) -> None:
        """A streaming call on ``inst`` ended with ``code``: book it (no retry)."""
        if code is _OK:
            self.succeeded(inst)
        else:
            self.failed(inst, code, reached, cancelled=cancelled)

    def _while_others_run(self, inst: Instance, retry: bool) -> Send | _Pending:
        """An attempt failed while others are in flight: fail over now if every one of
        them already went unanswered past the hedge delay (a partitioned peer hangs
        instead of failing, so waiting for it would spend the whole deadline);
        otherwise the ones in flight decide."""
        stalled = self._stalled or ()
        if retry and self._replayable and all(i in stalled for i in self._in_flight):
            other = self._spare(inst.name)
            if other is not None:
                send = self._send(other)
                if type(send) is Send:
                    return send
        return PENDING

    def _spare(self, after: str) -> Instance | None:
        """The next instance after ``after`` in name order neither in flight nor failed."""
        busy = {i.name for i in self._in_flight}.union(self._exclude or ())
        return self._balancer.next_after(after, busy)

    def hedge(self, inst: Instance) -> Send | None:
        """``inst`` has not answered for ``hedge_in``: a further attempt, or None.

        The silence counts as a timeout toward ejecting ``inst`` (once per call);
        the new attempt goes to the next instance in name order not yet in this
        call, and carries its own ``hedge_in``: while every attempt so far hangs
        (a network partition), the call keeps hedging to further instances.
        """
        if inst not in self._in_flight:
            return None
        if self._stalled is None:
            self._stalled = []
        if inst not in self._stalled:
            self._balancer.stalled(inst)
            self._stalled.append(inst)
        other = self._spare(inst.name)
        if other is None:
            return None
        timeout = self.remaining()
        if timeout is not None and timeout <= 0:
            return None
        self._in_flight.append(other)
        hedge = self._hedge_after
        late = hedge is not None and timeout is not None and timeout <= hedge
        return Send(other, timeout, None if late else hedge)

    # -- what the caller is told --------------------------------------------------------

    def info(self, code: grpc.StatusCode, details: str = "", metadata: Any = None,
             response: Any = None) -> CallInfo:
        """The CallInfo of the finished call (``metadata``: the deciding attempt's header)."""
        inst = self.inst
        tried = self.tried[:-1] if self._own_error else self.tried
        ok = code is _OK
        return CallInfo(
            seq=next(self._balancer.seq),
            instance=header_instance(metadata) or (inst.name if inst is not None else "-"),
            address=inst.address if inst is not None else "",
            ok=ok,
            code=code.name,
            latency_ms=(self._clock() - self.started) * 1000,
            retried=[(i.name, c.name) for i, c in tried],
            message="" if ok else (details or ""),
            response=response,
        )


class CallOptions:
    """What every unary call of one channel shares, for :func:`begin`: its
    ``hedge_after`` and ``default_wait`` (a channel makes a new one when they change)."""

    __slots__ = ("default_wait", "hedge_after")

    def __init__(self, hedge_after: float | None, default_wait: float = DEFAULT_WAIT) -> None:
        self.hedge_after = hedge_after
        self.default_wait = default_wait


def begin(balancer: Balancer, options: CallOptions,
          timeout: float | None) -> tuple[Attempts, Send | Wait | GiveUp | Delay]:
    """A new unary call's Attempts and its first action: ``Attempts(balancer, timeout,
    options.hedge_after, default_wait=options.default_wait)`` then :meth:`~Attempts.start`,
    in one Python frame instead of two.

    The drivers' per-call path (bench scenario 20 counts its instructions): a plain
    function, so that the driver's call of it is inlined by the interpreter (a call made
    from C, as through a partial or a class's ``__init__``, starts a new eval loop).
    """
    call = _new_attempts(Attempts)  # no __init__ frame; what it would store is stored here
    call._balancer = balancer
    call._clock = clock = time.monotonic
    call.started = now = clock()
    call.deadline = None if timeout is None else now + timeout
    call._default_wait = options.default_wait
    call._hedge_after = hedge_after = options.hedge_after
    if hedge_after is not None:
        call._in_flight = []
    inst = balancer.pick()
    if inst is None:
        return call, call._next()
    if inst.record.fault is not None or hedge_after is not None:
        return call, call._send(inst)
    # Attempts.start's common call: no fault, no hedging; the deadline was set just now.
    call.inst = inst
    if timeout is None:
        return call, _unhedged((inst, None, None))
    return call, _unhedged((inst, timeout, None)) if timeout > 0.0 else call._send_now(inst)


#: ``_new_attempts(Attempts)``: the bare object, for :func:`begin`.
_new_attempts = object.__new__


def probe_verdict(code: grpc.StatusCode, serving: bool = False) -> bool:
    """True when a health Check that ended with ``code`` shows the server is back.

    Any answer from the server counts (UNIMPLEMENTED: it just has no health
    service), except an explicit NOT_SERVING (``serving`` False on OK).

    >>> probe_verdict(grpc.StatusCode.UNIMPLEMENTED), probe_verdict(grpc.StatusCode.UNAVAILABLE)
    (True, False)
    """
    if code is _OK:
        return serving
    return code not in (grpc.StatusCode.UNAVAILABLE, _DEADLINE, grpc.StatusCode.CANCELLED)


class Probe:
    """When to health-check an ejected instance, and what an answer means.

    The driver loops: ``delay()`` (None: stop), sleep that long, ``wanted()``
    (False: stop), one health Check, ``answered(code, serving)``.
    """

    __slots__ = ("_balancer", "_done", "_interval", "inst")

    #: The deadline of one health Check.
    timeout: Final = PROBE_TIMEOUT

    def __init__(self, balancer: Balancer, inst: Instance) -> None:
        self._balancer = balancer
        self.inst = inst
        self._interval = PROBE_FIRST
        self._done = False

    def wanted(self) -> bool:
        """False once the instance is back or the registry no longer lists it."""
        return not (self._done or self.inst.retired or self.inst.ejected is None)

    def delay(self) -> float | None:
        """Seconds until the next check, or None when probing should stop."""
        return self._interval if self.wanted() else None

    def answered(self, code: grpc.StatusCode, serving: bool = False) -> bool:
        """Book one check's outcome; True (and the instance readmitted) when it is back."""
        if probe_verdict(code, serving):
            self._done = True
            self._balancer.readmit(self.inst)
            return True
        self._interval = min(self._interval * 2, PROBE_MAX)
        return False
