"""Default locations of the agent's files, shared by the agent and the CLI.

This module imports only the standard library: the CLI imports it to find
the agent's control socket, and the CLI must start fast and never import
trio (shell completion runs it on every Tab).

Theory of operation. Under systemd the unit declares `StateDirectory=raftfleet`
and `RuntimeDirectory=raftfleet`; systemd creates those directories with the
right owner and passes them in $STATE_DIRECTORY / $RUNTIME_DIRECTORY (a
colon-separated list when the unit names several; ours is the first). Outside
systemd, root gets the FHS locations and everyone else the XDG ones, so a
developer can run an agent without privileges.

Every function takes `environ` and `euid` so tests (and the CLI, which may
want to look for a system agent while running as a user) can ask "what would
the default be for that process?".
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping

DEFAULT_CONFIG_FILE = "/etc/raftfleet/agent.toml"
SYSTEM_DATA_DIR = "/var/lib/raftfleet"
SYSTEM_RUNTIME_DIR = "/run/raftfleet"
CONTROL_SOCKET_NAME = "agent.sock"
APP_DIR_NAME = "raftfleet"


def _euid(euid: int | None) -> int:
    # os.geteuid is POSIX-only; the agent is Linux-only, but keep the CLI
    # importable elsewhere (e.g. for `--help` on a laptop).
    if euid is not None:
        return euid
    geteuid = getattr(os, "geteuid", None)
    return geteuid() if geteuid is not None else -1


def _first_dir(value: str | None) -> str | None:
    """The first entry of a systemd directory list ("a:b:c"), or None."""
    if not value:
        return None
    first = value.split(":", 1)[0]
    return first or None


def _xdg_dir(environ: Mapping[str, str], name: str) -> str | None:
    # The XDG spec says relative values are invalid and must be ignored.
    value = environ.get(name)
    if value and os.path.isabs(value):
        return value
    return None


def _home(environ: Mapping[str, str]) -> str:
    return environ.get("HOME") or os.path.expanduser("~")


def default_data_dir(environ: Mapping[str, str] = os.environ, euid: int | None = None) -> str:
    """Where the agent keeps its identity and log store when --data-dir is not given."""
    state = _first_dir(environ.get("STATE_DIRECTORY"))
    if state:
        return state
    if _euid(euid) == 0:
        return SYSTEM_DATA_DIR
    xdg = _xdg_dir(environ, "XDG_DATA_HOME")
    if xdg:
        return os.path.join(xdg, APP_DIR_NAME)
    return os.path.join(_home(environ), ".local", "share", APP_DIR_NAME)


def default_control_socket(environ: Mapping[str, str] = os.environ, euid: int | None = None) -> str:
    """The control socket path an agent started by this process would use.

    The CLI calls this too, so an agent and a CLI run by the same user in the
    same environment meet without any flag.
    """
    runtime = _first_dir(environ.get("RUNTIME_DIRECTORY"))
    if runtime:
        return os.path.join(runtime, CONTROL_SOCKET_NAME)
    uid = _euid(euid)
    if uid == 0:
        return os.path.join(SYSTEM_RUNTIME_DIR, CONTROL_SOCKET_NAME)
    xdg = _xdg_dir(environ, "XDG_RUNTIME_DIR")
    if xdg:
        return os.path.join(xdg, APP_DIR_NAME, CONTROL_SOCKET_NAME)
    # /tmp is shared: the agent must create this directory 0700 and check it
    # is its own before binding (someone else may have made it first).
    return os.path.join("/tmp", f"{APP_DIR_NAME}-{uid}", CONTROL_SOCKET_NAME)


def control_socket_candidates(
    environ: Mapping[str, str] = os.environ, euid: int | None = None
) -> list[str]:
    """Where a CLI should look for an agent, most specific first.

    A member of the `raftfleet` group running the CLI as themselves wants the
    system agent at /run/raftfleet/agent.sock, not one in their own
    $XDG_RUNTIME_DIR; so the system path is always a candidate, after the
    per-user default.
    """
    candidates = [default_control_socket(environ, euid)]
    system = os.path.join(SYSTEM_RUNTIME_DIR, CONTROL_SOCKET_NAME)
    if system not in candidates:
        candidates.append(system)
    return candidates


def find_control_socket(environ: Mapping[str, str] = os.environ, euid: int | None = None) -> str:
    """The first candidate socket that exists, else the per-user default."""
    candidates = control_socket_candidates(environ, euid)
    for path in candidates:
        if os.path.exists(path):
            return path
    return candidates[0]


def default_name(hostname: str | None = None) -> str:
    """The agent name when --name is not given: the short host name."""
    name = hostname if hostname is not None else socket.gethostname()
    return name.split(".", 1)[0]
