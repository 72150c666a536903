"""The router's leader lookup, with stand-ins for the host and the peers."""

from __future__ import annotations

import types

import pytest

from raftfleet_agent.fleet.router import RouteError, Router


class FakeRpc:
    def __init__(self, answers: dict[str, dict]) -> None:
        self.answers = answers

    async def call(self, peer: str, op: str, args: dict, timeout_s: float) -> object:
        assert op == "leader"
        return self.answers[peer]


def _router(local: object | None, answers: dict[str, dict]) -> Router:
    replicas = {} if local is None else {"g": local}
    host = types.SimpleNamespace(agent="a1", replicas=replicas, on_leader_change=None)
    return Router(host, FakeRpc(answers), lambda: sorted(answers))  # type: ignore[arg-type]


def _member(leader: object, term: int) -> object:
    return types.SimpleNamespace(member=types.SimpleNamespace(leader=leader, term=term))


async def test_during_an_election_the_group_still_exists() -> None:
    r = _router(
        _member(None, 7), {"a2": {"leader": None, "term": 8}, "a3": {"leader": None, "term": 7}}
    )
    assert await r.find_leader("g") == (None, 8)


async def test_unknown_everywhere_is_term_minus_one() -> None:
    r = _router(None, {"a2": {"leader": None, "term": -1}})
    assert await r.find_leader("g") == (None, -1)


async def test_the_highest_term_with_a_leader_wins_and_is_cached() -> None:
    leader = types.SimpleNamespace(agent="a2")
    r = _router(
        _member(leader, 3), {"a2": {"leader": "a2", "term": 3}, "a3": {"leader": "a3", "term": 4}}
    )
    assert await r.find_leader("g") == ("a3", 4)
    assert r.leaders["g"] == "a3"


async def test_a_request_an_earlier_attempt_may_have_sent_is_never_called_unknown() -> None:
    # Seed 7500: a forward whose answer came too late went to the normal path,
    # which found no leader, no replica anywhere it could reach, and answered
    # unknown_group (never proposed) for a command that had been applied.
    nowhere = {"a2": {"leader": None, "term": -1}}
    r = _router(None, nowhere)
    with pytest.raises(RouteError) as fresh:
        await r.command("g", "inc", ("c", 1), 0.2, 0)
    assert fresh.value.code == "unknown_group"
    with pytest.raises(RouteError) as tried:
        await r.command("g", "inc", ("c", 1), 0.2, 0, sent=True)
    assert tried.value.code == "no_leader"
