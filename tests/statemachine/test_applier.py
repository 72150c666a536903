"""Applying entries: errors as replies, exactly-once, replicated-time expiry."""

from __future__ import annotations

import pytest

from raftfleet_agent.raft.types import Config, Entry, EntryKind, ReplicaId
from raftfleet_agent.statemachine import (
    DATA_TYPE_ERROR,
    INVALID_ARGUMENT,
    REQUEST_EXPIRED,
    Applier,
    ApplyOrderError,
    ApplyResult,
)
from tests.statemachine.helpers import Feeder

STACK = "tests.statemachine.usertypes:Stack"


def feeder(name: str = "counter", **limits: int) -> Feeder:
    return Feeder(Applier(name, **limits))


# -- log order and non-command entries -------------------------------------------


def test_noop_and_config_only_advance_the_index() -> None:
    f = feeder()
    assert f.entry(None, EntryKind.NOOP) is None
    config = Config(voters=frozenset({ReplicaId("a", 1)}))
    assert f.entry(config, EntryKind.CONFIG) is None
    assert f.applier.applied_index == 2
    assert f.applier.state == 0
    assert f.applier.statistics().sessions == 0


@pytest.mark.parametrize("index", [0, 1, 3, 10])
def test_entries_must_come_in_order(index: int) -> None:
    f = feeder()
    f.entry(None, EntryKind.NOOP)
    with pytest.raises(ApplyOrderError, match="expected 2"):
        f.applier.apply(Entry(term=1, index=index, kind=EntryKind.NORMAL, data=None))
    assert f.applier.applied_index == 1


# -- malformed envelopes -----------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (None, "must be a list, got NoneType"),
        ("inc", "must be a list, got str"),
        ({"seq": 1}, "must be a list, got dict"),
        (["c", 1, 0], "4 items"),
        (["c", 1, 0, "inc", "extra"], "4 items"),
        (["", 1, 0, "inc"], "client_id"),
        ([b"c", 1, 0, "inc"], "client_id"),
        (["c", -1, 0, "inc"], "seq"),
        (["c", True, 0, "inc"], "seq"),
        (["c", "1", 0, "inc"], "seq"),
        (["c", 1, -1, "inc"], "ts_ms"),
        (["c", 1, 1.0, "inc"], "ts_ms"),
    ],
)
def test_malformed_envelope_is_an_error_reply(data: object, fragment: str) -> None:
    f = feeder()
    result = f.entry(data)
    assert isinstance(result, ApplyResult)
    assert (result.ok, result.error) == (False, INVALID_ARGUMENT)
    assert fragment in result.message
    assert f.applier.applied_index == 1
    assert f.applier.state == 0
    stats = f.applier.statistics()
    assert (stats.sessions, stats.now_ms) == (0, 0)


def test_tuple_envelope_is_accepted() -> None:
    f = feeder()
    assert f.entry(("c", 1, 5, "inc")) == ApplyResult(True, 0)


# -- user types: errors never crash and never change the state ---------------------


def test_user_type_commands_and_queries() -> None:
    f = feeder(STACK)
    assert f.cmd(["push", "a"], seq=1).reply == 0
    assert f.cmd(["push", "b"], seq=2).reply == 1
    assert f.cmd("pop", seq=3).reply == "b"
    assert f.get("all") == ["a"]


@pytest.mark.parametrize(
    ("arg", "code", "message"),
    [
        ("boom", DATA_TYPE_ERROR, "RuntimeError: kaboom"),
        ("missing_key", INVALID_ARGUMENT, "KeyError: 'nope'"),
        ("unknown", INVALID_ARGUMENT, "ValueError: stack: unknown command 'unknown'"),
        ("set_reply", DATA_TYPE_ERROR, "reply is not a msgpack value"),
        ("bad_shape", DATA_TYPE_ERROR, "command must return (reply, new_state), got int"),
        ({"weird": 1}, INVALID_ARGUMENT, "ValueError"),
    ],
)
def test_user_type_failure_changes_nothing(arg: object, code: str, message: str) -> None:
    f = feeder(STACK)
    f.cmd(["push", 1], seq=1)
    before = f.applier.state
    result = f.cmd(arg, seq=2)
    assert (result.ok, result.error) == (False, code)
    assert message in result.message
    assert f.applier.state is before
    assert f.get("all") == [1]


