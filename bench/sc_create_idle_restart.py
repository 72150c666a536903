"""Scenarios create, idle and restart: create 1,000 groups (x reps), idle with 1,000;
then grow to 10,000: idle, restart."""

from __future__ import annotations

import contextlib
import random
import time

from bench.agent import rss_kib
from bench.cluster import create_groups, fleet, idle_window, wait_idle, wait_quiescent
from bench.common import Budget, log, med, r
from raftfleet_cli.client import ClientError, ControlError
from tests.procs import AgentProc, connected_to_all, wait_for


def sc_create_idle_restart(cfg: dict) -> tuple[dict, dict, dict]:
    budget = Budget(cfg["budget"]["create_idle_restart"])
    n_small, n_big = cfg["groups_small"], cfg["groups_big"]
    create_runs: list[dict] = []
    idle_small: list[dict] = []
    idle_big: dict = {}
    restart: dict = {}
    for rep in range(cfg["reps"]):
        last = rep == cfg["reps"] - 1
        with fleet(3, 17 + 3 * rep, f"idle{rep}") as procs:
            wait_quiescent(procs, 20, 2.0)
            base_rss = {p.name: rss_kib(p.proc.pid) for p in procs}  # type: ignore[union-attr]
            cr = create_groups(procs, [f"i{i}" for i in range(n_small)], budget)
            create_runs.append(cr)
            log(
                f"create rep {rep}: {cr['created']} groups in {cr['seconds']:.1f} s "
                f"= {cr['groups_per_s']:.0f}/s errors={cr['errors']}"
            )
            idle_small.append(idle_measure(procs, base_rss, cfg, budget, 1))
            log(f"idle {n_small} rep {rep}: {idle_small[-1]}")
            if not last or not budget.ok():
                continue
            # Leave time for the idle windows and the restarts: growth stops early otherwise.
            reserve = 40 + cfg["idle_windows_big"] * cfg["idle_window"] + cfg["reps"] * 25
            grow_budget = Budget(max(10.0, budget.left() - reserve))
            grow = create_groups(procs, [f"i{i}" for i in range(n_small, n_big)], grow_budget)
            log(
                f"grew to {n_small + grow['created']} groups in {grow['seconds']:.1f} s "
                f"({grow['groups_per_s']:.0f}/s, errors={grow['errors']})"
            )
            idle_big = idle_measure(procs, base_rss, cfg, budget, cfg["idle_windows_big"])
            idle_big["groups"] = n_small + grow["created"]
            idle_big["create_groups_per_s"] = r(grow["groups_per_s"], 1)
            idle_big["complete"] = grow["complete"] and idle_big["complete"]
            log(f"idle {idle_big['groups']}: {idle_big}")
            restart = restart_measure(procs, n_small + grow["created"], cfg, budget)
            log(f"restart: {restart}")
            if budget.ok():
                idle_big["one_agent_down"] = idle_one_down(procs, cfg)
                log(f"idle {idle_big['groups']}, one agent down: {idle_big['one_agent_down']}")
    create = {
        "groups_per_s": r(med([c["groups_per_s"] for c in create_runs]), 1),
        "groups": n_small,
        "concurrent_creators": 32,
        "reps_groups_per_s": [round(c["groups_per_s"], 1) for c in create_runs],
        "errors": sum(c["errors"] for c in create_runs),
        "complete": all(c["complete"] for c in create_runs),
    }
    idle = {
        f"groups_{n_small}": {
            "cpu_pct_per_agent": r(med([x["cpu_pct_per_agent"] for x in idle_small]), 2),
            "cpu_pct_max_agent": r(med([x["cpu_pct_max_agent"] for x in idle_small]), 2),
            "rss_kib_per_replica": r(med([x["rss_kib_per_replica"] for x in idle_small]), 2),
            "settled": all(x["settled"] for x in idle_small),
            "complete": all(x["complete"] for x in idle_small),
        },
        f"groups_{n_big}": idle_big or {"complete": False, "reason": "time budget"},
    }
    return create, idle, restart


