"""An operator at work during a scenario: commands and interactive shells on random online
devices, through the operator API, as people use it while the fleet lives its day.

Through ``OperatorClient``, the CLI's blocking client (gevent makes it cooperative in a
Locust process). Every action is reported through Locust's one hook, ``events.request.fire``
(request type ``OPERATOR``): its time and, when it failed, why.
"""

from __future__ import annotations

import random
import time
from typing import Any

from websockets.exceptions import ConnectionClosed

from backend.client.operator import OperatorClient, OperatorError
from simulator.stats import RequestHook, report_request

REQUEST_TYPE = "OPERATOR"
COMMAND = "uptime"
SHELL_DEADLINE = 15.0  # s for a shell session to open, answer and end
DEVICES_LOOKED_AT = 100  # online devices listed to pick from


class OperatorActivity:
    """Every ``interval`` s one action on a random online device: a command, or every
    ``shell_every``-th time a shell session (``hostname``, then ``exit``)."""

    def __init__(
        self,
        operator: OperatorClient,
        fire: RequestHook,
        rng: random.Random,
        *,
        interval: float = 5.0,
        shell_every: int = 3,
    ) -> None:
        self.operator = operator
        self.fire = fire
        self.rng = rng
        self.interval = interval
        self.shell_every = shell_every
        self.actions = 0

    def run(self) -> None:
        """A greenlet's body: act until killed."""
        while True:
            time.sleep(self.interval)
            self.act()

    def act(self) -> None:
        device = self._pick_device()
        if device is None:
            return
        self.actions += 1
        if self.actions % self.shell_every == 0:
            self._timed("operator shell", self._shell, device)
        else:
            self._timed("operator command", self._command, device)

    def _pick_device(self) -> str | None:
        try:
            page = self.operator.devices(online=True, limit=DEVICES_LOOKED_AT)
        except OperatorError as exc:
            self._report("operator devices", 0.0, 0, exc)
            return None
        devices = page["devices"]
        return str(self.rng.choice(devices)["id"]) if devices else None

    def _timed(self, name: str, action: Any, device: str) -> None:
        started = time.monotonic()
        length, error = 0, None
        try:
            length = action(device)
        except (OperatorError, ConnectionClosed, TimeoutError) as exc:
            error = exc
        self._report(name, time.monotonic() - started, length, error)

    def _report(self, name: str, seconds: float, length: int, error: BaseException | None) -> None:
        report_request(self.fire, REQUEST_TYPE, name, seconds, length, error)

    def _command(self, device: str) -> int:
        result = self.operator.run_command(device, COMMAND)
        if result["exit_code"] != 0:
            raise OperatorError(f"{COMMAND} exited with {result['exit_code']}", status=200)
        return len(result["output"])

    def _shell(self, device: str) -> int:
        """Open a shell, ask the device its hostname, leave; the bytes read."""
        deadline = time.monotonic() + SHELL_DEADLINE
        with self.operator.open_shell(device, 80, 24) as shell:
            shell.send(b"hostname\r")
            output = b""
            while device.encode() not in output:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise TimeoutError(f"no hostname from {device}'s shell")
                message = shell.recv(timeout=remaining)
                output += message if isinstance(message, bytes) else b""
            shell.send(b"exit\r")
        return len(output)
