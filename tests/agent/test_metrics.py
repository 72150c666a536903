"""Prometheus metrics: the registry and its text format, the HTTP endpoint, a real agent."""

from __future__ import annotations

import json
import math
import re
import urllib.error
import urllib.request
from functools import partial
from pathlib import Path

import pytest
import trio

from raftfleet_agent import metrics
from raftfleet_agent.metrics import Counter, Gauge, Histogram, HostMetrics, Registry, render
from raftfleet_cli.views import status_metrics_rows
from tests.procs import AgentProc, connected_to_all, free_port, wait_for

# One sample line of the text format 0.0.4: name, optional {labels}, value.
_SAMPLE = re.compile(
    r'(?P<name>[a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(?P<labels>(?:[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*",?)*)\})?'
    r" (?P<value>\S+)"
)
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


def parse(text: str) -> tuple[dict[str, str], dict[tuple[str, frozenset], float]]:
    """({family: type}, {(sample name, labels): value}); fails on any malformed line."""
    types: dict[str, str] = {}
    samples: dict[tuple[str, frozenset], float] = {}
    assert text.endswith("\n")
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split(" ")
            assert name not in types, f"two TYPE lines for {name}"
            types[name] = kind
            continue
        if line.startswith("# HELP "):
            continue
        m = _SAMPLE.fullmatch(line)
        assert m, f"malformed sample line {line!r}"
        labels = frozenset(
            (k, v.replace("\\n", "\n").replace('\\"', '"').replace("\\\\", "\\"))
            for k, v in _LABEL.findall(m["labels"] or "")
        )
        key = (m["name"], labels)
        assert key not in samples, f"duplicate sample {key}"
        samples[key] = float(m["value"])
    return types, samples


