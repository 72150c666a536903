"""The control server: the agent's API over a Unix socket and, optionally, TCP.

This module moves frames; what the ops do is the handler's business. The
agent gives `ControlServer` an object with

    async def handle(op: str, args: dict, events: EventSink) -> object

which receives validated, normalized arguments (see protocol.py), returns the
result or raises `ControlError`. Any other exception becomes an `internal`
error response and a log line; the connection and the agent carry on.

A handler may also offer a fast path, `fast(op, args, ticket) -> bool`: it
takes the request without a task (True) and later calls `ticket.ok(result)`,
`ticket.fail(error)` or `ticket.slow()` (serve it the normal way after all),
exactly once, from the trio thread. Thousands of commands a second on one
connection cost a task, a cancel scope and an Event each on the normal path;
on the fast path they cost a callback.

Theory of operation
-------------------
One task per connection reads frames and dispatches each request into the
connection's nursery, so a slow `command` never holds up a `ping` behind it.
Responses are written under a lock, one whole frame at a time, and a write is
shielded from cancellation (bounded by `send_timeout_s`): a frame cut in half
would corrupt the stream for every other request on it.

Every resource an untrusted peer can tie up is bounded (`ControlLimits`):
connections (global), requests in flight per connection (the reader stops
reading when full, so TCP flow control pushes back on the client), the
request frame size, how long a TCP peer may take to authenticate, how long
one frame may take to arrive once it started (slow-loris), how long a TCP
connection may sit idle with nothing in flight, and how long a write may
block on a client that does not read.

Connection end. At EOF from the client (it may half-close after pipelining)
the requests in flight still get their answers, except streams, which are
cancelled: nobody is left to stop them. A protocol violation, a timeout or a
broken write cancels everything on that connection. A rejection (a bad peer,
bad token, malformed frame without an id, too many connections) is answered
with one error frame with `"id": null` before the close, so the operator sees
why instead of a bare EOF.
"""

from __future__ import annotations

import errno
import hmac
import logging
import math
import os
import pwd
import socket
import stat
import struct
from collections.abc import Callable, Mapping
from functools import partial
from typing import NoReturn, Protocol

import attrs
import trio

from raftfleet_agent.control.protocol import (
    AUTH_REQUEST_BYTES_MAX,
    BAD_REQUEST,
    INTERNAL,
    OPS,
    REQUEST_BYTES_MAX,
    RESPONSE_BYTES_MAX,
    TIMEOUT,
    UNAUTHORIZED,
    UNAVAILABLE,
    UNKNOWN_OP,
    ControlError,
    Request,
    RequestError,
    Unauthorized,
    error_response,
    event_message,
    ok_response,
    parse_envelope,
    validate_args,
)
from raftfleet_agent.log_throttle import Throttle
from raftfleet_agent.transport.framing import NEED_DATA, FrameDecoder, FrameError, encode_frame

__all__ = [
    "ControlHandler",
    "ControlLimits",
    "ControlServer",
    "ControlSocketInUse",
    "ControlStatistics",
    "EventSink",
    "PeerCredentials",
    "Ticket",
    "peer_allowed",
    "peer_credentials",
    "supplementary_groups",
]

logger = logging.getLogger("raftfleet.control")

SOCKET_MODE = 0o660  # owner and the operators' group; nobody else may connect
_RECEIVE_BYTES = 64 * 1024
_LINGER_S = 1.0  # how long a goodbye waits for the client to read it and hang up
_LINGER_BYTES_MAX = 64 * 1024
_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


class EventSink(Protocol):
    """Where a streaming op's handler sends progress events, in order."""

    async def send(self, event: Mapping[str, object]) -> None: ...


class ControlHandler(Protocol):
    """What the agent implements behind the control server."""

    async def handle(self, op: str, args: dict[str, object], events: EventSink) -> object: ...


# A handler's optional fast path: `fast(op, args, ticket) -> bool`.
_FastPathFn = Callable[[str, dict[str, object], "Ticket"], bool]


class Ticket(Protocol):
    """A request taken by a handler's fast path; settle it exactly once."""

    def ok(self, result: object) -> None: ...

    def fail(self, error: ControlError) -> None: ...

    def slow(self) -> None: ...


