"""DeviceSession: a SERVER session and a DEVICE session wired back to back, no I/O."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from backend.protocol import envelope as env
from backend.protocol import messages as m
from backend.protocol import session as ps
from backend.protocol.envelope import ProtoMsg, decode, encode
from backend.protocol.errors import (
    FleetError,
    MalformedMessage,
    MessageTooBig,
    ProtocolError,
    TooBigForBus,
    UnexpectedMessage,
    UnknownProtocol,
    UnknownSession,
)
from backend.protocol.session import DeviceSession, Role

ALERT = m.Alert("a-1", "disk_full", "critical", "raised", "disk at 97%", "free space", 1.5)
ALERT2 = m.Alert("a-2", "overheat", "warning", "raised")
REQUEST = m.CommandRequest("uptime", 5.0)
RESULT = m.CommandResult(0, b"up 3 days\n", 0.02)
OFFER = m.UpdateOffer("2.0.0", "https://example.com/fw-2.0.0.bin", "ab" * 32, 4096)


# --- wiring ------------------------------------------------------------------------------------


def deliver(sender: DeviceSession, receiver: DeviceSession) -> list[bytes]:
    """Hand everything ``sender`` queued to ``receiver``; return what was sent."""
    sent = sender.messages_to_send()
    for data in sent:
        receiver.receive_message(data)
    return sent


def pump(server: DeviceSession, device: DeviceSession) -> None:
    """Deliver both ways until neither side has anything left to say."""
    for _ in range(10):
        if not deliver(server, device) and not deliver(device, server):
            return
    raise AssertionError("the sessions keep talking")


def connected(
    *, protocols: tuple[int, ...] = ps.DEVICE_PROTOCOLS, max_outbox: int = 1000
) -> tuple[DeviceSession, DeviceSession]:
    """A server and a device session after the handshake, with no events pending."""
    server = DeviceSession(Role.SERVER, device_id="gw-1")
    device = DeviceSession(
        Role.DEVICE, device_id="gw-1", protocols=protocols, max_outbox=max_outbox
    )
    server.start()
    pump(server, device)
    assert server.events_received() == [ps.HandshakeCompleted(1, protocols)]
    assert device.events_received() == [ps.HandshakeCompleted(1, protocols)]
    return server, device


@pytest.fixture
def pair() -> tuple[DeviceSession, DeviceSession]:
    return connected()


def sent_messages(session: DeviceSession) -> list[ProtoMsg]:
    return [decode(data) for data in session.messages_to_send()]


def raw(proto: int, typ: str = "", sid: str = "", props: Any = None, body: bytes = b"") -> bytes:
    return encode(ProtoMsg(proto, typ, sid, props, body))


def pack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


def single_violation(session: DeviceSession) -> tuple[ProtocolError, m.Error]:
    """The one ProtocolViolation event and the one control error the session answered with."""
    events = session.events_received()
    assert len(events) == 1
    event = events[0]
    assert isinstance(event, ps.ProtocolViolation)
    messages = sent_messages(session)
    assert len(messages) == 1
    reply = messages[0]
    assert reply.proto == env.PROTO_CONTROL
    assert reply.typ == env.TYP_ERROR
    return event.error, m.Error.from_body(reply.body)


# --- handshake ---------------------------------------------------------------------------------


def test_server_opens_and_device_accepts_with_its_protocols() -> None:
    server = DeviceSession(Role.SERVER)
    device = DeviceSession(Role.DEVICE, protocols=(4, 1, 2, 3))
    server.start()
    [open_data] = server.messages_to_send()
    open_msg = decode(open_data)
    assert (open_msg.proto, open_msg.typ) == (env.PROTO_CONTROL, env.TYP_OPEN)
    assert open_msg.sid
    assert m.Open.from_body(open_msg.body) == m.Open((1,))
    assert server.events_received() == []

    device.receive_message(open_data)
    [accept] = sent_messages(device)
    assert (accept.proto, accept.typ, accept.sid) == (
        env.PROTO_CONTROL,
        env.TYP_ACCEPT,
        open_msg.sid,
    )
    assert m.Accept.from_body(accept.body) == m.Accept(1, (4, 1, 2, 3))
    assert device.events_received() == [ps.HandshakeCompleted(1, (4, 1, 2, 3))]

    server.receive_message(encode(accept))
    assert server.events_received() == [ps.HandshakeCompleted(1, (4, 1, 2, 3))]
    assert server.messages_to_send() == []
    assert server.peer_version == device.peer_version == 1


def test_each_start_uses_a_new_sid() -> None:
    server = DeviceSession(Role.SERVER)
    server.start()
    server.start()
    first, second = sent_messages(server)
    assert first.sid != second.sid


def test_server_accepts_an_open_from_the_device_with_its_protocols() -> None:
    server = DeviceSession(Role.SERVER)
    server.receive_message(encode(m.Open((1, 2)).to_msg(sid="d-1")))
    [accept] = sent_messages(server)
    assert accept.sid == "d-1"
    body = m.Accept.from_body(accept.body)
    assert body == m.Accept(1, (env.PROTO_MONITOR, env.PROTO_COMMAND, env.PROTO_UPDATE))
    assert server.events_received() == [ps.HandshakeCompleted(1, body.protocols)]


def test_pre_handshake_device_is_version_0() -> None:
    server = DeviceSession(Role.SERVER)
    server.start()
    [open_msg] = sent_messages(server)
    server.receive_message(raw(env.PROTO_CONTROL, env.TYP_OPEN, open_msg.sid, {"status": 1}))
    assert server.events_received() == [ps.HandshakeCompleted(0, ())]
    assert server.peer_version == 0
    assert server.messages_to_send() == []


def test_device_that_never_answers_is_still_served() -> None:
    server = DeviceSession(Role.SERVER)
    device = DeviceSession(Role.DEVICE)
    server.start()
    server.messages_to_send()  # the open is lost: the device never answers it
    device.send_alert(ALERT)
    deliver(device, server)
    assert server.events_received() == [ps.AlertReceived(ALERT)]
    assert server.peer_version is None
    server.ack_alert(ALERT.id)
    deliver(server, device)
    assert device.events_received() == [ps.AlertAcked(ALERT.id)]


def test_open_without_a_common_version_is_refused() -> None:
    device = DeviceSession(Role.DEVICE)
    device.receive_message(encode(m.Open((2, 3)).to_msg(sid="o-1")))
    error, reply = single_violation(device)
    assert isinstance(error, UnexpectedMessage)
    assert reply.code == 409
    assert reply.msgid == "o-1"
    assert device.peer_version is None


# --- control messages ----------------------------------------------------------------------


@pytest.mark.parametrize("role", list(Role))
def test_ping_is_answered_with_pong_same_sid_and_body(role: Role) -> None:
    session = DeviceSession(role)
    session.receive_message(raw(env.PROTO_CONTROL, env.TYP_PING, "p-1", {"x": 1}, b"\x00abc"))
    assert sent_messages(session) == [
        ProtoMsg(env.PROTO_CONTROL, env.TYP_PONG, "p-1", None, b"\x00abc")
    ]
    assert session.events_received() == []


def test_control_ping_vector_is_answered() -> None:
    session = DeviceSession(Role.SERVER)
    session.receive_message(bytes.fromhex("81a368647282a570726f746fcdffffa3747970a470696e67"))
    assert session.messages_to_send() == [b"\x81\xa3hdr\x82\xa5proto\xcd\xff\xff\xa3typ\xa4pong"]


def test_pong_is_ignored() -> None:
    session = DeviceSession(Role.SERVER)
    session.receive_message(raw(env.PROTO_CONTROL, env.TYP_PONG, "p-1"))
    assert session.events_received() == []
    assert session.messages_to_send() == []


def test_close_is_reported() -> None:
    session = DeviceSession(Role.DEVICE)
    session.receive_message(raw(env.PROTO_CONTROL, env.TYP_CLOSE))
    assert session.events_received() == [ps.PeerClosing()]
    assert session.messages_to_send() == []


def test_unknown_control_type_is_unexpected() -> None:
    session = DeviceSession(Role.SERVER)
    session.receive_message(raw(env.PROTO_CONTROL, "hello", "h-1"))
    error, reply = single_violation(session)
    assert isinstance(error, UnexpectedMessage)
    assert (reply.code, reply.msgproto, reply.msgtype, reply.msgid) == (409, 0xFFFF, "hello", "h-1")


def test_peer_error_is_reported_not_answered(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    device.receive_message(raw(env.PROTO_MONITOR, "alert", "", None, ALERT.to_body()))
    device.events_received()
    [error_data] = device.messages_to_send()
    server.receive_message(error_data)
    [event] = server.events_received()
    assert isinstance(event, ps.ErrorReceived)
    assert event.error.code == 409
    assert event.msg == decode(error_data)
    assert server.messages_to_send() == []


# --- alerts ------------------------------------------------------------------------------------


def test_alert_is_received_acked_and_forgotten(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    device.send_alert(ALERT)
    assert device.outbox_size == 1
    deliver(device, server)
    assert server.events_received() == [ps.AlertReceived(ALERT)]
    assert device.outbox_size == 1  # kept until acked

    server.ack_alert(ALERT.id)
    [ack] = deliver(server, device)
    assert decode(ack) == m.AlertAck(ALERT.id).to_msg()
    assert device.events_received() == [ps.AlertAcked(ALERT.id)]
    assert device.outbox_size == 0
    assert device.resend_unacked() == 0
    assert device.messages_to_send() == []


def test_alert_message_is_the_alert_body(pair: tuple[DeviceSession, DeviceSession]) -> None:
    _server, device = pair
    device.send_alert(ALERT)
    assert sent_messages(device) == [ALERT.to_msg()]


def test_duplicate_and_late_acks_are_ignored(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    device.send_alert(ALERT)
    device.send_alert(ALERT2)
    deliver(device, server)
    server.events_received()
    for alert_id in (ALERT.id, ALERT.id, "never-sent", ALERT.id):
        server.ack_alert(alert_id)
    deliver(server, device)
    assert device.events_received() == [ps.AlertAcked(ALERT.id)]
    assert device.messages_to_send() == []  # no error for a stray ack
    assert device.outbox_size == 1


def test_ack_before_any_alert_is_ignored() -> None:
    device = DeviceSession(Role.DEVICE)
    device.receive_message(encode(m.AlertAck("a-9").to_msg()))
    assert device.events_received() == []
    assert device.messages_to_send() == []


def test_unacked_alerts_are_resent_identically_after_reconnect(
    pair: tuple[DeviceSession, DeviceSession],
) -> None:
    server, device = pair
    device.send_alert(ALERT)
    device.send_alert(ALERT2)
    first = device.messages_to_send()
    device.connection_lost()  # dropped before any ack
    assert device.peer_version is None
    assert device.outbox_size == 2

    assert device.resend_unacked() == 2
    again = device.messages_to_send()
    assert again == first

    for data in again:
        server.receive_message(data)
    assert server.events_received() == [ps.AlertReceived(ALERT), ps.AlertReceived(ALERT2)]
    server.ack_alert(ALERT2.id)
    deliver(server, device)
    assert device.events_received() == [ps.AlertAcked(ALERT2.id)]
    assert device.resend_unacked() == 1
    assert device.messages_to_send() == first[:1]


def test_outbox_full_refuses_new_alerts() -> None:
    server, device = connected(max_outbox=2)
    device.send_alert(ALERT)
    device.send_alert(ALERT2)
    third = m.Alert("a-3", "c", "info", "raised")
    with pytest.raises(ps.OutboxFull) as caught:
        device.send_alert(third)
    assert isinstance(caught.value, FleetError)
    assert not isinstance(caught.value, ProtocolError)
    assert caught.value.reason == "outbox_full"
    assert device.outbox_size == 2

    device.send_alert(ALERT)  # an id already in the outbox may be sent again
    assert device.outbox_size == 2
    assert len(device.messages_to_send()) == 3

    server.ack_alert(ALERT.id)
    deliver(server, device)
    device.send_alert(third)  # room again
    assert device.outbox_size == 2


def test_resending_an_id_replaces_the_stored_alert() -> None:
    device = DeviceSession(Role.DEVICE)
    device.send_alert(ALERT)
    cleared = m.Alert(ALERT.id, ALERT.code, ALERT.severity, "cleared")
    device.send_alert(cleared)
    device.messages_to_send()
    device.resend_unacked()
    assert sent_messages(device) == [cleared.to_msg()]


def test_status_reaches_the_server(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    status = m.Status("1.4.2", {"cpu": 0.25, "uptime": 3600}, 1700000000.0)
    device.send_status(status)
    deliver(device, server)
    assert server.events_received() == [ps.StatusReceived(status)]
    assert server.messages_to_send() == []


# --- commands ----------------------------------------------------------------------------------


def test_command_request_and_result_correlate(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    server.send_command("c-1", REQUEST, user_id="operator-7")
    [request] = deliver(server, device)
    assert decode(request).props == {"user_id": "operator-7"}
    assert device.events_received() == [ps.CommandRequested("c-1", REQUEST, "operator-7")]

    device.send_command_result("c-1", RESULT)
    deliver(device, server)
    assert server.events_received() == [ps.CommandCompleted("c-1", RESULT)]
    assert server.messages_to_send() == []


def test_command_without_user_has_no_props(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    server.send_command("c-1", REQUEST)
    [request] = deliver(server, device)
    assert decode(request).props is None
    assert device.events_received() == [ps.CommandRequested("c-1", REQUEST, None)]


def test_non_string_user_id_is_dropped() -> None:
    device = DeviceSession(Role.DEVICE)
    device.receive_message(encode(REQUEST.to_msg("c-1", {"user_id": 42})))
    assert device.events_received() == [ps.CommandRequested("c-1", REQUEST, None)]


def test_concurrent_commands_complete_independently(
    pair: tuple[DeviceSession, DeviceSession],
) -> None:
    server, device = pair
    server.send_command("c-1", REQUEST)
    server.send_command("c-2", m.CommandRequest("ls", 1.0))
    deliver(server, device)
    device.events_received()
    other = m.CommandResult(2, b"no such file")
    device.send_command_result("c-2", other)
    device.send_command_result("c-1", RESULT)
    deliver(device, server)
    assert server.events_received() == [
        ps.CommandCompleted("c-2", other),
        ps.CommandCompleted("c-1", RESULT),
    ]


def test_pending_sid_cannot_be_reused(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, _device = pair
    server.send_command("c-1", REQUEST)
    with pytest.raises(ValueError, match="c-1"):
        server.send_command("c-1", REQUEST)


def result_data(sid: str) -> bytes:
    return encode(RESULT.to_msg(sid))


def test_second_result_is_stray(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, _device = pair
    server.send_command("c-1", REQUEST)
    server.messages_to_send()
    server.receive_message(result_data("c-1"))
    server.receive_message(result_data("c-1"))
    assert server.events_received() == [
        ps.CommandCompleted("c-1", RESULT),
        ps.StrayMessage(RESULT.to_msg("c-1")),
    ]
    assert server.messages_to_send() == []


def test_result_for_unknown_sid_is_stray() -> None:
    server = DeviceSession(Role.SERVER)
    server.receive_message(result_data("nobody-asked"))
    assert server.events_received() == [ps.StrayMessage(RESULT.to_msg("nobody-asked"))]
    assert server.messages_to_send() == []


def test_result_for_cancelled_command_is_stray(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, _device = pair
    server.send_command("c-1", REQUEST)
    server.messages_to_send()
    server.cancel_command("c-1")
    server.cancel_command("never-sent")  # harmless
    server.receive_message(result_data("c-1"))
    assert server.events_received() == [ps.StrayMessage(RESULT.to_msg("c-1"))]
    assert server.messages_to_send() == []


def test_result_after_reconnect_is_stray(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, _device = pair
    server.send_command("c-1", REQUEST)
    server.messages_to_send()
    server.connection_lost()
    server.receive_message(result_data("c-1"))
    assert server.events_received() == [ps.StrayMessage(RESULT.to_msg("c-1"))]


def test_malformed_result_is_refused_even_if_stray() -> None:
    server = DeviceSession(Role.SERVER)
    server.receive_message(raw(env.PROTO_COMMAND, "result", "c-1", None, pack({"output": b""})))
    error, reply = single_violation(server)
    assert isinstance(error, MalformedMessage)
    assert reply.code == 400


@pytest.mark.parametrize(
    ("proto", "typ", "body"),
    [
        (env.PROTO_COMMAND, "exec", REQUEST.to_body()),
        (env.PROTO_UPDATE, "offer", OFFER.to_body()),
    ],
)
def test_device_requests_need_a_sid(proto: int, typ: str, body: bytes) -> None:
    device = DeviceSession(Role.DEVICE)
    device.receive_message(raw(proto, typ, "", None, body))
    error, reply = single_violation(device)
    assert isinstance(error, MalformedMessage)
    assert "sid" in str(error)
    assert (reply.code, reply.close, reply.msgproto, reply.msgtype) == (400, False, proto, typ)


def test_progress_needs_a_sid() -> None:
    server = DeviceSession(Role.SERVER)
    progress = m.UpdateProgress("downloading", 5)
    server.receive_message(raw(env.PROTO_UPDATE, "progress", "", None, progress.to_body()))
    error, _reply = single_violation(server)
    assert isinstance(error, MalformedMessage)


# --- updates -----------------------------------------------------------------------------------


def test_update_offer_and_progress(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    server.offer_update("u-1", OFFER, user_id="operator-1")
    deliver(server, device)
    assert device.events_received() == [ps.UpdateOffered("u-1", OFFER, "operator-1")]

    steps = [
        m.UpdateProgress("downloading", 10),
        m.UpdateProgress("downloading", 100),
        m.UpdateProgress("installing", 50),
        m.UpdateProgress("rebooting"),
        m.UpdateProgress("success", 100),
    ]
    for step in steps:
        device.send_update_progress("u-1", step)
    deliver(device, server)
    events = server.events_received()
    assert events == [ps.UpdateProgressReceived("u-1", step) for step in steps]
    assert [
        event.progress.final for event in events if isinstance(event, ps.UpdateProgressReceived)
    ] == [
        False,
        False,
        False,
        False,
        True,
    ]


def test_update_failure_carries_its_reason(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    failure = m.UpdateProgress("failure", 40, "sha256 mismatch")
    device.send_update_progress("u-1", failure)
    deliver(device, server)
    assert server.events_received() == [ps.UpdateProgressReceived("u-1", failure)]


def test_failure_without_reason_on_the_wire_is_malformed() -> None:
    server = DeviceSession(Role.SERVER)
    body = pack({"state": "failure", "percent": 0})
    server.receive_message(raw(env.PROTO_UPDATE, "progress", "u-1", None, body))
    error, reply = single_violation(server)
    assert isinstance(error, MalformedMessage)
    assert (reply.code, reply.msgproto, reply.msgtype, reply.msgid) == (
        400,
        0x0102,
        "progress",
        "u-1",
    )


# --- Mender protocols (shell): passed through ------------------------------------------------


def test_shell_messages_are_relayed(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    new = ProtoMsg(env.PROTO_SHELL, env.TYP_SHELL_NEW, "0f1e2d3c")
    server.deliver(new, "operator-1")
    deliver(server, device)
    stamped = ProtoMsg(env.PROTO_SHELL, env.TYP_SHELL_NEW, "0f1e2d3c", {"user_id": "operator-1"})
    assert device.events_received() == [ps.MessageReceived(stamped)]

    started = ProtoMsg(
        env.PROTO_SHELL, env.TYP_SHELL_NEW, "0f1e2d3c", {"status": 1}, b"Shell started"
    )
    output = ProtoMsg(env.PROTO_SHELL, env.TYP_SHELL_DATA, "0f1e2d3c", {"status": 1}, b"$ ")
    device.send(started)
    device.send(output)
    deliver(device, server)
    assert server.events_received() == [ps.Relayed(started), ps.Relayed(output)]
    assert server.messages_to_send() == []
    assert device.messages_to_send() == []


@pytest.mark.parametrize("proto", sorted(env.MENDER_PROTOCOLS))
def test_every_mender_protocol_is_passed_through_to_the_device(proto: int) -> None:
    session = DeviceSession(Role.DEVICE, protocols=tuple(env.MENDER_PROTOCOLS))
    msg = ProtoMsg(proto, "anything", "s-1", {"connection_id": "c"}, b"\x00\x01")
    session.receive_message(encode(msg))
    assert session.events_received() == [ps.MessageReceived(msg)]
    assert session.messages_to_send() == []


@pytest.mark.parametrize("proto", sorted(env.MENDER_PROTOCOLS))
def test_every_mender_protocol_is_relayed_for_a_session_the_server_opened(proto: int) -> None:
    server = DeviceSession(Role.SERVER)
    server.deliver(ProtoMsg(proto, "anything", "s-1"))
    server.messages_to_send()
    msg = ProtoMsg(proto, "anything", "s-1", {"connection_id": "c"}, b"\x00\x01")
    server.receive_message(encode(msg))
    assert server.events_received() == [ps.Relayed(msg)]
    assert server.messages_to_send() == []


def test_a_message_for_a_session_not_opened_here_is_refused() -> None:
    """Device A naming device B's session id: B's session lives on B's connection."""
    server = DeviceSession(Role.SERVER)
    server.receive_message(raw(env.PROTO_SHELL, env.TYP_SHELL_DATA, "b-session", None, b"rm"))
    error, reply = single_violation(server)
    assert isinstance(error, UnknownSession)
    assert (reply.code, reply.close, reply.msgid) == (404, False, "b-session")


