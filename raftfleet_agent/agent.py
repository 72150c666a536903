"""The agent: wires the store, the multi-raft host, the peer transport, the
router and the control server together, and runs them under one nursery.

Start order (each `serve_*` reports started before the next): store and
recovery, peer listener, multi-raft loop, control socket, metrics endpoint
(with --metrics-listen); then READY=1.
Stop (SIGTERM/SIGINT): STOPPING=1, hand leaderships to other replicas within
`shutdown_budget_s`, cancel everything, let the store finish its commit,
remove the control socket (the control server does), exit 0.
"""

from __future__ import annotations

import logging
import os
import random
import secrets
import signal
import time
import uuid
from collections.abc import Callable
from functools import partial

import trio

from raftfleet_agent import gc_policy, sdnotify
from raftfleet_agent.config import AgentConfig
from raftfleet_agent.control.protocol import ControlError
from raftfleet_agent.control.server import ControlServer
from raftfleet_agent.fleet.router import RouteError, Router
from raftfleet_agent.fleet.service import FleetService
from raftfleet_agent.host import wire
from raftfleet_agent.host.loop import MultiRaftHost
from raftfleet_agent.host.rpc import PeerRpc, RpcError
from raftfleet_agent.identity import IdentityFile, in_memory_identity, open_identity
from raftfleet_agent.metrics import collect_agent, render, serve_metrics
from raftfleet_agent.ops import AgentOps
from raftfleet_agent.peers import PeerDirectory, probe, split_addr
from raftfleet_agent.raft.member import RaftOptions
from raftfleet_agent.storage import LogStore, open_store
from raftfleet_agent.transport import LocalIdentity, PeerTransport, TransportConfig

logger = logging.getLogger("raftfleet.agent")

JOIN_BACKOFF_MAX_S = 10.0