@attrs.frozen(kw_only=True)
class ControlLimits:
    """Bounds on what one client can make the agent hold or wait for."""

    max_connections: int = attrs.field(default=128, validator=attrs.validators.ge(1))
    max_in_flight: int = attrs.field(default=64, validator=attrs.validators.ge(1))
    request_bytes_max: int = attrs.field(
        default=REQUEST_BYTES_MAX, validator=attrs.validators.ge(64)
    )
    response_bytes_max: int = attrs.field(
        default=RESPONSE_BYTES_MAX, validator=attrs.validators.ge(64)
    )
    auth_timeout_s: float = attrs.field(default=5.0, validator=attrs.validators.gt(0))
    frame_timeout_s: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))
    # TCP only: local users of the Unix socket are trusted to hang up.
    idle_timeout_s: float | None = 300.0
    send_timeout_s: float = attrs.field(default=10.0, validator=attrs.validators.gt(0))


@attrs.frozen(kw_only=True)
class ControlStatistics:
    connections: int
    connections_peak: int
    connections_total: int
    connections_refused: int  # bad peer, bad token, too many connections
    requests_total: int
    requests_in_flight: int
    errors_total: int  # error responses, any code
    internal_errors_total: int  # handler bugs


@attrs.frozen
class PeerCredentials:
    pid: int
    uid: int
    gid: int


class ControlSocketInUse(OSError):
    """Another process is listening on the control socket path."""


