"""DeviceChannel: a server channel and a client channel wired back to back, no I/O."""

from __future__ import annotations

from backend.protocol import channel as ch
from backend.protocol import closecodes, http
from backend.protocol import messages as m
from backend.protocol import session as ps
from backend.protocol import websocket as ws
from backend.protocol.errors import RequestTooLarge, Unauthorized, UpgradeRejected

ALERT = m.Alert("a-1", "disk_full", "critical", "raised", "disk at 97%", "free space", 1.5)


def client_channel() -> ch.ClientChannel:
    return ch.ClientChannel(ps.DeviceSession(ps.Role.DEVICE))


def upgrade_request(server: ch.ServerChannel, client: ch.ClientChannel) -> http.Request:
    """The client's upgrade request, read by the server in two pieces."""
    request = client.connect("shard.test", http.DEVICE_PATH, "token")
    server.receive_data(request[:10])
    assert list(server.events_received()) == []  # incomplete head: nothing yet
    server.receive_data(request[10:])
    [event] = server.events_received()
    assert isinstance(event, ch.UpgradeRequested)
    return event.request


def pump(sender: ch.DeviceChannel, receiver: ch.DeviceChannel) -> list[ch.Event]:
    receiver.receive_data(sender.data_to_send())
    return list(receiver.events_received())


def connected() -> tuple[ch.ServerChannel, ch.ClientChannel]:
    """A server and a client channel through the upgrade and the ProtoMsg handshake."""
    server, client = ch.ServerChannel(), client_channel()
    upgrade_request(server, client)
    client.receive_data(server.accept("gw-1") + server.data_to_send())  # 101 + "open"
    events = list(client.events_received())
    assert isinstance(events[0], ch.Upgraded)
    assert any(isinstance(event, ps.HandshakeCompleted) for event in events)
    assert any(isinstance(event, ps.HandshakeCompleted) for event in pump(client, server))
    return server, client


def test_the_upgrade_is_an_event_then_frames_flow_both_ways() -> None:
    server, client = connected()
    assert server.state is client.state is ws.State.OPEN
    assert server.session is not None
    assert server.session.device_id == "gw-1"
    assert client.session is not None
    client.session.send_alert(ALERT)
    handled, received = pump(client, server)
    assert isinstance(handled, ch.MessageHandled)
    assert handled.msg is not None
    assert received == ps.AlertReceived(ALERT)
    server.session.ack_alert(ALERT.id)
    assert ps.AlertAcked(ALERT.id) in pump(server, client)


def test_frames_sent_right_behind_the_request_wait_for_the_answer() -> None:
    server, client = ch.ServerChannel(), client_channel()
    request = client.connect("shard.test", http.DEVICE_PATH, "token")
    masked = ws.WebSocketConnection(ws.Role.CLIENT)
    masked.send_pong(b"early")
    pong = masked.data_to_send()
    server.receive_data(request + pong[:3])
    events = server.events_received()
    assert isinstance(next(events), ch.UpgradeRequested)
    server.receive_data(pong[3:])  # held behind the request until it is answered
    server.accept("gw-1")
    assert list(events) == [ws.Pong(b"early")]
    assert server.state is ws.State.OPEN


def test_the_subprotocol_is_chosen_only_when_offered() -> None:
    server, client = ch.ServerChannel(), client_channel()
    upgrade_request(server, client)
    assert b"Sec-WebSocket-Protocol: protomsg/msgpack" in server.accept("gw-1")
    mender = ch.ServerChannel()
    head, key = http.client_request("shard.test", http.DEVICE_PATH)  # as the Mender client
    mender.receive_data(head)
    list(mender.events_received())
    response = mender.accept("gw-2")
    assert b"Sec-WebSocket-Protocol" not in response
    assert http.parse_response(response, key) is not None


