"""Loader v2 over a directory of fault plugins: each phase isolated, every plugin listed as DESIGN.md says."""

from __future__ import annotations

import importlib.util
import inspect
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from plugin_health import PluginLifecycleState
from plugin_health.loader import sources
from plugin_health.loader.loader import LoaderSettings, PluginLoader
from plugin_health.loader.sources import (
    CARRIED_TEXT,
    PluginSource,
    declared_attribute,
    declared_attributes,
    discover,
    scan,
    scan_directory,
)
from plugin_health.testing import PluginHostFactory, assert_history

S = PluginLifecycleState
FAULTS = Path(__file__).parent / "plugins" / "faults"

# name -> (state, reason, error_type)
EXPECTED: dict[str, tuple[S, str | None, str | None]] = {
    "bad_version": (S.FAILED, "declaration failed", "InvalidPluginError"),
    "ctor_raises": (S.FAILED, "instantiation failed", "RuntimeError"),
    "dup": (S.RUNNING, None, None),
    "dup.2": (S.FAILED, "duplicate name", "DuplicatePluginError"),
    "good": (S.RUNNING, None, None),
    "import_error": (S.FAILED, "import failed", "ImportError"),
    "import_exits": (S.FAILED, "import failed", "SystemExit"),
    "init_exits": (S.FAILED, "initialize failed", "SystemExit"),
    "init_raises": (S.FAILED, "initialize failed", "ValueError"),
    "json": (S.RUNNING, None, None),
    "missing_module": (S.FAILED, "import failed", "ModuleNotFoundError"),
    "needs_good": (S.RUNNING, None, None),
    "needs_init_raises": (S.UNAVAILABLE, "dependency_unavailable: init_raises", None),
    "no_subclass": (S.FAILED, "class lookup failed", "NoPluginClassError"),
    "os": (S.RUNNING, None, None),
    "pkgplugin": (S.RUNNING, None, None),
    "requires_missing": (S.UNAVAILABLE, "dependency_missing: nothere is not installed", None),
    "start_interrupt": (S.FAILED, "start failed", "KeyboardInterrupt"),
    "start_raises": (S.FAILED, "start failed", "ConnectionError"),
    "syntax_error": (S.FAILED, "import failed", "SyntaxError"),
    "two_subclasses": (S.FAILED, "class lookup failed", "MultiplePluginClassesError"),
}


@pytest.fixture(scope="module")
def faults() -> PluginLoader:
    loader = PluginLoader(settings=LoaderSettings(default_timeout=5.0))
    loader.load(discover([FAULTS], group=None))
    return loader


def test_the_fault_directory_in_runners_lists_the_same_states(plugin_host: PluginHostFactory) -> None:
    """As the service loads it (every plugin in a runner, never in this process), not only as a bare loader does."""
    host = plugin_host(FAULTS, default_timeout=5.0)
    listed = {name: (state, host.health(name).reason, host.health(name).error_type)
              for name, state in host.states.items()}
    assert listed == EXPECTED
    assert_history(host, "init_raises", [(None, "LOADED"), ("LOADED", "FAILED", "initialize failed")])
    assert_history(host, "syntax_error", [(None, "FAILED", "import failed")])


def test_discovery_skips_private_hidden_and_non_python() -> None:
    names = [source.name for source in scan_directory(FAULTS)]
    assert names == sorted(names)
    assert "_private" not in names
    assert ".hidden" not in names
    assert "README" not in names
    assert "pkgplugin" in names


def test_discovery_follows_links_finds_packages_and_names_each_source_by_its_path(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What a listing must keep, whatever reads the directory: a link to a plugin file is a plugin, a broken link
    or a directory named like a module is not, a package is found by its ``__init__.py``, and each source's origin
    is the directory it was found in joined with its name (a relative directory stays relative)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "plain.py").write_text("")
    (tmp_path / "elsewhere.py").write_text("")
    (plugins / "linked.py").symlink_to(tmp_path / "elsewhere.py")
    (plugins / "broken.py").symlink_to(tmp_path / "missing.py")
    (plugins / "odd.py").mkdir()
    (plugins / "pkg").mkdir()
    (plugins / "pkg" / "__init__.py").write_text("")
    (plugins / "not-a-package").mkdir()
    (plugins / "not-a-package" / "__init__.py").write_text("")
    (plugins / "empty").mkdir()
    monkeypatch.chdir(tmp_path)
    found = scan_directory(Path("plugins"))
    assert [(s.name, s.origin, s.path) for s in found] == [
        ("linked", "plugins/linked.py", Path("plugins/linked.py")),
        ("pkg", "plugins/pkg", Path("plugins/pkg/__init__.py")),
        ("plain", "plugins/plain.py", Path("plugins/plain.py")),
    ]
    assert scan_directory(tmp_path / "nowhere") == []


