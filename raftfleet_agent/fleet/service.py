"""The fleet on one agent: cluster state, activation, reconciliation, purge, drain.

- The cluster state lives in the built-in group `__cluster__`. The agent that
  founds a cluster (started without --join, knowing no peer) bootstraps it as
  a one-voter group; nobody else ever bootstraps one, so two agents started
  together cannot end up with two cluster states. Its leader's agent keeps
  up to five voters spread across zones and a learner on every other active
  agent, so every active agent reads placement from its own applied replica.
- Every agent registers itself (name, address, node id) and, with --zone,
  activates itself once per start.
- The reconciler of each agent converges the groups whose desired leader it
  is, on every change of the cluster state and every `reconcile_interval_s`,
  with at most `max_moves_in_flight` groups moving at once.
- The cluster leader's agent purges agents unreachable for longer than the
  purge window from placement; their replicas are rebuilt elsewhere. Data is
  never deleted because replicas look dead. "Unreachable" is the cluster's
  word, not one agent's: before purging (or forgetting) an agent, the other
  agents we reach are asked whether they reach it, so a cut between one
  agent and the cluster leader's never purges a live agent.
- Draining = deactivated: the agent is out of placement, reconcilers move its
  replicas away, and once it hosts nothing it marks itself drained.
"""

from __future__ import annotations

import logging
import time
import zlib
from typing import TYPE_CHECKING, Any

import trio

from raftfleet_agent.fleet import capacity
from raftfleet_agent.fleet import cluster_state as cs
from raftfleet_agent.fleet.plans import PlanBook
from raftfleet_agent.fleet.reconciler import Plan, Reconciler
from raftfleet_agent.fleet.router import RouteError
from raftfleet_agent.host.rpc import RpcError
from raftfleet_agent.log_throttle import Throttle
from raftfleet_agent.raft.types import Config, ReplicaId
from raftfleet_agent.statemachine.loader import register_internal_type

if TYPE_CHECKING:
    from raftfleet_agent.agent import Agent
    from raftfleet_agent.host.replica import Replica

logger = logging.getLogger("raftfleet.fleet")

# The cluster-state group's data type, known to the loader as "cluster".
register_internal_type("cluster", cs.ClusterState)

CLUSTER = "__cluster__"
FULL_SWEEP_S = 60.0  # how often every group is looked at again, settled or not
# The sweep goes one slice of the groups at a time: all 3,300 groups an agent
# leads at 10,000 groups, re-checked at once, made a visible CPU bump a minute.
SWEEP_SLICES = 12
ROUND_GAP_S = 0.2  # rounds triggered by changes come at most this often
STATE_POLL_S = 0.2
# An agent with no applied cluster-state replica reads the state remotely
# (a whole snapshot) every round only while draining; otherwise this often.
REMOTE_STATE_EVERY_S = 10.0
UNREACHABLE_LOG_EVERY_S = 30.0  # a round that cannot read the cluster state says so this often
# A fresh replica not in its group's membership after this long was never added
# (its move failed between creating it and adding it): discard it.
FRESH_REPLICA_GRACE_S = 20.0
# This agent acts on its own cluster-state replica's view; one removed without
# hearing of it still looks followed and is frozen. Ask its leader this often.
CLUSTER_CHECK_EVERY_S = 30.0
# Any other replica removed while its leader's notices were all lost looks
# followed too, and would linger (rows, memory, a replica in every listing).
# Followed replicas are checked one at a time in name order, one this often
# (at most ORPHAN_SWEEP_MAX a round): 10,000 replicas in about 14 h, for one
# call per round of an idle agent.
ORPHAN_SWEEP_EVERY_S = 5.0
ORPHAN_SWEEP_MAX = 5
ORPHAN_SWEEP_BUDGET_S = 2.0  # the most a round waits for those checks
# The sweep skips leaders and fresh replicas without a call; this many names
# at most are looked at per check due, so that an agent leading nearly all of
# its replicas does not walk all of them every round.
ORPHAN_SWEEP_LOOK_PER_PICK = 20
# Which replicas may be orphans (no leader, fresh, outside their own
# configuration) is read from every replica this often; in between, only from
# those awake. A quiescent follower has a leader and is in its configuration
# (it went quiet on its leader's word, caught up), so the awake ones are where
# new suspects appear; reading all 10,000 replicas of an idle agent every round
# was a third of its CPU. Every round while draining.
ORPHAN_SCAN_EVERY_S = 30.0


