"""Agent configuration: layering, parsing, validation messages, default paths."""

from __future__ import annotations

import os
import subprocess
import sys

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from raftfleet_agent import paths
from raftfleet_agent.config import AgentConfig, ConfigError, HostPort, load_config

SECRET = b"0123456789abcdef-cluster"
TOKEN = b"tok-0123456789abcdef"


@pytest.fixture
def secret_file(tmp_path):
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return str(path)


@pytest.fixture
def base(secret_file, tmp_path):
    """The smallest valid command line; tests add to it."""
    return {
        "listen": "127.0.0.1:7000",
        "cluster_secret_file": secret_file,
        "data_dir": str(tmp_path / "data"),
    }


def load(cli, environ=None, config_path=None, **kw):
    kw.setdefault("default_config_path", "/nonexistent/raftfleet/agent.toml")
    kw.setdefault("hostname", "host1.example.com")
    return load_config(cli, environ or {}, config_path, **kw)


def write_toml(tmp_path, text, name="agent.toml"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def error(cli, environ=None, config_path=None, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load(cli, environ, config_path, **kw)
    message = str(info.value)
    assert "\n" not in message
    return message


# --- defaults and precedence -------------------------------------------------


def test_defaults(base):
    cfg = load(base, euid=1000, environ={"XDG_RUNTIME_DIR": "/run/user/1000"})
    assert cfg.name == "host1"  # the short host name
    assert cfg.listen == HostPort("127.0.0.1", 7000)
    assert cfg.advertise == cfg.listen
    assert cfg.control_socket == "/run/user/1000/raftfleet/agent.sock"
    assert cfg.cluster_secret == SECRET  # trailing newline stripped
    assert cfg.control_listen is None and cfg.control_token is None
    assert cfg.zone is None and cfg.join == () and cfg.in_memory is False
    assert cfg.log_level == "info" and cfg.log_level_no == 20
    assert (cfg.tick_interval_s, cfg.election_ticks, cfg.heartbeat_ticks) == (0.1, 10, 1)
    assert cfg.election_timeout_s == pytest.approx(1.0)
    assert (cfg.reconcile_interval_s, cfg.purge_window_s) == (5.0, 600.0)
    assert (cfg.max_moves_in_flight, cfg.shutdown_budget_s) == (16, 10.0)
    assert cfg.snapshot_every_entries == 10000
    assert cfg.config_file is None


def test_precedence_flags_over_env_over_file_over_defaults(base, tmp_path):
    config = write_toml(
        tmp_path,
        'zone = "file-zone"\nelection_ticks = 20\nheartbeat_ticks = 3\n'
        'log_level = "debug"\njoin = ["a:1"]\n',
    )
    environ = {"RAFTFLEET_ZONE": "env-zone", "RAFTFLEET_ELECTION_TICKS": "30"}
    cli = {**base, "zone": "cli-zone"}
    cfg = load(cli, environ, config)
    assert cfg.zone == "cli-zone"  # flag beats env and file
    assert cfg.election_ticks == 30  # env beats file
    assert cfg.heartbeat_ticks == 3  # file beats default
    assert cfg.log_level == "debug"
    assert cfg.join == (HostPort("a", 1),)
    assert cfg.tick_interval_s == 0.1  # default
    assert cfg.config_file == config


def test_absent_click_values_do_not_override(base):
    environ = {"RAFTFLEET_IN_MEMORY": "true", "RAFTFLEET_JOIN": "a:1", "RAFTFLEET_ZONE": "z"}
    cfg = load({**base, "in_memory": False, "join": (), "zone": None, "config": None}, environ)
    assert cfg.in_memory is True and cfg.join == (HostPort("a", 1),) and cfg.zone == "z"


def test_cli_join_replaces_env_join(base):
    cfg = load({**base, "join": ("b:2", "[::1]:3")}, {"RAFTFLEET_JOIN": "a:1"})
    assert cfg.join == (HostPort("b", 2), HostPort("::1", 3))


def test_everything_from_environment(tmp_path, secret_file):
    environ = {
        "RAFTFLEET_NAME": "n1",
        "RAFTFLEET_DATA_DIR": str(tmp_path / "d"),
        "RAFTFLEET_LISTEN": "10.0.0.1:4000",
        "RAFTFLEET_ADVERTISE": "n1.example:4000",
        "RAFTFLEET_CLUSTER_SECRET_FILE": secret_file,
        "RAFTFLEET_JOIN": " a:1 , [fe80::1%eth0]:2,,",
        "RAFTFLEET_IN_MEMORY": "YES",
        "RAFTFLEET_LOG_LEVEL": "WARNING",
        "RAFTFLEET_TICK_INTERVAL_S": "0.05",
        "RAFTFLEET_MAX_MOVES_IN_FLIGHT": "4",
        "RAFTFLEET_METRICS_LISTEN": "127.0.0.1:9100",
        "RAFTFLEET_ZONE": "",  # empty means unset
        # The CLI's variables are not the agent's business.
        "RAFTFLEET_ADDR": "unix:///x",
        "RAFTFLEET_OUTPUT": "json",
        "RAFTFLEET_TOKEN_FILE": "/nope",
        "PATH": "/bin",
    }
    cfg = load({}, environ)
    assert cfg.name == "n1"
    assert cfg.data_dir == str(tmp_path / "d")
    assert str(cfg.advertise) == "n1.example:4000"
    assert cfg.join == (HostPort("a", 1), HostPort("fe80::1%eth0", 2))
    assert cfg.in_memory is True
    assert cfg.log_level == "warning"
    assert cfg.tick_interval_s == 0.05
    assert cfg.max_moves_in_flight == 4
    assert cfg.metrics_listen == HostPort("127.0.0.1", 9100)
    assert cfg.zone is None


def test_env_false_words(base):
    for word in ("0", "false", "No", "off"):
        assert load(base, {"RAFTFLEET_IN_MEMORY": word}).in_memory is False


def test_config_file_from_env_and_default_path(base, tmp_path):
    env_file = write_toml(tmp_path, 'zone = "from-env-file"\n', "env.toml")
    assert load(base, {"RAFTFLEET_CONFIG": env_file}).zone == "from-env-file"
    default_file = write_toml(tmp_path, 'zone = "from-default"\n', "default.toml")
    assert load(base, default_config_path=default_file).zone == "from-default"
    # An explicit --config wins over RAFTFLEET_CONFIG.
    cfg = load(base, {"RAFTFLEET_CONFIG": env_file}, default_file)
    assert cfg.zone == "from-default"


def test_relative_paths_in_file_are_relative_to_the_file(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "secret").write_bytes(SECRET)
    config = write_toml(
        tmp_path / "etc",
        'listen = "h:1"\ncluster_secret_file = "secret"\ndata_dir = "../data"\n',
    )
    cfg = load({}, {}, config)
    assert cfg.cluster_secret_file == str(tmp_path / "etc" / "secret")
    assert cfg.data_dir == str(tmp_path / "data")


def test_secret_stays_out_of_repr(base, tmp_path):
    token = tmp_path / "token"
    token.write_bytes(TOKEN)
    cfg = load({**base, "control_listen": "127.0.0.1:7001", "control_token_file": str(token)})
    assert cfg.control_token == TOKEN
    assert "0123456789abcdef" not in repr(cfg)


def test_agent_config_validates_on_evolve(base):
    cfg = load(base)
    with pytest.raises(ValueError, match="election_ticks"):
        attrs.evolve(cfg, election_ticks=1)
    with pytest.raises(ValueError, match="at least 16"):
        attrs.evolve(cfg, cluster_secret=b"short")
    with pytest.raises(ValueError, match="max_moves_in_flight"):
        attrs.evolve(cfg, max_moves_in_flight=0)
    assert isinstance(attrs.evolve(cfg, zone="z2"), AgentConfig)


# --- errors: one line, naming the setting and where it came from ----------


def test_unknown_key_in_file_suggests(base, tmp_path):
    config = write_toml(tmp_path, 'lisen = "h:1"\n')
    assert error(base, {}, config) == (
        f"config file {config}: unknown key 'lisen' (did you mean 'listen'?)"
    )
    config = write_toml(tmp_path, "frobnicate = 1\n")
    assert error(base, {}, config) == f"config file {config}: unknown key 'frobnicate'"


def test_unknown_env_var_suggests(base):
    msg = error(base, {"RAFTFLEET_ELECTION_TICK": "3"})
    assert msg == (
        "environment RAFTFLEET_ELECTION_TICK: unknown setting "
        "(did you mean RAFTFLEET_ELECTION_TICKS?)"
    )
    assert error(base, {"RAFTFLEET_ZZZZZZ": "1"}) == "environment RAFTFLEET_ZZZZZZ: unknown setting"
    # Variables of other programs are not ours to judge.
    assert load(base, {"RAFTFLEETX": "1", "OTHER_LISTEN": "x"}).name == "host1"


def test_wrong_types_in_file(base, tmp_path):
    config = write_toml(tmp_path, 'election_ticks = "20"\n')
    assert error(base, {}, config) == (
        f"config file {config}: key 'election_ticks': expected an integer, got string '20'"
    )
    config = write_toml(tmp_path, 'join = "a:1"\n')
    assert "key 'join': expected a list of HOST:PORT strings" in error(base, {}, config)
    config = write_toml(tmp_path, "in_memory = 1\n")
    assert "key 'in_memory': expected a boolean, got integer 1" in error(base, {}, config)
    config = write_toml(tmp_path, "[listen]\nhost = 1\n")
    assert "key 'listen': expected a string, got a table" in error(base, {}, config)


def test_overridden_bad_file_value_is_still_an_error(base, tmp_path):
    config = write_toml(tmp_path, "election_ticks = -1\n")
    msg = error(base, {"RAFTFLEET_ELECTION_TICKS": "5"}, config)
    assert msg == f"config file {config}: key 'election_ticks': must be at least 2, got -1"


def test_invalid_toml(base, tmp_path):
    config = write_toml(tmp_path, "listen = \n")
    assert error(base, {}, config).startswith(f"config file {config}: invalid TOML: ")
    (tmp_path / "latin1.toml").write_bytes(b'zone = "\xff"\n')
    config = str(tmp_path / "latin1.toml")
    assert error(base, {}, config).startswith(f"config file {config}: invalid TOML: ")


def test_missing_explicit_config_file(base, tmp_path):
    missing = str(tmp_path / "nope.toml")
    assert error(base, {}, missing) == (
        f"option --config: cannot read config file '{missing}': No such file or directory"
    )


@pytest.mark.parametrize(
    ("environ", "expected"),
    [
        (
            {"RAFTFLEET_ELECTION_TICKS": "ten"},
            "environment RAFTFLEET_ELECTION_TICKS: expected an integer, got 'ten'",
        ),
        (
            {"RAFTFLEET_HEARTBEAT_TICKS": "-1"},
            "environment RAFTFLEET_HEARTBEAT_TICKS: must be at least 1, got -1",
        ),
        (
            {"RAFTFLEET_TICK_INTERVAL_S": "0"},
            "environment RAFTFLEET_TICK_INTERVAL_S: must be greater than 0, got 0.0",
        ),
        (
            {"RAFTFLEET_PURGE_WINDOW_S": "nan"},
            "environment RAFTFLEET_PURGE_WINDOW_S: must be a finite number, got nan",
        ),
        (
            {"RAFTFLEET_SHUTDOWN_BUDGET_S": "-0.5"},
            "environment RAFTFLEET_SHUTDOWN_BUDGET_S: must be at least 0, got -0.5",
        ),
        (
            {"RAFTFLEET_IN_MEMORY": "maybe"},
            "environment RAFTFLEET_IN_MEMORY: "
            "expected 1/true/yes/on or 0/false/no/off, got 'maybe'",
        ),
        (
            {"RAFTFLEET_LOG_LEVEL": "loud"},
            "environment RAFTFLEET_LOG_LEVEL: unknown log level "
            "'loud' (expected one of debug, info, warning, error, critical)",
        ),
        (
            {"RAFTFLEET_NAME": "bad/name"},
            "environment RAFTFLEET_NAME: 'bad/name' is not a valid name",
        ),
        (
            {"RAFTFLEET_JOIN": "a:1,b"},
            "environment RAFTFLEET_JOIN: bad address 'b': expected HOST:PORT or [IPv6]:PORT",
        ),
    ],
)
def test_env_value_errors(base, environ, expected):
    assert error(base, environ).startswith(expected)


def test_election_must_outlast_heartbeats(base):
    # A rule between two settings blames election_ticks, wherever it came from.
    assert error(base, {"RAFTFLEET_HEARTBEAT_TICKS": "10"}) == (
        "default election_ticks: must be greater than heartbeat_ticks (10 <= 10), "
        "or followers time out between heartbeats"
    )


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("nohost", "expected HOST:PORT or [IPv6]:PORT"),
        (":80", "expected HOST:PORT or [IPv6]:PORT"),
        ("h:", "port must be a number from 1 to 65535"),
        ("h:0", "port must be a number from 1 to 65535"),
        ("h:65536", "port must be a number from 1 to 65535"),
        ("h:\uff18\uff10", "port must be a number from 1 to 65535"),
        ("::1:80", "write IPv6 addresses as [ADDR]:PORT"),
        ("[::1]80", "expected HOST:PORT or [IPv6]:PORT"),
        ("[::1", "expected HOST:PORT or [IPv6]:PORT"),
        ("[nothex]:80", "'nothex' is not an IPv6 address"),
        ("bad host:80", "'bad host' is not a host name or IPv4 address"),
        ("300.1.1.1:80", "'300.1.1.1' is not a host name or IPv4 address"),
        ("-lead.dash:80", "'-lead.dash' is not a host name or IPv4 address"),
    ],
)
def test_bad_addresses(base, text, problem):
    assert error({**base, "listen": text}) == f"option --listen: bad address {text!r}: {problem}"


