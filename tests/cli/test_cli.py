"""The ``fleet`` command as users call it; operator commands against a real API process."""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import socket
import sys
from collections.abc import Iterator
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from backend.bus.auth import TokenVerifier
from backend.cli import main
from backend.cli.root import ConfigOption, build_config
from backend.devstack import process
from backend.devstack.natsserver import NatsServer
from backend.devstack.process import free_ports
from backend.shard import ShardConfig
from backend.shard.config import default_max_connections

SECRET = "a-cli-test-secret-of-at-least-32-bytes"
OPERATOR_TOKEN = "an-operator-token-for-the-cli-tests"


def test_token_prints_a_verifiable_device_token() -> None:
    result = CliRunner().invoke(main, ["token", "gw-7", "--jwt-secret", SECRET])
    assert result.exit_code == 0
    verifier = TokenVerifier.from_settings(SECRET, None)
    assert verifier.device_id("Bearer " + result.output.strip()) == "gw-7"


def test_token_secret_from_environment() -> None:
    result = CliRunner().invoke(main, ["token", "gw-7"], env={"FLEET_TOKEN_JWT_SECRET": SECRET})
    assert result.exit_code == 0


def test_token_without_a_secret_or_a_stack_says_what_to_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/current: no stack
    result = CliRunner().invoke(main, ["token", "gw-7"], env={"FLEET_TOKEN_JWT_SECRET": ""})
    assert result.exit_code == 2
    assert "give --jwt-secret (or FLEET_TOKEN_JWT_SECRET), or start a local stack" in result.output


def test_token_rejects_a_bad_device_id() -> None:
    result = CliRunner().invoke(main, ["token", "bad id", "--jwt-secret", SECRET])
    assert result.exit_code == 2
    assert "invalid device id" in result.output


def test_api_settings_reach_its_config_from_flags_and_environment(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({"operator-token-0123456789": "op-1"}))
    base = ["api", "--operator-tokens-file", str(tokens)]
    by_flag = CliRunner().invoke(main, [*base, "--rollout-offer-attempts", "0"])
    assert by_flag.exit_code == 2
    assert "rollout_offer_attempts must be > 0" in by_flag.output
    by_env = CliRunner().invoke(main, base, env={"FLEET_API_SHELL_IDLE_TIMEOUT": "-1"})
    assert by_env.exit_code == 2
    assert "shell_idle_timeout must be > 0" in by_env.output


def test_version_and_short_help() -> None:
    version = CliRunner().invoke(main, ["--version"])
    assert version.exit_code == 0
    assert version.output.split()[-1] == importlib.metadata.version("fleetharness")
    short = CliRunner().invoke(main, ["token", "-h"])
    assert short.exit_code == 0
    assert short.output == CliRunner().invoke(main, ["token", "--help"]).output


@pytest.mark.parametrize(("path", "variable"), [
    (["shard"], "FLEET_SHARD_JWT_SECRET"),
    (["shard"], "FLEET_SHARD_NATS_URLS"),
    (["api"], "FLEET_API_OPERATOR_TOKENS_FILE"),
    (["rollout", "create"], "FLEET_API_TOKEN"),  # one variable for every client command
])  # fmt: skip
def test_help_names_each_options_environment_variable(path: list[str], variable: str) -> None:
    result = CliRunner().invoke(main, [*path, "--help"])
    assert result.exit_code == 0
    assert f"env var: {variable}" in " ".join(result.output.split())  # click wraps lines


def test_no_api_answering_says_to_start_one() -> None:
    (port,) = free_ports(1)  # nothing listens there
    argv = ["devices", "--token", OPERATOR_TOKEN, "--api-url", f"http://127.0.0.1:{port}"]
    result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1
    assert "no answer from" in result.output
    assert "start it with `fleet api`" in result.output


def test_no_token_and_no_stack_says_what_to_give(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)  # no runs/: no local stack to take the token of
    result = CliRunner().invoke(main, ["devices"], env={"FLEET_API_TOKEN": ""})
    assert result.exit_code == 2
    assert "no operator token: give --token or set FLEET_API_TOKEN" in result.output
    assert "`fleet up --api`" in result.output


def test_shard_without_a_key_says_what_to_set() -> None:
    result = CliRunner().invoke(main, ["shard"], env={"FLEET_SHARD_JWT_SECRET": ""})
    assert result.exit_code == 2
    assert "--jwt-secret" in result.output


# --- options derived from config fields ------------------------------------------------------

# Options named after a field of their command's config that default otherwise, on purpose.
OWN_DEFAULTS = {
    ("up", "shards"): "auto: sized for --connections",
    ("up", "haproxies"): "auto: sized for --connections",
    ("up", "prometheus_port"): "Prometheus' usual port for a person; the config's 0 is for tests",
}


