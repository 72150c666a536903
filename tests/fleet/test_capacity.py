"""The room checks on their own: pure functions of a state and who is reachable."""

from __future__ import annotations

from raftfleet_agent.fleet import capacity
from raftfleet_agent.fleet import cluster_state as cs

NOW = 1_000


def _state(n_active: int, replicas: int = 3) -> dict:
    st = cs.ClusterState.new()
    for i in range(1, n_active + 1):
        name = f"a{i}"
        cs.ClusterState.command(st, ["register", name, f"10.0.0.{i}:7000", name, NOW, cs.LEVEL])
        cs.ClusterState.command(st, ["activate", name, f"z{i}", NOW])
    cs.ClusterState.command(st, ["add_group", "g", replicas, "counter", NOW])
    return st


def _reaching(*down: str) -> capacity.Reachable:
    return lambda agent: agent not in down


def test_room_left_counts_only_reachable_active_agents_besides_the_leaver() -> None:
    st = _state(4)
    assert capacity.reachable_active_left(st, "a1", _reaching()) == 3
    assert capacity.reachable_active_left(st, "a1", _reaching("a2", "a1")) == 2


def test_leaving_is_refused_only_when_a_group_would_be_short() -> None:
    assert capacity.shrink_on_leave(_state(4), "a1") is None
    text = capacity.shrink_on_leave(_state(3), "a1")
    assert text is not None and "leaves 2 active agent(s)" in text and "(g)" in text


def test_a_drain_counting_on_a_down_agent_names_it() -> None:
    st = _state(4)
    assert capacity.unreachable_room(st, "a1", _reaching()) is None
    assert capacity.unreachable_room(st, "a1", _reaching("a3")) is not None
    text = capacity.unreachable_room(st, "a1", _reaching("a3"))
    assert "a3 active but unreachable from here" in text and "leaves 2" in text  # type: ignore[operator]
    # Room even without the down agent: nothing to say.
    assert capacity.unreachable_room(_state(5), "a1", _reaching("a3")) is None


def test_a_purge_is_held_only_for_an_active_agent_without_reachable_room() -> None:
    st = _state(4)
    assert capacity.purge_held(st, "a4", _reaching("a4")) is None
    held = capacity.purge_held(st, "a4", _reaching("a4", "a3"))
    assert held is not None and held.startswith("purging 'a4' leaves 2")
    cs.ClusterState.command(st, ["deactivate", "a4", NOW])
    assert capacity.purge_held(st, "a4", _reaching("a4", "a3")) is None  # draining: not held
