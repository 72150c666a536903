"""The synchronous client against the real control server (trio in a thread) and scripted peers."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator

import pytest
import trio

from raftfleet_agent.control.protocol import ControlError, Unauthorized
from raftfleet_agent.control.server import ControlLimits, ControlServer, EventSink
from raftfleet_agent.transport.framing import FrameDecoder, encode_frame
from raftfleet_cli.client import (
    Address,
    CallTimeout,
    Client,
    ConnectError,
    ConnectionLost,
    ProtocolError,
    default_addr,
    parse_addr,
    read_token_file,
)

TOKEN = b"client-test-token-0123456789"
WAIT_S = 5.0


class Handler:
    async def handle(self, op: str, args: dict[str, object], events: EventSink) -> object:
        if op == "ping":
            return "pong"
        if op == "leader":
            if args["group"] == "slow":
                await trio.sleep(0.2)
            if args["group"] == "slower":
                await trio.sleep(0.4)
            if args["group"] == "missing":
                raise ControlError("unknown_group", "no such group", {"group": "missing"})
            return {"group": args["group"], "leader": "a1"}
        if op == "command":
            return args["arg"]
        if op == "drain_watch":
            for remaining in (2, 1):
                await events.send({"remaining": remaining})
            if args["timeout_s"] == 1:
                raise ControlError("timeout", "still draining")
            return {"drained": True}
        raise ControlError("not_found", op)


class AgentThread:
    """A real ControlServer run by trio.run in a background thread."""

    def __init__(self, tmp: str, limits: ControlLimits | None = None) -> None:
        self.path = os.path.join(tmp, "agent.sock")
        self.server = ControlServer(Handler(), limits=limits)
        self.tcp: tuple[str, int] = ("", 0)
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            trio.run(self._main)
        except BaseException as exc:
            self._failure = exc
            self._ready.set()

    async def _main(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            await nursery.start(self.server.serve_unix, self.path)
            self.tcp = await nursery.start(self.server.serve_tcp, "127.0.0.1", 0, TOKEN)
            self._ready.set()

    def __enter__(self) -> AgentThread:
        self._thread.start()
        assert self._ready.wait(WAIT_S), "the agent thread did not start"
        if self._failure is not None:
            raise self._failure
        return self

    def __exit__(self, *exc: object) -> None:
        trio.from_thread.run_sync(self._scope.cancel, trio_token=self._token)
        self._thread.join(WAIT_S)
        assert not self._thread.is_alive()


@pytest.fixture
def agent(tmp_path: object) -> Iterator[AgentThread]:
    with AgentThread(str(tmp_path)) as running:
        yield running


# --------------------------------------------------------------------------
# Addresses


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("unix:///run/raftfleet/agent.sock", Address("unix", path="/run/raftfleet/agent.sock")),
        ("unix:/tmp/a.sock", Address("unix", path="/tmp/a.sock")),
        ("/tmp/a.sock", Address("unix", path="/tmp/a.sock")),
        ("tcp://127.0.0.1:7100", Address("tcp", host="127.0.0.1", port=7100)),
        ("tcp://agent-1.example.com:7100/", Address("tcp", host="agent-1.example.com", port=7100)),
        ("tcp://[::1]:7100", Address("tcp", host="::1", port=7100)),
    ],
)
def test_parse_addr(text: str, expected: Address) -> None:
    addr = parse_addr(text)
    assert addr == expected
    assert parse_addr(str(addr)) == addr


def test_relative_paths_become_absolute() -> None:
    assert parse_addr("agent.sock") == Address("unix", path=os.path.abspath("agent.sock"))
    assert parse_addr("unix:run/a.sock").path == os.path.abspath("run/a.sock")
    assert str(parse_addr("/run/raftfleet/agent.sock")) == "unix:///run/raftfleet/agent.sock"
    assert str(parse_addr("tcp://[::1]:7")) == "tcp://[::1]:7"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("http://host:80", "unsupported address scheme 'http'"),
        ("localhost:7100", "did you mean tcp://localhost:7100"),
        ("tcp://host", "expected tcp://HOST:PORT"),
        ("tcp://:7100", "expected tcp://HOST:PORT"),
        ("tcp://host:0", "port must be from 1 to 65535"),
        ("tcp://host:70000", "port must be from 1 to 65535"),
        ("tcp://host:http", "expected tcp://HOST:PORT"),
        ("unix://", "bad socket path"),
        ("/" + "x" * 200, "longer than 107 bytes"),
    ],
)
def test_parse_addr_errors(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_addr(text)


def test_default_addr() -> None:
    env = {"RAFTFLEET_ADDR": "tcp://127.0.0.2:7100"}
    assert default_addr(env) == Address("tcp", host="127.0.0.2", port=7100)
    env = {"RUNTIME_DIRECTORY": "/run/raftfleet", "PATH": "/bin"}
    assert default_addr(env) == Address("unix", path="/run/raftfleet/agent.sock")


def test_read_token_file(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "token")
    with open(path, "wb") as f:
        f.write(TOKEN + b"\n")
    assert read_token_file(path) == TOKEN
    with open(path, "wb") as f:
        f.write(b"\n")
    with pytest.raises(ValueError, match="empty"):
        read_token_file(path)


# --------------------------------------------------------------------------
# Calls against the real server


def test_call_over_unix(agent: AgentThread) -> None:
    with Client(agent.path) as client:
        assert client.call("ping") == "pong"
        assert client.call("leader", group="g1") == {"group": "g1", "leader": "a1"}
        assert client.call("command", group="g1", arg={"k": [1, b"\x00"]}) == {"k": [1, b"\x00"]}
        with pytest.raises(ControlError) as info:
            client.call("leader", group="missing")
        assert (info.value.code, info.value.details) == ("unknown_group", {"group": "missing"})
        with pytest.raises(ControlError) as info:
            client.call("group_create", name="g1", replicas=9)
        assert info.value.code == "bad_request" and "args.replicas" in info.value.message
        assert client.call("ping") == "pong"  # errors leave the connection usable


def test_call_over_tcp_with_token(agent: AgentThread) -> None:
    host, port = agent.tcp
    with Client(f"tcp://{host}:{port}", token=TOKEN.decode()) as client:
        assert client.call("ping") == "pong"
        assert client.call("leader", group="g2")["group"] == "g2"  # type: ignore[index]


def test_tcp_wrong_or_missing_token(agent: AgentThread) -> None:
    addr = f"tcp://{agent.tcp[0]}:{agent.tcp[1]}"
    with pytest.raises(Unauthorized, match=r"refused the token.*--token-file"):
        Client(addr, token=b"wrong-token-0123456789abcdef").call("ping")
    with pytest.raises(Unauthorized, match="requires a token"):
        Client(addr).call("ping")


def test_stream_yields_events_then_result(agent: AgentThread) -> None:
    with Client(agent.path) as client:
        watch = client.stream("drain_watch", timeout=WAIT_S)
        assert list(watch) == [{"remaining": 2}, {"remaining": 1}]
        assert watch.result == {"drained": True}
        assert client.call("ping") == "pong"
        failing = client.stream("drain_watch", timeout_s=1)
        assert next(failing) == {"remaining": 2}
        with pytest.raises(RuntimeError, match="stream is in progress"):
            client.call("ping")
        assert next(failing) == {"remaining": 1}
        with pytest.raises(ControlError, match="still draining"):
            next(failing)
        # call() on a streaming op waits for the final answer.
        assert client.call("drain_watch") == {"drained": True}


def test_abandoned_stream_reconnects(agent: AgentThread) -> None:
    with Client(agent.path) as client:
        with client.stream("drain_watch") as watch:
            assert next(watch) == {"remaining": 2}
        assert client.call("ping") == "pong"


def test_call_timeout_then_recovery(agent: AgentThread) -> None:
    with Client(agent.path) as client:
        with pytest.raises(CallTimeout):
            client.call("leader", timeout=0.05, group="slow")
        # The late answer (due first) must not be taken for this call's: the
        # client dropped that connection and uses a fresh one.
        assert client.call("leader", timeout=WAIT_S, group="slower")["group"] == "slower"  # type: ignore[index]
        assert client.call("ping", timeout=WAIT_S) == "pong"


def test_request_cap_is_checked_locally(agent: AgentThread) -> None:
    with Client(agent.path) as client, pytest.raises(ControlError, match="exceeds the cap"):
        client.call("command", group="g", arg=b"x" * (1024 * 1024))


def test_connection_level_refusal_is_raised(tmp_path: object) -> None:
    limits = ControlLimits(max_connections=1)
    with AgentThread(str(tmp_path), limits) as agent, Client(agent.path) as first:
        assert first.call("ping") == "pong"
        with pytest.raises(ControlError) as info:
            Client(agent.path).call("ping", timeout=WAIT_S)
        assert info.value.code == "unavailable"


# --------------------------------------------------------------------------
# Unreachable agents


def test_missing_socket_message(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "agent.sock")
    with pytest.raises(ConnectError) as info:
        Client(path).call("ping")
    assert str(info.value) == (
        f"cannot reach agent at unix://{path}: no such file "
        "(is raftfleet-agent running? set --addr or RAFTFLEET_ADDR)"
    )


def test_stale_socket_and_closed_port(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "stale.sock")
    with socket.socket(socket.AF_UNIX) as dead:
        dead.bind(path)
    with pytest.raises(ConnectError, match="connection refused"):
        Client(path).call("ping")
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    with pytest.raises(ConnectError, match=f"tcp://127.0.0.1:{port}: connection refused"):
        Client(f"tcp://127.0.0.1:{port}", token=TOKEN).call("ping")


@pytest.mark.skipif(os.geteuid() == 0, reason="root ignores file permissions")
def test_permission_denied_message(tmp_path: object) -> None:
    path = os.path.join(str(tmp_path), "agent.sock")
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        listener.listen()
        os.chmod(path, 0)
        with pytest.raises(ConnectError, match=r"permission denied.*group"):
            Client(path).call("ping")


_CLIENT_AS_NOBODY = """
import os, sys
from raftfleet_cli.client import Client, ClientError, ControlError
os.setgroups([]); os.setgid(65534); os.setuid(65534)
try:
    print("ok", Client(sys.argv[1]).call("ping", timeout=5))
