"""``python -m tools.demo_model``: see tools.demo_model.cli."""

import os
import sys

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported; see spade/__main__.py

from tools.demo_model.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
