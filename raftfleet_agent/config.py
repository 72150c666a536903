"""The agent's configuration: one validated record merged from four layers.

Theory of operation. Every setting has one name (snake_case) used everywhere:
the TOML key (`data_dir = "..."`), the environment variable (upper case with a
`RAFTFLEET_` prefix: `RAFTFLEET_DATA_DIR`) and the click parameter
(`--data-dir`, which click hands us as `data_dir`). `load_config` reads the
layers, highest precedence first:

    command line  >  RAFTFLEET_* environment  >  config file  >  defaults

Every value a layer provides is parsed and range-checked, even one a higher
layer overrides: a broken config file is a bug waiting for the day the
override goes away. Files named by settings (the cluster secret, the control
token) are read only for the winning value. Then the cross-setting rules run
(advertise vs. listen, control_listen needs a token, ...).

Every problem raises `ConfigError` with one line that names where the value
came from and the setting, e.g.

    config file /etc/raftfleet/agent.toml: unknown key 'lisen' (did you mean 'listen'?)
    environment RAFTFLEET_ELECTION_TICKS: expected an integer, got 'ten'

Secrets never appear in a repr or an error message.
"""

from __future__ import annotations

import difflib
import ipaddress
import logging
import math
import os
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import attrs

from raftfleet_agent import paths

ENV_PREFIX = "RAFTFLEET_"
ENV_CONFIG = "RAFTFLEET_CONFIG"
# Variables read by the `raftfleet` CLI, not the agent. An operator's shell
# often exports them, so the agent must not reject them as unknown settings.
CLI_ENV_VARS = frozenset({"RAFTFLEET_ADDR", "RAFTFLEET_OUTPUT", "RAFTFLEET_TOKEN_FILE"})

LOG_LEVELS = ("debug", "info", "warning", "error", "critical")
SECRET_BYTES_MIN = 16
# sun_path is 108 bytes on Linux, including the terminating NUL.
UNIX_SOCKET_PATH_BYTES_MAX = 107

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_NAME_RULE = "letters, digits, '.', '_', '-'; starting with a letter or digit; at most 63"
_HOST_LABEL_RE = re.compile(r"[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?")


class ConfigError(Exception):
    """The configuration is unusable. `str()` is one line for the operator.

    `setting` and `source` (e.g. "environment RAFTFLEET_LISTEN") are there
    for programs; either may be None for problems not tied to one setting.
    """

    def __init__(self, message: str, *, setting: str | None = None, source: str | None = None):
        super().__init__(message)
        self.setting = setting
        self.source = source


class _Problem(ValueError):
    """A value is wrong; the caller knows where it came from and adds that."""


# --------------------------------------------------------------------------
# Addresses