except (ClientError, ControlError) as exc:
    print(type(exc).__name__, exc)
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become nobody")
def test_refusals_as_another_user() -> None:
    # pytest's tmp_path is 0700: nobody could not even reach a socket there.
    directory = tempfile.mkdtemp(prefix="rf-cli-")
    os.chmod(directory, 0o711)
    try:
        with AgentThread(directory) as agent:

            def run() -> str:
                return subprocess.run(
                    [sys.executable, "-c", _CLIENT_AS_NOBODY, agent.path],
                    capture_output=True, text=True, check=True, timeout=30,
                ).stdout.strip()  # fmt: skip

            # 0660 and group root: the file mode refuses nobody.
            assert run() == (
                f"ConnectError cannot reach agent at unix://{agent.path}: permission denied "
                "(is your user in the socket's group? or use sudo)"
            )
            os.chmod(agent.path, 0o666)  # loosened by mistake: SO_PEERCRED still refuses
            assert run().startswith("Unauthorized unauthorized: uid 65534 is not root")
            os.chown(agent.path, 0, 65534)  # the socket's group is nobody's
            os.chmod(agent.path, 0o660)
            assert run() == "ok pong"
    finally:
        shutil.rmtree(directory)


# --------------------------------------------------------------------------
# Scripted agents: what a real server never sends


