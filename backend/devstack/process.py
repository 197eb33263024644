"""Child processes of a local stack: started in their own log file, never left behind.

Every child gets PR_SET_PDEATHSIG, so the kernel kills it if the parent dies without cleaning
up (a SIGKILLed ``fleet demo``, a crashed test run), and its own session, so a Ctrl-C reaches
only the parent, which then stops the children in order (shards drain before NATS goes).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from backend.protocol.errors import FleetError

PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def spawn(
    argv: Sequence[str], log_file: Path, env: dict[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start ``argv`` with stdout and stderr appended to ``log_file``."""
    log_file.parent.mkdir(parents=True, exist_ok=True)
    with log_file.open("ab") as log:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            preexec_fn=die_with_parent,
            start_new_session=True,
        )


def stop(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> int:
    """SIGTERM, wait up to ``timeout`` for a graceful exit, then SIGKILL. Returns the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def wait_until(
    ready: Callable[[], bool],
    proc: subprocess.Popen[bytes],
    what: str,
    log_file: Path,
    timeout: float = 20.0,
) -> None:
    """Poll ``ready`` until true; fail clearly, with the log's tail, if the child dies or stalls."""
    deadline = time.monotonic() + timeout
    while not ready():
        if proc.poll() is not None:
            raise RuntimeError(
                f"{what} exited with code {proc.returncode} while starting; its log "
                f"{log_file} ends with:\n{tail(log_file)}"
            )
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} not ready after {timeout:.0f}s; see {log_file}")
        time.sleep(0.05)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    """Status and body of a GET; status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status), resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, ""
    except OSError:
        return 0, ""


def answers_ok(url: str) -> bool:
    """True once ``url`` answers 200 (not 503, not a refused connect)."""
    return http_get(url, timeout=1.0)[0] == 200


def tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return "(no log written)"


def rss_bytes(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS); 0 once it is gone."""
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return 0
    for line in status.splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0  # a zombie has no memory left


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of ``pid`` (fields 14 and 15 of /proc/<pid>/stat); 0 once gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat.rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """``count`` distinct ports free now; all held open while picking, so none repeats."""
    with contextlib.ExitStack() as held:
        socks = [held.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind((host, 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def find_binary(name: str, install_hint: str) -> str:
    """A program by name or path: on PATH, else where system packages put daemons (often not
    on a user's PATH). FileNotFoundError with ``install_hint`` when it is nowhere."""
    search = os.pathsep.join(
        [os.environ.get("PATH", ""), "/usr/local/sbin", "/usr/sbin", "/usr/bin"]
    )
    found = shutil.which(name, path=search)
    if found is None:
        raise FileNotFoundError(f"{name} not found; {install_hint}")
    return found


class ConfigCheckFailed(FleetError, RuntimeError):
    """A server's own check (``haproxy -c``, ``nats-server -t``) refused a configuration; the
    message holds its output. Also a RuntimeError: ``fleet up`` reports those as failed starts."""


class Service:
    """A ``start()``/``stop()`` class used as ``with Server(...) as server:``: started on
    entry, stopped on exit (also when the block raises)."""

    def start(self) -> Self:
        raise NotImplementedError

    def stop(self) -> None:
        raise NotImplementedError

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def children(pid: int) -> list[int]:
    """``pid``'s child processes, from /proc/<pid>/task/*/children (every thread's)."""
    found = []
    for listing in Path(f"/proc/{pid}/task").glob("*/children"):
        try:
            found += [int(child) for child in listing.read_text().split()]
        except OSError:  # the thread or process just exited
            continue
    return found


def descendants(pid: int) -> list[int]:
    """Children, grandchildren and so on: e.g. Locust's worker processes and theirs."""
    return [found for child in children(pid) for found in (child, *descendants(child))]
