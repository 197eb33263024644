"""``fleet stat``'s line (the transfers themselves: tests/operator/test_files.py)."""

from __future__ import annotations

from backend.client.files import format_stat


def test_stat_prints_size_mode_owner_and_time() -> None:
    info = {"path": "/etc/hostname", "size": 7, "mode": 0o100644, "uid": 0, "gid": 0,
            "modtime": 1700000000}  # fmt: skip
    assert format_stat(info) == (
        "/etc/hostname: 7 bytes, mode 0644, uid 0, gid 0, modified 1700000000"
    )
