"""`python -m tests.faults --minutes N [--seed S]`: a fault-injection campaign.

Runs of about a minute each (seeds S, S+1, ...) until N minutes are used;
progress on stderr, then ONE JSON object last on stdout (runs, operations,
faults, anomalies, ...). Exit status 1 on any anomaly; failing runs keep
their history (history.json) and agent logs under the printed directory.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
from pathlib import Path

from tests.faults.campaign import SNAPSHOT_EVERY, campaign


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tests.faults", description=__doc__.split("\n")[0])
    ap.add_argument("--minutes", type=float, default=3.0, help="campaign length (default 3)")
    ap.add_argument("--seed", type=int, default=None, help="first run's seed (default: time)")
    ap.add_argument("--fault-seconds", type=float, default=35.0, help="nemesis time per run")
    ap.add_argument("--runs", type=int, default=None, help="at most this many runs")
    ap.add_argument("--keep-dir", type=Path, default=None, help="where failing runs are kept")
    ap.add_argument(
        "--snapshot-every",
        type=int,
        default=SNAPSHOT_EVERY,
        help=f"entries between a group's snapshots (default {SNAPSHOT_EVERY}; 0: the agents' own)",
    )
    args = ap.parse_args(argv)
    seed = args.seed if args.seed is not None else int(time.time()) % 100_000
    keep = args.keep_dir or Path(tempfile.mkdtemp(prefix="raftfleet-faults-"))

    def log(msg: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def on_term(*_: object) -> None:
        # Run the finally blocks: paused agents resumed, every agent stopped.
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_term)
    log(f"campaign: {args.minutes} min from seed {seed}; runs under {keep}")
    if args.snapshot_every < 0:
        ap.error("--snapshot-every must be 0 or more")
    snapshot_every = args.snapshot_every or None
    result = campaign(args.minutes, seed, keep, args.fault_seconds, log, args.runs, snapshot_every)
    if result["anomalies"]:
        log(f"ANOMALIES: failing runs kept in {result['kept']}")
    else:
        for leftover in [keep]:
            if not any(leftover.iterdir()):
                leftover.rmdir()
    print(json.dumps(result), flush=True)
    return 1 if result["anomalies"] else 0


if __name__ == "__main__":
    sys.exit(main())