def test_a_session_of_another_protocol_is_not_the_same_session() -> None:
    server = DeviceSession(Role.SERVER)
    server.deliver(ProtoMsg(env.PROTO_SHELL, env.TYP_SHELL_NEW, "s-1"))
    server.messages_to_send()
    server.receive_message(raw(env.PROTO_PORT_FORWARD, "forward", "s-1"))
    error, _reply = single_violation(server)
    assert isinstance(error, UnknownSession)


@pytest.mark.parametrize(
    ("typ", "props"),
    [(env.TYP_SHELL_STOP, None), (env.TYP_SHELL_NEW, {"status": env.STATUS_ERROR})],
    ids=["device-stop", "refused-new"],
)
def test_the_device_ending_a_session_unbinds_it(typ: str, props: Any) -> None:
    server = DeviceSession(Role.SERVER)
    server.deliver(ProtoMsg(env.PROTO_SHELL, env.TYP_SHELL_NEW, "s-1"))
    server.messages_to_send()
    ending = ProtoMsg(env.PROTO_SHELL, typ, "s-1", props)
    server.receive_message(encode(ending))
    assert server.events_received() == [ps.Relayed(ending)]
    assert server.end_relays() == {}
    server.receive_message(raw(env.PROTO_SHELL, env.TYP_SHELL_DATA, "s-1", None, b"late"))
    error, _reply = single_violation(server)
    assert isinstance(error, UnknownSession)


