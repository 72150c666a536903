"""A draining agent that no longer holds a cluster-state replica still finishes its drain."""

from __future__ import annotations

import logging
from collections.abc import Callable
from types import SimpleNamespace

import pytest

from raftfleet_agent.fleet.service import FleetError, FleetService
from raftfleet_agent.log_throttle import Throttle


@pytest.mark.parametrize(
    "here",
    [
        # Seed 7002: a draining agent lost its cluster-state replica early,
        # then a replica of another group was removed while its links were
        # cut, and it never heard of it. The round without local state only
        # asked "do I host nothing?" — never, so it stayed draining.
        {"g": "stale replica of another group"},
        # Seed 7605: a wiped agent got a fresh cluster-state replica, was
        # drained before it was ever fed, and stayed draining with nothing
        # left: the round saw a replica object, no applied state, did nothing.
        {"__cluster__": "never fed"},
    ],
    ids=["no cluster-state replica", "an empty one"],
)
async def test_orphans_are_checked_before_the_drain_is_reported_without_local_state(
    here: dict,
) -> None:
    svc = FleetService.__new__(FleetService)
    svc.host = SimpleNamespace(replicas=dict(here))
    svc.local_state = lambda: None  # type: ignore[method-assign]
    svc._remote_state = None
    remote = {"agents": {"a3": {"state": "draining"}}}
    calls: list[tuple] = []

    async def state(**_kw: object) -> dict:
        return remote

    async def discard_orphans(st: dict) -> None:
        calls.append(("discard", st))
        svc.host.replicas.clear()  # not in their groups any more

    async def maybe_drained(st: dict) -> None:
        calls.append(("drained?", st, len(svc.host.replicas)))

    svc.state = state  # type: ignore[method-assign]
    svc._discard_orphans = discard_orphans  # type: ignore[method-assign]
    svc._maybe_drained = maybe_drained  # type: ignore[method-assign]
    await svc.reconcile_once(None, None)  # type: ignore[arg-type]
    assert calls == [("discard", remote), ("drained?", remote, 0)]


async def test_a_round_that_cannot_read_the_cluster_state_says_so(caplog) -> None:  # type: ignore[no-untyped-def]
    # An agent whose drain cannot finish (no cluster-state replica, no leader
    # reachable) used to say nothing at the default log level.
    svc = FleetService.__new__(FleetService)
    svc.host = SimpleNamespace(replicas={})
    svc.local_state = lambda: None  # type: ignore[method-assign]
    svc._remote_state = None
    svc._unreachable_said = float("-inf")

    async def state(**_kw: object) -> dict:
        raise FleetError("unavailable", "cluster state unreachable: no leader")

    svc.state = state  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="raftfleet.fleet")
    for _ in range(3):
        await svc.reconcile_once(None, None)  # type: ignore[arg-type]
    said = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert said == ["cluster state unreachable: no leader"]  # once, not every round


async def test_only_a_draining_agent_reads_the_state_remotely_every_round() -> None:
    # Without an applied cluster-state replica a round reads a snapshot of
    # every group through the leader; only a drain needs that each round.
    import time

    from raftfleet_agent.fleet import service

    svc = FleetService.__new__(FleetService)
    svc.name = "a3"
    svc.host = SimpleNamespace(replicas={})
    svc.local_state = lambda: None  # type: ignore[method-assign]
    reads: list[str] = []
    me = {"state": "active"}

    async def state(**_kw: object) -> dict:
        reads.append(me["state"])
        svc._remote_state = {"agents": {"a3": dict(me)}}
        svc._remote_read_s = time.monotonic()
        return svc._remote_state

    async def nothing(_st: dict) -> None:
        return None

    svc.state = state  # type: ignore[method-assign]
    svc._discard_orphans = svc._maybe_drained = nothing  # type: ignore[method-assign]
    svc._remote_state = None
    for _ in range(3):
        await svc.reconcile_once(None, None)  # type: ignore[arg-type]
    assert reads == ["active"]  # the first round, then the copy is fresh enough
    svc._remote_read_s -= service.REMOTE_STATE_EVERY_S
    me["state"] = "draining"
    for _ in range(3):
        await svc.reconcile_once(None, None)  # type: ignore[arg-type]
    assert reads == ["active", "draining", "draining", "draining"]


