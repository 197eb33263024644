"""What a simulated gateway does, apart from moving bytes: a pure device model.

It reports status, raises and clears household alerts (kept in the session's outbox until
acked, sent again when an ack is overdue or after a reconnect), runs operator commands and
shell lines after their simulated latency, serves its house (web page, files) and installs
updates whose steps outlive a connection. It never sleeps, reads a clock or touches a
socket: the driver passes ``now``, reads ``due`` and calls ``run_due`` then; what the
device wants of the connection it returns (``REBOOT``) or queues in the session for the
driver to frame and send.

How alerts come is a policy the fleet holds (``simulator.gateway.alerts``).
"""

from __future__ import annotations

import heapq
import itertools
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Final, Literal

from backend.protocol import channel as ch
from backend.protocol import envelope as env
from backend.protocol import messages as m
from backend.protocol import session as ps
from backend.protocol.terminal import DeviceShells
from simulator.behaviour import INSTALL_FAILURES, run_command
from simulator.gateway.link import NEVER, SimulatedLink
from simulator.house import House
from simulator.places import house_location

if TYPE_CHECKING:
    from simulator.fleet import Fleet

HOUSE_PROTOCOLS = frozenset({env.PROTO_FILE_TRANSFER, env.PROTO_PORT_FORWARD})
GATEWAY_PROTOCOLS = (*ps.DEVICE_PROTOCOLS, *sorted(HOUSE_PROTOCOLS))
REBOOT: Final = "reboot"
Intent = Literal["reboot"] | None
"""What the device asks of its connection: ``REBOOT`` ends it (an update was installed)."""

_timer_seq = itertools.count()
_Timer = tuple[float, int, Callable[[Any, float], Intent], Any]  # (due, tie-breaker, action, arg)


def _run_timers(timers: list[_Timer] | None, now: float) -> Intent:
    """Run the timers due by ``now``, soonest first, until one asks for something."""
    while timers and timers[0][0] <= now:
        _, _, action, arg = heapq.heappop(timers)
        if intent := action(arg, now):
            return intent
    return None


def _next_timer(timers: list[_Timer] | None) -> float:
    return timers[0][0] if timers else NEVER


