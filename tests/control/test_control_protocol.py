"""The control protocol's tables: every op's arguments, the envelope, replies."""

from __future__ import annotations

import math
import re

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftfleet_agent import config
from raftfleet_agent.control import protocol
from raftfleet_agent.control.protocol import (
    ERROR_CODES,
    OPS,
    ControlError,
    Event,
    Failure,
    RequestError,
    Result,
    Unauthorized,
    parse_envelope,
    parse_reply,
    parse_request,
    validate_args,
)
from raftfleet_agent.transport.framing import FRAME_BYTES_MAX

# op -> (valid args, normalized result)
VALID = {
    "ping": ({}, {}),
    "status": ({}, {}),
    "nodes": ({}, {}),
    "join": ({"address": "10.0.0.1:7000"}, {"address": "10.0.0.1:7000"}),
    "activate": ({"zone": "eu-1a"}, {"zone": "eu-1a"}),
    "deactivate": ({}, {"force": False}),
    "forget": ({"agent": "a3"}, {"agent": "a3", "force": False}),
    "drain_watch": ({}, {"timeout_s": None}),
    "group_create": (
        {"name": "g1"},
        {"name": "g1", "replicas": 3, "type": "counter", "agents": None},
    ),
    "group_delete": ({"name": "g1"}, {"name": "g1"}),
    "group_list": ({}, {}),
    "group_status": ({"name": "g1"}, {"name": "g1"}),
    "group_transfer": ({"name": "g1", "agent": "a2"}, {"name": "g1", "agent": "a2"}),
    "group_recover": ({"name": "g1", "force": True}, {"name": "g1", "force": True}),
    "command": (
        {"group": "g1", "arg": "inc"},
        {"group": "g1", "arg": "inc", "request_id": None, "timeout_s": 0.5, "retries": 3},
    ),
    "query": (
        {"group": "g1", "arg": ["get", 1]},
        {"group": "g1", "arg": ["get", 1], "stale": False, "timeout_s": 0.5},
    ),
    "leader": ({"group": "g1"}, {"group": "g1"}),
    "subscribe": ({"topic": "groups"}, {"topic": "groups"}),
    "auth": ({"token": "t" * 32}, {"token": b"t" * 32}),
}