def test_invalid_argument_message_is_the_types_own() -> None:
    f = feeder(STACK)
    result = f.cmd("pop")
    assert result == ApplyResult(False, None, INVALID_ARGUMENT, "stack: pop from an empty stack")


def test_user_query_errors() -> None:
    f = feeder(STACK)
    boom = f.applier.query("boom")
    assert (boom.error, boom.message) == (
        DATA_TYPE_ERROR,
        "ZeroDivisionError: integer division or modulo by zero",
    )
    assert f.applier.query("nope").error == INVALID_ARGUMENT


def test_user_replies_do_not_alias_the_state() -> None:
    f = feeder(STACK)
    f.cmd(["push", [1]], seq=1)
    reply = f.get("all")
    reply.append("mutated by a caller")
    reply[0].append(2)
    assert f.get("all") == [[1]]


def test_long_error_messages_are_capped() -> None:
    f = feeder("kv")
    result = f.cmd(["put", "k" * 5000, None])
    assert result.error == INVALID_ARGUMENT
    assert len(result.message) <= 500


# -- exactly-once --------------------------------------------------------------------


def test_retry_returns_the_original_reply_and_applies_once() -> None:
    f = feeder()
    first = f.cmd("inc", client="c", seq=1, ts=1_000)
    retry = f.cmd("inc", client="c", seq=1, ts=1_500)
    assert first.reply == retry.reply == 0
    assert f.get("get") == 1
    assert f.applier.statistics().duplicates_answered == 1
    # The same seq from another client is another request.
    assert f.cmd("inc", client="d", seq=1).reply == 1


def test_retry_returns_the_original_error_without_running_again() -> None:
    f = feeder()
    first = f.cmd(["set", "x"], seq=1)
    assert first.error == INVALID_ARGUMENT
    # A retry with a (wrongly) different argument still gets the first answer.
    assert f.cmd(["set", 5], seq=1) == first
    assert f.get("get") == 0


def test_requests_of_one_client_may_commit_out_of_order() -> None:
    f = feeder(max_results_per_session=4)
    assert f.cmd("inc", seq=5).reply == 0
    assert f.cmd("inc", seq=3).reply == 1  # never applied before: applies
    assert f.cmd("inc", seq=4).reply == 2
    assert f.cmd("inc", seq=3).reply == 1  # retry: cached
    assert f.get("get") == 3


def test_request_below_the_dropped_results_is_expired_not_reapplied() -> None:
    f = feeder(max_results_per_session=3)
    for seq in range(1, 6):
        assert f.cmd("inc", seq=seq).reply == seq - 1
    stats = f.applier.statistics()
    assert (stats.sessions, stats.cached_results) == (1, 3)  # seqs 3, 4, 5
    for seq in (1, 2):
        result = f.cmd("inc", seq=seq)
        assert (result.ok, result.error) == (False, REQUEST_EXPIRED)
        assert "may have been applied" in result.message
    assert f.cmd("inc", seq=3).reply == 2  # still cached
    assert f.get("get") == 5
    assert f.applier.statistics().requests_expired == 2


def test_out_of_order_results_are_dropped_lowest_seq_first() -> None:
    f = feeder(max_results_per_session=2)
    f.cmd("inc", seq=10)
    f.cmd("inc", seq=2)
    f.cmd("inc", seq=7)  # drops 2, keeps 7 and 10
    assert f.cmd("inc", seq=2).error == REQUEST_EXPIRED
    # 5 is below a cached seq but above the dropped one: new, so applied.
    assert f.cmd("inc", seq=5).reply == 3
    assert f.cmd("inc", seq=10).reply == 0


# -- expiry by replicated time -------------------------------------------------------


