"""What a virtual gateway does, independent of how its bytes travel: timings, alerts, the
small simulated shell that answers operator commands, and the update install outcome.

Pure: randomness comes from the ``random.Random`` handed in, so runs can be replayed.
"""

from __future__ import annotations

import random
import shlex
from dataclasses import dataclass, fields

PROBLEMS = (
    ("temp-high", "warning", "Boiler temperature above 80 °C", "Check the circulation pump"),
    ("door-open", "info", "Front door open for 10 minutes", "Close the front door"),
    ("smoke", "critical", "Smoke detected in the kitchen", "Call the fire brigade"),
    ("battery-low", "warning", "Window sensor battery at 5%", "Replace the CR2032 battery"),
    ("water-leak", "critical", "Water detected under the washing machine", "Close the main valve"),
    ("sensor-lost", "warning", "Motion sensor in the hall not heard for 1 hour", "Re-pair it"),
)


@dataclass(frozen=True, slots=True)
class Behaviour:
    """Per-gateway timings and rates (seconds unless said otherwise); one for the whole fleet."""

    status_interval: float = 60.0
    alerts_per_hour: float = 6.0
    clear_after: float = 30.0  # mean time before a raised alert is cleared
    ping_interval: float = 30.0  # WebSocket ping when the server has been quiet this long
    keepalive_timeout: float = 75.0  # nothing heard this long: the connection is dead
    handshake_timeout: float = 10.0  # TCP connect, upgrade and ProtoMsg open/accept each
    ack_timeout: float = 30.0  # unacked alerts are sent again after this long
    drain_timeout: float = 10.0  # at the end of a run: wait this long for outstanding acks
    max_outbox: int = 1000
    command_latency: float = 0.05  # mean extra time a simulated command takes
    install_time: float = 20.0  # mean update install time; reboot follows
    reboot_time: float = 5.0
    update_failure_share: float = 0.05
    firmware: str = "1.0.0"
    reconnect_base: float = 1.0
    reconnect_cap: float = 60.0

    def __post_init__(self) -> None:
        for field in fields(self):
            value = getattr(self, field.name)
            if isinstance(value, int | float) and not value >= 0:  # NaN too
                raise ValueError(f"{field.name} must be >= 0, got {value}")
        if not 0 <= self.update_failure_share <= 1:
            raise ValueError("update_failure_share must be between 0 and 1")
        if self.keepalive_timeout and self.keepalive_timeout <= self.ping_interval:
            raise ValueError("keepalive_timeout must be longer than ping_interval")


def pick_problem(rng: random.Random) -> tuple[str, str, str, str]:
    """(code, severity, description, suggested fix) of a random household problem."""
    return rng.choice(PROBLEMS)


_OS_RELEASE = 'NAME="Yocto"\nVERSION_ID="4.0.14"\nPRETTY_NAME="Poky (Yocto Project) 4.0.14"\n'
_DF = (
    "Filesystem      Size  Used Avail Use% Mounted on\n"
    "/dev/mmcblk0p2  3.5G  1.2G  2.1G  37% /\n"
    "/dev/mmcblk0p4  1.0G   84M  868M   9% /data\n"
)
_FILES = {"/etc/os-release": _OS_RELEASE}


def run_command(
    command: str, device_id: str, firmware: str, rng: random.Random, mean_latency: float
) -> tuple[int, bytes, float]:
    """A tiny gateway shell: (exit code, output, how long it takes to run)."""
    try:
        argv = shlex.split(command)
    except ValueError as exc:
        return 2, f"sh: syntax error: {exc}\n".encode(), 0.0
    latency = rng.expovariate(1 / mean_latency) if mean_latency else 0.0
    name, args = (argv[0], argv[1:]) if argv else ("", [])
    outputs = {
        "": "",
        "echo": " ".join(args) + "\n",
        "hostname": f"{device_id}\n",
        "uname": f"Linux {device_id} 5.15.92-yocto armv7l GNU/Linux\n",
        "uptime": f" 10:{rng.randrange(60):02d}:17 up {rng.randrange(1, 400)} days,"
        f"  load average: {rng.random():.2f}, 0.31, 0.28\n",
        "df": _DF,
        "fw-version": f"{firmware}\n",
        "true": "",
    }
    if name == "false":
        return 1, b"", latency
    if name == "sleep":
        return _sleep(args, latency)
    if name == "cat":
        return _cat(args, latency)
    output = outputs.get(name)
    if output is None:
        return 127, f"sh: {name}: not found\n".encode(), latency
    return 0, output.encode(), latency


def _sleep(args: list[str], latency: float) -> tuple[int, bytes, float]:
    """``sleep SECONDS``, in plain decimal seconds as busybox takes them."""
    if not args:
        return 1, b"sleep: missing operand\n", latency
    seconds = args[0]
    if not (seconds.isascii() and seconds.replace(".", "", 1).isdigit()):
        return 1, f"sleep: invalid number '{seconds}'\n".encode(), latency
    return 0, b"", latency + float(seconds)


def _cat(paths: list[str], latency: float) -> tuple[int, bytes, float]:
    """``cat FILE...``: the files a gateway has, and an error for each other one."""
    missing = "cat: {}: No such file or directory\n"
    output = "".join(_FILES.get(path, missing.format(path)) for path in paths)
    return (0 if all(path in _FILES for path in paths) else 1), output.encode(), latency


# Why a simulated install fails (the reason the gateway reports).
INSTALL_FAILURES = (
    "checksum mismatch after download",
    "not enough space on /data",
    "install script exited with code 1",
)