# (op, args, code, field named in the message)
INVALID = [
    # missing required fields
    ("join", {}, "bad_request", "args.address"),
    ("activate", {}, "bad_request", "args.zone"),
    ("group_create", {}, "bad_request", "args.name"),
    ("group_delete", {}, "bad_request", "args.name"),
    ("group_status", {}, "bad_request", "args.name"),
    ("group_transfer", {"name": "g1"}, "bad_request", "args.agent"),
    ("forget", {}, "bad_request", "args.agent"),
    ("group_recover", {"name": "g1"}, "bad_request", "args.force"),
    ("command", {"group": "g1"}, "bad_request", "args.arg"),
    ("command", {"arg": 1}, "bad_request", "args.group"),
    ("query", {"group": "g1"}, "bad_request", "args.arg"),
    ("leader", {}, "bad_request", "args.group"),
    ("subscribe", {}, "bad_request", "args.topic"),
    ("auth", {}, "bad_request", "args.token"),
    # wrong types
    ("join", {"address": 7000}, "bad_request", "args.address"),
    ("activate", {"zone": 1}, "bad_request", "args.zone"),
    ("drain_watch", {"timeout_s": "10"}, "bad_request", "args.timeout_s"),
    ("drain_watch", {"timeout_s": True}, "bad_request", "args.timeout_s"),
    ("group_create", {"name": ["g1"]}, "bad_request", "args.name"),
    ("group_create", {"name": "g1", "replicas": "3"}, "bad_request", "args.replicas"),
    ("group_create", {"name": "g1", "replicas": 3.0}, "bad_request", "args.replicas"),
    ("group_create", {"name": "g1", "replicas": True}, "bad_request", "args.replicas"),
    ("group_create", {"name": "g1", "type": 5}, "bad_request", "args.type"),
    ("group_create", {"name": "g1", "agents": "a1"}, "bad_request", "args.agents"),
    ("group_transfer", {"name": "g1", "agent": None}, "bad_request", "args.agent"),
    ("group_recover", {"name": "g1", "force": "yes"}, "bad_request", "args.force"),
    ("command", {"group": "g1", "arg": 1, "request_id": "c1:1"}, "bad_request", "args.request_id"),
    ("command", {"group": "g1", "arg": 1, "request_id": ["c1"]}, "bad_request", "args.request_id"),
    (
        "command",
        {"group": "g1", "arg": 1, "request_id": [1, 1]},
        "bad_request",
        "args.request_id",
    ),
    ("command", {"group": "g1", "arg": 1, "retries": 1.5}, "bad_request", "args.retries"),
    ("query", {"group": "g1", "arg": 1, "stale": 1}, "bad_request", "args.stale"),
    ("subscribe", {"topic": 3}, "bad_request", "args.topic"),
    ("auth", {"token": 3}, "bad_request", "args.token"),
    # bounds and lengths
    ("join", {"address": "10.0.0.1"}, "bad_request", "args.address"),
    ("join", {"address": "10.0.0.1:0"}, "bad_request", "args.address"),
    ("join", {"address": "10.0.0.1:65536"}, "bad_request", "args.address"),
    ("join", {"address": "bad host:1"}, "bad_request", "args.address"),
    ("drain_watch", {"timeout_s": 0}, "bad_request", "args.timeout_s"),
    ("drain_watch", {"timeout_s": float("inf")}, "bad_request", "args.timeout_s"),
    ("group_create", {"name": "g1", "replicas": 0}, "bad_request", "args.replicas"),
    ("group_create", {"name": "g1", "replicas": 8}, "bad_request", "args.replicas"),
    ("group_create", {"name": "g1", "agents": []}, "bad_request", "args.agents"),
    ("group_create", {"name": "g1", "agents": ["a"] * 8}, "bad_request", "args.agents"),
    ("group_create", {"name": "g1", "agents": ["a", "a"]}, "bad_request", "args.agents"),
    (
        "group_create",
        {"name": "g1", "agents": ["a", "b"], "replicas": 3},
        "bad_request",
        "args.agents",
    ),
    ("group_recover", {"name": "g1", "force": False}, "bad_request", "args.force"),
    ("command", {"group": "g1", "arg": 1, "timeout_s": 0}, "bad_request", "args.timeout_s"),
    ("command", {"group": "g1", "arg": 1, "timeout_s": 60.01}, "bad_request", "args.timeout_s"),
    (
        "command",
        {"group": "g1", "arg": 1, "timeout_s": float("nan")},
        "bad_request",
        "args.timeout_s",
    ),
    ("command", {"group": "g1", "arg": 1, "retries": -1}, "bad_request", "args.retries"),
    ("command", {"group": "g1", "arg": 1, "retries": 21}, "bad_request", "args.retries"),
    (
        "command",
        {"group": "g1", "arg": 1, "request_id": ["c", -1]},
        "bad_request",
        "args.request_id",
    ),
    (
        "command",
        {"group": "g1", "arg": 1, "request_id": ["c" * 129, 1]},
        "bad_request",
        "args.request_id",
    ),
    ("query", {"group": "g1", "arg": 1, "timeout_s": 61}, "bad_request", "args.timeout_s"),
    ("auth", {"token": ""}, "bad_request", "args.token"),
    ("auth", {"token": b"x" * 4097}, "bad_request", "args.token"),
    ("subscribe", {"topic": "t" * 129}, "bad_request", "args.topic"),
    # names and types
    ("group_create", {"name": "__cluster__"}, "invalid_name", "args.name"),
    ("group_create", {"name": ""}, "invalid_name", "args.name"),
    ("group_create", {"name": "g" * 129}, "invalid_name", "args.name"),
    ("group_create", {"name": "g1\n"}, "invalid_name", "args.name"),
    ("group_create", {"name": "-g"}, "invalid_name", "args.name"),
    ("group_create", {"name": "g/1"}, "invalid_name", "args.name"),
    ("group_create", {"name": "g1", "agents": ["ok", "not ok"]}, "invalid_name", "args.agents"),
    ("group_create", {"name": "g1", "type": "not a type"}, "invalid_type", "args.type"),
    ("group_create", {"name": "g1", "type": "pkg.mod:"}, "invalid_type", "args.type"),
    ("group_create", {"name": "g1", "type": "a" * 257}, "invalid_type", "args.type"),
    ("group_transfer", {"name": "g1", "agent": "a:b"}, "invalid_name", "args.agent"),
    ("forget", {"agent": "a:b"}, "invalid_name", "args.agent"),
    ("activate", {"zone": "eu 1"}, "invalid_name", "args.zone"),
    ("leader", {"group": "__cluster__"}, "invalid_name", "args.group"),
    # unknown fields
    ("ping", {"x": 1}, "bad_request", "args.x"),
    ("command", {"group": "g1", "arg": 1, "timeout": 1}, "bad_request", "args.timeout"),
]