def _orphan_check_service(
    replicas: dict, status: Callable[[str], dict]
) -> tuple[FleetService, list, list]:
    """A service on a4 whose groups are led on a5, which answers `status(group)`."""
    import time

    dropped: list[str] = []
    asked: list[str] = []

    async def drop_replica(g: str) -> bool:
        dropped.append(g)
        del replicas[g]
        return True

    async def leader_of(g: str) -> str:
        return "a5"

    async def call(agent: str, op: str, args: dict) -> dict:
        assert (agent, op) == ("a5", "replica_status")
        asked.append(args["group"])
        return status(args["group"])

    svc = FleetService.__new__(FleetService)
    svc.name = "a4"
    svc.host = SimpleNamespace(
        replicas=replicas, drop_replica=drop_replica, awake_groups=lambda: list(replicas)
    )
    svc._leader_of = leader_of  # type: ignore[method-assign]
    svc._call = call  # type: ignore[method-assign]
    svc._cluster_checked_s = time.monotonic()
    svc._orphan_swept_s = float("inf")  # no sweep unless a test asks for one
    svc._orphan_scanned_s = float("-inf")
    svc._sweep_queue = []
    return svc, dropped, asked


async def test_a_fresh_replica_never_added_is_discarded_after_the_grace() -> None:
    # Found by the fault campaign (seed 7218): a move made a replica of "fkv"
    # on a4, adding it as a learner failed under cut links, a4 started
    # draining, and the fresh replica (never in any configuration) was left
    # alone by this check: a4 stayed draining with one replica for good.
    import time

    from raftfleet_agent.fleet import service
    from raftfleet_agent.raft.types import Config, ReplicaId

    old = time.monotonic() - service.FRESH_REPLICA_GRACE_S - 1

    def replica(n: int, created_s: float, *, ever_member: bool = False) -> SimpleNamespace:
        me = ReplicaId("a4", n)
        member = SimpleNamespace(
            id=me,
            ever_member=ever_member,
            is_leader=False,
            leader=None,
            term=4,
            config=Config(frozenset({me, ReplicaId("a5", 9)}) if ever_member else frozenset()),
        )
        return SimpleNamespace(member=member, created_s=created_s)

    replicas = {
        "stale": replica(1, old),  # never added: to go
        "young": replica(2, time.monotonic()),  # its move may still add it: stays
        "joining": replica(3, old),  # the leader lists it as a learner: stays
        "member": replica(4, old, ever_member=True),  # a member with a leader, not draining
    }
    replicas["member"].member.leader = ReplicaId("a5", 9)

    def status(g: str) -> dict:
        members = [{"replica_id": ["a5", 9]}, {"replica_id": ["a1", 7]}]
        if g == "joining":
            members.append({"replica_id": ["a4", 3]})  # as a learner, not yet caught up
        return {"leader": "a5", "term": 4, "members": members}

    svc, dropped, asked = _orphan_check_service(replicas, status)
    await svc._discard_orphans({"agents": {"a4": {"state": "active"}}})
    assert dropped == ["stale"]
    assert sorted(asked) == ["joining", "stale"]  # the young one is not even asked about
    assert set(replicas) == {"young", "joining", "member"}


def _follower(n: int, *, term: int = 4, in_config: bool = True) -> SimpleNamespace:
    from raftfleet_agent.raft.types import Config, ReplicaId

    me, leader = ReplicaId("a4", n), ReplicaId("a5", 9)
    voters = {leader, me} if in_config else {leader}
    member = SimpleNamespace(
        id=me,
        ever_member=True,
        is_leader=False,
        leader=leader,
        term=term,
        config=Config(frozenset(voters)),
    )
    return SimpleNamespace(member=member, created_s=0.0)


async def test_a_fresh_cluster_state_replica_is_left_to_the_move_adding_it() -> None:
    # Made by a move a moment ago; the leader does not list it until the next
    # step adds it. The periodic check must not drop it meanwhile.
    import time

    from raftfleet_agent.fleet import service

    fresh = _follower(1)
    fresh.member.ever_member, fresh.member.leader = False, None
    fresh.created_s = time.monotonic()
    status = {"leader": "a5", "term": 4, "members": [{"replica_id": ["a5", 9]}]}
    svc, dropped, asked = _orphan_check_service({service.CLUSTER: fresh}, lambda _g: status)
    svc._cluster_checked_s -= service.CLUSTER_CHECK_EVERY_S
    await svc._discard_orphans({"agents": {"a4": {"state": "draining"}}})
    assert asked == [] and dropped == []
    fresh.created_s -= service.FRESH_REPLICA_GRACE_S
    await svc._discard_orphans({"agents": {"a4": {"state": "draining"}}})
    assert asked == [service.CLUSTER] and dropped == [service.CLUSTER]  # never added after all


