"""Operator-side settings: the token file and the checks on limits."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from backend.operator.config import FleetConfig, load_operator_tokens


def test_tokens_map_to_operators(tmp_path: Path) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(json.dumps({"s3cret": "op-alice", "other": "op-bob"}))
    config = FleetConfig(operator_tokens=load_operator_tokens(path))
    assert config.operator_of("s3cret") == "op-alice"
    assert config.operator_of("s3cre") is None
    assert config.operator_of("") is None


@pytest.mark.parametrize("content", ['["s3cret"]', '{"s3cret": 1}', '{"": "op"}', '{"t": ""}'])
def test_a_malformed_token_file_is_refused(tmp_path: Path, content: str) -> None:
    path = tmp_path / "tokens.json"
    path.write_text(content)
    with pytest.raises(ValueError, match="expected a JSON object of token -> operator id"):
        load_operator_tokens(path)


def test_limits_are_checked() -> None:
    with pytest.raises(ValueError, match="command_timeout"):
        FleetConfig(command_timeout=0)
    with pytest.raises(ValueError, match="page_limit"):
        FleetConfig(page_limit=5000)
