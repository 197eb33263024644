"""Reaching a device from anywhere: find its shard in presence, then ask that shard.

Requests travel as core NATS request/reply on the shard's own subject (``subjects.shard_subject``),
as small MessagePack maps. Answers are ``{"ok": True, ...}`` or ``{"error": <reason>,
"message": <text>}``. A shard that is gone shows up as NATS "no responders", which is as good
as an "offline" answer: nobody holds the device.

The shard refuses a request for a protocol the device's "accept" did not list ("unsupported",
with the protocols it serves: ``NotServed`` here), and a request the device answered with a
control "error" ends with that error ("device_error": ``DeviceError``). The shard holds the
device's session, so the check costs no round trip beyond the request itself. An operator
session (shell, port forward, file transfer) gets the device's control error on its relay
subject: ``relayed_error`` reads it.
"""

from __future__ import annotations

import uuid
from typing import Any

import msgpack
from nats.aio.client import Client as NATS
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeout
from nats.js.kv import KeyValue

from backend.bus import presence, subjects
from backend.protocol import envelope as env
from backend.protocol.envelope import ProtoMsg
from backend.protocol.errors import (
    DeviceError,
    DeviceOffline,
    DeviceTimeout,
    FleetError,
    RoutingError,
)
from backend.protocol.messages import CommandResult, Error, UpdateOffer
from backend.protocol.session import NotServed

OP_COMMAND = "command"
OP_DELIVER = "deliver"
OP_OFFER = "offer"
OP_KICK = "kick"
OP_RELEASE = "release"
OP_SERVES = "serves"  # does the device serve a protocol: asked once per forward or transfer

ERROR_OFFLINE = "offline"
ERROR_TIMEOUT = "timeout"
ERROR_BAD_REQUEST = "bad_request"
ERROR_UNSUPPORTED = "unsupported"
ERROR_DEVICE = "device_error"

REPLY_MARGIN = 2.0
"""Extra seconds the requester waits beyond the device deadline, for the shard's answer."""


def encode(payload: dict[str, Any]) -> bytes:
    return msgpack.packb(payload, use_bin_type=True)


def decode(data: bytes) -> dict[str, Any]:
    payload = msgpack.unpackb(data, raw=False)
    if not isinstance(payload, dict):
        raise ValueError("routing payload is not a map")
    return payload


def ok(**fields: Any) -> bytes:
    return encode({"ok": True, **fields})


def error(reason: str, message: str, **fields: Any) -> bytes:
    return encode({"error": reason, "message": message, **fields})


def not_served(exc: NotServed) -> bytes:
    """The shard's answer for a request the device's "accept" rules out."""
    return error(ERROR_UNSUPPORTED, str(exc), proto=exc.proto, protocols=list(exc.protocols))


def relayed_error(device_id: str, msg: ProtoMsg) -> DeviceError | None:
    """A device's control "error" relayed to an operator session, as the error to end it
    with; None for any other message."""
    if msg.proto != env.PROTO_CONTROL or msg.typ != env.TYP_ERROR:
        return None
    try:
        text = Error.from_body(msg.body).err
    except FleetError:
        text = "an unreadable error"
    return DeviceError(f"device {device_id} answered: {text}")


class DeviceRouter:
    """Operator-side access to devices through whichever shard holds them."""

    def __init__(self, nc: NATS, kv: KeyValue, liveness: presence.Liveness | None = None) -> None:
        self.nc = nc
        self.kv = kv
        self.liveness = liveness

    async def shard_of(self, device_id: str) -> str:
        """The shard holding the device; DeviceOffline if none does, or if the one its
        presence names is dead (``liveness``: a SIGKILLed shard wrote no disconnect)."""
        state, _revision = await presence.lookup(self.kv, device_id)
        if state is None or not state.connected:
            raise DeviceOffline(f"device {device_id} is not connected")
        if self.liveness is not None:
            shards = await self.liveness.shards()
            if not presence.believed(state.shard, state.epoch, shards):
                raise DeviceOffline(f"device {device_id}: its shard {state.shard} is gone")
        return state.shard

    async def run_command(
        self, device_id: str, command: str, *, timeout: float = 30.0, user_id: str = ""
    ) -> CommandResult:
        """Run ``command`` on the device; DeviceOffline or DeviceTimeout if it cannot answer."""
        reply = await self._request(
            device_id,
            {"op": OP_COMMAND, "sid": uuid.uuid4().hex, "command": command, "timeout": timeout,
             "user_id": user_id},
            timeout,
        )  # fmt: skip
        return CommandResult(reply["exit_code"], reply["output"], reply["duration"])

    async def deliver(self, device_id: str, message: bytes, *, user_id: str = "") -> None:
        """Push one encoded ProtoMsg (shell input, file transfer...) to the device."""
        await self._request(
            device_id, {"op": OP_DELIVER, "message": message, "user_id": user_id}, 5.0
        )

    async def deliver_many(
        self, device_id: str, messages: list[bytes], *, user_id: str = ""
    ) -> None:
        """Push encoded ProtoMsgs to the device in one request, in order (a stream's backlog:
        one round trip for what queued while the previous one was out)."""
        await self._request(
            device_id, {"op": OP_DELIVER, "messages": messages, "user_id": user_id}, 5.0
        )

    async def require(self, device_id: str, proto: int) -> None:
        """NotServed unless the device's "accept" lists ``proto``; DeviceOffline if it is not
        connected. One round trip, before a session of ``proto`` starts (a port forward or a
        file transfer, whose first message goes out only after the operator's upgrade)."""
        await self._request(device_id, {"op": OP_SERVES, "proto": proto}, 5.0)

    async def release(self, device_id: str, sid: str) -> None:
        """The operator session ``sid`` is over: the shard forgets its binding."""
        await self._request(device_id, {"op": OP_RELEASE, "sid": sid}, 5.0)

    async def offer_update(
        self, device_id: str, sid: str, offer: UpdateOffer, *, user_id: str = ""
    ) -> None:
        await self._request(
            device_id, {"op": OP_OFFER, "sid": sid, "offer": offer.to_body(), "user_id": user_id},
            5.0,
        )  # fmt: skip

    async def _request(self, device_id: str, fields: dict[str, Any], timeout: float) -> Any:
        shard = await self.shard_of(device_id)
        payload = encode({**fields, "device": device_id})
        try:
            msg = await self.nc.request(
                subjects.shard_subject(shard), payload, timeout=timeout + REPLY_MARGIN
            )
        except NoRespondersError:
            raise DeviceOffline(f"device {device_id}: its shard {shard} is gone") from None
        except NatsTimeout:
            raise DeviceTimeout(f"shard {shard} did not answer for {device_id}") from None
        return _unwrap(device_id, decode(msg.data))


def _unwrap(device_id: str, reply: dict[str, Any]) -> dict[str, Any]:
    reason = reply.get("error")
    if reason is None:
        return reply
    message = f"device {device_id}: {reply.get('message', reason)}"
    if reason == ERROR_OFFLINE:
        raise DeviceOffline(message)
    if reason == ERROR_TIMEOUT:
        raise DeviceTimeout(message)
    if reason == ERROR_DEVICE:
        raise DeviceError(f"device {device_id} answered: {reply.get('message', '')}")
    if reason == ERROR_UNSUPPORTED:
        raise NotServed(int(reply.get("proto", 0)), tuple(reply.get("protocols", ())), device_id)
    raise RoutingError(message)
