"""Frames per second between two PeerTransports in one process, over loopback.

Run: .venv/bin/python tests/transport/bench_transport_throughput.py [frames] [payload_bytes]
Prints one JSON object. Not collected by pytest (no test_ prefix): it measures,
it does not check. The sender keeps the queue topped up (send() never blocks,
so it yields whenever the queue holds a batch) and the clock stops when the
receiver has every frame.
"""

from __future__ import annotations

import json
import sys
import time

import trio
import trio.lowlevel

from raftfleet_agent.transport import PeerTransport

SECRET = b"bench-secret-bench-secret-123456"


async def measure(frames: int, payload_bytes: int, both_ways: bool) -> dict[str, object]:
    counts = {"a": 0, "b": 0}
    done = trio.Event()
    expected = frames * (2 if both_ways else 1)

    def on_frame(me: str) -> object:
        def deliver(_peer: str, _obj: object) -> None:
            counts[me] += 1
            if counts["a"] + counts["b"] == expected:
                done.set()

        return deliver

    a = PeerTransport(name="a", cluster="bench", secret=SECRET, on_frame=on_frame("a"))
    b = PeerTransport(name="b", cluster="bench", secret=SECRET, on_frame=on_frame("b"))
    payload = {"g": "group-1", "t": 7, "d": b"x" * payload_bytes}

    async def pump(src: PeerTransport, dst: str) -> None:
        sent = 0
        while sent < frames:
            if src.send(dst, payload):
                sent += 1
                if sent % 512 == 0:
                    await trio.lowlevel.checkpoint()
            else:
                await trio.lowlevel.checkpoint()

    async with trio.open_nursery() as nursery:
        host_a, port_a = await nursery.start(a.serve, "127.0.0.41", 0)
        await nursery.start(b.serve, "127.0.0.42", 0)
        b.set_peer_address("a", host_a, port_a)
        while not (a.is_connected("b") and b.is_connected("a")):  # noqa: ASYNC110
            await trio.sleep(0.01)
        start = time.perf_counter()
        nursery.start_soon(pump, a, "b")
        if both_ways:
            nursery.start_soon(pump, b, "a")
        await done.wait()
        elapsed = time.perf_counter() - start
        nursery.cancel_scope.cancel()
    return {
        "frames": expected,
        "payload_bytes": payload_bytes,
        "both_ways": both_ways,
        "seconds": round(elapsed, 3),
        "frames_per_s": round(expected / elapsed),
        "dropped": a.statistics().peers["b"].frames_dropped,
    }


def main() -> None:
    frames = int(sys.argv[1]) if len(sys.argv) > 1 else 200_000
    payload = int(sys.argv[2]) if len(sys.argv) > 2 else 100
    results = [trio.run(measure, frames, payload, both) for both in (False, True)]
    print(json.dumps({"bench": "transport_throughput", "results": results}))


if __name__ == "__main__":
    main()
