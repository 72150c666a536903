"""The fleet with real agents: zones, placement, rebalancing, purge, drain (issue: the fleet)."""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from raftfleet_cli.client import ControlError
from raftfleet_cli.main import main as cli_main
from tests.procs import AgentProc, CounterLoad, agents, connected_to_all, wait_for

pytestmark = pytest.mark.slow

FAST = {"RAFTFLEET_RECONCILE_INTERVAL_S": "1"}


def _activate(procs: list[AgentProc], zones: list[str]) -> None:
    wait_for(lambda: connected_to_all(procs), 20, "agents to connect")
    for p, z in zip(procs, zones, strict=True):
        wait_for(lambda p=p, z=z: p.call("activate", zone=z), 20, f"{p.name} to activate")


def _status(a: AgentProc, group: str) -> dict:
    return a.call("group_status", name=group)  # type: ignore[return-value]


def _rebuilt(view: AgentProc, groups: list[str], gone: str) -> Callable[[], bool]:
    """A condition: as `view` sees them, every group has 3 members, none on `gone`."""

    def rebuilt() -> bool:
        for g in groups:
            members = {m["agent"] for m in _status(view, g)["members"]}
            if gone in members or len(members) != 3:
                return False
        return True

    return rebuilt


def _all_converged(a: AgentProc, groups: list[str]) -> bool:
    return all(_status(a, g)["converged"] for g in groups)


def _counts(a: AgentProc) -> tuple[dict[str, int], dict[str, int]]:
    nodes = a.call("nodes")["nodes"]  # type: ignore[index]
    return (
        {n["name"]: n["replicas"] or 0 for n in nodes if n["state"] == "active"},
        {n["name"]: n["leaders"] or 0 for n in nodes if n["state"] == "active"},
    )


def _cli_shows_leaderless(via: AgentProc, group: str, keeper: str, lost: list[str]) -> None:
    """`raftfleet group status` shows an operator what the agent knows of a lost majority."""
    env = {k: None for k in os.environ if k.startswith("RAFTFLEET_")}
    env["RAFTFLEET_ADDR"] = f"unix://{via.sock}"
    runner = CliRunner()
    shown = runner.invoke(cli_main, ["-o", "json", "group", "status", group], env=env)
    assert shown.exit_code == 0, shown.output
    doc = json.loads(shown.stdout)
    assert doc["leader"] is None and doc["majority_lost"] is True
    assert sorted(doc["lost"]) == sorted(lost)
    assert keeper in {r["agent"] for r in doc["replicas"]}
    table = runner.invoke(cli_main, ["group", "status", group], env=env)
    assert table.exit_code == 0, table.output
    assert "majority lost" in table.stdout and "each replica's own view" in table.stdout


def test_seed_readme_example(tmp_path: Path) -> None:
    with agents(tmp_path, 4, first_octet=111) as procs:
        _activate(procs, ["zone1", "zone2", "zone1", "zone2"])
        groups = [f"consensus{i}" for i in range(1, 6)]
        for g in groups:
            procs[0].call("group_create", name=g, replicas=3, type="counter", timeout=30)
        assert procs[0].call("query", group="consensus1", arg="get")["reply"] == 0
        assert procs[1].call("command", group="consensus1", arg="inc")["reply"] == 0
        assert procs[2].call("query", group="consensus1", arg="get")["reply"] == 1
        for g in groups:
            st = _status(procs[3], g)
            assert {m["zone"] for m in st["members"]} == {"zone1", "zone2"}, st
            assert len(st["members"]) == 3
        listed = procs[1].call("group_list")["groups"]
        assert [x["name"] for x in listed] == groups
        assert all(x["leader"] for x in listed)
        with pytest.raises(ControlError) as e:
            procs[0].call("group_create", name="consensus1")
        assert e.value.code == "already_exists"


