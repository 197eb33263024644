"""Debian's Chromium, headless, driven by Playwright: for the fleet map's tests and benchmark.

Playwright is pointed at the system's ``chromium`` (``scripts/bootstrap.sh`` installs it), so
it never downloads a browser of its own. The flags keep the browser from reaching the network
on its own (update checks, sync, safe browsing lists): the page must work on loopback alone,
and a machine without a network would otherwise see a flood of refused connections. As
root, Chromium runs only without its sandbox.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from playwright.async_api import Browser, Playwright

CHROMIUM_ARGS = (
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)


def chromium_binary() -> Path:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        raise FileNotFoundError(
            "no chromium on PATH: install it (Debian: apt-get install chromium; make test does)"
        )
    return Path(found)


async def launch(playwright: Playwright) -> Browser:
    args = [*CHROMIUM_ARGS, *(["--no-sandbox"] if os.geteuid() == 0 else [])]
    return await playwright.chromium.launch(executable_path=chromium_binary(), args=args)
