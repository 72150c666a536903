"""The control server over real sockets (Unix in tmp dirs, TCP on 127.0.0.x) with a fake handler."""

from __future__ import annotations

import contextlib
import logging
import os
import select
import socket
import stat
import struct
import sys
import tempfile
from collections.abc import Awaitable, Callable, Iterable, Mapping

import msgpack
import pytest
import trio

from raftfleet_agent.control import protocol
from raftfleet_agent.control.protocol import ControlError
from raftfleet_agent.control.server import (
    ControlLimits,
    ControlServer,
    ControlSocketInUse,
    EventSink,
    PeerCredentials,
    peer_allowed,
    supplementary_groups,
)
from raftfleet_agent.transport.framing import NEED_DATA, FrameDecoder, encode_frame

TOKEN = b"control-token-0123456789abcdef"
WAIT_S = 5.0  # generous deadline for anything that should happen promptly
EOF = object()


class FakeHandler:
    """Answers ops in ways that exercise the server; `gates` hold requests back."""

    def __init__(self) -> None:
        self.gates: dict[str, trio.Event] = {}
        self.running = 0
        self.running_peak = 0
        self.cancelled: list[str] = []
        self.some_cancelled = trio.Event()

    async def handle(self, op: str, args: dict[str, object], events: EventSink) -> object:
        self.running += 1
        self.running_peak = max(self.running_peak, self.running)
        try:
            return await self._handle(op, args, events)
        except trio.Cancelled:
            self.cancelled.append(op)
            self.some_cancelled.set()
            raise
        finally:
            self.running -= 1

    async def _handle(self, op: str, args: dict[str, object], events: EventSink) -> object:
        if op == "ping":
            return "pong"
        if op == "status":
            return {"op": op}
        if op in ("leader", "group_status"):
            name = str(args.get("group", args.get("name")))
            if name.startswith("gate"):
                await self.gate(name).wait()
            if name == "missing":
                raise ControlError("unknown_group", "no group 'missing'", {"group": name})
            return {"group": name}
        if op == "nodes":
            raise RuntimeError("handler bug")
        if op == "group_list":
            return {"bad": object()}  # not msgpack-encodable
        if op == "deactivate":
            await events.send({"not": "allowed"})  # not a streaming op
        if op == "drain_watch":
            for i in range(3):
                await events.send({"remaining": 3 - i})
            return {"drained": True}
        if op == "subscribe":
            await events.send({"subscribed": args["topic"]})
            await trio.sleep_forever()
        return None

    def gate(self, name: str) -> trio.Event:
        return self.gates.setdefault(name, trio.Event())