def peer_credentials(sock: socket.socket | trio.socket.SocketType) -> PeerCredentials:
    """Who is at the other end of a Unix socket, as the kernel saw them connect."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    return PeerCredentials(*_UCRED.unpack(raw))


def supplementary_groups(uid: int, gid: int) -> list[int] | None:
    """The groups of the user `uid`, or None if the user has no passwd entry.

    May block on NSS (LDAP, sssd): call it in a thread.
    """
    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return None
    return os.getgrouplist(name, gid)


def peer_allowed(
    cred: PeerCredentials, *, own_uid: int, socket_gid: int, groups: list[int] | None = None
) -> bool:
    """The Unix socket policy: root, our own user, and members of the socket's group.

    The file mode (0660) already keeps others from connecting; this check is
    the second lock, for when someone loosens the mode or the directory.
    `groups` are the peer user's supplementary groups, if known.
    """
    if cred.uid in (0, own_uid) or cred.gid == socket_gid:
        return True
    return groups is not None and socket_gid in groups


class ControlServer:
    """Serves the control protocol to `handler` on any number of listeners.

    Start each listener with `await nursery.start(server.serve_unix, path)` or
    `serve_tcp`; cancel the nursery to stop. The connection cap is shared by
    all listeners of one server.
    """

    def __init__(
        self,
        handler: ControlHandler,
        *,
        limits: ControlLimits | None = None,
        own_uid: int | None = None,
    ) -> None:
        self.handler = handler
        self.limits = limits or ControlLimits()
        self.own_uid = os.geteuid() if own_uid is None else own_uid
        self._connections = 0
        self._connections_peak = 0
        self._connections_total = 0
        self._connections_refused = 0
        # Anyone who can connect triggers refusals: a line per interval, not per connection.
        self._say_refused = Throttle(logger)
        self._requests_total = 0
        self._requests_in_flight = 0
        self._errors_total = 0
        self._internal_errors_total = 0

    def statistics(self) -> ControlStatistics:
        return ControlStatistics(
            connections=self._connections,
            connections_peak=self._connections_peak,
            connections_total=self._connections_total,
            connections_refused=self._connections_refused,
            requests_total=self._requests_total,
            requests_in_flight=self._requests_in_flight,
            errors_total=self._errors_total,
            internal_errors_total=self._internal_errors_total,
        )

    # ----------------------------------------------------------------------
    # Listeners

    async def serve_unix(
        self, path: str, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED
    ) -> NoReturn:
        """Listen on the Unix socket `path` (mode 0660) until cancelled.

        A stale socket file (nothing listening) is replaced; if another
        process answers on it, raise ControlSocketInUse instead. The parent
        directory must exist. On cancellation the listener and every
        connection are closed, and the socket file is removed if it is still
        the one we created (a successor may already have replaced it).
        `task_status.started(path)` once connections are accepted.
        """
        await _clear_stale_socket(path)
        sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        ours: tuple[int, int] | None = None
        try:
            await sock.bind(path)
            ours = _own_socket_file(path)
            sock.listen(self.limits.max_connections)
            listener = trio.SocketListener(sock)
            serve = partial(self._serve_connection, path=path, token=None)
            async with trio.open_nursery() as nursery:
                await nursery.start(trio.serve_listeners, serve, [listener])
                logger.info("control API listening on unix:%s", path)
                task_status.started(path)
                await trio.sleep_forever()
        finally:
            sock.close()
            if ours is not None:
                _remove_if_ours(path, ours)
        raise AssertionError("unreachable")  # sleep_forever only ends by cancellation

    async def serve_tcp(
        self,
        host: str,
        port: int,
        token: bytes,
        *,
        task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Listen on TCP `host:port` until cancelled; clients must send the token first.

        `port` may be 0; `task_status.started((host, port))` reports the bound
        address. On cancellation every connection is closed.
        """
        if not isinstance(token, bytes) or not token:
            raise ValueError("serve_tcp needs a non-empty token")
        listeners = await trio.open_tcp_listeners(port, host=host)
        bound = listeners[0].socket.getsockname()
        serve = partial(self._serve_connection, path=None, token=token)
        async with trio.open_nursery() as nursery:
            await nursery.start(trio.serve_listeners, serve, listeners)
            logger.info("control API listening on tcp:%s:%d", bound[0], bound[1])
            task_status.started((bound[0], bound[1]))
            await trio.sleep_forever()
        raise AssertionError("unreachable")

    # ----------------------------------------------------------------------
    # One connection

    async def _serve_connection(
        self, stream: trio.SocketStream, *, path: str | None, token: bytes | None
    ) -> None:
        peer = _describe_peer(stream, path)
        if self._connections >= self.limits.max_connections:
            self._connections_refused += 1
            self._say_refused.warning(
                "control: refusing %s: %d connections open", peer, self._connections
            )
            message = f"too many control connections (max {self.limits.max_connections})"
            await self._reject(stream, ControlError(UNAVAILABLE, message))
            return
        self._connections += 1
        self._connections_total += 1
        self._connections_peak = max(self._connections_peak, self._connections)
        try:
            if path is not None:
                refusal = await self._check_peer(stream, path)
                if refusal is not None:
                    self._connections_refused += 1
                    self._say_refused.warning("control: refusing %s: %s", peer, refusal.message)
                    await self._reject(stream, refusal)
                    return
            await _Connection(self, stream, peer=peer, token=token).run()
        except Exception:
            # A bug in this module must cost one connection, never the agent.
            logger.exception("control connection %s failed", peer)
        finally:
            self._connections -= 1
            await trio.aclose_forcefully(stream)

    async def _check_peer(self, stream: trio.SocketStream, path: str) -> Unauthorized | None:
        try:
            cred = peer_credentials(stream.socket)
        except OSError as exc:
            return Unauthorized(f"cannot read the peer's credentials: {exc.strerror}")
        try:
            # Read per connection: an operator may chgrp the socket while we run.
            socket_gid = os.stat(path).st_gid
        except OSError:
            return Unauthorized("the control socket file is gone")
        check = partial(peer_allowed, cred, own_uid=self.own_uid, socket_gid=socket_gid)
        if check():
            return None
        groups = None
        with trio.move_on_after(2.0):  # a hung NSS lookup must not pin the connection
            groups = await trio.to_thread.run_sync(
                supplementary_groups, cred.uid, cred.gid, abandon_on_cancel=True
            )
        if check(groups=groups):
            return None
        return Unauthorized(
            f"uid {cred.uid} is not root, the agent's user, or in the socket's group {socket_gid}"
        )

    async def _reject(self, stream: trio.SocketStream, error: ControlError) -> None:
        self._errors_total += 1
        await _send_goodbye(stream, error_response(None, error), self.limits.send_timeout_s)


