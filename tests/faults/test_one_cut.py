"""A cut between two agents is not a death.

When the network between the cluster-state leader's agent and one other
agent fails, and only that link, the other agent is alive and serving: every
other agent still reaches it. Purging it after the purge window (or letting
an operator `forget` it from the cut-off side) would rebuild all its replicas
for nothing and leave it inactive. Before either, the cluster leader's agent
asks the agents it reaches whether they reach the agent; here they do.

Four real agents; every peer byte crosses a FaultProxy, which resets the
connections between the two agents for as long as the cut lasts.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from raftfleet_cli.client import ControlError
from tests.faults.fronted import start_behind
from tests.faults.proxy import FaultProxy
from tests.procs import AgentProc, agents, wait_for

WINDOW_S = 3
ENV = {"RAFTFLEET_RECONCILE_INTERVAL_S": "1", "RAFTFLEET_PURGE_WINDOW_S": str(WINDOW_S)}


def _cluster_leader(procs: list[AgentProc]) -> AgentProc:
    """The cluster-state leader's agent, once the group has its voters.

    While it grows from its founder to its voters, cutting one link can take
    its majority away (two voters): the cut must come after.
    """

    def settled() -> str | None:
        seen = {
            (c["leader"], tuple(c["voters"] or ()))
            for c in (p.call("status")["cluster"] for p in procs)  # type: ignore[index]
        }
        if len(seen) != 1:
            return None
        leader, voters = seen.pop()
        return leader if leader is not None and len(voters) >= 3 else None

    name = wait_for(settled, 30, "every agent to see one cluster-state leader and 3+ voters")
    return next(p for p in procs if p.name == name)


def test_an_agent_cut_off_from_the_cluster_leader_alone_is_kept(tmp_path: Path) -> None:
    with (
        FaultProxy(seed=1) as proxy,
        agents(tmp_path, 4, first_octet=91, start=False, env=ENV) as procs,
    ):
        start_behind(proxy, procs, ["z1", "z2", "z3", "z1"])
        procs[0].call("group_create", name="c0", timeout=30)

        leader = _cluster_leader(procs)
        cut = next(p for p in procs if p is not leader)
        proxy.reject(leader.name, cut.name)

        def held() -> bool:
            return cut.name in leader.call("status")["cluster"]["purges_held"]  # type: ignore[index]

        # Past the window the purge is due by this agent's view alone; it is held.
        try:
            wait_for(held, 30, f"{leader.name} to hold the purge of {cut.name}")
        except AssertionError:
            seen = {p.name: p.call("status")["cluster"] for p in procs}  # type: ignore[index]
            raise AssertionError(f"no hold; cluster as each agent sees it: {seen}") from None
        assert "still reach it" in leader.log()
        why = leader.call("status")["cluster"]["purges_held_why"]  # type: ignore[index]
        assert "still reach it: a network cut" in why[cut.name], why
        nodes = {n["name"]: n for n in leader.call("nodes")["nodes"]}  # type: ignore[index]
        assert nodes[cut.name]["state"] == "active", nodes[cut.name]
        assert nodes[cut.name]["down_s"] > WINDOW_S
        with pytest.raises(ControlError) as info:
            leader.call("forget", agent=cut.name, force=True)
        assert info.value.code == "invalid_argument" and "reachable from" in str(info.value)

        proxy.heal_all()
        wait_for(lambda: not held(), 30, "the hold to end once the link is back")
        states = {n["name"]: n["state"] for n in leader.call("nodes")["nodes"]}  # type: ignore[index]
        assert states == dict.fromkeys(states, "active"), states