def test_good_addresses():
    assert HostPort.parse("[::1]:80") == HostPort("::1", 80)
    assert str(HostPort.parse("[::1]:80")) == "[::1]:80"
    assert str(HostPort.parse("example.com:443")) == "example.com:443"
    assert HostPort.parse("0.0.0.0:1").is_wildcard
    assert HostPort.parse("[::]:1").is_wildcard
    assert not HostPort.parse("localhost:1").is_wildcard


@given(
    host=st.one_of(
        st.ip_addresses(v=4).map(str),
        st.ip_addresses(v=6).map(str),
        st.from_regex(
            r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?(\.[a-z]{1,5}){0,3}", fullmatch=True
        ).filter(lambda h: not h.replace(".", "").isdigit()),
    ),
    port=st.integers(1, 65535),
)
def test_host_port_round_trip(host, port):
    hp = HostPort(host, port)
    assert HostPort.parse(str(hp)) == hp


def test_missing_required_settings(secret_file):
    assert error({"cluster_secret_file": secret_file}) == (
        "listen: required; set --listen, RAFTFLEET_LISTEN or 'listen' in the config file"
    )
    assert error({"listen": "h:1"}).startswith("cluster_secret_file: required; set ")


def test_wildcard_listen_needs_advertise(base):
    assert error({**base, "listen": "0.0.0.0:7000"}) == (
        "option --listen: 0.0.0.0:7000 is a wildcard address that peers cannot dial; "
        "set --advertise HOST:PORT to the address other agents should use"
    )
    cfg = load({**base, "listen": "[::]:7000"}, {"RAFTFLEET_ADVERTISE": "10.1.1.1:7000"})
    assert cfg.listen.is_wildcard and cfg.advertise == HostPort("10.1.1.1", 7000)
    msg = error({**base, "advertise": "0.0.0.0:7000"})
    assert msg == "option --advertise: 0.0.0.0:7000 is a wildcard address that peers cannot dial"


