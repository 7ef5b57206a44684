"""The dashboard over 10,000 plugins in headless Chromium: its first render and its re-render on one change.

Run from the repository root, in the project's venv (Python playwright; Debian's ``/usr/bin/chromium``)::

    python bench/dashboard.py [--quick] [--plugins 10000] [--rounds 5]

It starts ``gunicorn -c gunicorn.conf.py wsgi:app`` over 10 trivial plugins (the baseline), then over 10,000
(each in a temporary directory, health checks every 3,600 s so that none run meanwhile, an operator token set),
opens the dashboard in headless Chromium (a fresh profile each time) and measures with the browser's performance
API, times relative to ``performance.timeOrigin`` (the navigation's start):

* first render: from the navigation's start until the page's rows are in and a frame was drawn with them (the
  first animation frame that finds them all, then the task after that frame's rendering): every plugin's row, or
  as many as the page draws at first when it says so (``<tbody id="plugin-rows" data-window>``: the first 200,
  the others reached by the search, the state filter and "show more"); the median of ``--rounds`` fresh loads of
  the page after one unmeasured load (a fresh browser profile), on a service that stands still (its first health
  checks published, its workers idle), as a dashboard opened on a running service finds it;
* every plugin counted: the same, until the table's title gives the number of every plugin (the whole list in);
* re-render on one change: plugin ``p00150`` (``p00005`` of 10; below the fold) is disabled, then enabled,
  through the API (``POST /v1/plugins/<name>/disable`` with the operator token), ``--rounds`` times each; measured
  in the page from the moment its ``/v1/events`` transition event arrives (before the page's own handler runs)
  until its row shows the new state and the next frame was drawn: the page's own work, whatever it fetches for
  it, not a poll's interval.

Both are observed from outside the page's code (an init script: an animation-frame loop watching the rows, and the
``EventSource`` handler wrapped), so the same measurement holds for any version of ``dashboard.js``; the page's own
``dashboard:*`` performance measures, where it sets them, are printed after the table. Goals (issue 13): first
render under 1 s, re-render under 50 ms, with 10,000 plugins. ``--quick``: one round of each. Every server and
browser it starts is stopped however the run ends (SIGTERM included).
"""

from __future__ import annotations

import argparse
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from _figures import report
from _serve import Server, fetch, fmt_time, plugins_service, servers_stopped, worker_cpu
from playwright.sync_api import sync_playwright

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]
TOKEN = "bench-dashboard-token"
FIRST_GOAL = 1.0  # seconds, first render at 10,000 plugins
CHANGE_GOAL = 0.050  # seconds, re-render on one change at 10,000 plugins
TARGET = 150  # the plugin changed: p00150 (p00005 of 10), a row well below the fold but in any page's first rows
WAIT_MS = 120_000  # the longest a page may take to show every row, or a change

#: Installed before the page's own script: records when every row is drawn, and how long a change takes to show.
PROBE = """
(() => {
  const bench = window.__bench = {rendered: null, listed: null, changes: [], watching: null, expected: EXPECTED};
  // Calls done(time) once test() holds, after the frame that shows it: the test is made in each animation frame
  // (before that frame's style, layout and paint), and a task queued from the frame that finds it true runs once
  // that frame is rendered. `now`: test first at once (a change drawn by the handler that just ran), and if it
  // holds, in the next frame.
  const whenDrawn = (test, done, now = false) => {
    const after = () => {
      const channel = new MessageChannel();
      channel.port1.onmessage = () => done(performance.now());
      channel.port2.postMessage(null);
    };
    if (now && test()) { requestAnimationFrame(after); return; }
    const look = () => { if (test()) after(); else requestAnimationFrame(look); };
    requestAnimationFrame(look);
  };
  // Every row the page draws at first: every plugin's, or as many as its window holds (tbody data-window).
  whenDrawn(() => {
    const body = document.getElementById('plugin-rows');
    return body !== null && body.rows.length >= Math.min(bench.expected, Number(body.dataset.window || Infinity));
  }, (at) => { bench.rendered = at; });
  // Every plugin counted: the table's title says how many there are.
  whenDrawn(() => document.getElementById('shown')?.textContent === String(bench.expected),
            (at) => { bench.listed = at; });
  const Native = window.EventSource;
  if (!Native) return;
  window.EventSource = class extends Native {
    addEventListener(type, listener, options) {
      if (type !== 'transition') return super.addEventListener(type, listener, options);
      return super.addEventListener(type, (event) => {
        const received = performance.now();
        let entry = null;
        try { entry = JSON.parse(event.data); } catch {}
        listener.call(this, event);
        if (entry === null || entry.plugin !== bench.watching) return;
        const row = () => document.getElementById(`plugin-${entry.plugin}`);
        whenDrawn(() => row()?.dataset.state === entry.to,
                  (drawn) => bench.changes.push({plugin: entry.plugin, state: entry.to, received, drawn}), true);
      }, options);
    }
  };
})();
"""
#: Whether every row is drawn: a number, then, of milliseconds since the navigation started.
RENDERED = "() => window.__bench.rendered"
LISTED = "() => window.__bench.listed"
MEASURES = """() => performance.getEntriesByType('measure').filter(m => m.name.startsWith('dashboard:'))
    .map(m => [m.name, m.duration])"""


