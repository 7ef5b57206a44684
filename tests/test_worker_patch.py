"""A gevent worker's ``monkey.patch_all()`` (post_fork) reads the installed packages' entry points once, not once
an event: gevent looks up its plugins for each of 25 events, and each look-up read every installed package's
metadata again (0.13 CPU s of a worker's 0.16 s patch, five workers at once while the core loads its plugins)."""

from __future__ import annotations

import importlib.metadata
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
