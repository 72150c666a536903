"""Request/answer calls between agents over the peer transport.

Calls ride the same connection as Raft traffic. An unanswered call fails with
`RpcTimeout` after its deadline (the peer may be gone, or the frame dropped);
callers that retry must make their operation idempotent (commands carry a
request id for exactly that reason).

Forwarded commands come by the thousand a second, so both ends also have a
way without a task: `start_call` sends a call and runs a callback with the
answer (or the timeout), and a handler registered with `register_fast` may
take a call and answer it later through a callback.
"""

from __future__ import annotations

import heapq
import itertools
import logging
from collections.abc import Awaitable, Callable
from functools import partial

import trio

from raftfleet_agent.host import wire

logger = logging.getLogger("raftfleet.rpc")

Handler = Callable[[str, dict], Awaitable[object]]
# on_answer(ok, value): value is the result, or the error as the peer sent it
# ({"code", "message", "details"}; see `as_error`).
OnAnswer = Callable[[bool, object], None]
# fast(peer, args, answer) -> True if taken (it then calls answer(ok, value)
# exactly once); False: the call is served by the task-based handler.
FastHandler = Callable[[str, dict, OnAnswer], bool]

# Timeouts of calls started without a task are checked at most this often.
EXPIRY_GRANULARITY_S = 0.05
# Calls started without a task between two sweeps of the deadline heap.
SWEEP_EVERY = 4096


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


def as_error(peer: str, op: str, value: object) -> RpcError:
    """The RpcError for an error answer (a peer's dict, checked for shape)."""
    if not isinstance(value, dict):
        return RpcError("internal", f"{peer} answered {op} with a malformed error")
    details = value.get("details")
    return RpcError(
        str(value.get("code", "internal")),
        str(value.get("message", "")),
        details if isinstance(details, dict) else None,
    )


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
        self._waiting: dict[int, tuple[str, trio.Event, list]] = {}  # call id -> peer, ...
        self._handlers: dict[str, Callable[[str, dict], Awaitable[object]]] = {}
        self._fast: dict[str, FastHandler] = {}
        self._callbacks: dict[int, tuple[str, str, OnAnswer]] = {}  # call id -> peer, op, callback
        self._deadlines: list[tuple[float, int]] = []  # (deadline, call id), a heap
        self._expiring = False  # the task that times out callback calls is running
        self._started_since_sweep = 0

    def register(self, op: str, handler: Callable[[str, dict], Awaitable[object]]) -> None:
        self._handlers[op] = handler

    def register_fast(self, op: str, handler: FastHandler) -> None:
        """Offer `op` to `handler` first; what it declines goes to the `register`ed one."""
        self._fast[op] = handler

    async def call(self, peer: str, op: str, args: dict, timeout_s: float) -> object:
        """Call `op` on `peer`; on cancellation the late answer, if any, is dropped."""
        call_id = next(self._ids)
        done, box = trio.Event(), []
        self._waiting[call_id] = (peer, done, box)
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
        raise as_error(peer, op, value)

    def start_call(
        self, peer: str, op: str, args: dict, timeout_s: float, on_answer: OnAnswer
    ) -> bool:
        """Call `op` on `peer` without a task; False if it could not be sent.

        `on_answer(ok, value)` runs once, from the trio thread: with the answer,
        or with a `timeout` error after `timeout_s` (give or take
        EXPIRY_GRANULARITY_S).
        """
        call_id = next(self._ids)
        if not self._send(peer, wire.encode_call(call_id, op, args)):
            return False
        self._callbacks[call_id] = (peer, op, on_answer)
        heapq.heappush(self._deadlines, (trio.current_time() + timeout_s, call_id))
        self._started_since_sweep += 1
        if self._started_since_sweep >= SWEEP_EVERY:
            self._sweep_deadlines()
        if not self._expiring:
            self._expiring = True
            self._nursery.start_soon(self._expire_calls)
        return True

    async def _expire_calls(self) -> None:
        """Time out unanswered callback calls; ends when none is pending."""
        try:
            deadlines = self._deadlines
            while deadlines:
                # Answered calls stay in the heap until their deadline: popping
                # them then is cheaper than finding them at every answer.
                await trio.sleep_until(deadlines[0][0] + EXPIRY_GRANULARITY_S)
                now = trio.current_time()
                while deadlines and deadlines[0][0] <= now:
                    pending = self._callbacks.pop(heapq.heappop(deadlines)[1], None)
                    if pending is not None:
                        peer, op, on_answer = pending
                        on_answer(
                            False, {"code": "timeout", "message": f"no answer from {peer} to {op}"}
                        )
        finally:
            self._expiring = False

    def _sweep_deadlines(self) -> None:
        """Forget the deadlines of answered calls (as MultiRaftHost._sweep_deadlines).

        Otherwise the heap holds every call of the last timeout: with 60 s
        timeouts, hundreds of thousands. In place: the expiry task holds it.
        """
        self._started_since_sweep = 0
        self._deadlines[:] = [d for d in self._deadlines if d[1] in self._callbacks]
        heapq.heapify(self._deadlines)

    def on_call(self, peer: str, fields: list) -> None:
        call_id, op, args = fields
        fast = self._fast.get(op)
        if fast is not None and self._try_fast(fast, peer, call_id, op, args):
            return
        self._nursery.start_soon(self._serve, peer, call_id, op, args)

    def _try_fast(self, fast: FastHandler, peer: str, call_id: int, op: str, args: dict) -> bool:
        answer = partial(self._answer, peer, call_id)
        try:
            return fast(peer, args, answer)
        except RpcError as e:
            answer(False, {"code": e.code, "message": str(e), "details": e.details})
        except Exception as e:
            logger.exception("peer call %s from %s failed", op, peer)
            answer(False, {"code": "internal", "message": f"{type(e).__name__}: {e}"})
        return True

    def _answer(self, peer: str, call_id: int, ok: bool, value: object) -> None:
        self._send(peer, wire.encode_answer(call_id, ok, value))

    def on_answer(self, peer: str, fields: list) -> None:
        """An answer from `peer`; only the peer a call went to may answer it."""
        call_id, ok, value = fields
        pending = self._callbacks.get(call_id)
        if pending is not None:
            if pending[0] == peer:
                del self._callbacks[call_id]
                pending[2](ok, value)
            return
        waiting = self._waiting.get(call_id)
        if waiting is not None and waiting[0] == peer and not waiting[2]:
            waiting[2].append((ok, value))
            waiting[1].set()

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
        self._answer(peer, call_id, ok, value)
