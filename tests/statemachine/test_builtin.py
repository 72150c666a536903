"""The built-in data types, alone and through the applier."""

from __future__ import annotations

import pytest

from raftfleet_agent.statemachine import (
    INVALID_ARGUMENT,
    KV,
    Applier,
    Counter,
    InvalidArgument,
    builtin,
)
from tests.statemachine.helpers import Feeder


@pytest.fixture
def counter() -> Feeder:
    return Feeder(Applier("counter"))


@pytest.fixture
def kv() -> Feeder:
    return Feeder(Applier("kv"))


def test_counter_seed_example(counter: Feeder) -> None:
    # SEED.md: query get -> 0, command inc -> 0, query get -> 1.
    assert counter.get("get") == 0
    assert counter.cmd("inc").reply == 0
    assert counter.get("get") == 1


def test_counter_set_replies_old_value(counter: Feeder) -> None:
    counter.cmd("inc", seq=1)
    assert counter.cmd(["set", 42], seq=2).reply == 1
    assert counter.cmd("inc", seq=3).reply == 42
    assert counter.get("get") == 43


@pytest.mark.parametrize(
    ("arg", "fragment"),
    [
        ("foo", 'counter: unknown command "foo" (expected "inc" or ["set", n])'),
        (["set"], "unknown command"),
        (["set", "7"], '["set", n] needs a 64-bit integer n, got "7"'),
        (["set", True], "needs a 64-bit integer"),
        (["set", 1.5], "needs a 64-bit integer"),
        (["set", 2**63], "needs a 64-bit integer"),
        (["inc"], "unknown command"),
        (None, "unknown command None"),
        ({"inc": 1}, "unknown command"),
    ],
)
def test_counter_invalid_command_is_an_error_reply(
    counter: Feeder, arg: object, fragment: str
) -> None:
    counter.cmd("inc", seq=1)
    result = counter.cmd(arg, seq=2)
    assert not result.ok
    assert result.error == INVALID_ARGUMENT
    assert fragment in result.message
    assert counter.get("get") == 1  # unchanged


def test_counter_overflow_is_refused(counter: Feeder) -> None:
    counter.cmd(["set", 2**63 - 1], seq=1)
    result = counter.cmd("inc", seq=2)
    assert result.error == INVALID_ARGUMENT
    assert "overflow" in result.message
    assert counter.get("get") == 2**63 - 1


def test_counter_invalid_query(counter: Feeder) -> None:
    result = counter.applier.query("value")
    assert (result.ok, result.error) == (False, INVALID_ARGUMENT)
    assert result.message == 'counter: unknown query "value" (expected "get")'


def test_kv_put_get_delete(kv: Feeder) -> None:
    assert kv.cmd(["put", "a", 1], seq=1).reply is None
    assert kv.cmd(["put", "a", [1, {"x": b"y"}]], seq=2).reply == 1
    assert kv.get(["get", "a"]) == [1, {"x": b"y"}]
    assert kv.get(["get", "b"]) is None
    assert kv.cmd(["delete", "a"], seq=3).reply == [1, {"x": b"y"}]
    assert kv.cmd(["delete", "a"], seq=4).reply is None
    assert kv.get(["get", "a"]) is None


def test_kv_keys_are_sorted(kv: Feeder) -> None:
    for seq, key in enumerate(["b", "c", "a", "B"], start=1):
        kv.cmd(["put", key, seq], seq=seq)
    assert kv.get("keys") == ["B", "a", "b", "c"]


def test_kv_cas(kv: Feeder) -> None:
    assert kv.cmd(["cas", "k", None, 1], seq=1).reply is True  # None: "absent"
    assert kv.cmd(["cas", "k", None, 2], seq=2).reply is False  # present now
    assert kv.cmd(["cas", "k", 5, 2], seq=3).reply is False
    assert kv.cmd(["cas", "k", 1, 2], seq=4).reply is True
    assert kv.get(["get", "k"]) == 2
    assert kv.cmd(["cas", "k", 2, None], seq=5).reply is True  # compare-and-delete
    assert kv.get("keys") == []


