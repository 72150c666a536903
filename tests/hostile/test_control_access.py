"""Who may use a real agent's control API: the Unix socket's permissions and
SO_PEERCRED check, and the TCP listener's bearer token.

tests/control checks the same policies on an in-process server; these run
the `raftfleet-agent` process as it is started in production (flags, token
file, socket created by the agent itself).
"""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import msgpack
import pytest

from raftfleet_cli.client import Client, Unauthorized, parse_addr
from tests.procs import AgentProc, free_port, wait_for

pytestmark = pytest.mark.slow

TOKEN = b"control-token-for-tests-0123456789"
HOST = "127.0.0.151"


@pytest.fixture(scope="module")
def agent() -> Iterator[AgentProc]:
    # pytest's tmp dirs are 0700: nobody could not even reach the socket there, and
    # the test is about the socket's own mode and the agent's credential check.
    base = Path(tempfile.mkdtemp(prefix="rf-access-"))
    os.chmod(base, 0o711)
    token_file = base / "control.token"
    token_file.write_bytes(TOKEN + b"\n")  # a final newline, as editors write it
    os.chmod(token_file, 0o600)
    port = free_port(HOST)
    a = AgentProc(
        "a1",
        HOST,
        base,
        in_memory=True,
        extra_args=["--control-listen", f"{HOST}:{port}", "--control-token-file", str(token_file)],
    )
    a.control_port = port  # type: ignore[attr-defined]
    os.chmod(a.dir, 0o711)
    try:
        a.start()
        a.call("group_create", name="g1", type="counter", agents=["a1"], timeout=20)
        yield a
    finally:
        a.stop(timeout=10)
        shutil.rmtree(base, ignore_errors=True)


# -- the Unix socket --------------------------------------------------------------

_AS_NOBODY = r"""
import os, sys
from raftfleet_cli.client import Client, parse_addr  # before: nobody cannot read the venv
os.setgroups([]); os.setgid(65534); os.setuid(65534)
assert os.getuid() == 65534 and os.geteuid() == 65534
try:
    with Client(parse_addr("unix://" + sys.argv[1]), connect_timeout=3) as c:
        print("ok", c.call("command", group="g1", arg="inc", timeout=5))
except Exception as e:
    print(type(e).__name__, getattr(e, "code", "-"), e)
"""


