"""Chaos and load: three plugin-health instances on one Redis, under fire, losing nothing.

Three service instances (``i1``, ``i2``, ``i3``; each a real gunicorn with 2 workers and its core, ``max_requests``
low so workers recycle under load, its own run directory) share one real ``redis-server``; ``i3`` reaches it
through a :class:`TcpProxy` that can cut it off. Each instance hosts its own plugins: they fail and recover on a
schedule (with a dependent), a tool crashes its process now and then, a tool passes its timeout, a critical plugin
stays steady, a toggle takes operator actions, and a singleton runs on one instance at a time, appending a tick
with its fencing token every 20 ms to a file of its runner's (its runs, so that overlaps can be counted).

A bounded load (``--requests`` at ``--concurrency``, round-robin over the instances that are up) goes over
loopback to the read routes, conditional reads, probes, metrics, the cluster view, tool calls (the singleton's
included) and operator actions (on this instance, on another one, on all), while a timeline runs: ``i3`` is cut
off from Redis for 3 s, then Redis is restarted empty on the same port, then the instance that runs the singleton
is killed with ``SIGKILL`` (its master and its core) and started again with the same id and run directory. Each
event waits for its share of the load (a later share is held until the event is over), and no request goes to an
instance while it is deliberately down.

Then the plugins calm down and the copies settle, and the report says: requests sent and answered, unexpected
status codes (0), connection errors (0), transitions recorded in each instance's SQLite against their copies in
Redis (lost 0, duplicated 0, same order), the singleton's runs, moves, overlaps (0) and fencing tokens that did
not grow (0), where it runs at the end (one instance; the others' own lifecycle: UNAVAILABLE ``standby``),
whether the instances' cluster views agree, server processes lost (0: processes other than the killed
instance's), what the killed instance left behind (0), and memory growth. A readable table, a ``REPORT {json}``
line and ``RESULT: pass|fail``; the exit status is 1 when a requirement failed.

Run: ``python tests/chaos/chaos.py --requests 20000 --concurrency 32`` (about two minutes on 2 cores;
``--keep DIR`` keeps the logs, stores and ticks); tests/chaos runs a short version.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import signal
import sqlite3
import sys
import tempfile
import textwrap
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import redis

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/: the real servers' helpers

from e2e.server import Answer, Server, alive, cmdline, gunicorn_ready, spawn_gunicorn
from redis_server import RedisServer
from tcp_proxy import TcpProxy

TOKEN = "chaos-operator-token"
PREFIX = "plugin-health"  # the Redis key prefix (the default)
LEASE = 2.0  # PLUGIN_HEALTH_SINGLETON_LEASE: under CUT, so that the cut moves the singleton
WORKERS = 2
CUT = 3.0  # seconds i3 is cut off from Redis
REDIS_DOWN = 2.0  # seconds Redis is away before it starts again, empty
DOWN = 1.0  # seconds the killed instance stays down before it starts again
WITHIN = 60.0  # the bound of every wait: a start, a drain, a phase, the settling
HEADER = """import os, threading, time
from plugin_health import Plugin, tool

CALM = {calm!r}  # once this file exists, the schedule of failures is over
TICKS = {ticks!r}  # the singleton's runs: <pid>.log files of "<token> <time>" lines


