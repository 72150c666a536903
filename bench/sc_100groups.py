"""Scenario write_100groups: 64 writers spread over the leaders of 100 groups."""

from __future__ import annotations

from bench.cluster import create_groups, fleet, leaders_by_agent, spread_specs, wait_quiescent
from bench.common import Budget, log
from bench.load import brief, measure, repeat


def sc_write_100groups(cfg: dict) -> dict:
    budget = Budget(cfg["budget"]["write_100groups"])
    with fleet(3, 14, "w100") as procs:
        names = [f"g{i}" for i in range(100)]
        cr = create_groups(procs, names, budget)
        wait_quiescent(procs, 20, 1.0)
        led = leaders_by_agent(procs, names)
        specs = spread_specs(procs, led)
        m = repeat(lambda: measure(specs, cfg["window"]), cfg["reps"])
        m["leaders_per_agent"] = {a: len(gs) for a, gs in sorted(led.items())}
        m["groups_created"] = cr["created"]
        m["complete"] = cr["complete"] and not budget.exceeded
        log(f"write_100groups: {brief(m)}")
        return m