def scripted(
    tmp_path: object, reply: Callable[[dict], bytes], requests: int = 1
) -> tuple[str, threading.Thread]:
    """A one-connection agent: answers `requests` requests with `reply(request)`, hangs up."""
    path = os.path.join(str(tmp_path), "scripted.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen()

    requests_left = [requests]

    def serve() -> None:
        with listener, listener.accept()[0] as conn:
            conn.settimeout(WAIT_S)
            decoder = FrameDecoder()
            while data := conn.recv(65536):
                decoder.feed(data)
                for request in decoder:
                    assert isinstance(request, dict)
                    conn.sendall(reply(request))
                    requests_left[0] -= 1
                    if not requests_left[0]:
                        return

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return path, thread


def test_request_frames_and_ids(tmp_path: object) -> None:
    seen: list[dict] = []

    def echo(request: dict) -> bytes:
        seen.append(request)
        return encode_frame({"id": request["id"], "ok": True, "result": request["args"]})

    path, thread = scripted(tmp_path, echo, requests=2)
    with Client(path) as client:
        assert client.call("leader", group="g") == {"group": "g"}
        assert client.call("ping") == {}
    thread.join(WAIT_S)
    assert seen == [
        {"id": 1, "op": "leader", "args": {"group": "g"}},
        {"id": 2, "op": "ping", "args": {}},
    ]


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (lambda r: encode_frame({"id": r["id"] + 1, "ok": True, "result": 1}), ProtocolError),
        (lambda r: encode_frame({"id": r["id"], "ok": "yes"}), ProtocolError),
        (lambda r: b"\x00\x00\x00\x02\xc1\xc1", ProtocolError),
        (lambda r: b"\x00\x00\x00\x00", ProtocolError),
        (lambda r: b"\x7f\xff\xff\xff", ProtocolError),
        (lambda r: b"\x00\x00\x00\x10abc", ConnectionLost),
        (lambda r: b"", ConnectionLost),
    ],
)
def test_bad_replies(tmp_path: object, reply: Callable[[dict], bytes], error: type) -> None:
    path, thread = scripted(tmp_path, reply)
    with Client(path) as client, pytest.raises(error):
        client.call("ping", timeout=WAIT_S)
    thread.join(WAIT_S)


# --------------------------------------------------------------------------
# Start-up cost


def test_client_imports_neither_trio_nor_rich() -> None:
    code = (
        "import sys, raftfleet_cli.client\n"
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('trio', 'rich', 'attrs'))\n"
        "print(','.join(bad))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=30
    )
    assert out.stdout.strip() == ""