def test_a_port_forward_stop_ends_a_connection_not_the_sid_and_release_unbinds_it() -> None:
    server = DeviceSession(Role.SERVER)
    props = {"connection_id": "c1"}
    server.deliver(ProtoMsg(env.PROTO_PORT_FORWARD, "new", "f-1", props))
    server.messages_to_send()
    stop = ProtoMsg(env.PROTO_PORT_FORWARD, "stop", "f-1", props)
    server.receive_message(encode(stop))
    assert server.events_received() == [ps.Relayed(stop)]
    server.release("f-1")
    assert server.end_relays() == {}
    server.deliver(ProtoMsg(env.PROTO_FILE_TRANSFER, "stat", "t-1"))
    server.messages_to_send()
    server.release("t-1")
    server.receive_message(raw(env.PROTO_FILE_TRANSFER, "file_info", "t-1", None, b"late"))
    error, _reply = single_violation(server)
    assert isinstance(error, UnknownSession)


def test_open_sessions_are_bounded_and_handed_over_once() -> None:
    server = DeviceSession(Role.SERVER)
    for index in range(ps.MAX_RELAYS + 5):
        server.deliver(ProtoMsg(env.PROTO_SHELL, env.TYP_SHELL_NEW, f"s-{index}"))
    relays = server.end_relays()
    assert list(relays) == [f"s-{index}" for index in range(5, ps.MAX_RELAYS + 5)]
    assert set(relays.values()) == {env.PROTO_SHELL}
    assert server.end_relays() == {}


