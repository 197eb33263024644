"""The operator plane's exceptions: the API's answers, and what the rollouts, the fleet state
and the shell relay refuse. Their place in the project's one tree is drawn in
``backend.protocol.errors``.
"""

from __future__ import annotations

from http import HTTPStatus

from aiohttp import web

from backend.protocol.errors import FleetError, RoutingError

# --- the operator API: each one is an HTTP answer ------------------------------------------


class ApiError(FleetError):
    status = 400
    reason = "bad_request"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class Unauthenticated(ApiError):
    status = 401
    reason = "unauthorized"


class SessionExpired(Unauthenticated):
    """The page's session cookie names a session that ended (expired, signed out, or opened
    by an API process that has restarted since)."""

    reason = "session_expired"


class ResourceNotFound(ApiError):
    """No device or rollout by that id."""

    status = 404
    reason = "not_found"


class OfflineDevice(ApiError):
    status = 409
    reason = "offline"


class CommandTimedOut(ApiError):
    status = 504
    reason = "timeout"


class RoutingFailed(ApiError):
    status = 502
    reason = "routing"


class DeviceRefused(ApiError):
    """The device answered with a control "error"; the message is its text."""

    status = 502
    reason = "device_error"


class Conflict(ApiError):
    status = 409
    reason = "conflict"


class UnsupportedProtocol(Conflict):
    """The device's "accept" did not list the protocol the request needs."""

    reason = "unsupported"


class BodyTimedOut(ApiError):
    status = 408
    reason = "request_timeout"


class TransferRefused(ApiError):
    """The device refused a file transfer: the message is the device's own text."""

    status = 502
    reason = "device_refused"


class TooLarge(ApiError):
    status = 413
    reason = "too_large"


class NatsUnavailable(ApiError):
    """NATS did not answer what a request needed (a read of a bucket, a stream without a
    leader yet): nothing is wrong with the request, it may be retried."""

    status = 503
    reason = "nats_unavailable"


class HttpRefused(ApiError):
    """aiohttp's own refusals (no such route, wrong method, body too large)."""

    def __init__(self, exc: web.HTTPException) -> None:
        super().__init__(exc.text or exc.reason)
        self.status = exc.status
        self.reason = HTTPStatus(exc.status).phrase.lower().replace(" ", "_")


# --- rollouts ---------------------------------------------------------------------------------


class RolloutError(FleetError):
    reason = "rollout"


class InvalidRollout(RolloutError):
    """A bad rollout request; ``field`` names the input at fault."""

    reason = "bad_request"

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class UnknownRollout(RolloutError):
    reason = "not_found"


class RolloutConflict(RolloutError):
    """The action does not apply to the rollout's state (resuming a finished one...)."""

    reason = "conflict"


# --- the fleet state --------------------------------------------------------------------------


class StateError(FleetError):
    reason = "state"


class StateConflict(StateError):
    """The device's entry kept changing under every compare-and-set attempt."""

    reason = "conflict"


class InvalidEvent(StateError):
    reason = "invalid"


# --- the shell relay --------------------------------------------------------------------------


class ShellRefused(RoutingError):
    """The device answered "new" with status 2 (e.g. too many shells)."""

    reason = "shell_refused"
