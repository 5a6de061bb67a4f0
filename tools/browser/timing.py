"""How long the Explore page takes to settle in headless chromium (the app on this machine's CPU): the first run
of SPADE, pressing Run again with the same settings (cached), and a display option (signed maps), each timed from the
click to the page's last change and printed.

    python -m tools.browser.timing [--count 16]

Target (issue #36): a cached rerun settles in <= 2 s. Prints one line per step; nothing is asserted. (Here and not
under benchmarks/, whose scripts may not drive the app: tests/test_layout.py.)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from tools.browser.server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # inherited by the app's server (see app.py)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m tools.browser.timing", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--count", type=int, default=16, help="augmentations of the first run (small: quick)")
    args = parser.parse_args(argv)
    browser_timings(args.count)


def browser_timings(count: int) -> None:
    """Each step from the click until the page's last change (a MutationObserver on the whole document; settled
    once nothing changed for 2 s), with ``count`` augmentations."""
    import tempfile

    from playwright.sync_api import sync_playwright

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
