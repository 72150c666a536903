"""One seeded simulation run: a group of replicas, clients and faults.

Each step is one tick of simulated time: faults strike, clients act, every
live replica ticks (clocks drift a little), due messages are delivered and
hosts work through their Readys (a disk write may take a few steps, and a
crash loses it). Invariants are checked as it goes (see `checker`); at the
end the faults heal and the run must make progress again within a bound.
"""

from __future__ import annotations

import random
from collections.abc import Callable

import attrs

from raftfleet_agent.raft.errors import RaftError
from raftfleet_agent.raft.member import RaftMember, RaftOptions, Role
from raftfleet_agent.raft.membership import ConfOp
from raftfleet_agent.raft.messages import Message
from raftfleet_agent.raft.types import Config, Entry, EntryKind, ReplicaId
from raftfleet_agent.sim.checker import SafetyChecker, SimViolation
from raftfleet_agent.sim.network import SimNetwork
from raftfleet_agent.sim.node import PendingRead, SimNode

MemberFactory = Callable[..., RaftMember]


@attrs.define
class ClientOp:
    kind: str  # "cmd" or "read"
    rid: tuple[str, int]
    target: ReplicaId | None = None
    deadline: int = 0
    invoked_commit: int = 0


@attrs.define
class Client:
    name: str
    seq: int = 0
    op: ClientOp | None = None
    guess: ReplicaId | None = None


@attrs.frozen
class SimResult:
    seed: int
    steps: int
    acked: int
    reads: int
    elections: int
    messages: int
    faults: int
    quiesced: int  # times a leader went quiet (idle groups must be covered too)
    advanced_unsynced: int  # Readys advanced before their write was durable (ready.py `sync`)


@attrs.frozen(kw_only=True)
class Faults:
    """How hostile one run is; drawn from the seed."""

    loss: float
    dup: float
    long_delay_p: float
    crash_p: float
    partition_p: float
    membership_p: float
    transfer_p: float
    persist_p: float  # chance a pending disk write completes in a given step
    flap_p: float  # chance a new leader crashes within a few ticks of winning
    isolate_p: float  # chance a new leader is cut off from everyone as it wins
    pause_p: float = 0.0  # chance a process freezes (SIGSTOP) for a while, then resumes

    @classmethod
    def draw(cls, rng: random.Random) -> Faults:
        return cls(
            loss=rng.choice([0.0, 0.01, 0.05, 0.15]),
            dup=rng.choice([0.0, 0.02, 0.1]),
            long_delay_p=rng.choice([0.0, 0.0, 0.01, 0.05]),
            crash_p=rng.choice([0.0, 0.002, 0.01, 0.03]),
            partition_p=rng.choice([0.0, 0.003, 0.01]),
            membership_p=rng.choice([0.0, 0.005, 0.02]),
            transfer_p=rng.choice([0.0, 0.005, 0.02]),
            persist_p=rng.choice([1.0, 0.7, 0.4]),
            flap_p=rng.choice([0.0, 0.0, 0.2, 0.5]),
            isolate_p=rng.choice([0.0, 0.0, 0.1, 0.3]),
            pause_p=rng.choice([0.0, 0.0, 0.005, 0.02]),
        )