def test_reject_answers_with_an_error_and_no_event() -> None:
    server = DeviceSession(Role.SERVER)
    msg = ProtoMsg(env.PROTO_MONITOR, "alert", "a-1")
    server.reject(msg, TooBigForBus("too big"))
    assert server.events_received() == []
    (reply,) = sent_messages(server)
    error = m.Error.from_body(reply.body)
    assert (error.code, error.close, error.msgtype, error.msgid) == (413, False, "alert", "a-1")


def test_an_error_reply_never_grows_with_its_input() -> None:
    server = DeviceSession(Role.SERVER)
    server.receive_message(raw(env.PROTO_CONTROL, "x" * 64, "s-1"))
    _error, reply = single_violation(server)
    assert len(reply.err) <= ps.MAX_ERROR_TEXT


# --- violations --------------------------------------------------------------------------------

WRONG_DIRECTION = [
    (Role.DEVICE, env.PROTO_MONITOR, "alert", ALERT.to_body()),
    (Role.DEVICE, env.PROTO_MONITOR, "status", m.Status("1").to_body()),
    (Role.DEVICE, env.PROTO_COMMAND, "result", RESULT.to_body()),
    (Role.DEVICE, env.PROTO_UPDATE, "progress", m.UpdateProgress("success").to_body()),
    (Role.SERVER, env.PROTO_MONITOR, "ack", m.AlertAck("a-1").to_body()),
    (Role.SERVER, env.PROTO_COMMAND, "exec", REQUEST.to_body()),
    (Role.SERVER, env.PROTO_UPDATE, "offer", OFFER.to_body()),
]


