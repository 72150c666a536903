"""The `cluster` data type: agents, groups, removed groups, and placement over them."""

from __future__ import annotations

import copy
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from raftfleet_agent.control import protocol as control
from raftfleet_agent.fleet import cluster_state as cs
from raftfleet_agent.fleet.cluster_state import (
    ClusterState,
    active_agents_per_zone,
    desired_cluster_voters,
    desired_members,
    error_code,
    load_cluster_type,
)
from raftfleet_agent.fleet.placement import lrw_members
from raftfleet_agent.raft.types import Entry, EntryKind
from raftfleet_agent.statemachine import Applier, InvalidArgument, SnapshotError, encode_command
from raftfleet_agent.statemachine.loader import is_internal_type, load_data_type

CT = ClusterState
NOW = 1_000


def run(state: dict[str, Any], *arg: Any) -> Any:
    reply, new_state = CT.command(state, list(arg))
    assert new_state is state  # mutated in place, like the built-in kv
    return reply


def refused(state: dict[str, Any], code: str, *arg: Any) -> str:
    """Run a command that must fail with `code` and leave the state untouched."""
    before = CT.snapshot(state)
    with pytest.raises(InvalidArgument) as info:
        CT.command(state, list(arg))
    message = str(info.value)
    assert error_code(message) == code, message
    assert CT.snapshot(state) == before
    return message


def fleet(*agents: tuple[str, str | None, str]) -> dict[str, Any]:
    """A state with agents given as (name, zone or None, state)."""
    state = CT.new()
    for name, zone, target in agents:
        run(state, "register", name, f"10.0.0.1:{7000 + len(state['agents'])}", f"id-{name}", NOW)
        if target in ("active", "draining"):
            run(state, "activate", name, zone, NOW)
        if target == "draining":
            run(state, "deactivate", name, NOW)
        if target == "purged":
            run(state, "purge", name, NOW)
    return state


THREE = (("a", "z1", "active"), ("b", "z2", "active"), ("c", "z3", "active"))


# -- shape and helpers -----------------------------------------------------------


def test_new_state() -> None:
    assert CT.new() == {"version": 0, "generation": 0, "agents": {}, "groups": {}, "removed": {}}
    assert CT.new() is not CT.new()


def test_error_code() -> None:
    assert error_code("not_found: no agent named 'x'") == "not_found"
    assert error_code("bogus: x") is None
    assert error_code("not_found") is None
    # Every code the agent maps is a control-protocol code, except the one
    # that only the drain worker sees.
    extra = cs.ERROR_CODES - control.ERROR_CODES
    assert extra == {cs.NOT_DRAINING}


def test_naming_rules_match_the_control_protocol() -> None:
    assert cs.GROUP_NAME_RE.pattern == control.GROUP_NAME_RE.pattern
    assert cs.AGENT_NAME_RE.pattern == control.AGENT_NAME_RE.pattern
    assert cs.REPLICAS_MAX == control.REPLICAS_MAX


def test_loads_as_a_builtin_data_type() -> None:
    loaded = load_cluster_type()
    assert loaded.name == "cluster" == ClusterState.name
    assert loaded.builtin
    assert loaded.new() == CT.new()
    by_name = load_data_type("cluster")  # registered when cluster_state is imported
    assert (by_name.name, by_name.impl.__class__, by_name.builtin) == (
        "cluster",
        ClusterState,
        True,
    )
    assert is_internal_type("cluster")


# -- register --------------------------------------------------------------------------


def test_register_new_agent() -> None:
    state = CT.new()
    assert run(state, "register", "a", "10.0.0.1:7000", "n1", 5) == {
        "new": True,
        "rejoined": False,
        "state": "inactive",
    }
    assert state["agents"]["a"] == {
        "address": "10.0.0.1:7000",
        "zone": None,
        "state": "inactive",
        "since_ms": 5,
        "node_id": "n1",
    }
    assert state["version"] == 1


def test_register_again_is_a_no_op_unless_something_changed() -> None:
    state = CT.new()
    run(state, "register", "a", "10.0.0.1:7000", "n1", 5)
    reply = run(state, "register", "a", "10.0.0.1:7000", "n1", 9)
    assert reply == {"new": False, "rejoined": False, "state": "inactive"}
    assert state["version"] == 1  # nothing changed: agents need not recompute
    assert state["agents"]["a"]["since_ms"] == 5
    run(state, "register", "a", "[::1]:7001", "n1", 10)
    assert state["agents"]["a"]["address"] == "[::1]:7001"
    assert state["version"] == 2


