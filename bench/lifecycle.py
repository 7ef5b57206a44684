"""Lifecycle benchmark: what the manager costs over raw ``transitions``, and loading 1,000 plugins.

Run: ``python bench/lifecycle.py [--quick]`` (``--quick``: fewer and shorter rounds of triggers). Every figure is
a ratio to a baseline measured in the same run.

The manager logs every move (the ``fail`` of each pair at WARNING): its line goes to a handler that drops it, as a
service's goes to its own handler. Without a handler, Python's last resort prints every warning to stderr, which
is what this benchmark measured (2.1-2.2x raw, against 1.3x) until that was seen (35,000 lines in a full run).
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

# ``python bench/<name>.py`` puts bench/ first on sys.path, where bench/http.py would shadow the standard library's
# ``http``, which Flask (imported by plugin_health) needs.
if str(Path(__file__).resolve().parent) in sys.path:
    sys.path.remove(str(Path(__file__).resolve().parent))

from transitions import Machine

from plugin_health import PluginLifecycleManager, PluginLifecycleState
from plugin_health.lifecycle.states import TRANSITIONS
from plugin_health.loader.loader import PluginLoader
from plugin_health.loader.sources import discover

ROUNDS = 7
PAIRS = 5_000


def per_call_us(pair: Callable[[], object]) -> float:
    """Median over ROUNDS of the cost of one trigger, where ``pair`` fires two (fail, reset), PAIRS times a round."""
    samples = []
    for _ in range(ROUNDS):
        start = time.perf_counter()
        for _ in range(PAIRS):
            pair()
        samples.append((time.perf_counter() - start) / (2 * PAIRS) * 1e6)
    return statistics.median(samples)


def raw_transitions() -> float:
    class Model:
        pass

    model = Model()
    Machine(
        model=model,
        states=PluginLifecycleState,
        transitions=[dict(t) for t in TRANSITIONS],
        initial=PluginLifecycleState.LOADED,
        auto_transitions=False,
    )

    def pair() -> None:
        model.fail()  # type: ignore[attr-defined]
        model.reset()  # type: ignore[attr-defined]

    return per_call_us(pair)


def manager_trigger() -> float:
    lines = logging.getLogger("plugin_health.lifecycle.manager")
    lines.addHandler(logging.NullHandler())  # each line is made (a LogRecord), then dropped
    lines.propagate = False
    manager = PluginLifecycleManager()
    manager.set_state("p", PluginLifecycleState.LOADED)

    def pair() -> None:
        manager.trigger("p", "fail")
        manager.trigger("p", "reset")

    return per_call_us(pair)


def write_plugins(directory: Path, count: int) -> None:
    for i in range(count):
        (directory / f"p{i:05d}.py").write_text(
            "from plugin_health import Plugin\n\n"
            f"class P{i}(Plugin):\n    version = '1.0'\n\n    def health_check(self):\n        return True\n"
        )


def bare_import(directory: Path) -> float:
    """Baseline: import and instantiate the same files with importlib, no isolation, no lifecycle."""
    start = time.perf_counter()
    for path in sorted(directory.glob("*.py")):
        spec = importlib.util.spec_from_file_location(f"_bench_bare.{path.stem}", path)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        getattr(module, f"P{int(path.stem[1:])}")()
    return time.perf_counter() - start


def loader_load(directory: Path) -> tuple[float, PluginLoader]:
    loader = PluginLoader()
    start = time.perf_counter()
    loader.load(discover([directory], group=None))
    return time.perf_counter() - start, loader


def main() -> None:
    global ROUNDS, PAIRS
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="3 rounds of 1,000 pairs of triggers, not 7 of 5,000")
    if parser.parse_args().quick:
        ROUNDS, PAIRS = 3, 1_000
    raw = raw_transitions()
    managed = manager_trigger()
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        write_plugins(directory, 1000)
        bare = bare_import(directory)
        loaded, loader = loader_load(directory)
        running = sum(s is PluginLifecycleState.RUNNING for s in loader.manager.all_states().values())
        loader.shutdown()
    print(f"python {sys.version.split()[0]}")
    print(f"{'figure':<52}{'value':>14}{'ratio':>10}")
    print(f"{'raw transitions trigger (baseline)':<52}{raw:>11.2f} us{1.0:>10.2f}")
    print(f"{'PluginLifecycleManager.trigger':<52}{managed:>11.2f} us{managed / raw:>10.2f}")
    print(f"{'import+instantiate 1,000 plugins bare (baseline)':<52}{bare * 1e3:>11.1f} ms{1.0:>10.2f}")
    print(f"{'register and start 1,000 plugins (PluginLoader)':<52}{loaded * 1e3:>11.1f} ms{loaded / bare:>10.2f}")
    print(f"{'  per plugin':<52}{loaded / 1000 * 1e6:>11.1f} us")
    print(f"plugins RUNNING after load: {running}/1000")


if __name__ == "__main__":
    main()