class P(Plugin):
"""
PLUGINS = {
    "steady": """
        critical = True
        @tool
        def echo(self, value):
            return value
    """,
    "flapper": """
        def health_check(self):
            # fails one period of 1.5 s in three (restarted meanwhile), until the run calms down
            return os.path.exists(CALM) or int(time.time() / 1.5) % 3 != 0
    """,
    "dependent": "requires = ('flapper',)\n",
    "crashy": """
        isolation = 'process'
        @tool
        def maybe_crash(self, n):
            if n % 7 == 0:
                os._exit(3)
            return n
    """,
    "napper": """
        timeout = 0.5
        @tool
        def nap(self, seconds):
            time.sleep(seconds)
            return seconds
    """,
    "toggle": "pass\n",
    "solo": """
        singleton = True
        def initialize(self, context):
            self.token = context.fencing_token
        def start(self):
            self.done = threading.Event()
            self.ticker = threading.Thread(target=self.tick, daemon=True)
            self.ticker.start()
        def tick(self):
            with open(os.path.join(TICKS, f"{os.getpid()}.log"), "a", buffering=1) as out:
                while not self.done.is_set():
                    out.write(f"{self.token} {time.time()}\\n")
                    self.done.wait(0.02)
        def stop(self):
            self.done.set()
            self.ticker.join(2.0)
        @tool
        def whoami(self):
            return self.token
    """,
}
NAMES = sorted(PLUGINS)
ENV = {
    "PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN,
    "PLUGIN_HEALTH_HEALTH_INTERVAL": "0.2",
    "PLUGIN_HEALTH_FAILURE_THRESHOLD": "1",
    "PLUGIN_HEALTH_MAX_RESTARTS": "1000",
    "PLUGIN_HEALTH_RESTART_WINDOW": "1",
    "PLUGIN_HEALTH_BACKOFF_BASE": "0.1",
    "PLUGIN_HEALTH_BACKOFF_MAX": "0.4",
    "PLUGIN_HEALTH_HISTORY_LIMIT": "1000000",  # keep every transition, locally and in Redis, to compare them
    "PLUGIN_HEALTH_SINGLETON_LEASE": str(LEASE),
    "GUNICORN_CMD_ARGS": "--max-requests 300 --max-requests-jitter 100",
}

#: What each kind of request may answer in this model; anything else is unexpected. Reads come from the
#: instance's own store (200, or 503 for an unhealthy plugin or a failed aggregate); tool calls are served by the
#: instance that received them, but the singleton's, which go to its owner (503 while it moves or Redis is away),
#: and any may be refused with 429 when 16 calls of its plugin wait already (the inline plugins share a runner,
#: which napper's calls hold for up to 0.75 s); operator actions act on this instance (409 for a move the
#: lifecycle refuses), or over Redis on another one (503 while Redis is away) or on all (207: one refused).
EXPECTED: dict[str, set[int]] = {
    "list": {200}, "list-304": {200, 304}, "health": {200, 503}, "aggregate": {200, 503}, "livez": {200},
    "readyz": {200, 503}, "history": {200}, "metrics": {200}, "cluster": {200}, "echo": {200, 429},
    "crash": {200, 429, 502, 503}, "nap": {200, 429, 503, 504}, "solo": {200, 429, 503}, "restart": {200, 409},
    "disable": {200, 409}, "enable": {200, 409}, "enable-there": {200, 409, 503}, "enable-all": {200, 207, 503},
}
MIX = [("list", 12), ("list-304", 7), ("health", 22), ("aggregate", 8), ("livez", 5), ("readyz", 5),
       ("history", 6), ("metrics", 2), ("cluster", 3), ("echo", 12), ("crash", 6), ("nap", 3), ("solo", 4),
       ("restart", 2), ("disable", 2), ("enable", 2), ("enable-there", 1), ("enable-all", 1)]


def request_for(kind: str, rng: random.Random, n: int, there: str) -> tuple[str, str, dict[str, str], str | None]:
    """Method, path, headers and body of one request of ``kind`` (``there``: another instance that is up)."""
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    name = rng.choice(NAMES)
    return {
        "list": ("GET", "/v1/plugins/", {}, None),
        "list-304": ("GET", "/v1/plugins/", {"If-None-Match": '"stale-or-current"'}, None),
        "health": ("GET", f"/v1/plugins/{name}/health", {}, None),
        "aggregate": ("GET", "/v1/health", {}, None),
        "livez": ("GET", "/livez", {}, None),
        "readyz": ("GET", "/readyz", {}, None),
        "history": ("GET", f"/v1/plugins/{name}/history", {}, None),
        "metrics": ("GET", "/metrics", {}, None),
        "cluster": ("GET", "/v1/cluster", {}, None),
        "echo": ("POST", "/v1/plugins/steady/tools/echo", auth, json.dumps({"args": [n]})),
        "crash": ("POST", "/v1/plugins/crashy/tools/maybe_crash", auth, json.dumps({"args": [n]})),
        "nap": ("POST", "/v1/plugins/napper/tools/nap", auth, json.dumps({"args": [rng.choice([0.01, 0.9])]})),
        "solo": ("POST", "/v1/plugins/solo/tools/whoami", auth, "{}"),
        "restart": ("POST", "/v1/plugins/flapper/restart", auth, None),
        "disable": ("POST", "/v1/plugins/toggle/disable", auth, None),
        "enable": ("POST", "/v1/plugins/toggle/enable", auth, None),
        "enable-there": ("POST", f"/v1/plugins/toggle/enable?instance={there}", auth, None),
        "enable-all": ("POST", "/v1/plugins/toggle/enable?instance=all", auth, None),
    }[kind]


def write_plugins(directory: Path, calm: Path, ticks: Path) -> None:
    """The plugins of the run."""
    directory.mkdir(parents=True, exist_ok=True)
    header = HEADER.format(calm=str(calm), ticks=str(ticks))
    for name, body in PLUGINS.items():
        (directory / f"{name}.py").write_text(header + textwrap.indent(textwrap.dedent(body), "    "))


@dataclass
class Instance:
    """One service instance: its id, directory (run directory inside), settings and current gunicorn."""

    id: str
    directory: Path
    env: dict[str, str]
    server: Server | None = None
    up: bool = False  # in the load's rotation
    inflight: int = 0
    core: int | None = None  # its core's pid once started: a core that changes was lost
    killed: bool = False

    @property
    def database(self) -> Path:
        """Its own SQLite store."""
        return self.directory / "run" / f"instance-{self.id}.sqlite3"

    def get(self, path: str, **kwargs: Any) -> Answer:
        """One request to it."""
        assert self.server is not None
        return self.server.get(path, **kwargs)

    def processes(self) -> set[int]:
        """Its live processes: master, workers, core, runners and what plugins started."""
        if self.server is None:
            return set()
        return self.server.descendants() | ({self.server.process.pid} if alive(self.server.process.pid) else set())


@dataclass
class Phase:
    """One event of the timeline: it begins once ``at`` of the requests are sent, and the requests past ``until``
    wait for it to end."""

    name: str
    at: float
    until: float
    action: Callable[[], None]
    done: threading.Event = field(default_factory=threading.Event)


@dataclass
class Tally:
    """What the load saw."""

    sent: int = 0
    answered: int = 0
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    unexpected: Counter[tuple[str, int]] = field(default_factory=Counter)
    samples: dict[str, str] = field(default_factory=dict)  # one body per unexpected kind and status
    errors: Counter[str] = field(default_factory=Counter)


class Load:
    """``requests`` requests over ``concurrency`` threads, round-robin over the instances that are up, while the
    timeline's phases run on a thread of their own."""

    def __init__(self, instances: list[Instance], requests: int, concurrency: int, kinds: list[str],
                 phases: list[Phase], events: list[tuple[float, str]], seed: int = 7) -> None:
        self.instances = instances
        self.events = events
        self.requests = requests
        self.concurrency = concurrency
        self.kinds = kinds
        self.phases = phases
        self.seed = seed
        self.tally = Tally()
        self.lock = threading.Condition()
        self.next = 0
        self.failed: BaseException | None = None
        self.etags: dict[str, str] = {}

    def run(self) -> float:
        """Send everything and run the timeline; the seconds it took. Raises what a phase raised."""
        started = time.monotonic()
        threads = [threading.Thread(target=self._send, daemon=True) for _ in range(self.concurrency)]
        timeline = threading.Thread(target=self._timeline, daemon=True)
        for thread in [timeline, *threads]:
            thread.start()
        for thread in [timeline, *threads]:
            thread.join(WITHIN * (len(self.phases) + 2) + self.requests)  # bounded, generously
        if self.failed is not None:
            raise RuntimeError(f"the timeline failed: {self.failed!r}") from self.failed
        return time.monotonic() - started

    def drain(self, instance: Instance) -> None:
        """Take ``instance`` out of the rotation and wait until none of its requests is in flight."""
        with self.lock:
            instance.up = False
            if not self.lock.wait_for(lambda: instance.inflight == 0, WITHIN):
                raise RuntimeError(f"{instance.id}: {instance.inflight} requests still in flight")

    def admit(self, instance: Instance) -> None:
        """Put ``instance`` back in the rotation."""
        with self.lock:
            instance.up = True

    def _timeline(self) -> None:
        try:
            for phase in self.phases:
                with self.lock:
                    if not self.lock.wait_for(lambda p=phase: self.next >= p.at * self.requests, WITHIN * 5):
                        raise RuntimeError(f"the load never reached {phase.name}")
                phase.action()
                phase.done.set()
        except BaseException as err:  # noqa: BLE001 - the load must stop whatever went wrong, and say so
            self.failed = err
        finally:
            for phase in self.phases:
                phase.done.set()

    def _send(self) -> None:
        while True:
            with self.lock:
                n = self.next
                if n >= self.requests or self.failed is not None:
                    return
                self.next += 1
                self.lock.notify_all()
            for phase in self.phases:
                if n >= phase.until * self.requests and not phase.done.wait(WITHIN * 5):
                    self.failed = self.failed or RuntimeError(f"{phase.name} never ended")
            if self.failed is not None:
                return
            with self.lock:
                up = [i for i in self.instances if i.up]
                instance, there = up[n % len(up)], up[(n + 1) % len(up)]
                instance.inflight += 1
            try:
                self._one(instance, n, there.id)
            finally:
                with self.lock:
                    instance.inflight -= 1
                    self.lock.notify_all()

    def _one(self, instance: Instance, n: int, there: str) -> None:
        rng = random.Random(self.seed * 1_000_003 + n)
        kind = rng.choice(self.kinds)
        method, path, headers, body = request_for(kind, rng, n, there)
        if kind == "list-304" and instance.id in self.etags:
            headers = {"If-None-Match": self.etags[instance.id]}
        tally = self.tally
        with self.lock:
            tally.sent += 1
        try:
            answer = instance.get(path, headers=headers, method=method, body=body)
        except OSError as err:
            with self.lock:
                tally.errors[f"{kind} {type(err).__name__}"] += 1
            return
        if kind == "list" and "etag" in answer.headers:
            self.etags[instance.id] = answer.headers["etag"]
        with self.lock:
            tally.answered += 1
            tally.statuses[(kind, answer.status)] += 1
            if answer.status not in EXPECTED[kind]:
                tally.unexpected[(kind, answer.status)] += 1
                tally.samples.setdefault(f"{kind} {answer.status} from {instance.id}",
                                         f"{after(self.events)}: {answer.body[:300].decode(errors='replace')}")


