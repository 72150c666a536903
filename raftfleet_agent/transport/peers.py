"""PeerTransport: one authenticated TCP connection per pair of agents, carrying
the frames of every Raft group between them.

Theory of operation
-------------------
`serve()` owns everything: the listener, one dial loop per peer whose address
is known, and one task per connection (a reader and a writer under it).
Cancelling `serve()` closes every connection and stops every dial.

Sending never blocks: `send()` encodes the value and appends the frame to the
connection's bounded queue; the writer takes everything queued (up to
`write_bytes_max`) and writes it with one `send_all`. When the peer is not
connected or its queue is full the frame is dropped and counted: Raft
retransmits, and a stale message is worth less than memory.

Receiving: the reader feeds a FrameDecoder and calls `on_frame(peer, value)`
for each frame, in order. A malformed or oversized frame closes that one
connection and nothing else.

One connection per pair. Both agents may dial each other at once; when a
second authenticated connection to the same peer appears, both sides apply
the same rule (`_new_wins`), so they keep the same one:
- the peer's boot id changed: the new one wins (the old is from a dead process);
- both were dialed by the same side: the new one wins (the dialer only dials
  when it has no connection, so it has given up on the old one);
- otherwise (a simultaneous dial): the one dialed by the lower name wins.
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable
from functools import partial
from typing import NoReturn

import attrs
import trio

from raftfleet_agent.log_throttle import Throttle
from raftfleet_agent.transport.connection import (
    CONNECTION_ERRORS,
    Connection,
    describe,
    tune_socket,
)
from raftfleet_agent.transport.framing import (
    FRAME_BYTES_MAX,
    FrameDecoder,
    encode_frame,
)
from raftfleet_agent.transport.handshake import (
    HANDSHAKE_FRAME_BYTES_MAX,
    HANDSHAKE_TIMEOUT_S,
    HandshakeError,
    LocalIdentity,
    handshake_as_acceptor,
    handshake_as_dialer,
)
from raftfleet_agent.transport.records import (
    Peer,
    PeerReachability,
    TransportStatistics,
)

__all__ = ["PeerTransport"]

logger = logging.getLogger("raftfleet.transport")

_SHORT_LIVED_S = 1.0  # a connection that dies sooner counts as a failed dial


def _positive(_inst: object, attr: attrs.Attribute, value: float) -> None:
    if value <= 0:
        raise ValueError(f"{attr.name} must be positive, got {value!r}")


@attrs.frozen(kw_only=True, field_transformer=lambda _cls, fields: [
    f.evolve(validator=_positive) if f.type in ("int", "float") else f for f in fields
])  # fmt: skip
class TransportConfig:
    """Limits and timings (all positive); the defaults suit a LAN cluster.

    `local_host`: the address outgoing connections are bound to (the agent's
    listen host), so a peer, or a proxy between agents, sees where a
    connection comes from; None lets the kernel choose.
    """

    frame_bytes_max: int = FRAME_BYTES_MAX
    queue_frames_max: int = 65_536  # per connection
    queue_bytes_max: int = 64 * 1024 * 1024  # per connection
    write_bytes_max: int = 1024 * 1024  # coalesced into one socket write
    handshake_timeout_s: float = HANDSHAKE_TIMEOUT_S
    handshakes_max: int = 64  # unauthenticated connections handled at once
    # ... and from one address: one host's silent connections cannot take
    # every slot and lock the other agents out (a peer dials one at a time).
    handshakes_per_address_max: int = 8
    connect_timeout_s: float = 5.0
    backoff_initial_s: float = 0.05
    backoff_max_s: float = 5.0
    local_host: str | None = None


class PeerTransport:
    """Connections to the other agents of one cluster.

    `on_frame(peer_name, value)` is called from the connection's reader task
    for every frame, in order per peer; it must not block (hand the value to
    a channel with `send_nowait`, or similar). If it raises, the exception is
    logged and that peer's connection is closed.
    `on_peer_state(peer_name, connected)` is called on every change of a
    peer's connected state (not when one connection replaces another); it
    must not block either, and its exceptions are logged.
    All methods must be called from the trio thread.
    """

    def __init__(
        self,
        *,
        name: str,
        cluster: str | None,
        secret: bytes,
        on_frame: Callable[[str, object], None],
        on_peer_state: Callable[[str, bool], None] | None = None,
        config: TransportConfig | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self._me = LocalIdentity(name=name, cluster=cluster, secret=secret)
        self._on_frame = on_frame
        self._on_peer_state = on_peer_state
        self._config = config or TransportConfig()
        self._rng = rng or random.Random()
        self._peers: dict[str, Peer] = {}
        self._nursery: trio.Nursery | None = None
        self._handshakes_running = 0
        self._handshakes_by_address: dict[str, int] = {}
        self._handshakes_failed = 0
        self._handshakes_refused_busy = 0
        # Anyone who can connect triggers these: a line per interval, not per connection.
        self._say_busy = Throttle(logger)
        self._say_failed = Throttle(logger)
        self._duplicates_closed = 0
        self._dropped_unknown = 0

    @property
    def name(self) -> str:
        return self._me.name

    @property
    def cluster(self) -> str | None:
        """The cluster id; a transport created with None learns it from its first peer."""
        return self._me.cluster

    # -- public API ------------------------------------------------------------

    async def serve(
        self,
        listen_host: str,
        listen_port: int,
        *,
        task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED,
    ) -> NoReturn:
        """Listen, dial known peers and run every connection until cancelled.

        `task_status.started((host, port))` reports the bound address (useful
        with port 0). On cancellation every connection is closed, every dial
        stops, peers are reported disconnected, and the listener is closed.
        """
        if self._nursery is not None:
            raise RuntimeError("this transport is already serving")
        listeners = await trio.open_tcp_listeners(listen_port, host=listen_host)
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                for peer in self._peers.values():
                    if peer.address is not None:
                        self._start_dialing(peer)
                await nursery.start(
                    partial(
                        trio.serve_listeners,
                        self._handle_accepted,
                        listeners,
                        handler_nursery=nursery,
                    )
                )
                host, port = listeners[0].socket.getsockname()[:2]
                logger.info("agent %s listening for peers on %s:%d", self.name, host, port)
                task_status.started((host, port))
        finally:
            self._nursery = None
            for listener in listeners:  # serve_listeners closes them, unless never started
                await trio.aclose_forcefully(listener)
        raise AssertionError("serve_listeners returned")  # pragma: no cover

    def set_peer_address(self, name: str, host: str, port: int) -> None:
        """Remember where `name` listens and keep a connection to it.

        Changing the address restarts dialing; an established connection is
        kept (it is authenticated, wherever it came from).
        """
        if name == self.name:
            raise ValueError("an agent is not its own peer")
        peer = self._peer(name)
        if peer.address == (host, port):
            return
        peer.address = (host, port)
        if peer.dial_scope is not None:
            peer.dial_scope.cancel()
            peer.dial_scope = None
        if self._nursery is not None:
            self._start_dialing(peer)

    def remove_peer(self, name: str) -> None:
        """Forget `name`: stop dialing it and close its connection.

        It may still dial us later; we accept it like any agent with the secret.
        """
        peer = self._peers.pop(name, None)
        if peer is None:
            return
        if peer.dial_scope is not None:
            peer.dial_scope.cancel()
        if peer.conn is not None:
            peer.conn.close("peer removed")

    def send(self, peer_name: str, obj: object) -> bool:
        """Queue `obj` for `peer_name` without blocking; False if it was dropped.

        Dropped (and counted) when the peer is not connected or its queue is
        full. Raises TypeError/ValueError if `obj` cannot be encoded or is
        larger than the frame cap: that is the caller's bug, not the network's.
        """
        peer = self._peers.get(peer_name)
        if peer is None:
            self._dropped_unknown += 1
            return False
        conn = peer.conn
        if conn is None:
            peer.frames_dropped += 1
            return False
        config = self._config
        frame = encode_frame(obj, config.frame_bytes_max)
        queue = conn.queue
        if (
            len(queue) >= config.queue_frames_max
            or conn.queued_bytes + len(frame) > config.queue_bytes_max
        ):
            peer.frames_dropped += 1
            return False
        queue.append(frame)
        conn.queued_bytes += len(frame)
        peer.queued_frames_peak = max(peer.queued_frames_peak, len(queue))
        if not conn.wakeup.is_set():
            conn.wakeup.set()
        return True

    def is_connected(self, peer_name: str) -> bool:
        peer = self._peers.get(peer_name)
        return peer is not None and peer.conn is not None

    def reachability(self) -> dict[str, PeerReachability]:
        return {name: peer.reachability() for name, peer in self._peers.items()}

    def statistics(self) -> TransportStatistics:
        peers = {name: peer.statistics() for name, peer in self._peers.items()}
        return TransportStatistics(
            peers=peers,
            open_connections=sum(1 for p in self._peers.values() if p.conn is not None),
            handshakes_failed=self._handshakes_failed,
            handshakes_refused_busy=self._handshakes_refused_busy,
            duplicates_closed=self._duplicates_closed,
            frames_dropped_unknown_peer=self._dropped_unknown,
        )

    # -- peers and the one-connection rule -------------------------------------

    def _peer(self, name: str) -> Peer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = Peer(name, trio.current_time())
        return peer

    def _new_wins(self, old: Connection, new: Connection) -> bool:
        if old.cancel_scope.cancel_called:
            return True  # already closing; its task has not released it yet
        if new.identity.boot_id != old.identity.boot_id:
            return True  # the peer restarted; the old connection is from a dead process
        if new.outbound == old.outbound:
            return True  # the same side redialed, so it has given up on the old one
        # Simultaneous dial: keep the connection dialed by the lower name. Both
        # sides know both names, so both keep the same one.
        return (self.name < new.identity.name) == new.outbound

    def _adopt(self, conn: Connection) -> Peer | None:
        """Make `conn` the peer's connection, or return None if it must be closed."""
        identity = conn.identity
        if self._me.cluster is None and identity.cluster is not None:
            logger.info("joined cluster %r (learned from %s)", identity.cluster, identity.name)
            self._me = attrs.evolve(self._me, cluster=identity.cluster)
        peer = self._peer(identity.name)
        old = peer.conn
        if old is not None:
            if not self._new_wins(old, conn):
                self._duplicates_closed += 1
                logger.debug("closing a second connection to %s", peer.name)
                return None
            self._duplicates_closed += 1
            old.close("replaced by a newer connection")
        peer.conn = conn
        peer.connections += 1
        if old is None:
            peer.since = trio.current_time()
            peer.idle = trio.Event()
            logger.info(
                "connected to %s (%s)", peer.name, "dialed" if conn.outbound else "accepted"
            )
            self._notify_state(peer.name, True)
        return peer

    def _release(self, peer: Peer, conn: Connection) -> None:
        """Account for a closed connection; mark the peer disconnected if it was current."""
        peer.frames_dropped += len(conn.queue)
        conn.queue.clear()
        conn.queued_bytes = 0
        if peer.conn is not conn:
            return  # replaced by a newer connection, which the peer keeps
        peer.conn = None
        peer.since = trio.current_time()
        peer.last_error = conn.error
        peer.idle.set()
        logger.info("disconnected from %s: %s", peer.name, conn.error)
        self._notify_state(peer.name, False)

    def _notify_state(self, name: str, connected: bool) -> None:
        if self._on_peer_state is None:
            return
        try:
            self._on_peer_state(name, connected)
        except Exception:
            logger.exception("on_peer_state(%r, %r) failed", name, connected)

    # -- connections ----------------------------------------------------------

    async def _run_connection(self, peer: Peer, conn: Connection) -> None:
        """Run an adopted connection until it ends; always close its stream.

        Returns when either side closes it or it is replaced; cancellation
        propagates after the peer is marked disconnected and the stream closed.
        """
        config = self._config
        try:
            await conn.run(
                peer,
                self._on_frame,
                frame_bytes_max=config.frame_bytes_max,
                write_bytes_max=config.write_bytes_max,
            )
        finally:
            if conn.error is None:
                conn.error = "transport closed"
            self._release(peer, conn)
            await trio.aclose_forcefully(conn.stream)

    # -- accepting ------------------------------------------------------------

    async def _handle_accepted(self, stream: trio.SocketStream) -> None:
        """Authenticate an incoming connection, then run it; drop it on failure."""
        address = _remote_address(stream)
        busy = self._handshakes_by_address.get(address, 0)
        if (
            self._handshakes_running >= self._config.handshakes_max
            or busy >= self._config.handshakes_per_address_max
        ):
            self._handshakes_refused_busy += 1
            self._say_busy.warning(
                "too many handshakes in progress (%d, %d from %s); dropping a new connection",
                self._handshakes_running,
                busy,
                address,
            )
            await trio.aclose_forcefully(stream)
            return
        self._handshakes_running += 1
        self._handshakes_by_address[address] = busy + 1
        try:
            conn = await self._accept_handshake(stream)
        finally:
            self._handshakes_running -= 1
            left = self._handshakes_by_address[address] - 1
            if left:
                self._handshakes_by_address[address] = left
            else:
                del self._handshakes_by_address[address]
        if conn is None:
            return
        peer = self._adopt(conn)
        if peer is None:
            await trio.aclose_forcefully(stream)
            return
        await self._run_connection(peer, conn)

    async def _accept_handshake(self, stream: trio.SocketStream) -> Connection | None:
        try:
            where = "%s:%d" % stream.socket.getpeername()[:2]  # noqa: UP031
        except OSError:
            where = "unknown address"
        decoder = FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX)
        try:
            tune_socket(stream)
            identity = await handshake_as_acceptor(
                stream, decoder, self._me, timeout_s=self._config.handshake_timeout_s
            )
        except HandshakeError as exc:
            self._handshakes_failed += 1
            self._say_failed.warning("dropped unauthenticated connection from %s: %s", where, exc)
            await trio.aclose_forcefully(stream)
            return None
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return Connection(stream, decoder, identity, outbound=False)

    # -- dialing --------------------------------------------------------------

    def _start_dialing(self, peer: Peer) -> None:
        assert self._nursery is not None
        assert peer.address is not None
        scope = peer.dial_scope = trio.CancelScope()
        self._nursery.start_soon(self._dial_loop, peer, peer.address, scope)

    def _backoff_s(self, failures: int) -> float:
        config = self._config
        delay = min(config.backoff_max_s, config.backoff_initial_s * 2 ** min(failures - 1, 30))
        return delay * self._rng.uniform(0.5, 1.0)  # jitter: peers do not redial in lockstep

    async def _dial_loop(
        self, peer: Peer, address: tuple[str, int], scope: trio.CancelScope
    ) -> None:
        """Keep a connection to `peer`; runs until `scope` is cancelled (address
        changed, peer removed) or serve() is cancelled. Connections it starts
        belong to the serve nursery, so cancelling the loop leaves them open."""
        failures = 0
        with scope:
            while True:
                while peer.conn is not None:
                    connected_at = peer.since  # Invariant: since = connect time while connected
                    await peer.idle.wait()
                    if trio.current_time() - connected_at < _SHORT_LIVED_S:
                        failures += 1  # a peer that drops us at once is not reached
                if failures:
                    await trio.sleep(self._backoff_s(failures))
                    if peer.conn is not None:
                        continue  # the peer dialed us meanwhile
                try:
                    conn = await self._dial(peer, address)
                except CONNECTION_ERRORS as exc:
                    failures += 1
                    self._note_dial_failure(peer, address, exc, failures)
                    continue
                adopted = self._adopt(conn)
                if adopted is None:
                    await trio.aclose_forcefully(conn.stream)
                    continue
                failures = 0
                assert self._nursery is not None
                self._nursery.start_soon(self._run_connection, adopted, conn)

    def _note_dial_failure(
        self, peer: Peer, address: tuple[str, int], exc: BaseException, failures: int
    ) -> None:
        peer.last_error = describe(exc)
        # An authentication problem is an operator's problem: always say so.
        # A refused connection repeats every few seconds while a peer is down.
        level = logging.WARNING if isinstance(exc, HandshakeError) else logging.INFO
        if failures > 1 and level == logging.INFO:
            level = logging.DEBUG
        logger.log(level, "cannot reach %s at %s:%d: %s", peer.name, *address, peer.last_error)
        if isinstance(exc, HandshakeError):
            self._handshakes_failed += 1

    async def _dial(self, peer: Peer, address: tuple[str, int]) -> Connection:
        """Connect and authenticate; on any failure or cancellation the socket is closed."""
        config = self._config
        with trio.fail_after(config.connect_timeout_s):
            stream = await trio.open_tcp_stream(*address, local_address=config.local_host)
        try:
            tune_socket(stream)
            decoder = FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX)
            identity = await handshake_as_dialer(
                stream, decoder, self._me, expected_peer=peer.name,
                timeout_s=config.handshake_timeout_s,
            )  # fmt: skip
        except BaseException:
            await trio.aclose_forcefully(stream)
            raise
        return Connection(stream, decoder, identity, outbound=True)


def _remote_address(stream: trio.SocketStream) -> str:
    """The connecting host (no port): what the per-address handshake limit counts."""
    try:
        return str(stream.socket.getpeername()[0])
    except OSError:
        return "unknown"
