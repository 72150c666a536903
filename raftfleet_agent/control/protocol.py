"""The control protocol: message shapes, error codes and request validation.

This module imports only the standard library: the `raftfleet` CLI imports it
(and must start fast, without trio), and the agent's control server uses the
same tables, so both sides agree on every name and bound. It does no I/O.

Wire format
-----------
Every message is one frame: a 4-byte big-endian body length, then one msgpack
map (the peer transport's framing, `raftfleet_agent.transport.framing`).
Requests are capped at `REQUEST_BYTES_MAX` (1 MiB), responses and events at
`RESPONSE_BYTES_MAX` (16 MiB); on TCP, until the auth request succeeds, at
`AUTH_REQUEST_BYTES_MAX` (4 KiB and a little).

Request (client -> agent)::

    {"id": int, "op": str, "args": map}

`id` is chosen by the client (0 <= id <= 2**63-1; the sync client counts up
from 1) and echoed in everything the agent sends about that request. `args`
may be omitted when empty. A client may pipeline requests: several can be in
flight on one connection, and they are answered in any order.

Final response (agent -> client), exactly one per request::

    {"id": int, "ok": true,  "result": any}
    {"id": int, "ok": false, "error": {"code": str, "message": str, "details": map}}

`details` is optional. Streaming ops (`OpSpec.streaming`: drain_watch,
subscribe) send zero or more event frames before their final response::

    {"id": int, "event": map}

A connection-level failure that cannot be tied to a request (a frame that is
not msgpack or has no usable id, a refused peer, too many connections) is
sent as an error response with `"id": null`, and the agent then closes the
connection.

Authentication. On the Unix socket the kernel tells the agent who the peer is
(SO_PEERCRED); nothing is sent. On TCP the first request must be::

    {"id": int, "op": "auth", "args": {"token": bin | str}}

answered `{"ok": true, "result": {"auth": "token"}}`. Until then any other
request, a wrong token or a late one gets `unauthorized` and the connection
is closed. The token is sent once per connection rather than in every
request, so it is not repeated in every frame and a pipelining client need
not keep it around. `auth` on a Unix socket is accepted and does nothing.

Error codes (`ERROR_CODES`) are stable, machine-readable strings; scripts may
match on them. `ERROR_DESCRIPTIONS` says what each means. Argument problems
are `bad_request` (wrong type, missing, out of bounds, unknown field) with
`details["field"]` naming the field, except that a syntactically invalid
group/agent/zone name is `invalid_name` and an invalid data type name
`invalid_type`, so scripts can tell "fix your spelling" from "fix your code".
"""

from __future__ import annotations

import math
import re
import types
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

__all__ = [
    "AUTH_REQUEST_BYTES_MAX",
    "ERROR_CODES",
    "ERROR_DESCRIPTIONS",
    "ID_MAX",
    "OPS",
    "REQUEST_BYTES_MAX",
    "RESERVED_GROUP_NAMES",
    "RESPONSE_BYTES_MAX",
    "ControlError",
    "Event",
    "Failure",
    "Field",
    "OpSpec",
    "Request",
    "RequestError",
    "Result",
    "Unauthorized",
    "error_response",
    "event_message",
    "ok_response",
    "parse_envelope",
    "parse_reply",
    "parse_request",
    "validate_args",
]

REQUEST_BYTES_MAX: Final = 1024 * 1024
# Same as the peer transport's FRAME_BYTES_MAX; repeated here (and checked by a
# test) because importing the transport package would import trio.
RESPONSE_BYTES_MAX: Final = 16 * 1024 * 1024
ID_MAX: Final = 2**63 - 1
TOKEN_CHARS_MAX: Final = 4096
# Before a TCP client has authenticated, its frames may hold an auth request
# and no more: a stranger must not make the agent decode a megabyte of
# msgpack (nested empty arrays decode to ~60 bytes of objects per byte).
AUTH_REQUEST_BYTES_MAX: Final = TOKEN_CHARS_MAX + 256

# --------------------------------------------------------------------------
# Error codes

