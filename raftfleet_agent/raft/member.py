"""One replica of one Raft group, as a pure state machine.

This module does no I/O and reads no clock: time is `tick()`, randomness is
the injected `rng`, and everything the replica wants done comes out of
`ready()` (see `raftfleet_agent.raft.ready` for the contract).

Theory of operation
-------------------
Inputs: `tick()`, `step(message)`, `propose(data)`, `read(ctx)`,
`change_membership(op, replica)`, `transfer_leadership(target)`,
`cancel_transfer()`, `campaign()`, `compact(index, data)`. Each input
changes state and queues outputs; the host collects them with `ready()`,
persists and sends them, and acknowledges with `advance(ready)`.

Roles are swapped by `_become_*`, which set the role's tick and step
handlers; `step()` first does what every role shares (term comparison, the
stickiness guard, removed-replica notices) and hands the rest to the role.

Safety measures beyond the paper, each for a pitfall in PITFALLS.md:
- pre-vote (§9.6) and a stickiness guard: a replica that heard from a live
  leader within the election timeout ignores (pre-)vote requests, unless the
  request comes from a leadership transfer;
- a replica restarted from disk behaves as if it had just heard from a
  leader for one election timeout, so a crash cannot shorten a leader's
  lease by making a voter forget it recently acknowledged that leader;
- check-quorum: a leader that did not hear from a majority during an
  election timeout steps down;
- lease reads are timed from the *start* of a quorum-acknowledged heartbeat
  round, shortened by a drift margin, and are off for the rest of a term
  once a TimeoutNow was sent;
- a leader counts only its own *durable* entries toward a quorum, and only
  commits entries of its own term by counting (Figure 8).
"""

from __future__ import annotations

import enum
import random
from collections.abc import Callable, Iterable

import attrs

from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.errors import (
    MembershipError,
    NotLeader,
    ProposalDropped,
    SafetyViolation,
    TransferError,
)
from raftfleet_agent.raft.log import RaftLog, Row
from raftfleet_agent.raft.membership import ConfOp, apply_change
from raftfleet_agent.raft.progress import Progress, ProgressState
from raftfleet_agent.raft.quorum import quorum_index, quorum_size, vote_result
from raftfleet_agent.raft.ready import Ready
from raftfleet_agent.raft.types import (
    Config,
    Entry,
    EntryKind,
    HardState,
    ReadState,
    ReplicaId,
    Snapshot,
    SnapshotMeta,
)


class Role(enum.Enum):
    FOLLOWER = "follower"
    PRE_CANDIDATE = "pre_candidate"
    CANDIDATE = "candidate"
    LEADER = "leader"


@attrs.frozen(kw_only=True)
class RaftOptions:
    election_ticks: int = 10  # minimum election timeout; actual is random in [E, 2E)
    heartbeat_ticks: int = 1
    # Lease = election_ticks - lease_drift_ticks from the start of an acked round:
    # the margin covers clock-rate differences between agents.
    lease_drift_ticks: int = 2
    max_append_entries: int = 512
    max_inflight: int = 64
    max_apply_entries: int = 4096  # committed entries per Ready
    snapshot_chunk_bytes: int = 1 << 20
    promote_lag_max: int = 256  # a learner within this many entries is caught up
    pre_vote: bool = True
    check_quorum: bool = True
    lease_reads: bool = True
    # Idle groups go quiet after this many ticks with nothing to do (0: never).
    # A quiescent group sends no heartbeats and runs no election timers; the
    # host wakes it when the agent of its leader is reported unreachable.
    quiesce_after_ticks: int = 0
    # Whether agent `to` is unreachable from agent `frm`, as the host's
    # transport sees it (None: never). A leader may go quiet without the
    # answers of followers there, as long as a quorum answered: otherwise
    # every group with a replica on a dead agent stays awake (heartbeats,
    # ticks) until that agent is purged, or for ever when the purge waits for
    # room. CockroachDB quiesces past replicas on non-live nodes the same way.
    # Safety never depends on it being right (a quiet leader holds no lease).
    peer_unreachable: Callable[[str, str], bool] | None = None

    def __attrs_post_init__(self) -> None:
        if not 0 < self.heartbeat_ticks < self.election_ticks:
            raise ValueError("need 0 < heartbeat_ticks < election_ticks")
        if not 0 <= self.lease_drift_ticks < self.election_ticks:
            raise ValueError("need 0 <= lease_drift_ticks < election_ticks")


@attrs.frozen(kw_only=True)
class FollowerStatus:
    replica: ReplicaId
    voter: bool
    match_index: int
    next_index: int
    state: str
    ticks_since_contact: int


@attrs.frozen(kw_only=True)
class MemberStatus:
    replica: ReplicaId
    role: str
    term: int
    leader: ReplicaId | None
    voters: tuple[ReplicaId, ...]
    learners: tuple[ReplicaId, ...]
    commit_index: int
    applied_index: int
    last_index: int
    snapshot_index: int
    followers: tuple[FollowerStatus, ...]
    lease_valid: bool
    transfer_target: ReplicaId | None
    removed: bool
    quiescent: bool = False


_LEADER_MESSAGES = (m.Append, m.Heartbeat, m.InstallSnapshot, m.TimeoutNow)


