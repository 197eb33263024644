from __future__ import annotations

from click.testing import CliRunner

from backend.auth import TokenVerifier
from backend.cli import main

SECRET = "a-cli-test-secret-of-at-least-32-bytes"


def test_token_prints_a_verifiable_device_token() -> None:
    result = CliRunner().invoke(main, ["token", "gw-7", "--jwt-secret", SECRET])
    assert result.exit_code == 0
    verifier = TokenVerifier.from_settings(SECRET, None)
    assert verifier.device_id("Bearer " + result.output.strip()) == "gw-7"


def test_token_secret_from_environment() -> None:
    result = CliRunner().invoke(main, ["token", "gw-7"], env={"FLEET_TOKEN_JWT_SECRET": SECRET})
    assert result.exit_code == 0


def test_token_rejects_a_bad_device_id() -> None:
    result = CliRunner().invoke(main, ["token", "bad id", "--jwt-secret", SECRET])
    assert result.exit_code == 2
    assert "invalid device id" in result.output


def test_shard_without_a_key_says_what_to_set() -> None:
    result = CliRunner().invoke(main, ["shard"], env={"FLEET_SHARD_JWT_SECRET": ""})
    assert result.exit_code == 2
    assert "--jwt-secret" in result.output