@dataclass
class Figures:
    """What one server's dashboard measured (seconds)."""

    plugins: int
    first: list[float] = field(default_factory=list)
    listed: list[float] = field(default_factory=list)
    change: list[float] = field(default_factory=list)
    measures: dict[str, list[float]] = field(default_factory=dict)


def act(server: Server, plugin: str, action: str) -> None:
    """An operator action through the API."""
    reply = fetch(server.port, f"/v1/plugins/{plugin}/{action}", {"Authorization": f"Bearer {TOKEN}"},
                  timeout=60.0, method="POST")
    if reply.status != 200:
        raise RuntimeError(f"{action} {plugin}: HTTP {reply.status}: {reply.body[:200]!r}")


def settle(server: Server, still: float = 1.0, within: float = 180.0) -> None:
    """Wait (bounded) until the service stands still, as a dashboard opened on a running service finds it: the
    list's ETag (the store's version) unchanged for ``still`` seconds (with thousands of plugins the first health
    checks go on after ``/startupz``), then its workers idle for ``still`` seconds (caches built again)."""
    deadline = time.monotonic() + within
    tag, since = None, time.monotonic()
    while time.monotonic() < deadline:
        now = fetch(server.port, "/v1/plugins/?limit=1", timeout=60.0).headers.get("etag")
        if now != tag:
            tag, since = now, time.monotonic()
        elif time.monotonic() - since >= still:
            break
        time.sleep(0.1)
    else:
        raise RuntimeError(f"{server.label}: the store still moved after {within:.0f} s")
    used = worker_cpu(server)
    while time.monotonic() < deadline:
        time.sleep(still)
        if worker_cpu(server) - used < 0.02:
            return
        used = worker_cpu(server)


