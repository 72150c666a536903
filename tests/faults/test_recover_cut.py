"""A group that looks leaderless from a cut-off agent is not one to recover.

`group recover --force` makes one survivor the group's sole voter. Run on an
agent cut off from the group's other replicas (and only from them), it once
did exactly that: the group looked leaderless from there, while the other
two replicas, a majority, still elected a leader and served. Two groups under
one name, one of them forked from the other's history. The recovery must ask
what the rest of the cluster sees, as a purge does, and refuse.

Four real agents behind a FaultProxy; the group's three replicas on three of
them; the fourth, with no replica, still reaches everyone.
"""

from __future__ import annotations

from pathlib import Path

from raftfleet_cli.client import ControlError
from tests.faults.fronted import start_behind
from tests.faults.proxy import FaultProxy
from tests.procs import AgentProc, agents, wait_for

ENV = {"RAFTFLEET_RECONCILE_INTERVAL_S": "1"}


def _recover_answer(agent: AgentProc, group: str) -> str | None:
    """The refusal of `group recover` on `agent`, once it is not "has a leader"."""
    try:
        agent.call("group_recover", name=group, force=True, timeout=20)
    except ControlError as e:
        if "has a leader" in str(e):
            return None  # this agent still follows a leader: not leaderless yet
        return f"{e.code}: {e}"
    raise AssertionError(f"{agent.name} force-recovered {group}, whose majority still serves")


def test_recover_is_refused_on_an_agent_cut_off_from_a_live_majority(tmp_path: Path) -> None:
    with (
        FaultProxy(seed=2) as proxy,
        agents(tmp_path, 4, first_octet=95, start=False, env=ENV) as procs,
    ):
        start_behind(proxy, procs, ["z1", "z2", "z3", "z1"])
        created = procs[0].call("group_create", name="g", timeout=30)
        holders = {r.split("/")[0] for r in created["replicas"]}  # type: ignore[index]
        assert len(holders) == 3, created
        cut = next(p for p in procs if p.name in holders)
        others = sorted(holders - {cut.name})
        for name in others:
            proxy.reject(cut.name, name)

        refusal = wait_for(lambda: _recover_answer(cut, "g"), 30, f"{cut.name} to see no leader")
        assert refusal.startswith("invalid_argument:"), refusal  # type: ignore[union-attr]
        assert "is reachable from" in refusal, refusal  # type: ignore[operator]
        assert "mend the network" in refusal  # type: ignore[operator]
        # The majority still serves, and the cut-off replica is still one of three.
        bridge = next(p for p in procs if p.name not in holders)
        assert bridge.call("command", group="g", arg="inc", timeout=20)["leader"] in others  # type: ignore[index]
        members = bridge.call("group_status", name="g", timeout=10)["members"]  # type: ignore[index]
        assert sorted(m["agent"] for m in members) == sorted(holders)