@pytest.mark.parametrize(
    ("role", "proto", "typ", "body"),
    WRONG_DIRECTION,
    ids=[f"{role.value}-got-{typ}" for role, _p, typ, _b in WRONG_DIRECTION],
)
def test_message_sent_the_wrong_way_is_unexpected(
    role: Role, proto: int, typ: str, body: bytes
) -> None:
    session = DeviceSession(role)
    session.receive_message(raw(proto, typ, "m-1", None, body))
    error, reply = single_violation(session)
    assert isinstance(error, UnexpectedMessage)
    assert error.close_code is None
    assert reply.code == 409
    assert reply.close is False
    assert (reply.msgproto, reply.msgtype, reply.msgid) == (proto, typ, "m-1")


@pytest.mark.parametrize("proto", [env.PROTO_MONITOR, env.PROTO_COMMAND, env.PROTO_UPDATE])
def test_unknown_type_of_our_protocol_is_unexpected(proto: int) -> None:
    session = DeviceSession(Role.SERVER)
    session.receive_message(raw(proto, "bogus", "m-2"))
    error, reply = single_violation(session)
    assert isinstance(error, UnexpectedMessage)
    assert (reply.code, reply.msgproto, reply.msgtype, reply.msgid) == (409, proto, "bogus", "m-2")


