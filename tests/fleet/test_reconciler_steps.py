"""The reconciler's step loop against a scripted group (no processes)."""

from __future__ import annotations

from raftfleet_agent.fleet.reconciler import Plan, Reconciler


class FakeGroup:
    """A group whose leadership moves when asked; after a transfer, nobody leads for a moment."""

    def __init__(self, members: list[str], leader: str, election_lookups: int) -> None:
        self.members = list(members)
        self.leader: str | None = leader
        self.pending: str | None = None
        self.election_lookups = election_lookups
        self.lookups_left = 0

    async def find_leader(self, _group: str) -> str | None:
        if self.pending is not None:
            if self.lookups_left > 0:
                self.lookups_left -= 1
                return None  # the election after the transfer is still on
            self.leader, self.pending = self.pending, None
        return self.leader

    async def call(self, agent: str, op: str, args: dict) -> object:
        if op == "replica_status":
            assert agent == self.leader
            return {
                "leader": self.leader,
                "leader_s": 60.0,
                "members": [
                    {"agent": a, "replica_id": [a, 1], "role": "follower", "contact_ticks": 0}
                    for a in self.members
                ],
            }
        if op == "transfer":
            self.leader, self.pending = None, args["agent"]
            self.lookups_left = self.election_lookups
            return None
        if op == "change_membership":
            assert args["op"] == "remove"
            self.members.remove(args["replica"][0])
            return 1
        raise AssertionError(op)


async def test_after_a_transfer_the_same_round_waits_for_the_new_leader_and_goes_on() -> None:
    # Found by the drain benchmark: after moving leadership off a draining
    # agent, the next lookup ran into the election, the round gave up, and the
    # draining replica was removed one reconcile interval (5 s) later.
    g = FakeGroup(["a", "b", "c", "d"], leader="a", election_lookups=3)
    moves: list[str] = []
    rec = Reconciler(g.call, g.find_leader, lambda: 2, lambda _g, step: moves.append(step))
    plan = Plan("g", "counter", ("b", "c", "d"), (), "b")
    assert await rec.converge(plan) is True
    assert moves == ["leader -> b", "remove a"]
    assert g.members == ["b", "c", "d"]
