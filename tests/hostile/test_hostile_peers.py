"""Hostile peers against a real agent's peer port.

Threat model. The peer port is open to the network, so anybody can connect;
only a holder of the cluster secret can authenticate (HMAC over fresh nonces
from both sides: handshake.py). An authenticated peer is trusted to be an
agent of the cluster: the secret is the cluster's one key. Within that, the
defences against a peer that misbehaves (a bug, a stale agent, a forgery)
are:

- the transport: frame caps (4 KiB before authentication, 16 MiB after), a
  5 s handshake deadline, at most 64 handshakes in progress, a malformed
  frame closes only that connection (wire.py / codec.py validate shapes and
  raise only WireError/CodecError);
- the host (`MultiRaftHost.deliver`): a message is dropped unless its
  sender's agent is the connection's authenticated name and its receiver is
  the local replica id of a group hosted here, so a peer speaks only for its
  own replicas and only to ours;
- the Raft core (`RaftMember.step`): a leader answers a non-member with
  Removed and ignores it; pre-vote and the stickiness guard ignore (pre-)votes
  while a leader is alive; and (added with these tests) a follower that hears
  from a live leader ignores any higher-term message from a non-member,
  drops "leader" messages in its term from anyone but its leader, and takes
  TimeoutNow only from its leader. Before that, a single transfer Vote,
  Append or Heartbeat from a non-member with term 2**62 raised the group's
  term to 2**62 (and an Append deposed the leader), and a TimeoutNow at the
  current term started an election;
- the codec rejects an Append whose entries do not start at prev_index + 1.

Every test here runs against real `raftfleet-agent` processes on
127.0.0.x, stopped by pid by the fixture that started them.
"""

from __future__ import annotations

import resource
import secrets
import socket
import time
from collections.abc import Iterator

import pytest
import trio

from raftfleet_agent.host import wire
from raftfleet_agent.raft import messages as m
from raftfleet_agent.raft.types import Config, Entry, EntryKind, ReplicaId, SnapshotMeta
from raftfleet_agent.transport import handshake
from raftfleet_agent.transport.framing import FrameDecoder, encode_frame
from raftfleet_agent.transport.handshake import HandshakeError, LocalIdentity, handshake_as_dialer
from tests.hostile.hostile_peer import HostilePeer, open_fds, raise_nofile, run, vm_rss_kib
from tests.procs import SECRET, AgentProc, agents, connected_to_all, wait_for

pytestmark = pytest.mark.slow

HUGE = 2**62
GROUP = "g1"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[AgentProc]]:
    with agents(tmp_path_factory.mktemp("hostile"), 3, first_octet=131) as procs:
        wait_for(lambda: connected_to_all(procs), 20, "agents to connect")
        procs[0].call(
            "group_create", name=GROUP, type="counter", agents=["a1", "a2", "a3"], timeout=20
        )
        yield procs


def _status(a: AgentProc) -> dict:
    return a.call("group_status", name=GROUP)  # type: ignore[return-value]


def _replica_ids(a: AgentProc) -> dict[str, ReplicaId]:
    return {mm["agent"]: ReplicaId(*mm["replica_id"]) for mm in _status(a)["members"]}


def _healthy(procs: list[AgentProc]) -> tuple[str, int]:
    """Every agent alive and serving; the group has one leader; (leader, term)."""
    for p in procs:
        assert p.alive, f"{p.name} died:\n{p.log()}"
        assert p.call("ping") == "pong"
    st = _status(procs[0])
    assert st["leader"] is not None
    before = procs[1].call("query", group=GROUP, arg="get")["reply"]  # type: ignore[index]
    reply = procs[2].call("command", group=GROUP, arg="inc", timeout=15)
    assert reply["reply"] == before  # type: ignore[index]
    return st["leader"], st["term"]


def _addr(p: AgentProc) -> tuple[str, int]:
    return p.host, p.port


# -- unauthenticated strangers -------------------------------------------------


