"""Debian's Chromium through Playwright: found on PATH, launched headless (the fleet map's
tests, tests/operator/test_page.py, drive it further)."""

from __future__ import annotations

import pytest
from playwright.async_api import async_playwright

from backend.devstack import browser


def test_the_system_chromium_is_used_or_the_error_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert browser.chromium_binary().name.startswith("chromium")
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(FileNotFoundError, match="apt-get install chromium"):
        browser.chromium_binary()


@pytest.mark.integration
async def test_chromium_launches_headless_and_runs_page_script() -> None:
    async with async_playwright() as playwright:
        chromium = await browser.launch(playwright)
        try:
            page = await chromium.new_page()
            await page.set_content("<p id=x></p><script>x.textContent = 6 * 7</script>")
            assert await page.inner_text("#x") == "42"
        finally:
            await chromium.close()
