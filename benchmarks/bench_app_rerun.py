"""How long the Explore page takes to settle (AppTest, CPU): the first run of SPADE, pressing Run again with the same
settings, and a rerun without a change (what a display option costs), each timed and printed.

    python benchmarks/bench_app_rerun.py [--count 16]

Target (issue #36): a cached rerun settles in <= 2 s. Prints one line per step; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=16, help="augmentations of the first run (small: quick)")
    args = parser.parse_args(argv)

    from streamlit.runtime.pages_manager import PagesManager
    from streamlit.testing.v1 import AppTest

    PagesManager.uses_pages_directory = False  # as tests/app_testing.NavigationPagesManager
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=900)
    at.session_state["device"] = "cpu"

    def timed(label: str, step) -> None:
        PagesManager.uses_pages_directory = False
        start = time.perf_counter()
        step()
        seconds = time.perf_counter() - start
        assert not at.exception, at.exception
        print(f"{label:<44} {seconds:6.2f} s", flush=True)

    timed("first page load (imports, model)", at.run)
    timed("page rerun, nothing run yet", at.run)
    at.number_input(key="ex_count").set_value(args.count)
    timed(f"Run SPADE ({args.count} augmentations, cold)", lambda: next(
        b for b in at.button if b.label == "Run SPADE").click().run())
    timed("Run SPADE again, same settings (cached)", lambda: next(
        b for b in at.button if b.label == "Run SPADE").click().run())
    timed("rerun with the results shown (cached)", at.run)


if __name__ == "__main__":
    main()
