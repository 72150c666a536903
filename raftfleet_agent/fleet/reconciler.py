"""Converge one group's replicas to their desired placement, make-before-break.

One membership change at a time (the core refuses a second one anyway):
1. a desired agent without a replica gets an empty one, added as a learner;
2. a learner on a desired agent is promoted once it caught up;
3. leadership moves to the desired leader;
4. a replica on an agent that should not hold one is removed (never the
   leader: leadership moves first; and the core refuses a removal that would
   leave fewer healthy voters than a quorum).
Every step is a call to the agent of the group's current leader; the loop
re-reads the group's membership after each step, so it works from what the
leader actually has, not from what it asked for.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

import attrs
import trio

from raftfleet_agent.host.rpc import RpcError

logger = logging.getLogger("raftfleet.reconciler")

Call = Callable[[str, str, dict], Awaitable[object]]

DEFERRED = ""  # _step: nothing to do now, but the plan is not met (a leadership grace)

WAIT_CODES = frozenset(
    {
        "change_in_progress",
        "not_ready",
        "learner_behind",
        "learner_unresponsive",
        "transfer_in_progress",
        "proposal_dropped",
        "timeout",
        "unavailable",
        "not_leader",
    }
)


@attrs.frozen
class Member:
    agent: str
    replica: tuple[str, int]
    role: str  # leader | follower | learner
    match_index: int | None
    contact_ticks: int | None = None  # ticks since the leader last heard from it

    @property
    def voter(self) -> bool:
        return self.role != "learner"


@attrs.frozen
class Plan:
    """What a group should look like: voters (first = desired leader) and learners."""

    group: str
    data_type: str
    voters: tuple[str, ...]
    learners: tuple[str, ...] = ()
    leader: str | None = None  # None: any desired voter may lead

    @property
    def agents(self) -> frozenset[str]:
        return frozenset(self.voters) | frozenset(self.learners)


def parse_members(status: dict) -> list[Member]:
    out = []
    for m in status.get("members", []):
        rid = m.get("replica_id")
        if not isinstance(rid, list) or len(rid) != 2:
            continue
        out.append(
            Member(
                str(m["agent"]),
                (str(rid[0]), int(rid[1])),
                str(m["role"]),
                m.get("match_index"),
                m.get("contact_ticks"),
            )
        )
    return out


class Reconciler:
    """Runs convergence steps for one group through peer calls.

    `call(agent, op, args)` calls a peer op (or runs it locally for this
    agent); `new_replica_n()` hands out fresh replica numbers; `on_move`
    counts completed moves for status and drain progress.
    """

    def __init__(
        self,
        call: Call,
        find_leader: Callable[[str], Awaitable[str | None]],
        new_replica_n: Callable[[], int],
        on_move: Callable[[str, str], None],
        reachable: Callable[[str], bool] = lambda _agent: True,
        stale_ticks: int = 30,
        leader_grace_s: float = 15.0,
    ) -> None:
        self._reachable = reachable
        self._stale_ticks = stale_ticks
        self._leader_grace_s = leader_grace_s
        self._call = call
        self._find_leader = find_leader
        self._new_n = new_replica_n
        self._on_move = on_move

    async def converge(
        self, plan: Plan, max_steps: int = 40, still_ours: Callable[[], bool] | None = None
    ) -> bool:
        """Step until the group matches the plan (True) or no progress is possible now.

        `still_ours()`, asked before every step, stops a plan whose author is
        no longer the one to make it (the cluster-state group's leader).
        """
        for _ in range(max_steps):
            if still_ours is not None and not still_ours():
                return False
            leader = await self._find_leader(plan.group)
            if leader is None:
                return False
            try:
                status = await self._call(leader, "replica_status", {"group": plan.group})
            except RpcError:
                return False
            if not isinstance(status, dict) or status.get("leader") != leader:
                await trio.sleep(0.1)
                continue
            try:
                step = await self._step(
                    plan, leader, parse_members(status), float(status.get("leader_s") or 0)
                )
            except RpcError as e:
                if e.code not in WAIT_CODES:
                    logger.info("%s: reconcile stopped: %s", plan.group, e)
                    return False
                await trio.sleep(0.1)
                continue
            if step is None:
                return True
            if step == DEFERRED:
                return False  # look again later: not settled
            self._on_move(plan.group, step)
        return False

    async def _step(
        self, plan: Plan, leader: str, members: list[Member], leader_s: float = 0.0
    ) -> str | None:
        by_agent = {m.agent: m for m in members}
        lost = await self._lost_member(plan.group, leader, members)
        if lost is not None:
            # Its agent is up but no longer holds this replica (a wiped data dir):
            # nothing to break before making, remove it so a fresh one is added.
            await self._change(leader, plan.group, "remove", lost.replica)
            return f"remove lost replica on {lost.agent}"
        # Agents that cannot be reached now are left for a later round (or purge).
        for agent in (*plan.voters, *plan.learners):
            if agent not in by_agent and self._reachable(agent):
                await self._add_learner(plan, leader, agent)
                return f"add {agent}"
        for m in members:
            if m.role == "learner" and m.agent in plan.voters:
                await self._change(leader, plan.group, "promote", m.replica)
                return f"promote {m.agent}"
        deferred = False
        want = plan.leader
        if want is None and leader not in plan.voters:
            want = plan.voters[0]
        elif leader in plan.voters and leader_s < self._leader_grace_s:
            # A desired voter leads, just not the preferred one: leave a recent
            # leadership alone for a while (an operator's transfer, a failover)
            # instead of moving it at once; leaders drift back afterwards.
            want = None
            deferred = True
        if (
            want is not None
            and want != leader
            and by_agent.get(want) is not None
            and by_agent[want].voter
        ):
            await self._transfer(plan.group, leader, want)
            return f"leader -> {want}"
        # Make before break: a voter leaves only once every desired voter is
        # in. A desired agent that cannot be reached now was skipped above;
        # removing anyway would shrink the group below its size (found by the
        # fault campaign: 3 -> 2 voters, then one wiped disk lost the majority).
        complete = all(a in by_agent and by_agent[a].voter for a in plan.voters)
        for m in members:
            if m.agent not in plan.agents and m.agent != leader and (complete or not m.voter):
                await self._change(leader, plan.group, "remove", m.replica)
                return f"remove {m.agent}"
        for m in members:
            if complete and m.voter and m.agent in plan.learners and m.agent != leader:
                # A voter that should only learn (the cluster group shrinking),
                # once every desired voter is in: with one of those missing (an
                # agent down, not yet purged) this shrank the cluster-state group
                # to two voters, and one wiped disk later it had no majority
                # (fault campaign, seed 7815).
                await self._change(leader, plan.group, "remove", m.replica)
                return f"remove {m.agent}"
        return DEFERRED if deferred else None

    async def _lost_member(self, group: str, leader: str, members: list[Member]) -> Member | None:
        """A member the leader has not heard from for long, whose reachable agent
        says it does not host that replica (it was wiped and came back empty)."""
        for m in members:
            silent = m.contact_ticks is None or m.contact_ticks > self._stale_ticks
            if m.agent == leader or not silent or not self._reachable(m.agent):
                continue
            try:
                there = await self._call(m.agent, "replica_status", {"group": group})
            except RpcError as e:
                if e.code == "unknown_group":
                    return m
                continue
            if isinstance(there, dict) and tuple(there.get("replica_id") or ()) != m.replica:
                return m
        return None

    async def _add_learner(self, plan: Plan, leader: str, agent: str) -> None:
        rid = [agent, self._new_n()]
        try:
            await self._call(
                agent,
                "host_replica",
                {"group": plan.group, "type": plan.data_type, "replica": rid, "config": None},
            )
        except RpcError as e:
            if e.code != "already_exists":
                raise
            # A replica of an old membership (discarded), or one our plan is
            # too old to know about (left alone): try again next step.
            await self._drop_if_stale(plan.group, leader, agent, e.details.get("replica"))
            raise RpcError(
                "unavailable", f"{agent} already hosts a replica of {plan.group}"
            ) from None
        await self._change(leader, plan.group, "add_learner", tuple(rid))

    async def _drop_if_stale(self, group: str, leader: str, agent: str, existing: object) -> None:
        """Discard `existing`, the replica `agent` hosts, unless the group counts it.

        The membership this step was planned from may be older than the
        group's: another agent's reconciler (one whose leadership or placement
        view just ended) may have added that very replica since, and even
        promoted it. Dropping it then is a wiped voter, and two of those cost
        the cluster-state group its majority for good (fault campaign, seed
        7404). So the leader's membership is read again here, from a leader
        that holds its lease (no other can have been elected meanwhile), and
        the drop names the replica, so that a newer one is never dropped.
        """
        if not isinstance(existing, list) or len(existing) != 2:
            return  # not named: its agent's own orphan check will deal with it
        status = await self._call(leader, "replica_status", {"group": group})
        if not isinstance(status, dict) or status.get("leader") != leader:
            return
        members = parse_members(status)
        voters = [m for m in members if m.role != "learner"]
        sole = len(voters) == 1 and voters[0].agent == leader  # holds no lease, needs none
        if not (status.get("lease_valid") or sole):
            return  # a leader without a lease may be a deposed one that does not know yet
        if tuple(existing) in {m.replica for m in members}:
            return
        await self._call(agent, "drop_replica", {"group": group, "replica": existing})

    async def _change(self, leader: str, group: str, op: str, replica: tuple[str, int]) -> None:
        await self._call(
            leader, "change_membership", {"group": group, "op": op, "replica": list(replica)}
        )

    async def _transfer(self, group: str, leader: str, target: str) -> None:
        await self._call(leader, "transfer", {"group": group, "agent": target})
        # Until a new leader is known, not just until the old one stops leading:
        # the next step runs into the election otherwise, and the round gives
        # up on this group until the next interval (a drain took 5 s longer).
        with trio.move_on_after(3):
            while await self._find_leader(group) in (leader, None):  # noqa: ASYNC110 - remote state
                await trio.sleep(0.05)
