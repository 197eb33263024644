"""Close codes and the ``retry-after=<seconds>`` reason of a 1012 close."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from backend.protocol import closecodes
from backend.protocol.closecodes import parse_retry_after, retry_after_reason
from backend.protocol.websocket import close_payload, is_valid_close_code

MAX_CLOSE_REASON = 123  # RFC 6455 §5.5: 125-byte control payload minus the 2-byte code


@pytest.mark.parametrize("seconds", [0, 1, 7, 30, 3600, 10**9])
def test_round_trip(seconds: int) -> None:
    reason = retry_after_reason(seconds)
    assert reason == f"retry-after={seconds}"
    assert parse_retry_after(reason) == seconds


@given(st.integers(min_value=0, max_value=10**100))
def test_round_trip_property(seconds: int) -> None:
    assert parse_retry_after(retry_after_reason(seconds)) == seconds


def test_reason_fits_in_a_close_frame() -> None:
    reason = retry_after_reason(10**12)
    assert len(reason.encode()) <= MAX_CLOSE_REASON
    assert close_payload(closecodes.SERVICE_RESTART, reason)


@pytest.mark.parametrize(
    "reason",
    [
        "",
        "retry-after",
        "retry-after=",
        "retry-after=-1",
        "retry-after=+1",
        "retry-after=1.5",
        "retry-after=1e3",
        "retry-after= 7",
        "retry-after=7 ",
        "retry-after=7s",
        "retry-after=0x10",
        "retry-after=1_000",
        "retry-after=abc",
        "retry-after=\u00b2",  # superscript two: isdigit() but not int()-able
        "retry-after=\u0663",  # Arabic-Indic three: not an ASCII number
        "retry-after=\uff17",  # fullwidth seven
        "Retry-After=7",
        "RETRY-AFTER=7",
        " retry-after=7",
        "retry_after=7",
        "retry-after:7",
        "replaced by a newer connection",
        "keep-alive timeout",
        "shard is draining; retry-after=7",
    ],
)
def test_junk_is_rejected(reason: str) -> None:
    assert parse_retry_after(reason) is None


@given(st.text(max_size=200))  # a close reason is at most 123 bytes
def test_parse_never_raises(reason: str) -> None:
    result = parse_retry_after(reason)
    assert result is None or result >= 0


@given(st.text(max_size=20))
def test_parse_after_prefix_never_raises(suffix: str) -> None:
    result = parse_retry_after(closecodes.RETRY_AFTER_PREFIX + suffix)
    if result is not None:
        assert str(result) == suffix.lstrip("0") or result == 0


def test_our_codes() -> None:
    assert closecodes.KEEPALIVE_TIMEOUT == 4000
    assert closecodes.REPLACED == 4001
    assert closecodes.SERVICE_RESTART == 1012


@pytest.mark.parametrize(
    "code",
    [closecodes.KEEPALIVE_TIMEOUT, closecodes.REPLACED],
)
def test_private_codes_are_in_the_private_range(code: int) -> None:
    assert 4000 <= code <= 4999  # RFC 6455 §7.4.2


@pytest.mark.parametrize(
    "code",
    [
        closecodes.SERVICE_RESTART,
        closecodes.KEEPALIVE_TIMEOUT,
        closecodes.REPLACED,
    ],
)
def test_every_code_may_be_sent(code: int) -> None:
    assert is_valid_close_code(code)
