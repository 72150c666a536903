"""What the agent does for each control request, and for each call from a peer.

Control requests arrive already validated by `control.protocol`; errors leave
as `ControlError` with a machine-readable code. Peer calls (`hello`,
`host_replica`, `drop_replica`, `campaign`, `leader`, `replica_status`,
`command`, `query`) are the agent-to-agent half of the same operations.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from functools import partial
from typing import TYPE_CHECKING, Any

import trio

from raftfleet_agent.control.protocol import ControlError
from raftfleet_agent.fast_ops import TRIED_FAST, FastPath, check_routed_args
from raftfleet_agent.fleet import cluster_state as cs
from raftfleet_agent.fleet import recovery
from raftfleet_agent.fleet.router import RouteError
from raftfleet_agent.fleet.service import CLUSTER, FleetError, now_ms
from raftfleet_agent.host.loop import ReplicaExists, UnknownGroup
from raftfleet_agent.host.rpc import PeerRpc, RpcError
from raftfleet_agent.metrics import headline
from raftfleet_agent.raft.codec import CodecError, decode_config, decode_replica, encode_config
from raftfleet_agent.raft.errors import RaftError
from raftfleet_agent.raft.membership import ConfOp
from raftfleet_agent.raft.quorum import quorum_size
from raftfleet_agent.raft.types import Config, ReplicaId
from raftfleet_agent.statemachine import DataTypeError, load_data_type
from raftfleet_agent.statemachine.loader import is_internal_type

if TYPE_CHECKING:
    from raftfleet_agent.agent import Agent
    from raftfleet_agent.control.server import Ticket

logger = logging.getLogger("raftfleet.ops")

PEER_CALL_TIMEOUT_S = 3.0
CREATE_TIMEOUT_S = 10.0
DRAIN_GROUPS_SHOWN = 10  # groups named when a drain watch times out
DRAIN_MOVES_EVERY_S = 1.0  # a drain watch asks the other agents for their moves this often
STATUS_STATE_WAIT_S = 1.0  # status waits this long for the cluster state, then says so
HEALTH_READ_S = 1.0  # GET /health: the cluster-state read must answer within this
# What `group_status` shows of each replica when the group has no leader.
_REPLICA_VIEW = (
    "reported_by",
    "role",
    "term",
    "leader",
    "quiescent",
    "last_term",
    "last_index",
    "commit_index",
)


def _already_in_a_cluster(cluster: str, address: str) -> str:
    # An agent started with no join address and no peer founds a cluster of
    # its own at once: the usual way into this message.
    return (
        f"this agent is already in cluster {cluster} (an agent started without a join "
        f"address founds its own) and {address} is in another; an agent joins one cluster, "
        f"for good: stop it, move its data directory away, and start it with --join {address} "
        f'(join = ["{address}"] in agent.toml)'
    )


class AgentOps:
    """The control handler (`handle`) and the peer-call handlers of one agent."""

    def __init__(self, agent: Agent) -> None:
        self.agent = agent
        self.host = agent.host
        self.started = time.monotonic()
        self._fast: FastPath | None = None

    def fast(self, op: str, args: dict, ticket: Ticket) -> bool:
        """The control server's fast path (commands and queries of a known leader)."""
        fast = self._fast_path()
        return fast is not None and fast.take(op, args, ticket)

    def _fast_path(self) -> FastPath | None:
        if self._fast is None and self.agent.router is not None:
            self._fast = FastPath(self.host, self.agent.router)
        return self._fast

    # ------------------------------------------------------------ control entry point

    async def handle(self, op: str, args: dict, events: Any) -> object:
        fn = getattr(self, f"op_{op}", None)
        if fn is None:
            raise ControlError("unknown_op", f"this agent does not support {op!r} yet")
        try:
            return await fn(args, events)
        except ControlError:
            raise
        except (RouteError, RpcError) as e:
            raise ControlError(e.code, str(e), e.details or None) from None
        except UnknownGroup as e:
            raise ControlError("unknown_group", str(e)) from None
        except RaftError as e:
            raise ControlError(getattr(e, "code", "internal"), str(e)) from None

    async def op_ping(self, args: dict, events: Any) -> object:
        return "pong"

    async def op_status(self, args: dict, events: Any) -> object:
        a, st = self.agent, self.host.statistics()
        fleet = a.fleet
        cstate, problem = await self._cluster_state_now()
        state, zone = fleet.my_state_in(cstate)
        replicas, leaders = fleet.local_counts()
        reach = a.transport.reachability()
        cluster_leader = self.agent.router.leaders.get(CLUSTER) if self.agent.router else None
        local = self.host.replicas.get(CLUSTER)
        voters: list[str] | None = None
        if local is not None:
            voters = sorted(r.agent for r in local.member.config.voters)
            if local.member.leader is not None:
                cluster_leader = local.member.leader.agent
        return {
            "name": a.config.name,
            "zone": zone or a.config.zone,
            "state": state,
            "address": str(a.config.advertise),
            "replicas": replicas,
            "leaders": leaders,
            "cluster": {
                "id": a.identity.cluster_id,
                "leader": cluster_leader,
                "voters": voters,
                "agents": len(cstate["agents"]) if cstate else None,
                "active_agents": sum(1 for x in cstate["agents"].values() if x["state"] == "active")
                if cstate
                else None,
                "groups": len(cstate["groups"]) if cstate else None,
                # The command level every agent speaks (cluster_state.LEVEL is
                # this agent's): below it, an upgrade is still rolling.
                "level": cs.cluster_level(cstate) if cstate else None,
                # Held here only on the cluster-state leader's agent.
                "purges_held": sorted(fleet.purges_held),
                "purges_held_why": dict(sorted(fleet.purge_holds.items())),
                "peers": {
                    n: {"address": addr, "reachable": bool(reach.get(n) and reach[n].connected)}
                    for n, addr in sorted(a.peers.addresses.items())
                },
                "unreachable_s": fleet.unreachable(),
                "state_error": problem,
            },
            "moves_in_flight": fleet.moves_in_flight,
            "moves_done": fleet.moves_done,
            "uptime_s": round(time.monotonic() - self.started, 1),
            "store": "memory" if a.config.in_memory else a.config.data_dir,
            "loop": {
                "turns": st.turns,
                "awake": st.awake,
                "store_batches": st.store_batches,
                "entries_written": st.entries_written,
                "messages_sent": st.messages_sent,
                "messages_received": st.messages_received,
            },
            "metrics": headline(self.host),
        }

    async def health(self) -> tuple[bool, dict[str, object]]:
        """GET /health: healthy when this agent reads its cluster's state through the leader now.

        A linearizable read of the state's version (a few bytes) proves what
        etcd's /health proves: the loop turns, the cluster state has a leader
        backed by a majority, and this agent reaches it. Other groups are not
        checked: one group without a majority does not make the agent unfit to
        serve the rest (`raftfleet group status` says which).
        """
        a = self.agent
        known = a.fleet.last_known_state()
        state, zone = a.fleet.my_state_in(known)
        info: dict[str, object] = {"agent": a.config.name, "state": state, "zone": zone}
        if a.router is None:
            return False, {**info, "reason": "the agent is starting"}
        if a.identity.cluster_id is None:
            return False, {**info, "reason": "not in a cluster yet (waiting to join one)"}
        try:
            with trio.fail_after(HEALTH_READ_S * 1.5):
                version, answered_by = await a.router.query(
                    CLUSTER, "version", HEALTH_READ_S, 1, stale=False
                )
        except RouteError as e:
            return False, {**info, "reason": f"cluster state unreachable: {e}"}
        except trio.TooSlowError:
            why = f"cluster state unreachable: no answer in {HEALTH_READ_S * 1.5:g} s"
            return False, {**info, "reason": why}
        return True, {**info, "cluster_leader": answered_by, "cluster_version": version}

    async def op_activate(self, args: dict, events: Any) -> object:
        state, _ = await self.agent.fleet.my_state()
        if state != "inactive":
            raise ControlError("not_inactive", f"this agent is {state}; activate needs inactive")
        return await self._fleet(self.agent.fleet.activate(args["zone"]))

    async def op_deactivate(self, args: dict, events: Any) -> object:
        state, _ = await self.agent.fleet.my_state()
        if state != "active":
            raise ControlError("not_active", f"this agent is {state}; deactivate needs active")
        return await self._fleet(self.agent.fleet.deactivate(force=args["force"]))

    async def _fleet(self, aw: Any) -> object:
        try:
            return await aw
        except FleetError as e:
            raise ControlError(e.code, str(e)) from None

    async def _cluster_state_now(self) -> tuple[dict | None, str | None]:
        """(the cluster state read through its leader, None), or (the last copy
        seen here, possibly None, and why it is not fresh).

        Status and nodes are what an operator runs when something is wrong:
        without a cluster-state leader they must still answer, at once, and
        say so, rather than wait out the router's retries.
        """
        fleet = self.agent.fleet
        with trio.move_on_after(STATUS_STATE_WAIT_S):
            try:
                return await fleet.state(linearizable=True, fallback=False), None
            except FleetError as e:
                return fleet.last_known_state(), str(e)
        why = f"cluster state unreachable: no answer in {STATUS_STATE_WAIT_S:g} s"
        return fleet.last_known_state(), why

    async def op_nodes(self, args: dict, events: Any) -> object:
        st, problem = await self._cluster_state_now()  # a copy is flagged below
        if st is None:
            raise ControlError("unavailable", str(problem))
        me, transport = self.agent.config.name, self.agent.transport
        briefs = await self._ask_each(
            [n for n in st["agents"] if n == me or transport.is_connected(n)], "brief", {}
        )
        down = self.agent.fleet.unreachable()
        nodes = []
        for name, info in sorted(st["agents"].items()):  # type: ignore[index]
            b = briefs.get(name, {})
            state = info["state"] if info["state"] != "purged" else "inactive"
            nodes.append(
                {
                    "name": name,
                    "zone": info.get("zone"),
                    "state": state,
                    "address": info.get("address"),
                    "reachable": name in briefs,
                    "replicas": b.get("replicas"),
                    "leaders": b.get("leaders"),
                    # How long this agent has been without a connection to it:
                    # what an operator weighs before `forget` or a replacement.
                    "down_s": None if name in briefs else down.get(name),
                    "purged": info["state"] == "purged",
                }
            )
        if problem is not None:
            return {"nodes": nodes, "state_error": f"{problem}; agents as last seen here"}
        return {"nodes": nodes}

    async def op_group_list(self, args: dict, events: Any) -> object:
        st, problem = await self._cluster_state_now()  # a copy is flagged below
        if st is None:
            raise ControlError("unavailable", str(problem))
        router = self.agent.router
        assert router is not None
        groups = sorted(st["groups"].items())  # type: ignore[index]
        leaders: dict[str, str | None] = {}
        limit = trio.CapacityLimiter(32)

        async def look(g: str) -> None:
            async with limit:
                leaders[g] = router.leaders.get(g) or (await router.find_leader(g, 0.5))[0]

        async with trio.open_nursery() as n:
            for g, _ in groups:
                n.start_soon(look, g)
        listing: dict[str, object] = {
            "groups": [
                {
                    "name": g,
                    "replicas": info["replicas"],
                    "type": info["type"],
                    "leader": leaders.get(g),
                    "no_leader": leaders.get(g) is None,
                }
                for g, info in groups
            ]
        }
        if problem is not None:
            listing["state_error"] = f"{problem}; groups as last seen here"
        return listing

    async def op_forget(self, args: dict, events: Any) -> object:
        return await self._fleet(self.agent.fleet.forget(args["agent"], force=args["force"]))

    async def op_drain_watch(self, args: dict, events: Any) -> object:
        """Stream the drain's progress until this agent hosts nothing (or the timeout)."""
        fleet = self.agent.fleet
        timeout = args.get("timeout_s")
        started = time.monotonic()
        last = None
        moves, moves_read = 0, -math.inf
        with trio.move_on_after(timeout if timeout else math.inf) as scope:
            while True:
                replicas, leaders = fleet.local_counts()
                state, _ = await fleet.my_state()
                if time.monotonic() - moves_read >= DRAIN_MOVES_EVERY_S:
                    moves, moves_read = await self._cluster_moves(), time.monotonic()
                now = (replicas, leaders, moves, state)
                if now != last:
                    last = now
                    await events.send(
                        {
                            "event": "progress",
                            "replicas": replicas,
                            "leaders": leaders,
                            "moves_in_flight": moves,
                            "state": state,
                            "elapsed_s": round(time.monotonic() - started, 2),
                        }
                    )
                if replicas == 0 and leaders == 0 and state != "active":
                    return {
                        "event": "complete",
                        "replicas": 0,
                        "leaders": 0,
                        "elapsed_s": round(time.monotonic() - started, 2),
                    }
                await trio.sleep(0.25)
        assert scope.cancelled_caught
        replicas, leaders = fleet.local_counts()
        # Naming what is left tells the operator where to look (a group without
        # a leader cannot move its replica away).
        left = fleet.local_groups()[:DRAIN_GROUPS_SHOWN]
        raise ControlError(
            "timeout",
            f"drain not finished after {timeout} s (it continues)",
            {"replicas": replicas, "leaders": leaders, "groups_left": left},
        )

    async def op_join(self, args: dict, events: Any) -> object:
        try:
            name = await self.agent.join(args["address"])
        except (OSError, trio.TooSlowError) as e:
            raise ControlError("unavailable", f"cannot reach {args['address']}: {e}") from None
        except Exception as e:
            mine = self.agent.identity.cluster_id
            if mine is not None and "cluster id mismatch" in str(e):
                why = _already_in_a_cluster(mine, args["address"])
                raise ControlError("invalid_argument", why) from None
            raise ControlError("unauthorized", f"{args['address']} refused us: {e}") from None
        return {"joined": name}

    # ------------------------------------------------------------ groups

    async def op_group_create(self, args: dict, events: Any) -> object:
        name, n = args["name"], int(args.get("replicas") or 3)
        dtype = args.get("type") or "counter"
        try:
            if is_internal_type(dtype):
                raise DataTypeError(f"{dtype!r} is reserved for the agent's own groups")
            load_data_type(dtype)
        except DataTypeError as e:
            raise ControlError("invalid_type", str(e)) from None
        agents = list(args.get("agents") or [])
        if agents:
            return await self._create_on(name, dtype, agents)  # unmanaged: placed by hand
        fleet = self.agent.fleet
        added = await self._fleet(fleet.propose(["add_group", name, n, dtype, now_ms()]))
        desired = list(added["members"])  # type: ignore[index]
        reachable = [
            a
            for a in desired
            if a == self.agent.config.name or self.agent.transport.is_connected(a)
        ]
        if len(reachable) < quorum_size(len(desired)):
            raise ControlError("unavailable", f"too few of {', '.join(desired)} are reachable")
        # The desired leader first, so it campaigns; the reconciler adds any missing replica.
        return await self._create_on(name, dtype, reachable)

    async def _create_on(self, name: str, dtype: str, agents: list[str]) -> object:
        if len(set(agents)) != len(agents):
            raise ControlError("bad_request", "agents: each agent may appear once")
        unknown = [
            a
            for a in agents
            if a != self.agent.config.name and not self.agent.transport.is_connected(a)
        ]
        if unknown:
            raise ControlError("unavailable", f"agents not connected: {', '.join(unknown)}")
        ids = [ReplicaId(a, self.agent.new_replica_id_n()) for a in agents]
        cfg = Config(frozenset(ids))
        async with trio.open_nursery() as nursery:
            for rid in ids:
                nursery.start_soon(self._host_on, rid.agent, name, dtype, rid, cfg)
        won = await self.call_on(ids[0].agent, "campaign", {"group": name, "wait_s": 2.0})
        leader = won.get("leader") if isinstance(won, dict) else None
        if leader is None:
            leader = await self._await_leader(name, ids[0].agent, CREATE_TIMEOUT_S)
        return {"name": name, "type": dtype, "replicas": [str(r) for r in ids], "leader": leader}

    async def _host_on(
        self, agent: str, group: str, dtype: str, rid: ReplicaId, cfg: Config | None
    ) -> None:
        args = {
            "group": group,
            "type": dtype,
            "replica": [rid.agent, rid.n],
            "config": encode_config(cfg) if cfg else None,
        }
        try:
            await self.call_on(agent, "host_replica", args)
        except RpcError as e:
            if e.code == "already_exists":
                raise ControlError(
                    "already_exists", f"group {group} already exists on {agent}"
                ) from None
            raise

    async def call_on(self, agent: str, op: str, args: dict) -> object:
        """A peer call, or the same handler run locally for this agent."""
        if agent == self.agent.config.name:
            return await getattr(self, f"peer_{op}")(agent, args)
        assert self.agent.rpc is not None
        return await self.agent.rpc.call(agent, op, args, PEER_CALL_TIMEOUT_S)

    async def _await_leader(self, group: str, agent: str, timeout_s: float) -> str:
        with trio.move_on_after(timeout_s):
            while True:
                try:
                    st = await self.call_on(agent, "replica_status", {"group": group})
                except RpcError:
                    st = None
                if isinstance(st, dict) and st.get("leader") and st.get("commit_index", 0) >= 1:
                    return str(st["leader"])
                await trio.sleep(0.05)
        raise ControlError("no_leader", f"{group} elected no leader within {timeout_s} s")

    async def op_group_delete(self, args: dict, events: Any) -> object:
        name = args["name"]
        fleet = self.agent.fleet
        try:
            # Fresh, or nothing: a copy that lacks a group created since would
            # pass a placed group off as one placed by hand (below), whose
            # replicas are dropped while the cluster state keeps it.
            st = await fleet.state(linearizable=True, fallback=False)
        except FleetError as e:
            raise ControlError(
                "unavailable",
                f"cannot delete {name} now: {e} (the cluster state says whether the fleet "
                "placed it; try again once it has a leader)",
            ) from None
        if name in st["groups"]:
            await self._fleet(fleet.propose(["remove_group", name, now_ms()]))
            # Stop every reachable replica now; agents that are down clean up
            # when they come back (their name stays in the removal's pending list).
            with trio.move_on_after(PEER_CALL_TIMEOUT_S):
                await self._drop_everywhere(name)
            return {"name": name, "deleted": True}
        return await self._delete_unmanaged(name)

    async def _delete_unmanaged(self, name: str) -> object:
        dropped = await self._drop_everywhere(name)
        if not dropped:
            raise ControlError("unknown_group", f"no agent hosts a group named {name}")
        return {"name": name, "deleted": True, "deleted_on": dropped}

    async def _drop_everywhere(self, name: str) -> list[str]:
        """Stop and delete `name`'s replica on this and every connected agent."""
        dropped: list[str] = []
        targets = [self.agent.config.name, *self.agent.connected_peers()]

        async def drop(agent: str) -> None:
            try:
                if await self.call_on(agent, "drop_replica", {"group": name}):
                    dropped.append(agent)
            except RpcError as e:
                logger.warning("delete %s on %s: %s", name, agent, e)

        async with trio.open_nursery() as nursery:
            for a in targets:
                nursery.start_soon(drop, a)
        self.agent.router.leaders.pop(name, None)  # type: ignore[union-attr]
        return sorted(dropped)

    async def op_group_status(self, args: dict, events: Any) -> object:
        name = args["name"]
        router = self.agent.router
        assert router is not None
        leader, _term = await router.find_leader(name)
        if leader is not None:
            st = await self.call_on(leader, "replica_status", {"group": name})
        else:
            st = self._best(await self._survey(name))
            if st is None:
                raise ControlError("unknown_group", f"no agent hosts a group named {name}")
        assert isinstance(st, dict)
        cstate, problem = await self._cluster_state_now()  # this may be the group that lost it
        if problem is not None:
            st["state_error"] = f"{problem}; placement and zones as last seen here"
        if cstate is None:
            desired = None
        elif name == CLUSTER:
            desired = cs.desired_cluster_voters(cstate)  # and a learner on every other agent
        else:
            desired = cs.desired_members(cstate, name) if name in cstate["groups"] else None
        zones = {a: i.get("zone") for a, i in (cstate or {}).get("agents", {}).items()}
        for m in st["members"]:
            m["zone"] = zones.get(m["agent"])
        have = {m["agent"] for m in st["members"]}
        st["desired"] = desired
        if st.get("leader") is not None:
            # The leader's agent said which members it reaches (older agents do
            # not say: None, not counted).
            st["lost"] = sorted(m["agent"] for m in st["members"] if m.get("reachable") is False)
        else:
            # No leader: say which members cannot be reached, so an operator
            # can tell a passing election from a lost majority.
            reachable = {self.agent.config.name, *self.agent.connected_peers()}
            for m in st["members"]:
                m["reachable"] = m["agent"] in reachable
            st["lost"] = sorted(m["agent"] for m in st["members"] if m["agent"] not in reachable)
            voters = [m for m in st["members"] if m["role"] != "learner"]
            alive = [m for m in voters if m["agent"] in reachable]
            st["majority_lost"] = len(alive) < quorum_size(len(voters))
            # And what each replica thinks: a stuck election shows who is
            # waiting for whom (terms, quiet replicas, a leader only some see).
            st["replicas"] = [
                {k: r.get(k) for k in _REPLICA_VIEW} for r in await self._survey(name)
            ]
        if name == CLUSTER:
            voting = {m["agent"] for m in st["members"] if m["role"] != "learner"}
            st["converged"] = bool(desired) and voting == set(desired or ())
            return st
        if desired is None:
            st["converged"] = None  # placement unknown here, or the group is placed by hand
            return st
        st["converged"] = (
            bool(desired)
            and have == set(desired)
            and st.get("leader") == desired[0]
            and all(m["role"] != "learner" for m in st["members"])
        )
        return st

    async def _survey(self, name: str) -> list[dict]:
        """replica_status of `name` from every reachable agent that hosts a replica."""
        agents = [self.agent.config.name, *self.agent.connected_peers()]
        return list((await self._ask_each(agents, "replica_status", {"group": name})).values())

    async def _ask_each(self, agents: list[str], op: str, args: dict) -> dict[str, dict]:
        """Peer call `op` on each of `agents` at once: {agent: answer} of those that answered.

        An agent that fails (down, too old, not hosting what is asked) is
        left out; each call is bounded by PEER_CALL_TIMEOUT_S.
        """
        answers: dict[str, dict] = {}

        async def ask(agent: str) -> None:
            with contextlib.suppress(RpcError):
                answer = await self.call_on(agent, op, args)
                if isinstance(answer, dict):
                    answers[agent] = answer

        async with trio.open_nursery() as n:
            for agent in agents:
                n.start_soon(ask, agent)
        return answers

    @staticmethod
    def _best(states: list[dict]) -> dict | None:
        """The most up-to-date replica: highest (last term, last index)."""
        return max(
            states, key=lambda s: (s.get("last_term", 0), s.get("last_index", 0)), default=None
        )

    async def op_group_recover(self, args: dict, events: Any) -> object:
        """Rebuild a group that lost its majority from its most up-to-date survivor.

        Loud and explicit: acknowledged writes held only by the lost replicas
        are gone. Refused while the group has a leader.
        """
        name = args["name"]
        router = self.agent.router
        assert router is not None
        leader, _ = await router.find_leader(name)
        if leader is not None:
            raise ControlError("bad_request", f"{name} has a leader ({leader}); nothing to recover")
        survivors = await self._survey(name)
        best = self._best(survivors)
        if best is None:
            raise ControlError("unknown_group", f"no reachable agent hosts a replica of {name}")
        # Leaderless is only this agent's view: an election may be on, or this
        # agent alone may be cut off from a majority that still serves.
        answered = {s["reported_by"] for s in survivors}
        lost = recovery.lost_voters(best["members"], answered)
        views = await self.agent.fleet.views_of(lost)
        why = recovery.refusal(name, best["members"], answered, views)
        if why is not None:
            raise ControlError("invalid_argument", f"not recovering {why}")
        min_term = max(s.get("term", 0) for s in survivors)
        source = best["reported_by"]
        await self.call_on(source, "force_recover", {"group": name, "min_term": min_term})
        logger.warning(
            "group %s FORCE-RECOVERED from %s (last index %s); acknowledged writes "
            "held only by lost replicas are gone",
            name,
            source,
            best.get("last_index"),
        )
        self.agent.fleet.poke()
        return {
            "name": name,
            "recovered_from": source,
            "last_index": best.get("last_index"),
            "survivors": sorted(s["reported_by"] for s in survivors),
            "warning": "forced recovery: acknowledged writes held only by the lost "
            "replicas may be lost",
        }

    async def peer_force_recover(self, peer: str, args: dict) -> object:
        try:
            return self.host.force_sole_voter(str(args.get("group")), int(args.get("min_term", 0)))
        except UnknownGroup as e:
            raise RpcError("unknown_group", str(e)) from None
        except RaftError as e:
            raise RpcError(getattr(e, "code", "internal"), str(e)) from None

    async def op_leader(self, args: dict, events: Any) -> object:
        router = self.agent.router
        assert router is not None
        leader, term = await router.find_leader(args["group"])
        if leader is None and term < 0:
            raise ControlError("unknown_group", f"no agent hosts a group named {args['group']}")
        return {"group": args["group"], "leader": leader, "term": max(term, 0)}

    async def op_group_transfer(self, args: dict, events: Any) -> object:
        name, target = args["name"], args["agent"]
        router = self.agent.router
        assert router is not None
        leader, _ = await router.find_leader(name)
        if leader is None:
            raise ControlError("no_leader", f"{name} has no leader to transfer from")
        await self.call_on(leader, "transfer", {"group": name, "agent": target})
        return {"name": name, "from": leader, "to": target}

    async def op_command(self, args: dict, events: Any) -> object:
        router = self.agent.router
        assert router is not None
        rid = args.get("request_id")
        reply, leader = await router.command(
            args["group"],
            args["arg"],
            tuple(rid) if rid else None,
            float(args.get("timeout_s") or 0.5),
            int(args.get("retries", 3)),
            sent=bool(args.get(TRIED_FAST)),
        )
        return {"group": args["group"], "reply": reply, "leader": leader}

    async def op_query(self, args: dict, events: Any) -> object:
        router = self.agent.router
        assert router is not None
        reply, leader = await router.query(
            args["group"],
            args["arg"],
            float(args.get("timeout_s") or 0.5),
            int(args.get("retries", 3)),
            bool(args.get("stale")),
            sent=bool(args.get(TRIED_FAST)),
        )
        return {"group": args["group"], "reply": reply, "leader": leader}

    async def op_subscribe(self, args: dict, events: Any) -> object:
        """Stream leader changes of this agent's replicas (topic "leaders") until cancelled."""
        if args["topic"] != "leaders":
            raise ControlError("bad_request", f"unknown topic {args['topic']!r} (known: leaders)")
        seen: dict[str, str | None] = {}
        while True:
            for g, r in sorted(self.host.replicas.items()):
                lead = r.member.leader.agent if r.member.leader else None
                if seen.get(g, "?") != lead:
                    seen[g] = lead
                    await events.send({"group": g, "leader": lead, "term": r.member.term})
            await trio.sleep(0.2)

    # ------------------------------------------------------------ peer calls

    def register_peer_calls(self, rpc: PeerRpc) -> None:
        """Every `peer_<op>` method answers the peer call `<op>`."""
        for attr in dir(self):
            if attr.startswith("peer_"):
                rpc.register(attr.removeprefix("peer_"), getattr(self, attr))
        fast = self._fast_path()
        if fast is not None:
            for op in ("command", "query"):
                rpc.register_fast(op, partial(fast.serve_peer, op))

    def greet(self, peer: str) -> None:
        """Tell a newly connected peer where we listen and whom we know."""
        rpc = self.agent.rpc
        if rpc is None:
            return
        me = self.agent.config.name
        known = dict(self.agent.peers.addresses)
        known[me] = str(self.agent.config.advertise)
        epochs = dict(self.agent.peers.epochs)
        epochs[me] = self.agent.epoch
        hello = {"peers": known, "epochs": epochs}

        async def say_hello() -> None:
            try:
                await rpc.call(peer, "hello", hello, PEER_CALL_TIMEOUT_S)
            except RpcError as e:
                logger.debug("hello to %s: %s", peer, e)

        rpc._nursery.start_soon(say_hello)

    async def peer_brief(self, peer: str, args: dict) -> object:
        fleet = self.agent.fleet
        replicas, leaders = fleet.local_counts()
        return {"replicas": replicas, "leaders": leaders, "moves_in_flight": fleet.moves_in_flight}

    async def _cluster_moves(self) -> int:
        """Group moves under way on this agent and every agent it reaches.

        A drained agent's replicas are moved by the reconcilers of the other
        agents (each converges the groups it should lead), so its own count
        says nothing of the drain. Agents too old to say count as none.
        """
        briefs = await self._ask_each(self.agent.connected_peers(), "brief", {})
        theirs = [b.get("moves_in_flight") for b in briefs.values()]
        return self.agent.fleet.moves_in_flight + sum(m for m in theirs if type(m) is int)

    async def peer_reaches(self, peer: str, args: dict) -> object:
        """Whether this agent has a connection to `agent` now (asked before a purge)."""
        agent = args.get("agent")
        if not isinstance(agent, str) or not agent:
            raise RpcError("bad_request", "reaches: agent must be a non-empty string")
        return {"agent": agent, "connected": self.agent.transport.is_connected(agent)}

    async def peer_hello(self, peer: str, args: dict) -> object:
        known, epochs = args.get("peers"), args.get("epochs")
        if not isinstance(epochs, dict):
            epochs = {}  # an agent from before epochs: its gossip only adds agents
        if isinstance(known, dict):
            for name, addr in known.items():
                if isinstance(name, str) and isinstance(addr, str):
                    epoch = epochs.get(name)
                    self.agent.learn_peer(
                        name,
                        addr,
                        epoch=epoch if type(epoch) is int else None,
                        first_hand=name == peer,
                    )
        return True

    async def peer_host_replica(self, peer: str, args: dict) -> object:
        try:
            group, dtype = str(args["group"]), str(args["type"])
            rid = decode_replica(args["replica"])
            cfg = decode_config(args["config"]) if args.get("config") is not None else None
        except (KeyError, CodecError) as e:
            raise RpcError("bad_request", f"host_replica: {e}") from None
        if rid.agent != self.agent.config.name:
            raise RpcError("bad_request", f"replica {rid} does not belong to this agent")
        try:
            await self.host.create_replica(group, dtype, rid, cfg)
        except ReplicaExists as e:
            there = self.host.replicas.get(group)
            details = None if there is None else {"replica": list(there.member.id)}
            raise RpcError("already_exists", str(e), details) from None
        except DataTypeError as e:
            raise RpcError("invalid_type", str(e)) from None
        return True

    async def peer_drop_replica(self, peer: str, args: dict) -> object:
        """Drop the local replica of a group; only if it is `replica`, when that is given."""
        group = str(args.get("group"))
        expected = args.get("replica")
        if expected is not None:
            there = self.host.replicas.get(group)
            if there is None or list(there.member.id) != expected:
                return False  # not the one the caller checked: a newer replica
        return await self.host.drop_replica(group)

    async def peer_campaign(self, peer: str, args: dict) -> object:
        """Start an election here and wait (briefly) until this replica leads.

        Waiting here, next to the replica, answers a group creation as soon as
        the leader committed its first entry, instead of after a poll interval.
        """
        group = str(args.get("group"))
        try:
            self.host.campaign(group)
        except UnknownGroup as e:
            raise RpcError("unknown_group", str(e)) from None
        with trio.move_on_after(min(float(args.get("wait_s", 0) or 0), PEER_CALL_TIMEOUT_S - 0.5)):
            while True:
                r = self.host.replicas.get(group)
                if r is None:
                    break
                m = r.member
                if m.is_leader and m.commit >= m.log.last_index and m.commit > 0:
                    return {"leader": self.agent.config.name}
                await trio.sleep(0.002)
        return {"leader": None}

    async def peer_leader(self, peer: str, args: dict) -> object:
        assert self.agent.router is not None
        return self.agent.router.local_leader(str(args.get("group")))

    async def peer_replica_status(self, peer: str, args: dict) -> object:
        group = str(args.get("group"))
        r = self.host.replicas.get(group)
        if r is None:
            raise RpcError("unknown_group", f"{self.agent.config.name} hosts no replica of {group}")
        st = r.member.status()
        follower = {f.replica: f for f in st.followers}
        me, transport = self.agent.config.name, self.agent.transport
        members = []
        for rid in (*st.voters, *st.learners):
            if st.leader == rid:
                role = "leader"
            else:
                role = "learner" if rid in st.learners else "follower"
            if rid == st.replica:
                match, contact = st.last_index, 0
            elif rid in follower:
                match, contact = follower[rid].match_index, follower[rid].ticks_since_contact
            else:
                match, contact = None, None
            members.append(
                {
                    "agent": rid.agent,
                    "replica_id": [rid.agent, rid.n],
                    "role": role,
                    "match_index": match,
                    "contact_ticks": contact,
                    # A member on an agent this one cannot reach still shows the
                    # progress it last made (a quiet group hears nothing either way).
                    "reachable": rid.agent == me or transport.is_connected(rid.agent),
                }
            )
        return {
            "name": group,
            "type": r.meta.data_type,
            "leader": st.leader.agent if st.leader else None,
            "term": st.term,
            "commit_index": st.commit_index,
            "applied_index": st.applied_index,
            "last_index": st.last_index,
            "last_term": r.member.log.last_term,
            "snapshot_index": st.snapshot_index,
            "members": members,
            "lease_valid": st.lease_valid,
            "leader_s": round(time.monotonic() - r.leader_since_s, 1) if st.leader else 0.0,
            "reported_by": self.agent.config.name,
            "replica_id": [st.replica.agent, st.replica.n],
            "role": st.role,
            "quiescent": st.quiescent,
        }

    async def peer_change_membership(self, peer: str, args: dict) -> object:
        group = str(args.get("group"))
        try:
            op = ConfOp(str(args.get("op")))
            rid = decode_replica(args.get("replica"))
            return self.host.change_membership(group, op, rid)
        except (ValueError, CodecError) as e:
            raise RpcError("bad_request", f"change_membership: {e}") from None
        except UnknownGroup as e:
            raise RpcError("not_leader", str(e)) from None
        except RaftError as e:
            raise RpcError(getattr(e, "code", "internal"), str(e)) from None

    async def peer_command(self, peer: str, args: dict) -> object:
        return await self._serve_routed("command", args)

    async def peer_query(self, peer: str, args: dict) -> object:
        return await self._serve_routed("query", args)

    async def _serve_routed(self, op: str, args: dict) -> object:
        assert self.agent.router is not None
        check_routed_args(op, args)
        try:
            return await self.agent.router.serve_locally(op, args)
        except RouteError as e:
            raise RpcError(e.code, str(e), e.details) from None

    async def peer_transfer(self, peer: str, args: dict) -> object:
        group, target = str(args.get("group")), str(args.get("agent"))
        r = self.host.replicas.get(group)
        if r is None:
            raise RpcError("unknown_group", f"no replica of {group} here")
        rid = next((v for v in r.member.config.voters if v.agent == target), None)
        if rid is None:
            raise RpcError("not_found", f"{target} holds no voting replica of {group}")
        try:
            self.host.transfer_leadership(group, rid)
        except RaftError as e:
            raise RpcError(getattr(e, "code", "internal"), str(e)) from None
        return True