@attrs.frozen(slots=True)
class HostPort:
    """A TCP address as the operator wrote it. IPv6 hosts are kept unbracketed."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> HostPort:
        """Parse "host:port", "1.2.3.4:port" or "[v6]:port"; raise ValueError."""
        expected = "expected HOST:PORT or [IPv6]:PORT"
        if text.startswith("["):
            close = text.find("]")
            if close < 0 or text[close + 1 : close + 2] != ":":
                raise _Problem(f"bad address {text!r}: {expected}")
            host, port_text = text[1:close], text[close + 2 :]
            try:
                ipaddress.IPv6Address(host)
            except ValueError:
                raise _Problem(f"bad address {text!r}: {host!r} is not an IPv6 address") from None
        else:
            host, sep, port_text = text.rpartition(":")
            if not sep or not host:
                raise _Problem(f"bad address {text!r}: {expected}")
            if ":" in host:
                raise _Problem(f"bad address {text!r}: write IPv6 addresses as [ADDR]:PORT")
            if not _valid_host(host):
                raise _Problem(f"bad address {text!r}: {host!r} is not a host name or IPv4 address")
        if not (port_text.isascii() and port_text.isdigit()) or not 1 <= int(port_text) <= 65535:
            raise _Problem(f"bad address {text!r}: port must be a number from 1 to 65535")
        return cls(host, int(port_text))

    @property
    def is_wildcard(self) -> bool:
        """True for 0.0.0.0 and ::, which can be bound but not connected to."""
        try:
            return ipaddress.ip_address(self.host).is_unspecified
        except ValueError:
            return False

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _valid_host(host: str) -> bool:
    labels = host.split(".")
    if len(host) > 253 or not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        return False
    if all(label.isdigit() for label in labels):
        # All-numeric is an IPv4 address or nothing ("256.1.1.1", "12").
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return False
    return True


# --------------------------------------------------------------------------
# The record


@attrs.frozen(kw_only=True)
class AgentConfig:
    """Everything an agent needs to start. Built by `load_config`.

    Constructing one directly (tests, `attrs.evolve`) runs the same checks
    and raises ValueError. Paths are absolute.
    """

    name: str
    data_dir: str
    listen: HostPort
    advertise: HostPort  # what peers dial; defaults to `listen`
    control_socket: str
    cluster_secret_file: str
    cluster_secret: bytes = attrs.field(repr=False)
    control_listen: HostPort | None = None
    control_token_file: str | None = None
    control_token: bytes | None = attrs.field(default=None, repr=False)
    zone: str | None = None
    join: tuple[HostPort, ...] = ()
    in_memory: bool = False
    log_level: str = "info"
    metrics_listen: HostPort | None = None
    tick_interval_s: float = 0.1
    election_ticks: int = 10
    heartbeat_ticks: int = 1
    reconcile_interval_s: float = 5.0
    purge_window_s: float = 600.0
    max_moves_in_flight: int = 16
    shutdown_budget_s: float = 10.0
    snapshot_every_entries: int = 10000
    config_file: str | None = None  # the file that was read, if any (for status output)

    def __attrs_post_init__(self) -> None:
        for name, spec in SPECS.items():
            value = getattr(self, name)
            if value is None and not spec.required:
                continue
            try:
                _check_typed(spec, value)
            except _Problem as exc:
                raise ValueError(f"{name}: {exc}") from None
        for setting, message in _cross_problems(attrs.asdict(self, recurse=False)):
            raise ValueError(f"{setting}: {message}")

    @property
    def log_level_no(self) -> int:
        """The `logging` module's number for `log_level`."""
        return logging.getLevelNamesMapping()[self.log_level.upper()]

    @property
    def election_timeout_s(self) -> float:
        return self.election_ticks * self.tick_interval_s


# --------------------------------------------------------------------------
# Settings table


@attrs.frozen
class _Spec:
    kind: str  # str | name | path | socket | addr | addrs | bool | int | float | level
    default: Any = None  # a value, or a callable(ctx) for environment-dependent ones
    required: bool = False
    minimum: float | None = None
    exclusive: bool = False  # minimum itself is not allowed
    env: bool = True  # may come from the environment / file / command line
    secret: bool = False  # derived, never configured directly


@attrs.frozen
class _Ctx:
    environ: Mapping[str, str]
    euid: int | None
    hostname: str | None


SPECS: dict[str, _Spec] = {
    "name": _Spec("name", default=lambda c: paths.default_name(c.hostname), required=True),
    "data_dir": _Spec(
        "path", default=lambda c: paths.default_data_dir(c.environ, c.euid), required=True
    ),
    "listen": _Spec("addr", required=True),
    "advertise": _Spec("addr"),
    "control_socket": _Spec(
        "socket", default=lambda c: paths.default_control_socket(c.environ, c.euid), required=True
    ),
    "control_listen": _Spec("addr"),
    "control_token_file": _Spec("path"),
    "cluster_secret_file": _Spec("path", required=True),
    "zone": _Spec("name"),
    "join": _Spec("addrs", default=()),
    "in_memory": _Spec("bool", default=False),
    "log_level": _Spec("level", default="info"),
    "metrics_listen": _Spec("addr"),
    "tick_interval_s": _Spec("float", default=0.1, minimum=0, exclusive=True),
    "election_ticks": _Spec("int", default=10, minimum=2),
    "heartbeat_ticks": _Spec("int", default=1, minimum=1),
    "reconcile_interval_s": _Spec("float", default=5.0, minimum=0, exclusive=True),
    "purge_window_s": _Spec("float", default=600.0, minimum=0, exclusive=True),
    "max_moves_in_flight": _Spec("int", default=16, minimum=1),
    "shutdown_budget_s": _Spec("float", default=10.0, minimum=0),
    "snapshot_every_entries": _Spec("int", default=10000, minimum=1),
    # Derived from the files above; not settings an operator writes.
    "cluster_secret": _Spec("secret", required=True, env=False, secret=True),
    "control_token": _Spec("secret", env=False, secret=True),
    "config_file": _Spec("path", env=False),
}

