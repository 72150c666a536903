"""The reconciler's plan book: the same plans as a full recomputation, computed incrementally."""

from __future__ import annotations

from unittest import mock

from raftfleet_agent.fleet import plans as plans_mod
from raftfleet_agent.fleet.cluster_state import desired_cluster_voters, desired_members
from raftfleet_agent.fleet.plans import PlanBook


def _state(agents: dict[str, str], groups: int, version: int) -> dict:
    return {
        "agents": {a: {"state": "active", "zone": z} for a, z in agents.items()},
        "groups": {
            f"g{i}": {"replicas": 3, "type": "counter", "generation": i + 1, "created_ms": 0}
            for i in range(groups)
        },
        "version": version,
    }


AGENTS = {"a": "z1", "b": "z2", "c": "z3", "d": "z1"}


def _expected(st: dict, me: str) -> dict[str, tuple[str, ...]]:
    out = {}
    for g in st["groups"]:
        voters = desired_members(st, g)
        if voters[0] == me:
            out[g] = tuple(voters)
    return out


def test_plans_match_a_full_recomputation() -> None:
    st = _state(AGENTS, 200, 1)
    book = PlanBook("a", "__cluster__")
    got = {p.group: p.voters for p in book.plans(st, lead_cluster=False)}
    assert got == _expected(st, "a") and got  # "a" leads some of 200 groups
    assert all(p.leader == "a" for p in book.plans(st, lead_cluster=False))


def test_a_new_group_costs_one_placement_not_one_per_group() -> None:
    st = _state(AGENTS, 300, 1)
    book = PlanBook("a", "__cluster__")
    book.plans(st, lead_cluster=False)
    st["groups"]["new"] = {"replicas": 3, "type": "kv", "generation": 999, "created_ms": 0}
    st["version"] = 2
    real = plans_mod.lrw_members
    with mock.patch.object(plans_mod, "lrw_members", side_effect=real) as lrw:
        got = {p.group: p.voters for p in book.plans(st, lead_cluster=False)}
    assert lrw.call_count == 1
    assert got == _expected(st, "a")
    # Same version again: nothing is recomputed at all.
    with mock.patch.object(plans_mod, "lrw_members", side_effect=real) as lrw:
        book.plans(st, lead_cluster=False)
    assert lrw.call_count == 0


def test_a_changed_record_or_a_removed_group_is_noticed() -> None:
    st = _state(AGENTS, 50, 1)
    book = PlanBook("b", "__cluster__")
    book.plans(st, lead_cluster=False)
    led = sorted(_expected(st, "b"))
    st["groups"][led[0]]["replicas"] = 1  # a re-created group with another size
    st["groups"][led[0]]["generation"] = 77
    del st["groups"][led[1]]
    st["version"] = 2
    got = {p.group: p.voters for p in book.plans(st, lead_cluster=False)}
    assert got == _expected(st, "b")
    assert got[led[0]] == ("b",) and led[1] not in got


def test_a_layout_change_replans_everything_and_is_counted() -> None:
    st = _state(AGENTS, 100, 1)
    book = PlanBook("a", "__cluster__")
    book.plans(st, lead_cluster=True)
    changes = book.layout_changes
    st["agents"]["e"] = {"state": "active", "zone": "z2"}
    st["version"] = 2
    got = book.plans(st, lead_cluster=True)
    assert book.layout_changes == changes + 1
    cluster = [p for p in got if p.group == "__cluster__"]
    assert len(cluster) == 1 and cluster[0].voters == tuple(desired_cluster_voters(st))
    assert set(cluster[0].learners) == set(st["agents"]) - set(cluster[0].voters)
    assert {p.group: p.voters for p in got if p.group != "__cluster__"} == _expected(st, "a")


def test_the_full_sweep_goes_a_slice_at_a_time_and_covers_every_group() -> None:
    from raftfleet_agent.fleet.service import SWEEP_SLICES, sweep_slice_of

    groups = [f"g{i}" for i in range(3300)]
    slices = [sweep_slice_of(g) for g in groups]
    assert set(slices) == set(range(SWEEP_SLICES))  # each group in exactly one slice
    largest = max(slices.count(k) for k in range(SWEEP_SLICES))
    assert largest < 2 * len(groups) / SWEEP_SLICES  # no slice re-checks most of them
    assert [sweep_slice_of(g) for g in groups] == slices  # the same on every call
