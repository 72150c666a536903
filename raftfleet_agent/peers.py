"""Which agents exist and where they listen, learned by joining and gossip.

An agent that joins dials an address it was given, learns the name behind it
from the authenticated handshake, and from then on every connected pair of
agents swaps what it knows (`hello`), so everyone ends up connected to
everyone. The directory is kept in the data dir so a restarted agent finds
its peers again without `--join`.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile

import trio

from raftfleet_agent.transport import FrameDecoder, LocalIdentity, PeerIdentity, handshake_as_dialer

logger = logging.getLogger("raftfleet.peers")

PROBE_TIMEOUT_S = 5.0


def split_addr(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    host = host.strip("[]")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad address {addr!r}: expected HOST:PORT")
    return host, int(port)


async def probe(host: str, port: int, me: LocalIdentity) -> PeerIdentity:
    """Connect to an agent at an address and learn its name and cluster (authenticated).

    Raises OSError if nothing listens there, HandshakeError if it is not one
    of ours (wrong secret, other cluster).
    """
    with trio.fail_after(PROBE_TIMEOUT_S):
        stream = await trio.open_tcp_stream(host, port)
    try:
        return await handshake_as_dialer(stream, FrameDecoder(4096), me)
    finally:
        await trio.aclose_forcefully(stream)


class PeerDirectory:
    """name -> "host:port" of every agent we know, persisted as JSON."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.addresses: dict[str, str] = {}
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                self.addresses = {str(k): str(v) for k, v in data.get("peers", {}).items()}
            except (OSError, ValueError, AttributeError) as e:
                logger.warning("ignoring unreadable peer list %s: %s", path, e)

    def learn(self, name: str, addr: str) -> bool:
        """Remember an address; True if it is new or changed."""
        try:
            split_addr(addr)
        except ValueError:
            return False
        if self.addresses.get(name) == addr:
            return False
        self.addresses[name] = addr
        self._save()
        return True

    def forget(self, name: str) -> None:
        if self.addresses.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        if not self.path:
            return
        d = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".peers.", dir=d)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"peers": self.addresses}, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
