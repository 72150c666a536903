"""One authenticated peer connection: its outgoing queue, reader and writer.

The connection does the I/O; the policy (which connection a peer keeps, when
to dial, what to count as a disconnection) lives in peers.py.

Theory of operation
-------------------
`PeerTransport.send()` appends encoded frames to `queue` and sets `wakeup`.
The writer takes everything queued (up to `write_bytes_max`) and writes it
with one `send_all`, so a burst of small Raft messages costs one syscall.
The reader feeds the FrameDecoder that did the handshake (it may already
hold frames the peer pipelined behind it) and hands each value to
`on_frame` in order. Any way the connection can end becomes a reason string
in `error` and a cancelled `cancel_scope`; nothing escapes to the transport
except bugs.
"""

from __future__ import annotations

import logging
import socket
from collections import deque
from collections.abc import Callable

import trio

from raftfleet_agent.transport.framing import FrameDecoder, FrameError
from raftfleet_agent.transport.handshake import HandshakeError, PeerIdentity
from raftfleet_agent.transport.records import Peer

__all__ = ["CONNECTION_ERRORS", "Connection", "describe", "tune_socket"]

logger = logging.getLogger("raftfleet.transport")

_RECEIVE_BYTES = 256 * 1024

# How a connection or a dial can fail without it being our bug: closed by
# us, broken by the other side, too slow, refused, or not authenticated.
CONNECTION_ERRORS = (
    trio.BrokenResourceError,
    trio.ClosedResourceError,
    trio.TooSlowError,
    OSError,
    HandshakeError,
)


class _ClosedByPeer(Exception):
    pass


class _HandlerFailed(Exception):
    pass


def describe(exc: BaseException) -> str:
    """A one-line reason for reachability reports and logs."""
    if isinstance(exc, HandshakeError | _ClosedByPeer | _HandlerFailed | FrameError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def tune_socket(stream: trio.abc.Stream) -> None:
    """Turn on TCP keepalive so a silently dead peer (no FIN) is noticed in seconds.

    Quiesced Raft groups send nothing, so without it a connection to a
    powered-off host could look alive for hours; TCP_USER_TIMEOUT bounds how
    long written data may stay unacknowledged.
    """
    sock = getattr(stream, "socket", None)
    if sock is None:
        return
    options = [(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)]
    for name, value in (("TCP_KEEPIDLE", 5), ("TCP_KEEPINTVL", 1), ("TCP_KEEPCNT", 3),
                        ("TCP_USER_TIMEOUT", 10_000)):  # fmt: skip
        if hasattr(socket, name):
            options.append((socket.IPPROTO_TCP, getattr(socket, name), value))
    for level, option, value in options:
        try:
            sock.setsockopt(level, option, value)
        except OSError:
            pass


class Connection:
    """One authenticated TCP connection; owned by the task that runs it."""

    __slots__ = (
        "cancel_scope",
        "decoder",
        "error",
        "identity",
        "outbound",
        "queue",
        "queued_bytes",
        "stream",
        "wakeup",
    )

    def __init__(
        self,
        stream: trio.abc.Stream,
        decoder: FrameDecoder,
        identity: PeerIdentity,
        *,
        outbound: bool,
    ) -> None:
        self.stream = stream
        self.decoder = decoder  # holds whatever the peer sent behind the handshake
        self.identity = identity
        self.outbound = outbound  # True if we dialed it
        self.queue: deque[bytes] = deque()  # encoded frames, oldest first
        self.queued_bytes = 0  # Invariant: == sum(map(len, queue))
        self.wakeup = trio.Event()  # set by send() when the writer may be idle
        # Created up front so the connection can be closed before its tasks run.
        self.cancel_scope = trio.CancelScope()
        self.error: str | None = None  # why it closed; the first reason wins

    def close(self, reason: str) -> None:
        """Ask the connection's tasks to stop; `run()` then returns."""
        if self.error is None:
            self.error = reason
        self.cancel_scope.cancel()

    async def run(
        self,
        peer: Peer,
        on_frame: Callable[[str, object], None],
        *,
        frame_bytes_max: int,
        write_bytes_max: int,
    ) -> None:
        """Run the reader and writer until the connection ends, then return.

        Does not close the stream (the caller does). Cancellation from outside
        propagates as usual; a `close()` makes it return normally.
        """
        self.decoder.frame_bytes_max = frame_bytes_max
        with self.cancel_scope:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._guard, self._read_loop(peer, on_frame), peer)
                nursery.start_soon(self._guard, self._write_loop(peer, write_bytes_max), peer)

    async def _guard(self, loop: object, peer: Peer) -> None:
        """Turn the expected ways a connection ends into a reason and a close."""
        try:
            await loop  # type: ignore[misc]
        except FrameError as exc:
            logger.warning("closing connection to %s: bad frame: %s", peer.name, exc)
            self.close(f"bad frame from peer: {exc}")
        except (_ClosedByPeer, _HandlerFailed, *CONNECTION_ERRORS) as exc:
            self.close(describe(exc))

    async def _read_loop(self, peer: Peer, on_frame: Callable[[str, object], None]) -> None:
        decoder = self.decoder
        peer.bytes_received += decoder.buffered_bytes
        self._deliver(peer, on_frame)  # whatever the peer pipelined behind the handshake
        receive_some = self.stream.receive_some
        while True:
            data = await receive_some(_RECEIVE_BYTES)
            if not data:
                raise _ClosedByPeer("closed by peer")
            peer.bytes_received += len(data)
            decoder.feed(data)
            self._deliver(peer, on_frame)

    def _deliver(self, peer: Peer, on_frame: Callable[[str, object], None]) -> None:
        name = peer.name
        for obj in self.decoder:
            if peer.conn is not self:
                return  # replaced: the newer connection carries this peer's frames now
            peer.frames_received += 1
            try:
                on_frame(name, obj)
            except Exception as exc:
                logger.exception("on_frame failed for a frame from %s", name)
                raise _HandlerFailed(f"on_frame failed: {exc!r}") from None

    async def _write_loop(self, peer: Peer, write_bytes_max: int) -> None:
        queue = self.queue
        send_all = self.stream.send_all
        while True:
            if not queue:
                self.wakeup = trio.Event()
                await self.wakeup.wait()
                continue
            # Coalesce every frame queued since the last write into one
            # send_all, up to write_bytes_max so one peer cannot hog the loop.
            batch = [queue.popleft()]
            size = len(batch[0])
            while queue and size < write_bytes_max:
                frame = queue.popleft()
                batch.append(frame)
                size += len(frame)
            self.queued_bytes -= size
            await send_all(b"".join(batch))
            peer.frames_sent += len(batch)
            peer.bytes_sent += size