class Chaos:
    """The servers of one run and what happens to them."""

    def __init__(self, work: Path) -> None:
        self.work = work
        self.plugins = work / "plugins"
        self.calm = work / "calm"
        self.ticks = work / "ticks"
        self.ticks.mkdir()
        write_plugins(self.plugins, self.calm, self.ticks)
        self.redis = RedisServer(work / "redis")
        self.proxy: TcpProxy | None = None
        self.instances: list[Instance] = []
        self.seen: dict[str, Any] = {}  # what the timeline observed
        self.events: list[tuple[float, str]] = []  # what the timeline did, when

    def event(self, what: str) -> None:
        """Note that ``what`` happens now."""
        self.events.append((time.monotonic(), what))

    def client(self) -> redis.Redis:
        """A client of the real Redis (not through the proxy)."""
        return redis.Redis(port=self.redis.port, socket_timeout=5.0)

    def start(self) -> None:
        """Redis, the proxy, then i3 (so that it runs the singleton first: the cut moves it), then i1 and i2."""
        self.redis.start()
        self.proxy = TcpProxy(self.redis.port).start()
        for number in (1, 2, 3):
            url = self.proxy.redis_url if number == 3 else self.redis.url
            env = {**ENV, "PLUGIN_HEALTH_STORE_URL": url, "PLUGIN_HEALTH_INSTANCE": f"i{number}"}
            self.instances.append(Instance(f"i{number}", self.work / f"i{number}", env))
        self.instances[2].directory.mkdir()
        self.launch([self.instances[2]])
        bounded(lambda: self.owner() == "i3", "i3 to run the singleton", 10.0, quiet=True)
        for instance in self.instances[:2]:
            instance.directory.mkdir()
        self.launch(self.instances[:2])

    def launch(self, instances: list[Instance]) -> None:
        """Start the gunicorns of ``instances`` side by side and wait (bounded) until each is ready."""
        for instance in instances:
            instance.server = spawn_gunicorn(instance.directory, self.plugins, instance.env, workers=WORKERS)
        for instance in instances:
            server = instance.server
            assert server is not None
            bounded(lambda s=server: gunicorn_ready(s, WORKERS) or s.process.poll() is not None, f"{instance.id} up")
            if server.process.poll() is not None:
                raise RuntimeError(f"{instance.id} exited:\n{server.log.read_text()[-3000:]}")
            instance.core = server.host_pid()
            instance.up = True

    def stop(self) -> None:
        """Stop everything started, the gunicorns side by side; never raises."""
        threads = [threading.Thread(target=i.server.stop) for i in self.instances if i.server is not None]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(45.0)
        if self.proxy is not None:
            self.proxy.close()
        self.redis.stop()

    def owner(self) -> str | None:
        """The instance holding the singleton's lease now (None: nobody, or Redis did not answer)."""
        try:
            value = self.client().get(f"{PREFIX}:singleton:solo")
        except redis.RedisError:
            return None
        if value is None:
            return None
        owner, newline, _ = value.decode(errors="replace").rpartition("\n")
        return owner if newline else value.decode(errors="replace")

    def degraded(self, instance: Instance, seconds: float) -> dict[str, Any]:
        """Watch ``instance``'s ``/v1/health`` for ``seconds``: whether it said ``store:degraded``, and the statuses
        and codes it answered meanwhile."""
        said, statuses = False, Counter[str]()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            answer = instance.get("/v1/health", timeout=5.0)
            document = json.loads(answer.body)
            said = said or "store:degraded" in document.get("checks", {})
            statuses[f"{answer.status} {document.get('status')}"] += 1
            time.sleep(0.1)
        return {"store:degraded seen": said, "answers": dict(statuses)}

    # -- the timeline ---------------------------------------------------------------------------------------

    def partition(self) -> None:
        """Cut i3 off from Redis for CUT seconds (it goes on serving), then heal."""
        assert self.proxy is not None
        self.seen["singleton owner before the cut"] = self.owner()
        self.proxy.cut()
        self.event("i3 cut off")
        try:
            self.seen["i3 during the cut"] = self.degraded(self.instances[2], CUT)
        finally:
            self.proxy.restore()
            self.event("i3 reconnected")
        time.sleep(LEASE + 1.0)  # under load: the singleton's move, if any, is over before the next event

    def redis_restart(self) -> None:
        """Stop Redis (everything it held is lost), keep it away for REDIS_DOWN seconds, start it empty."""
        self.redis.stop()
        self.event("Redis stopped")
        try:
            self.seen["i1 while Redis is away"] = self.degraded(self.instances[0], REDIS_DOWN)
        finally:
            self.redis = RedisServer(self.work / "redis", port=self.redis.port).start()
            self.event("Redis started empty")
        time.sleep(LEASE + 1.0)  # under load: everything is copied again, the singleton runs somewhere again

    def kill_and_restart(self, load: Load) -> None:
        """SIGKILL the master and the core of the instance that runs the singleton (i2 if none does); start it
        again with the same id and run directory once its processes are gone."""
        owner = bounded(self.owner, "the singleton to have an owner", WITHIN / 4, quiet=True)
        victim = next((i for i in self.instances if i.id == owner), self.instances[1])
        self.seen["killed"] = victim.id
        load.drain(victim)
        assert victim.server is not None
        doomed = victim.processes()
        master, core = victim.server.process.pid, victim.server.host_pid()
        for pid in (master, core):
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        victim.server.process.wait()
        self.event(f"{victim.id} killed")
        victim.killed = True
        left = bounded(lambda: not any(alive(p) for p in doomed), "the killed instance's processes to end", 15.0,
                       quiet=True)
        stray = [p for p in doomed if alive(p)]
        self.seen["killed instance's processes left behind"] = len(stray) if not left else 0
        self.seen["killed instance's leftovers"] = {p: cmdline(p)[:80] for p in stray}
        for pid in stray:  # not ours to keep: end them before the report
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(DOWN)
        victim.server.log.rename(victim.server.log.with_suffix(".killed.log"))
        self.launch([victim])
        self.event(f"{victim.id} started again")
        load.admit(victim)

    # -- after the run --------------------------------------------------------------------------------------

    def histories(self) -> tuple[dict[tuple[str, str], list[str]], dict[tuple[str, str], list[str]]]:
        """Every instance's transitions, per (instance, plugin): in its SQLite, and copied in Redis."""
        local: dict[tuple[str, str], list[str]] = defaultdict(list)
        remote: dict[tuple[str, str], list[str]] = {}
        client = self.client()
        for instance in self.instances:
            marker = f"{PREFIX}:i:{instance.id}:history:"
            for key in client.scan_iter(match=marker + "*", count=1000):
                remote[(instance.id, key.decode()[len(marker):])] = [r.decode() for r in client.lrange(key, 0, -1)]
            with contextlib.closing(sqlite3.connect(f"file:{instance.database}?mode=ro", uri=True, timeout=10)) as db:
                for plugin, data in db.execute("SELECT plugin, data FROM history ORDER BY seq"):
                    local[(instance.id, plugin)].append(data)
        return dict(local), remote

    def settle(self) -> dict[str, Any]:
        """Calm the plugins down, wait (bounded) until Redis holds what every instance recorded, and compare."""
        self.calm.touch()
        found: dict[str, Any] = {}

        def copied() -> bool:
            local, remote = self.histories()
            found.update(compare(local, remote))
            return local == remote

        began = time.monotonic()
        bounded(copied, "the copies to Redis to settle", WITHIN / 2, quiet=True)
        found["seconds to settle"] = round(time.monotonic() - began, 1)
        return found

    def singleton_state(self) -> dict[str, Any]:
        """Once it settles (bounded): the instances whose own lifecycle runs the singleton (its last transition in
        their SQLite), the others' last reasons, and the owners their ``/v1/plugins/solo/health`` names."""
        found: dict[str, Any] = {}

        def one_owner() -> bool:
            last = {}
            for instance in self.instances:
                with contextlib.closing(sqlite3.connect(f"file:{instance.database}?mode=ro", uri=True)) as db:
                    row = db.execute("SELECT data FROM history WHERE plugin = 'solo' ORDER BY seq DESC LIMIT 1")
                    last[instance.id] = json.loads(row.fetchone()[0])
            running = sorted(k for k, record in last.items() if record["to"] == "RUNNING")
            others = {k: f"{r['to']} {r['reason']}" for k, r in last.items() if r["to"] != "RUNNING"}
            answers = [json.loads(i.get("/v1/plugins/solo/health").body) for i in self.instances]
            named = sorted({str(a["owner"]) for a in answers if "owner" in a}) or None  # None: not shown
            found.update({"owners": running, "others": others, "owner named": named})
            return (len(running) == 1 and named in (None, running)
                    and all(text.startswith("UNAVAILABLE standby") for text in others.values()))

        found["settled"] = bounded(one_owner, "the singleton to settle", WITHIN / 4, quiet=True)
        return found

    def cluster_disagreements(self) -> int | None:
        """Cells (instance, plugin) whose state the instances' ``/v1/cluster`` views disagree on, once settled
        (bounded); None without the route."""
        if self.instances[0].get("/v1/cluster").status == 404:
            return None
        count = 0

        def agree() -> bool:
            nonlocal count
            views = []
            for instance in self.instances:
                document = json.loads(instance.get("/v1/cluster").body)
                views.append({(i["id"], name): p["state"] for i in document["instances"]
                              for name, p in i["plugins"].items()})
            cells = set().union(*views)
            count = sum(1 for cell in cells if len({view.get(cell) for view in views}) > 1)
            return count == 0

        bounded(agree, "the cluster views to agree", 10.0, quiet=True)
        return count

    def processes_lost(self) -> int:
        """Masters, workers and cores missing or replaced (the killed instance's own, before its restart, apart)."""
        lost = 0
        for instance in self.instances:
            server = instance.server
            assert server is not None
            if server.process.poll() is not None:
                lost += 1 + WORKERS + 1
                continue
            full = bounded(lambda s=server: len(s.workers()) == WORKERS, "workers", 10.0, quiet=True)
            lost += 0 if full else max(0, WORKERS - len(server.workers()))
            lost += 0 if server.host_pid() == instance.core else 1
        return lost