def commands(group: click.Group = main, prefix: str = "") -> Iterator[tuple[str, click.Command]]:
    """Every command under ``group`` by its path (``rollout create``)."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix}{name}"
        yield path, command
        if isinstance(command, click.Group):
            yield from commands(command, f"{path} ")


CONFIG_OPTIONS = [
    (path, param)
    for path, command in commands()
    for param in command.params
    if isinstance(param, ConfigOption)
]


def field_of(option: ConfigOption) -> dataclasses.Field[object]:
    (found,) = (f for f in dataclasses.fields(option.config) if f.name == option.field)
    return found


def test_the_service_commands_derive_their_options() -> None:
    derived = {path for path, _option in CONFIG_OPTIONS}
    assert derived == {"api", "capacity", "shard", "state", "up"}


@pytest.mark.parametrize(
    ("path", "option"), CONFIG_OPTIONS, ids=[f"{p}-{o.name}" for p, o in CONFIG_OPTIONS]
)
def test_a_derived_option_defaults_to_its_config_field(path: str, option: ConfigOption) -> None:
    field = field_of(option)
    if field.default is not dataclasses.MISSING:
        assert option.default == field.default
    elif field.default_factory is not dataclasses.MISSING:
        assert option.default is None  # left out of the config: its factory makes the value
    else:
        assert option.required


def test_no_option_copies_a_config_default_by_hand() -> None:
    copied = set()
    for path, command in commands():
        configs = {param.config for param in command.params if isinstance(param, ConfigOption)}
        defaulted = {
            field.name
            for config in configs
            for field in dataclasses.fields(config)
            if field.default is not dataclasses.MISSING
            or field.default_factory is not dataclasses.MISSING
        }
        copied |= {
            (path, param.name)
            for param in command.params
            if not isinstance(param, ConfigOption) and param.name in defaulted
        }
    assert copied == set(OWN_DEFAULTS)


def test_an_empty_option_leaves_a_factory_field_to_its_factory() -> None:
    config = build_config(ShardConfig, {"shard_id": "", "max_connections": 0, "port": 0})
    assert config.shard_id.startswith("shard-")
    assert config.max_connections == default_max_connections()
    assert config.port == 0  # no factory: 0 is a value


# --- operator commands against a real API process ---------------------------------------------


@pytest.fixture
def api_url(tmp_path: Path) -> Iterator[str]:
    """``fleet api`` on a free port, with a real NATS server and one operator token."""
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({OPERATOR_TOKEN: "op-cli"}))
    (port,) = free_ports(1)
    with NatsServer(tmp_path / "nats") as nats_server:
        argv = [sys.executable, "-m", "backend.cli", "api", "--port", str(port),
                "--nats-url", nats_server.url, "--operator-tokens-file", str(tokens)]  # fmt: skip
        api = process.spawn(argv, tmp_path / "api.log")
        try:
            url = f"http://127.0.0.1:{port}"
            ready = f"{url}/healthz"
            process.wait_until(lambda: process.answers_ok(ready), api, "api", tmp_path / "api.log")
            yield url
        finally:
            process.stop(api)


@pytest.mark.integration
def test_devices_and_cmd_reach_the_api(api_url: str) -> None:
    env = {"FLEET_API_URL": api_url, "FLEET_API_TOKEN": OPERATOR_TOKEN}
    listed = CliRunner().invoke(main, ["devices", "--json"], env=env)
    assert listed.exit_code == 0, listed.output
    assert json.loads(listed.output) == []
    unknown = CliRunner().invoke(main, ["cmd", "gw-none", "--", "uname", "-a"], env=env)
    assert unknown.exit_code == 1
    assert "no device gw-none has ever connected" in unknown.output
    refused = CliRunner().invoke(main, ["devices"], env={**env, "FLEET_API_TOKEN": "wrong"})
    assert refused.exit_code == 1
    assert "401" in refused.output or "token" in refused.output


def test_api_without_tokens_file_says_what_to_give() -> None:
    result = CliRunner().invoke(main, ["api"])
    assert result.exit_code == 2
    assert "--operator-tokens-file" in result.output


def test_a_port_in_use_is_a_one_line_error(tmp_path: Path, nats_server: NatsServer) -> None:
    tokens = tmp_path / "tokens.json"
    tokens.write_text(json.dumps({OPERATOR_TOKEN: "op-cli"}))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = ["api", "--port", str(port), "--nats-url", nats_server.url,
                "--operator-tokens-file", str(tokens)]  # fmt: skip
        result = CliRunner().invoke(main, argv)
    assert result.exit_code == 1
    assert f"127.0.0.1:{port} is already in use" in result.output
    assert "choose another --port" in result.output
    assert "Traceback" not in result.output