def test_every_op_has_a_valid_case() -> None:
    assert set(VALID) == set(OPS)


@pytest.mark.parametrize("op", sorted(VALID))
def test_valid_args_are_normalized(op: str) -> None:
    args, expected = VALID[op]
    assert validate_args(op, args) == expected


@pytest.mark.parametrize(("op", "args", "code", "field"), INVALID)
def test_invalid_args_name_the_field(op: str, args: dict, code: str, field: str) -> None:
    with pytest.raises(RequestError) as info:
        validate_args(op, args, request_id=7)
    err = info.value
    assert err.code == code
    assert err.message.startswith(field + ": ")
    assert err.details == {"field": field}
    assert err.request_id == 7


def test_every_op_with_required_fields_rejects_missing_ones() -> None:
    for op, spec in OPS.items():
        for field in spec.fields:
            if field.required:
                args = dict(VALID[op][0])
                del args[field.name]
                with pytest.raises(RequestError, match=f"args.{field.name}: missing"):
                    validate_args(op, args)


def test_optional_fields_and_explicit_placement() -> None:
    assert validate_args(
        "group_create", {"name": "a.b:c-d_e", "agents": ["a1", "a2"], "type": "kv"}
    ) == {"name": "a.b:c-d_e", "replicas": 2, "type": "kv", "agents": ("a1", "a2")}
    assert validate_args(
        "group_create",
        {"name": "g", "replicas": 1, "agents": ("a1",), "type": "my_pkg.types:Register"},
    )["agents"] == ("a1",)
    args = validate_args(
        "command",
        {"group": "g", "arg": {"k": [1, b"x"]}, "request_id": ["cli-1", 5], "timeout_s": 60,
         "retries": 0},
    )  # fmt: skip
    assert args["request_id"] == ("cli-1", 5)
    assert args["timeout_s"] == 60.0 and isinstance(args["timeout_s"], float)
    assert validate_args("query", {"group": "g", "arg": None, "stale": True})["stale"] is True
    assert validate_args("drain_watch", {"timeout_s": 2})["timeout_s"] == 2.0
    assert validate_args("join", {"address": "[::1]:7000"})["address"] == "[::1]:7000"
    assert validate_args("join", {"address": "agent-1.example.com:7000"})


def test_streaming_ops() -> None:
    assert {op for op, spec in OPS.items() if spec.streaming} == {"drain_watch", "subscribe"}


def test_envelope() -> None:
    assert parse_envelope({"id": 3, "op": "ping"}) == (3, "ping", {})
    request = parse_request({"id": 2**63 - 1, "op": "leader", "args": {"group": "g"}})
    assert (request.id, request.op, request.args, request.streaming) == (
        2**63 - 1,
        "leader",
        {"group": "g"},
        False,
    )


@pytest.mark.parametrize(
    ("frame", "code", "request_id"),
    [
        ([1, "ping"], "bad_request", None),
        (None, "bad_request", None),
        ({"op": "ping"}, "bad_request", None),
        ({"id": -1, "op": "ping"}, "bad_request", None),
        ({"id": 2**63, "op": "ping"}, "bad_request", None),
        ({"id": True, "op": "ping"}, "bad_request", None),
        ({"id": "1", "op": "ping"}, "bad_request", None),
        ({"id": 1}, "bad_request", 1),
        ({"id": 1, "op": 5}, "bad_request", 1),
        ({"id": 1, "op": "ping", "args": [1]}, "bad_request", 1),
        ({"id": 1, "op": "ping", "token": "t"}, "bad_request", 1),
        ({"id": 1, "op": "reboot"}, "unknown_op", 1),
        ({"id": 1, "op": "group_create", "args": {}}, "bad_request", 1),
    ],
)
def test_bad_envelopes(frame: object, code: str, request_id: int | None) -> None:
    with pytest.raises(RequestError) as info:
        parse_request(frame)
    assert (info.value.code, info.value.request_id) == (code, request_id)