class _Connection:
    """The state of one client connection and the tasks serving it."""

    def __init__(
        self, server: ControlServer, stream: trio.SocketStream, *, peer: str, token: bytes | None
    ) -> None:
        self.server = server
        self.limits = server.limits
        self.stream = stream
        self.peer = peer
        self.token = token  # None on the Unix socket: the kernel vouched for the peer
        # The handler's fast path, looked up once rather than per request.
        self._fast: _FastPathFn | None = getattr(server.handler, "fast", None)
        self.authenticated = token is None
        self.idle_timeout_s = None if token is None else self.limits.idle_timeout_s
        cap = self.limits.request_bytes_max
        self.decoder = FrameDecoder(cap if self.authenticated else min(cap, AUTH_REQUEST_BYTES_MAX))
        self.send_lock = trio.Lock()
        # Frames waiting for the writer: replies that complete while a write is
        # under way leave together, in one send (pipelining clients get many).
        self._outbox: list[bytes] = []
        self._flush_pending = False
        self.closed = False  # the connection's tasks are gone: late answers are dropped
        # Set when the last request in flight finishes (fast-path requests have
        # no task that would keep the nursery open until they are answered).
        self._drained: trio.Event | None = None
        self.slots = trio.Semaphore(self.limits.max_in_flight)
        self.in_flight: set[int] = set()
        # Whether the client ever had two requests in flight here. A client
        # that waits for each reply gets it written at once (`reply_soon`).
        self.pipelined = False
        self.streams: dict[int, trio.CancelScope] = {}
        # last_active is read only for the idle timeout, so it is kept up to
        # date only on connections that have one (reading the clock per
        # request would cost the others for nothing).
        self.opened_at = self.last_active = trio.current_time()
        # When the first byte of the frame being received arrived, if any.
        self.frame_started: float | None = None
        self.receive_scope: trio.CancelScope | None = None
        self.nursery: trio.Nursery | None = None

    async def run(self) -> None:
        try:
            async with trio.open_nursery() as nursery:
                self.nursery = nursery
                await self._read_requests()
                for scope in self.streams.values():
                    scope.cancel()
                # Leaving the block waits for the tasks still in flight; the
                # fast-path requests have none, so wait for them explicitly.
                while self.in_flight:
                    self._drained = trio.Event()
                    await self._drained.wait()
        finally:
            self.closed = True

    def _close_now(self) -> None:
        assert self.nursery is not None
        self.nursery.cancel_scope.cancel()

    # Reading

    async def _read_requests(self) -> None:
        while True:
            data = await self._receive()
            if data is None:
                return
            completed = 0
            try:
                self.decoder.feed(data)
                while (obj := self.decoder.next_frame()) is not NEED_DATA:
                    completed += 1
                    if self.idle_timeout_s is not None:
                        self.last_active = trio.current_time()
                    if not await self._dispatch(obj):
                        return
            except FrameError as exc:
                await self._goodbye(RequestError(BAD_REQUEST, f"malformed frame: {exc}"), None)
                return
            if not self.decoder.buffered_bytes:
                self.frame_started = None
            elif completed or self.frame_started is None:
                self.frame_started = trio.current_time()

    def _deadline(self) -> tuple[float, str]:
        """When the next receive gives up, and why."""
        if not self.authenticated:
            limit = self.limits.auth_timeout_s
            return self.opened_at + limit, f"no authentication within {limit:g} s"
        if self.frame_started is not None:
            limit = self.limits.frame_timeout_s
            return self.frame_started + limit, f"a request frame took over {limit:g} s"
        if not self.in_flight and self.idle_timeout_s is not None:
            limit = self.idle_timeout_s
            return self.last_active + limit, f"idle for {limit:g} s"
        return math.inf, ""

    async def _receive(self) -> bytes | None:
        """The next bytes from the client; None at EOF, on error or timeout."""
        deadline, reason = self._deadline()
        if deadline == math.inf and self.idle_timeout_s is None:
            # No deadline now, and none can appear while we wait: only `_finish`
            # moves it, to start the idle clock, and this connection has none.
            # So skip the cancel scope: entering and leaving one costs more
            # CPU than a pipelined request's share of the receive.
            try:
                return await self.stream.receive_some(_RECEIVE_BYTES) or None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
        with trio.CancelScope(deadline=deadline) as scope:
            self.receive_scope = scope
            try:
                return await self.stream.receive_some(_RECEIVE_BYTES) or None
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return None
            finally:
                self.receive_scope = None
        # The deadline may have moved since it was set (see _finish).
        _, reason = self._deadline()
        logger.info("control: closing %s: %s", self.peer, reason)
        await self._goodbye(ControlError(TIMEOUT, f"closing the connection: {reason}"), None)
        return None

    async def _dispatch(self, obj: object) -> bool:
        """Start one request; False if the connection must close."""
        try:
            request_id, op, raw_args = parse_envelope(obj)
            if not self.authenticated and op != "auth":
                raise RequestError(
                    UNAUTHORIZED, "authenticate first: send the auth op with the token",
                    request_id=request_id,
                )  # fmt: skip
            args = validate_args(op, raw_args, request_id)
        except RequestError as exc:
            if not self.authenticated:
                if exc.code == UNKNOWN_OP:  # no op table for strangers
                    exc = RequestError(
                        UNAUTHORIZED, "authenticate first", request_id=exc.request_id
                    )
                self.server._connections_refused += 1
                await self._goodbye(exc, exc.request_id)
                return False
            if exc.request_id is None:
                await self._goodbye(exc, None)
                return False
            await self._send_reply(error_response(exc.request_id, exc))
            return True
        if op == "auth":
            return await self._authenticate(request_id, args["token"])  # type: ignore[arg-type]
        if request_id in self.in_flight:
            message = f"request id {request_id} is already in flight on this connection"
            await self._send_reply(error_response(request_id, ControlError(BAD_REQUEST, message)))
            return True
        # Full: stop reading until a slot frees; the client feels TCP backpressure.
        try:
            self.slots.acquire_nowait()  # no checkpoint per request while there is room
        except trio.WouldBlock:
            await self.slots.acquire()
        if self.in_flight:
            self.pipelined = True
        self.in_flight.add(request_id)
        self.server._requests_in_flight += 1
        self.server._requests_total += 1
        if self._fast is not None and not OPS[op].streaming:
            ticket = _Ticket(self, request_id, op, args)
            if self._try_fast(self._fast, ticket):
                return True
        assert self.nursery is not None
        self.nursery.start_soon(self._run_request, Request(request_id, op, args))
        return True

    def _try_fast(self, fast: _FastPathFn, ticket: _Ticket) -> bool:
        try:
            taken = fast(ticket.op, ticket.args, ticket)
        except ControlError as exc:
            ticket.fail(exc)
            return True
        except Exception:
            ticket.fail(self._internal_error(ticket.op, ticket.id))
            return True
        return bool(taken)

    def _internal_error(self, op: str, request_id: int) -> ControlError:
        logger.exception("control: %s (id %d) from %s failed", op, request_id, self.peer)
        self.server._internal_errors_total += 1
        return ControlError(INTERNAL, f"{op} failed: an agent bug (see the agent log)")

    async def _authenticate(self, request_id: int, token: bytes) -> bool:
        if self.token is None:
            await self._send_reply(ok_response(request_id, {"auth": "peercred"}))
            return True
        if hmac.compare_digest(token, self.token):
            self.authenticated = True
            self.decoder.frame_bytes_max = self.limits.request_bytes_max
            await self._send_reply(ok_response(request_id, {"auth": "token"}))
            return True
        self.server._connections_refused += 1
        self.server._say_refused.warning("control: refusing %s: wrong token", self.peer)
        await self._goodbye(Unauthorized("wrong token"), request_id)
        return False

    # Requests

    async def _run_request(self, request: Request) -> None:
        sink = _EventSink(self, request)
        try:
            with trio.CancelScope() as scope:
                if request.streaming:
                    self.streams[request.id] = scope
                reply = await self._call_handler(request, sink)
                sink.closed = True
                await self._send_reply(reply)
        finally:
            sink.closed = True
            self.streams.pop(request.id, None)
            self._finish(request.id)

    async def _call_handler(self, request: Request, sink: _EventSink) -> dict[str, object]:
        try:
            result = await self.server.handler.handle(request.op, request.args, sink)
        except ControlError as exc:
            return error_response(request.id, exc)
        except Exception:
            return error_response(request.id, self._internal_error(request.op, request.id))
        return ok_response(request.id, result)

    def _finish(self, request_id: int) -> None:
        self.in_flight.discard(request_id)
        self.server._requests_in_flight -= 1
        self.slots.release()
        if not self.in_flight:
            if self._drained is not None:
                self._drained.set()
            if self.idle_timeout_s is not None:
                self.last_active = trio.current_time()
            if self.receive_scope is not None:
                # The reader is waiting with no deadline; the idle clock starts now.
                self.receive_scope.deadline = self._deadline()[0]

    # Writing

    async def _send_reply(self, reply: dict[str, object]) -> None:
        """Send a final response; a result that cannot be sent becomes `internal`."""
        await self.send_frame(self._reply_frame(reply))

    def _reply_frame(self, reply: dict[str, object]) -> bytes:
        try:
            frame = encode_frame(reply, self.limits.response_bytes_max)
        except (TypeError, ValueError) as exc:
            logger.error("control: cannot encode reply to id %s: %s", reply.get("id"), exc)
            self.server._internal_errors_total += 1
            error = ControlError(INTERNAL, f"the result cannot be sent: {exc}")
            reply = error_response(reply.get("id"), error)  # type: ignore[arg-type]
            frame = encode_frame(reply)
        if reply.get("ok") is False:
            self.server._errors_total += 1
        return frame

    def reply_soon(self, reply: dict[str, object]) -> None:
        """Queue a final response from synchronous code; a task writes it.

        Every reply queued before that task runs leaves in the same write.
        Except on a connection whose client waits for each reply: there the
        reply is written at once if the socket takes it without blocking,
        instead of after the rest of the host's turn and the task's start
        (measured, alternated: a lone writer 631-671/s against 591-607/s,
        more while the host is busy). A pipelining
        client keeps the batched write, which costs it less per reply.
        """
        if self.closed:
            return
        self._outbox.append(self._reply_frame(reply))
        if self._flush_pending or self.send_lock.locked():
            return  # the writer that is (about to be) running takes it along
        if not self.pipelined and self._write_now():
            return
        self._flush_pending = True
        assert self.nursery is not None
        self.nursery.start_soon(self._flush)

    def _write_now(self) -> bool:
        """Write the outbox with one non-blocking call; False leaves the rest to a task.

        Safe without the send lock: nobody holds it (checked by the caller),
        and nothing else can write before this returns, as it never yields.
        """
        data = b"".join(self._outbox)
        self._outbox.clear()
        try:
            n = os.write(self.stream.socket.fileno(), data)
        except OSError:  # would block, or the peer is gone: the task's write handles both
            n = 0
        if n < len(data):
            self._outbox.append(data[n:])
            return False
        return True

    async def _flush(self) -> None:
        self._flush_pending = False
        await self._write_outbox()

    async def send_frame(self, frame: bytes) -> None:
        """Queue one whole frame and write it, or close the connection if impossible.

        If a write is already under way, the frame joins the queue and that
        writer sends it with whatever else queued up, in one system call.
        """
        self._outbox.append(frame)
        await self._write_outbox()

    async def _write_outbox(self) -> None:
        if not self._outbox:
            return
        if self.send_lock.locked():
            await trio.lowlevel.checkpoint()
            return
        async with self.send_lock:
            try:
                while self._outbox:
                    data = b"".join(self._outbox)
                    self._outbox.clear()
                    # Shielded: a frame cancelled half-way would garble the stream.
                    # The scope's own deadline still bounds the write: one scope
                    # does what a shield around fail_after did with three context
                    # managers per write.
                    deadline = trio.current_time() + self.limits.send_timeout_s
                    with trio.CancelScope(shield=True, deadline=deadline) as scope:
                        await self.stream.send_all(data)
                    if scope.cancelled_caught:
                        logger.info("control: closing %s: it does not read its replies", self.peer)
                        break
                else:
                    return
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                pass
        self._outbox.clear()
        self._close_now()
        await trio.lowlevel.checkpoint()  # let the cancellation reach the caller

    async def _goodbye(self, error: ControlError, request_id: int | None) -> None:
        """Send one last error frame, then close everything on this connection."""
        self.server._errors_total += 1
        async with self.send_lock:
            await _send_goodbye(self.stream, error_response(request_id, error), _LINGER_S)
        self._close_now()


