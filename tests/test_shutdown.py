"""Shutting down: every plugin stopped (dependents first) within the longest stop timeout plus a second, whatever
plugins do in ``stop`` or leave behind (threads, ignored signals, forked children)."""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path

from plugin_health import create_app
from plugin_health.app import EXTENSION, Service

STUBBORN = textwrap.dedent("""
    import os, signal, threading, time
    from plugin_health import Plugin

    class Stubborn(Plugin):
        timeout = {timeout}
        requires = {requires}

        def start(self):
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            threading.Thread(target=time.sleep, args=(3600,)).start()  # not a daemon: it would hold an exit
            if os.fork() == 0:
                time.sleep(3600)
                os._exit(0)

        def stop(self):
            time.sleep(3600)
""")


def write(directory: Path, name: str, timeout: float, requires: tuple[str, ...] = (),
          isolation: str = "inline") -> None:
    text = STUBBORN.format(timeout=timeout, requires=requires)
    (directory / f"{name}.py").write_text(text + f"    isolation = {isolation!r}\n")


def runners_below(pid: int) -> set[int]:
    """Every live process below ``pid`` that is a runner or came from one (a fork keeps the command line)."""
    return {p for p in descendants(pid) if b"plugin_health.runtime.runner" in _cmdline(p)}


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def descendants(pid: int) -> set[int]:
    """Every live process below ``pid``."""
    table: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if ") Z " not in stat:
                table[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    found, frontier = set(), {pid}
    while frontier:
        frontier = {child for child, parent in table.items() if parent in frontier}
        found |= frontier
    return found


def test_shutdown_ends_within_the_longest_stop_timeout_plus_a_second(tmp_path: Path) -> None:
    write(tmp_path, "base", 0.6)
    write(tmp_path, "middle", 0.4, ("base",), isolation="process")
    write(tmp_path, "top", 0.5, ("middle",))
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "health_interval": 3600})
    service: Service = app.extensions[EXTENSION]
    assert service.host is not None
    assert {s.name: s.state.value for s in service.store.snapshots()} == {
        "base": "RUNNING", "middle": "RUNNING", "top": "RUNNING"}
    groups = {runner.pgid for runner in service.host.runners.runners()}
    assert len(groups) == 2  # the shared runner, and middle's own
    started = time.monotonic()
    service.shutdown()
    elapsed = time.monotonic() - started
    assert elapsed < 0.6 + 1.0, elapsed
    history = {name: service.host.manager.history(name)[-1] for name in ("base", "middle", "top")}
    outcome = {name: (r.dest.value, r.reason) for name, r in history.items()}
    assert outcome == dict.fromkeys(history, ("UNAVAILABLE", "stopped"))
    stopped_at = {name: record.at for name, record in history.items()}
    assert stopped_at["top"] <= stopped_at["middle"] <= stopped_at["base"]  # dependents first
    # Nothing the plugins started outlives the service: runners, their threads, their forked children.
    # Forked children stay in their runner's process group: none of those groups has a live member left.
    deadline = time.monotonic() + 2
    while (members(groups) or runners_below(os.getpid())) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert members(groups) == set()
    assert runners_below(os.getpid()) == set()


def members(groups: set[int]) -> set[int]:
    """Live processes (not zombies) in any of the process ``groups``."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if fields[0] != "Z" and int(fields[2]) in groups:
                found.add(int(entry.name))
    return found