class Peer:
    """A raw client: sends frames (or bytes) and reads whatever comes back."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.decoder = FrameDecoder()

    async def send(self, obj: object) -> None:
        await self.stream.send_all(encode_frame(obj))

    async def request(self, request_id: int, op: str, **args: object) -> None:
        await self.send({"id": request_id, "op": op, "args": args})

    async def recv(self) -> object:
        """The next frame, or EOF; fails the test if nothing comes in time."""
        with trio.fail_after(WAIT_S):
            while (obj := self.decoder.next_frame()) is NEED_DATA:
                try:
                    data = await self.stream.receive_some(65536)
                except trio.BrokenResourceError:
                    return EOF
                if not data:
                    return EOF
                self.decoder.feed(data)
            return obj

    async def call(self, request_id: int, op: str, **args: object) -> dict:
        await self.request(request_id, op, **args)
        reply = await self.recv()
        assert isinstance(reply, dict), reply
        return reply

    async def expect_goodbye(self, code: str, request_id: int | None = None) -> dict:
        """The connection-level error frame, then EOF."""
        reply = await self.recv()
        assert isinstance(reply, dict), reply
        assert reply["id"] == request_id and reply["ok"] is False, reply
        assert reply["error"]["code"] == code, reply
        assert await self.recv() is EOF
        return reply["error"]


StartUnix = Callable[..., Awaitable[tuple[ControlServer, str]]]


@pytest.fixture
def start_unix(nursery: trio.Nursery, tmp_path: object) -> StartUnix:
    async def start(
        handler: FakeHandler | None = None,
        *,
        limits: ControlLimits | None = None,
        path: str | None = None,
    ) -> tuple[ControlServer, str]:
        server = ControlServer(handler or FakeHandler(), limits=limits)
        sock_path = path or os.path.join(str(tmp_path), "agent.sock")
        await nursery.start(server.serve_unix, sock_path)
        return server, sock_path

    return start


async def connect(path: str) -> Peer:
    return Peer(await trio.open_unix_socket(path))


# --------------------------------------------------------------------------
# Requests and responses


async def test_echo_and_ok_responses(start_unix: StartUnix) -> None:
    server, path = await start_unix()
    peer = await connect(path)
    assert await peer.call(1, "ping") == {"id": 1, "ok": True, "result": "pong"}
    assert await peer.call(2, "status") == {"id": 2, "ok": True, "result": {"op": "status"}}
    assert await peer.call(3, "leader", group="g1") == {
        "id": 3,
        "ok": True,
        "result": {"group": "g1"},
    }
    assert server.statistics().requests_total == 3


async def test_control_error_becomes_an_error_response(start_unix: StartUnix) -> None:
    _, path = await start_unix()
    peer = await connect(path)
    reply = await peer.call(9, "leader", group="missing")
    assert reply == {
        "id": 9,
        "ok": False,
        "error": {
            "code": "unknown_group",
            "message": "no group 'missing'",
            "details": {"group": "missing"},
        },
    }


async def test_handler_bug_is_internal_and_isolated(
    start_unix: StartUnix, caplog: pytest.LogCaptureFixture
) -> None:
    server, path = await start_unix()
    peer, other = await connect(path), await connect(path)
    with caplog.at_level(logging.ERROR, logger="raftfleet.control"):
        reply = await peer.call(1, "nodes")
    assert reply["ok"] is False and reply["error"]["code"] == "internal"
    assert "handler bug" not in reply["error"]["message"]  # details stay in the log
    assert "handler bug" in caplog.text
    unencodable = await peer.call(2, "group_list")
    assert unencodable["error"]["code"] == "internal"
    not_streaming = await peer.call(3, "deactivate")
    assert not_streaming["error"]["code"] == "internal"
    # The same connection, and others, carry on.
    assert (await peer.call(4, "ping"))["result"] == "pong"
    assert (await other.call(1, "ping"))["result"] == "pong"
    assert server.statistics().internal_errors_total == 3


async def test_bad_requests_with_an_id_keep_the_connection(start_unix: StartUnix) -> None:
    _, path = await start_unix()
    peer = await connect(path)
    unknown = await peer.call(1, "reboot")
    assert unknown["error"]["code"] == "unknown_op"
    bad = await peer.call(2, "group_create", name="g1", replicas=9)
    assert bad["error"]["code"] == "bad_request"
    assert bad["error"]["details"] == {"field": "args.replicas"}
    assert "args.replicas" in bad["error"]["message"]
    await peer.send({"id": 3, "op": "ping", "args": "x"})
    assert (await peer.recv())["error"]["code"] == "bad_request"  # type: ignore[index]
    assert (await peer.call(4, "ping"))["ok"] is True


async def test_pipelined_requests_are_answered_out_of_order(start_unix: StartUnix) -> None:
    handler = FakeHandler()
    _, path = await start_unix(handler)
    peer = await connect(path)
    # Both in one write: the second must not wait for the first.
    await peer.stream.send_all(
        encode_frame({"id": 1, "op": "leader", "args": {"group": "gate-a"}})
        + encode_frame({"id": 2, "op": "ping", "args": {}})
    )
    assert (await peer.recv())["id"] == 2  # type: ignore[index]
    await peer.request(3, "leader", group="gate-a")
    duplicate = await peer.call(1, "ping")
    assert duplicate["id"] == 1 and duplicate["error"]["code"] == "bad_request"
    handler.gate("gate-a").set()
    replies = {(await peer.recv())["id"] for _ in range(2)}  # type: ignore[index]
    assert replies == {1, 3}


async def test_streaming_events_then_final_response(start_unix: StartUnix) -> None:
    _, path = await start_unix()
    peer = await connect(path)
    await peer.request(5, "drain_watch", timeout_s=10)
    frames = [await peer.recv() for _ in range(4)]
    assert frames == [
        {"id": 5, "event": {"remaining": 3}},
        {"id": 5, "event": {"remaining": 2}},
        {"id": 5, "event": {"remaining": 1}},
        {"id": 5, "ok": True, "result": {"drained": True}},
    ]


async def test_half_close_answers_unary_requests_and_cancels_streams(
    start_unix: StartUnix,
) -> None:
    handler = FakeHandler()
    _, path = await start_unix(handler)
    peer = await connect(path)
    await peer.request(1, "subscribe", topic="groups")
    assert await peer.recv() == {"id": 1, "event": {"subscribed": "groups"}}
    await peer.request(2, "leader", group="gate-b")
    await peer.stream.send_eof()
    with trio.fail_after(WAIT_S):
        await handler.some_cancelled.wait()
    assert handler.cancelled == ["subscribe"]
    handler.gate("gate-b").set()
    assert await peer.recv() == {"id": 2, "ok": True, "result": {"group": "gate-b"}}
    assert await peer.recv() is EOF


async def test_in_flight_limit_pushes_back(start_unix: StartUnix) -> None:
    handler = FakeHandler()
    _, path = await start_unix(handler, limits=ControlLimits(max_in_flight=2))
    peer = await connect(path)
    for i in range(4):
        await peer.request(i, "leader", group="gate-c")
    await peer.request(9, "ping")
    with trio.move_on_after(0.2):  # the ping must not overtake: the reader waits for a slot
        await peer.recv()
        pytest.fail("a reply came although every slot was taken")
    assert handler.running_peak == 2
    handler.gate("gate-c").set()
    ids = {(await peer.recv())["id"] for _ in range(5)}  # type: ignore[index]
    assert ids == {0, 1, 2, 3, 9}
    assert handler.running_peak == 2


# --------------------------------------------------------------------------
# Hostile input


@pytest.mark.parametrize(
    "garbage",
    [
        struct.pack(">I", 3) + b"\xc1\xc1\xc1",  # 0xc1 is never valid msgpack
        struct.pack(">I", 2**31),  # over the 1 MiB request cap
        struct.pack(">I", 0),
        encode_frame(42),  # not a map
        encode_frame({"op": "ping"}),  # no id
        encode_frame({"id": "x", "op": "ping"}),
    ],
)
async def test_malformed_frames_close_only_that_connection(
    start_unix: StartUnix, garbage: bytes
) -> None:
    _, path = await start_unix()
    bystander = await connect(path)
    peer = await connect(path)
    await peer.stream.send_all(garbage)
    await peer.expect_goodbye("bad_request")
    assert (await bystander.call(1, "ping"))["result"] == "pong"
    assert (await (await connect(path)).call(1, "ping"))["result"] == "pong"


async def test_request_cap_is_one_mebibyte(start_unix: StartUnix) -> None:
    _, path = await start_unix()
    peer = await connect(path)
    fits = {"id": 1, "op": "command", "args": {"group": "g", "arg": b"x" * (1024 * 1024 - 64)}}
    await peer.send(fits)
    assert (await peer.recv())["id"] == 1  # type: ignore[index]
    too_big = {"id": 2, "op": "command", "args": {"group": "g", "arg": b"x" * 1024 * 1024}}
    # The server hangs up after the header, so the rest of our write may fail.
    with contextlib.suppress(trio.BrokenResourceError):
        await peer.send(too_big)
    await peer.expect_goodbye("bad_request")


async def test_slow_frame_is_closed(start_unix: StartUnix) -> None:
    _, path = await start_unix(limits=ControlLimits(frame_timeout_s=0.2))
    peer = await connect(path)
    frame = encode_frame({"id": 1, "op": "ping"})
    await peer.stream.send_all(frame[:3])
    error = await peer.expect_goodbye("timeout")
    assert "frame" in error["message"]


async def test_connection_cap(start_unix: StartUnix) -> None:
    server, path = await start_unix(limits=ControlLimits(max_connections=1))
    first = await connect(path)
    assert (await first.call(1, "ping"))["ok"]
    second = await connect(path)
    await second.expect_goodbye("unavailable")
    assert (await first.call(2, "ping"))["ok"]
    assert server.statistics().connections_refused == 1


# --------------------------------------------------------------------------
# The socket file


async def test_socket_mode_is_0660(start_unix: StartUnix) -> None:
    _, path = await start_unix()
    st = os.stat(path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660


async def test_stale_socket_is_replaced(start_unix: StartUnix, tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "stale.sock")
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(path)
    dead.close()  # the file stays; nothing listens
    assert await trio.Path(path).exists()
    _, path = await start_unix(path=path)
    assert (await (await connect(path)).call(1, "ping"))["ok"]


async def test_refuses_to_start_when_another_server_listens(start_unix: StartUnix) -> None:
    _, path = await start_unix()
    with pytest.raises(ControlSocketInUse, match="listening"):
        await ControlServer(FakeHandler()).serve_unix(path)
    # The running server is untouched.
    assert (await (await connect(path)).call(1, "ping"))["ok"]


async def test_refuses_to_replace_a_regular_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "agent.sock")
    with open(path, "w") as f:  # noqa: ASYNC230 - test setup
        f.write("not a socket")
    with pytest.raises(ControlSocketInUse, match="not a socket"):
        await ControlServer(FakeHandler()).serve_unix(path)
    assert await trio.Path(path).is_file()


async def test_socket_removed_after_cancellation(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "agent.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(FakeHandler()).serve_unix, path)
        peer = await connect(path)  # an open connection must not block the shutdown
        assert (await peer.call(1, "ping"))["ok"]
        nursery.cancel_scope.cancel()
    assert not await trio.Path(path).exists()
    assert await peer.recv() is EOF


async def test_socket_of_a_successor_is_left_alone(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "agent.sock")
    async with trio.open_nursery() as nursery:
        await nursery.start(ControlServer(FakeHandler()).serve_unix, path)
        os.unlink(path)
        successor = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        successor.bind(path)
        nursery.cancel_scope.cancel()
    assert await trio.Path(path).exists()
    successor.close()


# --------------------------------------------------------------------------
# TCP with a token


StartTcp = Callable[..., Awaitable[tuple[str, int]]]


@pytest.fixture
def start_tcp(nursery: trio.Nursery) -> StartTcp:
    async def start(
        limits: ControlLimits | None = None, handler: FakeHandler | None = None
    ) -> tuple[str, int]:
        server = ControlServer(handler or FakeHandler(), limits=limits)
        return await nursery.start(server.serve_tcp, "127.0.0.1", 0, TOKEN)

    return start


async def tcp_peer(addr: tuple[str, int]) -> Peer:
    return Peer(await trio.open_tcp_stream(*addr))


async def test_tcp_good_token(start_tcp: StartTcp) -> None:
    peer = await tcp_peer(await start_tcp())
    assert await peer.call(1, "auth", token=TOKEN) == {
        "id": 1,
        "ok": True,
        "result": {"auth": "token"},
    }
    assert (await peer.call(2, "ping"))["result"] == "pong"
    text_token = await tcp_peer(await start_tcp())
    assert (await text_token.call(1, "auth", token=TOKEN.decode()))["ok"]


async def test_tcp_wrong_token(start_tcp: StartTcp) -> None:
    peer = await tcp_peer(await start_tcp())
    await peer.request(1, "auth", token=b"wrong-token-0123456789abcdef")
    await peer.request(2, "ping")  # pipelined behind: must never run
    error = await peer.expect_goodbye("unauthorized", request_id=1)
    assert "token" in error["message"]


async def test_tcp_wrong_tokens_are_logged_at_a_bounded_rate(
    start_tcp: StartTcp, caplog: pytest.LogCaptureFixture
) -> None:
    addr = await start_tcp()
    with caplog.at_level(logging.WARNING, logger="raftfleet.control"):
        for _ in range(20):
            peer = await tcp_peer(addr)
            await peer.request(1, "auth", token=b"wrong-token-0123456789abcdef")
            await peer.expect_goodbye("unauthorized", request_id=1)
    lines = [r for r in caplog.records if "wrong token" in r.getMessage()]
    assert len(lines) == 1, [r.getMessage() for r in lines]  # all 20 refused, one line


@pytest.mark.parametrize(
    "first",
    [
        {"id": 1, "op": "ping", "args": {}},
        {"id": 1, "op": "reboot", "args": {}},
        {"id": 1, "op": "auth", "args": {}},
    ],
)
async def test_tcp_missing_token(start_tcp: StartTcp, first: dict) -> None:
    peer = await tcp_peer(await start_tcp())
    await peer.send(first)
    reply = await peer.recv()
    assert isinstance(reply, dict) and reply["ok"] is False
    assert reply["error"]["code"] in ("unauthorized", "bad_request")
    assert await peer.recv() is EOF


async def test_tcp_frames_before_authentication_are_small(start_tcp: StartTcp) -> None:
    """A stranger cannot make the agent decode a big frame: before the token
    only an auth request fits (nested empty arrays decode to ~60 bytes of
    objects per byte). After it, the full request size applies at once, even
    to a request pipelined behind the auth in the same segment."""
    addr = await start_tcp()
    big = {"id": 2, "op": "group_status", "args": {"name": "x" * 60_000}}
    stranger = await tcp_peer(addr)
    await stranger.send(big)
    error = await stranger.expect_goodbye("bad_request")
    assert "exceeds the cap" in error["message"], error
    nested = b"\xdc\xff\xff" + b"\x90" * 0xFFFF  # one array of 65,535 empty arrays
    bomb = await tcp_peer(addr)
    await bomb.stream.send_all(struct.pack(">I", len(nested)) + nested)
    await bomb.expect_goodbye("bad_request")
    client = await tcp_peer(addr)
    auth = encode_frame({"id": 1, "op": "auth", "args": {"token": TOKEN}})
    await client.stream.send_all(auth + encode_frame(big))
    assert (await client.recv())["ok"] is True  # type: ignore[index]
    reply = await client.recv()
    assert isinstance(reply, dict) and reply["id"] == 2, reply  # an answer, not a goodbye
    assert (await client.call(3, "ping"))["result"] == "pong"


async def test_tcp_slow_loris_is_closed(
    start_tcp: StartTcp,
) -> None:
    addr = await start_tcp(ControlLimits(auth_timeout_s=0.3))
    silent = await tcp_peer(addr)
    trickle = await tcp_peer(addr)
    frame = encode_frame({"id": 1, "op": "auth", "args": {"token": TOKEN}})
    reply: object = None
    for byte in frame:  # one byte every 50 ms: the frame never completes in time
        await trickle.stream.send_all(bytes([byte]))
        with trio.move_on_after(0.05):
            reply = await trickle.recv()
            break
    assert isinstance(reply, dict) and reply["error"]["code"] == "timeout", reply
    assert "authentication" in reply["error"]["message"]
    await silent.expect_goodbye("timeout")


async def test_tcp_idle_connection_is_closed_but_not_while_busy(
    start_tcp: StartTcp,
) -> None:
    handler = FakeHandler()
    addr = await start_tcp(ControlLimits(idle_timeout_s=0.3), handler)
    peer = await tcp_peer(addr)
    assert (await peer.call(1, "auth", token=TOKEN))["ok"]
    await peer.request(2, "leader", group="gate-d")
    await trio.sleep(0.6)  # twice the idle limit, with a request in flight
    handler.gate("gate-d").set()
    assert (await peer.recv())["id"] == 2  # type: ignore[index]
    start = trio.current_time()
    error = await peer.expect_goodbye("timeout")
    assert "idle" in error["message"]
    assert trio.current_time() - start >= 0.25


# --------------------------------------------------------------------------
# Who may use the Unix socket


def test_peer_policy() -> None:
    def allowed(uid: int, gid: int, groups: list[int] | None = None) -> bool:
        cred = PeerCredentials(pid=1, uid=uid, gid=gid)
        return peer_allowed(cred, own_uid=1000, socket_gid=500, groups=groups)

    assert allowed(0, 0)  # root
    assert allowed(1000, 1000)  # the agent's own user
    assert allowed(2000, 500)  # primary group is the socket's
    assert allowed(2000, 2000, [2000, 500])  # a supplementary member
    assert not allowed(2000, 2000, [2000])
    assert not allowed(2000, 2000, None)  # user unknown to passwd


def test_supplementary_groups_lookup() -> None:
    uid, gid = os.getuid(), os.getgid()
    groups = supplementary_groups(uid, gid)
    assert groups is not None and gid in groups
    assert supplementary_groups(2**31 - 7, 1) is None  # no such user


_AS_NOBODY = """
import os, socket, sys
os.setgroups([]); os.setgid(65534); os.setuid(65534)
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(5)
try:
    s.connect(sys.argv[1])