def value(samples: dict, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


# ---------------------------------------------------------------- registry and text format


def test_counter_and_gauge_render_help_type_and_values() -> None:
    r = Registry()
    c = r.counter("x_requests_total", "Requests.\nSecond line with a \\ backslash.")
    c.inc()
    c.inc(2)
    g = r.gauge("x_temperature", "Temperature.", ["room"])
    g.labels("kitchen").set(21.5)
    g.labels("hall").set(-3)
    assert r.render() == (
        "# HELP x_requests_total Requests.\\nSecond line with a \\\\ backslash.\n"
        "# TYPE x_requests_total counter\n"
        "x_requests_total 3\n"
        "# HELP x_temperature Temperature.\n"
        "# TYPE x_temperature gauge\n"
        'x_temperature{room="hall"} -3\n'
        'x_temperature{room="kitchen"} 21.5\n'
    )


def test_label_values_are_escaped() -> None:
    g = Gauge("g", "G.", ["peer", "zone"])
    nasty = 'a"b\\c\nd'
    g.labels(nasty, "z").set(1)
    text = render([g])
    assert 'g{peer="a\\"b\\\\c\\nd",zone="z"} 1\n' in text
    _, samples = parse(text)
    assert value(samples, "g", peer=nasty, zone="z") == 1


def test_special_values() -> None:
    g = Gauge("g", "G.", ["k"])
    g.labels("inf").set(math.inf)
    g.labels("ninf").set(-math.inf)
    g.labels("nan").set(math.nan)
    g.labels("big").set(1e20)
    g.labels("small").set(0.000125)
    text = render([g])
    for line in ('k="inf"} +Inf', 'k="ninf"} -Inf', 'k="nan"} NaN', 'k="big"} 1e+20', "0.000125"):
        assert line in text


def test_histogram_buckets_are_cumulative_with_sum_and_count() -> None:
    h = Histogram("lat_seconds", "Latency.", buckets=[0.1, 0.5, 1])
    for v in (0.05, 0.1, 0.3, 0.7, 2.0):  # 0.1 sits on a bound: le="0.1" counts it
        h.observe(v)
    _, samples = parse(render([h]))
    assert [value(samples, "lat_seconds_bucket", le=le) for le in ("0.1", "0.5", "1", "+Inf")] == [
        2,
        3,
        4,
        5,
    ]
    assert value(samples, "lat_seconds_count") == 5
    assert value(samples, "lat_seconds_sum") == pytest.approx(3.15)


def test_histogram_with_labels_puts_le_last() -> None:
    h = Histogram("h", "H.", ["peer"], buckets=[1])
    h.labels("a2").observe(1)
    text = render([h])
    assert 'h_bucket{peer="a2",le="1"} 1\n' in text
    assert 'h_bucket{peer="a2",le="+Inf"} 1\n' in text
    assert 'h_count{peer="a2"} 1\n' in text


def test_histogram_quantiles_interpolate_like_promql() -> None:
    h = Histogram("h", "H.", buckets=[1, 2, 4])
    assert h.quantile(0.5) is None
    for _ in range(50):
        h.observe(0.5)  # bucket (0, 1]
    for _ in range(50):
        h.observe(3)  # bucket (2, 4]
    assert h.quantile(0.5) == pytest.approx(1.0)
    assert h.quantile(0.75) == pytest.approx(3.0)
    assert h.quantile(0.25) == pytest.approx(0.5)
    h.observe(100)  # past the last bound: reported as the largest finite bound
    assert h.quantile(1.0) == 4


def test_misuse_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid metric name"):
        Counter("1bad", "x")
    with pytest.raises(ValueError, match="invalid label name"):
        Gauge("g", "x", ["__reserved"])
    with pytest.raises(ValueError, match="invalid label name"):
        Histogram("h", "x", ["le"], buckets=[1])
    with pytest.raises(ValueError, match="buckets"):
        Histogram("h", "x", buckets=[2, 1])
    with pytest.raises(ValueError, match="only goes up"):
        Counter("c_total", "x").inc(-1)
    g = Gauge("g", "x", ["a"])
    with pytest.raises(ValueError, match="takes labels"):
        g.labels("1", "2")
    with pytest.raises(ValueError, match=r"use \.labels"):
        g.set(1)
    with pytest.raises(ValueError, match="twice"):
        render([Gauge("g", "x"), Counter("g", "y")])


def test_host_metrics_count_leader_changes_and_elections() -> None:
    hm = HostMetrics()
    hm.note_ready("g1", "me", None, 0)  # no leader known yet: nothing
    hm.note_ready("g1", "me", "other", 3)
    hm.note_ready("g1", "me", "other", 0)  # unchanged
    hm.note_ready("g1", "me", "me", 1)
    hm.note_ready("g2", "me", "me", 0)
    assert (hm.leader_changes.value, hm.elections_won.value) == (3, 2)
    assert hm.apply_batch.count == 2
    hm.forget_groups_except(["g2"])
    hm.note_ready("g1", "me", "me", 0)  # g1 was forgotten: seen as a change again
    assert hm.leader_changes.value == 4
    t = hm.note_submitted(3, 7)
    hm.note_durable(t)
    assert hm.store_commit_latency.count == hm.store_batch_entries.count == 1
    hm.note_committed(10.0, 10.004)
    assert hm.commit_latency.quantile(0.5) == pytest.approx(0.0035)
    assert hm.rate(100) > 0


def test_status_rows_for_the_cli() -> None:
    raw = {
        "metrics": {
            "commit_p50_ms": 1.5,
            "commit_p99_ms": 9,
            "commits": 12,
            "store_commit_p50_ms": None,
            "store_commit_p99_ms": None,
            "messages_per_s": 42.0,
            "snapshots_taken": 3,
            "snapshots_installed": 1,
        }
    }
    rows = dict(status_metrics_rows(raw))
    assert rows == {
        "commit latency": "1.5 / 9 ms (p50 / p99), 12 commits",
        "store commit": None,
        "messages/s": 42.0,
        "snapshots": "3 taken, 1 installed from a leader",
    }
    del raw["metrics"]["snapshots_taken"]  # an older agent: the row stays empty
    assert dict(status_metrics_rows(raw))["snapshots"] is None
    assert status_metrics_rows({"name": "a1"}) == []


# ---------------------------------------------------------------- the HTTP endpoint

HTTP_HOST = "127.0.0.201"


async def _exchange(addr: tuple[str, int], request: bytes) -> bytes:
    stream = await trio.open_tcp_stream(*addr)
    async with stream:
        await stream.send_all(request)
        await stream.send_eof()
        out = b""
        with trio.fail_after(5):
            while chunk := await stream.receive_some(65536):
                out += chunk
        return out


def _status(response: bytes) -> int:
    return int(response.split(b" ", 2)[1])


async def test_server_answers_metrics_and_refuses_the_rest(nursery: trio.Nursery) -> None:
    r = Registry()
    r.counter("scrapes_total", "S.").inc(7)
    addr = await nursery.start(metrics.serve_metrics, HTTP_HOST, 0, r.render)
    resp = await _exchange(addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
    head, body = resp.split(b"\r\n\r\n", 1)
    assert _status(resp) == 200
    assert b"Content-Type: text/plain; version=0.0.4; charset=utf-8" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert body == r.render().encode()
    assert _status(await _exchange(addr, b"GET /metrics?x=1 HTTP/1.0\r\n\r\n")) == 200
    head_only = await _exchange(addr, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert _status(head_only) == 200 and head_only.endswith(b"\r\n\r\n")
    assert _status(await _exchange(addr, b"GET / HTTP/1.1\r\n\r\n")) == 404
    assert _status(await _exchange(addr, b"GET /metricsx HTTP/1.1\r\n\r\n")) == 404
    post = await _exchange(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 2\r\n\r\nhi")
    assert _status(post) == 405 and b"Allow: GET, HEAD" in post
    assert _status(await _exchange(addr, b"GARBAGE\r\n\r\n")) == 400
    huge = b"GET /metrics HTTP/1.1\r\nX: " + b"a" * (metrics.REQUEST_BYTES_MAX + 10)
    assert _status(await _exchange(addr, huge + b"\r\n\r\n")) == 431
    assert _status(await _exchange(addr, huge)) == 431  # never ends its head: cut off early
    assert await _exchange(addr, b"GET /met") == b""  # closed before the head ended


async def test_render_failure_is_a_500_and_the_server_keeps_serving(nursery: trio.Nursery) -> None:
    calls = []

    def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("boom")
        return "ok 1\n"

    addr = await nursery.start(metrics.serve_metrics, HTTP_HOST, 0, flaky)
    assert _status(await _exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")) == 500
    assert (await _exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")).endswith(b"\r\n\r\nok 1\n")


async def test_slow_and_excess_clients_are_cut_off(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "CONNECTION_TIMEOUT_S", 0.5)
    monkeypatch.setattr(metrics, "CONNECTIONS_MAX", 2)
    addr = await nursery.start(metrics.serve_metrics, HTTP_HOST, 0, lambda: "x 1\n")
    t0 = trio.current_time()
    idle = [await trio.open_tcp_stream(*addr) for _ in range(2)]
    await trio.sleep(0.1)  # let the server adopt both
    # A third client while two slow ones hold every slot: closed at once, unanswered.
    async with await trio.open_tcp_stream(*addr) as third:
        with trio.fail_after(0.3):
            assert await third.receive_some(100) == b""
    assert trio.current_time() - t0 < 0.45
    # The slow ones send nothing and are closed after the timeout.
    for s in idle:
        with trio.fail_after(3):
            assert await s.receive_some(100) == b""
        await s.aclose()
    assert trio.current_time() - t0 >= 0.45
    # Then the endpoint serves again.
    assert _status(await _exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200


async def test_health_answers_200_or_503_with_the_checks_json(
    nursery: trio.Nursery, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(metrics, "HEALTH_WAIT_S", 0.3)
    answers: list[object] = [
        (True, {"agent": "a1", "cluster_leader": "a2"}),
        (False, {"agent": "a1", "reason": "cluster state unreachable: no leader"}),
        RuntimeError("boom"),
        "hang",
    ]

    async def check() -> tuple[bool, dict[str, object]]:
        a = answers.pop(0)
        if isinstance(a, Exception):
            raise a
        if a == "hang":
            await trio.sleep_forever()
        return a  # type: ignore[return-value]

    addr = await nursery.start(
        partial(metrics.serve_metrics, health=check), HTTP_HOST, 0, lambda: "x 1\n"
    )
    get = b"GET /health HTTP/1.1\r\n\r\n"

    def answer(resp: bytes) -> tuple[int, dict]:
        head, body = resp.split(b"\r\n\r\n", 1)
        assert b"Content-Type: application/json" in head
        return _status(resp), json.loads(body)

    assert answer(await _exchange(addr, get)) == (
        200, {"health": True, "agent": "a1", "cluster_leader": "a2"}
    )  # fmt: skip
    assert answer(await _exchange(addr, get)) == (
        503, {"health": False, "agent": "a1", "reason": "cluster state unreachable: no leader"}
    )  # fmt: skip
    status, body = answer(await _exchange(addr, get))
    assert status == 503 and body["reason"] == "the health check failed: RuntimeError: boom"
    status, body = answer(await _exchange(addr, get))
    assert status == 503 and body["reason"] == "the health check took over 0.3 s"
    assert not answers
    # Metrics are served as before, beside it; without a check there is no /health.
    assert _status(await _exchange(addr, b"GET /metrics HTTP/1.1\r\n\r\n")) == 200
    plain = await nursery.start(metrics.serve_metrics, HTTP_HOST, 0, lambda: "x 1\n")
    assert _status(await _exchange(plain, get)) == 404


# ---------------------------------------------------------------- a real agent

FAMILIES = {
    "raftfleet_agent_info": "gauge",
    "raftfleet_replicas": "gauge",
    "raftfleet_leaders": "gauge",
    "raftfleet_groups": "gauge",
    "raftfleet_elections_won_total": "counter",
    "raftfleet_leader_changes_total": "counter",
    "raftfleet_snapshots_taken_total": "counter",
    "raftfleet_snapshots_installed_total": "counter",
    "raftfleet_commit_latency_seconds": "histogram",
    "raftfleet_apply_batch_entries": "histogram",
    "raftfleet_store_commit_seconds": "histogram",
    "raftfleet_store_batch_groups": "histogram",
    "raftfleet_store_batch_entries": "histogram",
    "raftfleet_peer_frames_sent_total": "counter",
    "raftfleet_peer_bytes_sent_total": "counter",
    "raftfleet_peer_frames_received_total": "counter",
    "raftfleet_peer_bytes_received_total": "counter",
    "raftfleet_peer_up": "gauge",
    "raftfleet_moves_in_flight": "gauge",
    "raftfleet_moves_done_total": "counter",
    "raftfleet_replicas_awake": "gauge",
    "raftfleet_purges_held": "gauge",
    "raftfleet_control_requests_total": "counter",
    "raftfleet_raft_messages_sent_total": "counter",
}


def _get(url: str, method: str = "GET") -> tuple[int, str, str]:
    req = urllib.request.Request(url, method=method)
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


@pytest.mark.slow
def test_agent_serves_metrics(tmp_path: Path) -> None:
    mport = free_port("127.0.0.202")
    a1 = AgentProc(
        "a1", "127.0.0.202", tmp_path, extra_args=["--metrics-listen", f"127.0.0.202:{mport}"]
    )
    a2 = AgentProc("a2", "127.0.0.203", tmp_path, join=[a1.address])
    url = f"http://127.0.0.202:{mport}/metrics"
    try:
        a1.start()
        a2.start()
        wait_for(lambda: connected_to_all([a1, a2]), 15, "agents to connect")
        created = a1.call(
            "group_create", name="g1", type="counter", agents=["a1", "a2"], timeout=20
        )
        assert created["leader"] == "a1"  # type: ignore[index]
        for _ in range(5):
            a1.call("command", group="g1", arg="inc", timeout=15)
        a2.call("command", group="g1", arg="inc", timeout=15)  # forwarded to the leader
        assert a1.call("query", group="g1", arg="get")["reply"] == 6  # type: ignore[index]

        status, ctype, text = _get(url)
        assert status == 200 and ctype == metrics.CONTENT_TYPE
        types, samples = parse(text)
        missing = {n: k for n, k in FAMILIES.items() if types.get(n) != k}
        assert not missing, missing
        assert all(n.startswith("raftfleet_") for n in types)
        assert value(samples, "raftfleet_agent_info", agent="a1") == 1
        assert value(samples, "raftfleet_replicas") == 1
        assert value(samples, "raftfleet_leaders") == 1
        assert value(samples, "raftfleet_groups") == 0  # g1 is placed by hand, not managed
        # g1's and the cluster state's first leaderships were won here.
        assert value(samples, "raftfleet_elections_won_total") >= 2
        commits = value(samples, "raftfleet_commit_latency_seconds_count")
        assert commits >= 6  # six increments proposed here, plus cluster-state commands
        assert value(samples, "raftfleet_commit_latency_seconds_bucket", le="+Inf") == commits
        assert 0 < value(samples, "raftfleet_commit_latency_seconds_sum") < commits * 5
        assert value(samples, "raftfleet_store_commit_seconds_count") > 0
        assert value(samples, "raftfleet_store_batch_entries_sum") >= 6
        assert value(samples, "raftfleet_apply_batch_entries_sum") >= 6
        assert value(samples, "raftfleet_peer_up", peer="a2") == 1
        assert value(samples, "raftfleet_peer_frames_sent_total", peer="a2") > 0
        assert value(samples, "raftfleet_peer_bytes_received_total", peer="a2") > 0
        assert value(samples, "raftfleet_control_requests_total") >= 8
        assert value(samples, "raftfleet_moves_in_flight") == 0
        assert value(samples, "raftfleet_purges_held") == 0

        assert _get(url.replace("/metrics", "/nope"))[0] == 404
        assert _get(url, method="POST")[0] == 405

        headline = a1.call("status")["metrics"]  # type: ignore[index]
        assert headline["commits"] >= 6
        assert 0 < headline["commit_p50_ms"] <= headline["commit_p99_ms"]
        assert 0 < headline["store_commit_p50_ms"] <= headline["store_commit_p99_ms"]
        assert headline["messages_per_s"] > 0

        from click.testing import CliRunner

        from raftfleet_cli.main import main

        ran = CliRunner().invoke(main, ["--addr", f"unix://{a1.sock}", "status"])
        assert ran.exit_code == 0, ran.output
        assert "commit latency" in ran.stdout and "ms (p50 / p99)" in ran.stdout
    finally:
        a2.stop(timeout=10)
        a1.stop(timeout=10)


@pytest.mark.slow
def test_agent_health_follows_its_cluster(tmp_path: Path) -> None:
    """GET /health: 200 while the cluster state answers through its leader, else 503 and why."""

    def agent(name: str, host: str, join: list[str]) -> tuple[AgentProc, str]:
        port = free_port(host)
        extra = ["--metrics-listen", f"{host}:{port}"]
        return AgentProc(name, host, tmp_path, join=join, extra_args=extra), f"http://{host}:{port}"

    def health(url: str) -> tuple[int, dict]:
        status, ctype, text = _get(url + "/health")
        assert ctype == "application/json"
        return status, json.loads(text)

    a1, url1 = agent("a1", "127.0.0.206", [])
    a2, url2 = agent("a2", "127.0.0.207", [a1.address])
    a3, url3 = agent("a3", "127.0.0.208", ["127.0.0.209:9"])  # nobody listens there
    try:
        for a in (a1, a2, a3):
            a.start()
        wait_for(lambda: connected_to_all([a1, a2]), 15, "agents to connect")
        for name, url in (("a1", url1), ("a2", url2)):
            status, body = health(url)
            assert status == 200, body
            assert body["health"] is True and body["agent"] == name
            assert body["cluster_leader"] == "a1"  # the founder leads the cluster state
            assert body["cluster_version"] >= 1 and body["state"] == "inactive"
        assert health(url3) == (
            503,
            {
                "health": False,
                "agent": "a3",
                "state": "inactive",
                "zone": None,
                "reason": "not in a cluster yet (waiting to join one)",
            },
        )
        # The cluster state's leader dies (no hand-off): a2 can no longer read it.
        a1.kill()

        def unhealthy() -> dict | None:
            status, body = health(url2)
            return body if status == 503 else None

        body = wait_for(unhealthy, 15, "a2's /health to say the cluster state is gone")
        assert body["health"] is False  # type: ignore[index]
        assert body["reason"].startswith("cluster state unreachable")  # type: ignore[index]
        assert _get(url2 + "/metrics")[0] == 200  # the agent itself still serves
    finally:
        for a in (a3, a2, a1):
            a.stop(timeout=10)
