"""What every part of the benchmark shares: paths, the processes it starts, small statistics."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# The entry points also run as scripts (python bench/floor.py, bench/probe.py),
# where only bench/ is on the path: raftfleet_cli and tests come from this tree.
sys.path.insert(0, str(ROOT))

OUT = ROOT / "bench" / "out"
PY = sys.executable
LOADGEN = str(ROOT / "bench" / "loadgen.py")
PEER = str(ROOT / "bench" / "peer_pysyncobj.py")
HZ = os.sysconf("SC_CLK_TCK")

_children: list[subprocess.Popen] = []  # every non-agent process we start (agents: procs.py)


def track(p: subprocess.Popen) -> subprocess.Popen:
    """Remember `p` so that `stop_all_children` stops it whatever happens."""
    _children.append(p)
    return p


def running_children() -> list[subprocess.Popen]:
    return [p for p in _children if p.poll() is None]


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def spawn(argv: list[str], logfile: Path | None = None, **kw: object) -> subprocess.Popen:
    out = open(logfile, "ab") if logfile else subprocess.DEVNULL  # noqa: SIM115
    p = subprocess.Popen(argv, stdout=out, stderr=out, **kw)  # type: ignore[call-overload]
    if logfile:
        out.close()  # type: ignore[union-attr]
    return track(p)


def stop_proc(p: subprocess.Popen, timeout: float = 10) -> None:
    if p.poll() is None:
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)
    with contextlib.suppress(ValueError):
        _children.remove(p)


def stop_all_children() -> None:
    for p in list(_children):
        stop_proc(p, 5)


def free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p * len(xs)))] if xs else float("nan")


def med(xs: list[float]) -> float:
    xs = [x for x in xs if x is not None and not math.isnan(x)]
    return statistics.median(xs) if xs else float("nan")


def r(x: float, nd: int = 5) -> float | None:
    return None if x is None or math.isnan(x) else round(x, nd)


def get(d: dict, key: str) -> object:
    for part in key.split("."):
        if not isinstance(d, dict) or part not in d:
            return None
        d = d[part]
    return d


class Budget:
    """A scenario's time bound: loops check `left()`; overrun -> complete: false."""

    def __init__(self, seconds: float) -> None:
        self.end = time.monotonic() + seconds
        self.exceeded = False

    def left(self) -> float:
        return self.end - time.monotonic()

    def ok(self) -> bool:
        if self.left() <= 0:
            self.exceeded = True
        return not self.exceeded