class RaftMember:
    # Thousands of replicas per agent: with over 30 attributes an instance
    # dict stops sharing its keys and costs ~1.5 KB; slots cost 8 bytes each.
    __slots__ = (
        "_applied_handed",
        "_check_quorum_elapsed",
        "_configs",
        "_early",
        "_failed_reads",
        "_heartbeat_elapsed",
        "_hs_persisted",
        "_hs_persisted_next",
        "_idle_ticks",
        "_lease_until",
        "_msgs",
        "_need_round",
        "_now",
        "_pending_compacted",
        "_pending_conf_index",
        "_pending_install",
        "_pending_reads",
        "_quiet_until",
        "_randomized_timeout",
        "_reads",
        "_reads_after_noop",
        "_ready_out",
        "_removal_notices",
        "_removed_pending",
        "_replicate_dirty",
        "_round",
        "_round_ticks",
        "_snap_rx",
        "_step_role",
        "_term_start",
        "_tick",
        "_timeout_now_sent",
        "_transfer_elapsed",
        "_transfer_target",
        "_votes",
        "_was_member",
        "applied",
        "commit",
        "election_elapsed",
        "id",
        "leader",
        "log",
        "opts",
        "progress",
        "quiescent",
        "removed",
        "rng",
        "role",
        "snapshot",
        "term",
        "vote",
    )

    def __init__(
        self,
        replica: ReplicaId,
        *,
        options: RaftOptions | None = None,
        rng: random.Random | None = None,
        hard_state: HardState | None = None,
        snapshot: Snapshot | None = None,
        entries: Iterable[Entry] = (),
    ) -> None:
        """Rebuild a replica from what its store holds (nothing, for a brand-new one).

        A new replica that is not in any configuration waits to be sent the
        log by a leader; use `bootstrap` to start a group.
        """
        self.id = replica
        self.opts = options or RaftOptions()
        self.rng = rng or random.Random()
        hs = hard_state or HardState()
        self.snapshot = snapshot
        offset, offset_term = (snapshot.meta.index, snapshot.meta.term) if snapshot else (0, 0)
        entries = tuple(entries)
        self.log = RaftLog(offset, offset_term, entries)
        self.term = hs.term
        self.vote = hs.vote
        # Invariant: applied <= commit <= log.last_index; commit never decreases.
        self.commit = max(hs.commit, offset)
        if self.commit > self.log.last_index:
            raise SafetyViolation(
                f"{replica}: commit {self.commit} past last index {self.log.last_index}"
            )
        self.applied = offset
        self._applied_handed = offset
        self._hs_persisted = (self.term, self.vote, self.commit)
        self._hs_persisted_next = self._hs_persisted
        self.role = Role.FOLLOWER
        # Config history: (index, config) ascending; [0] is the snapshot's.
        base = snapshot.meta.config if snapshot else Config()
        self._configs: list[tuple[int, Config]] = [(offset, base)]
        self._add_configs(entries)
        self._was_member = self.id in self.config.members
        self.removed = False
        self.quiescent = False
        self._idle_ticks = 0
        self.leader: ReplicaId | None = None
        self._now = 0
        self.election_elapsed = 0
        self._randomized_timeout = self._new_timeout()
        # A replica restarted from disk may have acknowledged a leader just
        # before it crashed: stay deaf to (pre-)votes for one election timeout.
        self._quiet_until = self.opts.election_ticks if hs.term > 0 else 0
        self._votes: dict[ReplicaId, bool] = {}
        self._msgs: list[m.Message] = []
        self._early: list[m.Message] = []
        self._reads: list[ReadState] = []
        self._failed_reads: list[object] = []
        self._pending_install: Snapshot | None = None
        self._pending_compacted: Snapshot | None = None
        self._removed_pending = False
        # (log token, applied index handed out, whether it installs a snapshot)
        self._ready_out: tuple[int | None, int, bool] | None = None
        self._snap_rx: tuple[SnapshotMeta, bytearray] | None = None
        self._reset_leader_state()
        self._become_follower(self.term, None)

    @classmethod
    def bootstrap(cls, replica: ReplicaId, config: Config, **kw: object) -> RaftMember:
        """A replica of a brand-new group whose initial members are `config`.

        The configuration is stored as an empty snapshot at index 0, handed
        out in the first Ready for persisting.
        """
        snap = Snapshot(SnapshotMeta(0, 0, config), b"")
        member = cls(replica, snapshot=snap, **kw)  # type: ignore[arg-type]
        member._pending_compacted = snap
        return member

    # ------------------------------------------------------------ properties

    @property
    def config(self) -> Config:
        return self._configs[-1][1]

    @property
    def config_index(self) -> int:
        return self._configs[-1][0]

    def config_at(self, index: int) -> Config:
        for idx, cfg in reversed(self._configs):
            if idx <= index:
                return cfg
        return self._configs[0][1]

    @property
    def ever_member(self) -> bool:
        """Has this replica ever been in its group's configuration (a fresh one has not)?"""
        return self._was_member

    @property
    def is_leader(self) -> bool:
        return self.role is Role.LEADER

    def _promotable(self) -> bool:
        return not self.removed and self.id in self.config.voters

    def _new_timeout(self) -> int:
        e = self.opts.election_ticks
        return e + self.rng.randrange(e)

    # ------------------------------------------------------------ role changes

    def _reset_leader_state(self) -> None:
        self.progress: dict[ReplicaId, Progress] = {}
        self._term_start = 0  # index of this leader's no-op
        self._pending_conf_index = 0
        self._transfer_target: ReplicaId | None = None
        self._transfer_elapsed = 0
        self._timeout_now_sent = False
        self._round = 0
        # Lists, not deques: both stay short, and a deque costs ~600 bytes per
        # replica even when empty (thousands of idle replicas per agent).
        self._round_ticks: list[tuple[int, int]] = []  # (round, tick it started)
        self._lease_until = 0
        self._need_round = False
        self._pending_reads: list[tuple[object, int, int]] = []  # (ctx, index, round)
        self._reads_after_noop: list[object] = []
        # replica -> (config index removing it, notices sent so far)
        self._removal_notices: dict[ReplicaId, tuple[int, int]] = {}
        self._heartbeat_elapsed = 0
        self._check_quorum_elapsed = 0
        self._replicate_dirty = False

    def _fail_reads(self) -> None:
        self._failed_reads.extend(ctx for ctx, _i, _r in self._pending_reads)
        self._failed_reads.extend(self._reads_after_noop)

    def _become_follower(self, term: int, leader: ReplicaId | None) -> None:
        if self.role is Role.LEADER:
            self._fail_reads()
        if term > self.term:
            self.term, self.vote = term, None
        self.role = Role.FOLLOWER
        self.leader = leader
        self.quiescent = False
        self._reset_leader_state()
        self.election_elapsed = 0
        self._randomized_timeout = self._new_timeout()
        self._tick = self._tick_election
        self._step_role = self._step_follower

    def _become_pre_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise SafetyViolation("a leader cannot become a pre-candidate")
        self.role = Role.PRE_CANDIDATE
        self.leader = None
        self._votes = {self.id: True}
        self._tick = self._tick_election
        self._step_role = self._step_candidate

    def _become_candidate(self) -> None:
        if self.role is Role.LEADER:
            raise SafetyViolation("a leader cannot become a candidate")
        self.role = Role.CANDIDATE
        self.term += 1
        self.vote = self.id
        self.leader = None
        self._votes = {self.id: True}
        self._tick = self._tick_election
        self._step_role = self._step_candidate

    def _become_leader(self) -> None:
        if self.role is not Role.CANDIDATE:
            raise SafetyViolation(f"{self.role} cannot become leader")
        self.role = Role.LEADER
        self.leader = self.id
        self.quiescent = False
        self._reset_leader_state()
        # Sorted everywhere order shows in the output, so a seed replays exactly.
        for r in sorted(self.config.members - {self.id}):
            self.progress[r] = Progress(self.log.last_index + 1, self._now)
        noop = Entry(self.term, self.log.last_index + 1, EntryKind.NOOP, None)
        self.log.append(noop)
        # Neither reads nor membership changes before this no-op commits.
        self._term_start = noop.index
        self._pending_conf_index = noop.index
        self._replicate_dirty = True
        self._tick = self._tick_leader
        self._step_role = self._step_leader
        self._maybe_commit()

    # ------------------------------------------------------------ inputs

    def tick(self) -> None:
        """One unit of logical time passed (a quiescent replica only counts it)."""
        if self.removed:
            return
        self._now += 1
        if not self.quiescent:
            self._tick()

    def campaign(self) -> None:
        """Start an election now, skipping pre-vote (used for a new group's first leader)."""
        if self._promotable() and self.role is not Role.LEADER:
            self._campaign(pre=False)

    def step(self, msg: m.Message) -> None:
        """Handle a message from another replica of this group."""
        if self.removed or msg.to != self.id:
            return
        if self.quiescent and self._wakes(msg):
            self._unquiesce()
        if isinstance(msg, m.Removed):
            self._handle_removed(msg)
            return
        if self.role is Role.LEADER and msg.frm not in self.config.members:
            self._maybe_tell_removed(msg.frm)
            return
        if msg.term > self.term and msg.frm not in self.config.members and self._in_lease():
            # A stranger claims a newer term while our leader is alive: a
            # removed replica, or a forgery (a transfer Vote or an Append would
            # otherwise make us adopt any term, up to 2**64, and depose the
            # leader). A real new leader we do not know yet is heard once the
            # lease runs out, at most one election timeout later.
            return
        if (
            msg.term == self.term
            and isinstance(msg, _LEADER_MESSAGES)
            and self.role is Role.FOLLOWER
            and self.leader is not None
            and msg.frm != self.leader
        ):
            return  # a term has one leader: this one is an impostor (or a bug)
        if msg.term > self.term:
            if not self._step_higher_term(msg):
                return
        elif msg.term < self.term:
            self._step_lower_term(msg)
            return
        self._step_role(msg)

    def _step_higher_term(self, msg: m.Message) -> bool:
        """Adopt a higher term where appropriate; False if the message is to be ignored."""
        if isinstance(msg, m.PreVote | m.Vote):
            transfer = isinstance(msg, m.Vote) and msg.transfer
            if self._in_lease() and not transfer:
                return False  # stickiness: a leader is alive, don't let this one disrupt it
        if isinstance(msg, m.PreVote):
            return True  # pre-votes never change anyone's term
        if isinstance(msg, m.PreVoteResp) and msg.granted:
            return True  # the term is the one we proposed, not one anybody holds
        leader = msg.frm if isinstance(msg, _LEADER_MESSAGES) else None
        self._become_follower(msg.term, leader)
        return True

    def _step_lower_term(self, msg: m.Message) -> None:
        if isinstance(msg, m.Append | m.Heartbeat | m.InstallSnapshot):
            # A stale leader (perhaps cut off, with pre-vote keeping our terms low):
            # answer with our term so it steps down.
            self._send(
                m.AppendResp(frm=self.id, to=msg.frm, term=self.term, success=False, index=0)
            )
        elif isinstance(msg, m.PreVote):
            self._send(m.PreVoteResp(frm=self.id, to=msg.frm, term=self.term, granted=False))
        elif isinstance(msg, m.Vote):
            # Tell a candidate it is behind (§5.1), or two candidates can leapfrog
            # each other's terms forever: one that does not ask us for votes (a
            # stale configuration) keeps raising its term while the other, which
            # needs our vote, never learns it (found by the simulator, seed 1056).
            self._send(m.VoteResp(frm=self.id, to=msg.frm, term=self.term, granted=False))

    def _in_lease(self) -> bool:
        if self._now < self._quiet_until:
            return True
        if self.role is Role.LEADER:
            return self.opts.check_quorum
        return self.leader is not None and self.election_elapsed < self.opts.election_ticks

    # ------------------------------------------------------------ follower

    def _step_follower(self, msg: m.Message) -> None:
        match msg:
            case m.Append():
                self._heard_from_leader(msg.frm)
                self._handle_append(msg)
            case m.Heartbeat():
                self._heard_from_leader(msg.frm)
                self._handle_heartbeat(msg)
            case m.InstallSnapshot():
                self._heard_from_leader(msg.frm)
                self._handle_snapshot(msg)
            case m.TimeoutNow():
                # Only our leader may hand us its leadership (it sends this to a
                # caught-up follower, which has heard from it in this term).
                if msg.frm == self.leader and self._promotable():
                    self._campaign(pre=False, transfer=True)
            case m.Vote():
                self._handle_vote(msg)
            case m.PreVote():
                self._handle_pre_vote(msg)
            case _:
                pass  # responses to a past role

    def _heard_from_leader(self, leader: ReplicaId) -> None:
        self.leader = leader
        self.election_elapsed = 0

    def _handle_append(self, msg: m.Append) -> None:
        if msg.prev_index < self.commit:
            # Everything up to our commit index is committed and so matches the leader.
            self._send(
                m.AppendResp(
                    frm=self.id,
                    to=msg.frm,
                    term=self.term,
                    success=True,
                    index=self.commit,
                    round=msg.round,
                )
            )
            return
        if not self.log.matches(msg.prev_index, msg.prev_term):
            hint_index, hint_term = self._conflict_hint(msg.prev_index, msg.prev_term)
            self._send(
                m.AppendResp(
                    frm=self.id,
                    to=msg.frm,
                    term=self.term,
                    success=False,
                    index=msg.prev_index,
                    hint_index=hint_index,
                    hint_term=hint_term,
                    round=msg.round,
                )
            )
            return
        truncated = self.log.merge(msg.entries, self.commit)
        if truncated is not None:
            self._drop_configs_from(truncated)
        self._add_configs(msg.entries)
        last_new = msg.prev_index + len(msg.entries)
        self._advance_commit(min(msg.commit, last_new))
        self._send(
            m.AppendResp(
                frm=self.id,
                to=msg.frm,
                term=self.term,
                success=True,
                index=last_new,
                round=msg.round,
            )
        )

    def _conflict_hint(self, prev_index: int, prev_term: int) -> tuple[int, int]:
        """Where the leader should look next: our last index with term <= prev_term.

        Lets the leader skip a whole conflicting term per round trip instead of
        one index (rafted_value's flaw).
        """
        idx = min(prev_index, self.log.last_index)
        while idx > self.log.offset and (self.log.term_at(idx) or 0) > prev_term:
            idx -= 1
        return idx, self.log.term_at(idx) or 0

    def _handle_heartbeat(self, msg: m.Heartbeat) -> None:
        self._advance_commit(min(msg.commit, self.log.last_index))
        self._send(m.HeartbeatResp(frm=self.id, to=msg.frm, term=self.term, round=msg.round))
        if msg.quiesce and self.commit == msg.commit == self.log.last_index:
            self.quiescent = True

    def _advance_commit(self, index: int) -> None:
        if index > self.commit:
            self.commit = index
            self._check_removed()

    def _handle_snapshot(self, msg: m.InstallSnapshot) -> None:
        meta = msg.meta

        def reply(next_offset: int, done: bool) -> None:
            self._send(
                m.InstallSnapshotResp(
                    frm=self.id,
                    to=msg.frm,
                    term=self.term,
                    index=meta.index,
                    next_offset=next_offset,
                    done=done,
                    round=msg.round,
                )
            )

        if meta.index <= self.commit:
            reply(0, True)  # late or duplicate: we already have everything it covers
            return
        rx = self._snap_rx
        if msg.offset == 0:
            rx = self._snap_rx = (meta, bytearray())
        elif rx is None or rx[0] != meta or msg.offset != len(rx[1]):
            reply(len(rx[1]) if rx and rx[0] == meta else 0, False)
            return
        rx[1].extend(msg.chunk)
        if not msg.done:
            reply(len(rx[1]), False)
            return
        self._snap_rx = None
        self._install_snapshot(Snapshot(meta, bytes(rx[1])))
        reply(len(msg.chunk) + msg.offset, True)

    def _install_snapshot(self, snap: Snapshot) -> None:
        meta = snap.meta
        kept_suffix = self.log.term_at(meta.index) == meta.term
        self.log.restore(meta.index, meta.term)
        later = [(i, c) for i, c in self._configs if i > meta.index] if kept_suffix else []
        self._configs = [(meta.index, meta.config), *later]
        self.snapshot = snap
        self.commit = max(self.commit, meta.index)
        self.applied = self._applied_handed = meta.index
        self._pending_install = snap
        self._note_membership()
        self._check_removed()

    def _handle_vote(self, msg: m.Vote) -> None:
        can_vote = self.vote == msg.frm or (self.vote is None and self.leader is None)
        granted = can_vote and self._candidate_log_ok(msg.last_index, msg.last_term)
        if granted:
            self.vote = msg.frm
            self.election_elapsed = 0
        # Sent after the Ready that carries our vote is durable (see ready.py).
        self._send(m.VoteResp(frm=self.id, to=msg.frm, term=self.term, granted=granted))

    def _handle_pre_vote(self, msg: m.PreVote) -> None:
        granted = msg.term > self.term and self._candidate_log_ok(msg.last_index, msg.last_term)
        term = msg.term if granted else self.term
        self._send(m.PreVoteResp(frm=self.id, to=msg.frm, term=term, granted=granted))

    def _candidate_log_ok(self, last_index: int, last_term: int) -> bool:
        """Election restriction (§5.4.1): only vote for a log at least as up to date as ours."""
        return self.log.is_up_to_date(last_index, last_term)

    def _handle_removed(self, msg: m.Removed) -> None:
        # Only believe a member of our own (possibly stale) configuration, and
        # only a leader of our term or a later one: a deposed leader that does
        # not know it yet still holds the configuration from before we were
        # added, and would have us delete a current voter (fault campaign,
        # seed 7701: two of four voters gone, one by this notice).
        if msg.frm in self.config.members and self._was_member and msg.term >= self.term:
            self._mark_removed()

    # ------------------------------------------------------------ elections

    def _tick_election(self) -> None:
        self.election_elapsed += 1
        if self.election_elapsed >= self._randomized_timeout and self._promotable():
            self.election_elapsed = 0
            self._randomized_timeout = self._new_timeout()
            self._campaign(pre=self.opts.pre_vote)

    def _campaign(self, *, pre: bool, transfer: bool = False) -> None:
        # A campaign needs its election timer: a quiet replica that stayed quiet
        # would never retry a lost election (the host does not tick it).
        self.quiescent = False
        self._idle_ticks = 0
        if pre:
            self._become_pre_candidate()
            term = self.term + 1
        else:
            self._become_candidate()
            term = self.term
        self.election_elapsed = 0
        self._randomized_timeout = self._new_timeout()
        if vote_result(self.config.voters, self._votes):
            self._won(pre, transfer)
            return
        li, lt = self.log.last_index, self.log.last_term
        for v in sorted(self.config.voters - {self.id}):
            if pre:
                self._send(m.PreVote(frm=self.id, to=v, term=term, last_index=li, last_term=lt))
            else:
                self._send(
                    m.Vote(
                        frm=self.id, to=v, term=term, last_index=li, last_term=lt, transfer=transfer
                    )
                )

    def _won(self, pre: bool, transfer: bool) -> None:
        if pre:
            self._campaign(pre=False, transfer=transfer)
        else:
            self._become_leader()

    def _step_candidate(self, msg: m.Message) -> None:
        match msg:
            case m.Append() | m.Heartbeat() | m.InstallSnapshot():
                # A leader of our term exists (we were a pre-candidate or lost).
                self._become_follower(msg.term, msg.frm)
                self._step_follower(msg)
            case m.PreVoteResp() if self.role is Role.PRE_CANDIDATE:
                self._tally(msg.frm, msg.granted, pre=True)
            case m.VoteResp() if self.role is Role.CANDIDATE:
                self._tally(msg.frm, msg.granted, pre=False)
            case m.Vote():
                self._handle_vote(msg)
            case m.PreVote():
                self._handle_pre_vote(msg)
            case m.TimeoutNow():
                pass
            case _:
                pass

    def _tally(self, voter: ReplicaId, granted: bool, *, pre: bool) -> None:
        if voter not in self.config.voters:
            return
        self._votes[voter] = granted
        result = vote_result(self.config.voters, self._votes)
        if result is True:
            self._won(pre, transfer=False)
        elif result is False:
            self._become_follower(self.term, None)

    # ------------------------------------------------------------ leader

    def _tick_leader(self) -> None:
        self._heartbeat_elapsed += 1
        self._check_quorum_elapsed += 1
        e = self.opts.election_ticks
        if self._check_quorum_elapsed >= e:
            self._check_quorum_elapsed = 0
            if self.opts.check_quorum and not self._quorum_recently_active():
                self._become_follower(self.term, None)
                return
            for pr in self.progress.values():
                pr.recent_active = False
        if self._transfer_target is not None:
            self._transfer_elapsed += 1
            if self._transfer_elapsed >= e:
                self._transfer_target = None
        if self._heartbeat_elapsed >= self.opts.heartbeat_ticks:
            self._heartbeat_elapsed = 0
            self._broadcast_heartbeat()
        for pr in self.progress.values():
            if pr.state is ProgressState.SNAPSHOT and self._now - pr.snap_sent_tick >= e:
                self._replicate_dirty = True  # chunk lost: resend it
        self._maybe_quiesce()

    def _quorum_recently_active(self) -> bool:
        active = sum(
            1
            for v in self.config.voters
            if v == self.id or (v in self.progress and self.progress[v].recent_active)
        )
        return active >= quorum_size(len(self.config.voters))

    def _start_round(self) -> int:
        self._round += 1
        self._round_ticks.append((self._round, self._now))
        horizon = self._now - 2 * self.opts.election_ticks
        drop = 0
        while drop < len(self._round_ticks) - 1 and self._round_ticks[drop][1] < horizon:
            drop += 1
        if drop:
            del self._round_ticks[:drop]
        return self._round

    def _broadcast_heartbeat(self) -> None:
        r = self._start_round()
        self._need_round = False
        for peer, pr in self.progress.items():
            self._send(
                m.Heartbeat(
                    frm=self.id, to=peer, term=self.term, commit=min(self.commit, pr.match), round=r
                )
            )
        if self._removal_notices:
            self._send_removal_notices()
        self._on_round_acked()  # a lone voter acks its own rounds

    def _step_leader(self, msg: m.Message) -> None:
        pr = self.progress.get(msg.frm)
        if pr is None:
            return
        match msg:
            case m.AppendResp():
                self._contact(pr, msg.round)
                self._handle_append_resp(msg, pr)
            case m.HeartbeatResp():
                self._contact(pr, msg.round)
                self._maybe_resume(pr)
            case m.InstallSnapshotResp():
                self._contact(pr, msg.round)
                self._handle_snapshot_resp(msg, pr)
            case m.Vote():
                self._send(m.VoteResp(frm=self.id, to=msg.frm, term=self.term, granted=False))
            case m.PreVote():
                self._send(m.PreVoteResp(frm=self.id, to=msg.frm, term=self.term, granted=False))
            case _:
                pass

    def _contact(self, pr: Progress, acked_round: int) -> None:
        pr.recent_active = True
        pr.heard = True
        pr.last_contact = self._now
        if acked_round > pr.acked_round:
            pr.acked_round = acked_round
            self._on_round_acked()

    def _maybe_resume(self, pr: Progress) -> None:
        """A follower answered a heartbeat: restart replication that stalled.

        In PROBE the outstanding append may have been lost; in REPLICATE the
        last appends may have been lost with nothing newer to reveal the gap.
        """
        if pr.match >= self.log.last_index and pr.state is not ProgressState.PROBE:
            return
        if pr.state is ProgressState.REPLICATE and pr.inflight:
            # Slow disks are not lost messages: wait half an election timeout.
            if self._now - pr.last_ack < self.opts.election_ticks // 2:
                return
            pr.become_probe()
            pr.next = pr.match + 1
        pr.paused = False
        self._replicate_dirty = True

    def _quorum_round(self) -> int:
        rounds = sorted(
            (
                self._round
                if v == self.id
                else (self.progress[v].acked_round if v in self.progress else 0)
            )
            for v in self.config.voters
        )
        rounds.reverse()
        return rounds[quorum_size(len(rounds)) - 1] if rounds else 0

    def _on_round_acked(self) -> None:
        """A majority confirmed us up to some round: extend the lease, release reads."""
        q = self._quorum_round()
        for r, started in () if self.quiescent else self._round_ticks:
            if r == q:
                lease = started + self.opts.election_ticks - self.opts.lease_drift_ticks
                self._lease_until = max(self._lease_until, lease)
                break
        done = 0
        for ctx, index, needed in self._pending_reads:
            if needed > q:
                break
            self._reads.append(ReadState(ctx, index))
            done += 1
        if done:
            del self._pending_reads[:done]

    def _handle_append_resp(self, msg: m.AppendResp, pr: Progress) -> None:
        if not msg.success:
            if pr.maybe_decrease_to(msg.index, self._next_from_hint(msg.hint_index, msg.hint_term)):
                if pr.state is ProgressState.REPLICATE:
                    pr.become_probe()
                self._replicate_dirty = True
            return
        if pr.maybe_update(msg.index):
            pr.last_ack = self._now
            if pr.state is ProgressState.PROBE:
                pr.become_replicate()
            self._maybe_commit()
            self._maybe_send_timeout_now(msg.frm, pr)
        elif pr.state is ProgressState.PROBE and msg.index == pr.match:
            # The probe was answered at the match we already know (e.g. right
            # after a snapshot): the follower is in sync. Without this it stays
            # in PROBE, and every heartbeat answer triggers another empty probe.
            pr.become_replicate()
        if pr.match < self.log.last_index:
            self._replicate_dirty = True

    def _next_from_hint(self, hint_index: int, hint_term: int) -> int:
        """The leader's side of fast backtracking: skip past whole conflicting terms."""
        idx = min(hint_index, self.log.last_index)
        while idx > self.log.offset and (self.log.term_at(idx) or 0) > hint_term:
            idx -= 1
        return idx + 1

    def _handle_snapshot_resp(self, msg: m.InstallSnapshotResp, pr: Progress) -> None:
        if pr.state is not ProgressState.SNAPSHOT or msg.index != pr.snap_index:
            return
        if msg.done:
            pr.maybe_update(msg.index)
            pr.become_probe()
            self._maybe_commit()
        else:
            pr.snap_offset = msg.next_offset
            pr.snap_sent_tick = -(1 << 30)  # send the next chunk at once
        self._replicate_dirty = True

    def _maybe_commit(self) -> None:
        # Runs on every acknowledgement: a list of the voters' matches, no dict.
        me, progress, persisted = self.id, self.progress, self.log.persisted
        matches = [
            persisted if v == me else (pr.match if (pr := progress.get(v)) is not None else 0)
            for v in self.config.voters
        ]
        ci = quorum_index(matches)
        # Figure 8: only entries of our own term are committed by counting.
        if ci > self.commit and self.log.term_at(ci) == self.term:
            self.commit = ci
            self._on_commit()

    def _on_commit(self) -> None:
        if self.commit >= self._term_start and self._reads_after_noop:
            waiting, self._reads_after_noop = self._reads_after_noop, []
            for ctx in waiting:
                self._serve_read(ctx)
        if self._removal_notices:
            self._send_removal_notices(first=True)
        self._check_removed()

    def _send_removal_notices(self, *, first: bool = False) -> None:
        """Tell replicas whose removal is committed, on commit and each round after.

        We stopped replicating to them when the change was appended, so this
        notice is all they will hear. Sent once, it can be lost (cut links),
        and a removed replica that was quiescent then follows us for good; on
        the cluster-state group that freezes its agent's view of the cluster
        (likely what the fault campaign's seed 9209 hit). So it is repeated
        for an election timeout's worth of rounds (the leader stays awake
        meanwhile); the fleet checks membership with the leader for anything
        longer. `first`: only those not told yet (a busy group commits far
        more often than it runs rounds).
        """
        rounds = max(3, self.opts.election_ticks // self.opts.heartbeat_ticks)
        for r, (idx, sent) in list(self._removal_notices.items()):
            if idx > self.commit or (first and sent):
                continue
            self._send(m.Removed(frm=self.id, to=r, term=self.term))
            if sent + 1 < rounds:
                self._removal_notices[r] = (idx, sent + 1)
            else:
                del self._removal_notices[r]

    def _maybe_tell_removed(self, replica: ReplicaId) -> None:
        if self.config_index <= self.commit:
            self._send(m.Removed(frm=self.id, to=replica, term=self.term))

    # ------------------------------------------------------------ sending appends

    def _flush(self) -> None:
        """Turn the leader's pending work into messages, once per Ready (batching)."""
        if self._need_round:
            self._broadcast_heartbeat()
        if not self._replicate_dirty:
            return
        self._replicate_dirty = False
        for peer, pr in self.progress.items():
            self._send_appends(peer, pr)

    def _send_appends(self, peer: ReplicaId, pr: Progress) -> None:
        if pr.state is ProgressState.SNAPSHOT or pr.next <= self.log.offset:
            self._send_snapshot_chunk(peer, pr)
            return
        last = self.log.last_index
        while pr.can_send(self.opts.max_inflight):
            prev = pr.next - 1
            prev_term = self.log.term_at(prev)
            if prev_term is None:
                self._send_snapshot_chunk(peer, pr)
                return
            hi = min(last + 1, pr.next + self.opts.max_append_entries)
            entries = tuple(self.log.slice(pr.next, hi))
            if not entries and pr.state is ProgressState.REPLICATE:
                return
            self._send(
                m.Append(
                    frm=self.id,
                    to=peer,
                    term=self.term,
                    prev_index=prev,
                    prev_term=prev_term,
                    entries=entries,
                    commit=self.commit,
                    round=self._round,
                )
            )
            pr.sent(hi - 1, len(entries))
            if pr.state is ProgressState.PROBE:
                return

    def _send_snapshot_chunk(self, peer: ReplicaId, pr: Progress) -> None:
        snap = self.snapshot
        if snap is None:
            raise SafetyViolation(
                f"{self.id}: log compacted to {self.log.offset} without a snapshot"
            )
        if pr.state is not ProgressState.SNAPSHOT or pr.snap_index != snap.meta.index:
            pr.become_snapshot(snap.meta.index)
        if self._now - pr.snap_sent_tick < self.opts.election_ticks:
            return  # a chunk is in flight
        off = min(pr.snap_offset, len(snap.data))
        chunk = snap.data[off : off + self.opts.snapshot_chunk_bytes]
        self._send(
            m.InstallSnapshot(
                frm=self.id,
                to=peer,
                term=self.term,
                meta=snap.meta,
                offset=off,
                chunk=chunk,
                done=off + len(chunk) >= len(snap.data),
                round=self._round,
            )
        )
        pr.snap_sent_tick = self._now

    def _maybe_send_timeout_now(self, peer: ReplicaId, pr: Progress) -> None:
        if peer == self._transfer_target and pr.match == self.log.last_index:
            self._send(m.TimeoutNow(frm=self.id, to=peer, term=self.term))
            # The target will win without regard for anyone's lease: ours ends now.
            self._timeout_now_sent = True

    # ------------------------------------------------------------ client requests

    def propose(self, data: object) -> int:
        """Append a command; returns its index. It is committed when applied with this term."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.quiescent:
            self._unquiesce()
        if self._transfer_target is not None:
            raise ProposalDropped(f"leadership transfer to {self._transfer_target} in progress")
        index = self.log.last_index + 1
        self.log.append(Entry(self.term, index, EntryKind.NORMAL, data))
        self._replicate_dirty = True
        return index

    def read(self, ctx: object) -> None:
        """Ask for a linearizable read; `ReadState(ctx, index)` comes out in a Ready.

        Served by lease when it is valid, else by ReadIndex (a heartbeat round
        a majority answers after the read arrived). Not before this leader's
        no-op committed.
        """
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.quiescent:
            self._unquiesce()
        if self.commit < self._term_start:
            self._reads_after_noop.append(ctx)
            return
        self._serve_read(ctx)

    def read_index_now(self) -> int | None:
        """The index a linearizable read may be served at right now, without a round
        trip: when this leader holds a valid lease (or is the only voter) and has
        committed its no-op. None: use `read` (ReadIndex, or waiting for the no-op).

        Exactly the conditions of `read`'s immediate path, so a host can answer a
        read in the same step, once its state machine applied the returned index.
        """
        if self.role is not Role.LEADER or self.commit < self._term_start:
            return None
        if self.config.voters == {self.id} or self.lease_valid():
            return self.commit
        return None

    def _serve_read(self, ctx: object) -> None:
        if self.config.voters == {self.id} or self.lease_valid():
            self._reads.append(ReadState(ctx, self.commit))
            return
        self._pending_reads.append((ctx, self.commit, self._round + 1))
        self._need_round = True

    def lease_valid(self) -> bool:
        # A quiescent leader's clock stops (the host no longer ticks it), so a
        # lease measured in its ticks would never run out: no lease while quiet.
        return (
            self.role is Role.LEADER
            and not self.quiescent
            and self.opts.lease_reads
            and self.opts.check_quorum
            and not self._timeout_now_sent
            and self.commit >= self._term_start
            and self._now < self._lease_until
        )

    # ------------------------------------------------------------ membership

    def change_membership(self, op: ConfOp, replica: ReplicaId) -> int:
        """Append a single-server change; returns its index. Effective at once (on append)."""
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.quiescent:
            self._unquiesce()
        if self._transfer_target is not None:
            raise MembershipError("transfer_in_progress", "a leadership transfer is in progress")
        if self.commit < self._term_start:
            raise MembershipError(
                "not_ready", "the leader has not committed an entry of its term yet"
            )
        if self._pending_conf_index > self.commit:
            raise MembershipError(
                "change_in_progress", "another membership change is not committed yet"
            )
        new = apply_change(self.config, op, replica)
        if op is ConfOp.PROMOTE:
            self._check_caught_up(replica)
        if op is ConfOp.REMOVE and replica in self.config.voters:
            self._check_removal_keeps_quorum(new)
        index = self.log.last_index + 1
        self.log.append(Entry(self.term, index, EntryKind.CONFIG, new))
        self._set_config(index, new)
        self._pending_conf_index = index
        if op is ConfOp.REMOVE and replica != self.id:
            self._removal_notices[replica] = (index, 0)
        else:
            self._removal_notices.pop(replica, None)  # added back: it must not hear it
        self._replicate_dirty = True
        self._maybe_commit()  # the quorum may have shrunk
        return index

    def _check_caught_up(self, replica: ReplicaId) -> None:
        pr = self.progress.get(replica)
        if pr is None or pr.match + self.opts.promote_lag_max < self.log.last_index:
            raise MembershipError("learner_behind", f"{replica} has not caught up with the log yet")
        if not self._answered_recently(pr):
            raise MembershipError("learner_unresponsive", f"{replica} has not answered recently")

    def _answered_recently(self, pr: Progress) -> bool:
        """Heard from within an election timeout, by this leader (not just tracked since)."""
        return pr.heard and self._now - pr.last_contact <= self.opts.election_ticks

    def _check_removal_keeps_quorum(self, new: Config) -> None:
        healthy = [
            v
            for v in new.voters
            if v == self.id or (v in self.progress and self._answered_recently(self.progress[v]))
        ]
        if len(healthy) < new.quorum():
            raise MembershipError(
                "would_lose_quorum",
                f"removing would leave {len(healthy)} healthy voters of {len(new.voters)}, "
                f"fewer than a quorum of {new.quorum()}",
            )

    def _set_config(self, index: int, config: Config) -> None:
        self._configs.append((index, config))
        self._note_membership()

    def _add_configs(self, entries: Iterable[Entry]) -> None:
        for e in entries:
            if e.kind is EntryKind.CONFIG and e.index > self.config_index:
                self._set_config(e.index, e.data)  # type: ignore[arg-type]

    def _drop_configs_from(self, index: int) -> None:
        """A truncated configuration entry takes its configuration with it (§4.1)."""
        while len(self._configs) > 1 and self._configs[-1][0] >= index:
            self._configs.pop()
        self._note_membership()

    def _note_membership(self) -> None:
        cfg = self.config
        if self.id in cfg.members:
            self._was_member = True
        if self.role is Role.LEADER:
            for r in sorted(cfg.members - {self.id}):
                if r not in self.progress:
                    self.progress[r] = Progress(self.log.last_index, self._now)
            for r in set(self.progress) - cfg.members:
                del self.progress[r]

    def _check_removed(self) -> None:
        if (
            self._was_member
            and self.id not in self.config.members
            and self.config_index <= self.commit
        ):
            self._mark_removed()
        elif (
            self.role is Role.LEADER
            and self.id not in self.config.voters
            and self.config_index <= self.commit
        ):
            # Demoted to learner by a committed change: stop leading (§4.2.2).
            self._become_follower(self.term, None)

    def _mark_removed(self) -> None:
        if self.role is Role.LEADER:
            self._hand_over()
            self._become_follower(self.term, None)
        self.removed = True
        self._removed_pending = True
        self.leader = None

    def _hand_over(self) -> None:
        """A leader that removed itself tells the rest the commit, and lets the best one run."""
        self._broadcast_heartbeat()
        best = max(
            ((pr.match, r) for r, pr in self.progress.items() if r in self.config.voters),
            default=None,
        )
        if best is not None and best[0] == self.log.last_index:
            self._send(m.TimeoutNow(frm=self.id, to=best[1], term=self.term))

    # ------------------------------------------------------------ leadership transfer

    def transfer_leadership(self, target: ReplicaId) -> None:
        if self.role is not Role.LEADER:
            raise NotLeader(self.leader)
        if self.quiescent:
            self._unquiesce()
        if target == self.id:
            raise TransferError("already_leader", f"{target} is already the leader")
        if target not in self.config.voters:
            raise TransferError("unknown_target", f"{target} is not a voter of this group")
        pr = self.progress[target]
        if self._now - pr.last_contact > self.opts.election_ticks:
            raise TransferError("unresponsive_target", f"{target} has not answered recently")
        self._transfer_target = target
        self._transfer_elapsed = 0
        if pr.match == self.log.last_index:
            self._maybe_send_timeout_now(target, pr)
        else:
            self._replicate_dirty = True

    def cancel_transfer(self) -> None:
        """Stop waiting for the transfer target; proposals are accepted again.

        If TimeoutNow was already sent the target may still win; the lease
        stays off for the rest of the term either way.
        """
        self._transfer_target = None

    # ------------------------------------------------------------ quiescence

    def _wakes(self, msg: m.Message) -> bool:
        """Does this message end a quiescent period?

        A quiescent leader wakes on anything but a heartbeat answer from a
        member (a follower that restarted and campaigns, say); a quiescent follower on anything from
        its leader except the quiesce heartbeat itself.
        """
        if self.role is Role.LEADER:
            # Not the answers to the quiesce heartbeat itself.
            return msg.frm in self.config.members and not isinstance(msg, m.HeartbeatResp)
        if isinstance(msg, m.Heartbeat) and msg.quiesce:
            return False
        return msg.frm == self.leader or msg.term != self.term

    def _can_quiesce(self) -> bool:
        last = self.log.last_index
        if (
            self._transfer_target is not None
            or self._need_round
            or self._pending_reads
            or self._reads_after_noop
            or self._pending_conf_index > self.commit
            or self._removal_notices
            or self.commit != last
            or self.log.persisted != last
            or self.commit < self._term_start
        ):
            return False
        # Answered *this* leader recently: one woken from quiet (its clock was
        # stopped) must hear from enough followers again before it goes quiet,
        # or a leader whose followers died meanwhile would fall asleep again
        # before check-quorum could depose it, and lead for ever. Every
        # follower must be caught up and answering, except those on agents the
        # host reports unreachable -- and then a quorum of voters must be.
        behind = [
            r
            for r, pr in self.progress.items()
            if not (pr.match == last and not pr.inflight and self._answered_recently(pr))
        ]
        if not behind:
            return True
        unreachable = self.opts.peer_unreachable
        if unreachable is None or not all(unreachable(self.id.agent, r.agent) for r in behind):
            return False
        answered = sum(1 for v in self.config.voters if v not in behind)
        return answered >= self.config.quorum()

    def has_follower_behind_on(self, agent: str) -> bool:
        """Leader: does a follower on `agent` miss entries (it went quiet without it)?"""
        last = self.log.last_index
        return any(r.agent == agent and pr.match != last for r, pr in self.progress.items())

    def _maybe_quiesce(self) -> None:
        if not self.opts.quiesce_after_ticks or not self._can_quiesce():
            self._idle_ticks = 0
            return
        self._idle_ticks += 1
        if self._idle_ticks < self.opts.quiesce_after_ticks:
            return
        r = self._start_round()
        for peer, pr in self.progress.items():
            # Never a commit index past what the follower is known to hold: one
            # on an unreachable agent may hold other entries there (the
            # simulator found it: it applied them).
            commit = min(self.commit, pr.match)
            self._send(
                m.Heartbeat(
                    frm=self.id, to=peer, term=self.term, commit=commit, round=r, quiesce=True
                )
            )
        self.quiescent = True
        # No heartbeats, and the host stops ticking us: the lease must not outlive them.
        self._lease_until = 0

    def _unquiesce(self) -> None:
        self.quiescent = False
        self._idle_ticks = 0
        if self.role is Role.LEADER:
            # Our ticks stopped while quiet: a round started before is measured
            # against a frozen clock, so late acks of it must not grant a lease
            # (a partitioned quiet leader would serve stale reads on waking).
            self._lease_until = 0
            self._round_ticks.clear()
            self._need_round = True  # tell the followers at once
            self._forget_contacts()
        else:
            self.election_elapsed = 0

    def _forget_contacts(self) -> None:
        """A leader waking from quiet: with its clock stopped, a follower that
        died meanwhile still looks just heard from. Count none as healthy (for
        membership changes) until it answers the wake-up round."""
        for pr in self.progress.values():
            pr.heard = False

    def leader_lost(self) -> None:
        """The host lost its connection to the agent of this replica's leader.

        Campaign as soon as the other voters may answer: one election timeout
        after they last heard from the leader (their stickiness guard, which
        protects the leader's lease, is not shortened), plus a tick or two of
        jitter, instead of after a random one to two timeouts. A quiescent
        replica is woken instead (its elections are spread out on purpose).
        """
        if self.quiescent:
            self.wake()
            return
        if self.role is Role.FOLLOWER and self.leader is not None and self._promotable():
            self._randomized_timeout = self.opts.election_ticks + 1 + self.rng.randrange(2)

    def skip(self, ticks: int) -> None:
        """`ticks` ticks went by unprocessed (the process was paused, say by SIGSTOP).

        They still count against what is promised in time, so a lease that
        ran out during the pause is not honoured afterwards (a paused leader
        must not serve stale reads). Election timers are not advanced: that
        only delays an election, never endangers safety.
        """
        if ticks > 0:
            self._now += ticks

    def wake(self) -> None:
        """The host suspects this group's leader is gone (its agent is unreachable).

        A quiescent follower forgets its leader and restarts its election
        timer from a random point, so that thousands of groups woken by one
        agent failure campaign spread over an election timeout, not at once.
        """
        if not self.quiescent:
            return
        if self.role is Role.LEADER:
            self._unquiesce()  # the same frozen clock: no old round, no old contact
            return
        self.quiescent = False
        self._idle_ticks = 0
        self.leader = None
        self.election_elapsed = -self.rng.randrange(self.opts.election_ticks)

    # ------------------------------------------------------------ disaster recovery

    def force_sole_voter(self, min_term: int = 0) -> int:
        """Make this replica the group's only voter, now. UNSAFE by design.

        The operator's last resort when a majority of the group is gone for
        good (etcd's --force-new-cluster): whatever only the lost replicas
        held, acknowledged writes included, is lost. The forced configuration
        is appended under a term above any the survivors reported
        (`min_term`), then the replica elects itself; the fleet re-adds
        replicas afterwards. Returns the configuration entry's index.
        """
        if self.removed:
            raise MembershipError("removed", "this replica was removed from its group")
        if self.role is Role.LEADER:
            self._become_follower(self.term, None)
        self.term = max(self.term, min_term) + 1
        self.vote = None
        self.leader = None
        cfg = Config(frozenset({self.id}))
        index = self.log.last_index + 1
        self.log.append(Entry(self.term, index, EntryKind.CONFIG, cfg))
        self._set_config(index, cfg)
        self._campaign(pre=False)
        return index

    # ------------------------------------------------------------ snapshots

    def compact(self, index: int, data: bytes) -> list[Row | Entry]:
        """The host took a snapshot of the state machine at `index` (<= applied).

        Returns the entries compacted away, for the host to free when it suits it.
        """
        if index <= self.log.offset:
            return []
        if index > self.applied:
            raise ValueError(f"cannot compact to {index}: only {self.applied} applied")
        term = self.log.term_at(index)
        assert term is not None
        snap = Snapshot(SnapshotMeta(index, term, self.config_at(index)), data)
        self.snapshot = snap
        dropped = self.log.compact(index, term)
        while len(self._configs) > 1 and self._configs[1][0] <= index:
            self._configs.pop(0)
        self._configs[0] = (index, snap.meta.config)
        self._pending_compacted = snap
        return dropped

    # ------------------------------------------------------------ Ready

    def _send(self, msg: m.Message) -> None:
        # A leader's replication traffic depends on nothing unpersisted of ours
        # (its term was made durable before it asked for votes).
        if (
            self.role is Role.LEADER
            and isinstance(msg, _LEADER_MESSAGES)
            and msg.term == self._hs_persisted[0]
        ):
            self._early.append(msg)
        else:
            self._msgs.append(msg)

    def has_ready(self) -> bool:
        if self._ready_out is not None:
            return False
        if self.role is Role.LEADER and (self._replicate_dirty or self._need_round):
            return True
        return bool(
            self._msgs
            or self._early
            or self._reads
            or self._failed_reads
            or self._pending_install
            or self._pending_compacted
            or self._removed_pending
            or self.log.unstable_from <= self.log.last_index
            or self.commit > self._applied_handed
            or (self.term, self.vote, self.commit) != self._hs_persisted
        )

    def ready(self) -> Ready:
        if self._ready_out is not None:
            raise RuntimeError("ready() called again before advance()")
        if self.role is Role.LEADER:
            self._flush()
        hs_now = (self.term, self.vote, self.commit)
        hard_state = HardState(*hs_now) if hs_now != self._hs_persisted else None
        entries, token = self.log.take_unstable()
        committed = self._hand_out_committed()
        rd = Ready(
            hard_state=hard_state,
            entries=entries,
            snapshot=self._pending_install,
            compacted=self._pending_compacted,
            sync=bool(
                entries
                or self._pending_install is not None
                or self._pending_compacted is not None
                or hs_now[:2] != self._hs_persisted[:2]
            ),
            early_messages=tuple(self._early),
            messages=tuple(self._msgs),
            committed=committed,
            reads=tuple(self._reads),
            failed_reads=tuple(self._failed_reads),
            removed=self._removed_pending,
        )
        self._early, self._msgs, self._reads, self._failed_reads = [], [], [], []
        self._pending_install = self._pending_compacted = None
        self._removed_pending = False
        self._ready_out = (token, self._applied_handed, rd.snapshot is not None)
        if hard_state is not None:
            self._hs_persisted_next = hs_now
        else:
            self._hs_persisted_next = self._hs_persisted
        return rd

    def take_committed(self) -> tuple[Entry, ...]:
        """Entries committed since the Ready that is out, to apply now.

        A leader's Ready waits for its own fsync, but its followers' fsyncs
        can commit entries before that: without this those entries (and their
        clients) waited for the Ready after, a whole extra disk write. Applying
        them at once is safe for the reason in ready.py: committed means
        durable on a majority. Never while a snapshot is still to be
        restored (the state machine is not at its index yet), and only
        after the out Ready's own `committed` were applied (the host applies
        them when it takes the Ready).
        """
        out = self._ready_out
        if out is None or out[2] or self._pending_install is not None:
            return ()
        committed = self._hand_out_committed()
        self._ready_out = (out[0], self._applied_handed, False)
        return committed

    def _hand_out_committed(self) -> tuple[Entry, ...]:
        """The next committed entries not handed out yet (at most max_apply_entries)."""
        lo = self._applied_handed + 1
        hi = min(self._apply_limit(), self._applied_handed + self.opts.max_apply_entries)
        if hi < lo:
            return ()
        self._applied_handed = hi
        return tuple(self.log.slice(lo, hi + 1))

    def _apply_limit(self) -> int:
        """Entries up to here may be applied: committed ones only."""
        return self.commit

    def advance(self, rd: Ready) -> None:
        """The host persisted, sent and applied `rd` as the contract says."""
        if self._ready_out is None:
            raise RuntimeError("advance() without a Ready")
        token, applied, _ = self._ready_out
        self._ready_out = None
        self._hs_persisted = self._hs_persisted_next
        self.log.mark_persisted(token)
        self.applied = max(self.applied, applied)
        if self.role is Role.LEADER:
            self._maybe_commit()

    # ------------------------------------------------------------ status

    def status(self) -> MemberStatus:
        followers = tuple(
            FollowerStatus(
                replica=r,
                voter=r in self.config.voters,
                match_index=pr.match,
                next_index=pr.next,
                state=pr.state.value,
                ticks_since_contact=self._now - pr.last_contact,
            )
            for r, pr in sorted(self.progress.items())
        )
        return MemberStatus(
            replica=self.id,
            role=self.role.value,
            term=self.term,
            leader=self.leader,
            voters=tuple(sorted(self.config.voters)),
            learners=tuple(sorted(self.config.learners)),
            commit_index=self.commit,
            applied_index=self.applied,
            last_index=self.log.last_index,
            snapshot_index=self.log.offset,
            followers=followers,
            lease_valid=self.lease_valid(),
            transfer_target=self._transfer_target,
            removed=self.removed,
            quiescent=self.quiescent,
        )


TraceHook = Callable[[RaftMember, str, object], None]
