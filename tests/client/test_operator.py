"""The operator client against a real operator API (its blocking calls run in a thread), and
the ``fleet shell`` and ``fleet rollout`` commands built on it (in a subprocess, on a pty)."""

from __future__ import annotations

import asyncio
import fcntl
import json
import os
import select
import signal
import socket
import struct
import sys
import termios
import time
from pathlib import Path
from typing import Any

import pytest

from backend.client.operator import (
    OperatorClient,
    OperatorError,
    format_command,
    format_device,
    format_devices,
)
from backend.operator.api import OperatorApi
from backend.protocol import messages
from tests.operator.support import OPERATOR_TOKEN, ApiFactory, base, connected
from tests.support import ShardFactory, until

ROOT = Path(__file__).resolve().parents[2]


def client(api: OperatorApi, token: str = OPERATOR_TOKEN) -> OperatorClient:
    return OperatorClient(f"http://127.0.0.1:{api.port}", token)


async def test_listing_follows_the_cursor_and_reads_as_a_table(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with start_shard(shard_id="a") as shard, start_api() as api:
        devices = [await connected(f"gw-{n}", shard) for n in (1, 2, 3)]
        operator = client(api)

        async def all_online() -> list[dict[str, object]] | None:
            found = await asyncio.to_thread(lambda: list(operator.all_devices(limit=1)))
            return found if len(found) == 3 and all(d["online"] for d in found) else None

        found = await until(all_online)
        assert [d["id"] for d in found] == ["gw-1", "gw-2", "gw-3"]
        assert format_devices(found).splitlines() == [
            "ID    ONLINE  HEALTH  ALERTS  FIRMWARE  SHARD",
            "gw-1  yes     green   0       -         a",
            "gw-2  yes     green   0       -         a",
            "gw-3  yes     green   0       -         a",
        ]
        for device in devices:
            await device.close()


async def test_a_device_page_lists_alerts_with_their_fix(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with start_shard(shard_id="a") as shard, start_api() as api:
        device = await connected("gw-1", shard)
        await device.send_alert(
            messages.Alert("a-1", "disk_full", "critical", "raised", "disk 97%", "rotate logs")
        )
        operator = client(api)

        async def red() -> dict[str, object] | None:
            page = await asyncio.to_thread(operator.device, "gw-1")
            return page if page["health"] == "red" else None

        assert format_device(await until(red)) == (
            "gw-1: red, online (shard a), firmware -\n"
            "  [critical] disk_full: disk 97%\n"
            "      fix: rotate logs"
        )
        await device.close()


async def test_a_command_and_its_refusals(start_shard: ShardFactory, start_api: ApiFactory) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        operator = client(api)
        result = await asyncio.to_thread(operator.run_command, "gw-1", "echo hi", 5.0)
        assert format_command(result) == "hi\n"
        result = await asyncio.to_thread(operator.run_command, "gw-1", "nosuch", 5.0)
        assert format_command(result) == "sh: nosuch: not found\n[exit code 127]\n"

        with pytest.raises(OperatorError) as refused:
            await asyncio.to_thread(operator.run_command, "gw-never", "uptime", 5.0)
        assert (refused.value.status, str(refused.value)) == (
            404, "no device gw-never has ever connected"
        )  # fmt: skip
        with pytest.raises(OperatorError) as refused:
            await asyncio.to_thread(operator.run_command, "gw-1", "", 5.0)
        assert (refused.value.status, refused.value.field) == (400, "command")
        with pytest.raises(OperatorError) as refused:
            await asyncio.to_thread(client(api, "wrong").devices)
        assert refused.value.status == 401
        await device.close()


async def test_fleet_cmd_prints_the_devices_error_and_exits_1_before_its_timeout(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard, protocols=(1, 2, 3, 4), handshake=False)
        started = time.monotonic()
        code, output = await fleet_cli("cmd", "gw-1", "--timeout", "30", "--api-url", base(api),
                                       "--", "uptime")  # fmt: skip
        assert time.monotonic() - started < 30
        assert (code, output) == (
            1, "Error: device gw-1 answered: no handler registered for protocol: 0x0101\n"
        )  # fmt: skip
        await device.close()
        device = await connected("gw-1", shard, protocols=(1, 2, 3, 4))
        code, output = await fleet_cli("cmd", "gw-1", "--api-url", base(api), "--", "uptime")
        assert code == 1
        assert output.startswith("Error: device gw-1 does not serve commands (0x0101); it serves")
        await device.close()


def test_an_api_that_does_not_answer_is_reported() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        with pytest.raises(OperatorError) as refused:
            OperatorClient(f"http://127.0.0.1:{port}", "t", timeout=2).devices()
    assert refused.value.status == 0
    assert "no answer from" in str(refused.value)


def test_a_failed_command_without_output_shows_its_exit_code() -> None:
    assert format_command({"output": "", "exit_code": 1}) == "[exit code 1]\n"
    assert format_command({"output": "oops", "exit_code": 2}) == "oops\n[exit code 2]\n"


# --- fleet shell and fleet rollout: the CLI in a subprocess against a real API ---------------


class Terminal:
    """The far side of a pseudo-terminal: what a person at the keyboard sees and types."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.seen = b""

    def type(self, keys: bytes) -> None:
        os.write(self.fd, keys)

    async def read_until(self, marker: bytes, timeout: float = 20.0) -> bytes:
        return await asyncio.to_thread(self._read_until, marker, timeout)

    def _read_until(self, marker: bytes, timeout: float) -> bytes:
        deadline = time.monotonic() + timeout
        while marker not in self.seen:
            left = deadline - time.monotonic()
            assert left > 0, f"{marker!r} not shown; the terminal shows {self.seen!r}"
            if select.select([self.fd], [], [], left)[0]:
                try:
                    data = os.read(self.fd, 4096)
                except OSError:  # EIO: nothing holds the terminal any more
                    data = b""
                assert data, f"{marker!r} not shown before the end: {self.seen!r}"
                self.seen += data
        before, _, self.seen = self.seen.partition(marker)
        return before + marker


def set_size(fd: int, rows: int, cols: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


async def fleet_cli(*args: str) -> tuple[int, str]:
    """(exit code, stdout and stderr) of ``fleet ARGS`` as the test operator."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "backend.cli", *args, cwd=ROOT,
        env={**os.environ, "FLEET_API_TOKEN": OPERATOR_TOKEN},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
    )  # fmt: skip
    output, _ = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, output.decode()


async def test_fleet_shell_is_an_interactive_terminal(
    start_shard: ShardFactory, start_api: ApiFactory
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        master, slave = os.openpty()
        set_size(slave, 30, 100)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "backend.cli", "shell", "gw-1", "--api-url", base(api),
            "--token", OPERATOR_TOKEN, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
        )  # fmt: skip
        os.close(slave)
        terminal = Terminal(master)
        try:
            await terminal.read_until(b"$ ")
            terminal.type(b"stty size\r")
            assert await terminal.read_until(b"$ ") == b"stty size\r\n30 100\r\n$ "
            set_size(master, 40, 120)
            proc.send_signal(signal.SIGWINCH)
            await _shown_size(terminal, b"40 120")
            terminal.type(b"echo hi\x7fey\r")  # keys as typed: the device's terminal edits
            assert await terminal.read_until(b"$ ") == b"echo hi\b \bey\r\nhey\r\n$ "
            terminal.type(b"\x04")  # Ctrl-D on an empty line: the remote shell exits
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            await terminal.read_until(b"[shell exited]")
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            os.close(master)
        await device.close()


@pytest.mark.parametrize("lost", ["killed", "forgotten"])
async def test_fleet_shell_exits_when_the_device_ends_or_lost_the_session(
    start_shard: ShardFactory, start_api: ApiFactory, lost: str
) -> None:
    """Killed: the device's health check fired (it says so); forgotten: the device lost the
    session without a word, and Ctrl-D finds out."""
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)
        master, slave = os.openpty()
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "backend.cli", "shell", "gw-1", "--api-url", base(api),
            "--token", OPERATOR_TOKEN, cwd=ROOT, stdin=slave, stdout=slave, stderr=slave,
        )  # fmt: skip
        os.close(slave)
        terminal = Terminal(master)
        try:
            await terminal.read_until(b"$ ")
            if lost == "killed":
                device.shells.tick(device.session, time.monotonic() + 3600)
                await device.flush()
                shown = b"[the device ended the shell: health check failed"
            else:
                device.shells.close_all()
                terminal.type(b"\x04")
                shown = b"[the device ended the shell: no such shell session]"
            assert await asyncio.wait_for(proc.wait(), 20) == 0
            await terminal.read_until(shown)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
            os.close(master)
        await device.close()


