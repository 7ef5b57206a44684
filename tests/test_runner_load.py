"""A runner's ``load``, in process: the answer of each outcome, and the phase a failure is blamed on.

``Runner.load`` runs import, class lookup and declaration, then instantiation, each sandboxed; whatever stops one
of them (its exception, the sandbox's timeout or memory guard) must be reported with the phase that was running,
and the answer must be the same plain dict whatever the runner does inside. Driven on the test's main thread, as
a runner's own requests are (the timer is ``SIGALRM``, the memory guard a lowered ``RLIMIT_DATA``).
"""

from __future__ import annotations

import json
import select
import socket
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plugin_health.runtime import runner as runner_module
from plugin_health.runtime import wire
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
    monkeypatch.setattr(runner_module.memory, "cap_process", lambda *limits: None)  # never cap the test's process
    ours, theirs = socket.socketpair()
    with ours, theirs:
        made = Runner(theirs, 1 << 20)
        made.core_end = ours  # type: ignore[attr-defined]
        yield made


@pytest.fixture
def plugin_class_kept() -> Iterator[None]:
    """``Plugin`` as it was, after a test whose plugin changes it (a runner's plugins share it, as here the test's)."""
    from plugin_health.plugin import Plugin

    before = dict(vars(Plugin))
    yield
    for name in set(vars(Plugin)) - set(before):
        delattr(Plugin, name)
    for name, value in before.items():
        if vars(Plugin).get(name) is not value:
            setattr(Plugin, name, value)


def load(runner: Runner, tmp_path: Path, code: str, name: str = "plugin", **extra: Any) -> dict[str, Any]:
    path = tmp_path / f"{name}.py"
    path.write_text(textwrap.dedent(code))
    return runner.load({"op": "load", "slot": 1, "timeout": TIMEOUT, "memory_limit_mb": 64, "id": 7,
                        "source": {"name": name, "origin": str(path), "path": str(path), "entry_point": None},
                        **extra})


def sent(runner: Runner) -> list[dict[str, Any]]:
    """The frames the runner sent the core so far (answers before the request's last, which ``handle`` returns)."""
    core_end: socket.socket = runner.core_end  # type: ignore[attr-defined]
    core_end.setblocking(False)
    reader, frames = wire.FrameReader(core_end, 1 << 20), []

    def wait() -> None:
        if not select.select([core_end], [], [], 0)[0]:
            raise BlockingIOError  # nothing more was sent

    while True:
        try:
            frames.append(reader.read(wait, more=True))
        except (BlockingIOError, wire.WireError):
            return frames


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


PLAIN = """
    from pathlib import Path
    from plugin_health import Plugin

    class P(Plugin):
        version = "1.2"

        def initialize(self, context):
            Path(context.config["log"]).write_text(f"initialize {{context.name}}\\n")
            return {initialized!r}

        def start(self):
            with open(Path(__file__).with_suffix(".log"), "a") as log:
                log.write("start\\n")
"""
UP = {"config": {}, "timeout": 5.0}


def test_a_plain_plugin_is_loaded_initialized_and_started_in_one_request(runner: Runner, tmp_path: Path) -> None:
    """``up`` on a load: the load's answer is sent as soon as the plugin is loaded (the core's deadline for the next
    phase starts there), then the initialize's; the start's is the request's last answer."""
    log = tmp_path / "plugin.log"
    last = load(runner, tmp_path, PLAIN.format(initialized=None), up={**UP, "config": {"log": str(log)}})
    loaded, initialized = sent(runner)
    assert (loaded["ok"], loaded["up"], loaded["result"]["name"]) == (True, True, "plugin")
    assert (initialized["ok"], initialized["method"], initialized["result"]) == (True, "initialize", None)
    assert loaded["id"] == initialized["id"] == 7
    assert (last["ok"], last["method"], last["result_json"]) == (True, "start", "null")
    assert log.read_text() == "initialize plugin\nstart\n"


@pytest.mark.parametrize("initialized", [False, "oops"], ids=["false", "another-value"])
def test_an_initialize_that_returns_false_ends_the_request_and_start_never_runs(
    runner: Runner, tmp_path: Path, initialized: object
) -> None:
    log = tmp_path / "plugin.log"
    last = load(runner, tmp_path, PLAIN.format(initialized=initialized), up={**UP, "config": {"log": str(log)}})
    frames = sent(runner)
    if initialized is False:
        assert ([frame["method"] for frame in frames[1:]], last["method"]) == ([], "initialize")
        assert last["result_json"] == "false"
        assert log.read_text() == "initialize plugin\n"
    else:  # any other value is a pass, as the core judges it
        assert last["method"] == "start"
        assert log.read_text() == "initialize plugin\nstart\n"