def compare(local: dict[tuple[str, str], list[str]], remote: dict[tuple[str, str], list[str]]) -> dict[str, Any]:
    """Local histories against their copies: recorded, copied, lost, duplicated, foreign (in Redis, never
    recorded here), histories holding the same records in another order, and where each difference is."""
    totals = Counter[str]()
    where: dict[str, dict[str, Any]] = {}
    for key in sorted(local.keys() | remote.keys()):
        mine, copy = local.get(key, []), remote.get(key, [])
        if mine == copy:
            continue
        missing, extra = Counter(mine) - Counter(copy), Counter(copy) - Counter(mine)
        known = set(mine)
        found = {"lost": sum(missing.values()), "duplicated": sum(c for t, c in extra.items() if t in known),
                 "foreign": sum(c for t, c in extra.items() if t not in known),
                 "out of order": 0 if missing or extra else 1}
        totals.update(found)
        first = next(i for i, (a, b) in enumerate(zip([*mine, None], [*copy, None], strict=False)) if a != b)
        where["/".join(key)] = {**{k: v for k, v in found.items() if v}, "local": len(mine), "redis": len(copy),
                                "first difference at": first}
    return {"recorded locally": sum(map(len, local.values())), "in Redis": sum(map(len, remote.values())),
            **{k: totals[k] for k in ("lost", "duplicated", "foreign", "out of order")}, "where": where}