async def _shown_size(terminal: Terminal, size: bytes) -> None:
    """``stty size`` until it shows ``size``: the resize travels beside the typed keys."""
    deadline = time.monotonic() + 20
    while True:
        terminal.type(b"stty size\r")
        if size in await terminal.read_until(b"$ "):
            return
        assert time.monotonic() < deadline, f"the terminal never showed {size!r}"


async def test_fleet_shell_says_why_it_cannot_open(start_api: ApiFactory) -> None:
    async with start_api(run_state_service=False) as api:
        code, output = await fleet_cli("shell", "gw-never", "--api-url", base(api))
    assert (code, output) == (1, "Error: no device gw-never has ever connected\n")


async def test_fleet_rollout_commands(start_shard: ShardFactory, start_api: ApiFactory) -> None:
    async def install(offer: messages.UpdateOffer) -> str:
        return "" if offer.version == "2.0.0" else "wrong version"

    async with start_shard() as shard, start_api(run_state_service=False) as api:
        devices = [await connected(f"gw-{n}", shard, on_update=install) for n in (1, 2)]
        url = base(api)
        code, output = await fleet_cli(
            "rollout", "create", "--api-url", url, "--version", "2.0.0", "--artifact-url",
            "https://u.example/fw.bin", "--checksum", "ab" * 32, "--device", "gw-1",
            "--device", "gw-2", "--max-concurrent", "1", "--json",
        )  # fmt: skip
        assert code == 0, output
        created = json.loads(output)
        assert (created["total"], created["max_concurrent"]) == (2, 1)
        operator = OperatorClient(url, OPERATOR_TOKEN)

        async def finished() -> dict[str, Any] | None:
            rollout = await asyncio.to_thread(operator.rollout, created["id"])
            return rollout if rollout["state"] == "finished" else None

        await until(finished)
        code, output = await fleet_cli("rollout", "status", created["id"], "--api-url", url)
        progress = "  0 pending, 0 offered, 0 downloading, 0 installing, 2 success, 0 failure"
        assert (code, output.splitlines()[1]) == (0, progress)
        code, output = await fleet_cli("rollout", "list", "--api-url", url)
        assert output.split("\n")[1].split() == [created["id"], "finished", "2.0.0", "2",
                                                  "op-alice", "2", "0"]  # fmt: skip
        code, output = await fleet_cli("rollout", "pause", created["id"], "--api-url", url)
        assert (code, output) == (1, f"Error: rollout {created['id']} is finished: cannot pause\n")
        code, output = await fleet_cli(
            "rollout", "create", "--api-url", url, "--version", "2.0.0", "--artifact-url",
            "https://u.example/fw.bin", "--checksum", "nope", "--prefix", "gw-",
        )  # fmt: skip
        assert (code, output) == (
            1, "Error: 'checksum' must be a SHA-256 digest (64 hex digits)\n"
        )  # fmt: skip
        for device in devices:
            await device.close()


def test_no_devices_is_said_in_words() -> None:
    assert format_devices([]) == "no devices match"
