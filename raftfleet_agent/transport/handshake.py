"""The peer handshake: version, cluster id, names, and mutual HMAC authentication.

Theory of operation
-------------------
Three frames, each a msgpack map (the framing of framing.py, with a small cap
so an unauthenticated stranger cannot make us buffer megabytes):

    dialer   -> hello   {t, version, cluster, name, boot, nonce}        (nonce_a)
    acceptor -> welcome {t, version, cluster, name, boot, nonce, mac}   (nonce_b, mac_b)
    dialer   -> auth    {t, mac}                                        (mac_a)

mac_b = HMAC-SHA256(secret, transcript("acceptor")) and mac_a the same with
"dialer". The transcript is a msgpack list (length-prefixed, so no two
different inputs concatenate to the same bytes) of the role, the version, both
cluster ids, names, boot ids and nonces as sent. Each side proves it knows the
secret over a nonce the *other* side just drew, so a recorded hello/auth pair
replayed on a new connection fails, and the role label stops a mac being
reflected back in the other direction.

`boot` is a random id drawn once per transport instance: it lets the peer tell
a connection from a restarted agent (which replaces the old one) from a second
connection of a simultaneous dial (which is resolved by name order).

A side that sees a version or cluster mismatch sends {t: "refused", reason}
before closing, so the operator of the other side reads a clear reason rather
than "connection closed". The whole handshake runs under one deadline.

Cancellation: the handshake functions neither close nor keep the stream; the
caller closes it on HandshakeError or cancellation.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Final

import attrs
import msgpack
import trio

from raftfleet_agent.transport.framing import NEED_DATA, FrameDecoder, FrameError, encode_frame

__all__ = [
    "HANDSHAKE_FRAME_BYTES_MAX",
    "HANDSHAKE_TIMEOUT_S",
    "PROTOCOL_VERSION",
    "HandshakeError",
    "LocalIdentity",
    "PeerIdentity",
    "handshake_as_acceptor",
    "handshake_as_dialer",
]

PROTOCOL_VERSION: Final = 1
HANDSHAKE_TIMEOUT_S: Final = 5.0
HANDSHAKE_FRAME_BYTES_MAX: Final = 4096
NONCE_BYTES: Final = 32
BOOT_ID_BYTES: Final = 16
NAME_CHARS_MAX: Final = 255
SECRET_BYTES_MIN: Final = 16
_RECEIVE_BYTES: Final = 4096
_MAC_DOMAIN: Final = "raftfleet-peer-handshake"


class HandshakeError(Exception):
    """The handshake failed; `code` says why, machine-readably.

    Codes: "version", "cluster" (mismatch), "auth" (bad mac: wrong secret or a
    replay), "name" (unexpected or invalid agent name), "protocol" (malformed
    message), "refused" (the peer refused us and said why), "closed" (the peer
    hung up), "timeout" (the deadline passed).
    """

    def __init__(self, code: str, reason: str) -> None:
        super().__init__(f"{code}: {reason}")
        self.code = code
        self.reason = reason


def _check_name(name: object) -> str:
    if type(name) is not str or not 0 < len(name) <= NAME_CHARS_MAX:
        raise ValueError(f"agent name must be 1..{NAME_CHARS_MAX} characters")
    return name


@attrs.frozen(kw_only=True)
class LocalIdentity:
    """Who we are: our name, the cluster we belong to and its shared secret.

    `cluster=None` means "not known yet" (a joining agent): we accept the
    peer's cluster id, and the secret alone authenticates.
    """

    name: str = attrs.field(validator=lambda _s, _a, v: _check_name(v))
    cluster: str | None
    secret: bytes = attrs.field(repr=False)
    boot_id: bytes = attrs.field(factory=lambda: secrets.token_bytes(BOOT_ID_BYTES))

    @secret.validator
    def _check_secret(self, _attr: object, value: bytes) -> None:
        if type(value) is not bytes or len(value) < SECRET_BYTES_MIN:
            raise ValueError(f"the cluster secret must be at least {SECRET_BYTES_MIN} bytes")


@attrs.frozen(kw_only=True)
class PeerIdentity:
    """Who the authenticated peer is, and the cluster id both sides agreed on."""

    name: str
    cluster: str | None
    boot_id: bytes


def _mac(secret: bytes, role: str, fields: list[object]) -> bytes:
    transcript = msgpack.packb([_MAC_DOMAIN, role, *fields], use_bin_type=True)
    return hmac.new(secret, transcript, hashlib.sha256).digest()


async def _send(stream: trio.abc.SendStream, msg: dict[str, object]) -> None:
    try:
        await stream.send_all(encode_frame(msg))
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise HandshakeError("closed", f"could not send: {exc!r}") from None


async def _receive(stream: trio.abc.ReceiveStream, decoder: FrameDecoder) -> dict[str, object]:
    """Read the next handshake message; refusals from the peer become HandshakeError."""
    try:
        msg = decoder.next_frame()
        while msg is NEED_DATA:
            data = await stream.receive_some(_RECEIVE_BYTES)
            if not data:
                raise HandshakeError("closed", "the peer closed the connection")
            decoder.feed(data)
            msg = decoder.next_frame()
    except FrameError as exc:
        raise HandshakeError("protocol", f"malformed handshake frame: {exc}") from None
    except (trio.BrokenResourceError, trio.ClosedResourceError, OSError) as exc:
        raise HandshakeError("closed", f"could not receive: {exc!r}") from None
    if type(msg) is not dict:
        raise HandshakeError("protocol", "handshake message is not a map")
    if msg.get("t") == "refused":
        reason = msg.get("reason")
        raise HandshakeError("refused", reason if type(reason) is str else "no reason given")
    return msg


def _field(msg: dict[str, object], key: str, kind: type, size: int | None = None) -> object:
    value = msg.get(key)
    if type(value) is not kind or (size is not None and len(value) != size):  # type: ignore[arg-type]
        raise HandshakeError("protocol", f"handshake field {key!r} missing or invalid")
    return value


def _parse_peer(
    msg: dict[str, object], kind: str, me: LocalIdentity
) -> tuple[str | None, str, bytes, bytes]:
    """Validate a hello/welcome; return (cluster, name, boot, nonce) as sent."""
    if msg.get("t") != kind:
        raise HandshakeError("protocol", f"expected {kind!r}, got {msg.get('t')!r}")
    # The version comes first: a future version may change every other field.
    version = msg.get("version")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise HandshakeError(
            "version", f"protocol version mismatch: we speak {PROTOCOL_VERSION}, peer {version!r}"
        )
    cluster = msg.get("cluster")
    if cluster is not None and type(cluster) is not str:
        raise HandshakeError("protocol", "handshake field 'cluster' invalid")
    if cluster is not None and me.cluster is not None and cluster != me.cluster:
        raise HandshakeError(
            "cluster", f"cluster id mismatch: we are in {me.cluster!r}, peer in {cluster!r}"
        )
    name = _field(msg, "name", str)
    try:
        _check_name(name)
    except ValueError:
        raise HandshakeError("name", "invalid agent name") from None
    if name == me.name:
        raise HandshakeError("name", f"peer claims our own name {name!r}")
    boot = _field(msg, "boot", bytes, BOOT_ID_BYTES)
    nonce = _field(msg, "nonce", bytes, NONCE_BYTES)
    return cluster, name, boot, nonce  # type: ignore[return-value]


async def _refuse(stream: trio.abc.SendStream, exc: HandshakeError) -> None:
    """Tell the peer why, if the reason is not about authentication; best effort."""
    if exc.code in ("version", "cluster", "name", "protocol"):
        try:
            await stream.send_all(encode_frame({"t": "refused", "reason": exc.reason}))
        except (trio.BrokenResourceError, trio.ClosedResourceError, OSError):
            pass


async def handshake_as_dialer(
    stream: trio.abc.Stream,
    decoder: FrameDecoder,
    me: LocalIdentity,
    *,
    expected_peer: str | None = None,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> PeerIdentity:
    """Run the dialer's side on a fresh connection; return the authenticated peer.

    `decoder` should have a small cap (HANDSHAKE_FRAME_BYTES_MAX); bytes the
    peer sent after the handshake stay buffered in it. `expected_peer`, if
    given, is the name we meant to dial: another name is a HandshakeError.
    Raises HandshakeError on any failure, including the deadline passing.
    Cancellation propagates; the caller closes the stream either way.
    """
    with trio.move_on_after(timeout_s):
        return await _dial(stream, decoder, me, expected_peer)
    raise HandshakeError("timeout", f"no handshake within {timeout_s} s")


async def _dial(
    stream: trio.abc.Stream, decoder: FrameDecoder, me: LocalIdentity, expected: str | None
) -> PeerIdentity:
    nonce_a = secrets.token_bytes(NONCE_BYTES)
    hello = {"t": "hello", "version": PROTOCOL_VERSION, "cluster": me.cluster,
             "name": me.name, "boot": me.boot_id, "nonce": nonce_a}  # fmt: skip
    await _send(stream, hello)
    welcome = await _receive(stream, decoder)
    try:
        cluster_b, name_b, boot_b, nonce_b = _parse_peer(welcome, "welcome", me)
        if expected is not None and name_b != expected:
            raise HandshakeError("name", f"dialed {expected!r} but reached {name_b!r}")
    except HandshakeError as exc:
        await _refuse(stream, exc)
        raise
    mac_b = _field(welcome, "mac", bytes)
    fields = [PROTOCOL_VERSION, me.cluster, cluster_b, me.name, name_b,
              me.boot_id, boot_b, nonce_a, nonce_b]  # fmt: skip
    if not hmac.compare_digest(mac_b, _mac(me.secret, "acceptor", fields)):  # type: ignore[arg-type]
        raise HandshakeError("auth", f"{name_b!r} failed to prove it knows the cluster secret")
    await _send(stream, {"t": "auth", "mac": _mac(me.secret, "dialer", fields)})
    return PeerIdentity(name=name_b, cluster=me.cluster or cluster_b, boot_id=boot_b)


async def handshake_as_acceptor(
    stream: trio.abc.Stream,
    decoder: FrameDecoder,
    me: LocalIdentity,
    *,
    timeout_s: float = HANDSHAKE_TIMEOUT_S,
) -> PeerIdentity:
    """Run the acceptor's side on a fresh connection; return the authenticated peer.

    Same contract as `handshake_as_dialer`: HandshakeError on failure or
    deadline, cancellation propagates, the caller owns the stream.
    """
    with trio.move_on_after(timeout_s):
        return await _accept(stream, decoder, me)
    raise HandshakeError("timeout", f"no handshake within {timeout_s} s")


async def _accept(
    stream: trio.abc.Stream, decoder: FrameDecoder, me: LocalIdentity
) -> PeerIdentity:
    hello = await _receive(stream, decoder)
    try:
        cluster_a, name_a, boot_a, nonce_a = _parse_peer(hello, "hello", me)
    except HandshakeError as exc:
        await _refuse(stream, exc)
        raise
    nonce_b = secrets.token_bytes(NONCE_BYTES)
    fields = [PROTOCOL_VERSION, cluster_a, me.cluster, name_a, me.name,
              boot_a, me.boot_id, nonce_a, nonce_b]  # fmt: skip
    welcome = {"t": "welcome", "version": PROTOCOL_VERSION, "cluster": me.cluster,
               "name": me.name, "boot": me.boot_id, "nonce": nonce_b,
               "mac": _mac(me.secret, "acceptor", fields)}  # fmt: skip
    await _send(stream, welcome)
    auth = await _receive(stream, decoder)
    if auth.get("t") != "auth":
        raise HandshakeError("protocol", f"expected 'auth', got {auth.get('t')!r}")
    mac_a = _field(auth, "mac", bytes)
    if not hmac.compare_digest(mac_a, _mac(me.secret, "dialer", fields)):  # type: ignore[arg-type]
        raise HandshakeError("auth", f"{name_a!r} failed to prove it knows the cluster secret")
    return PeerIdentity(name=name_a, cluster=me.cluster or cluster_a, boot_id=boot_a)