except PermissionError:
    print("EACCES"); sys.exit(0)
s.sendall(bytes.fromhex(sys.argv[2]))
data = b""
while chunk := s.recv(65536):
    data += chunk
    if sys.argv[3] == "one" and len(data) > 4 and len(data) >= 4 + int.from_bytes(data[:4], "big"):
        break
print(data.hex())
"""


async def run_as_nobody(path: str, request: Mapping[str, object]) -> list[object] | str:
    """Connect as uid/gid 65534 without supplementary groups; return the frames or EACCES."""
    result = await trio.run_process(
        [sys.executable, "-c", _AS_NOBODY, path, encode_frame(request).hex(), "one"],
        capture_stdout=True,
    )
    out = result.stdout.decode().strip()
    if out == "EACCES":
        return out
    decoder = FrameDecoder()
    decoder.feed(bytes.fromhex(out))
    return list(decoder)


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="needs root")
async def test_peer_credentials_are_checked() -> None:
    # pytest's tmp_path is 0700, so nobody could not even reach the socket.
    directory = tempfile.mkdtemp(prefix="rf-ctl-")
    os.chmod(directory, 0o711)
    path = os.path.join(directory, "agent.sock")
    try:
        async with trio.open_nursery() as nursery:
            server = ControlServer(FakeHandler())
            await nursery.start(server.serve_unix, path)
            await _check_as_nobody(server, path)
            nursery.cancel_scope.cancel()
        assert not await trio.Path(path).exists()
    finally:
        for name in os.listdir(directory):
            os.unlink(os.path.join(directory, name))
        os.rmdir(directory)


async def _check_as_nobody(server: ControlServer, path: str) -> None:
    assert os.stat(path).st_gid == 0
    ping = {"id": 1, "op": "ping", "args": {}}
    # 0660, group root: the file mode stops nobody at connect().
    assert await run_as_nobody(path, ping) == "EACCES"
    # Mode loosened by mistake: SO_PEERCRED still says no.
    os.chmod(path, 0o666)
    [refusal] = await run_as_nobody(path, ping)
    assert isinstance(refusal, dict) and refusal["id"] is None
    assert refusal["error"]["code"] == "unauthorized"
    assert "uid 65534" in refusal["error"]["message"]
    # The socket's group is nobody's: allowed.
    os.chown(path, 0, 65534)
    os.chmod(path, 0o660)
    assert await run_as_nobody(path, ping) == [{"id": 1, "ok": True, "result": "pong"}]
    assert server.statistics().connections_refused == 1


def test_unauthorized_is_a_control_error() -> None:
    err = protocol.Unauthorized("nope")
    assert isinstance(err, ControlError) and err.code == "unauthorized"
    assert msgpack.unpackb(msgpack.packb(err.to_wire())) == {
        "code": "unauthorized",
        "message": "nope",
    }


# --------------------------------------------------------------------------
# The fast path (a handler that takes requests without a task)


async def _until(cond: Callable[[], bool]) -> None:
    with trio.fail_after(WAIT_S):
        while not cond():  # noqa: ASYNC110 - polling the handler's state is the point
            await trio.sleep(0.01)


class FastHandler(FakeHandler):
    """`command` on groups named "now-*" settles at once; "later-*" waits in
    `held` for the test to settle; "slow-*" goes the normal way after all;
    "boom" raises; anything else is declined (normal path)."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, object] = {}
        self.taken = 0

    def fast(self, op: str, args: dict, ticket: object) -> bool:
        group = str(args.get("group", ""))
        if op != "command" or not group.startswith(("now-", "later-", "slow-", "boom")):
            return False
        self.taken += 1
        if group == "boom":
            raise RuntimeError("fast path bug")
        if group.startswith("now-"):
            ticket.ok({"fast": group})  # type: ignore[attr-defined]
            ticket.fail(ControlError("timeout", "settled twice"))  # type: ignore[attr-defined]
        elif group.startswith("later-"):
            self.held[group] = ticket
        else:
            ticket.slow()  # type: ignore[attr-defined]
        return True

    async def _handle(self, op: str, args: dict[str, object], events: EventSink) -> object:
        if op == "command":
            return {"slow": args["group"]}
        return await super()._handle(op, args, events)


