"""The device session, one state machine for both ends (shard and gateway), Sans-I/O.

Feed it one ProtoMsg per binary WebSocket message with ``receive_message``; read what it
means from ``events_received`` and what to send from ``messages_to_send``. Peer input never
raises: bad input becomes a control "error" message for the peer plus a
``ProtocolViolation`` event telling the driver whether to close (``error.close_code``).

The server opens the handshake (Mender devices never speak first) but never requires it: a
pre-handshake device is served all the same. The device's "accept" lists the protocols it
serves: once it is in, the server side refuses to send anything else (``NotServed``, before
a byte leaves), and a device's control "error" naming a request's sid ends that request at
once (``RequestFailed``, or relayed to the operator session of that sid).

On the device side the session outlives each connection and keeps the alert outbox: unacked
alerts are resent after a reconnect, and the server's stream de-duplicates them by alert id.
A message for a protocol the device does not serve (``protocols``) is answered as
mender-connect does, with "no handler registered for protocol".
"""

from __future__ import annotations

import enum
import itertools
from dataclasses import dataclass

from backend.protocol import envelope as env
from backend.protocol import messages as m
from backend.protocol.envelope import ProtoMsg
from backend.protocol.errors import (
    FleetError,
    MalformedMessage,
    ProtocolError,
    RoutingError,
    UnexpectedMessage,
    UnknownProtocol,
    UnknownSession,
)

DEVICE_PROTOCOLS = (env.PROTO_SHELL, env.PROTO_MONITOR, env.PROTO_COMMAND, env.PROTO_UPDATE)
MAX_ERROR_TEXT = 200
"""An error reply never grows with the input it answers (an attacker reads nothing back)."""
MAX_SHARED_PROTOCOL_SETS = 64
"""Distinct "accept" lists kept once for every connection that sends one (a fleet sends a
few); a peer's list past that many is its own."""
_shared_protocol_sets: dict[frozenset[int], frozenset[int]] = {}


def shared_protocols(protocols: tuple[int, ...]) -> frozenset[int]:
    """The set of ``protocols``, one object for every connection with the same list: a set of
    a few ints is 216 bytes, about a tenth of what a shard holds per idle connection."""
    found = frozenset(protocols)
    shared = _shared_protocol_sets.get(found)
    if shared is not None:
        return shared
    if len(_shared_protocol_sets) < MAX_SHARED_PROTOCOL_SETS:
        _shared_protocol_sets[found] = found
    return found


MAX_RELAYS = 32
"""Operator sessions (shell, port forward, file transfer) open at once on one device; the
oldest is forgotten beyond it."""
_open_ids = itertools.count(1)


class Role(enum.Enum):
    SERVER = "server"
    DEVICE = "device"


class OutboxFull(FleetError):
    """The device holds ``max_outbox`` unacked alerts: refuse new ones rather than drop any."""

    reason = "outbox_full"


class NotServed(RoutingError):
    """Server side: the device's "accept" did not list the request's protocol; nothing was
    sent. ``protocols``: what the device serves. The operator side raises it again from the
    shard's answer (``backend.bus.routing``)."""

    reason = "unsupported"

    def __init__(self, proto: int, protocols: tuple[int, ...], device_id: str = "") -> None:
        served = ", ".join(protocol_name(p) for p in protocols) or "nothing"
        who = f"device {device_id}" if device_id else "the device"
        super().__init__(f"{who} does not serve {protocol_name(proto)}; it serves {served}")
        self.proto = proto
        self.protocols = protocols


PROTOCOL_NAMES = {
    env.PROTO_SHELL: "shell", env.PROTO_FILE_TRANSFER: "file transfer",
    env.PROTO_PORT_FORWARD: "port forward", env.PROTO_MENDER_CLIENT: "mender client",
    env.PROTO_MONITOR: "monitoring", env.PROTO_COMMAND: "commands", env.PROTO_UPDATE: "updates",
}  # fmt: skip


def protocol_name(proto: int) -> str:
    """``"commands (0x0101)"``: a protocol as an operator reads it."""
    name = PROTOCOL_NAMES.get(proto)
    return f"{name} ({proto:#06x})" if name else f"{proto:#06x}"


# --- events ------------------------------------------------------------------------------


@dataclass(slots=True, frozen=True)
class HandshakeCompleted:
    version: int  # 0: a pre-handshake peer
    protocols: tuple[int, ...]


@dataclass(slots=True, frozen=True)
class ProtocolViolation:
    error: ProtocolError


@dataclass(slots=True, frozen=True)
class ErrorReceived:
    error: m.Error
    msg: ProtoMsg


