"""Closed-loop load generator; runs in its own process (never in an agent).

    python bench/loadgen.py '<json spec>'

One thread, one `selectors` loop, `conns` connections, each keeping `depth`
requests outstanding (depth > 1 = pipelining on one connection). Protocols:

- "framed": the agent's control protocol (4-byte big-endian length + msgpack
  {"id", "op", "args"}) over a Unix socket; replies may come in any order and
  are matched by id. Also spoken by bench/peer_pysyncobj.py.
- "http": etcd's v3 HTTP/JSON gateway (POST, keep-alive, one request in
  flight per connection: HTTP/1.1 answers in order, so pipelining would only
  queue behind the head request).

Every process of one measurement starts at the same `start_at`
(CLOCK_MONOTONIC, shared by all processes of the machine) and counts the
replies that arrive within [start_at, start_at + seconds]. A bounded loop:
it stops at the deadline or after `max_ops` requests. Prints one JSON object:
counts and the latency of every completed request in microseconds.
"""

from __future__ import annotations

import base64
import json
import os
import selectors
import signal
import socket
import struct
import sys
import time

import msgpack

_HDR = struct.Struct(">I")


class Conn:
    __slots__ = ("dead_until", "gi", "inflight", "next_id", "rbuf", "sock", "target", "wbuf")

    def __init__(self, target: object, gi: int) -> None:
        self.sock: socket.socket | None = None
        self.target = target
        self.inflight: dict[int, float] = {}
        self.rbuf = bytearray()
        self.wbuf = bytearray()
        self.next_id = 1
        self.dead_until = 0.0
        self.gi = gi  # index into this connection's list of groups/keys


