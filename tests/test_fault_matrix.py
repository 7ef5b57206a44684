"""The fault matrix of the sandbox issue: every fault, in every phase, in both isolation modes.

Each cell writes one plugin whose chosen method misbehaves, loads it into runners as the core does (the shared
runner for inline plugins, one of its own for a process plugin), drives the phase, and asserts the resulting
state and ``error_type``; the test process itself, which runs no plugin code, must survive every cell. Even a
segfault or ``os._exit`` of an inline plugin is survived: it takes its runner down, not the core.
"""

from __future__ import annotations

import itertools
import os
import textwrap
import time
from pathlib import Path

import pytest

from plugin_health import PluginLifecycleState
from plugin_health.loader.loader import LoaderSettings, PluginLoader
from plugin_health.loader.sources import discover
from plugin_health.runtime.runners import RunnerPool, RunnerSettings
from plugin_health.sandbox import SandboxLimits
from plugin_health.supervision import SupervisionSettings, Supervisor
from plugin_health.tools import ToolRunner

S = PluginLifecycleState

FAULTS: dict[str, tuple[str, str]] = {
    # fault -> (code, expected error_type)
    "raise": ("raise RuntimeError('plugin bug')", "RuntimeError"),
    "sys-exit": ("import sys; sys.exit(4)", "SystemExit"),
    "python-loop": ("while True:\n    pass", "PluginTimeoutError"),
    "swallowing-loop": (
        "while True:\n    try:\n        sum(range(1000))\n    except Exception:\n        pass",
        "PluginTimeoutError",
    ),
    "sleep-hang": ("import time; time.sleep(60)", "PluginTimeoutError"),
    "allocate-2gib": ("self.hog = bytearray(2 * 1024 ** 3)", "PluginMemoryError"),
    "segfault": ("import ctypes; ctypes.string_at(0)", "PluginCrashedError"),
    "os-exit": ("import os; os._exit(7)", "PluginCrashedError"),
}
PHASES = ("initialize", "start", "tool", "health_check")
MODES = ("inline", "process")

TIMEOUT = 0.3


def write_fault_plugin(directory: Path, mode: str, phase: str, code: str) -> None:
    methods = {"initialize": "initialize(self, context)", "start": "start(self)", "tool": "poke(self)",
               "health_check": "health_check(self)"}
    body = textwrap.indent(textwrap.dedent(code), " " * 8)
    decorator = "    @tool\n" if phase == "tool" else ""
    ok_tool = "" if phase == "tool" else "    @tool\n    def poke(self):\n        return 'ok'\n"
    (directory / "victim.py").write_text(
        "from plugin_health import Plugin, tool\n\n\n"
        "class Victim(Plugin):\n"
        f"    isolation = {mode!r}\n"
        f"    timeout = {TIMEOUT}\n"
        "    memory_limit_mb = 256\n\n"
        f"{decorator}    def {methods[phase]}:\n{body}\n"
        "        return True\n\n"
        f"{ok_tool}"
    )


def core_loader(default_timeout: float = 10.0) -> PluginLoader:
    """A loader that places every plugin in runners, as the core's does."""
    pool = RunnerPool(RunnerSettings(load_limits=SandboxLimits(default_timeout, 512)))
    return PluginLoader(settings=LoaderSettings(default_timeout=default_timeout), placement=pool)


@pytest.mark.parametrize(
    ("fault", "phase", "mode"),
    list(itertools.product(FAULTS, PHASES, MODES)),
    ids=lambda v: str(v),
)
def test_fault_matrix(tmp_path: Path, fault: str, phase: str, mode: str) -> None:
    code, expected = FAULTS[fault]
    write_fault_plugin(tmp_path, mode, phase, code)
    loader = core_loader(default_timeout=5.0)
    supervisor = Supervisor(loader, SupervisionSettings(failure_threshold=1, max_restarts=0))
    assert isinstance(loader.placement, RunnerPool)
    loader.placement.on_lost = supervisor.runner_lost
    try:
        loader.load(discover([tmp_path], group=None))
        m = loader.manager
        if phase in ("initialize", "start"):
            assert m.get_state("victim") is S.FAILED
            assert m.last("victim").reason == f"{phase} failed"
        else:
            assert m.get_state("victim") is S.RUNNING, m.last("victim")
            if phase == "tool":
                result = ToolRunner(supervisor).run("victim", "poke")
            else:
                supervisor.check("victim")
            assert m.get_state("victim") is S.FAILED
        assert m.last("victim").error_type == expected, m.last("victim")
    finally:
        loader.shutdown()
    if phase == "tool":
        assert not result.ok
        assert result.error_type == expected
    assert os.getpid() > 0  # still here


@pytest.mark.parametrize("mode", MODES)
def test_hung_initialize_fails_within_timeout(tmp_path: Path, mode: str) -> None:
    write_fault_plugin(tmp_path, mode, "initialize", "import time; time.sleep(60)")
    text = (tmp_path / "victim.py").read_text().replace(f"timeout = {TIMEOUT}", "timeout = 0.2")
    (tmp_path / "victim.py").write_text(text)
    loader = core_loader()
    sources = discover([tmp_path], group=None)
    try:
        loader._load_source(sources[0])  # import (and a child's start-up) before the clock starts
        started = time.perf_counter()
        loader.bring_up("victim")
        elapsed = time.perf_counter() - started
        assert loader.manager.get_state("victim") is S.FAILED
        assert loader.manager.last("victim").error_type == "PluginTimeoutError"
        assert elapsed < 0.2 + 0.25 + 0.2, elapsed  # 0.2 s + the hard deadline's grace, with slack for CI
    finally:
        loader.shutdown()