def test_register_with_a_new_node_id_is_a_rejoin() -> None:
    state = fleet(*THREE)
    version = state["version"]
    reply = run(state, "register", "a", "10.0.0.9:7000", "wiped", NOW + 1)
    assert reply == {"new": False, "rejoined": True, "state": "active"}
    agent = state["agents"]["a"]
    assert (agent["node_id"], agent["address"], agent["state"], agent["zone"]) == (
        "wiped",
        "10.0.0.9:7000",
        "active",
        "z1",
    )
    assert state["version"] == version + 1


@pytest.mark.parametrize(
    ("arg", "code"),
    [
        (["register", "-bad", "h:1", "n", 1], "invalid_name"),
        (["register", "a" * 64, "h:1", "n", 1], "invalid_name"),
        (["register", 7, "h:1", "n", 1], "invalid_name"),
        (["register", "a", "h", "n", 1], "invalid_argument"),
        (["register", "a", "h:0", "n", 1], "invalid_argument"),
        (["register", "a", "h:65536", "n", 1], "invalid_argument"),
        (["register", "a", ":80", "n", 1], "invalid_argument"),
        (["register", "a", "h:1", "", 1], "invalid_argument"),
        (["register", "a", "h:1", None, 1], "invalid_argument"),
        (["register", "a", "h:1", "n", -1], "invalid_argument"),
        (["register", "a", "h:1", "n", True], "invalid_argument"),
        (["register", "a", "h:1", "n", 1.5], "invalid_argument"),
        (["register", "a", "h:1", "n"], "invalid_argument"),
        (["register", "a", "h:1", "n", 1, 2, 3], "invalid_argument"),
        (["register", "a", "h:1", "n", 1, 0], "invalid_argument"),
        (["register", "a", "h:1", "n", 1, True], "invalid_argument"),
        (["register", "a", "h:1", "n", 1, "2"], "invalid_argument"),
        ([], "invalid_argument"),
        ("register", "invalid_argument"),
        ([7], "invalid_argument"),
        (["explode"], "invalid_argument"),
    ],
)
def test_malformed_commands_are_refused(arg: Any, code: str) -> None:
    state = fleet(*THREE)
    before = CT.snapshot(state)
    with pytest.raises(InvalidArgument) as info:
        CT.command(state, arg)
    assert error_code(str(info.value)) == code, str(info.value)
    assert CT.snapshot(state) == before


# -- the agent state machine ------------------------------------------------------------

# (state before, command) -> state after, or the error code.
TRANSITIONS = {
    ("inactive", "activate"): "active",
    ("inactive", "deactivate"): "not_active",
    ("inactive", "drained"): "inactive",  # a retry after the drain completed
    ("inactive", "purge"): "purged",
    ("active", "activate"): "not_inactive",
    ("active", "deactivate"): "draining",
    ("active", "drained"): "not_draining",
    ("active", "purge"): "purged",
    ("draining", "activate"): "not_inactive",
    ("draining", "deactivate"): "not_active",
    ("draining", "drained"): "inactive",
    ("draining", "purge"): "purged",
    ("purged", "activate"): "not_inactive",
    ("purged", "deactivate"): "not_active",
    ("purged", "drained"): "not_draining",
    ("purged", "purge"): "purged",  # idempotent
}


@pytest.mark.parametrize(("source", "op"), sorted(TRANSITIONS))
def test_agent_transitions(source: str, op: str) -> None:
    state = fleet(("x", "z1", source), ("y", "z2", "active"))
    arg = ["activate", "x", "z9", NOW + 5] if op == "activate" else [op, "x", NOW + 5]
    expected = TRANSITIONS[(source, op)]
    version = state["version"]
    if expected in cs.AGENT_STATES:
        run(state, *arg)
        agent = state["agents"]["x"]
        assert agent["state"] == expected
        changed = expected != source
        assert state["version"] == version + changed
        assert agent["since_ms"] == (NOW + 5 if changed else NOW)
        if op == "activate":
            assert agent["zone"] == "z9"
    else:
        refused(state, expected, *arg)


@pytest.mark.parametrize("op", ["activate", "deactivate", "drained", "purge"])
def test_unknown_agent_is_not_found(op: str) -> None:
    state = fleet(*THREE)
    arg = ["activate", "nobody", "z1", NOW] if op == "activate" else [op, "nobody", NOW]
    refused(state, "not_found", *arg)