@dataclass(slots=True, frozen=True)
class PeerClosing:
    pass


@dataclass(slots=True, frozen=True)
class AlertReceived:
    alert: m.Alert


@dataclass(slots=True, frozen=True)
class AlertAcked:
    id: str


@dataclass(slots=True, frozen=True)
class StatusReceived:
    status: m.Status


@dataclass(slots=True, frozen=True)
class CommandRequested:
    sid: str
    request: m.CommandRequest
    user_id: str | None


@dataclass(slots=True, frozen=True)
class CommandCompleted:
    sid: str
    result: m.CommandResult


@dataclass(slots=True, frozen=True)
class RequestFailed:
    """Server side: the device answered the request ``sid`` (a command, an update offer...)
    with a control "error" (e.g. Mender's "no handler registered for protocol")."""

    sid: str
    error: m.Error


@dataclass(slots=True, frozen=True)
class UpdateOffered:
    sid: str
    offer: m.UpdateOffer
    user_id: str | None


@dataclass(slots=True, frozen=True)
class UpdateProgressReceived:
    sid: str
    progress: m.UpdateProgress


@dataclass(slots=True, frozen=True)
class Relayed:
    """Server side: a device message of a Mender protocol (shell...) for an operator session
    that the server opened on this connection (``deliver``)."""

    msg: ProtoMsg


@dataclass(slots=True, frozen=True)
class MessageReceived:
    """Device side: a Mender-protocol message (shell...) for the device's own handlers."""

    msg: ProtoMsg


@dataclass(slots=True, frozen=True)
class StrayMessage:
    """A well-formed message that answers nothing pending (a result after its timeout)."""

    msg: ProtoMsg


Event = (
    HandshakeCompleted | ProtocolViolation | ErrorReceived | PeerClosing | AlertReceived
    | AlertAcked | StatusReceived | CommandRequested | CommandCompleted | RequestFailed
    | UpdateOffered | UpdateProgressReceived | Relayed | MessageReceived | StrayMessage
)  # fmt: skip

# Which side may send which of our message types: (proto, typ) -> sending role.
_SENDER = {
    (env.PROTO_MONITOR, m.Status.TYP): Role.DEVICE,
    (env.PROTO_MONITOR, m.Alert.TYP): Role.DEVICE,
    (env.PROTO_MONITOR, m.AlertAck.TYP): Role.SERVER,
    (env.PROTO_COMMAND, m.CommandRequest.TYP): Role.SERVER,
    (env.PROTO_COMMAND, m.CommandResult.TYP): Role.DEVICE,
    (env.PROTO_UPDATE, m.UpdateOffer.TYP): Role.SERVER,
    (env.PROTO_UPDATE, m.UpdateProgress.TYP): Role.DEVICE,
}
_OUR_PROTOCOLS = frozenset(proto for proto, _typ in _SENDER)


