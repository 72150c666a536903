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


class CrowdedGroup:
    """Agent "d" already hosts a replica ("d", 7) of the group when asked to host another.

    `members_now` is what the leader's membership holds by the time the
    reconciler looks again; `members_planned` what its step was planned from.
    """

    def __init__(
        self, members_planned: list[str], members_now: list[str], lease: bool = True
    ) -> None:
        self.views = [members_planned, members_now]
        self.lease = lease
        self.calls: list[tuple[str, str, dict]] = []

    async def find_leader(self, _group: str) -> str:
        return "a"

    async def call(self, agent: str, op: str, args: dict) -> object:
        from raftfleet_agent.host.rpc import RpcError

        self.calls.append((agent, op, args))
        if op == "replica_status":
            members = self.views[0] if len(self.views) == 1 else self.views.pop(0)
            return {
                "leader": "a",
                "leader_s": 60.0,
                "lease_valid": self.lease,
                "members": [
                    {"agent": m, "replica_id": [m, 7 if m == "d" else 1], "role": "follower",
                     "contact_ticks": 0}
                    for m in members
                ],
            }  # fmt: skip
        if op == "host_replica":
            raise RpcError("already_exists", "d hosts g as d/7", {"replica": ["d", 7]})
        if op == "drop_replica":
            return True
        raise AssertionError(op)


async def _drops(g: CrowdedGroup, agents: tuple[str, ...], max_steps: int) -> tuple[bool, list]:
    """Converge a plan over `agents` (led by "a"); (settled, drop_replica calls)."""
    rec = Reconciler(g.call, g.find_leader, lambda: 9, lambda _g, _s: None)
    settled = await rec.converge(Plan("g", "counter", agents, (), "a"), max_steps=max_steps)
    return settled, [c for c in g.calls if c[1] == "drop_replica"]


DROP_D7 = [("d", "drop_replica", {"group": "g", "replica": ["d", 7]})]


async def test_a_replica_the_group_counts_is_not_dropped_for_a_stale_plan() -> None:
    # Seed 7404: a reconciler planning from an older membership asked "d" to
    # host a new replica, heard "already exists", and dropped the one there,
    # a voter promoted a moment before by another reconciler.
    g = CrowdedGroup(["a", "b", "c"], ["a", "b", "c", "d"])
    assert await _drops(g, ("a", "b", "c", "d"), 3) == (True, [])


async def test_a_replica_the_group_does_not_count_is_dropped_by_name() -> None:
    g = CrowdedGroup(["a", "b", "c"], ["a", "b", "c"])
    assert await _drops(g, ("a", "b", "c", "d"), 1) == (False, DROP_D7)


async def test_a_leader_without_a_lease_drops_nothing() -> None:
    # It may have been deposed without knowing it: its membership may be old.
    g = CrowdedGroup(["a", "b", "c"], ["a", "b", "c"], lease=False)
    assert await _drops(g, ("a", "b", "c", "d"), 1) == (False, [])


async def test_a_sole_voter_needs_no_lease_to_drop() -> None:
    # A one-replica group (or one just recovered) has no lease to show: its
    # leader cannot have been deposed by an election it took no part in.
    g = CrowdedGroup(["a"], ["a"], lease=False)
    assert await _drops(g, ("a", "d"), 1) == (False, DROP_D7)


async def test_a_plan_that_is_no_longer_ours_stops_before_its_next_step() -> None:
    g = FakeGroup(["a", "b", "c", "d"], leader="a", election_lookups=0)
    moves: list[str] = []
    ours = iter([True])  # ours for the first step only
    rec = Reconciler(g.call, g.find_leader, lambda: 2, lambda _g, step: moves.append(step))
    plan = Plan("g", "counter", ("b", "c", "d"), (), "b")
    assert await rec.converge(plan, still_ours=lambda: next(ours, False)) is False
    assert moves == ["leader -> b"]  # the removal of "a" is left to the new owner
    assert g.members == ["a", "b", "c", "d"]


async def test_voters_become_learners_only_once_every_desired_voter_is_in() -> None:
    # Seed 7815: the cluster-state group's plan wanted voters {a, b, e} and
    # learners {c, d}; e was down, so it could not be added, yet c and d were
    # removed as voters at once: two voters left, and a wiped disk took the
    # majority. Make before break holds here too.
    g = FakeGroup(["a", "b", "c", "d"], leader="a", election_lookups=0)
    moves: list[str] = []
    rec = Reconciler(
        g.call, g.find_leader, lambda: 2, lambda _g, step: moves.append(step),
        reachable=lambda agent: agent != "e",
    )  # fmt: skip
    plan = Plan("__cluster__", "cluster", ("a", "b", "e"), ("c", "d"), "a")
    await rec.converge(plan, max_steps=5)
    assert moves == [] and g.members == ["a", "b", "c", "d"]
