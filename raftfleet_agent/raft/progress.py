"""What a leader knows about each follower's log. Pure bookkeeping, no I/O.

States (etcd's tracker): PROBE sends one append at a time until the follower's
position is known; REPLICATE pipelines up to `max_inflight` appends
optimistically; SNAPSHOT streams a snapshot and sends no appends meanwhile.
"""

from __future__ import annotations

import enum


class ProgressState(enum.Enum):
    PROBE = "probe"
    REPLICATE = "replicate"
    SNAPSHOT = "snapshot"


class Progress:
    __slots__ = (
        "acked_round",
        "heard",
        "inflight",
        "last_ack",
        "last_contact",
        "match",
        "next",
        "paused",
        "recent_active",
        "snap_index",
        "snap_offset",
        "snap_sent_tick",
        "state",
    )

    def __init__(self, next_index: int, now: int) -> None:
        # Invariant: match < next.
        self.match = 0
        self.next = next_index
        self.state = ProgressState.PROBE
        self.paused = False  # PROBE: an append is outstanding
        # REPLICATE: last index of each append in flight, ascending. A list, not a
        # deque: an empty deque holds a 528-byte block, times thousands of followers.
        self.inflight: list[int] = []
        self.recent_active = True  # heard from since the last check-quorum round
        self.last_contact = now  # tick of the last message from this follower
        # Answered this leader at least once. Until then last_contact is only the
        # tick the leader started tracking it, which says nothing of its health.
        self.heard = False
        self.last_ack = now  # tick when `match` last moved
        self.acked_round = 0  # highest heartbeat round this follower echoed
        self.snap_index = 0  # SNAPSHOT: index of the snapshot being sent
        self.snap_offset = 0  # SNAPSHOT: next byte offset to send
        self.snap_sent_tick = 0

    def become_probe(self) -> None:
        self.state = ProgressState.PROBE
        self.paused = False
        self.inflight.clear()
        self.next = max(self.next, self.match + 1)

    def become_replicate(self) -> None:
        self.state = ProgressState.REPLICATE
        self.paused = False
        self.inflight.clear()
        self.next = self.match + 1

    def become_snapshot(self, snap_index: int) -> None:
        self.state = ProgressState.SNAPSHOT
        self.inflight.clear()
        self.snap_index = snap_index
        self.snap_offset = 0
        self.snap_sent_tick = -(1 << 30)

    def maybe_update(self, index: int) -> bool:
        """An acknowledgement up to `index` arrived; True if it moved `match`."""
        updated = index > self.match
        if updated:
            self.match = index
        self.next = max(self.next, index + 1)
        acked = 0
        for last in self.inflight:
            if last > index:
                break
            acked += 1
        if acked:
            del self.inflight[:acked]
        self.paused = False
        return updated

    def maybe_decrease_to(self, rejected: int, hint_next: int) -> bool:
        """A rejection of the append whose prev index was `rejected`.

        Returns False for stale rejections: in REPLICATE, anything at or below
        `match` (a newer acknowledgement already got further); in PROBE,
        anything but the append we are waiting for. A hint never pushes
        `next` to or below `match`.
        """
        if self.state is ProgressState.REPLICATE:
            if rejected <= self.match:
                return False
            self.next = max(self.match + 1, min(hint_next, rejected))
            return True
        if self.next - 1 != rejected:
            return False
        self.next = max(self.match + 1, min(hint_next, rejected))
        self.paused = False
        return True

    def can_send(self, max_inflight: int) -> bool:
        if self.state is ProgressState.PROBE:
            return not self.paused
        if self.state is ProgressState.REPLICATE:
            return len(self.inflight) < max_inflight
        return False

    def sent(self, last: int, count: int) -> None:
        """An append covering entries up to `last` (`count` of them) went out."""
        if self.state is ProgressState.REPLICATE:
            if count:
                self.next = last + 1
                self.inflight.append(last)
        elif self.state is ProgressState.PROBE:
            self.paused = True
