"""Operator file transfers: Mender's file transfer (proto 2) on a device, through whichever
shard holds it; one sid per request.

- ``GET /devices/{id}/files/stat?path=P`` -> the device's ``file_info`` as JSON, or 502
  ``device_refused`` with the device's text as it is (no such file, access denied...).
- ``GET /devices/{id}/files/download?path=P`` (WebSocket): binary frames carry the file in
  order; then ``{"op": "done", "size": N, "sha256": H}`` (of the bytes read from the device),
  or ``{"op": "error", "message": M}`` (the device's text, a drop, the size limit), then close.
- ``GET /devices/{id}/files/upload?path=P&size=N&mode=M`` (WebSocket): after ``{"op":
  "ready"}`` the operator sends binary frames (the API reads the next one only when the
  device's window has room: TCP backpressure) and ``{"op": "end"}``; answered ``{"op":
  "done", "size", "sha256"}`` (of the bytes the device acked) or ``{"op": "error", ...}``.

Sizes above ``max_transfer_bytes`` are refused (413 before an upload; a download is ended
with an error when it passes the limit). No message from the device for ``timeout`` seconds
ends a transfer.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import uuid
from typing import Any

from aiohttp import WSMsgType, web
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry, Counter

from backend.bus.routing import DeviceRouter
from backend.operator.errors import ApiError, CommandTimedOut, TooLarge, TransferRefused
from backend.operator.relay import DeviceRelay, Gone
from backend.protocol import filetransfer as ft

log = logging.getLogger("fleet.files")

MAX_PATH = 4096


def path_of(query: Any) -> str:
    path = str(query.get("path", ""))
    if not path or len(path) > MAX_PATH or "\x00" in path:
        raise ApiError(f"give path=<the file on the device, 1 to {MAX_PATH} characters>",
                       field="path")  # fmt: skip
    return path


def put_request(query: Any, limit: int) -> ft.PutFile:
    """The upload's put_file from the query; TooLarge beyond ``limit`` bytes."""
    try:
        size = int(query.get("size", ""))
        mode = int(query.get("mode", "420"))  # 0o644
    except ValueError:
        raise ApiError("give size=<bytes> (and mode=<decimal mode bits>)", field="size") from None
    if size < 0:
        raise ApiError("size must be >= 0", field="size")
    if size > limit:
        raise TooLarge(f"{size} bytes exceed the transfer limit of {limit} bytes", field="size")
    return ft.PutFile(path_of(query), size, mode & 0o7777)


class FileMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.transfers = Counter(
            "fleet_api_file_transfers", "File transfers by kind (stat, download, upload) and "
            "outcome (ok, refused, failed)", ["kind", "outcome"], registry=registry,
        )  # fmt: skip
        self.bytes = Counter(
            "fleet_api_file_transfer_bytes", "File bytes moved, by kind (download, upload)",
            ["kind"], registry=registry,
        )  # fmt: skip


class FileRelay:
    """One transfer of one operator on one device."""

    def __init__(
        self, nc: NATS, router: DeviceRouter, device_id: str, operator: str, timeout: float
    ) -> None:
        self.timeout = timeout
        self.sid = uuid.uuid4().hex
        self.relay = DeviceRelay(nc, router, device_id, operator, self.sid)
        self.transfer = ft.FileTransfer(self.sid, ft.Role.SERVER)

    async def __aenter__(self) -> FileRelay:
        await self.relay.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.transfer.phase is not ft.Phase.IDLE:  # something went out for the sid
            await self.relay.release()
        await self.relay.close()

    async def flush(self) -> None:
        await self.relay.send(self.transfer.outgoing())

    async def events(self) -> list[ft.Event]:
        """The events of the device's next message; Failed when it is gone or silent."""
        try:
            async with asyncio.timeout(self.timeout):
                msg = await self.relay.receive()
        except TimeoutError:
            return [ft.Failed(f"the device sent nothing for {self.timeout:g}s", False)]
        if isinstance(msg, Gone):
            return [ft.Failed(msg.reason, False)]
        self.transfer.receive(msg)
        await self.flush()
        return self.transfer.events()

    async def stat(self, path: str) -> ft.FileInfo:
        self.transfer.stat(path)
        await self.flush()
        while True:
            for event in await self.events():
                if isinstance(event, ft.Info):
                    return event.info
                if isinstance(event, ft.Failed):
                    raise _refusal(event)

    async def download(self, ws: web.WebSocketResponse, path: str, limit: int) -> int:
        """Streams the file to ``ws``; returns the bytes sent (ValueError says why it failed)."""
        self.transfer.get(path)
        await self.flush()
        digest = hashlib.sha256()
        while True:
            for event in await self.events():
                if isinstance(event, ft.Chunk):
                    if self.transfer.offset > limit:
                        self.transfer.refuse(f"larger than the limit of {limit} bytes", "get_file")
                        await self.flush()
                        raise ValueError(f"the file exceeds the transfer limit of {limit} bytes")
                    digest.update(event.data)
                    await ws.send_bytes(event.data)
                elif isinstance(event, ft.Done):
                    await ws.send_json({"op": "done", "size": event.size,
                                        "sha256": digest.hexdigest()})  # fmt: skip
                    return event.size
                elif isinstance(event, ft.Failed):
                    raise ValueError(event.text)

    async def upload(self, ws: web.WebSocketResponse, request: ft.PutFile) -> int:
        self.transfer.put(request)
        await self.flush()
        await self._until(ft.Ready)
        await ws.send_json({"op": "ready"})
        digest = hashlib.sha256()
        async for frame in ws:
            if frame.type is WSMsgType.BINARY:
                if self.transfer.offset + len(frame.data) > request.size:
                    raise ValueError(f"more bytes than the {request.size} announced")
                digest.update(frame.data)
                self.transfer.send(frame.data)
                await self.flush()
                while not self.transfer.can_send:
                    await self._until(ft.Acked)
            elif frame.type is WSMsgType.TEXT and _op(frame.data) == "end":
                break
        else:
            raise ValueError("the operator went away before the end")
        if self.transfer.offset != request.size:
            raise ValueError(f"{self.transfer.offset} bytes sent, {request.size} announced")
        self.transfer.end()
        await self.flush()
        await self._until(ft.Done)
        await ws.send_json({"op": "done", "size": request.size, "sha256": digest.hexdigest()})
        return request.size

    async def _until(self, kind: type[ft.Event]) -> None:
        while True:
            for event in await self.events():
                if isinstance(event, kind):
                    return
                if isinstance(event, ft.Failed):
                    raise ValueError(event.text)


def _op(text: str) -> Any:
    try:
        return json.loads(text).get("op")
    except (ValueError, AttributeError):
        return None


def _refusal(event: ft.Failed) -> ApiError:
    """The device's refusal (its text as it is), or a silent / vanished device."""
    if not event.by_peer and event.text.startswith("the device sent nothing"):
        return CommandTimedOut(event.text)
    return TransferRefused(event.text)