def test_an_initialize_that_raises_ends_the_request(runner: Runner, tmp_path: Path) -> None:
    code = "from plugin_health import Plugin\nclass P(Plugin):\n    def initialize(self, context):\n" \
           "        raise KeyError('setting')\n"
    last = load(runner, tmp_path, code, up=UP)
    assert [frame.get("up") for frame in sent(runner)] == [True]
    assert (last["ok"], last["method"], last["error_type"]) == (False, "initialize", "KeyError")


@pytest.mark.parametrize("declares", [
    "requires = ('other',)", "name = 'another'", "isolation = 'process'", "singleton = True", "version = '1.0rc1'",
    "timeout = 30", "critical = 1", "memory_limit_mb = 64.5",
], ids=["requires", "other-name", "process", "singleton", "pre-release", "longer-timeout", "odd-critical",
        "fractional-memory"])
def test_a_plugin_that_may_not_come_up_early_is_only_loaded(runner: Runner, tmp_path: Path, declares: str) -> None:
    """Only a plugin that surely passes the core's checks and needs nothing of another comes up with its load:
    the others come up as the core decides, one phase at a time."""
    code = f"from plugin_health import Plugin\nclass P(Plugin):\n    {declares}\n" \
           "    def initialize(self, context):\n        raise AssertionError('ran')\n"
    answer = load(runner, tmp_path, code, up=UP)
    assert (answer["ok"], "up" in answer, "method" in answer) == (True, False, False)
    assert sent(runner) == []


def test_a_plugin_brought_up_with_its_load_is_checked_once_when_asked(runner: Runner, tmp_path: Path) -> None:
    code = "from plugin_health import HealthResult, Plugin\nclass P(Plugin):\n    def health_check(self):\n" \
           "        return HealthResult(status='warn', output='slow disk')\n"
    last = load(runner, tmp_path, code, up={**UP, "check": True})
    (loaded,) = sent(runner)  # the inherited initialize and start ride in the load's frame, as their names
    assert loaded["then"] == ["initialize", "start"]
    assert (last["ok"], last["method"], last[runner_module.HEALTH_RESULT]) == (True, "health_check", True)
    assert json.loads(last["result_json"])["status"] == "warn"


TRIVIAL = "from plugin_health import Plugin\nclass P(Plugin):\n    pass\n"


def test_a_plugin_that_overrides_no_lifecycle_method_comes_up_in_one_frame(runner: Runner, tmp_path: Path) -> None:
    """``Plugin``'s own ``initialize``, ``start`` and ``health_check`` are no-ops whose outcome is known: answered
    without a sandboxed call, and since no plugin code runs between its answers, they ride in the load's frame (its
    ``then``, each as its method's name: the core knows the outcome), written once the request is answered
    (``serve`` flushes before it reads the next request)."""
    last = load(runner, tmp_path, TRIVIAL, up={**UP, "check": True})
    assert sent(runner) == []  # nothing written yet: no plugin code ran since the load's answer
    runner._send(last, 7)
    runner.flush()
    (loaded,) = sent(runner)
    assert (loaded["ok"], loaded["up"], loaded["id"], loaded["result"]["name"]) == (True, True, 7, "plugin")
    assert loaded["then"] == ["initialize", "start", "health_check"]


def test_a_plugin_not_checked_with_its_load_has_two_answers_riding(runner: Runner, tmp_path: Path) -> None:
    last = load(runner, tmp_path, TRIVIAL, up=UP)
    runner._send(last, 7)
    runner.flush()
    (loaded,) = sent(runner)
    assert loaded["then"] == ["initialize", "start"]


def test_the_answers_before_a_phase_that_runs_plugin_code_are_written_before_it_runs(
    runner: Runner, tmp_path: Path
) -> None:
    """A plugin that overrides only ``start``: its load's and its (inherited) initialize's answers are with the core
    before ``start`` runs, so a ``start`` that brings the runner down is blamed on ``start``."""
    core_end = runner.core_end.fileno()  # type: ignore[attr-defined]
    code = ("import select\nfrom plugin_health import Plugin\nclass P(Plugin):\n    def start(self):\n"
            f"        raise RuntimeError(str(len(select.select([{core_end}], [], [], 0)[0])))\n")
    last = load(runner, tmp_path, code, up=UP)
    # start saw the core's end readable: the two answers before it had been written
    assert (last["ok"], last["method"], last["error_type"], last["error"]) == (False, "start", "RuntimeError", "1")
    (loaded,) = sent(runner)
    assert loaded["then"] == ["initialize"]


