"""``Service``: ``async with`` starts a part and stops it, also when the body raises."""

from __future__ import annotations

import pytest

from backend.lifecycle import Service


class Recorder(Service):
    def __init__(self) -> None:
        self.calls: list[str] = []

    async def start(self) -> None:
        self.calls.append("start")

    async def stop(self) -> None:
        self.calls.append("stop")


async def test_async_with_starts_then_stops() -> None:
    async with Recorder() as service:
        assert service.calls == ["start"]
    assert service.calls == ["start", "stop"]


async def test_a_body_that_raises_still_stops_the_service() -> None:
    service = Recorder()
    with pytest.raises(RuntimeError, match="boom"):
        async with service:
            raise RuntimeError("boom")
    assert service.calls == ["start", "stop"]


def test_a_part_without_stop_cannot_be_made() -> None:
    class NoStop(Service):
        async def start(self) -> None:
            pass

    with pytest.raises(TypeError, match="stop"):
        NoStop()  # type: ignore[abstract]
