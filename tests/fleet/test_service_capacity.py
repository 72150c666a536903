"""Purges and drains wait for capacity that can be reached (fault campaign, seed 7815).

A dead agent that is not yet purged is still "active" in the replicated
state. Counting it as room for other agents' replicas let a drain pass that
shrank every group once it was purged; purging it with nowhere to rebuild
shrank them too.

And "unreachable" must be the cluster's view, not one agent's: a cut between
the cluster leader's agent and one other agent alone must not purge that
(live) agent, nor let an operator `forget` it from there.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace

import pytest

from raftfleet_agent.fleet import cluster_state as cs
from raftfleet_agent.fleet.service import CLUSTER, FleetError, FleetService
from raftfleet_agent.host.rpc import RpcError, RpcTimeout

NOW = 1_000


def _state(*agents: tuple[str, str], level: int = cs.LEVEL) -> dict:
    st = cs.ClusterState.new()
    for i, (name, target) in enumerate(agents):
        address = f"10.0.0.1:{7000 + i}"
        cs.ClusterState.command(st, ["register", name, address, f"id-{name}", NOW, level])
        if target == "active":
            cs.ClusterState.command(st, ["activate", name, f"z{i}", NOW])
    cs.ClusterState.command(st, ["add_group", "g", 3, "counter", NOW])
    return st


AGENTS = ("a1", "a2", "a3", "a4", "a5")


def _service(
    me: str,
    down: set[str],
    away_s: float = 100.0,
    *,
    seen_by: dict[str, set[str]] | None = None,
    silent: frozenset[str] = frozenset(),
    old: frozenset[str] = frozenset(),
) -> tuple[FleetService, list]:
    """A service on `me` that cannot reach `down`.

    `seen_by[x]`: the other agents that still reach x; `silent` agents do not
    answer the question, `old` ones do not know it.
    """
    svc = FleetService.__new__(FleetService)
    svc.name = me
    leader = SimpleNamespace(member=SimpleNamespace(is_leader=True))
    svc.host = SimpleNamespace(replicas={CLUSTER: leader})
    svc.agent = SimpleNamespace(
        config=SimpleNamespace(purge_window_s=10.0),
        peers=SimpleNamespace(addresses={a: f"10.0.0.1:{7000 + i}" for i, a in enumerate(AGENTS)}),
    )
    svc._held_said = {}
    svc.unreachable = lambda: dict.fromkeys(down, away_s)  # type: ignore[method-assign]
    svc._reachable = lambda agent: agent not in down  # type: ignore[method-assign]
    asked: list = []

    async def call(agent: str, op: str, args: dict) -> object:
        assert agent != me and agent not in down, f"asked {agent}, which is not reachable"
        asked.append((agent, op, args))
        if agent in silent:
            raise RpcTimeout(agent, op)
        if agent in old:
            raise RpcError("unknown_op", f"unknown peer call {op!r}")
        reachers = (seen_by or {}).get(args["agent"], set())
        return {"agent": args["agent"], "connected": agent in reachers}

    svc._call = call  # type: ignore[method-assign]
    svc.asked = asked  # type: ignore[attr-defined]
    proposed: list = []

    async def propose(command: list) -> object:
        proposed.append(command[:2] + command[3:])  # the time left out
        return {}

    svc.propose = propose  # type: ignore[method-assign]
    return svc, proposed


async def test_a_purge_that_would_shrink_groups_is_held_and_said(caplog) -> None:  # type: ignore[no-untyped-def]
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"))
    svc, proposed = _service("a1", down={"a3"})
    with caplog.at_level(logging.WARNING):
        await svc._maybe_purge(st)
        await svc._maybe_purge(st)  # held again, said once
    assert proposed == []
    held = [r.getMessage() for r in caplog.records if "not purging a3" in r.getMessage()]
    assert len(held) == 1 and "leaves 2 active agent(s)" in held[0], held


async def test_purge_counts_only_agents_it_can_reach_as_room() -> None:
    # Four active agents, two of them dead: purging one would leave the other
    # dead one as the place its replicas go.
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    svc, proposed = _service("a1", down={"a3", "a4"})
    await svc._maybe_purge(st)
    assert proposed == []
    svc, proposed = _service("a1", down={"a4"})
    await svc._maybe_purge(st)
    assert proposed == [["purge", "a4", True]]  # the checked form: the state checks it again


async def test_a_dead_draining_agent_is_purged_without_the_check() -> None:
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    cs.ClusterState.command(st, ["deactivate", "a4", NOW])
    svc, proposed = _service("a1", down={"a3", "a4"})
    await svc._maybe_purge(st)
    assert proposed == [["purge", "a4", True]]


def _deactivating(me: str, st: dict, down: set[str]) -> tuple[FleetService, list]:
    svc, proposed = _service(me, down)

    async def state(**_kw: object) -> dict:
        return st

    svc.state = state  # type: ignore[method-assign]
    return svc, proposed


async def test_drain_counting_on_an_unreachable_agent_is_refused() -> None:
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    svc, proposed = _deactivating("a2", st, down={"a1"})
    with pytest.raises(FleetError) as info:
        await svc.deactivate()
    assert info.value.code == "too_few_agents"
    assert "a1 active but unreachable from here" in str(info.value)
    assert proposed == []
    # --force goes ahead, in the unchecked form.
    await svc.deactivate(force=True)
    assert proposed == [["deactivate", "a2"]]


async def test_drain_with_room_everywhere_is_left_to_the_replicated_check() -> None:
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    svc, proposed = _deactivating("a2", st, down=set())
    await svc.deactivate()
    assert proposed == [["deactivate", "a2", True]]
    # Short even with everyone reachable: the state's own check words the refusal.
    st3 = _state(("a1", "active"), ("a2", "active"), ("a3", "active"))
    svc, proposed = _deactivating("a2", st3, down=set())
    await svc.deactivate()
    assert proposed == [["deactivate", "a2", True]]


async def test_a_cluster_with_older_code_gets_the_unchecked_forms_checked_here() -> None:
    # An agent speaking level 1 would refuse the 4-argument forms that the
    # others apply: the replicas would disagree. So they are not proposed.
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"), level=1)
    svc, proposed = _deactivating("a2", st, down=set())
    await svc.deactivate()
    assert proposed == [["deactivate", "a2"]]
    st3 = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), level=1)
    svc, proposed = _deactivating("a2", st3, down=set())
    with pytest.raises(FleetError) as info:
        await svc.deactivate()
    assert info.value.code == "too_few_agents" and "leaves 2 active agent(s)" in str(info.value)
    assert proposed == []
    svc, proposed = _service("a1", down={"a4"})
    await svc._maybe_purge(st)
    assert proposed == [["purge", "a4"]]


async def test_forget_purges_an_unreachable_agent_now_and_refuses_the_rest() -> None:
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    svc, proposed = _deactivating("a1", st, down={"a4"})
    assert (await svc.forget("a4"))["state"] == "purged"
    assert proposed == [["purge", "a4", True]]  # checked again in the replicated state
    for agent, code in (
        ("nobody", "not_found"),
        ("a2", "invalid_argument"),
        ("a1", "invalid_argument"),
    ):
        with pytest.raises(FleetError) as info:
            await svc.forget(agent)
        assert info.value.code == code, (agent, info.value)
    assert len(proposed) == 1


async def test_forget_that_would_shrink_groups_needs_force() -> None:
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"))
    svc, proposed = _deactivating("a1", st, down={"a3"})
    with pytest.raises(FleetError) as info:
        await svc.forget("a3")
    assert info.value.code == "too_few_agents" and "force" in str(info.value)
    assert proposed == []
    await svc.forget("a3", force=True)
    assert proposed == [["purge", "a3"]]  # the unchecked form: the groups shrink


async def test_an_agent_cut_off_from_the_cluster_leader_alone_is_not_purged(caplog) -> None:  # type: ignore[no-untyped-def]
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    svc, proposed = _service("a1", down={"a4"}, seen_by={"a4": {"a3"}})
    with caplog.at_level(logging.WARNING):
        await svc._maybe_purge(st)
    assert proposed == []
    assert svc.purges_held == frozenset({"a4"})
    said = [r.getMessage() for r in caplog.records if "not purging a4" in r.getMessage()]
    assert len(said) == 1 and "a3 still reach it" in said[0], said
    # Only the agents we reach are asked, each once, about a4.
    assert sorted(a for a, _op, _args in svc.asked) == ["a2", "a3", "a5"]
    assert {(op, args["agent"]) for _a, op, args in svc.asked} == {("reaches", "a4")}
    # Once nobody reaches it, the purge goes ahead (checked form).
    svc, proposed = _service("a1", down={"a4"})
    await svc._maybe_purge(st)
    assert proposed == [["purge", "a4", True]] and svc.purges_held == frozenset()


async def test_a_purge_waits_while_an_agent_we_reach_cannot_be_asked() -> None:
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    svc, proposed = _service("a1", down={"a4"}, silent=frozenset({"a2"}))
    await svc._maybe_purge(st)
    assert proposed == [] and svc.purges_held == frozenset({"a4"})
    # An agent too old to know the question offers no view: it does not hold the purge.
    svc, proposed = _service("a1", down={"a4"}, old=frozenset({"a2", "a3"}))
    await svc._maybe_purge(st)
    assert proposed == [["purge", "a4", True]]


async def test_forget_is_refused_for_an_agent_another_agent_reaches() -> None:
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    svc, proposed = _deactivating("a1", st, down={"a4"})
    svc2, _ = _service("a1", down={"a4"}, seen_by={"a4": {"a2", "a3"}})
    svc._call = svc2._call  # type: ignore[method-assign]
    for force in (False, True):  # alive is alive: --force does not purge it
        with pytest.raises(FleetError) as info:
            await svc.forget("a4", force=force)
        assert info.value.code == "invalid_argument", info.value
        assert "reachable from a2, a3" in str(info.value) and "drain it" in str(info.value)
    assert proposed == []


async def test_forget_when_an_agent_cannot_be_asked_needs_force() -> None:
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    svc, proposed = _deactivating("a1", st, down={"a4"})
    svc2, _ = _service("a1", down={"a4"}, silent=frozenset({"a3"}))
    svc._call = svc2._call  # type: ignore[method-assign]
    with pytest.raises(FleetError) as info:
        await svc.forget("a4")
    assert info.value.code == "unavailable" and "could not ask a3" in str(info.value)
    assert proposed == []
    assert (await svc.forget("a4", force=True))["state"] == "purged"
    assert proposed == [["purge", "a4"]]  # forced: the unchecked form


async def test_an_agent_only_cut_off_from_here_counts_as_room_for_a_drain() -> None:
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    # a2 cannot reach a1, but a3 does: a1 is alive and can take replicas.
    svc, proposed = _deactivating("a2", st, down={"a1"})
    svc._call = _service("a2", down={"a1"}, seen_by={"a1": {"a3"}})[0]._call  # type: ignore[method-assign]
    await svc.deactivate()
    assert proposed == [["deactivate", "a2", True]]


async def test_a_purge_counts_as_room_an_agent_other_agents_reach() -> None:
    # a3 is dead for everyone; a4 is only cut off from a1 (a2 reaches it). Purging
    # a3 leaves a1, a2 and a4 for groups of three: it goes ahead; a4 is held.
    st = _state(("a1", "active"), ("a2", "active"), ("a3", "active"), ("a4", "active"))
    svc, proposed = _service("a1", down={"a3", "a4"}, seen_by={"a4": {"a2"}})
    await svc._maybe_purge(st)
    assert proposed == [["purge", "a3", True]]
    assert svc.purge_holds.keys() == {"a4"} and "a2 still reach it" in svc.purge_holds["a4"]
