"""A virtual gateway: one greenlet driving the shared Sans-I/O core over a gevent socket.

The bytes go through the same ``DeviceChannel`` (upgrade, WebSocket, ``DeviceSession``) as
the shard's, in its client role; this module only moves bytes, keeps time and plays the
network. Everything periodic (status, alerts, pings, injected faults) is a due time checked
by the one loop, so an idle gateway is one greenlet blocked in ``recv`` with a timeout and a
few small objects: no extra greenlet, queue or timer per gateway.

Network effects are applied in that loop: one-way latency and bandwidth delay each write
before it leaves and each read before it is handled; faults are a reset (RST), a blackhole
(the gateway goes silent on an open socket, so only the server's keep-alive can notice) and
an offline spell (silent, then a fresh connection once it is over).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import socket as stdlib_socket
import struct
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, assert_never

import gevent
from gevent import socket

from backend.protocol import channel as ch
from backend.protocol import closecodes
from backend.protocol import envelope as env
from backend.protocol import messages as m
from backend.protocol import session as ps
from backend.protocol import websocket as ws
from backend.protocol.errors import FleetError, HandshakeError, UpgradeRejected
from backend.protocol.terminal import DeviceShells
from simulator.backoff import Backoff
from simulator.behaviour import INSTALL_FAILURES, pick_problem, run_command
from simulator.house import House
from simulator.places import house_location

if TYPE_CHECKING:
    from simulator.fleet import Fleet, Target
    from simulator.network import FaultKind, NetworkProfile

log = logging.getLogger("fleet.simulator")

RECV_SIZE = 65536
_HOUSE_PROTOCOLS = frozenset({env.PROTO_FILE_TRANSFER, env.PROTO_PORT_FORWARD})
GATEWAY_PROTOCOLS = (*ps.DEVICE_PROTOCOLS, *sorted(_HOUSE_PROTOCOLS))
_RESET_ON_CLOSE = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends RST
_timer_seq = itertools.count()
_Timer = tuple[float, int, Callable[[Any, float], None], Any]  # (due, tie-breaker, action, arg)


def _run_timers(timers: list[_Timer] | None, now: float) -> float:
    """Run the timers due by ``now``, soonest first; when the next one is due."""
    while timers and timers[0][0] <= now:
        _, _, action, arg = heapq.heappop(timers)
        action(arg, now)
    return timers[0][0] if timers else float("inf")


# Closes a healthy fleet sees: normal, going away, and a draining shard (1012).
_EXPECTED_CLOSES = frozenset({1000, 1001, closecodes.SERVICE_RESTART})


class _Dropped(FleetError):
    """The connection ended; ``cause`` names why, for the drops-by-cause accounting."""

    def __init__(
        self, cause: str, *, expected: bool, reset: bool = False, retry_after: float | None = None
    ) -> None:
        super().__init__(cause)
        self.cause = cause
        self.expected = expected
        self.reset = reset  # leave with a TCP reset rather than a close handshake
        self.retry_after = retry_after


class _ConnectFailed(FleetError):
    def __init__(self, stage: str, error: BaseException) -> None:
        super().__init__(f"{stage}: {error}")
        self.stage = stage
        self.error = error


class VirtualGateway:
    __slots__ = (
        "__weakref__",
        "alert_sent",
        "alert_seq",
        "backoff",
        "channel",
        "connected_at",
        "down_since",
        "fault_kind",
        "firmware",
        "fleet",
        "house",
        "inbound",
        "index",
        "last_heard",
        "link_down",
        "located",
        "network",
        "next_alert",
        "next_fault",
        "next_status",
        "open_problem",
        "outbound",
        "ping_sent",
        "reboot_update",
        "session",
        "shells",
        "silent_ended",
        "sock",
        "timers",
        "update_sid",
        "updating",
        "upgraded_at",
    )

    def __init__(self, fleet: Fleet, index: int, device_id: str) -> None:
        behaviour = fleet.behaviour
        self.fleet = fleet
        self.index = index
        self.network: NetworkProfile = fleet.mix.profile_for(index)
        self.session = ps.DeviceSession(
            ps.Role.DEVICE, device_id=device_id, max_outbox=behaviour.max_outbox,
            protocols=GATEWAY_PROTOCOLS,
        )  # fmt: skip
        self.backoff = Backoff(behaviour.reconnect_base, behaviour.reconnect_cap)
        self.firmware = behaviour.firmware
        self.sock: Any = None
        self.channel: ch.ClientChannel | None = None  # the connection's protocol state
        self.connected_at: float | None = None  # set once the ProtoMsg handshake completes
        self.down_since: float | None = None  # set while reconnecting after a drop
        self.upgraded_at = self.last_heard = 0.0
        self.ping_sent: float | None = None
        self.next_status = self.next_alert = self.next_fault = 0.0
        self.fault_kind: FaultKind | None = None
        self.open_problem: tuple[float, str, str, str, str] | None = None  # (clear at, problem)
        self.alert_seq = 0
        self.alert_sent: dict[str, float] | None = None  # unacked alert id -> first sent
        self.timers: list[_Timer] | None = None  # the connection's: gone when it drops
        self.updating: list[_Timer] | None = None  # an update's steps: they outlive connections
        # Bytes in flight on the simulated link, (arrival time, bytes), oldest first.
        self.inbound: deque[tuple[float, bytes]] | None = None
        self.outbound: deque[tuple[float, bytes]] | None = None
        self.update_sid: str | None = None  # the update being downloaded or installed
        self.reboot_update: str | None = None  # sid of an update that rebooted the gateway
        self.shells: DeviceShells | None = None  # created by the first shell session
        self.house: House | None = None  # web page and files: made on first use, then kept
        self.silent_ended = False  # a blackhole just ended: a drop now is its consequence
        self.link_down = False  # in a blackhole or offline spell of its simulated link
        self.located = False  # this connection's statuses carried the house's location
        self._schedule_alert(time.monotonic())

    @property
    def device_id(self) -> str:
        return self.session.device_id

    # --- lifecycle -------------------------------------------------------------------------

    def run(self) -> None:
        """The greenlet body: connect, serve, reconnect after a backoff, until killed."""
        try:
            while True:
                delay = self._attempt()
                self._quiet_until(time.monotonic() + delay, connected=False)
        finally:
            self.fleet.gateways.discard(self)

    def _attempt(self) -> float:
        """One connection, from TCP connect to its end; returns how long to wait before
        the next attempt (the backoff, or the server's Retry-After hint)."""
        target = self.fleet.target_for(self.index)
        try:
            self._open(target)
        except _ConnectFailed as exc:
            self._close_socket(reset=True)
            return self._connect_failed(exc)
        try:
            self._serve()
        except _Dropped as drop:
            return self._dropped(drop)
        except gevent.GreenletExit:
            if self.connected_at is not None:
                self.fleet.stats.gateway_stopped()
            self._leave(1001, "simulation stopped")
            raise

    def _connect_failed(self, exc: _ConnectFailed) -> float:
        stats = self.fleet.stats
        hint = None
        if isinstance(exc.error, UpgradeRejected):
            hint = exc.error.retry_after
            stats.connect_failures[f"http {exc.error.status}"] += 1
        else:
            stats.connect_failures[exc.stage] += 1
        stats.request(f"connect: {exc.stage}", 0.0, error=exc.error)
        if self.down_since is None:
            self.down_since = time.monotonic()
        return self.backoff.next_delay(self.fleet.rng, hint)

    def _dropped(self, drop: _Dropped) -> float:
        cause = drop.cause
        if self.silent_ended and not drop.expected:
            cause, drop.expected = f"net_blackhole ({cause})", True
        if drop.cause == "reboot":
            self._leave(1001, "rebooting")
        else:
            self._close_socket(reset=drop.reset)
        stats = self.fleet.stats
        if self.connected_at is None:  # ended before the handshake completed
            stats.connect_failures[cause] += 1
            stats.request("connect: handshake", 0.0, error=ConnectionError(cause))
        else:
            stats.gateway_dropped(cause, drop.expected)
            if not drop.expected:
                stats.request("drop", 0.0, error=ConnectionError(cause))
            self.down_since = time.monotonic()
        self._forget_connection()
        if drop.cause == "reboot":
            return self.fleet.behaviour.reboot_time
        return self.backoff.next_delay(self.fleet.rng, drop.retry_after)

    def _forget_connection(self) -> None:
        self.session.connection_lost()
        self.channel = None
        self.connected_at = None
        self.ping_sent = None
        self.timers = None
        self.shells = None  # a shell lives as long as its connection
        if self.house is not None:
            self.house.connection_lost()
        self.inbound = self.outbound = None
        self.silent_ended = False
        self.located = False

    # --- connecting ------------------------------------------------------------------------

    def _open(self, target: Target) -> None:
        """TCP (+TLS) and the HTTP upgrade."""
        fleet, network = self.fleet, self.network
        timeout = fleet.behaviour.handshake_timeout
        stage = "tcp"
        try:
            started = time.monotonic()
            gevent.sleep(network.handshake_delay + 2 * network.delay(0, fleet.rng))
            self.sock = sock = socket.socket(stdlib_socket.AF_INET, stdlib_socket.SOCK_STREAM)
            sock.settimeout(timeout)
            if (source := fleet.source_for(self.index)) is not None:
                sock.bind((source, 0))
            sock.connect((target.host, target.port))
            fleet.stats.request("connect: tcp", time.monotonic() - started)
            if target.tls:
                stage, started = "tls", time.monotonic()
                self.sock = sock = self._start_tls(sock, target)
                fleet.stats.request("connect: tls", time.monotonic() - started)
            stage, started = "upgrade", time.monotonic()
            self._upgrade(sock, target)
            fleet.stats.request("connect: upgrade", time.monotonic() - started)
        except (OSError, HandshakeError) as exc:
            raise _ConnectFailed(stage, exc) from exc

    def _start_tls(self, sock: Any, target: Target) -> Any:
        context = self.fleet.ssl_context
        if context is None:
            raise OSError("wss:// target but no TLS context configured")
        return context.wrap_socket(sock, server_hostname=target.host)

    def _upgrade(self, sock: Any, target: Target) -> None:
        """Raises the ``HandshakeError`` of a refused upgrade; the frames that came with the
        101 wait in the channel."""
        channel = self.channel = ch.ClientChannel(self.session)
        token = self.fleet.credentials(self.device_id)
        request = channel.connect(target.netloc, target.path, token)
        rng = self.fleet.rng
        gevent.sleep(self.network.delay(len(request), rng))  # one way out...
        self._send(request)
        read = 0
        while channel.state is ws.State.CONNECTING:
            data: bytes = sock.recv(RECV_SIZE)
            if not data:
                raise OSError("connection closed during the upgrade")
            read += len(data)
            channel.receive_data(data)
        gevent.sleep(self.network.delay(read, rng))  # ...and back
        outcome = next(channel.events_received())  # the handshake's, before any frame
        if isinstance(outcome, ch.HandshakeFailed):
            raise outcome.error

    # --- serving ---------------------------------------------------------------------------

    def _serve(self) -> NoReturn:
        """Run the connection until it drops (raises ``_Dropped``)."""
        self.upgraded_at = self.last_heard = time.monotonic()
        self._handle_events(self.upgraded_at)  # the frames that came with the 101
        while True:
            due = self._run_due(time.monotonic())
            self._flush()
            if self.outbound:
                due = min(due, self.outbound[0][0])
            wait = due - time.monotonic()
            if wait > 0 and (data := self._recv(wait)) is not None:
                self._arrived(data, time.monotonic())

    def _recv(self, timeout: float) -> bytes | None:
        sock = self.sock
        sock.settimeout(timeout)
        try:
            data: bytes = sock.recv(RECV_SIZE)
        except TimeoutError:
            return None
        except OSError as exc:
            self._deliver_in_flight()
            raise _Dropped("reset", expected=False) from exc
        if not data:
            self._deliver_in_flight()
            raise _Dropped("eof", expected=False)
        return data

    def _deliver_in_flight(self) -> None:
        """The peer is gone: what we still had on the link is lost, but what it sent before
        still crosses the link first (TCP keeps order), so a close frame read just before the
        FIN names the drop, and acks read before it count."""
        self.outbound = None
        if self.inbound:
            gevent.sleep(max(0.0, self.inbound[-1][0] - time.monotonic()))
            self._deliver(time.monotonic())

    def _arrived(self, data: bytes, now: float) -> None:
        """Bytes the kernel has; on the simulated link they arrive a bit later."""
        inbound = self.inbound
        busy_until = inbound[-1][0] if inbound else 0.0
        arrival = self.network.arrival(now, len(data), self.fleet.rng, busy_until)
        if inbound is None:
            inbound = self.inbound = deque()
        inbound.append((arrival, data))

    def _deliver(self, now: float) -> float:
        """Hand the bytes that have crossed the link to the protocol; returns the next arrival."""
        inbound = self.inbound
        while inbound and inbound[0][0] <= now:
            self._received(inbound.popleft()[1], now)
        if inbound:
            return inbound[0][0]
        self.inbound = None
        return float("inf")

    def _received(self, data: bytes, now: float) -> None:
        assert self.channel is not None
        self.last_heard = now
        self.channel.receive_data(data)
        self._handle_events(now)

    def _handle_events(self, now: float) -> None:
        assert self.channel is not None
        for event in self.channel.events_received():
            self._event(event, now)

    def _event(self, event: ch.Event, now: float) -> None:
        match event:
            case ps.HandshakeCompleted():
                self._handshake_completed(now)
            case ps.AlertAcked(alert_id):
                self._alert_acked(alert_id, now)
            case ps.CommandRequested():
                self._command_requested(event, now)
            case ps.UpdateOffered():
                self._update_offered(event, now)
            case ps.MessageReceived(msg) if msg.proto == env.PROTO_SHELL:
                self._shell_message(msg, now)
            case ps.MessageReceived(msg) if msg.proto in _HOUSE_PROTOCOLS:
                self._house_message(msg)
            case ws.Pong(payload):
                self._pong_received(payload, now)
            case ws.Closed(code, reason):
                self._flush()  # the echoed close frame (RFC 6455 §5.5.1)
                hint = closecodes.parse_retry_after(reason)
                expected = code in _EXPECTED_CLOSES
                raise _Dropped(f"closed {code}", expected=expected, retry_after=hint)
            case ws.Failed(error) | ps.ProtocolViolation(error) if error.close_code:
                self._flush()
                raise _Dropped(f"protocol error {error.close_code}", expected=False)
            case ps.ErrorReceived(error):
                log.debug("%s: server error %s", self.device_id, error.err)
            case (
                ch.MessageHandled() | ch.Upgraded() | ch.UpgradeRequested() | ch.HandshakeFailed()
                | ps.MessageReceived() | ps.ProtocolViolation() | ws.Failed() | ps.PeerClosing()
                | ps.StrayMessage() | ps.AlertReceived() | ps.StatusReceived()
                | ps.CommandCompleted() | ps.RequestFailed() | ps.UpdateProgressReceived()
                | ps.Relayed()
            ):  # fmt: skip
                pass  # answered by the session already, or a server's event only
            case _:
                assert_never(event)

    def _pong_received(self, payload: bytes, now: float) -> None:
        """Only the answer to the latest ping counts: one to an earlier ping may have waited
        in the socket through a blackhole, and says nothing about the connection now."""
        if self.ping_sent is None or payload != _ping_payload(self.ping_sent):
            return
        self.silent_ended = False  # the server still answers: the connection survived
        self.fleet.stats.request("ping", now - self.ping_sent)
        self.ping_sent = None

    def _handshake_completed(self, now: float) -> None:
        fleet = self.fleet
        fleet.stats.request("connect: handshake", now - self.upgraded_at)
        self.connected_at = now
        fleet.stats.gateway_connected()
        if self.down_since is not None:
            fleet.stats.reconnects += 1
            fleet.stats.request("reconnect", now - self.down_since)
            self.down_since = None
        self.backoff.reset()
        fleet.stats.alerts["resent"] += self.session.resend_unacked()
        if self.reboot_update is not None:
            self.session.send_update_progress(self.reboot_update, m.UpdateProgress("success", 100))
            fleet.stats.update_ended("success")
            self.reboot_update = None
        self.next_status = now  # report status (and firmware) at once
        self.next_fault = self._schedule_fault(now)

    # --- what is due -----------------------------------------------------------------------

    def _run_due(self, now: float) -> float:
        """Do everything due at ``now``; returns when something is due next."""
        link = min(self._deliver(now), self._transmit(now))
        if self.connected_at is None:
            deadline = self.upgraded_at + self.fleet.behaviour.handshake_timeout
            if now >= deadline:
                raise _Dropped("handshake timeout", expected=False, reset=True)
            return min(deadline, link)
        if now >= self.next_fault and self._inject_fault(now):
            return now  # time passed while silent: look again
        if now >= self.next_status:
            self._send_status(now)
        self._alerts_due(now)
        return min(
            link,
            self._timers_due(now),
            self._keepalive(now),
            self.next_status,
            self.next_fault,
            self._next_alert_event(),
        )

    def _keepalive(self, now: float) -> float:
        """Ping when the server has been quiet; give up when it stays quiet (§5.5.2)."""
        behaviour = self.fleet.behaviour
        quiet = now - self.last_heard
        if quiet >= behaviour.keepalive_timeout:
            raise _Dropped("keepalive timeout", expected=False, reset=True)
        if self.ping_sent is None:
            if quiet < behaviour.ping_interval:
                return self.last_heard + behaviour.ping_interval
            self._ping(now)
        return self.last_heard + behaviour.keepalive_timeout

    def _ping(self, now: float) -> None:
        assert self.channel is not None
        self.channel.send_ping(_ping_payload(now))  # the pong echoes it: which ping it answers
        self.ping_sent = now

    def _after(self, due: float, action: Callable[[Any, float], None], arg: Any) -> None:
        """Run ``action(arg, now)`` at ``due`` on this connection (dropped with it)."""
        if self.timers is None:
            self.timers = []
        heapq.heappush(self.timers, (due, next(_timer_seq), action, arg))

    def _update_after(self, due: float, action: Callable[[Any, float], None], arg: Any) -> None:
        """An update step: a device downloads and installs whatever its management
        connection does meanwhile, and reports the progress once connected again."""
        if self.updating is None:
            self.updating = []
        heapq.heappush(self.updating, (due, next(_timer_seq), action, arg))

    def _timers_due(self, now: float) -> float:
        return min(_run_timers(self.timers, now), _run_timers(self.updating, now))

    def _send_status(self, now: float) -> None:
        fleet = self.fleet
        rng = fleet.rng
        values = {"temperature": round(rng.gauss(21.0, 2.0), 1), "rssi": rng.randrange(-95, -45)}
        # The house's location once a connection, as a Mender device sends its inventory: the
        # fleet state keeps the last one reported (and no status pays to recompute it).
        inventory = {} if self.located else house_location(self.device_id)
        self.located = True
        self.session.send_status(m.Status(self.firmware, values, time.time(), inventory))
        fleet.stats.request("status", 0.0)
        self.next_status = now + fleet.behaviour.status_interval * rng.uniform(0.9, 1.1)

    # --- alerts ----------------------------------------------------------------------------

    def _schedule_alert(self, now: float) -> None:
        rate = self.fleet.behaviour.alerts_per_hour
        self.next_alert = now + self.fleet.rng.expovariate(rate / 3600) if rate else float("inf")

    def _next_alert_event(self) -> float:
        if self.fleet.draining:
            return float("inf")
        problem = self.open_problem
        return min(self.next_alert, problem[0]) if problem is not None else self.next_alert

    def _alerts_due(self, now: float) -> None:
        """Raise a household problem now and then, and clear it later; works offline too:
        alerts then wait in the outbox for the next connection."""
        fleet = self.fleet
        if fleet.draining:
            return
        problem = self.open_problem
        if problem is not None and now >= problem[0]:
            self.open_problem = None
            self._send_alert("cleared", problem[1:], now)
        if now >= self.next_alert:
            self._schedule_alert(now)
            if self.open_problem is None:
                new = pick_problem(fleet.rng)
                clear_at = now + fleet.rng.expovariate(1 / fleet.behaviour.clear_after)
                self.open_problem = (clear_at, *new)
                self._send_alert("raised", new, now)

    def _send_alert(self, state: str, problem: tuple[str, str, str, str], now: float) -> None:
        fleet = self.fleet
        code, severity, description, fix = problem
        self.alert_seq += 1
        alert_id = f"{fleet.run_id}-{self.alert_seq}"
        alert = m.Alert(alert_id, code, severity, state, description, fix, time.time())
        try:
            self.session.send_alert(alert)
        except ps.OutboxFull:
            fleet.stats.alerts["refused"] += 1
            return
        fleet.stats.alerts["sent"] += 1
        if self.alert_sent is None:
            self.alert_sent = {}
        self.alert_sent[alert_id] = now
        if self.connected_at is not None:
            self._after(now + fleet.behaviour.ack_timeout, self._ack_overdue, alert_id)

    def _ack_overdue(self, alert_id: str, now: float) -> None:
        if self.alert_sent and alert_id in self.alert_sent:
            self.fleet.stats.alerts["resent"] += self.session.resend_unacked()
            self._after(now + self.fleet.behaviour.ack_timeout, self._ack_overdue, alert_id)

    def _alert_acked(self, alert_id: str, now: float) -> None:
        stats = self.fleet.stats
        stats.alerts["acked"] += 1
        sent = self.alert_sent
        first_sent = sent.pop(alert_id, None) if sent else None
        if not sent:
            self.alert_sent = None
        if first_sent is not None:
            stats.request("alert", now - first_sent)

    # --- commands and updates ---------------------------------------------------------------

    def _command_requested(self, event: ps.CommandRequested, now: float) -> None:
        fleet = self.fleet
        code, output, latency = run_command(
            event.request.command,
            self.device_id,
            self.firmware,
            fleet.rng,
            fleet.behaviour.command_latency,
        )
        self._after(now + latency, self._command_done, (event.sid, code, output, now))

    def _command_done(self, arg: tuple[str, int, bytes, float], now: float) -> None:
        sid, code, output, received = arg
        self.session.send_command_result(sid, m.CommandResult(code, output, now - received))
        self.fleet.stats.commands += 1
        self.fleet.stats.request("command", now - received, len(output))

    def _shell_message(self, msg: env.ProtoMsg, now: float) -> None:
        """Lines typed in a shell session run as commands do, output after their latency."""
        shells = self.shells
        if shells is None:
            shells = self.shells = DeviceShells()
        fleet = self.fleet
        for line in shells.receive(msg, self.session, now):
            _code, output, latency = run_command(
                line.command, self.device_id, self.firmware, fleet.rng,
                fleet.behaviour.command_latency,
            )  # fmt: skip
            self._after(now + latency, self._shell_output, (line.sid, output))
        if not shells.open_sessions:
            self.shells = None

    def _house_message(self, msg: env.ProtoMsg) -> None:
        """Port forwards to the gateway's web page and file transfers on its files."""
        house = self.house
        if house is None:
            house = self.house = House(self.device_id, self.firmware)
        for answer in house.receive(msg):
            self.session.send(answer)

    def _shell_output(self, arg: tuple[str, bytes], now: float) -> None:
        if self.shells is not None:
            self.shells.output(self.session, *arg)

    def _update_offered(self, event: ps.UpdateOffered, now: float) -> None:
        """Download at the network's bandwidth (progress every quarter), then install. An
        offer made again (the first one seemed lost) is ignored while being worked on, and
        answered at once once installed."""
        if event.sid in (self.update_sid, self.reboot_update):
            return
        if event.offer.version == self.firmware:
            self.session.send_update_progress(event.sid, m.UpdateProgress("success", 100))
            return
        self.update_sid = event.sid
        bandwidth = self.network.bandwidth
        download = event.offer.size / bandwidth if bandwidth else 0.0
        self.fleet.stats.update_started()
        self.session.send_update_progress(event.sid, m.UpdateProgress("downloading", 0))
        for quarter in (1, 2, 3, 4):
            step = (event, 25 * quarter)
            self._update_after(now + download * quarter / 4, self._update_step, step)

    def _update_step(self, arg: tuple[ps.UpdateOffered, int], now: float) -> None:
        event, percent = arg
        if percent < 100:
            self.session.send_update_progress(event.sid, m.UpdateProgress("downloading", percent))
            return
        self.session.send_update_progress(event.sid, m.UpdateProgress("installing", 100))
        install = self.fleet.rng.expovariate(1 / self.fleet.behaviour.install_time)
        self._update_after(now + install, self._update_installed, event)

    def _update_installed(self, event: ps.UpdateOffered, now: float) -> None:
        fleet = self.fleet
        if fleet.rng.random() < fleet.behaviour.update_failure_share:
            reason = fleet.rng.choice(INSTALL_FAILURES)
            self.session.send_update_progress(event.sid, m.UpdateProgress("failure", 100, reason))
            fleet.stats.update_ended("failure")
            self.update_sid = None
            return
        self.session.send_update_progress(event.sid, m.UpdateProgress("rebooting", 100))
        self._flush()
        self.firmware = event.offer.version
        self.reboot_update = event.sid  # "success" is reported from the new firmware
        self.update_sid = None
        raise _Dropped("reboot", expected=True)

    # --- network faults --------------------------------------------------------------------

    def _schedule_fault(self, now: float) -> float:
        fault = self.network.next_fault(self.fleet.rng)
        if fault is None:
            return float("inf")
        delay, self.fault_kind = fault
        return now + delay

    def _inject_fault(self, now: float) -> bool:
        """Play the fault that is due; returns True if time passed in silence."""
        kind = self.fault_kind
        assert kind is not None  # next_fault is infinite on a link without faults
        if kind == "drop":
            raise _Dropped("net_drop", expected=True, reset=True)
        self._quiet_until(now + self.network.fault_duration(kind, self.fleet.rng), connected=True)
        if kind == "offline":
            raise _Dropped("net_offline", expected=True, reset=True)
        # The blackhole is over: if the server reaped us meanwhile, the next drop says so;
        # the answer to this ping says the connection survived.
        self.silent_ended = True
        self.last_heard = now = time.monotonic()
        self.next_fault = self._schedule_fault(now)  # the next fault counts from the end
        self._ping(now)
        return True

    def _quiet_until(self, until: float, *, connected: bool) -> None:
        """Let time pass without touching the network; the house keeps raising alerts.
        ``connected``: a fault of the link (its alerts wait for the link, not the backend)."""
        self.link_down = connected
        try:
            while (now := time.monotonic()) < until:
                gevent.sleep(min(until, self._next_alert_event()) - now)
                self._alerts_due(time.monotonic())
        finally:
            self.link_down = False
        if not connected:
            self.session.messages_to_send()  # they wait in the outbox for the next connection

    # --- bytes out ---------------------------------------------------------------------------

    def _flush(self) -> None:
        """Frame what the session queued and put it on the simulated link."""
        assert self.channel is not None
        if not (data := self.channel.data_to_send()):
            return
        outbound = self.outbound
        busy_until = outbound[-1][0] if outbound else 0.0
        now = time.monotonic()
        arrival = self.network.arrival(now, len(data), self.fleet.rng, busy_until)
        if outbound is None:
            outbound = self.outbound = deque()
        outbound.append((arrival, data))
        self._transmit(now)

    def _transmit(self, now: float) -> float:
        """Write the bytes whose simulated transit is over; returns the next one's time."""
        outbound = self.outbound
        try:
            while outbound and outbound[0][0] <= now:
                self._send(outbound.popleft()[1])
        except OSError as exc:
            raise _Dropped("reset", expected=False) from exc
        if outbound:
            return outbound[0][0]
        self.outbound = None
        return float("inf")

    def _send(self, data: bytes) -> None:
        self.sock.settimeout(self.fleet.behaviour.handshake_timeout)
        self.sock.sendall(data)

    def _leave(self, code: int, reason: str) -> None:
        """Close politely (best effort), then the socket."""
        if self.channel is not None and self.sock is not None:
            self.channel.send_close(code, reason)
            pending = b"".join(data for _, data in self.outbound or ())
            with contextlib.suppress(OSError):
                self.sock.settimeout(1.0)
                self.sock.sendall(pending + self.channel.data_to_send())
        self._close_socket(reset=False)

    def _close_socket(self, *, reset: bool) -> None:
        sock, self.sock = self.sock, None
        if sock is None:
            return
        if reset:
            with contextlib.suppress(OSError):
                sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_LINGER, _RESET_ON_CLOSE)
        sock.close()


def _ping_payload(sent: float) -> bytes:
    return struct.pack("!d", sent)
