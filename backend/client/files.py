"""``fleet cp`` and ``fleet stat``'s side of a file transfer (the frames:
``backend.operator.files``). Blocking, as the shell client is.

A download is written to ``<local>.part`` beside the target, hashed as written, and renamed
only when the API's sha256 of what it read from the device equals ours; any failure (the
device's error text, a drop, a mismatch) removes the partial file and raises OperatorError
with the reason. An upload compares our sha256 of what we read with the API's of what the
device acked.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from backend.client.operator import OperatorClient, OperatorError, answer_refusal

Progress = Callable[[int], None]
READ_SIZE = 64 * 1024


@contextlib.contextmanager
def _transfer(client: OperatorClient, device_id: str, kind: str, **query: Any) -> Iterator[
    ClientConnection
]:  # fmt: skip
    path = f"/devices/{urllib.parse.quote(device_id)}/files/{kind}?{urllib.parse.urlencode(query)}"
    url = "ws" + client.url.rstrip("/").removeprefix("http") + path
    try:
        ws = connect(
            url, additional_headers={"Authorization": f"Bearer {client.token}"},
            compression=None, open_timeout=client.timeout, max_size=4 << 20,
        )  # fmt: skip
    except InvalidStatus as exc:
        raise answer_refusal(exc.response.status_code, exc.response.body or b"") from None
    except (OSError, TimeoutError) as exc:
        raise OperatorError(f"no answer from {client.url}: {exc}", status=0) from None
    with ws:
        yield ws


def _final(ws: ClientConnection, frame: str | bytes) -> dict[str, Any]:
    """The API's last word: ``done`` (returned) or ``error`` (raised)."""
    answer = json.loads(frame)
    if answer.get("op") == "error":
        raise OperatorError(str(answer.get("message")), status=502)
    if answer.get("op") != "done":
        raise OperatorError(f"unexpected answer {answer!r}", status=502)
    return dict(answer)


def download(
    client: OperatorClient, device_id: str, path: str, local: Path, progress: Progress
) -> dict[str, Any]:
    """``path`` of the device to ``local``; the API's ``done`` answer (size, sha256)."""
    partial = local.with_name(f".{local.name}.part")
    digest = hashlib.sha256()
    try:
        with _transfer(client, device_id, "download", path=path) as ws, partial.open("wb") as out:
            for frame in ws:
                if isinstance(frame, bytes):
                    out.write(frame)
                    digest.update(frame)
                    progress(len(frame))
                    continue
                done = _final(ws, frame)
                break
            else:
                raise OperatorError("the transfer ended without a result", status=0)
        if done["sha256"] != digest.hexdigest():
            raise OperatorError(
                f"checksum mismatch: wrote sha256 {digest.hexdigest()}, the device sent "
                f"{done['sha256']}", status=0,
            )  # fmt: skip
        os.replace(partial, local)
        return done
    except ConnectionClosed as exc:
        raise OperatorError(f"the transfer was cut: {exc}", status=0) from None
    finally:
        partial.unlink(missing_ok=True)


def upload(
    client: OperatorClient, local: Path, device_id: str, path: str, progress: Progress
) -> dict[str, Any]:
    size, mode = local.stat().st_size, local.stat().st_mode & 0o7777
    digest = hashlib.sha256()
    try:
        with _transfer(client, device_id, "upload", path=path, size=size, mode=mode) as ws:
            ready = ws.recv()
            if json.loads(ready).get("op") != "ready":
                _final(ws, ready)
            with local.open("rb") as source:
                while data := source.read(READ_SIZE):
                    ws.send(data)
                    digest.update(data)
                    progress(len(data))
            ws.send(json.dumps({"op": "end"}))
            done = _final(ws, ws.recv())
    except ConnectionClosed as exc:
        raise OperatorError(f"the transfer was cut: {exc}", status=0) from None
    if done["sha256"] != digest.hexdigest():
        raise OperatorError(
            f"checksum mismatch: read sha256 {digest.hexdigest()}, the device acked "
            f"{done['sha256']}", status=0,
        )  # fmt: skip
    return done


def format_stat(info: dict[str, Any]) -> str:
    return (f"{info['path']}: {info['size']} bytes, mode {info['mode'] & 0o7777:04o}, "
            f"uid {info['uid']}, gid {info['gid']}, modified {info['modtime']}")  # fmt: skip
