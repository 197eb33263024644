"""One operator session's path to a device (port forwards, file transfers): the device's
messages for the session's sid from ``subjects.relay_subject`` (the shard writes in the id of
the device that sent them), and ours through the shard holding the device, in order, in one
request per batch (``DeviceRouter.deliver_many``), stamped with the operator's id."""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass

from nats.aio.client import Client as NATS
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError

from backend.bus import subjects
from backend.bus.routing import DeviceRouter
from backend.protocol import envelope as env
from backend.protocol.errors import FleetError, RoutingError

log = logging.getLogger("fleet.relay")


@dataclass(frozen=True, slots=True)
class Gone:
    """The device (or the relay to it) is gone: ``reason`` says why."""

    reason: str


class DeviceRelay:
    def __init__(
        self, nc: NATS, router: DeviceRouter, device_id: str, operator: str, sid: str
    ) -> None:
        self.nc = nc
        self.router = router
        self.device_id = device_id
        self.operator = operator
        self.sid = sid
        self._sub: Subscription | None = None

    async def open(self) -> None:
        """Subscribe before anything goes out: the device's answer cannot overtake us."""
        self._sub = await self.nc.subscribe(subjects.relay_subject(self.device_id, self.sid))

    async def receive(self) -> env.ProtoMsg | Gone:
        """The device's next message for the sid, or Gone (the shard's "stop" with status 2
        and no connection id: the device disconnected)."""
        assert self._sub is not None
        while True:
            try:
                msg = env.decode((await self._sub.next_msg(timeout=None)).data)
            except NatsError as exc:
                return Gone(f"relay lost: {exc}")
            except FleetError as exc:
                log.warning("relay %s: undecodable device message: %s", self.sid, exc)
                continue
            props = msg.props or {}
            if (
                msg.typ == env.TYP_SHELL_STOP
                and "connection_id" not in props
                and props.get(env.PROP_STATUS) == env.STATUS_ERROR
            ):
                return Gone(msg.body.decode(errors="replace") or "device disconnected")
            return msg

    async def send(self, msgs: list[env.ProtoMsg]) -> None:
        """RoutingError if the device cannot be reached."""
        if msgs:
            encoded = [env.encode(msg) for msg in msgs]
            await self.router.deliver_many(self.device_id, encoded, user_id=self.operator)

    async def release(self) -> None:
        """The session is over: the device's shard forgets the sid (best effort: a device
        gone or unreachable has forgotten it already)."""
        with contextlib.suppress(RoutingError):
            await self.router.release(self.device_id, self.sid)

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
            self._sub = None