def test_secret_file_errors(base, tmp_path):
    missing = str(tmp_path / "missing")
    assert error({**base, "cluster_secret_file": missing}) == (
        f"option --cluster-secret-file: cannot read cluster secret file '{missing}': "
        "No such file or directory"
    )
    empty = tmp_path / "empty"
    empty.write_bytes(b"\n\n")
    assert error({**base, "cluster_secret_file": str(empty)}) == (
        f"option --cluster-secret-file: cluster secret file '{empty}' is empty"
    )
    short = tmp_path / "short"
    short.write_bytes(b"123456789012345\n")
    assert error({}, {"RAFTFLEET_LISTEN": "h:1", "RAFTFLEET_CLUSTER_SECRET_FILE": str(short)}) == (
        f"environment RAFTFLEET_CLUSTER_SECRET_FILE: cluster secret file '{short}' is too "
        "short: 15 bytes, need at least 16"
    )
    assert "Is a directory" in error({**base, "cluster_secret_file": str(tmp_path)})


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file")
def test_unreadable_secret_file(base, tmp_path):
    path = tmp_path / "locked"
    path.write_bytes(SECRET)
    path.chmod(0)
    assert "Permission denied" in error({**base, "cluster_secret_file": str(path)})


def test_control_listen_needs_token_file(base, tmp_path):
    assert error({**base, "control_listen": "127.0.0.1:7001"}) == (
        "option --control-listen: a TCP control listener needs a bearer token: set "
        "--control-token-file (RAFTFLEET_CONTROL_TOKEN_FILE, control_token_file)"
    )
    short = tmp_path / "tok"
    short.write_bytes(b"abc\n")
    config = write_toml(tmp_path, f'control_token_file = "{short}"\n')
    assert error({**base, "control_listen": "127.0.0.1:7001"}, {}, config) == (
        f"config file {config}: key 'control_token_file': control token file '{short}' is too "
        "short: 3 bytes, need at least 16"
    )
    # Without a TCP listener the token file is not used, so not read.
    assert load({**base, "control_token_file": str(tmp_path / "absent")}).control_token is None


