"""The operator API from a terminal: what ``fleet devices``, ``cmd``, ``shell`` and
``rollout`` call.

Blocking (urllib, and websockets' sync client for shells), as a command-line tool needs
nothing more. Refusals of the API become ``OperatorError`` carrying its HTTP status and
message; the ``format_*`` functions turn answers into text for humans (``--json`` prints the
answers as they are). ``relay_terminal`` joins a terminal to a shell session.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import signal
import termios
import threading
import tty
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection, connect

from backend.protocol.errors import FleetError

HTTP_MARGIN = 5.0
"""Seconds a command's HTTP request waits beyond the command's own deadline."""


class OperatorError(FleetError):
    """The API refused the request (``status``: its HTTP status; 0 when it did not answer)."""

    reason = "operator_api"

    def __init__(self, message: str, *, status: int, field: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.field = field


@dataclass(frozen=True, slots=True)
class OperatorClient:
    url: str
    token: str
    timeout: float = 30.0

    def devices(
        self,
        *,
        state: str | None = None,
        online: bool | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> dict[str, Any]:
        """One page: ``{"devices": [...], "next_cursor": str | None}``."""
        query = {"state": state, "limit": limit, "cursor": cursor}
        if online is not None:
            query["online"] = "true" if online else "false"
        params = urllib.parse.urlencode({k: v for k, v in query.items() if v is not None})
        return self._call("GET", f"/devices?{params}")

    def all_devices(self, **filters: Any) -> Iterator[dict[str, Any]]:
        """Every matching device, following the pages' cursors."""
        cursor = None
        while True:
            page = self.devices(**filters, cursor=cursor)
            yield from page["devices"]
            cursor = page["next_cursor"]
            if cursor is None:
                return

    def device(self, device_id: str) -> dict[str, Any]:
        return self._call("GET", f"/devices/{urllib.parse.quote(device_id)}")

    def run_command(self, device_id: str, command: str, timeout: float = 10.0) -> dict[str, Any]:
        path = f"/devices/{urllib.parse.quote(device_id)}/commands"
        body = {"command": command, "timeout": timeout}
        return self._call("POST", path, body, timeout + HTTP_MARGIN)

    def open_shell(self, device_id: str, cols: int, rows: int) -> ClientConnection:
        """A WebSocket on the device's shell (see docs/operator.md for its frames)."""
        query = urllib.parse.urlencode({"cols": cols, "rows": rows})
        path = f"/devices/{urllib.parse.quote(device_id)}/shell?{query}"
        url = "ws" + self.url.rstrip("/").removeprefix("http") + path
        try:
            return connect(
                url, additional_headers={"Authorization": f"Bearer {self.token}"},
                compression=None, open_timeout=self.timeout,
            )  # fmt: skip
        except InvalidStatus as exc:
            raise answer_refusal(exc.response.status_code, exc.response.body or b"") from None
        except (OSError, TimeoutError) as exc:
            raise OperatorError(f"no answer from {self.url}: {exc}", status=0) from None

    def stat_file(self, device_id: str, path: str) -> dict[str, Any]:
        """The device's file_info of ``path`` (Mender file transfer)."""
        query = urllib.parse.urlencode({"path": path})
        return self._call("GET", f"/devices/{urllib.parse.quote(device_id)}/files/stat?{query}")

    def create_rollout(self, spec: dict[str, Any]) -> dict[str, Any]:
        return self._call("POST", "/rollouts", spec)

    def rollouts(self) -> dict[str, Any]:
        return self._call("GET", "/rollouts")

    def rollout(self, rollout_id: str) -> dict[str, Any]:
        return self._call("GET", f"/rollouts/{urllib.parse.quote(rollout_id)}")

    def control_rollout(self, rollout_id: str, action: str) -> dict[str, Any]:
        """``action``: pause, resume or abort."""
        return self._call("POST", f"/rollouts/{urllib.parse.quote(rollout_id)}/{action}", {})

    def _call(
        self, method: str, path: str, body: Any = None, timeout: float | None = None
    ) -> dict[str, Any]:
        """The answer's JSON object (every answer of the API is one)."""
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url.rstrip("/") + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout or self.timeout) as resp:
                answer: dict[str, Any] = json.load(resp)
                return answer
        except urllib.error.HTTPError as exc:
            raise _refusal(exc) from None
        except OSError as exc:  # URLError, refused connections, timeouts
            reason = getattr(exc, "reason", exc)
            raise OperatorError(f"no answer from {self.url}: {reason}", status=0) from None


def _refusal(exc: urllib.error.HTTPError) -> OperatorError:
    return answer_refusal(exc.code, exc.read())


def answer_refusal(status: int, answer: bytes | bytearray) -> OperatorError:
    """The API's ``{"error", "message", "field"}`` answer as an OperatorError."""
    try:
        body = json.loads(answer)
        message, field = str(body["message"]), body.get("field")
    except (ValueError, KeyError, TypeError):
        message, field = f"HTTP {status}", None
    return OperatorError(message, status=status, field=field)


# --- an interactive terminal on a shell session -------------------------------------------

Size = Callable[[], tuple[int, int]]


def terminal_size(fd: int) -> tuple[int, int]:
    """(cols, rows) of the terminal on ``fd``; 80x24 when it is not one or has no size set."""
    try:
        size = os.get_terminal_size(fd)
    except OSError:
        return 80, 24
    return (size.columns, size.lines) if size.columns and size.lines else (80, 24)


@contextlib.contextmanager
def raw_mode(fd: int) -> Iterator[None]:
    """Keys go to the remote shell as typed (Ctrl-C, Ctrl-D included); restored on exit."""
    if not os.isatty(fd):
        yield
        return
    saved = termios.tcgetattr(fd)
    tty.setraw(fd)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


