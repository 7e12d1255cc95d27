"""Pages opened in Debian's headless Chromium through Playwright, as a reader's browser would (report tests).

Never Playwright's own browser download (nothing is downloaded here): the `chromium` fixture installs
Debian's package with the project's apt helper when missing, as CI (root) needs; elsewhere it skips.
The flags keep Chromium off the network, which this machine refuses.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]


def ensure_chromium() -> str | None:
    """Debian's chromium, installed with the project's apt helper when missing (CI runs as root); None where it
    cannot be (not root, no apt), except under CI, where that fails the test."""
    from ops.services import ServiceError
    from ops.services.process import ensure

    try:
        return ensure(lambda: CHROMIUM if os.access(CHROMIUM, os.X_OK) else None, "chromium")
    except ServiceError as exc:
        if os.environ.get("CI"):
            pytest.fail(str(exc))
        return None


@pytest.fixture(scope="session")
def chromium() -> str:
    found = ensure_chromium()
    if found is None:
        pytest.skip("Debian's chromium is not installed and cannot be installed here (apt-get as root)")
    return found


def render(path: Path, *, ready: str, inspect: str, screenshots: tuple[Path | str, ...] = ()) -> dict[str, Any]:
    """Open PATH, wait until the JS expression READY holds, return what the JS function INSPECT returns plus
    `errors` (console errors and warnings, page errors) and `requests` (every URL the page asked for)."""
    from playwright.sync_api import sync_playwright

    errors: list[str] = []
    requests: list[str] = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda message: errors.append(message.text) if message.type in ("error", "warning") else None)
            page.on("pageerror", lambda error: errors.append(str(error)))
            page.on("request", lambda request: requests.append(request.url))
            page.goto(path.as_uri(), wait_until="load")
            page.wait_for_function(ready, timeout=30_000)
            found = page.evaluate(inspect)
            for screenshot in screenshots:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {**found, "errors": errors, "requests": requests}