def test_a_refusal_ends_the_connection_and_later_input_is_ignored() -> None:
    server = ch.ServerChannel()
    upgrade_request(server, client_channel())
    response = server.refuse(Unauthorized("no token"))
    assert response.startswith(b"HTTP/1.1 401 ")
    assert server.state is ws.State.CLOSED
    server.receive_data(b"GET / HTTP/1.1\r\n\r\n")
    assert list(server.events_received()) == []
    assert server.data_to_send() == b""


def test_an_oversize_head_is_a_handshake_failure() -> None:
    server = ch.ServerChannel(ch.Limits(max_head_size=64))
    server.receive_data(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 20)
    [event] = server.events_received()
    assert isinstance(event, ch.HandshakeFailed)
    assert isinstance(event.error, RequestTooLarge)
    assert server.state is ws.State.CLOSED


def test_a_client_sees_a_refusal_with_its_retry_hint() -> None:
    client = client_channel()
    client.connect("shard.test", http.DEVICE_PATH, "token")
    client.receive_data(b"HTTP/1.1 503 Service Unavailable\r\nRetry-After: 7\r\n\r\n")
    [event] = client.events_received()
    assert isinstance(event, ch.HandshakeFailed)
    assert isinstance(event.error, UpgradeRejected)
    assert (event.error.status, event.error.retry_after) == (503, 7.0)
    assert client.state is ws.State.CLOSED


def test_events_are_lazy_a_driver_can_stop_between_messages() -> None:
    server, client = connected()
    assert client.session is not None
    assert server.session is not None
    for n in range(3):
        client.session.send_alert(m.Alert(f"a-{n}", "disk_full", "critical", "raised"))
    server.receive_data(client.data_to_send())
    events = server.events_received()
    assert isinstance(next(events), ch.MessageHandled)
    assert next(events) == ps.AlertReceived(m.Alert("a-0", "disk_full", "critical", "raised"))
    server.session.ack_alert("a-0")
    # Not asked for yet: the second message has not reached the session.
    assert len(server.session.messages_to_send()) == 1  # only the ack
    rest = [event for event in events if isinstance(event, ps.AlertReceived)]
    assert [event.alert.id for event in rest] == ["a-1", "a-2"]


def test_messages_after_our_close_frame_are_not_answered() -> None:
    server, client = connected()
    assert client.session is not None
    client.session.send_alert(ALERT)
    server.send_close(closecodes.SERVICE_RESTART, "bye")
    events = pump(client, server)
    assert not any(isinstance(event, ps.AlertReceived) for event in events)
    assert server.state is ws.State.CLOSING


def test_a_message_read_with_the_peers_close_frame_is_handled() -> None:
    server, client = connected()
    assert client.session is not None
    client.session.send_alert(ALERT)
    frames = client.data_to_send()
    client.send_close(1000, "done")
    events = pump_bytes(server, frames + client.data_to_send())
    assert ps.AlertReceived(ALERT) in events
    assert events[-1] == ws.Closed(1000, "done")
    assert server.state is ws.State.CLOSED


def pump_bytes(receiver: ch.DeviceChannel, data: bytes) -> list[ch.Event]:
    receiver.receive_data(data)
    return list(receiver.events_received())


def test_pings_are_answered_by_the_codec_and_pongs_are_events() -> None:
    server, client = connected()
    client.send_ping(b"p")
    assert pump(client, server) == []  # the ping: answered, not an event
    assert pump(server, client) == [ws.Pong(b"p")]


def test_a_broken_frame_fails_the_connection() -> None:
    server, _client = connected()
    [event] = pump_bytes(server, b"\x82\x05hello")  # unmasked from a client (§5.1)
    assert isinstance(event, ws.Failed)
    assert event.error.close_code == 1002  # protocol error (RFC 6455 §7.4.1)
    assert server.state is ws.State.CLOSED


def test_nothing_to_send_before_the_upgrade() -> None:
    for channel in (ch.ServerChannel(), client_channel()):
        assert channel.data_to_send() == b""
        assert channel.state is ws.State.CONNECTING
