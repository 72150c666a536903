"""The benchmark's side-by-side measurement: windows taken in turn, ratios paired."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from bench.load import interleave, paired_ratios, summarize


def window_result(ops: float, errors: int = 0, kinds: dict | None = None) -> dict:
    return {
        "ops_per_s": ops,
        "p50_s": ops / 1e6,
        "p99_s": ops / 1e5,
        "p999_s": ops / 1e4,
        "errors": errors,
        "error_kinds": kinds or {},
    }


def recorder(calls: list[tuple[str, str]], name: str, key: str) -> Callable[[], dict]:
    def one() -> dict:
        calls.append((name, key))
        return window_result(len(calls))

    return one


def systems_of(calls: list[tuple[str, str]], spec: dict[str, list[str]]) -> dict:
    return {n: {k: recorder(calls, n, k) for k in keys} for n, keys in spec.items()}


def test_every_load_runs_on_every_system_each_repetition_with_the_order_rotating() -> None:
    calls: list[tuple[str, str]] = []
    spec = {"a": ["w1", "w64"], "b": ["w64", "r64"], "c": ["w1"]}
    runs, failed = interleave(systems_of(calls, spec), reps=3)
    assert failed == {}
    assert calls == [
        # repetition 0: a, b, c; a load's windows follow each other
        ("a", "w1"), ("c", "w1"), ("a", "w64"), ("b", "w64"), ("b", "r64"),
        # repetition 1: b, c, a
        ("c", "w1"), ("a", "w1"), ("b", "w64"), ("a", "w64"), ("b", "r64"),
        # repetition 2: c, a, b
        ("c", "w1"), ("a", "w1"), ("a", "w64"), ("b", "w64"), ("b", "r64"),
    ]  # fmt: skip
    assert {n: {k: len(v) for k, v in per.items()} for n, per in runs.items()} == {
        "a": {"w1": 3, "w64": 3},
        "b": {"w64": 3, "r64": 3},
        "c": {"w1": 3},
    }


def test_a_failing_system_is_left_out_and_the_others_finish() -> None:
    calls: list[tuple[str, str]] = []
    systems = systems_of(calls, {"ours": ["w64", "r64"], "peer": ["w64", "r64"]})
    peer_w64 = systems["peer"]["w64"]
    seen = {"n": 0}

    def flaky() -> dict:
        seen["n"] += 1
        if seen["n"] == 2:
            raise RuntimeError("peer died")
        return peer_w64()

    systems["peer"]["w64"] = flaky
    runs, failed = interleave(systems, reps=3)
    assert set(failed) == {"peer"} and "peer died" in failed["peer"]
    assert len(runs["ours"]["w64"]) == 3 and len(runs["ours"]["r64"]) == 3
    # the peer's first repetition is kept; after its failure it is not asked again
    assert len(runs["peer"]["w64"]) == 1 and len(runs["peer"]["r64"]) == 1
    assert calls.count(("peer", "r64")) == 1


def test_paired_ratios_are_window_by_window() -> None:
    mine = {"reps_ops_per_s": [100.0, 300.0, 90.0]}
    peer = {"reps_ops_per_s": [50.0, 100.0, 0.0]}
    assert paired_ratios(mine, peer) == [2.0, 3.0, None]
    assert paired_ratios(mine, {"reps_ops_per_s": [50.0]}) == [2.0]
    assert paired_ratios({}, peer) == []


def test_summarize_takes_medians_and_sums_errors() -> None:
    runs = [
        window_result(10.0, errors=1, kinds={"timeout": 1}),
        window_result(30.0),
        window_result(20.0, errors=2, kinds={"timeout": 1, "no_leader": 1}),
    ]
    s = summarize(runs)
    assert s["ops_per_s"] == 20.0
    assert s["p99_s"] == pytest.approx(20.0 / 1e5)
    assert s["errors"] == 3
    assert s["error_kinds"] == {"timeout": 2, "no_leader": 1}
    assert s["reps_ops_per_s"] == [10.0, 30.0, 20.0]
