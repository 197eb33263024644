"""Shared fixtures: a real nats-server per test, in-process shards on port 0."""

from __future__ import annotations

import contextlib
import dataclasses
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
import uvloop
from nats.aio.client import Client as NATS

from backend.natsserver import NatsServer
from backend.shard import Shard, ShardConfig
from tests.support import JWT_SECRET, ShardFactory


def pytest_asyncio_loop_factories(config: pytest.Config, item: pytest.Item) -> dict[str, Any]:
    """Async tests run on uvloop, as the shard does in production."""
    return {"uvloop": uvloop.new_event_loop}


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    with NatsServer(tmp_path / "nats") as server:
        yield server


@pytest.fixture
async def nc(nats_server: NatsServer) -> AsyncIterator[NATS]:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


@pytest.fixture
def start_shard(nats_server: NatsServer) -> ShardFactory:
    """``async with start_shard(shard_id="a", ping_interval=1) as shard:`` on a free port."""

    @contextlib.asynccontextmanager
    async def start(**overrides: Any) -> AsyncIterator[Shard]:
        config = ShardConfig(
            port=0, nats_urls=(nats_server.url,), jwt_secret=JWT_SECRET, drain_timeout=5.0
        )
        shard = Shard(dataclasses.replace(config, **overrides))
        await shard.start()
        try:
            yield shard
        finally:
            await shard.drain()

    return start