def test_every_fault_plugin_is_listed_with_its_state(faults: PluginLoader) -> None:
    listed = {
        name: (state, faults.manager.last(name).reason, faults.manager.last(name).error_type)
        for name, state in faults.manager.all_states().items()
    }
    assert listed == EXPECTED
    assert faults.finished.is_set()


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("import_error", "boom at import time"),
        ("missing_module", "does_not_exist_anywhere"),
        ("syntax_error", "expected ':' (syntax_error.py, line 4)"),
        ("ctor_raises", "constructor exploded"),
        ("init_raises", "bad configuration"),
        ("start_raises", "cannot reach upstream"),
        ("init_exits", "3"),
        ("import_exits", "leaving at import"),
        ("two_subclasses", "First, Second"),
        ("no_subclass", "no subclass of plugin_health.Plugin"),
        ("bad_version", "'not a version!' is not a PEP 440 version"),
        ("dup.2", "'dup'"),
    ],
)
def test_error_messages_name_the_problem(faults: PluginLoader, name: str, fragment: str) -> None:
    error = faults.manager.last(name).error
    assert error is not None
    assert fragment in error
    assert "Traceback" not in error


def test_code_that_never_loaded_enters_failed_directly(faults: PluginLoader) -> None:
    history = faults.manager.history("syntax_error")
    assert [(r.source, r.dest, r.trigger) for r in history] == [(None, S.FAILED, "load")]


def test_initialize_failure_goes_through_loaded(faults: PluginLoader) -> None:
    history = faults.manager.history("init_raises")
    assert [(r.source, r.dest) for r in history] == [(None, S.LOADED), (S.LOADED, S.FAILED)]


def test_first_duplicate_keeps_running(faults: PluginLoader) -> None:
    assert str(faults.registry.get("dup").spec.version) == "1.0"
    assert "dup_b.py" in faults.sources["dup.2"].origin


def test_plugins_never_shadow_real_modules(faults: PluginLoader) -> None:
    import json as real_json
    import os as real_os

    assert sys.modules["json"] is real_json
    assert real_json.loads('{"a": 1}') == {"a": 1}
    assert callable(real_os.getcwd)
    assert str(FAULTS) not in sys.path
    assert faults.registry.get("json").handle.instance.__class__.__module__ == "_plugin_health_plugins.json"


def test_package_plugin_with_relative_import(faults: PluginLoader) -> None:
    assert str(faults.registry.get("pkgplugin").spec.version) == "3.1.4"


def test_dependencies_get_their_dependencies_in_context(faults: PluginLoader) -> None:
    needs_good = faults.registry.get("needs_good").handle.instance
    assert needs_good.good is faults.registry.get("good").handle.instance


