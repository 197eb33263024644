"""Operators reaching into houses during a scenario: port forwards fetching a gateway's local
web page, and files copied to a gateway and back, through the operator API.

Blocking clients (``fetch_once``, ``backend.client.files``), cooperative under Locust's gevent.
Every stream is reported through Locust's hook (request type ``REMOTE``): ``remote page``
(time to the whole answer), ``remote first byte`` (time to its first byte) and ``remote copy``
(a file up and back); a wrong body, checksum or size is a failure whose error says
``corrupt``, so the verdict can tell lost streams from damaged ones.
"""

from __future__ import annotations

import hashlib
import os
import random
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from backend.client.files import download, upload
from backend.client.operator import OperatorClient, OperatorError
from backend.client.portforward import fetch_once
from simulator.house import WEB_PORT, page_bytes
from simulator.stats import RequestHook, report_request

REQUEST_TYPE = "REMOTE"
CORRUPT = "corrupt"
DEVICES_LOOKED_AT = 100
PAGE_BYTES = 16 * 1024
COPY_BYTES = 32 * 1024


def corrupt(what: str) -> OperatorError:
    """The bytes arrived, but not the ones sent."""
    return OperatorError(f"{CORRUPT}: {what}", status=0)


class RemoteActivity:
    """Every ``interval`` s one stream on a random online device: a page through a port
    forward, or every ``copy_every``-th time a file copied there and back."""

    def __init__(
        self, operator: OperatorClient, fire: RequestHook, rng: random.Random, *,
        interval: float = 1.0, copy_every: int = 3,
    ) -> None:  # fmt: skip
        self.operator = operator
        self.fire = fire
        self.rng = rng
        self.interval = interval
        self.copy_every = copy_every
        self.actions = 0
        self.workdir = Path(tempfile.mkdtemp(prefix="remote-access-"))

    def run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.act()

    def act(self) -> None:
        try:
            page = self.operator.devices(online=True, limit=DEVICES_LOOKED_AT)
        except OperatorError as exc:
            report_request(self.fire, REQUEST_TYPE, "remote devices", 0.0, 0, exc)
            return
        if not page["devices"]:
            return
        device = str(self.rng.choice(page["devices"])["id"])
        self.actions += 1
        if self.actions % self.copy_every == 0:
            self._timed("remote copy", self._copy, device)
        else:
            self._timed("remote page", self._page, device)

    def _timed(self, name: str, action: Callable[[str], int], device: str) -> None:
        started = time.monotonic()
        length, error = 0, None
        try:
            length = action(device)
        except OperatorError as exc:
            error = exc
        report_request(self.fire, REQUEST_TYPE, name, time.monotonic() - started, length, error)

    def _page(self, device: str) -> int:
        request = f"GET /bytes/{PAGE_BYTES} HTTP/1.1\r\nHost: {device}\r\n\r\n".encode()
        fetched = fetch_once(
            self.operator.url, self.operator.token, device, ("127.0.0.1", WEB_PORT), request
        )
        report_request(self.fire, REQUEST_TYPE, "remote first byte", fetched.first_byte_s)
        head, _, body = fetched.answer.partition(b"\r\n\r\n")
        if body != page_bytes(PAGE_BYTES):
            raise corrupt(f"page of {len(body)} bytes, not the {PAGE_BYTES} served")
        if f"X-Sha256: {hashlib.sha256(body).hexdigest()}".encode() not in head:
            raise corrupt("page sha256 differs from the gateway's")
        return len(fetched.answer)

    def _copy(self, device: str) -> int:
        data = os.urandom(COPY_BYTES)
        source, back = self.workdir / f"{device}.up", self.workdir / f"{device}.back"
        source.write_bytes(data)
        # The operator's own name in the path: two operators copying to one device at once
        # must not overwrite each other's file.
        path = f"/tmp/{self.workdir.name}-{self.actions}.bin"
        put = upload(self.operator, source, device, path, lambda _n: None)
        got = download(self.operator, device, path, back, lambda _n: None)
        if back.read_bytes() != data or put["sha256"] != got["sha256"]:
            raise corrupt(f"{path} came back different")
        return 2 * COPY_BYTES