@given(st.recursive(st.none() | st.integers() | st.text() | st.binary(), lambda c: st.lists(c)
                    | st.dictionaries(st.text(), c), max_leaves=20))  # fmt: skip
def test_any_decoded_value_is_accepted_or_rejected_cleanly(value: object) -> None:
    for frame in (value, {"id": 1, "op": "command", "args": value}, {"id": 1, "op": value}):
        try:
            parse_request(frame)
        except RequestError as exc:
            assert exc.code in ERROR_CODES


def test_error_codes_are_documented_and_stable() -> None:
    expected = {
        "bad_request", "unknown_op", "unauthorized", "not_found", "unknown_group",
        "already_exists", "no_active_agent", "cleanup_ongoing", "invalid_name", "invalid_type",
        "no_leader", "not_leader", "timeout", "invalid_argument", "data_type_error",
        "request_expired", "not_active", "not_inactive", "too_few_agents", "unavailable",
        "internal",
    }  # fmt: skip
    assert expected == ERROR_CODES
    for code in ERROR_CODES:
        assert getattr(protocol, code.upper()) == code
        assert protocol.ERROR_DESCRIPTIONS[code]


def test_control_error_round_trips_through_the_wire() -> None:
    err = ControlError("not_leader", "ask a2", {"leader": "a2"})
    wire = msgpack.unpackb(msgpack.packb(protocol.error_response(4, err)))
    reply = parse_reply(wire)
    assert isinstance(reply, Failure) and reply.id == 4
    assert (reply.error.code, reply.error.message, reply.error.details) == (
        "not_leader",
        "ask a2",
        {"leader": "a2"},
    )
    assert str(reply.error) == "not_leader: ask a2"
    refused = parse_reply({"id": None, "ok": False, "error": {"code": "unauthorized",
                                                              "message": "no"}})  # fmt: skip
    assert isinstance(refused, Failure) and isinstance(refused.error, Unauthorized)
    assert ControlError("x", "y").to_wire() == {"code": "x", "message": "y"}


def test_parse_reply_shapes() -> None:
    assert parse_reply(protocol.ok_response(1, None)) == Result(1, None)
    assert parse_reply(protocol.event_message(2, {"moved": 1})) == Event(2, {"moved": 1})
    for bad in (
        [],
        {"id": 1},
        {"id": 1, "ok": True},
        {"id": "1", "ok": True, "result": 1},
        {"id": 1, "ok": False, "error": {"code": 1, "message": "m"}},
        {"id": 1, "ok": False, "error": {"code": "c", "message": "m", "details": 1}},
        {"id": 1, "event": [1]},
        {"id": None, "ok": True, "result": 1},
    ):
        with pytest.raises(ValueError):
            parse_reply(bad)


def test_names_follow_the_config_rule_and_caps_match_the_transport() -> None:
    # Repeated (to keep protocol.py free of attrs/tomllib); must stay equal.
    assert config._NAME_RE.pattern == protocol.AGENT_NAME_RE.pattern
    assert protocol.RESPONSE_BYTES_MAX == FRAME_BYTES_MAX
    assert protocol.REQUEST_BYTES_MAX == 1024 * 1024
    assert re.fullmatch(protocol.GROUP_NAME_RE, "A" + "b" * 127)


# --------------------------------------------------------------------------
# The hot ops' inline checks (`protocol._HOT_OPS`) against the field table


def _same_args(fast: dict, table: dict) -> bool:
    """Equal keys in the same order, values of the same type and value (or the same object)."""
    return list(fast) == list(table) and all(
        type(fast[k]) is type(table[k]) and (fast[k] is table[k] or fast[k] == table[k])
        for k in table
    )