def test_checked_deactivate_refuses_when_a_group_would_lose_a_replica() -> None:
    state = fleet(*THREE, ("d", "z4", "active"))
    run(state, "add_group", "g3", 3, "counter", NOW)
    run(state, "add_group", "g1", 1, "kv", NOW)
    # Four active agents: one may go, three are left for groups of three.
    assert run(state, "deactivate", "d", NOW + 1, True) == {"state": "draining"}
    message = refused(state, "too_few_agents", "deactivate", "c", NOW + 2, True)
    assert "leaves 2 active agent(s)" in message and "1 group(s) (g3)" in message
    assert state["agents"]["c"]["state"] == "active"
    # Once the group that needs three is gone, the same drain is fine.
    run(state, "remove_group", "g3", NOW + 3)
    assert run(state, "deactivate", "c", NOW + 4, True) == {"state": "draining"}


def test_checked_deactivate_of_the_last_active_agent_is_refused_while_groups_exist() -> None:
    state = fleet(("a", "z1", "active"))
    assert run(state, "deactivate", "a", NOW + 1, True) == {"state": "draining"}  # no group
    run(state, "drained", "a", NOW + 2)
    run(state, "activate", "a", "z1", NOW + 3)
    for i in range(7):
        run(state, "add_group", f"g{i}", 1, "counter", NOW)
    message = refused(state, "too_few_agents", "deactivate", "a", NOW + 4, True)
    assert "7 group(s) (g0, g1, g2, g3, g4 and 2 more)" in message


def test_unchecked_deactivate_applies_as_entries_written_before_the_check() -> None:
    state = fleet(*THREE)
    run(state, "add_group", "g", 3, "counter", NOW)
    # The 3-argument form is what older logs hold, and what --force sends.
    assert run(state, "deactivate", "a", NOW + 1) == {"state": "draining"}
    assert run(state, "deactivate", "b", NOW + 1, False) == {"state": "draining"}
    assert desired_members(state, "g") == ["c"]
    refused(state, "invalid_argument", "deactivate", "c", NOW + 1, "yes")
    refused(state, "invalid_argument", "deactivate", "c", NOW + 1, True, 5)


def test_checked_purge_keeps_a_dead_agent_in_placement_while_groups_would_shrink() -> None:
    state = fleet(*THREE, ("d", "z4", "draining"))
    run(state, "add_group", "g3", 3, "counter", NOW)
    before = desired_members(state, "g3")
    message = refused(state, "too_few_agents", "purge", "a", NOW + 1, True)
    assert "purging 'a' leaves 2 active agent(s)" in message and "(g3)" in message
    assert desired_members(state, "g3") == before  # 'a' still placed: g3 keeps three
    # A draining agent is out of placement already: purging it shrinks nothing.
    assert run(state, "purge", "d", NOW + 2, True) == {"purged": True, "released": []}
    # With a fourth active agent there is somewhere to rebuild: the purge goes ahead.
    run(state, "register", "e", "10.0.0.9:7009", "id-e", NOW + 3)
    run(state, "activate", "e", "z5", NOW + 3)
    assert run(state, "purge", "a", NOW + 4, True) == {"purged": True, "released": []}
    assert sorted(desired_members(state, "g3")) == ["b", "c", "e"]


def test_unchecked_purge_applies_as_entries_written_before_the_check() -> None:
    state = fleet(*THREE)
    run(state, "add_group", "g", 3, "counter", NOW)
    assert run(state, "purge", "a", NOW + 1) == {"purged": True, "released": []}
    assert run(state, "purge", "b", NOW + 1, False) == {"purged": True, "released": []}
    assert desired_members(state, "g") == ["c"]
    refused(state, "invalid_argument", "purge", "c", NOW + 1, 1)
    refused(state, "invalid_argument", "purge", "c", NOW + 1, True, 5)


def test_groups_short_without_counts_the_agents_the_caller_says_are_left() -> None:
    state = fleet(*THREE, ("d", "z4", "active"))
    run(state, "add_group", "g3", 3, "counter", NOW)
    run(state, "add_group", "g2", 2, "kv", NOW)
    assert cs.groups_short_without(state, "a") == []  # b, c, d are left
    assert cs.groups_short_without(state, "a", left=2) == ["g3"]  # one of them unreachable
    assert cs.groups_short_without(state, "a", left=1) == ["g2", "g3"]