@pytest.mark.parametrize(
    ("n_agents", "zones"), [(3, ["z1", "z2", "z3"]), (4, ["z1", "z2", "z1", "z2"])]
)
def test_sixty_groups_spread_evenly(tmp_path: Path, n_agents: int, zones: list[str]) -> None:
    with agents(tmp_path, n_agents, first_octet=121, env=FAST) as procs:
        _activate(procs, zones)
        procs[0].call("group_create", name="busy", timeout=30)
        load = CounterLoad(procs[1], ["busy"], max_seconds=120).start()
        groups = [f"g{i:02d}" for i in range(60)]
        try:
            for i, g in enumerate(groups):
                procs[i % n_agents].call("group_create", name=g, timeout=30)
            wait_for(lambda: _all_converged(procs[0], groups), 60, "placement to converge")
        finally:
            load.stop()
        replicas, leaders = _counts(procs[0])
        avg_r = sum(replicas.values()) / n_agents
        avg_l = sum(leaders.values()) / n_agents
        assert max(replicas.values()) <= 2 * avg_r, replicas
        assert max(leaders.values()) <= 2 * avg_l, leaders
        load.check_counters(procs[2])


def test_scale_out_and_back_in_with_clients_running(tmp_path: Path) -> None:
    with agents(tmp_path, 6, first_octet=131, env=FAST) as procs:
        first, second = procs[:3], procs[3:]
        _activate(first, ["z1", "z2", "z3"])
        groups = [f"s{i}" for i in range(8)]
        for g in groups:
            first[0].call("group_create", name=g, timeout=30)
        load = CounterLoad(first[0], groups, max_seconds=240).start()
        try:
            for p, z in zip(second, ["z1", "z2", "z3"], strict=True):
                p.call("activate", zone=z)
            wait_for(lambda: _all_converged(first[0], groups), 90, "rebalancing onto new agents")
            placed = {m["agent"] for g in groups for m in _status(first[0], g)["members"]}
            assert placed & {p.name for p in second}, "no replica moved to the new agents"
            for p in second:
                p.call("deactivate")
            for p in second:
                wait_for(lambda p=p: p.call("status")["replicas"] == 0, 90, f"{p.name} to drain")
            wait_for(lambda: _all_converged(first[0], groups), 60, "placement back on 3 agents")
        finally:
            load.stop()
        placed = {m["agent"] for g in groups for m in _status(first[0], g)["members"]}
        assert placed <= {p.name for p in first}
        assert load.acked[groups[0]] > 0
        load.check_counters(first[1])
        # Clients may wait through an election, never much longer.
        assert load.longest_error_s <= 3.0, (load.longest_error_s, load.errors[:5])


def test_dead_agent_is_purged_and_its_replicas_rebuilt(tmp_path: Path) -> None:
    env = {**FAST, "RAFTFLEET_PURGE_WINDOW_S": "4"}
    with agents(tmp_path, 4, first_octet=141, env=env) as procs:
        _activate(procs, ["z1", "z2", "z3", "z1"])
        groups = [f"p{i}" for i in range(6)]
        for g in groups:
            procs[0].call("group_create", name=g, timeout=30)
        victim = procs[3]
        hosted = [
            g
            for g in groups
            if any(m["agent"] == victim.name for m in _status(procs[0], g)["members"])
        ]
        assert hosted, "the victim hosts nothing; placement changed?"
        victim.kill()
        for g in groups:  # groups keep serving with a majority left
            wait_for(
                lambda g=g: procs[1].call("command", group=g, arg="inc", timeout_s=1),
                10,
                f"{g} to serve",
            )

        wait_for(_rebuilt(procs[0], groups, victim.name), 60, "replicas rebuilt on the survivors")
        nodes = {n["name"]: n for n in procs[0].call("nodes")["nodes"]}
        assert nodes[victim.name]["state"] == "inactive"
        victim.start()
        wait_for(lambda: victim.call("status")["state"] == "inactive", 20, "the victim to rejoin")
        # Its stale replicas learn they were removed; nothing is disturbed.
        wait_for(lambda: victim.call("status")["replicas"] == 0, 30, "stale replicas discarded")
        for g in groups:
            st = _status(procs[1], g)
            assert victim.name not in {m["agent"] for m in st["members"]}
            procs[2].call("command", group=g, arg="inc", timeout_s=1)


