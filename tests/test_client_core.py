"""The sans-IO core of the balancing client, with plain values and a fake clock.

No server, no thread, no event loop: a Balancer over hand-made snapshots whose
sub-channels are strings, and Attempts driven by hand the way the drivers drive
them. Every decision both channels make is checked here once.
"""

from __future__ import annotations

import grpc
import pytest

from devcluster.client.attempts import (
    PAUSE_FIRST,
    PENDING,
    PROBE_FIRST,
    PROBE_MAX,
    Attempts,
    CallOptions,
    Delay,
    GiveUp,
    Probe,
    Send,
    Wait,
    begin,
)
from devcluster.client.balancer import Balancer, Effects, Instance
from devcluster.client.calls import NoUsableInstanceError
from devcluster.client.picker import POLICIES, SmoothWRR, make_picker
from devcluster.registry.record import Record, Snapshot, State

UNAVAILABLE = grpc.StatusCode.UNAVAILABLE
DEADLINE = grpc.StatusCode.DEADLINE_EXCEEDED
OK = grpc.StatusCode.OK


class Clock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Recorder:
    """The driver side of the balancer: remembers what it was asked to do."""

    def __init__(self) -> None:
        self.opened: list[str] = []
        self.closed: list[str] = []
        self.probed: list[str] = []
        self.changes = 0

    def effects(self) -> Effects:
        def open_channel(address: str) -> str:
            self.opened.append(address)
            return f"channel:{address}"

        return Effects(open_channel, self.closed.append,
                       lambda inst: self.probed.append(inst.name), self._changed)

    def _changed(self) -> None:
        self.changes += 1


def record(name: str, **fields: object) -> Record:
    base = Record(name, "server", f"10.0.0.{name[-1]}:1", weight=1, enabled=True,
                  state=State.SERVING, pid=int(name[-1]), started_at=1.0)
    return base.with_(**fields) if fields else base


def snapshot(revision: int, *records: Record) -> Snapshot:
    return Snapshot(revision, {r.name: r for r in records})


@pytest.fixture
def recorder() -> Recorder:
    return Recorder()


def balancer(recorder: Recorder, *records: Record, **options: object) -> Balancer:
    b = Balancer("server", SmoothWRR(), recorder.effects(), **options)  # type: ignore[arg-type]
    b.apply(snapshot(1, *(records or (record("s1"), record("s2"), record("s3")))))
    return b


def by_name(b: Balancer, name: str) -> Instance:
    return next(i for i in b.instances() if i.name == name)


# -- the registry view ----------------------------------------------------------------


def test_a_snapshot_opens_one_sub_channel_per_process_and_a_restart_a_fresh_one(
        recorder: Recorder) -> None:
    b = balancer(recorder)
    assert recorder.opened == ["10.0.0.1:1", "10.0.0.2:1", "10.0.0.3:1"]
    s2 = by_name(b, "s2")
    b.apply(snapshot(2, record("s1"), record("s2", pid=99), record("s3", weight=0)))
    assert recorder.opened[-1] == "10.0.0.2:1" and recorder.closed == ["channel:10.0.0.2:1"]
    assert s2.retired and by_name(b, "s2") is not s2
    assert b.weights() == {"s1": 1, "s2": 1}
    b.apply(snapshot(3, record("s1")))
    assert sorted(recorder.closed)[-2:] == ["channel:10.0.0.2:1", "channel:10.0.0.3:1"]


def test_picks_follow_the_policy_over_usable_instances(recorder: Recorder) -> None:
    b = balancer(recorder, record("s1", weight=5), record("s2"), record("s3"),
                 record("s4", enabled=False))
    assert "".join(b.pick().name[-1] for _ in range(7)) == "1121311"  # type: ignore[union-attr]
    b.apply(snapshot(2))
    assert b.pick() is None and not b.has_candidates()


def test_the_balancer_replays_the_rotation_exactly_as_the_picker_would(
        recorder: Recorder) -> None:
    # The balancer replays a weighted picker's rotation itself (no picker call per
    # pick); across registry changes and ejections the picks stay the picker's own.
    b = balancer(recorder, record("s1", weight=5), record("s2", weight=2), record("s3"))
    alone = SmoothWRR()
    got, want = [], []

    def both(n: int) -> None:
        for _ in range(n):
            got.append(b.pick().name)  # type: ignore[union-attr]
            want.append(alone.pick(b._candidates))

    both(23)
    assert b._ring_pick is not None  # replaying by now
    b.apply(snapshot(2, record("s1", weight=5), record("s2", weight=3), record("s3")))
    both(17)
    b.eject(by_name(b, "s2"), "test")
    both(9)
    b.readmit(by_name(b, "s2"))
    both(31)
    assert got == want
    # A change hands the picker back where the replay stands.
    b.apply(snapshot(3, record("s1", weight=5), record("s2", weight=3), record("s3")))
    assert b._ring_pick is None
    assert alone.currents == b._picker.currents  # type: ignore[attr-defined]


