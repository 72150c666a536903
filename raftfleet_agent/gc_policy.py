"""How the agent's process uses Python's cyclic garbage collector.

Almost everything the agent allocates per loop turn (messages, Readys, rows,
replies) is freed by reference counting the moment it is dropped; the cyclic
collector finds next to nothing. With CPython's default young-generation
threshold (700 allocations) it still runs thousands of times a second under
load and, every tenth run, walks the middle generation too: measured with
three hosts in one process (100 groups, 64 commands in flight), 17 % of the
CPU per command at 100 groups and 30 % on one busy group. A threshold of
50,000 keeps a young collection at about a millisecond.

The state recovered at start (up to millions of log entries and replicas) is
long-lived by construction: frozen, the full collections never walk it.
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 50_000
OLDER_THRESHOLD = 20  # young collections per middle one, middle per full (CPython: 10)


def tune() -> None:
    """Set the thresholds; call once, before the agent starts allocating its state."""
    gc.set_threshold(YOUNG_THRESHOLD, OLDER_THRESHOLD, OLDER_THRESHOLD)


def freeze_recovered_state() -> None:
    """Move every object alive now out of the collector's sight (after recovery)."""
    gc.freeze()