def test_dead_agent_stays_placed_until_there_is_room_to_rebuild(tmp_path: Path) -> None:
    # Three active agents and groups of three: purging a dead one would shrink
    # every group to two replicas (fault campaign, seed 7815). The fleet keeps
    # it placed, says so, and purges it once a fourth agent is active.
    env = {**FAST, "RAFTFLEET_PURGE_WINDOW_S": "2"}
    with agents(tmp_path, 4, first_octet=231, env=env) as procs:
        live, spare = procs[:3], procs[3]
        _activate(live, ["z1", "z2", "z3"])
        groups = ["h0", "h1"]
        for g in groups:
            procs[0].call("group_create", name=g, timeout=30)
        victim = live[2]
        victim.kill()

        def held() -> bool:
            return any(f"not purging {victim.name}" in p.log() for p in live[:2])

        wait_for(held, 30, "the cluster leader to hold the purge")

        def held_by() -> list[list[str]]:
            return [p.call("status")["cluster"]["purges_held"] for p in live[:2]]

        wait_for(lambda: [victim.name] in held_by(), 10, "status to show the purge held")
        nodes = {n["name"]: n for n in procs[0].call("nodes")["nodes"]}
        assert nodes[victim.name]["state"] == "active" and not nodes[victim.name]["purged"]
        # How long it has been gone, as this agent saw it; nothing for the living.
        assert nodes[victim.name]["down_s"] > 0 and not nodes[victim.name]["reachable"]
        assert nodes[live[1].name]["down_s"] is None
        for g in groups:
            assert victim.name in {m["agent"] for m in _status(procs[0], g)["members"]}
            procs[1].call("command", group=g, arg="inc", timeout_s=1)  # two of three serve
        # A drain now would count on the dead agent: refused, naming it.
        with pytest.raises(ControlError) as info:
            live[1].call("deactivate")
        assert info.value.code == "too_few_agents" and victim.name in str(info.value)
        wait_for(lambda: spare.call("activate", zone="z4"), 20, "the spare to activate")

        wait_for(_rebuilt(procs[0], groups, victim.name), 60, "replicas rebuilt on the spare")
        for g in groups:
            assert {m["agent"] for m in _status(procs[0], g)["members"]} == {
                live[0].name,
                live[1].name,
                spare.name,
            }
        nodes = {n["name"]: n for n in procs[0].call("nodes")["nodes"]}
        assert nodes[victim.name]["purged"]
        wait_for(lambda: held_by() == [[], []], 10, "no purge held any more")


def test_groups_stay_quiet_while_an_agent_is_down_and_catch_it_up_after(tmp_path: Path) -> None:
    # A dead agent must not keep every group it shares awake (heartbeats and
    # ticks for hours while its purge waits); back, it is caught up at once.
    with agents(tmp_path, 3, first_octet=241, env=FAST) as procs:
        _activate(procs, ["z1", "z2", "z3"])
        groups = [f"q{i}" for i in range(6)]
        for g in groups:
            procs[0].call("group_create", name=g, timeout=30)
        victim, live = procs[2], procs[:2]
        victim.kill()
        for g in groups:  # a command each while it is down: the victim misses them
            wait_for(
                lambda g=g: live[0].call("command", group=g, arg="inc", timeout_s=1),
                15,
                f"{g} to serve",
            )

        def awake() -> list[int]:
            return [p.call("status")["loop"]["awake"] for p in live]

        wait_for(lambda: awake() == [0, 0], 30, "every group on the survivors to go quiet")
        victim.start()
        for g in groups:
            wait_for(
                lambda g=g: victim.call("query", group=g, arg="get", stale=True)["reply"] == 1,
                20,
                f"the victim's replica of {g} to catch up",
            )
        wait_for(lambda: awake() == [0, 0], 30, "the groups to go quiet again")


def test_forget_rebuilds_a_dead_agents_replicas_without_waiting_for_the_purge(
    tmp_path: Path,
) -> None:
    with agents(tmp_path, 4, first_octet=246, env=FAST) as procs:  # default 10 min window
        _activate(procs, ["z1", "z2", "z3", "z4"])
        groups = [f"f{i}" for i in range(6)]
        for g in groups:
            procs[0].call("group_create", name=g, timeout=30)
        victim = procs[3]
        with pytest.raises(ControlError) as info:
            procs[0].call("forget", agent=victim.name)  # alive: drain it instead
        assert info.value.code == "invalid_argument" and "drain" in str(info.value)
        victim.kill()
        wait_for(
            lambda: procs[0].call("forget", agent=victim.name)["state"] == "purged",
            20,
            "forget to be accepted once the victim is unreachable",
        )

        wait_for(_rebuilt(procs[0], groups, victim.name), 60, "replicas rebuilt on the three live")
        nodes = {n["name"]: n for n in procs[1].call("nodes")["nodes"]}
        assert nodes[victim.name]["purged"]


