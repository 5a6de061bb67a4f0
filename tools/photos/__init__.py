"""Offline clean photos from Debian packages for the poisoned demo model (``python -m tools.photos``)."""
