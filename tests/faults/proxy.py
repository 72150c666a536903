"""A fault-injecting TCP proxy for agent-to-agent traffic (in-process, one thread).

Each agent advertises a proxy address (`add_agent` returns it), so every peer
connection is dialed to the proxy, which dials the real agent. Agents bind
their outgoing connections to their listen host, so the proxy knows the
dialing agent from the source IP and the dialed one from the listener: each
byte belongs to a directed link `(src, dst)`. A connection carries both
directions (whoever dialed it), and the rules apply per direction:

- `delay(src, dst, s, jitter_s)`: every chunk src -> dst waits that long (order kept).
- `blackhole(src, dst)`: bytes src -> dst are held (not read any further, so
  TCP backpressure builds up) until healed; the connection stays open, as in
  a partition where nothing is lost but nothing arrives.  One direction only:
  a one-way partition.
- `reject(a, b)`: a hard cut both ways: open connections between a and b are
  reset (RST) and new ones are reset as soon as they are accepted.
- `reset(a, b=None)`: one shot: reset the open connections of a (with b).
- `heal(...)` / `heal_all()`: remove rules.

Connections whose source is unknown (the agents' join probes) pass unharmed.
All methods are thread-safe (they run on the proxy's own event loop) and
bounded in time. `close()` stops the thread and closes every socket.
"""

from __future__ import annotations

import asyncio
import random
import socket
import struct
import threading
import time
from collections.abc import Coroutine
from typing import Any

__all__ = ["FaultProxy"]

CHUNK_BYTES = 65536
QUEUE_CHUNKS_MAX = 64
CONNECT_TIMEOUT_S = 2.0


class _Pipe:
    """One direction of one proxied connection."""

    def __init__(self, src: str | None, dst: str | None) -> None:
        self.src, self.dst = src, dst
        self.queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue(QUEUE_CHUNKS_MAX)


class _Conn:
    def __init__(self, src: str | None, dst: str, cw: asyncio.StreamWriter) -> None:
        self.src, self.dst = src, dst  # src dialed dst
        self.client_writer = cw
        self.server_writer: asyncio.StreamWriter | None = None
        self.tasks: list[asyncio.Task] = []

    def between(self, a: str, b: str | None) -> bool:
        ends = {self.src, self.dst}
        return a in ends and (b is None or b in ends)


