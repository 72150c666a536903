"""Feeding an Applier entries without spelling out indexes in every test."""

from __future__ import annotations

from typing import Any

from raftfleet_agent.raft.types import Entry, EntryKind
from raftfleet_agent.statemachine import Applier, ApplyResult, encode_command


class Feeder:
    """An Applier plus the next log index; `cmd` proposes and applies one command."""

    def __init__(self, applier: Applier) -> None:
        self.applier = applier

    @property
    def next_index(self) -> int:
        return self.applier.applied_index + 1

    def entry(self, data: Any, kind: EntryKind = EntryKind.NORMAL) -> ApplyResult | None:
        return self.applier.apply(Entry(term=1, index=self.next_index, kind=kind, data=data))

    def cmd(self, arg: Any, *, client: str = "c", seq: int = 1, ts: int = 1_000) -> ApplyResult:
        result = self.entry(encode_command(client, seq, ts, arg))
        assert result is not None
        return result

    def get(self, arg: Any) -> Any:
        result = self.applier.query(arg)
        assert result.ok, result
        return result.reply
