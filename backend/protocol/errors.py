"""One exception root for fleetharness, with a subtree per layer.

Every exception class of the project derives from ``FleetError``. The whole tree, each class
in this module unless a module is named (a subtree's classes live where its root does);
``tests/protocol/test_errors.py`` checks this drawing against the code:

* FleetError
    * HandshakeError
        * InvalidUpgrade
            * UnsupportedVersion
        * UpgradeRejected
        * RequestTooLarge
        * RequestTimeout
        * NotFound
        * MethodNotAllowed
        * Unauthorized
        * Overloaded
            * Draining
    * ProtocolError
        * FrameError
        * MessageTooBig
        * InvalidPayload
        * UnsupportedData
        * MalformedMessage
        * UnknownProtocol
        * UnknownSession
        * TooBigForBus
        * UnexpectedMessage
    * OutboxFull (backend.protocol.session)
    * RoutingError
        * DeviceOffline
        * DeviceTimeout
        * DeviceError
        * NotServed (backend.protocol.session)
        * ShellRefused (backend.operator.errors)
    * ApiError (backend.operator.errors)
        * Unauthenticated
            * SessionExpired
        * ResourceNotFound
        * OfflineDevice
        * CommandTimedOut
        * RoutingFailed
        * DeviceRefused
        * Conflict
            * UnsupportedProtocol
        * BodyTimedOut
        * TransferRefused
        * TooLarge
        * NatsUnavailable
        * HttpRefused
    * RolloutError (backend.operator.errors)
        * InvalidRollout
        * UnknownRollout
        * RolloutConflict
    * StateError (backend.operator.errors)
        * StateConflict
        * InvalidEvent
    * OperatorError (backend.client.operator)
    * StackError (backend.devstack.stackctl)
    * QueryError (backend.devstack.prometheus)
    * ConfigCheckFailed (backend.devstack.process), also a RuntimeError
    * RuntimeApiError (haproxy.runtime)
    * _ConnectFailed (simulator.gateway.driver)
    * _Dropped (simulator.gateway.driver)

Peer input never raises into the I/O layer: the Sans-I/O parsers catch the protocol's errors
and turn them into an answer on the wire. Each class says what that answer is:

- ``HandshakeError`` (before the upgrade): an HTTP ``status``.
- ``ProtocolError`` (after the upgrade): either a WebSocket ``close_code`` (the connection
  cannot go on) or, when ``close_code`` is None, a ProtoMsg control "error" with ``error_code``
  (HTTP-like, as Mender's ``Error.Code``) and the connection stays open.

``reason`` is a short, bounded token used as a metrics label.
"""

from __future__ import annotations


class FleetError(Exception):
    """Root of every error fleetharness raises on purpose."""

    reason = "error"


# --- Before the WebSocket upgrade: answered with an HTTP status -----------------------------


class HandshakeError(FleetError):
    """The upgrade request is refused with an HTTP status."""

    status = 400
    reason = "bad_request"

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class InvalidUpgrade(HandshakeError):
    """Malformed HTTP request or missing/invalid WebSocket headers (RFC 6455 §4.2.1)."""


class UnsupportedVersion(InvalidUpgrade):
    """Sec-WebSocket-Version other than 13: 426 with the versions we speak (RFC 6455 §4.4)."""

    status = 426
    reason = "bad_version"


class UpgradeRejected(HandshakeError):
    """Client side: the server refused the upgrade or answered it wrongly (RFC 6455 §4.1).

    ``status`` is the server's HTTP status (101 when the 101 itself was invalid) and
    ``retry_after`` its Retry-After delay in seconds, if any.
    """

    reason = "upgrade_rejected"

    def __init__(self, message: str, *, status: int, retry_after: float | None = None) -> None:
        super().__init__(message, retry_after=retry_after)
        self.status = status


class RequestTooLarge(HandshakeError):
    status = 431
    reason = "headers_too_large"


class RequestTimeout(HandshakeError):
    """The request head did not arrive within the handshake deadline."""

    status = 408
    reason = "request_timeout"


class NotFound(HandshakeError):
    status = 404
    reason = "not_found"


class MethodNotAllowed(HandshakeError):
    status = 405
    reason = "method_not_allowed"


class Unauthorized(HandshakeError):
    """Missing, malformed, badly signed or expired device token."""

    status = 401
    reason = "unauthorized"


class Overloaded(HandshakeError):
    """Over capacity or over the accept-rate budget; the client should come back later."""

    status = 503
    reason = "overloaded"


class Draining(Overloaded):
    reason = "draining"


# --- After the upgrade: a close code or a ProtoMsg error ------------------------------------


class ProtocolError(FleetError):
    """The peer broke the WebSocket or ProtoMsg rules."""

    close_code: int | None = 1002  # RFC 6455 §7.4.1: protocol error
    error_code = 400
    reason = "protocol_error"


class FrameError(ProtocolError):
    """Invalid WebSocket framing (RFC 6455 §5): the connection must be failed."""

    reason = "bad_frame"


class MessageTooBig(ProtocolError):
    close_code = 1009  # RFC 6455 §7.4.1: message too big to process
    error_code = 413
    reason = "too_big"


class InvalidPayload(ProtocolError):
    """Data inconsistent with its type, e.g. a close reason that is not UTF-8 (RFC 6455 §8.1)."""

    close_code = 1007  # RFC 6455 §7.4.1: data not consistent with the type of the message
    error_code = 400
    reason = "bad_utf8"


class UnsupportedData(ProtocolError):
    """A text frame: ProtoMsg travels in binary frames only."""

    close_code = 1003  # RFC 6455 §7.4.1: data type it cannot accept
    error_code = 415
    reason = "text_frame"


class MalformedMessage(ProtocolError):
    """Not MessagePack, not a ProtoMsg map, or a field of the wrong type."""

    close_code = None
    error_code = 400
    reason = "malformed"


class UnknownProtocol(ProtocolError):
    """A ``proto`` number this peer does not serve."""

    close_code = None
    error_code = 501
    reason = "unknown_proto"


class UnknownSession(ProtocolError):
    """A message for an operator session (shell...) not open on this connection."""

    close_code = None
    error_code = 404
    reason = "unknown_session"


class TooBigForBus(ProtocolError):
    """A message that would not fit in one NATS message (the server's ``max_payload``)."""

    close_code = None
    error_code = 413
    reason = "too_big_for_bus"


class UnexpectedMessage(ProtocolError):
    """A well-formed message that is not valid in the session's current state."""

    close_code = None
    error_code = 409
    reason = "unexpected"


# --- Operator-side routing: a request to a device did not get its answer --------------------


class RoutingError(FleetError):
    reason = "routing"


class DeviceOffline(RoutingError):
    reason = "offline"


class DeviceTimeout(RoutingError):
    reason = "timeout"


class DeviceError(RoutingError):
    """The device answered the request with a control "error" (its text is the message)."""

    reason = "device_error"
