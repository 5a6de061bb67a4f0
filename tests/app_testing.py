"""Shared pieces of the AppTest suites: the navigation-mode workaround and a file-backed weights source."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from streamlit.runtime.pages_manager import PagesManager

TIMEOUT = 180


class NavigationPagesManager(PagesManager):
    """AppTest 1.67 resets ``PagesManager.uses_pages_directory`` before every run, so an app that uses
    ``st.navigation`` *and* keeps its pages in a folder named ``pages/`` is re-run in the legacy
    pages-folder mode from the second run on (the page script runs without app.py and the sidebar is
    lost). The real server clears the flag once st.navigation has been called; do the same here.
    Installed for a test module by ``pytestmark = pytest.mark.usefixtures("app_navigation")``."""

    def __init__(self, *args, **kwargs):
        PagesManager.uses_pages_directory = False
        super().__init__(*args, **kwargs)


@dataclass(frozen=True)
class FileWeights:
    """A weights source reading a local state dict (the same interface as spade.models' sources)."""

    path: Path

    def local_path(self) -> Path:
        return self.path

    def describe(self) -> str:
        return f"file {self.path.name}"

    def how_to_get(self) -> str:
        return f"save a state dict to {self.path}"

    def state_dict(self, *, download: bool = False):
        return torch.load(self.path, map_location="cpu", weights_only=True), str(self.path)