class Simulation:
    def __init__(
        self,
        seed: int,
        *,
        factory: MemberFactory = RaftMember,
        options: RaftOptions | None = None,
        voters: int | None = None,
        clients: int = 3,
        faults: Faults | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.factory = factory
        # Small batches and windows make partial replication, and so the
        # interesting interleavings (Figure 8), common.
        self.options = options or RaftOptions(
            election_ticks=10,
            heartbeat_ticks=1,
            max_append_entries=self.rng.choice([1, 2, 8, 64]),
            max_inflight=self.rng.choice([1, 4, 16]),
            snapshot_chunk_bytes=self.rng.choice([16, 64, 4096]),
            # Safety must not depend on the availability features: some runs go without.
            pre_vote=self.rng.random() < 0.75,
            check_quorum=self.rng.random() < 0.75,
            quiesce_after_ticks=self.rng.choice([0, 0, 3, 20]),
            peer_unreachable=self._unreachable_view(self.rng.choice(["none", "transport", "liar"])),
        )
        self.faults = faults or Faults.draw(self.rng)
        self.net = SimNetwork(self.rng)
        self.net.loss, self.net.dup = self.faults.loss, self.faults.dup
        self.net.long_delay_p = self.faults.long_delay_p
        self.check = SafetyChecker()
        self.now = 0
        self.nodes: dict[ReplicaId, SimNode] = {}
        self.crashed_at: dict[ReplicaId, int] = {}
        self._next_agent = 0
        self.clients = [Client(f"c{i}") for i in range(clients)]
        self.waiting: dict[tuple[ReplicaId, int], tuple[Client, tuple[str, int]]] = {}
        self.elections = 0
        self.fault_count = 0
        self._roles: dict[ReplicaId, tuple[Role, int]] = {}
        self._commits: dict[ReplicaId, int] = {}
        self._flaps: dict[ReplicaId, int] = {}
        self._client_rate = 0.3
        self.quiesced = 0
        self._quiet: dict[ReplicaId, bool] = {}  # leader -> tick it will crash at
        n = voters or self.rng.choice([1, 3, 3, 5])
        ids = [self._new_node() for _ in range(n)]
        cfg = Config(frozenset(ids))
        for r in ids:
            node = self.nodes[r]
            node.start(
                factory.bootstrap(
                    r, cfg, options=self.options, rng=random.Random(self.rng.random())
                )
            )
            # Creating a group makes its initial configuration durable before anything else.
            node.begin_ready()
            node.finish_ready()
        # The creator asks its desired leader to campaign at once, as the fleet does.
        self.nodes[ids[0]].member.campaign()  # type: ignore[union-attr]

    # ---------------------------------------------------------------- plumbing

    def log(self, text: str) -> None:
        self.check.trace.append(f"t={self.now} {text}")

    def _new_node(self) -> ReplicaId:
        rid = ReplicaId(f"a{self._next_agent}", 1)
        self._next_agent += 1
        self.nodes[rid] = SimNode(
            rid,
            factory=self.factory,
            options=self.options,
            seed=self.rng.getrandbits(32),
            on_apply=self._on_apply,
            on_read=self._on_read,
            on_removed=self._on_removed,
            send=self._send,
            compact_every=self.rng.choice([5, 20, 1000]),
        )
        return rid

    def _send(self, msg: Message) -> None:
        self.net.send(msg)

    def live(self) -> list[SimNode]:
        return [n for n in self.nodes.values() if n.member is not None]

    def _unreachable_view(self, kind: str) -> Callable[[str, str], bool] | None:
        """What a host tells its quiet leaders about unreachable agents.

        "transport" is roughly what an agent knows (cut links, crashed or
        frozen processes); "liar" answers at random: quiescence past
        followers must be safe whatever the host believes.
        """
        if kind == "transport":
            return self._looks_unreachable
        if kind == "liar":
            return lambda _frm, _to: self.rng.random() < 0.3
        return None

    def _looks_unreachable(self, frm: str, to: str) -> bool:
        if (frm, to) in self.net.cut:
            return True
        return any(
            r.agent == to and (r in self.crashed_at or node.paused_until)
            for r, node in self.nodes.items()
        )

    # ---------------------------------------------------------------- the step

    def step(self) -> None:
        self.now += 1
        self.net.now = self.now
        self._faults()
        self._resume_paused()
        self._clients()
        for node in self.live():
            if node.paused_until:
                continue  # a frozen process does nothing at all
            if self.now >= node.skip_tick_until:
                # Like the agent's loop, never tick a quiescent replica.
                if not node.member.quiescent:  # type: ignore[union-attr]
                    node.member.tick()  # type: ignore[union-attr]
            elif self.rng.random() < 0.05:
                node.skip_tick_until = self.now + 20  # bounded drift: one lost tick in 20
        for _ in range(3):
            for msg in self.net.due():
                node = self.nodes.get(msg.to)
                if node is not None and node.paused_until:
                    self.net.hold(msg, node.paused_until)  # waits in the socket buffer
                    continue
                if node is not None and node.member is not None:
                    self.log(f"deliver {msg!r}")
                    node.member.step(msg)
            for node in self.live():
                if node.paused_until:
                    continue
                if node.inflight is not None and self.rng.random() < self.faults.persist_p:
                    node.finish_ready()
                node.begin_ready()
        self._observe()

    def _observe(self) -> None:
        members = [n.member for n in self.live()]
        self.check.check_leaders(members)  # type: ignore[arg-type]
        for mem in members:
            assert mem is not None
            self.check.check_commit(mem, self._commits.get(mem.id, 0))
            self._commits[mem.id] = mem.commit
            prev = self._roles.get(mem.id)
            if mem.is_leader and mem.quiescent and not self._quiet.get(mem.id):
                self.quiesced += 1
                self.log(f"{mem.id} quiesces")
            self._quiet[mem.id] = mem.quiescent
            if mem.is_leader and prev != (Role.LEADER, mem.term):
                self.elections += 1
                self.log(f"{mem.id} leads term {mem.term}")
                self.check.became_leader(mem)
                if self.rng.random() < self.faults.flap_p:
                    # Flapping leaders leave half-replicated logs of several terms
                    # behind: the ground where Figure 8 bugs live.
                    self._flaps[mem.id] = self.now + self.rng.randint(0, 12)
                elif self.rng.random() < self.faults.isolate_p:
                    # Its first appends (the no-op of its term) are lost in flight.
                    others = {r.agent for r in self.nodes} - {mem.id.agent}
                    self.net.partition({mem.id.agent}, others)
                    self._lost_contact({mem.id.agent}, others)
                    self.log(f"isolate new leader {mem.id}")
            self._roles[mem.id] = (mem.role, mem.term)
        if self.now % 5 == 0:
            for i, a in enumerate(members):
                for b in members[i + 1 :]:
                    self.check.check_log_matching(a, b)  # type: ignore[arg-type]

    # ---------------------------------------------------------------- faults

    def _faults(self) -> None:
        f, rng = self.faults, self.rng
        live = self.live()
        if live and rng.random() < f.crash_p:
            # Leaders half the time: their crashes leave the most partial replication behind.
            lead = self._leader()
            victim = self.nodes[lead.id] if lead and rng.random() < 0.5 else rng.choice(live)
            self._crash(victim)
        for rid, at in list(self._flaps.items()):
            if self.now >= at:
                del self._flaps[rid]
                if self.nodes[rid].member is not None:
                    self._crash(self.nodes[rid])
        for rid, since in list(self.crashed_at.items()):
            if self.now - since > 2 and rng.random() < 0.04:
                self._restart(rid)
        if live and rng.random() < f.pause_p:
            self._pause(live)
        if rng.random() < f.partition_p:
            self._partition()
        elif self.net.cut and rng.random() < 0.02:
            self.net.cut.clear()
            self.log("heal partition")
        if rng.random() < f.membership_p:
            self._change_membership()
        if rng.random() < f.transfer_p:
            self._transfer()

    def _crash(self, victim: SimNode) -> None:
        victim.crash()
        self._lost_contact({victim.id.agent}, {r.agent for r in self.nodes})
        self.crashed_at[victim.id] = self.now
        self._commits.pop(victim.id, None)
        self._roles.pop(victim.id, None)
        self.fault_count += 1
        self.log(f"crash {victim.id}")

    def _pause(self, live: list[SimNode]) -> None:
        lead = self._leader()
        victim = self.nodes[lead.id] if lead and self.rng.random() < 0.5 else self.rng.choice(live)
        if victim.paused_until:
            return
        ticks = self.rng.randint(5, 60)
        victim.paused_at, victim.paused_until = self.now, self.now + ticks
        self.fault_count += 1
        self.log(f"pause {victim.id} for {ticks} ticks")
        if ticks > 15:  # long enough for the peers' transports to give up on it
            self._lost_contact({victim.id.agent}, {r.agent for r in self.nodes})

    def _resume_paused(self) -> None:
        for node in self.live():
            if node.paused_until and self.now >= node.paused_until:
                missed = node.paused_until - node.paused_at
                node.paused_until = 0
                # What the agent's loop does on waking: count the lost ticks first.
                node.member.skip(missed)  # type: ignore[union-attr]
                self.log(f"resume {node.id} after {missed} ticks")
                deferred, node.deferred = node.deferred, []
                for action in deferred:
                    action()

    def _lost_contact(self, gone: set[str], observers: set[str]) -> None:
        """What the agent does when its transport loses an agent: replicas whose
        leader lived there wake (if quiescent) or campaign as early as allowed."""
        for node in self.live():
            m = node.member
            assert m is not None
            if (
                node.id.agent in observers
                and m.leader
                and m.leader.agent in gone
                and m.leader != m.id
            ):
                m.leader_lost()
                self.log(f"leader lost: {node.id}")

    def _restart(self, rid: ReplicaId) -> None:
        del self.crashed_at[rid]
        node = self.nodes[rid]
        if node.gone:
            return
        node.restart()
        self.check.on_restore(rid, node.sm.applied, node.sm.value)
        self.log(f"restart {rid} term={node.member.term} commit={node.member.commit}")  # type: ignore[union-attr]

    def _partition(self) -> None:
        agents = [r.agent for r in self.nodes]
        self.rng.shuffle(agents)
        k = self.rng.randint(1, max(1, len(agents) - 1))
        one_way = self.rng.random() < 0.3
        self.net.partition(set(agents[:k]), set(agents[k:]), one_way=one_way)
        self._lost_contact(set(agents[:k]), set(agents[k:]))
        if not one_way:
            self._lost_contact(set(agents[k:]), set(agents[:k]))
        self.fault_count += 1
        self.log(f"partition {agents[:k]} | {agents[k:]} one_way={one_way}")

    def _leader(self) -> RaftMember | None:
        leaders = [n.member for n in self.live() if n.member.is_leader]  # type: ignore[union-attr]
        return max(leaders, key=lambda m: m.term) if leaders else None

    def _change_membership(self) -> None:
        lead = self._leader()
        if lead is None:
            return
        cfg = lead.config
        try:
            if cfg.learners:
                r = self.rng.choice(sorted(cfg.learners))
                op = ConfOp.PROMOTE if self.rng.random() < 0.8 else ConfOp.REMOVE
                lead.change_membership(op, r)
            elif len(cfg.voters) < 5 and (len(cfg.voters) < 3 or self.rng.random() < 0.5):
                r = self._new_node()
                self.nodes[r].start(
                    self.factory(r, options=self.options, rng=random.Random(self.rng.random()))
                )
                op = ConfOp.ADD_LEARNER
                lead.change_membership(op, r)
            else:
                r = self.rng.choice(sorted(cfg.voters))
                op = ConfOp.REMOVE
                lead.change_membership(op, r)
            self.fault_count += 1
            self.log(f"membership {op.value} {r} via {lead.id}")
        except RaftError as e:
            self.log(f"membership refused: {e}")

    def _transfer(self) -> None:
        lead = self._leader()
        if lead is None or len(lead.config.voters) < 2:
            return
        target = self.rng.choice(sorted(lead.config.voters - {lead.id}))
        try:
            lead.transfer_leadership(target)
            self.log(f"transfer {lead.id} -> {target}")
        except RaftError as e:
            self.log(f"transfer refused: {e}")

    # ---------------------------------------------------------------- clients

    def _clients(self) -> None:
        if self.now % 100 == 1:
            # Busy and idle phases: idle groups quiesce, and must wake correctly.
            self._client_rate = self.rng.choice([0.3, 0.3, 0.05, 0.0])
        for c in self.clients:
            if c.op is not None and self.now >= c.op.deadline:
                self._retry(c)
            elif c.op is None and self.rng.random() < self._client_rate:
                c.seq += 1
                kind = "read" if self.rng.random() < 0.3 else "cmd"
                c.op = ClientOp(kind, (c.name, c.seq), invoked_commit=self.check.commit)
                self._retry(c)

    def _retry(self, c: Client) -> None:
        op = c.op
        assert op is not None
        live = self.live()
        if not live:
            op.deadline = self.now + 5
            return
        node = self.nodes.get(c.guess) if c.guess else None
        if node is None or node.member is None or self.rng.random() < 0.2:
            node = self.rng.choice(live)
        op.target, op.deadline = node.id, self.now + 30
        if node.paused_until:
            # The request sits in the frozen process's socket until it resumes.
            node.deferred.append(lambda c=c, node=node, rid=op.rid: self._issue(c, node, rid))
            return
        self._issue(c, node, op.rid)

    def _issue(self, c: Client, node: SimNode, rid: tuple[str, int]) -> None:
        op, mem = c.op, node.member
        if op is None or op.rid != rid or mem is None:
            return  # answered meanwhile, or the node crashed
        try:
            if op.kind == "cmd":
                data = [op.rid[0], op.rid[1], "inc" if self.rng.random() < 0.9 else ["set", 0]]
                index = mem.propose(data)
                self.waiting[(node.id, index)] = (c, op.rid)
            else:
                mem.read((c.name, op.rid[1]))
        except RaftError as e:
            c.guess = getattr(e, "leader", None)
            op.deadline = self.now + 2

    def _on_apply(self, node: SimNode, e: Entry, reply: int | None, effective: bool) -> None:
        self.check.on_apply(node.id, e, node.sm.value, reply, effective)
        w = self.waiting.pop((node.id, e.index), None)
        if w is None:
            return
        c, rid = w
        took = e.kind is EntryKind.NORMAL and e.data[:2] == list(rid)  # type: ignore[index]
        if took and c.op is not None and c.op.rid == rid:
            self.check.on_ack(rid, reply)
            self.log(f"ack {rid} -> {reply} at {e.index}")
            c.op, c.guess = None, node.id

    def _on_removed(self, node: SimNode, gone: RaftMember) -> None:
        others = []
        for n in self.nodes.values():
            if n is node:
                continue
            m = n.member
            if m is not None:
                term = m.log.term_at(m.config_index) or 0
                others.append((m.config_index, term, m.config, n.id))
            elif (durable := n.disk.newest_config()) is not None:
                others.append((*durable, n.id))  # crashed: what it will restart with
        self.check.check_removal(gone, others)

    def _on_read(self, node: SimNode, r: PendingRead) -> None:
        name, seq = r.state.ctx  # type: ignore[misc]
        c = next(c for c in self.clients if c.name == name)
        if c.op is None or c.op.kind != "read" or c.op.rid != (name, seq):
            return
        self.check.on_read(node.id, c.op.invoked_commit, node.sm.applied, node.sm.value)
        c.op, c.guess = None, node.id

    # ---------------------------------------------------------------- a whole run

    def heal(self) -> None:
        self.net.heal()
        # Every fault stops: liveness is judged on a quiet network and steady nodes.
        self.faults = attrs.evolve(
            self.faults,
            crash_p=0.0,
            partition_p=0.0,
            membership_p=0.0,
            transfer_p=0.0,
            flap_p=0.0,
            isolate_p=0.0,
            pause_p=0.0,
        )
        self._flaps.clear()
        for rid in list(self.crashed_at):
            self._restart(rid)

    def run(self, steps: int, liveness_ticks: int = 1000) -> SimResult:
        for _ in range(steps):
            self.step()
        self.heal()
        self._await_progress(liveness_ticks)
        self.check.check_exactly_once()
        return SimResult(
            self.seed,
            steps,
            len(self.check.acked),
            self.check.reads_checked,
            self.elections,
            self.net.sent,
            self.fault_count,
            self.quiesced,
            sum(n.advanced_unsynced for n in self.nodes.values()),
        )

    def _await_progress(self, ticks: int) -> None:
        """Liveness: after healing, a fresh command must commit within `ticks`."""
        probe = Client("probe")
        self.clients.append(probe)
        probe.seq = 1
        probe.op = ClientOp("cmd", ("probe", 1), invoked_commit=self.check.commit)
        self._retry(probe)
        start = self.now
        while self.now - start < ticks:
            self.step()
            if ("probe", 1) in self.check.acked:
                return
        roles = [(str(n.id), n.member.role.value, n.member.term) for n in self.live()]  # type: ignore[union-attr]
        self.log(f"no progress; roles: {roles}")
        raise SimViolation(f"liveness: no command committed within {ticks} ticks after healing")


def churn_profile(seed: int) -> dict:
    """Leader churn with one-entry appends and no pre-vote or check-quorum.

    Old-term entries then often reach a majority before the new leader's
    no-op does: the situation of the paper's Figure 8, which the random
    profile reaches only rarely (pre-vote and stickiness make it hard).
    """
    rng = random.Random(seed ^ 0x5EED)
    return {
        "options": RaftOptions(
            election_ticks=10,
            heartbeat_ticks=1,
            max_append_entries=1,
            max_inflight=1,
            pre_vote=False,
            check_quorum=False,
        ),
        "faults": Faults(
            loss=0.05,
            dup=0.0,
            long_delay_p=0.01,
            crash_p=0.03,
            partition_p=0.01,
            membership_p=0.0,
            transfer_p=0.0,
            persist_p=0.7,
            flap_p=0.5,
            isolate_p=0.3,
        ),
        "voters": rng.choice([3, 5]),
    }


PROFILES = {"random": lambda seed: {}, "churn": churn_profile}


def run_seed(
    seed: int, steps: int, factory: MemberFactory = RaftMember, profile: str = "random"
) -> SimResult:
    return Simulation(seed, factory=factory, **PROFILES[profile](seed)).run(steps)