def test_the_cluster_level_is_what_every_agent_not_purged_speaks() -> None:
    state = CT.new()
    assert cs.cluster_level(state) == cs.LEVEL  # nobody to wait for
    run(state, "register", "a", "10.0.0.1:7000", "id-a", NOW, 2)
    run(state, "register", "b", "10.0.0.1:7001", "id-b", NOW)  # older code: no level
    assert state["agents"]["a"]["speaks"] == 2 and "speaks" not in state["agents"]["b"]
    assert cs.cluster_level(state) == 1
    # b is upgraded and registers again: the level moves, and placement is told.
    version = state["version"]
    run(state, "register", "b", "10.0.0.1:7001", "id-b", NOW + 1, 3)
    assert state["version"] == version + 1 and cs.cluster_level(state) == 2
    run(state, "register", "c", "10.0.0.1:7002", "id-c", NOW, 1)
    assert cs.cluster_level(state) == 1
    run(state, "purge", "c", NOW + 2)  # a purged agent holds nobody back
    assert cs.cluster_level(state) == 2
    # The level survives a snapshot, and a malformed one is refused.
    assert CT.restore(CT.snapshot(state)) == state
    bad = copy.deepcopy(state)
    bad["agents"]["a"]["speaks"] = 0
    with pytest.raises(SnapshotError):
        CT.restore(msgpack.packb(bad))


def test_full_lifecycle_and_placement_membership() -> None:
    state = fleet(("a", None, "inactive"), ("b", "z2", "active"))
    assert active_agents_per_zone(state) == {"z2": ["b"]}
    assert run(state, "activate", "a", "z1", 10) == {"state": "active", "zone": "z1"}
    assert active_agents_per_zone(state) == {"z1": ["a"], "z2": ["b"]}
    assert run(state, "deactivate", "a", 20) == {"state": "draining"}
    assert active_agents_per_zone(state) == {"z2": ["b"]}  # draining leaves placement
    assert state["agents"]["a"]["zone"] == "z1"  # kept for the operator's view
    assert run(state, "drained", "a", 30) == {"state": "inactive"}
    refused(state, "invalid_name", "activate", "a", "bad zone", 40)
    refused(state, "invalid_name", "activate", "a", None, 40)
    run(state, "activate", "a", "z3", 40)
    assert active_agents_per_zone(state) == {"z2": ["b"], "z3": ["a"]}


# -- groups ---------------------------------------------------------------------------------


def test_add_group() -> None:
    state = fleet(*THREE)
    version = state["version"]
    reply = run(state, "add_group", "g1", 3, "counter", 50)
    # The reply carries the placement, desired leader first (the creator needs no read).
    assert reply == {"generation": 1, "members": desired_members(state, "g1")}
    assert sorted(reply["members"]) == ["a", "b", "c"]
    assert state["groups"]["g1"] == {
        "replicas": 3,
        "type": "counter",
        "created_ms": 50,
        "generation": 1,
    }
    assert state["version"] == version + 1
    assert run(state, "add_group", "g2", 1, "pkg.mod:Type", 60)["generation"] == 2
    refused(state, "already_exists", "add_group", "g1", 3, "counter", 70)


@pytest.mark.parametrize(
    ("arg", "code"),
    [
        (["g-", 3, "counter"], None),  # valid: trailing '-' is allowed
        (["-g", 3, "counter"], "invalid_name"),
        (["__cluster__", 3, "counter"], "invalid_name"),
        (["__x", 3, "counter"], "invalid_name"),
        (["g" * 129, 3, "counter"], "invalid_name"),
        (["g/1", 3, "counter"], "invalid_name"),
        (["g\n", 3, "counter"], "invalid_name"),
        ([None, 3, "counter"], "invalid_name"),
        (["g", 0, "counter"], "invalid_argument"),
        (["g", 8, "counter"], "invalid_argument"),
        (["g", True, "counter"], "invalid_argument"),
        (["g", "3", "counter"], "invalid_argument"),
        (["g", 3, ""], "invalid_type"),
        (["g", 3, 3], "invalid_type"),
        (["g", 3, "t" * 257], "invalid_type"),
        (["g", 3, "cluster"], "invalid_type"),
    ],
)
def test_add_group_validation(arg: list[Any], code: str | None) -> None:
    state = fleet(*THREE)
    if code is None:
        run(state, "add_group", *arg, NOW)
    else:
        refused(state, code, "add_group", *arg, NOW)


