"""The pure pickers: exact weighted shares, smoothness, changing candidates."""

from __future__ import annotations

import itertools
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devcluster.client.picker import (
    NoCandidateError,
    PickFirst,
    RoundRobin,
    SmoothWRR,
    make_picker,
)
from devcluster.errors import UsageError

NAMES = [f"server{i}" for i in range(1, 7)]

weights_st = st.dictionaries(st.sampled_from(NAMES), st.integers(1, 20), min_size=1, max_size=6)


def picks(picker: SmoothWRR | RoundRobin | PickFirst, candidates: dict[str, int],
          n: int) -> list[str]:
    cands = tuple(sorted(candidates.items()))
    return [picker.pick(cands) for _ in range(n)]


def longest_run(seq: list[str], name: str) -> int:
    return max((len(list(g)) for k, g in itertools.groupby(seq) if k == name), default=0)


@given(weights_st, st.integers(1, 4))
def test_every_full_cycle_gives_each_name_exactly_its_weight(weights: dict[str, int],
                                                              cycles: int) -> None:
    picker = SmoothWRR()
    total = sum(weights.values())
    seq = picks(picker, weights, total * cycles)
    for c in range(cycles):
        assert Counter(seq[c * total:(c + 1) * total]) == weights
    # ... and the state is back where it started, so the sequence repeats.
    assert set(picker.currents.values()) == {0}


@given(weights_st, st.integers(0, 40))
def test_any_window_of_one_cycle_is_exact(weights: dict[str, int], offset: int) -> None:
    # The sequence is periodic with period sum(weights): any window of that
    # length, not only aligned cycles, holds each name exactly weight times.
    total = sum(weights.values())
    seq = picks(SmoothWRR(), weights, offset + total)
    assert Counter(seq[offset:]) == weights


@given(weights_st)
def test_no_name_ever_gets_ahead_of_its_share_by_a_whole_pick(weights: dict[str, int]) -> None:
    # Smoothness, proven bound: after k picks, count(name) - k*w/W equals
    # -current/W, and a current never drops below -W*(n-1)/n (the winner had at
    # least the mean W/n before losing W). So every prefix keeps each name less
    # than one pick ahead of its exact share: no bursts.
    picker = SmoothWRR()
    total = sum(weights.values())
    counts: Counter[str] = Counter()
    cands = tuple(sorted(weights.items()))
    for k in range(1, 3 * total + 1):
        counts[picker.pick(cands)] += 1
        for name, weight in weights.items():
            assert counts[name] - k * weight / total < 1


def test_five_one_one_is_spread_and_never_five_in_a_row() -> None:
    # Traced by hand (currents before the pick, +weights, winner -7):
    #   a a b a c a a | a a b a c a a ...  -> the longest run of a is 4, across
    # the cycle boundary (2 at the end + 2 at the start); a plain WRR that lists
    # a five times would send 5 in a row.
    seq = picks(SmoothWRR(), {"a": 5, "b": 1, "c": 1}, 70)
    assert seq[:7] == list("aabacaa")
    assert longest_run(seq, "a") == 4
    assert longest_run(seq, "b") == longest_run(seq, "c") == 1


@given(weights_st, st.sampled_from(NAMES))
def test_weight_zero_is_never_picked(weights: dict[str, int], zero: str) -> None:
    candidates = {**weights, zero: 0}
    if not any(candidates.values()):
        return
    assert zero not in picks(SmoothWRR(), candidates, 50)
    assert zero not in picks(RoundRobin(), candidates, 50)
    assert PickFirst().pick(tuple(candidates.items())) != zero


def test_only_zero_weights_is_an_error() -> None:
    for picker in (SmoothWRR(), RoundRobin(), PickFirst()):
        with pytest.raises(NoCandidateError):
            picker.pick((("server1", 0),))
        with pytest.raises(NoCandidateError):
            picker.pick(())


