"""The progress-callback type every long-running library function accepts."""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, float], None]
"""``progress(stage, fraction)``: ``stage`` names the running step (``"solve"``, a saliency method's registry
name, ...), ``fraction`` in [0, 1] is how much of that step is done."""