def test_frames_without_a_handshake_are_dropped(cluster: list[AgentProc]) -> None:
    a1 = cluster[0]

    async def main() -> None:
        # A well-formed Raft batch and an RPC call, but no handshake: a protocol
        # error and a hang-up, never a delivery.
        for frame in (
            wire.encode_raft(
                [(GROUP, m.TimeoutNow(frm=ReplicaId("a2", 1), to=ReplicaId("a1", 1), term=1))]
            ),
            wire.encode_call(1, "drop_replica", {"group": GROUP}),
            {"t": "auth", "mac": b"\x00" * 32},
        ):
            peer = await HostilePeer.connect(*_addr(a1))
            await peer.send(frame)
            frames: list[object] = []
            with trio.fail_after(6):
                try:
                    while True:
                        frames.append(await peer.next_frame(6))
                except EOFError:
                    pass  # hung up on: good
            # At most a refusal with a reason (sent for a map that is not a hello).
            assert all(isinstance(f, dict) and f.get("t") == "refused" for f in frames), frames
            await peer.aclose()
        # Raw garbage and an oversized handshake frame: hung up on.
        for data in (b"\xff" * 64, b"GET / HTTP/1.0\r\n\r\n", b"\x00\x01\x00\x00" + b"x" * 5000):
            peer = await HostilePeer.connect(*_addr(a1))
            await peer.send_raw(data)
            assert await peer.closed_by_agent(6)
            await peer.aclose()

    run(main)
    _healthy(cluster)
    assert _status(cluster[0])["leader"] is not None


def test_wrong_secret_is_refused_both_ways(cluster: list[AgentProc]) -> None:
    a1 = cluster[0]
    wrong = b"not-the-cluster-secret-0123456789"

    async def main() -> None:
        # Our dialer finds the agent's mac wrong (it used the real secret).
        peer = await HostilePeer.connect(*_addr(a1))
        with pytest.raises(HandshakeError) as info:
            await handshake_as_dialer(
                peer.stream, peer.decoder, LocalIdentity(name="eve", cluster=None, secret=wrong)
            )
        assert info.value.code == "auth"
        await peer.aclose()
        # The agent finds our mac wrong: hello, then an auth made with the wrong secret.
        peer = await HostilePeer.connect(*_addr(a1))
        me = LocalIdentity(name="eve", cluster=None, secret=wrong)
        nonce_a = secrets.token_bytes(handshake.NONCE_BYTES)
        await peer.send(
            {
                "t": "hello",
                "version": handshake.PROTOCOL_VERSION,
                "cluster": None,
                "name": me.name,
                "boot": me.boot_id,
                "nonce": nonce_a,
            }
        )
        welcome = await peer.next_frame(5)
        assert isinstance(welcome, dict) and welcome["t"] == "welcome"
        fields = [
            handshake.PROTOCOL_VERSION,
            None,
            welcome["cluster"],
            me.name,
            welcome["name"],
            me.boot_id,
            welcome["boot"],
            nonce_a,
            welcome["nonce"],
        ]
        await peer.send({"t": "auth", "mac": handshake._mac(wrong, "dialer", fields)})
        await peer.send(wire.encode_call(5, "brief", {}))
        assert await peer.closed_by_agent(6), "a wrong mac was accepted"
        await peer.aclose()

    run(main)


class _Recorder(trio.abc.Stream):
    """Wraps a stream and keeps every byte we send (to replay it later)."""

    def __init__(self, inner: trio.SocketStream) -> None:
        self.inner = inner
        self.sent = bytearray()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += data
        await self.inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self.inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes:
        return await self.inner.receive_some(max_bytes)

    async def send_eof(self) -> None:
        await self.inner.send_eof()

    async def aclose(self) -> None:
        await self.inner.aclose()


