"""The pytest plugin as a plugin author meets it: the README's example run by pytest in a fresh process, a failing
plugin's message, the ``pytest11`` entry point of pyproject.toml, and what importing the plugin costs a run."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import tomllib
from pathlib import Path

import pytest

pytest_plugins = ["pytester"]

ROOT = Path(__file__).resolve().parent.parent
PLUGIN = "plugin_health.testing.pytest_plugin"


def readme_example() -> dict[str, str]:
    """The files of the README's "Testing your plugins" example: each block that starts with ``# <path>.py``."""
    section = (ROOT / "README.md").read_text().split("\n## Testing your plugins\n", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n# (\S+\.py)\n(.*?)```", section, re.DOTALL)
    return dict(blocks)


def write(pytester: pytest.Pytester, files: dict[str, str]) -> None:
    for path, code in files.items():
        target = pytester.path / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(code)


def run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    """pytest in a fresh interpreter, as an author runs it, warnings as errors (the plugin must cause none)."""
    return pytester.runpytest_subprocess("-W", "error", "-p", "no:cacheprovider", *args, timeout=300)


def run_alone(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str) -> pytest.RunResult:
    """``run`` with this plugin named by ``-p`` and no other plugin loaded (the environment's make pytest slow to
    start on a busy machine; the entry point has a test of its own)."""
    monkeypatch.setenv("PYTEST_DISABLE_PLUGIN_AUTOLOAD", "1")
    return run(pytester, "-p", PLUGIN, *args)


@pytest.mark.slow
def test_the_readme_example_passes(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    files = readme_example()
    assert set(files) == {"plugins/geo.py", "plugins/weather.py", "tests/test_weather.py"}
    write(pytester, files)
    result = run_alone(pytester, monkeypatch, "tests")
    result.assert_outcomes(passed=5)  # four tests and the state machine


@pytest.mark.slow
def test_a_failing_plugin_fails_with_a_clear_message(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    files = readme_example()
    files["plugins/weather.py"] = files["plugins/weather.py"].replace(
        'self.units = context.config.get("units", "metric")', 'raise RuntimeError("no API key")')
    write(pytester, files)
    result = run_alone(pytester, monkeypatch, "tests", "-k", "starts_and_forecasts")
    result.assert_outcomes(failed=1, deselected=4)
    result.stdout.fnmatch_lines([
        '>       assert_states(host, {"geo": "RUNNING", "weather": "RUNNING"})',
        "E       AssertionError: plugin states differ from the expected ones:",
        "E         weather: FAILED, expected RUNNING (initialize failed; RuntimeError: no API key)",
        "tests/test_weather.py:*: AssertionError",
    ])
    result.stdout.no_fnmatch_line("*plugin_health/testing/assertions.py*")  # the helper's frames are hidden


AUTHOR_TEST = """
    import os
    import time

    from plugin_health.testing import PluginHostFactory

    PIDS = []
    SOURCE = '''
        import os
        from plugin_health import Plugin, tool

        class P(Plugin):
            name = "p"

            @tool
            def pid(self):
                return os.getpid()
    '''


    def test_the_fixtures_are_there(plugin_host: PluginHostFactory, lifecycle_manager, request) -> None:
        assert request.config.pluginmanager.get_plugin("plugin_health.testing.pytest_plugin") is not None
        PIDS.append(plugin_host(SOURCE).call_tool("p", "pid").result)
        lifecycle_manager.set_state("p", "LOADED")


    def test_the_host_was_shut_down_when_the_test_ended() -> None:
        (pid,) = PIDS
        deadline = time.monotonic() + 5
        while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
            with open(f"/proc/{pid}/stat") as stat:
                if stat.read().rpartition(")")[2].split()[0] == "Z":
                    break
            time.sleep(0.05)
        else:
            assert not os.path.exists(f"/proc/{pid}"), "the plugin's runner still runs"
"""


@pytest.mark.slow
def test_the_entry_point_of_pyproject_loads_the_plugin(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The ``pytest11`` entry point exactly as pyproject.toml declares it, installed as metadata of its own (the
    checkout's installed metadata may predate it; after ``pip install -e .`` both declare it, and pytest loads one)."""
    entry_points = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["entry-points"]["pytest11"]
    assert entry_points == {PLUGIN: PLUGIN}
    site = pytester.mkdir("site")
    dist = site / "plugin_health_probe-0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: plugin-health-probe\nVersion: 0\n")
    (dist / "entry_points.txt").write_text(
        "[pytest11]\n" + "".join(f"{name} = {value}\n" for name, value in entry_points.items()))
    # As ``pip install -e .`` records it (CI's install): pytest then marks the whole package for assertion rewriting,
    # which warns (an error here) if anything imported it before.
    (dist / "direct_url.json").write_text(json.dumps({"url": ROOT.as_uri(), "dir_info": {"editable": True}}))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")])))
    pytester.makepyfile(test_author=textwrap.dedent(AUTHOR_TEST))
    run(pytester).assert_outcomes(passed=2)
    # Named on the command line as well (or in a conftest's pytest_plugins): the same plugin, registered once.
    run(pytester, "-p", PLUGIN).assert_outcomes(passed=2)


def test_importing_the_plugin_loads_nothing_heavy() -> None:
    """Loaded in every run where plugin-health is installed: no core, no Flask, no Hypothesis until a test asks."""
    code = textwrap.dedent("""
        import sys
        import plugin_health.testing.pytest_plugin
        import plugin_health.testing as testing

        def heavy():
            return sorted(m for m in sys.modules if m.split(".")[0] in ("flask", "hypothesis", "redis")
                          or m.startswith(("plugin_health.runtime", "plugin_health.testing.host")))

        print(heavy())
        testing.assert_states, testing.drive_to
        print(heavy())
        testing.LifecycleStateMachine
        print("hypothesis" in heavy())
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60).stdout
    assert out.splitlines() == ["[]", "[]", "True"]
