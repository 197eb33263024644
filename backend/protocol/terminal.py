"""The device side of Mender's shell protocol (proto 1), Sans-I/O: a small line-oriented
terminal for devices without a real shell (the test device, the virtual gateways).

As mender-connect does, "new" is answered with "new" status 1 and body "Shell started" (status
2 and the error text when refused, e.g. a second "new" for a running session), terminal bytes
travel as "shell" messages both ways, and the shell ending on the device is a "stop" to the
operator. Input is echoed as a tty in cooked mode would; each complete line is handed to the
driver to run (``ShellLine``), which answers with ``output``. ``exit``, or Ctrl-D on an empty
line, ends the session; ``stty size`` prints the terminal size the operator last sent.
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
    line: bytearray = field(default_factory=bytearray)


class DeviceShells:
    """The shell sessions of one device; holds nothing until the first one opens."""

    __slots__ = ("_terminals", "max_sessions")

    def __init__(self, max_sessions: int = MAX_SESSIONS) -> None:
        self.max_sessions = max_sessions
        self._terminals: dict[str, _Terminal] | None = None

    def receive(self, msg: ProtoMsg, session: DeviceSession) -> list[ShellLine]:
        """Handle one shell message; returns the lines the driver must run, in order."""
        if msg.typ == env.TYP_SHELL_NEW:
            self._new(msg, session)
            return []
        terminal = (self._terminals or {}).get(msg.sid)
        if terminal is None:
            if msg.typ != env.TYP_SHELL_STOP:
                session.send(_reply(msg.typ, msg.sid, b"no such shell session", env.STATUS_ERROR))
            return []
        if msg.typ == env.TYP_SHELL_DATA:
            return self._typed(msg.sid, terminal, msg.body, session)
        if msg.typ == env.TYP_SHELL_RESIZE:
            terminal.width, terminal.height = _size(msg.props, (terminal.width, terminal.height))
        elif msg.typ == env.TYP_SHELL_STOP:
            self._forget(msg.sid)
        elif msg.typ == env.TYP_PING:
            session.send(ProtoMsg(env.PROTO_SHELL, env.TYP_PONG, msg.sid))
        return []

    def output(self, session: DeviceSession, sid: str, data: bytes) -> None:
        """A command's output, then the prompt; dropped if the session ended meanwhile."""
        if self._terminals is None or sid not in self._terminals:
            return
        text = data.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")  # a tty's ONLCR
        session.send(_reply(env.TYP_SHELL_DATA, sid, text + PROMPT))

    def close_all(self) -> None:
        """The connection is gone, and its sessions with it."""
        self._terminals = None

    @property
    def open_sessions(self) -> int:
        return len(self._terminals) if self._terminals else 0

    def _new(self, msg: ProtoMsg, session: DeviceSession) -> None:
        terminals = self._terminals or {}
        refusal = None
        if not msg.sid:
            refusal = b"failed to start shell: a shell session needs a sid"
        elif msg.sid in terminals:
            refusal = b"failed to start shell: shell is already running"
        elif len(terminals) >= self.max_sessions:
            refusal = b"failed to start shell: too many shells"
        if refusal is not None:
            session.send(_reply(env.TYP_SHELL_NEW, msg.sid, refusal, env.STATUS_ERROR))
            return
        width, height = _size(msg.props, DEFAULT_SIZE)
        self._terminals = {**terminals, msg.sid: _Terminal(width, height)}
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
                if sid not in (self._terminals or {}):
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
        if sid not in (self._terminals or {}):
            session.send(_reply(env.TYP_SHELL_STOP, sid, b""))
        return lines

    def _builtin(self, sid: str, terminal: _Terminal, command: str, echo: bytearray) -> bool:
        """Commands the terminal answers itself; True when ``command`` was one."""
        if command == "exit":
            self._forget(sid)
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
