"""What agents say to each other inside one transport frame.

A frame is a list whose first element names its kind:
- `["r", [[group, message], ...]]`: Raft messages of many groups (one frame per
  peer per loop turn, so every group's heartbeats to that peer travel together);
- `["q", call_id, op, args]` / `["a", call_id, ok, value]`: an RPC call and its
  answer (forwarded commands, replica hosting, status probes);
- `["p"]`: a liveness ping. A peer whose process is frozen keeps its TCP
  connections open, so silence, not a closed connection, is what reveals it.
Validation treats every frame as hostile: `WireError` for anything malformed,
and the transport then drops the connection.
"""

from __future__ import annotations

from raftfleet_agent.raft import codec
from raftfleet_agent.raft.messages import Message

RAFT = "r"
CALL = "q"
ANSWER = "a"
PING = "p"  # "I am alive": sent to every peer twice a second, carries nothing

GROUP_NAME_MAX = 256


class WireError(ValueError):
    pass


def encode_raft(batch: list[tuple[str, Message]]) -> list:
    return [RAFT, [[g, codec.encode_message(msg)] for g, msg in batch]]


def decode_raft(body: object) -> list[tuple[str, Message]]:
    if not isinstance(body, list):
        raise WireError("raft batch: expected a list")
    out = []
    for item in body:
        if not isinstance(item, list) or len(item) != 2:
            raise WireError("raft batch: expected [group, message] pairs")
        group, raw = item
        if type(group) is not str or not 0 < len(group) <= GROUP_NAME_MAX:
            raise WireError("raft batch: bad group name")
        try:
            out.append((group, codec.decode_message(raw)))
        except codec.CodecError as e:
            raise WireError(f"raft batch for {group!r}: {e}") from None
    return out


def encode_call(call_id: int, op: str, args: dict) -> list:
    return [CALL, call_id, op, args]


def encode_answer(call_id: int, ok: bool, value: object) -> list:
    return [ANSWER, call_id, ok, value]


def split(frame: object) -> tuple[str, list]:
    """The frame's kind and its remaining fields, checked for shape."""
    if not isinstance(frame, list) or not frame or type(frame[0]) is not str:
        raise WireError("frame: expected a list starting with its kind")
    kind, rest = frame[0], frame[1:]
    if kind == PING and not rest:
        return kind, rest
    if kind == RAFT and len(rest) == 1:
        return kind, rest
    if (
        kind == CALL
        and len(rest) == 3
        and type(rest[0]) is int
        and type(rest[1]) is str
        and isinstance(rest[2], dict)
    ):
        return kind, rest
    if kind == ANSWER and len(rest) == 3 and type(rest[0]) is int and type(rest[1]) is bool:
        return kind, rest
    raise WireError(f"frame: malformed {kind!r} frame")
