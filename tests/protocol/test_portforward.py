"""The port-forward state machine (proto 3), both ends wired back to back, and each end
against the messages mender-connect sends."""

from __future__ import annotations

from backend.protocol import envelope as env
from backend.protocol import portforward as pf
from backend.protocol.envelope import ProtoMsg

TARGET = pf.Target("127.0.0.1", 80)


def pair(window: int = pf.MENDER_WINDOW, chunk: int = pf.MENDER_CHUNK) -> tuple[
    pf.PortForward, pf.PortForward
]:  # fmt: skip
    return pf.PortForward("s1", pf.Role.SERVER), pf.PortForward(
        "s1", pf.Role.DEVICE, window=window, chunk=chunk
    )


def carry(source: pf.PortForward, sink: pf.PortForward) -> list[ProtoMsg]:
    """Deliver what ``source`` queued to ``sink`` (through the wire encoding)."""
    sent = source.outgoing()
    for msg in sent:
        sink.receive(env.decode(env.encode(msg)))
    return sent


def opened(window: int = pf.MENDER_WINDOW, chunk: int = pf.MENDER_CHUNK) -> tuple[
    pf.PortForward, pf.PortForward
]:  # fmt: skip
    server, device = pair(window, chunk)
    server.open("c1", TARGET)
    carry(server, device)
    assert device.events() == [pf.NewRequested("c1", TARGET, None)]
    device.accept("c1")
    carry(device, server)
    assert server.events() == [pf.Opened("c1", window, chunk)]
    return server, device


def test_new_is_mender_s_shape_and_the_device_answers_with_the_same_ids() -> None:
    server, device = pair()
    server.open("c1", TARGET)
    [new] = carry(server, device)
    assert (new.proto, new.typ, new.sid, new.props) == (3, "new", "s1", {"connection_id": "c1"})
    assert pf.Target.from_body(new.body) == TARGET
    device.accept("c1")
    [answer] = device.outgoing()
    # A Mender-sized device announces nothing: its answer is exactly mender-connect's.
    assert (answer.typ, answer.sid, answer.props, answer.body) == (
        "new", "s1", {"connection_id": "c1"}, b""
    )  # fmt: skip


def test_a_mender_device_gets_one_forward_of_4_kib_at_a_time() -> None:
    server, device = opened()
    server.send("c1", b"x" * 10_000)
    first = server.outgoing()
    assert [len(m.body) for m in first] == [4096]
    assert server.queued("c1") == 10_000 - 4096
    for msg in first:
        device.receive(msg)
    assert device.events() == [pf.Data("c1", b"x" * 4096)]
    device.consumed("c1")
    carry(device, server)  # the ack frees the window: the next chunk goes
    assert server.events() == [pf.Acked("c1")]
    assert [len(m.body) for m in server.outgoing()] == [4096]


def test_an_announced_window_lets_several_forwards_fly() -> None:
    server, device = opened(window=4, chunk=1000)
    server.send("c1", b"y" * 10_000)
    assert [len(m.body) for m in server.outgoing()] == [1000] * 4
    device.send("c1", b"z" * 2500)  # the device sends within its own window and chunk
    assert [len(m.body) for m in device.outgoing()] == [1000, 1000, 500]


def test_a_refusal_carries_the_device_s_text_and_forgets_the_connection() -> None:
    server, device = pair()
    server.open("c1", TARGET)
    carry(server, device)
    device.events()
    device.refuse("c1", "dial tcp 127.0.0.1:80: connect: connection refused")
    [error] = carry(device, server)
    assert error.typ == "error"
    assert pf.ForwardError.from_body(error.body).msgtype == "new"
    assert server.events() == [
        pf.Ended("c1", True, "dial tcp 127.0.0.1:80: connect: connection refused")
    ]
    assert server.connections == {}


def test_a_stop_is_answered_with_stop_and_ends_both_ends() -> None:
    server, device = opened()
    device.stop("c1")
    carry(device, server)
    assert server.events() == [pf.Ended("c1", True, "stopped")]
    [answer] = carry(server, device)
    assert answer.typ == "stop"
    assert device.events() == [pf.Ended("c1", False, "stopped")]
    assert server.connections == device.connections == {}


def test_finish_sends_the_backlog_before_the_stop() -> None:
    server, device = opened()
    server.send("c1", b"a" * 5000)
    server.finish("c1")
    assert [m.typ for m in server.outgoing()] == ["forward"]  # 904 bytes still wait
    device.consumed("c1")
    carry(device, server)
    assert [(m.typ, len(m.body)) for m in server.outgoing()] == [("forward", 904), ("stop", 0)]


def test_confused_peers_are_answered_with_an_error_never_an_exception() -> None:
    server, device = opened()
    device.consumed("c1")  # an ack with nothing in flight
    carry(device, server)
    assert server.events() == [pf.Rejected("c1", "ack without a forward in flight")]
    props = {"connection_id": "nope"}
    server.receive(ProtoMsg(3, "forward", "s1", props, b"x"))
    assert server.events() == [pf.Rejected("nope", "connection 'nope' not found")]
    device.receive(ProtoMsg(3, "new", "s1", {"connection_id": "c2"}, b"\x80"))
    [event] = device.events()
    assert isinstance(event, pf.Rejected)
    assert "remote_host" in event.text
    errors = [m for m in device.outgoing() if m.typ == "error"]
    assert len(errors) == 1


def test_announced_windows_are_bounded() -> None:
    server, device = pair(window=10_000, chunk=1 << 30)
    server.open("c1", TARGET)
    carry(server, device)
    device.accept("c1")
    carry(device, server)
    assert server.events() == [pf.Opened("c1", pf.MENDER_WINDOW, pf.MENDER_CHUNK)]