class _Ticket:
    """A fast-path request: the handler settles it once, from the trio thread.

    It holds the request's parts rather than a `Request`: most are answered
    right here, and only `slow` needs the record.
    """

    __slots__ = ("_conn", "_settled", "args", "id", "op")

    def __init__(self, conn: _Connection, request_id: int, op: str, args: dict) -> None:
        self._conn = conn
        self.id = request_id
        self.op = op
        self.args = args
        self._settled = False

    def ok(self, result: object) -> None:
        self._answer(ok_response(self.id, result))

    def fail(self, error: ControlError) -> None:
        self._answer(error_response(self.id, error))

    def _answer(self, reply: dict[str, object]) -> None:
        if self._settle():
            self._conn.reply_soon(reply)
            self._conn._finish(self.id)

    def slow(self) -> None:
        """Serve the request the normal way (a task running the handler) after all."""
        if not self._settle():
            return
        conn = self._conn
        if conn.closed:
            conn._finish(self.id)
            return
        assert conn.nursery is not None
        conn.nursery.start_soon(conn._run_request, Request(self.id, self.op, self.args))

    def _settle(self) -> bool:
        if self._settled:
            return False
        self._settled = True
        return True


class _EventSink:
    __slots__ = ("_conn", "_request", "closed")

    def __init__(self, conn: _Connection, request: Request) -> None:
        self._conn = conn
        self._request = request
        self.closed = False

    async def send(self, event: Mapping[str, object]) -> None:
        """Send one event before the final response.

        Raises RuntimeError if the op does not stream or already answered,
        TypeError/ValueError if the event cannot be encoded or is too big.
        Cancelled if the connection closes.
        """
        if self.closed:
            raise RuntimeError(f"{self._request.op}: event sent after the request finished")
        if not self._request.streaming:
            raise RuntimeError(f"{self._request.op} is not a streaming op")
        if not isinstance(event, Mapping):
            raise TypeError(f"an event must be a map, not {type(event).__name__}")
        message = event_message(self._request.id, event)
        await self._conn.send_frame(encode_frame(message, self._conn.limits.response_bytes_max))