@pytest.mark.parametrize("proto", [env.PROTO_INVALID, 5, 0x00FF, 0x0103, 0x1234, 0xFFFE])
def test_unknown_protocol(proto: int) -> None:
    session = DeviceSession(Role.SERVER)
    session.receive_message(raw(proto, "x", "m-3"))
    error, reply = single_violation(session)
    assert isinstance(error, UnknownProtocol)
    assert (reply.code, reply.close, reply.msgproto, reply.msgtype, reply.msgid) == (
        501,
        False,
        proto,
        "x",
        "m-3",
    )


@pytest.mark.parametrize("data", [b"\xc1", b"", msgpack.packb([1]), b"\x81\x91\x01\x01"])
def test_undecodable_message_is_malformed(data: bytes) -> None:
    session = DeviceSession(Role.SERVER)
    session.receive_message(data)
    error, reply = single_violation(session)
    assert isinstance(error, MalformedMessage)
    assert error.close_code is None
    assert reply == m.Error(str(error), close=False, code=400)


def test_malformed_body_names_the_message() -> None:
    session = DeviceSession(Role.SERVER)
    session.receive_message(raw(env.PROTO_MONITOR, "alert", "m-4", None, pack({"id": "a"})))
    error, reply = single_violation(session)
    assert isinstance(error, MalformedMessage)
    assert (reply.code, reply.msgproto, reply.msgtype, reply.msgid) == (400, 0x0100, "alert", "m-4")


