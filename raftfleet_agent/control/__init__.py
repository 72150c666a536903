"""The control API: the agent's operator interface (Unix socket, optional TCP + token).

`protocol` (stdlib only) defines the messages, error codes and argument
checks; `server` (trio) serves them to a `ControlHandler` the agent provides.
The CLI imports this package for the protocol, so the trio side is loaded
lazily: `from raftfleet_agent.control import ControlServer` still works.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from raftfleet_agent.control.protocol import (
    ERROR_CODES,
    OPS,
    ControlError,
    Request,
    RequestError,
    Unauthorized,
)

if TYPE_CHECKING:
    from raftfleet_agent.control.server import (
        ControlHandler,
        ControlLimits,
        ControlServer,
        ControlSocketInUse,
        ControlStatistics,
        EventSink,
    )

__all__ = [
    "ERROR_CODES",
    "OPS",
    "ControlError",
    "ControlHandler",
    "ControlLimits",
    "ControlServer",
    "ControlSocketInUse",
    "ControlStatistics",
    "EventSink",
    "Request",
    "RequestError",
    "Unauthorized",
]

_SERVER_NAMES = frozenset(
    {
        "ControlHandler",
        "ControlLimits",
        "ControlServer",
        "ControlSocketInUse",
        "ControlStatistics",
        "EventSink",
    }
)


def __getattr__(name: str) -> object:
    # Lazy: importing the server imports trio, which the CLI must never do.
    if name in _SERVER_NAMES:
        from raftfleet_agent.control import server

        return getattr(server, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
