"""PeerTransport over real loopback sockets: 127.0.0.21, .22, ... act as hosts."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import attrs
import pytest
import trio

from raftfleet_agent.transport import (
    FrameDecoder,
    LocalIdentity,
    PeerTransport,
    TransportConfig,
    encode_frame,
    handshake_as_dialer,
)
from raftfleet_agent.transport.handshake import HANDSHAKE_FRAME_BYTES_MAX

SECRET = b"k" * 32
DEADLINE_S = 10.0


@attrs.define
class Agent:
    transport: PeerTransport
    host: str
    port: int
    received: dict[str, list[object]]
    states: list[tuple[str, bool]]
    scope: trio.CancelScope

    @property
    def name(self) -> str:
        return self.transport.name

    def stop(self) -> None:
        self.scope.cancel()


@asynccontextmanager
async def fleet() -> AsyncIterator[Callable]:
    """Yield `start(name, host, port=0, **kw)`; everything stops at exit."""
    async with trio.open_nursery() as nursery:

        async def start(name: str, host: str, port: int = 0, **kw: object) -> Agent:
            received: dict[str, list[object]] = {}
            states: list[tuple[str, bool]] = []
            transport = PeerTransport(
                name=name,
                cluster=kw.pop("cluster", "c1"),  # type: ignore[arg-type]
                secret=kw.pop("secret", SECRET),  # type: ignore[arg-type]
                on_frame=lambda peer, obj: received.setdefault(peer, []).append(obj),
                on_peer_state=lambda peer, up: states.append((peer, up)),
                **kw,  # type: ignore[arg-type]
            )
            scope = trio.CancelScope()

            async def run(task_status: trio.TaskStatus) -> None:
                with scope:
                    await transport.serve(host, port, task_status=task_status)

            bound_host, bound_port = await nursery.start(run)
            return Agent(transport, bound_host, bound_port, received, states, scope)

        yield start
        nursery.cancel_scope.cancel()


async def wait_until(predicate: Callable[[], bool], timeout_s: float = DEADLINE_S) -> None:
    # Polling, bounded by a deadline: the states tested (counters, sockets)
    # have no event to wait on, and a test must not need hooks in the code.
    with trio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110
            await trio.sleep(0.005)


def introduce(a: Agent, b: Agent) -> None:
    a.transport.set_peer_address(b.name, b.host, b.port)


async def test_exchange_10000_frames_both_ways_in_order() -> None:
    async with fleet() as start:
        a = await start("a", "127.0.0.21")
        b = await start("b", "127.0.0.22")
        introduce(a, b)
        await wait_until(lambda: a.transport.is_connected("b") and b.transport.is_connected("a"))
        n = 10_000
        for i in range(n):
            assert a.transport.send("b", {"seq": i, "group": "g", "pad": b"a" * 20})
            assert b.transport.send("a", [i, "from-b"])
        await wait_until(lambda: len(b.received.get("a", [])) == n == len(a.received.get("b", [])))
        assert [m["seq"] for m in b.received["a"]] == list(range(n))  # type: ignore[index]
        assert a.received["b"] == [[i, "from-b"] for i in range(n)]
        # frames_sent counts after send_all returns, which may be a moment
        # after the bytes reached the peer.
        await wait_until(lambda: a.transport.statistics().peers["b"].frames_sent == n)
        stats = a.transport.statistics().peers["b"]
        assert stats.frames_received == n
        assert stats.frames_dropped == 0
        assert stats.bytes_sent == b.transport.statistics().peers["a"].bytes_received
        assert a.transport.statistics().open_connections == 1
        assert a.states == [("b", True)] and b.states == [("a", True)]


async def simultaneous_dial_round(lo: Agent, hi: Agent) -> int:
    """Both learn each other in the same tick, so both dial at once; return
    how many second connections were closed."""
    introduce(lo, hi)
    introduce(hi, lo)
    await wait_until(
        lambda: lo.transport.is_connected(hi.name) and hi.transport.is_connected(lo.name)
    )
    # Let any second connection finish its handshake and be resolved.
    await wait_until(
        lambda: (
            lo.transport.statistics().peers[hi.name].outbound is True
            and hi.transport.statistics().peers[lo.name].outbound is False
        )
    )
    await trio.sleep(0.2)  # observe that it stays resolved
    duplicates = 0
    for agent, peer, outbound in ((lo, hi, True), (hi, lo, False)):
        stats = agent.transport.statistics()
        assert stats.open_connections == 1
        assert stats.peers[peer.name].outbound is outbound  # the lower name's dial is kept
        duplicates += stats.duplicates_closed
    assert lo.transport.send(hi.name, "ping")
    await wait_until(lambda: hi.received.get(lo.name) == ["ping"])
    # Up transitions only: a replaced connection is not a disconnection.
    assert lo.states == [(hi.name, True)] and hi.states == [(lo.name, True)]
    return duplicates


async def test_simultaneous_dialing_ends_with_exactly_one_connection() -> None:
    duplicates = 0
    for round_ in range(4):
        async with fleet() as start:
            lo = await start(f"a{round_}", "127.0.0.23")
            hi = await start(f"b{round_}", "127.0.0.24")
            duplicates += await simultaneous_dial_round(lo, hi)
    assert duplicates > 0, "the scenario never produced two connections"


async def test_restarted_peer_reconnects_and_delivery_resumes() -> None:
    async with fleet() as start:
        a = await start("a", "127.0.0.25")
        b = await start("b", "127.0.0.26")
        introduce(a, b)  # only a knows b's address; b answers on the accepted connection
        await wait_until(lambda: a.transport.is_connected("b"))
        assert a.transport.send("b", 1)
        await wait_until(lambda: b.received.get("a") == [1])

        b.stop()
        await wait_until(lambda: not a.transport.is_connected("b"))
        assert a.states[-1] == ("b", False)
        assert a.transport.send("b", "lost") is False  # not connected: dropped, counted
        assert a.transport.reachability()["b"].last_error is not None

        b2 = await start("b", b.host, b.port)  # the same agent, restarted
        await wait_until(lambda: a.transport.is_connected("b") and b2.transport.is_connected("a"))
        assert a.transport.send("b", 2)
        assert b2.transport.send("a", "back")
        await wait_until(lambda: b2.received.get("a") == [2] and a.received.get("b") == ["back"])
        stats = a.transport.statistics().peers["b"]
        assert stats.reconnects >= 1
        assert stats.frames_dropped >= 1
        reach = a.transport.reachability()["b"]
        assert reach.connected and reach.address == (b.host, b.port)
        assert a.states == [("b", True), ("b", False), ("b", True)]


async def test_garbage_sender_is_dropped_while_a_legit_peer_keeps_working(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="raftfleet.transport")
    async with fleet() as start:
        a = await start("a", "127.0.0.27")
        b = await start("b", "127.0.0.28")
        introduce(b, a)
        await wait_until(lambda: a.transport.is_connected("b"))

        raw = await trio.open_tcp_stream(a.host, a.port)
        await raw.send_all(b"\x00\x00\x00\x05GARBAGE-GARBAGE")
        with trio.fail_after(DEADLINE_S):
            while await raw.receive_some():  # a refusal may come first; then EOF
                pass
        await raw.aclose()
        assert a.transport.statistics().handshakes_failed == 1
        assert "dropped unauthenticated connection" in caplog.text

        assert b.transport.send("a", "still here")
        await wait_until(lambda: a.received.get("b") == ["still here"])
        assert a.transport.reachability().keys() == {"b"}


async def test_authenticated_peer_sending_a_bad_frame_is_disconnected_alone() -> None:
    async with fleet() as start:
        a = await start("a", "127.0.0.29", config=TransportConfig(frame_bytes_max=1000))
        b = await start("b", "127.0.0.30")
        introduce(b, a)
        await wait_until(lambda: a.transport.is_connected("b"))

        for garbage in (b"\x00\x00\x00\x01\xc1", (5000).to_bytes(4, "big")):
            me = LocalIdentity(name="mallory", cluster="c1", secret=SECRET)
            stream = await trio.open_tcp_stream(a.host, a.port)
            await handshake_as_dialer(stream, FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX), me)
            await stream.send_all(encode_frame("fine") + garbage)
            with trio.fail_after(DEADLINE_S):
                while await stream.receive_some():
                    pass  # a closes the connection
            await stream.aclose()
            await wait_until(lambda: not a.transport.is_connected("mallory"))
            assert "bad frame" in (a.transport.reachability()["mallory"].last_error or "")

        assert a.received["mallory"] == ["fine", "fine"]
        assert a.transport.is_connected("b")
        assert b.transport.send("a", "ok")
        await wait_until(lambda: a.received.get("b") == ["ok"])


async def test_wrong_secret_never_connects_and_reports_why() -> None:
    async with fleet() as start:
        a = await start("a", "127.0.0.31")
        b = await start("b", "127.0.0.32", secret=b"z" * 32)
        introduce(b, a)
        await wait_until(
            lambda: (b.transport.reachability()["a"].last_error or "").startswith("auth")
        )
        assert not b.transport.is_connected("a")
        assert b.transport.statistics().handshakes_failed >= 1
        assert a.transport.statistics().open_connections == 0


async def test_joiner_learns_the_cluster_id() -> None:
    async with fleet() as start:
        a = await start("a", "127.0.0.33", cluster="prod")
        j = await start("joiner", "127.0.0.34", cluster=None)
        introduce(j, a)
        await wait_until(lambda: j.transport.is_connected("a"))
        assert j.transport.cluster == "prod"


async def test_full_queue_drops_and_counts() -> None:
    async with fleet() as start:
        a = await start("a", "127.0.0.35", config=TransportConfig(queue_frames_max=3))
        b = await start("b", "127.0.0.36")
        introduce(a, b)
        await wait_until(lambda: a.transport.is_connected("b"))
        # No checkpoint between the sends: the writer cannot drain in between.
        results = [a.transport.send("b", i) for i in range(5)]
        assert results == [True, True, True, False, False]
        assert a.transport.statistics().peers["b"].frames_dropped == 2
        await wait_until(lambda: b.received.get("a") == [0, 1, 2])
        assert a.transport.send("b", "unknown") is True
        assert a.transport.send("nobody", 1) is False
        assert a.transport.statistics().frames_dropped_unknown_peer == 1


async def test_remove_peer_closes_and_stops_dialing() -> None:
    async with fleet() as start:
        a = await start("a", "127.0.0.37")
        b = await start("b", "127.0.0.38")
        introduce(a, b)
        await wait_until(lambda: b.transport.is_connected("a"))
        a.transport.remove_peer("b")
        await wait_until(lambda: not b.transport.is_connected("a"))
        await trio.sleep(0.3)  # a must not dial again
        assert not b.transport.is_connected("a")
        assert "b" not in a.transport.reachability()


async def test_failing_on_frame_closes_only_that_connection(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with fleet() as start:
        a = await start("a", "127.0.0.39")
        b = await start("b", "127.0.0.40")
        introduce(b, a)
        await wait_until(lambda: a.transport.is_connected("b"))
        a.received["b"] = None  # type: ignore[assignment]  # the handler's append now raises
        assert b.transport.send("a", "boom")
        await wait_until(lambda: not a.transport.is_connected("b"))
        assert "on_frame failed" in (a.transport.reachability()["b"].last_error or "")
        assert "on_frame failed" in caplog.text
        a.received["b"] = []
        await wait_until(lambda: a.transport.is_connected("b"))  # b redials
        assert b.transport.send("a", "ok")
        await wait_until(lambda: a.received["b"] == ["ok"])