def test_bad_default_name_points_at_the_flag(base):
    msg = error(base, hostname="bad host")
    assert msg.startswith("default name: 'bad host' is not a valid name") and msg.endswith(
        "; set --name"
    )


def test_control_socket_too_long(base):
    long_path = "/tmp/" + "x" * 200 + "/agent.sock"
    assert error({**base, "control_socket": long_path}).startswith(
        "option --control-socket: socket path"
    )


def test_unknown_cli_key_is_a_programming_error(base):
    with pytest.raises(ValueError, match="unknown command-line setting 'lisen'"):
        load({**base, "lisen": "h:1"})


def test_cli_values_may_be_typed(base):
    cfg = load({**base, "election_ticks": 7, "tick_interval_s": 0.2, "in_memory": True})
    assert (cfg.election_ticks, cfg.tick_interval_s, cfg.in_memory) == (7, 0.2, True)
    assert error({**base, "election_ticks": 1.5}) == (
        "option --election-ticks: expected an integer, got float 1.5"
    )


# --- default paths ------------------------------------------------------------


def test_default_data_dir():
    assert paths.default_data_dir({"STATE_DIRECTORY": "/var/lib/a:/var/lib/b"}, 1000) == (
        "/var/lib/a"
    )
    assert paths.default_data_dir({}, 0) == "/var/lib/raftfleet"
    assert paths.default_data_dir({"XDG_DATA_HOME": "/x"}, 1000) == "/x/raftfleet"
    # The XDG spec says a relative value is invalid and must be ignored.
    assert paths.default_data_dir({"XDG_DATA_HOME": "rel", "HOME": "/home/u"}, 1000) == (
        "/home/u/.local/share/raftfleet"
    )


