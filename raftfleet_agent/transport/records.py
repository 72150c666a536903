"""The transport's bookkeeping: per-peer state, and the frozen
records `PeerTransport.reachability()` and `statistics()` hand out.

The mutable classes here are private to the transport and touched only from
the trio thread; callers only ever see the frozen snapshots.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

import attrs
import trio

if TYPE_CHECKING:
    from raftfleet_agent.transport.connection import Connection

__all__ = ["PeerReachability", "PeerStatistics", "TransportStatistics"]


@attrs.frozen(kw_only=True)
class PeerReachability:
    """Whether a peer is connected, since when (trio clock), and the last error seen."""

    connected: bool
    since: float  # trio.current_time() of the last connected/disconnected change
    last_error: str | None
    address: tuple[str, int] | None  # None: we only know it from its own dial


@attrs.frozen(kw_only=True)
class PeerStatistics:
    connected: bool
    outbound: bool | None  # whether we dialed the current connection; None if none
    frames_sent: int  # written to the socket
    bytes_sent: int
    frames_received: int  # delivered to on_frame
    bytes_received: int
    frames_dropped: int  # refused by send() or discarded with a closed connection
    connections: int  # authenticated connections ever adopted
    reconnects: int  # connections adopted after the first one
    queued_frames: int
    queued_bytes: int
    queued_frames_peak: int


@attrs.frozen(kw_only=True)
class TransportStatistics:
    peers: Mapping[str, PeerStatistics]
    open_connections: int  # authenticated, adopted and not yet closed
    handshakes_failed: int
    handshakes_refused_busy: int  # dropped because too many handshakes were running
    duplicates_closed: int  # second connections closed by the one-per-pair rule
    frames_dropped_unknown_peer: int


class Peer:
    """Everything we know about one other agent, connected or not."""

    __slots__ = (
        "address",
        "bytes_received",
        "bytes_sent",
        "conn",
        "connections",
        "dial_scope",
        "frames_dropped",
        "frames_received",
        "frames_sent",
        "idle",
        "last_error",
        "name",
        "queued_frames_peak",
        "since",
    )

    def __init__(self, name: str, now: float) -> None:
        self.name = name
        self.address: tuple[str, int] | None = None
        self.dial_scope: trio.CancelScope | None = None
        self.conn: Connection | None = None  # the one adopted connection, if any
        self.idle = trio.Event()  # set while conn is None
        self.idle.set()
        self.since = now
        self.last_error: str | None = None
        self.frames_sent = self.bytes_sent = 0
        self.frames_received = self.bytes_received = 0
        self.frames_dropped = 0
        self.connections = 0
        self.queued_frames_peak = 0

    def reachability(self) -> PeerReachability:
        return PeerReachability(
            connected=self.conn is not None,
            since=self.since,
            last_error=self.last_error,
            address=self.address,
        )

    def statistics(self) -> PeerStatistics:
        conn = self.conn
        return PeerStatistics(
            connected=conn is not None,
            outbound=None if conn is None else conn.outbound,
            frames_sent=self.frames_sent,
            bytes_sent=self.bytes_sent,
            frames_received=self.frames_received,
            bytes_received=self.bytes_received,
            frames_dropped=self.frames_dropped,
            connections=self.connections,
            reconnects=max(0, self.connections - 1),
            queued_frames=0 if conn is None else len(conn.queue),
            queued_bytes=0 if conn is None else conn.queued_bytes,
            queued_frames_peak=self.queued_frames_peak,
        )
