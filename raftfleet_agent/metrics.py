"""Prometheus metrics: a small registry, the text exposition format 0.0.4, a tiny HTTP server.

Theory of operation. Almost everything worth watching is already counted by
the components' `statistics()` records (host, transport, store, control
server, fleet); `collect_agent` reads those at scrape time and builds fresh
metric families from them, so the hot paths pay nothing for a scrape. Only
what no record holds lives in `HostMetrics`: the latency and batch-size
histograms and the leadership counters, updated by a few calls from the
multi-raft loop (each a dict lookup or a bisect on a short list).

Everything here runs on the trio thread; nothing is thread-safe.

The HTTP side (`serve_metrics`) answers one request per connection and
closes it: `GET /metrics` and, when the agent gives a health check, `GET
/health` (200 or 503 with a JSON body, for load balancers and probes, as
etcd's and CockroachDB's); HEAD of either, 404 for other paths, 405 for other
methods. A request head larger than `REQUEST_BYTES_MAX`, a client slower
than `CONNECTION_TIMEOUT_S`, or more than `CONNECTIONS_MAX` clients at once
cost the agent one small buffer each, never a stalled task.
"""

from __future__ import annotations

import bisect
import json
import logging
import math
import re
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

import trio

if TYPE_CHECKING:
    from raftfleet_agent.agent import Agent

__all__ = [
    "CONTENT_TYPE",
    "Counter",
    "Gauge",
    "Histogram",
    "HostMetrics",
    "Registry",
    "collect_agent",
    "headline",
    "render",
    "serve_metrics",
]

logger = logging.getLogger("raftfleet.metrics")

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
JSON_TYPE = "application/json"

# GET /health: (healthy, what to say). Bounded by the caller's own deadline;
# the server cuts it off at HEALTH_WAIT_S anyway.
HealthCheck = Callable[[], Awaitable[tuple[bool, dict[str, object]]]]

# Bucket upper bounds (+Inf is implicit). Fixed at creation: a scrape never
# sees a histogram change shape.
LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0,
)  # fmt: skip
FSYNC_BUCKETS_S = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
SIZE_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096)

_NAME_RE = re.compile(r"[a-zA-Z_:][a-zA-Z0-9_:]*\Z")
_LABEL_RE = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*\Z")


# ---------------------------------------------------------------- text format


def format_value(v: float) -> str:
    """A sample value: integers without a fraction, and Go's spellings of the infinities."""
    if isinstance(v, int) and not isinstance(v, bool):
        return str(v)
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    if v.is_integer() and abs(v) < 1e15:
        return str(int(v))
    return repr(v)


def escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def escape_label_value(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels_text(names: Sequence[str], values: Sequence[str]) -> str:
    if not names:
        return ""
    inner = ",".join(f'{n}="{escape_label_value(v)}"' for n, v in zip(names, values, strict=True))
    return "{" + inner + "}"


# ---------------------------------------------------------------- metric families


class _Metric:
    """One metric family: a name, a HELP text, label names, and a child per label set."""

    kind = "untyped"
    _reserved_labels: frozenset[str] = frozenset()

    def __init__(self, name: str, help: str, labelnames: Sequence[str] = ()) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        for ln in labelnames:
            if not _LABEL_RE.match(ln) or ln.startswith("__") or ln in self._reserved_labels:
                raise ValueError(f"invalid label name {ln!r} for {name}")
        if len(set(labelnames)) != len(labelnames):
            raise ValueError(f"duplicate label names for {name}: {labelnames}")
        self.name = name
        self.help = help
        self.labelnames = tuple(labelnames)
        self._children: dict[tuple[str, ...], Any] = {}
        if not self.labelnames:
            self._children[()] = self._new_child()

    def _new_child(self) -> Any:
        raise NotImplementedError

    def labels(self, *values: object) -> Any:
        """The child for these label values (in `labelnames` order), created on first use."""
        if len(values) != len(self.labelnames):
            raise ValueError(f"{self.name} takes labels {self.labelnames}, got {values!r}")
        key = tuple(str(v) for v in values)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = self._new_child()
        return child

    def _only(self) -> Any:
        if self.labelnames:
            raise ValueError(f"{self.name} has labels {self.labelnames}: use .labels(...)")
        return self._children[()]

    def render_lines(self) -> Iterator[str]:
        yield f"# HELP {self.name} {escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for key in sorted(self._children):
            yield from self._child_lines(key, self._children[key])

    def _child_lines(self, key: tuple[str, ...], child: Any) -> Iterator[str]:
        yield f"{self.name}{_labels_text(self.labelnames, key)} {format_value(child.value)}"


class _Value:
    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: float = 0


class _CounterChild(_Value):
    __slots__ = ()

    def inc(self, amount: float = 1) -> None:
        if amount < 0:
            raise ValueError("a counter only goes up")
        self.value += amount


class _GaugeChild(_Value):
    __slots__ = ()

    def set(self, value: float) -> None:
        self.value = value

    def inc(self, amount: float = 1) -> None:
        self.value += amount

    def dec(self, amount: float = 1) -> None:
        self.value -= amount


class Counter(_Metric):
    """A count that only goes up (name it `*_total`)."""

    kind = "counter"

    def _new_child(self) -> _CounterChild:
        return _CounterChild()

    def inc(self, amount: float = 1) -> None:
        self._only().inc(amount)

    @property
    def value(self) -> float:
        return self._only().value  # type: ignore[no-any-return]


class Gauge(_Metric):
    kind = "gauge"

    def _new_child(self) -> _GaugeChild:
        return _GaugeChild()

    def set(self, value: float) -> None:
        self._only().set(value)

    @property
    def value(self) -> float:
        return self._only().value  # type: ignore[no-any-return]


class _HistogramChild:
    __slots__ = ("bounds", "count", "counts", "sum")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # per bucket, not cumulative; last is +Inf
        self.count = 0
        self.sum = 0.0

    def observe(self, value: float) -> None:
        # bisect_left: a value equal to a bound belongs to that bucket (le = "<=").
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.count += 1
        self.sum += value

    def quantile(self, q: float) -> float | None:
        """Estimated like PromQL's histogram_quantile: linear within the bucket.

        None without observations; the largest finite bound if the rank falls
        in the +Inf bucket.
        """
        if not 0 <= q <= 1:
            raise ValueError("q must be within [0, 1]")
        if self.count == 0:
            return None
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if seen + n >= rank and n > 0:
                if i == len(self.bounds):
                    return self.bounds[-1]
                lo = self.bounds[i - 1] if i else 0.0
                return lo + (self.bounds[i] - lo) * (rank - seen) / n
            seen += n
        return self.bounds[-1]


class Histogram(_Metric):
    """Observations counted in fixed buckets, with their sum and count."""

    kind = "histogram"
    _reserved_labels = frozenset({"le"})

    def __init__(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> None:
        bounds = tuple(float(b) for b in buckets if not math.isinf(b))
        if not bounds or list(bounds) != sorted(set(bounds)):
            raise ValueError(f"{name}: buckets must be increasing and not empty")
        self.bounds = bounds
        super().__init__(name, help, labelnames)

    def _new_child(self) -> _HistogramChild:
        return _HistogramChild(self.bounds)

    def observe(self, value: float) -> None:
        self._only().observe(value)

    def quantile(self, q: float) -> float | None:
        return self._only().quantile(q)  # type: ignore[no-any-return]

    @property
    def count(self) -> int:
        return self._only().count  # type: ignore[no-any-return]

    def _child_lines(self, key: tuple[str, ...], child: _HistogramChild) -> Iterator[str]:
        names = (*self.labelnames, "le")
        cumulative = 0
        for bound, n in zip((*self.bounds, math.inf), child.counts, strict=True):
            cumulative += n
            labels = _labels_text(names, (*key, format_value(bound)))
            yield f"{self.name}_bucket{labels} {cumulative}"
        plain = _labels_text(self.labelnames, key)
        yield f"{self.name}_sum{plain} {format_value(child.sum)}"
        yield f"{self.name}_count{plain} {child.count}"


def render(metrics: Iterable[_Metric]) -> str:
    """The text exposition format (0.0.4) of these families; names must be unique."""
    lines: list[str] = []
    seen: set[str] = set()
    for m in metrics:
        if m.name in seen:
            raise ValueError(f"metric {m.name} rendered twice")
        seen.add(m.name)
        lines.extend(m.render_lines())
    return "\n".join(lines) + "\n" if lines else ""


class Registry:
    """Families built here, in order; `render()` writes them all."""

    def __init__(self) -> None:
        self.metrics: list[_Metric] = []

    def _add(self, m: _Metric) -> Any:
        self.metrics.append(m)
        return m

    def counter(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Counter:
        return self._add(Counter(name, help, labelnames))  # type: ignore[no-any-return]

    def gauge(self, name: str, help: str, labelnames: Sequence[str] = ()) -> Gauge:
        return self._add(Gauge(name, help, labelnames))  # type: ignore[no-any-return]

    def histogram(
        self, name: str, help: str, labelnames: Sequence[str] = (), *, buckets: Sequence[float]
    ) -> Histogram:
        return self._add(Histogram(name, help, labelnames, buckets=buckets))  # type: ignore[no-any-return]

    def render(self) -> str:
        return render(self.metrics)


# ---------------------------------------------------------------- the host's instruments


class HostMetrics:
    """What the multi-raft loop measures as it goes; read by `collect_agent` and `headline`.

    The loop calls `note_submitted`/`note_durable` around each store batch,
    `note_ready` after handling each replica's Ready, and `note_committed`
    when a proposal's waiter was answered.
    """

    def __init__(self) -> None:
        r = self.registry = Registry()
        self.commit_latency = r.histogram(
            "raftfleet_commit_latency_seconds",
            "Time from a client command's proposal on the leader to its apply.",
            buckets=LATENCY_BUCKETS_S,
        )
        self.apply_batch = r.histogram(
            "raftfleet_apply_batch_entries",
            "Committed entries applied to one replica's state machine in one turn.",
            buckets=SIZE_BUCKETS,
        )
        self.store_commit_latency = r.histogram(
            "raftfleet_store_commit_seconds",
            "Time from handing a batch to the store to its durable callback (fsync included).",
            buckets=FSYNC_BUCKETS_S,
        )
        self.store_batch_writes = r.histogram(
            "raftfleet_store_batch_groups",
            "Group writes in one store batch (groups sharing one transaction).",
            buckets=SIZE_BUCKETS,
        )
        self.store_batch_entries = r.histogram(
            "raftfleet_store_batch_entries",
            "Log entries in one store batch.",
            buckets=SIZE_BUCKETS,
        )
        self.elections_won = r.counter(
            "raftfleet_elections_won_total",
            "Times a replica hosted here was seen to become its group's leader.",
        )
        self.leader_changes = r.counter(
            "raftfleet_leader_changes_total",
            "Times a replica hosted here saw its group's leader change to another known one.",
        )
        self.snapshots_taken = r.counter(
            "raftfleet_snapshots_taken_total",
            "Snapshots of a replica's state machine taken here (each compacts that replica's log).",
        )
        self.snapshots_installed = r.counter(
            "raftfleet_snapshots_installed_total",
            "Snapshots sent by a group's leader and installed here (a replica too far behind).",
        )
        self._leaders: dict[str, object] = {}  # group -> last leader seen (not None)
        self._rates: deque[tuple[float, int]] = deque([(time.monotonic(), 0)])

    def note_submitted(self, writes: int, entries: int) -> float:
        """A batch goes to the store; returns the time to hand back to `note_durable`."""
        self.store_batch_writes.observe(writes)
        self.store_batch_entries.observe(entries)
        return time.monotonic()

    def note_durable(self, submitted_s: float) -> None:
        self.store_commit_latency.observe(time.monotonic() - submitted_s)

    def note_ready(self, group: str, me: object, leader: object, applied: int) -> None:
        """After a Ready of `group` was handled: its apply batch, and any leader change."""
        if applied:
            self.apply_batch.observe(applied)
        if leader is None or self._leaders.get(group) == leader:
            return
        self._leaders[group] = leader
        self.leader_changes.inc()
        if leader == me:
            self.elections_won.inc()

    def note_committed(self, proposed_s: float, applied_s: float) -> None:
        self.commit_latency.observe(max(0.0, applied_s - proposed_s))

    def forget_groups_except(self, groups: Iterable[str]) -> None:
        keep = set(groups)
        for g in [g for g in self._leaders if g not in keep]:
            del self._leaders[g]

    def rate(self, total: int, window_s: float = 60.0) -> float:
        """Per-second rate of a running `total` since the oldest sample within `window_s`.

        Samples are taken only when asked (status, scrapes); with none recent
        the rate covers the time since the previous look.
        """
        now = time.monotonic()
        samples = self._rates
        while len(samples) > 1 and now - samples[1][0] >= window_s:
            samples.popleft()
        t0, n0 = samples[0]
        samples.append((now, total))
        if len(samples) > 64:
            samples.popleft()
        return (total - n0) / (now - t0) if now > t0 else 0.0


# ---------------------------------------------------------------- the agent's metrics


def collect_agent(agent: Agent, control: Any = None) -> list[_Metric]:
    """Every metric of `agent`: fresh families from its statistics(), then the live instruments.

    `control` is the agent's ControlServer (None: no control metrics).
    """
    host = agent.host
    hm: HostMetrics = host.metrics
    hm.forget_groups_except(host.replicas)
    st = host.statistics()
    fleet = agent.fleet
    replicas, leaders = fleet.local_counts()
    r = Registry()
    r.gauge("raftfleet_agent_info", "This agent's name (value always 1).", ["agent"]).labels(
        agent.config.name
    ).set(1)
    scalars: list[tuple[str, str, str, float]] = [
        ("gauge", "raftfleet_replicas", "Replicas hosted here, cluster state excluded.", replicas),
        ("gauge", "raftfleet_leaders", "Replicas hosted here leading their group.", leaders),
        ("gauge", "raftfleet_replicas_all", "Replicas hosted here, all groups.", st.replicas),
        ("gauge", "raftfleet_replicas_awake",
         "Replicas not quiescent: ticked every tick (idle groups go quiet).", st.awake),
        ("counter", "raftfleet_loop_turns_total", "Turns of the multi-raft loop.", st.turns),
        ("counter", "raftfleet_store_batches_total", "Batches handed to the store.",
         st.store_batches),
        ("gauge", "raftfleet_store_batches_in_flight", "Batches in the store, not yet durable.",
         st.batches_in_flight),
        ("counter", "raftfleet_entries_written_total", "Log entries handed to the store.",
         st.entries_written),
        ("counter", "raftfleet_raft_messages_sent_total", "Raft messages queued to peers.",
         st.messages_sent),
        ("counter", "raftfleet_raft_messages_received_total", "Raft messages from peers.",
         st.messages_received),
        ("counter", "raftfleet_raft_messages_dropped_total",
         "Raft messages not sent (no connection) or refused on arrival.", st.messages_dropped),
        ("gauge", "raftfleet_moves_in_flight", "Groups the reconciler is moving now.",
         fleet.moves_in_flight),
        ("counter", "raftfleet_moves_done_total", "Reconciler steps completed.",
         fleet.moves_done),
        ("gauge", "raftfleet_purges_held",
         "Agents past the purge window kept in placement: no room for their replicas, "
         "or other agents still reach them (on the cluster-state leader's agent).",
         len(fleet.purges_held)),
    ]  # fmt: skip
    cstate = fleet.local_state()
    if cstate is not None:
        groups = len(cstate.get("groups", ()))
        scalars.append(
            ("gauge", "raftfleet_groups", "Managed groups in the cluster state.", groups)
        )
    ss = agent.store.statistics()
    scalars += [
        ("counter", "raftfleet_store_commits_total", "Store transactions committed.", ss.commits),
        ("gauge", "raftfleet_store_queue_depth", "Batches waiting for the store's next commit.",
         ss.queue_depth),
    ]  # fmt: skip
    if control is not None:
        cs = control.statistics()
        scalars += [
            ("counter", "raftfleet_control_requests_total", "Control requests handled.",
             cs.requests_total),
            ("counter", "raftfleet_control_errors_total", "Control requests answered with errors.",
             cs.errors_total),
            ("gauge", "raftfleet_control_requests_in_flight", "Control requests being handled.",
             cs.requests_in_flight),
            ("gauge", "raftfleet_control_connections", "Open control connections.",
             cs.connections),
            ("counter", "raftfleet_control_connections_refused_total",
             "Control connections refused.", cs.connections_refused),
        ]  # fmt: skip
    for kind, name, help, value in scalars:
        if kind == "counter":
            r.counter(name, help).inc(value)
        else:
            r.gauge(name, help).set(value)
    _collect_transport(r, agent)
    return [*r.metrics, *hm.registry.metrics]


_PEER_COUNTERS = (
    ("frames_sent", "raftfleet_peer_frames_sent_total", "Frames written to the peer."),
    ("bytes_sent", "raftfleet_peer_bytes_sent_total", "Bytes of frames written to the peer."),
    ("frames_received", "raftfleet_peer_frames_received_total", "Frames from the peer."),
    ("bytes_received", "raftfleet_peer_bytes_received_total", "Bytes of frames from the peer."),
    ("frames_dropped", "raftfleet_peer_frames_dropped_total", "Frames for the peer dropped."),
    ("reconnects", "raftfleet_peer_reconnects_total", "Connections after the first one."),
)


def _collect_transport(r: Registry, agent: Agent) -> None:
    ts = agent.transport.statistics()
    up = r.gauge("raftfleet_peer_up", "1 if the peer agent is connected, else 0.", ["peer"])
    for name, pr in agent.transport.reachability().items():
        up.labels(name).set(1 if pr.connected else 0)
    for field, name, help in _PEER_COUNTERS:
        c = r.counter(name, help, ["peer"])
        for peer, ps in ts.peers.items():
            c.labels(peer).inc(getattr(ps, field))
    q = r.gauge("raftfleet_peer_queued_frames", "Frames queued for the peer.", ["peer"])
    for peer, ps in ts.peers.items():
        q.labels(peer).set(ps.queued_frames)
    r.counter("raftfleet_peer_handshakes_failed_total", "Peer handshakes that failed.").inc(
        ts.handshakes_failed
    )


def headline(host: Any) -> dict[str, float | None]:
    """The figures `raftfleet status` shows: latency quantiles (ms, since start), messages/s."""
    hm: HostMetrics = host.metrics
    st = host.statistics()

    def ms(h: Histogram, q: float) -> float | None:
        v = h.quantile(q)
        return None if v is None else round(v * 1000, 3)

    return {
        "commit_p50_ms": ms(hm.commit_latency, 0.5),
        "commit_p99_ms": ms(hm.commit_latency, 0.99),
        "commits": hm.commit_latency.count,
        "store_commit_p50_ms": ms(hm.store_commit_latency, 0.5),
        "store_commit_p99_ms": ms(hm.store_commit_latency, 0.99),
        "messages_per_s": round(hm.rate(st.messages_sent + st.messages_received), 1),
        "elections_won": int(hm.elections_won.value),
        "leader_changes": int(hm.leader_changes.value),
        "snapshots_taken": int(hm.snapshots_taken.value),
        "snapshots_installed": int(hm.snapshots_installed.value),
    }


# ---------------------------------------------------------------- the HTTP endpoint

REQUEST_BYTES_MAX = 8192  # the request line and headers; no body is read
CONNECTION_TIMEOUT_S = 5.0  # for the whole exchange, reading and writing
CONNECTIONS_MAX = 16  # more at once are closed without an answer
LINGER_BYTES_MAX = 65536  # discarded after answering, waiting for the client to close
HEALTH_WAIT_S = 3.0  # a check that takes longer is a failed one (503)


async def serve_metrics(
    host: str,
    port: int,
    render: Callable[[], str],
    *,
    health: HealthCheck | None = None,
    task_status: trio.TaskStatus[tuple[str, int]] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve `render()` at GET /metrics (and `health()` at GET /health) until cancelled.

    `task_status.started((host, port))` with the bound address (port 0 picks
    one) once connections are accepted. `render` runs on the trio thread for
    each scrape and must be quick. On cancellation the listener and every
    open connection are closed.
    """
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[:2]
    active = 0

    async def handle(stream: trio.SocketStream) -> None:
        nonlocal active
        if active >= CONNECTIONS_MAX:
            await trio.aclose_forcefully(stream)
            return
        active += 1
        try:
            with trio.move_on_after(CONNECTION_TIMEOUT_S):
                await _exchange(stream, render, health)
                await _linger(stream)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        except Exception:  # the agent must not die for its metrics endpoint
            logger.warning("metrics connection failed", exc_info=True)
        finally:
            active -= 1
            await trio.aclose_forcefully(stream)

    async with trio.open_nursery() as nursery:
        await nursery.start(trio.serve_listeners, handle, listeners)
        logger.info("metrics on http://%s:%d/metrics", *bound)
        task_status.started(bound)


async def _read_head(stream: trio.SocketStream) -> bytes | None:
    """The request head up to its blank line; None if the client closed first.

    Raises _TooLarge past `REQUEST_BYTES_MAX`.
    """
    buf = bytearray()
    while True:
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            end = buf.find(b"\n\n")
        if end >= 0:
            break
        if len(buf) > REQUEST_BYTES_MAX:
            raise _TooLarge
        chunk = await stream.receive_some(4096)
        if not chunk:
            return None
        buf += chunk
    if end > REQUEST_BYTES_MAX:
        raise _TooLarge
    return bytes(buf[:end])


async def _linger(stream: trio.SocketStream) -> None:
    """Half-close, then discard what the client still sends until it closes.

    Closing a socket with unread input makes the kernel reset the connection,
    and the client may lose our answer (a 431, a 405 to a request with a body).
    """
    await stream.send_eof()
    discarded = 0
    while discarded < LINGER_BYTES_MAX:
        chunk = await stream.receive_some(4096)
        if not chunk:
            return
        discarded += len(chunk)


class _TooLarge(Exception):
    pass


_Answer = tuple[int, str, bytes, list[str]]


async def _exchange(
    stream: trio.SocketStream, render: Callable[[], str], health: HealthCheck | None
) -> None:
    try:
        head = await _read_head(stream)
    except _TooLarge:
        await _respond(stream, 431, "Request Header Fields Too Large", b"request too large\n")
        return
    if head is None:
        return
    answer = _route(head, render, health is not None)
    if answer is None:
        assert health is not None
        answer = await _health(health)
    status, reason, body, extra = answer
    method = head.split(b" ", 1)[0]
    await _respond(stream, status, reason, body, extra, head_only=method == b"HEAD")


def _route(head: bytes, render: Callable[[], str], has_health: bool) -> _Answer | None:
    """The answer, or None for a health check (which must be awaited)."""
    request_line = head.split(b"\n", 1)[0].rstrip(b"\r")
    parts = request_line.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        return 400, "Bad Request", b"bad request line\n", []
    method, target = parts[0], parts[1]
    if method not in (b"GET", b"HEAD"):
        return 405, "Method Not Allowed", b"only GET\n", ["Allow: GET, HEAD"]
    path = target.split(b"?", 1)[0]
    if path == b"/health" and has_health:
        return None
    if path != b"/metrics":
        hint = b"try /metrics or /health\n" if has_health else b"try /metrics\n"
        return 404, "Not Found", hint, []
    try:
        text = render()
    except Exception:
        logger.exception("rendering metrics failed")
        return 500, "Internal Server Error", b"rendering metrics failed\n", []
    return 200, "OK", text.encode(), [f"Content-Type: {CONTENT_TYPE}"]


async def _health(check: HealthCheck) -> _Answer:
    """200 with the check's JSON when healthy; 503 when not, or when it fails or is late."""
    healthy, info = False, {"reason": f"the health check took over {HEALTH_WAIT_S:g} s"}
    with trio.move_on_after(HEALTH_WAIT_S):
        try:
            healthy, info = await check()
        except Exception as e:  # the agent must not die for a probe, and the probe says why
            logger.warning("health check failed", exc_info=True)
            info = {"reason": f"the health check failed: {type(e).__name__}: {e}"}
    body = json.dumps({"health": healthy, **info}, sort_keys=True).encode() + b"\n"
    if healthy:
        return 200, "OK", body, [f"Content-Type: {JSON_TYPE}"]
    return 503, "Service Unavailable", body, [f"Content-Type: {JSON_TYPE}"]


async def _respond(
    stream: trio.SocketStream,
    status: int,
    reason: str,
    body: bytes,
    extra: list[str] | None = None,
    *,
    head_only: bool = False,
) -> None:
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}", "Connection: close"]
    extra = extra or []
    if not any(h.startswith("Content-Type:") for h in extra):
        lines.append("Content-Type: text/plain; charset=utf-8")
    lines.extend(extra)
    data = ("\r\n".join(lines) + "\r\n\r\n").encode() + (b"" if head_only else body)
    await stream.send_all(data)
