"""Length-prefixed msgpack frames: the wire format of peer and control connections.

This module does no I/O and reads no clock; it turns values into bytes and a
byte stream back into values, so the same code serves the trio transport, the
control server, the synchronous CLI client and the tests.

Theory of operation
-------------------
A frame is a 4-byte big-endian body length followed by the body, one msgpack
value. Zero-length bodies are invalid (no msgpack value is zero bytes long, so
a zero length can only be garbage). The decoder treats its input as hostile:

- it checks a frame's declared length against the cap as soon as the 4 length
  bytes are in, before it buffers any of the body, so a peer cannot make us
  hold more than one capped frame (plus one read) in memory;
- any body that msgpack rejects, for whatever reason, raises `FrameError` and
  nothing else; after that the decoder is broken for good, because the stream
  has lost its frame boundaries and the connection must be closed.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Iterable, Iterator
from typing import Final

import msgpack

__all__ = [
    "FRAME_BYTES_MAX",
    "HEADER_BYTES",
    "NEED_DATA",
    "FrameDecoder",
    "FrameError",
    "encode_frame",
    "encode_frames",
]

FRAME_BYTES_MAX: Final = 16 * 1024 * 1024  # default cap on one frame's body
HEADER_BYTES: Final = 4

_HEADER = struct.Struct(">I")

# Everything msgpack's C and pure-Python unpackers were seen to raise on
# hostile bodies: FormatError/StackError/ExtraData/UnicodeDecodeError are
# ValueErrors, an unhashable map key is a TypeError, deep nesting in the
# fallback unpacker is a RecursionError, a bad timestamp ext an OverflowError.
_UNPACK_ERRORS: Final = (
    ValueError,
    TypeError,
    OverflowError,
    RecursionError,
    MemoryError,
    msgpack.UnpackException,
)


class FrameError(ValueError):
    """The byte stream violates the framing (a remote violation, not a local bug)."""


class _NeedData:
    """Sentinel type: no complete frame is buffered yet (a decoded value may be None)."""

    _instance: _NeedData | None = None

    def __new__(cls) -> _NeedData:
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "NEED_DATA"


NEED_DATA: Final = _NeedData()


_packers = threading.local()


def _pack(obj: object) -> bytes:
    # One Packer per thread, reused: `msgpack.packb` builds a new one per call,
    # which was half the cost of packing a reply. A Packer resets itself when
    # packing fails, so a bad value cannot leave bytes behind for the next.
    try:
        packer = _packers.packer
    except AttributeError:
        packer = _packers.packer = msgpack.Packer(use_bin_type=True)
    return packer.pack(obj)


def encode_frame(obj: object, frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """Return one frame holding `obj`.

    Raises TypeError if msgpack cannot encode `obj` and ValueError if the body
    would exceed `frame_bytes_max`: both are local misuse, and refusing here
    beats having the receiver drop the whole connection.
    """
    body = _pack(obj)
    if len(body) > frame_bytes_max:
        raise ValueError(f"frame body of {len(body)} bytes exceeds the cap of {frame_bytes_max}")
    return _HEADER.pack(len(body)) + body


def encode_frames(objs: Iterable[object], frame_bytes_max: int = FRAME_BYTES_MAX) -> bytes:
    """Return the frames of all `objs` concatenated, ready for one socket write.

    One join instead of a concatenation per frame: the writer of a busy peer
    connection coalesces hundreds of small frames per write.
    """
    parts: list[bytes] = []
    for obj in objs:
        body = _pack(obj)
        if len(body) > frame_bytes_max:
            raise ValueError(
                f"frame body of {len(body)} bytes exceeds the cap of {frame_bytes_max}"
            )
        parts.append(_HEADER.pack(len(body)))
        parts.append(body)
    return b"".join(parts)


def decode_body(body: bytes | bytearray | memoryview) -> object:
    """Decode one frame body, raising `FrameError` for anything invalid."""
    try:
        return msgpack.unpackb(body, raw=False, strict_map_key=False)
    except _UNPACK_ERRORS as exc:
        raise FrameError(f"frame body is not valid msgpack ({type(exc).__name__})") from None


class FrameDecoder:
    """Incremental decoder: `feed()` bytes in, get values out in order.

    `next_frame()` returns the next decoded value or `NEED_DATA`; iterating
    yields every value that is complete. Both raise `FrameError` on a
    violation, and so does `feed()` when the next frame's declared length is
    invalid. `frame_bytes_max` may be raised later (the handshake reads with a
    small cap, then the connection switches to the full one).
    """

    __slots__ = ("_broken", "_buf", "_pos", "frame_bytes_max")

    def __init__(self, frame_bytes_max: int = FRAME_BYTES_MAX) -> None:
        if frame_bytes_max < 1:
            raise ValueError("frame_bytes_max must be at least 1")
        self.frame_bytes_max = frame_bytes_max
        self._buf = bytearray()
        # Invariant: 0 <= _pos <= len(_buf); bytes before _pos are consumed.
        self._pos = 0
        self._broken: FrameError | None = None

    @property
    def buffered_bytes(self) -> int:
        """Bytes received but not yet returned as frames."""
        return len(self._buf) - self._pos

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Append received bytes; raise `FrameError` if the next length is invalid."""
        if self._broken is not None:
            raise self._broken
        if self._pos and self._pos == len(self._buf):
            # Everything consumed: restart the buffer instead of growing it.
            self._buf.clear()
            self._pos = 0
        self._buf += data
        self._check_length()

    def _check_length(self) -> int | None:
        """Return the next frame's body length, or None if its header is incomplete."""
        pos = self._pos
        if len(self._buf) - pos < HEADER_BYTES:
            return None
        (length,) = _HEADER.unpack_from(self._buf, pos)
        if length == 0:
            self._fail("zero-length frame")
        if length > self.frame_bytes_max:
            self._fail(f"frame of {length} bytes exceeds the cap of {self.frame_bytes_max}")
        return length

    def _fail(self, reason: str) -> None:
        self._broken = FrameError(reason)
        raise self._broken

    def next_frame(self) -> object:
        """Return the next complete frame's value, or `NEED_DATA`."""
        if self._broken is not None:
            raise self._broken
        length = self._check_length()
        if length is None:
            return NEED_DATA
        start = self._pos + HEADER_BYTES
        end = start + length
        if end > len(self._buf):
            return NEED_DATA
        body = bytes(self._buf[start:end])
        self._pos = end
        if end >= 65536 and end * 2 >= len(self._buf):
            # Drop consumed bytes once they are most of the buffer, so a long
            # burst never keeps a buffer of everything it ever received.
            del self._buf[:end]
            self._pos = 0
        try:
            return decode_body(body)
        except FrameError as exc:
            self._broken = exc
            raise

    def __iter__(self) -> Iterator[object]:
        while True:
            obj = self.next_frame()
            if obj is NEED_DATA:
                return
            yield obj
