"""A singleton plugin that writes down its runs, and what those runs tell (for the tests of singletons).

Each run appends a tick with its fencing token every 20 ms to a file while it runs: a run's interval is from its
first tick to its last, and two runs of a singleton must never overlap.
"""

from __future__ import annotations

import itertools
import textwrap
from pathlib import Path

#: A ``stop`` that never ends: it swallows the sandbox's alarm and sleeps again (its runner must be killed).
STUBBORN_STOP = """
    while True:
        try:
            time.sleep(10)
        except BaseException:
            pass
"""


def janitor_source(runs: Path, sick: Path, where: str = "os.getpid()", stop: str = "self.done.set()") -> str:
    """The plugin: a critical singleton whose health check fails while ``sick`` exists, ticking into ``runs``;
    its tool ``where`` answers ``where`` (a Python expression); ``stop`` is the body of its ``stop``."""
    body = textwrap.indent(textwrap.dedent(stop).strip("\n"), " " * 16)
    return textwrap.dedent(f"""
        import os, threading, time
        from plugin_health import Plugin, tool

        class Janitor(Plugin):
            singleton = True
            critical = True

            def health_check(self):
                return not os.path.exists({str(sick)!r})

            def initialize(self, context):
                self.token = context.fencing_token
                self.done = threading.Event()

            def start(self):
                def tick():
                    while not self.done.wait(0.02):
                        with open({str(runs)!r}, "a") as out:
                            out.write(f"{{self.token}} {{time.time()}}\\n")
                threading.Thread(target=tick, daemon=True).start()

            def stop(self):
{body}

            @tool
            def where(self):
                return {where}
    """)


def intervals(runs: Path) -> dict[int, tuple[float, float]]:
    """Each run's first and last tick, by fencing token."""
    found: dict[int, tuple[float, float]] = {}
    for line in runs.read_text().splitlines():
        token_text, at_text = line.split()
        token, at = int(token_text), float(at_text)
        first, last = found.get(token, (at, at))
        found[token] = (min(first, at), max(last, at))
    return found


def assert_disjoint(runs: Path) -> dict[int, tuple[float, float]]:
    """The runs, after checking that no two overlapped and that a later run never had a smaller token."""
    found = intervals(runs)
    ordered = sorted(found.values())
    for (_, last), (first, _) in itertools.pairwise(ordered):
        assert last < first, f"two runs of the singleton overlapped: {found}"
    assert [found[t] for t in sorted(found)] == ordered, f"a later run had a smaller fencing token: {found}"
    return found