def test_picks_from_many_threads_keep_the_exact_shares(recorder: Recorder) -> None:
    # A replayed rotation is picked without the lock (one C call): threads still share it.
    import threading
    from collections import Counter

    b = balancer(recorder, record("s1", weight=5), record("s2", weight=2), record("s3"))
    seen: Counter[str] = Counter()

    def picker() -> None:
        mine = Counter(b.pick().name for _ in range(800))  # type: ignore[union-attr]
        with b.lock:
            seen.update(mine)

    threads = [threading.Thread(target=picker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == {"s1": 2000, "s2": 800, "s3": 400}


def test_an_unreachable_failure_ejects_and_probes_but_never_the_last_one(
        recorder: Recorder) -> None:
    b = balancer(recorder, record("s1"), record("s2"))
    s1, s2 = by_name(b, "s1"), by_name(b, "s2")
    assert b.failed(s1, UNAVAILABLE, reached=False) is True
    assert s1.ejected == "unreachable" and recorder.probed == ["s1"]
    assert b.failed(s2, UNAVAILABLE, reached=False) is True
    assert s2.ejected is None  # the last candidate stays
    b.readmit(s1)
    assert s1.ejected is None and b.weights() == {"s1": 1, "s2": 1}


def test_timeouts_in_a_row_eject_and_an_answer_ends_the_streak(recorder: Recorder) -> None:
    b = balancer(recorder, eject_after=2)
    s2 = by_name(b, "s2")
    assert b.failed(s2, DEADLINE, reached=True) is False
    b.succeeded(s2)
    b.failed(s2, DEADLINE, reached=True)
    assert s2.ejected is None
    b.stalled(s2)
    assert s2.ejected == "hung (2 calls in a row unanswered)"


def test_the_registry_saying_down_and_up_again_beats_an_ejection(recorder: Recorder) -> None:
    b = balancer(recorder)
    s3 = by_name(b, "s3")
    b.eject(s3, "unreachable")
    b.apply(snapshot(2, record("s1"), record("s2"), record("s3", state=State.DRAINING)))
    assert s3.ejected is None  # the registry's own word: it is draining
    assert b.weights() == {"s1": 1, "s2": 1}


def test_why_unusable_names_each_instance(recorder: Recorder) -> None:
    b = balancer(recorder, record("s1", state=State.KILLED), record("s2", enabled=False),
                 record("s3", weight=0))
    assert b.why_unusable() == ("no usable instance of service 'server': s1 killed, "
                                "s2 disabled, s3 weight 0")
    empty = Balancer(None, SmoothWRR(), recorder.effects())
    assert empty.why_unusable().endswith("any service: the registry lists none")


# -- one call -------------------------------------------------------------------------


def test_a_call_goes_where_the_picker_says_with_the_time_left(recorder: Recorder) -> None:
    clock = Clock()
    b = balancer(recorder)
    call = Attempts(b, 2.0, clock=clock)
    clock.advance(0.5)
    send = call.start()
    assert send == Send(by_name(b, "s1"), 1.5)
    assert call.remaining() == 1.5
    call.succeeded(send.inst)
    clock.advance(0.01)
    info = call.info(OK, metadata=(("devcluster-instance", "server1"),), response="hi")
    assert (info.instance, info.address, info.ok, info.code, info.retried) == (
        "server1", "10.0.0.1:1", True, "OK", [])
    assert info.latency_ms == pytest.approx(510) and info.response == "hi" and info.seq == 1


def test_begin_is_a_new_attempts_and_its_start_in_one_step(recorder: Recorder) -> None:
    # The drivers' per-call path: the same first action as Attempts(...).start().
    b = balancer(recorder)
    call, send = begin(b, CallOptions(None), 2.0)
    assert send == Send(by_name(b, "s1"), 2.0) and call.inst is send.inst
    assert call.remaining() == pytest.approx(2.0, abs=0.5) and not call.tried
    assert begin(b, CallOptions(None), None)[1] == Send(by_name(b, "s2"), None)
    assert type(begin(b, CallOptions(None), 0.0)[1]) is GiveUp  # s3, but no time at all
    hedged, first = begin(b, CallOptions(0.1), 1.0)
    assert type(first) is Send and first.inst.name == "s1" and first.hedge_in == 0.1
    second = hedged.hedge(first.inst)
    assert second is not None and second.inst.name == "s2"
    counted: list[tuple[str, float]] = []
    hedged.answered(second.inst, counted.append)  # books the win over the hedged one
    assert hedged.info(OK).retried == [("s1", "DEADLINE_EXCEEDED")]
    assert counted and counted[0][0] == "s2" and counted[0][1] >= 0.0
    empty = balancer(recorder, record("s1", state=State.STOPPED))
    waiting, wait = begin(empty, CallOptions(None), 1.0)
    assert type(wait) is Wait and waiting.inst is None


def test_unreached_failures_fail_over_in_name_order(recorder: Recorder) -> None:
    clock = Clock()
    b = balancer(recorder)
    call = Attempts(b, 1.0, clock=clock)
    s1 = call.start().inst  # type: ignore[union-attr]
    nxt = call.failed(s1, UNAVAILABLE, reached=False)
    assert isinstance(nxt, Send) and nxt.inst.name == "s2"
    call.succeeded(nxt.inst)
    info = call.info(OK)
    assert info.instance == "s2" and info.retried == [("s1", "UNAVAILABLE")]


def test_a_failure_the_server_saw_is_final_unless_retry_on(recorder: Recorder) -> None:
    b = balancer(recorder)
    call = Attempts(b, 1.0, clock=Clock())
    s1 = call.start().inst  # type: ignore[union-attr]
    assert call.failed(s1, UNAVAILABLE, reached=True) == GiveUp(None)
    info = call.info(UNAVAILABLE, "boom")
    assert (info.instance, info.ok, info.message, info.retried) == ("s1", False, "boom", [])

    b = balancer(Recorder(), retry_on={UNAVAILABLE})
    call = Attempts(b, 1.0, clock=Clock())
    action = call.start()
    tried = []
    while isinstance(action, Send):  # each instance once, then the last error stands
        tried.append(action.inst.name)
        action = call.failed(action.inst, UNAVAILABLE, reached=True)
    assert tried == ["s1", "s2", "s3"] and action == GiveUp(None)
    assert call.info(UNAVAILABLE).retried == [("s1", "UNAVAILABLE"), ("s2", "UNAVAILABLE")]


def test_streams_are_booked_but_never_replayed(recorder: Recorder) -> None:
    b = balancer(recorder)
    call = Attempts(b, None, replayable=False, hedge_after=0.1, clock=Clock())
    send = call.start()
    assert isinstance(send, Send) and send.hedge_in is None and send.timeout is None
    call.ended(send.inst, UNAVAILABLE, reached=False)
    assert send.inst.ejected == "unreachable"
    assert call.info(UNAVAILABLE).retried == []


def test_a_cancelled_attempt_books_nothing(recorder: Recorder) -> None:
    b = balancer(recorder)
    call = Attempts(b, 1.0, clock=Clock())
    s1 = call.start().inst  # type: ignore[union-attr]
    assert call.failed(s1, grpc.StatusCode.CANCELLED, reached=False, cancelled=True) == \
        GiveUp(None)
    assert s1.ejected is None


def test_no_instance_means_wait_then_a_clear_error_at_the_deadline(recorder: Recorder) -> None:
    clock = Clock()
    b = balancer(recorder, record("s1", state=State.STARTING))
    call = Attempts(b, 0.3, clock=clock)
    wait = call.start()
    assert wait == Wait(pytest.approx(0.3), b.generation)
    b.apply(snapshot(2, record("s1")))
    assert isinstance(call.resume(), Send)  # the view changed: an instance now

    b = balancer(Recorder(), record("s1", enabled=False))
    call = Attempts(b, None, default_wait=0.5, clock=clock)
    assert call.start() == Wait(0.5, b.generation)  # no deadline: default_wait
    clock.advance(0.5)
    give_up = call.resume()
    assert isinstance(give_up, GiveUp) and isinstance(give_up.error, NoUsableInstanceError)
    assert give_up.error.details() == "no usable instance of service 'server': s1 disabled"
    info = call.info(give_up.error.code(), give_up.error.details())
    assert (info.instance, info.address, info.code) == ("-", "", "UNAVAILABLE")


def test_when_every_instance_failed_the_call_pauses_then_tries_them_again(
        recorder: Recorder) -> None:
    clock = Clock()
    b = balancer(recorder, record("s1"))
    call = Attempts(b, 1.0, clock=clock)
    s1 = call.start().inst  # type: ignore[union-attr]
    wait = call.failed(s1, UNAVAILABLE, reached=False)  # the last one: not ejected
    assert wait == Wait(PAUSE_FIRST, b.generation)
    clock.advance(PAUSE_FIRST)
    again = call.resume()
    assert isinstance(again, Send) and again.inst is s1
    assert call.failed(s1, UNAVAILABLE, reached=False) == Wait(2 * PAUSE_FIRST, b.generation)


def test_out_of_time_while_failing_over_names_what_failed(recorder: Recorder) -> None:
    clock = Clock()
    b = balancer(recorder, retry_on={UNAVAILABLE})
    call = Attempts(b, 1.0, clock=clock)
    s1 = call.start().inst  # type: ignore[union-attr]
    clock.advance(1.0)
    give_up = call.failed(s1, UNAVAILABLE, reached=True)
    assert isinstance(give_up, GiveUp) and give_up.error is not None
    assert "s1 failed this call (UNAVAILABLE)" in give_up.error.details()
    assert call.info(UNAVAILABLE).retried == [("s1", "UNAVAILABLE")]


# -- hedging --------------------------------------------------------------------------


def test_a_hedge_goes_to_the_next_instance_and_the_first_answer_wins(
        recorder: Recorder) -> None:
    clock = Clock()
    b = balancer(recorder, eject_after=1)
    call = Attempts(b, 1.0, hedge_after=0.1, clock=clock)
    first = call.start()
    assert isinstance(first, Send) and first.hedge_in == 0.1
    clock.advance(0.1)
    second = call.hedge(first.inst)
    assert second == Send(by_name(b, "s2"), pytest.approx(0.9), 0.1)
    assert first.inst.ejected == "hung (1 calls in a row unanswered)"
    call.succeeded(second.inst)  # type: ignore[union-attr]
    info = call.info(OK)
    assert info.instance == "s2" and info.retried == [("s1", "DEADLINE_EXCEEDED")]


def test_a_hedge_that_fails_waits_for_the_original(recorder: Recorder) -> None:
    b = balancer(recorder)
    call = Attempts(b, 1.0, hedge_after=0.1, clock=Clock())
    first = call.start()
    second = call.hedge(first.inst)  # type: ignore[union-attr]
    assert second is not None
    assert call.failed(second.inst, UNAVAILABLE, reached=True) is PENDING
    call.succeeded(first.inst)  # type: ignore[union-attr]
    assert call.info(OK).retried == [("s2", "UNAVAILABLE")]


def test_hedging_goes_on_while_every_attempt_hangs(recorder: Recorder) -> None:
    # A partitioned peer drops packets: its attempts neither answer nor fail. Two of
    # them in a row must not sink the call while a third instance answers.
    clock = Clock()
    b = balancer(recorder, eject_after=1)
    call = Attempts(b, 1.0, hedge_after=0.1, clock=clock)
    first = call.start()
    assert isinstance(first, Send) and first.inst.name == "s1"
    clock.advance(0.1)
    second = call.hedge(first.inst)
    assert second is not None and second.inst.name == "s2" and second.hedge_in == 0.1
    clock.advance(0.1)
    third = call.hedge(second.inst)
    assert third == Send(by_name(b, "s3"), pytest.approx(0.8), 0.1)
    assert call.hedge(third.inst) is None  # no one else is left
    call.succeeded(third.inst)
    info = call.info(OK)
    assert info.ok and info.instance == "s3"
    assert info.retried == [("s1", "DEADLINE_EXCEEDED"), ("s2", "DEADLINE_EXCEEDED")]


def test_an_attempt_failing_while_the_others_hang_fails_over_at_once(
        recorder: Recorder) -> None:
    clock = Clock()
    b = balancer(recorder)
    call = Attempts(b, 1.0, hedge_after=0.1, clock=clock)
    first = call.start()
    clock.advance(0.1)
    second = call.hedge(first.inst)  # type: ignore[union-attr]
    assert second is not None and second.inst.name == "s2"
    # s2 is unreachable (no answer header): with s1 hanging past its hedge delay,
    # waiting for s1 would spend the deadline; s3 gets the call now.
    retry = call.failed(second.inst, UNAVAILABLE, reached=False)
    assert retry == Send(by_name(b, "s3"), pytest.approx(0.9), 0.1)
    call.succeeded(by_name(b, "s3"))
    assert call.info(OK).retried == [("s2", "UNAVAILABLE"), ("s1", "DEADLINE_EXCEEDED")]


def test_a_hung_attempt_counts_once_toward_ejection(recorder: Recorder) -> None:
    b = balancer(recorder, record("s1"), record("s2"), eject_after=2)
    call = Attempts(b, 1.0, hedge_after=0.1, clock=Clock())
    first = call.start()
    assert call.hedge(first.inst) is not None  # type: ignore[union-attr]
    assert call.hedge(first.inst) is None  # type: ignore[union-attr]  # s2 is busy
    assert first.inst.timeouts == 1 and first.inst.ejected is None  # type: ignore[union-attr]


def test_no_hedge_when_the_deadline_is_shorter_or_no_one_else_is_there(
        recorder: Recorder) -> None:
    b = balancer(recorder)
    assert Attempts(b, 0.05, hedge_after=0.1, clock=Clock()).start().hedge_in is None  # type: ignore[union-attr]
    b = balancer(Recorder(), record("s1"))
    call = Attempts(b, 1.0, hedge_after=0.1, clock=Clock())
    first = call.start()
    assert call.hedge(first.inst) is None  # type: ignore[union-attr]


# -- probes ---------------------------------------------------------------------------


def test_a_probe_backs_off_and_readmits_on_any_answer(recorder: Recorder) -> None:
    b = balancer(recorder)
    s2 = by_name(b, "s2")
    b.eject(s2, "unreachable")
    probe = Probe(b, s2)
    delays = []
    for _ in range(7):
        delays.append(probe.delay())
        assert probe.answered(UNAVAILABLE) is False
    assert delays[:3] == [PROBE_FIRST, 2 * PROBE_FIRST, 4 * PROBE_FIRST]
    assert delays[-1] == PROBE_MAX
    assert probe.answered(OK, serving=False) is False  # NOT_SERVING
    assert probe.answered(grpc.StatusCode.UNIMPLEMENTED) is True  # no health service
    assert s2.ejected is None and probe.delay() is None and not probe.wanted()


def test_a_probe_stops_when_the_registry_retires_the_process(recorder: Recorder) -> None:
    b = balancer(recorder)
    s2 = by_name(b, "s2")
    b.eject(s2, "unreachable")
    probe = Probe(b, s2)
    b.apply(snapshot(2, record("s1"), record("s3")))
    assert probe.delay() is None


# -- the policy table -----------------------------------------------------------------


def test_every_policy_is_one_table_entry_with_a_summary() -> None:
    for name, cls in POLICIES.items():
        assert type(make_picker(name)) is cls and cls.summary


# -- faults (devcluster fault): the core decides, the driver only sleeps --------------------

def draws(*values: float):
    it = iter(values)
    return lambda: next(it)


def test_a_fault_aborts_only_the_calls_of_its_instance(recorder: Recorder) -> None:
    from devcluster.registry.faults import Fault

    b = balancer(recorder, record("s1", fault=Fault(abort_code=7, abort_percent=50)),
                 record("s2"))
    hit = Attempts(b, 1.0, rand=draws(0.9, 0.2))  # s1 first (by name): no delay, aborted
    action = hit.start()
    assert type(action) is GiveUp and action.error is not None
    assert action.error.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "s1" in action.error.details() and hit.info(action.error.code()).instance == "s1"
    assert not b.instances()[0].ejected  # an injected abort says nothing of the instance
    assert type(Attempts(b, 1.0, rand=draws()).start()) is Send  # s2: no fault, no draw
    spared = Attempts(b, 1.0, rand=draws(0.9, 0.7))  # s1 again, the 50 % spares it
    assert spared.start().inst.name == "s1"


def test_a_fault_delays_then_aborts_within_the_deadline(recorder: Recorder) -> None:
    from devcluster.registry.faults import Fault

    clock = Clock()
    fault = Fault(delay_s=0.3, delay_percent=100, abort_code=14, abort_percent=100)
    b = balancer(recorder, record("s1", fault=fault))
    call = Attempts(b, 1.0, clock=clock, rand=draws(0.0, 0.0))
    assert call.start() == Delay(by_name(b, "s1"), 0.3)
    clock.advance(0.3)
    after = call.delayed()
    assert type(after) is GiveUp and after.error.code() is UNAVAILABLE
    # A delay longer than the deadline: the call waits out its deadline, then fails so.
    b = balancer(recorder, record("s1", fault=Fault(delay_s=5, delay_percent=100)))
    call = Attempts(b, 0.5, clock=clock, rand=draws(0.0, 0.5))
    assert call.start() == Delay(by_name(b, "s1"), 0.5)
    clock.advance(0.5)
    late = call.delayed()
    assert type(late) is GiveUp and late.error.code() is DEADLINE
    # Delayed, not aborted: the attempt goes out with what is left of the deadline.
    call = Attempts(b, 10.0, clock=clock, rand=draws(0.0, 0.5))
    assert type(call.start()) is Delay
    clock.advance(5)
    sent = call.delayed()
    assert type(sent) is Send and sent.timeout == pytest.approx(5.0)
