"""Hostile control requests: the validation tables fuzzed per op, then a real agent
fed thousands of bad requests while it must keep serving.

tests/control covers the server's limits with an in-process echo handler;
here the target is the `raftfleet-agent` process itself, with its real
handlers behind the validation.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from raftfleet_agent.control.protocol import (
    ERROR_CODES,
    OPS,
    REQUEST_BYTES_MAX,
    RequestError,
    parse_request,
    validate_args,
)
from tests.hostile.hostile_peer import vm_rss_kib
from tests.procs import AgentProc, agents, wait_for

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

hostile_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=300)
    | st.binary(max_size=40)
    | st.sampled_from(["", "a1", "g1", "counter", "x" * 129, "a\n", "__cluster__", "h:1"]),
    lambda inner: st.lists(inner, max_size=9) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
odd_keys = st.none() | st.integers(-3, 3) | st.binary(max_size=3) | st.text(max_size=50)


# -- the validation tables ----------------------------------------------------


@FUZZ
@given(st.data())
def test_every_op_rejects_hostile_args_with_a_request_error(data: st.DataObject) -> None:
    """For every op, its own field names with hostile values (and odd extra keys):
    a normalized dict or a RequestError naming the field, nothing else."""
    for op, spec in OPS.items():
        names = sorted(spec.field_names)
        args: dict[object, object] = {}
        if names:
            chosen = data.draw(st.lists(st.sampled_from(names), unique=True), label=f"{op} fields")
            for name in chosen:
                args[name] = data.draw(hostile_values, label=f"{op}.{name}")
        if data.draw(st.booleans(), label="extra key"):
            args[data.draw(odd_keys, label="key")] = data.draw(hostile_values, label="extra")
        try:
            out = validate_args(op, args, request_id=7)
        except RequestError as exc:
            assert exc.code in ERROR_CODES, exc
            assert exc.request_id == 7
            assert str(exc.details.get("field", "")).startswith("args."), exc
            assert len(exc.message) < 400, "an error message must not echo a huge value"
            continue
        assert set(out) == spec.field_names
        assert isinstance(out, dict)


@FUZZ
@given(
    hostile_values,
    st.sampled_from(sorted(OPS)) | st.text(max_size=60) | hostile_values,
    hostile_values,
)
def test_whole_frames_raise_only_request_errors(raw_id: object, op: object, args: object) -> None:
    for frame in (
        {"id": raw_id, "op": op, "args": args},
        {"id": 1, "op": op, "args": args},
        {"id": 1, "op": op},
        {"id": 1, "op": "command", "args": args, op: 1} if isinstance(op, str) else {"id": 1},
    ):
        try:
            request = parse_request(frame)
        except RequestError as exc:
            assert exc.code in ERROR_CODES
            assert exc.request_id is None or isinstance(exc.request_id, int)
            continue
        assert request.op in OPS and 0 <= request.id < 2**63


# -- a real agent under a stream of bad requests ------------------------------


def _frame(obj: object) -> bytes:
    body = msgpack.packb(obj, use_bin_type=True)
    return struct.pack(">I", len(body)) + body


class Raw:
    """A bare Unix socket to the agent: send anything, read replies frame by frame."""

    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.settimeout(5)
        deadline = time.monotonic() + 5
        while True:
            try:
                self.sock.connect(path)
                break
            except BlockingIOError:
                # The listen backlog is full (a Unix socket says EAGAIN rather
                # than waiting): the agent is busy accepting; retry shortly.
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.01)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _fill(self, n: int, deadline: float) -> bool:
        while len(self.buf) < n:
            self.sock.settimeout(max(0.01, deadline - time.monotonic()))
            try:
                chunk = self.sock.recv(65536)
            except (ConnectionResetError, BrokenPipeError):
                return False
            if not chunk:
                return False
            self.buf += chunk
        return True

    def reply(self, timeout: float = 5.0) -> dict | None:
        """The next reply frame, or None at EOF."""
        deadline = time.monotonic() + timeout
        if not self._fill(4, deadline):
            return None
        (n,) = struct.unpack(">I", self.buf[:4])
        assert 0 < n <= 16 * 1024 * 1024
        if not self._fill(4 + n, deadline):
            return None
        body, self.buf = self.buf[4 : 4 + n], self.buf[4 + n :]
        reply = msgpack.unpackb(body, raw=False, strict_map_key=False)
        assert isinstance(reply, dict)
        return reply

    def at_eof(self, timeout: float = 5.0) -> bool:
        """Drain replies until the agent hangs up; True if it did within `timeout`."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.reply(deadline - time.monotonic()) is None:
                    return True
            except TimeoutError:
                return False
        return False


