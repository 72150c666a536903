"""A hand-driven peer for attacking a real agent's peer port (tests only).

`HostilePeer` dials an agent over TCP, optionally authenticates with the real
handshake functions (as any agent name we like: the tests know the cluster
secret, tests/procs.py SECRET) and then sends whatever frames a test wants:
Raft batches, RPC calls, garbage. Everything is trio, bounded by deadlines;
the sync tests run it with `trio.run`.
"""

from __future__ import annotations

import resource
from collections.abc import Awaitable, Callable

import trio

from raftfleet_agent.host import wire
from raftfleet_agent.raft.messages import Message
from raftfleet_agent.transport.framing import NEED_DATA, FrameDecoder, FrameError, encode_frame
from raftfleet_agent.transport.handshake import (
    HANDSHAKE_FRAME_BYTES_MAX,
    LocalIdentity,
    PeerIdentity,
    handshake_as_dialer,
)
from tests.procs import SECRET


class HostilePeer:
    def __init__(self, stream: trio.SocketStream, decoder: FrameDecoder) -> None:
        self.stream = stream
        self.decoder = decoder
        self.identity: PeerIdentity | None = None
        self._next_call = 1_000_000

    @classmethod
    async def connect(
        cls, host: str, port: int, timeout_s: float = 5.0, local: str | None = None
    ) -> HostilePeer:
        """Dial `host:port`, from the loopback address `local` if given (another "host")."""
        with trio.fail_after(timeout_s):
            stream = await trio.open_tcp_stream(host, port, local_address=local)
        return cls(stream, FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX))

    @classmethod
    async def authenticated(
        cls, host: str, port: int, name: str, secret: bytes = SECRET, local: str | None = None
    ) -> HostilePeer:
        """Dial and run the real dialer handshake as agent `name` (cluster id learned)."""
        peer = await cls.connect(host, port, local=local)
        me = LocalIdentity(name=name, cluster=None, secret=secret)
        try:
            peer.identity = await handshake_as_dialer(peer.stream, peer.decoder, me, timeout_s=5)
        except BaseException:
            await peer.aclose()
            raise
        peer.decoder.frame_bytes_max = 16 * 1024 * 1024
        return peer

    async def aclose(self) -> None:
        await trio.aclose_forcefully(self.stream)

    async def send_raw(self, data: bytes) -> None:
        await self.stream.send_all(data)

    async def send(self, obj: object) -> None:
        await self.stream.send_all(encode_frame(obj))

    async def send_raft(self, batch: list[tuple[str, Message]]) -> None:
        await self.send(wire.encode_raft(batch))

    async def next_frame(self, timeout_s: float) -> object:
        """The next frame from the agent; raises EOFError if it hung up, TooSlowError."""
        with trio.fail_after(timeout_s):
            while (obj := self.decoder.next_frame()) is NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
                    raise EOFError(f"connection broken: {exc!r}") from None
                if not data:
                    raise EOFError("the agent closed the connection")
                self.decoder.feed(data)
            return obj

    async def call(self, op: str, args: object, timeout_s: float = 5.0) -> tuple[bool, object]:
        """Send an RPC call (args may be anything: the point is to send junk); its answer."""
        self._next_call += 1
        call_id = self._next_call
        await self.send([wire.CALL, call_id, op, args])
        with trio.fail_after(timeout_s):
            while True:
                frame = await self.next_frame(timeout_s)
                if (
                    isinstance(frame, list)
                    and len(frame) == 4
                    and frame[0] == wire.ANSWER
                    and frame[1] == call_id
                ):
                    return frame[2], frame[3]
                # Anything else (the agent's own hello call, Raft traffic) is ignored.

    async def closed_by_agent(self, timeout_s: float) -> bool:
        """True if the agent closes the connection within `timeout_s` (frames are drained)."""
        with trio.move_on_after(timeout_s):
            try:
                while True:
                    await self.next_frame(timeout_s + 1)
            except (EOFError, FrameError):
                return True
        return False


def run(fn: Callable[[], Awaitable[object]]) -> object:
    """Run an async test body from a sync test (the tests also drive blocking agent clients)."""
    return trio.run(fn)


def raise_nofile(wanted: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE toward `wanted`; return the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def vm_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


def open_fds(pid: int) -> int:
    import os

    return len(os.listdir(f"/proc/{pid}/fd"))
