"""Synchronous client of the agent's control API (used by the CLI and scripts).

Blocking stdlib sockets, no trio, no rich: shell completion runs the CLI on
every Tab, so importing this module must stay cheap (a test checks that it
does not import trio or rich).

    with Client(parse_addr("unix:///run/raftfleet/agent.sock")) as agent:
        agent.call("group_create", name="g1", replicas=3)
        for event in (watch := agent.stream("drain_watch", timeout_s=600)):
            print(event)
        print(watch.result)

The wire format is documented in `raftfleet_agent.control.protocol`. This
client reads frames with blocking exact-size reads instead of the transport's
`FrameDecoder`: importing `raftfleet_agent.transport` would import trio, and
a blocking reader needs no incremental state. The framing is the same (a
test runs both against each other).

Failures, by whose fault (the CLI maps them to exit codes):

- `ControlError` (and its `Unauthorized`): the agent answered with an error.
- `ConnectError`: the agent cannot be reached; the message names the address
  and suggests a fix.
- `CallTimeout`: no answer in time (the operation may still happen).
- `ConnectionLost`, `ProtocolError`: the connection broke or the agent sent
  garbage.

A client is not thread-safe and runs one request at a time. After a timeout
or a broken connection the socket is dropped (a late reply must not be taken
for the next one) and the next call connects again.
"""

from __future__ import annotations

import os
import re
import socket
import struct
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from types import TracebackType

import msgpack

from raftfleet_agent import paths
from raftfleet_agent.control.protocol import (
    BAD_REQUEST,
    REQUEST_BYTES_MAX,
    RESPONSE_BYTES_MAX,
    ControlError,
    Event,
    Failure,
    Result,
    Unauthorized,
    parse_reply,
)

__all__ = [
    "ENV_ADDR",
    "Address",
    "CallTimeout",
    "Client",
    "ClientError",
    "ConnectError",
    "ConnectionLost",
    "ControlError",
    "ProtocolError",
    "Stream",
    "Unauthorized",
    "default_addr",
    "parse_addr",
    "read_token_file",
]

ENV_ADDR = "RAFTFLEET_ADDR"
_HEADER = struct.Struct(">I")
_UNIX_PATH_BYTES_MAX = 107  # sun_path is 108 bytes with the terminating NUL
_HINT_RUNNING = "is raftfleet-agent running? set --addr or RAFTFLEET_ADDR"
_HINT_TOKEN = "set --token-file or RAFTFLEET_TOKEN_FILE"


# --------------------------------------------------------------------------
# Errors


class ClientError(Exception):
    """We got no valid answer from the agent (as opposed to an error answer)."""


class ConnectError(ClientError):
    """The agent cannot be reached at `addr`; `str()` is ready to show an operator."""

    def __init__(self, addr: Address, reason: str, hint: str = _HINT_RUNNING) -> None:
        super().__init__(f"cannot reach agent at {addr}: {reason} ({hint})")
        self.addr = addr
        self.reason = reason
        self.hint = hint


class CallTimeout(ClientError, TimeoutError):
    """No answer in time. The agent may still carry the operation out."""


class ConnectionLost(ClientError):
    """The connection broke before the answer came."""


class ProtocolError(ClientError):
    """The agent sent something that is not the control protocol."""


# --------------------------------------------------------------------------
# Addresses


@dataclass(frozen=True, slots=True)
class Address:
    """Where the agent listens: a Unix socket `path`, or TCP `host` and `port`."""

    kind: str  # "unix" | "tcp"
    path: str = ""
    host: str = ""
    port: int = 0

    def __str__(self) -> str:
        if self.kind == "unix":
            return f"unix://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"tcp://{host}:{self.port}"


_HOST_PORT_RE = re.compile(r"[^/:\[\]]+:\d+")


def parse_addr(text: str) -> Address:
    """Parse `unix:///path`, `unix:path`, `tcp://host:port` or a plain socket path.

    Raises ValueError with a message for the operator. A relative path is made
    absolute. "host:port" without a scheme is refused rather than taken for a
    file name, because that is almost always a forgotten `tcp://`.
    """
    if not isinstance(text, str) or not text:
        raise ValueError("empty agent address")
    if text.startswith("tcp://"):
        return _parse_tcp(text)
    if text.startswith("unix:"):
        path = text[len("unix://") :] if text.startswith("unix://") else text[len("unix:") :]
    elif "://" in text:
        scheme = text.split("://", 1)[0]
        raise ValueError(
            f"unsupported address scheme {scheme!r} in {text!r}: "
            "use unix:///path/to/agent.sock or tcp://host:port"
        )
    elif _HOST_PORT_RE.fullmatch(text):
        raise ValueError(f"{text!r} looks like HOST:PORT; did you mean tcp://{text}?")
    else:
        path = text
    if not path or "\0" in path:
        raise ValueError(f"bad socket path in {text!r}")
    path = os.path.abspath(path)
    if len(os.fsencode(path)) > _UNIX_PATH_BYTES_MAX:
        raise ValueError(f"socket path {path!r} is longer than {_UNIX_PATH_BYTES_MAX} bytes")
    return Address("unix", path=path)