class Agent:
    def __init__(self, config: AgentConfig) -> None:
        self.config = c = config
        self.identity: IdentityFile = self._open_identity()
        self.store: LogStore = open_store(config.data_dir, config.in_memory)
        self.peers = PeerDirectory(
            None if config.in_memory else os.path.join(config.data_dir, "peers.json")
        )
        self.epoch = self.peers.new_own_epoch(time.time_ns())  # see peers.py
        opts = RaftOptions(
            election_ticks=config.election_ticks,
            heartbeat_ticks=config.heartbeat_ticks,
            lease_drift_ticks=max(1, config.election_ticks // 5),
            quiesce_after_ticks=2 * config.election_ticks,
        )
        self.host = MultiRaftHost(
            agent=config.name,
            store=self.store,
            send_frame=self._send_frame,
            options=opts,
            tick_interval_s=config.tick_interval_s,
            snapshot_every=config.snapshot_every_entries,
        )
        self.host.reachable = self._reachable_now
        self.transport = PeerTransport(
            name=config.name,
            cluster=self.identity.cluster_id,
            secret=config.cluster_secret,
            on_frame=self._on_frame,
            on_peer_state=self._on_peer_state,
            config=TransportConfig(local_host=None if c.listen.is_wildcard else c.listen.host),
        )
        self.rpc: PeerRpc | None = None
        self.router: Router | None = None
        self.ops: AgentOps | None = None
        self.control: ControlServer | None = None
        self.fleet = FleetService(self)
        # A replica gone from here may be a draining agent's last one: look now,
        # not at the next interval (an agent without the cluster state has no
        # other news of its drain).
        self.host.on_replica_stopped = lambda _group: self.fleet.poke()
        self._stopping = False
        self.reload_config: Callable[[], AgentConfig] | None = None
        self._last_heard: dict[str, float] = {}  # peer -> trio time of its last frame
        self._silent: set[str] = set()  # connected peers that stopped talking

    def _open_identity(self) -> IdentityFile:
        c = self.config
        if c.in_memory:
            ident = in_memory_identity(c.name)
        else:
            os.makedirs(c.data_dir, exist_ok=True)
            ident = open_identity(c.data_dir, c.name)
        if ident.cluster_id is None and not c.join:
            # The first agent of a new cluster names it; joiners learn the id.
            ident.set_cluster_id(uuid.uuid4().hex)
        return ident

    # ------------------------------------------------------------ frames

    def _send_frame(self, peer: str, frame: object) -> bool:
        return self.transport.send(peer, frame)

    def _on_frame(self, peer: str, frame: object) -> None:
        # Raising here makes the transport drop this peer's connection (bad frames).
        kind, rest = wire.split(frame)
        self._heard(peer)
        if kind == wire.PING:
            return
        if kind == wire.RAFT:
            self.host.deliver(peer, wire.decode_raft(rest[0]))
        elif self.rpc is not None:
            if kind == wire.CALL:
                self.rpc.on_call(peer, rest)
            else:
                self.rpc.on_answer(peer, rest)

    def _heard(self, peer: str) -> None:
        self._last_heard[peer] = trio.current_time()
        if peer in self._silent:
            self._silent.discard(peer)
            logger.info("peer %s speaks again", peer)
            self._peer_back(peer)

    async def _liveness(self) -> None:
        """Ping every peer; treat one silent for two election timeouts as gone.

        A frozen process (SIGSTOP, a hung VM) keeps its connections open, so
        the transport never reports it; without this, followers of a quiescent
        group led from there would wait forever.
        """
        interval = max(0.05, self.config.election_timeout_s / 4)
        silent_after = 2 * self.config.election_timeout_s
        while True:
            await trio.sleep(interval)
            now = trio.current_time()
            for peer in self.connected_peers():
                self.transport.send(peer, [wire.PING])
                last = self._last_heard.setdefault(peer, now)
                if now - last > silent_after and peer not in self._silent:
                    self._silent.add(peer)
                    logger.warning(
                        "peer %s silent for %.1f s: treating it as down", peer, now - last
                    )
                    self.host.wake_led_by(peer)
                    self._wake_leaders_without_quorum()
                    self.fleet.note_peer(peer, False)

    def _wake_leaders_without_quorum(self) -> None:
        woken = self.host.wake_leaders_without_quorum()
        if woken:
            logger.warning("%d groups led here lost a majority of reachable voters", woken)

    def _peer_back(self, peer: str) -> None:
        self.fleet.note_peer(peer, True)
        woken = self.host.wake_leaders_behind(peer)
        if woken:
            logger.info("woke %d quiescent groups to catch up %s", woken, peer)

    def _reachable_now(self, agent: str) -> bool:
        return self.transport.is_connected(agent) and agent not in self._silent

    def _on_peer_state(self, peer: str, connected: bool) -> None:
        logger.info("peer %s %s", peer, "connected" if connected else "disconnected")
        if connected:
            self._last_heard[peer] = trio.current_time()
        if connected and self.ops is not None:
            self.ops.greet(peer)
        if connected:
            self._peer_back(peer)
        else:
            self.fleet.note_peer(peer, False)
            woken = self.host.wake_led_by(peer)
            if woken:
                logger.info("woke %d quiescent groups led from %s", woken, peer)
            self._wake_leaders_without_quorum()

    # ------------------------------------------------------------ life cycle

    async def run(self, *, task_status: trio.TaskStatus = trio.TASK_STATUS_IGNORED) -> None:
        c = self.config
        recovered = await trio.to_thread.run_sync(self.host.recover)
        gc_policy.freeze_recovered_state()
        logger.info(
            "recovered %d replicas from %s", recovered, "memory" if c.in_memory else c.data_dir
        )
        try:
            async with trio.open_nursery() as nursery:
                self.rpc = PeerRpc(self._send_frame, nursery)
                self.router = Router(self.host, self.rpc, self.connected_peers)
                self.ops = AgentOps(self)
                self.ops.register_peer_calls(self.rpc)
                for name, addr in self.peers.addresses.items():
                    if name != c.name:
                        self.transport.set_peer_address(name, *split_addr(addr))
                await nursery.start(self.transport.serve, c.listen.host, c.listen.port)
                await nursery.start(self.host.run)
                await nursery.start(self.fleet.run)
                server = self.control = ControlServer(self.ops)
                os.makedirs(os.path.dirname(c.control_socket) or ".", exist_ok=True)
                await nursery.start(server.serve_unix, c.control_socket)
                if c.control_listen is not None and c.control_token is not None:
                    await nursery.start(
                        server.serve_tcp,
                        c.control_listen.host,
                        c.control_listen.port,
                        c.control_token,
                    )
                if c.metrics_listen is not None:
                    await nursery.start(
                        partial(serve_metrics, health=self.ops.health),
                        c.metrics_listen.host,
                        c.metrics_listen.port,
                        self.metrics,
                    )
                for hp in c.join:
                    nursery.start_soon(self._join_loop, hp.host, hp.port)
                nursery.start_soon(self._signals, nursery.cancel_scope)
                nursery.start_soon(self._liveness)
                interval = sdnotify.watchdog_interval_s()
                if interval is not None:
                    nursery.start_soon(sdnotify.serve_watchdog, interval)
                sdnotify.ready()
                logger.info(
                    "agent %s ready: peers on %s, control on %s",
                    c.name,
                    c.advertise,
                    c.control_socket,
                )
                task_status.started()
        finally:
            await trio.to_thread.run_sync(self.store.close)

    def metrics(self) -> str:
        """This agent's metrics in the Prometheus text format (the /metrics body)."""
        return render(collect_agent(self, self.control))

    async def _signals(self, scope: trio.CancelScope) -> None:
        with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT, signal.SIGHUP) as sigs:
            async for sig in sigs:
                if sig == signal.SIGHUP:
                    self._reload_log_level()
                    continue
                logger.info("received %s: shutting down", signal.Signals(sig).name)
                sdnotify.stopping()
                await self._hand_over_leaderships()
                scope.cancel()
                return

    def _reload_log_level(self) -> None:
        if self.reload_config is None:
            logger.info("SIGHUP: no configuration to re-read")
            return
        try:
            level = self.reload_config().log_level
        except Exception as e:  # a broken file on reload keeps the old level
            logger.warning("SIGHUP: keeping log level %s: %s", self.config.log_level, e)
            return
        logging.getLogger().setLevel(level.upper())
        logger.info("SIGHUP: log level is now %s", level)

    async def _hand_over_leaderships(self) -> None:
        """Transfer every leadership to a caught-up replica elsewhere, within the budget."""
        self._stopping = True
        with trio.move_on_after(self.config.shutdown_budget_s):
            for _ in range(3):
                moved = 0
                for r in list(self.host.replicas.values()):
                    m = r.member
                    if not m.is_leader:
                        continue
                    others = sorted(
                        (pr.match, rid) for rid, pr in m.progress.items() if rid in m.config.voters
                    )
                    if others:
                        try:
                            self.host.transfer_leadership(r.group, others[-1][1])
                            moved += 1
                        except Exception as e:
                            logger.debug("%s: no transfer: %s", r.group, e)
                if not moved:
                    return
                await trio.sleep(self.config.election_timeout_s / 2)

    async def _join_loop(self, host: str, port: int) -> None:
        """Keep trying an address until it answers, then remember who is there."""
        delay = 0.1
        me = LocalIdentity(
            name=self.config.name, cluster=self.transport.cluster, secret=self.config.cluster_secret
        )
        while True:
            try:
                peer = await probe(host, port, me)
                self.learn_peer(peer.name, f"{host}:{port}", peer.cluster, first_hand=True)
                return
            except Exception as e:
                logger.info("join %s:%d: %s (retrying in %.1f s)", host, port, e, delay)
            await trio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(JOIN_BACKOFF_MAX_S, delay * 2)

    async def join(self, address: str) -> str:
        host, port = split_addr(address)
        me = LocalIdentity(
            name=self.config.name, cluster=self.transport.cluster, secret=self.config.cluster_secret
        )
        peer = await probe(host, port, me)
        self.learn_peer(peer.name, address, peer.cluster, first_hand=True)
        return peer.name

    def learn_peer(
        self,
        name: str,
        addr: str,
        cluster: str | None = None,
        *,
        epoch: int | None = None,
        first_hand: bool = False,
    ) -> None:
        """An address for `name`; see PeerDirectory.learn for which ones are taken."""
        if name == self.config.name:
            return
        if cluster and self.identity.cluster_id is None:
            self.identity.set_cluster_id(cluster)
        learned = self.peers.learn(name, addr, epoch=epoch, first_hand=first_hand)
        known = self.peers.addresses.get(name)  # not `addr`: a stale one is refused
        if known is not None and (learned or not self.transport.is_connected(name)):
            self.transport.set_peer_address(name, *split_addr(known))
        if learned and self.ops is not None:
            # Pass news on: agents that joined through the same peer at the
            # same time would otherwise never hear of each other.
            for peer in self.connected_peers():
                if peer != name:
                    self.ops.greet(peer)

    def connected_peers(self) -> list[str]:
        return sorted(n for n in self.peers.addresses if self.transport.is_connected(n))

    def new_replica_id_n(self) -> int:
        # Random 62-bit replica numbers: a replica re-created anywhere never
        # reuses an id that may have voted before.
        return secrets.randbits(62)


def to_control_error(e: BaseException) -> ControlError:
    if isinstance(e, ControlError):
        return e
    if isinstance(e, RouteError | RpcError):
        return ControlError(e.code, str(e), e.details or None)
    return ControlError("internal", f"{type(e).__name__}: {e}")


async def run_agent(config: AgentConfig, reload: Callable[[], AgentConfig] | None) -> None:
    agent = Agent(config)
    agent.reload_config = reload
    await agent.run()


def serve(config: AgentConfig, reload: Callable[[], AgentConfig] | None = None) -> None:
    """Run an agent until SIGTERM/SIGINT; `reload` re-reads the configuration on SIGHUP."""
    gc_policy.tune()
    trio.run(partial(run_agent, config, reload))