BAD_REQUEST: Final = "bad_request"
UNKNOWN_OP: Final = "unknown_op"
UNAUTHORIZED: Final = "unauthorized"
NOT_FOUND: Final = "not_found"
UNKNOWN_GROUP: Final = "unknown_group"
ALREADY_EXISTS: Final = "already_exists"
NO_ACTIVE_AGENT: Final = "no_active_agent"
CLEANUP_ONGOING: Final = "cleanup_ongoing"
INVALID_NAME: Final = "invalid_name"
INVALID_TYPE: Final = "invalid_type"
NO_LEADER: Final = "no_leader"
NOT_LEADER: Final = "not_leader"
TIMEOUT: Final = "timeout"
INVALID_ARGUMENT: Final = "invalid_argument"
DATA_TYPE_ERROR: Final = "data_type_error"
REQUEST_EXPIRED: Final = "request_expired"
NOT_ACTIVE: Final = "not_active"
NOT_INACTIVE: Final = "not_inactive"
TOO_FEW_AGENTS: Final = "too_few_agents"
UNAVAILABLE: Final = "unavailable"
INTERNAL: Final = "internal"

ERROR_DESCRIPTIONS: Final[Mapping[str, str]] = types.MappingProxyType(
    {
        BAD_REQUEST: "the request is malformed: a field is missing, of the wrong type or "
        "out of bounds (details.field names it)",
        UNKNOWN_OP: "the agent does not know this op (an older agent?)",
        UNAUTHORIZED: "the peer is not allowed: wrong or missing token, or a Unix user "
        "outside the socket's group",
        NOT_FOUND: "the named object (agent, subscription topic) does not exist",
        UNKNOWN_GROUP: "no consensus group has this name",
        ALREADY_EXISTS: "a group with this name already exists",
        NO_ACTIVE_AGENT: "no agent is active, so there is nowhere to place replicas",
        CLEANUP_ONGOING: "a group of this name was deleted and its replicas are still "
        "being removed; retry later",
        INVALID_NAME: "a group, agent or zone name does not follow the naming rule",
        INVALID_TYPE: "the data type name is invalid or cannot be loaded",
        NO_LEADER: "the group has no leader right now (election, or lost majority)",
        NOT_LEADER: "the replica asked is not the leader (details.leader is a hint)",
        TIMEOUT: "the operation did not finish in time; it may still take effect",
        INVALID_ARGUMENT: "the arguments are well-formed but not acceptable in the current state",
        DATA_TYPE_ERROR: "the data type raised an error on this command or query",
        REQUEST_EXPIRED: "the request id is older than the group's deduplication "
        "window, so the command cannot be safely applied",
        NOT_ACTIVE: "the agent must be active for this op",
        NOT_INACTIVE: "the agent must be inactive for this op",
        TOO_FEW_AGENTS: "deactivating (or forgetting) the agent would leave fewer active "
        "agents than a group's replicas, so groups would shrink (force to accept that)",
        UNAVAILABLE: "the agent cannot serve this now (starting, stopping, overloaded)",
        INTERNAL: "a bug in the agent; the agent log has the details",
    }
)
ERROR_CODES: Final[frozenset[str]] = frozenset(ERROR_DESCRIPTIONS)


class ControlError(Exception):
    """An error answer of the control protocol, raised on both sides.

    In the agent, handlers raise it to send an error response; in the client,
    `call` raises it when the agent answered with an error. `code` is one of
    `ERROR_CODES` (a client may also see codes added by a newer agent).
    """

    def __init__(
        self, code: str, message: str, details: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(code, message)
        self.code = code
        self.message = message
        self.details: dict[str, object] = dict(details) if details else {}

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.code!r}, {self.message!r}, {self.details!r})"

    def to_wire(self) -> dict[str, object]:
        """The `error` map of an error response."""
        wire: dict[str, object] = {"code": self.code, "message": self.message}
        if self.details:
            wire["details"] = self.details
        return wire

    @staticmethod
    def from_wire(obj: object) -> ControlError:
        """Rebuild the exception from an `error` map; raise ValueError if malformed."""
        if not isinstance(obj, dict):
            raise ValueError("error is not a map")
        code, message = obj.get("code"), obj.get("message")
        details = obj.get("details", {})
        if not isinstance(code, str) or not code or not isinstance(message, str):
            raise ValueError("error needs a string code and message")
        if not isinstance(details, dict):
            raise ValueError("error details is not a map")
        if code == UNAUTHORIZED:
            return Unauthorized(message, details)
        return ControlError(code, message, details)


