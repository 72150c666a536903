"""The benchmark suite: every scenario, real processes on loopback, durable storage.

    python -m bench            # full suite (< 15 min), writes bench/RESULTS.md
    python -m bench --quick    # reduced version of every scenario (< 3 min), same keys
    python -m bench --only write_1group,failover    # a subset (no RESULTS.md)
    python -m bench --profile  # py-spy of the leader agent during write_1group, 64 clients

Scenarios (for --only): write_1group, read_1group, write_100groups, floor
(bench/floor.py: the write loads on the agent's plumbing with no Raft, the
ceiling for the write targets), failover, drain, create, idle, restart.
write_1group also measures its 64 writers through a follower's agent and
(full runs only) on agents run --in-memory, which says what the disk costs.
raftfleet, PySyncObj and etcd run side by side for it, their windows taken in
turn (`interleave`), so the ratios compare the same minutes of this host.

Prints ONE JSON object (the last line of stdout) and a table on stderr.
`meta.host_speed_start` / `_end`: bench/host_loop.py on 1 group in memory
(one process, commands/s) before and after, since this host's speed drifts.

Rules kept by every scenario: 3 agents (drain: 4) as separate processes on
127.0.0.x, durable SQLite store under bench/out/ (real disk, not tmpfs;
the one --in-memory measure aside),
clients in separate processes (bench/loadgen.py; cluster set-up, group
creation and the failover/restart probes are in this process, which is not
an agent), every loop bounded in count and time, every process stopped by
pid in `finally`. Medians over `reps` repetitions (3; 1 with --quick). A
scenario that runs out of its time budget reports what it reached with
"complete": false.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from collections.abc import Callable

from bench.common import OUT, ROOT, log, stop_all_children
from bench.host import busy_now, host_speed, machine
from bench.report import table, verdicts, write_results_md
from bench.sc_1group import assemble_1group, sc_1group
from bench.sc_100groups import sc_write_100groups
from bench.sc_create_idle_restart import sc_create_idle_restart
from bench.sc_drain import sc_drain
from bench.sc_failover import sc_failover
from bench.sc_floor import floor_ratios, sc_floor


def config(quick: bool) -> dict:
    if quick:
        return {
            "quick": True,
            "reps": 1,
            "window": 2.0,
            "groups_small": 300,
            "groups_big": 1000,
            "idle_window": 5.0,
            "idle_windows_big": 1,
            "settle_max": 30,
            "failovers": 3,
            "drain_groups": 150,
            "drain_key": "1000",
            "budget": {
                "write_100groups": 40,
                "create_idle_restart": 70,
                "failover": 40,
                "drain": 50,
            },
        }
    return {
        "quick": False,
        "reps": 3,
        "window": 3.0,
        "groups_small": 1000,
        "groups_big": 10000,
        "idle_window": 20.0,
        "idle_windows_big": 3,
        "settle_max": 90,
        "failovers": 20,
        "drain_groups": 1333,
        "drain_key": "1000",
        "budget": {
            "write_100groups": 60,
            "create_idle_restart": 420,
            "failover": 120,
            "drain": 130,
        },
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    ap.add_argument("--quick", action="store_true", help="reduced version of every scenario")
    ap.add_argument("--profile", action="store_true", help="py-spy the leader during write 64")
    ap.add_argument("--only", default="", help="comma-separated scenarios to run")
    a = ap.parse_args(argv)

    def on_term(*_: object) -> None:
        raise SystemExit(143)  # run the finally blocks: every process we started is stopped

    signal.signal(signal.SIGTERM, on_term)
    cfg = config(a.quick)
    cfg["profile"] = a.profile
    only = {s for s in a.only.split(",") if s}
    want = lambda s: not only or s in only  # noqa: E731
    OUT.mkdir(parents=True, exist_ok=True)
    t_all = time.monotonic()
    res: dict = {
        "meta": {
            **machine(),
            "quick": a.quick,
            "profile": a.profile,
            "reps": cfg["reps"],
            "window_s": cfg["window"],
            "loadavg_start": [round(x, 2) for x in os.getloadavg()],
            "busy_pct_start": busy_now(),
            "host_speed_start": host_speed(),
            "pysyncobj_note": "journal via mmap, not fsynced per entry",
        }
    }
    timings: dict = {}

    def timed(name: str, fn: Callable[[], object]) -> object:
        log(f"--- {name}")
        t = time.monotonic()
        try:
            return fn()
        except Exception as e:  # a broken scenario must not hide the others
            log(f"{name} FAILED: {e!r}")
            return {"complete": False, "error": repr(e)[:500]}
        finally:
            timings[name] = round(time.monotonic() - t, 1)
            stop_all_children()

    try:
        if want("write_1group") or want("read_1group"):
            out1 = timed("1 group: raftfleet, PySyncObj, etcd interleaved", lambda: sc_1group(cfg))
            if isinstance(out1, dict):  # the scenario failed as a whole
                res["write_1group"] = res["read_1group"] = out1
            else:
                rf, pso, etc = out1  # type: ignore[misc]
                if "error" in rf:
                    res["write_1group"] = res["read_1group"] = rf
                else:
                    res["write_1group"], res["read_1group"] = assemble_1group(rf, pso, etc)
                res["pysyncobj_runs"] = pso
        if want("write_100groups"):
            res["write_100groups"] = timed("write_100groups", lambda: sc_write_100groups(cfg))
        if want("floor"):
            res["floor"] = timed("floor", lambda: sc_floor(cfg))
            floor_ratios(res)
        if want("failover"):
            res["failover"] = timed("failover", lambda: sc_failover(cfg))
        if want("drain"):
            res["drain"] = timed("drain", lambda: sc_drain(cfg))
        if want("create") or want("idle") or want("restart"):
            out = timed("create/idle/restart", lambda: sc_create_idle_restart(cfg))
            if isinstance(out, tuple):
                res["create"], res["idle"], res["restart"] = out
            else:
                res["create"] = res["idle"] = res["restart"] = out
        if a.quick:  # same keys as the full run; the reduced scale is stated
            note = {"reduced": True}
            sc = res.get("idle", {}).pop(f"groups_{cfg['groups_big']}", None)
            if sc is not None:
                res["idle"]["groups_10000"] = {**sc, **note}
            sm = res.get("idle", {}).pop(f"groups_{cfg['groups_small']}", None)
            if sm is not None:
                res["idle"]["groups_1000"] = {**sm, "groups": cfg["groups_small"], **note}
            rs = res.get("restart", {})
            for k in [k for k in rs if k.startswith("replicas_")]:
                rs["replicas_10000"] = {
                    **rs.pop(k),
                    "replicas_actual": int(k.split("_")[1]),
                    **note,
                }
            if "drain" in res and "replicas_1000" in res["drain"]:
                res["drain"]["replicas_1000"].update(note)
            if "create" in res and isinstance(res["create"], dict):
                res["create"].update(note)
        else:
            rs = res.get("restart", {})
            for k in [k for k in rs if k.startswith("replicas_") and k != "replicas_10000"]:
                rs["replicas_10000"] = {**rs.pop(k), "replicas_actual": int(k.split("_")[1])}
    finally:
        stop_all_children()
    res["meta"]["seconds_total"] = round(time.monotonic() - t_all, 1)
    res["meta"]["loadavg_end"] = [round(x, 2) for x in os.getloadavg()]
    res["meta"]["host_speed_end"] = host_speed()
    res["meta"]["scenario_seconds"] = timings
    res["targets"] = [
        {"key": k, "value": v, "target": t, "verdict": vd} for _, k, v, t, vd in verdicts(res)
    ]
    print(table(res), file=sys.stderr)
    if not a.quick and not only:
        write_results_md(res, ROOT / "bench" / "RESULTS.md")
        log("wrote bench/RESULTS.md")
    print(json.dumps(res))
    return 0