@settings(max_examples=200)
@given(weights_st, weights_st, st.integers(0, 30))
def test_changes_mid_cycle(before: dict[str, int], after: dict[str, int], at: int) -> None:
    picker = SmoothWRR()
    picks(picker, before, at)
    kept = {n: c for n, c in picker.currents.items() if n in after}
    picker.pick(tuple(sorted(after.items())))
    currents = picker.currents
    # Names that stay keep their current weight (plus this pick's step); departed
    # names are forgotten; new names start from 0.
    assert set(currents) == set(after)
    total = sum(after.values())
    winner_drop = {n: c + after[n] - currents[n] for n, c in kept.items()}
    assert all(d in (0, total) for d in winner_drop.values())
    # From then on only the new names are picked, and the shares converge. Each
    # pick adds W in total and takes W off, so the mean current m never moves;
    # departed names leave it off 0, which changes nothing (only differences
    # matter). After N picks count - N*w/W = (start - end)/W exactly, and the
    # currents stay within 2W of m, so the error stays bounded as N grows.
    start = picker.currents
    mean = sum(start.values()) / len(start)
    n = 20 * total
    seq = picks(picker, after, n)
    assert set(seq) <= set(after)
    end = picker.currents
    assert all(abs(c - mean) <= 2 * total for c in end.values())
    counts = Counter(seq)
    for name, weight in after.items():
        assert counts[name] - n * weight / total == pytest.approx((start[name] - end[name]) / total)
        assert abs(counts[name] - n * weight / total) <= (abs(start[name] - mean) + 2 * total) / total


def test_a_removed_name_comes_back_fresh() -> None:
    picker = SmoothWRR()
    picks(picker, {"a": 1, "b": 1, "c": 1}, 2)
    picks(picker, {"a": 1, "c": 1}, 1)
    assert "b" not in picker.currents
    assert picks(picker, {"a": 1, "b": 1, "c": 1}, 3).count("b") == 1


def test_ties_go_to_the_smaller_name_whatever_the_order() -> None:
    assert SmoothWRR().pick((("b", 1), ("a", 1))) == "a"
    assert SmoothWRR().pick([("b", 1), ("a", 1)]) == "a"


def test_a_mutated_list_is_reconciled() -> None:
    picker = SmoothWRR()
    cands = [("a", 1)]
    assert picker.pick(cands) == "a"
    cands.append(("b", 5))
    assert Counter(picker.pick(cands) for _ in range(6)) == {"a": 1, "b": 5}


@given(weights_st, st.integers(1, 30))
def test_round_robin_ignores_weights(weights: dict[str, int], rounds: int) -> None:
    n = len(weights)
    seq = picks(RoundRobin(), weights, n * rounds)
    assert Counter(seq) == {name: rounds for name in weights}
    assert seq[:n] == sorted(weights)


def test_round_robin_continues_after_the_last_name_when_candidates_change() -> None:
    picker = RoundRobin()
    assert picks(picker, {"a": 1, "b": 1, "c": 1}, 2) == ["a", "b"]
    # b left: the rotation goes on after b, to c, not back to a.
    assert picks(picker, {"a": 1, "c": 1}, 3) == ["c", "a", "c"]
    assert picks(picker, {"a": 1, "b": 1, "c": 1, "d": 1}, 2) == ["d", "a"]


def test_pick_first_takes_the_first_usable_name() -> None:
    picker = PickFirst()
    assert picks(picker, {"server2": 1, "server3": 9}, 5) == ["server2"] * 5
    assert picker.pick((("server3", 1), ("server1", 0), ("server2", 1))) == "server2"


def test_make_picker() -> None:
    assert isinstance(make_picker("weighted"), SmoothWRR)
    assert isinstance(make_picker("round_robin"), RoundRobin)
    assert isinstance(make_picker("pick_first"), PickFirst)
    with pytest.raises(UsageError, match="weighted, round_robin, pick_first"):
        make_picker("random")


@settings(max_examples=200, deadline=None)  # thousands of picks: no per-example deadline
@given(st.lists(st.tuples(weights_st, st.integers(0, 60)), min_size=1, max_size=4))
def test_replaying_a_rotation_picks_exactly_as_the_rule(phases: list[tuple[dict[str, int],
                                                                            int]]) -> None:
    # The channel passes the same tuple on every pick, which lets SmoothWRR replay a
    # finished rotation instead of looking at every candidate; a fresh list each time
    # makes it apply the rule pick by pick. Both must agree, across changes too.
    replaying, by_rule = SmoothWRR(), SmoothWRR()
    for weights, extra in phases:
        cands = tuple(sorted(weights.items()))
        n = 3 * sum(weights.values()) + extra  # long enough to start replaying
        assert [replaying.pick(cands) for _ in range(n)] == \
            [by_rule.pick(list(cands)) for _ in range(n)]
        assert replaying.currents == by_rule.currents


def test_a_rotation_of_100_instances_is_replayed() -> None:
    picker = SmoothWRR()
    cands = tuple((f"s{i:03d}", 1) for i in range(100))
    assert [picker.pick(cands) for _ in range(300)] == [n for n, _ in cands] * 3
    assert picker._cycle is not None  # O(1) picks from here on
