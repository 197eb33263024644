"""The file-transfer state machine (proto 2): both ends back to back, the chunk offsets, the
ack windows and the refusals."""

from __future__ import annotations

from backend.protocol import envelope as env
from backend.protocol import filetransfer as ft
from backend.protocol.envelope import ProtoMsg


def ends() -> tuple[ft.FileTransfer, ft.FileTransfer]:
    return ft.FileTransfer("t1", ft.Role.SERVER), ft.FileTransfer("t1", ft.Role.DEVICE)


def carry(source: ft.FileTransfer, sink: ft.FileTransfer) -> list[ProtoMsg]:
    sent = source.outgoing()
    for msg in sent:
        sink.receive(env.decode(env.encode(msg)))
    return sent


def test_stat_is_answered_with_file_info() -> None:
    server, device = ends()
    server.stat("/etc/hostname")
    [stat] = carry(server, device)
    assert (stat.proto, stat.typ, ft.path_body("/etc/hostname")) == (2, "stat", stat.body)
    assert device.events() == [ft.StatRequested("/etc/hostname")]
    device.info(ft.FileInfo("/etc/hostname", 7, mode=0o100644, modtime=1700000000))
    carry(device, server)
    assert server.events() == [
        ft.Info(ft.FileInfo("/etc/hostname", 7, mode=0o100644, modtime=1700000000))
    ]


def test_a_download_keeps_20_chunks_ahead_and_the_receiver_acks_every_10() -> None:
    server, device = ends()
    server.get("/f")
    carry(server, device)
    assert device.events() == [ft.GetRequested("/f")]
    device.start_sending()
    sent = 0
    while device.can_send:
        device.send(b"d" * ft.CHUNK)
        sent += 1
    assert sent == ft.WINDOW
    carry(device, server)
    acks = [m for m in server.outgoing() if m.typ == "ack"]
    assert [m.props for m in acks] == [{"offset": 10 * ft.CHUNK}, {"offset": 20 * ft.CHUNK}]
    for ack in acks:
        device.receive(ack)
    assert device.can_send
    device.end()
    carry(device, server)
    assert server.events()[-1] == ft.Done(20 * ft.CHUNK)
    carry(server, device)  # the final ack
    assert device.events()[-1] == ft.Done(20 * ft.CHUNK)


def test_an_upload_starts_at_the_device_s_ack_0_and_ends_when_the_end_is_acked() -> None:
    server, device = ends()
    server.put(ft.PutFile("/f", 25_000, 0o600))
    carry(server, device)
    assert device.events() == [ft.PutRequested(ft.PutFile("/f", 25_000, 0o600))]
    device.accept_put()
    carry(device, server)
    assert server.events() == [ft.Ready()]
    server.send(b"u" * 25_000)
    chunks = carry(server, device)
    assert [m.props for m in chunks] == [{"offset": n * ft.CHUNK} for n in range(7)]
    assert b"".join(e.data for e in device.events() if isinstance(e, ft.Chunk)) == b"u" * 25_000
    server.end()
    carry(server, device)
    assert device.events() == [ft.Done(25_000)]
    carry(device, server)
    assert server.events() == [ft.Acked(25_000), ft.Done(25_000)]


def test_a_chunk_at_the_wrong_offset_fails_the_transfer_and_tells_the_peer() -> None:
    server, device = ends()
    server.get("/f")
    carry(server, device)
    server.receive(ProtoMsg(2, "file_chunk", "t1", {"offset": 100}, b"x"))
    assert server.events() == [ft.Failed("chunk at offset 100, expected 0", False)]
    [error] = server.outgoing()
    assert ft.TransferError.from_body(error.body) == ft.TransferError(
        "chunk at offset 100, expected 0", "file_chunk"
    )


def test_the_device_s_error_text_arrives_as_it_is() -> None:
    server, device = ends()
    server.put(ft.PutFile("/etc/shadow", 10))
    carry(server, device)
    device.refuse("access denied: the path is not in the allow list", "put_file")
    carry(device, server)
    assert server.events() == [ft.Failed("access denied: the path is not in the allow list", True)]


def test_an_ack_beyond_what_was_sent_is_refused() -> None:
    server, device = ends()
    server.put(ft.PutFile("/f", 10))
    carry(server, device)
    device.accept_put()
    carry(device, server)
    server.events()
    server.receive(ProtoMsg(2, "ack", "t1", {"offset": 99}))
    assert server.events() == [ft.Failed("ack of offset 99, sent 0", False)]
