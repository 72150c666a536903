"""What a replicated data type is, and what applying it returns.

A data type is rafted_value's `RaftedValue.Data`: a class (or an object) with

    new() -> state
    command(state, arg) -> (reply, new_state)
    query(state, arg) -> reply
    snapshot(state) -> bytes        optional, default: msgpack of the state
    restore(data: bytes) -> state   optional, default: msgpack decode

Arguments and replies are msgpack values (None, bool, int, float, str, bytes,
list, dict). Every replica runs the same commands in the same order, so the
methods must be pure and deterministic: no clocks, no randomness, no I/O, no
iteration over unordered containers whose order could differ between
processes (a `set` of str is salted per process).

The ownership contract (why it exists: the applier cannot undo a command):

- The applier owns the state. It hands the state to `command` and keeps
  whatever comes back as the new state; it never copies it.
- A command that raises must not have changed the state it was given. The
  applier then keeps the old state and answers with an error reply. Either
  build a new state (functional style), or validate everything first and
  mutate in place only when nothing can raise any more (what the built-ins
  do; copying a large dict per command would be O(n)).
- Bad input from a client is an error reply, never a crash: raise
  `InvalidArgument` (or ValueError / TypeError / KeyError) for it.
- `query` must not change the state.
"""

from __future__ import annotations

from typing import Any, Final, Protocol, runtime_checkable

import attrs

# Machine-readable error codes of an ApplyResult. Clients match on these.
INVALID_ARGUMENT: Final = "invalid_argument"  # the argument or envelope is wrong
DATA_TYPE_ERROR: Final = "data_type_error"  # user code failed in another way
REQUEST_EXPIRED: Final = "request_expired"  # a retry too old to answer exactly once

ERROR_CODES: Final = frozenset({INVALID_ARGUMENT, DATA_TYPE_ERROR, REQUEST_EXPIRED})

# Bounds what an error reply can add to the (snapshotted) result cache.
ERROR_MESSAGE_CHARS_MAX: Final = 500


class InvalidArgument(Exception):
    """Raised by a data type for a command or query it does not accept."""


class DataTypeError(Exception):
    """A data type could not be loaded or does not follow the protocol."""


class SnapshotError(Exception):
    """Snapshot bytes that cannot be restored (malformed, or of another type)."""


class ApplyOrderError(RuntimeError):
    """The host handed the applier an entry out of log order (a local bug)."""


@runtime_checkable
class DataType(Protocol):
    """The protocol user types follow (snapshot/restore are optional)."""

    def new(self) -> Any: ...

    def command(self, state: Any, arg: Any) -> tuple[Any, Any]: ...

    def query(self, state: Any, arg: Any) -> Any: ...


@attrs.frozen(slots=True)
class ApplyResult:
    """The outcome of one command or query: a reply, or an error code and message.

    Frozen because the same instance is cached and handed to every retry of
    a request.
    """

    ok: bool
    reply: Any = None
    error: str | None = None  # one of ERROR_CODES when not ok
    message: str = ""

    @classmethod
    def success(cls, reply: Any) -> ApplyResult:
        return cls(True, reply)

    @classmethod
    def failure(cls, error: str, message: str) -> ApplyResult:
        if len(message) > ERROR_MESSAGE_CHARS_MAX:
            message = message[: ERROR_MESSAGE_CHARS_MAX - 3] + "..."
        return cls(False, None, error, message)
