"""Peer calls: the task-based and the callback ways, on both ends, over an in-process link."""

from __future__ import annotations

import trio
import trio.testing

from raftfleet_agent.host import wire
from raftfleet_agent.host.rpc import PeerRpc, RpcError, as_error


class Link:
    """Two PeerRpcs, "a" and "b", whose frames reach each other on the next loop turn."""

    def __init__(self, nursery: trio.Nursery) -> None:
        self.up = True
        self.sent: list[tuple[str, list]] = []
        self.a = PeerRpc(lambda peer, f: self._send("a", peer, f), nursery)
        self.b = PeerRpc(lambda peer, f: self._send("b", peer, f), nursery)
        self._nursery = nursery

    def _send(self, frm: str, to: str, frame: list) -> bool:
        if not self.up:
            return False
        self.sent.append((to, frame))
        target = self.a if to == "a" else self.b
        self._nursery.start_soon(self._deliver, target, frm, frame)
        return True

    @staticmethod
    async def _deliver(target: PeerRpc, frm: str, frame: list) -> None:
        kind, rest = wire.split(frame)
        if kind == wire.CALL:
            target.on_call(frm, rest)
        else:
            target.on_answer(frm, rest)


def _answers() -> tuple[list[tuple[bool, object]], trio.Event, object]:
    got: list[tuple[bool, object]] = []
    done = trio.Event()

    def on_answer(ok: bool, value: object) -> None:
        got.append((ok, value))
        done.set()

    return got, done, on_answer


async def test_a_fast_handler_answers_without_the_task_based_one() -> None:
    async with trio.open_nursery() as n:
        link = Link(n)
        later: list = []
        taken = trio.Event()

        async def slow(peer: str, args: dict) -> object:
            raise AssertionError("the fast handler took it")

        def fast(peer: str, args: dict, answer) -> bool:  # type: ignore[no-untyped-def]
            later.append((peer, args, answer))  # answered later, as a waiter would
            taken.set()
            return True

        link.b.register("double", slow)
        link.b.register_fast("double", fast)
        got, done, on_answer = _answers()
        assert link.a.start_call("b", "double", {"x": 21}, 5.0, on_answer)
        await taken.wait()
        peer, args, answer = later[0]
        assert (peer, args) == ("a", {"x": 21})
        answer(True, args["x"] * 2)
        await done.wait()
        assert got == [(True, 42)]
        n.cancel_scope.cancel()  # the expiry task would wait for the 5 s deadline


async def test_what_the_fast_handler_declines_the_task_based_one_serves() -> None:
    async with trio.open_nursery() as n:
        link = Link(n)

        async def slow(peer: str, args: dict) -> object:
            return "slow"

        link.b.register("op", slow)
        link.b.register_fast("op", lambda peer, args, answer: False)
        assert await link.a.call("b", "op", {}, 5.0) == "slow"
        n.cancel_scope.cancel()


async def test_a_fast_handler_that_refuses_answers_an_error() -> None:
    async with trio.open_nursery() as n:
        link = Link(n)

        def fast(peer: str, args: dict, answer) -> bool:  # type: ignore[no-untyped-def]
            raise RpcError("bad_request", "op: needs a group", {"field": "group"})

        link.b.register_fast("op", fast)
        got, done, on_answer = _answers()
        assert link.a.start_call("b", "op", {}, 5.0, on_answer)
        await done.wait()
        ok, value = got[0]
        err = as_error("b", "op", value)
        assert not ok and (err.code, str(err), err.details) == (
            "bad_request", "op: needs a group", {"field": "group"},
        )  # fmt: skip
        n.cancel_scope.cancel()


async def test_an_unanswered_callback_call_times_out_once_and_a_late_answer_is_dropped(
    autojump_clock: trio.testing.MockClock,
) -> None:
    async with trio.open_nursery() as n:
        link = Link(n)
        held: list = []
        link.b.register_fast("op", lambda peer, args, answer: held.append(answer) or True)
        got, done, on_answer = _answers()
        t0 = trio.current_time()
        assert link.a.start_call("b", "op", {}, 2.0, on_answer)
        await done.wait()
        waited = trio.current_time() - t0
        assert 2.0 <= waited <= 2.0 + 0.1, waited
        assert got[0][0] is False and as_error("b", "op", got[0][1]).code == "timeout"
        held[0](True, "too late")  # the answer comes after all
        await trio.sleep(1.0)
        assert len(got) == 1


async def test_a_call_to_an_unreachable_peer_is_not_started() -> None:
    async with trio.open_nursery() as n:
        link = Link(n)
        link.up = False
        got, _done, on_answer = _answers()
        assert link.a.start_call("b", "op", {}, 1.0, on_answer) is False
        await trio.sleep(0.01)
        assert got == []


def test_a_malformed_error_answer_is_internal() -> None:
    assert as_error("b", "op", "junk").code == "internal"
    assert as_error("b", "op", {"code": "x", "details": "junk"}).details == {}


async def test_only_the_peer_a_call_went_to_may_answer_it() -> None:
    async with trio.open_nursery() as n:
        link = Link(n)
        held: list = []
        taken = trio.Event()

        def fast(peer: str, args: dict, answer) -> bool:  # type: ignore[no-untyped-def]
            held.append(answer)
            taken.set()
            return True

        link.b.register_fast("op", fast)
        got, done, on_answer = _answers()
        assert link.a.start_call("b", "op", {}, 5.0, on_answer)
        await taken.wait()
        call_id = link.sent[0][1][1]
        link.a.on_answer("c", [call_id, True, "forged by c"])
        held[0](True, "from b")
        await done.wait()
        assert got == [(True, "from b")]
        n.cancel_scope.cancel()


async def test_answered_calls_do_not_pile_up_in_the_deadline_heap(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    from raftfleet_agent.host import rpc

    monkeypatch.setattr(rpc, "SWEEP_EVERY", 10)
    async with trio.open_nursery() as n:
        link = Link(n)
        link.b.register_fast("op", lambda peer, args, answer: answer(True, None) or True)
        for _ in range(25):
            _got, done, on_answer = _answers()
            assert link.a.start_call("b", "op", {}, 60.0, on_answer)
            await done.wait()
        # Swept at the 10th and 20th call: left are the 20th (in flight when
        # swept) and the five after it; without sweeps, all 25.
        assert len(link.a._deadlines) == 6
        n.cancel_scope.cancel()
