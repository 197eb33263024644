"""The test device's file transfer (proto 2) on a directory ``root``, served as mender-connect
serves it: "stat" answered with "file_info", "get_file" streamed in chunks up to 20 ahead of
the last ack, "put_file" acked at 0, then every 10 chunks and at the end; refusals ("error")
carry the device's own text (no such file, outside the root, larger than ``max_size``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import IO

from backend.protocol import filetransfer as ft
from backend.protocol.envelope import ProtoMsg

Send = Callable[[list[ProtoMsg]], Awaitable[None]]


class DeviceFiles:
    def __init__(self, send: Send, root: Path, *, max_size: int = 1 << 30) -> None:
        self.send = send
        self.root = root.resolve()
        self.max_size = max_size
        self.transfers: dict[str, ft.FileTransfer] = {}
        self._acked: dict[str, asyncio.Event] = {}
        self._uploads: dict[str, tuple[Path, IO[bytes]]] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    async def receive(self, msg: ProtoMsg) -> None:
        transfer = self.transfers.get(msg.sid)
        if transfer is None:
            transfer = self.transfers[msg.sid] = ft.FileTransfer(msg.sid, ft.Role.DEVICE)
        transfer.receive(msg)
        for event in transfer.events():
            self._handle(transfer, event)
        await self._flush(transfer)
        if transfer.phase is ft.Phase.ENDED:
            self._forget(msg.sid)

    def close_all(self) -> None:
        for task in self._tasks:
            task.cancel()
        for sid in list(self._uploads):
            self._abandon(sid)
        self.transfers.clear()

    def _handle(self, transfer: ft.FileTransfer, event: ft.Event) -> None:
        match event:
            case ft.StatRequested(path):
                self._stat(transfer, path)
            case ft.GetRequested(path):
                self._get(transfer, path)
            case ft.PutRequested(request):
                self._put(transfer, request)
            case ft.Chunk(_offset, data):
                self._uploads[transfer.sid][1].write(data)
            case ft.Done() if transfer.sid in self._uploads:
                self._finish_upload(transfer)
            case ft.Acked():
                self._acked.setdefault(transfer.sid, asyncio.Event()).set()
            case ft.Failed():
                self._abandon(transfer.sid)
                self._forget(transfer.sid)
            case ft.Info() | ft.Ready() | ft.Done():
                pass

    def _local(self, transfer: ft.FileTransfer, path: str, msgtype: str) -> Path | None:
        local = (self.root / path.lstrip("/")).resolve()
        if not local.is_relative_to(self.root):
            transfer.refuse(f"access denied: {path} is outside {self.root.name}/", msgtype)
            return None
        return local

    def _stat(self, transfer: ft.FileTransfer, path: str) -> None:
        local = self._local(transfer, path, ft.TYP_STAT)
        if local is None:
            return
        try:
            st = local.stat()
        except OSError as exc:
            transfer.refuse(f"stat {path}: {exc.strerror}", ft.TYP_STAT)
            return
        info = ft.FileInfo(path, st.st_size, st.st_uid, st.st_gid, st.st_mode, int(st.st_mtime))
        transfer.info(info)

    def _get(self, transfer: ft.FileTransfer, path: str) -> None:
        local = self._local(transfer, path, ft.TYP_GET)
        if local is None:
            return
        try:
            handle = local.open("rb")
        except OSError as exc:
            transfer.refuse(f"open {path}: {exc.strerror}", ft.TYP_GET)
            return
        transfer.start_sending()
        task = asyncio.create_task(self._stream(transfer, handle))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _stream(self, transfer: ft.FileTransfer, handle: IO[bytes]) -> None:
        acked = self._acked.setdefault(transfer.sid, asyncio.Event())
        with handle:
            while data := handle.read(transfer.chunk):
                while not transfer.can_send:
                    if transfer.phase is not ft.Phase.SENDING:
                        return  # the server ended it
                    acked.clear()
                    await acked.wait()
                transfer.send(data)
                await self._flush(transfer)
        transfer.end()
        await self._flush(transfer)

    def _put(self, transfer: ft.FileTransfer, request: ft.PutFile) -> None:
        if request.size > self.max_size:
            transfer.refuse(f"file too large: {request.size} bytes, the limit is "
                            f"{self.max_size}", ft.TYP_PUT)  # fmt: skip
            return
        local = self._local(transfer, request.path, ft.TYP_PUT)
        if local is None:
            return
        partial = local.with_name(f".{local.name}.part")
        try:
            handle = partial.open("wb")
        except OSError as exc:
            transfer.refuse(f"create {request.path}: {exc.strerror}", ft.TYP_PUT)
            return
        self._uploads[transfer.sid] = (local, handle)
        transfer.accept_put()

    def _finish_upload(self, transfer: ft.FileTransfer) -> None:
        local, handle = self._uploads.pop(transfer.sid)
        handle.close()
        os.replace(local.with_name(f".{local.name}.part"), local)

    def _abandon(self, sid: str) -> None:
        upload = self._uploads.pop(sid, None)
        if upload is not None:
            local, handle = upload
            handle.close()
            local.with_name(f".{local.name}.part").unlink(missing_ok=True)

    def _forget(self, sid: str) -> None:
        self.transfers.pop(sid, None)
        self._acked.pop(sid, None)

    async def _flush(self, transfer: ft.FileTransfer) -> None:
        messages = transfer.outgoing()
        if messages:
            await self.send(messages)
