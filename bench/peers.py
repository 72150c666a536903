"""The peers write_1group is compared with: PySyncObj and etcd clusters, and their loads."""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import tempfile
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from bench.common import OUT, PEER, PY, free_port, log, spawn, stop_proc
from bench.load import Measures, http_specs, measure, window
from raftfleet_cli.client import Client, parse_addr
from tests.procs import wait_for


def pso_version() -> dict:
    try:
        import pysyncobj  # noqa: F401
    except ImportError:
        return {"skipped": "pysyncobj is not importable (.venv/bin/pip install -e '.[bench]')"}
    from importlib.metadata import version

    return {"version": f"pysyncobj {version('pysyncobj')}"}


@contextlib.contextmanager
def pso_cluster(batch: bool, cfg: dict, res: dict) -> Iterator[Measures]:
    """3 PySyncObj nodes with `appendEntriesUseBatch=batch`; its loads on the leader.

    Reads are local and do not depend on batching: measured on batch=False only.
    A start that elects nobody is retried (its logs go to res["start_failures"]).
    """
    d = Path(tempfile.mkdtemp(dir=OUT, prefix="pso-"))
    nodes: list[subprocess.Popen] = []
    try:
        leader = None
        for attempt in range(3):
            hosts = [f"127.0.0.{31 + i}" for i in range(3)]
            addrs = [f"{h}:{free_port(h)}" for h in hosts]
            socks = [str(d / f"a{attempt}n{i}.sock") for i in range(3)]
            for i in range(3):
                spec = {
                    "self": addrs[i],
                    "partners": [a for a in addrs if a != addrs[i]],
                    "journal": str(d / f"a{attempt}n{i}.journal"),
                    "batch": batch,
                    "sock": socks[i],
                }
                nodes.append(spawn([PY, PEER, json.dumps(spec)], d / f"a{attempt}n{i}.log"))
            try:
                leader = wait_for(
                    lambda socks=socks: pso_leader(socks), 20, "a PySyncObj leader", interval=0.2
                )
                break
            except AssertionError:
                logs = " | ".join(
                    (d / f"a{attempt}n{i}.log").read_text(errors="replace")[-300:] for i in range(3)
                )
                log(f"pysyncobj start attempt {attempt}: no leader; logs: {logs!r}")
                res.setdefault("start_failures", []).append(logs[-900:])
                for p in nodes:
                    stop_proc(p)
                nodes.clear()
        if leader is None:
            raise RuntimeError("PySyncObj elected no leader in 3 starts")
        ls = [str(leader)]
        wait_for(lambda: framed_call(ls[0], "command"), 20, "a PySyncObj command")
        loads = {
            "write_1": window(ls, 1, "command", "inc", {}, cfg),
            "write_64": window(ls, 64, "command", "inc", {}, cfg),
        }
        if not batch:
            loads["read_64"] = window(ls, 64, "query", "get", {}, cfg)
        yield loads
    finally:
        for p in nodes:
            stop_proc(p)
        shutil.rmtree(d, ignore_errors=True)


def framed_call(sock: str, op: str) -> object:
    with Client(parse_addr(f"unix://{sock}"), connect_timeout=1) as c:
        return c.call(op, timeout=3)


def pso_leader(socks: list[str]) -> str | None:
    """The leading node's socket. Not its index: wait_for takes node 0 (falsy) for "none yet"."""
    for s in socks:
        with contextlib.suppress(Exception):
            if framed_call(s, "status")["is_leader"]:  # type: ignore[index]
                return s
    return None


def etcd_version() -> dict:
    exe = shutil.which("etcd")
    if not exe:
        return {"skipped": "etcd not installed (apt-get install -y etcd-server etcd-client)"}
    out = subprocess.run([exe, "--version"], check=False, capture_output=True, text=True)
    return {"version": out.stdout.splitlines()[0]}


@contextlib.contextmanager
def etcd_cluster(cfg: dict) -> Iterator[Measures]:
    """3 etcd members; puts and linearizable ranges through the leader's HTTP/JSON gateway."""
    exe = shutil.which("etcd")
    assert exe
    d = Path(tempfile.mkdtemp(dir=OUT, prefix="etcd-"))
    members: list[subprocess.Popen] = []
    try:
        hosts = [f"127.0.0.{41 + i}" for i in range(3)]
        cl = ",".join(f"e{i}=http://{h}:2380" for i, h in enumerate(hosts))
        for i, h in enumerate(hosts):
            members.append(
                spawn(
                    [
                        exe,
                        "--name",
                        f"e{i}",
                        "--data-dir",
                        str(d / f"e{i}"),
                        "--listen-client-urls",
                        f"http://{h}:2379",
                        "--advertise-client-urls",
                        f"http://{h}:2379",
                        "--listen-peer-urls",
                        f"http://{h}:2380",
                        "--initial-advertise-peer-urls",
                        f"http://{h}:2380",
                        "--initial-cluster",
                        cl,
                        "--initial-cluster-state",
                        "new",
                        "--initial-cluster-token",
                        "bench",
                        "--logger",
                        "zap",
                        "--log-level",
                        "warn",
                    ],
                    d / f"e{i}.log",
                )
            )

        def leader() -> str | None:
            for h in hosts:
                st = etcd_post(h, "/v3/maintenance/status", {})
                if st.get("leader") and st["leader"] == st["header"]["member_id"]:
                    return h
            return None

        lead = wait_for(leader, 30, "an etcd leader", interval=0.2)
        etcd_post(lead, "/v3/kv/put", {"key": "YmVuY2g=", "value": "MA=="})  # type: ignore[arg-type]
        seconds = cfg["window"]
        yield {
            "write_1": lambda: measure(http_specs(lead, 2379, 1, "put"), seconds),
            "write_64": lambda: measure(http_specs(lead, 2379, 64, "put"), seconds),
            "read_64": lambda: measure(http_specs(lead, 2379, 64, "range"), seconds),
        }
    finally:
        for p in members:
            stop_proc(p)
        shutil.rmtree(d, ignore_errors=True)


def etcd_post(host: str, path: str, body: dict) -> dict:
    req = urllib.request.Request(
        f"http://{host}:2379{path}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(req, timeout=2) as resp:
        return json.loads(resp.read())
