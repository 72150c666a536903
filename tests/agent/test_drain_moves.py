"""A drain watch counts the moves the other agents make, not only its own."""

from __future__ import annotations

from types import SimpleNamespace

from raftfleet_agent.host.rpc import RpcError
from raftfleet_agent.ops import AgentOps


class _Rpc:
    """Each peer's answer to `brief`: a dict, or an RpcError to raise."""

    def __init__(self, answers: dict[str, object]) -> None:
        self.answers = answers
        self.asked: list[tuple[str, str]] = []

    async def call(self, agent: str, op: str, args: dict, timeout_s: float) -> object:
        self.asked.append((agent, op))
        answer = self.answers[agent]
        if isinstance(answer, Exception):
            raise answer
        return answer


async def test_the_drain_watch_sums_the_moves_of_every_agent_it_reaches() -> None:
    rpc = _Rpc(
        {
            "a2": {"replicas": 5, "leaders": 1, "moves_in_flight": 3},
            "a3": {"replicas": 2, "leaders": 0},  # too old to say: none
            "a4": RpcError("timeout", "no answer"),  # gone: none
            "a5": {"replicas": 0, "leaders": 0, "moves_in_flight": 4},
        }
    )
    agent = SimpleNamespace(
        host=None,
        config=SimpleNamespace(name="a1"),
        fleet=SimpleNamespace(moves_in_flight=1),
        rpc=rpc,
        connected_peers=lambda: ["a2", "a3", "a4", "a5"],
    )
    ops = AgentOps(agent)  # type: ignore[arg-type]
    assert await ops._cluster_moves() == 1 + 3 + 4
    assert sorted(rpc.asked) == [("a2", "brief"), ("a3", "brief"), ("a4", "brief"), ("a5", "brief")]
