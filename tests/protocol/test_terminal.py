"""The device side of Mender shell sessions: a line-oriented terminal, Sans-I/O."""

from __future__ import annotations

from backend.protocol import envelope as env
from backend.protocol import session as ps
from backend.protocol.envelope import ProtoMsg
from backend.protocol.terminal import (
    EXITED,
    HEALTH_CHECK_FAILED,
    PING_GRACE,
    PROMPT,
    TOO_MANY_FOR_USER,
    DeviceShells,
    ShellLine,
)

SID = "s-1"


def device() -> tuple[DeviceShells, ps.DeviceSession]:
    return DeviceShells(max_sessions=2), ps.DeviceSession(ps.Role.DEVICE, device_id="gw-1")


def shell_msg(typ: str, body: bytes = b"", sid: str = SID, **props: object) -> ProtoMsg:
    return ProtoMsg(env.PROTO_SHELL, typ, sid, props or None, body)


def sent(session: ps.DeviceSession) -> list[tuple[str, str, int | None, bytes]]:
    """(typ, sid, status, body) of each message the device queued."""
    out = []
    for data in session.messages_to_send():
        msg = env.decode(data)
        assert msg.proto == env.PROTO_SHELL
        out.append((msg.typ, msg.sid, (msg.props or {}).get(env.PROP_STATUS), msg.body))
    return out


def opened() -> tuple[DeviceShells, ps.DeviceSession]:
    shells, session = device()
    shells.receive(shell_msg(env.TYP_SHELL_NEW, user_id="op-1"), session, 0.0)
    session.messages_to_send()
    return shells, session


def test_new_is_answered_as_mender_connect_does_then_a_prompt() -> None:
    shells, session = device()
    assert shells.receive(shell_msg(env.TYP_SHELL_NEW), session, 0.0) == []
    assert sent(session) == [("new", SID, 1, b"Shell started"), ("shell", SID, 1, PROMPT)]
    assert shells.open_sessions == 1


def test_a_second_new_and_too_many_shells_are_refused_with_status_2() -> None:
    shells, session = opened()
    shells.receive(shell_msg(env.TYP_SHELL_NEW), session, 0.0)
    assert sent(session) == [("new", SID, 2, b"failed to start shell: shell is already running")]
    shells.receive(shell_msg(env.TYP_SHELL_NEW, sid="s-2", user_id="op-2"), session, 0.0)
    shells.receive(shell_msg(env.TYP_SHELL_NEW, sid="s-3", user_id="op-3"), session, 0.0)
    assert sent(session)[-1] == ("new", "s-3", 2, b"failed to start shell: too many shells")


def test_input_is_echoed_and_complete_lines_are_handed_over() -> None:
    shells, session = opened()
    lines = shells.receive(shell_msg(env.TYP_SHELL_DATA, b"ech"), session, 0.0)
    assert (lines, sent(session)) == ([], [("shell", SID, 1, b"ech")])
    lines = shells.receive(shell_msg(env.TYP_SHELL_DATA, b"o hi\r\nuptime\n"), session, 0.0)
    assert lines == [ShellLine(SID, "echo hi"), ShellLine(SID, "uptime")]
    assert sent(session) == [("shell", SID, 1, b"o hi\r\nuptime\r\n")]
    shells.output(session, SID, b"hi\n")
    assert sent(session) == [("shell", SID, 1, b"hi\r\n" + PROMPT)]


def test_erase_and_interrupt_edit_the_line() -> None:
    shells, session = opened()
    lines = shells.receive(shell_msg(env.TYP_SHELL_DATA, b"lx\x7fs\r"), session, 0.0)
    assert lines == [ShellLine(SID, "ls")]
    assert sent(session) == [("shell", SID, 1, b"lx\b \bs\r\n")]
    assert shells.receive(shell_msg(env.TYP_SHELL_DATA, b"rm\x03\r"), session, 0.0) == []
    assert sent(session) == [("shell", SID, 1, b"rm^C\r\n" + PROMPT + b"\r\n" + PROMPT)]


def test_resize_is_what_stty_size_prints() -> None:
    shells, session = opened()
    resize = shell_msg(env.TYP_SHELL_RESIZE, terminal_width=120, terminal_height=40)
    shells.receive(resize, session, 0.0)
    assert shells.receive(shell_msg(env.TYP_SHELL_DATA, b"stty size\r"), session, 0.0) == []
    assert sent(session) == [("shell", SID, 1, b"stty size\r\n40 120\r\n" + PROMPT)]


