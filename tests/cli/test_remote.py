"""``fleet port-forward``, ``cp`` and ``stat``: their arguments, and their one-line errors
when the API does not answer (the transfers themselves: tests/operator)."""

from __future__ import annotations

import socket

from click.testing import CliRunner

from backend.cli import main
from backend.cli.remote import remote_path

TOKEN = ["--token", "an-operator-token"]


def unused_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{sock.getsockname()[1]}"


def test_a_bad_forward_spec_says_the_form_to_use() -> None:
    result = CliRunner().invoke(main, ["port-forward", "gw-1", "8080:80", *TOKEN])
    assert result.exit_code == 2
    assert "[LOCAL_ADDR:]LOCAL_PORT:REMOTE_HOST:REMOTE_PORT" in result.output


def test_no_api_is_one_line_that_says_what_to_check() -> None:
    url = unused_url()
    for args in (
        ["port-forward", "gw-1", "0:127.0.0.1:80"],
        ["stat", "gw-1:/etc/hostname"],
        ["cp", "gw-1:/etc/hostname", "."],
    ):
        result = CliRunner().invoke(main, [*args, "--api-url", url, *TOKEN])
        assert result.exit_code == 1, result.output
        assert f"no answer from {url}" in result.output
        assert "is the operator API running there?" in result.output


def test_cp_needs_exactly_one_device_side(tmp_path: object) -> None:
    result = CliRunner().invoke(main, ["cp", "a.txt", "b.txt", *TOKEN])
    assert result.exit_code == 2
    assert "exactly one of SOURCE and TARGET is DEVICE:PATH" in result.output
    result = CliRunner().invoke(main, ["stat", "/etc/hostname", *TOKEN])
    assert result.exit_code == 2
    assert "give DEVICE:PATH" in result.output


def test_device_paths_are_told_from_local_ones() -> None:
    assert remote_path("gw-1:/etc/hostname") == ("gw-1", "/etc/hostname")
    assert remote_path("./a:b") is None  # a local path with a colon
    assert remote_path("/tmp/x") is None
    assert remote_path("gw-1:") is None