def test_replayed_handshake_fails(cluster: list[AgentProc]) -> None:
    a1 = cluster[0]

    async def main() -> None:
        # A legit dialer (right secret) completes a handshake; we record its bytes.
        stream = await trio.open_tcp_stream(*_addr(a1))
        rec = _Recorder(stream)
        me = LocalIdentity(name="replayed", cluster=None, secret=SECRET)
        decoder = FrameDecoder(handshake.HANDSHAKE_FRAME_BYTES_MAX)
        identity = await handshake_as_dialer(rec, decoder, me)
        assert identity.name == "a1"
        recorded = bytes(rec.sent)  # hello + auth
        assert recorded.count(b"hello") == 1 and recorded.count(b"auth") == 1
        # Proof that the recording works while live: the agent answers our call.
        legit = HostilePeer(stream, decoder)
        decoder.frame_bytes_max = 16 * 1024 * 1024
        ok, value = await legit.call("brief", {})
        assert ok is True and isinstance(value, dict)
        await legit.aclose()
        # Replayed on a new connection: the agent drew a new nonce, so the
        # recorded mac is wrong and the connection never becomes a peer.
        for _ in range(3):
            peer = await HostilePeer.connect(*_addr(a1))
            try:
                await peer.send_raw(
                    recorded
                    + encode_frame(wire.encode_call(7, "brief", {}))
                    + encode_frame(wire.encode_call(8, "drop_replica", {"group": GROUP}))
                )
            except trio.BrokenResourceError:
                pass  # the agent already hung up on the replayed auth
            frames = []
            hung_up = False
            with trio.move_on_after(6):
                try:
                    while True:
                        frames.append(await peer.next_frame(6))
                except EOFError:
                    hung_up = True
            assert hung_up, "the agent kept a connection whose auth was replayed"
            # At most the agent's welcome (it may be lost to the RST): never an answer.
            assert all(isinstance(f, dict) and f["t"] == "welcome" for f in frames), frames
            await peer.aclose()

    run(main)
    _healthy(cluster)  # the replayed drop_replica did not run


# -- authenticated peers sending nonsense --------------------------------------


def test_raft_messages_for_groups_not_hosted_are_dropped(cluster: list[AgentProc]) -> None:
    a1 = cluster[0]
    leader_before, term_before = _healthy(cluster)
    ids = _replica_ids(a1)

    async def main() -> None:
        peer = await HostilePeer.authenticated(*_addr(a1), "mallory")
        to = ids["a1"]
        frm = ReplicaId("mallory", 1)
        batch = []
        for i in range(500):
            batch.append(
                (
                    f"ghost-{i}",
                    m.Vote(
                        frm=frm, to=to, term=HUGE, last_index=HUGE, last_term=HUGE, transfer=True
                    ),
                )
            )
            batch.append(
                (
                    f"ghost-{i}",
                    m.Append(
                        frm=frm,
                        to=to,
                        term=HUGE,
                        prev_index=0,
                        prev_term=0,
                        entries=(),
                        commit=HUGE,
                    ),
                )
            )
        # Right group, wrong receiver (a replica id a1 does not have), and a
        # sender that is not the connection's name (it claims to be a2).
        batch.append((GROUP, m.TimeoutNow(frm=frm, to=ReplicaId("a1", to.n + 1), term=1)))
        batch.append(
            (
                GROUP,
                m.Append(
                    frm=ids["a2"], to=to, term=HUGE, prev_index=0, prev_term=0, entries=(), commit=0
                ),
            )
        )
        batch.append((GROUP, m.TimeoutNow(frm=ids["a2"], to=to, term=term_before)))
        for _ in range(4):
            await peer.send_raft(batch)
        ok, _ = await peer.call("brief", {})  # the connection is still up: all were dropped
        assert ok is True
        await peer.aclose()

    run(main)
    time.sleep(1.0)
    assert _healthy(cluster) == (leader_before, term_before)


def _forgeries(frm: ReplicaId, to: ReplicaId, term: int, last_index: int) -> list[m.Message]:
    cfg = Config(frozenset({frm}))
    return [
        m.PreVote(frm=frm, to=to, term=HUGE, last_index=HUGE, last_term=HUGE),
        m.Vote(frm=frm, to=to, term=HUGE, last_index=HUGE, last_term=HUGE),
        m.Vote(frm=frm, to=to, term=HUGE, last_index=HUGE, last_term=HUGE, transfer=True),
        m.Append(frm=frm, to=to, term=HUGE, prev_index=0, prev_term=0, entries=(), commit=0),
        m.Append(
            frm=frm,
            to=to,
            term=term,
            prev_index=last_index,
            prev_term=term,
            entries=(Entry(term, last_index + 1, EntryKind.CONFIG, cfg),),
            commit=last_index + 1,
        ),
        m.Heartbeat(frm=frm, to=to, term=HUGE, commit=HUGE, round=1),
        m.Heartbeat(frm=frm, to=to, term=term, commit=HUGE, round=1),
        m.TimeoutNow(frm=frm, to=to, term=term),
        m.TimeoutNow(frm=frm, to=to, term=HUGE),
        m.InstallSnapshot(
            frm=frm,
            to=to,
            term=HUGE,
            meta=SnapshotMeta(HUGE, HUGE, cfg),
            offset=0,
            chunk=b"garbage",
            done=True,
        ),
        m.AppendResp(frm=frm, to=to, term=HUGE, success=True, index=HUGE),
        m.Removed(frm=frm, to=to, term=term),
    ]


