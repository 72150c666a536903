"""`python -m raftfleet_agent.sim` as CI runs it: at least 200 seeds, JSON last line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

pytestmark = pytest.mark.slow


def _sim(*args: str) -> tuple[int, dict, str]:
    out = subprocess.run(
        [sys.executable, "-m", "raftfleet_agent.sim", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    return out.returncode, json.loads(out.stdout.strip().splitlines()[-1]), out.stderr


def test_two_hundred_seeds_pass() -> None:
    code, summary, err = _sim("--seeds", "200", "--steps", "1000", "--jobs", "2")
    assert code == 0, err[-3000:]
    assert summary["seeds"] == 200 and summary["violations"] == 0
    assert summary["commands_acked"] > 10_000 and summary["reads_checked"] > 1_000
    assert summary["quiesced"] > 0  # idle phases quiesce groups, and they must wake
    assert summary["advanced_unsynced"] > 0  # commit-index-only writes not waited for


def test_churn_profile_passes() -> None:
    code, summary, err = _sim("--seeds", "100", "--steps", "1000", "--profile", "churn")
    assert code == 0, err[-3000:]
    assert summary["violations"] == 0


def test_a_log_that_keeps_older_entries_as_tuples_passes() -> None:
    """The simulator's logs stay short: settle every 2 entries, so that the
    tuples a long log keeps its older entries as are replicated, truncated,
    compacted and sent to lagging followers too."""
    code, summary, err = _sim("--seeds", "150", "--steps", "1000", "--settle-batch", "2")
    assert code == 0, err[-3000:]
    assert summary["violations"] == 0 and summary["commands_acked"] > 5_000
    code, summary, err = _sim(
        "--seeds", "50", "--steps", "1000", "--settle-batch", "2", "--profile", "churn"
    )
    assert code == 0, err[-3000:]
    assert summary["violations"] == 0


def test_a_violation_exits_non_zero_with_seed_and_trace() -> None:
    code, summary, err = _sim(
        "--seeds",
        "50",
        "--steps",
        "600",
        "--jobs",
        "1",
        "--member",
        "tests.raft.test_sim_planted_bugs:VotesTwice",
    )
    assert code == 1
    assert summary["violations"] >= 1
    seed = summary["failing_seeds"][0]
    assert f"VIOLATION seed={seed}" in err
    assert f"--seed {seed}" in err  # how to replay it
    assert "deliver" in err  # the trace