async def _hold_pipelined(peer: Peer, handler: FastHandler, ids: Iterable[int]) -> None:
    """Requests on groups "later-<id>" in one write; back once the handler holds them all."""
    frames = [
        encode_frame({"id": i, "op": "command", "args": {"group": f"later-{i}", "arg": 1}})
        for i in ids
    ]
    await peer.stream.send_all(b"".join(frames))
    await _until(lambda: len(handler.held) >= len(frames))


async def test_fast_path_answers_without_a_task(start_unix: StartUnix) -> None:
    handler = FastHandler()
    server, path = await start_unix(handler)
    peer = await connect(path)
    reply = await peer.call(1, "command", group="now-a", arg="inc")
    assert reply == {"id": 1, "ok": True, "result": {"fast": "now-a"}}  # the second settle lost
    assert handler.running_peak == 0  # the async handler never ran
    declined = await peer.call(2, "command", group="other", arg="inc")
    assert declined["result"] == {"slow": "other"}
    assert (await peer.call(3, "command", group="slow-b", arg="inc"))["result"] == {
        "slow": "slow-b"
    }
    await _until(lambda: server.statistics().requests_in_flight == 0)
    assert server.statistics().requests_total == 3


async def test_fast_path_late_answers_leave_together_and_in_settle_order(
    start_unix: StartUnix,
) -> None:
    handler = FastHandler()
    _, path = await start_unix(handler)
    peer = await connect(path)
    await _hold_pipelined(peer, handler, range(1, 6))
    for i in (4, 2, 5, 1):
        handler.held[f"later-{i}"].ok(i)  # type: ignore[attr-defined]
    handler.held["later-3"].fail(ControlError("timeout", "gave up"))  # type: ignore[attr-defined]
    frames = [await peer.recv() for _ in range(5)]
    assert [f["id"] for f in frames] == [4, 2, 5, 1, 3]  # type: ignore[index]
    assert frames[-1]["error"]["code"] == "timeout"  # type: ignore[index]


