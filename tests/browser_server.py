"""The browser tests' server and browser: skipped (failed under CI) when the Debian chromium is missing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tools.browser import server
from tools.browser.server import CHROMIUM, CHROMIUM_ARGS

__all__ = ["CHROMIUM", "CHROMIUM_ARGS", "streamlit_server"]


def require_chromium() -> None:
    if Path(CHROMIUM).exists():
        return
    message = f"{CHROMIUM} is missing: install the Debian package with `apt-get install chromium` (make test does)"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


@contextlib.contextmanager
def streamlit_server(log: Path, env: dict[str, str] | None = None) -> Iterator[str]:
    """`tools.browser.server.streamlit_server` once chromium is known to be there."""
    require_chromium()
    with server.streamlit_server(log, env) as url:
        yield url
