"""One PySyncObj node for the comparison: a replicated counter behind a socket.

    python bench/peer_pysyncobj.py '<json spec>'

PySyncObj has no client protocol (the replicated object lives in the node's
process), so each node serves the same framing as the agent's control socket
(4-byte length + msgpack {"id","op","args"}) on a Unix socket, and the load
generator drives both the same way from its own process. `command` calls the
@replicated `inc` and answers from its callback (after commit and apply);
`query` answers the local value (PySyncObj has no linearizable read);
`status` says whether this node leads.

The node binds its member address (bindAddress: it binds 0.0.0.0 otherwise)
and keeps its journal in a file (journalFile) on the real disk. Note:
PySyncObj 0.3.17 writes the journal through mmap and does not fsync it before
acknowledging, unlike raftfleet and etcd.
"""

from __future__ import annotations

import collections
import json
import os
import selectors
import socket
import struct
import sys
import threading

import msgpack
from pysyncobj import SyncObj, SyncObjConf, replicated

_HDR = struct.Struct(">I")


class Counter(SyncObj):
    def __init__(self, self_addr: str, partners: list[str], conf: SyncObjConf) -> None:
        super().__init__(self_addr, partners, conf)
        self.value = 0

    @replicated
    def inc(self) -> int:
        self.value += 1
        return self.value - 1


def main(spec: dict) -> None:
    host = spec["self"].split(":")[0]
    conf = SyncObjConf(
        bindAddress=spec["self"],
        journalFile=spec["journal"],
        appendEntriesUseBatch=bool(spec["batch"]),
        dynamicMembershipChange=False,
    )
    assert host.startswith("127.")
    node = Counter(spec["self"], spec["partners"], conf)
    sel = selectors.DefaultSelector()
    lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    if os.path.exists(spec["sock"]):
        os.unlink(spec["sock"])
    lsock.bind(spec["sock"])
    lsock.listen(256)
    lsock.setblocking(False)
    sel.register(lsock, selectors.EVENT_READ, None)
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    sel.register(wake_r, selectors.EVENT_READ, "wake")
    done: collections.deque = collections.deque()  # (conn, frame) from the SyncObj thread
    bufs: dict[socket.socket, bytearray] = {}
    out: dict[socket.socket, bytearray] = {}

    def frame(obj: dict) -> bytes:
        b = msgpack.packb(obj, use_bin_type=True)
        return _HDR.pack(len(b)) + b

    def reply_later(conn: socket.socket, rid: int):
        def cb(result, error) -> None:  # called in the SyncObj thread
            if error == 0:  # FAIL_REASON.SUCCESS
                done.append((conn, frame({"id": rid, "ok": True, "result": {"reply": result}})))
            else:
                err = {"code": "failed", "message": str(error)}
                done.append((conn, frame({"id": rid, "ok": False, "error": err})))
            os.write(wake_w, b"x")

        return cb

    def send(conn: socket.socket, data: bytes) -> None:
        if conn not in bufs:
            return
        ob = out[conn]
        ob += data
        try:
            n = conn.send(ob)
            del ob[:n]
        except BlockingIOError:
            pass
        except OSError:
            close(conn)
            return
        sel.modify(conn, selectors.EVENT_READ | (selectors.EVENT_WRITE if ob else 0), "c")

    def close(conn: socket.socket) -> None:
        if conn in bufs:
            sel.unregister(conn)
            del bufs[conn], out[conn]
            conn.close()

    def handle(conn: socket.socket, msg: dict) -> None:
        rid, op = msg.get("id"), msg.get("op")
        if op == "command":
            node.inc(callback=reply_later(conn, rid))
        elif op == "query":
            send(conn, frame({"id": rid, "ok": True, "result": {"reply": node.value}}))
        elif op == "status":
            st = node.getStatus()
            leader = st.get("leader")
            send(
                conn,
                frame(
                    {
                        "id": rid,
                        "ok": True,
                        "result": {
                            "leader": str(leader) if leader else None,
                            "self": spec["self"],
                            "is_leader": node._isLeader(),
                        },
                    }
                ),
            )
        else:
            send(conn, frame({"id": rid, "ok": False, "error": {"code": "unknown_op"}}))

    while True:
        for key, ev in sel.select(1.0):
            if key.data is None:
                try:
                    conn, _ = lsock.accept()
                except BlockingIOError:
                    continue
                conn.setblocking(False)
                bufs[conn] = bytearray()
                out[conn] = bytearray()
                sel.register(conn, selectors.EVENT_READ, "c")
            elif key.data == "wake":
                try:
                    os.read(wake_r, 65536)
                except BlockingIOError:
                    pass
                while done:
                    c, data = done.popleft()
                    send(c, data)
            else:
                conn = key.fileobj
                assert isinstance(conn, socket.socket)
                if ev & selectors.EVENT_WRITE:
                    send(conn, b"")
                if ev & selectors.EVENT_READ and conn in bufs:
                    try:
                        data = conn.recv(1 << 18)
                    except BlockingIOError:
                        continue
                    except OSError:
                        data = b""
                    if not data:
                        close(conn)
                        continue
                    b = bufs[conn]
                    b += data
                    while len(b) >= 4:
                        (n,) = _HDR.unpack_from(b)
                        if len(b) < 4 + n:
                            break
                        msg = msgpack.unpackb(bytes(b[4 : 4 + n]), raw=False)
                        del b[: 4 + n]
                        handle(conn, msg)


if __name__ == "__main__":
    threading.current_thread().name = "server"
    main(json.loads(sys.argv[1]))