def _askable(r: Replica, now: float) -> bool:
    """Neither leading nor fresh (the move that made it may be adding it now)."""
    m = r.member
    return not m.is_leader and (m.ever_member or now - r.created_s >= FRESH_REPLICA_GRACE_S)


def _may_be_orphan(r: Replica, draining: bool, now: float) -> bool:
    """Worth asking the leader whether `r` is still (or ever was) in its group."""
    if not _askable(r, now):
        return False
    m = r.member
    # Not in its own latest configuration: its removal was under way when it
    # lost touch, and the leader's notices may all have been lost.
    cfg = m.config  # not cfg.members: that builds a set, per replica and round
    return (
        not m.ever_member  # fresh past the grace: never added
        or draining
        or m.leader is None
        or (m.id not in cfg.voters and m.id not in cfg.learners)
    )


def now_ms() -> int:
    return int(time.time() * 1000)


class FleetError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def _checked(st: dict, command: list) -> list:
    """`command` (deactivate or purge) with `keep_replicas`, checked again in the
    replicated state, when every agent's code applies that form."""
    if cs.cluster_level(st) >= cs.KEEP_REPLICAS_LEVEL:
        return [*command, True]
    return command


def sweep_slice_of(group: str) -> int:
    """Which slice of the full sweep re-checks `group` (the same on every agent)."""
    return zlib.crc32(group.encode()) % SWEEP_SLICES


NO_ROOM = "no room: activate another agent"


def _seen_alive(reach: list[str], unasked: list[str]) -> str | None:
    """Why an agent may not be purged yet, from what the other agents said."""
    if reach:
        return f"{', '.join(reach)} still reach it: a network cut, not a death"
    if unasked:
        return f"could not ask {', '.join(unasked)} whether they reach it"
    return None


def _reach_predicate(
    here: capacity.Reachable, views: dict[str, tuple[list[str], list[str]]]
) -> capacity.Reachable:
    """Reached from here, or by an agent we reach (`views`: what they said)."""
    elsewhere = {a for a, (reach, _unasked) in views.items() if reach}
    return lambda agent: here(agent) or agent in elsewhere


def _sweep_slice_now() -> int:
    return int(time.monotonic() / (FULL_SWEEP_S / SWEEP_SLICES)) % SWEEP_SLICES


