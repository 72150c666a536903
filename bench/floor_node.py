"""One node of the plumbing floor (bench/floor.py): the agent's I/O path with no Raft in it.

    python bench/floor_node.py '<json config>'   # started by bench/floor.py

Keeps what every replicated command costs the real agent outside the
consensus core: a trio loop, the control protocol on a Unix socket, peer
frames over TCP, msgpack, the Raft message codec and the durable store with
one batch per loop turn. Leaves out RaftMember, Ready, elections, ticks,
heartbeats, the state machine, sessions and request validation: group "g<k>"
is led by node k % 3 for ever, every term is 1 and logs never diverge.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from collections import deque
from functools import partial
from pathlib import Path

import msgpack
import trio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from raftfleet_agent import gc_policy
from raftfleet_agent.host import wire
from raftfleet_agent.raft.messages import Append, AppendResp, Message
from raftfleet_agent.raft.types import Entry, EntryKind, HardState, ReplicaId
from raftfleet_agent.storage import (
    GroupWrite,
    LogStore,
    MemoryLogStore,
    SqliteLogStore,
    WriteBatch,
)
from raftfleet_agent.transport.framing import FrameDecoder, FrameError, encode_frame

TERM = 1
RECEIVE_BYTES = 256 * 1024  # as the agent's peer connections
DIAL_ATTEMPTS = 400  # x 25 ms: peers start within a few seconds of each other
CONN_ERRORS = (trio.BrokenResourceError, trio.ClosedResourceError, OSError, FrameError)


class Writer:
    """One stream's outgoing bytes: whatever a turn queued leaves in one send_all."""

    def __init__(self, stream: trio.SocketStream) -> None:
        self.stream = stream
        self.queue: list[bytes] = []
        self.ready = trio.Event()
        self.closed = False

    def push(self, frame: bytes) -> None:
        if not self.closed:
            self.queue.append(frame)

    async def run(self) -> None:
        try:
            while True:
                if not self.queue:
                    self.ready = trio.Event()
                    await self.ready.wait()
                    continue
                data = b"".join(self.queue)
                self.queue.clear()
                await self.stream.send_all(data)
        except CONN_ERRORS:
            self.closed = True


class Group:
    __slots__ = ("commit", "durable", "last", "leader", "match", "name", "new", "waiters")

    def __init__(self, name: str, leader: int) -> None:
        self.name = name
        self.leader = leader
        self.last = 0  # last index appended (leader) or received (follower)
        self.durable = 0  # leader: its own log is durable up to here
        self.match: dict[int, int] = {}  # leader: follower node -> highest acked index
        self.commit = 0
        self.new: list[Entry] = []  # appended since the last turn, not yet submitted
        self.waiters: deque[tuple[int, Writer, object]] = deque()  # (index, client, request id)


