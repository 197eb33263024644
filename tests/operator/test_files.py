"""File transfers through the operator API: real nats-server, two in-process shards, a test
device serving Mender's proto 2 on a directory, and the ``fleet cp``/``stat`` client core
(blocking, run in a thread) as the operator."""

from __future__ import annotations

import asyncio
import hashlib
import os
import threading
from pathlib import Path

import pytest

from backend.client.files import download, upload
from backend.client.operator import OperatorClient, OperatorError
from backend.operator.api import OperatorApi
from tests.operator.support import OPERATOR_TOKEN, ApiFactory, base, connected
from tests.support import ShardFactory, until_true


def client(api: OperatorApi) -> OperatorClient:
    return OperatorClient(base(api), OPERATOR_TOKEN)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def ignore(_n: int) -> None:
    pass


def partials(folder: Path) -> list[Path]:
    """Partial downloads or uploads left behind."""
    return list(folder.glob(".*.part"))


async def test_a_file_put_and_got_back_has_equal_checksums_across_two_shards(
    start_shard: ShardFactory, start_api: ApiFactory, tmp_path: Path
) -> None:
    root, local = tmp_path / "device", tmp_path / "local"
    root.mkdir()
    local.mkdir()
    original = local / "firmware.bin"
    original.write_bytes(os.urandom(3 * 2**20 + 123))
    async with (
        start_shard(shard_id="a"), start_shard(shard_id="b") as shard_b,
        start_api(run_state_service=False) as api,
    ):  # fmt: skip
        await connected("gw-1", shard_b, files_root=root)
        put = await asyncio.to_thread(upload, client(api), original, "gw-1", "/fw.bin", ignore)
        assert put == {"op": "done", "size": original.stat().st_size, "sha256": sha256(original)}
        assert sha256(root / "fw.bin") == sha256(original)
        info = await asyncio.to_thread(client(api).stat_file, "gw-1", "/fw.bin")
        assert info["size"] == original.stat().st_size
        back = local / "back.bin"
        got = await asyncio.to_thread(download, client(api), "gw-1", "/fw.bin", back, ignore)
        assert got["sha256"] == sha256(back) == sha256(original)
        session = shard_b.devices["gw-1"].session
        assert session is not None
        await until_true(lambda: session.end_relays() == {})  # each transfer's sid released
        assert not partials(local)
        assert not partials(root)


async def test_the_device_s_error_text_is_shown_as_it_is(
    start_shard: ShardFactory, start_api: ApiFactory, tmp_path: Path
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        await connected("gw-1", shard, files_root=tmp_path, max_file_size=1000)
        with pytest.raises(OperatorError, match="stat /nope: No such file or directory") as e:
            await asyncio.to_thread(client(api).stat_file, "gw-1", "/nope")
        assert e.value.status == 502
        target = tmp_path / "out.bin"
        with pytest.raises(OperatorError, match="open /nope: No such file or directory"):
            await asyncio.to_thread(download, client(api), "gw-1", "/nope", target, ignore)
        assert not target.exists()
        assert not partials(tmp_path)
        with pytest.raises(OperatorError, match=r"access denied: \.\./secret is outside"):
            await asyncio.to_thread(client(api).stat_file, "gw-1", "../secret")
        big = tmp_path / "big.bin"
        big.write_bytes(b"x" * 1001)
        with pytest.raises(OperatorError, match="file too large: 1001 bytes, the limit is 1000"):
            await asyncio.to_thread(upload, client(api), big, "gw-1", "/big2.bin", ignore)


async def test_a_file_over_the_api_s_limit_is_refused_before_sending(
    start_shard: ShardFactory, start_api: ApiFactory, tmp_path: Path
) -> None:
    async with (
        start_shard() as shard,
        start_api(run_state_service=False, max_transfer_bytes=10_000) as api,
    ):
        await connected("gw-1", shard, files_root=tmp_path)
        source = tmp_path / "a.bin"
        source.write_bytes(b"y" * 10_001)
        with pytest.raises(OperatorError, match="exceed the transfer limit of 10000") as e:
            await asyncio.to_thread(upload, client(api), source, "gw-1", "/b.bin", ignore)
        assert e.value.status == 413
        with pytest.raises(OperatorError, match="exceeds the transfer limit of 10000"):
            await asyncio.to_thread(
                download, client(api), "gw-1", "/a.bin", tmp_path / "c.bin", ignore
            )
        assert not (tmp_path / "c.bin").exists()


async def test_a_device_drop_mid_transfer_fails_cleanly_and_removes_the_partial_file(
    start_shard: ShardFactory, start_api: ApiFactory, tmp_path: Path
) -> None:
    root = tmp_path / "device"
    root.mkdir()
    (root / "big.bin").write_bytes(os.urandom(16 * 2**20))
    started = threading.Event()

    def progress(_n: int) -> None:
        started.set()

    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard, files_root=root)
        target = tmp_path / "big.bin"
        moving = asyncio.create_task(
            asyncio.to_thread(download, client(api), "gw-1", "/big.bin", target, progress)
        )
        await until_true(started.is_set)
        await device.drop()
        # Which side notices first words it: the relay (disconnected), presence or the shard.
        gone = r"download failed: device gw-1:? (is )?(not connected|disconnected)"
        with pytest.raises(OperatorError, match=gone):
            await moving
        assert not target.exists()
        assert not partials(tmp_path)


async def test_an_offline_device_is_refused(
    start_shard: ShardFactory, start_api: ApiFactory, tmp_path: Path
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard, files_root=tmp_path)
        await device.close()
        await until_true(lambda: shard.devices.get("gw-1") is None)
        await asyncio.sleep(0.2)  # its presence written offline
        with pytest.raises(OperatorError, match="not connected") as e:
            await asyncio.to_thread(client(api).stat_file, "gw-1", "/x")
        assert e.value.status == 409


async def test_a_device_serving_no_file_transfer_is_refused_before_anything_is_sent(
    start_shard: ShardFactory, start_api: ApiFactory, tmp_path: Path
) -> None:
    async with start_shard() as shard, start_api(run_state_service=False) as api:
        device = await connected("gw-1", shard)  # no files_root: its accept lists no proto 2
        try:
            with pytest.raises(OperatorError, match="does not serve file transfer") as e:
                await asyncio.to_thread(client(api).stat_file, "gw-1", "/etc/hostname")
            with pytest.raises(OperatorError, match="does not serve file transfer") as put:
                await asyncio.to_thread(upload, client(api), Path(__file__), "gw-1", "/x", ignore)
        finally:
            await device.close()
    assert (e.value.status, put.value.status) == (409, 409)