class Unauthorized(ControlError):
    """The agent refused us: wrong or missing token, or a Unix user it does not allow."""

    def __init__(
        self, message: str = "not authorized", details: Mapping[str, object] | None = None
    ) -> None:
        super().__init__(UNAUTHORIZED, message, details)


class RequestError(ControlError):
    """A request was rejected before reaching a handler.

    `request_id` is the id recovered from the frame, or None when none could
    be: the server then answers with `"id": null` and closes the connection,
    because it cannot tell the client which request failed.
    """

    def __init__(
        self,
        code: str,
        message: str,
        details: Mapping[str, object] | None = None,
        *,
        request_id: int | None = None,
    ) -> None:
        super().__init__(code, message, details)
        self.request_id = request_id


# --------------------------------------------------------------------------
# Value checks: each takes a decoded value and returns the normalized value,
# or raises _Invalid saying what is wrong (the caller adds the field name).


class _Invalid(Exception):
    def __init__(self, problem: str, code: str = BAD_REQUEST, *, field: str | None = None) -> None:
        super().__init__(problem)
        self.problem = problem
        self.code = code
        self.field = field  # set by cross-field rules, which know which field to blame


_TYPE_NAMES = {
    bool: "boolean",
    int: "integer",
    float: "float",
    str: "string",
    bytes: "binary",
    list: "array",
    tuple: "array",
    dict: "map",
    type(None): "nil",
}


def _got(value: object) -> str:
    """Describe a bad value briefly: its type, and a short repr for scalars."""
    kind = _TYPE_NAMES.get(type(value), type(value).__name__)
    if isinstance(value, list | tuple | dict | bytes) or value is None:
        return kind
    text = repr(value)
    return f"{kind} {text if len(text) <= 40 else text[:37] + '...'}"


Check = Callable[[object], object]

# Group names: raft_fleet allows any atom; we need names that are safe in
# logs, file names and shell arguments. `__cluster__` (the cluster state
# group) cannot match since it starts with '_', and is also listed.
GROUP_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
RESERVED_GROUP_NAMES: Final = frozenset({"__cluster__"})
# The agent and zone naming rule of raftfleet_agent.config (`_NAME_RE`);
# repeated because config imports attrs and tomllib (a test keeps them equal).
AGENT_NAME_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
# A data type: a built-in name ("counter") or "package.module:Class".
_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
TYPE_NAME_RE: Final = re.compile(rf"{_IDENT}(?:\.{_IDENT})*(?::{_IDENT})?")
TYPE_NAME_CHARS_MAX: Final = 256
TOPIC_RE: Final = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:/-]{0,127}")
_HOST_RE: Final = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")
_IPV6_RE: Final = re.compile(r"\[[0-9A-Fa-f:.]{2,45}\]")
CLIENT_ID_CHARS_MAX: Final = 128


def _string(value: object, chars_max: int) -> str:
    if not isinstance(value, str):
        raise _Invalid(f"expected a string, got {_got(value)}")
    if not value or len(value) > chars_max:
        raise _Invalid(f"expected 1 to {chars_max} characters, got {len(value)}")
    return value


def _named(regex: re.Pattern[str], rule: str, code: str = INVALID_NAME) -> Check:
    def check(value: object) -> str:
        if not isinstance(value, str):
            raise _Invalid(f"expected a string, got {_got(value)}")
        # fullmatch, never `^...$`: `$` also matches before a final newline.
        if not regex.fullmatch(value):
            raise _Invalid(f"{_got(value)} is not a valid name ({rule})", code)
        return value

    return check


# The checkers are built once, here: every `command` and `query` checks a
# group name, and building a closure per call showed up in profiles.
_group_name_syntax = _named(
    GROUP_NAME_RE,
    "1 to 128 letters, digits, '_', '.', ':' or '-', starting with a letter or digit",
)
_type_name_syntax = _named(
    TYPE_NAME_RE, "a built-in type like 'counter' or 'package.module:Class'", INVALID_TYPE
)
_topic_syntax = _named(TOPIC_RE, "1 to 128 letters, digits, '_', '.', ':', '/' or '-'", BAD_REQUEST)


def _group_name(value: object) -> str:
    name = _group_name_syntax(value)
    if name in RESERVED_GROUP_NAMES:
        raise _Invalid(f"{name!r} is reserved for the agents' own use", INVALID_NAME)
    return name  # type: ignore[return-value]