def test_default_control_socket():
    assert paths.default_control_socket({"RUNTIME_DIRECTORY": "/run/r:/run/s"}, 1000) == (
        "/run/r/agent.sock"
    )
    assert paths.default_control_socket({}, 0) == "/run/raftfleet/agent.sock"
    assert paths.default_control_socket({"XDG_RUNTIME_DIR": "/run/user/7"}, 7) == (
        "/run/user/7/raftfleet/agent.sock"
    )
    assert paths.default_control_socket({}, 7) == "/tmp/raftfleet-7/agent.sock"


def test_find_control_socket_prefers_an_existing_one(tmp_path):
    environ = {"XDG_RUNTIME_DIR": str(tmp_path)}
    candidates = paths.control_socket_candidates(environ, 7)
    assert candidates == [str(tmp_path / "raftfleet" / "agent.sock"), "/run/raftfleet/agent.sock"]
    if not os.path.exists("/run/raftfleet/agent.sock"):
        assert paths.find_control_socket(environ, 7) == candidates[0]
    (tmp_path / "raftfleet").mkdir()
    (tmp_path / "raftfleet" / "agent.sock").touch()
    assert paths.find_control_socket(environ, 7) == candidates[0]
    assert paths.control_socket_candidates({}, 0) == ["/run/raftfleet/agent.sock"]