@pytest.fixture(scope="module")
def agent(tmp_path_factory: pytest.TempPathFactory) -> Iterator[AgentProc]:
    with agents(tmp_path_factory.mktemp("fuzzctl"), 1, first_octet=121, in_memory=True) as (a1,):
        a1.call("group_create", name="g1", type="counter", agents=["a1"], timeout=20)
        yield a1


def _still_serving(a: AgentProc) -> None:
    assert a.alive, a.log()
    assert a.call("ping") == "pong"
    before = a.call("query", group="g1", arg="get")["reply"]  # type: ignore[index]
    assert a.call("command", group="g1", arg="inc")["reply"] == before  # type: ignore[index]


def _error(reply: dict | None, rid: int | None, code: str) -> dict:
    assert reply is not None, "the agent hung up instead of answering"
    assert reply.get("id") == rid and reply.get("ok") is False, reply
    assert reply["error"]["code"] == code, reply
    assert reply["error"]["message"]
    return reply["error"]


# Requests that are answered with an error and leave the connection open:
# (request, expected code, field named in details or None).
_ANSWERED: list[tuple[dict, str, str | None]] = [
    ({"id": 1, "op": "reboot"}, "unknown_op", None),
    ({"id": 2, "op": "x" * 5000}, "unknown_op", None),
    ({"id": 3, "op": "command", "args": {"group": 5, "arg": 1}}, "bad_request", "args.group"),
    ({"id": 4, "op": "command", "args": {"group": "g1"}}, "bad_request", "args.arg"),
    (
        {"id": 5, "op": "command", "args": {"group": "g1", "arg": 1, "timeout_s": -1}},
        "bad_request",
        "args.timeout_s",
    ),
    (
        {"id": 6, "op": "command", "args": {"group": "g1", "arg": 1, "retries": True}},
        "bad_request",
        "args.retries",
    ),
    (
        {"id": 7, "op": "command", "args": {"group": "g1", "arg": 1, "request_id": ["c", -1]}},
        "bad_request",
        "args.request_id",
    ),
    ({"id": 8, "op": "group_create", "args": {"name": "n" * 900_000}}, "invalid_name", "args.name"),
    (
        {"id": 9, "op": "group_create", "args": {"name": "ok", "type": "os:system"}},
        "invalid_type",
        None,
    ),
    (
        {"id": 10, "op": "group_create", "args": {"name": "ok", "agents": ["a1"] * 8}},
        "bad_request",
        "args.agents",
    ),
    ({"id": 11, "op": "join", "args": {"address": "h:99999"}}, "bad_request", "args.address"),
    ({"id": 12, "op": "ping", "args": {"junk": [[[[]]]]}}, "bad_request", "args.junk"),
    ({"id": 13, "op": "ping", "args": [1, 2]}, "bad_request", "args"),
    ({"id": 14, "op": 7}, "bad_request", "op"),
    ({"id": 15, "op": "ping", "extra": 1}, "bad_request", "extra"),
    (
        {"id": 16, "op": "group_recover", "args": {"name": "g1", "force": False}},
        "bad_request",
        "args.force",
    ),
    ({"id": 17, "op": "query", "args": {"group": "nope", "arg": "get"}}, "unknown_group", None),
    (
        {"id": 18, "op": "command", "args": {"group": "g1", "arg": ["set", "not an int"]}},
        "invalid_argument",
        None,
    ),
    (
        # Status and recovery may name the cluster-state group; nothing else may.
        {"id": 19, "op": "group_delete", "args": {"name": "__cluster__"}},
        "invalid_name",
        "args.name",
    ),
]

# Frames after which the agent answers with "id": null and hangs up.
_FATAL: list[tuple[bytes, str]] = [
    (b"\x00\x00\x00\x05hello", "garbage body"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "an HTTP request: length 0x47455420 > cap"),
    (b"\x00\x00\x00\x00", "zero-length frame"),
    (struct.pack(">I", REQUEST_BYTES_MAX + 1) + b"x" * 64, "over the 1 MiB cap"),
    (_frame(None), "not a map"),
    (_frame({"op": "ping"}), "no id"),
    (_frame({"id": -1, "op": "ping"}), "negative id"),
    (_frame({"id": 2**64 - 1, "op": "ping"}), "id too big"),
    (_frame({"id": True, "op": "ping"}), "boolean id"),
    (struct.pack(">I", 100_001) + b"\x91" * 100_000 + b"\xc0", "100k nested lists"),
    (struct.pack(">I", 3) + b"\x81\x90\xc0", "an array as map key"),
]


