"""systemd's readiness and watchdog protocol, without libsystemd.

The protocol (sd_notify(3)): send one datagram of newline-separated
`KEY=value` assignments to the AF_UNIX SOCK_DGRAM socket named by
$NOTIFY_SOCKET; a name starting with '@' is in the abstract namespace. The
agent sends READY=1 after its last `serve_*` task has started, STOPPING=1
when it begins to shut down, STATUS=... for `systemctl status`, and
WATCHDOG=1 periodically when the unit sets WatchdogSec=.

Outside systemd (no $NOTIFY_SOCKET) every call is a no-op returning False.
A failed send is logged and reported as False, never raised: a daemon must
not die because its supervisor's socket hiccuped.
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Mapping

import trio

log = logging.getLogger(__name__)

# A send blocks only while systemd's receive queue is full; bound it so a
# wedged supervisor cannot stall the trio loop for long.
SEND_TIMEOUT_S = 1.0


def _address(name: str) -> str | None:
    if name.startswith("@"):
        # Abstract namespace: a leading NUL instead of '@', no file on disk.
        return "\0" + name[1:]
    if name.startswith("/"):
        return name
    return None  # e.g. systemd's "vsock:" addresses, which we do not speak


def notify(state: str, environ: Mapping[str, str] = os.environ) -> bool:
    """Send `state` (e.g. "READY=1") to $NOTIFY_SOCKET. True if it was sent."""
    name = environ.get("NOTIFY_SOCKET")
    if not name:
        return False
    address = _address(name)
    if address is None:
        log.warning("sd_notify: unsupported NOTIFY_SOCKET address %r", name)
        return False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.settimeout(SEND_TIMEOUT_S)
            sock.sendto(state.encode(), address)
    except OSError as exc:
        log.warning("sd_notify: sending %r to %r failed: %s", state, name, exc)
        return False
    return True


def ready(environ: Mapping[str, str] = os.environ) -> bool:
    """Startup is complete: every listener is bound and serving."""
    return notify("READY=1", environ)


def stopping(environ: Mapping[str, str] = os.environ) -> bool:
    """Shutdown has begun (systemd then waits up to TimeoutStopSec=)."""
    return notify("STOPPING=1", environ)


def watchdog(environ: Mapping[str, str] = os.environ) -> bool:
    """Keep-alive ping for WatchdogSec=."""
    return notify("WATCHDOG=1", environ)


def status(text: str, environ: Mapping[str, str] = os.environ) -> bool:
    """A one-line status shown by `systemctl status`."""
    # A newline would start a new assignment, letting the text set other keys.
    one_line = " ".join(text.splitlines())
    return notify(f"STATUS={one_line}", environ)


def watchdog_interval_s(
    environ: Mapping[str, str] = os.environ, pid: int | None = None
) -> float | None:
    """How often to send WATCHDOG=1, or None when no watchdog is expected.

    Half of $WATCHDOG_USEC, as sd_watchdog_enabled(3) advises, so one late
    ping does not get the agent killed. $WATCHDOG_PID, if set, names the
    process the watchdog is meant for; any other process (a child that
    inherited the environment) must not ping.
    """
    usec_text = environ.get("WATCHDOG_USEC")
    if not usec_text:
        return None
    watchdog_pid = environ.get("WATCHDOG_PID")
    if watchdog_pid:
        own = os.getpid() if pid is None else pid
        if watchdog_pid.strip() != str(own):
            return None
    try:
        usec = int(usec_text, 10)
    except ValueError:
        log.warning("sd_notify: ignoring malformed WATCHDOG_USEC=%r", usec_text)
        return None
    if usec <= 0:
        return None
    return usec / 1e6 / 2


async def serve_watchdog(
    interval_s: float,
    *,
    environ: Mapping[str, str] = os.environ,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Send WATCHDOG=1 now and then every `interval_s` seconds, until cancelled.

    Start it with `await nursery.start(serve_watchdog, interval)`. It never
    returns; cancellation just stops the pings (systemd then kills the agent
    after WatchdogSec= unless it has already sent STOPPING=1 and exited).
    The pings come from the trio loop on purpose: a wedged loop stops them,
    which is exactly what the watchdog is for.
    """
    if not interval_s > 0:
        raise ValueError(f"interval_s must be positive, got {interval_s!r}")
    task_status.started()
    while True:
        watchdog(environ)
        await trio.sleep(interval_s)
