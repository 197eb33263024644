"""The device side of Mender's shell protocol (proto 1), Sans-I/O: a small line-oriented
terminal for devices without a real shell (the test device, the virtual gateways).

As mender-connect does, "new" is answered with "new" status 1 and body "Shell started" (status
2 and the error text when refused: a second "new" for a running session, more than
``sessions_per_user`` sessions of one ``user_id``), terminal bytes travel as "shell" messages
both ways, and the shell ending on the device is a "stop" to the operator, with status 2 and
the pty's read error as its text. Input is echoed as a tty in cooked mode would; each complete
line is handed to the driver to run (``ShellLine``), which answers with ``output``. ``exit``, or
Ctrl-D on an empty line, ends the session; ``stty size`` prints the terminal size the operator
last sent.

Mender's session rules (docs/protocol.md, "Shell"): a session whose shell exited stays
registered, and counts against its user's limit, until the server's own "stop" for it. The
health check (``tick``, when the driver has a clock) pings each session every
``ping_interval`` seconds and kills one whose last pong is older than the interval plus
``PING_GRACE``; it says so with a "stop" (status 2) rather than silently.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from backend.protocol import envelope as env
from backend.protocol.envelope import ProtoMsg
from backend.protocol.session import DeviceSession

PROMPT = b"$ "
MAX_SESSIONS = 4
"""Shells open at once per device (mender-connect caps spawned shells too)."""
SESSIONS_PER_USER = 1
"""Sessions one ``user_id`` may hold at once: mender-connect's default."""
PING_INTERVAL = 60.0
"""Seconds between mender-connect's health-check pings of a session."""
PING_GRACE = 5.0
"""A session is killed when its last pong is older than the interval plus this."""
EXITED = b"read /dev/ptmx: input/output error"
"""mender-connect's last word when the shell exits normally (the pty's read fails)."""
HEALTH_CHECK_FAILED = b"health check failed, connection with the client lost"
TOO_MANY_FOR_USER = b"user has too many open sessions"
MAX_LINE = 4096
DEFAULT_SIZE = (80, 24)
_ENTER = frozenset(b"\r\n")
_ERASE = frozenset(b"\x7f\x08")
_INTERRUPT, _EOF = 0x03, 0x04


@dataclass(slots=True, frozen=True)
class ShellLine:
    """A complete command line typed in session ``sid``, for the driver to run."""

    sid: str
    command: str


@dataclass(slots=True)
class _Terminal:
    width: int
    height: int
    user: str
    last_pong: float
    next_ping: float
    exited: bool = False  # the shell ended; registered until the server's "stop"
    line: bytearray = field(default_factory=bytearray)