def test_delete_then_recreate_same_name(tmp_path: Path) -> None:
    with agents(tmp_path, 3, first_octet=151, env=FAST) as procs:
        _activate(procs, ["z1", "z2", "z3"])
        procs[0].call("group_create", name="phoenix", type="kv", timeout=30)
        procs[1].call("command", group="phoenix", arg=["put", "k", "v1"])
        procs[2].call("group_delete", name="phoenix")
        with pytest.raises(ControlError) as e:
            procs[0].call("query", group="phoenix", arg=["get", "k"])
        assert e.value.code in ("unknown_group", "no_leader")

        def recreate() -> bool:
            try:
                procs[0].call("group_create", name="phoenix", type="kv", timeout=30)
            except ControlError as e:
                if e.code == "cleanup_ongoing":
                    return False
                raise
            return True

        wait_for(recreate, 30, "the name to be reusable")
        assert procs[1].call("query", group="phoenix", arg=["get", "k"])["reply"] is None


def test_drain_of_a_hundred_replicas_is_fast(tmp_path: Path) -> None:
    with agents(tmp_path, 4, first_octet=161, env=FAST) as procs:
        _activate(procs, ["z1", "z2", "z3", "z4"])
        groups = [f"d{i:03d}" for i in range(134)]
        for i, g in enumerate(groups):
            procs[i % 4].call("group_create", name=g, timeout=30)
        victim = procs[3]
        replicas = victim.call("status")["replicas"]
        assert replicas >= 90, replicas
        # A watch that times out names what is still here (the first ten).
        with victim.client() as c, pytest.raises(ControlError) as stuck:
            list(c.stream("drain_watch", timeout=10, timeout_s=0.3))
        assert stuck.value.code == "timeout"
        assert stuck.value.details["replicas"] == replicas
        named = stuck.value.details["groups_left"]
        assert len(named) == 10 and named == sorted(named) and set(named) <= set(groups)
        t0 = time.monotonic()
        victim.call("deactivate")
        with victim.client() as c:
            events = list(c.stream("drain_watch", timeout=120, timeout_s=120))
        elapsed = time.monotonic() - t0
        assert events and events[0]["replicas"] > 0
        progress = [e for e in events if e["event"] == "progress"]
        assert progress and all(type(e["moves_in_flight"]) is int for e in progress), events
        assert victim.call("status")["replicas"] == 0
        assert victim.call("status")["state"] in ("inactive", "draining")
        assert elapsed < 60, f"draining {replicas} replicas took {elapsed:.1f} s"
        for g in groups[:10]:
            procs[0].call("command", group=g, arg="inc", timeout_s=1)


