"""What the gunicorn master imports for its workers before it forks them, and why a gevent worker may inherit it.

The workers are forked from the master, so a module the master has imported is one a worker does not import (each
worker importing the app took 0.3-0.5 s of CPU, five at once while the core loads its plugins). But a gevent worker
patches the standard library only after the fork: a module imported before that which took a blocking function by
name (``from time import sleep``, ``from socket import socket``) keeps the blocking one, and would stall every
connection of its worker. The scan below fails if one of those gets into what the master imports.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

#: Names gevent patches that a module may hold from before the patch, harmless under gevent: a thread lock held
#: for a few instructions and never across a switch (prometheus_client's values, werkzeug's URL map, jinja2's
#: cache), and the thread id (one thread under gevent). Everything else (sockets, sleeping, selecting, processes,
#: queues, ssl, thread-local storage) must be looked up through its module at call time.
HARMLESS = {"threading.Lock", "threading.RLock", "threading._CRLock", "threading.get_ident"}
#: And where: click's context stack, a thread-local only its command line uses (``flask``, ``plugin-health``
#: commands), never a request in a worker; and the thread locks our modules make when imported, each held for a
#: few instructions with nothing that could wait inside (a lock made at import in the master is a thread lock in a
#: gevent worker: one held while its greenlet waits blocks every other greenlet that asks for it, for good).
HARMLESS_WHERE = {
    ("click.globals.local", "threading.local"),
    ("click.globals._local", "threading.local()"),
    ("plugin_health.sandbox.memory._statm_lock", "_thread.LockType()"),  # opens /proc/self/statm (a file, no wait)
    ("plugin_health.sandbox.watchdog._create_lock", "_thread.LockType()"),  # starts a thread; workers never do
    ("plugin_health.loader.importing._lock", "_thread.LockType()"),  # workers import no plugin
    ("plugin_health.diagrams._MAKING", "_thread.LockType()"),  # makes the layout lock (at first use)
    ("plugin_health.api.events.slots._lock", "_thread.LockType()"),  # counts the streams open
}

SCAN = textwrap.dedent("""
    import json, sys, types
    from plugin_health.serving import gunicorn_conf
    gunicorn_conf.import_for_workers(True)
    from gevent import monkey
    monkey.patch_all()
    originals = {}
    for module, names in monkey.saved.items():
        for name, value in names.items():
            if callable(value):
                originals[id(value)] = (f"{module}.{name}", value)
    classes = {id(value): where for where, value in originals.values() if isinstance(value, type)}
    held = []

    def check(where, value):
        original = originals.get(id(value))
        if original is not None and original[1] is value:
            held.append([where, original[0]])  # taken by name: the function or class from before the patch
        elif id(type(value)) in classes:
            held.append([where, classes[id(type(value))] + "()"])  # made from it: an Event, a Queue, a socket

    def defaults(where, function):
        if type(function) in (staticmethod, classmethod):
            function = function.__func__
        if not isinstance(function, types.FunctionType):  # never getattr on anything else: lazy modules import
            return
        for value in function.__defaults__ or ():
            check(f"{where} (a default)", value)
        for key, value in (function.__kwdefaults__ or {}).items():
            check(f"{where} (default of {key})", value)

    for name, module in list(sys.modules.items()):
        path = getattr(module, "__file__", None) or ""
        if name.startswith("gevent") or not ("site-packages" in path or name.startswith("plugin_health")):
            continue
        for attribute, value in list(vars(module).items()):
            where = f"{name}.{attribute}"
            check(where, value)
            defaults(where, value)  # sleep=time.sleep in a signature is bound when the module is imported
            if isinstance(value, type) and value.__module__ == name:
                for member, inner in list(vars(value).items()):
                    defaults(f"{where}.{member}", inner)
            elif name.startswith("plugin_health") and type(value).__module__.startswith("plugin_health"):
                for member, inner in list(getattr(value, "__dict__", {}).items()):  # what our objects hold
                    check(f"{where}.{member}", inner)
    print(json.dumps({"held": held, "modules": sorted(sys.modules)}))
    """)


def scan(env: dict[str, str] | None = None) -> dict[str, list[str]]:
    done = subprocess.run([sys.executable, "-c", SCAN], capture_output=True, text=True, timeout=120, check=False,
                          env=env)
    assert done.returncode == 0, done.stderr
    result: dict[str, list[str]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_the_master_imports_the_app_and_what_a_gevent_worker_patches_with() -> None:
    modules = set(scan()["modules"])
    assert {"plugin_health.app", "plugin_health.api", "plugin_health.api.warm", "flask", "marshmallow",
            "gevent.socket", "gevent.ssl"} <= modules
    # Building the app is each worker's own (its store connections, its threads): never done in the master.
    assert "plugin_health.serving.wsgi" not in modules


def test_nothing_the_master_imports_keeps_a_blocking_call_gevent_would_have_patched() -> None:
    held = [(where, what) for where, what in scan()["held"]
            if what not in HARMLESS and (where, what) not in HARMLESS_WHERE]
    assert held == []


def test_the_scan_sees_a_blocking_call_taken_by_name(tmp_path: Path) -> None:
    """The scan above can fail: a module that took ``time.sleep`` by name before the patch is reported, as is one
    bound as a default argument (of a function or a method), and a primitive made at import (a ``threading.Event``
    whose ``wait`` would block the whole worker)."""
    package = tmp_path / "site-packages"
    package.mkdir()
    (package / "sleepy.py").write_text("import threading, time\nfrom time import sleep\n"
                                       "def wait(pause=time.sleep): pass\n"
                                       "class Napper:\n    def nap(self, *, pause=time.sleep): pass\n"
                                       "woken = threading.Event()\n")
    (package / "sitecustomize.py").write_text("import sleepy\n")
    import os

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(package), *sys.path])}
    held = scan(env)["held"]
    assert ["sleepy.sleep", "time.sleep"] in held
    assert ["sleepy.wait (a default)", "time.sleep"] in held
    assert ["sleepy.Napper.nap (default of pause)", "time.sleep"] in held
    assert ["sleepy.woken", "threading.Event()"] in held


FIRST_REQUEST = textwrap.dedent("""
    import sys
    from gunicorn.config import Config
    from gunicorn.http.parser import RequestParser
    from plugin_health.serving import gunicorn_conf
    cfg = Config()
    if sys.argv[1] == "prepared":
        gunicorn_conf.resolve_for_workers(cfg)
    looked_for = []

    class Recorder:
        @staticmethod
        def find_spec(name, path=None, target=None):
            looked_for.append(name)
            return None

    sys.meta_path.insert(0, Recorder)
    request = next(iter(RequestParser(cfg, [b"GET /v1/plugins/ HTTP/1.1\\r\\nHost: x\\r\\n\\r\\n"], ("127.0.0.1", 1))))
    assert request.path == "/v1/plugins/", request.path
    print(",".join(looked_for))
    """)


def test_a_workers_first_request_looks_for_no_module_once_the_master_resolved_the_parser() -> None:
    """gunicorn picks its HTTP parser at a worker's first request, by trying to import its C parser (absent here: a
    search of every ``sys.path`` entry, 0.2 ms of each fresh worker's first answer, ``bench/scale.py``). The master
    resolves it before it forks, so its workers inherit the choice. (A gunicorn without that check has nothing to
    resolve.)"""
    from gunicorn.http import message

    if not hasattr(message, "_check_fast_parser"):
        pytest.skip("this gunicorn chooses no HTTP parser at a worker's first request")

    def looked_for(mode: str) -> str:
        done = subprocess.run([sys.executable, "-c", FIRST_REQUEST, mode], capture_output=True, text=True,
                              timeout=60, check=False)
        assert done.returncode == 0, done.stderr
        return done.stdout.strip()

    assert looked_for("as-is") != ""  # the test can fail: unprepared, the first request looks for a module
    assert looked_for("prepared") == ""