def test_oversize_message_asks_to_close() -> None:
    session = DeviceSession(Role.SERVER, max_message_size=32)
    session.receive_message(raw(env.PROTO_SHELL, "shell", "s", None, b"x" * 64))
    error, reply = single_violation(session)
    assert isinstance(error, MessageTooBig)
    assert error.close_code == 1009
    assert (reply.code, reply.close) == (413, True)


def test_session_survives_a_violation(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    server.receive_message(b"\xc1")
    server.events_received()
    server.messages_to_send()
    device.send_alert(ALERT)
    deliver(device, server)
    assert server.events_received() == [ps.AlertReceived(ALERT)]


# --- memory --------------------------------------------------------------------------------------


def test_idle_server_session_holds_no_containers(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, _device = pair
    assert not hasattr(server, "__dict__")
    assert server._events is None
    assert server._outgoing is None
    assert server._outbox is None
    assert server._pending_commands is None


def test_draining_releases_the_queues(pair: tuple[DeviceSession, DeviceSession]) -> None:
    server, device = pair
    device.send_status(m.Status("1"))
    deliver(device, server)
    server.receive_message(raw(env.PROTO_CONTROL, env.TYP_PING))
    assert server._events is not None
    assert server._outgoing is not None
    server.events_received()
    server.messages_to_send()
    assert server._events is None
    assert server._outgoing is None


# --- what the device serves: its "accept", and its control errors ---------------------------


def test_the_server_refuses_a_protocol_the_accept_did_not_list_before_sending() -> None:
    server, _device = connected(protocols=(env.PROTO_SHELL, env.PROTO_MONITOR))
    shell = ProtoMsg(env.PROTO_SHELL, env.TYP_SHELL_NEW, "s-1")
    assert server.serves(env.PROTO_SHELL)
    assert not server.serves(env.PROTO_COMMAND)
    refusals = (
        lambda: server.send_command("c-1", REQUEST),
        lambda: server.offer_update("u-1", OFFER),
        lambda: server.deliver(ProtoMsg(env.PROTO_PORT_FORWARD, "new", "p-1")),
    )
    for refused in refusals:
        with pytest.raises(ps.NotServed) as caught:
            refused()
        assert caught.value.protocols == (env.PROTO_SHELL, env.PROTO_MONITOR)
    assert str(caught.value) == (
        "the device does not serve port forward (0x0003); it serves shell (0x0001), "
        "monitoring (0x0100)"
    )
    assert server.messages_to_send() == []
    server.deliver(shell)
    assert sent_messages(server) == [shell]


def test_before_an_accept_or_from_a_pre_handshake_device_everything_may_be_sent() -> None:
    server = DeviceSession(Role.SERVER)
    assert server.serves(env.PROTO_COMMAND)
    device = DeviceSession(Role.DEVICE, protocols=(env.PROTO_SHELL,), handshake=False)
    server.start()
    pump(server, device)
    assert server.events_received() == [ps.HandshakeCompleted(0, ())]
    assert server.peer_protocols is None
    server.send_command("c-1", REQUEST)  # not refused: the device will say
    assert len(server.messages_to_send()) == 1


def test_the_device_answers_a_protocol_it_does_not_serve_as_mender_connect_does() -> None:
    device = DeviceSession(Role.DEVICE, protocols=(env.PROTO_SHELL,))
    device.receive_message(raw(env.PROTO_COMMAND, "exec", "c-1", None, REQUEST.to_body()))
    assert device.events_received() == []
    [reply] = sent_messages(device)
    assert (reply.proto, reply.typ, reply.sid, reply.props) == (0xFFFF, "error", "c-1", None)
    assert msgpack.unpackb(reply.body) == {
        "err": "no handler registered for protocol: 0x0101", "close": False,
        "msgproto": 257, "msgtype": "exec",
    }  # fmt: skip


def mender_error(sid: str, proto: int, typ: str) -> bytes:
    """mender-connect's control error for ``sid``, built as it builds it."""
    body = pack({"err": f"no handler registered for protocol: {proto:#06x}", "close": False,
                 "msgproto": proto, "msgtype": typ})  # fmt: skip
    return raw(env.PROTO_CONTROL, env.TYP_ERROR, sid, None, body)


def test_a_device_error_for_a_command_ends_it_at_once() -> None:
    server = DeviceSession(Role.SERVER)
    server.send_command("c-1", REQUEST)
    server.messages_to_send()
    server.receive_message(mender_error("c-1", env.PROTO_COMMAND, "exec"))
    [event] = server.events_received()
    assert isinstance(event, ps.RequestFailed)
    assert (event.sid, event.error.err) == ("c-1", "no handler registered for protocol: 0x0101")
    server.receive_message(encode(RESULT.to_msg("c-1")))  # no longer waited for
    assert isinstance(server.events_received()[0], ps.StrayMessage)


def test_a_device_error_for_an_operator_session_is_relayed_and_unbinds_it() -> None:
    server = DeviceSession(Role.SERVER)
    server.deliver(ProtoMsg(env.PROTO_FILE_TRANSFER, "stat", "f-1"))
    server.messages_to_send()
    server.receive_message(mender_error("f-1", env.PROTO_FILE_TRANSFER, "stat"))
    [event] = server.events_received()
    assert isinstance(event, ps.Relayed)
    assert (event.msg.proto, event.msg.typ, event.msg.sid) == (0xFFFF, "error", "f-1")
    assert server.end_relays() == {}


def test_connections_with_the_same_accept_share_one_set_of_protocols() -> None:
    first, second = ps.shared_protocols((1, 2, 3, 4)), ps.shared_protocols((4, 3, 2, 1))
    assert first == {1, 2, 3, 4}
    assert first is second
    many = [ps.shared_protocols((1, 1000 + n)) for n in range(ps.MAX_SHARED_PROTOCOL_SETS + 5)]
    assert many[-1] == {1, 1000 + ps.MAX_SHARED_PROTOCOL_SETS + 4}  # past the bound: its own