class Node:
    def __init__(self, me: int, store: LogStore) -> None:
        self.me = me
        self.ids = [ReplicaId(f"n{i}", 1) for i in range(3)]
        self.peers = [i for i in range(3) if i != me]
        self.store = store
        self.groups: dict[str, Group] = {}
        self.dirty: set[Group] = set()
        self.durable: deque[list[tuple[Group, int]]] = deque()
        self.out: dict[int, list[tuple[str, Message]]] = {p: [] for p in self.peers}
        self.peer_writers: dict[int, Writer] = {}
        self.clients_dirty: set[Writer] = set()
        self.wake = trio.Event()
        self.turns = self.clients = 0
        self.token: trio.lowlevel.TrioToken | None = None

    def group(self, name: str) -> Group:
        g = self.groups.get(name)
        if g is None:
            k = name[1:]
            g = self.groups[name] = Group(name, int(k) % 3 if k.isdigit() else 0)
        return g

    # -- input: runs in the reader tasks, like MultiRaftHost.deliver / start_command

    def on_request(self, client: Writer, cid: str, seq: int, req: object) -> None:
        if not isinstance(req, dict) or not isinstance(req.get("args"), dict):
            raise FrameError("request: expected a map with args")
        rid, args = req.get("id"), req["args"]
        g = self.group(str(args.get("group")))
        if g.leader != self.me:
            err = {"code": "not_leader", "message": f"n{g.leader} leads {g.name}"}
            client.push(encode_frame({"id": rid, "ok": False, "error": err}))
            self.clients_dirty.add(client)
        else:
            # The same envelope as statemachine.encode_command: request id, clock,
            # arg, encoded once here.
            g.last += 1
            data = msgpack.packb([cid, seq, int(time.time() * 1000), args.get("arg")])
            g.new.append(Entry(TERM, g.last, EntryKind.NORMAL, data))
            g.waiters.append((g.last, client, rid))
            self.dirty.add(g)
        self.wake.set()

    def on_peer_frame(self, frame: object) -> None:
        kind, rest = wire.split(frame)
        if kind != wire.RAFT:
            return
        for name, msg in wire.decode_raft(rest[0]):
            g = self.group(name)
            if type(msg) is Append:
                # One TCP stream per leader, a leader that never changes: in order.
                if msg.prev_index != g.last or g.leader == self.me:
                    raise RuntimeError(f"{name}: append after {msg.prev_index}, have {g.last}")
                if msg.entries:
                    g.new.extend(msg.entries)
                    g.last = msg.entries[-1].index
                g.commit = max(g.commit, min(msg.commit, g.last))
                self.dirty.add(g)
            elif type(msg) is AppendResp and msg.success:
                frm = int(msg.frm.agent[1:])
                if msg.index > g.match.get(frm, 0):
                    g.match[frm] = msg.index
                    self.dirty.add(g)
        self.wake.set()

    def on_durable_thread(self, done: list[tuple[Group, int]], err: BaseException | None) -> None:
        # The store's writer thread (or inline for the memory store): hand over only.
        if err is not None:
            os._exit(3)  # never acknowledge what is not durable
        assert self.token is not None
        self.token.run_sync_soon(self.on_durable, done)

    def on_durable(self, done: list[tuple[Group, int]]) -> None:
        self.durable.append(done)
        self.wake.set()

    # -- the loop: one turn = acks of what became durable, one store batch, one frame per peer

    async def loop(self) -> None:
        while True:
            await self.wake.wait()
            self.wake = trio.Event()
            self.turn()

    def turn(self) -> None:
        self.turns += 1
        me = self.ids[self.me]
        while self.durable:
            for g, index in self.durable.popleft():
                if g.leader == self.me:
                    g.durable = max(g.durable, index)
                    self.dirty.add(g)
                else:  # a follower acknowledges only what it made durable
                    ack = AppendResp(
                        frm=me, to=self.ids[g.leader], term=TERM, success=True, index=index
                    )
                    self.out[g.leader].append((g.name, ack))
        writes: list[GroupWrite] = []
        done: list[tuple[Group, int]] = []
        dirty, self.dirty = self.dirty, set()
        for g in dirty:
            if g.leader == self.me:
                self.advance(g)
            if not g.new:
                continue
            ents, g.new = tuple(g.new), []
            if g.leader == self.me:
                # The appends leave in this turn, while the leader's own fsync runs.
                prev = ents[0].index - 1
                kw = {"frm": me, "term": TERM, "prev_index": prev, "entries": ents}
                kw |= {"prev_term": TERM if prev else 0, "commit": g.commit, "round": self.turns}
                for p in self.peers:
                    self.out[p].append((g.name, Append(to=self.ids[p], **kw)))
            hs = HardState(term=TERM, vote=self.ids[g.leader], commit=g.commit)
            writes.append(GroupWrite(group=g.name, entries=ents, hard_state=hs))
            done.append((g, ents[-1].index))
        if writes:
            self.store.submit(WriteBatch(tuple(writes)), partial(self.on_durable_thread, done))
        for p, batch in self.out.items():
            if batch:
                self.peer_writers[p].push(encode_frame(wire.encode_raft(batch)))
                self.peer_writers[p].ready.set()
                self.out[p] = []
        for c in self.clients_dirty:
            c.ready.set()
        self.clients_dirty.clear()

    def advance(self, g: Group) -> None:
        """Commit = durable on a majority (leader's own log and followers' acks)."""
        c = sorted((g.durable, g.match.get(self.peers[0], 0), g.match.get(self.peers[1], 0)))[1]
        if c <= g.commit:
            return
        g.commit = c
        while g.waiters and g.waiters[0][0] <= c:
            index, client, rid = g.waiters.popleft()
            client.push(encode_frame({"id": rid, "ok": True, "result": index}))
            self.clients_dirty.add(client)

    # -- connections

    async def serve_client(self, stream: trio.SocketStream) -> None:
        self.clients += 1
        cid, seq = f"n{self.me}-c{self.clients}", 0
        w = Writer(stream)
        dec = FrameDecoder()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(w.run)
            try:
                while data := await stream.receive_some(RECEIVE_BYTES):
                    dec.feed(data)
                    for req in dec:
                        seq += 1
                        self.on_request(w, cid, seq, req)
            except CONN_ERRORS:
                pass
            w.closed = True
            nursery.cancel_scope.cancel()

    async def serve_peer(self, stream: trio.SocketStream, accepted: list[int]) -> None:
        accepted.append(1)
        dec = FrameDecoder()
        while data := await stream.receive_some(RECEIVE_BYTES):
            dec.feed(data)
            for frame in dec:
                self.on_peer_frame(frame)
        raise RuntimeError("a peer closed its connection")  # peers live as long as we do


