"""Slow-client benchmark: ``/readyz`` latency with no slow connections and with 1,000 of them open.

Run from the repository root, in the project's venv::

    python bench/slow.py [--quick]

It takes about 1 minute (``--quick``: about 30 s). It writes 100 trivial plugins into a temporary directory and
starts two gunicorn servers on free ports of 127.0.0.1, both ``gunicorn -c gunicorn.conf.py``, each with a plugin
host of its own: the service as configured (gevent workers) and the same with ``-k gthread`` (the worker class
before gevent, 4 threads a worker). For each server in turn it asks ``GET /readyz`` on a fresh connection every
20 ms for 10 s (``--quick``: 4 s), each probe waiting at most 2 s (one that gets no answer counts as 2 s and is
counted as timed out), first with no other client, then while 1,000 slow connections are open: each one sends
one more byte of a request head that never ends every 0.5 s (a connection the server drops is opened again
within 0.5 s, so about 1,000 stay open; those reopened are counted). It prints the median, the 99th percentile
and the largest probe latency, and each p99 as a ratio to the p99 of the same server with no slow connection.
Both servers are stopped (SIGTERM to the master, then SIGKILL of its process group) however the run ends.

Like ``bench/http.py``, it runs with ``bench/`` first on ``sys.path`` (where ``http`` is ``bench/http.py``), so it
speaks HTTP over plain sockets (``_serve.fetch``) and never imports ``plugin_health``.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import resource
import selectors
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from _serve import Server, base_env, describe, fetch, fmt_time, gunicorn_settings, servers_stopped, write_plugins

PLUGINS = 100
SLOW = 1000  # slow connections held open
DRIBBLE_EVERY = 0.5  # seconds between two bytes of each slow connection
PROBE_EVERY = 0.02
PROBE_TIMEOUT = 2.0
PROBE_FOR, QUICK_PROBE_FOR = 10.0, 4.0
SETTLE = 1.0  # seconds between opening the slow connections and the first probe
LABEL = 52
HEAD = b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Dribble: " + b"a" * 1000  # never finished


class Dribblers:
    """``count`` connections that each send one more byte of an unfinished request head every ``every`` seconds,
    on a thread; a connection the server closes is opened again."""

    def __init__(self, port: int, count: int, every: float = DRIBBLE_EVERY) -> None:
        self.port, self.count, self.every = port, count, every
        self.selector = selectors.DefaultSelector()
        self.sent: dict[socket.socket, int] = {}
        self.reopened = 0
        self.failed: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="dribblers", daemon=True)

    def _open(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        with contextlib.suppress(BlockingIOError):
            sock.connect(("127.0.0.1", self.port))  # completes in the kernel's backlog whatever the workers do
        self.selector.register(sock, selectors.EVENT_READ)
        self.sent[sock] = 0

    def _reopen(self, sock: socket.socket) -> None:
        self.selector.unregister(sock)
        del self.sent[sock]
        sock.close()
        self._open()
        self.reopened += 1

    def __enter__(self) -> Dribblers:
        try:
            for _ in range(self.count):
                self._open()
            self._thread.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _run(self) -> None:
        try:
            while not self._stop.wait(self.every):
                for key, _ in self.selector.select(0):  # readable: the server closed it (or answered)
                    self._reopen(key.fileobj)  # type: ignore[arg-type]
                for sock, sent in list(self.sent.items()):
                    try:
                        sock.send(HEAD[sent % len(HEAD):][:1])
                        self.sent[sock] = sent + 1
                    except (BlockingIOError, InterruptedError):
                        pass  # not connected yet: the next round
                    except OSError:
                        self._reopen(sock)
        except BaseException as err:  # noqa: BLE001 - reported by the benchmark, not lost on a thread
            self.failed = err

    def close(self) -> None:
        """Stop dribbling and close every connection."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(10.0)
        for sock in list(self.sent):
            sock.close()
        self.sent.clear()
        self.selector.close()


@dataclass(frozen=True)
class Probes:
    """What the probes of one phase measured (seconds)."""

    latencies: list[float]
    timeouts: int
    bad: int  # answers other than 200

    def percentile(self, p: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * p))]


