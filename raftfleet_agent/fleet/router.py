"""Commands and queries by group name, from any agent, to the group's leader.

The leader's agent comes from a local cache, refreshed on a `not_leader` hint
or a failure; without a cache entry the local replica's view is used, else
every connected agent is asked and the answer with the highest term wins.
Retries reuse the request id, so a retried command is applied once.
"""

from __future__ import annotations

import itertools
import logging
import secrets

import trio

from raftfleet_agent.host.loop import MultiRaftHost, UnknownGroup
from raftfleet_agent.host.replica import LostLeadership, ReplicaGone
from raftfleet_agent.host.rpc import PeerRpc, RpcError
from raftfleet_agent.raft.errors import NotLeader, ProposalDropped
from raftfleet_agent.statemachine import ApplyResult

logger = logging.getLogger("raftfleet.router")

RETRY_PAUSE_S = 0.05


class RouteError(Exception):
    """A request could not be served: `code` is one of the control API's error codes."""

    def __init__(self, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details or {}


class Router:
    def __init__(self, host: MultiRaftHost, rpc: PeerRpc, peers: callable) -> None:  # type: ignore[valid-type]
        self.host = host
        self.rpc = rpc
        self._peers = peers  # () -> list of connected agent names
        self.leaders: dict[str, str] = {}  # group -> agent believed to lead it
        self._client_id = f"{host.agent}-{secrets.token_hex(6)}"
        self._seq = itertools.count(1)
        host.on_leader_change = self._leader_changed

    def _leader_changed(self, group: str, leader: object) -> None:
        agent = getattr(leader, "agent", None)
        if agent:
            self.leaders[group] = agent
        else:
            self.leaders.pop(group, None)  # an election is on: look again next time

    def new_request_id(self) -> tuple[str, int]:
        return self._client_id, next(self._seq)

    # ------------------------------------------------------------ leader lookup

    async def find_leader(self, group: str, timeout_s: float = 1.0) -> tuple[str | None, int]:
        """(agent leading `group`, its term) as far as anyone here knows."""
        r = self.host.replicas.get(group)
        best: tuple[str | None, int] = (None, -1)
        if r is not None and r.member.leader is not None:
            best = (r.member.leader.agent, r.member.term)
        answers: list[tuple[str | None, int]] = []

        async def ask(peer: str) -> None:
            try:
                res = await self.rpc.call(peer, "leader", {"group": group}, timeout_s)
            except RpcError:
                return
            if isinstance(res, dict) and isinstance(res.get("term"), int):
                answers.append((res.get("leader"), res["term"]))

        # A peer that hangs (stopped process, blackholed link) must not hide the
        # answers of the others: stop waiting at half the time, use what came.
        with trio.move_on_after(timeout_s / 2):
            async with trio.open_nursery() as n:
                for p in self._peers():
                    n.start_soon(ask, p)
        for leader, term in answers:
            if leader and (best[0] is None or term > best[1]):
                best = (leader, term)
        if best[0]:
            self.leaders[group] = best[0]
            return best
        # No leader right now (an election is on): still say that the group
        # exists, with the highest term anyone hosting it reported.
        seen = [t for _l, t in answers]
        if r is not None:
            seen.append(r.member.term)
        return None, max(seen, default=-1)

    def local_leader(self, group: str) -> dict:
        r = self.host.replicas.get(group)
        if r is None:
            return {"group": group, "leader": None, "term": -1}
        lead = r.member.leader
        return {"group": group, "leader": lead.agent if lead else None, "term": r.member.term}

    # ------------------------------------------------------------ routing

    async def command(
        self,
        group: str,
        arg: object,
        request_id: tuple[str, int] | None,
        timeout_s: float,
        retries: int,
        sent: bool = False,
    ) -> tuple[object, str]:
        """`sent`: an earlier attempt (the fast path's) may have reached a leader."""
        client, seq = request_id or self.new_request_id()
        args = {"group": group, "arg": arg, "client": client, "seq": seq, "timeout_s": timeout_s}
        return await self._route("command", args, timeout_s, retries, sent)

    async def query(
        self,
        group: str,
        arg: object,
        timeout_s: float,
        retries: int,
        stale: bool,
        sent: bool = False,
    ) -> tuple[object, str]:
        if stale and group in self.host.replicas:
            return _unwrap(self.host.query_stale(group, arg)), self.host.agent
        args = {"group": group, "arg": arg, "timeout_s": timeout_s}
        return await self._route("query", args, timeout_s, retries, sent)

    async def _route(
        self, op: str, args: dict, timeout_s: float, retries: int, sent: bool
    ) -> tuple[object, str]:
        group = args["group"]
        last = RouteError("no_leader", f"no leader found for {group}")
        # Once a request may have reached a leader its outcome is unknown: no
        # answer may say it was never proposed (unknown_group) after that.
        for attempt in range(retries + 1):
            if attempt:
                await trio.sleep(RETRY_PAUSE_S * attempt)
            agent = self.leaders.get(group) or await self._await_leader(group, timeout_s)
            if agent is None:
                if (
                    not sent
                    and group not in self.host.replicas
                    and not await self._anyone_hosts(group)
                ):
                    raise RouteError("unknown_group", f"no agent hosts a group named {group}")
                if not sent:
                    last = RouteError("no_leader", f"{group} has no leader right now")
                continue
            sent = True
            try:
                if agent == self.host.agent:
                    return await self.serve_locally(op, args), agent
                res = await self.rpc.call(agent, op, args, timeout_s + 0.2)
                return res, agent
            except RpcError as e:
                self.leaders.pop(group, None)
                if e.code in ("invalid_argument", "data_type_error", "request_expired"):
                    raise RouteError(e.code, str(e)) from None
                hint = e.details.get("leader") if e.code == "not_leader" else None
                if isinstance(hint, str):
                    self.leaders[group] = hint
                last = RouteError("timeout" if e.code == "timeout" else "no_leader", str(e))
            except RouteError as e:
                if e.code in ("invalid_argument", "data_type_error", "request_expired"):
                    raise
                self.leaders.pop(group, None)
                if e.code == "not_leader" and e.details.get("leader"):
                    self.leaders[group] = e.details["leader"]
                last = RouteError("timeout" if e.code == "timeout" else "no_leader", str(e))
        raise last

    async def _await_leader(self, group: str, timeout_s: float) -> str | None:
        """Look for the leader until one is known or `timeout_s` passes (elections take time)."""
        with trio.move_on_after(timeout_s):
            while True:
                agent, _term = await self.find_leader(group, timeout_s)
                if agent is not None:
                    return agent
                if group not in self.host.replicas and not await self._anyone_hosts(group):
                    return None
                await trio.sleep(RETRY_PAUSE_S)
        return None

    async def _anyone_hosts(self, group: str) -> bool:
        for peer in self._peers():
            try:
                res = await self.rpc.call(peer, "leader", {"group": group}, 0.5)
            except RpcError:
                continue
            if isinstance(res, dict) and res.get("term", -1) >= 0:
                return True
        return False

    async def serve_locally(self, op: str, args: dict) -> object:
        """Serve a command or query on this agent's replica, which must lead."""
        group, timeout_s = args["group"], float(args["timeout_s"])
        try:
            if op == "command":
                res = await self.host.command(
                    group, args["arg"], args["client"], args["seq"], timeout_s
                )
            else:
                res = await self.host.query(group, args["arg"], timeout_s)
        except NotLeader as e:
            hint = e.leader.agent if e.leader and e.leader.agent != self.host.agent else None
            raise RouteError("not_leader", str(e), {"leader": hint}) from None
        except (ProposalDropped, LostLeadership, ReplicaGone) as e:
            raise RouteError("not_leader", str(e)) from None
        except UnknownGroup as e:
            raise RouteError("not_leader", str(e)) from None
        except trio.TooSlowError:
            raise RouteError("timeout", timed_out_text(op, group)) from None
        return _unwrap(res)


def refusal_of(res: ApplyResult) -> tuple[str, str]:
    """(code, message) of a command or query the data type refused.

    Shared with the fast path (fast_ops), which answers forwarded requests
    from a callback: both must tell a client the same thing.
    """
    return res.error or "data_type_error", res.message or "the data type refused"


def timed_out_text(op: str, group: str) -> str:
    return f"{op} on {group} timed out (outcome unknown)"


def _unwrap(res: ApplyResult) -> object:
    if res.ok:
        return res.reply
    raise RouteError(*refusal_of(res))