@pytest.mark.parametrize(
    ("stored", "expected"),
    [(1, 1.0), (1, True), (0, False), ([1], [True]), ({"a": 1}, {"a": 1.0}), ("1", b"1")],
)
def test_kv_cas_keeps_msgpack_types_apart(kv: Feeder, stored: object, expected: object) -> None:
    kv.cmd(["put", "k", stored], seq=1)
    assert kv.cmd(["cas", "k", expected, "new"], seq=2).reply is False
    assert kv.get(["get", "k"]) == stored


def test_kv_cas_matches_nested_values(kv: Feeder) -> None:
    kv.cmd(["put", "k", {"a": [1, 2.5, None]}], seq=1)
    assert kv.cmd(["cas", "k", {"a": [1, 2.5, None]}, 0], seq=2).reply is True


@pytest.mark.parametrize(
    ("arg", "fragment"),
    [
        ("put", "kv: unknown command"),
        ([], "kv: unknown command"),
        (["put", "k"], "unknown command"),
        (["put", "k", 1, 2], "unknown command"),
        (["put", 1, 1], "kv: put needs a string key, got 1"),
        (["put", "k", None], 'use ["delete", k]'),
        (["delete", b"k"], "delete needs a string key"),
        (["cas", "k", 1], "unknown command"),
        (["cas", ["k"], 1, 2], "cas needs a string key"),
        (["get", "k"], "unknown command"),
        (["PUT", "k", 1], "unknown command"),
    ],
)
def test_kv_invalid_command_changes_nothing(kv: Feeder, arg: object, fragment: str) -> None:
    kv.cmd(["put", "k", "v"], seq=1)
    result = kv.cmd(arg, seq=2)
    assert (result.ok, result.error) == (False, INVALID_ARGUMENT)
    assert fragment in result.message
    assert kv.applier.state == {"k": "v"}


@pytest.mark.parametrize("arg", ["get", ["get"], ["get", 1], ["keys"], ["get", "a", "b"], None])
def test_kv_invalid_query(kv: Feeder, arg: object) -> None:
    result = kv.applier.query(arg)
    assert (result.ok, result.error) == (False, INVALID_ARGUMENT)
    assert result.message.startswith("kv: ")


def test_builtins_validate_before_mutating() -> None:
    # Direct calls: an invalid command raises and leaves the dict as it was.
    state = {"k": 1}
    with pytest.raises(InvalidArgument):
        KV.command(state, ["put", "x", None])
    with pytest.raises(InvalidArgument):
        KV.command(state, ["put", 3, 1])
    assert state == {"k": 1}
    with pytest.raises(InvalidArgument):
        Counter.command(5, ["set", None])


def test_builtin_snapshots_round_trip() -> None:
    state = {"b": 1, "a": [b"x", None]}
    data = KV.snapshot(state)
    assert KV.restore(data) == state
    assert list(KV.restore(data)) == ["b", "a"]  # the map's own order, kept
    assert Counter.restore(Counter.snapshot(-7)) == -7


def test_kv_replicas_on_different_paths_write_the_same_snapshot() -> None:
    """Insertion order is shared by every replica, so no sort is needed for equal bytes."""
    log = [["put", "z", 1], ["put", "a", 2], ["put", "m", 3], ["delete", "z"]]
    log += [["put", "z", 4], ["cas", "a", 2, 5], ["put", "b", 6], ["delete", "m"]]
    applied = KV.new()
    for arg in log:
        _, applied = KV.command(applied, arg)
    for cut in range(len(log) + 1):  # another replica restores a snapshot taken at `cut`
        head = KV.new()
        for arg in log[:cut]:
            _, head = KV.command(head, arg)
        restored = KV.restore(KV.snapshot(head))
        for arg in log[cut:]:
            _, restored = KV.command(restored, arg)
        assert KV.snapshot(restored) == KV.snapshot(applied), cut


@pytest.mark.parametrize("keys", [0, 1, 15, 16, 17, 9_999, 10_000, 10_001, 65_535, 65_536, 70_000])
def test_kv_snapshot_slices_join_to_the_snapshot(keys: int) -> None:
    """Across msgpack's map header sizes (16, 65,536 keys) and the slice size (10,000)."""
    state = {f"k{i}": i if i % 3 else [i, "x"] for i in range(keys)}
    parts = list(KV.snapshot_parts(state))
    assert b"".join(parts) == KV.snapshot(state)
    assert len(parts) == 1 + -(-keys // builtin.KV_SLICE_KEYS)  # the header, then the slices