def _any_group_name(value: object) -> str:
    """A group name, the agents' own included: status and recovery must reach the
    cluster-state group too (it can lose its majority like any other)."""
    if isinstance(value, str) and value in RESERVED_GROUP_NAMES:
        return value
    return _group_name(value)


_agent_name = _named(
    AGENT_NAME_RE, "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
)


def _type_name(value: object) -> str:
    if isinstance(value, str) and len(value) > TYPE_NAME_CHARS_MAX:
        raise _Invalid(f"longer than {TYPE_NAME_CHARS_MAX} characters", INVALID_TYPE)
    return _type_name_syntax(value)  # type: ignore[return-value]


def _topic(value: object) -> str:
    return _topic_syntax(value)  # type: ignore[return-value]


def _address(value: object) -> str:
    """A peer address "host:port" (IPv6 hosts in brackets); returned unchanged."""
    text = _string(value, 261)
    host, sep, port = text.rpartition(":")
    host_ok = bool(_HOST_RE.fullmatch(host) or _IPV6_RE.fullmatch(host))
    if not sep or not host_ok or not port.isascii() or not port.isdigit():
        raise _Invalid(f"expected HOST:PORT, got {_got(value)}")
    if not 1 <= int(port) <= 65535:
        raise _Invalid(f"port must be from 1 to 65535, got {port}")
    return text


def _integer(lo: int, hi: int) -> Check:
    def check(value: object) -> int:
        # bool is an int in Python but not on the wire: reject it.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _Invalid(f"expected an integer, got {_got(value)}")
        if not lo <= value <= hi:
            raise _Invalid(f"expected an integer from {lo} to {hi}, got {value}")
        return value

    return check


_id_number = _integer(0, ID_MAX)  # request ids, and a command's sequence number


def _seconds(hi: float) -> Check:
    """A duration in seconds, 0 < value <= hi; JSON-born integers are accepted."""

    def check(value: object) -> float:
        # A tuple, not `int | float`: isinstance with a union is twice as slow.
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _Invalid(f"expected a number of seconds, got {_got(value)}")
        if not math.isfinite(value) or not 0 < value <= hi:
            raise _Invalid(f"expected more than 0 and at most {hi:g} seconds, got {value!r}")
        return float(value)

    return check


def _boolean(value: object) -> bool:
    if not isinstance(value, bool):
        raise _Invalid(f"expected a boolean, got {_got(value)}")
    return value


def _must_be_true(why: str) -> Check:
    def check(value: object) -> bool:
        if _boolean(value) is not True:
            raise _Invalid(f"must be true ({why})")
        return True

    return check


def _any_value(value: object) -> object:
    # Anything msgpack decoded is a msgpack value; the frame cap bounds its size.
    return value


def _agent_list(value: object) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _Invalid(f"expected an array of agent names, got {_got(value)}")
    if not 1 <= len(value) <= REPLICAS_MAX:
        raise _Invalid(f"expected 1 to {REPLICAS_MAX} agent names, got {len(value)}")
    names = []
    for i, item in enumerate(value):
        try:
            names.append(_agent_name(item))
        except _Invalid as exc:
            raise _Invalid(f"item {i}: {exc.problem}", exc.code) from None
    if len(set(names)) != len(names):
        raise _Invalid("names an agent more than once")
    return tuple(names)  # type: ignore[arg-type]


def _request_id(value: object) -> tuple[str, int]:
    """[client_id, seq]: the command's identity for exactly-once application."""
    if not isinstance(value, list | tuple) or len(value) != 2:
        raise _Invalid(f"expected [client_id, seq], got {_got(value)}")
    client_id, seq = value
    try:
        client = _string(client_id, CLIENT_ID_CHARS_MAX)
    except _Invalid as exc:
        raise _Invalid(f"client_id: {exc.problem}") from None
    try:
        number = _id_number(seq)
    except _Invalid as exc:
        raise _Invalid(f"seq: {exc.problem}") from None
    return (client, number)  # type: ignore[return-value]


def _token(value: object) -> bytes:
    if isinstance(value, str):
        value = value.encode()
    if not isinstance(value, bytes):
        raise _Invalid(f"expected binary or a string, got {_got(value)}")
    if not 1 <= len(value) <= TOKEN_CHARS_MAX:
        raise _Invalid(f"expected 1 to {TOKEN_CHARS_MAX} bytes")
    return value


