"""The harness of the hostile plugin suite: one real gunicorn per case, watched from outside.

A case serves one hostile plugin (the culprit, written from ``plugins/<case>.py`` with its isolation substituted)
beside ``canary``, a healthy critical inline plugin. While the case runs, a probe thread polls ``/livez``,
``/readyz`` and the canary's health (each on a new connection, timing every answer) and remembers every process
below the gunicorn master. Checks do not stop at the first broken promise: each one records a problem, and
``finish`` reports them all at once, after the server is stopped and its processes are accounted for.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from e2e.server import Answer, Server, alive, cmdline, gunicorn_ready, process_table, spawn_gunicorn

TOKEN = "secret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ENV = {
    "PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN,
    "PLUGIN_HEALTH_DEFAULT_TIMEOUT": "1",
    "PLUGIN_HEALTH_HEALTH_INTERVAL": "0.5",
    "PLUGIN_HEALTH_FAILURE_THRESHOLD": "2",
    "PLUGIN_HEALTH_BACKOFF_BASE": "30",  # no automatic restart muddies an assertion
}
WORKERS = 2
TEMPLATES = Path(__file__).parent / "plugins"
CANARY = "canary"

#: Seconds for the service to be ready (startupz 200, every worker up).
START_WITHIN = 15.0
#: Seconds for a culprit's outcome to show.
OUTCOME_WITHIN = 10.0
#: Seconds each probe (livez, readyz) may take, always.
PROBE_WITHIN = 1.0
#: Seconds the gunicorn master may take to exit after SIGTERM: the longest plugin stop timeout (1 s) and a few.
SHUTDOWN_WITHIN = 6.0
#: Seconds after SIGTERM by which every process that came from the server must be gone.
GONE_WITHIN = 8.0
#: Longest outage of the canary (and of readyz) that a runner's restart may cause, when the case kills the runner
#: the canary shares with the culprit.
COLLATERAL_WITHIN = 3.0
#: Slack around the window in which the test makes the canary fail (probes in flight across its edges).
WINDOW_SLACK = 0.3


@dataclass(frozen=True)
class Proc:
    """A process, told apart from a later one that reuses its pid by its start time."""

    pid: int
    started: int
    command: str

    def running(self) -> bool:
        """Whether this very process still runs (a zombie does not)."""
        return start_time(self.pid) == self.started and alive(self.pid)


def start_time(pid: int) -> int | None:
    """The start time of ``pid`` in clock ticks since boot (None if it is gone)."""
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def identify(pid: int) -> Proc | None:
    """``pid`` as a ``Proc`` (None if it is gone)."""
    started, command = start_time(pid), cmdline(pid)
    return None if started is None else Proc(pid, started, command)


@dataclass(frozen=True)
class Sample:
    """One probe: what was asked, when (monotonic), how long it took, and what came back."""

    path: str
    sent: float
    took: float
    status: int | None
    error: str | None = None

    @property
    def answered(self) -> float:
        return self.sent + self.took


@dataclass
class Tracked:
    """Every process that came from one server, as seen so far."""

    server: Server
    pid_dir: Path
    marker: str
    procs: dict[tuple[int, int], Proc] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def snapshot(self) -> None:
        """Remember the master's live descendants, the pids the plugins wrote down, and processes naming the case."""
        found = set(self.server.descendants())
        with contextlib.suppress(OSError):
            found |= {int(entry.name) for entry in self.pid_dir.iterdir() if entry.name.isdigit()}
        found |= {pid for pid in process_table() if pid != os.getpid() and self.marker in cmdline(pid)}
        with self.lock:
            for pid in found:
                proc = identify(pid)
                if proc is not None:
                    self.procs.setdefault((proc.pid, proc.started), proc)

    def running(self) -> list[Proc]:
        with self.lock:
            return [proc for proc in self.procs.values() if proc.running()]


