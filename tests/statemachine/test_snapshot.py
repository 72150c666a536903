"""Applier snapshots: state, sessions, clock and index, all or nothing."""

from __future__ import annotations

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftfleet_agent.statemachine import (
    REQUEST_EXPIRED,
    Applier,
    ApplyResult,
    SnapshotError,
)
from tests.statemachine.helpers import Feeder

STACK = "tests.statemachine.usertypes:Stack"


def busy_counter(**limits: int) -> Feeder:
    f = Feeder(Applier("counter", **limits))
    f.cmd("inc", client="a", seq=1, ts=1_000)
    f.cmd("inc", client="b", seq=1, ts=1_100)
    f.cmd(["set", "x"], client="b", seq=2, ts=1_200)  # a cached error
    f.cmd("inc", client="a", seq=2, ts=1_300)
    return f


def test_round_trip_restores_everything() -> None:
    f = busy_counter()
    data = f.applier.snapshot()
    restored = Applier.from_snapshot("counter", data)
    assert restored.applied_index == 4
    assert restored.now_ms == 1_300
    assert restored.state == 3
    before, after = f.applier.statistics(), restored.statistics()
    assert (after.sessions, after.cached_results) == (before.sessions, before.cached_results)
    assert restored.snapshot() == data


def test_retry_after_restore_is_not_applied_again() -> None:
    # PITFALLS: the dedup table must travel with the snapshot.
    original = busy_counter()
    f = Feeder(Applier.from_snapshot("counter", original.applier.snapshot()))
    assert f.cmd("inc", client="a", seq=1, ts=1_400).reply == 0
    assert f.cmd("inc", client="a", seq=2, ts=1_400).reply == 2
    # The cached error comes back as it was, though the retry is now valid.
    error = f.cmd(["set", 9], client="b", seq=2, ts=1_400)
    assert error == original.cmd(["set", 9], client="b", seq=2, ts=1_400)
    assert "needs a 64-bit integer" in error.message
    assert f.get("get") == 3
    assert f.cmd("inc", client="a", seq=3, ts=1_400).reply == 3  # a new request applies


def test_dropped_results_stay_expired_after_restore() -> None:
    f = Feeder(Applier("counter", max_results_per_session=2))
    for seq in range(1, 5):
        f.cmd("inc", seq=seq)
    g = Feeder(Applier.from_snapshot("counter", f.applier.snapshot(), max_results_per_session=2))
    assert g.cmd("inc", seq=2).error == REQUEST_EXPIRED
    assert g.cmd("inc", seq=4).reply == 3
    assert g.get("get") == 4


def test_expiry_continues_from_the_snapshot_clock() -> None:
    f = Feeder(Applier("counter", window_ms=1_000))
    f.cmd("inc", client="a", seq=1, ts=1_000)
    g = Feeder(Applier.from_snapshot("counter", f.applier.snapshot(), window_ms=1_000))
    for feeder in (f, g):
        feeder.cmd("inc", client="b", seq=1, ts=2_001)
        assert feeder.applier.statistics().sessions == 1
    assert f.applier.snapshot() == g.applier.snapshot()


def test_kv_and_user_type_round_trips() -> None:
    kv = Feeder(Applier("kv"))
    kv.cmd(["put", "z", {"n": [1, 2.5, b"\x00"]}], seq=1)
    kv.cmd(["put", "a", True], seq=2)
    restored = Applier.from_snapshot("kv", kv.applier.snapshot())
    assert restored.state == kv.applier.state
    for name in (STACK, "tests.statemachine.usertypes:CustomSnapshot"):
        f = Feeder(Applier(name))
        f.cmd(["push", {"k": [1]}], seq=1)
        assert Applier.from_snapshot(name, f.applier.snapshot()).state == [{"k": [1]}]


def test_snapshot_failure_of_a_user_type_is_clear() -> None:
    with pytest.raises(SnapshotError, match="returned str, not bytes"):
        Applier("tests.statemachine.usertypes:BadSnapshot").snapshot()


def test_restore_checks_the_data_type() -> None:
    data = busy_counter().applier.snapshot()
    kv = Applier("kv")
    with pytest.raises(SnapshotError, match="of data type 'counter', this group runs 'kv'"):
        kv.restore(data)


def snapshot_map(**changes: object) -> bytes:
    top = msgpack.unpackb(busy_counter().applier.snapshot())
    top.update(changes)
    return msgpack.packb({k: v for k, v in top.items() if v is not ...}, use_bin_type=True)