# --------------------------------------------------------------------------
# The op table

REPLICAS_MAX: Final = 7
TIMEOUT_S_MAX: Final = 60.0
WATCH_TIMEOUT_S_MAX: Final = 86400.0
RETRIES_MAX: Final = 20
_REQUIRED: Final = object()  # `Field.default` of a required field


@dataclass(frozen=True, slots=True)
class Field:
    """One argument of an op: its check and, when optional, its default."""

    name: str
    check: Check
    default: object = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


@dataclass(frozen=True, slots=True)
class OpSpec:
    """One op: its fields, whether it streams events, and a cross-field rule."""

    name: str
    fields: tuple[Field, ...] = ()
    streaming: bool = False
    # Called with the normalized args; raises _Invalid naming the field.
    rule: Callable[[dict[str, object]], None] | None = None
    field_names: frozenset[str] = field(init=False)
    # (name, check, default) per field, in order: what validate_args walks,
    # without an attribute lookup and a property call per field and request.
    checks: tuple[tuple[str, Check, object], ...] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "field_names", frozenset(f.name for f in self.fields))
        checks = tuple((f.name, f.check, f.default) for f in self.fields)
        object.__setattr__(self, "checks", checks)


def _group_create_rule(args: dict[str, object]) -> None:
    """Explicit placement fixes the replica count; both given must agree."""
    agents = args["agents"]
    if agents is None:
        if args["replicas"] is None:
            args["replicas"] = 3
        return
    assert isinstance(agents, tuple)
    if args["replicas"] is None:
        args["replicas"] = len(agents)
    elif args["replicas"] != len(agents):
        raise _Invalid(
            f"lists {len(agents)} agent(s) but replicas is {args['replicas']}", field="agents"
        )


_zone_name = _named(
    AGENT_NAME_RE, "1 to 63 letters, digits, '.', '_' or '-', starting with a letter or digit"
)
_TIMEOUT_S_DEFAULT: Final = 0.5
_RETRIES_DEFAULT: Final = 3
_timeout = Field("timeout_s", _seconds(TIMEOUT_S_MAX), _TIMEOUT_S_DEFAULT)

OPS: Final[Mapping[str, OpSpec]] = types.MappingProxyType(
    {
        spec.name: spec
        for spec in (
            OpSpec("auth", (Field("token", _token),)),
            OpSpec("ping"),
            OpSpec("status"),
            OpSpec("nodes"),
            OpSpec("join", (Field("address", _address),)),
            OpSpec("activate", (Field("zone", _zone_name),)),
            OpSpec("deactivate", (Field("force", _boolean, False),)),
            OpSpec("forget", (Field("agent", _agent_name), Field("force", _boolean, False))),
            OpSpec(
                "drain_watch",
                (Field("timeout_s", _seconds(WATCH_TIMEOUT_S_MAX), None),),
                streaming=True,
            ),
            OpSpec(
                "group_create",
                (
                    Field("name", _group_name),
                    Field("replicas", _integer(1, REPLICAS_MAX), None),
                    Field("type", _type_name, "counter"),
                    Field("agents", _agent_list, None),
                ),
                rule=_group_create_rule,
            ),
            OpSpec("group_delete", (Field("name", _group_name),)),
            OpSpec("group_list"),
            OpSpec("group_status", (Field("name", _any_group_name),)),
            OpSpec("group_transfer", (Field("name", _group_name), Field("agent", _agent_name))),
            OpSpec(
                "group_recover",
                (
                    Field("name", _any_group_name),
                    Field("force", _must_be_true("recovery may lose acknowledged writes")),
                ),
            ),
            OpSpec(
                "command",
                (
                    Field("group", _group_name),
                    Field("arg", _any_value),
                    Field("request_id", _request_id, None),
                    _timeout,
                    Field("retries", _integer(0, RETRIES_MAX), _RETRIES_DEFAULT),
                ),
            ),
            OpSpec(
                "query",
                (
                    Field("group", _group_name),
                    Field("arg", _any_value),
                    Field("stale", _boolean, False),
                    _timeout,
                ),
            ),
            OpSpec("leader", (Field("group", _group_name),)),
            OpSpec("subscribe", (Field("topic", _topic),), streaming=True),
        )
    }
)
# `auth` is answered by the server itself; every other op goes to the handler.
CONNECTION_OPS: Final = frozenset({"auth"})
_ENVELOPE_KEYS: Final = frozenset({"id", "op", "args"})