class Probe(threading.Thread):
    """Polls the probes and the canary's health, and snapshots the server's processes, until stopped."""

    PATHS = ("/livez", "/readyz", f"/v1/plugins/{CANARY}/health")

    def __init__(self, server: Server, tracked: Tracked) -> None:
        super().__init__(name="hostile-probe", daemon=True)
        self.server = server
        self.tracked = tracked
        self.samples: list[Sample] = []
        self.done = threading.Event()

    def ask(self, path: str) -> Sample:
        sent = time.monotonic()
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=3.0)
        try:
            conn.request("GET", path)
            response = conn.getresponse()
            response.read()
            return Sample(path, sent, time.monotonic() - sent, response.status)
        except (OSError, http.client.HTTPException) as err:
            return Sample(path, sent, time.monotonic() - sent, None, f"{type(err).__name__}: {err}")
        finally:
            conn.close()

    def run(self) -> None:
        rounds = 0
        while not self.done.is_set():
            for path in self.PATHS:
                self.samples.append(self.ask(path))
            if rounds % 4 == 0:
                with contextlib.suppress(OSError, ValueError, IndexError):  # a process that vanished mid-read
                    self.tracked.snapshot()
            rounds += 1
            self.done.wait(0.05)

    def stop(self) -> None:
        self.done.set()
        self.join(10)


def render(template: str, substitutions: Mapping[str, str]) -> str:
    """A template with every ``__KEY__`` replaced; a placeholder left over is a harness bug."""
    text = template
    for key, value in substitutions.items():
        text = text.replace(f"__{key}__", value)
    leftover = [key for key in ("ISOLATION", "CASE_DIR", "FLAG") if f"__{key}__" in text]
    assert not leftover, leftover
    return text