EOF_GRACE = 5.0
"""Seconds ``fleet shell`` waits for the API to close the session after EOF on its input."""


def relay_terminal(shell: ClientConnection, stdin: int, stdout: int, size: Size) -> str:
    """Copy ``stdin`` to the shell and its output to ``stdout`` until the session ends
    (the shell exits, Ctrl-D on an empty line, the API closes it because the device ended or
    lost the session, EOF on ``stdin``); SIGWINCH sends a resize. Returns why it ended (the
    close reason)."""
    wake_r, wake_w = os.pipe()  # the signal handler and the output thread wake the loop
    previous = signal.signal(signal.SIGWINCH, lambda _signum, _frame: os.write(wake_w, b"w"))
    output = threading.Thread(target=_copy_output, args=(shell, stdout, wake_w), daemon=True)
    output.start()
    try:
        ended = _copy_input(shell, stdin, wake_r, size)
    finally:
        signal.signal(signal.SIGWINCH, previous)
        shell.close()
        output.join()
        os.close(wake_r)
        os.close(wake_w)
    return ended or shell.close_reason or f"closed ({shell.close_code})"


def _copy_input(shell: ClientConnection, stdin: int, wake: int, size: Size) -> str:
    """Until the output thread says the session ended (""); after EOF only waits for that,
    EOF_GRACE at most (then says so)."""
    sources, timeout = [stdin, wake], None
    try:
        while True:
            ready, _, _ = select.select(sources, [], [], timeout)
            if not ready:
                return f"the operator API did not close the session within {EOF_GRACE:g}s"
            if wake in ready:
                woken = os.read(wake, 64)
                if b"x" in woken:
                    return ""
                shell.send(json.dumps({"resize": list(size())}))
            if stdin in ready:
                data = os.read(stdin, 4096)
                if not data:
                    shell.send(json.dumps({"stop": True}))  # the API closes, with its reason
                    sources, timeout = [wake], EOF_GRACE
                else:
                    shell.send(data)
    except ConnectionClosed:
        return ""


def _copy_output(shell: ClientConnection, stdout: int, wake: int) -> None:
    try:
        for message in shell:
            if isinstance(message, bytes):
                os.write(stdout, message)
            else:  # the API refused a frame of ours: say so on the terminal
                os.write(stdout, f"\r\n[{json.loads(message).get('message')}]\r\n".encode())
    except ConnectionClosed:
        pass
    finally:
        os.write(wake, b"x")


# --- text for humans ---------------------------------------------------------------------------

COLUMNS = (("ID", "id"), ("ONLINE", "online"), ("HEALTH", "health"),
           ("ALERTS", "open_alerts"), ("FIRMWARE", "firmware"), ("SHARD", "shard"))  # fmt: skip


def format_devices(devices: list[dict[str, Any]]) -> str:
    """A table, one device a row; a sentence when there is none."""
    if not devices:
        return "no devices match"
    rows = [[title for title, _key in COLUMNS]]
    rows += [[_cell(device.get(key)) for _title, key in COLUMNS] for device in devices]
    return _table(rows)


def format_device(device: dict[str, Any]) -> str:
    """A device's page: its state, then each open alert with its suggested fix."""
    lines = [
        f"{device['id']}: {device['health']}, {'online' if device['online'] else 'offline'}"
        f" (shard {device['shard'] or '-'}), firmware {device['firmware'] or '-'}"
    ]
    for alert in device["alerts"]:
        lines.append(f"  [{alert['severity']}] {alert['code']}: {alert['description'] or '-'}")
        if alert["fix"]:
            lines.append(f"      fix: {alert['fix']}")
    if not device["alerts"]:
        lines.append("  no open alerts")
    return "\n".join(lines)


def format_command(result: dict[str, Any]) -> str:
    """The command's output, then its exit code when it failed."""
    output = str(result["output"])
    if result["exit_code"] == 0:
        return output
    separator = "" if not output or output.endswith("\n") else "\n"
    return f"{output}{separator}[exit code {result['exit_code']}]\n"


ROLLOUT_COLUMNS = (("ID", "id"), ("STATE", "state"), ("VERSION", "version"),
                   ("DEVICES", "total"), ("OPERATOR", "operator"))  # fmt: skip
COUNTED = ("pending", "offered", "downloading", "installing", "success", "failure")


def format_rollouts(rollouts: list[dict[str, Any]]) -> str:
    """A table, one rollout a row, with its progress."""
    rows = [[title for title, _key in ROLLOUT_COLUMNS] + ["DONE", "FAILED"]]
    for rollout in rollouts:
        counts = rollout["counts"]
        rows.append([_cell(rollout.get(key)) for _title, key in ROLLOUT_COLUMNS]
                    + [str(counts["success"]), str(counts["failure"])])  # fmt: skip
    return _table(rows)


def format_rollout(rollout: dict[str, Any]) -> str:
    """A rollout's page: its state and progress, then each failed device with the reason."""
    counts = rollout["counts"]
    progress = ", ".join(f"{counts[state]} {state}" for state in COUNTED)
    lines = [
        f"{rollout['id']}: {rollout['state']}, version {rollout['version']} to "
        f"{rollout['total']} devices (max {rollout['max_concurrent']} at once, "
        f"{rollout['rate']:g}/s) by {rollout['operator']}",
        f"  {progress}",
    ]
    lines += [f"  failed {f['device']}: {f['reason']}" for f in rollout.get("failed", [])]
    return "\n".join(lines)


def _table(rows: list[list[str]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip()
        for row in rows
    )


def _cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "-" if value in (None, "") else str(value)
