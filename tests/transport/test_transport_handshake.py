"""Handshake: two real endpoints over an in-memory link (and raw messages for attacks)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from raftfleet_agent.transport.framing import FrameDecoder, encode_frame
from raftfleet_agent.transport.handshake import (
    HANDSHAKE_FRAME_BYTES_MAX,
    PROTOCOL_VERSION,
    HandshakeError,
    LocalIdentity,
    PeerIdentity,
    handshake_as_acceptor,
    handshake_as_dialer,
)

SECRET = b"s" * 32


def ident(name: str, cluster: str | None = "c1", secret: bytes = SECRET) -> LocalIdentity:
    return LocalIdentity(name=name, cluster=cluster, secret=secret)


def decoder() -> FrameDecoder:
    return FrameDecoder(HANDSHAKE_FRAME_BYTES_MAX)


async def run_pair(
    dialer: LocalIdentity, acceptor: LocalIdentity, **dial_kw: object
) -> tuple[PeerIdentity | HandshakeError, PeerIdentity | HandshakeError]:
    """Run both sides against each other; return each side's result or error.

    Like the transport, a side that fails closes its end, so the other side
    fails promptly too instead of waiting for the deadline.
    """
    left, right = trio.testing.memory_stream_pair()
    results: dict[str, PeerIdentity | HandshakeError] = {}

    async def side(key: str, stream: trio.abc.Stream, run: object) -> None:
        try:
            results[key] = await run()  # type: ignore[operator]
        except HandshakeError as exc:
            results[key] = exc
            await stream.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(
            side, "d", left, lambda: handshake_as_dialer(left, decoder(), dialer, **dial_kw)
        )
        nursery.start_soon(
            side, "a", right, lambda: handshake_as_acceptor(right, decoder(), acceptor)
        )
    return results["d"], results["a"]


async def test_success_both_sides_learn_each_other() -> None:
    a, b = ident("agent-a"), ident("agent-b")
    seen_by_a, seen_by_b = await run_pair(a, b, expected_peer="agent-b")
    assert seen_by_a == PeerIdentity(name="agent-b", cluster="c1", boot_id=b.boot_id)
    assert seen_by_b == PeerIdentity(name="agent-a", cluster="c1", boot_id=a.boot_id)


async def test_joiner_without_cluster_id_learns_it() -> None:
    joiner, member = ident("new", cluster=None), ident("old", cluster="prod")
    seen_by_joiner, seen_by_member = await run_pair(joiner, member)
    assert isinstance(seen_by_joiner, PeerIdentity)
    assert seen_by_joiner.cluster == "prod"
    assert isinstance(seen_by_member, PeerIdentity)
    assert seen_by_member.cluster == "prod"


async def test_joiner_with_wrong_secret_still_fails() -> None:
    joiner = ident("new", cluster=None, secret=b"w" * 32)
    d, a = await run_pair(joiner, ident("old"))
    assert isinstance(d, HandshakeError) and d.code == "auth"
    assert isinstance(a, HandshakeError)


async def test_wrong_secret_on_the_acceptor_is_caught_by_the_dialer() -> None:
    d, a = await run_pair(ident("a"), ident("b", secret=b"x" * 32))
    assert isinstance(d, HandshakeError) and d.code == "auth"
    assert "cluster secret" in d.reason
    assert isinstance(a, HandshakeError) and a.code == "closed"


async def test_wrong_secret_on_the_dialer_is_caught_by_both() -> None:
    # The dialer detects the acceptor's mac first; the acceptor never sees a
    # valid auth message either way.
    d, a = await run_pair(ident("a", secret=b"x" * 32), ident("b"))
    assert isinstance(d, HandshakeError) and d.code == "auth"
    assert isinstance(a, HandshakeError)


async def test_cluster_mismatch_is_refused_with_a_reason() -> None:
    d, a = await run_pair(ident("a", cluster="east"), ident("b", cluster="west"))
    assert isinstance(a, HandshakeError) and a.code == "cluster"
    assert isinstance(d, HandshakeError) and d.code == "refused"
    assert "cluster id mismatch" in d.reason


async def test_unexpected_peer_name_fails_the_dialer() -> None:
    d, _ = await run_pair(ident("a"), ident("c"), expected_peer="b")
    assert isinstance(d, HandshakeError) and d.code == "name"


async def test_peer_claiming_our_name_is_refused() -> None:
    d, a = await run_pair(ident("same"), ident("same"))
    assert isinstance(a, HandshakeError) and a.code == "name"
    assert isinstance(d, HandshakeError)


def hello(**overrides: object) -> dict[str, object]:
    msg: dict[str, object] = {"t": "hello", "version": PROTOCOL_VERSION, "cluster": "c1",
                              "name": "mallory", "boot": b"b" * 16, "nonce": b"n" * 32}  # fmt: skip
    msg.update(overrides)
    return msg


async def accept_raw(messages: list[object]) -> tuple[HandshakeError, list[object]]:
    """Send raw frames to an acceptor; return its error and what it answered."""
    left, right = trio.testing.memory_stream_pair()
    for msg in messages:
        await left.send_all(encode_frame(msg))
    with pytest.raises(HandshakeError) as info:
        await handshake_as_acceptor(right, decoder(), ident("b"), timeout_s=1.0)
    await right.aclose()
    answers, dec = [], FrameDecoder()
    while data := await left.receive_some():
        dec.feed(data)
        answers.extend(dec)
    return info.value, answers


async def test_version_mismatch_is_refused_with_a_reason(autojump_clock: object) -> None:
    error, answers = await accept_raw([hello(version=PROTOCOL_VERSION + 1)])
    assert error.code == "version"
    assert answers == [{"t": "refused", "reason": error.reason}]
    assert "we speak 1" in error.reason


@pytest.mark.parametrize(
    "bad",
    [
        "not a map",
        hello(nonce=b"short"),
        hello(name=""),
        hello(name=7),
        hello(boot=None),
        hello(cluster=3),
        {"t": "welcome"},
    ],
)
async def test_malformed_hello_fails(bad: object, autojump_clock: object) -> None:
    error, _ = await accept_raw([bad])
    assert error.code in ("protocol", "name", "version")


async def test_replayed_dialer_messages_fail() -> None:
    """Record a real dialer's hello and auth, replay them on a new connection."""
    a, b = ident("a"), ident("b")
    left, right = trio.testing.memory_stream_pair()
    recorded: list[bytes] = []

    class Recorder(trio.abc.Stream):
        async def send_all(self, data: bytes | bytearray | memoryview) -> None:
            recorded.append(bytes(data))
            await left.send_all(data)

        async def wait_send_all_might_not_block(self) -> None:
            await left.wait_send_all_might_not_block()

        async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
            return await left.receive_some(max_bytes)

        async def aclose(self) -> None:
            await left.aclose()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(handshake_as_dialer, Recorder(), decoder(), a)
        await handshake_as_acceptor(right, decoder(), b)
    assert len(recorded) == 2  # hello, auth

    # The replay: an attacker without the secret resends both messages.
    left2, right2 = trio.testing.memory_stream_pair()
    for data in recorded:
        await left2.send_all(data)
    with pytest.raises(HandshakeError) as info:
        await handshake_as_acceptor(right2, decoder(), b)
    assert info.value.code == "auth"