class Hostile:
    """One case: a server with the culprit and the canary, the checks, and the clean-up."""

    def __init__(self, directory: Path, culprit: str, isolation: str, *, may_kill_runner: bool = False) -> None:
        self.dir = directory
        self.culprit = culprit
        self.isolation = isolation
        self.may_kill_runner = may_kill_runner
        self.plugins = directory / "plugins"
        self.plugins.mkdir(parents=True)
        self.pid_dir = directory / "pids"
        self.pid_dir.mkdir()
        self.flag = directory / "canary.flag"
        self.go = directory / "go"
        self.problems: list[str] = []
        self.window: tuple[float, float] | None = None
        self.window_wall: float | None = None
        self.server: Server | None = None
        self.spawned = 0.0
        self.tracked: Tracked | None = None
        self.probe: Probe | None = None
        self.on_stopping: Callable[[], None] | None = None
        self.finished = False
        substitutions = {"ISOLATION": isolation, "CASE_DIR": str(directory), "FLAG": str(self.flag)}
        for name in (CANARY, culprit):
            template = (TEMPLATES / f"{name}.py").read_text()
            (self.plugins / f"{name}.py").write_text(render(template, substitutions))

    # -- recording -------------------------------------------------------------------------------------------

    def problem(self, message: str) -> None:
        self.problems.append(message)

    def check(self, condition: object, message: str) -> bool:
        if not condition:
            self.problem(message)
        return bool(condition)

    def wait(self, condition: Callable[[], object], timeout: float, what: str,
             seen: Callable[[], object] | None = None) -> bool:
        """Poll ``condition`` every 50 ms for at most ``timeout`` s; on timeout record a problem (with ``seen()``)."""
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return True
            if self.server is not None and self.server.process.poll() is not None:
                self.problem(f"{what}: the gunicorn master is dead (exit status {self.server.process.poll()})")
                return False
            if time.monotonic() > deadline:
                self.problem(f"not within {timeout:g} s: {what}" + (f" (last seen: {seen()})" if seen else ""))
                return False
            time.sleep(0.05)

    # -- the server ------------------------------------------------------------------------------------------

    def spawn(self) -> None:
        """Start gunicorn, without waiting for it (a case may be spawned while the one before it stops)."""
        if self.server is None:
            self.server = spawn_gunicorn(self.dir, self.plugins, ENV, WORKERS)
            self.spawned = time.monotonic()
            self.tracked = Tracked(self.server, self.pid_dir, str(self.dir))

    def start(self) -> bool:
        """Start gunicorn (unless spawned already) and the probe once it is ready; False (a problem recorded) if
        the service is not ready in time."""
        self.spawn()
        assert self.server is not None
        assert self.tracked is not None
        deadline = self.spawned + START_WITHIN
        while not gunicorn_ready(self.server, WORKERS):
            self.tracked.snapshot()
            if self.server.process.poll() is not None or time.monotonic() > deadline:
                self.problem(f"the service was not ready within {START_WITHIN:g} s "
                             f"(master exit status {self.server.process.poll()}); log tail:\n{self.log_tail()}")
                return False
            time.sleep(0.05)
        self.tracked.snapshot()
        self.probe = Probe(self.server, self.tracked)
        self.probe.start()
        return True

    def arm(self) -> None:
        """Let the culprit's hostile health check or thread loose (they wait for this file)."""
        self.go.touch()

    def log_tail(self, lines: int = 15) -> str:
        try:
            return "\n".join(self.dir.joinpath("gunicorn.log").read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def request(self, path: str, *, method: str = "GET", body: str | None = None, auth: bool = False,
                timeout: float = 10.0) -> Answer | None:
        """One request; None (a problem recorded) if it got no answer."""
        assert self.server is not None
        headers = {**(AUTH if auth else {}), **({"Content-Type": "application/json"} if body is not None else {})}
        try:
            return self.server.get(path, headers=headers, method=method, body=body, timeout=timeout)
        except (OSError, http.client.HTTPException) as err:
            self.problem(f"{method} {path}: no answer ({type(err).__name__}: {err})")
            return None

    def quiet_json(self, path: str, timeout: float = 3.0) -> tuple[int | None, Any]:
        """``(status, JSON body)`` of a GET, ``(None, reason)`` without an answer, and no problem recorded.

        Sent with the bearer token, as an operator would: an anonymous caller sees the name of an exception class
        that a plugin defined as ``PluginDefinedError``."""
        assert self.server is not None
        try:
            answer = self.server.get(path, headers=AUTH, timeout=timeout)
        except (OSError, http.client.HTTPException) as err:
            return None, f"no answer: {type(err).__name__}"
        try:
            return answer.status, json.loads(answer.body)
        except ValueError:
            return answer.status, f"not JSON: {answer.body[:80]!r}"

    def health(self, name: str) -> dict[str, Any]:
        """The plugin's health JSON (``{}`` without a JSON object answer)."""
        _, body = self.quiet_json(f"/v1/plugins/{name}/health")
        return body if isinstance(body, dict) else {}

    def history(self, name: str) -> list[dict[str, Any]]:
        _, body = self.quiet_json(f"/v1/plugins/{name}/history")
        return body if isinstance(body, list) else []

    def tool(self, tool: str, *, plugin: str | None = None, timeout: float = 10.0) -> Answer | None:
        """Call a tool of the culprit (or of ``plugin``) with no arguments."""
        body = json.dumps({"args": [], "kwargs": {}})
        return self.request(f"/v1/plugins/{plugin or self.culprit}/tools/{tool}", method="POST", body=body,
                            auth=True, timeout=timeout)

    def core(self) -> Proc | None:
        """The process that supervises the plugins (the core; the plugin host of the old runtime)."""
        assert self.server is not None
        for pid in sorted(self.server.descendants()):
            command = cmdline(pid)
            if "plugin_health.runtime.core" in command or "plugin_health.hostd" in command:
                return identify(pid)
        return None

    def service(self) -> tuple[Proc | None, frozenset[Proc]]:
        """The core and the gunicorn workers, as ``Proc``s: what must outlive a hostile call."""
        assert self.server is not None
        table = process_table()
        workers = frozenset(
            proc for pid, parent in table.items() if parent == self.server.process.pid and alive(pid)
            and "gunicorn" in cmdline(pid) and "plugin_health." not in cmdline(pid)
            and (proc := identify(pid)) is not None)
        return self.core(), workers

    def check_service_intact(self, before: tuple[Proc | None, frozenset[Proc]]) -> None:
        """The master, the core and every worker that ran before the hostile call still run, the same processes."""
        assert self.server is not None
        core, workers = before
        self.check(self.server.process.poll() is None, "the gunicorn master died")
        self.check(core is not None and core.running(), f"the core process died ({core})")
        gone = [w for w in workers if not w.running()]
        self.check(not gone, f"gunicorn workers died: {gone}")

    # -- outcomes --------------------------------------------------------------------------------------------

    def expect_failed(self, error_types: Collection[str], *, reason: str | None = None,
                      quarantined: bool = False, within: float = OUTCOME_WITHIN) -> bool:
        """The culprit's health JSON says FAILED with one of ``error_types`` (and ``reason``); when
        ``quarantined``, it also shows ``"isolation": "process"`` and its history a reason naming quarantine."""
        last: dict[str, Any] = {}

        def failed() -> bool:
            nonlocal last
            last = self.health(self.culprit)
            if last.get("state") != "FAILED" or last.get("error_type") not in error_types:
                return False
            if reason is not None and last.get("reason") != reason:
                return False
            if quarantined:
                if last.get("isolation") != "process":
                    return False
                return any("quarantin" in (entry.get("reason") or "").lower() for entry in self.history(self.culprit))
            return True

        def seen() -> str:
            return ", ".join(f"{key}={last.get(key)!r}" for key in ("state", "error_type", "reason", "isolation"))

        what = f"{self.culprit} FAILED with error_type in {sorted(error_types)}" + (
            f", reason {reason!r}" if reason else "") + (", quarantined" if quarantined else "")
        return self.wait(failed, within, what, seen)

    def expect_running(self, within: float = 5.0, name: str | None = None) -> bool:
        """The plugin (the culprit by default) is RUNNING and healthy (its health answers 200)."""
        name = name or self.culprit
        last: tuple[int | None, Any] = (None, None)

        def running() -> bool:
            nonlocal last
            last = self.quiet_json(f"/v1/plugins/{name}/health")
            status, body = last
            return status == 200 and isinstance(body, dict) and body.get("state") == "RUNNING" and body.get("healthy")

        def seen() -> str:
            status, body = last
            if isinstance(body, dict):
                body = {k: body.get(k) for k in ("state", "healthy", "reason", "error_type")}
            return f"{status} {body}"

        return self.wait(running, within, f"{name} RUNNING and healthy", seen)

    def expect_named(self, states: Collection[str], error_types: Collection[str | None] | None) -> None:
        """The culprit's health is a JSON object that names it, in one of ``states`` with one of ``error_types``
        (None: any)."""
        status, body = self.quiet_json(f"/v1/plugins/{self.culprit}/health")
        if not self.check(isinstance(body, dict) and body.get("name") == self.culprit,
                          f"{self.culprit}'s health is not its JSON: {status} {body}"):
            return
        self.check(body.get("state") in states and (error_types is None or body.get("error_type") in error_types),
                   f"{self.culprit}: state {body.get('state')} error_type {body.get('error_type')!r}, expected a "
                   f"state in {sorted(states)}" + ("" if error_types is None else
                                                   f" and an error_type in {sorted(map(str, error_types))}"))

    def expect_tool_failure(self, answer: Answer | None, statuses: Collection[int],
                            error_types: Collection[str] | None = None, *, named: bool = False) -> None:
        """A failed tool call: a status in ``statuses``, a JSON (or problem+json) body (that names the culprit,
        when ``named``), and (when given) an error_type in ``error_types``."""
        if answer is None:
            return  # already a problem: no answer
        what = f"tool call of {self.culprit}"
        self.check(answer.status in statuses, f"{what}: status {answer.status}, expected {sorted(statuses)}: "
                                              f"{answer.body[:200]!r}")
        media = answer.headers.get("content-type", "")
        self.check(media.startswith(("application/json", "application/problem+json")),
                   f"{what}: content-type {media!r}")
        try:
            body = json.loads(answer.body)
        except ValueError:
            self.problem(f"{what}: the body is not JSON: {answer.body[:200]!r}")
            return
        if not self.check(isinstance(body, dict), f"{what}: the body is not a JSON object"):
            return
        if named:
            self.check(body.get("plugin") == self.culprit or any(
                self.culprit in str(body.get(key) or "") for key in ("detail", "error", "title")),
                f"{what}: the answer does not name the plugin: {answer.body[:300]!r}")
        if error_types is not None:
            self.check(body.get("error_type") in error_types,
                       f"{what}: error_type {body.get('error_type')!r}, expected one of {sorted(error_types)}")

    # -- the canary ------------------------------------------------------------------------------------------

    def canary_step(self) -> None:
        """Supervision still sees the canary: make it fail, see the 503, restart it, see it healthy again."""
        assert self.server is not None
        try:
            self.server.get("/livez", timeout=2.0)
        except (OSError, http.client.HTTPException) as err:
            self.problem(f"the service does not answer /livez ({type(err).__name__}); the canary step is skipped")
            return
        self.expect_running(within=8.0, name=CANARY)
        if self.may_kill_runner and self.isolation == "inline":  # let a fresh runner's take-over settle first
            time.sleep(1.0)
            self.expect_running(within=5.0, name=CANARY)
        self.window_wall = time.time()
        start = time.monotonic()
        self.flag.touch()
        try:
            self.wait(lambda: self.quiet_json(f"/v1/plugins/{CANARY}/health")[0] == 503, 4.0,
                      "the canary's failing health check seen (503)")
        finally:
            self.flag.unlink()
        for _ in range(4):
            answer = self.request(f"/v1/plugins/{CANARY}/restart", method="POST", auth=True, timeout=8.0)
            if answer is None or not self.busy(answer):
                break
            time.sleep(0.5)  # an automatic recovery is under way (a 409 from LOADED or INITIALIZED): ask again
        if answer is not None and not self.busy(answer):
            self.check(answer.status == 200, f"restarting the canary: {answer.status} {answer.body[:200]!r}")
        self.expect_running(within=4.0, name=CANARY)
        self.window = (start, time.monotonic())

    @staticmethod
    def busy(answer: Answer) -> bool:
        """Whether an action was refused because the plugin is between states (LOADED or INITIALIZED)."""
        if answer.status != 409:
            return False
        try:
            return json.loads(answer.body).get("state") in ("LOADED", "INITIALIZED")
        except ValueError:
            return False

    # -- the end ---------------------------------------------------------------------------------------------

    def in_window(self, sample: Sample) -> bool:
        if self.window is None:
            return False
        start, end = self.window
        return sample.sent <= end + WINDOW_SLACK and sample.answered >= start - WINDOW_SLACK

    def check_samples(self) -> None:
        assert self.probe is not None
        samples = self.probe.samples
        self.check(samples, "the probe thread took no sample")
        for path in ("/livez", "/readyz"):
            mine = [s for s in samples if s.path == path]
            if not mine:
                continue
            slow = [s for s in mine if s.error is None and s.took > PROBE_WITHIN]
            errors = [s for s in mine if s.error is not None]
            worst = max(s.took for s in mine)
            self.check(not slow and not errors,
                       f"{path}: max latency {worst:.2f} s over {len(mine)} probes; {len(slow)} slower than "
                       f"{PROBE_WITHIN:g} s, {len(errors)} unanswered" + (f" ({errors[0].error})" if errors else ""))
        live_bad = [s for s in samples if s.path == "/livez" and s.error is None and s.status != 200]
        self.check(not live_bad, f"/livez answered {sorted({s.status for s in live_bad})}")
        # readyz, and the canary's health, may be 503 only while the test makes the canary fail (and, when the
        # case kills the runner the canary shares, during that runner's brief replacement).
        for path in ("/readyz", f"/v1/plugins/{CANARY}/health"):
            bad = [s for s in samples if s.path == path and s.error is None and s.status != 200
                   and not self.in_window(s)]
            if not bad:
                continue
            if self.may_kill_runner and self.isolation == "inline":
                outages = list(runs(bad, [s for s in samples if s.path == path]))
                longest = max(end - begin for begin, end in outages)
                self.check(longest <= COLLATERAL_WITHIN,
                           f"{path}: not 200 for {longest:.1f} s outside the canary's test window "
                           f"(a runner's replacement may take {COLLATERAL_WITHIN:g} s)")
            else:
                self.problem(f"{path}: {len(bad)} answers {sorted({s.status for s in bad})} outside the window in "
                             f"which the test makes the canary fail")

    def check_canary_history(self) -> None:
        """Any move of the canary out of RUNNING that the test did not cause names its cause."""
        cutoff = self.window_wall if self.window_wall is not None else time.time()
        for entry in self.history(CANARY):
            if entry.get("from") != "RUNNING":
                continue
            try:
                at = datetime.fromisoformat(str(entry.get("at"))).timestamp()
            except ValueError:
                continue
            if at >= cutoff - 0.05:
                continue
            text = f"{entry.get('reason')} {entry.get('error')} {entry.get('error_type')}".lower()
            ok = self.may_kill_runner and (self.culprit.lower() in text or "runner" in text)
            self.check(ok, f"the canary left RUNNING before the test made it fail: {entry}")

    def stop(self) -> None:
        """Stop the probe and the server; check the shutdown's duration and that no process outlives it."""
        if self.server is None or self.tracked is None:
            return
        if self.probe is not None:
            self.probe.stop()
        self.tracked.snapshot()
        sigterm = time.monotonic()
        master_alive = self.server.process.poll() is None
        if master_alive:
            self.server.process.send_signal(signal.SIGTERM)
            try:
                self.server.process.wait(SHUTDOWN_WITHIN)
            except subprocess.TimeoutExpired:
                self.problem(f"the gunicorn master did not exit within {SHUTDOWN_WITHIN:g} s of SIGTERM")
                self.server.process.kill()
                self.server.process.wait()
        else:
            self.problem(f"the gunicorn master was dead before the end (exit status {self.server.process.poll()})")
        while self.tracked.running() and time.monotonic() < sigterm + GONE_WITHIN:
            self.tracked.snapshot()  # processes that name the case, spawned late
            time.sleep(0.05)
        left = self.tracked.running()
        self.check(not left, f"{len(left)} processes left {GONE_WITHIN:g} s after SIGTERM of the master: "
                             + "; ".join(f"{p.pid} {p.command[:120]}" for p in left))
        kill_all(left)

    def finish(self) -> None:
        """Check what the probe saw and the canary's history, stop everything, and fail with every problem."""
        if self.probe is not None and self.server is not None:
            self.probe.stop()
            self.check_samples()
            if self.server.process.poll() is None:
                self.check_canary_history()
        if self.on_stopping is not None:
            self.on_stopping()
        self.stop()
        self.finished = True
        if self.problems:
            pytest.fail(f"{self.culprit} ({self.isolation}): {len(self.problems)} problems:\n- "
                        + "\n- ".join(self.problems), pytrace=False)

    def cleanup(self) -> None:
        """Whatever happened: no server, no process of this case left running."""
        if self.probe is not None:
            self.probe.stop()
        if not self.finished and self.server is not None and self.tracked is not None:
            self.tracked.snapshot()
            if self.server.process.poll() is None:
                self.server.process.kill()
                self.server.process.wait()
        if self.tracked is not None:
            self.tracked.snapshot()
            kill_all(self.tracked.running())


def runs(bad: list[Sample], all_samples: list[Sample]) -> Iterator[tuple[float, float]]:
    """The spans of consecutive bad samples (in the order they were sent), as ``(first sent, last answered)``."""
    bad_ids = {id(s) for s in bad}
    begin: float | None = None
    end = 0.0
    for sample in sorted(all_samples, key=lambda s: s.sent):
        if id(sample) in bad_ids:
            begin = sample.sent if begin is None else begin
            end = sample.answered
        elif begin is not None:
            yield begin, end
            begin = None
    if begin is not None:
        yield begin, end


def kill_all(procs: Collection[Proc]) -> None:
    """SIGKILL each process that is still the one we saw, and wait (boundedly) for them to go."""
    for proc in procs:
        if proc.running():
            with contextlib.suppress(OSError):
                os.kill(proc.pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while any(p.running() for p in procs) and time.monotonic() < deadline:
        time.sleep(0.05)