@pytest.mark.parametrize(
    ("op", "args"),
    [
        ("command", {"group": "w", "arg": "inc", "timeout_s": 5, "retries": 3}),
        ("command", {"group": "g" * 128, "arg": None}),
        ("command", {"group": "a.b:c-d_e", "arg": [1], "timeout_s": 60.0, "retries": 0}),
        ("command", {"group": "w", "arg": {}, "timeout_s": 1e-9, "retries": 20}),
        ("query", {"group": "w", "arg": "get", "timeout_s": 5}),
        ("query", {"group": "w", "arg": "get", "stale": True}),
        ("query", {"group": "9", "arg": b"", "stale": False, "timeout_s": 0.25}),
    ],
)
def test_hot_ops_take_plain_requests_and_agree(op: str, args: dict) -> None:
    fast = protocol._HOT_OPS[op](args)
    assert fast is not None, "the inline check must take plain valid requests"
    assert _same_args(fast, protocol._check_fields(OPS[op], args, 7))
    assert _same_args(validate_args(op, args), fast)


# Per field: valid values (most draws: the inline check is exercised only when
# every field passes), values just outside the rule, and anything else decoded
# msgpack can hold.
_odd_values = (
    st.none()
    | st.booleans()
    | st.integers(-(2**64), 2**64)
    | st.floats()
    | st.text(max_size=4)
    | st.binary(max_size=3)
    | st.lists(st.integers(-1, 3) | st.text(max_size=3), max_size=3)
)
_valid_values = {
    "group": st.sampled_from(["w", "g" * 128, "a.b:c-d_e", "9"]),
    "arg": _odd_values,
    "request_id": st.tuples(st.text(min_size=1, max_size=3), st.integers(0, 3)).map(list),
    "timeout_s": st.floats(1e-9, 60) | st.integers(1, 60),
    "retries": st.integers(0, 20),
    "stale": st.booleans(),
}
_invalid_values = {
    "group": st.sampled_from(["g" * 129, "__cluster__", "-g", "g\n", "a/b", "é", ""]),
    "arg": _odd_values,
    "request_id": st.lists(st.text(max_size=3) | st.integers(-1, 3), max_size=3),
    "timeout_s": st.sampled_from([0, 0.0, -0.0, 60.000001, 61, -1, math.inf, math.nan, True]),
    "retries": st.sampled_from([-1, 21, True, False, 3.0]),
    "stale": st.sampled_from([0, 1, "true", None]),
}


@settings(max_examples=400)
@given(st.sampled_from(["command", "query"]), st.data())
def test_hot_ops_agree_with_the_field_table(op: str, data: st.DataObject) -> None:
    """Same normalized dict, or the same error, for any mix of present and odd fields."""
    spec = OPS[op]
    args = {}
    for name in sorted(spec.field_names):
        # 0-1 absent (request_id: 0-6, as from most clients), 2-7 valid, 8 invalid, 9 odd
        kind = data.draw(st.integers(0, 9), label=f"{name} kind")
        if kind <= (6 if name == "request_id" else 1):
            continue
        values = _valid_values if kind <= 7 else _invalid_values if kind == 8 else None
        args[name] = data.draw(_odd_values if values is None else values[name], label=name)
    try:
        table = protocol._check_fields(spec, args, 7)
    except RequestError as exc:
        with pytest.raises(RequestError) as info:
            validate_args(op, args, request_id=7)
        got = info.value
        assert (got.code, got.message, got.details, got.request_id) == (
            exc.code,
            exc.message,
            exc.details,
            exc.request_id,
        )
        return
    assert _same_args(validate_args(op, args, request_id=7), table)


def test_only_status_and_recovery_may_name_the_cluster_state_group() -> None:
    name = "__cluster__"
    assert validate_args("group_status", {"name": name}) == {"name": name}
    assert validate_args("group_recover", {"name": name, "force": True})["name"] == name
    for op, args in (
        ("group_delete", {"name": name}),
        ("group_transfer", {"name": name, "agent": "a1"}),
        ("command", {"group": name, "arg": "x"}),
    ):
        with pytest.raises(RequestError) as info:
            validate_args(op, args)
        assert info.value.code == "invalid_name", op
