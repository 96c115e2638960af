"""A picture of a report page, rendered by a headless Chromium (Debian's ``chromium`` package): how the docs'
screenshot is made and how a test checks that the page renders. Nothing here is needed to write a report."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
# No network, no first-run, no background services: the page is a local file and this machine's network is
# closed (Chromium's own connections would be refused, many at a time).
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync", "--hide-scrollbars")


def find_browser() -> str | None:
    for name in BROWSERS:
        found = shutil.which(name)
        if found:
            return found
    return None


def screenshot(page: Path, out: Path, *, width: int = 1100, height: int = 2000, timeout: float = 120) -> Path:
    """Render ``page`` (a local HTML file) at ``width`` x ``height`` CSS pixels into the PNG ``out``."""
    browser = find_browser()
    if browser is None:
        raise FileNotFoundError("no headless Chromium found (install the Debian package chromium)")
    with tempfile.TemporaryDirectory(prefix="negprompt-browser-") as profile:
        done = subprocess.run([browser, *FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}",
                               f"--screenshot={os.fspath(out)}", Path(page).resolve().as_uri()],
                              capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0 or not Path(out).is_file():
        raise RuntimeError(f"the browser could not render {page}: {done.stderr.strip()[-300:]}")
    return Path(out)