def run(spec: dict) -> dict:
    proto = spec["proto"]
    targets = spec.get("targets", [])  # framed: per connection, a list of socket paths
    conns_n, depth = int(spec["conns"]), int(spec["depth"])
    seconds = float(spec["seconds"])
    max_ops = int(spec.get("max_ops", 10_000_000))
    start_at = float(spec.get("start_at", time.monotonic()))
    rate = float(spec.get("rate", 0))  # total requests/s of this process, 0 = unlimited
    op = spec["op"]
    groups: list[list[str]] = spec.get("groups_per_conn") or [[spec.get("group", "")]] * conns_n
    args_extra = spec.get("args", {})
    end_at = start_at + seconds
    sel = selectors.DefaultSelector()
    lat: list[int] = []
    errors = 0
    error_kinds: dict[str, int] = {}
    sent = 0
    next_send = start_at
    interval = 1.0 / rate if rate > 0 else 0.0

    if proto == "http":
        host, port = spec["http"]
        key = base64.b64encode(spec.get("key", "bench").encode()).decode()
        if op == "put":
            body = json.dumps({"key": key, "value": base64.b64encode(b"1").decode()}).encode()
            path = "/v3/kv/put"
        else:
            body = json.dumps({"key": key}).encode()
            path = "/v3/kv/range"
        http_req = (
            f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode() + body

    conns = [
        Conn(targets[i % len(targets)] if proto == "framed" else None, i) for i in range(conns_n)
    ]
    # "kv_put_bytes": N makes every request a put of a new key (unique to this
    # process and connection) with an N-byte value: a kv state that grows.
    put_bytes = int(spec.get("kv_put_bytes", 0))
    put_value = "v" * put_bytes
    fixed_arg = spec.get("arg", "inc")

    def arg_of(c: Conn, rid: int) -> object:
        if put_bytes:
            return ["put", f"k{os.getpid()}-{c.gi}-{rid}", put_value]
        return fixed_arg

    def note_error(kind: str) -> None:
        nonlocal errors
        errors += 1
        error_kinds[kind] = error_kinds.get(kind, 0) + 1

    def connect(c: Conn) -> bool:
        try:
            if proto == "framed":
                paths = c.target
                path = paths[c.gi % len(paths)]
                s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                s.settimeout(2)
                s.connect(path)
            else:
                s = socket.create_connection((host, port), 2)
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            s.setblocking(False)
        except OSError:
            c.gi += 1  # next time, try the next target
            c.dead_until = time.monotonic() + 0.05
            return False
        c.sock = s
        c.rbuf.clear()
        c.wbuf.clear()
        c.inflight.clear()
        sel.register(s, selectors.EVENT_READ, c)
        return True

    def drop(c: Conn, kind: str) -> None:
        if c.sock is not None:
            sel.unregister(c.sock)
            c.sock.close()
            c.sock = None
        for _ in c.inflight:
            note_error(kind)
        c.inflight.clear()
        c.gi += 1
        c.dead_until = time.monotonic() + 0.05

    def want_write(c: Conn) -> None:
        assert c.sock is not None
        sel.modify(c.sock, selectors.EVENT_READ | (selectors.EVENT_WRITE if c.wbuf else 0), c)

    def send_one(c: Conn, now: float) -> None:
        nonlocal sent, next_send
        sent += 1
        if interval:
            next_send = max(next_send + interval, now - 1.0)
        rid = c.next_id
        c.next_id += 1
        if proto == "framed":
            gl = groups[c_index[id(c)]]
            g = gl[rid % len(gl)]
            args = {"group": g, "arg": arg_of(c, rid), **args_extra}
            b = msgpack.packb({"id": rid, "op": op, "args": args}, use_bin_type=True)
            c.wbuf += _HDR.pack(len(b)) + b
        else:
            c.wbuf += http_req
        c.inflight[rid] = now
        flush(c)

    def flush(c: Conn) -> None:
        assert c.sock is not None
        try:
            n = c.sock.send(c.wbuf)
            del c.wbuf[:n]
        except BlockingIOError:
            pass
        except OSError:
            drop(c, "send")
            return
        want_write(c)

    def on_read(c: Conn, now: float) -> None:
        assert c.sock is not None
        try:
            data = c.sock.recv(1 << 18)
        except BlockingIOError:
            return
        except OSError:
            drop(c, "conn_lost")
            return
        if not data:
            drop(c, "conn_closed")
            return
        c.rbuf += data
        if proto == "framed":
            while len(c.rbuf) >= 4:
                (n,) = _HDR.unpack_from(c.rbuf)
                if len(c.rbuf) < 4 + n:
                    break
                msg = msgpack.unpackb(bytes(c.rbuf[4 : 4 + n]), raw=False, strict_map_key=False)
                del c.rbuf[: 4 + n]
                t0 = c.inflight.pop(msg.get("id"), None)
                if t0 is None:
                    continue
                if msg.get("ok"):
                    if start_at <= now <= end_at:
                        lat.append(int((now - t0) * 1e6))
                else:
                    note_error(str((msg.get("error") or {}).get("code")))
        else:
            while True:
                head_end = c.rbuf.find(b"\r\n\r\n")
                if head_end < 0:
                    break
                head = bytes(c.rbuf[:head_end]).decode("latin-1").lower()
                status = int(head.split(" ", 2)[1])
                body_start = head_end + 4
                if "transfer-encoding: chunked" in head:
                    pos, ok = body_start, False
                    while True:
                        le = c.rbuf.find(b"\r\n", pos)
                        if le < 0:
                            break
                        size = int(bytes(c.rbuf[pos:le]).split(b";")[0], 16)
                        if len(c.rbuf) < le + 2 + size + 2:
                            break
                        pos = le + 2 + size + 2
                        if size == 0:
                            ok = True
                            break
                    if not ok:
                        break
                    end = pos
                else:
                    cl = 0
                    for line in head.split("\r\n"):
                        if line.startswith("content-length:"):
                            cl = int(line.split(":", 1)[1])
                    if len(c.rbuf) < body_start + cl:
                        break
                    end = body_start + cl
                del c.rbuf[:end]
                rid = next(iter(c.inflight))
                t0 = c.inflight.pop(rid)
                if status == 200:
                    if start_at <= now <= end_at:
                        lat.append(int((now - t0) * 1e6))
                else:
                    note_error(f"http_{status}")

    c_index = {id(c): i for i, c in enumerate(conns)}
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(1))  # stop early, still report
    while time.monotonic() < start_at - 0.5:
        time.sleep(0.01)
    for c in conns:
        connect(c)
    while time.monotonic() < start_at:
        time.sleep(0.001)
    while True:
        now = time.monotonic()
        if now >= end_at or stopping:
            break
        for c in conns:
            if c.sock is None:
                if now >= c.dead_until:
                    connect(c)
                continue
            while len(c.inflight) < depth and sent < max_ops and (not interval or now >= next_send):
                send_one(c, now)
                if c.sock is None:
                    break
        timeout = min(0.05, max(0.0, end_at - now))
        if interval:
            timeout = min(timeout, max(0.0, next_send - now))
        for key, ev in sel.select(timeout):
            c = key.data
            now = time.monotonic()
            if ev & selectors.EVENT_READ and c.sock is not None:
                on_read(c, now)
            if ev & selectors.EVENT_WRITE and c.sock is not None and c.wbuf:
                flush(c)
        if sent >= max_ops and not any(c.inflight for c in conns):
            break
    for c in conns:
        if c.sock is not None:
            c.sock.close()
    return {
        "ops": len(lat),
        "sent": sent,
        "errors": errors,
        "error_kinds": error_kinds,
        "seconds": seconds,
        "lat_us": lat,
    }


if __name__ == "__main__":
    print(json.dumps(run(json.loads(sys.argv[1]))))