def test_default_name():
    assert paths.default_name("db3.eu.example.com") == "db3"
    assert paths.default_name() == paths.default_name(__import__("socket").gethostname())


def test_paths_imports_only_stdlib():
    # The CLI imports paths.py and must never pay for trio (nor any other
    # raftfleet_agent module that could pull it in).
    code = (
        "import sys; import raftfleet_agent.paths; "
        "bad = [m for m in sys.modules if m.split('.')[0] in ('trio', 'attrs', 'msgpack') "
        "or (m.startswith('raftfleet_agent.') and m != 'raftfleet_agent.paths')]; "
        "print(bad); sys.exit(1 if bad else 0)"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


# --- raftfleet-agent --check-config ------------------------------------------


def check_config(*args: str, env: dict[str, str] | None = None):
    """`raftfleet-agent --check-config ARGS` in a clean environment (no RAFTFLEET_*).

    Pass --config: without one the agent reads /etc/raftfleet/agent.toml if it exists."""
    from click.testing import CliRunner

    from raftfleet_agent.main import main

    clean: dict[str, str | None] = {k: None for k in os.environ if k.startswith("RAFTFLEET_")}
    clean.update(env or {})
    return CliRunner().invoke(main, ["--check-config", *args], env=clean)


def test_check_config_prints_every_setting_with_its_source(secret_file, tmp_path) -> None:
    toml = write_toml(tmp_path, 'zone = "z9"\njoin = ["127.0.0.2:7000"]\n')
    ran = check_config(
        "--listen", "127.0.0.1:7000",
        "--cluster-secret-file", secret_file,
        "--data-dir", str(tmp_path / "new" / "data"),  # missing: the agent creates it
        "--config", toml,
        env={"RAFTFLEET_ELECTION_TICKS": "20"},
    )  # fmt: skip
    assert ran.exit_code == 0, ran.output
    lines = dict(line.split(" = ", 1) for line in ran.stdout.splitlines() if " = " in line)
    assert lines["listen"] == "127.0.0.1:7000  # option --listen"
    assert lines["advertise"] == "127.0.0.1:7000  # same as listen (option --listen)"
    assert lines["election_ticks"] == "20  # environment RAFTFLEET_ELECTION_TICKS"
    assert lines["zone"] == f"z9  # config file {toml}: key 'zone'"
    assert lines["join"].startswith("127.0.0.2:7000  # config file")
    assert lines["metrics_listen"] == "(not set)  # default metrics_listen"
    assert lines["cluster_secret_file"].startswith(f"{secret_file} ({len(SECRET)} bytes)")
    assert SECRET.decode() not in ran.output  # the secret itself is never shown
    assert ran.stdout.splitlines()[-1] == f"configuration OK (config file: {toml})"
    assert not (tmp_path / "new").exists()  # checking creates nothing


def test_check_config_fails_with_the_config_error(secret_file, tmp_path) -> None:
    toml = write_toml(tmp_path, "lisen = '127.0.0.1:7000'\n")
    ran = check_config("--cluster-secret-file", secret_file, "--config", toml)
    assert ran.exit_code == 2
    assert "unknown key 'lisen' (did you mean 'listen'?)" in ran.stderr
    assert ran.stdout == ""


def test_check_config_finds_a_data_dir_it_could_not_create(secret_file, tmp_path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    ran = check_config(
        "--listen", "127.0.0.1:7000",
        "--cluster-secret-file", secret_file,
        "--data-dir", str(blocker / "data"),
        "--config", write_toml(tmp_path, ""),
    )  # fmt: skip
    assert ran.exit_code == 2
    assert f"data_dir: {blocker} is not a directory" in ran.stderr
    assert "configuration OK" not in ran.stdout