def singleton_runs(ticks: Path, gap: float = 1.0) -> dict[str, Any]:
    """The singleton's runs from its ticks: a run is a (runner pid, fencing token) ticking without a pause of
    ``gap`` seconds. Runs of different owners must not overlap, and each new owner's token must be larger than
    every earlier one (a regression, else)."""
    runs: list[tuple[float, float, tuple[int, int]]] = []
    for path in sorted(ticks.glob("*.log")):
        current: dict[int, list[float]] = {}
        for line in path.read_text().splitlines():
            token_text, _, moment_text = line.partition(" ")
            with contextlib.suppress(ValueError):
                token, moment = int(token_text), float(moment_text)
                span = current.get(token)
                if span is not None and moment - span[1] > gap:
                    runs.append((span[0], span[1], (int(path.stem), token)))
                    span = None
                current[token] = [moment, moment] if span is None else [span[0], moment]
        runs.extend((first, last, (int(path.stem), token)) for token, (first, last) in current.items())
    runs.sort()
    overlaps = sum(1 for i, a in enumerate(runs) for b in runs[i + 1:] if a[2] != b[2] and b[0] <= a[1])
    moves = [(a, b) for a, b in pairwise(runs) if a[2] != b[2]]
    regressions = sum(1 for i, run in enumerate(runs) if i and run[2][1] <= max(r[2][1] for r in runs[:i])
                      and run[2] != runs[i - 1][2])
    return {"runs": len(runs), "moves": len(moves), "overlaps": overlaps, "regressions": regressions,
            "handovers (s)": [round(b[0] - a[1], 2) for a, b in moves], "tokens": [run[2][1] for run in runs]}