@pytest.mark.parametrize("code", [
    # Plugin's own method replaced, by the plugin, in the runner it shares
    "from plugin_health import Plugin\nPlugin.initialize = lambda self, context: 1 / 0\nclass P(Plugin):\n    pass\n",
    # an instance attribute shadows the class's method
    "from plugin_health import Plugin\nclass P(Plugin):\n    def __init__(self):\n"
    "        self.initialize = lambda context: 1 / 0\n",
    # every attribute read is plugin code
    "from plugin_health import Plugin\nclass P(Plugin):\n    def __getattribute__(self, name):\n"
    "        if name == 'initialize':\n            return lambda context: 1 / 0\n"
    "        return object.__getattribute__(self, name)\n",
    # a mixin before Plugin defines it
    "from plugin_health import Plugin\nclass M:\n    def initialize(self, context):\n        1 / 0\n"
    "class P(M, Plugin):\n    pass\n",
], ids=["base-replaced", "instance-attribute", "getattribute", "mixin"])
@pytest.mark.usefixtures("plugin_class_kept")
def test_an_initialize_found_any_other_way_is_called(runner: Runner, tmp_path: Path, code: str) -> None:
    last = load(runner, tmp_path, code, up=UP)
    assert (last["ok"], last["method"], last["error_type"]) == (False, "initialize", "ZeroDivisionError")


def test_an_inherited_health_check_called_later_is_answered_as_plugin_health_s_own(
    runner: Runner, tmp_path: Path
) -> None:
    assert load(runner, tmp_path, TRIVIAL)["ok"]
    answer = runner.call({"op": "call", "slot": 1, "method": "health_check", "id": 8})
    assert (answer["ok"], answer["result_json"], answer["duration_ms"]) == (True, "true", 0.0)
    # arguments the method does not take are not answered for it: it is called, and fails as it would
    answer = runner.call({"op": "call", "slot": 1, "method": "health_check", "args": [1], "id": 9})
    assert (answer["ok"], answer["error_type"]) == (False, "TypeError")


