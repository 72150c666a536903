"""The simulated network: delay, loss, duplication, reordering and partitions.

Everything is driven by the simulation's own RNG and tick counter, so a seed
replays exactly.
"""

from __future__ import annotations

import heapq
import random

from raftfleet_agent.raft.messages import Message


class SimNetwork:
    def __init__(self, rng: random.Random) -> None:
        self.rng = rng
        self.now = 0
        self.loss = 0.0
        self.dup = 0.0
        self.max_delay = 2
        self.long_delay_p = 0.0  # some messages take far longer (reordering across rounds)
        # Directed cut links (from agent, to agent): a symmetric partition cuts both ways.
        self.cut: set[tuple[str, str]] = set()
        self._queue: list[tuple[int, int, Message]] = []
        self._seq = 0
        self.sent = 0
        self.dropped = 0

    def heal(self) -> None:
        self.cut.clear()
        self.loss = self.dup = self.long_delay_p = 0.0

    def send(self, msg: Message) -> None:
        self.sent += 1
        if (msg.frm.agent, msg.to.agent) in self.cut or self.rng.random() < self.loss:
            self.dropped += 1
            return
        copies = 2 if self.rng.random() < self.dup else 1
        for _ in range(copies):
            delay = self.rng.randint(0, self.max_delay)
            if self.rng.random() < self.long_delay_p:
                delay += self.rng.randint(5, 40)
            self._seq += 1
            # The random tiebreak reorders messages due in the same tick.
            heapq.heappush(self._queue, (self.now + delay, self.rng.random(), self._seq, msg))

    def due(self) -> list[Message]:
        """Messages arriving now; a link cut while they were in flight drops them."""
        out = []
        while self._queue and self._queue[0][0] <= self.now:
            msg = heapq.heappop(self._queue)[3]
            if (msg.frm.agent, msg.to.agent) in self.cut:
                self.dropped += 1
                continue
            out.append(msg)
        return out

    def hold(self, msg: Message, until: int) -> None:
        """Deliver `msg` again at `until` (its receiver is frozen until then)."""
        self._seq += 1
        heapq.heappush(self._queue, (until, self.rng.random(), self._seq, msg))

    def in_flight(self) -> int:
        return len(self._queue)

    def partition(self, side_a: set[str], side_b: set[str], *, one_way: bool = False) -> None:
        for a in side_a:
            for b in side_b:
                self.cut.add((a, b))
                if not one_way:
                    self.cut.add((b, a))