GOOD_SESSION = ["a", 1_000, -1, [[1, 0]]]


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"", "malformed snapshot"),
        (b"\xc1", "malformed snapshot"),
        (b"\x92\x01", "malformed snapshot"),  # truncated
        (msgpack.packb([1, 2]), "not a raftfleet applier snapshot"),
        (msgpack.packb({1: 2}, use_bin_type=True), "malformed snapshot"),
        (busy_counter().applier.snapshot() + b"\x00", "malformed snapshot"),
        ("a string", "must be bytes"),
        (snapshot_map(v=2), "unsupported snapshot version 2"),
        (snapshot_map(extra=1), "not a raftfleet applier snapshot"),
        (snapshot_map(sessions=...), "not a raftfleet applier snapshot"),
        (snapshot_map(applied_index=-1), "applied_index"),
        (snapshot_map(applied_index="3"), "applied_index"),
        (snapshot_map(now_ms=True), "now_ms"),
        (snapshot_map(state="0"), "state must be bytes"),
        (snapshot_map(state=msgpack.packb("zero")), "restore() failed"),
        (snapshot_map(state=b"\xc1"), "restore() failed"),
        (snapshot_map(sessions={}), "sessions must be a list"),
        (snapshot_map(sessions=[["a", 1_000, -1]]), "a session must be"),
        (snapshot_map(sessions=[GOOD_SESSION, GOOD_SESSION]), "duplicate session"),
        (snapshot_map(sessions=[["", 1, -1, []]]), "client id"),
        (snapshot_map(sessions=[["a", -1, -1, []]]), "invalid last_ts_ms or floor"),
        (snapshot_map(sessions=[["a", 1, -2, []]]), "invalid last_ts_ms or floor"),
        (snapshot_map(sessions=[["a", 1, 5, [[5, 0]]]]), "ascend above the floor"),
        (snapshot_map(sessions=[["a", 1, -1, [[2, 0], [1, 0]]]]), "ascend above the floor"),
        (snapshot_map(sessions=[["a", 1, -1, [[1]]]]), "malformed result"),
        (snapshot_map(sessions=[["a", 1, -1, [[1, "oops", "m"]]]]), "malformed error result"),
        (snapshot_map(sessions=[["a", 1, -1, [[1, [1], "m"]]]]), "malformed error result"),
        (snapshot_map(sessions=[["a", 1, -1, [[1, "invalid_argument", 3]]]]), "malformed error"),
    ],
)
def test_malformed_snapshot_changes_nothing(data: bytes, fragment: str) -> None:
    f = busy_counter()
    f.cmd("inc", client="z", seq=1, ts=5_000)
    before = f.applier.snapshot()
    with pytest.raises(SnapshotError) as info:
        f.applier.restore(data)
    assert fragment in str(info.value)
    assert f.applier.snapshot() == before


def test_valid_edited_snapshot_is_accepted() -> None:
    # The fixture above edits a valid snapshot; make sure an unedited one loads.
    applier = Applier("counter")
    applier.restore(
        snapshot_map(sessions=[GOOD_SESSION, ["b", 5, 3, [[4, "request_expired", "m"]]]])
    )
    f = Feeder(applier)
    assert f.cmd("x", client="b", seq=4, ts=6) == ApplyResult(False, None, REQUEST_EXPIRED, "m")
    assert f.cmd("inc", client="b", seq=2, ts=6).error == REQUEST_EXPIRED


@given(st.binary(max_size=200))
def test_arbitrary_bytes_never_crash_restore(data: bytes) -> None:
    applier = Applier("kv")
    before = applier.snapshot()
    try:
        applier.restore(data)
    except SnapshotError:
        assert applier.snapshot() == before


def test_a_kv_snapshot_packed_in_slices_is_the_snapshot_of_its_start(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Packed one slice at a time while commands go on, it is what snapshot() gave at the start."""
    from raftfleet_agent.statemachine import builtin

    monkeypatch.setattr(builtin, "KV_SLICE_KEYS", 4)
    f = Feeder(Applier("kv"))
    for i in range(1, 31):
        f.cmd(["put", f"k{i}", [i, "v"]], client=f"c{i % 3}", seq=i, ts=1_000 + i)
    expected = f.applier.snapshot()
    job = f.applier.start_snapshot()
    assert job.index == 30 and not job.done
    steps = 0
    while not job.step():
        steps += 1
        # Commands in between change the live map, not the snapshot under way.
        f.cmd(["put", f"k{steps}", "changed"], client="c9", seq=steps, ts=2_000 + steps)
        f.cmd(["delete", f"k{30 - steps}"], client="c8", seq=steps, ts=2_000 + steps)
    assert steps == 30 // 4 + 2  # the header, then 8 slices of up to 4 keys
    assert job.result() == expected
    assert Applier.from_snapshot("kv", job.result()).applied_index == 30


def test_other_types_are_snapshotted_at_once() -> None:
    f = busy_counter()
    job = f.applier.start_snapshot()
    assert job.done and job.index == 4
    assert job.result() == f.applier.snapshot()


@pytest.mark.parametrize("keys", [1, 40, 5_000])  # the state under 256 bytes, under 64 KiB, over
def test_a_kv_snapshot_in_slices_has_the_bytes_of_one_in_a_piece(keys: int) -> None:
    f = Feeder(Applier("kv"))
    f.cmd(["put", "first", "x"], client="a", seq=1, ts=1_000)
    f.applier._state.update({f"key-{i:06d}": "v" * 20 for i in range(keys)})
    job = f.applier.start_snapshot()
    while not job.step():
        pass
    assert job.result() == f.applier.snapshot()