def _parse_tcp(text: str) -> Address:
    rest = text[len("tcp://") :].rstrip("/")
    if rest.startswith("["):
        host, sep, port = rest[1:].partition("]:")
    else:
        host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isascii() or not port.isdigit():
        raise ValueError(f"bad address {text!r}: expected tcp://HOST:PORT")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"bad address {text!r}: port must be from 1 to 65535")
    return Address("tcp", host=host, port=int(port))


def default_addr(environ: Mapping[str, str] = os.environ) -> Address:
    """$RAFTFLEET_ADDR, else the socket of an agent run by this user or the system's."""
    text = environ.get(ENV_ADDR)
    if text:
        return parse_addr(text)
    return Address("unix", path=paths.find_control_socket(environ))


def read_token_file(path: str) -> bytes:
    """Read a bearer token the way the agent reads its token file (final newline dropped)."""
    with open(path, "rb") as f:
        token = f.read().rstrip(b"\r\n")
    if not token:
        raise ValueError(f"token file {path!r} is empty")
    return token


# --------------------------------------------------------------------------
# The client


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    return deadline - time.monotonic()


def _deadline(timeout: float | None) -> float | None:
    return None if timeout is None else time.monotonic() + timeout


class Client:
    """A connection to one agent, opened on first use.

    `token` is sent (op `auth`) only on TCP, where it is required. `timeout`
    arguments are seconds; None waits as long as it takes.
    """

    def __init__(
        self,
        addr: Address | str,
        token: bytes | str | None = None,
        connect_timeout: float = 3.0,
    ) -> None:
        self.addr = parse_addr(addr) if isinstance(addr, str) else addr
        self._token = token.encode() if isinstance(token, str) else token
        self.connect_timeout = connect_timeout
        self._sock: socket.socket | None = None
        self._next_id = 1
        self._stream: Stream | None = None

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection (a stream in progress ends too)."""
        self._drop()

    def connect(self) -> None:
        """Connect (and authenticate on TCP) now instead of at the first call."""
        if self._sock is not None:
            return
        if self.addr.kind == "tcp" and self._token is None:
            raise Unauthorized(f"the agent at {self.addr} requires a token ({_HINT_TOKEN})")
        self._sock = self._open_socket()
        if self.addr.kind == "tcp":
            self._authenticate()

    def call(self, op: str, /, timeout: float | None = None, **args: object) -> object:
        """Run `op` and return its result; raise ControlError if the agent refused.

        `timeout` bounds the whole call. Events of a streaming op are skipped.
        """
        deadline = _deadline(timeout)
        request_id = self._send_request(op, args, deadline)
        while True:
            reply = self._read_reply(request_id, deadline)
            if isinstance(reply, Result):
                return reply.value
            if isinstance(reply, Failure):
                raise reply.error

    def stream(self, op: str, /, timeout: float | None = None, **args: object) -> Stream:
        """Start a streaming op; iterate the returned `Stream` for its events.

        `timeout` bounds the wait for each next event (or the final answer).
        """
        request_id = self._send_request(op, args, _deadline(timeout))
        self._stream = Stream(self, request_id, timeout)
        return self._stream

    # Connection

    def _open_socket(self) -> socket.socket:
        addr = self.addr
        try:
            if addr.kind == "tcp":
                return socket.create_connection((addr.host, addr.port), self.connect_timeout)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.settimeout(self.connect_timeout)
                sock.connect(addr.path)
            except BaseException:
                sock.close()
                raise
            return sock
        except socket.gaierror:
            raise ConnectError(addr, f"cannot resolve host {addr.host!r}", "check --addr") from None
        except FileNotFoundError:
            raise ConnectError(addr, "no such file") from None
        except PermissionError:
            raise ConnectError(
                addr, "permission denied", "is your user in the socket's group? or use sudo"
            ) from None
        except ConnectionRefusedError:
            reason = "connection refused" + (" (stale socket)" if addr.kind == "unix" else "")
            raise ConnectError(addr, reason) from None
        except TimeoutError:
            raise ConnectError(addr, f"no answer within {self.connect_timeout:g} s") from None
        except OSError as exc:
            raise ConnectError(addr, (exc.strerror or str(exc)).lower()) from None

    def _authenticate(self) -> None:
        deadline = _deadline(self.connect_timeout)
        request_id = self._send_request("auth", {"token": self._token}, deadline)
        try:
            reply = self._read_reply(request_id, deadline)
        except CallTimeout:
            raise ConnectError(self.addr, "no answer to authentication") from None
        if isinstance(reply, Failure):
            self._drop()
            if isinstance(reply.error, Unauthorized):
                message = f"the agent at {self.addr} refused the token ({_HINT_TOKEN})"
                raise Unauthorized(message, reply.error.details)
            raise reply.error

    def _drop(self) -> None:
        """Forget the connection; whatever it still carries is for nobody."""
        if self._stream is not None:
            self._stream.done = True
            self._stream = None
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    # Frames

    def _send_request(self, op: str, args: Mapping[str, object], deadline: float | None) -> int:
        if self._stream is not None and not self._stream.done:
            raise RuntimeError("a stream is in progress on this client: finish or close it first")
        if self._sock is None:
            self.connect()
        assert self._sock is not None
        request_id = self._next_id
        self._next_id += 1
        body = msgpack.packb({"id": request_id, "op": op, "args": dict(args)}, use_bin_type=True)
        if len(body) > REQUEST_BYTES_MAX:
            raise ControlError(
                BAD_REQUEST, f"request of {len(body)} bytes exceeds the cap of {REQUEST_BYTES_MAX}"
            )
        try:
            self._sock.settimeout(_remaining_or_fail(deadline))
            self._sock.sendall(_HEADER.pack(len(body)) + body)
        except TimeoutError:
            self._drop()
            raise CallTimeout(f"{op}: the agent at {self.addr} does not read requests") from None
        except OSError as exc:
            # The agent may have said why before hanging up (refused peer, busy).
            goodbye = self._read_goodbye()
            self._drop()
            if goodbye is not None:
                raise goodbye from None
            raise ConnectionLost(f"lost the connection to {self.addr}: {exc}") from None
        return request_id

    def _read_goodbye(self) -> ControlError | None:
        try:
            reply = self._read_frame(_deadline(0.5))
        except (ClientError, OSError):
            return None
        return reply.error if isinstance(reply, Failure) else None

    def _read_reply(self, request_id: int, deadline: float | None) -> Result | Failure | Event:
        """The next frame for `request_id`; connection-level errors are raised."""
        reply = self._read_frame(deadline)
        if isinstance(reply, Failure) and reply.id is None:
            self._drop()  # the agent closes after a connection-level error
            raise reply.error
        if reply.id != request_id:
            self._drop()
            raise ProtocolError(f"reply for request id {reply.id}, expected {request_id}")
        return reply

    def _read_frame(self, deadline: float | None) -> Result | Failure | Event:
        (length,) = _HEADER.unpack(self._recv_exact(_HEADER.size, deadline))
        if not 0 < length <= RESPONSE_BYTES_MAX:
            self._drop()
            raise ProtocolError(f"{self.addr} sent a frame of bad length {length}")
        body = self._recv_exact(length, deadline)
        try:
            return parse_reply(msgpack.unpackb(body, raw=False, strict_map_key=False))
        except Exception as exc:  # msgpack raises many types on garbage
            self._drop()
            raise ProtocolError(f"{self.addr} sent an invalid frame: {exc}") from None

    def _recv_exact(self, size: int, deadline: float | None) -> bytes:
        assert self._sock is not None
        chunks: list[bytes] = []
        missing = size
        while missing:
            try:
                self._sock.settimeout(_remaining_or_fail(deadline))
                chunk = self._sock.recv(min(missing, 1 << 20))
            except TimeoutError:
                self._drop()
                raise CallTimeout(f"no answer from the agent at {self.addr} in time") from None
            except OSError as exc:
                self._drop()
                raise ConnectionLost(f"lost the connection to {self.addr}: {exc}") from None
            if not chunk:
                self._drop()
                raise ConnectionLost(f"the agent at {self.addr} closed the connection")
            chunks.append(chunk)
            missing -= len(chunk)
        return b"".join(chunks)


def _remaining_or_fail(deadline: float | None) -> float | None:
    """The socket timeout left before `deadline`; raise TimeoutError if it passed."""
    remaining = _remaining(deadline)
    if remaining is not None and remaining <= 0:
        raise TimeoutError
    return remaining


class Stream(Iterator[dict]):
    """The events of one streaming op, then its final answer.

    Iterating yields each event (a dict). The iteration ends at the final
    response: `result` then holds its result; an error response raises
    ControlError instead. `close()` abandons the stream (and the connection,
    because the agent would keep sending on it).
    """

    def __init__(self, client: Client, request_id: int, timeout: float | None) -> None:
        self._client = client
        self.request_id = request_id
        self._timeout = timeout
        self.done = False
        self.result: object = None

    def __iter__(self) -> Stream:
        return self

    def __next__(self) -> dict:
        if self.done:
            raise StopIteration
        try:
            reply = self._client._read_reply(self.request_id, _deadline(self._timeout))
        except BaseException:
            self.done = True
            raise
        if isinstance(reply, Event):
            return reply.event
        self.done = True
        self._client._stream = None
        if isinstance(reply, Failure):
            raise reply.error
        self.result = reply.value
        raise StopIteration

    def close(self) -> None:
        if not self.done:
            self._client._drop()

    def __enter__(self) -> Stream:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
