"""Trojan triggers: the bundled trigger icons and stamping one onto an image (the Trojan lab's input)."""

from spade.trojan.stamp import DEFAULT_SIZE, Stamped, stamp
from spade.trojan.triggers import TRIGGERS, load_trigger, read_trigger

__all__ = ["DEFAULT_SIZE", "TRIGGERS", "Stamped", "load_trigger", "read_trigger", "stamp"]