async def test_silent_connection_is_dropped_after_the_deadline(autojump_clock: object) -> None:
    _left, right = trio.testing.memory_stream_pair()
    start = trio.current_time()
    with pytest.raises(HandshakeError) as info:
        await handshake_as_acceptor(right, decoder(), ident("b"), timeout_s=5.0)
    assert info.value.code == "timeout"
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_slow_loris_dribbling_bytes_is_dropped_at_the_deadline(
    autojump_clock: object,
) -> None:
    left, right = trio.testing.memory_stream_pair()
    frame = encode_frame(hello())

    async def dribble() -> None:
        for byte in frame:
            await left.send_all(bytes([byte]))
            await trio.sleep(1.0)  # one byte a second: never finishes in 5 s

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(dribble)
        with pytest.raises(HandshakeError) as info:
            await handshake_as_acceptor(right, decoder(), ident("b"), timeout_s=5.0)
        nursery.cancel_scope.cancel()
    assert info.value.code == "timeout"
    assert trio.current_time() - start == pytest.approx(5.0)


async def test_half_sent_hello_then_close_fails_promptly(autojump_clock: object) -> None:
    left, right = trio.testing.memory_stream_pair()
    frame = encode_frame(hello())
    await left.send_all(frame[: len(frame) // 2])
    await left.aclose()
    start = trio.current_time()
    with pytest.raises(HandshakeError) as info:
        await handshake_as_acceptor(right, decoder(), ident("b"))
    assert info.value.code == "closed"
    assert trio.current_time() == start


async def test_oversized_handshake_frame_is_a_protocol_error(autojump_clock: object) -> None:
    left, right = trio.testing.memory_stream_pair()
    await left.send_all((HANDSHAKE_FRAME_BYTES_MAX + 1).to_bytes(4, "big"))
    with pytest.raises(HandshakeError) as info:
        await handshake_as_acceptor(right, decoder(), ident("b"))
    assert info.value.code == "protocol"


def test_short_secret_is_refused() -> None:
    with pytest.raises(ValueError, match="secret"):
        LocalIdentity(name="a", cluster="c", secret=b"short")
