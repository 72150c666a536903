"""sd_notify against a fake systemd: a datagram socket bound in a temp dir."""

from __future__ import annotations

import functools
import logging
import os
import secrets
import socket

import pytest
import trio
import trio.testing

from raftfleet_agent import sdnotify


@pytest.fixture
def fake_systemd(tmp_path):
    """A bound SOCK_DGRAM socket and the environment that points at it."""
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(1.0)
    yield sock, {"NOTIFY_SOCKET": path}
    sock.close()


def received(sock) -> list[bytes]:
    out = []
    sock.setblocking(False)
    while True:
        try:
            out.append(sock.recv(4096))
        except BlockingIOError:
            return out


def test_without_notify_socket_nothing_happens():
    assert sdnotify.notify("READY=1", {}) is False
    assert sdnotify.ready({}) is False
    assert sdnotify.notify("READY=1", {"NOTIFY_SOCKET": ""}) is False


def test_helpers_send_their_states(fake_systemd):
    sock, environ = fake_systemd
    assert sdnotify.ready(environ)
    assert sdnotify.status("serving 12 groups", environ)
    assert sdnotify.watchdog(environ)
    assert sdnotify.stopping(environ)
    assert received(sock) == [
        b"READY=1",
        b"STATUS=serving 12 groups",
        b"WATCHDOG=1",
        b"STOPPING=1",
    ]


def test_status_cannot_smuggle_other_assignments(fake_systemd):
    sock, environ = fake_systemd
    sdnotify.status("ok\nREADY=1", environ)
    assert received(sock) == [b"STATUS=ok READY=1"]


def test_abstract_socket():
    name = f"raftfleet-test-{secrets.token_hex(8)}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(1.0)
        assert sdnotify.ready({"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1"


def test_send_errors_are_logged_not_raised(tmp_path, caplog):
    environ = {"NOTIFY_SOCKET": str(tmp_path / "nobody-listens")}
    with caplog.at_level(logging.WARNING, logger="raftfleet_agent.sdnotify"):
        assert sdnotify.ready(environ) is False
    assert "sending 'READY=1'" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="raftfleet_agent.sdnotify"):
        assert sdnotify.ready({"NOTIFY_SOCKET": "vsock:2:1234"}) is False
    assert "unsupported NOTIFY_SOCKET" in caplog.text


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "2000000"}, 1.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, 15.0),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}, None),  # meant for another process
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({"WATCHDOG_USEC": ""}, None),
    ],
)
def test_watchdog_interval(environ, expected):
    assert sdnotify.watchdog_interval_s(environ, pid=4242) == expected


def test_watchdog_pid_defaults_to_this_process():
    environ = {"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": str(os.getpid())}
    assert sdnotify.watchdog_interval_s(environ) == 0.5


async def test_serve_watchdog_pings_periodically(fake_systemd, autojump_clock):
    sock, environ = fake_systemd
    # Read in a trio task: the kernel queue of a datagram socket is short
    # (net.unix.max_dgram_qlen is often 10), so don't let pings pile up.
    reader = trio.socket.from_stdlib_socket(sock)
    pings: list[tuple[float, bytes]] = []

    async def collect():
        while True:
            data = await reader.recv(100)
            pings.append((trio.current_time(), data))

    start = trio.current_time()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(collect)
        await nursery.start(functools.partial(sdnotify.serve_watchdog, 2.5, environ=environ))
        await trio.sleep(25 + 0.1)
        nursery.cancel_scope.cancel()
    assert [data for _, data in pings] == [b"WATCHDOG=1"] * 11
    assert [round(t - start, 6) for t, _ in pings] == [2.5 * i for i in range(11)]


async def test_serve_watchdog_rejects_bad_interval():
    with pytest.raises(ValueError):
        await sdnotify.serve_watchdog(0)
