"""Operator port forwards: an operator's WebSocket relayed to a device's Mender port forward
(proto 3), through whichever shard holds the device.

``GET /devices/{id}/port-forward?host=H&port=P[&protocol=tcp|udp]`` upgrades to a WebSocket
carrying any number of connections to ``H:P`` as the device sees it (the operator's local
listener accepts them; ``fleet port-forward`` is one). Frames, operator <-> API:

- text ``{"op": "open", "id": C}`` -> the device dials (Mender "new", ``connection_id`` C);
  answered ``{"op": "opened", "id": C, "window": W, "chunk": N}``, or ``{"op": "closed",
  "id": C, "reason": <the device's text>}``.
- binary ``[len(C)] C <bytes>`` both ways: data of connection C. The operator sends at most
  W frames of at most N bytes unacked per connection; each device ack comes back as
  ``{"op": "ack", "id": C}``. The operator acks each data frame it wrote out with the same
  ``{"op": "ack", "id": C}``, which the API passes to the device (Mender's receiver acks).
- ``{"op": "close", "id": C}`` ends C (the device answers "stop"); ``{"op": "closed", "id":
  C, "reason"}`` says that the device ended it (target closed, error, device gone).

The WebSocket closes with ``DEVICE_GONE`` when the device disconnects, ``IDLE`` after
``idle_timeout`` without a byte or a connection opening, 1001 when the API stops.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from typing import Any

from aiohttp import WSMsgType, web
from nats.aio.client import Client as NATS
from prometheus_client import CollectorRegistry, Counter, Gauge

from backend.bus.routing import DeviceRouter
from backend.operator.errors import ApiError
from backend.operator.relay import DeviceRelay, Gone
from backend.operator.shell import DEVICE_GONE, GOING_AWAY, IDLE, MAX_REASON, NORMAL
from backend.protocol import envelope as env
from backend.protocol import portforward as pf
from backend.protocol.errors import MalformedMessage, RoutingError

log = logging.getLogger("fleet.portforward")

MAX_CONNECTIONS = 256
"""Connections open at once on one forward (a browser opens a handful)."""
MAX_ID = 64
MAX_QUEUED = 4 << 20
"""Bytes of one connection waiting for the device's window: beyond it the operator ignored
the window (it is told so and the connection ends)."""
MAX_BATCH = 256 * 1024
"""Bytes of device messages one NATS request carries at most (NATS' default limit: 1 MiB)."""


def target_of(query: Any) -> pf.Target:
    """The forward's target from the query, or ApiError naming the bad field."""
    host = str(query.get("host", "")).strip()
    if not host or len(host) > 253:
        raise ApiError("give host=<a name or address as the device sees it>", field="host")
    try:
        port = int(query.get("port", ""))
    except ValueError:
        raise ApiError("give port=<1..65535>", field="port") from None
    try:
        return pf.Target(host, port, query.get("protocol", "tcp"))
    except MalformedMessage as exc:
        field = "port" if "port" in str(exc) else "protocol"
        raise ApiError(str(exc), field=field) from None


class ForwardMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.forwards = Counter(
            "fleet_api_port_forwards", "Port forwards by outcome: how they ended (operator, "
            "device_gone, idle, shutdown)", ["outcome"], registry=registry,
        )  # fmt: skip
        self.connections = Counter(
            "fleet_api_port_forward_connections", "Forwarded connections by outcome (opened, "
            "refused, closed_by_operator, closed_by_device, device_gone)", ["outcome"],
            registry=registry,
        )  # fmt: skip
        self.open_connections = Gauge(
            "fleet_api_port_forward_connections_open", "Forwarded connections open now",
            registry=registry,
        )  # fmt: skip
        self.bytes = Counter(
            "fleet_api_port_forward_bytes", "Forwarded bytes, by direction (to_device, "
            "from_device)", ["direction"], registry=registry,
        )  # fmt: skip


class ForwardRelay:
    """One operator WebSocket's port forward to one device target."""

    def __init__(
        self,
        nc: NATS,
        router: DeviceRouter,
        device_id: str,
        operator: str,
        target: pf.Target,
        idle_timeout: float,
        metrics: ForwardMetrics,
    ) -> None:
        self.device_id = device_id
        self.operator = operator
        self.target = target
        self.idle_timeout = idle_timeout
        self.metrics = metrics
        self.sid = uuid.uuid4().hex
        self.relay = DeviceRelay(nc, router, device_id, operator, self.sid)
        self.forward = pf.PortForward(self.sid, pf.Role.SERVER)
        self._to_device: asyncio.Queue[env.ProtoMsg] = asyncio.Queue()
        self._activity = asyncio.Event()
        self._shutdown = asyncio.Event()
        self._dialled: set[str] = set()  # connections the device dialled

    async def run(self, ws: web.WebSocketResponse) -> str:
        """Relay until one side ends the forward; returns its outcome (for metrics)."""
        await self.relay.open()
        tasks = [
            asyncio.create_task(self._from_operator(ws)),
            asyncio.create_task(self._from_device(ws)),
            asyncio.create_task(self._deliver()),
            asyncio.create_task(self._idle()),
            asyncio.create_task(self._stopping()),
        ]
        reader = tasks[0]
        try:
            done, _pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in tasks[1:]:
                task.cancel()
            code, reason, outcome = next(iter(done)).result()
            await self._stop_all(outcome)
            # Closed while the operator's reader still runs: it reads the close answer (a
            # reader cancelled first leaves aiohttp's close waiting out its 10 s timeout).
            await ws.close(code=code, message=reason[:MAX_REASON].encode())
        finally:
            reader.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        target = f"{self.target.remote_host}:{self.target.remote_port}"
        log.info("port forward %s of %s to %s %s ended: %s", self.sid, self.operator,
                 self.device_id, target, reason)  # fmt: skip
        return outcome

    def shutdown(self) -> None:
        self._shutdown.set()

    async def close(self) -> None:
        await self.relay.close()

    # --- the directions ---------------------------------------------------------------------

    async def _from_operator(self, ws: web.WebSocketResponse) -> tuple[int, str, str]:
        async for frame in ws:
            self._activity.set()
            try:
                if frame.type is WSMsgType.BINARY:
                    self._operator_data(frame.data)
                elif frame.type is WSMsgType.TEXT:
                    await self._operator_control(ws, frame.data)
            except ValueError as exc:
                await ws.send_json({"error": "bad_request", "message": str(exc)})
            self._flush()
        return NORMAL, "closed by the operator", "operator"

    def _operator_data(self, frame: bytes) -> None:
        cid, data = pf.split_frame(frame)
        if cid not in self.forward.connections:
            raise ValueError(f"no open connection {cid!r}")
        self.forward.send(cid, data)
        self.metrics.bytes.labels("to_device").inc(len(data))
        if self.forward.queued(cid) > MAX_QUEUED:
            self.forward.stop(cid)
            raise ValueError(f"connection {cid!r} ignored the window; closed")

    async def _operator_control(self, ws: web.WebSocketResponse, text: str) -> None:
        try:
            request = json.loads(text)
            op, cid = request["op"], request["id"]
        except (ValueError, KeyError, TypeError):
            raise ValueError('send {"op": "open"|"close"|"ack", "id": <connection id>}') from None
        if not isinstance(cid, str) or not 0 < len(cid.encode()) <= MAX_ID:
            raise ValueError(f"a connection id is 1 to {MAX_ID} bytes of text")
        if op == "open":
            self._open(cid)
        elif op == "close":
            self.forward.finish(cid)
        elif op == "ack":
            self.forward.consumed(cid)
        else:
            raise ValueError(f"unknown op {op!r}: open, close or ack")

    def _open(self, cid: str) -> None:
        if cid in self.forward.connections:
            raise ValueError(f"connection {cid!r} is already open")
        if len(self.forward.connections) >= MAX_CONNECTIONS:
            raise ValueError(f"at most {MAX_CONNECTIONS} connections at once per forward")
        self.forward.open(cid, self.target)

    async def _from_device(self, ws: web.WebSocketResponse) -> tuple[int, str, str]:
        while True:
            msg = await self.relay.receive()
            if isinstance(msg, Gone):
                return DEVICE_GONE, msg.reason, "device_gone"
            self._activity.set()
            self.forward.receive(msg)
            try:
                await self._handle_events(ws)
            except ConnectionError:
                return NORMAL, "the operator went away", "operator"
            self._flush()

    async def _handle_events(self, ws: web.WebSocketResponse) -> None:
        for event in self.forward.events():
            match event:
                case pf.Opened(cid, window, chunk):
                    self._dialled.add(cid)
                    self.metrics.open_connections.inc()
                    self.metrics.connections.labels("opened").inc()
                    await ws.send_json({"op": "opened", "id": cid, "window": window,
                                        "chunk": chunk})  # fmt: skip
                case pf.Data(cid, data):
                    self.metrics.bytes.labels("from_device").inc(len(data))
                    await ws.send_bytes(pf.data_frame(cid, data))
                case pf.Acked(cid):
                    await ws.send_json({"op": "ack", "id": cid})
                case pf.Ended(cid, by_peer, text):
                    await self._ended(ws, cid, by_peer, text)
                case pf.Rejected(cid, text):
                    log.info("port forward %s: device message refused: %s", self.sid, text)
                case pf.NewRequested():
                    pass  # a device's event only

    async def _ended(self, ws: web.WebSocketResponse, cid: str, by_peer: bool, text: str) -> None:
        if cid in self._dialled:
            self._dialled.discard(cid)
            self.metrics.open_connections.dec()
            outcome = "closed_by_device" if by_peer else "closed_by_operator"
        else:
            outcome = "refused"  # the device could not dial: its text says why
        self.metrics.connections.labels(outcome).inc()
        await ws.send_json({"op": "closed", "id": cid, "reason": text or "stopped"})

    async def _deliver(self) -> tuple[int, str, str]:
        """Messages to the device in order, one request at a time, each carrying all that
        queued meanwhile (up to ``MAX_BATCH`` bytes)."""
        while True:
            batch = [await self._to_device.get()]
            size = len(batch[0].body)
            while not self._to_device.empty() and size < MAX_BATCH:
                batch.append(self._to_device.get_nowait())
                size += len(batch[-1].body)
            try:
                await self.relay.send(batch)
            except RoutingError as exc:
                return DEVICE_GONE, f"device unreachable: {exc}", "device_gone"

    def _flush(self) -> None:
        for msg in self.forward.outgoing():
            self._to_device.put_nowait(msg)

    async def _idle(self) -> tuple[int, str, str]:
        while True:
            self._activity.clear()
            try:
                async with asyncio.timeout(self.idle_timeout):
                    await self._activity.wait()
            except TimeoutError:
                return IDLE, f"idle for {self.idle_timeout:g}s", "idle"

    async def _stopping(self) -> tuple[int, str, str]:
        await self._shutdown.wait()
        return GOING_AWAY, "the operator API is stopping", "shutdown"

    async def _stop_all(self, outcome: str) -> None:
        """Stop the device's end of every connection still open (unless the device is gone)."""
        self.metrics.open_connections.dec(len(self._dialled))
        gone = "device_gone" if outcome == "device_gone" else "closed_by_operator"
        self.metrics.connections.labels(gone).inc(len(self._dialled))
        self._dialled.clear()
        if outcome != "device_gone":
            # Connections still open get a "stop"; their answers would come after a release
            # (and be refused as for no session), so the binding then waits for the device's
            # disconnect or a newer binding to push it out.
            open_connections = list(self.forward.connections)
            for cid in open_connections:
                self.forward.stop(cid)
            with contextlib.suppress(RoutingError):
                await self.relay.send(self.forward.outgoing())
            if not open_connections:
                await self.relay.release()