def _readable(peer: Peer) -> bool:
    """Whether bytes wait on the client's socket now (no checkpoint, so no task ran)."""
    ready, _, _ = select.select([peer.stream.socket.fileno()], [], [], 0)
    return bool(ready)


async def test_fast_path_reply_to_a_waiting_client_is_written_at_once(
    start_unix: StartUnix,
) -> None:
    handler = FastHandler()
    _, path = await start_unix(handler)
    peer = await connect(path)
    for i, size in enumerate((10, 4_000_000), start=1):
        await peer.request(i, "command", group=f"later-{i}", arg=1)
        await _until(lambda: f"later-{i}" in handler.held)  # noqa: B023 - awaited here
        assert not _readable(peer)
        handler.held[f"later-{i}"].ok(b"x" * size)  # type: ignore[attr-defined]
        # Written by the call itself: no task had a chance to run. The big one
        # does not fit the socket's buffer, and its flush task writes the rest.
        assert _readable(peer)
        assert await peer.recv() == {"id": i, "ok": True, "result": b"x" * size}


async def test_fast_path_replies_to_a_pipelining_client_wait_for_one_write(
    start_unix: StartUnix,
) -> None:
    handler = FastHandler()
    _, path = await start_unix(handler)
    peer = await connect(path)
    await _hold_pipelined(peer, handler, (1, 2))
    handler.held["later-1"].ok(1)  # type: ignore[attr-defined]
    assert not _readable(peer)  # queued for the flush task, which takes the next one too
    handler.held["later-2"].ok(2)  # type: ignore[attr-defined]
    assert [await peer.recv() for _ in range(2)] == [
        {"id": 1, "ok": True, "result": 1},
        {"id": 2, "ok": True, "result": 2},
    ]
    await peer.request(3, "command", group="later-3", arg=1)
    await _until(lambda: "later-3" in handler.held)
    handler.held["later-3"].ok(3)  # type: ignore[attr-defined]
    assert not _readable(peer)  # once pipelining, always batched
    assert await peer.recv() == {"id": 3, "ok": True, "result": 3}