async def dial(host: str, port: int, local: str) -> trio.SocketStream:
    for _ in range(DIAL_ATTEMPTS):
        try:
            return await trio.open_tcp_stream(host, port, local_address=local)
        except OSError:
            await trio.sleep(0.025)
    raise RuntimeError(f"cannot reach {host}:{port}")


async def main(cfg: dict) -> None:
    me, hosts, ports = int(cfg["me"]), cfg["hosts"], cfg["ports"]
    gc_policy.tune()  # the agent's collector thresholds; the default costs ~20 % CPU
    if cfg["store"] == "sqlite":
        store: LogStore = SqliteLogStore(cfg["data"])
    else:
        store = MemoryLogStore()
    node = Node(me, store)
    node.token = trio.lowlevel.current_trio_token()
    accepted: list[int] = []
    async with trio.open_nursery() as nursery:
        listeners = await trio.open_tcp_listeners(ports[me], host=hosts[me])
        nursery.start_soon(
            trio.serve_listeners, partial(node.serve_peer, accepted=accepted), listeners
        )
        usock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        await usock.bind(cfg["sock"])
        usock.listen(256)
        nursery.start_soon(trio.serve_listeners, node.serve_client, [trio.SocketListener(usock)])
        for p in node.peers:
            node.peer_writers[p] = w = Writer(await dial(hosts[p], ports[p], hosts[me]))
            nursery.start_soon(w.run)
        for _ in range(DIAL_ATTEMPTS):  # both peers dialed us too
            if len(accepted) == len(node.peers):
                break
            await trio.sleep(0.025)
        else:
            raise RuntimeError("peers did not connect")
        nursery.start_soon(node.loop)
        # Created last and at once (rename): the driver waits for it, never for a fixed time.
        await trio.Path(cfg["ready"] + ".tmp").write_text(str(os.getpid()))
        await trio.Path(cfg["ready"] + ".tmp").rename(cfg["ready"])
        print(f"n{me} ready", file=sys.stderr, flush=True)


if __name__ == "__main__":
    trio.run(main, json.loads(sys.argv[1]))