async def _send_goodbye(
    stream: trio.SocketStream, message: dict[str, object], wait_s: float
) -> None:
    """Best effort: send `message`, half-close, and let the client read it.

    Closing a TCP socket with unread input sends RST, which can destroy the
    goodbye before the client reads it; so read and drop what the client
    still sends until it hangs up (a "lingering close"), briefly.
    """
    with trio.CancelScope(shield=True), trio.move_on_after(wait_s):
        try:
            await stream.send_all(encode_frame(message))
            await stream.send_eof()
            dropped = 0
            while dropped < _LINGER_BYTES_MAX:
                data = await stream.receive_some(_RECEIVE_BYTES)
                if not data:
                    break
                dropped += len(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError, trio.BusyResourceError):
            pass


# --------------------------------------------------------------------------
# The socket file


async def _clear_stale_socket(path: str) -> None:
    """Remove a socket file nobody listens on; refuse anything else."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise ControlSocketInUse(
            errno.EEXIST, f"{path} exists and is not a socket; refusing to replace it"
        )
    probe = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with trio.move_on_after(1.0):
            await probe.connect(path)
        # Connected, or so busy the connect hung: either way someone is there.
        raise ControlSocketInUse(
            errno.EADDRINUSE, f"another process (an agent?) is listening on {path}"
        )
    except ConnectionRefusedError:
        logger.info("control: removing stale socket %s", path)
        os.unlink(path)
    finally:
        probe.close()


def _own_socket_file(path: str) -> tuple[int, int]:
    """Set the mode of the socket we just bound; return its identity (dev, inode)."""
    # Before listen(): nobody can connect while the mode is still the umask's.
    os.chmod(path, SOCKET_MODE)
    st = os.stat(path)
    return st.st_dev, st.st_ino


def _remove_if_ours(path: str, ours: tuple[int, int]) -> None:
    try:
        st = os.lstat(path)
        if (st.st_dev, st.st_ino) == ours:
            os.unlink(path)
    except OSError:
        pass  # already gone, or not ours to remove


def _describe_peer(stream: trio.SocketStream, path: str | None) -> str:
    try:
        if path is not None:
            cred = peer_credentials(stream.socket)
            return f"unix:{path} pid={cred.pid} uid={cred.uid}"
        host, port = stream.socket.getpeername()[:2]
        return f"tcp:{host}:{port}"
    except OSError:
        return "unknown peer"