def test_loading_the_fault_directory_in_a_fresh_process_survives(tmp_path: Path) -> None:
    script = textwrap.dedent(
        f"""
        import json
        from plugin_health.loader.loader import PluginLoader
        from plugin_health.loader.sources import discover
        loader = PluginLoader()
        loader.load(discover([{str(FAULTS)!r}], group=None))
        print(json.dumps({{name: state.value for name, state in loader.manager.all_states().items()}}))
        loader.shutdown()
        print("still alive")
        """
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.strip().splitlines()
    assert json.loads(lines[0]) == {name: state.value for name, (state, _, _) in EXPECTED.items()}
    assert lines[-1] == "still alive"


# -- a factory of small plugins in a temporary directory --------------------------------------------------

PluginFactory = Callable[..., Path]


@pytest.fixture
def make_plugin(tmp_path: Path) -> PluginFactory:
    def make(name: str, body: str = "pass", *, requires: tuple[str, ...] = (), version: str = "1.0") -> Path:
        code = textwrap.dedent(
            """
            from plugin_health import Plugin

            class P(Plugin):
                version = {version!r}
                requires = {requires!r}
                started = 0
                stopped = 0

                def start(self):
                    self.started += 1

                def stop(self):
                    self.stopped += 1

            {body}
            """
        ).format(version=version, requires=requires, body=textwrap.indent(textwrap.dedent(body), "    "))
        path = tmp_path / f"{name}.py"
        path.write_text(code)
        return path

    return make


def load_dir(directory: Path) -> PluginLoader:
    loader = PluginLoader()
    loader.load(discover([directory], group=None))
    return loader


def test_cascade_on_failure_and_recovery_on_return(tmp_path: Path, make_plugin: PluginFactory) -> None:
    make_plugin("base")
    make_plugin("middle", requires=("base",))
    make_plugin("top", requires=("middle",))
    make_plugin("aside")
    loader = load_dir(tmp_path)
    m = loader.manager
    assert set(m.all_states().values()) == {S.RUNNING}

    m.trigger("base", "fail", reason="tool calls failing")
    assert m.get_state("middle") is S.UNAVAILABLE
    assert m.last("middle").reason == "dependency_unavailable: base"
    assert m.get_state("top") is S.UNAVAILABLE
    assert m.last("top").reason == "dependency_unavailable: middle"
    assert m.get_state("aside") is S.RUNNING
    assert loader.registry.get("middle").handle.instance.stopped == 1
    assert loader.registry.get("top").handle.instance.stopped == 1

    m.trigger("base", "reset")
    assert loader.bring_up("base") is S.RUNNING
    assert m.get_state("middle") is S.RUNNING
    assert m.get_state("top") is S.RUNNING
    assert [r.trigger for r in m.history("top")] == ["load", "initialize", "start", "make_unavailable", "reset",
                                                     "initialize", "start"]
    assert loader.registry.get("top").handle.instance.started == 2


def test_diamond_recovers_only_when_every_dependency_is_back(tmp_path: Path, make_plugin: PluginFactory) -> None:
    make_plugin("left")
    make_plugin("right")
    make_plugin("top", requires=("left", "right"))
    loader = load_dir(tmp_path)
    m = loader.manager
    m.trigger("left", "fail")
    m.trigger("right", "make_unavailable", reason="disabled")
    assert m.get_state("top") is S.UNAVAILABLE
    m.trigger("left", "reset")
    loader.bring_up("left")
    assert m.get_state("top") is S.UNAVAILABLE  # right is still away
    m.trigger("right", "reset")
    loader.bring_up("right")
    assert m.get_state("top") is S.RUNNING


def test_dependency_failing_at_start_leaves_dependents_unavailable(
    tmp_path: Path, make_plugin: PluginFactory
) -> None:
    make_plugin("base", "def initialize(self, context):\n    raise OSError('disk gone')")
    make_plugin("app", requires=("base",))
    loader = load_dir(tmp_path)
    assert loader.manager.get_state("base") is S.FAILED
    assert loader.manager.get_state("app") is S.UNAVAILABLE
    assert loader.manager.last("app").reason == "dependency_unavailable: base"


def test_version_mismatch_and_cycles_from_files(tmp_path: Path, make_plugin: PluginFactory) -> None:
    make_plugin("geo", version="1.5")
    make_plugin("weather", requires=("geo>=2.0",))
    make_plugin("a", requires=("b",))
    make_plugin("b", requires=("a",))
    loader = load_dir(tmp_path)
    m = loader.manager
    assert m.get_state("weather") is S.UNAVAILABLE
    assert m.last("weather").reason == "dependency_version: geo 1.5 does not satisfy geo>=2.0"
    assert m.last("a").reason == m.last("b").reason == "dependency_cycle: a -> b -> a"
    assert m.get_state("geo") is S.RUNNING


def test_plugin_path_directories_in_order(tmp_path: Path) -> None:
    first, second = tmp_path / "one", tmp_path / "two"
    for directory, version in ((first, "1.0"), (second, "2.0")):
        directory.mkdir()
        (directory / "same.py").write_text(
            f"from plugin_health import Plugin\nclass Same(Plugin):\n    version = {version!r}\n"
        )
    loader = PluginLoader()
    loader.load(discover([first, second], group=None))
    assert str(loader.registry.get("same").spec.version) == "1.0"
    assert loader.manager.get_state("same.2") is S.FAILED


def test_plugin_config_reaches_initialize(tmp_path: Path) -> None:
    loader = PluginLoader(settings=LoaderSettings(plugin_config={"good": {"greeting": "hi"}}))
    loader.load(discover([FAULTS], group=None))
    assert loader.registry.get("good").handle.instance.greeting == "hi"


def test_shutdown_stops_dependents_first(tmp_path: Path, make_plugin: PluginFactory) -> None:
    make_plugin("base")
    make_plugin("app", requires=("base",))
    loader = load_dir(tmp_path)
    loader.shutdown()
    for name in ("base", "app"):
        assert loader.manager.get_state(name) is S.UNAVAILABLE
        assert loader.manager.last(name).reason == "stopped"
        assert loader.registry.get(name).handle.instance.stopped == 1


def test_entry_point_plugins(tmp_path: Path) -> None:
    dist = tmp_path / "site" / "ep_demo-1.0.dist-info"
    dist.mkdir(parents=True)
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ep-demo\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[plugin_health.plugins]\nepdemo = ep_demo_mod:Demo\n")
    (tmp_path / "site" / "ep_demo_mod.py").write_text(
        "from plugin_health import Plugin\nclass Demo(Plugin):\n    name = 'epdemo'\n    version = '4.2'\n"
    )
    script = textwrap.dedent(
        """
        import json, sys
        from plugin_health.loader.loader import PluginLoader
        from plugin_health.loader.sources import discover
        loader = PluginLoader()
        loader.load(discover([]))
        print(json.dumps({n: s.value for n, s in loader.manager.all_states().items()}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site")}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"epdemo": "RUNNING"}


@pytest.mark.parametrize(("text", "expected"), [
    ("class P(Plugin):\n    isolation = 'process'\n", "process"),
    ("class P(Plugin):\n    isolation: str = 'process'\n", "process"),
    ("class P(Plugin):\n    \uff49solation = 'process'\n", "process"),  # NFKC: the same identifier
    ("class P(Plugin):\n    pass\n# isolation is left to the default\n", None),
    ("class P(Plugin):\n    pass\n", None),
    ("class P(Plugin:\n    isolation = 'process'\n", None),
], ids=["assigned", "annotated", "another-spelling", "named-in-a-comment", "absent", "syntax-error"])
def test_declared_attribute_reads_the_source_without_importing_it(
    tmp_path: Path, text: str, expected: object
) -> None:
    path = tmp_path / "p.py"
    path.write_text("from plugin_health import Plugin\n" + text, encoding="utf-8")
    assert declared_attribute(PluginSource("p", str(path), path=path), "isolation") == expected


@pytest.mark.parametrize("text", [
    "class P(Plugin):\n    isolation = 'process'\n    singleton = True\n",
    "class P(Plugin):\n    singleton = True\n",
    "class P(Plugin):\n    isolation = 'process'\n",
    "class P(Plugin):\n    singleton = bool(1)\n    isolation = 'inline'\n    isolation = 'process'\n",
    "class A:\n    singleton = 1\nclass P(Plugin):\n    singleton = True\n    \uff49solation = 'process'\n",
    "class P(Plugin):\n    pass\n",
    "class P(Plugin:\n    singleton = True\n",
], ids=["both", "singleton", "isolation", "first-assignment", "first-class", "neither", "syntax-error"])
def test_declared_attributes_read_the_source_once_and_agree_with_each_alone(
    tmp_path: Path, text: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "p.py"
    path.write_text("from plugin_health import Plugin\n" + text, encoding="utf-8")
    source = PluginSource("p", str(path), path=path)
    alone = {name: declared_attribute(source, name) for name in ("isolation", "singleton")}
    reads = []
    read = sources._read
    monkeypatch.setattr(sources, "_read", lambda path: reads.append(path) or read(path))
    assert declared_attributes(source, ("isolation", "singleton")) == alone
    assert reads == [path]


class _ClaimedUp:
    """A placed plugin whose runner claims it brought it up with its load."""

    isolation = "inline"

    def __init__(self) -> None:
        from plugin_health.sandbox import SandboxLimits

        self.name = ""
        self.lost = False
        self.closed = False
        self.limits = SandboxLimits(1.0, 64)

    def close(self) -> None:
        self.closed = self.lost = True

    def uses_process_of(self, other: object) -> bool:
        return False


class _Claiming:
    """A placement whose runner says it initialized and started every plugin it loaded, whatever they declare."""

    def __init__(self, declaration: dict[str, object]) -> None:
        self.declaration = declaration
        self.handles: list[_ClaimedUp] = []

    def load_many(self, sources: list[object], limits: object, ups: object = None,
                  apart: Callable[[object], tuple[bool, bytes | None]] | None = None) -> object:
        from plugin_health.loader.handles import Placed
        from plugin_health.sandbox import PluginSandboxResult

        for source in sources:
            if apart is not None and apart(source)[0]:
                yield None
                continue
            self.handles.append(_ClaimedUp())
            yield Placed(self.handles[-1], dict(self.declaration),  # type: ignore[arg-type]
                         up=(PluginSandboxResult(True, None), PluginSandboxResult(True, None)))

    def load(self, source: object, dedicated: bool, limits: object) -> object:
        from plugin_health.loader.handles import Placed

        return Placed(None, phase="import", error_type="RunnerError", error="no second runner in this test")

    def close(self) -> None:
        pass


@pytest.mark.parametrize("declares", [{"requires": ["other"]}, {"name": "another"}],
                         ids=["requires-another", "another-name"])
def test_a_runner_that_says_it_brought_up_a_plugin_the_core_would_not_have_is_not_believed(
    tmp_path: Path, declares: dict[str, object]
) -> None:
    """The core records INITIALIZED and RUNNING only on its own judgement: a plugin whose validated declaration
    needs another plugin (or is known by another name) is never brought up with its load, whatever its runner says;
    that instance is dropped and the plugin goes the usual way (here: UNAVAILABLE, its requirement missing)."""
    (tmp_path / "liar.py").write_text("from plugin_health import Plugin\nclass P(Plugin):\n    pass\n")
    placement = _Claiming({"name": "liar", "version": "1.0", "requires": [], "isolation": "inline", **declares})
    loader = PluginLoader(settings=LoaderSettings(default_timeout=1.0), placement=placement)  # type: ignore[arg-type]
    loader.load(discover([tmp_path], group=None))
    name = str(declares.get("name", "liar"))
    assert [record.dest for record in loader.manager.history(name)][:1] == [PluginLifecycleState.LOADED]
    assert PluginLifecycleState.INITIALIZED not in [record.dest for record in loader.manager.history(name)]
    assert placement.handles[0].closed


class _Arriving:
    """What a placement's ``load_many`` gives: the placed plugins in order, and whether the next has arrived (here:
    every one but those after ``gaps``)."""

    def __init__(self, placed: list[object], gaps: set[int]) -> None:
        self._placed = placed
        self._gaps = gaps
        self._taken = 0

    def __iter__(self) -> _Arriving:
        return self

    def __next__(self) -> object:
        if self._taken == len(self._placed):
            raise StopIteration
        self._taken += 1
        if isinstance(self._placed[self._taken - 1], Exception):
            raise self._placed[self._taken - 1]  # type: ignore[misc]
        return self._placed[self._taken - 1]

    def ready(self) -> bool:
        return self._taken not in self._gaps


class _ArrivingTogether(_Claiming):
    """A placement whose loads arrive in groups (a gap after the 3rd and the 7th), each plugin brought up whole but
    ``loner``, which only loads."""

    def load_many(self, sources: list[object], limits: object, ups: object = None,
                  apart: Callable[[object], tuple[bool, bytes | None]] | None = None) -> object:
        from plugin_health.loader.handles import Placed
        from plugin_health.sandbox import PluginSandboxResult

        placed: list[object] = []
        for source in sources:
            self.handles.append(_ClaimedUp())
            name = getattr(source, "name", "")
            up = () if name == "loner" else (PluginSandboxResult(True, None), PluginSandboxResult(True, None))
            placed.append(Placed(self.handles[-1], {**self.declaration, "name": name}, up=up))  # type: ignore[arg-type]
        return _Arriving(placed, gaps={3, 7})

    def call_many(self, handles: list[object], method: str, args: list[object]) -> list[object]:
        from plugin_health.sandbox import PluginSandboxResult

        return [PluginSandboxResult(True, None) for _ in handles]


def test_plugins_whose_loads_arrived_together_come_up_in_one_step_in_their_order(tmp_path: Path) -> None:
    """Plugins brought up whole with their loads enter RUNNING a group at a time: those whose loads had arrived
    together (the placement's ``ready``), in one step each group, ended by a gap in arrivals or by a plugin of
    another kind, which comes after them; every plugin's moves are recorded in the order of the sources."""
    names = ["a", "b", "c", "d", "loner", "e", "f", "g"]
    for name in names:
        (tmp_path / f"{name}.py").write_text("from plugin_health import Plugin\nclass P(Plugin):\n    pass\n")
    placement = _ArrivingTogether({"version": "1.0", "requires": [], "isolation": "inline"})
    loader = PluginLoader(settings=LoaderSettings(default_timeout=1.0), placement=placement)  # type: ignore[arg-type]
    steps: list[list[str]] = []
    order: list[str] = []
    loader.manager.subscribe(lambda record: steps.append([record.plugin]) or order.append(record.plugin),
                             lambda records: steps.append(list(dict.fromkeys(r.plugin for r in records)))
                             or order.extend(r.plugin for r in records))
    loader.load(sorted(discover([tmp_path], group=None), key=lambda source: names.index(source.name)))
    assert all(loader.manager.get_state(name) is PluginLifecycleState.RUNNING for name in names)
    assert steps[:4] == [["a", "b", "c"], ["d"], ["loner"], ["e", "f"]]  # gaps after c and loner; loner ends d's
    assert steps[4:] == [["g"], ["loner"], ["loner"]]  # then loner's initialize and start, brought up after
    assert list(dict.fromkeys(order)) == names
    assert [len(loader.manager.history(name)) for name in names] == [3] * 8


class _FailingAfterThree(_ArrivingTogether):
    """Loads that arrive together, until the stream breaks at the fourth (a bug of its sender's, say)."""

    def load_many(self, sources: list[object], limits: object, ups: object = None,
                  apart: Callable[[object], tuple[bool, bytes | None]] | None = None) -> object:
        arriving = super().load_many(sources, limits, ups, apart)
        arriving._placed[3] = RuntimeError("the sender broke")  # type: ignore[attr-defined]
        arriving._gaps = set()  # type: ignore[attr-defined]
        return arriving


def test_plugins_that_arrived_together_before_the_loads_failed_are_entered_all_the_same(tmp_path: Path) -> None:
    """Registered as they came, waiting to be entered with the next ones: when the loads fail before those come, the
    ones registered are entered still (the registry and the lifecycle agree), and the failure is raised."""
    for name in ("a", "b", "c", "d", "e"):
        (tmp_path / f"{name}.py").write_text("from plugin_health import Plugin\nclass P(Plugin):\n    pass\n")
    placement = _FailingAfterThree({"version": "1.0", "requires": [], "isolation": "inline"})
    loader = PluginLoader(settings=LoaderSettings(default_timeout=1.0), placement=placement)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError, match="the sender broke"):
        loader.load(discover([tmp_path], group=None))
    assert {entry.name: loader.manager.get_state(entry.name) for entry in loader.registry} == dict.fromkeys(
        ("a", "b", "c"), PluginLifecycleState.RUNNING)


@pytest.mark.parametrize("body", ["x = 1" + "+1" * 200_000, "x = " + "not " * 100_000 + "1",
                                  "isolation = " + "-" * 100_000 + "1"])
def test_a_source_built_to_exhaust_the_parser_declares_nothing(tmp_path: Path, body: str) -> None:
    """The parser gives up on such text (RecursionError, or MemoryError from its own stack limit) before any code
    runs: nothing is declared, and no error leaves the reading."""
    path = tmp_path / "p.py"
    path.write_text(f"class P:\n    isolation = 'process'\n    singleton = True\n{body}\n", encoding="utf-8")
    source = PluginSource("p", str(path), path=path)
    assert declared_attributes(source, ("isolation", "singleton")) == {"isolation": None, "singleton": None}


def _plugin_file(directory: Path, said: str) -> Path:
    directory.mkdir(exist_ok=True)
    path = directory / "speaks.py"
    path.write_text(f"from plugin_health import Plugin\nclass P(Plugin):\n    said = {said!r}\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("write_bytecode", [False, True])
def test_a_plugin_imports_from_its_bytecode_cache_when_it_has_one_and_from_its_source_otherwise(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, write_bytecode: bool
) -> None:
    """As Python imports a module: a valid cache in ``__pycache__`` is used (shown here by a cache of other code that
    Python still takes as valid: same size and time as the source), a source without one is compiled, and the cache
    is written when bytecode is written; the module knows its file, its cache and its source either way."""
    from plugin_health.loader import importing

    monkeypatch.setattr(importing, "_pycache", {}, raising=False)
    monkeypatch.setattr(sys, "dont_write_bytecode", not write_bytecode)
    cached = _plugin_file(tmp_path / "cached", "old")
    subprocess.run([sys.executable, "-m", "py_compile", str(cached)], check=True)
    stat = cached.stat()
    cached.write_text(cached.read_text().replace("'old'", "'new'"), encoding="utf-8")
    os.utime(cached, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    plain = _plugin_file(tmp_path / "plain", "new")

    module = importing.import_source(PluginSource("speaks", str(cached), path=cached))
    assert module.P.said == "old"  # the cache, as Python's own loader would have read it
    module = importing.import_source(PluginSource("speaks", str(plain), path=plain))
    assert module.P.said == "new"
    assert module.__file__ == str(plain)
    assert getattr(module.__spec__, "origin", None) == str(plain)
    assert module.__cached__ == importlib.util.cache_from_source(str(plain))
    assert "said = 'new'" in inspect.getsource(module.P)
    assert (plain.parent / "__pycache__").exists() is write_bytecode


@pytest.mark.parametrize("package", [False, True])
def test_a_plugin_module_and_its_spec_are_importlib_s_own(tmp_path: Path, package: bool) -> None:
    """The module a plugin runs in, and its spec, are made directly (``importlib`` asks a new module for each attribute
    first, failing each time): they must be what ``spec_from_file_location`` and ``module_from_spec`` make, the same
    attributes with the same values, in the same order."""
    from plugin_health.loader import importing

    path = tmp_path / ("pkg/__init__.py" if package else "speaks.py")
    path.parent.mkdir(exist_ok=True)
    path.write_text("from plugin_health import Plugin\nclass P(Plugin):\n    pass\n", encoding="utf-8")
    search = [str(path.parent)] if package else None
    loader = importing._SourceLoader("_plugin_health_plugins.x", str(path), None)
    ours = importing._file_spec("_plugin_health_plugins.x", loader, str(path), search)
    theirs = importlib.util.spec_from_file_location("_plugin_health_plugins.x", str(path), loader=loader,
                                                    submodule_search_locations=search)
    assert theirs is not None
    theirs.cached = importlib.util.cache_from_source(str(path))
    assert ours == theirs
    assert (ours.parent, ours.has_location, ours.cached, ours.submodule_search_locations) == (
        theirs.parent, theirs.has_location, theirs.cached, theirs.submodule_search_locations)
    module, expected = importing._module_of(ours, loader), importlib.util.module_from_spec(theirs)
    assert list(vars(module)) == list(vars(expected))
    assert {key: value for key, value in vars(module).items() if key != "__spec__"} == {
        key: value for key, value in vars(expected).items() if key != "__spec__"}
    assert module.__spec__ is ours


@pytest.mark.parametrize("source", ["/plugins/speaks.py", "/plugins/pkg/__init__.py", "/a.b/c.d/speaks.tar.py",
                                    "/plugins/no_suffix", "/plugins/.hidden", "relative/speaks.py", "speaks.py",
                                    "/speaks.py", "/plugins//speaks.py", "/plugins/trailing."])
def test_a_plugin_s_cache_path_is_python_s(source: str) -> None:
    from plugin_health.loader.importing import cache_path

    assert cache_path(source) == importlib.util.cache_from_source(source)


def test_a_scan_carries_the_text_it_read_unless_it_is_large(tmp_path: Path) -> None:
    """``scan`` gives the bytes it read with what they declare, so that they can be imported as read; a source
    past ``CARRIED_TEXT`` is left to be read again where it is imported (a runner's request stays small)."""
    small, large = tmp_path / "small.py", tmp_path / "large.py"
    small.write_bytes(b"class P:\n    isolation = 'process'\n")
    large.write_bytes(b"class P:\n    isolation = 'process'\n" + b"#" * CARRIED_TEXT)
    scanned = scan(PluginSource("small", str(small), path=small), ("isolation",))
    assert (scanned.declared, scanned.text) == ({"isolation": "process"}, small.read_bytes())
    scanned = scan(PluginSource("large", str(large), path=large), ("isolation",))
    assert (scanned.declared, scanned.text) == ({"isolation": "process"}, None)
    missing = tmp_path / "gone.py"
    assert scan(PluginSource("gone", str(missing), path=missing), ("isolation",)).text is None


def test_a_declared_version_is_parsed_once_a_short_text_and_a_long_one_is_never_kept() -> None:
    """Versions repeat across plugins and restarts: a short text's ``Version`` is parsed once and shared (it is
    immutable); a long one (a plugin can make it as long as a message allows) is parsed each time and not kept; a
    text that is no version is refused each time."""
    from packaging.version import InvalidVersion

    from plugin_health.errors import InvalidPluginError
    from plugin_health.loader import registry

    first = registry.PluginSpec.from_mapping({"name": "a", "version": "1.2.3"}, "a")
    second = registry.PluginSpec.from_mapping({"name": "b", "version": "1.2.3"}, "b")
    assert first.version is second.version
    assert str(first.version) == "1.2.3"
    long_text = "1.0+" + "a" * 100
    before = registry._short_version.cache_info().currsize
    made = registry.PluginSpec.from_mapping({"name": "c", "version": long_text}, "c")
    assert str(made.version) == long_text
    assert registry._short_version.cache_info().currsize == before
    for _ in range(2):
        with pytest.raises(InvalidPluginError, match="version"):
            registry.PluginSpec.from_mapping({"name": "d", "version": "not a version"}, "d")
    with pytest.raises(InvalidVersion):
        registry._version("not a version")


@pytest.mark.parametrize("package", [False, True])
def test_a_plugin_imported_from_its_location_as_text_is_the_one_imported_from_its_path(
    tmp_path: Path, package: bool
) -> None:
    """A runner passes the source's path as the core sent it (absolute, normalised): the module knows the same
    file, package path and cache as when its ``Path`` is asked."""
    from plugin_health.loader import importing

    path = tmp_path / ("pkg/__init__.py" if package else "speaks.py")
    path.parent.mkdir(exist_ok=True)
    path.write_text("from plugin_health import Plugin\nclass P(Plugin):\n    pass\n", encoding="utf-8")
    source = PluginSource("pkg" if package else "speaks", str(path), path=path)
    modules = [importing.import_source(source), importing.import_source(source, None, os.path.abspath(path))]
    keys = ("__file__", "__cached__", "__path__")
    assert [{key: getattr(module, key, None) for key in keys} for module in modules] == [
        {key: getattr(modules[0], key, None) for key in keys}] * 2
    assert getattr(modules[1], "__path__", None) == ([str(path.parent)] if package else None)
    expected = [module.__name__ if package else module.__name__.rpartition(".")[0] for module in modules]
    assert [module.__package__ for module in modules] == expected  # each under its own free name


def test_a_spec_read_from_a_declaration_is_the_one_its_fields_make() -> None:
    """``PluginSpec.from_mapping`` fills the spec's slots itself (the frozen dataclass's ``__init__`` sets each field
    through ``object.__setattr__``): it makes exactly what the constructor makes, and the spec stays frozen."""
    import dataclasses

    from packaging.requirements import Requirement
    from packaging.version import Version

    from plugin_health.loader.registry import PluginSpec

    read = PluginSpec.from_mapping({"name": "a", "version": "1.0", "requires": ["b>=1"], "critical": True,
                                    "timeout": 5, "memory_limit_mb": 64, "isolation": "process", "tools": ["t"],
                                    "singleton": True}, "a")
    made = PluginSpec(name="a", version=Version("1.0"), requires=(Requirement("b>=1"),), critical=True, timeout=5.0,
                      memory_limit_mb=64, isolation="process", tools=("t",), singleton=True)
    assert read == made
    assert repr(read) == repr(made)
    assert type(read.timeout) is float
    assert PluginSpec.from_mapping({}, "plain") == PluginSpec(name="plain", version=Version("0.0.0"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        read.name = "b"  # type: ignore[misc]
