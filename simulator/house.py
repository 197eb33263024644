"""A virtual gateway's local services for remote access: a small web service reachable through
a port forward (proto 3) and a small in-memory file system served by file transfer (proto 2).

Event-driven, no greenlet or socket of its own: the gateway hands each proto 2/3 message to
``House.receive`` and sends what it returns, so every byte crosses the gateway's simulated
link (its latency and bandwidth, ``simulator.network``) like the rest of its traffic.

The web service answers HTTP/1.1 on ``127.0.0.1:80`` (or ``localhost``) in-process: ``GET /``
is a status page naming the gateway, ``GET /bytes/<n>`` is ``n`` deterministic bytes (with an
``X-Sha256`` header), anything else 404; every answer closes the connection. Other targets
are refused as a dial would be. The file system starts with ``/etc/hostname``,
``/etc/firmware`` and ``/var/log/messages`` and takes uploads up to ``MAX_FILE`` bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from backend.protocol import filetransfer as ft
from backend.protocol import portforward as pf
from backend.protocol.envelope import ProtoMsg

WEB_HOSTS = frozenset({"127.0.0.1", "localhost"})
WEB_PORT = 80
MAX_REQUEST = 16 * 1024
MAX_FILE = 4 * 2**20
MAX_BYTES = 64 * 2**20
"""Largest ``/bytes/<n>`` answer."""
LOG = b"".join(f"boot {n}: ok\n".encode() for n in range(200))
WINDOW, CHUNK = 4, 4096
"""What a simulated gateway announces for its forwards (a Mender device: 1 x 4 KiB): small,
so that on a slow link the first bytes come before the rest (a flush crosses the link whole)."""


def page_bytes(n: int) -> bytes:
    """``/bytes/<n>``'s body: a repeating pattern, so any client can check it."""
    pattern = bytes(range(256))
    return (pattern * (n // 256 + 1))[:n]


def http_answer(request: bytes, device_id: str, firmware: str) -> bytes:
    """The web service's answer to one request head."""
    line = request.split(b"\r\n", 1)[0].decode("latin-1").split(" ")
    method, target = [*line, "", ""][:2]
    status, body, extra = "404 Not Found", b"not found\n", ""
    if method != "GET":
        status, body = "405 Method Not Allowed", b"GET only\n"
    elif target == "/":
        status = "200 OK"
        page = f"<html><body><h1>{device_id}</h1><p>firmware {firmware}</p></body></html>\n"
        body = page.encode()
    elif target.startswith("/bytes/") and target[7:].isdigit() and int(target[7:]) <= MAX_BYTES:
        status, body = "200 OK", page_bytes(int(target[7:]))
        extra = f"X-Sha256: {hashlib.sha256(body).hexdigest()}\r\n"
    head = (f"HTTP/1.1 {status}\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
            f"{extra}\r\n")  # fmt: skip
    return head.encode() + body


@dataclass(slots=True)
class _Download:
    data: bytes
    sent: int = 0


@dataclass(slots=True)
class _Upload:
    path: str
    mode: int
    parts: list[bytes] = field(default_factory=list)


class House:
    """One gateway's web service and file system; their sessions end with the connection."""

    def __init__(self, device_id: str, firmware: str) -> None:
        self.device_id = device_id
        self.firmware = firmware
        self.files: dict[str, tuple[bytes, int]] = {  # path -> (content, mode)
            "/etc/hostname": (f"{device_id}\n".encode(), 0o644),
            "/etc/firmware": (f"{firmware}\n".encode(), 0o644),
            "/var/log/messages": (LOG, 0o640),
        }
        self.forwards: dict[str, pf.PortForward] = {}
        self.requests: dict[tuple[str, str], bytes] = {}  # (sid, connection) -> head so far
        self.transfers: dict[str, ft.FileTransfer] = {}
        self.downloads: dict[str, _Download] = {}
        self.uploads: dict[str, _Upload] = {}

    def connection_lost(self) -> None:
        """Forwards and transfers die with the connection; the files stay."""
        self.forwards.clear()
        self.requests.clear()
        self.transfers.clear()
        self.downloads.clear()
        self.uploads.clear()

    @property
    def busy(self) -> bool:
        return bool(self.forwards or self.transfers)

    def receive(self, msg: ProtoMsg) -> list[ProtoMsg]:
        """One proto 2 or 3 message; what to send back."""
        if msg.proto == pf.Target.PROTO:
            return self._forward_message(msg)
        return self._transfer_message(msg)

    # --- the web service ---------------------------------------------------------------------

    def _forward_message(self, msg: ProtoMsg) -> list[ProtoMsg]:
        forward = self.forwards.get(msg.sid)
        if forward is None:
            forward = pf.PortForward(msg.sid, pf.Role.DEVICE, window=WINDOW, chunk=CHUNK)
            self.forwards[msg.sid] = forward
        forward.receive(msg)
        for event in forward.events():
            key = (msg.sid, event.connection_id)
            match event:
                case pf.NewRequested(cid, target):
                    self._dial(forward, cid, target)
                case pf.Data(cid, data):
                    forward.consumed(cid)
                    self._request_bytes(forward, key, data)
                case pf.Ended():
                    self.requests.pop(key, None)
                case pf.Acked() | pf.Opened() | pf.Rejected():
                    pass
        if not forward.connections:
            del self.forwards[msg.sid]
        return forward.outgoing()

    def _dial(self, forward: pf.PortForward, cid: str, target: pf.Target) -> None:
        where = f"{target.remote_host}:{target.remote_port}"
        if target.protocol != "tcp" or target.remote_host not in WEB_HOSTS:
            forward.refuse(cid, f"dial {target.protocol} {where}: connect: connection refused")
        elif target.remote_port != WEB_PORT:
            forward.refuse(cid, f"dial tcp {where}: connect: connection refused")
        else:
            self.requests[(forward.sid, cid)] = b""
            forward.accept(cid)

    def _request_bytes(self, forward: pf.PortForward, key: tuple[str, str], data: bytes) -> None:
        head = self.requests.get(key)
        if head is None:
            return  # the answer is already on its way
        head += data
        if b"\r\n\r\n" in head or len(head) > MAX_REQUEST:
            del self.requests[key]
            forward.send(key[1], http_answer(head, self.device_id, self.firmware))
            forward.finish(key[1])
        else:
            self.requests[key] = head

    # --- the file system ----------------------------------------------------------------------

    def _transfer_message(self, msg: ProtoMsg) -> list[ProtoMsg]:
        transfer = self.transfers.get(msg.sid)
        if transfer is None:
            transfer = self.transfers[msg.sid] = ft.FileTransfer(msg.sid, ft.Role.DEVICE)
        transfer.receive(msg)
        for event in transfer.events():
            self._transfer_event(transfer, event)
        self._send_chunks(transfer)
        if transfer.phase is ft.Phase.ENDED:
            self._forget(msg.sid)
        return transfer.outgoing()

    def _transfer_event(self, transfer: ft.FileTransfer, event: ft.Event) -> None:
        match event:
            case ft.StatRequested(path):
                if path in self.files:
                    content, mode = self.files[path]
                    transfer.info(ft.FileInfo(path, len(content), mode=0o100000 | mode))
                else:
                    transfer.refuse(f"stat {path}: no such file or directory", ft.TYP_STAT)
            case ft.GetRequested(path):
                if path in self.files:
                    self.downloads[transfer.sid] = _Download(self.files[path][0])
                    transfer.start_sending()
                else:
                    transfer.refuse(f"open {path}: no such file or directory", ft.TYP_GET)
            case ft.PutRequested(request):
                if request.size > MAX_FILE:
                    transfer.refuse(f"file too large: {request.size} bytes, the limit is "
                                    f"{MAX_FILE}", ft.TYP_PUT)  # fmt: skip
                else:
                    self.uploads[transfer.sid] = _Upload(request.path, request.mode)
                    transfer.accept_put()
            case ft.Chunk(_offset, data):
                self.uploads[transfer.sid].parts.append(data)
            case ft.Done() if transfer.sid in self.uploads:
                upload = self.uploads.pop(transfer.sid)
                self.files[upload.path] = (b"".join(upload.parts), upload.mode & 0o7777)
            case ft.Done() | ft.Acked() | ft.Failed() | ft.Info() | ft.Ready():
                pass

    def _send_chunks(self, transfer: ft.FileTransfer) -> None:
        """A download's next chunks, as far as the window allows; the end chunk after them."""
        download = self.downloads.get(transfer.sid)
        if download is None:
            return
        while transfer.can_send and download.sent < len(download.data):
            transfer.send(download.data[download.sent : download.sent + ft.CHUNK])
            download.sent = min(download.sent + ft.CHUNK, len(download.data))
        if download.sent == len(download.data):
            transfer.end()
            del self.downloads[transfer.sid]

    def _forget(self, sid: str) -> None:
        self.transfers.pop(sid, None)
        self.downloads.pop(sid, None)
        self.uploads.pop(sid, None)
