"""A local stack for the demo, tests and load scenarios: one NATS server and N shard processes.

Synchronous on purpose (subprocess, urllib, sleep): it must also run inside a gevent-patched
Locust process, where no asyncio loop can be started. HAProxy in front of the shards belongs
here too, as one more child started after the shards and stopped before them.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import string
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType

from backend import process
from backend.auth import issue_device_token
from backend.natsserver import NatsServer

# Set by the stack itself: given again in shard_options they would be ignored (CLI arguments
# beat environment variables) or, for the secret, break ``LocalStack.token``.
RESERVED_OPTIONS = frozenset({"host", "port", "shard_id", "nats_urls", "jwt_secret", "ready_file"})
SHARD_NAMES = [f"shard-{letter}" for letter in string.ascii_lowercase]


def option_key(name: str) -> str:
    """``max-connections`` and ``max_connections`` both name the ``--max-connections`` option."""
    return name.lower().replace("-", "_")


@dataclass
class StackConfig:
    run_dir: Path
    shards: int = 2
    jwt_secret: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    host: str = "127.0.0.1"
    shard_options: dict[str, str] = field(default_factory=dict)
    """Extra ``fleet shard`` options, e.g. ``{"ping_interval": "1"}``; passed as FLEET_SHARD_*."""

    def __post_init__(self) -> None:
        if not 1 <= self.shards <= len(SHARD_NAMES):
            raise ValueError(f"shards must be 1 to {len(SHARD_NAMES)}, not {self.shards}")
        reserved = RESERVED_OPTIONS & {option_key(name) for name in self.shard_options}
        if reserved:
            raise ValueError(
                f"shard_options cannot set {', '.join(sorted(reserved))}: the stack sets them"
            )

    def shard_env(self) -> dict[str, str]:
        env = {f"FLEET_SHARD_{option_key(k).upper()}": v for k, v in self.shard_options.items()}
        return {**env, "FLEET_SHARD_JWT_SECRET": self.jwt_secret}


class LocalStack:
    """``with LocalStack(config) as stack:`` NATS and every shard ready; all stopped on exit."""

    def __init__(self, config: StackConfig) -> None:
        self.config = config
        self.nats_url = ""
        self.shard_ports: list[int] = []
        self._shards: list[subprocess.Popen[bytes]] = []
        self._teardown = contextlib.ExitStack()

    @property
    def run_dir(self) -> Path:
        return self.config.run_dir

    @property
    def jwt_secret(self) -> str:
        return self.config.jwt_secret

    @property
    def shard_urls(self) -> list[str]:
        return [f"ws://{self.config.host}:{port}" for port in self.shard_ports]

    def token(self, device_id: str) -> str:
        """A device token the shards of this stack accept."""
        return issue_device_token(device_id, self.config.jwt_secret)

    def start(self) -> LocalStack:
        """NATS, then the shards; if any of it fails, stop what already runs before raising."""
        with contextlib.ExitStack() as teardown:
            nats_server = teardown.enter_context(NatsServer(self.run_dir, host=self.config.host))
            self.nats_url = nats_server.url
            teardown.callback(self._stop_shards)
            self._start_shards()
            self._teardown = teardown.pop_all()
        return self

    def stop(self) -> None:
        """Shards first, so they drain while NATS still takes what devices send; then NATS."""
        self._teardown.close()

    def _start_shards(self) -> None:
        """Spawn all shards at once (a faster start), then wait for each in turn."""
        names = SHARD_NAMES[: self.config.shards]
        for name in names:
            ready_file = self.run_dir / f"{name}.ready"
            ready_file.unlink(missing_ok=True)  # left by an earlier run in the same directory
            argv = [
                sys.executable, "-m", "backend.cli", "shard", "--host", self.config.host,
                "--port", "0", "--shard-id", name, "--nats-url", self.nats_url,
                "--ready-file", str(ready_file),
            ]  # fmt: skip
            log_file = self.run_dir / f"{name}.log"
            self._shards.append(process.spawn(argv, log_file, env=self.config.shard_env()))
        for name, proc in zip(names, self._shards, strict=True):
            self.shard_ports.append(self._wait_ready(name, proc))

    def _wait_ready(self, name: str, proc: subprocess.Popen[bytes]) -> int:
        """The shard's port, once it listens and its /healthz says it has NATS."""
        ready_file, log_file = self.run_dir / f"{name}.ready", self.run_dir / f"{name}.log"
        process.wait_until(lambda: listening_port(ready_file) > 0, proc, name, log_file)
        port = listening_port(ready_file)
        healthz = f"http://{self.config.host}:{port}/healthz"
        process.wait_until(lambda: process.answers_ok(healthz), proc, name, log_file)
        return port

    def _stop_shards(self) -> None:
        """SIGTERM every shard first so they drain in parallel, then reap each in turn."""
        for proc in self._shards:
            proc.terminate()
        for proc in self._shards:
            process.stop(proc)

    def __enter__(self) -> LocalStack:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def listening_port(ready_file: Path) -> int:
    """The port in a shard's ready file; 0 while the file is missing or half written."""
    try:
        return int(json.loads(ready_file.read_text())["port"])
    except (OSError, ValueError, KeyError):
        return 0