async def test_fast_path_bug_is_internal(
    start_unix: StartUnix, caplog: pytest.LogCaptureFixture
) -> None:
    server, path = await start_unix(FastHandler())
    peer = await connect(path)
    with caplog.at_level(logging.ERROR, logger="raftfleet.control"):
        reply = await peer.call(1, "command", group="boom", arg=1)
    assert reply["error"]["code"] == "internal" and "fast path bug" in caplog.text
    assert (await peer.call(2, "ping"))["result"] == "pong"
    await _until(lambda: server.statistics().requests_in_flight == 0)


async def test_fast_path_requests_are_answered_after_half_close(start_unix: StartUnix) -> None:
    handler = FastHandler()
    server, path = await start_unix(handler)
    peer = await connect(path)
    await peer.request(1, "command", group="later-x", arg=1)
    await _until(lambda: "later-x" in handler.held)
    await peer.stream.send_eof()
    await trio.sleep(0.05)  # the server saw EOF; the request must still be answered
    handler.held["later-x"].ok("done")  # type: ignore[attr-defined]
    assert await peer.recv() == {"id": 1, "ok": True, "result": "done"}
    assert await peer.recv() is EOF
    await _until(lambda: server.statistics().requests_in_flight == 0)


async def test_fast_path_answer_after_the_connection_died_is_dropped(
    start_unix: StartUnix,
) -> None:
    handler = FastHandler()
    server, path = await start_unix(handler)
    peer = await connect(path)
    await peer.request(1, "command", group="later-y", arg=1)
    await _until(lambda: "later-y" in handler.held)
    # A protocol violation closes the connection with the request in flight.
    await peer.stream.send_all(b"\xff\xff\xff\xff garbage")
    await peer.expect_goodbye("bad_request")
    handler.held["later-y"].ok("too late")  # type: ignore[attr-defined]
    handler.held["later-y"].slow()  # type: ignore[attr-defined]
    await _until(lambda: server.statistics().requests_in_flight == 0)
    other = await connect(path)
    assert (await other.call(1, "ping"))["result"] == "pong"
