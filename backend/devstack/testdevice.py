"""A built-in test device: the device side of the session over an asyncio WebSocket client.

Used by the local demo and by the tests. It speaks through ``websockets``' own client, an
independent implementation of RFC 6455, so the shard's codec is checked against it. The
alert outbox lives in the ``DeviceSession``, which outlives each connection: after a
reconnect the unacked alerts are sent again and the stream's de-duplication keeps them single.
Shell sessions are served by the line-oriented ``DeviceShells`` (lines run as commands), and
update offers by ``on_update`` when one is given.

It keeps mender-connect's rules where tests need them: ``protocols`` is what its "accept"
lists and all it serves (by default what it has handlers for: shell, monitor, commands,
updates, port forwards, and file transfer when given ``files_root``; anything else is
answered with "no handler registered for protocol"), ``handshake=False`` makes it a
pre-handshake peer that lists nothing, and its shells ping every ``shell_ping_interval``
seconds, die without a pong, and allow ``sessions_per_user`` sessions per operator.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import assert_never

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from backend.devstack.devfiles import DeviceFiles
from backend.devstack.devforward import DeviceForwards
from backend.lifecycle import Service
from backend.protocol import envelope, messages
from backend.protocol import portforward as pf
from backend.protocol import session as ps
from backend.protocol.http import DEVICE_PATH
from backend.protocol.terminal import PING_INTERVAL, SESSIONS_PER_USER, DeviceShells

log = logging.getLogger("fleet.testdevice")

HEALTH_CHECK_TICK = 0.5
"""Seconds between two looks of the shells' health check."""
CommandHandler = Callable[[str], tuple[int, bytes] | None]
"""Runs a command: (exit code, output), or None for a command that never finishes."""
UpdateHandler = Callable[[messages.UpdateOffer], Awaitable[str]]
"""Installs an offered update: "" when it succeeded, else the failure's reason."""


def echo_command(command: str) -> tuple[int, bytes]:
    """A tiny shell: ``echo`` prints its arguments, ``false`` fails, the rest is unknown."""
    name, _, rest = command.partition(" ")
    if name == "echo":
        return 0, rest.encode() + b"\n"
    if name == "false":
        return 1, b""
    return 127, f"sh: {name}: not found\n".encode()