def test_lost_majority_is_reported_and_force_recovered(tmp_path: Path) -> None:
    env = {**FAST, "RAFTFLEET_PURGE_WINDOW_S": "3"}
    with agents(tmp_path, 5, first_octet=171, env=env) as procs:
        _activate(procs, ["z1", "z2", "z3", "z1", "z2"])
        # The cluster state itself must survive losing two agents: five voters first.
        wait_for(
            lambda: len(procs[0].call("status")["cluster"]["voters"] or []) == 5,
            30,
            "the cluster state to have five voters",
        )
        procs[0].call("group_create", name="fragile", timeout=30)
        procs[0].call("command", group="fragile", arg="inc")
        st = _status(procs[0], "fragile")
        members = [m["agent"] for m in st["members"]]
        by_name = {p.name: p for p in procs}
        doomed = [by_name[a] for a in members if a != procs[0].name][:2]
        if len(doomed) < 2:
            doomed = [by_name[a] for a in members[1:]]
        survivor_view = next(p for p in procs if p not in doomed)
        keeper = next(by_name[a] for a in members if by_name[a] not in doomed)
        wait_for(
            lambda: keeper.call("query", group="fragile", arg="get", stale=True)["reply"] == 1,
            10,
            "the surviving replica to apply the first command",
        )
        for p in doomed:
            p.kill()

        def lost() -> dict | None:
            s = _status(survivor_view, "fragile")
            return s if s.get("majority_lost") else None

        st = wait_for(lost, 20, "the lost majority to be reported")
        assert sorted(st["lost"]) == sorted(p.name for p in doomed)
        # Each reachable replica's own view: the keeper's, with no leader to follow.
        views = {v["reported_by"]: v for v in st["replicas"]}
        assert keeper.name in views and views[keeper.name]["leader"] is None
        assert views[keeper.name]["role"] in ("follower", "candidate", "pre_candidate")
        _cli_shows_leaderless(survivor_view, "fragile", keeper.name, [p.name for p in doomed])
        res = survivor_view.call("group_recover", name="fragile", force=True, timeout=30)
        assert "lost" in res["warning"]
        wait_for(
            lambda: survivor_view.call("command", group="fragile", arg="inc", timeout_s=1),
            20,
            "the recovered group to serve",
        )
        # Once the dead agents are purged, the fleet rebuilds the group to full size.
        seen: list[dict] = []

        def rebuilt() -> bool:
            seen.append(_status(survivor_view, "fragile"))
            return len(seen[-1]["members"]) == 3 and bool(seen[-1]["converged"])

        try:
            wait_for(rebuilt, 60, "the group to be rebuilt on live agents", interval=0.5)
        except AssertionError:
            nodes = survivor_view.call("nodes")
            raise AssertionError(f"not rebuilt: {seen[-1]}\nnodes: {nodes}") from None
        value = survivor_view.call("query", group="fragile", arg="get")["reply"]
        assert value >= 2  # the inc every replica had, and at least one after recovery