SETTING_NAMES: tuple[str, ...] = tuple(n for n, s in SPECS.items() if s.env)


def env_var(setting: str) -> str:
    """The environment variable of a setting: `data_dir` -> `RAFTFLEET_DATA_DIR`."""
    return ENV_PREFIX + setting.upper()


def _option(setting: str) -> str:
    return "--" + setting.replace("_", "-")


# --------------------------------------------------------------------------
# Parsing one value


_TOML_TYPE_NAMES = {str: "string", int: "integer", float: "float", bool: "boolean"}


def _got(raw: object, *, text: bool = False) -> str:
    """Describe a wrong value; a typed layer says its type ("string '10'")."""
    if isinstance(raw, str) and text:
        return repr(raw)
    if isinstance(raw, list | tuple):
        return "an array"
    if isinstance(raw, dict):
        return "a table"
    kind = _TOML_TYPE_NAMES.get(type(raw), type(raw).__name__)
    return f"{kind} {raw!r}"


def _parse(spec: _Spec, raw: object, *, text: bool, base_dir: str | None) -> Any:
    """Turn a raw layer value into the typed value; raise _Problem.

    `text` is true for environment values and for strings from the command
    line: numbers and booleans are then accepted in their written form. TOML
    values are already typed, and a string where a number belongs is an error.
    """
    kind = spec.kind
    if kind in ("str", "name", "path", "socket", "level", "addr"):
        if not isinstance(raw, str):
            if kind == "addr" and isinstance(raw, HostPort):
                return raw
            raise _Problem(f"expected a string, got {_got(raw)}")
        value: Any = raw
        if kind == "addr":
            value = HostPort.parse(raw)
        elif kind in ("path", "socket"):
            value = _absolute(raw, base_dir)
        elif kind == "level":
            value = raw.lower()
        _check_typed(spec, value)
        return value
    if kind == "addrs":
        return _parse_addrs(raw, text=text)
    if kind == "bool":
        return _parse_bool(raw, text=text)
    if kind == "int":
        value = _parse_int(raw, text=text)
    elif kind == "float":
        value = _parse_float(raw, text=text)
    else:
        raise AssertionError(kind)
    _check_typed(spec, value)
    return value


def _absolute(raw: str, base_dir: str | None) -> str:
    if not raw or "\0" in raw:
        raise _Problem(f"bad path {raw!r}")
    # Relative paths in a config file are relative to that file, like
    # includes in most daemons; elsewhere to the working directory.
    return os.path.abspath(os.path.join(base_dir, raw) if base_dir else raw)


def _parse_addrs(raw: object, *, text: bool) -> tuple[HostPort, ...]:
    if isinstance(raw, str) and text:
        items: list[object] = [item.strip() for item in raw.split(",") if item.strip()]
    elif isinstance(raw, list | tuple):
        items = list(raw)
    else:
        raise _Problem(f"expected a list of HOST:PORT strings, got {_got(raw)}")
    out = []
    for item in items:
        if isinstance(item, HostPort):
            out.append(item)
        elif isinstance(item, str):
            out.append(HostPort.parse(item))
        else:
            raise _Problem(f"expected a list of HOST:PORT strings, got an item {_got(item)}")
    return tuple(out)


_TRUE_WORDS = ("1", "true", "yes", "on")
_FALSE_WORDS = ("0", "false", "no", "off")


def _parse_bool(raw: object, *, text: bool) -> bool:
    if isinstance(raw, bool):
        return raw
    if text and isinstance(raw, str):
        word = raw.strip().lower()
        if word in _TRUE_WORDS:
            return True
        if word in _FALSE_WORDS:
            return False
        raise _Problem(f"expected 1/true/yes/on or 0/false/no/off, got {raw!r}")
    raise _Problem(f"expected a boolean, got {_got(raw)}")


