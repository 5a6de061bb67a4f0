"""``python -m spade``: see spade_cli.main."""

import os
import sys

# libgomp's busy-waiting threads make torch 10-100x slower when other processes share the cores;
# passive waiting costs little on an idle machine. Must be set before torch is imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from spade_cli.main import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