class DeviceShells:
    """The shell sessions of one device; holds nothing until the first one opens."""

    __slots__ = ("_terminals", "max_sessions", "ping_interval", "sessions_per_user")

    def __init__(
        self,
        max_sessions: int = MAX_SESSIONS,
        *,
        sessions_per_user: int = SESSIONS_PER_USER,
        ping_interval: float = PING_INTERVAL,
    ) -> None:
        self.max_sessions = max_sessions
        self.sessions_per_user = sessions_per_user
        self.ping_interval = ping_interval
        self._terminals: dict[str, _Terminal] | None = None

    def receive(self, msg: ProtoMsg, session: DeviceSession, now: float) -> list[ShellLine]:
        """Handle one shell message (``now``: the driver's clock, in seconds); returns the
        lines the driver must run, in order."""
        if msg.typ == env.TYP_SHELL_NEW:
            self._new(msg, session, now)
            return []
        terminal = (self._terminals or {}).get(msg.sid)
        if msg.typ == env.TYP_SHELL_STOP:
            self._forget(msg.sid)  # the server's stop: the session is unregistered
        elif terminal is None or terminal.exited:
            if msg.typ != env.TYP_PONG:  # a late pong needs no answer
                session.send(_reply(msg.typ, msg.sid, b"no such shell session", env.STATUS_ERROR))
        elif msg.typ == env.TYP_SHELL_DATA:
            return self._typed(msg.sid, terminal, msg.body, session)
        elif msg.typ == env.TYP_SHELL_RESIZE:
            terminal.width, terminal.height = _size(msg.props, (terminal.width, terminal.height))
        elif msg.typ == env.TYP_PING:
            session.send(ProtoMsg(env.PROTO_SHELL, env.TYP_PONG, msg.sid))
        elif msg.typ == env.TYP_PONG:
            terminal.last_pong = now
        return []

    def tick(self, session: DeviceSession, now: float) -> None:
        """The health check, called every second or so: pings the sessions that are due,
        kills those whose pong is overdue and forgets exited ones the server never stopped."""
        for sid, terminal in list((self._terminals or {}).items()):
            if now - terminal.last_pong > self.ping_interval + PING_GRACE:
                self._forget(sid)
                if not terminal.exited:
                    session.send(_reply(env.TYP_SHELL_STOP, sid, HEALTH_CHECK_FAILED,
                                        env.STATUS_ERROR))  # fmt: skip
            elif now >= terminal.next_ping and not terminal.exited:
                terminal.next_ping = now + self.ping_interval
                timeout = {env.PROP_TIMEOUT: round(self.ping_interval + PING_GRACE)}
                session.send(ProtoMsg(env.PROTO_SHELL, env.TYP_PING, sid, timeout))

    def output(self, session: DeviceSession, sid: str, data: bytes) -> None:
        """A command's output, then the prompt; dropped if the session ended meanwhile."""
        terminal = (self._terminals or {}).get(sid)
        if terminal is None or terminal.exited:
            return
        text = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # a tty's ONLCR
        session.send(_reply(env.TYP_SHELL_DATA, sid, text + PROMPT))

    def close_all(self) -> None:
        """The connection is gone, and its sessions with it."""
        self._terminals = None

    @property
    def open_sessions(self) -> int:
        """Sessions registered, exited ones the server has not stopped included."""
        return len(self._terminals) if self._terminals else 0

    def _new(self, msg: ProtoMsg, session: DeviceSession, now: float) -> None:
        terminals = self._terminals or {}
        user = (msg.props or {}).get(env.PROP_USER_ID)
        user = user if isinstance(user, str) else ""
        refusal = None
        if not msg.sid:
            refusal = b"failed to start shell: a shell session needs a sid"
        elif msg.sid in terminals:
            refusal = b"failed to start shell: shell is already running"
        elif sum(t.user == user for t in terminals.values()) >= self.sessions_per_user:
            refusal = TOO_MANY_FOR_USER
        elif len(terminals) >= self.max_sessions:
            refusal = b"failed to start shell: too many shells"
        if refusal is not None:
            session.send(_reply(env.TYP_SHELL_NEW, msg.sid, refusal, env.STATUS_ERROR))
            return
        width, height = _size(msg.props, DEFAULT_SIZE)
        terminal = _Terminal(width, height, user, now, now + self.ping_interval)
        self._terminals = {**terminals, msg.sid: terminal}
        session.send(_reply(env.TYP_SHELL_NEW, msg.sid, b"Shell started"))
        session.send(_reply(env.TYP_SHELL_DATA, msg.sid, PROMPT))

    def _typed(
        self, sid: str, terminal: _Terminal, data: bytes, session: DeviceSession
    ) -> list[ShellLine]:
        echo, lines = bytearray(), []
        line = terminal.line
        for index, byte in enumerate(data):
            if byte in _ENTER:
                if byte == 0x0A and index and data[index - 1] == 0x0D:
                    continue  # "\r\n" is one Enter
                echo += b"\r\n"
                command = line.decode(errors="replace").strip()
                line.clear()
                if not self._builtin(sid, terminal, command, echo):
                    lines.append(ShellLine(sid, command))
                if terminal.exited:
                    break
            elif byte in _ERASE:
                if line:
                    line.pop()
                    echo += b"\b \b"
            elif byte == _INTERRUPT:
                line.clear()
                echo += b"^C\r\n" + PROMPT
            elif byte == _EOF:
                if not line:
                    self._builtin(sid, terminal, "exit", echo)
                    break
            elif len(line) < MAX_LINE:
                line.append(byte)
                echo.append(byte)
        if echo:
            session.send(_reply(env.TYP_SHELL_DATA, sid, bytes(echo)))
        if terminal.exited:
            session.send(_reply(env.TYP_SHELL_STOP, sid, EXITED, env.STATUS_ERROR))
        return lines

    def _builtin(self, sid: str, terminal: _Terminal, command: str, echo: bytearray) -> bool:
        """Commands the terminal answers itself; True when ``command`` was one."""
        if command == "exit":
            terminal.exited = True
        elif command == "stty size":
            echo += f"{terminal.height} {terminal.width}\r\n".encode() + PROMPT
        elif not command:
            echo += PROMPT
        else:
            return False
        return True

    def _forget(self, sid: str) -> None:
        if self._terminals is not None:
            self._terminals.pop(sid, None)
            if not self._terminals:
                self._terminals = None


def _reply(typ: str, sid: str, body: bytes, status: int = env.STATUS_NORMAL) -> ProtoMsg:
    return ProtoMsg(env.PROTO_SHELL, typ, sid, {env.PROP_STATUS: status}, body)


def _size(props: dict[str, Any] | None, default: tuple[int, int]) -> tuple[int, int]:
    """(width, height) from Mender's terminal_width/terminal_height props; bad ones ignored."""
    props = props or {}
    width, height = props.get(env.PROP_TERMINAL_WIDTH), props.get(env.PROP_TERMINAL_HEIGHT)
    if type(width) is int and type(height) is int and width > 0 and height > 0:
        return width, height
    return default