def test_forged_messages_from_a_non_member_do_not_depose_the_leader(
    cluster: list[AgentProc],
) -> None:
    """Regression: a transfer Vote, Append or Heartbeat with term 2**62 from a
    non-member used to raise the group's term to 2**62 (and an Append deposed the
    leader); a TimeoutNow at the current term used to start an election."""
    leader_before, term_before = _healthy(cluster)
    ids = _replica_ids(cluster[0])
    last_index = _status(cluster[0])["last_index"]

    async def main() -> None:
        peers = [await HostilePeer.authenticated(*_addr(p), "mallory") for p in cluster]
        frm = ReplicaId("mallory", 666)
        try:
            for _ in range(5):  # over ~1.5 election timeouts, to every replica
                for p, peer in zip(cluster, peers, strict=True):
                    to = ids[p.name]
                    await peer.send_raft(
                        [(GROUP, msg) for msg in _forgeries(frm, to, term_before, last_index)]
                    )
                await trio.sleep(0.3)
            for peer in peers:
                ok, _ = await peer.call("brief", {})
                assert ok is True  # well-formed, so no connection was dropped
        finally:
            for peer in peers:
                await peer.aclose()

    run(main)
    for p in cluster:
        st = _status(p)
        assert (st["leader"], st["term"]) == (leader_before, term_before), (p.name, st)
        assert {mm["agent"] for mm in st["members"]} == {"a1", "a2", "a3"}
    assert _healthy(cluster) == (leader_before, term_before)


# Junk arguments for every peer call that cannot destroy the test's group.
_JUNK_ARGS: list[object] = [
    {},
    {"group": None},
    {"group": [1, [2]], "type": {"x": 1}, "replica": "a1", "config": [[["a1"]]]},
    {"group": "x" * 100_000},
    {"group": "zz", "type": "counter", "replica": ["a1", -1], "config": None},
    {"group": "zz", "type": "counter", "replica": ["a1", 2**64 - 1], "config": [[1], [2]]},
    {"group": "zz", "type": "counter", "replica": ["a1", 5], "config": [[["a1", 5]], [["a1", 5]]]},
    {"group": "zz", "type": "no.such.module:Type", "replica": ["a1", 5], "config": None},
    {"group": "zz", "type": "counter", "replica": ["someone-else", 5], "config": None},
    {"group": "zz", "op": "explode", "replica": [1, 2]},
    {"group": "zz", "op": "add_learner", "replica": ["a9", 1]},
    {"group": GROUP, "op": "promote", "replica": "junk"},
    {"group": "zz", "agent": 5, "min_term": "x"},
    {"peers": {"a9": 5, 7: "x", "bad name": "nowhere:1"}},
    {"peers": "x"},
]
_SAFE_OPS = [
    "host_replica",
    "change_membership",
    "campaign",
    "leader",
    "replica_status",
    "transfer",
    "brief",
    "reaches",
    "command",
    "query",
    "drop_replica",
    "no_such_op",
]


def test_peer_calls_with_junk_arguments_get_answers(cluster: list[AgentProc]) -> None:
    a1 = cluster[0]
    leader_before, term_before = _healthy(cluster)
    answers: dict[tuple[str, int], tuple[bool, object]] = {}

    async def main() -> None:
        peer = await HostilePeer.authenticated(*_addr(a1), "mallory")
        try:
            for op in _SAFE_OPS:
                for i, args in enumerate(_JUNK_ARGS):
                    if op == "drop_replica" and args.get("group") == GROUP:  # type: ignore[union-attr]
                        continue
                    answers[(op, i)] = await peer.call(op, args, timeout_s=8)
        finally:
            await peer.aclose()

    run(main)
    internal = {k: v for k, v in answers.items() if not v[0] and v[1].get("code") == "internal"}  # type: ignore[union-attr]
    assert not internal, f"peer calls that hit an agent bug: {internal}"
    for (op, _i), (ok, value) in answers.items():
        if op == "no_such_op":
            assert not ok and value["code"] == "unknown_op"  # type: ignore[index]
    assert "zz" not in str(a1.call("group_list", timeout=15))
    assert _healthy(cluster) == (leader_before, term_before)


