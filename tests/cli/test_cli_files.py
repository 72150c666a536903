"""What an operator installs besides the code: completions, man pages, the unit, the config."""

from __future__ import annotations

import configparser
import re
import shutil
import subprocess
import tomllib
from pathlib import Path

import click
import pytest
from conftest import run

from raftfleet_agent.config import SETTING_NAMES, SPECS, load_config
from raftfleet_agent.main import main as agent_main
from raftfleet_cli.main import SHELLS, completion_script, main

ROOT = Path(__file__).resolve().parents[2]
REGENERATE = "for s in bash zsh fish; do raftfleet completion $s > completions/raftfleet.$s; done"


# --------------------------------------------------------------------------
# Shell completion


@pytest.mark.parametrize("shell", SHELLS)
def test_completion_files_match_the_cli(shell: str) -> None:
    shipped = (ROOT / "completions" / f"raftfleet.{shell}").read_text()
    assert shipped == completion_script(shell), f"completions/ drifted; regenerate: {REGENERATE}"
    ran = run("completion", shell)
    assert ran.code == 0 and ran.stdout == shipped
    assert "_RAFTFLEET_COMPLETE" in shipped


def test_completion_completes_commands() -> None:
    env = {"_RAFTFLEET_COMPLETE": "bash_complete", "COMP_WORDS": "raftfleet group tr",
           "COMP_CWORD": "2"}  # fmt: skip
    ran = run(env=env)
    assert ran.stdout.split() == ["plain,transfer-leader"]


# --------------------------------------------------------------------------
# Man pages


def _commands(group: click.Group, prefix: str = "") -> list[str]:
    names = []
    for name, cmd in sorted(group.commands.items()):
        if isinstance(cmd, click.Group):
            names += _commands(cmd, f"{prefix}{name} ")
        else:
            names.append(prefix + name)
    return names


def _options(cmd: click.Command) -> list[str]:
    return [o for p in cmd.params if isinstance(p, click.Option) for o in p.opts if o != "-h"]


def _man_text(page: str) -> str:
    # Undo the roff escapes that matter for searching: \- and font changes.
    text = (ROOT / "man" / page).read_text()
    return re.sub(r"\\f[BIRP]", "", text.replace("\\-", "-"))


@pytest.mark.parametrize("page", ["raftfleet.1", "raftfleet-agent.8"])
def test_man_pages_render_without_warnings(page: str) -> None:
    if shutil.which("groff") is None:
        pytest.skip("groff is not installed")
    proc = subprocess.run(
        ["groff", "-man", "-ww", "-z", str(ROOT / "man" / page)],
        check=False, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_raftfleet_1_documents_every_command_option_and_exit_code() -> None:
    text = _man_text("raftfleet.1")
    commands = _commands(main)
    assert len(commands) == 18
    for name in commands:
        assert re.search(rf"^\.(B|BI|BR|TP)\b.*\b{re.escape(name)}\b", text, re.M), name
    ctx = click.Context(main)
    for cmd in [main, *(main.get_command(ctx, n) for n in main.commands)]:
        subs = cmd.commands.values() if isinstance(cmd, click.Group) else [cmd]
        for sub in subs:
            for opt in _options(sub):
                assert opt in text, f"{sub.name}: {opt}"
    for code in ("0", "1", "2", "3", "4", "130"):
        assert re.search(rf"^\.B {code}$", text, re.M), code
    for section in ("EXIT STATUS", "ENVIRONMENT", "FILES", "EXAMPLES"):
        assert f".SH {section}" in text
    for var in ("RAFTFLEET_ADDR", "RAFTFLEET_TOKEN_FILE", "RAFTFLEET_OUTPUT", "NO_COLOR"):
        assert var in text


def test_raftfleet_agent_8_documents_flags_keys_and_signals() -> None:
    text = _man_text("raftfleet-agent.8")
    for opt in _options(agent_main):
        assert opt in text, opt
    for key in SETTING_NAMES:
        assert re.search(rf"\b{key}\b", text), key
    for word in ("SIGTERM", "SIGINT", "SIGHUP", "READY=1", "STOPPING=1", "WATCHDOG=1"):
        assert word in text


# --------------------------------------------------------------------------
# systemd unit and example configuration


def test_systemd_unit() -> None:
    unit = configparser.ConfigParser(strict=False, interpolation=None)
    unit.optionxform = str  # type: ignore[assignment,method-assign]
    unit.read(ROOT / "packaging" / "raftfleet-agent.service")
    service = unit["Service"]
    assert service["Type"] == "notify"
    assert service["ExecStart"] == "/usr/bin/raftfleet-agent --config /etc/raftfleet/agent.toml"
    assert service["User"] == "raftfleet"
    assert service["StateDirectory"] == "raftfleet"
    assert service["RuntimeDirectory"] == "raftfleet"
    assert service["RuntimeDirectoryMode"] == "0750"
    assert service["WatchdogSec"] == "30"
    assert service["Restart"] == "on-failure"
    budget = SPECS["shutdown_budget_s"].default
    assert float(service["TimeoutStopSec"]) > 2 * budget
    for key, value in {
        "NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
        "PrivateTmp": "yes", "ReadWritePaths": "/var/lib/raftfleet",
    }.items():  # fmt: skip
        assert service[key] == value, key
    assert unit["Install"]["WantedBy"] == "multi-user.target"


def test_example_config_has_every_key_and_loads(tmp_path: Path) -> None:
    example = (ROOT / "packaging" / "agent.toml").read_text()
    for key in SETTING_NAMES:  # set or shown commented out, each with a comment
        assert re.search(rf"^(# )?{key} = ", example, re.M), key
    secret = tmp_path / "cluster-secret"
    secret.write_bytes(b"s" * 32)
    token = tmp_path / "control-token"
    token.write_bytes(b"t" * 32)
    text = (
        example.replace("/var/lib/raftfleet", str(tmp_path / "data"))
        .replace("/run/raftfleet/agent.sock", str(tmp_path / "agent.sock"))
        .replace("/etc/raftfleet/cluster-secret", str(secret))
        .replace("/etc/raftfleet/control-token", str(token))
    )
    # Uncomment the optional keys too: every key must be accepted.
    text = re.sub(r"^# ((advertise|control_listen|control_token_file|metrics_listen) = )", r"\1",
                  text, flags=re.M)  # fmt: skip
    path = tmp_path / "agent.toml"
    path.write_text(text)
    assert set(tomllib.loads(text)) == set(SETTING_NAMES)
    config = load_config({}, {}, str(path))
    assert config.name == "agent-1" and config.zone == "zone-a"
    assert config.control_socket == str(tmp_path / "agent.sock")
    assert config.shutdown_budget_s == 10.0