@pytest.mark.parametrize(
    ("leader_term", "listed", "dropped_after_the_interval"),
    [(4, False, True), (4, True, False), (3, False, False)],
    ids=["removed", "still a member", "asked a leader behind us"],
)
async def test_a_followed_cluster_state_replica_is_checked_with_its_leader_now_and_then(
    leader_term: int, listed: bool, dropped_after_the_interval: bool
) -> None:
    # Seed 9209: a1's cluster-state replica was removed while the leader's one
    # notice was lost. Quiet, it kept its leader, so a1 acted on a view frozen
    # at "draining": it proposed "drained" every round, and never saw itself
    # inactive, for minutes (the campaign's reactivate gave up).
    from raftfleet_agent.fleet import service

    members = [{"replica_id": ["a5", 9]}] + ([{"replica_id": ["a4", 1]}] if listed else [])
    status = {"leader": "a5", "term": leader_term, "members": members}
    replicas = {service.CLUSTER: _follower(1)}
    svc, dropped, asked = _orphan_check_service(replicas, lambda _g: status)
    active = {"agents": {"a4": {"state": "active"}}}
    await svc._discard_orphans(active)
    assert asked == []  # followed, not draining, checked moments ago
    svc._cluster_checked_s -= service.CLUSTER_CHECK_EVERY_S
    await svc._discard_orphans(active)
    assert asked == [service.CLUSTER]
    assert dropped == ([service.CLUSTER] if dropped_after_the_interval else [])
    await svc._discard_orphans(active)
    assert asked == [service.CLUSTER]  # and not again until the next interval


async def test_a_replica_outside_its_own_configuration_is_checked_even_when_led() -> None:
    # It appended its own removal and never heard that it was committed.
    status = {"leader": "a5", "term": 4, "members": [{"replica_id": ["a5", 9]}]}
    replicas = {"g": _follower(1, in_config=False), "h": _follower(2)}
    svc, dropped, asked = _orphan_check_service(replicas, lambda _g: status)
    await svc._discard_orphans({"agents": {"a4": {"state": "active"}}})
    assert asked == ["g"] and dropped == ["g"]


async def test_between_full_scans_only_awake_replicas_are_suspected() -> None:
    # Reading every replica each round was a third of an idle agent's CPU at
    # 10,000 groups; a quiescent follower has a leader and is in its config.
    from raftfleet_agent.fleet import service

    status = {"leader": "a5", "term": 4, "members": [{"replica_id": ["a5", 9]}]}
    replicas = {"quiet": _follower(1, in_config=False), "awake": _follower(2)}
    svc, dropped, asked = _orphan_check_service(replicas, lambda _g: status)
    svc.host.awake_groups = lambda: ["awake", "gone"]  # type: ignore[attr-defined]
    active = {"agents": {"a4": {"state": "active"}}}
    svc._orphan_scanned_s = service.time.monotonic()  # a full scan just ran
    await svc._discard_orphans(active)
    assert asked == []  # the quiet one waits for the next full scan
    replicas["awake"].member.leader = None  # lost its leader: a suspect at once
    await svc._discard_orphans(active)
    assert asked == ["awake"] and dropped == ["awake"]
    await svc._discard_orphans({"agents": {"a4": {"state": "draining"}}})
    assert asked == ["awake", "quiet"]  # draining: every replica, every round
    assert dropped == ["awake", "quiet"]


async def test_a_full_scan_comes_every_interval() -> None:
    from raftfleet_agent.fleet import service

    status = {"leader": "a5", "term": 4, "members": [{"replica_id": ["a5", 9]}]}
    replicas = {"quiet": _follower(1, in_config=False)}
    svc, dropped, asked = _orphan_check_service(replicas, lambda _g: status)
    svc.host.awake_groups = lambda: []  # type: ignore[attr-defined]
    active = {"agents": {"a4": {"state": "active"}}}
    svc._orphan_scanned_s = service.time.monotonic() - service.ORPHAN_SCAN_EVERY_S + 60
    await svc._discard_orphans(active)
    assert asked == []
    svc._orphan_scanned_s -= 60
    await svc._discard_orphans(active)
    assert asked == ["quiet"] and dropped == ["quiet"]