def test_malformed_peer_frames_close_only_that_connection(cluster: list[AgentProc]) -> None:
    a1 = cluster[0]
    leader_before, term_before = _healthy(cluster)
    bad_frames: list[bytes] = [
        encode_frame([wire.CALL, 1, "brief", "not a map"]),
        encode_frame([wire.RAFT, [[GROUP, [99, "a", 1, "a1", 1, 1]]]]),
        encode_frame([wire.RAFT, [["", [0, "a", 1, "a1", 1, 1, 0, 0]]]]),
        encode_frame(["z", 1]),
        encode_frame({"not": "a list"}),
        b"\x00\x00\x00\x03\x81\x90\xc0",  # unhashable map key
        b"\x00\x00\x00\x05\xc1\xc1\xc1\xc1\xc1",
        b"\xff\xff\xff\xff",  # a 4 GiB frame
        b"\x00\x01\x86\xa1" + b"\x91" * 100_000 + b"\xc0",  # 100k nested lists
    ]

    async def main() -> None:
        for data in bad_frames:
            peer = await HostilePeer.authenticated(*_addr(a1), "mallory")
            await peer.send_raw(data)
            assert await peer.closed_by_agent(5), data[:40]
            await peer.aclose()

    run(main)
    assert _healthy(cluster) == (leader_before, term_before)


# -- resource exhaustion ---------------------------------------------------------


def test_slow_loris_handshakes_are_dropped_at_the_deadline(cluster: list[AgentProc]) -> None:
    a1 = cluster[0]
    hello = encode_frame(
        {
            "t": "hello",
            "version": 1,
            "cluster": None,
            "name": "slow",
            "boot": b"b" * 16,
            "nonce": b"n" * 32,
        }
    )

    async def main() -> None:
        closed_after: list[float] = []

        async def loris(i: int) -> None:
            # From five addresses: more than 8 from one are refused at once.
            peer = await HostilePeer.connect(*_addr(a1), local=f"127.0.0.{101 + i % 5}")
            t0 = trio.current_time()
            try:
                with trio.move_on_after(12):
                    for k in range(len(hello) - 1):  # never the last byte
                        await peer.send_raw(hello[k : k + 1])
                        await trio.sleep(0.25)
                closed_after.append(trio.current_time() - t0)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                closed_after.append(trio.current_time() - t0)
            finally:
                await peer.aclose()

        async with trio.open_nursery() as nursery:
            for i in range(20):
                nursery.start_soon(loris, i)
        assert len(closed_after) == 20
        # Dropped by the 5 s handshake deadline (a send fails once the agent
        # has closed: allow for the RST to come back), not by us giving up.
        assert all(4.5 < t < 8.0 for t in closed_after), closed_after

    run(main)
    _healthy(cluster)


def test_two_thousand_connections_do_not_stop_the_agent(cluster: list[AgentProc]) -> None:
    """2,000 TCP connections opened at once against a1's peer port (the 64 in
    handshake are held, the rest are dropped): a1 keeps serving its clients and its
    peers, and goes back to its fd count afterwards."""
    a1 = cluster[0]
    assert a1.proc is not None
    pid = a1.proc.pid
    raise_nofile(4096)
    leader_before, term_before = _healthy(cluster)
    fds_before, rss_before = open_fds(pid), vm_rss_kib(pid)
    socks: list[socket.socket] = []
    t0 = time.monotonic()
    try:
        for _ in range(2000):
            if time.monotonic() - t0 > 20:
                break
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect_ex(_addr(a1))
            finally:
                socks.append(s)
        opened = len(socks)
        assert opened == 2000
        # While they are open: the control socket and the group still work.
        assert _healthy(cluster)[0] is not None
        fds_peak = open_fds(pid)
    finally:
        for s in socks:
            s.close()
    wait_for(lambda: open_fds(pid) <= fds_before + 5, 20, "a1 to close the dead connections")
    assert _healthy(cluster) == (leader_before, term_before)
    rss_growth = (vm_rss_kib(pid) - rss_before) / 1024
    print(
        f"2000 connections: a1 fds {fds_before} -> peak {fds_peak} -> {open_fds(pid)}; "
        f"RSS {rss_growth:+.1f} MiB"
    )
    assert rss_growth < 64


