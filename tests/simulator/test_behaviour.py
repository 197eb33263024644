"""What a virtual gateway does: its small shell, household problems and behaviour checks."""

from __future__ import annotations

import math
import random
import statistics
from collections import Counter

import pytest

from simulator.behaviour import PROBLEMS, Behaviour, pick_problem, run_command

DEVICE = "gw-000042"
FIRMWARE = "2.3.1"


def shell(command: str, mean_latency: float = 0.0, seed: int = 1) -> tuple[int, bytes, float]:
    return run_command(command, DEVICE, FIRMWARE, random.Random(seed), mean_latency)


# --- the shell -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("command", "output"),
    [
        ("echo hello   world", b"hello world\n"),
        ("echo 'two  spaces'", b"two  spaces\n"),
        ("echo", b"\n"),
        ("hostname", f"{DEVICE}\n".encode()),
        ("fw-version", f"{FIRMWARE}\n".encode()),
        ("uname -a", f"Linux {DEVICE} 5.15.92-yocto armv7l GNU/Linux\n".encode()),
        ("true", b""),
        ("", b""),
    ],
)
def test_commands_that_succeed(command: str, output: bytes) -> None:
    assert shell(command)[:2] == (0, output)


def test_df_and_uptime_look_like_a_gateway() -> None:
    code, output, _ = shell("df -h")
    assert code == 0
    assert b"/dev/mmcblk0p4" in output
    assert b" /data\n" in output
    code, output, _ = shell("uptime")
    assert code == 0
    assert b"load average:" in output


def test_false_fails() -> None:
    assert shell("false")[:2] == (1, b"")


def test_an_unknown_command_is_not_found() -> None:
    assert shell("reboot-now --force")[:2] == (127, b"sh: reboot-now: not found\n")


def test_a_syntax_error_exits_2_at_once() -> None:
    code, output, latency = shell('echo "unterminated', mean_latency=1.0)
    assert code == 2
    assert output.startswith(b"sh: syntax error: ")
    assert latency == 0.0


def test_cat_prints_os_release() -> None:
    code, output, _ = shell("cat /etc/os-release")
    assert code == 0
    assert b'VERSION_ID="4.0.14"\n' in output


def test_cat_of_a_missing_file_fails_like_cat() -> None:
    assert shell("cat /etc/shadow")[:2] == (1, b"cat: /etc/shadow: No such file or directory\n")


def test_cat_prints_what_exists_and_fails_for_the_rest() -> None:
    code, output, _ = shell("cat /nope /etc/os-release")
    assert code == 1
    assert output.startswith(b"cat: /nope: No such file or directory\nNAME=")


def test_sleep_adds_its_duration_to_the_latency() -> None:
    _, _, base = shell("true", mean_latency=0.05, seed=9)
    code, output, latency = shell("sleep 2.5", mean_latency=0.05, seed=9)
    assert base > 0
    assert (code, output) == (0, b"")
    assert latency == pytest.approx(base + 2.5)
    assert shell("sleep 3")[2] == 3.0


@pytest.mark.parametrize(
    ("command", "output"),
    [
        ("sleep", b"sleep: missing operand\n"),
        ("sleep soon", b"sleep: invalid number 'soon'\n"),
        ("sleep -1", b"sleep: invalid number '-1'\n"),
        ("sleep 1.2.3", b"sleep: invalid number '1.2.3'\n"),
        # "²" is a digit to str.isdigit() but no number to float(): it once raised.
        ("sleep ²", "sleep: invalid number '²'\n".encode()),
    ],
)
def test_sleep_refuses_what_is_no_number(command: str, output: bytes) -> None:
    assert shell(command) == (1, output, 0.0)


def test_latency_is_exponential_around_the_mean() -> None:
    rng = random.Random(3)
    latencies = [run_command("true", DEVICE, FIRMWARE, rng, 0.05)[2] for _ in range(5000)]
    assert min(latencies) >= 0
    assert statistics.fmean(latencies) == pytest.approx(0.05, rel=0.05)
    assert statistics.median(latencies) == pytest.approx(0.05 * math.log(2), rel=0.1)


def test_no_mean_latency_means_instant() -> None:
    assert shell("hostname", mean_latency=0.0)[2] == 0.0


def test_the_same_seed_gives_the_same_answer() -> None:
    assert shell("uptime", seed=11) == shell("uptime", seed=11)
    assert len({shell("uptime", seed=seed)[1] for seed in range(20)}) > 1


# --- problems ---------------------------------------------------------------------------------


def test_problems_are_drawn_from_the_whole_list() -> None:
    rng = random.Random(4)
    drawn = Counter(pick_problem(rng) for _ in range(600))
    assert set(drawn) == set(PROBLEMS)
    assert min(drawn.values()) > 60


# --- behaviour ------------------------------------------------------------------------------


def test_defaults_are_valid() -> None:
    behaviour = Behaviour()
    assert behaviour.keepalive_timeout > behaviour.ping_interval


@pytest.mark.parametrize(
    "field", ["status_interval", "alerts_per_hour", "ack_timeout", "max_outbox", "reboot_time"]
)
@pytest.mark.parametrize("value", [-1, -0.5, math.nan])
def test_negative_or_nan_values_are_named(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"{field} must be >= 0"):
        Behaviour(**{field: value})  # type: ignore[arg-type]


@pytest.mark.parametrize("share", [1.5, 2])
def test_update_failure_share_is_a_share(share: float) -> None:
    with pytest.raises(ValueError, match="update_failure_share must be between 0 and 1"):
        Behaviour(update_failure_share=share)


@pytest.mark.parametrize("keepalive", [10.0, 30.0])
def test_keepalive_must_outlast_the_ping_interval(keepalive: float) -> None:
    with pytest.raises(ValueError, match="keepalive_timeout must be longer than ping_interval"):
        Behaviour(ping_interval=30.0, keepalive_timeout=keepalive)


def test_zero_keepalive_turns_the_check_off() -> None:
    assert Behaviour(ping_interval=30.0, keepalive_timeout=0.0).keepalive_timeout == 0.0