def test_bad_requests_get_error_codes_and_the_connection_stays(agent: AgentProc) -> None:
    raw = Raw(agent.sock)
    try:
        for request, code, field in _ANSWERED:
            raw.send(_frame(request))
            error = _error(raw.reply(), request["id"], code)
            if field is not None:
                assert error.get("details", {}).get("field") == field, error
            assert len(error["message"]) < 1000, "the agent echoed a huge value back"
        # Same connection, still good for real work.
        raw.send(_frame({"id": 100, "op": "ping"}))
        assert raw.reply() == {"id": 100, "ok": True, "result": "pong"}
    finally:
        raw.close()
    _still_serving(agent)


@pytest.mark.parametrize(("data", "why"), _FATAL, ids=[why for _, why in _FATAL])
def test_garbage_frames_get_a_null_id_error_and_a_close(
    agent: AgentProc, data: bytes, why: str
) -> None:
    raw = Raw(agent.sock)
    try:
        raw.send(data)
        error = _error(raw.reply(), None, "bad_request")
        assert why and error["message"]
        assert raw.at_eof(), "the agent kept a connection whose framing is lost"
    finally:
        raw.close()
    assert agent.call("ping") == "pong"


def test_two_thousand_bad_requests_do_not_grow_the_agent(agent: AgentProc) -> None:
    """2,000 bad requests (pipelined, and connection-killing garbage): the agent's RSS
    stays put and it keeps answering."""
    assert agent.proc is not None
    pid = agent.proc.pid
    answered_frames = [_frame(r) for r, _, _ in _ANSWERED if len(_frame(r)) < 100_000]
    big = _frame(_ANSWERED[7][0])  # the ~900 KB name: a big allocation per request

    def round_of_bad_requests(n: int) -> int:
        sent = 0
        # Pipelined: 20 bad requests per write, on one connection, then drain the answers.
        raw = Raw(agent.sock)
        try:
            while sent < n // 2:
                batch = [answered_frames[(sent + i) % len(answered_frames)] for i in range(20)]
                raw.send(b"".join(batch))
                for _ in batch:
                    reply = raw.reply()
                    assert reply is not None and reply["ok"] is False, reply
                sent += len(batch)
            for _ in range(5):
                raw.send(big)
                assert raw.reply()["error"]["code"] == "invalid_name"  # type: ignore[index]
                sent += 1
        finally:
            raw.close()
        # Connection-level garbage: a new connection each time.
        k = 0
        while sent < n:
            data, _ = _FATAL[k % len(_FATAL)]
            k += 1
            raw = Raw(agent.sock)
            try:
                raw.send(data)
                assert raw.reply() is not None
            finally:
                raw.close()
            sent += 1
        return sent

    round_of_bad_requests(300)  # warm-up: caches, allocator arenas
    rss_before = vm_rss_kib(pid)
    fds_before = len(os.listdir(f"/proc/{pid}/fd"))
    t0 = time.monotonic()
    assert round_of_bad_requests(2000) == 2000
    elapsed = time.monotonic() - t0
    rss_after = vm_rss_kib(pid)
    fds_after = wait_for(
        lambda: (n := len(os.listdir(f"/proc/{pid}/fd"))) <= fds_before + 2 and n,
        10,
        "the agent to close the garbage connections",
    )
    _still_serving(agent)
    growth_mib = (rss_after - rss_before) / 1024
    print(
        f"2000 bad requests in {elapsed:.1f} s; RSS {rss_before} -> {rss_after} KiB "
        f"({growth_mib:+.1f} MiB); fds {fds_before} -> {fds_after}"
    )
    assert growth_mib < 40, f"RSS grew by {growth_mib:.1f} MiB over 2000 bad requests"


def test_connection_cap_refuses_with_a_reason_and_recovers(agent: AgentProc) -> None:
    """140 connections holding half a frame each (the cap is 128): a new client is
    refused at once with `unavailable` (no hang), and served again once they go."""
    from raftfleet_cli.client import ConnectError, ControlError

    socks = []
    try:
        for _ in range(140):
            raw = Raw(agent.sock)
            raw.send(struct.pack(">I", 1000) + b"\x81")  # a frame that never completes
            socks.append(raw)
        t0 = time.monotonic()
        with pytest.raises((ControlError, ConnectError)) as info:
            agent.call("ping", timeout=5)
        if isinstance(info.value, ControlError):
            assert info.value.code == "unavailable", info.value
        else:  # the backlog is full while the agent turns the extra ones away
            assert "temporarily unavailable" in str(info.value), info.value
        assert time.monotonic() - t0 < 3
    finally:
        for raw in socks:
            raw.close()
    wait_for(lambda: agent.call("ping") == "pong", 10, "the agent to serve again")
    _still_serving(agent)
