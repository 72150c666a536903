"""`python -m raftfleet_agent.sim --seeds N --steps M [--seed S] [--jobs J]`.

Runs N seeded simulations (or just seed S) of M steps each. On a violation it
prints the seed and the trace that led to it and exits 1. The last line is
always one JSON object with at least `seeds`, `steps` and `violations`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import time
import traceback
from concurrent.futures import ProcessPoolExecutor

from raftfleet_agent.raft import log as raft_log
from raftfleet_agent.raft.member import RaftMember
from raftfleet_agent.sim.checker import SimViolation
from raftfleet_agent.sim.cluster import PROFILES, Simulation


def _load_member(spec: str | None) -> type[RaftMember]:
    """`pkg.mod:Class`, a RaftMember subclass to simulate instead (e.g. a planted bug)."""
    if not spec:
        return RaftMember
    module, _, name = spec.partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, RaftMember)):
        raise SystemExit(f"--member {spec}: not a RaftMember subclass")
    return cls


def _one(args: tuple[int, int, str, str | None, int | None]) -> dict:
    seed, steps, profile, member, settle = args
    if settle is not None:
        # Logs here stay short: settle every few entries so that the tuples
        # older entries are kept as are exercised too (raft/log.py).
        raft_log.SETTLE_BATCH = settle
    sim = Simulation(seed, factory=_load_member(member), **PROFILES[profile](seed))
    try:
        r = sim.run(steps)
    except SimViolation as v:
        return {"seed": seed, "violation": v.what, "trace": list(sim.check.trace)[-150:]}
    except Exception as e:  # a crash of the core is a finding too, with its trace
        what = f"exception {type(e).__name__}: {e}\n{traceback.format_exc()}"
        return {"seed": seed, "violation": what, "trace": list(sim.check.trace)[-150:]}
    return {
        "seed": seed,
        "acked": r.acked,
        "reads": r.reads,
        "elections": r.elections,
        "messages": r.messages,
        "faults": r.faults,
        "quiesced": r.quiesced,
        "advanced_unsynced": r.advanced_unsynced,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m raftfleet_agent.sim", description=__doc__)
    p.add_argument("--seeds", type=int, default=100, help="number of seeds to run")
    p.add_argument("--steps", type=int, default=1000, help="steps (ticks) per seed")
    p.add_argument("--seed", type=int, default=None, help="run only this seed (replay)")
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    p.add_argument(
        "--profile",
        choices=sorted(PROFILES),
        default="random",
        help="fault profile: random (per-seed mix) or churn (Figure 8 territory)",
    )
    p.add_argument(
        "--member",
        default=None,
        metavar="PKG.MOD:CLASS",
        help="simulate this RaftMember subclass (to check a variant or a planted bug)",
    )
    p.add_argument(
        "--settle-batch",
        type=int,
        default=None,
        metavar="N",
        help="keep log entries older than the newest N as tuples, N at a time (default 4096)",
    )
    p.add_argument("--trace", action="store_true", help="print the trace of every failing seed")
    a = p.parse_args(argv)
    if a.seeds < 1 or a.steps < 1 or a.jobs < 1:
        p.error("--seeds, --steps and --jobs must be positive")
    if a.settle_batch is not None and a.settle_batch < 1:
        p.error("--settle-batch must be positive")
    seeds = [a.seed] if a.seed is not None else list(range(a.first_seed, a.first_seed + a.seeds))
    t0 = time.monotonic()
    _load_member(a.member)  # fail early on a bad --member
    work = [(s, a.steps, a.profile, a.member, a.settle_batch) for s in seeds]
    if a.jobs == 1 or len(seeds) == 1:
        results = [_one(w) for w in work]
    else:
        with ProcessPoolExecutor(a.jobs) as pool:
            results = list(pool.map(_one, work, chunksize=max(1, len(work) // (a.jobs * 8))))
    bad = [r for r in results if "violation" in r]
    for r in bad[:3]:
        print(f"VIOLATION seed={r['seed']}: {r['violation']}", file=sys.stderr)
        print(
            f"  replay: python -m raftfleet_agent.sim --seed {r['seed']} --steps {a.steps}",
            file=sys.stderr,
        )
        for line in r["trace"]:
            print("   ", line, file=sys.stderr)
    ok = [r for r in results if "violation" not in r]
    summary = {
        "seeds": len(seeds),
        "steps": a.steps,
        "violations": len(bad),
        "failing_seeds": [r["seed"] for r in bad][:20],
        "commands_acked": sum(r["acked"] for r in ok),
        "reads_checked": sum(r["reads"] for r in ok),
        "elections": sum(r["elections"] for r in ok),
        "faults": sum(r["faults"] for r in ok),
        "quiesced": sum(r["quiesced"] for r in ok),
        "advanced_unsynced": sum(r["advanced_unsynced"] for r in ok),
        "elapsed_s": round(time.monotonic() - t0, 2),
    }
    print(json.dumps(summary))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
