"""The fast path for `command` and `query`: no task per request.

The normal path runs every request as a task that awaits the router, which
awaits the host (or a peer call), which awaits an Event under a cancel scope:
at thousands of requests a second that machinery costs more than replicating
the entry. Three cases need none of it:

- this agent leads the group: the request is proposed (or read) right away
  and its waiter calls back into the connection when the loop resolves it;
- the router knows which other agent leads it: the request is forwarded with
  `PeerRpc.start_call` and the answer calls back into the connection;
- a peer forwarded a request to this agent, which leads the group: as the
  first case, answering the peer instead of a connection (`serve_peer`).

Everything else (an unknown leader, an election, a transfer, a timeout, lost
leadership, a refused forward) goes back to the normal path with the same
request id, so retries stay exactly-once and errors stay the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raftfleet_agent.control.protocol import ControlError
from raftfleet_agent.fleet.router import refusal_of, timed_out_text
from raftfleet_agent.host.replica import Expired, Waiter
from raftfleet_agent.host.rpc import OnAnswer, RpcError, as_error
from raftfleet_agent.statemachine import ApplyResult

if TYPE_CHECKING:
    from raftfleet_agent.control.server import Ticket
    from raftfleet_agent.fleet.router import Router
    from raftfleet_agent.host.loop import MultiRaftHost

DEFAULT_TIMEOUT_S = 0.5  # as the normal path (ops.py)
DEFAULT_RETRIES = 3
PEER_TIMEOUT_S_MAX = 120.0  # a forwarded command's timeout (the control API allows 60 s)
FORWARD_GRACE_S = 0.2  # the peer's own timeout answers first (as Router._route)
# The data type's (or the request id's) verdict: a retry would get it again.
FINAL_CODES = frozenset({"invalid_argument", "data_type_error", "request_expired"})
# Set in the args of a request the normal path takes over after a fast attempt
# (never a client's: the protocol refuses unknown fields before this runs). The
# attempt may have been applied, so the router must not call it never proposed
# (fault campaign, seed 7500: a forward answered too late became unknown_group).
TRIED_FAST = "_tried_fast"


class FastPath:
    def __init__(self, host: MultiRaftHost, router: Router) -> None:
        self.host = host
        self.router = router

    def take(self, op: str, args: dict, ticket: Ticket) -> bool:
        """Start `op` without a task if this agent can serve it here; False: use the normal path."""
        if op == "command":
            return self._command(args, ticket)
        if op == "query" and not args.get("stale"):
            return self._query(args, ticket)
        return False

    def _command(self, args: dict, ticket: Ticket) -> bool:
        group = args["group"]
        rid = args.get("request_id")
        client, seq = tuple(rid) if rid else self.router.new_request_id()
        timeout_s = float(args.get("timeout_s") or DEFAULT_TIMEOUT_S)
        host = self.host

        def done(w: Waiter) -> None:
            host.metrics.note_committed(w.created_s, w.resolved_s)
            self._settle("command", group, args, w.result, ticket)

        w = host.start_command(group, args["arg"], client, seq, timeout_s, done)
        if w is None:
            fwd = {"group": group, "arg": args["arg"], "client": client, "seq": seq}
            if not self._forward("command", fwd, timeout_s, args, ticket):
                return False
        # Should this attempt fail, the normal path retries under the same id:
        # the group's session table makes the retry exactly-once.
        args["request_id"] = [client, seq]
        return True

    def _query(self, args: dict, ticket: Ticket) -> bool:
        group = args["group"]
        timeout_s = float(args.get("timeout_s") or DEFAULT_TIMEOUT_S)

        def done(w: Waiter) -> None:
            self._settle("query", group, args, w.result, ticket)

        res = self.host.start_query(group, args["arg"], timeout_s, done)
        if res is None:
            fwd = {"group": group, "arg": args["arg"]}
            return self._forward("query", fwd, timeout_s, args, ticket)
        if isinstance(res, ApplyResult):
            self._settle("query", group, args, res, ticket)
        return True

    def _settle(self, op: str, group: str, args: dict, result: object, ticket: Ticket) -> None:
        if isinstance(result, ApplyResult):
            if result.ok:
                ticket.ok({"group": group, "reply": result.reply, "leader": self.host.agent})
            else:
                code = result.error or "data_type_error"
                ticket.fail(ControlError(code, result.message or "the data type refused"))
            return
        # Lost leadership, the replica went away, or the deadline passed.
        self._retry(op, group, args, ticket, isinstance(result, Expired), str(result))

    @staticmethod
    def _retry(op: str, group: str, args: dict, ticket: Ticket, timed_out: bool, why: str) -> None:
        """The normal path finds the leader and retries, if any retry is left."""
        retries = int(args.get("retries", DEFAULT_RETRIES))
        if retries > 0:
            args["retries"] = retries - 1
            args[TRIED_FAST] = True
            ticket.slow()
        elif timed_out:
            ticket.fail(ControlError("timeout", f"{op} on {group} timed out (outcome unknown)"))
        else:
            ticket.fail(ControlError("no_leader", why))

    # ------------------------------------------------------------ forwarding

    def _forward(self, op: str, fwd: dict, timeout_s: float, args: dict, ticket: Ticket) -> bool:
        """Send the request to the agent the router believes leads the group."""
        group = fwd["group"]
        agent = self.router.leaders.get(group)
        if agent is None or agent == self.host.agent:
            return False  # unknown, or our own replica just stepped down
        fwd["timeout_s"] = timeout_s
        router = self.router

        def answered(ok: bool, value: object) -> None:
            if ok:
                ticket.ok({"group": group, "reply": value, "leader": agent})
                return
            err = as_error(agent, op, value)
            if err.code in FINAL_CODES:
                ticket.fail(ControlError(err.code, str(err)))
                return
            # As Router._route: forget that leader, or take the peer's hint.
            if router.leaders.get(group) == agent:
                del router.leaders[group]
            hint = err.details.get("leader") if err.code == "not_leader" else None
            if isinstance(hint, str):
                router.leaders[group] = hint
            self._retry(op, group, args, ticket, err.code == "timeout", str(err))

        return router.rpc.start_call(agent, op, fwd, timeout_s + FORWARD_GRACE_S, answered)

    def serve_peer(self, op: str, peer: str, args: dict, answer: OnAnswer) -> bool:
        """A command or query `peer` forwarded, on our local leader; False if not ours.

        What it declines goes to the task-based handler, which answers
        `not_leader` with a hint (or serves it, should we have just won).
        """
        check_routed_args(op, args)
        group, timeout_s = args["group"], float(args["timeout_s"])
        host = self.host

        def done(w: Waiter) -> None:
            if op == "command":
                host.metrics.note_committed(w.created_s, w.resolved_s)
            _answer_peer(op, group, w.result, answer)

        if op == "command":
            w = host.start_command(group, args["arg"], args["client"], args["seq"], timeout_s, done)
            return w is not None
        res = host.start_query(group, args["arg"], timeout_s, done)
        if res is None:
            return False
        if isinstance(res, ApplyResult):
            _answer_peer(op, group, res, answer)
        return True


def _answer_peer(op: str, group: str, result: object, answer: OnAnswer) -> None:
    """Answer a forwarded request as `Router.serve_locally` would have."""
    if isinstance(result, ApplyResult):
        if result.ok:
            answer(True, result.reply)
            return
        code, message = refusal_of(result)
        answer(False, {"code": code, "message": message})
    elif isinstance(result, Expired):
        answer(False, {"code": "timeout", "message": timed_out_text(op, group)})
    else:  # lost leadership, or the replica went away
        answer(False, {"code": "not_leader", "message": str(result)})


def check_routed_args(op: str, args: dict) -> None:
    """A forwarded command/query must look like what `Router` sends; a peer's
    junk is a `bad_request` answer, not an `internal` one (or a task that waits
    for a timeout of a billion seconds)."""
    timeout_s = args.get("timeout_s")
    problem = None
    if type(args.get("group")) is not str or "arg" not in args:
        problem = "needs a string group and an arg"
    elif type(timeout_s) not in (int, float) or not 0 < timeout_s <= PEER_TIMEOUT_S_MAX:
        problem = f"timeout_s must be a number in (0, {PEER_TIMEOUT_S_MAX:g}]"
    elif op == "command" and (
        type(args.get("client")) is not str or type(args.get("seq")) is not int
    ):
        problem = "needs a string client and an integer seq"
    if problem is not None:
        raise RpcError("bad_request", f"{op}: {problem}")
