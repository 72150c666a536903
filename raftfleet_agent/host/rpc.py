"""Request/answer calls between agents over the peer transport.

Calls ride the same connection as Raft traffic. An unanswered call fails with
`RpcTimeout` after its deadline (the peer may be gone, or the frame dropped);
callers that retry must make their operation idempotent (commands carry a
request id for exactly that reason).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Awaitable, Callable

import trio

from raftfleet_agent.host import wire

logger = logging.getLogger("raftfleet.rpc")

Handler = Callable[[str, dict], Awaitable[object]]


class RpcError(Exception):
    """The remote handler answered with an error: `code` and message as it gave them."""

    def __init__(self, code: str, message: str, details: dict | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.details = details or {}


class RpcTimeout(RpcError):
    def __init__(self, peer: str, op: str) -> None:
        super().__init__("timeout", f"no answer from {peer} to {op}")


class RpcUnreachable(RpcError):
    def __init__(self, peer: str) -> None:
        super().__init__("unavailable", f"agent {peer} is not connected")


class PeerRpc:
    """Both sides of agent-to-agent calls.

    `send(peer, frame) -> bool` is the transport's non-blocking send;
    handlers are `async def handler(peer, args) -> value` per op, and raise
    RpcError to answer with an error.
    """

    def __init__(self, send: Callable[[str, object], bool], nursery: trio.Nursery) -> None:
        self._send = send
        self._nursery = nursery
        self._ids = itertools.count(1)
        self._waiting: dict[int, tuple[trio.Event, list]] = {}
        self._handlers: dict[str, Callable[[str, dict], Awaitable[object]]] = {}

    def register(self, op: str, handler: Callable[[str, dict], Awaitable[object]]) -> None:
        self._handlers[op] = handler

    async def call(self, peer: str, op: str, args: dict, timeout_s: float) -> object:
        """Call `op` on `peer`; on cancellation the late answer, if any, is dropped."""
        call_id = next(self._ids)
        done, box = trio.Event(), []
        self._waiting[call_id] = (done, box)
        try:
            if not self._send(peer, wire.encode_call(call_id, op, args)):
                raise RpcUnreachable(peer)
            with trio.move_on_after(timeout_s):
                await done.wait()
        finally:
            self._waiting.pop(call_id, None)
        if not box:
            raise RpcTimeout(peer, op)
        ok, value = box[0]
        if ok:
            return value
        if not isinstance(value, dict):
            raise RpcError("internal", f"{peer} answered {op} with a malformed error")
        raise RpcError(
            str(value.get("code", "internal")),
            str(value.get("message", "")),
            value.get("details") if isinstance(value.get("details"), dict) else None,
        )

    def on_call(self, peer: str, fields: list) -> None:
        call_id, op, args = fields
        self._nursery.start_soon(self._serve, peer, call_id, op, args)

    def on_answer(self, fields: list) -> None:
        call_id, ok, value = fields
        waiting = self._waiting.get(call_id)
        if waiting is not None and not waiting[1]:
            waiting[1].append((ok, value))
            waiting[0].set()

    async def _serve(self, peer: str, call_id: int, op: str, args: dict) -> None:
        handler = self._handlers.get(op)
        try:
            if handler is None:
                raise RpcError("unknown_op", f"unknown peer call {op!r}")
            ok, value = True, await handler(peer, args)
        except RpcError as e:
            ok, value = False, {"code": e.code, "message": str(e), "details": e.details}
        except Exception as e:
            logger.exception("peer call %s from %s failed", op, peer)
            ok, value = False, {"code": "internal", "message": f"{type(e).__name__}: {e}"}
        self._send(peer, wire.encode_answer(call_id, ok, value))
