"""The simulator's checker itself: it must neither miss a bad removal nor cry wolf."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from raftfleet_agent.raft.types import Config, Entry, EntryKind, ReplicaId
from raftfleet_agent.sim.checker import SafetyChecker, SimViolation
from raftfleet_agent.sim.node import Disk

A, B, C, D = (ReplicaId(x, 1) for x in "abcd")
WITH_D = Config(voters=frozenset({A, B, C}), learners=frozenset({D}))
WITHOUT_D = Config(voters=frozenset({A, B, C}))


def _gone(config: Config, index: int, term: int) -> SimpleNamespace:
    """A removed replica as the checker sees it (its own last configuration)."""
    log = SimpleNamespace(term_at=lambda i: term if i == index else None)
    return SimpleNamespace(id=D, config=config, config_index=index, log=log)


def test_a_removal_the_newest_configuration_agrees_with_passes() -> None:
    SafetyChecker().check_removal(_gone(WITH_D, 20, 3), [(21, 3, WITHOUT_D, A)])


def test_a_removal_the_newest_configuration_does_not_agree_with_fails() -> None:
    with pytest.raises(SimViolation, match="still has it"):
        SafetyChecker().check_removal(_gone(WITH_D, 20, 3), [(21, 4, WITH_D, A)])


def test_newest_is_by_term_first() -> None:
    # Seed 646: a deposed leader, cut off, held a configuration at a higher
    # index of an older term; the new leader's removal overwrites it.
    SafetyChecker().check_removal(
        _gone(WITH_D, 20, 12), [(233, 12, WITH_D, A), (232, 13, WITHOUT_D, B)]
    )


def test_a_crashed_replicas_disk_counts() -> None:
    # Seed 1066: the leader persisted the removal, told the learner, crashed.
    disk = Disk()
    disk.entries = [
        Entry(2, 21, EntryKind.CONFIG, WITH_D),
        Entry(2, 22, EntryKind.NORMAL, None),
        Entry(2, 23, EntryKind.CONFIG, WITHOUT_D),
    ]
    durable = disk.newest_config()
    assert durable == (23, 2, WITHOUT_D)
    SafetyChecker().check_removal(_gone(WITH_D, 21, 2), [(*durable, A)])
