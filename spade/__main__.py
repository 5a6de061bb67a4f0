"""``python -m spade``: see spade.cli."""

import sys

from spade.cli import main

if __name__ == "__main__":
    sys.exit(main())