def test_exit_and_ctrl_d_stop_the_shell_but_the_session_waits_for_the_servers_stop() -> None:
    for typed in (b"exit\r", b"\x04"):
        shells, session = opened()
        assert shells.receive(shell_msg(env.TYP_SHELL_DATA, typed), session, 0.0) == []
        assert sent(session)[-1] == ("stop", SID, 2, EXITED)  # mender-connect's last words
        shells.output(session, SID, b"late output")
        shells.receive(shell_msg(env.TYP_SHELL_DATA, b"ls\r"), session, 0.0)
        assert sent(session) == [("shell", SID, 2, b"no such shell session")]
        assert shells.open_sessions == 1  # registered, as mender-connect keeps it
        shells.receive(shell_msg(env.TYP_SHELL_STOP), session, 0.0)
        assert (shells.open_sessions, sent(session)) == (0, [])


def test_an_operator_stop_ends_the_session_silently() -> None:
    shells, session = opened()
    shells.receive(shell_msg(env.TYP_SHELL_STOP), session, 0.0)
    assert (shells.open_sessions, sent(session)) == (0, [])


def test_input_for_no_session_is_answered_with_an_error() -> None:
    shells, session = device()
    shells.receive(shell_msg(env.TYP_SHELL_DATA, b"ls\r"), session, 0.0)
    assert sent(session) == [("shell", SID, 2, b"no such shell session")]


def test_a_lost_connection_ends_every_session() -> None:
    shells, _session = opened()
    shells.close_all()
    assert shells.open_sessions == 0


def test_one_session_per_user_until_the_server_stops_the_exited_one() -> None:
    shells, session = opened()  # op-1's
    shells.receive(shell_msg(env.TYP_SHELL_DATA, b"exit\r"), session, 0.0)
    session.messages_to_send()
    shells.receive(shell_msg(env.TYP_SHELL_NEW, sid="s-2", user_id="op-1"), session, 0.0)
    assert sent(session) == [("new", "s-2", 2, TOO_MANY_FOR_USER)]
    shells.receive(shell_msg(env.TYP_SHELL_NEW, sid="s-3", user_id="op-2"), session, 0.0)
    assert sent(session)[0] == ("new", "s-3", 1, b"Shell started")  # another operator's
    shells.receive(shell_msg(env.TYP_SHELL_STOP), session, 0.0)
    shells.receive(shell_msg(env.TYP_SHELL_NEW, sid="s-4", user_id="op-1"), session, 0.0)
    assert sent(session)[0] == ("new", "s-4", 1, b"Shell started")


def pings(session: ps.DeviceSession) -> list[tuple[str, object]]:
    return [(m.sid, (m.props or {}).get("timeout")) for m in map(env.decode,
            session.messages_to_send()) if m.typ == env.TYP_PING]  # fmt: skip


def test_the_health_check_pings_each_interval_and_a_pong_keeps_the_session() -> None:
    shells = DeviceShells(ping_interval=2.0)
    session = ps.DeviceSession(ps.Role.DEVICE, device_id="gw-1")
    shells.receive(shell_msg(env.TYP_SHELL_NEW, user_id="op-1"), session, 100.0)
    session.messages_to_send()
    shells.tick(session, 101.0)
    assert pings(session) == []
    for now in (102.0, 104.0, 106.0):
        shells.tick(session, now)
        assert pings(session) == [(SID, 7)]  # the timeout prop: interval + grace
        shells.receive(shell_msg(env.TYP_PONG), session, now + 0.1)
    shells.tick(session, 106.1 + 2.0 + PING_GRACE)  # just in time, as the last pong was
    assert shells.open_sessions == 1


def test_no_pong_within_interval_plus_grace_kills_the_session_and_says_so() -> None:
    shells = DeviceShells(ping_interval=2.0)
    session = ps.DeviceSession(ps.Role.DEVICE, device_id="gw-1")
    shells.receive(shell_msg(env.TYP_SHELL_NEW, user_id="op-1"), session, 0.0)
    session.messages_to_send()
    for now in (2.0, 4.0, 6.0):
        shells.tick(session, now)
    shells.tick(session, 7.5)
    assert shells.open_sessions == 0
    assert sent(session)[-1] == ("stop", SID, 2, HEALTH_CHECK_FAILED)