def test_two_agents_started_and_activated_together_share_one_cluster_state(
    tmp_path: Path,
) -> None:
    import threading

    with agents(tmp_path, 2, first_octet=191, start=False) as (a1, a2):
        a2.start(wait=False)  # the joiner first: it retries until a1 answers
        a1.start(wait=False)
        for p in (a1, a2):
            wait_for(p.ping, 20, f"{p.name} to start")
        results: dict[str, object] = {}

        def activate(p: AgentProc, zone: str) -> None:
            results[p.name] = wait_for(lambda: p.call("activate", zone=zone), 30, "activate")

        threads = [
            threading.Thread(target=activate, args=(p, z)) for p, z in ((a1, "z1"), (a2, "z2"))
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(40)
        assert set(results) == {"a1", "a2"}
        views = [p.call("nodes")["nodes"] for p in (a1, a2)]
        for nodes in views:
            assert {(n["name"], n["state"]) for n in nodes} == {("a1", "active"), ("a2", "active")}
        s1, s2 = a1.call("status")["cluster"], a2.call("status")["cluster"]
        assert s1["id"] == s2["id"]
        assert s1["leader"] == s2["leader"] is not None
        a2.call("group_create", name="shared", timeout=30)
        assert a1.call("query", group="shared", arg="get")["reply"] == 0


def test_a_wiped_agent_gets_fresh_replicas(tmp_path: Path) -> None:
    import shutil

    with agents(tmp_path, 3, first_octet=201, env=FAST) as procs:
        _activate(procs, ["z1", "z2", "z3"])
        procs[0].call("group_create", name="w", timeout=30)
        procs[0].call("command", group="w", arg="inc")
        victim = procs[2]
        old = next(
            m["replica_id"] for m in _status(procs[0], "w")["members"] if m["agent"] == victim.name
        )
        victim.kill()
        shutil.rmtree(victim.data_dir)
        victim.start()  # a new node id and no replicas: the old one must never come back

        def rebuilt() -> bool:
            st = _status(procs[0], "w")
            mine = [m for m in st["members"] if m["agent"] == victim.name]
            return bool(st["converged"]) and len(mine) == 1 and mine[0]["replica_id"] != old

        wait_for(rebuilt, 60, "a fresh replica on the wiped agent")
        wait_for(
            lambda: victim.call("query", group="w", arg="get", stale=True)["reply"] == 1,
            20,
            "the fresh replica to catch up",
        )


def _lose_the_cluster_state_majority(procs: list[AgentProc]) -> AgentProc:
    """Activate three agents, then kill two of them: the survivor is returned."""
    _activate(procs, ["z1", "z2", "z3"])
    survivor = procs[0]
    wait_for(
        lambda: survivor.call("status")["cluster"]["voters"] == ["a1", "a2", "a3"],
        30,
        "the cluster state on all three agents",
    )
    for p in procs[1:]:
        p.kill()
    return survivor


def test_status_and_nodes_answer_at_once_when_the_cluster_state_has_no_leader(
    tmp_path: Path,
) -> None:
    with agents(tmp_path, 3, first_octet=171, env=FAST) as procs:
        survivor = _lose_the_cluster_state_majority(procs)
        # Two of three cluster-state voters gone: once the survivor's leadership
        # lapses nothing can be read linearizably; status still answers within
        # the client's usual timeout (every call below), and says why.
        seen: list[dict] = []

        def says_unreachable() -> bool:
            seen.append(survivor.call("status", timeout=3.0))
            return bool(seen[-1]["cluster"]["state_error"])

        wait_for(says_unreachable, 20, "status to report the cluster state unreachable")
        st = seen[-1]
        assert "cluster state unreachable" in st["cluster"]["state_error"], st
        assert st["state"] == "active" and st["zone"] == "z1"  # from the copy it holds
        assert st["cluster"]["leader"] is None
        # So does nodes: every agent as last seen here, flagged as such.
        nodes = survivor.call("nodes", timeout=3.0)
        assert "cluster state unreachable" in nodes["state_error"]
        assert [(n["name"], n["state"], n["reachable"]) for n in nodes["nodes"]] == [
            ("a1", "active", True), ("a2", "active", False), ("a3", "active", False),
        ]  # fmt: skip


def test_status_says_so_when_it_shows_a_copy_read_before(tmp_path: Path) -> None:
    """An agent holding no replica of the cluster state reads it through the
    leader; when that leader is gone, status and nodes show the copy read
    before, and must say it is one (they once returned it as fresh)."""
    with agents(tmp_path, 2, first_octet=181, env=FAST) as (a1, a2):
        st = wait_for(
            lambda: (c := a2.call("status")["cluster"])["agents"] == 2 and c,  # type: ignore[index]
            15,
            "a2 registered in the cluster state",
        )
        assert st["voters"] is None and st["state_error"] is None, st  # type: ignore[index]
        assert a2.call("nodes")["nodes"] and "state_error" not in a2.call("nodes")  # type: ignore[index,operator]
        assert "state_error" not in a2.call("group_list")  # type: ignore[operator]
        a1.kill()
        st = wait_for(
            lambda: a2.call("status", timeout=3.0)["cluster"]["state_error"] and a2.call("status"),
            10,
            "a2's status to flag its copy of the cluster state",
        )
        assert "cluster state unreachable" in st["cluster"]["state_error"], st  # type: ignore[index]
        assert st["cluster"]["agents"] == 2  # type: ignore[index]  # the copy it holds
        nodes = a2.call("nodes", timeout=3.0)
        assert "cluster state unreachable" in nodes["state_error"]  # type: ignore[index]
        assert [n["name"] for n in nodes["nodes"]] == ["a1", "a2"]  # type: ignore[index]
        listing = a2.call("group_list", timeout=3.0)
        assert "cluster state unreachable" in listing["state_error"]  # type: ignore[index]


def test_group_status_says_which_members_the_leader_cannot_reach(tmp_path: Path) -> None:
    """A member on a dead agent keeps the progress it last made in the leader's
    table; group status must not show it as a healthy follower."""
    with agents(tmp_path, 3, first_octet=186, env=FAST) as procs:
        _activate(procs, ["z1", "z2", "z3"])
        procs[0].call("group_create", name="g1", timeout=30)
        st = _status(procs[0], "g1")
        assert st["lost"] == [] and all(m["reachable"] is True for m in st["members"]), st
        leader = next(p for p in procs if p.name == st["leader"])
        dead = next(p for p in procs if p is not leader)
        dead.kill()

        def shows_lost() -> dict | None:
            now = _status(leader, "g1")
            return now if now["lost"] else None

        st = wait_for(shows_lost, 10, "the leader's agent to see the member gone")
        assert st["leader"] == leader.name and st["lost"] == [dead.name], st  # type: ignore[index]
        reach = {m["agent"]: m["reachable"] for m in st["members"]}  # type: ignore[index]
        assert reach == {p.name: p is not dead for p in procs}
        env = {k: None for k in os.environ if k.startswith("RAFTFLEET_")}
        env["RAFTFLEET_ADDR"] = f"unix://{leader.sock}"
        table = CliRunner().invoke(cli_main, ["group", "status", "g1"], env=env)
        assert table.exit_code == 0 and "REACHABLE" in table.stdout, table.output
        lost_row = ["lost", f'["{dead.name}"]']
        assert any(line.split() == lost_row for line in table.stdout.splitlines()), table.stdout
        plain = CliRunner().invoke(cli_main, ["-o", "plain", "group", "status", "g1"], env=env)
        assert {len(r.split("\t")) for r in plain.stdout.splitlines()} == {4}  # format kept


def test_group_delete_is_refused_while_the_cluster_state_cannot_be_read(tmp_path: Path) -> None:
    """Without the cluster state an agent cannot tell a placed group from one
    placed by hand: it once took g1 for the latter, dropped the one replica it
    reached, said "deleted" and left g1 in the cluster state."""
    with agents(tmp_path, 4, first_octet=196, env=FAST) as procs:
        a1, a2, a3, a4 = procs
        _activate(procs[:3], ["z1", "z2", "z3"])
        wait_for(
            lambda: a1.call("status")["cluster"]["voters"] == ["a1", "a2", "a3"],
            30,
            "the cluster state on three agents",
        )
        a1.call("group_create", name="g1", timeout=30)
        wait_for(lambda: connected_to_all(procs), 20, "a4 connected to all")
        a2.kill()
        a3.kill()  # the cluster state and g1 lose their majorities
        wait_for(lambda: a1.call("status")["cluster"]["state_error"], 20, "a1's lease to lapse")
        a4.stop()
        a4.start()  # and a4 holds no copy of the cluster state
        wait_for(lambda: a4.call("status")["cluster"]["peers"]["a1"]["reachable"], 20, "a4-a1")
        with pytest.raises(ControlError) as info:
            a4.call("group_delete", name="g1", timeout=20)
        assert info.value.code == "unavailable", info.value
        assert "cluster state" in str(info.value)
        members = a1.call("group_status", name="g1", timeout=10)["members"]  # type: ignore[index]
        assert {m["agent"] for m in members} == {"a1", "a2", "a3"}  # a1 still hosts g1


def test_the_cluster_state_group_can_be_recovered_after_losing_its_majority(
    tmp_path: Path,
) -> None:
    with agents(tmp_path, 3, first_octet=175, env=FAST) as procs:
        a1 = _lose_the_cluster_state_majority(procs)
        wait_for(lambda: a1.call("status", timeout=3.0)["cluster"]["state_error"], 20, "the loss")
        st = a1.call("group_status", name="__cluster__", timeout=10)
        assert st["leader"] is None and st["majority_lost"] is True, st
        recovered = a1.call("group_recover", name="__cluster__", force=True, timeout=10)
        assert recovered["recovered_from"] == "a1" and "may be lost" in recovered["warning"]
        wait_for(
            lambda: a1.call("status", timeout=3.0)["cluster"]["state_error"] is None,
            20,
            "the cluster state readable again",
        )
        # The lost agents come back with their old replicas of it: those are
        # replaced, and the group grows back to three voters.
        for p in procs[1:]:
            p.start()
        wait_for(
            lambda: a1.call("group_status", name="__cluster__")["converged"],
            60,
            "the cluster-state group back on three voters",
        )
        members = a1.call("group_status", name="__cluster__")["members"]
        assert sorted(m["agent"] for m in members if m["role"] != "learner") == ["a1", "a2", "a3"]
        created = a1.call("group_create", name="after", timeout=30)
        assert created["leader"] is not None
        assert procs[2].call("command", group="after", arg="inc")["reply"] == 0