def _parse_int(raw: object, *, text: bool) -> int:
    if isinstance(raw, int) and not isinstance(raw, bool):
        return raw
    if text and isinstance(raw, str):
        try:
            return int(raw.strip(), 10)
        except ValueError:
            pass
    raise _Problem(f"expected an integer, got {_got(raw, text=text)}")


def _parse_float(raw: object, *, text: bool) -> float:
    if isinstance(raw, int | float) and not isinstance(raw, bool):
        return float(raw)
    if text and isinstance(raw, str):
        try:
            return float(raw.strip())
        except ValueError:
            pass
    raise _Problem(f"expected a number, got {_got(raw, text=text)}")


def _check_typed(spec: _Spec, value: Any) -> None:
    """Check an already typed value; shared by `load_config` and `AgentConfig`."""
    kind = spec.kind
    if kind == "name":
        if not isinstance(value, str) or not _NAME_RE.fullmatch(value):
            raise _Problem(f"{value!r} is not a valid name ({_NAME_RULE} characters)")
    elif kind in ("path", "socket", "str"):
        if not isinstance(value, str) or not value:
            raise _Problem(f"expected a non-empty string, got {value!r}")
        if kind == "socket" and len(os.fsencode(value)) > UNIX_SOCKET_PATH_BYTES_MAX:
            raise _Problem(
                f"socket path {value!r} is longer than {UNIX_SOCKET_PATH_BYTES_MAX} bytes,"
                " the limit for Unix sockets"
            )
    elif kind == "level":
        if value not in LOG_LEVELS:
            raise _Problem(f"unknown log level {value!r} (expected one of {', '.join(LOG_LEVELS)})")
    elif kind == "addr":
        if not isinstance(value, HostPort):
            raise _Problem(f"expected a HostPort, got {value!r}")
    elif kind == "addrs":
        if not isinstance(value, tuple) or not all(isinstance(v, HostPort) for v in value):
            raise _Problem(f"expected a tuple of HostPort, got {value!r}")
    elif kind == "bool":
        if not isinstance(value, bool):
            raise _Problem(f"expected a boolean, got {value!r}")
    elif kind == "secret":
        if not isinstance(value, bytes):
            raise _Problem("expected bytes")
    elif kind in ("int", "float"):
        _check_number(spec, value)


def _check_number(spec: _Spec, value: Any) -> None:
    wanted = int if spec.kind == "int" else (int, float)
    if isinstance(value, bool) or not isinstance(value, wanted):
        raise _Problem(f"expected a number, got {value!r}")
    if not math.isfinite(value):
        raise _Problem(f"must be a finite number, got {value!r}")
    if spec.minimum is None:
        return
    if spec.exclusive and value <= spec.minimum:
        raise _Problem(f"must be greater than {spec.minimum:g}, got {value!r}")
    if not spec.exclusive and value < spec.minimum:
        raise _Problem(f"must be at least {spec.minimum:g}, got {value!r}")


def _cross_problems(v: Mapping[str, Any]) -> Iterator[tuple[str, str]]:
    """Rules that involve more than one setting: (setting to blame, message)."""
    if v["advertise"] is not None and v["advertise"].is_wildcard:
        yield "advertise", f"{v['advertise']} is a wildcard address that peers cannot dial"
    if v["election_ticks"] <= v["heartbeat_ticks"]:
        yield (
            "election_ticks",
            f"must be greater than heartbeat_ticks ({v['election_ticks']} <= "
            f"{v['heartbeat_ticks']}), or followers time out between heartbeats",
        )
    if v["control_listen"] is not None and v.get("control_token_file") is None:
        yield (
            "control_listen",
            "a TCP control listener needs a bearer token: set --control-token-file "
            "(RAFTFLEET_CONTROL_TOKEN_FILE, control_token_file)",
        )
    if v.get("cluster_secret") is not None and len(v["cluster_secret"]) < SECRET_BYTES_MIN:
        yield "cluster_secret_file", f"the secret must be at least {SECRET_BYTES_MIN} bytes"


# --------------------------------------------------------------------------
# Layers


@attrs.frozen
class _Source:
    kind: str  # "option" | "environment" | "config file" | "default" | "derived"
    path: str | None = None  # the file; for "derived", where the other value came from

    def describe(self, setting: str) -> str:
        if self.kind == "derived":
            return f"same as listen ({self.path})"
        if self.kind == "option":
            return f"option {_option(setting)}"
        if self.kind == "environment":
            return f"environment {env_var(setting)}"
        if self.kind == "config file":
            return f"config file {self.path}: key '{setting}'"
        return f"default {setting}"