def test_session_expires_by_replicated_time_only() -> None:
    f = feeder(window_ms=1_000)
    f.cmd("inc", client="a", seq=1, ts=1_000)
    f.cmd("inc", client="b", seq=1, ts=2_000)  # 2000 - 1000 is not > window
    assert f.applier.statistics().sessions == 2
    assert f.cmd("inc", client="a", seq=1, ts=1_000).reply == 0  # still cached
    f.cmd("inc", client="b", seq=2, ts=2_001)  # now a is 1001 ms old
    stats = f.applier.statistics()
    assert (stats.sessions, stats.now_ms) == (1, 2_001)
    # A retry after its session expired cannot be told from a new request:
    # the window must outlast every client's retry window.
    assert f.cmd("inc", client="a", seq=1, ts=2_001).reply == 3


def test_a_retry_keeps_its_session_alive() -> None:
    f = feeder(window_ms=1_000)
    f.cmd("inc", client="a", seq=1, ts=1_000)
    f.cmd("inc", client="a", seq=1, ts=1_800)  # retry touches the session
    f.cmd("inc", client="b", seq=1, ts=2_500)
    assert f.cmd("inc", client="a", seq=1, ts=2_500).reply == 0


def test_replicated_clock_never_goes_backwards() -> None:
    f = feeder(window_ms=1_000)
    f.cmd("inc", client="a", seq=1, ts=5_000)
    f.cmd("inc", client="b", seq=1, ts=100)  # a new leader with a slow clock
    assert f.applier.now_ms == 5_000
    # b's session is already older than the window, so the next tick expires it.
    f.cmd("inc", client="a", seq=2, ts=5_001)
    assert f.applier.statistics().sessions == 1


def test_least_recently_used_session_is_evicted() -> None:
    f = feeder(max_sessions=2)
    f.cmd("inc", client="a", seq=1, ts=1_000)
    f.cmd("inc", client="b", seq=1, ts=2_000)
    f.cmd("inc", client="a", seq=2, ts=3_000)  # a is now the most recent
    f.cmd("inc", client="c", seq=1, ts=3_000)  # evicts b
    assert f.applier.statistics().sessions == 2
    assert f.cmd("inc", client="a", seq=1, ts=3_000).reply == 0  # still cached
    assert f.cmd("inc", client="b", seq=1, ts=3_000).reply == 4  # b was evicted: applies


def test_eviction_ties_break_by_client_id_not_arrival() -> None:
    f = feeder(max_sessions=2)
    f.cmd("inc", client="zed", seq=1, ts=1_000)
    f.cmd("inc", client="amy", seq=1, ts=1_000)
    f.cmd("inc", client="bob", seq=1, ts=1_000)  # evicts amy: lowest (ts, id)
    assert f.cmd("inc", client="zed", seq=1, ts=1_000).reply == 0
    stats = f.applier.statistics()
    assert stats.sessions == 2


def test_many_sessions_stay_bounded() -> None:
    f = feeder(window_ms=10_000, max_sessions=50, max_results_per_session=2)
    for i in range(2_000):
        f.cmd("inc", client=f"c{i % 300}", seq=i, ts=1_000 + i)
    stats = f.applier.statistics()
    assert stats.sessions == 50
    assert stats.cached_results <= 100
    assert f.get("get") == 2_000
    assert len(f.applier._sessions._heap) <= 2 * 50 + 64


def test_statistics() -> None:
    f = feeder()
    f.cmd("inc", seq=1, ts=7)
    f.cmd("inc", seq=1, ts=8)
    f.cmd("bad", seq=2, ts=9)
    stats = f.applier.statistics()
    assert stats.data_type == "counter"
    assert (stats.applied_index, stats.now_ms, stats.sessions) == (3, 9, 1)
    assert (stats.cached_results, stats.commands_applied, stats.duplicates_answered) == (2, 1, 1)


@pytest.mark.parametrize(
    "limits",
    [{"window_ms": 0}, {"max_sessions": 0}, {"max_results_per_session": -1}, {"window_ms": 1.5}],
)
def test_limits_are_validated(limits: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="positive integer"):
        Applier("counter", **limits)