def test_agent_out_of_file_descriptors_survives(tmp_path_factory: pytest.TempPathFactory) -> None:
    """An agent started with RLIMIT_NOFILE 128 is flooded: 150 idle control
    connections (the cap is 128) and 600 TCP connections to its peer port (64
    handshakes at most). Its accepts fail with EMFILE for a while; it must not
    crash, its group keeps working over the connections it has, and it serves new
    clients again once the flood is gone."""
    raise_nofile(4096)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        ctx = agents(tmp_path_factory.mktemp("nofile"), 1, first_octet=141, start=False)
        procs = ctx.__enter__()
        procs[0].start()
    except BaseException:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        raise
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    try:
        (a1,) = procs
        assert a1.proc is not None
        pid = a1.proc.pid
        with open(f"/proc/{pid}/limits") as f:
            assert any("Max open files" in line and " 128 " in line for line in f)
        a1.call("group_create", name="before", type="counter", agents=["a1"], timeout=20)
        held = a1.client()
        held.connect()  # a control connection opened before the flood
        socks: list[socket.socket] = []
        try:
            for _ in range(150):
                u = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                u.setblocking(False)
                u.connect_ex(a1.sock)
                socks.append(u)
            for _ in range(600):
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                s.connect_ex(_addr(a1))
                socks.append(s)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:  # let the agent run into its limit
                assert a1.alive, a1.log()
                time.sleep(0.2)
            at_limit = open_fds(pid)
            # The connection opened before the flood still works, writes included.
            assert held.call("ping", timeout=5) == "pong"
            reply = held.call("command", group="before", arg="inc", timeout=10)
            assert reply["reply"] == 0  # type: ignore[index]
        finally:
            held.close()
            for s in socks:
                s.close()
        assert a1.alive, f"the agent died out of fds:\n{a1.log()}"
        wait_for(a1.ping, 20, "the agent to serve new clients again after the flood")
        assert a1.call("group_create", name="after", type="counter", agents=["a1"], timeout=20)
        assert a1.call("command", group="after", arg="inc")["reply"] == 0  # type: ignore[index]
        assert a1.call("query", group="before", arg="get")["reply"] == 1  # type: ignore[index]
        emfile = "Too many open files" in a1.log_path.read_text(errors="replace")
        print(f"out of fds: {at_limit} open at the limit of 128; EMFILE logged: {emfile}")
        assert at_limit >= 120, "the flood did not reach the fd limit: the test proves nothing"
    finally:
        ctx.__exit__(None, None, None)


def test_handshake_slots_are_bounded(cluster: list[AgentProc]) -> None:
    """Silent connections from one address take at most 8 handshake slots: a
    legit peer dialing from elsewhere still gets in at once, while more from
    that address are refused. Documents the limit left: silent connections
    from 8 addresses hold all 64 slots, and a new peer connection is refused
    until they time out (5 s). Existing peer connections are never affected."""
    a1 = cluster[0]
    leader_before, term_before = _healthy(cluster)
    flooders = [f"127.0.0.{91 + i}" for i in range(8)]

    async def main() -> None:
        one = [await HostilePeer.connect(*_addr(a1), local=flooders[0]) for _ in range(20)]
        try:
            await trio.sleep(0.3)
            peer = await HostilePeer.authenticated(*_addr(a1), "elsewhere", local="127.0.0.99")
            await peer.aclose()
            with pytest.raises(HandshakeError) as info:
                await HostilePeer.authenticated(*_addr(a1), "same", local=flooders[0])
            assert info.value.code == "closed"
            rest = [
                await HostilePeer.connect(*_addr(a1), local=f)
                for f in flooders[1:]
                for _ in range(8)
            ]
            try:
                await trio.sleep(0.3)
                with pytest.raises(HandshakeError) as info:
                    await HostilePeer.authenticated(*_addr(a1), "latecomer", local="127.0.0.99")
                assert info.value.code == "closed"
            finally:
                for s in rest:
                    await s.aclose()
        finally:
            for s in one:
                await s.aclose()
        with trio.fail_after(10):
            while True:  # slots free again once the silent ones are gone
                try:
                    peer = await HostilePeer.authenticated(*_addr(a1), "latecomer")
                    break
                except HandshakeError:
                    await trio.sleep(0.2)
        await peer.aclose()

    run(main)
    assert _healthy(cluster) == (leader_before, term_before)
