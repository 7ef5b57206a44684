"""A gevent worker's ``monkey.patch_all()`` (post_fork) reads the installed packages' entry points once, not once
an event: gevent looks up its plugins for each of 25 events, and each look-up read every installed package's
metadata again (0.13 CPU s of a worker's 0.16 s patch, five workers at once while the core loads its plugins)."""

from __future__ import annotations

import importlib.metadata
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from plugin_health.serving.patching import entry_points_read_once


def test_entry_points_are_read_once_in_the_block_and_answer_as_before(monkeypatch: pytest.MonkeyPatch) -> None:
    reads: list[None] = []
    distributions = importlib.metadata.distributions

    def counted(**params: object) -> object:
        reads.append(None)
        return distributions(**params)  # type: ignore[arg-type]

    original = importlib.metadata.entry_points
    expected = {group: sorted(original().select(group=group).names)
                for group in ("console_scripts", "gevent.plugins.monkey.will_patch_all", "pytest11")}
    monkeypatch.setattr(importlib.metadata, "distributions", counted)
    with entry_points_read_once():
        answers = {group: sorted(importlib.metadata.entry_points(group=group).names)
                   for group in expected for _ in range(25)}
    assert len(reads) == 1
    assert answers == expected
    assert expected["console_scripts"]  # the comparison compares something
    assert importlib.metadata.entry_points is original


def test_the_original_is_back_after_an_error() -> None:
    original = importlib.metadata.entry_points
    with pytest.raises(ZeroDivisionError), entry_points_read_once():
        1 / 0  # noqa: B018
    assert importlib.metadata.entry_points is original


def test_a_gevent_plugin_still_hears_the_patch(tmp_path: Path) -> None:
    """A package that subscribes to gevent's patch events through an entry point is called as it was."""
    (tmp_path / "heard.py").write_text(textwrap.dedent(f"""
        def subscriber(event):
            with open({str(tmp_path / 'heard.txt')!r}, 'a') as out:
                out.write(type(event).__name__ + '\\n')
    """))
    info = tmp_path / "heard-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: heard\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        "[gevent.plugins.monkey.will_patch_all]\nheard = heard:subscriber\n"
        "[gevent.plugins.monkey.did_patch_all]\nheard = heard:subscriber\n")
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from gevent import monkey
        from plugin_health.serving.patching import entry_points_read_once
        with entry_points_read_once():
            monkey.patch_all()
    """)
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert (tmp_path / "heard.txt").read_text().split() == ["GeventWillPatchAllEvent", "GeventDidPatchAllEvent"]


def test_a_worker_walks_none_of_what_the_master_imported_for_it(tmp_path: Path) -> None:
    """The master freezes what it imported for its workers before it forks the first (``when_ready``): a gevent
    worker's ``patch_all`` walks every object the collector tracks to find locks to fix (a walk of the master's
    imports: a third of a worker's boot), and the worker's own full collections would walk them again (and copy
    the master's pages as they touch them). And it reads the entry points for them once: a worker reads none."""
    code = textwrap.dedent("""
        import gc, importlib.metadata, json, os, sys, types
        from plugin_health.serving import gunicorn_conf
        from plugin_health.serving.patching import entry_points_read_once
        gunicorn_conf.import_for_workers(True)
        gunicorn_conf.when_ready(types.SimpleNamespace())
        walked, reads = [], []
        get_objects, distributions = gc.get_objects, importlib.metadata.distributions
        gc.get_objects = lambda *args: (walked.append(len(found := get_objects(*args))), found)[1]
        importlib.metadata.distributions = lambda **params: (reads.append(1), distributions(**params))[1]
        pid = os.fork()
        if pid == 0:
            from gevent import monkey
            with entry_points_read_once():
                monkey.patch_all()
            print(json.dumps({"walks": walked, "reads": len(reads),
                              "tracked": len(get_objects()) + gc.get_freeze_count()}), flush=True)
            os._exit(0)
        os.waitpid(pid, 0)
    """)
    env = {"PATH": "/usr/bin:/bin", "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-c", code], check=True, timeout=60, env=env, capture_output=True,
                         text=True).stdout
    seen = json.loads(out)
    assert seen["walks"], "gevent walked nothing: the test measures nothing"
    assert max(seen["walks"]) < seen["tracked"] // 20  # the worker's own objects: the master's are frozen
    assert seen["reads"] == 0
