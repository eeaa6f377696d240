"""Headless Chromium (Debian's, which hack/setup.sh --test installs) for the tests that look
at a page as a user would: the notebook's JupyterLab, the server's /docs."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


def browse(url: str, screenshot: Path) -> str:
    """The page's DOM after its scripts ran, and a screenshot of it, from headless Chromium."""
    browser = chromium()
    assert browser is not None
    common = [
        browser,
        "--headless",
        "--no-sandbox",  # root in CI
        "--disable-gpu",
        "--window-size=1280,800",
        "--virtual-time-budget=20000",  # let JupyterLab load and list the files
        f"--user-data-dir={screenshot.parent / 'chromium'}",
    ]
    subprocess.run(
        [*common, f"--screenshot={screenshot}", url], capture_output=True, timeout=120, check=True
    )
    return subprocess.run(
        [*common, "--dump-dom", url], capture_output=True, text=True, timeout=120, check=True
    ).stdout