async def test_followed_replicas_are_checked_a_few_at_a_time_in_name_order() -> None:
    # A removed replica whose leader's repeated notices were all lost looks
    # followed and in its configuration: only this slow sweep finds it.
    import time

    from raftfleet_agent.fleet import service

    replicas = {g: _follower(n) for n, g in enumerate(["d", "b", "a", "c"], start=1)}
    replicas["e"] = _follower(5)
    replicas["e"].member.is_leader = True  # ours to lead: never asked
    replicas[service.CLUSTER] = _follower(6)  # on its own interval, not this sweep

    def status(g: str) -> dict:
        members = [{"replica_id": ["a5", 9]}]
        if g != "c":  # c was removed while a4 heard nothing
            members.append({"replica_id": list(replicas[g].member.id)})
        return {"leader": "a5", "term": 4, "members": members}

    svc, dropped, asked = _orphan_check_service(replicas, status)
    active = {"agents": {"a4": {"state": "active"}}}

    async def sweep(seconds_passed: float) -> list[str]:
        svc._orphan_swept_s = time.monotonic() - seconds_passed
        asked.clear()
        await svc._discard_orphans(active)
        return sorted(asked)

    assert await sweep(0.0) == []  # not due yet
    assert await sweep(2.5 * service.ORPHAN_SWEEP_EVERY_S) == ["a", "b"]
    assert dropped == []
    assert await sweep(2.5 * service.ORPHAN_SWEEP_EVERY_S) == ["c", "d"]
    assert dropped == ["c"]
    assert await sweep(2.5 * service.ORPHAN_SWEEP_EVERY_S) == ["a", "b"]  # round again
    assert await sweep(100 * service.ORPHAN_SWEEP_EVERY_S) == ["a", "b", "d"]  # all there are
    assert dropped == ["c"]
    replicas["bb"] = _follower(7)
    assert await sweep(2.5 * service.ORPHAN_SWEEP_EVERY_S) == ["a", "b"]  # a new pass
    replicas["ba"] = _follower(8)  # created during the pass: waits for the next one
    assert await sweep(2.5 * service.ORPHAN_SWEEP_EVERY_S) == ["bb", "d"]
    assert await sweep(2.5 * service.ORPHAN_SWEEP_EVERY_S) == ["a", "b"]
    assert await sweep(2.5 * service.ORPHAN_SWEEP_EVERY_S) == ["ba", "bb"]


async def test_the_sweep_of_an_agent_leading_everything_looks_at_a_few_names_only() -> None:
    from raftfleet_agent.fleet import service

    replicas = {f"g{n:04}": _follower(n) for n in range(1000)}
    for r in replicas.values():
        r.member.is_leader = True
    svc, _, _ = _orphan_check_service(replicas, lambda _g: {})
    svc._orphan_swept_s = 0.0  # long ago
    assert svc._sweep_picks(service.time.monotonic()) == set()
    looked = 1000 - len(svc._sweep_queue)
    assert looked == service.ORPHAN_SWEEP_MAX * service.ORPHAN_SWEEP_LOOK_PER_PICK


async def test_the_sweep_takes_at_most_its_share_in_one_round() -> None:
    from raftfleet_agent.fleet import service

    replicas = {f"g{n:02}": _follower(n) for n in range(3 * service.ORPHAN_SWEEP_MAX)}
    status = {"leader": "a5", "term": 4, "members": [{"replica_id": ["a5", 9]}]}
    svc, dropped, asked = _orphan_check_service(replicas, lambda _g: status)
    svc._orphan_swept_s = 0.0  # long ago
    await svc._discard_orphans({"agents": {"a4": {"state": "active"}}})
    assert asked == [f"g{n:02}" for n in range(service.ORPHAN_SWEEP_MAX)]
    assert dropped == asked  # none of them is listed by the leader


async def test_a_leader_that_does_not_answer_holds_the_sweep_up_for_its_budget_only(
    autojump_clock: object,
) -> None:
    import trio

    from raftfleet_agent.fleet import service

    replicas = {g: _follower(n) for n, g in enumerate(["a", "b", "c"], start=1)}
    status = {"leader": "a5", "term": 4, "members": [{"replica_id": ["a5", 9]}]}

    def answer(g: str) -> dict:
        return status

    svc, dropped, asked = _orphan_check_service(replicas, answer)
    plain_call = svc._call

    async def stopped_on_b(agent: str, op: str, args: dict) -> object:
        if args["group"] == "b":
            asked.append("b")
            await trio.sleep(3600)  # a SIGSTOPped agent: no answer, no error
        return await plain_call(agent, op, args)

    svc._call = stopped_on_b  # type: ignore[method-assign]
    svc._orphan_swept_s = 0.0  # long ago
    start = trio.current_time()
    await svc._discard_orphans({"agents": {"a4": {"state": "active"}}})
    assert trio.current_time() - start == pytest.approx(service.ORPHAN_SWEEP_BUDGET_S)
    assert asked == ["a", "b"] and dropped == ["a"]  # c waits for the next round


async def test_a_drain_that_is_reported_again_is_logged_once(caplog) -> None:  # type: ignore[no-untyped-def]
    svc = FleetService.__new__(FleetService)
    svc.name = "a4"
    svc._say_drained = Throttle(logging.getLogger("raftfleet.fleet"), 30.0)
    svc.local_counts = lambda: (0, 0)  # type: ignore[method-assign]
    proposed: list[list] = []

    async def propose(arg: list, timeout_s: float = 2.0) -> object:
        proposed.append(arg)
        return {"state": "inactive"}

    svc.propose = propose  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="raftfleet.fleet")
    for _ in range(3):
        await svc._maybe_drained({"agents": {"a4": {"state": "draining"}}})
    assert len(proposed) == 3
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("drained")]
    assert said == ["drained: this agent hosts no replica any more"]
