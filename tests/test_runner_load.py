"""A runner's ``load``, in process: the answer of each outcome, and the phase a failure is blamed on.

``Runner.load`` runs import, class lookup and declaration, then instantiation, each sandboxed; whatever stops one
of them (its exception, the sandbox's timeout or memory guard) must be reported with the phase that was running,
and the answer must be the same plain dict whatever the runner does inside. Driven on the test's main thread, as
a runner's own requests are (the timer is ``SIGALRM``, the memory guard a lowered ``RLIMIT_DATA``).
"""

from __future__ import annotations

import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugin_health.runtime import runner as runner_module
from plugin_health.runtime.runner import Runner

TIMEOUT = 0.2
#: A metaclass whose named attribute runs plugin code when the runner reads it off the class.
META = """
import time
from plugin_health import Plugin

class Meta(type):
    @property
    def {attribute}(cls):
        {body}

class P(Plugin, metaclass=Meta):
    pass
"""
HANG = "time.sleep(5)"
HOG = "return bytearray(512 * 1024 * 1024)"


@pytest.fixture
def runner(monkeypatch: pytest.MonkeyPatch) -> Iterator[Runner]:
    monkeypatch.setattr(runner_module.memory, "cap_process", lambda limit_mb: None)  # never cap the test's process
    ours, theirs = socket.socketpair()
    with ours, theirs:
        yield Runner(theirs, 1 << 20)


def load(runner: Runner, tmp_path: Path, code: str, name: str = "plugin") -> dict[str, Any]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return runner.load({"op": "load", "slot": 1, "timeout": TIMEOUT, "memory_limit_mb": 64,
                        "source": {"name": name, "origin": str(path), "path": str(path), "entry_point": None}})


def failure(answer: dict[str, Any]) -> tuple[Any, ...]:
    assert set(answer) == {"ok", "phase", "error_type", "error"}, answer
    return answer["ok"], answer["phase"], answer["error_type"], answer["error"]


def test_a_plugin_that_loads_answers_its_declaration_and_tools(runner: Runner, tmp_path: Path) -> None:
    answer = load(runner, tmp_path, """
        from plugin_health import Plugin, tool

        class Mixin:  # not a Plugin: its tools count all the same
            @tool
            def shared(self): ...

        class P(Mixin, Plugin):
            version = "1.2.3"
            requires = ("other>=1",)
            timeout = 3

            @tool
            def own(self): ...
    """)
    assert answer == {"ok": True, "result": {
        "name": "plugin", "version": "1.2.3", "requires": ["other>=1"], "critical": False, "timeout": 3,
        "memory_limit_mb": None, "isolation": "inline", "singleton": False, "tools": ["own", "shared"]}}
    assert runner.loaded[1].limits.timeout == 3.0


@pytest.mark.parametrize(
    ("code", "phase", "error_type", "error"),
    [
        ("raise RuntimeError('boom at import')", "import", "RuntimeError", "boom at import"),
        ("import time\ntime.sleep(5)", "import", "PluginTimeoutError",
         f"call exceeded its timeout of {TIMEOUT:g} s"),
        ("x = bytearray(512 * 1024 * 1024)", "import", "PluginMemoryError", "64 MiB"),
        ("x = 1", "class lookup", "NoPluginClassError", "defines no subclass"),
        ("from plugin_health import Plugin\nclass A(Plugin): pass\nclass B(Plugin): pass", "class lookup",
         "MultiplePluginClassesError", "A, B"),
        (META.format(attribute="__abstractmethods__", body="raise KeyError('lookup')"), "class lookup", "KeyError",
         "'lookup'"),
        (META.format(attribute="__abstractmethods__", body=HANG), "class lookup", "PluginTimeoutError",
         f"call exceeded its timeout of {TIMEOUT:g} s"),
        (META.format(attribute="__abstractmethods__", body=HOG), "class lookup", "PluginMemoryError", "64 MiB"),
        ("from plugin_health import Plugin\nclass P(Plugin):\n    version = object()", "declaration", "TypeError",
         "version must be plain data, not object"),
        (META.format(attribute="version", body="raise SystemExit('declared')"), "declaration", "SystemExit",
         "declared"),
        (META.format(attribute="version", body=HANG), "declaration", "PluginTimeoutError",
         f"call exceeded its timeout of {TIMEOUT:g} s"),
        (META.format(attribute="version", body=HOG), "declaration", "PluginMemoryError", "64 MiB"),
        ("from plugin_health import Plugin\nclass P(Plugin):\n    def __init__(self): raise ValueError('no')",
         "instantiation", "ValueError", "no"),
        ("from plugin_health import Plugin\nimport time\nclass P(Plugin):\n    timeout = 0.1\n"
         "    def __init__(self): time.sleep(5)", "instantiation", "PluginTimeoutError",
         "call exceeded its timeout of 0.1 s"),
    ],
    ids=["import-raises", "import-hangs", "import-hogs", "no-class", "two-classes", "lookup-raises", "lookup-hangs",
         "lookup-hogs", "not-plain-data", "declaration-exits", "declaration-hangs", "declaration-hogs",
         "constructor-raises", "constructor-hangs-past-its-own-timeout"],
)
def test_a_failed_load_names_the_phase_that_was_running(
    runner: Runner, tmp_path: Path, code: str, phase: str, error_type: str, error: str
) -> None:
    ok, got_phase, got_type, got_error = failure(load(runner, tmp_path, code))
    assert (ok, got_phase, got_type) == (False, phase, error_type)
    assert error in got_error
    assert runner.loaded == {}
    # The runner goes on: the next plugin loads.
    assert load(runner, tmp_path, "from plugin_health import Plugin\nclass P(Plugin): pass", "next")["ok"]


def test_a_failed_import_leaves_no_module_behind(runner: Runner, tmp_path: Path) -> None:
    import sys

    before = set(sys.modules)
    failure(load(runner, tmp_path, "raise RuntimeError('boom')"))
    assert set(sys.modules) == before
