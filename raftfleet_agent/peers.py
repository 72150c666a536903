"""Which agents exist and where they listen, learned by joining and gossip.

An agent that joins dials an address it was given, learns the name behind it
from the authenticated handshake, and from then on every connected pair of
agents swaps what it knows (`hello`), so everyone ends up connected to
everyone. The directory is kept in the data dir so a restarted agent finds
its peers again without `--join`.

Each address carries the epoch it was announced in: an agent stamps its own
address with the time it started (never less than the epoch before), and
gossip replaces an address only with one of a later epoch. Without that, an
agent restarted at a new address was fought over for ever: peers still
holding its old address (in their peers.json) passed it on, others passed the
new one, and every change made each agent greet all of its peers again, a
storm that held every agent's loop for seconds and grew its memory without
bound. What an agent says of itself, first hand, is always taken.
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
    """name -> "host:port" of every agent we know, with its epoch, persisted as JSON."""

    def __init__(self, path: str | None) -> None:
        self.path = path
        self.addresses: dict[str, str] = {}
        self.epochs: dict[str, int] = {}  # absent: 0, older than any announced epoch
        self._own_epoch = 0  # the last epoch this agent announced itself with
        if path and os.path.exists(path):
            try:
                with open(path, encoding="utf-8") as f:
                    data = json.load(f)
                self.addresses = {str(k): str(v) for k, v in data.get("peers", {}).items()}
                epochs = data.get("epochs", {})
                self.epochs = {str(k): v for k, v in epochs.items() if type(v) is int}
                if type(data.get("own_epoch")) is int:
                    self._own_epoch = data["own_epoch"]
            except (OSError, ValueError, AttributeError) as e:
                logger.warning("ignoring unreadable peer list %s: %s", path, e)

    def new_own_epoch(self, now_ns: int) -> int:
        """The epoch to announce our address in from now on: later than any before."""
        self._own_epoch = max(now_ns, self._own_epoch + 1)
        self._save()
        return self._own_epoch

    def learn(
        self, name: str, addr: str, *, epoch: int | None = None, first_hand: bool = False
    ) -> bool:
        """Remember an address; True if it is new or changed.

        Second hand (gossip), it is taken only for an unknown agent or with a
        later `epoch` than the one known. `first_hand`: from the agent itself,
        or an address we reached it at; taken whatever its epoch (None: keep
        the known one).
        """
        try:
            split_addr(addr)
        except ValueError:
            return False
        known_epoch = self.epochs.get(name, 0)
        if name in self.addresses and not first_hand and (epoch or 0) <= known_epoch:
            return False
        new_epoch = known_epoch if epoch is None else epoch
        changed = self.addresses.get(name) != addr
        if not changed and new_epoch == known_epoch:
            return False
        self.addresses[name] = addr
        self.epochs[name] = new_epoch
        self._save()
        return changed

    def forget(self, name: str) -> None:
        self.epochs.pop(name, None)
        if self.addresses.pop(name, None) is not None:
            self._save()

    def _save(self) -> None:
        if not self.path:
            return
        d = os.path.dirname(self.path)
        fd, tmp = tempfile.mkstemp(prefix=".peers.", dir=d)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            doc = {"peers": self.addresses, "epochs": self.epochs, "own_epoch": self._own_epoch}
            json.dump(doc, f, sort_keys=True)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self.path)