_Layer = dict[str, tuple[Any, _Source]]


def _fail(source: _Source, setting: str, message: str) -> ConfigError:
    where = source.describe(setting)
    return ConfigError(f"{where}: {message}", setting=setting, source=where)


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1)
    return f" (did you mean '{close[0]}'?)" if close else ""


def _build_layer(
    raw: Mapping[str, object],
    source: _Source,
    *,
    text: Callable[[object], bool],
    base_dir: str | None,
) -> _Layer:
    layer: _Layer = {}
    for setting, value in raw.items():
        try:
            layer[setting] = (
                _parse(SPECS[setting], value, text=text(value), base_dir=base_dir),
                source,
            )
        except _Problem as exc:
            raise _fail(source, setting, str(exc)) from None
    return layer


def _cli_layer(cli_values: Mapping[str, object]) -> _Layer:
    given: dict[str, object] = {}
    for key, value in cli_values.items():
        if key == "config":
            continue  # the caller passes it as config_path as well
        if key not in SETTING_NAMES:
            # Not the operator's fault: the click command and this table disagree.
            raise ValueError(f"load_config: unknown command-line setting {key!r}")
        # click reports an absent option as None, an absent multiple option
        # as (), and an absent flag as False; none of them override a layer.
        if value is None or value is False or (isinstance(value, tuple | list) and not value):
            continue
        given[key] = value
    return _build_layer(given, _Source("option"), text=lambda v: isinstance(v, str), base_dir=None)


def _env_layer(environ: Mapping[str, str]) -> _Layer:
    given: dict[str, object] = {}
    for var in sorted(environ):
        if not var.startswith(ENV_PREFIX) or var in CLI_ENV_VARS or var == ENV_CONFIG:
            continue
        setting = var[len(ENV_PREFIX) :].lower()
        if setting not in SETTING_NAMES or var != env_var(setting):
            # Compare without the shared prefix, which would make everything "close".
            close = difflib.get_close_matches(setting, SETTING_NAMES, n=1)
            hint = f" (did you mean {env_var(close[0])}?)" if close else ""
            raise ConfigError(
                f"environment {var}: unknown setting{hint}", source=f"environment {var}"
            )
        # An empty value means "unset" (systemd's `Environment=RAFTFLEET_ZONE=`).
        if environ[var] != "":
            given[setting] = environ[var]
    return _build_layer(given, _Source("environment"), text=lambda v: True, base_dir=None)


def _file_layer(path: str, path_source: str) -> _Layer:
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except OSError as exc:
        raise ConfigError(
            f"{path_source}: cannot read config file '{path}': {exc.strerror}", source=path_source
        ) from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"config file {path}: invalid TOML: {exc}", source=f"config file {path}"
        ) from None
    for key in data:
        if key not in SETTING_NAMES:
            raise ConfigError(
                f"config file {path}: unknown key '{key}'{_suggest(key, list(SETTING_NAMES))}",
                setting=None,
                source=f"config file {path}",
            )
    base_dir = os.path.dirname(os.path.abspath(path))
    return _build_layer(data, _Source("config file", path), text=lambda v: False, base_dir=base_dir)


def _choose_config_file(
    config_path: str | None, environ: Mapping[str, str], default_path: str
) -> tuple[str | None, str]:
    """The file to read and how to describe where its name came from."""
    if config_path:
        return config_path, "option --config"
    if environ.get(ENV_CONFIG):
        return environ[ENV_CONFIG], f"environment {ENV_CONFIG}"
    # The default file is optional: an agent configured by flags alone is fine.
    if os.path.exists(default_path):
        return default_path, "default config file"
    return None, ""


# --------------------------------------------------------------------------
# Merge


def load_config(
    cli_values: Mapping[str, object],
    environ: Mapping[str, str],
    config_path: str | None,
    **kw: Any,
) -> AgentConfig:
    """Merge command line > environment > config file > defaults; validate.

    `cli_values` maps setting names to click's values (None / () / False mean
    "not given"). `config_path` is --config; without it RAFTFLEET_CONFIG,
    then /etc/raftfleet/agent.toml if it exists. Reads the secret files.
    Raises ConfigError with a one-line message. Keywords: see `explain_config`.
    """
    return explain_config(cli_values, environ, config_path, **kw)[0]


