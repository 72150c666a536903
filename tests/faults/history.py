"""Histories of client operations, recorded from many threads, for `tests.lincheck`.

Each operation is recorded twice: `invoke` (before the request leaves) and one
completion:

- `ok`   -- the reply came back; `output` is the reply.
- `fail` -- it definitely did not happen (refused before it was proposed, or
  never sent: the control socket could not be reached). Dropped by the checker.
- `info` -- unknown outcome (timeouts, `no_leader` after the request may have
  been proposed, a broken connection): it may take effect at any time after
  its invoke, or never.

Every operation carries a unique `op_id` and, for commands, the request id
`[client, seq]` the agents deduplicate with, so a history in JSON says which
retries belonged to which operation. Times are seconds of `time.monotonic()`
relative to the recorder's start.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import attrs

from tests.lincheck import FAIL, INFO, OK, Operation

__all__ = ["Record", "Recorder", "to_operations"]

COUNTER_FS = frozenset({"inc", "get"})
KV_FS = frozenset({"put", "cas", "get"})


@attrs.define(kw_only=True)
class Record:
    """One operation. Mutable until completed; `status` None while pending."""

    op_id: int
    client: str
    group: str
    model: str  # "counter" | "kv"
    f: str
    value: Any
    kind: str  # "command" | "query"
    request_id: list | None
    via: str  # the agent (or "cli@agent") the request was sent to
    call_time: float
    status: str | None = None
    output: Any = None
    return_time: float | None = None
    attempts: int = 1
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return attrs.asdict(self)


class Recorder:
    """Thread-safe history of every operation of one run."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._records: list[Record] = []
        self._ids = itertools.count(1)
        self.t0 = time.monotonic()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def invoke(
        self,
        *,
        client: str,
        group: str,
        model: str,
        f: str,
        value: Any,
        kind: str,
        request_id: list | None,
        via: str,
    ) -> Record:
        with self._lock:
            rec = Record(
                op_id=next(self._ids),
                client=client,
                group=group,
                model=model,
                f=f,
                value=value,
                kind=kind,
                request_id=request_id,
                via=via,
                call_time=self.now(),
            )
            self._records.append(rec)
            return rec

    def complete(
        self, rec: Record, status: str, output: Any = None, error: str | None = None
    ) -> None:
        if status not in (OK, FAIL, INFO):
            raise ValueError(f"bad status {status!r}")
        with self._lock:
            if rec.status is not None:
                raise ValueError(f"operation {rec.op_id} completed twice")
            rec.status = status
            rec.output = output if status == OK else None
            rec.return_time = self.now()
            rec.error = error

    def records(self) -> list[Record]:
        """A snapshot; ops still pending are reported as info."""
        with self._lock:
            out = []
            for r in self._records:
                pending = r.status is None
                out.append(attrs.evolve(r, status=INFO, error="still pending") if pending else r)
            return out

    def counts(self) -> dict[str, int]:
        c = {OK: 0, FAIL: 0, INFO: 0}
        for r in self.records():
            c[r.status] += 1  # type: ignore[index]
        return c

    def dump(self, path: Path, extra: dict[str, Any] | None = None) -> None:
        doc = {"records": [r.to_json() for r in self.records()], **(extra or {})}
        path.write_text(json.dumps(doc, indent=1, default=repr))


def to_operations(records: Iterable[Record], group: str) -> list[Operation]:
    """The lincheck operations of one group. kv ops carry the command's
    arguments as value: ("k", v) for put, ("k", old, new) for cas, "k" for get."""
    ops = []
    for r in records:
        if r.group != group:
            continue
        ops.append(
            Operation(
                client=r.client,
                f=r.f,
                value=r.value,
                output=r.output,
                call_time=r.call_time,
                return_time=r.return_time if r.status != INFO else None,
                status=r.status,  # type: ignore[arg-type]
                op_id=r.op_id,
            )
        )
    return ops
