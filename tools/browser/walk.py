"""Walk the app as a new user would, in headless Debian chromium, and save a full-page screenshot of each step.

    python -m tools.browser.walk --out walk/            # every page; runs Explore, the Trojan lab and the
                                                        # walkthrough of How SPADE works with defaults
    python -m tools.browser.walk --out walk/ --neurons  # also run the Neurons page (about a minute on a 2-core CPU)
    python -m tools.browser.walk --out walk/ --study-preview  # also preview the human study's visualizations
    python -m tools.browser.walk --out walk/ --width 1280 --height 720 --presentation

Prints each screenshot's path and whether the page showed a Streamlit exception; exits 1 if one did.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from spade.models import backdoored_models
from tools.browser.server import CHROMIUM, CHROMIUM_ARGS, streamlit_server

PAGES = ("Explore", "Neurons", "Trojan lab", "Human study", "How SPADE works")
RUN_TIMEOUT_MS = 600_000
DEMO_MODELS = backdoored_models()  # the Trojan lab's model choices; the first is its default
COLLAPSED_JS = "!!document.querySelector('[data-testid=stExpandSidebarButton]')"  # for page.wait_for_function


def sidebar_collapsed(page) -> bool:
    """Whether the app's sidebar is collapsed (a Playwright page): then the header shows its expand button."""
    return page.get_by_test_id("stExpandSidebarButton").count() > 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.browser.walk", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the screenshots")
    parser.add_argument("--width", type=int, default=1440, help="viewport width in px (a projector: 1280)")
    parser.add_argument("--height", type=int, default=900, help="viewport height in px (a projector: 720)")
    parser.add_argument("--presentation", action="store_true", help="switch on presentation mode first")
    parser.add_argument("--neurons", action="store_true", help="also press Run on the Neurons page")
    parser.add_argument("--study-preview", action="store_true",
                        help="also press Preview visualizations on the Human study page (its default images)")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)

    from playwright.sync_api import sync_playwright

    failures = []
    with tempfile.TemporaryDirectory() as tmp, streamlit_server(Path(tmp) / "server.log") as url, \
            sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_context(viewport={"width": args.width, "height": args.height}).new_page()
        page.set_default_timeout(120_000)

        def shot(name: str) -> None:
            """The whole page: Streamlit scrolls inside its main container, so the viewport grows to fit it."""
            page.wait_for_timeout(1000)
            path = args.out / f"{name}.png"
            height = page.evaluate(
                "Math.max(...[...document.querySelectorAll('[data-testid=stMain], [data-testid=stSidebarContent]')]"
                ".map(e => e.scrollHeight), 0)")
            page.set_viewport_size({"width": args.width, "height": max(args.height, min(int(height), 12_000))})
            page.wait_for_timeout(500)
            page.screenshot(path=str(path))
            page.set_viewport_size({"width": args.width, "height": args.height})
            broken = page.get_by_test_id("stException").count() > 0
            if broken:
                failures.append(name)
            print(f"{path}{'  (shows an exception)' if broken else ''}")

        def open_page(title: str) -> None:
            """Through the sidebar's menu, as a user would: opened first when collapsed (presentation mode), and
            collapsed again after."""
            collapsed = sidebar_collapsed(page)
            if collapsed:
                page.get_by_test_id("stExpandSidebarButton").click()  # in the header, beside the menu
            page.get_by_test_id("stSidebarNav").get_by_text(title, exact=True).click()
            page.get_by_role("heading", name=title).first.wait_for()
            if collapsed:
                page.get_by_test_id("stSidebar").hover()
                page.get_by_test_id("stSidebarCollapseButton").click()
                page.wait_for_function(COLLAPSED_JS)

        page.goto(url)
        page.get_by_text("Prediction:", exact=False).first.wait_for()
        if args.presentation:
            page.get_by_text("Presentation mode").first.click()
            page.wait_for_function(COLLAPSED_JS)  # presentation mode collapses the sidebar
        shot("01-explore")
        page.get_by_role("button", name="Run SPADE").click()
        page.get_by_role("button", name="Comparison (PNG)").wait_for(timeout=RUN_TIMEOUT_MS)
        shot("02-explore-run")
        page.get_by_text("Refit the classifier on the trace").click()  # the same run with the classifier refit
        page.get_by_role("button", name="Run SPADE").click()
        page.get_by_text("Classifier refit on", exact=False).first.wait_for(timeout=RUN_TIMEOUT_MS)
        page.get_by_role("button", name="Comparison (PNG)").wait_for(timeout=RUN_TIMEOUT_MS)
        shot("02-explore-run-refit")

        open_page("Neurons")
        shot("03-neurons")
        if args.neurons:
            page.get_by_role("button", name="Run").click()
            page.get_by_text("Done:", exact=False).first.wait_for(timeout=RUN_TIMEOUT_MS)  # the status box's label
            shot("04-neurons-run")

        open_page("Trojan lab")
        shot("05-trojan-lab")
        page.get_by_role("button", name="Stamp and run SPADE").click()
        page.get_by_text("and their mean", exact=False).first.wait_for(timeout=RUN_TIMEOUT_MS)
        shot("06-trojan-lab-run")
        for model in DEMO_MODELS[1:]:  # the other demo models, each with its own defaults
            page.get_by_test_id("stRadio").get_by_text(f"{model} (", exact=False).click()
            page.get_by_text("to paste the trigger and compare", exact=False).first.wait_for()  # its own form, no run
            done = page.get_by_text("SPADE trace ready", exact=False).first
            done.wait_for(state="detached")  # the other model's results are gone
            page.get_by_role("button", name="Stamp and run SPADE").click()
            done.wait_for(timeout=RUN_TIMEOUT_MS)
            page.get_by_text("and their mean", exact=False).first.wait_for(timeout=RUN_TIMEOUT_MS)
            shot(f"06-trojan-lab-run-{model}")

        for number, title in enumerate(("Human study", "How SPADE works"), start=7):
            open_page(title)
            shot(f"{number:02d}-{title.lower().replace(' ', '-')}")
            if title == "Human study" and args.study_preview:
                started = time.perf_counter()
                page.get_by_role("button", name="Preview visualizations").click()
                page.get_by_text("Preview ready", exact=False).first.wait_for(timeout=RUN_TIMEOUT_MS)
                print(f"study preview: {time.perf_counter() - started:.0f} s")
                shot("07-human-study-preview")
        page.get_by_role("button", name="Start the walkthrough").click()  # the classroom walkthrough, steps 1-5
        page.get_by_text("Step 5", exact=False).first.wait_for(timeout=RUN_TIMEOUT_MS)
        shot("09-how-spade-works-walkthrough")
        browser.close()
    if failures:
        print(f"exceptions shown on: {', '.join(failures)}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
