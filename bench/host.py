"""This host: what it is, and how busy and how fast it is now (its speed drifts between runs)."""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from bench.agent import machine_ticks
from bench.common import ROOT, log


def machine() -> dict:
    cpu = "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    commit = subprocess.run(
        ["git", "rev-parse", "HEAD"], check=False, cwd=ROOT, capture_output=True, text=True
    ).stdout.strip()
    dirty = bool(
        subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            check=False,
            cwd=ROOT,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": cpu,
        "mem_gib": round(mem_kib / 2**20, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "git_commit": commit,
        "git_dirty": dirty,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    }


def host_speed() -> int | None:
    """Commands/s of `bench/host_loop.py` on 1 group in memory: how fast this host runs now.

    One process, no socket, no disk, ~3 s. The host's speed drifts (by up to a
    quarter within an hour here), so every run records it at its start and end:
    figures of two runs compare only as far as their host speeds do.
    """
    try:
        p = subprocess.run(
            [sys.executable, "-m", "bench.host_loop", "--groups", "1", "--seconds", "2"],
            check=True,
            cwd=ROOT,  # this tree's agent code, not whatever is installed
            capture_output=True,
            text=True,
            timeout=60,
        )
        return int(json.loads(p.stdout.splitlines()[-1])["host_loop"]["groups_1"]["ops_per_s"])
    except (OSError, subprocess.SubprocessError, ValueError, KeyError, IndexError) as e:
        log(f"host speed not measured: {e!r}")
        return None


def busy_now(seconds: float = 2.0) -> float:
    """How busy the whole machine is over the next `seconds`, % of one core (2 cores: 0-200)."""
    all0, idle0 = machine_ticks()
    time.sleep(seconds)
    all1, idle1 = machine_ticks()
    cores = os.cpu_count() or 1
    return round(100 * cores * (1 - (idle1 - idle0) / max(1, all1 - all0)), 1)