def test_add_group_needs_an_active_agent() -> None:
    state = fleet(("a", None, "inactive"), ("b", "z1", "draining"), ("c", "z1", "purged"))
    message = refused(state, "no_active_agent", "add_group", "g", 3, "counter", NOW)
    assert "nowhere" in message
    refused(CT.new(), "no_active_agent", "add_group", "g", 3, "counter", NOW)


def test_remove_cleanup_and_reuse() -> None:
    state = fleet(*THREE, ("d", None, "inactive"), ("e", "z1", "purged"))
    run(state, "add_group", "g", 3, "counter", 10)
    run(state, "add_group", "other", 3, "counter", 11)
    refused(state, "not_found", "remove_group", "nope", 12)
    reply = run(state, "remove_group", "g", 20)
    # Every agent that is not purged may hold a replica of it.
    assert reply == {"generation": 1, "pending": ["a", "b", "c", "d"]}
    assert "g" not in state["groups"]
    assert state["removed"]["g"] == {
        "generation": 1,
        "removed_ms": 20,
        "pending": ["a", "b", "c", "d"],
    }
    refused(state, "not_found", "remove_group", "g", 21)
    message = refused(state, "cleanup_ongoing", "add_group", "g", 3, "counter", 22)
    assert "4 agent(s)" in message

    version = state["version"]
    assert run(state, "cleaned", "a", "g", 30) == {"done": True, "released": False}
    assert state["version"] == version + 1
    assert run(state, "cleaned", "a", "g", 31) == {"done": False, "released": False}  # retry
    assert run(state, "cleaned", "b", "g", 32, 99) == {"done": False, "released": False}
    assert run(state, "cleaned", "zz", "g", 32) == {"done": False, "released": False}
    assert state["version"] == version + 1
    assert state["removed"]["g"]["pending"] == ["b", "c", "d"]
    run(state, "cleaned", "b", "g", 33, 1)
    run(state, "cleaned", "c", "g", 34)
    refused(state, "cleanup_ongoing", "add_group", "g", 3, "counter", 35)
    assert run(state, "cleaned", "d", "g", 36) == {"done": True, "released": True}
    assert state["removed"] == {}
    assert run(state, "cleaned", "d", "g", 37) == {"done": False, "released": True}
    # Reusable, with a generation above every earlier incarnation's.
    assert run(state, "add_group", "g", 5, "kv", 40)["generation"] == 3
    refused(state, "invalid_argument", "cleaned", "a", "g", 41, 0)
    refused(state, "invalid_argument", "cleaned", "a", "g", 41, "1")
    refused(state, "invalid_name", "cleaned", "a", "__cluster__", 41)


def test_a_late_cleaned_of_an_old_incarnation_is_ignored() -> None:
    state = fleet(("a", "z1", "active"), ("b", "z2", "active"))
    run(state, "add_group", "g", 1, "counter", 1)
    run(state, "remove_group", "g", 2)
    run(state, "cleaned", "a", "g", 3, 1)
    run(state, "cleaned", "b", "g", 3, 1)
    run(state, "add_group", "g", 1, "counter", 4)  # generation 2
    run(state, "remove_group", "g", 5)
    assert run(state, "cleaned", "a", "g", 6, 1) == {"done": False, "released": False}
    assert state["removed"]["g"]["pending"] == ["a", "b"]


def test_remove_with_no_agent_left_releases_the_name_at_once() -> None:
    state = fleet(("a", "z1", "active"))
    run(state, "add_group", "g", 1, "counter", 1)
    run(state, "purge", "a", 2)
    assert run(state, "remove_group", "g", 3) == {"generation": 1, "pending": []}
    assert state["removed"] == {}


