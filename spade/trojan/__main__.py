"""``python -m spade.trojan``: see spade_cli.trojan."""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported; see spade/__main__.py

from spade_cli.trojan import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
