"""Exit codes, and one clear line on stderr for every way a command can fail.

    0    ok
    1    the operation failed (the agent refused or could not do it)
    2    usage error (bad option or argument; nothing was sent)
    3    the agent is unreachable, or refused our credentials
    4    timed out while waiting; the operation may continue on the agent
    130  interrupted (Ctrl-C) while watching; the watched operation continues

Messages name the thing and the fix, e.g.

    raftfleet: cannot reach agent at unix:///run/raftfleet/agent.sock: no such
    file (is raftfleet-agent running? set --addr or RAFTFLEET_ADDR)

Importing this module must stay cheap: the client's exception classes are
looked up only when an error is being described.
"""

from __future__ import annotations

from typing import IO

import click

OK = 0
FAILED = 1
USAGE = 2
UNREACHABLE = 3
TIMED_OUT = 4
INTERRUPTED = 130

# What to try next, by the agent's error code (protocol.ERROR_CODES).
_HINTS = {
    "unknown_group": "list the groups with `raftfleet group list`",
    "already_exists": "choose another name, or delete the group first",
    "no_active_agent": "activate an agent first: `raftfleet activate ZONE`",
    "cleanup_ongoing": "retry in a moment",
    "no_leader": "retry in a moment; `raftfleet group status NAME` shows the members",
    "not_active": "activate the agent first: `raftfleet activate ZONE`",
    "not_inactive": "drain the agent first: `raftfleet drain`",
    "too_few_agents": "activate another agent first (`raftfleet activate ZONE` on it), or "
    "pass --force to let those groups shrink",
    "unavailable": "retry in a moment; the agent log says more",
    "internal": "this is a bug in the agent; its log has the details",
    "invalid_type": "name a built-in type (counter, kv) or an importable pkg.mod:Class",
}


class Failure(click.ClickException):
    """A failed command: `show()` prints `raftfleet: MESSAGE`; exits `exit_code`."""

    def __init__(self, message: str, exit_code: int = FAILED) -> None:
        super().__init__(message)
        self.exit_code = exit_code

    def show(self, file: IO[str] | None = None) -> None:
        click.echo(f"raftfleet: {self.format_message()}", err=True, file=file)


def describe(exc: BaseException, what: str, addr: object) -> Failure | None:
    """The Failure for a client or agent error met while doing `what`; None if not ours.

    `what` names the operation for the message ("group delete g1").
    """
    from raftfleet_cli import client as c

    continues = "the operation may still complete on the agent"
    if isinstance(exc, c.Unauthorized):
        return Failure(str(exc.message), UNREACHABLE)
    if isinstance(exc, c.ControlError):
        return _agent_error(exc, what, addr, continues)
    if isinstance(exc, c.ConnectError):
        return Failure(str(exc), UNREACHABLE)
    if isinstance(exc, c.CallTimeout):
        message = f"{what}: no answer from the agent at {addr} in time; {continues}"
        return Failure(message, TIMED_OUT)
    if isinstance(exc, c.ConnectionLost):
        message = f"{what}: {exc} (the outcome is unknown; check before retrying)"
        return Failure(message, UNREACHABLE)
    if isinstance(exc, c.ProtocolError):
        return Failure(f"{what}: {exc} (is that address really a raftfleet agent?)")
    if isinstance(exc, c.ClientError):
        return Failure(f"{what}: {exc}")
    return None


def _agent_error(exc: BaseException, what: str, addr: object, continues: str) -> Failure:
    code = getattr(exc, "code", "")
    message = getattr(exc, "message", str(exc))
    if code == "timeout":
        return Failure(f"{what}: timed out: {message}; {continues}", TIMED_OUT)
    if code == "unknown_op":
        op = what.split(" ", 1)[0]
        return Failure(
            f"{what}: the agent at {addr} does not support this yet ({message}); "
            f"upgrade raftfleet-agent to use `raftfleet {op}`"
        )
    hint = _HINTS.get(code)
    return Failure(f"{what}: {message} [{code}]" + (f" ({hint})" if hint else ""))