def probe(port: int, duration: float) -> Probes:
    """``GET /readyz`` on a fresh connection every ``PROBE_EVERY`` seconds for ``duration`` seconds."""
    latencies, timeouts, bad = [], 0, 0
    end = time.monotonic() + duration
    while time.monotonic() < end:
        began = time.monotonic()
        try:
            if fetch(port, "/readyz", timeout=PROBE_TIMEOUT).status != 200:
                bad += 1
        except OSError:  # a timeout, or a connection refused or reset
            timeouts += 1
        latencies.append(min(time.monotonic() - began, PROBE_TIMEOUT))
        time.sleep(max(0.0, PROBE_EVERY - (time.monotonic() - began)))
    return Probes(latencies, timeouts, bad)


def raise_open_files(needed: int) -> None:
    """Let this process hold ``needed`` descriptors if the hard limit allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (needed if hard == resource.RLIM_INFINITY else min(needed, hard),
                                                    hard))


def row(label: str, probes: Probes, baseline: Probes, note: str = "") -> str:
    p50, p99, top = probes.percentile(0.5), probes.percentile(0.99), max(probes.latencies)
    ratio = p99 / baseline.percentile(0.99)
    return (f"  {label:<{LABEL}}{fmt_time(p50):>10}{fmt_time(p99):>11}{fmt_time(top):>11}{ratio:>9.2f}  {note}"
            ).rstrip()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help=f"probe for {QUICK_PROBE_FOR:g} s a phase")
    duration = QUICK_PROBE_FOR if parser.parse_args().quick else PROBE_FOR
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the servers on SIGTERM too
    raise_open_files(SLOW + 256)
    servers: list[Server] = []
    measured: list[tuple[str, Probes, Probes, Dribblers]] = []
    with tempfile.TemporaryDirectory(prefix="bench-slow-") as tmp, servers_stopped(servers):
        work = Path(tmp)
        write_plugins(work / "plugins", PLUGINS)
        env = {**base_env(), "PLUGIN_HEALTH_PLUGIN_PATH": str(work / "plugins"),
               "PLUGIN_HEALTH_HEALTH_INTERVAL": "3600"}
        conf = gunicorn_settings(env)
        kinds = [(str(conf["worker_class"]), []), ("gthread", ["-k", "gthread"])]
        for kind, args in kinds:
            server = Server(kind, "wsgi:app", {**env, "PLUGIN_HEALTH_RUN_DIR": str(work / f"run-{kind}")},
                            work / f"{kind}.log", args=args)
            servers.append(server)
            server.start()
            server.wait_for_workers(int(str(conf["workers"])))
        for server in servers:
            quiet = probe(server.port, duration)
            with Dribblers(server.port, SLOW) as slow:
                time.sleep(SETTLE)
                loaded = probe(server.port, duration)
                if slow.failed is not None:
                    raise RuntimeError(f"the slow clients failed: {slow.failed!r}")
            measured.append((server.label, quiet, loaded, slow))
            time.sleep(1.0)  # the server drops what is left of them

    print(f"Python {sys.version.split()[0]}, {os.cpu_count()} CPUs, {PLUGINS} plugins")
    print(f"gunicorn -c gunicorn.conf.py: {describe(conf)}; and the same with -k gthread")
    print(f"GET /readyz on a fresh connection every {PROBE_EVERY * 1e3:.0f} ms for {duration:g} s a phase, each waiting"
          f" at most {PROBE_TIMEOUT:g} s;")
    print(f"slow connections: {SLOW:,} open, each sending one byte of an endless request head every"
          f" {DRIBBLE_EVERY:g} s; ratio = p99 / p99 with none")
    print(f"\n/readyz latency\n  {'':<{LABEL}}{'p50':>10}{'p99':>11}{'max':>11}{'ratio':>9}")
    for label, quiet, loaded, slow in measured:
        print(row(f"{label} workers, no slow connection (baseline)", quiet, quiet, f"{len(quiet.latencies)} probes"))
        failures = [f"{loaded.timeouts} timed out" if loaded.timeouts else "",
                    f"{loaded.bad} not 200" if loaded.bad else ""]
        note = ", ".join([f"{len(loaded.latencies)} probes", *filter(None, failures),
                          f"{slow.reopened:,} slow connections dropped by the server and opened again"])
        print(row(f"{label} workers, {SLOW:,} slow connections open", loaded, quiet, note))


if __name__ == "__main__":
    main()
