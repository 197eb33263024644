"""The baseline of ``bench/gateway_density.py``: the Locust user one would write first.

One user opens one blocking ``websocket-client`` connection with its defaults, then reads
forever (the library answers the shard's pings itself). Device tokens are signed with the
secret in ``FLEET_BENCH_JWT_SECRET``; ``--host`` is a comma-separated list of shard URLs.
"""

from __future__ import annotations

import itertools
import os

import websocket
from locust import User, constant, task

from backend.bus.auth import issue_device_token
from backend.protocol.http import DEVICE_PATH

_indexes = itertools.count()


class NaiveWebSocketUser(User):
    wait_time = constant(1)  # only between reconnects: the task returns when the socket dies

    @task
    def hold(self) -> None:
        """Connect as a device of its own and read until the connection ends."""
        index = next(_indexes)
        urls = (self.host or "").split(",")
        token = issue_device_token(f"naive-{index:06d}", os.environ["FLEET_BENCH_JWT_SECRET"])
        ws = websocket.create_connection(
            urls[index % len(urls)] + DEVICE_PATH, header=[f"Authorization: Bearer {token}"]
        )
        try:
            while True:
                ws.recv()
        finally:
            ws.close()