# --------------------------------------------------------------------------
# Requests


@dataclass(frozen=True, slots=True)
class Request:
    """A validated request: `args` has every field, defaults filled in."""

    id: int
    op: str
    args: dict[str, object]

    @property
    def streaming(self) -> bool:
        return OPS[self.op].streaming


def parse_envelope(obj: object) -> tuple[int, str, dict[object, object]]:
    """Check a request frame's shape; return (id, op, raw args).

    Raises RequestError: `bad_request` for a bad shape (request_id None when
    the id itself is unusable), `unknown_op` for an op not in `OPS`.
    """
    if not isinstance(obj, dict):
        raise RequestError(BAD_REQUEST, f"a request must be a map, got {_got(obj)}")
    raw_id = obj.get("id")
    try:
        request_id = _id_number(raw_id)
    except _Invalid as exc:
        raise RequestError(BAD_REQUEST, f"id: {exc.problem}", {"field": "id"}) from None
    assert isinstance(request_id, int)
    # One subset test in C per request; only a bad frame pays for finding the culprit.
    if not obj.keys() <= _ENVELOPE_KEYS:
        extra = sorted(str(k) for k in obj if k not in _ENVELOPE_KEYS)
        message = f"unknown request field {extra[0]!r} (expected id, op, args)"
        raise _bad_envelope(message, extra[0], request_id)
    op = obj.get("op")
    if not isinstance(op, str):
        raise _bad_envelope(f"op: expected a string, got {_got(op)}", "op", request_id)
    if op not in OPS:
        shown = op if len(op) <= 40 else op[:37] + "..."
        raise RequestError(UNKNOWN_OP, f"unknown op {shown!r}", request_id=request_id)
    args = obj.get("args", {})
    if not isinstance(args, dict):
        raise _bad_envelope(f"args: expected a map, got {_got(args)}", "args", request_id)
    return request_id, op, args


# The error builders are module functions, not closures: defining a closure
# costs every request, and only a bad one needs it.


def _bad_envelope(message: str, field_name: str, request_id: int) -> RequestError:
    return RequestError(BAD_REQUEST, message, {"field": field_name}, request_id=request_id)


def _bad_arg(
    field_name: str, problem: str, request_id: int | None, code: str = BAD_REQUEST
) -> RequestError:
    where = f"args.{field_name}"
    return RequestError(code, f"{where}: {problem}", {"field": where}, request_id=request_id)


def validate_args(op: str, args: Mapping[object, object], request_id: int | None = None) -> dict:
    """Check `args` against the op's fields; return them normalized with defaults.

    Normalized: every field is present (absent optional ones get their
    default, possibly None), seconds are floats, `agents` is a tuple of names,
    `request_id` a `(client_id, seq)` tuple, `token` bytes.

    Raises RequestError (bad_request, invalid_name, invalid_type) whose message
    names the field as `args.<name>` and says what is wrong.
    """
    spec = OPS.get(op)
    if spec is None:
        raise RequestError(UNKNOWN_OP, f"unknown op {op!r}", request_id=request_id)
    # As in parse_envelope: a subset test in C, and the loop only for the error.
    if not args.keys() <= spec.field_names:
        for key in args:
            if key not in spec.field_names:
                expected = ", ".join(sorted(spec.field_names)) or "none"
                problem = f"unknown field (expected: {expected})"
                raise _bad_arg(str(key)[:40], problem, request_id)
    hot = _HOT_OPS.get(op)
    if hot is not None and (out := hot(args)) is not None:
        return out
    return _check_fields(spec, args, request_id)


def _check_fields(
    spec: OpSpec, args: Mapping[object, object], request_id: int | None
) -> dict[str, object]:
    """validate_args for args without unknown fields: every check, every error."""
    out: dict[str, object] = {}
    for name, check, default in spec.checks:
        if name in args:
            try:
                out[name] = check(args[name])
            except _Invalid as exc:
                raise _bad_arg(name, exc.problem, request_id, exc.code) from None
        elif default is _REQUIRED:
            raise _bad_arg(name, "missing (required)", request_id)
        else:
            out[name] = default
    if spec.rule is not None:
        try:
            spec.rule(out)
        except _Invalid as exc:
            raise _bad_arg(exc.field or "?", exc.problem, request_id, exc.code) from None
    return out