class TestDevice(Service):
    __test__ = False  # not a pytest test class

    def __init__(
        self,
        device_id: str,
        token: str,
        url: str,
        *,
        on_command: CommandHandler = echo_command,
        on_update: UpdateHandler | None = None,
        offers_lost: int = 0,
        protocols: tuple[int, ...] | None = None,
        handshake: bool = True,
        shell_ping_interval: float = PING_INTERVAL,
        sessions_per_user: int = SESSIONS_PER_USER,
        forward_window: int = pf.MENDER_WINDOW,
        forward_chunk: int = pf.MENDER_CHUNK,
        files_root: Path | None = None,
        max_file_size: int = 1 << 30,
    ) -> None:
        self.device_id = device_id
        self.token = token
        self.url = url.rstrip("/") + DEVICE_PATH
        self.on_command = on_command
        self.on_update = on_update
        self.offers_lost = offers_lost  # the first offers go unanswered, as if lost on the way
        self.shells = DeviceShells(
            sessions_per_user=sessions_per_user, ping_interval=shell_ping_interval
        )
        self._updates: set[asyncio.Task[None]] = set()
        # Port forwards as mender-connect serves them unless told a larger window and chunk.
        self.forwards = DeviceForwards(self._send, window=forward_window, chunk=forward_chunk)
        # File transfer on a directory, when given one (a real device serves its file system).
        self.files: DeviceFiles | None = None
        if files_root is not None:
            self.files = DeviceFiles(self._send, files_root, max_size=max_file_size)
        if protocols is None:  # what it has handlers for
            protocols = (*ps.DEVICE_PROTOCOLS, envelope.PROTO_PORT_FORWARD)
            if self.files is not None:
                protocols = (*protocols, envelope.PROTO_FILE_TRANSFER)
        self.session = ps.DeviceSession(
            ps.Role.DEVICE, device_id=device_id, protocols=protocols, handshake=handshake
        )
        self.events: asyncio.Queue[ps.Event] = asyncio.Queue()
        self.acked: set[str] = set()
        self._ack_received = asyncio.Event()
        self.handshake = asyncio.Event()
        self.close_code: int | None = None
        self.close_reason = ""
        self._ws: ClientConnection | None = None
        self._sending = asyncio.Lock()
        self._reader: asyncio.Task[None] | None = None
        self._health: asyncio.Task[None] | None = None

    async def connect(self) -> None:
        """Open a connection (again); unacked alerts go out again once it is up."""
        self.handshake.clear()
        self._ws = await connect(
            self.url,
            additional_headers={"Authorization": f"Bearer {self.token}"},
            compression=None,
            open_timeout=10,
        )
        self.close_code = None
        self.session.resend_unacked()
        await self.flush()
        self._reader = asyncio.create_task(self._read())
        self._health = asyncio.create_task(self._health_check())

    async def start(self) -> None:
        await self.connect()

    async def stop(self) -> None:
        await self.close()

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        await self.wait_closed()

    async def wait_closed(self) -> None:
        for task in list(self._updates):
            task.cancel()  # an install does not outlive the connection that offered it
        if self._reader is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._health is not None:
            self._health.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._health

    async def drop(self) -> None:
        """Vanish without a close handshake, like a gateway losing power."""
        if self._ws is not None:
            self._ws.transport.abort()
        await self.wait_closed()

    async def send_alert(self, alert: messages.Alert) -> None:
        self.session.send_alert(alert)
        await self.flush()

    async def send_status(self, status: messages.Status) -> None:
        self.session.send_status(status)
        await self.flush()

    async def wait_acked(self, alert_id: str) -> None:
        """Wait until the server acked ``alert_id`` (wrap it in ``asyncio.timeout``)."""
        while alert_id not in self.acked:
            self._ack_received.clear()
            await self._ack_received.wait()

    async def _read(self) -> None:
        assert self._ws is not None
        try:
            async for data in self._ws:
                if isinstance(data, bytes):
                    self.session.receive_message(data)
                    await self._handle_events()
        except ConnectionClosed:
            pass
        finally:
            received = self._ws.protocol.close_rcvd
            if received is not None:
                self.close_code, self.close_reason = received.code, received.reason
            self.session.connection_lost()
            self.shells.close_all()
            if self._health is not None:
                self._health.cancel()  # the next connection starts its own
            self.forwards.close_all()
            if self.files is not None:
                self.files.close_all()

    async def _health_check(self) -> None:
        """mender-connect's shell health check, while the connection lasts."""
        while True:
            await asyncio.sleep(HEALTH_CHECK_TICK)
            self.shells.tick(self.session, time.monotonic())
            await self.flush()

    async def _handle_events(self) -> None:
        for event in self.session.events_received():
            match event:
                case ps.AlertAcked():
                    self.acked.add(event.id)
                    self._ack_received.set()
                case ps.HandshakeCompleted():
                    self.handshake.set()
                case ps.CommandRequested():
                    self._run_command(event)
                case ps.MessageReceived() if event.msg.proto == envelope.PROTO_SHELL:
                    self._shell_message(event.msg)
                case ps.MessageReceived() if event.msg.proto == envelope.PROTO_PORT_FORWARD:
                    await self.forwards.receive(event.msg)
                case ps.MessageReceived() if (
                    event.msg.proto == envelope.PROTO_FILE_TRANSFER and self.files is not None
                ):
                    await self.files.receive(event.msg)
                case ps.UpdateOffered() if self.on_update is not None:
                    self._start_update(event)
                case (
                    ps.ProtocolViolation() | ps.ErrorReceived() | ps.PeerClosing()
                    | ps.AlertReceived() | ps.StatusReceived() | ps.CommandCompleted()
                    | ps.RequestFailed()
                    | ps.UpdateProgressReceived() | ps.Relayed() | ps.MessageReceived()
                    | ps.UpdateOffered() | ps.StrayMessage()
                ):  # fmt: skip
                    pass  # only queued, for whoever reads ``events``
                case _:
                    assert_never(event)
            self.events.put_nowait(event)
        await self.flush()

    def _run_command(self, event: ps.CommandRequested) -> None:
        started = time.monotonic()
        outcome = self.on_command(event.request.command)
        if outcome is not None:
            result = messages.CommandResult(*outcome, time.monotonic() - started)
            self.session.send_command_result(event.sid, result)

    def _shell_message(self, msg: envelope.ProtoMsg) -> None:
        """Shell lines run through ``on_command``, like commands (a silent one prints nothing)."""
        for line in self.shells.receive(msg, self.session, time.monotonic()):
            outcome = self.on_command(line.command)
            if outcome is not None:
                self.shells.output(self.session, line.sid, outcome[1])

    def _start_update(self, event: ps.UpdateOffered) -> None:
        if self.offers_lost:
            self.offers_lost -= 1
            return
        self.session.send_update_progress(event.sid, messages.UpdateProgress("downloading", 0))
        task = asyncio.create_task(self._install(event))
        self._updates.add(task)
        task.add_done_callback(self._updates.discard)

    async def _install(self, event: ps.UpdateOffered) -> None:
        assert self.on_update is not None
        failure = await self.on_update(event.offer)
        final = messages.UpdateProgress("failure" if failure else "success", 100, failure)
        self.session.send_update_progress(event.sid, final)
        await self.flush()

    async def _send(self, msgs: list[envelope.ProtoMsg]) -> None:
        for msg in msgs:
            self.session.send(msg)
        await self.flush()

    async def flush(self) -> None:
        """Send what the session queued (tests queue messages of their own through it)."""
        if self._ws is None:
            return
        # One flush at a time: the forwards' pumps flush too, and a message taken by one
        # flush must not be overtaken by the next one's (a "stop" before the last "forward").
        async with self._sending:
            for message in self.session.messages_to_send():
                try:
                    await self._ws.send(message)
                except ConnectionClosed:
                    return  # kept in the outbox; resent after the next connect
