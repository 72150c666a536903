"""Scenario floor: the same loads on the agent's plumbing with no Raft in it (bench/floor.py)."""

from __future__ import annotations

import json
import subprocess

from bench.common import PY, ROOT, get, log
from bench.load import brief


def sc_floor(cfg: dict) -> dict:
    """Ceilings for write_100groups and write_1group's 64 clients, measured in this run."""
    argv = [PY, str(ROOT / "bench" / "floor.py"), "--store", "sqlite"]
    argv += ["--reps", str(cfg["reps"]), "--seconds", str(cfg["window"])]
    budget = 60 + 2 * cfg["reps"] * (cfg["window"] + 6)
    p = subprocess.run(argv, capture_output=True, text=True, timeout=budget, check=False)
    if p.returncode != 0:
        return {"complete": False, "error": p.stderr[-500:]}
    out = json.loads(p.stdout.strip().splitlines()[-1])
    res = out["floor"]
    log(f"floor: 100 groups {brief(res['groups_100'])}; 1 group {brief(res['groups_1'])}")
    return res


def floor_ratios(res: dict) -> None:
    """What the real agents do as a share of the floor (not a target: where the cost is)."""
    for real_key, floor_key in (
        ("write_100groups.ops_per_s", "groups_100"),
        ("write_1group.clients_64.ops_per_s", "groups_1"),
    ):
        real, fl = get(res, real_key), get(res, f"floor.{floor_key}.ops_per_s")
        if isinstance(real, int | float) and isinstance(fl, int | float) and fl:
            res["floor"][floor_key]["real_share"] = round(real / fl, 3)
