"""The control server's fast path for `command` and `query` on a local leader.

The normal path runs every request as a task that awaits the router, which
awaits the host, which awaits an Event under a cancel scope: at thousands of
requests a second that machinery costs more than replicating the entry. When
this agent leads the group, none of it is needed: the request is proposed (or
read) right away and its waiter calls back into the connection when the loop
resolves it. Everything else (a remote or unknown leader, an election, a
transfer, a timeout, lost leadership) goes back to the normal path with the
same request id, so retries stay exactly-once and errors stay the same.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raftfleet_agent.control.protocol import ControlError
from raftfleet_agent.host.replica import Expired, Waiter
from raftfleet_agent.statemachine import ApplyResult

if TYPE_CHECKING:
    from raftfleet_agent.control.server import Ticket
    from raftfleet_agent.fleet.router import Router
    from raftfleet_agent.host.loop import MultiRaftHost

DEFAULT_TIMEOUT_S = 0.5  # as the normal path (ops.py)
DEFAULT_RETRIES = 3


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
            return False
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
        # Lost leadership, the replica went away, or the deadline passed: the
        # normal path finds the leader and retries, if any retry is left.
        retries = int(args.get("retries", DEFAULT_RETRIES))
        if retries > 0:
            args["retries"] = retries - 1
            ticket.slow()
        elif isinstance(result, Expired):
            ticket.fail(ControlError("timeout", f"{op} on {group} timed out (outcome unknown)"))
        else:
            ticket.fail(ControlError("no_leader", str(result)))