# The hot ops. `command` and `query` are nearly all the traffic, and checking
# their few fields inline costs half of walking the field table. Each returns
# exactly what _check_fields would, but only for plain valid input; for
# anything else (a missing field, an unusual type, a value out of bounds) it
# returns None and _check_fields decides, so it alone ever reports an error.
# Called only when args have no unknown field. A test holds them equal.


def _plain_group_arg_timeout(args: Mapping[object, object]) -> tuple[str, float] | None:
    """(group, timeout_s) of a hot op whose group, arg and timeout_s are plain and valid."""
    group = args.get("group")
    timeout_s = args.get("timeout_s", _TIMEOUT_S_DEFAULT)
    if (
        type(group) is str
        and GROUP_NAME_RE.fullmatch(group)
        and group not in RESERVED_GROUP_NAMES
        and "arg" in args
        and type(timeout_s) in (float, int)  # never bool, nor a subclass
        and 0 < timeout_s <= TIMEOUT_S_MAX  # False for NaN, and infinity is out
    ):
        return group, float(timeout_s)
    return None


def _command_args(args: Mapping[object, object]) -> dict[str, object] | None:
    common = _plain_group_arg_timeout(args)
    retries = args.get("retries", _RETRIES_DEFAULT)
    if (
        common is None
        or "request_id" in args
        or type(retries) is not int
        or not 0 <= retries <= RETRIES_MAX
    ):
        return None
    group, timeout_s = common
    return {
        "group": group,
        "arg": args["arg"],
        "request_id": None,
        "timeout_s": timeout_s,
        "retries": retries,
    }


def _query_args(args: Mapping[object, object]) -> dict[str, object] | None:
    common = _plain_group_arg_timeout(args)
    stale = args.get("stale", False)
    if common is None or type(stale) is not bool:
        return None
    group, timeout_s = common
    return {"group": group, "arg": args["arg"], "stale": stale, "timeout_s": timeout_s}


_HOT_OPS: Final[Mapping[str, Callable[[Mapping[object, object]], dict[str, object] | None]]] = {
    "command": _command_args,
    "query": _query_args,
}


def parse_request(obj: object) -> Request:
    """Validate a whole request frame (envelope and args); raise RequestError."""
    request_id, op, args = parse_envelope(obj)
    return Request(request_id, op, validate_args(op, args, request_id))


def ok_response(request_id: int, result: object) -> dict[str, object]:
    return {"id": request_id, "ok": True, "result": result}


def error_response(request_id: int | None, error: ControlError) -> dict[str, object]:
    return {"id": request_id, "ok": False, "error": error.to_wire()}


def event_message(request_id: int, event: Mapping[str, object]) -> dict[str, object]:
    return {"id": request_id, "event": dict(event)}


# --------------------------------------------------------------------------
# Replies, as a client reads them


@dataclass(frozen=True, slots=True)
class Result:
    id: int
    value: object


@dataclass(frozen=True, slots=True)
class Failure:
    id: int | None  # None: a connection-level error; the agent closes next
    error: ControlError


@dataclass(frozen=True, slots=True)
class Event:
    id: int
    event: dict[str, object]


def parse_reply(obj: object) -> Result | Failure | Event:
    """Classify a frame from the agent; raise ValueError if it is malformed."""
    if not isinstance(obj, dict):
        raise ValueError(f"reply is not a map but {_got(obj)}")
    request_id = obj.get("id")
    id_ok = isinstance(request_id, int) and not isinstance(request_id, bool)
    if "event" in obj:
        if not id_ok or not isinstance(obj["event"], dict):
            raise ValueError("event frame needs an integer id and a map")
        return Event(request_id, obj["event"])  # type: ignore[arg-type]
    ok = obj.get("ok")
    if ok is True and id_ok and "result" in obj:
        return Result(request_id, obj["result"])  # type: ignore[arg-type]
    if ok is False and (id_ok or request_id is None):
        return Failure(request_id, ControlError.from_wire(obj.get("error")))  # type: ignore[arg-type]
    raise ValueError("reply is neither a result, an error nor an event")