def explain_config(
    cli_values: Mapping[str, object],
    environ: Mapping[str, str],
    config_path: str | None,
    *,
    default_config_path: str = paths.DEFAULT_CONFIG_FILE,
    euid: int | None = None,
    hostname: str | None = None,
) -> tuple[AgentConfig, dict[str, str]]:
    """As `load_config`, and where each setting's value came from.

    The second item maps every configurable setting to its source, in the
    words of the error messages: "option --listen", "environment
    RAFTFLEET_ZONE", "config file /etc/raftfleet/agent.toml: key 'join'",
    "default data_dir" (`raftfleet-agent --check-config` prints them).
    """
    if config_path is None and isinstance(cli_values.get("config"), str):
        config_path = str(cli_values["config"])
    cli = _cli_layer(cli_values)
    env = _env_layer(environ)
    file_path, path_source = _choose_config_file(config_path, environ, default_config_path)
    file = _file_layer(file_path, path_source) if file_path else {}

    ctx = _Ctx(environ, euid, hostname)
    values: dict[str, Any] = {}
    sources: dict[str, _Source] = {}
    for setting in SETTING_NAMES:
        for layer in (cli, env, file):
            if setting in layer:
                values[setting], sources[setting] = layer[setting]
                break
        else:
            values[setting], sources[setting] = _default(setting, ctx), _Source("default")
    _finish(values, sources)
    values["config_file"] = os.path.abspath(file_path) if file_path else None
    origins = {k: src.describe(k) for k, src in sources.items() if not SPECS[k].secret}
    return AgentConfig(**values), origins


def _default(setting: str, ctx: _Ctx) -> Any:
    spec = SPECS[setting]
    value = spec.default(ctx) if callable(spec.default) else spec.default
    if value is not None:
        try:
            _check_typed(spec, value)
        except _Problem as exc:
            hint = f"; set {_option(setting)}" if spec.required else ""
            raise _fail(_Source("default"), setting, f"{exc}{hint}") from None
    return value


def _finish(values: dict[str, Any], sources: dict[str, _Source]) -> None:
    """Required settings, derived values, secrets, and cross-setting rules."""
    for setting in SETTING_NAMES:
        if SPECS[setting].required and values[setting] is None:
            raise ConfigError(
                f"{setting}: required; set {_option(setting)}, {env_var(setting)} "
                f"or '{setting}' in the config file",
                setting=setting,
            )
    if values["advertise"] is None:
        if values["listen"].is_wildcard:
            raise _fail(
                sources["listen"],
                "listen",
                f"{values['listen']} is a wildcard address that peers cannot dial; "
                "set --advertise HOST:PORT to the address other agents should use",
            )
        values["advertise"] = values["listen"]
        sources["advertise"] = _Source("derived", sources["listen"].describe("listen"))
    for setting, message in _cross_problems(values):
        raise _fail(sources[setting], setting, message)
    values["cluster_secret"] = _read_secret(
        values["cluster_secret_file"], "cluster secret file", sources, "cluster_secret_file"
    )
    # The token guards only the TCP listener; without one the file is unused.
    values["control_token"] = None
    if values["control_listen"] is not None:
        values["control_token"] = _read_secret(
            values["control_token_file"], "control token file", sources, "control_token_file"
        )


def _read_secret(path: str, what: str, sources: Mapping[str, _Source], setting: str) -> bytes:
    def fail(message: str) -> ConfigError:
        return _fail(sources[setting], setting, message)

    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise fail(f"cannot read {what} '{path}': {exc.strerror}") from None
    # Editors add a final newline; every agent strips it the same way, so
    # `echo secret > file` and a binary secret both work.
    data = data.rstrip(b"\r\n")
    if not data:
        raise fail(f"{what} '{path}' is empty")
    if len(data) < SECRET_BYTES_MIN:
        raise fail(
            f"{what} '{path}' is too short: {len(data)} bytes, need at least {SECRET_BYTES_MIN}"
        )
    return data