def test_purge_removes_from_placement_and_from_pending_cleanups() -> None:
    state = fleet(*THREE, ("d", "z1", "active"))
    run(state, "add_group", "h", 3, "counter", 1)
    run(state, "remove_group", "h", 2)
    for agent in ("a", "b", "c"):
        run(state, "cleaned", agent, "h", 3)
    assert state["removed"]["h"]["pending"] == ["d"]
    run(state, "add_group", "k", 3, "counter", 3)
    run(state, "remove_group", "k", 4)
    names = [f"g{i}" for i in range(20)]
    for name in names:
        run(state, "add_group", name, 3, "counter", 4)
    placed_on_d = [g for g in names if "d" in desired_members(state, g)]
    assert 3 <= len(placed_on_d) <= 17  # d shares zone z1 with a: about half

    reply = run(state, "purge", "d", 5)
    assert reply == {"purged": True, "released": ["h"]}
    assert state["removed"] == {"k": {"generation": 2, "removed_ms": 4, "pending": ["a", "b", "c"]}}
    assert active_agents_per_zone(state) == {"z1": ["a"], "z2": ["b"], "z3": ["c"]}
    assert all(sorted(desired_members(state, g)) == ["a", "b", "c"] for g in names)
    assert run(state, "purge", "d", 6) == {"purged": False, "released": []}

    # A purged agent that comes back joins again as inactive.
    version = state["version"]
    reply = run(state, "register", "d", "10.0.0.4:7000", "id-d", 7)
    assert reply == {"new": False, "rejoined": False, "state": "inactive"}
    assert state["agents"]["d"]["since_ms"] == 7
    assert state["version"] == version + 1
    # ... and is not asked to clean up what was removed while it was purged.
    assert state["removed"]["k"]["pending"] == ["a", "b", "c"]


def test_a_rejoined_agent_has_nothing_to_clean_up() -> None:
    state = fleet(*THREE)
    run(state, "add_group", "g", 3, "counter", 1)
    run(state, "remove_group", "g", 2)
    run(state, "register", "a", "10.0.0.1:7000", "new-disk", 3)
    assert state["removed"]["g"]["pending"] == ["b", "c"]
    run(state, "register", "b", "10.0.0.1:7001", "new-disk-b", 3)
    run(state, "register", "c", "10.0.0.1:7002", "new-disk-c", 3)
    assert state["removed"] == {}


# -- placement over the state ---------------------------------------------------------------


def test_desired_members_use_active_agents_only_and_span_zones() -> None:
    state = fleet(
        ("a1", "z1", "active"),
        ("a2", "z1", "active"),
        ("a3", "z1", "active"),
        ("b1", "z2", "active"),
        ("c1", "z3", "active"),
        ("d1", "z4", "draining"),
        ("e1", None, "inactive"),
        ("f1", "z5", "purged"),
    )
    names = [f"g{i}" for i in range(40)]
    for name in names:
        run(state, "add_group", name, 3, "counter", 1)
    run(state, "add_group", "big", 7, "counter", 1)
    zone_of = {"a1": "z1", "a2": "z1", "a3": "z1", "b1": "z2", "c1": "z3"}
    for name in names:
        members = desired_members(state, name)
        assert len(members) == 3
        assert {zone_of[m] for m in members} == {"z1", "z2", "z3"}  # one per zone
        assert members == lrw_members(active_agents_per_zone(state), name, 3)
    assert sorted(desired_members(state, "big")) == sorted(zone_of)  # only 5 active
    assert desired_members(state, "unknown") == []
    # Every group has exactly one desired leader, an active agent.
    led: dict[str, list[str]] = {agent: [] for agent in state["agents"]}
    for g in state["groups"]:
        led[desired_members(state, g)[0]].append(g)
    assert led["d1"] == led["e1"] == led["f1"] == []
    assert sorted(g for gs in led.values() for g in gs) == sorted([*names, "big"])
    for agent, groups in led.items():
        for g in groups:
            assert lrw_members(active_agents_per_zone(state), g, 1) == [agent]


def test_desired_members_follow_the_state() -> None:
    state = fleet(("a", "z1", "active"), ("b", "z2", "active"))
    run(state, "add_group", "g", 3, "counter", 1)
    assert sorted(desired_members(state, "g")) == ["a", "b"]
    run(state, "register", "c", "h:1", "n", 2)
    assert sorted(desired_members(state, "g")) == ["a", "b"]  # inactive: not placed
    run(state, "activate", "c", "z3", 3)
    assert sorted(desired_members(state, "g")) == ["a", "b", "c"]
    run(state, "deactivate", "a", 4)
    assert sorted(desired_members(state, "g")) == ["b", "c"]
    assert desired_cluster_voters(state) == lrw_members(
        {"z2": ["b"], "z3": ["c"]}, "__cluster__", 5
    )


# -- queries ----------------------------------------------------------------------------------


