"""The multi-raft loop: one ticker and one store commit per turn for every group.

Each turn:
1. tick every replica if the tick is due (one ticker for all groups, never a
   timer task per group);
2. finish the turns whose store commit became durable: send the messages that
   promise durability (votes, append acknowledgements), restore snapshots,
   answer reads, `advance()`;
3. gather a `Ready` from every replica with work, send their early messages
   (a leader's appends go out while its own fsync runs), apply committed
   entries and answer their clients at once (committed = durable on a
   majority; waiting for our own fsync of the commit index cost a whole
   extra fsync per command), and hand all of their writes to the store as
   ONE batch (one transaction, one fsync);
4. send everything queued, one frame per peer agent: every group's heartbeats
   and appends to that peer travel together.
Turns pipeline: while one batch is being made durable the next turn already
gathers the replicas that are not waiting for the disk, and a replica that
is waiting still applies (and answers) what its followers committed in the
meantime (`RaftMember.take_committed`): two fast followers are a majority
even while the leader's own fsync runs.

Cancellation: `run` stops the ticker and the loop; batches already handed to
the store still complete (the store finishes them on close).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import random
import time
from collections import defaultdict, deque
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING

import attrs
import trio

from raftfleet_agent.host import wire
from raftfleet_agent.host.replica import (
    Expired,
    LostLeadership,
    Replica,
    ReplicaGone,
    ReplicaMeta,
    Waiter,
    entry_bytes,
)
from raftfleet_agent.metrics import HostMetrics
from raftfleet_agent.raft.errors import RaftError
from raftfleet_agent.raft.member import RaftMember, RaftOptions
from raftfleet_agent.raft.membership import ConfOp
from raftfleet_agent.raft.messages import Message
from raftfleet_agent.raft.quorum import quorum_size
from raftfleet_agent.raft.ready import Ready
from raftfleet_agent.raft.types import Config, ReplicaId
from raftfleet_agent.slow_free import SlowFree
from raftfleet_agent.statemachine import Applier, ApplyResult, SnapshotError, encode_command
from raftfleet_agent.statemachine.applier import SnapshotJob
from raftfleet_agent.storage.api import GroupWrite, LogStore, WriteBatch

if TYPE_CHECKING:
    import outcome

logger = logging.getLogger("raftfleet.host")

# A group whose batches of entries average fewer than this serves about one
# request at a time: see MultiRaftHost._need_not_wait.
_ONE_AT_A_TIME = 2.0

# Requests started without a task between two sweeps of the deadline heap.
_DEADLINE_SWEEP_EVERY = 4096

# Entries a snapshot compacted away are freed this many per turn (or an
# eighth of those waiting, if more; see slow_free): freed all at once, they
# stalled every replica of a busy group together, which was most of the
# 64-client p999.
_FREE_PER_TURN = 1_000


class UnknownGroup(Exception):
    code = "unknown_group"


class ReplicaExists(Exception):
    code = "already_exists"


@attrs.frozen
class HostStatistics:
    replicas: int
    leaders: int
    awake: int  # replicas not quiescent (the ones the ticker still ticks)
    turns: int
    store_batches: int
    entries_written: int
    messages_sent: int
    messages_received: int
    messages_dropped: int
    batches_in_flight: int


@attrs.define
class _Turn:
    readys: list[tuple[Replica, Ready]]
    extra: list[Waiter]
    submitted_s: float = 0.0  # when handed to the store (metrics)


class MultiRaftHost:
    def __init__(
        self,
        *,
        agent: str,
        store: LogStore,
        send_frame: Callable[[str, object], bool],
        options: RaftOptions,
        tick_interval_s: float = 0.1,
        snapshot_every: int = 10_000,
        rng: random.Random | None = None,
    ) -> None:
        self.agent = agent
        self.store = store
        self._send_frame = send_frame
        if options.peer_unreachable is None:
            # Quiet leaders need not wait for followers on agents we cannot reach.
            options = attrs.evolve(options, peer_unreachable=self._unreachable)
        self.options = options
        self.tick_interval_s = tick_interval_s
        self.snapshot_every = snapshot_every
        self.rng = rng or random.Random()
        self.replicas: dict[str, Replica] = {}
        self._dirty: set[str] = set()
        # Groups that are not quiescent: only these are ticked, so an idle
        # group costs nothing per tick (thousands of them, next to nothing).
        self._awake: set[str] = set()
        self._wake = trio.Event()
        self._tick_due = False
        self._epoch = 0.0  # when tick 0 was
        self._ticks_done = 0  # ticks counted so far (ticked or skipped)
        self._durable: deque[tuple[_Turn, BaseException | None]] = deque()
        self._extra: list[tuple[GroupWrite, Waiter]] = []
        self._out: dict[str, list[tuple[str, Message]]] = defaultdict(list)
        self._token: trio.lowlevel.TrioToken | None = None
        self._in_flight = 0
        self._turns = self._batches = self._entries = 0
        self._sent = self._received = self._dropped = 0
        # Whether a peer agent can be reached now (the agent sets it from its
        # transport): a quiet leader must not lead on without a quorum of them.
        self.reachable: Callable[[str], bool] = lambda _agent: True
        self.on_leader_change: Callable[[str, ReplicaId | None], None] | None = None
        self.on_replica_stopped: Callable[[str], None] | None = None
        self.metrics = HostMetrics()
        # Deadlines of the requests started without a task (start_command /
        # start_query), checked every tick: (deadline, tie-breaker, waiter).
        self._deadlines: list[tuple[float, int, Waiter]] = []
        self._deadline_seq = itertools.count()
        self._started_since_sweep = 0
        self._compacted = SlowFree(_FREE_PER_TURN)
        self._snapshotting: dict[str, None] = {}  # groups whose snapshot is under way

    # ------------------------------------------------------------ start

    def recover(self) -> int:
        """Rebuild every replica the store holds; returns how many."""
        for rec in self.store.load():
            if rec.meta is None:
                logger.warning("group %s has rows but no metadata; skipping it", rec.group)
                continue
            meta = ReplicaMeta.decode(rec.meta)
            applier = Applier(meta.data_type)
            if rec.snapshot is not None and rec.snapshot.data:
                applier.restore(rec.snapshot.data)
            member = RaftMember(
                meta.replica,
                options=self.options,
                rng=self.rng,
                hard_state=rec.hard_state,
                snapshot=rec.snapshot,
                entries=rec.entries,
            )
            r = Replica(rec.group, member, applier, meta.data_type)
            if rec.snapshot is not None:
                r.snapshot_bytes = len(rec.snapshot.data)
            self.replicas[rec.group] = r
            self._dirty.add(rec.group)
            self._awake.add(rec.group)
        return len(self.replicas)

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        """Run the ticker and the loop until cancelled; raises if the store failed."""
        self._token = trio.lowlevel.current_trio_token()
        self._epoch = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._ticker)
            task_status.started()
            await self._loop()

    async def _ticker(self) -> None:
        while True:
            await trio.sleep(self.tick_interval_s)
            self._catch_up()
            self._ticks_done += 1
            self._tick_due = True
            self._wake.set()
            self._expire()

    def _expire(self) -> None:
        now = trio.current_time()
        dl = self._deadlines
        while dl and dl[0][0] <= now:
            heapq.heappop(dl)[2].resolve(Expired("no answer before the deadline"))

    def _catch_up(self) -> None:
        """Count ticks that were missed (a paused process, an overloaded loop).

        trio's sleep does not make up for lost time: after a SIGSTOP of many
        seconds the ticker fires once, and under load every tick comes late.
        Leases are measured in ticks, so ticks must follow the clock: every
        replica is told how many ticks really passed (`skip`) before it serves
        anything. Timers that start elections are not advanced by this.
        """
        due = int((trio.current_time() - self._epoch) / self.tick_interval_s)
        missed = due - self._ticks_done - 1
        if missed > 0:
            self._ticks_done += missed
            for r in self.replicas.values():
                r.member.skip(missed)
            if missed > 5:
                logger.warning("the loop missed %d ticks (paused or overloaded)", missed)

    async def _loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake = trio.Event()
            self._turn()

    def wake(self) -> None:
        self._wake.set()

    # ------------------------------------------------------------ one turn

    def _turn(self) -> None:
        self._turns += 1
        if self._tick_due:
            self._tick_due = False
            self._tick_awake()
        while self._durable:
            turn, err = self._durable.popleft()
            if err is not None:
                # Never retry a failed fsync, never acknowledge what is not durable.
                raise err
            self._finish(turn)
        self._gather()
        self._flush_out()
        if self._snapshotting:
            self._step_snapshots()
        if self._compacted.waiting:
            self._compacted.step()
        if self._compacted.waiting or self._snapshotting:
            self.wake()  # another turn soon, even if nothing else happens

    def _step_snapshots(self) -> None:
        """Pack one more slice of every snapshot under way; join those done.

        A kv map of a million keys took 0.25-0.6 s to pack in one turn, and
        every group on the agent waited; a slice takes a few ms.
        """
        for g in list(self._snapshotting):
            r = self.replicas.get(g)
            job = None if r is None else r.snapshot_job
            if r is None or job is None or r.stopped:
                del self._snapshotting[g]
                continue
            if job.step():
                del self._snapshotting[g]
                self._join_snapshot(r, job)

    def _join_snapshot(self, r: Replica, job: SnapshotJob) -> None:
        """Join a packed snapshot's slices on a thread, then compact in the loop.

        Joining ~100 MB of slices took 110-360 ms of a turn on a busy
        machine; `bytes.join` lets go of the GIL while it copies, so on a
        thread the loop goes on meanwhile. `r.snapshot_job` stays set until
        then, so no second snapshot starts; an install clears it, and the
        joined bytes are then dropped.
        """
        token = self._token
        assert token is not None

        def joined(result: outcome.Outcome[bytes]) -> None:  # on the worker thread
            with contextlib.suppress(trio.RunFinishedError):  # the agent stopped meanwhile
                token.run_sync_soon(self._on_joined, r, job, result)

        trio.lowlevel.start_thread_soon(job.result, joined, name="raftfleet-snapshot-join")

    def _on_joined(self, r: Replica, job: SnapshotJob, result: outcome.Outcome[bytes]) -> None:
        if r.snapshot_job is not job or r.stopped or self.replicas.get(r.group) is not r:
            return  # replaced by an install, or the replica is gone
        r.snapshot_job = None
        self._compact(r, job.index, result.unwrap())
        self._dirty.add(r.group)  # its next Ready stages the snapshot
        self.wake()

    def _compact(self, r: Replica, index: int, data: bytes) -> None:
        """Compact the log to a finished snapshot (a no-op if one installed since covers it)."""
        r.snapshot_bytes = len(data)
        self._compacted.put(r.member.compact(index, data))
        # What stays is what was applied while a sliced snapshot was packed.
        log = r.member.log
        r.log_bytes = sum(map(entry_bytes, log.slice(log.offset + 1, r.applier.applied_index + 1)))
        self.metrics.snapshots_taken.inc()

    def _tick_awake(self) -> None:
        for g in list(self._awake):
            r = self.replicas.get(g)
            if r is None:
                self._awake.discard(g)
                continue
            r.member.tick()
            self._dirty.add(g)
            if r.member.quiescent:
                if r.member.is_leader and not self._quorum_reachable(r.member):
                    # Its followers died just before it fell quiet (it had heard
                    # from them recently): keep it awake, so check-quorum runs.
                    r.member.wake()
                    continue
                self._awake.discard(g)

    def _gather(self) -> None:
        readys: list[tuple[Replica, Ready]] = []
        at_once: list[tuple[Replica, Ready]] = []  # nothing in them waits for the disk
        writes: list[GroupWrite] = []
        extra = self._extra
        self._extra = []
        writes.extend(w for w, _ in extra)
        dirty, self._dirty = self._dirty, set()
        for g in dirty:
            r = self.replicas.get(g)
            if r is None:
                continue
            if not r.member.has_ready():
                self._apply_committed_early(r)
                continue
            rd = r.member.ready()
            if rd.entries:
                r.batch_avg += (len(rd.entries) - r.batch_avg) / 8
            (at_once if self._need_not_wait(r, rd) else readys).append((r, rd))
            self._queue(r.group, rd.early_messages)
            if rd.committed and rd.snapshot is None:
                # Committed means durable on a majority already: apply and answer
                # now, not after this turn's fsync (which only makes the commit
                # index durable, and that index can be learned again).
                for e in rd.committed:
                    r.apply(e)
            writes.extend(self._writes_of(g, rd))
        if not readys and not extra and not at_once:
            return
        turn = _Turn(readys, [w for _, w in extra])
        if not writes:
            self._finish(turn)  # nothing to persist: no need to wait for the disk
        else:
            self._in_flight += 1
            self._batches += 1
            batch = WriteBatch(tuple(writes))
            self._entries += batch.entry_count
            turn.submitted_s = self.metrics.note_submitted(len(batch.writes), batch.entry_count)
            self.store.submit(batch, partial(self._on_durable_thread, turn))
        if at_once:
            # After the submit: their writes are ahead of any their next Ready makes.
            self._finish(_Turn(at_once, []))

    @staticmethod
    def _need_not_wait(r: Replica, rd: Ready) -> bool:
        """Whether to advance `rd` now instead of after this turn's fsync.

        Only a Ready with nothing that must be durable first (at most a new
        commit index, which is learned again from the leader after a crash:
        etcd's MustSync rule); its messages then promise only what earlier,
        durable writes hold. Its write still goes with this turn's batch.

        And only while the group's batches of entries hold about one entry
        (a running mean: one short batch must not switch a busy group over).
        Waiting costs the group's next proposal a whole disk write, which is
        what a lone client sees as latency; but where many clients write to
        one group, the requests that arrive during that wait are what fills
        the next batch (measured with 64 clients on one group: 10,000/s when
        never waiting against 11,000-13,000/s when always waiting).
        """
        return not rd.sync and not rd.removed and r.batch_avg < _ONE_AT_A_TIME

    @staticmethod
    def _apply_committed_early(r: Replica) -> None:
        """Apply what followers committed while our own Ready waits for the disk."""
        if r.member.commit <= r.applier.applied_index:
            return  # nearly always: nothing new (the cheap check first)
        entries = r.member.take_committed()
        if entries:
            for e in entries:
                r.apply(e)
            r.answer_reads()

    def _writes_of(self, group: str, rd: Ready) -> list[GroupWrite]:
        if not rd.must_persist:
            return []
        compacted = rd.compacted
        if compacted is not None and rd.snapshot is None and compacted.meta.index > 0:
            # Taken here, after its entries were durable: the store writes it
            # off the commit path (a large state written inside the group
            # commit held every group's commit for up to a second).
            self.store.stage_snapshot(group, compacted)
            compacted = None
        if rd.snapshot is None and compacted is None:  # nearly always
            if not (rd.entries or rd.hard_state):
                return []
            return [GroupWrite(group=group, entries=rd.entries, hard_state=rd.hard_state)]
        snaps = sorted(
            (s for s in (rd.snapshot, compacted) if s is not None), key=lambda s: s.meta.index
        )
        out = [GroupWrite(group=group, snapshot=s) for s in snaps[:-1]]
        out.append(
            GroupWrite(
                group=group,
                entries=rd.entries,
                hard_state=rd.hard_state,
                snapshot=snaps[-1] if snaps else None,
            )
        )
        return out

    def _on_durable_thread(self, turn: _Turn, err: BaseException | None) -> None:
        # Called on the store's writer thread (or inline for the memory store).
        assert self._token is not None
        self._token.run_sync_soon(self._on_durable, turn, err)

    def _on_durable(self, turn: _Turn, err: BaseException | None) -> None:
        self._in_flight -= 1
        self.metrics.note_durable(turn.submitted_s)
        self._durable.append((turn, err))
        self._wake.set()

    def _finish(self, turn: _Turn) -> None:
        for r, rd in turn.readys:
            if r.stopped:
                continue
            self._queue(r.group, rd.messages)
            self._apply(r, rd)
            self.metrics.note_ready(r.group, r.member.id, r.member.leader, len(rd.committed))
            self._dirty.add(r.group)
        for w in turn.extra:
            w.resolve(True)

    def _apply(self, r: Replica, rd: Ready) -> None:
        if rd.snapshot is not None:
            applier = Applier(r.meta.data_type)
            try:
                if rd.snapshot.data:
                    applier.restore(rd.snapshot.data)
            except SnapshotError as e:
                # Only this replica is affected: stop it, keep its rows for the
                # operator, and let the fleet rebuild it elsewhere.
                logger.error(
                    "%s: snapshot %d from the leader is unusable: %s",
                    r.group,
                    rd.snapshot.meta.index,
                    e,
                )
                self._drop(r, f"unusable snapshot: {e}")
                return
            r.applier = applier
            r.snapshot_job = None  # of the state just replaced
            r.snapshot_bytes = len(rd.snapshot.data)
            r.log_bytes = 0
            self.metrics.snapshots_installed.inc()
            for e in rd.committed:  # after the snapshot they follow (else applied in _gather)
                r.apply(e)
        for rs in rd.reads:
            r.read_ready(rs.ctx, rs.index)
        for ctx in rd.failed_reads:
            r.read_failed(ctx)
        r.member.advance(rd)
        r.answer_reads()
        if rd.removed:
            self._drop(r, "this replica was removed from the group")
            return
        if r.snapshot_job is None and self._snapshot_due(r):
            job = r.applier.start_snapshot()
            if job.done:
                self._compact(r, job.index, job.result())
            else:  # a large kv map: packed a slice per turn (_step_snapshots)
                r.snapshot_job = job
                self._snapshotting[r.group] = None
        if r.member.leader != r.known_leader:
            # Compared with what we last reported, not with the state before this
            # Ready: ticks and steps change the leader between Readys.
            r.known_leader = r.member.leader
            r.leader_since_s = time.monotonic()
            if self.on_leader_change is not None:
                self.on_leader_change(r.group, r.member.leader)

    def _snapshot_due(self, r: Replica) -> bool:
        """`snapshot_every` entries applied since the last snapshot, and at least its size.

        A snapshot rewrites the whole state, on every replica of the group at
        about the same time, and every group on the agent waits while the
        loop serialises it and while the store commits it (a kv map of
        280,000 keys: ~25 ms, then a 12 MB commit of 40-70 ms). Taking one
        only once the log since the last has grown as large (its commands'
        encoded sizes, `Replica.log_bytes`) keeps what snapshots write to
        about what the log does, however large the state (the Raft
        dissertation's rule, 5.1), and the log's memory to about the state's,
        whatever the commands weigh. A small state still snapshots every
        `snapshot_every` entries.
        """
        since = r.applier.applied_index - r.member.log.offset
        return since >= self.snapshot_every and r.log_bytes >= r.snapshot_bytes

    # ------------------------------------------------------------ messages

    def _queue(self, group: str, msgs: tuple[Message, ...]) -> None:
        for msg in msgs:
            self._out[msg.to.agent].append((group, msg))

    def _flush_out(self) -> None:
        for agent, batch in self._out.items():
            self._sent += len(batch)
            if not self._send_frame(agent, wire.encode_raft(batch)):
                self._dropped += len(batch)
        self._out.clear()

    def deliver(self, peer: str, batch: list[tuple[str, Message]]) -> None:
        """Raft messages from `peer` (already decoded and shape-checked)."""
        for group, msg in batch:
            self._received += 1
            r = self.replicas.get(group)
            # A peer speaks only for its own replicas, and only to ours.
            if r is None or msg.frm.agent != peer or msg.to != r.member.id:
                self._dropped += 1
                continue
            r.member.step(msg)
            self._dirty.add(group)
            if r.member.quiescent:
                self._awake.discard(group)
            else:
                self._awake.add(group)
        self._wake.set()

    def wake_led_by(self, agent: str) -> int:
        """`agent` became unreachable: tell the replicas it leads.

        Quiescent ones wake, restarting their election timers from random
        points (RaftMember.wake), so the elections after an agent failure
        spread over an election timeout instead of all starting at once;
        active followers campaign as soon as a new leader can be elected
        (RaftMember.leader_lost), which makes failover about one timeout.
        """
        woken = 0
        for g, r in self.replicas.items():
            m = r.member
            if m.leader is not None and m.leader.agent == agent and m.leader != m.id:
                m.leader_lost()
                self._touch(g)
                woken += 1
        return woken

    def _quorum_reachable(self, m: RaftMember) -> bool:
        voters = m.config.voters
        up = sum(1 for v in voters if v.agent == self.agent or self.reachable(v.agent))
        return up >= quorum_size(len(voters))

    def _unreachable(self, _frm: str, to: str) -> bool:
        return not self.reachable(to)

    def wake_leaders_behind(self, agent: str) -> int:
        """`agent` is reachable again: wake the quiet leaders it fell behind.

        A leader may go quiet without the answers of followers on unreachable
        agents (RaftOptions.peer_unreachable); such a follower, back, would
        otherwise wait for the next proposal to be caught up.
        """
        woken = 0
        for g, r in self.replicas.items():
            m = r.member
            if m.quiescent and m.is_leader and m.has_follower_behind_on(agent):
                m.wake()
                self._touch(g)
                woken += 1
        return woken

    def wake_leaders_without_quorum(self) -> int:
        """Peers went down: wake the quiet leaders without a quorum of reachable voters.

        A quiescent leader does not tick, so check-quorum never runs and it
        would lead, and serve the cluster state, for ever after its followers
        died; awake, it steps down within an election timeout and the group
        shows as leaderless (and can be recovered). Only groups with a
        majority of voters on unreachable agents wake: one failed agent in
        groups of three wakes none, so idle cost does not jump with an outage.
        A leader still awake then is kept from falling quiet (`_tick_awake`).
        """
        woken = 0
        for g, r in self.replicas.items():
            m = r.member
            if m.quiescent and m.is_leader and not self._quorum_reachable(m):
                m.wake()
                self._touch(g)
                woken += 1
        return woken

    def _touch(self, group: str) -> None:
        """Something happened to `group`: tick it again and look for a Ready."""
        self._dirty.add(group)
        self._awake.add(group)
        self._wake.set()

    # ------------------------------------------------------------ replicas

    async def create_replica(
        self, group: str, data_type: str, replica: ReplicaId, config: Config | None
    ) -> None:
        """Host a replica of `group`: bootstrap it with `config`, or wait to be sent the log.

        Returns once its metadata (and bootstrap configuration) is durable.
        Idempotent for the same replica id.
        """
        existing = self.replicas.get(group)
        if existing is not None:
            if existing.member.id == replica:
                return
            raise ReplicaExists(f"this agent already hosts {group} as {existing.member.id}")
        applier = Applier(data_type)  # raises DataTypeError for an unknown type
        rng = self.rng  # one generator for all: a Random costs 2.5 KB per replica
        if config is not None:
            member = RaftMember.bootstrap(replica, config, options=self.options, rng=rng)
        else:
            member = RaftMember(replica, options=self.options, rng=rng)
        r = Replica(group, member, applier, data_type)
        self.replicas[group] = r
        self._awake.add(group)
        await self._write_extra(GroupWrite(group=group, meta=r.meta.encode()))

    async def drop_replica(self, group: str) -> bool:
        """Stop and delete the local replica of `group`; False if there was none."""
        r = self.replicas.get(group)
        if r is None:
            return False
        self._drop(r, f"group {group} was deleted")
        await self._write_extra(GroupWrite(group=group, delete=True))
        return True

    def _drop(self, r: Replica, why: str) -> None:
        if self.replicas.get(r.group) is r:
            del self.replicas[r.group]
        r.stop(why)
        if why.startswith("this replica was removed"):
            self._extra.append((GroupWrite(group=r.group, delete=True), Waiter()))
        logger.info("%s: replica %s stopped: %s", r.group, r.member.id, why)
        if self.on_replica_stopped is not None:
            self.on_replica_stopped(r.group)

    async def _write_extra(self, write: GroupWrite) -> None:
        w = Waiter()
        self._extra.append((write, w))
        self._wake.set()
        await w.wait()

    def campaign(self, group: str) -> None:
        self._replica(group).member.campaign()
        self._touch(group)

    def _replica(self, group: str) -> Replica:
        r = self.replicas.get(group)
        if r is None:
            raise UnknownGroup(f"this agent hosts no replica of {group}")
        return r

    # ------------------------------------------------------------ client requests

    async def command(
        self, group: str, arg: object, client: str, seq: int, timeout_s: float
    ) -> ApplyResult:
        """Propose and wait until applied. Raises NotLeader, LostLeadership, trio.TooSlowError."""
        r = self._replica(group)
        w = r.propose(_command_data(client, seq, arg))
        self._touch(group)
        result = await self._wait(w, timeout_s)
        self.metrics.note_committed(w.created_s, w.resolved_s)
        return result

    async def query(self, group: str, arg: object, timeout_s: float) -> ApplyResult:
        """A linearizable read on the leader (lease, else ReadIndex)."""
        r = self._replica(group)
        now = self._read_now(r, arg)
        if now is not None:
            return now
        w = r.read(arg)
        self._touch(group)
        return await self._wait(w, timeout_s)

    def _read_now(self, r: Replica, arg: object) -> ApplyResult | None:
        """The answer of a lease read if it can be given in this step (no loop turn)."""
        self._catch_up()  # a read right after a pause must see the lost time first
        index = r.member.read_index_now()
        if index is not None and r.applier.applied_index >= index:
            return r.applier.query(arg)
        return None

    # Requests started without a task (the control server's fast path): the
    # waiter calls `on_done` when it resolves (an ApplyResult, LostLeadership,
    # ReplicaGone or Expired). None: this agent cannot take it right now (not
    # the leader, a transfer under way); the caller routes and retries instead.

    def start_command(
        self,
        group: str,
        arg: object,
        client: str,
        seq: int,
        timeout_s: float,
        on_done: Callable[[Waiter], None],
    ) -> Waiter | None:
        r = self._local_leader(group)
        if r is None:
            return None
        try:
            w = r.propose(_command_data(client, seq, arg))
        except RaftError:
            return None
        return self._started(group, w, timeout_s, on_done)

    def start_query(
        self, group: str, arg: object, timeout_s: float, on_done: Callable[[Waiter], None]
    ) -> ApplyResult | Waiter | None:
        """As start_command, for a linearizable read; the result itself when a
        lease read can be answered now."""
        r = self._local_leader(group)
        if r is None:
            return None
        now = self._read_now(r, arg)
        if now is not None:
            return now
        try:
            w = r.read(arg)
        except RaftError:
            return None
        return self._started(group, w, timeout_s, on_done)

    def _local_leader(self, group: str) -> Replica | None:
        r = self.replicas.get(group)
        return r if r is not None and r.member.is_leader else None

    def _started(
        self, group: str, w: Waiter, timeout_s: float, on_done: Callable[[Waiter], None]
    ) -> Waiter:
        w.on_done = on_done
        deadline = trio.current_time() + timeout_s
        heapq.heappush(self._deadlines, (deadline, next(self._deadline_seq), w))
        self._started_since_sweep += 1
        if self._started_since_sweep >= _DEADLINE_SWEEP_EVERY:
            self._sweep_deadlines()
        self._touch(group)
        return w

    def _sweep_deadlines(self) -> None:
        """Forget the deadlines of requests already answered.

        The heap only pops what expired, so without this it keeps every request
        of the last `timeout_s`, answer and reply callback included: 70,000 of
        them at 14,000 commands/s with 5 s timeouts, tens of MB. Rebuilding it
        every few thousand requests keeps it near the number in flight, for
        O(1) amortised per request.
        """
        self._started_since_sweep = 0
        live = [d for d in self._deadlines if not d[2].resolved]
        heapq.heapify(live)
        self._deadlines = live

    def query_stale(self, group: str, arg: object) -> ApplyResult:
        return self._replica(group).applier.query(arg)

    @staticmethod
    async def _wait(w: Waiter, timeout_s: float) -> ApplyResult:
        with trio.fail_after(timeout_s):
            await w.wait()
        if isinstance(w.result, LostLeadership | ReplicaGone):
            raise w.result
        assert isinstance(w.result, ApplyResult)
        return w.result

    def transfer_leadership(self, group: str, target: ReplicaId) -> None:
        member = self._replica(group).member
        try:
            member.transfer_leadership(target)
        finally:
            # Even when refused: asking woke a quiet leader, which must now be
            # ticked and send its wake-up round (it would sit awake and mute).
            self._touch(group)

    def force_sole_voter(self, group: str, min_term: int) -> int:
        index = self._replica(group).member.force_sole_voter(min_term)
        self._touch(group)
        return index

    def change_membership(self, group: str, op: ConfOp, replica: ReplicaId) -> int:
        """One single-server change on the local leader; returns the config entry's index."""
        member = self._replica(group).member
        try:
            return member.change_membership(op, replica)
        finally:
            self._touch(group)  # even when refused (see transfer_leadership)

    # ------------------------------------------------------------ status

    def awake_groups(self) -> list[str]:
        """The groups ticked now (not quiescent): a handful on an idle agent."""
        return list(self._awake)

    def statistics(self) -> HostStatistics:
        return HostStatistics(
            replicas=len(self.replicas),
            leaders=sum(1 for r in self.replicas.values() if r.member.is_leader),
            awake=len(self._awake),
            turns=self._turns,
            store_batches=self._batches,
            entries_written=self._entries,
            messages_sent=self._sent,
            messages_received=self._received,
            messages_dropped=self._dropped,
            batches_in_flight=self._in_flight,
        )


def _command_data(client: str, seq: int, arg: object) -> object:
    """A command's log entry: the request id, the leader's wall clock (session expiry), the arg."""
    return encode_command(client, seq, int(time.time() * 1000), arg)
