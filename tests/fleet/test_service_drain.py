"""A draining agent that no longer holds a cluster-state replica still finishes its drain."""

from __future__ import annotations

import logging
from types import SimpleNamespace

from raftfleet_agent.fleet.service import FleetError, FleetService


async def test_orphans_are_checked_before_the_drain_is_reported_without_local_state() -> None:
    # Found by the fault campaign (seed 7002): a draining agent lost its
    # cluster-state replica early, then a replica of another group was removed
    # while its links were cut, and it never heard of it. The round without
    # local state only asked "do I host nothing?" — never, so it stayed
    # draining. It must check its replicas against their groups first.
    svc = FleetService.__new__(FleetService)
    svc.host = SimpleNamespace(replicas={"g": object()})  # no "__cluster__" replica
    svc.local_state = lambda: None  # type: ignore[method-assign]
    remote = {"agents": {"a3": {"state": "draining"}}}
    calls: list[tuple] = []

    async def state(**_kw: object) -> dict:
        return remote

    async def discard_orphans(st: dict) -> None:
        calls.append(("discard", st))
        svc.host.replicas.clear()  # the stale replica was not in its group any more

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
    svc._unreachable_said = float("-inf")

    async def state(**_kw: object) -> dict:
        raise FleetError("unavailable", "cluster state unreachable: no leader")

    svc.state = state  # type: ignore[method-assign]
    caplog.set_level(logging.INFO, logger="raftfleet.fleet")
    for _ in range(3):
        await svc.reconcile_once(None, None)  # type: ignore[arg-type]
    said = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert said == ["cluster state unreachable: no leader"]  # once, not every round