def idle_measure(
    procs: list[AgentProc], base_rss: dict, cfg: dict, budget: Budget, windows: int
) -> dict:
    q = wait_quiescent(procs, min(cfg["settle_max"], max(5, budget.left())), 3.0)
    cpus: list[dict] = []
    for _ in range(windows):
        if budget.left() < cfg["idle_window"]:
            break
        cpus.append(idle_window(procs, cfg["idle_window"]))
    st = {p.name: p.call("status", timeout=30) for p in procs}
    rss = {p.name: rss_kib(p.proc.pid) for p in procs}  # type: ignore[union-attr]
    per_rep = {
        n: (rss[n] - base_rss[n]) / max(1, st[n]["replicas"])
        for n in rss  # type: ignore[index]
    }
    per_agent = [med([w[n] for w in cpus]) for n in rss] if cpus else [float("nan")]
    return {
        "cpu_pct_per_agent": r(med(per_agent), 2),
        "cpu_pct_max_agent": r(max(per_agent), 2),
        "cpu_pct_windows": [{n: round(v, 2) for n, v in w.items()} for w in cpus],
        "window_s": cfg["idle_window"],
        "rss_kib_per_replica": r(med(list(per_rep.values())), 2),
        "rss_kib_agent": rss,
        "rss_kib_empty_agent": base_rss,
        "replicas_per_agent": {n: st[n]["replicas"] for n in st},  # type: ignore[index]
        **q,
        "complete": bool(cpus) and q["settled"],
    }


def idle_one_down(procs: list[AgentProc], cfg: dict) -> dict:
    """kill -9 one agent (not purged: the window is 10 min) and measure the others idle.

    Every group shares the dead agent; its leaders must quiesce past it, not
    heartbeat it until the purge (or for ever, when the purge waits for room).
    Not a target of the issue: a guard on what idle costs during an outage.
    """
    victim, live = procs[0], procs[1:]
    # The restarts just measured leave thousands of leaderships to move back
    # (after a 15 s grace), and killing an agent wakes a third of the groups
    # to elect new leaders: measured during either, this read 13-36 % on a
    # slow host, against ~2 % once quiet. So wait for quiet itself (replicas
    # asleep again, no move in flight), with its own allowance: the section's
    # leftover budget was too short on a slower machine.
    wait_idle(procs, min(60, cfg["settle_max"]))
    victim.kill()
    q = wait_idle(live, cfg["settle_max"])
    cpu = idle_window(live, cfg["idle_window"])
    awake = {p.name: p.call("status", timeout=30)["loop"]["awake"] for p in live}  # type: ignore[index]
    return {
        "cpu_pct_per_agent": r(med(list(cpu.values())), 2) if cpu else None,
        "cpu_pct_agent": {n: round(v, 2) for n, v in cpu.items()},
        "awake_replicas": awake,
        "window_s": cfg["idle_window"],
        **q,
        "complete": bool(cpu) and q["settled"],
    }


def restart_measure(procs: list[AgentProc], groups: int, cfg: dict, budget: Budget) -> dict:
    """SIGTERM the agent, start it again: time from the start until it serves stale reads
    of its local replicas (a random sample of 20 groups), and until it hosts all again."""
    a = procs[2]
    replicas_before = a.call("status", timeout=30)["replicas"]  # type: ignore[index]
    runs: list[dict] = []
    rng = random.Random(7)
    for _rep in range(cfg["reps"]):
        if budget.left() < 30:
            break
        sample = [f"i{rng.randrange(groups)}" for _ in range(20)]
        t_stop = time.monotonic()
        a.stop(timeout=60)
        stop_s = time.monotonic() - t_stop
        t0 = time.monotonic()
        a.start(wait=False)
        served = set()
        serving_s = None
        deadline = t0 + min(120, max(10, budget.left()))
        while time.monotonic() < deadline:
            for g in sample:
                if g in served:
                    continue
                try:
                    with a.client(timeout=0.5) as c:
                        c.call("query", timeout=2, group=g, arg="get", stale=True, timeout_s=1)
                    served.add(g)
                except (ControlError, ClientError, OSError):
                    break
            if len(served) == len(sample):
                serving_s = time.monotonic() - t0
                break
            time.sleep(0.02)
        all_s = None
        while serving_s is not None and time.monotonic() < deadline:
            with contextlib.suppress(ControlError, ClientError, OSError):
                if a.call("status", timeout=10)["replicas"] >= replicas_before:  # type: ignore[index]
                    all_s = time.monotonic() - t0
                    break
            time.sleep(0.2)
        with contextlib.suppress(AssertionError):
            wait_for(lambda: connected_to_all(procs), 30, "reconnect")
        runs.append(
            {
                "serving_s": r(serving_s, 3) if serving_s else None,
                "all_replicas_s": r(all_s, 3) if all_s else None,
                "stop_s": round(stop_s, 2),
            }
        )
    return {
        f"replicas_{replicas_before}": {
            "seconds": r(med([x["serving_s"] for x in runs if x["serving_s"]]), 3)
            if runs
            else None,
            "all_replicas_loaded_s": r(
                med([x["all_replicas_s"] for x in runs if x["all_replicas_s"]]), 3
            )
            if runs
            else None,
            "runs": runs,
            "complete": len(runs) == cfg["reps"] and all(x["serving_s"] for x in runs),
        }
    }