def test_queries() -> None:
    state = fleet(*THREE, ("d", None, "inactive"))
    run(state, "add_group", "g", 2, "counter", 1)
    run(state, "add_group", "h", 1, "counter", 1)
    run(state, "remove_group", "h", 2)
    assert CT.query(state, "version") == CT.query(state, ["version"]) == state["version"]
    assert CT.query(state, ["snapshot"]) == state
    assert CT.query(state, "agents") == state["agents"]
    assert list(CT.query(state, ["agents"])) == ["a", "b", "c", "d"]
    assert CT.query(state, ["groups"]) == {"g": state["groups"]["g"]}
    assert CT.query(state, ["removed"]) == state["removed"]
    assert CT.query(state, ["group", "g"]) == state["groups"]["g"]
    assert CT.query(state, ["group", "h"]) is None
    assert CT.query(state, ["active_per_zone"]) == {"z1": ["a"], "z2": ["b"], "z3": ["c"]}
    assert CT.query(state, ["desired_members", "g"]) == desired_members(state, "g")
    assert CT.query(state, "cluster_voters") == desired_cluster_voters(state)
    for bad in (["nope"], "nope", ["group"], ["group", 3], None, {"op": "groups"}):
        with pytest.raises(InvalidArgument):
            CT.query(state, bad)


def _clear_deeply(value: Any) -> None:
    """Empty every container inside `value`, innermost first."""
    if isinstance(value, dict | list):
        for inner in list(value.values() if isinstance(value, dict) else value):
            _clear_deeply(inner)
        value.clear()


def test_query_replies_do_not_alias_the_state() -> None:
    state = fleet(*THREE)
    run(state, "add_group", "g", 2, "counter", 1)
    run(state, "add_group", "h", 2, "counter", 1)
    run(state, "remove_group", "h", 2)
    before = copy.deepcopy(state)
    for arg in ("snapshot", "agents", "groups", "removed", "active_per_zone", ["group", "g"]):
        _clear_deeply(CT.query(state, arg))
    assert state == before


# -- snapshots and determinism -------------------------------------------------------------


def test_snapshot_round_trip() -> None:
    state = fleet(*THREE, ("d", "z1", "draining"), ("e", None, "purged"))
    run(state, "add_group", "g", 3, "counter", 1)
    run(state, "add_group", "h", 3, "kv", 1)
    run(state, "remove_group", "h", 2)
    data = CT.snapshot(state)
    restored = CT.restore(data)
    assert restored == state
    assert CT.snapshot(restored) == data
    run(restored, "cleaned", "a", "h", 3)
    run(state, "cleaned", "a", "h", 3)
    assert CT.snapshot(restored) == CT.snapshot(state)


def test_snapshot_bytes_do_not_depend_on_insertion_order() -> None:
    one, two = CT.new(), CT.new()
    run(one, "register", "a", "h:1", "n1", 1)
    run(one, "register", "b", "h:2", "n2", 1)
    run(two, "register", "b", "h:2", "n2", 1)
    run(two, "register", "a", "h:1", "n1", 1)
    assert list(one["agents"]) != list(two["agents"])
    assert CT.snapshot(one) == CT.snapshot(two)


def _valid_snapshot() -> dict[str, Any]:
    state = fleet(*THREE)
    run(state, "add_group", "g", 3, "counter", 1)
    run(state, "add_group", "h", 3, "counter", 1)
    run(state, "remove_group", "h", 2)
    return msgpack.unpackb(CT.snapshot(state))


@pytest.mark.parametrize(
    "damage",
    [
        lambda s: s.pop("version"),
        lambda s: s.update(extra=1),
        lambda s: s.update(version=-1),
        lambda s: s.update(agents=[]),
        lambda s: s["agents"]["a"].update(state="sleeping"),
        lambda s: s["agents"]["a"].update(zone=None),  # active without a zone
        lambda s: s["agents"]["a"].pop("node_id"),
        lambda s: s["agents"].update({"bad name": s["agents"]["a"]}),
        lambda s: s["groups"]["g"].update(replicas=0),
        lambda s: s["groups"]["g"].update(generation=99),  # above the counter
        lambda s: s["removed"]["h"].update(pending=[]),
        lambda s: s["removed"]["h"].update(pending=[1]),
        lambda s: s["removed"].update(g=s["removed"]["h"]),  # both live and removed
    ],
)
def test_restore_refuses_malformed_snapshots(damage: Any) -> None:
    top = _valid_snapshot()
    CT.restore(msgpack.packb(top))  # the undamaged one is fine
    damage(top)
    with pytest.raises(SnapshotError):
        CT.restore(msgpack.packb(top))


