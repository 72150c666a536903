"""Peer transport: one authenticated TCP connection per pair of agents.

Layers above use `PeerTransport` (and `TransportConfig`); the control server
reuses the framing (`encode_frame`, `FrameDecoder`).
"""

from raftfleet_agent.transport.framing import (
    FRAME_BYTES_MAX,
    NEED_DATA,
    FrameDecoder,
    FrameError,
    encode_frame,
    encode_frames,
)
from raftfleet_agent.transport.handshake import (
    PROTOCOL_VERSION,
    HandshakeError,
    LocalIdentity,
    PeerIdentity,
    handshake_as_acceptor,
    handshake_as_dialer,
)
from raftfleet_agent.transport.peers import PeerTransport, TransportConfig
from raftfleet_agent.transport.records import (
    PeerReachability,
    PeerStatistics,
    TransportStatistics,
)

__all__ = [
    "FRAME_BYTES_MAX",
    "NEED_DATA",
    "PROTOCOL_VERSION",
    "FrameDecoder",
    "FrameError",
    "HandshakeError",
    "LocalIdentity",
    "PeerIdentity",
    "PeerReachability",
    "PeerStatistics",
    "PeerTransport",
    "TransportConfig",
    "TransportStatistics",
    "encode_frame",
    "encode_frames",
    "handshake_as_acceptor",
    "handshake_as_dialer",
]
