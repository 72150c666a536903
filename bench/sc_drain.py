"""Scenario drain: deactivate the 4th agent under a light load, until drain_watch completes."""

from __future__ import annotations

import time

from bench.cluster import create_groups, fleet, wait_quiescent
from bench.common import Budget, log, med, r
from bench.load import finish_load, start_loadgen
from raftfleet_cli.client import ClientError, ControlError


def sc_drain(cfg: dict) -> dict:
    budget = Budget(cfg["budget"]["drain"])
    runs: list[dict] = []
    for rep in range(cfg["reps"]):
        if budget.left() < 40:
            break
        with fleet(4, 31 + 4 * rep, f"drain{rep}") as procs:
            a4 = procs[3]
            n = cfg["drain_groups"]
            cr = create_groups(procs, [f"d{i}" for i in range(n)], budget)
            wait_quiescent(procs, 30, 2.0)
            st = a4.call("status", timeout=30)
            hosted, led = st["replicas"], st["leaders"]  # type: ignore[index]
            # Light load through the three agents that stay, on groups a4 hosts or not.
            rest = procs[:3]
            load_secs = max(10, budget.left())
            spec = {
                "proto": "framed",
                "op": "command",
                "arg": "inc",
                "args": {"timeout_s": 2, "retries": 3},
                "targets": [[p.sock] for p in rest],
                "conns": 3,
                "depth": 1,
                "groups_per_conn": [[f"d{i}" for i in range(n)]] * 3,
                "rate": 100,
                "seconds": load_secs,
                "start_at": time.monotonic() + 1.0,
                "max_ops": 200_000,
            }
            load = start_loadgen(spec)
            try:
                time.sleep(2.0)
                t0 = time.monotonic()
                a4.call("deactivate", timeout=30)
                complete = None
                events = 0
                try:
                    with a4.client(timeout=5) as c:
                        w = c.stream(
                            "drain_watch",
                            timeout=max(5, budget.left()),
                            timeout_s=max(5, budget.left() - 5),
                        )
                        for _ev in w:
                            events += 1
                        complete = w.result
                except (ControlError, ClientError) as e:
                    complete = {"error": str(e)}
                secs = time.monotonic() - t0
                time.sleep(1.0)
            finally:
                load_res = finish_load(load)
            ok = isinstance(complete, dict) and complete.get("event") == "complete"
            runs.append(
                {
                    "seconds": secs,
                    "replicas": hosted,
                    "leaders": led,
                    "client_errors": load_res.get("errors"),
                    "client_error_kinds": load_res.get("error_kinds"),
                    "client_ops": load_res.get("ops"),
                    "complete": ok,
                    "groups_created": cr["created"],
                }
            )
            log(f"drain rep {rep}: {runs[-1]}")
    done = [x for x in runs if x["complete"]]
    return {
        f"replicas_{cfg['drain_key']}": {
            "seconds": r(med([x["seconds"] for x in done]), 2) if done else None,
            "replicas_drained": [x["replicas"] for x in runs],
            "leaders_drained": [x["leaders"] for x in runs],
            "client_errors": sum((x["client_errors"] or 0) for x in runs),
            "client_error_kinds": [x["client_error_kinds"] for x in runs],
            "client_ops": [x["client_ops"] for x in runs],
            "reps_seconds": [round(x["seconds"], 2) for x in runs],
            "reps": len(runs),
            "complete": bool(done) and len(done) == len(runs),
        }
    }
