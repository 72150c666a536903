"""The agent's collector settings (raftfleet_agent/gc_policy.py)."""

from __future__ import annotations

import gc

from raftfleet_agent import gc_policy


def test_tune_makes_young_collections_rare() -> None:
    old = gc.get_threshold()
    try:
        gc_policy.tune()
        young, middle, full = gc.get_threshold()
        assert young == gc_policy.YOUNG_THRESHOLD > old[0]
        assert middle == full == gc_policy.OLDER_THRESHOLD
    finally:
        gc.set_threshold(*old)


def test_recovered_state_is_frozen_out_of_the_collector() -> None:
    before = gc.get_freeze_count()
    recovered = [[i] for i in range(5_000)]  # containers the collector would track
    try:
        gc_policy.freeze_recovered_state()
        assert gc.get_freeze_count() >= before + len(recovered)
        assert gc.is_tracked(recovered[0])  # still tracked, only never walked again
    finally:
        gc.unfreeze()