class DeviceSession:
    __slots__ = (
        "_events",
        "_outbox",
        "_outgoing",
        "_pending_commands",
        "_relays",
        "device_id",
        "handshake",
        "max_message_size",
        "max_outbox",
        "peer_protocols",
        "peer_version",
        "protocols",
        "role",
    )

    def __init__(
        self,
        role: Role,
        *,
        device_id: str = "",
        protocols: tuple[int, ...] = DEVICE_PROTOCOLS,
        max_outbox: int = 1000,
        max_message_size: int = env.DEFAULT_MAX_MESSAGE_SIZE,
        handshake: bool = True,
    ) -> None:
        self.role = role
        self.device_id = device_id
        self.protocols = protocols
        # Device side, False: answer "open" as a pre-handshake (version 0) Mender peer does.
        self.handshake = handshake
        self.max_outbox = max_outbox
        self.max_message_size = max_message_size
        self.peer_version: int | None = None  # None until the handshake completes
        # What the peer's "accept" listed; None while unknown (no accept yet, or version 0).
        self.peer_protocols: frozenset[int] | None = None
        # Created on first use: an idle server session holds no containers at all.
        self._events: list[Event] | None = None
        self._outgoing: list[bytes] | None = None
        self._outbox: dict[str, bytes] | None = None
        self._pending_commands: set[str] | None = None
        self._relays: dict[str, int] | None = None  # operator sessions open: sid -> proto

    # --- I/O boundary ----------------------------------------------------------------------

    def receive_message(self, data: bytes) -> ProtoMsg | None:
        """Handle one message; returns it decoded (for accounting), or None if undecodable."""
        msg: ProtoMsg | None = None
        try:
            msg = env.decode(data, self.max_message_size)
            self._dispatch(msg)
        except ProtocolError as exc:
            self._violation(exc, msg)
        return msg

    def events_received(self) -> list[Event]:
        events, self._events = self._events, None
        return events or []

    def messages_to_send(self) -> list[bytes]:
        outgoing, self._outgoing = self._outgoing, None
        return outgoing or []

    def send(self, msg: ProtoMsg) -> None:
        """Queue any message as it is (relayed shell input, a device's shell output...)."""
        self._queue(env.encode(msg))

    def reject(self, msg: ProtoMsg, error: ProtocolError) -> None:
        """Refuse a well-formed message the driver cannot serve (too big for the bus...):
        the peer gets a control "error" naming it; no event (the driver already knows)."""
        self.send(_error_reply(error, msg))

    def connection_lost(self) -> None:
        """Forget the connection's state; the device's outbox stays for the next one."""
        self.peer_version = None
        self.peer_protocols = None
        self._pending_commands = None
        self._outgoing = None  # never written; unacked alerts go again via resend_unacked

    # --- handshake -------------------------------------------------------------------------------

    def start(self) -> None:
        """Open the handshake: list the versions we speak (Mender's control "open")."""
        self.send(m.Open().to_msg(sid=f"open-{next(_open_ids)}"))

    def _control(self, msg: ProtoMsg) -> None:
        typ = msg.typ
        if typ == env.TYP_PING:
            self.send(ProtoMsg(env.PROTO_CONTROL, env.TYP_PONG, msg.sid, None, msg.body))
        elif typ == env.TYP_OPEN:
            self._open_received(msg)
        elif typ == env.TYP_ACCEPT:
            accept = m.Accept.from_body(msg.body)
            self.peer_protocols = shared_protocols(accept.protocols)
            self._handshake_done(accept.version, accept.protocols)
        elif typ == env.TYP_ERROR:
            self._error_received(msg, m.Error.from_body(msg.body))
        elif typ == env.TYP_CLOSE:
            self._emit(PeerClosing())
        elif typ != env.TYP_PONG:
            raise UnexpectedMessage(f"unknown control message type {typ!r}")

    def _error_received(self, msg: ProtoMsg, error: m.Error) -> None:
        """The real client names the request in the header's sid; ours in ``msgid``."""
        sid = msg.sid or error.msgid or ""
        if self.role is Role.DEVICE or not sid:
            self._emit(ErrorReceived(error, msg))
        elif self._relays is not None and sid in self._relays:
            self._end_relay(sid)
            self._emit(Relayed(ProtoMsg(env.PROTO_CONTROL, env.TYP_ERROR, sid, None, msg.body)))
        else:
            if self._pending_commands is not None:
                self._pending_commands.discard(sid)
            self._emit(RequestFailed(sid, error))

    def _open_received(self, msg: ProtoMsg) -> None:
        if self.role is Role.DEVICE and not self.handshake:
            props = {env.PROP_STATUS: env.STATUS_NORMAL}
            self.send(ProtoMsg(env.PROTO_CONTROL, env.TYP_OPEN, msg.sid, props))
            self._handshake_done(0, ())
            return
        if msg.props and msg.props.get(env.PROP_STATUS) == env.STATUS_NORMAL and not msg.body:
            self._handshake_done(0, ())  # Mender: a pre-handshake (version 0) peer
            return
        versions = m.Open.from_body(msg.body).versions
        if env.PROTOCOL_VERSION not in versions:
            raise UnexpectedMessage(f"no common protocol version: peer speaks {list(versions)}")
        protocols = self.protocols if self.role is Role.DEVICE else tuple(sorted(_OUR_PROTOCOLS))
        self.send(m.Accept(env.PROTOCOL_VERSION, protocols).to_msg(sid=msg.sid))
        self._handshake_done(env.PROTOCOL_VERSION, protocols)

    def _handshake_done(self, version: int, protocols: tuple[int, ...]) -> None:
        self.peer_version = version
        self._emit(HandshakeCompleted(version, protocols))

    # --- dispatch --------------------------------------------------------------------------

    def _dispatch(self, msg: ProtoMsg) -> None:
        proto = msg.proto
        if proto == env.PROTO_CONTROL:
            self._control(msg)
        elif self.role is Role.DEVICE and proto not in self.protocols:
            self._no_handler(msg)
        elif proto in env.MENDER_PROTOCOLS:
            if self.role is Role.SERVER:
                self._relayed(msg)
            else:
                self._emit(MessageReceived(msg))
        elif proto in _OUR_PROTOCOLS:
            sender = _SENDER.get((proto, msg.typ))
            if sender is None:
                raise UnexpectedMessage(f"unknown message type {msg.typ!r} for proto {proto:#06x}")
            if sender is self.role:
                raise UnexpectedMessage(f"{msg.typ!r} is sent by the {sender.value}, not to it")
            self._ours(msg)
        else:
            raise UnknownProtocol(f"protocol {proto:#06x} is not served here")

    def _ours(self, msg: ProtoMsg) -> None:
        typ, body = msg.typ, msg.body
        user_id = (msg.props or {}).get(env.PROP_USER_ID)
        user_id = user_id if isinstance(user_id, str) else None
        if typ == m.Alert.TYP:
            self._emit(AlertReceived(m.Alert.from_body(body)))
        elif typ == m.Status.TYP:
            self._emit(StatusReceived(m.Status.from_body(body)))
        elif typ == m.AlertAck.TYP:
            self._ack_received(m.AlertAck.from_body(body).id)
        elif typ == m.CommandRequest.TYP:
            self._emit(CommandRequested(_sid(msg), m.CommandRequest.from_body(body), user_id))
        elif typ == m.CommandResult.TYP:
            self._result_received(msg)
        elif typ == m.UpdateOffer.TYP:
            self._emit(UpdateOffered(_sid(msg), m.UpdateOffer.from_body(body), user_id))
        else:  # progress, the last one _SENDER admits
            self._emit(UpdateProgressReceived(_sid(msg), m.UpdateProgress.from_body(body)))

    def _result_received(self, msg: ProtoMsg) -> None:
        result = m.CommandResult.from_body(msg.body)
        pending = self._pending_commands
        if pending is None or msg.sid not in pending:
            self._emit(StrayMessage(msg))
            return
        pending.discard(msg.sid)
        self._emit(CommandCompleted(msg.sid, result))

    def _no_handler(self, msg: ProtoMsg) -> None:
        """Device side: mender-connect's answer to a protocol it has no handler for, at once
        and to the letter: the request's sid in the header, no code, no msgid."""
        error = m.Error(
            err=f"no handler registered for protocol: {msg.proto:#06x}",
            msgproto=msg.proto, msgtype=msg.typ or None,
        )  # fmt: skip
        self.send(ProtoMsg(env.PROTO_CONTROL, env.TYP_ERROR, msg.sid, None, error.to_body()))

    def _violation(self, exc: ProtocolError, msg: ProtoMsg | None) -> None:
        self.send(_error_reply(exc, msg))
        self._emit(ProtocolViolation(exc))

    # --- operator sessions (Mender's shell, port forward, file transfer) --------------------

    def serves(self, proto: int) -> bool:
        """Server: whether the device may be sent ``proto``: listed in its "accept", or not
        known to be unlisted (no accept yet, or a pre-handshake device)."""
        protocols = self.peer_protocols
        return protocols is None or proto in protocols or proto == env.PROTO_CONTROL

    def require(self, proto: int) -> None:
        """Server: NotServed unless the device serves ``proto`` (``serves``)."""
        if not self.serves(proto):
            raise NotServed(proto, tuple(sorted(self.peer_protocols or ())))

    def deliver(self, msg: ProtoMsg, user_id: str | None = None) -> None:
        """Server: send an operator's message, stamped with the operator's id (as Mender's
        deviceconnect does), and bind its sid to this connection: only this device's answers
        for that sid are relayed. The device's "stop" ends the binding (not the operator's:
        the device still answers it). NotServed for a protocol the device did not accept."""
        self.require(msg.proto)
        if user_id:
            msg.props = {**(msg.props or {}), env.PROP_USER_ID: user_id}
        relays = self._relays
        if msg.sid and (relays is None or msg.sid not in relays):
            if relays is None:
                relays = self._relays = {}
            elif len(relays) >= MAX_RELAYS:
                del relays[next(iter(relays))]
            relays[msg.sid] = msg.proto
        self.send(msg)

    def release(self, sid: str) -> None:
        """Server: the operator's session on ``sid`` is over (a file transfer or port forward
        ended): forget its binding now rather than when the connection closes or the oldest
        binding is pushed out by a newer one (it could be a live shell's)."""
        self._end_relay(sid)

    def end_relays(self) -> dict[str, int]:
        """Server: the operator sessions still open (sid -> proto), forgotten now: the
        driver tells their operators that the device is gone."""
        relays, self._relays = self._relays, None
        return relays or {}

    def _relayed(self, msg: ProtoMsg) -> None:
        relays = self._relays
        if relays is None or relays.get(msg.sid) != msg.proto:
            # Sessions are bound to the connection they were opened on: a device cannot
            # write into another device's session by naming its sid.
            raise UnknownSession(f"no open session {msg.sid!r} for proto {msg.proto}")
        refused = (msg.props or {}).get(env.PROP_STATUS) == env.STATUS_ERROR
        # A port forward's "stop" ends one of the sid's connections, not the sid.
        shell = msg.proto == env.PROTO_SHELL
        if shell and (msg.typ == env.TYP_SHELL_STOP or (msg.typ == env.TYP_SHELL_NEW and refused)):
            self._end_relay(msg.sid)
        self._emit(Relayed(msg))

    def _end_relay(self, sid: str) -> None:
        if self._relays is not None:
            self._relays.pop(sid, None)
            if not self._relays:
                self._relays = None

    # --- alerts -----------------------------------------------------------------------------

    def send_alert(self, alert: m.Alert) -> None:
        """Device: queue an alert and keep it until the server acks it."""
        outbox = self._outbox
        if outbox is None:
            outbox = self._outbox = {}
        if alert.id not in outbox and len(outbox) >= self.max_outbox:
            raise OutboxFull(f"{len(outbox)} alerts wait for an ack; not accepting {alert.id}")
        outbox[alert.id] = encoded = env.encode(alert.to_msg())
        self._queue(encoded)

    def _ack_received(self, alert_id: str) -> None:
        # Acks are idempotent: after a resend the same id may be acked twice.
        if self._outbox is not None and self._outbox.pop(alert_id, None) is not None:
            self._emit(AlertAcked(alert_id))

    def resend_unacked(self) -> int:
        """Device: queue every unacked alert again (after a reconnect or an ack timeout)."""
        for encoded in (self._outbox or {}).values():
            self._queue(encoded)
        return self.outbox_size

    @property
    def outbox_size(self) -> int:
        return len(self._outbox) if self._outbox else 0

    def ack_alert(self, alert_id: str) -> None:
        """Server: the alert is stored durably; tell the device it may forget it."""
        self.send(m.AlertAck(alert_id).to_msg())

    def send_status(self, status: m.Status) -> None:
        self.send(status.to_msg())

    # --- commands and updates ---------------------------------------------------------------

    def send_command(self, sid: str, request: m.CommandRequest, user_id: str | None = None) -> None:
        self.require(env.PROTO_COMMAND)
        pending = self._pending_commands
        if pending is None:
            pending = self._pending_commands = set()
        if sid in pending:
            raise ValueError(f"command {sid} is already pending")
        pending.add(sid)
        self.send(request.to_msg(sid, _user_props(user_id)))

    def cancel_command(self, sid: str) -> None:
        """Server: stop waiting for ``sid``; a late result becomes a StrayMessage."""
        if self._pending_commands is not None:
            self._pending_commands.discard(sid)

    def send_command_result(self, sid: str, result: m.CommandResult) -> None:
        self.send(result.to_msg(sid))

    def offer_update(self, sid: str, offer: m.UpdateOffer, user_id: str | None = None) -> None:
        self.require(env.PROTO_UPDATE)
        self.send(offer.to_msg(sid, _user_props(user_id)))

    def send_update_progress(self, sid: str, progress: m.UpdateProgress) -> None:
        self.send(progress.to_msg(sid))

    # --- internals -----------------------------------------------------------------------------

    def _emit(self, event: Event) -> None:
        if self._events is None:
            self._events = [event]
        else:
            self._events.append(event)

    def _queue(self, encoded: bytes) -> None:
        if self._outgoing is None:
            self._outgoing = [encoded]
        else:
            self._outgoing.append(encoded)


def _error_reply(exc: ProtocolError, msg: ProtoMsg | None) -> ProtoMsg:
    """Mender's control "error" for ``exc``; ``msg``'s header fields are bounded by decode."""
    return m.Error(
        err=str(exc)[:MAX_ERROR_TEXT],
        close=exc.close_code is not None,
        code=exc.error_code,
        msgproto=msg.proto if msg else None,
        msgtype=msg.typ if msg else None,
        msgid=msg.sid if msg else None,
    ).to_msg()


def _sid(msg: ProtoMsg) -> str:
    if not msg.sid:
        raise MalformedMessage(f"{msg.typ!r} needs a sid to correlate its answer")
    return msg.sid


def _user_props(user_id: str | None) -> dict[str, str] | None:
    """Operator messages carry the operator's id, as Mender's deviceconnect stamps it."""
    return {env.PROP_USER_ID: user_id} if user_id else None
