"""Raft's safety properties, checked as the simulation runs.

- election safety: at most one leader per term;
- log matching: two logs with an entry of the same index and term are
  identical up to it;
- leader completeness: a new leader holds every committed entry;
- state-machine safety: no two replicas apply different entries (or reach
  different states) at one index;
- commit never decreases, in memory or on disk;
- exactly once: an acknowledged command takes effect once and is never lost,
  and its reply is the one its effect produced;
- linearizable reads: a read reflects every entry committed before it was
  invoked (and the state at the index where it was served).
"""

from __future__ import annotations

from collections import deque

from raftfleet_agent.raft.member import RaftMember
from raftfleet_agent.raft.types import Config, Entry, ReplicaId


class SimViolation(Exception):
    def __init__(self, what: str) -> None:
        super().__init__(what)
        self.what = what


class SafetyChecker:
    def __init__(self) -> None:
        self.leaders: dict[int, ReplicaId] = {}
        self.applied: dict[int, tuple[int, int, object]] = {}  # index -> (term, kind, data)
        self.values: dict[int, int] = {}  # index -> counter value after applying it
        self.effective: dict[tuple[str, int], int] = {}  # request id -> index where it took effect
        self.replies: dict[tuple[str, int], object] = {}
        self.acked: dict[tuple[str, int], object] = {}
        self.commit = 0  # highest commit index any replica reached
        self.trace: deque[str] = deque(maxlen=4000)
        self.reads_checked = 0

    def fail(self, what: str) -> None:
        raise SimViolation(what)

    # ---------------------------------------------------------------- per step

    def check_leaders(self, members: list[RaftMember]) -> None:
        for mem in members:
            if mem.is_leader:
                prev = self.leaders.setdefault(mem.term, mem.id)
                if prev != mem.id:
                    self.fail(f"two leaders in term {mem.term}: {prev} and {mem.id}")

    def became_leader(self, mem: RaftMember) -> None:
        """Leader completeness: every entry applied anywhere is in the new leader's log."""
        for idx in range(mem.log.offset + 1, self.commit + 1):
            known = self.applied.get(idx)
            if known is not None and mem.log.term_at(idx) != known[0]:
                self.fail(
                    f"leader {mem.id} of term {mem.term} lacks committed entry {idx} "
                    f"(term {known[0]}); its term there: {mem.log.term_at(idx)}"
                )

    def check_removal(
        self, gone: RaftMember, others: list[tuple[int, int, Config, ReplicaId]]
    ) -> None:
        """A replica leaves only when the newest configuration anyone holds leaves it out.

        `others`: (index, term, configuration, holder) of every other replica,
        a crashed one's from its disk (its removing entry may be durable only
        there). (A deposed leader's stale notice once removed a voter added
        after it; replica ids are never reused here, so no later re-add can
        excuse it.)
        """
        mine = (gone.config_index, gone.log.term_at(gone.config_index) or 0, gone.config, gone.id)
        # Newest as Raft orders logs: by term, then index. A deposed leader cut
        # off may hold a configuration at a higher index of an older term; the
        # new leader's will overwrite it (simulator seed 646 took it for newer).
        index, _term, config, holder = max((mine, *others), key=lambda c: (c[1], c[0]))
        if gone.id in config.members:
            self.fail(
                f"{gone.id} removed itself, but the newest configuration (index "
                f"{index}, held by {holder}) still has it"
            )

    def check_commit(self, mem: RaftMember, previous: int) -> None:
        if mem.commit < previous:
            self.fail(f"{mem.id}: commit went back from {previous} to {mem.commit}")
        self.commit = max(self.commit, mem.commit)

    def check_log_matching(self, a: RaftMember, b: RaftMember) -> None:
        lo = max(a.log.offset, b.log.offset) + 1
        hi = min(a.log.last_index, b.log.last_index)
        matched = False
        for idx in range(hi, lo - 1, -1):
            ea, eb = a.log.entry(idx), b.log.entry(idx)
            if ea.term == eb.term:
                matched = True
                if ea != eb:
                    self.fail(f"log matching: {a.id} and {b.id} differ at {idx}: {ea} vs {eb}")
            elif matched:
                self.fail(f"log matching: {a.id} and {b.id} agree above {idx} but not at it")

    # ---------------------------------------------------------------- applying

    def on_apply(
        self, who: ReplicaId, e: Entry, value: int, reply: object, effective: bool
    ) -> None:
        key = (e.term, int(e.kind), e.data)
        known = self.applied.setdefault(e.index, key)
        if known != key:
            self.fail(f"state machine safety: {who} applied {key} at {e.index}, others {known}")
        v = self.values.setdefault(e.index, value)
        if v != value:
            self.fail(f"state machine safety: {who} has value {value} after {e.index}, others {v}")
        if effective:
            rid = (e.data[0], e.data[1])  # type: ignore[index]
            where = self.effective.setdefault(rid, e.index)
            if where != e.index:
                self.fail(f"command {rid} took effect twice: at {where} and {e.index}")
            self.replies[rid] = reply

    def on_restore(self, who: ReplicaId, index: int, value: int) -> None:
        v = self.values.get(index)
        if v is not None and v != value:
            self.fail(f"{who} restored value {value} at {index}, but it was {v}")

    def on_ack(self, rid: tuple[str, int], reply: object) -> None:
        self.acked[rid] = reply
        if rid not in self.effective:
            self.fail(f"command {rid} acknowledged but never took effect")
        if self.replies[rid] != reply:
            self.fail(
                f"command {rid} acknowledged with {reply}, its effect replied {self.replies[rid]}"
            )

    def on_read(self, who: ReplicaId, invoked_commit: int, served_at: int, value: int) -> None:
        self.reads_checked += 1
        if served_at < invoked_commit:
            self.fail(
                f"stale read from {who}: served at index {served_at}, but {invoked_commit} "
                f"was committed before the read was invoked"
            )
        expected = self.values.get(served_at, 0 if served_at == 0 else None)
        if expected is not None and expected != value:
            self.fail(f"read from {who} at {served_at} returned {value}, state there is {expected}")

    def check_exactly_once(self) -> None:
        lost = [rid for rid in self.acked if rid not in self.effective]
        if lost:
            self.fail(f"acknowledged commands lost: {lost[:5]}")