@pytest.mark.parametrize("data", [b"", b"\xc1", msgpack.packb([1, 2]), msgpack.packb(None)])
def test_restore_refuses_garbage(data: bytes) -> None:
    with pytest.raises(SnapshotError):
        CT.restore(data)


AGENTS = ["a", "b", "c", "d", "e"]
GROUPS = ["g", "h", "k"]
commands = st.one_of(
    st.tuples(
        st.just("register"),
        st.sampled_from(AGENTS),
        st.sampled_from(["h:1", "h:2"]),
        st.sampled_from(["n1", "n2"]),
    ),
    st.tuples(st.just("activate"), st.sampled_from(AGENTS), st.sampled_from(["z1", "z2", "z3"])),
    st.tuples(st.sampled_from(["deactivate", "drained", "purge"]), st.sampled_from(AGENTS)),
    st.tuples(
        st.just("add_group"),
        st.sampled_from(GROUPS),
        st.integers(0, 4),
        st.sampled_from(["counter", ""]),
    ),
    st.tuples(st.just("remove_group"), st.sampled_from(GROUPS)),
    st.tuples(
        st.just("cleaned"),
        st.sampled_from(AGENTS),
        st.sampled_from(GROUPS),
    ),
)


def _apply_all(state: dict[str, Any], ops: list[tuple[Any, ...]], start: int = 0) -> list[Any]:
    """Apply ops (now_ms = position), checking the per-command invariants; the replies."""
    replies = []
    for i, op in enumerate(ops, start):
        before = CT.snapshot(state)
        version = state["version"]
        try:
            reply = run(state, *op, i)
        except InvalidArgument as exc:
            assert error_code(str(exc)) is not None, str(exc)
            assert CT.snapshot(state) == before  # a refused command changes nothing
            replies.append(("error", str(exc)))
            continue
        changed = CT.snapshot(state) != before
        # version moves by one exactly when something changed.
        assert state["version"] == version + changed, (op, reply)
        msgpack.packb(reply)  # replies are plain msgpack data
        replies.append(reply)
        # Structural invariants hold after every command.
        CT.restore(CT.snapshot(state))
        for entry in state["removed"].values():
            assert entry["pending"] == sorted(entry["pending"])
            assert all(state["agents"][p]["state"] != "purged" for p in entry["pending"])
    return replies


@settings(max_examples=150, deadline=None)
@given(st.lists(commands, max_size=40), st.integers(0, 40))
def test_same_commands_give_the_same_bytes(ops: list[tuple[Any, ...]], cut: int) -> None:
    one, two = CT.new(), CT.new()
    replies_one = _apply_all(one, ops)
    replies_two = _apply_all(two, ops)
    assert replies_one == replies_two
    assert CT.snapshot(one) == CT.snapshot(two)
    # A replica that installs a snapshot midway ends in the same place.
    cut = min(cut, len(ops))
    three = CT.new()
    _apply_all(three, ops[:cut])
    three = CT.restore(CT.snapshot(three))
    assert _apply_all(three, ops[cut:], cut) == replies_one[cut:]
    assert CT.snapshot(three) == CT.snapshot(one)


# -- through the applier ---------------------------------------------------------------------


def test_through_the_applier() -> None:
    loaded = load_cluster_type()
    applier = Applier(loaded)
    seq = 0

    def apply(*arg: Any) -> Any:
        nonlocal seq
        seq += 1
        entry = Entry(
            term=1,
            index=applier.applied_index + 1,
            kind=EntryKind.NORMAL,
            data=encode_command("agent-a", seq, 1_000 + seq, list(arg)),
        )
        return applier.apply(entry)

    assert apply("register", "a", "h:1", "n1", 1).reply["new"] is True
    result = apply("add_group", "g", 3, "counter", 2)
    assert not result.ok
    assert result.error == "invalid_argument"
    assert error_code(result.message) == "no_active_agent"
    assert apply("activate", "a", "z1", 3).ok
    assert apply("add_group", "g", 3, "counter", 4).reply["generation"] == 1
    assert applier.query(["desired_members", "g"]).reply == ["a"]
    copy_ = Applier.from_snapshot(loaded, applier.snapshot())
    assert copy_.state == applier.state
    assert copy_.snapshot() == applier.snapshot()