class FleetService:
    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.name = agent.config.name
        self.host = agent.host
        self.activating = False
        self.moves_in_flight = 0
        self.moves_done = 0
        self._changed = trio.Event()
        self._seen_version = -1
        self._remote_state: dict | None = None
        self._remote_read_s = float("-inf")  # when _remote_state was read
        self._unreachable_since: dict[str, float] = {}
        self._started = time.monotonic()
        self.reconciler: Reconciler | None = None
        self._converging: set[str] = set()
        # Idle clusters must cost nothing: a group found converged is not looked
        # at again until its plan changes, the epoch changes (the layout of
        # active agents, a peer connecting or going away) or the full sweep.
        self._epoch = 0
        self._settled: dict[str, tuple[int, Plan]] = {}
        self._plan_book = PlanBook(self.name, CLUSTER)
        self._layout_changes = 0
        self._sweep_slice = _sweep_slice_now()
        self._unreachable_said = float("-inf")
        self._cluster_checked_s = time.monotonic()
        self._orphan_swept_s = time.monotonic()
        self._orphan_scanned_s = float("-inf")  # every replica read: see ORPHAN_SCAN_EVERY_S
        # The names the sweep has still to go through this pass, last first.
        self._sweep_queue: list[str] = []
        # A view that lags (or, before the cluster-state replica was checked,
        # one frozen) repeats these every round: say each now and then.
        self._say_drained = Throttle(logger, UNREACHABLE_LOG_EVERY_S)
        self._say_not_drained = Throttle(logger, UNREACHABLE_LOG_EVERY_S)
        self._held_said: dict[str, float] = {}  # agent -> when we last said its purge is held
        # Agents past the purge window whose purge waits, and why (on the
        # cluster-state leader's agent; empty elsewhere): status and metrics.
        self.purge_holds: dict[str, str] = {}

    # ------------------------------------------------------------ cluster state

    def local_state(self) -> dict[str, Any] | None:
        r = self.host.replicas.get(CLUSTER)
        if r is None or r.applier.applied_index == 0:
            return None
        return r.applier.state  # type: ignore[no-any-return]

    async def state(self, *, linearizable: bool = False, fallback: bool = True) -> dict[str, Any]:
        """The cluster state.

        By default our own applied replica's when we hold one that follows a
        leader (what placement decisions use: one consistent applied state).
        `linearizable` reads through the leader instead, so an operator who
        just changed something sees the change from any agent. When the leader
        cannot be read, the copy held here (or read before) stands in for it,
        unless `fallback` is False: then FleetError("unavailable"), so a caller
        that must say whether its answer is fresh (status, nodes) can.
        """
        local = self.local_state()
        mine = self.host.replicas.get(CLUSTER)
        followed = mine is not None and (
            mine.member.is_leader or (not linearizable and mine.member.leader is not None)
        )
        if local is not None and followed:
            return local
        router = self.agent.router
        assert router is not None
        try:
            state, _ = await router.query(CLUSTER, "snapshot", 1.0, 2, stale=False)
        except RouteError as e:
            err = FleetError("unavailable", f"cluster state unreachable: {e}")
            if not fallback:
                raise err from None
            if local is not None:
                return local
            if self._remote_state is not None:
                self._say_unreachable(err, "using the copy read before")
                return self._remote_state
            raise err from None
        self._remote_state = state  # type: ignore[assignment]
        self._remote_read_s = time.monotonic()
        return state  # type: ignore[return-value]

    async def propose(self, arg: list, timeout_s: float = 2.0) -> object:
        router = self.agent.router
        assert router is not None
        try:
            reply, _ = await router.command(CLUSTER, arg, None, timeout_s, 5)
        except RouteError as e:
            code = cs.error_code(str(e)) if e.code == "invalid_argument" else None
            if code is not None:
                raise FleetError(code, str(e).split(": ", 1)[-1]) from None
            raise FleetError(
                "unavailable" if e.code in ("no_leader", "unknown_group") else e.code,
                f"cluster state: {e}",
            ) from None
        self.poke()
        return reply

    def poke(self) -> None:
        self._changed.set()

    # ------------------------------------------------------------ run

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        self.reconciler = Reconciler(
            self._call, self._leader_of, self.agent.new_replica_id_n, self._moved, self._reachable
        )
        await self._maybe_found()
        async with trio.open_nursery() as n:
            n.start_soon(self._register_loop)
            n.start_soon(self._watch_state)
            n.start_soon(self._reconcile_loop)
            task_status.started()

    async def _maybe_found(self) -> None:
        c = self.agent.config
        if c.join or self.agent.peers.addresses or CLUSTER in self.host.replicas:
            return
        rid = ReplicaId(self.name, self.agent.new_replica_id_n())
        await self.host.create_replica(CLUSTER, "cluster", rid, Config(frozenset({rid})))
        self.host.campaign(CLUSTER)
        logger.info(
            "founded cluster %s; this agent holds its cluster state", self.agent.identity.cluster_id
        )

    async def _register_loop(self) -> None:
        """Make sure the cluster state knows us (and our address), then activate with --zone."""
        zone, activated = self.agent.config.zone, False
        while True:
            try:
                st = await self.state()
                me = st["agents"].get(self.name)
                if self._needs_register(me):
                    await self._register()
                    continue
                if zone and not activated:
                    activated = True
                    if me["state"] == "inactive":
                        await self.activate(zone)
                await trio.sleep(5)
            except FleetError as e:
                logger.info("register: %s", e)  # rare; a stuck agent must say why
                await trio.sleep(0.5)

    def _needs_register(self, me: dict | None) -> bool:
        return (
            me is None
            or me["address"] != str(self.agent.config.advertise)
            or me.get("node_id") != self.agent.identity.node_id
            or me.get("speaks", 1) != cs.LEVEL  # upgraded or rolled back
            or me["state"] == "purged"
        )

    async def _register(self) -> None:
        node, addr = self.agent.identity.node_id, str(self.agent.config.advertise)
        await self.propose(["register", self.name, addr, node, now_ms(), cs.LEVEL])

    async def _watch_state(self) -> None:
        while True:
            st = self.local_state()
            if st is not None and st.get("version") != self._seen_version:
                self._seen_version = st.get("version", -1)
                self._changed.set()
            await trio.sleep(STATE_POLL_S)

    # ------------------------------------------------------------ activation

    async def activate(self, zone: str) -> dict:
        self.activating = True
        try:
            if self._needs_register((await self.state())["agents"].get(self.name)):
                await self._register()
            await self.propose(["activate", self.name, zone, now_ms()])
        finally:
            self.activating = False
        return {"name": self.name, "zone": zone, "state": "active"}

    async def deactivate(self, *, force: bool = False) -> dict:
        """Leave placement; refused (too_few_agents) if a group would lose a replica.

        `force` sends the unchecked form, which is also what entries written
        before the check look like.
        """
        command = ["deactivate", self.name, now_ms()]
        if not force:
            st = await self.state()
            self._refuse_if_unreachable_capacity(st, await self.cluster_reach(st))
            if cs.cluster_level(st) < cs.KEEP_REPLICAS_LEVEL:
                # Some agent's code would not apply the checked form: check
                # here (racy, but the best an older cluster allows).
                self._refuse_if_groups_shrink(st)
            command = _checked(st, command)
        await self.propose(command)
        self._remote_read_s = float("-inf")  # draining now: the next round reads the state
        return {"name": self.name, "state": "draining"}

    def _refuse_if_groups_shrink(self, st: dict) -> None:
        text = capacity.shrink_on_leave(st, self.name)
        if text is not None:
            raise FleetError(
                cs.TOO_FEW_AGENTS, f"{text}; activate another agent first, or force it"
            )

    def _refuse_if_unreachable_capacity(self, st: dict, reachable: capacity.Reachable) -> None:
        text = capacity.unreachable_room(st, self.name, reachable)
        if text is not None:
            then = "bring them back or activate another agent first, or force it"
            raise FleetError(cs.TOO_FEW_AGENTS, f"{text}; {then}")

    async def my_state(self) -> tuple[str, str | None]:
        """("inactive"|"activating"|"active"|"draining", zone) of this agent."""
        try:
            st = await self.state()
        except FleetError:
            st = None
        return self.my_state_in(st)

    def last_known_state(self) -> dict[str, Any] | None:
        """The cluster state as last seen here (our replica's, or the last read), no waiting."""
        return self.local_state() or self._remote_state

    def my_state_in(self, st: dict[str, Any] | None) -> tuple[str, str | None]:
        """This agent's (state, zone) as `st` records them (None: not known)."""
        if st is None:
            return ("activating" if self.activating else "inactive"), self.agent.config.zone
        me = st["agents"].get(self.name) or {}
        state = me.get("state", "inactive")
        if state == "purged":
            state = "inactive"
        if state == "inactive" and self.activating:
            state = "activating"
        return state, me.get("zone")

    def local_groups(self) -> list[str]:
        """The groups with a replica here, sorted, the cluster-state group excluded."""
        return sorted(g for g in self.host.replicas if g != CLUSTER)

    def local_counts(self) -> tuple[int, int]:
        """(replicas, leaders) hosted here, the cluster-state replica excluded."""
        reps = [r for g, r in self.host.replicas.items() if g != CLUSTER]
        return len(reps), sum(1 for r in reps if r.member.is_leader)

    # ------------------------------------------------------------ reconciling

    def _moved(self, group: str, step: str) -> None:
        self.moves_done += 1
        logger.info("%s: %s", group, step)

    async def _leader_of(self, group: str) -> str | None:
        r = self.host.replicas.get(group)
        if r is not None and r.member.is_leader:
            return self.name  # the usual case for a plan: no need to ask every peer
        router = self.agent.router
        assert router is not None
        agent, _term = await router.find_leader(group, 1.0)
        return agent

    async def _call(self, agent: str, op: str, args: dict) -> object:
        ops = self.agent.ops
        assert ops is not None
        return await ops.call_on(agent, op, args)

    async def _reconcile_loop(self) -> None:
        """Start converging groups on every change and every interval.

        A round never waits for slow moves: each group converges in its own
        task (at most one per group, at most `max_moves_in_flight` at once),
        so purge, cleanup and drain checks keep their pace.
        """
        interval = self.agent.config.reconcile_interval_s
        limit = trio.CapacityLimiter(max(1, self.agent.config.max_moves_in_flight))
        async with trio.open_nursery() as moves:
            while True:
                with trio.move_on_after(interval):
                    await self._changed.wait()
                # Changes come in bursts (a create is a cluster-state change):
                # one round covers every change of the last ROUND_GAP_S.
                await trio.sleep(ROUND_GAP_S)
                self._changed = trio.Event()
                try:
                    await self.reconcile_once(moves, limit)
                except FleetError as e:
                    logger.debug("reconcile: %s", e)
                except Exception:
                    logger.exception("reconcile round failed")

    async def reconcile_once(self, moves: trio.Nursery, limit: trio.CapacityLimiter) -> None:
        st = self.local_state()
        if st is None:
            # No applied cluster-state replica here (none, or a fresh one never
            # fed): nothing to plan. A draining agent loses that replica early,
            # yet its drain must still finish, and a replica removed while it
            # was cut off (one that never hears of it) would hold the drain
            # forever: check them against their groups first. (A fresh, empty
            # cluster-state replica, whose add was cut short by the drain, kept
            # a wiped agent draining for good: fault campaign, seed 7605.)
            if not self._remote_round_due():
                return
            try:
                remote = await self.state()
            except FleetError as e:
                self._say_unreachable(e)
                return
            await self._discard_orphans(remote)
            await self._maybe_drained(remote)
            return
        due = _sweep_slice_now()
        if due != self._sweep_slice:
            # Now and then, look at every group again anyway: a slice at a
            # time, and every slice passed since the last round.
            passed = set()
            while self._sweep_slice != due:
                self._sweep_slice = (self._sweep_slice + 1) % SWEEP_SLICES
                passed.add(self._sweep_slice)
            for g in [g for g in self._settled if sweep_slice_of(g) in passed]:
                del self._settled[g]
        for plan in self._cached_plans(st):
            if plan.group in self._converging or self._settled.get(plan.group) == (
                self._epoch,
                plan,
            ):
                continue
            self._converging.add(plan.group)
            moves.start_soon(self._converge, plan, limit, self._epoch)
        async with trio.open_nursery() as n:
            n.start_soon(self._cleanup_removed, st)
            n.start_soon(self._maybe_drained, st)
            n.start_soon(self._maybe_purge, st)
            n.start_soon(self._discard_orphans, st)

    def _remote_round_due(self) -> bool:
        """Read the cluster state remotely this round? Always while draining.

        Only a draining agent has work without a local replica (finishing its
        drain); any other would pull a snapshot of every group each round,
        sizeable at 10,000 groups, for the seconds a fresh learner needs.
        """
        last = self._remote_state
        if last is None or last["agents"].get(self.name, {}).get("state") == "draining":
            return True
        return time.monotonic() - self._remote_read_s >= REMOTE_STATE_EVERY_S

    def _say_unreachable(self, e: FleetError, then: str = "") -> None:
        # A drain that cannot finish must say why, but not every round.
        now = time.monotonic()
        if now - self._unreachable_said >= UNREACHABLE_LOG_EVERY_S:
            self._unreachable_said = now
            logger.info("%s%s", e, f"; {then}" if then else "")

    async def _discard_orphans(self, st: dict) -> None:
        """Drop local replicas that their group removed, or never added.

        A removed replica learns it only from a leader that hears from it; one
        whose old configuration names no current leader can wait forever (and
        keep a drain from finishing). So replicas without a leader, and every
        replica of a draining agent, are checked against their leader's
        membership. A fresh replica is made by a move just before the leader
        adds it as a learner; when that step fails (the leader changed, links
        were cut) and placement then looks elsewhere, nobody adds it, and on a
        draining agent it held the drain forever (fault campaign, seed 7218).
        So one still fresh after FRESH_REPLICA_GRACE_S is checked the same way.

        The cluster-state replica too, and every CLUSTER_CHECK_EVERY_S even
        when it looks followed: a removed one whose notices were lost keeps
        its leader, and this agent then acts on a frozen view (seed 9209: it
        stayed "draining" and proposed "drained" every round for minutes).
        Every other replica is checked too, a few at a time (`_sweep_picks`):
        a removed one that lost every notice would otherwise linger for good.
        """
        me = st["agents"].get(self.name, {})
        draining = me.get("state") == "draining"
        now = time.monotonic()
        checked = set()
        for g, r in self._orphan_suspects(draining, now):
            if self._worth_checking(g, r, draining, now):
                checked.add(g)
                await self._check_membership(g, r, now)
        # Routine checks of replicas that look fine: a leader that does not
        # answer (a stopped agent) must not hold the round up for long.
        with trio.move_on_after(ORPHAN_SWEEP_BUDGET_S):
            for g in sorted(self._sweep_picks(now) - checked):
                r = self.host.replicas.get(g)
                if r is not None:
                    await self._check_membership(g, r, now)

    def _orphan_suspects(self, draining: bool, now: float) -> list[tuple[str, Replica]]:
        """The replicas `_worth_checking` looks at this round (ORPHAN_SCAN_EVERY_S)."""
        replicas = self.host.replicas
        if draining or now - self._orphan_scanned_s >= ORPHAN_SCAN_EVERY_S:
            self._orphan_scanned_s = now
            return list(replicas.items())
        names = set(self.host.awake_groups())
        names.add(CLUSTER)  # its own interval (CLUSTER_CHECK_EVERY_S), quiescent or not
        return [(g, r) for g in sorted(names) if (r := replicas.get(g)) is not None]

    async def _check_membership(self, g: str, r: Replica, now: float) -> None:
        """Drop `r` if its group's leader does not list it (see _discard_orphans)."""
        m = r.member
        leader = await self._leader_of(g)
        if leader is None or leader == self.name:
            return
        try:
            status = await self._call(leader, "replica_status", {"group": g})
        except RpcError:
            return
        if not isinstance(status, dict) or status.get("leader") != leader:
            return
        if not isinstance(status.get("term"), int) or status["term"] < m.term:
            return  # a leader behind us may not know the configuration that added us
        ids = {tuple(x.get("replica_id") or ()) for x in status.get("members", [])}
        if (m.id.agent, m.id.n) not in ids and self.host.replicas.get(g) is r:
            why = "removed from the group while we were away"
            if not m.ever_member:
                why = f"never added to the group in {now - r.created_s:.0f} s"
            logger.info("%s: discarding %s, %s", g, m.id, why)
            with trio.CancelScope(shield=True):  # a drop is never left half done
                await self.host.drop_replica(g)

    def _worth_checking(self, g: str, r: Replica, draining: bool, now: float) -> bool:
        if g != CLUSTER:
            return _may_be_orphan(r, draining, now)
        if not _askable(r, now):
            return False
        due = now - self._cluster_checked_s >= CLUSTER_CHECK_EVERY_S
        if due or _may_be_orphan(r, draining, now):
            self._cluster_checked_s = now
            return True
        return False

    def _sweep_picks(self, now: float) -> set[str]:
        """The next followed replicas (by group name, wrapping) due for a check.

        A pass goes through the names sorted at its start (a group created
        meanwhile waits for the next pass), so a round costs what it checks,
        not a walk over every replica.
        """
        passed = now - self._orphan_swept_s
        if passed < ORPHAN_SWEEP_EVERY_S:
            return set()
        due = min(ORPHAN_SWEEP_MAX, int(passed / ORPHAN_SWEEP_EVERY_S))
        self._orphan_swept_s = now
        replicas = self.host.replicas
        queue = self._sweep_queue
        picks: set[str] = set()
        refilled = False
        for _ in range(due * ORPHAN_SWEEP_LOOK_PER_PICK):
            if len(picks) == due:
                break
            if not queue:
                if refilled:
                    break  # fewer askable replicas than are due
                queue.extend(sorted((g for g in replicas if g != CLUSTER), reverse=True))
                refilled = True
                if not queue:
                    break
            g = queue.pop()
            r = replicas.get(g)
            if r is not None and _askable(r, now):
                picks.add(g)
        return picks

    def _cached_plans(self, st: dict) -> list[Plan]:
        """Placement for the groups we lead (see plans.py: incremental)."""
        cluster = self.host.replicas.get(CLUSTER)
        plans = self._plan_book.plans(st, cluster is not None and cluster.member.is_leader)
        if self._plan_book.layout_changes != self._layout_changes:
            self._layout_changes = self._plan_book.layout_changes
            self._epoch += 1  # placement may have changed: every group is looked at again
        return plans

    async def _converge(self, plan: Plan, limit: trio.CapacityLimiter, epoch: int) -> None:
        assert self.reconciler is not None
        try:
            async with limit:
                self.moves_in_flight += 1
                try:
                    # The cluster-state group's plan is its leader's to carry
                    # out: a deposed leader's steps would race the new one's.
                    mine = self._lead_cluster if plan.group == CLUSTER else None
                    if await self.reconciler.converge(plan, still_ours=mine):
                        # Nothing to do until the cluster state or a peer changes.
                        self._settled[plan.group] = (epoch, plan)
                except (RpcError, RouteError, FleetError) as e:
                    logger.debug("%s: %s", plan.group, e)
                finally:
                    self.moves_in_flight -= 1
        finally:
            self._converging.discard(plan.group)

    def _lead_cluster(self) -> bool:
        r = self.host.replicas.get(CLUSTER)
        return r is not None and r.member.is_leader

    async def _cleanup_removed(self, st: dict) -> None:
        for g, info in sorted(st.get("removed", {}).items()):
            if self.name not in info.get("pending", []):
                continue
            await self.host.drop_replica(g)
            try:
                await self.propose(["cleaned", self.name, g, now_ms(), info["generation"]])
            except FleetError as e:
                logger.debug("cleaned %s: %s", g, e)

    async def _maybe_drained(self, st: dict) -> None:
        me = st["agents"].get(self.name)
        if me is None or me["state"] != "draining":
            return
        if self.local_counts()[0] == 0:
            try:
                await self.propose(["drained", self.name, now_ms()])
                self._say_drained.info("drained: this agent hosts no replica any more")
            except FleetError as e:
                self._say_not_drained.info("drained: not yet: %s", e)  # a stuck drain says why

    def _reachable(self, agent: str) -> bool:
        return agent == self.name or self.agent.transport.is_connected(agent)

    async def reached_elsewhere(self, agent: str) -> tuple[list[str], list[str]]:
        """The other agents we reach that reach `agent`, and those we could not ask.

        Our own connection is one link: a cut between this agent and `agent`
        alone says nothing of whether `agent` is alive. An agent too old to
        know the question has no view to offer and is left out.
        """
        peers = self.agent.peers.addresses
        others = sorted(n for n in peers if n not in (self.name, agent) and self._reachable(n))
        reach: list[str] = []
        unasked: list[str] = []

        async def ask(name: str) -> None:
            try:
                answer = await self._call(name, "reaches", {"agent": agent})
            except RpcError as e:
                if e.code != "unknown_op":
                    unasked.append(name)
                return
            if isinstance(answer, dict) and answer.get("connected") is True:
                reach.append(name)

        async with trio.open_nursery() as nursery:
            for name in others:
                nursery.start_soon(ask, name)
        return sorted(reach), sorted(unasked)

    async def views_of(self, agents: list[str]) -> dict[str, tuple[list[str], list[str]]]:
        """`reached_elsewhere` for each of `agents`."""
        return {a: await self.reached_elsewhere(a) for a in agents}

    async def cluster_reach(self, st: dict) -> capacity.Reachable:
        """Who can take replicas: agents this one reaches, or one it reaches does.

        One link down between this agent and a live one must not make that
        agent count as no room.
        """
        views = await self.views_of(self._active_away(st))
        return _reach_predicate(self._reachable, views)

    def _active_away(self, st: dict) -> list[str]:
        return sorted(
            n
            for n, a in st["agents"].items()
            if a["state"] in (cs.ACTIVE, cs.DRAINING) and not self._reachable(n)
        )

    def note_peer(self, peer: str, connected: bool) -> None:
        self._epoch += 1  # a peer came or went: settled groups may need work again
        if connected:
            self._unreachable_since.pop(peer, None)
        else:
            self._unreachable_since.setdefault(peer, time.monotonic())
        self.poke()

    def unreachable(self) -> dict[str, float]:
        """Peers not connected now, with seconds since we last had them (or since start)."""
        now = time.monotonic()
        out = {}
        for name in self.agent.peers.addresses:
            if not self.agent.transport.is_connected(name):
                since = self._unreachable_since.get(name, self._started)
                out[name] = round(now - since, 1)
        return out

    @property
    def purges_held(self) -> frozenset[str]:
        return frozenset(self.purge_holds)

    async def _maybe_purge(self, st: dict) -> None:
        cluster = self.host.replicas.get(CLUSTER)
        if cluster is None or not cluster.member.is_leader:
            self.purge_holds = {}
            return
        window = self.agent.config.purge_window_s
        gone = self.unreachable()
        holds: dict[str, str] = {}
        away_all = self._active_away(st)
        due = [n for n in away_all if gone.get(n, 0) > window]
        if not due:
            self.purge_holds = holds
            return
        views = await self.views_of(away_all)
        reachable = _reach_predicate(self._reachable, views)
        for name in due:
            away = f"unreachable from here for {gone[name]:.0f} s"
            alive = _seen_alive(*views[name])
            if alive is not None:
                holds[name] = alive
                self._say_held(name, f"not purging {name} ({away}): {alive}")
                continue
            held = capacity.purge_held(st, name, reachable)
            if held is not None:
                holds[name] = NO_ROOM
                until = "it stays in placement until another agent is active"
                self._say_held(name, f"not purging {name} ({away}): {held}; {until}")
                continue
            logger.warning("purging %s: unreachable for %.0f s", name, gone[name])
            try:
                await self.propose(_checked(st, ["purge", name, now_ms()]))
            except FleetError as e:
                logger.info("purge %s: %s", name, e)
        self.purge_holds = holds

    async def forget(self, agent: str, *, force: bool = False) -> dict:
        """Purge `agent` now, on an operator's word that it is gone for good.

        What the purge window would do later (Consul's force-leave, etcd's
        member remove): its replicas are rebuilt elsewhere. Refused for an
        agent we or another agent can reach (drain it instead), and, unless
        forced, when an agent we reach could not say whether it reaches it or
        the groups would shrink for want of reachable agents.
        """
        st = await self.state()
        info = st["agents"].get(agent)
        if info is None:
            raise FleetError(cs.NOT_FOUND, f"no agent {agent!r} in this cluster")
        if agent == self.name or self._reachable(agent):
            raise FleetError(
                cs.INVALID_ARGUMENT,
                f"{agent} is reachable from this agent: drain it instead "
                "(`raftfleet drain` on it), then stop it",
            )
        if info["state"] == "purged":
            return {"name": agent, "state": "purged", "released": []}
        views = await self.views_of(sorted({*self._active_away(st), agent}))
        reach, unasked = views[agent]
        if reach:
            raise FleetError(
                cs.INVALID_ARGUMENT,
                f"{agent} is reachable from {', '.join(reach)}: it is alive, only cut off from "
                "this agent; drain it instead (`raftfleet drain` on it), then stop it",
            )
        if unasked and not force:
            raise FleetError(
                "unavailable",
                f"could not ask {', '.join(unasked)} whether they reach {agent}; "
                "retry, or force it if you know it is gone",
            )
        command = ["purge", agent, now_ms()]
        if not force:
            held = capacity.purge_held(st, agent, _reach_predicate(self._reachable, views))
            if held is not None:
                then = "activate another agent first, or force it and let those groups shrink"
                raise FleetError(cs.TOO_FEW_AGENTS, f"{held}; {then}")
            command = _checked(st, command)
        result = await self.propose(command)
        logger.warning("purged %s at an operator's request (forget)", agent)
        released = result.get("released", []) if isinstance(result, dict) else []
        return {"name": agent, "state": "purged", "released": released}

    def _say_held(self, agent: str, text: str) -> None:
        # Held every round for as long as the agent is away: say it now and then.
        now = time.monotonic()
        if now - self._held_said.get(agent, float("-inf")) >= UNREACHABLE_LOG_EVERY_S:
            self._held_said[agent] = now
            logger.warning("%s", text)