def _abort(writer: asyncio.StreamWriter | None) -> None:
    """Close with RST (SO_LINGER 0), so the agent sees a reset, not a clean EOF."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


class FaultProxy:
    def __init__(self, seed: int = 0) -> None:
        self._rng = random.Random(seed)
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name="fault-proxy", daemon=True)
        self._agents: dict[str, tuple[str, int]] = {}  # name -> real address
        self._by_ip: dict[str, str] = {}  # listen host -> agent name
        self._servers: list[asyncio.base_events.Server] = []
        self._conns: set[_Conn] = set()
        # Rules (touched only on the loop thread).
        self._delay: dict[tuple[str, str], tuple[float, float]] = {}
        self._blackhole: set[tuple[str, str]] = set()
        self._reject: set[frozenset[str]] = set()
        self._changed = asyncio.Event()
        self.stats = {
            "connections": 0,
            "unknown_source": 0,
            "rejected": 0,
            "resets": 0,
            "bytes": 0,
            "dial_failures": 0,
        }
        self._thread.start()

    # ------------------------------------------------------------ life cycle

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_forever()

    def _call(self, coro: Coroutine[Any, Any, Any], timeout: float = 10.0) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        if not self._thread.is_alive():
            return
        try:
            self._call(self._shutdown(), 10)
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
            if not self._thread.is_alive():
                self._loop.close()

    async def _shutdown(self) -> None:
        for s in self._servers:
            s.close()
        for c in list(self._conns):
            self._kill(c)
        tasks = [t for c in self._conns for t in c.tasks]
        if tasks:
            await asyncio.wait(tasks, timeout=5)

    def __enter__(self) -> FaultProxy:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------ agents

    def add_agent(self, name: str, host: str, port: int) -> tuple[str, int]:
        """Proxy `name` (listening on host:port); returns the address to advertise."""
        return self._call(self._add_agent(name, host, port))

    async def _add_agent(self, name: str, host: str, port: int) -> tuple[str, int]:
        self._agents[name] = (host, port)
        self._by_ip[host] = name

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await self._handle(name, r, w)

        server = await asyncio.start_server(handle, host, 0)
        self._servers.append(server)
        return host, server.sockets[0].getsockname()[1]

    # ------------------------------------------------------------ rules

    def delay(self, src: str, dst: str, seconds: float, jitter_s: float = 0.0) -> None:
        self._set(lambda: self._delay.__setitem__((src, dst), (seconds, jitter_s)))

    def blackhole(self, src: str, dst: str) -> None:
        self._set(lambda: self._blackhole.add((src, dst)))

    def reject(self, a: str, b: str) -> None:
        def apply() -> None:
            self._reject.add(frozenset((a, b)))
            self._reset_now(a, b)

        self._set(apply)

    def reset(self, a: str, b: str | None = None) -> None:
        self._set(lambda: self._reset_now(a, b))

    def heal(self, src: str, dst: str) -> None:
        """Remove every rule on src -> dst (and the reject between them)."""

        def apply() -> None:
            self._delay.pop((src, dst), None)
            self._blackhole.discard((src, dst))
            self._reject.discard(frozenset((src, dst)))

        self._set(apply)

    def heal_all(self) -> None:
        def apply() -> None:
            self._delay.clear()
            self._blackhole.clear()
            self._reject.clear()

        self._set(apply)

    def rules(self) -> dict[str, Any]:
        async def get() -> dict[str, Any]:
            return {
                "delay": sorted(self._delay),
                "blackhole": sorted(self._blackhole),
                "reject": sorted(tuple(sorted(p)) for p in self._reject),
                "connections": len(self._conns),
            }

        return self._call(get())

    def _set(self, fn: Any) -> None:
        async def apply() -> None:
            fn()
            self._changed.set()
            self._changed = asyncio.Event()

        self._call(apply())

    def _reset_now(self, a: str, b: str | None) -> None:
        for c in list(self._conns):
            if c.between(a, b):
                self.stats["resets"] += 1
                self._kill(c)

    def _kill(self, c: _Conn) -> None:
        _abort(c.client_writer)
        _abort(c.server_writer)
        for t in c.tasks:
            t.cancel()
        self._conns.discard(c)

    # ------------------------------------------------------------ connections

    async def _handle(self, dst: str, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        peer = cw.get_extra_info("peername")
        src = self._by_ip.get(peer[0]) if peer else None
        self.stats["connections"] += 1
        if src is None:
            self.stats["unknown_source"] += 1
        if src is not None and frozenset((src, dst)) in self._reject:
            self.stats["rejected"] += 1
            _abort(cw)
            return
        conn = _Conn(src, dst, cw)
        self._conns.add(conn)
        try:
            sr, sw = await asyncio.wait_for(
                asyncio.open_connection(*self._agents[dst]), CONNECT_TIMEOUT_S
            )
        except (OSError, TimeoutError):
            self.stats["dial_failures"] += 1
            self._kill(conn)
            return
        if conn not in self._conns:  # reset while dialing
            _abort(sw)
            return
        conn.server_writer = sw
        up, down = _Pipe(src, dst), _Pipe(dst, src)
        conn.tasks = [
            asyncio.create_task(self._reader(cr, up)),
            asyncio.create_task(self._writer(up, sw)),
            asyncio.create_task(self._reader(sr, down)),
            asyncio.create_task(self._writer(down, cw)),
        ]
        try:
            await asyncio.gather(*conn.tasks)
        except (asyncio.CancelledError, OSError, ConnectionError):
            pass
        finally:
            if conn in self._conns:
                self._kill(conn)

    async def _reader(self, r: asyncio.StreamReader, pipe: _Pipe) -> None:
        while True:
            data = await r.read(CHUNK_BYTES)
            await pipe.queue.put((time.monotonic(), data) if data else None)
            if not data:
                return

    async def _writer(self, pipe: _Pipe, w: asyncio.StreamWriter) -> None:
        link = (pipe.src, pipe.dst)
        while True:
            item = await pipe.queue.get()
            if item is None:
                if w.can_write_eof():
                    w.write_eof()
                return
            received, data = item
            while link in self._blackhole:
                await self._changed.wait()
            rule = self._delay.get(link)  # type: ignore[arg-type]
            if rule is not None:
                seconds, jitter = rule
                due = received + seconds + self._rng.uniform(0, jitter)
                wait = due - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
            w.write(data)
            self.stats["bytes"] += len(data)
            await w.drain()
