"""The Trojan lab: trigger icons, stamping, the back-doored demo model and the paper's Trojan benchmark."""

from spade.trojan.stamp import DEFAULT_SIZE, Stamped, stamp
from spade.trojan.triggers import TRIGGERS, load_trigger

__all__ = ["DEFAULT_SIZE", "TRIGGERS", "Stamped", "load_trigger", "stamp"]
