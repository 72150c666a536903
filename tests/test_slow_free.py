"""SlowFree: many objects let go a slice per step, and every one of them in the end."""

from __future__ import annotations

import gc
import weakref

from raftfleet_agent.slow_free import SlowFree


class Obj:
    pass


def test_a_step_releases_its_budget_oldest_list_first() -> None:
    first, second = [Obj() for _ in range(30)], [Obj() for _ in range(5)]
    refs = [weakref.ref(o) for o in first + second]
    sf = SlowFree(per_step=10)
    sf.put(first)
    sf.put(second)
    sf.put([])  # nothing to hold
    del first, second
    gc.collect()
    assert sf.waiting == 35 and all(r() is not None for r in refs)
    sf.step()
    assert sf.waiting == 25
    assert sum(r() is None for r in refs) == 10
    assert all(r() is not None for r in refs[30:])  # the newer list waits its turn
    sf.step(extra=20)  # the caller may ask for more: 30 here, past the first list
    assert sf.waiting == 0 and all(r() is None for r in refs)
    sf.step()  # nothing waiting: nothing to do
    assert sf.waiting == 0


def test_no_step_frees_more_than_its_cap_unless_asked() -> None:
    sf = SlowFree(per_step=10)  # the cap: 80 a step
    sf.put([Obj() for _ in range(8_000)])
    sf.step()
    assert sf.waiting == 8_000 - 80  # not an eighth (1,000): that stalled turns
    sf.step(extra=500)  # what the caller added since is always let go
    assert sf.waiting == 8_000 - 80 - 510


def test_a_backlog_shrinks_by_an_eighth_per_step_whatever_the_budget() -> None:
    sf = SlowFree(per_step=1, max_step=10_000)
    sf.put([Obj() for _ in range(8_000)])
    sf.step()
    assert sf.waiting == 7_000
    steps = 1
    while sf.waiting:
        sf.step()
        steps += 1
    assert steps < 80  # geometric: ~70 steps, not 8,000