def measure(playwright: Any, server: Server, plugins: int, rounds: int, work: Path) -> Figures:
    """Open the dashboard ``rounds`` times for its first render, then change one plugin ``rounds`` times each way."""
    figures = Figures(plugins)
    context = playwright.chromium.launch_persistent_context(
        str(work / "chromium-profile"), executable_path=CHROMIUM, headless=True, args=ARGS,
        viewport={"width": 1280, "height": 760},
    )
    try:
        context.add_init_script(PROBE.replace("EXPECTED", str(plugins)))
        origin = f"http://127.0.0.1:{server.port}/"
        page = None
        for _ in range(rounds + 1):  # the first load warms the server's caches and the browser's: not counted
            if page is not None:
                page.close()
            page = context.new_page()
            page.goto(origin)
            page.wait_for_function(RENDERED, timeout=WAIT_MS)
            page.wait_for_function(LISTED, timeout=WAIT_MS)
            figures.first.append(page.evaluate(RENDERED) / 1000)
            figures.listed.append(page.evaluate(LISTED) / 1000)
        figures.first.pop(0)
        figures.listed.pop(0)
        assert page is not None
        page.wait_for_function("() => document.getElementById('connection').dataset.stream === 'open'",
                               timeout=WAIT_MS)
        target = f"p{min(plugins // 2, TARGET):05d}"  # below the fold, but a row the page draws
        page.evaluate(f"() => {{ window.__bench.watching = {target!r}; }}")
        page.wait_for_timeout(1500)  # the page settled: its timelines fetched, its polls answered 304
        for action, state in [("disable", "UNAVAILABLE"), ("enable", "RUNNING")] * rounds:
            seen = len(page.evaluate("() => window.__bench.changes"))
            act(server, target, action)
            # enable: LOADED, INITIALIZED, then RUNNING, an event each; measured: the last one's
            drawn = f"() => window.__bench.changes.slice({seen}).find(c => c.state === '{state}')"
            page.wait_for_function(drawn, timeout=WAIT_MS)
            change = page.evaluate(drawn)
            figures.change.append((change["drawn"] - change["received"]) / 1000)
            page.wait_for_timeout(1200)  # the page's follow-up polls done: each change measured alone
        for name, duration in page.evaluate(MEASURES):
            figures.measures.setdefault(name, []).append(duration / 1000)
    finally:
        context.close()
    return figures


def run(playwright: Any, plugins: int, rounds: int, tmp: Path) -> tuple[Figures, float]:
    """Start a service over ``plugins`` plugins, measure its dashboard, stop it; and the seconds it took to start."""
    work = tmp / f"n{plugins}"
    work.mkdir()
    server = plugins_service(plugins, work, token=TOKEN)
    with servers_stopped([server]):
        started = server.start()
        settle(server)
        return measure(playwright, server, plugins, rounds, work), started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round of each measurement")
    parser.add_argument("--plugins", type=int, default=10_000, help="plugins of the big service (default 10,000)")
    parser.add_argument("--rounds", type=int, default=5, help="page loads, and changes each way (default 5)")
    args = parser.parse_args()
    rounds = 1 if args.quick else args.rounds
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    began = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-dashboard-") as tmp, sync_playwright() as playwright:
        small, _ = run(playwright, 10, rounds, Path(tmp))
        big, started = run(playwright, args.plugins, rounds, Path(tmp))
    n = f"{args.plugins:,}"
    print(f"Python {sys.version.split()[0]}, {CHROMIUM} headless; gunicorn -c gunicorn.conf.py; {n} plugins started "
          f"in {fmt_time(started)}; the median of {rounds} round(s) each; {time.monotonic() - began:.0f} s in all")
    print()
    print(f"  {'figure':<40}{'10 plugins':>12}{f'{n} plugins':>18}{'ratio':>8}  goal")
    rows = [("first render (navigation to painted)", small.first, big.first, FIRST_GOAL),
            ("every plugin counted (navigation to)", small.listed, big.listed, None),
            ("re-render on one change", small.change, big.change, CHANGE_GOAL)]
    for label, base, value, goal in rows:
        b, v = statistics.median(base), statistics.median(value)
        met = "" if goal is None else "met" if v < goal else "MISSED"
        goal_text = "" if goal is None else f"< {fmt_time(goal)} at {n}: {met}"
        print(f"  {label:<40}{fmt_time(b):>12}{fmt_time(v):>18}{v / b:>8.2f}  {goal_text}".rstrip())
        report(f"dashboard {label}, {n} plugins", fmt_time(v), f"{fmt_time(b)} (10 plugins)", v / b,
               goal="" if goal is None else f"< {fmt_time(goal)}: {met}")
    print(f"  (all rounds at {n}: first render {', '.join(fmt_time(x) for x in big.first)}; "
          f"counted {', '.join(fmt_time(x) for x in big.listed)}; "
          f"change {', '.join(fmt_time(x) for x in big.change)})")
    if big.measures:
        print()
        print(f"  the page's own measures at {n} plugins (median of each):")
        for name, durations in sorted(big.measures.items()):
            print(f"    {name:<38}{fmt_time(statistics.median(durations)):>12}  ({len(durations)} taken)")


if __name__ == "__main__":
    main()
