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
    parser.add_argument("--browser", action="store_true",
                        help="time it in headless chromium instead: from the click until the page has settled")
    args = parser.parse_args(argv)
    if args.browser:
        browser_timings(args.count)
        return

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



def browser_timings(count: int) -> None:
    """The same steps in headless chromium (`tools.browser`): from the click until the page's last change (a
    MutationObserver on the whole document; settled once nothing changed for 2 s)."""
    import tempfile

    from playwright.sync_api import sync_playwright

    from tools.browser.server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

    with tempfile.TemporaryDirectory() as tmp, streamlit_server(Path(tmp) / "server.log") as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": 1280, "height": 720}).new_page()
        page.set_default_timeout(600_000)

        def timed(label: str, click, quiet_ms: float = 2000) -> None:
            """From the click to the page's last DOM change before ``quiet_ms`` without any (the page settled)."""
            start = page.evaluate("performance.now()")
            click()
            page.get_by_role("button", name="JSON report").wait_for()  # the results' last element
            page.wait_for_function(f"performance.now() - window.__lastChange > {quiet_ms}", polling=100)
            print(f"{label:<44} {(page.evaluate('window.__lastChange') - start) / 1000:6.2f} s (browser)", flush=True)

        page.goto(url)
        page.get_by_text("Prediction:", exact=False).first.wait_for()
        page.evaluate("""() => { window.__lastChange = performance.now();
            new MutationObserver(() => { window.__lastChange = performance.now(); })
                .observe(document.body, {subtree: true, childList: true, attributes: true, characterData: true}); }""")
        box = page.get_by_role("spinbutton", name="Count")
        box.fill(str(count))
        box.press("Tab")
        run = page.get_by_role("button", name="Run SPADE")
        timed(f"Run SPADE ({count} augmentations, cold)", run.click)
        timed("Run SPADE again, same settings (cached)", run.click)
        timed("a display option (signed maps)", lambda: page.get_by_text("signed", exact=True).first.click())
        browser.close()


if __name__ == "__main__":
    main()