def after(events: list[tuple[float, str]]) -> str:
    """How long after which event of the timeline it is now."""
    now = time.monotonic()
    moment, what = max((e for e in events if e[0] <= now), default=(now, "the load starts"))
    return f"{now - moment:.2f} s after {what}"


def bounded(condition: Callable[[], Any], what: str, within: float = WITHIN, quiet: bool = False) -> Any:
    """Poll ``condition`` every 100 ms until it is true (its value), at most ``within`` seconds; then raise, or
    with ``quiet`` answer the last value."""
    deadline = time.monotonic() + within
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            if not value and not quiet:
                raise RuntimeError(f"timed out after {within:.0f} s waiting for {what}")
            return value
        time.sleep(0.1)


def rss_mib(pids: set[int]) -> float:
    """The resident memory of ``pids``, in MiB."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            match = re.search(r"VmRSS:\s+(\d+) kB", Path(f"/proc/{pid}/status").read_text())
            total += int(match.group(1)) if match else 0
    return total / 1024


def run(requests: int, concurrency: int, work: Path) -> dict[str, Any]:
    """The whole chaos run; the report as a mapping."""
    chaos = Chaos(work)
    try:
        chaos.start()
        kinds = [kind for kind, weight in MIX for _ in range(weight)]
        if chaos.instances[0].get("/v1/cluster").status == 404:
            kinds = [kind for kind in kinds if kind != "cluster"]
        time.sleep(1.0)
        before = rss_mib(set().union(*(i.processes() for i in chaos.instances)))
        phases: list[Phase] = []
        load = Load(chaos.instances, requests, concurrency, kinds, phases, chaos.events)
        chaos.event("the load starts")
        phases += [Phase("the partition of i3", 0.15, 0.35, chaos.partition),
                   Phase("the Redis restart", 0.35, 0.55, chaos.redis_restart),
                   Phase("the kill of an instance", 0.55, 0.85, lambda: chaos.kill_and_restart(load))]
        elapsed = load.run()
        copies = chaos.settle()
        singleton = {**singleton_runs(chaos.ticks), **chaos.singleton_state()}
        disagreements = chaos.cluster_disagreements()
        after = rss_mib(set().union(*(i.processes() for i in chaos.instances)))
        tally = load.tally
        return {
            "requests sent": tally.sent,
            "requests answered": tally.answered,
            "requests per second": round(tally.answered / elapsed),
            "unexpected status codes": sum(tally.unexpected.values()),
            "unexpected detail": {f"{k} {s}": c for (k, s), c in sorted(tally.unexpected.items())},
            "unexpected samples": tally.samples,
            "connection errors": sum(tally.errors.values()),
            "connection error detail": dict(tally.errors),
            "transitions recorded locally": copies["recorded locally"],
            "transitions in Redis": copies["in Redis"],
            "transitions lost": copies["lost"],
            "transitions duplicated": copies["duplicated"],
            "transitions in Redis never recorded": copies["foreign"],
            "histories out of order": copies["out of order"],
            "copies differing": copies["where"],
            "seconds for the copies to settle": copies["seconds to settle"],
            "singleton runs": singleton["runs"],
            "singleton moves": singleton["moves"],
            "singleton overlaps": singleton["overlaps"],
            "singleton fencing token regressions": singleton["regressions"],
            "singleton tokens, run by run": singleton["tokens"],
            "singleton handovers (s)": singleton["handovers (s)"],
            "singleton owners at the end": singleton["owners"],
            "singleton elsewhere": singleton["others"],
            "singleton owner named by each instance": singleton["owner named"],
            "cluster views disagreeing": disagreements,
            "instance killed": chaos.seen.get("killed"),
            "server processes lost": chaos.processes_lost(),
            "killed instance's processes left behind": chaos.seen.get("killed instance's processes left behind"),
            "killed instance's leftovers": chaos.seen.get("killed instance's leftovers"),
            "processes seen (recycled workers included)": sum(len(i.server.seen) for i in chaos.instances
                                                              if i.server is not None),
            "singleton owner before the cut": chaos.seen.get("singleton owner before the cut"),
            "i3 during the cut": chaos.seen.get("i3 during the cut"),
            "i1 while Redis is away": chaos.seen.get("i1 while Redis is away"),
            "service memory before (MiB)": round(before, 1),
            "service memory after (MiB)": round(after, 1),
            "memory growth (MiB)": round(after - before, 1),
            "timeline": [f"{moment - chaos.events[0][0]:.1f} s {what}" for moment, what in chaos.events],
            "statuses": {f"{k} {s}": c for (k, s), c in sorted(tally.statuses.items())},
        }
    finally:
        chaos.stop()


def failures(report: dict[str, Any]) -> list[str]:
    """The requirements the report does not meet."""
    problems = []
    if report["requests answered"] != report["requests sent"]:
        problems.append("not every request was answered")
    for key in ("unexpected status codes", "connection errors", "transitions lost", "transitions duplicated",
                "transitions in Redis never recorded", "histories out of order", "singleton overlaps",
                "singleton fencing token regressions",
                "server processes lost", "killed instance's processes left behind", "cluster views disagreeing"):
        if report[key]:
            problems.append(f"{key}: {report[key]}")
    if not report["transitions recorded locally"]:
        problems.append("no transition was recorded")
    if report["singleton moves"] < 1 or len(report["singleton owners at the end"]) != 1 or not all(
            text.startswith("UNAVAILABLE standby") for text in report["singleton elsewhere"].values()) or \
            report["singleton owner named by each instance"] not in (None, report["singleton owners at the end"]):
        problems.append(f"the singleton moved {report['singleton moves']} times and ends running on "
                        f"{report['singleton owners at the end']} (elsewhere: {report['singleton elsewhere']}; "
                        f"owner named: {report['singleton owner named by each instance']})")
    for key in ("i3 during the cut", "i1 while Redis is away"):
        if not (report[key] or {}).get("store:degraded seen"):
            problems.append(f"{key}: /v1/health never said store:degraded")
    return problems


def main() -> None:
    """Run, print the report, exit 1 if a requirement failed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--keep", type=Path, help="run in this new directory and keep it (logs, stores, ticks)")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))  # stop the servers on SIGTERM too
    if args.keep is not None:
        args.keep.mkdir(parents=True)
        report = run(args.requests, args.concurrency, args.keep.resolve())
    else:
        with tempfile.TemporaryDirectory(prefix="plugin-health-chaos-") as work:
            report = run(args.requests, args.concurrency, Path(work))
    width = max(len(k) for k in report)
    for key, value in report.items():
        if key != "statuses":
            print(f"{key:<{width}}  {json.dumps(value) if isinstance(value, dict | list) else value}")
    print("statuses by request kind:", json.dumps(report["statuses"]))
    print("REPORT", json.dumps(report))
    problems = failures(report)
    print("RESULT:", "pass" if not problems else "fail: " + "; ".join(problems))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()