def _as_nobody(path: str) -> str:
    out = subprocess.run(
        [sys.executable, "-c", _AS_NOBODY, path],
        capture_output=True,
        text=True,
        timeout=30,
        cwd=os.getcwd(),
        check=False,
        env={**os.environ, "PYTHONPATH": os.getcwd()},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
def test_unix_socket_refuses_other_users(agent: AgentProc) -> None:
    path = agent.sock
    assert os.stat(path).st_mode & 0o777 == 0o660
    before = agent.call("query", group="g1", arg="get")["reply"]  # type: ignore[index]
    # 0660, group root: the kernel refuses nobody at connect().
    assert _as_nobody(path).startswith("ConnectError - cannot reach agent"), _as_nobody(path)
    assert "permission denied" in _as_nobody(path)
    # Loosened by mistake: SO_PEERCRED still refuses, with a reason, before any op runs.
    os.chmod(path, 0o666)
    try:
        out = _as_nobody(path)
        assert out.startswith("Unauthorized unauthorized unauthorized: uid 65534 is not root"), out
    finally:
        os.chmod(path, 0o660)
    # Nothing ran: the counter did not move.
    assert agent.call("query", group="g1", arg="get")["reply"] == before  # type: ignore[index]
    # The operators' group: chgrp the socket to nobody's group and it is allowed.
    os.chown(path, 0, 65534)
    try:
        assert _as_nobody(path) == f"ok {{'group': 'g1', 'reply': {before}, 'leader': 'a1'}}"
    finally:
        os.chown(path, 0, 0)
    assert agent.call("ping") == "pong"


# -- the TCP listener ---------------------------------------------------------------


def _frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


def _exchange(port: int, frames: list[bytes], timeout: float = 5.0) -> list[dict]:
    """Send frames on a new TCP connection; every reply until the agent hangs up."""
    with socket.create_connection((HOST, port), timeout=timeout) as s:
        s.sendall(b"".join(frames))
        data = b""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                chunk = s.recv(65536)
            except (ConnectionResetError, TimeoutError):
                break
            if not chunk:
                break
            data += chunk
    replies = []
    while len(data) >= 4:
        (n,) = struct.unpack(">I", data[:4])
        replies.append(msgpack.unpackb(data[4 : 4 + n], raw=False))
        data = data[4 + n :]
    return replies


def _unauthorized_and_closed(replies: list[dict], rid: int | None) -> None:
    assert len(replies) == 1, replies  # one error, then the agent hung up
    (reply,) = replies
    assert reply["ok"] is False and reply["id"] == rid
    assert reply["error"]["code"] == "unauthorized", reply


def _count(agent: AgentProc) -> int:
    return agent.call("query", group="g1", arg="get")["reply"]  # type: ignore[index,return-value]


def test_tcp_refuses_a_missing_token(agent: AgentProc) -> None:
    port = agent.control_port  # type: ignore[attr-defined]
    before = _count(agent)
    # Straight to work, twice: the first gets "unauthorized", and nothing runs.
    replies = _exchange(
        port,
        [
            _frame({"id": 1, "op": "command", "args": {"group": "g1", "arg": "inc"}}),
            _frame({"id": 2, "op": "ping"}),
        ],
    )
    _unauthorized_and_closed(replies, 1)
    # Unknown ops are not revealed to strangers either.
    _unauthorized_and_closed(_exchange(port, [_frame({"id": 3, "op": "reboot"})]), 3)
    # The client refuses to connect without a token before sending anything.
    with pytest.raises(Unauthorized):
        Client(parse_addr(f"tcp://{HOST}:{port}")).call("ping")
    assert _count(agent) == before  # nothing ran


@pytest.mark.parametrize(
    "token",
    [b"wrong", TOKEN + b"\n", TOKEN[:-1], TOKEN + b"x", b"x" * 4096, TOKEN.decode().upper()],
    ids=["wrong", "with-newline", "prefix", "longer", "4096-bytes", "case"],
)
def test_tcp_refuses_a_wrong_token(agent: AgentProc, token: bytes | str) -> None:
    port = agent.control_port  # type: ignore[attr-defined]
    before = _count(agent)
    replies = _exchange(
        port,
        [
            _frame({"id": 9, "op": "auth", "args": {"token": token}}),
            _frame({"id": 10, "op": "command", "args": {"group": "g1", "arg": "inc"}}),
        ],
    )
    _unauthorized_and_closed(replies, 9)
    with pytest.raises(Unauthorized), Client(parse_addr(f"tcp://{HOST}:{port}"), token) as c:
        c.call("ping")
    assert _count(agent) == before  # nothing ran


def test_tcp_refuses_malformed_auth(agent: AgentProc) -> None:
    port = agent.control_port  # type: ignore[attr-defined]
    for args in (
        {},
        {"token": 5},
        {"token": b""},
        {"token": b"x" * 5000},
        {"token": TOKEN, "extra": 1},
    ):
        replies = _exchange(port, [_frame({"id": 4, "op": "auth", "args": args})])
        assert len(replies) == 1 and replies[0]["ok"] is False, (args, replies)
        assert replies[0]["error"]["code"] in ("bad_request", "unauthorized"), replies
    # Garbage instead of a frame: an error with a null id and a close.
    replies = _exchange(port, [b"\x00\x00\x00\x02\xc1\xc1"])
    assert len(replies) == 1 and replies[0]["id"] is None
    assert agent.call("ping") == "pong"


def test_tcp_accepts_the_right_token(agent: AgentProc) -> None:
    port = agent.control_port  # type: ignore[attr-defined]
    before = agent.call("query", group="g1", arg="get")["reply"]  # type: ignore[index]
    with Client(parse_addr(f"tcp://{HOST}:{port}"), TOKEN) as c:
        assert c.call("ping") == "pong"
        assert c.call("command", group="g1", arg="inc")["reply"] == before  # type: ignore[index]
    # Raw: auth as a string works too, then requests on the same connection.
    replies = _exchange(
        port,
        [
            _frame({"id": 1, "op": "auth", "args": {"token": TOKEN.decode()}}),
            _frame({"id": 2, "op": "ping"}),
        ],
        timeout=1.5,
    )
    assert replies[:2] == [
        {"id": 1, "ok": True, "result": {"auth": "token"}},
        {"id": 2, "ok": True, "result": "pong"},
    ]
    wait_for(
        lambda: agent.call("query", group="g1", arg="get")["reply"] == before + 1,
        5,
        "the authenticated command to be applied",
    )
