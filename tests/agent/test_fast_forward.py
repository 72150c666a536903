"""The fast path's forwarding: a request for a group another agent leads, without a task."""

from __future__ import annotations

import types

import pytest

from raftfleet_agent.control.protocol import ControlError
from raftfleet_agent.fast_ops import TRIED_FAST, FastPath
from raftfleet_agent.host.rpc import RpcError


class Ticket:
    def __init__(self) -> None:
        self.outcome: list[tuple[str, object]] = []

    def ok(self, result: object) -> None:
        self.outcome.append(("ok", result))

    def fail(self, error: ControlError) -> None:
        self.outcome.append(("fail", (error.code, error.message)))

    def slow(self) -> None:
        self.outcome.append(("slow", None))


class Rpc:
    def __init__(self, connected: bool = True) -> None:
        self.connected = connected
        self.started: list[tuple[str, str, dict, float]] = []
        self.on_answer = None

    def start_call(self, peer: str, op: str, args: dict, timeout_s: float, on_answer) -> bool:  # type: ignore[no-untyped-def]
        if not self.connected:
            return False
        self.started.append((peer, op, dict(args), timeout_s))
        self.on_answer = on_answer
        return True


def _fast(leaders: dict[str, str], rpc: Rpc) -> FastPath:
    # A host on which nothing is led here: start_command / start_query say "not ours".
    host = types.SimpleNamespace(
        agent="a1",
        start_command=lambda *a: None,
        start_query=lambda *a: None,
    )
    router = types.SimpleNamespace(leaders=leaders, rpc=rpc, new_request_id=lambda: ("a1-x", 7))
    return FastPath(host, router)  # type: ignore[arg-type]


def test_a_command_for_a_known_remote_leader_is_forwarded_and_answered() -> None:
    rpc, ticket = Rpc(), Ticket()
    fast = _fast({"g": "a2"}, rpc)
    args = {"group": "g", "arg": "inc", "timeout_s": 2.0}
    assert fast.take("command", args, ticket) is True
    assert rpc.started == [
        ("a2", "command", {"group": "g", "arg": "inc", "client": "a1-x", "seq": 7,
                           "timeout_s": 2.0}, 2.2),
    ]  # fmt: skip
    assert args["request_id"] == ["a1-x", 7]  # a retry on the normal path reuses it
    rpc.on_answer(True, 5)
    assert ticket.outcome == [("ok", {"group": "g", "reply": 5, "leader": "a2"})]


def test_not_leader_takes_the_hint_and_retries_on_the_normal_path_with_the_same_id() -> None:
    rpc, ticket = Rpc(), Ticket()
    leaders = {"g": "a2"}
    fast = _fast(leaders, rpc)
    args = {"group": "g", "arg": "inc", "request_id": ["c", 3], "retries": 2}
    assert fast.take("command", args, ticket)
    rpc.on_answer(False, {"code": "not_leader", "message": "ask a3", "details": {"leader": "a3"}})
    assert ticket.outcome == [("slow", None)]
    assert leaders == {"g": "a3"} and args["retries"] == 1 and args["request_id"] == ["c", 3]
    assert args[TRIED_FAST] is True  # the normal path must not call it never proposed


@pytest.mark.parametrize("code", ["data_type_error", "invalid_argument", "request_expired"])
def test_the_data_types_verdict_is_final(code: str) -> None:
    rpc, ticket = Rpc(), Ticket()
    fast = _fast({"g": "a2"}, rpc)
    assert fast.take("command", {"group": "g", "arg": "bad"}, ticket)
    rpc.on_answer(False, {"code": code, "message": "no"})
    assert ticket.outcome == [("fail", (code, "no"))]


def test_a_timeout_with_no_retry_left_is_a_timeout_and_the_leader_is_forgotten() -> None:
    rpc, ticket = Rpc(), Ticket()
    leaders = {"g": "a2"}
    fast = _fast(leaders, rpc)
    assert fast.take("query", {"group": "g", "arg": "get", "retries": 0}, ticket)
    assert rpc.started[0][1] == "query" and "client" not in rpc.started[0][2]
    rpc.on_answer(False, {"code": "timeout", "message": "no answer from a2 to query"})
    assert ticket.outcome == [("fail", ("timeout", "query on g timed out (outcome unknown)"))]
    assert leaders == {}


@pytest.mark.parametrize(
    ("leaders", "connected"),
    [({}, True), ({"g": "a1"}, True), ({"g": "a2"}, False)],
    ids=["leader unknown", "leader is this agent", "peer not connected"],
)
def test_otherwise_the_normal_path_serves_it(leaders: dict, connected: bool) -> None:
    rpc, ticket = Rpc(connected), Ticket()
    args = {"group": "g", "arg": "inc"}
    assert _fast(leaders, rpc).take("command", args, ticket) is False
    assert ticket.outcome == [] and "request_id" not in args


def test_stale_queries_are_not_forwarded() -> None:
    rpc = Rpc()
    args = {"group": "g", "arg": 1, "stale": True}
    assert _fast({"g": "a2"}, rpc).take("query", args, Ticket()) is False
    assert rpc.started == []


def test_a_peers_malformed_forward_is_a_bad_request() -> None:
    fast = _fast({}, Rpc())
    with pytest.raises(RpcError) as info:
        fast.serve_peer("command", "a2", {"group": "g", "arg": 1, "timeout_s": 1e9}, print)
    assert info.value.code == "bad_request"