class Device:
    __slots__ = (
        "__weakref__",
        "alert_sent",
        "alert_seq",
        "due",
        "firmware",
        "fleet",
        "house",
        "link",
        "located",
        "next_alert",
        "next_status",
        "online",
        "open_problem",
        "reboot_update",
        "session",
        "shells",
        "timers",
        "update_sid",
        "updating",
    )

    def __init__(self, fleet: Fleet, device_id: str, link: SimulatedLink, now: float) -> None:
        self.fleet = fleet
        self.link = link  # updates download over it
        self.session = ps.DeviceSession(
            ps.Role.DEVICE, device_id=device_id, max_outbox=fleet.behaviour.max_outbox,
            protocols=GATEWAY_PROTOCOLS,
        )  # fmt: skip
        self.firmware = fleet.behaviour.firmware
        self.next_status = NEVER  # due once connected
        self.next_alert = NEVER
        self.open_problem: tuple[float, str, str, str, str] | None = None  # (clear at, problem)
        self.alert_seq = 0
        self.alert_sent: dict[str, float] | None = None  # unacked alert id -> first sent
        self.timers: list[_Timer] | None = None  # the connection's: gone when it drops
        self.updating: list[_Timer] | None = None  # an update's steps: they outlive connections
        self.update_sid: str | None = None  # the update being downloaded or installed
        self.reboot_update: str | None = None  # sid of an update that rebooted the gateway
        self.shells: DeviceShells | None = None  # created by the first shell session
        self.house: House | None = None  # web page and files: made on first use, then kept
        self.located = False  # this connection's statuses carried the house's location
        self.online = False  # connected to the backend, the ProtoMsg handshake done
        self.due = NEVER
        """When something is next due: kept by every method that changes it (read on each
        of the driver's wake-ups, so not recomputed there)."""
        self.schedule_alert(now)
        self._refresh()

    @property
    def device_id(self) -> str:
        return self.session.device_id

    # --- the connection's life ---------------------------------------------------------------

    def connected(self, now: float) -> None:
        """The ProtoMsg handshake completed: send again what waited, report at once."""
        self.online = True
        stats = self.fleet.stats
        stats.alerts["resent"] += self.session.resend_unacked()
        if self.reboot_update is not None:
            self.session.send_update_progress(self.reboot_update, m.UpdateProgress("success", 100))
            stats.update_ended("success")
            self.reboot_update = None
        self.next_status = now
        for alert_id in self.alert_sent or ():
            self._after(now + self.fleet.behaviour.ack_timeout, self._ack_overdue, alert_id)
        self._refresh()

    def connection_lost(self) -> None:
        self.online = False
        self.session.connection_lost()
        self.next_status = NEVER
        self.timers = None
        self.shells = None  # a shell lives as long as its connection
        if self.house is not None:
            self.house.connection_lost()
        self.located = False
        self._refresh()

    # --- what is due ------------------------------------------------------------------------

    def _refresh(self) -> None:
        due = min(_next_timer(self.updating), self._next_alert())
        if self.online:
            due = min(due, self.next_status, _next_timer(self.timers))
        self.due = due

    def run_due(self, now: float) -> Intent:
        """Do what is due at ``now``; offline, only the house and the update go on."""
        if not self.fleet.draining:
            self.fleet.alerts.raise_due(self, now)
        intent = None
        if self.online:
            if now >= self.next_status:
                self._send_status(now)
            intent = _run_timers(self.timers, now)
        intent = intent or _run_timers(self.updating, now)
        self._refresh()
        return intent

    def _next_alert(self) -> float:
        return NEVER if self.fleet.draining else self.fleet.alerts.next_alert(self)

    def _after(self, due: float, action: Callable[[Any, float], Intent], arg: Any) -> None:
        """Run ``action(arg, now)`` at ``due`` on this connection (dropped with it)."""
        if self.timers is None:
            self.timers = []
        heapq.heappush(self.timers, (due, next(_timer_seq), action, arg))

    def _update_after(self, due: float, action: Callable[[Any, float], Intent], arg: Any) -> None:
        """An update step: a device downloads and installs whatever its management
        connection does meanwhile, and reports the progress once connected again."""
        if self.updating is None:
            self.updating = []
        heapq.heappush(self.updating, (due, next(_timer_seq), action, arg))

    def _send_status(self, now: float) -> None:
        fleet = self.fleet
        rng = fleet.rng
        values = {"temperature": round(rng.gauss(21.0, 2.0), 1), "rssi": rng.randrange(-95, -45)}
        # The house's location once a connection, as a Mender device sends its inventory: the
        # fleet state keeps the last one reported (and no status pays to recompute it).
        inventory = {} if self.located else house_location(self.device_id)
        self.located = True
        self.session.send_status(m.Status(self.firmware, values, time.time(), inventory))
        fleet.stats.statuses += 1
        self.next_status = now + fleet.behaviour.status_interval * rng.uniform(0.9, 1.1)

    # --- messages from the backend ------------------------------------------------------------

    def received(self, event: ch.Event, now: float) -> Intent:
        """A session event of the connection; what the session answers itself is ignored."""
        match event:
            case ps.AlertAcked(alert_id):
                self._alert_acked(alert_id, now)
            case ps.CommandRequested():
                self._command_requested(event, now)
            case ps.UpdateOffered():
                self._update_offered(event, now)
            case ps.MessageReceived(msg) if msg.proto == env.PROTO_SHELL:
                self._shell_message(msg, now)
            case ps.MessageReceived(msg) if msg.proto in HOUSE_PROTOCOLS:
                self._house_message(msg)
            case _:
                return None
        self._refresh()
        return None

    # --- alerts -------------------------------------------------------------------------------

    def schedule_alert(self, now: float) -> None:
        rate = self.fleet.behaviour.alerts_per_hour
        self.next_alert = now + self.fleet.rng.expovariate(rate / 3600) if rate else NEVER

    def in_flight(self) -> int:
        return len(self.alert_sent or ())

    def send_alert(self, state: str, problem: tuple[str, str, str, str], now: float) -> None:
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
        if self.online:
            self._after(now + fleet.behaviour.ack_timeout, self._ack_overdue, alert_id)

    def _ack_overdue(self, alert_id: str, now: float) -> Intent:
        if self.alert_sent and alert_id in self.alert_sent:
            self.fleet.stats.alerts["resent"] += self.session.resend_unacked()
            self._after(now + self.fleet.behaviour.ack_timeout, self._ack_overdue, alert_id)
        return None

    def _alert_acked(self, alert_id: str, now: float) -> None:
        stats = self.fleet.stats
        stats.alerts["acked"] += 1
        sent = self.alert_sent
        first_sent = sent.pop(alert_id, None) if sent else None
        if not sent:
            self.alert_sent = None
        if first_sent is not None:
            stats.sample("alert", now - first_sent, now)

    # --- commands, shells and the house -------------------------------------------------------

    def _command_requested(self, event: ps.CommandRequested, now: float) -> None:
        code, output, latency = self._run(event.request.command)
        self._after(now + latency, self._command_done, (event.sid, code, output, now))

    def _run(self, command: str) -> tuple[int, bytes, float]:
        fleet = self.fleet
        return run_command(
            command, self.device_id, self.firmware, fleet.rng, fleet.behaviour.command_latency
        )

    def _command_done(self, arg: tuple[str, int, bytes, float], now: float) -> Intent:
        sid, code, output, received = arg
        self.session.send_command_result(sid, m.CommandResult(code, output, now - received))
        self.fleet.stats.commands += 1
        self.fleet.stats.request("command", now - received, len(output))
        return None

    def _shell_message(self, msg: env.ProtoMsg, now: float) -> None:
        """Lines typed in a shell session run as commands do, output after their latency."""
        shells = self.shells
        if shells is None:
            shells = self.shells = DeviceShells()
        for line in shells.receive(msg, self.session, now):
            _code, output, latency = self._run(line.command)
            self._after(now + latency, self._shell_output, (line.sid, output))
        if not shells.open_sessions:
            self.shells = None

    def _shell_output(self, arg: tuple[str, bytes], now: float) -> Intent:
        if self.shells is not None:
            self.shells.output(self.session, *arg)
        return None

    def _house_message(self, msg: env.ProtoMsg) -> None:
        """Port forwards to the gateway's web page and file transfers on its files."""
        house = self.house
        if house is None:
            house = self.house = House(self.device_id, self.firmware)
        for answer in house.receive(msg):
            self.session.send(answer)

    # --- updates ------------------------------------------------------------------------------

    def _update_offered(self, event: ps.UpdateOffered, now: float) -> None:
        """Download at the link's bandwidth (progress every quarter), then install. An offer
        made again (the first one seemed lost) is ignored while being worked on, and answered
        at once once installed."""
        if event.sid in (self.update_sid, self.reboot_update):
            return
        if event.offer.version == self.firmware:
            self.session.send_update_progress(event.sid, m.UpdateProgress("success", 100))
            return
        self.update_sid = event.sid
        bandwidth = self.link.profile.bandwidth
        download = event.offer.size / bandwidth if bandwidth else 0.0
        self.fleet.stats.update_started()
        self.session.send_update_progress(event.sid, m.UpdateProgress("downloading", 0))
        for quarter in (1, 2, 3, 4):
            step = (event, 25 * quarter)
            self._update_after(now + download * quarter / 4, self._update_step, step)

    def _update_step(self, arg: tuple[ps.UpdateOffered, int], now: float) -> Intent:
        event, percent = arg
        if percent < 100:
            self.session.send_update_progress(event.sid, m.UpdateProgress("downloading", percent))
            return None
        self.session.send_update_progress(event.sid, m.UpdateProgress("installing", 100))
        install = self.fleet.rng.expovariate(1 / self.fleet.behaviour.install_time)
        self._update_after(now + install, self._update_installed, event)
        return None

    def _update_installed(self, event: ps.UpdateOffered, now: float) -> Intent:
        fleet = self.fleet
        if fleet.rng.random() < fleet.behaviour.update_failure_share:
            reason = fleet.rng.choice(INSTALL_FAILURES)
            self.session.send_update_progress(event.sid, m.UpdateProgress("failure", 100, reason))
            fleet.stats.update_ended("failure")
            self.update_sid = None
            return None
        self.session.send_update_progress(event.sid, m.UpdateProgress("rebooting", 100))
        self.firmware = event.offer.version
        self.reboot_update = event.sid  # "success" is reported from the new firmware
        self.update_sid = None
        return REBOOT
