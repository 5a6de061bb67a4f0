"""Classroom load test: N browser sessions run SPADE at the same moment against one `streamlit run app.py`.

Usage: python benchmarks/bench_classroom.py [--sessions 20] [--slots N] [--distinct] [--timeout 1800] [--out DIR]

Starts the app on a free loopback port (SPADE_WORK_SLOTS=--slots when given, else the server's default), opens N
headless Chromium sessions (one Debian chromium, one browser context each: separate Streamlit sessions), waits
until each shows Explore's prediction and its "Run SPADE" button, then clicks Run in all of them at once with the
default settings. Each page is watched once a second until its saliency maps are ready: the queue message
("Waiting: 3 runs ahead of you ...") it showed, the time to the trace and to the maps, and any error on the page
(a failed status box, an exception, an error alert). The server process tree's resident memory is sampled from
/proc every 0.2 s. Prints errors (must be 0), the peak RSS, p50 / p95 / max time to result and how many
sessions saw their queue position; with --out also writes result.json and summary.txt there.

With the default settings everywhere, the first run computes the layer statistics and every later one reuses them
from the server's shared cache. --distinct gives session i the augmentation seed i instead, so every run needs its
own statistics: the queue then serialises real work, and the times show its order (first come, first served).

The machine's load is part of the figures (the server, chromium and this script share its cores): quote them
with the machine's state. Needs playwright (requirements.txt) and /usr/bin/chromium (never Playwright's download).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage"]
AHEAD = re.compile(r"Waiting: (\d+) runs? ahead of you")
TRACE_READY = "SPADE trace ready"
MAPS_READY = "Saliency maps ready"
FAILURES = ("SPADE failed", "Saliency failed")
PAGE_STATE = """() => {
    const text = document.body.innerText;
    const errors = document.querySelectorAll('[data-testid="stException"], [data-testid="stAlertContentError"]');
    return {text, errors: Array.from(errors, e => e.innerText.slice(0, 300))};
}"""


# ------------------------------------------------------------------------------------------------ the server
def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(log: Path, env: dict[str, str]) -> tuple[subprocess.Popen, str]:
    """`streamlit run app.py` on a free loopback port (as tools/browser/server.py does), once healthy."""
    port = free_port()
    streamlit = shutil.which("streamlit", path=str(Path(sys.executable).parent)) or "streamlit"
    cmd = [streamlit, "run", "app.py", "--server.headless", "true", "--server.address", "127.0.0.1",
           "--server.port", str(port), "--browser.gatherUsageStats", "false", "--server.fileWatcherType", "none"]
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"streamlit exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.status == 200:
                    return proc, url
        except OSError:
            time.sleep(0.3)
    stop_server(proc)
    raise RuntimeError(f"streamlit did not become healthy in 120 s:\n{log.read_text()[-3000:]}")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=15)


def tree_rss_bytes(pid: int) -> int:
    """Resident memory of process `pid` and all its descendants, from /proc (0 once it is gone)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    total, todo = 0, [pid]
    while todo:
        p = todo.pop()
        todo.extend(children.get(p, []))
        try:
            for line in Path(f"/proc/{p}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1]) * 1024
        except OSError:
            pass
    return total


class MemorySampler:
    """Samples the server tree's RSS every `every` seconds in a thread; `peak` and `mark(name)` snapshots."""

    def __init__(self, pid: int, every: float = 0.2):
        self.pid, self.every, self.peak, self.marks = pid, every, 0, {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, tree_rss_bytes(self.pid))
            self._stop.wait(self.every)

    def mark(self, name: str) -> None:
        self.marks[name] = tree_rss_bytes(self.pid)

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


# ------------------------------------------------------------------------------------------------ the sessions
async def open_session(browser, url: str, index: int, timeout_ms: int, distinct: bool):
    context = await browser.new_context(viewport={"width": 1280, "height": 900})
    page = await context.new_page()
    page.set_default_timeout(timeout_ms)
    await page.goto(url)
    await page.get_by_text("Prediction:", exact=False).first.wait_for()
    button = page.get_by_role("button", name="Run SPADE")
    await button.wait_for()
    if distinct:
        seed = page.get_by_role("spinbutton", name="Seed")
        await seed.fill(str(index))
        await seed.press("Tab")
    return context, page, button


async def watch(page, button, start: asyncio.Event, deadline: float) -> dict:
    """Click Run once `start` is set, then look at the page once a second until the maps are ready, a failure
    shows, or `deadline` (monotonic) passes."""
    await start.wait()
    clicked = time.monotonic()
    await button.click()
    out = {"max_ahead": 0, "positions": [], "trace_s": None, "result_s": None, "errors": []}
    while True:
        state = await page.evaluate(PAGE_STATE)
        now = time.monotonic() - clicked
        text = state["text"]
        ahead = [int(n) for n in AHEAD.findall(text)]
        if ahead and (not out["positions"] or out["positions"][-1] != ahead[0]):
            out["positions"].append(ahead[0])
        out["max_ahead"] = max([out["max_ahead"], *ahead])
        if out["trace_s"] is None and TRACE_READY in text:
            out["trace_s"] = round(now, 2)
        failures = [f for f in FAILURES if f in text] + state["errors"]
        if failures:
            out["errors"] = failures
            return out
        if MAPS_READY in text:
            out["result_s"] = round(now, 2)
            return out
        if time.monotonic() > deadline:
            out["errors"] = [f"no result after {now:.0f} s"]
            return out
        await asyncio.sleep(1.0)


async def classroom(url: str, sessions: int, timeout_s: float, memory: MemorySampler, distinct: bool
                    ) -> tuple[list[dict], float]:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            opened = time.monotonic()
            pages = await asyncio.gather(*(open_session(browser, url, i, int(timeout_s * 1000), distinct)
                                           for i in range(sessions)))
            print(f"{sessions} sessions show Explore after {time.monotonic() - opened:.1f} s", flush=True)
            memory.mark("sessions_open")
            start = asyncio.Event()
            deadline = time.monotonic() + timeout_s
            watchers = [asyncio.create_task(watch(page, button, start, deadline)) for _, page, button in pages]
            began = time.monotonic()
            start.set()  # every session clicks Run in the same event-loop turn
            results = await asyncio.gather(*watchers, return_exceptions=True)
            wall = time.monotonic() - began
            memory.mark("all_results")
            for context, _, _ in pages:
                await context.close()
        finally:
            await browser.close()
    return [r if isinstance(r, dict) else {"errors": [f"{type(r).__name__}: {r}"], "result_s": None,
                                           "trace_s": None, "max_ahead": 0, "positions": []} for r in results], wall


# ------------------------------------------------------------------------------------------------ the report
def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0..100) by linear interpolation between the closest ranks."""
    ordered = sorted(values)
    if len(ordered) == 1:
        return ordered[0]
    pos = (len(ordered) - 1) * q / 100
    low = int(pos)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (pos - low)


def summary(report: dict) -> str:
    r = report
    mib = 1024 * 1024
    lines = [
        f"Classroom load test, {r['when']} on {r['machine']}",
        f"sessions: {r['sessions']}, work slots: {r['slots']}, "
        + ("a seed per session (every run computes its own statistics)" if r["distinct_seeds"]
           else "default settings everywhere (one statistics set shared)")
        + f", load average before the run: {r['load_before']}",
        f"errors: {r['errors']}",
        f"server RSS (process tree): after start {r['rss']['start'] / mib:.0f} MiB, with all sessions open "
        f"{r['rss']['sessions_open'] / mib:.0f} MiB, peak {r['rss']['peak'] / mib:.0f} MiB, "
        f"with every result shown {r['rss']['all_results'] / mib:.0f} MiB, "
        f"after the sessions closed {r['rss']['end'] / mib:.0f} MiB",
    ]
    for name in ("trace", "result"):
        t = r[f"{name}_s"]
        if t:
            lines.append(f"time to {name} after the click: p50 {t['p50']:.1f} s, p95 {t['p95']:.1f} s, "
                         f"max {t['max']:.1f} s (min {t['min']:.1f} s)")
    lines.append(f"queue position shown to {r['saw_queue_position']} of {r['sessions']} sessions "
                 f"(largest: {r['max_ahead']} runs ahead); all done after {r['wall_s']:.1f} s")
    return "\n".join(lines)


def spread(values: list[float]) -> dict | None:
    if not values:
        return None
    return {"p50": percentile(values, 50), "p95": percentile(values, 95), "max": max(values), "min": min(values),
            "mean": statistics.fmean(values)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sessions", type=int, default=20, help="browser sessions (default 20)")
    parser.add_argument("--slots", type=int, default=None,
                        help="SPADE_WORK_SLOTS for the server (default: the server's own default, 1)")
    parser.add_argument("--distinct", action="store_true",
                        help="session i uses augmentation seed i: every run computes its own statistics")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds the whole run may take")
    parser.add_argument("--out", type=Path, default=None, help="folder for result.json and summary.txt")
    args = parser.parse_args()
    if args.sessions < 1:
        parser.error("--sessions must be at least 1")
    if args.slots is not None and args.slots < 1:
        parser.error("--slots must be at least 1")
    if not Path(CHROMIUM).exists():
        parser.error(f"{CHROMIUM} is missing: apt-get install chromium")

    env = {"OMP_WAIT_POLICY": "PASSIVE"}
    if args.slots is not None:
        env["SPADE_WORK_SLOTS"] = str(args.slots)
    slots = env.get("SPADE_WORK_SLOTS") or os.environ.get("SPADE_WORK_SLOTS") or "1 (default)"
    load_before = " ".join(Path("/proc/loadavg").read_text().split()[:3])
    with tempfile.TemporaryDirectory(prefix="classroom-") as tmp:
        env["SPADE_DATA_DIR"] = tmp  # the human study's database stays out of the repository
        log = Path(tmp) / "server.log"
        proc, url = start_server(log, env)
        try:
            with MemorySampler(proc.pid) as memory:
                memory.mark("start")
                results, wall = asyncio.run(classroom(url, args.sessions, args.timeout, memory, args.distinct))
                memory.mark("end")
        finally:
            stop_server(proc)
            server_log = log.read_text()[-4000:]

    errors = [e for r in results for e in r["errors"]]
    report = {
        "when": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{os.cpu_count()} CPU cores, {os.uname().nodename}",
        "sessions": args.sessions, "slots": slots, "distinct_seeds": args.distinct, "load_before": load_before,
        "errors": len(errors), "error_messages": errors,
        "rss": {**memory.marks, "peak": memory.peak},
        "trace_s": spread([r["trace_s"] for r in results if r["trace_s"] is not None]),
        "result_s": spread([r["result_s"] for r in results if r["result_s"] is not None]),
        "saw_queue_position": sum(1 for r in results if r["positions"]),
        "max_ahead": max(r["max_ahead"] for r in results),
        "wall_s": wall,
        "per_session": results,
        "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
    }
    text = summary(report)
    print(text)
    if errors:
        print("errors:", *errors[:10], sep="\n  ")
        print("server log (end):\n" + server_log)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "result.json").write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "summary.txt").write_text(text + "\n")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