def test_a_class_whose_instances_need_no_plugin_code_is_instantiated_outside_a_sandbox(
    runner: Runner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A plugin class with no ``__init__`` or ``__new__`` of its own (nor any class it derives from but ``object``)
    and no metaclass is made as ``object`` makes it: no plugin code runs, so no sandbox is armed for it."""
    armed: list[object] = []

    class Counting(runner_module.Sandbox):
        def run(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
            armed.append(fn)
            return super().run(fn, *args, **kwargs)

    monkeypatch.setattr(runner_module, "Sandbox", Counting)
    assert load(runner, tmp_path, TRIVIAL)["ok"]
    assert armed == [runner_module._declare]
    assert type(runner.loaded[1].instance).__name__ == "P"


@pytest.mark.parametrize("code", [
    "from plugin_health import Plugin\nclass P(Plugin):\n    def __new__(cls):\n        raise KeyError('new')\n",
    "from plugin_health import Plugin\nclass M:\n    def __init__(self):\n        raise KeyError('mixin')\n"
    "class P(M, Plugin):\n    pass\n",
    "from plugin_health import Plugin\ndef init(self):\n    raise KeyError('replaced')\nPlugin.__init__ = init\n"
    "class P(Plugin):\n    pass\n",
    "from plugin_health import Plugin\nclass Meta(type):\n    def __call__(cls):\n        raise KeyError('meta')\n"
    "class P(Plugin, metaclass=Meta):\n    pass\n",
], ids=["new", "mixin-init", "base-init-replaced", "metaclass-call"])
@pytest.mark.usefixtures("plugin_class_kept")
def test_a_class_made_any_other_way_is_instantiated_in_its_sandbox(runner: Runner, tmp_path: Path, code: str) -> None:
    ok, phase, error_type, _ = failure(load(runner, tmp_path, code))
    assert (ok, phase, error_type) == (False, "instantiation", "KeyError")


def test_a_load_with_the_source_s_text_imports_that_text_not_the_file(runner: Runner, tmp_path: Path) -> None:
    """The core sends the bytes it read to decide where the plugin runs: those are imported, the file is not read
    (it may have changed since), and the module still knows its file."""
    path = tmp_path / "plugin.py"
    path.write_text("raise RuntimeError('the file as it is now')\n")
    text = b"from plugin_health import Plugin\nclass P(Plugin):\n    version = '2.0'\n    where = __file__\n"
    answer = runner.load({"op": "load", "slot": 1, "timeout": TIMEOUT, "memory_limit_mb": 64, "id": 7,
                          "source": {"name": "plugin", "origin": str(path), "path": str(path), "entry_point": None,
                                     "text": text}})
    assert (answer["ok"], answer["result"]["version"]) == (True, "2.0")
    assert type(runner.loaded[1].instance).where == str(path)


# --- compiling ahead --------------------------------------------------------------------------------------------

AHEAD_SOURCE = "from plugin_health import Plugin\nclass P(Plugin):\n    version = '{n}.0'\n    where = __file__\n"


def ahead(tmp_path: Path, n: int, text: bytes | None = None, **extra: Any) -> dict[str, Any]:
    """A load request as the core streams it: with the source's text, marked to be compiled ahead."""
    path = tmp_path / f"p{n}.py"
    path.write_text("raise RuntimeError('the file, not the text')\n")
    return {"op": "load", "slot": n + 1, "timeout": TIMEOUT, "memory_limit_mb": 64, "id": 100 + n, "ahead": True,
            "source": {"name": f"p{n}", "origin": str(path), "path": str(path), "entry_point": None,
                       "text": AHEAD_SOURCE.format(n=n).encode() if text is None else text}, **extra}


@pytest.fixture
def compiled(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The paths the runner compiles ahead, in order."""
    seen: list[str] = []
    real = runner_module._compile

    def counting(text: bytes, path: str, mode: str, **options: Any) -> Any:
        seen.append(path)
        return real(text, path, mode, **options)

    monkeypatch.setattr(runner_module, "_compile", counting)
    return seen


def test_loads_taken_together_are_compiled_ahead_between_two_markers_and_imported_as_compiled(
    runner: Runner, tmp_path: Path, compiled: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The core's loads that arrived together are compiled one after another before the first one's plugin code runs
    (the compiler stays warm: a fifth of a runner's load of a small plugin), between two frames that tell the core so:
    a runner lost between them was lost compiling, not in a plugin's code. Each load then imports its code as
    compiled: nothing is compiled again, and the module is the one a load not compiled ahead makes."""
    from plugin_health.loader import importing

    requests = [ahead(tmp_path, n) for n in range(3)]
    runner.compile_ahead(requests)
    assert sent(runner) == [{"compiling": 100}, {"compiled": 100}]
    assert compiled == [request["source"]["path"] for request in requests]

    def compiling_again(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("compiled again")

    monkeypatch.setattr(importing._SourceLoader, "source_to_code", compiling_again)
    answers = [runner.load(request) for request in requests]
    assert [(answer["ok"], answer["result"]["version"]) for answer in answers] == [(True, "0.0"), (True, "1.0"),
                                                                                   (True, "2.0")]
    assert [type(runner.loaded[n + 1].instance).where for n in range(3)] == [str(tmp_path / f"p{n}.py")
                                                                          for n in range(3)]


@pytest.mark.parametrize("text", [b"class P(:\n", b"x = 1\0\n", b"(" * 300 + b")" * 300 + b"\n"],
                         ids=["syntax-error", "null-byte", "too-nested"])
def test_a_source_that_does_not_compile_ahead_fails_its_import_as_it_always_did(
    runner: Runner, tmp_path: Path, text: bytes
) -> None:
    """What cannot compile is left to its own import, which fails the load at ``import``, in its sandbox, exactly as
    a load not compiled ahead fails; the loads around it are compiled ahead and load."""
    alone = runner.load({key: value for key, value in ahead(tmp_path, 1, text).items() if key != "ahead"})
    requests = [ahead(tmp_path, 0), ahead(tmp_path, 1, text), ahead(tmp_path, 2)]
    runner.compile_ahead(requests)
    first, failed, last = (runner.load(request) for request in requests)
    assert failure(failed) == failure(alone)
    assert failure(failed)[:2] == (False, "import")
    assert (first["ok"], last["ok"]) == (True, True)


@pytest.mark.parametrize("group", [
    "one-load", "first-not-a-load", "first-not-marked", "first-without-text", "first-text-too-long", "id-not-int",
])
def test_nothing_is_compiled_ahead_unless_the_first_of_several_loads_may_be(
    runner: Runner, tmp_path: Path, compiled: list[str], group: str
) -> None:
    """Only a group whose first request is a load marked ``ahead`` (the core awaits the markers only there), with a
    text of at most ``wire.AHEAD_TEXT`` bytes, and with more loads after it, is compiled ahead; a marked load after an
    unmarked first one is compiled as it is imported."""
    requests = [ahead(tmp_path, n) for n in range(3)]
    first = requests[0]
    if group == "one-load":
        del requests[1:]
    elif group == "first-not-a-load":
        requests.insert(0, {"op": "drop", "slot": 99, "id": 5})
    elif group == "first-not-marked":
        del first["ahead"]
    elif group == "first-without-text":
        del first["source"]["text"]
    elif group == "first-text-too-long":
        first["source"]["text"] = AHEAD_SOURCE.format(n=0).encode() + b"#" * wire.AHEAD_TEXT
    else:
        first["id"] = "100"
    runner.compile_ahead(requests)
    assert (sent(runner), compiled) == ([], [])


def test_compiling_ahead_stops_once_its_time_is_spent(
    runner: Runner, tmp_path: Path, compiled: list[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Compiling ahead takes the first load's time (the core holds it to its deadline): it stops after the compile
    that spends ``AHEAD_SECONDS``; the rest compile as they are imported, and every load loads."""
    monkeypatch.setattr(runner_module, "AHEAD_SECONDS", 0.0)
    requests = [ahead(tmp_path, n) for n in range(3)]
    runner.compile_ahead(requests)
    assert sent(runner) == [{"compiling": 100}, {"compiled": 100}]
    assert compiled == [requests[0]["source"]["path"]]
    assert [runner.load(request)["ok"] for request in requests] == [True, True, True]


TWO_CLASSES = "from plugin_health import Plugin\nclass A(Plugin): pass\nclass B(Plugin): pass"


@pytest.mark.parametrize("package", [False, True])
@pytest.mark.parametrize("body", ["x = 1", TWO_CLASSES], ids=["none", "two"])
def test_a_class_lookup_that_fails_names_the_source_as_the_core_does(
    runner: Runner, tmp_path: Path, package: bool, body: str,
) -> None:
    """The runner is sent a source's path as text, and names the source in a failed class lookup as the core names it
    (``PluginSource.label``: the file's name, or the package's with a slash), never by its path."""
    from plugin_health.loader.sources import PluginSource

    path = tmp_path / ("shelf" if package else "") / ("__init__.py" if package else "lonely.py")
    path.parent.mkdir(exist_ok=True)
    path.write_text(body)
    answer = runner.load({"op": "load", "slot": 1, "timeout": TIMEOUT, "memory_limit_mb": 64, "id": 7,
                          "source": {"name": "lonely", "origin": str(path), "path": str(path), "entry_point": None}})
    label = PluginSource("lonely", str(path), path).label
    assert label == ("shelf/" if package else "lonely.py")
    assert (answer["ok"], answer["phase"]) == (False, "class lookup")
    assert repr(label) in answer["error"]
    assert str(tmp_path) not in answer["error"]


@pytest.mark.parametrize(("path", "label"), [
    ("/a/b/p.py", "p.py"), ("/a/pkg/__init__.py", "pkg/"), ("/__init__.py", "/"), ("/p.py", "p.py"),
    ("/a/b.c/x.y.py", "x.y.py"), ("rel/p.py", "p.py"), ("rel/pkg/__init__.py", "pkg/"),
])
def test_a_source_is_labelled_by_its_file_or_package_name_from_its_path_as_text_or_as_a_path(
    path: str, label: str, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """One label, whether the path is text (a runner's) or a ``Path`` (the core's); never the path itself, even once a
    plugin in the runner has replaced the standard library's separator."""
    from plugin_health.loader.sources import PluginSource, label_of

    assert label_of(path) == label
    assert PluginSource("p", path, Path(path)).label == label
    monkeypatch.setattr("os.sep", "|")
    assert label_of(path) == label


def test_a_package_imported_from_its_path_as_text_stays_a_package_once_a_plugin_replaced_the_separator(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A runner imports a source from the core's path text, and tells a package by that text: a plugin before it in
    the shared runner that replaced ``os.sep`` must not turn the next package into a plain module, whose relative
    imports then fail (the same separator ``label_of`` reads, bound before any plugin ran)."""
    import os

    from plugin_health.loader.importing import import_source
    from plugin_health.loader.sources import PluginSource

    package = tmp_path / "pk"
    package.mkdir()
    (package / "helper.py").write_text("VALUE = 7\n")
    (package / "__init__.py").write_text(
        "from .helper import VALUE\nfrom plugin_health import Plugin\nclass P(Plugin):\n    value = VALUE\n")
    monkeypatch.setattr("os.sep", "|")
    module = import_source(PluginSource("pk", str(package)), location=os.path.abspath(package / "__init__.py"))
    assert module.P.value == 7
