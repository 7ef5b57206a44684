"""``PluginLoader``: sources -> registered plugins -> RUNNING, one isolated phase at a time.

Every phase of every plugin (import, class lookup, declaration, instantiation, ``initialize``, ``start``)
goes through the sandbox; a failure marks that plugin FAILED with the phase as its reason, and the others
load as if it were not there. The loader also carries the dependency cascade: a plugin leaving RUNNING
makes its dependents UNAVAILABLE, and its return to RUNNING brings them back.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any, Protocol

from plugin_health.errors import DuplicatePluginError, IllegalTransitionError, PluginError
from plugin_health.lifecycle import (
    PluginLifecycleManager,
    PluginLifecycleState,
    TransitionRecord,
    UnavailableReason,
)
from plugin_health.loader.dependencies import Requiring, own_problem, resolve
from plugin_health.loader.handles import InlineHandle, Placed, Placement, PluginHandle
from plugin_health.loader.importing import find_plugin_class, import_source
from plugin_health.loader.registry import PluginEntry, PluginRegistry, PluginSpec
from plugin_health.loader.sources import PluginSource, declared_attribute, scan
from plugin_health.plugin import Plugin, PluginContext
from plugin_health.sandbox import PluginSandboxResult, Sandbox, SandboxLimits
from plugin_health.sandbox.results import describe, failed

logger = logging.getLogger(__name__)

#: Told of one call into a loaded plugin: ``observer(name, method, isolation, result)``.
Observer = Callable[[str, str, str, PluginSandboxResult], None]
#: Told of several calls into one plugin at once, in order: ``many(name, isolation, [(method, result), ...])``.
ManyObserver = Callable[[str, str, Sequence[tuple[str, PluginSandboxResult]]], None]

RUNNING = PluginLifecycleState.RUNNING
UNAVAILABLE = PluginLifecycleState.UNAVAILABLE
ACTIVE = frozenset({PluginLifecycleState.LOADED, PluginLifecycleState.INITIALIZED, RUNNING})
#: Plugins brought up together at start-up (their initialize, then their start, sent to their runner at once).
BRING_UP_MANY = 64


@dataclass(frozen=True, slots=True)
class LoaderSettings:
    """What the loader needs of the service's settings."""

    default_timeout: float | None = 10.0
    default_memory_limit_mb: int | None = 512
    plugin_config: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class FirstCheck:
    """A plugin's first health check, made as it came up with its load: its outcome, when the core learned of it, and
    the cause of its runner's loss when that check brought the runner down (the plugin is to blame)."""

    result: PluginSandboxResult
    at: datetime
    lost: str | None = None


class _PhaseFailed(Exception):
    """Internal: a load phase failed; the plugin has been marked FAILED."""


class SingletonGate(Protocol):
    """Who may run a singleton here: the keeper of its lease (a cluster sharing Redis)."""

    def hold(self, name: str) -> str | None:
        """None when this instance holds (or has just taken) ``name``'s lease; else the UNAVAILABLE reason
        (``standby: ...``) that keeps it from starting here."""
        ...

    def token(self, name: str) -> int | None:
        """The fencing token of the lease this instance holds for ``name``, or None."""
        ...


class PluginLoader:
    """Loads plugin sources into a registry and moves them through the lifecycle."""

    def __init__(
        self,
        registry: PluginRegistry | None = None,
        manager: PluginLifecycleManager | None = None,
        settings: LoaderSettings | None = None,
        placement: Placement | None = None,
    ) -> None:
        self.registry = registry if registry is not None else PluginRegistry()
        self.manager = manager if manager is not None else PluginLifecycleManager()
        self.settings = settings if settings is not None else LoaderSettings()
        #: Where plugins run when not in this process: every plugin when the loader belongs to the core, which
        #: never runs plugin code; else only ``isolation = "process"`` plugins (None: they cannot load).
        self.placement = placement
        self.everything_placed = placement is not None
        #: Where each tracked name came from, failed ones included (a restart re-imports from here).
        self.sources: dict[str, PluginSource] = {}
        self.finished = threading.Event()
        #: Plugins an operator disabled: loaded, never brought up, UNAVAILABLE ``disabled``.
        self.disabled: set[str] = set()
        #: Told of every call into a loaded plugin: ``observer(name, method, isolation, result)`` (metrics).
        self.observers: list[Observer] = []
        #: An observer's form for several calls into one plugin at once (``observe``'s ``many``).
        self._many_observers: dict[Observer, ManyObserver] = {}
        #: Decides where singletons run (None: no cluster, every singleton runs here as any plugin).
        self.singletons: SingletonGate | None = None
        #: Who judges the first health check of a plugin brought up with its load, made then too and judged as soon
        #: as it is known (its owner checks the others once loading is over). None: no check is made with a load.
        self.judge_first: Callable[[str, FirstCheck], None] | None = None
        self._cascade: deque[TransitionRecord] = deque()
        self._default_limits: tuple[LoaderSettings, SandboxLimits] | None = None  # ``_limits`` of one declaring none
        self._cycles: dict[str, str] = {}
        self._draining = threading.local()
        self.manager.subscribe(self._on_transition, self._on_transitions)

    # -- loading ------------------------------------------------------------------------------------------

    def load(self, sources: Iterable[PluginSource]) -> None:
        """Load every source, resolve dependencies, then initialize and start in dependency order."""
        sources = list(sources)
        # The sources that share a runner are sent to it ahead, so that it imports the next ones while the
        # core registers one (one round trip each, waited for, was most of loading 10,000 plugins); whether a source
        # runs apart is read as the sending reaches it (reading 10,000 sources first held the runner up 0.2-0.7 s).
        placing = self.everything_placed and bool(sources)
        ahead: Iterator[Placed | None] = iter(())
        if self.placement is not None and placing:
            ahead = self.placement.load_many(sources, self._limits(None, None), self._ups(sources),
                                             apart=self._placing)
        # The plugins that came up whole as their loads arrived together are entered in one step (``_enter_whole``):
        # kept until nothing more has arrived (``ready``, where the placement tells it) or another kind of plugin
        # comes, which goes after them, so that every plugin is entered in its order, and none waits for a load.
        ready: Callable[[], bool] = getattr(ahead, "ready", _never)
        whole: list[tuple[PluginEntry, Placed]] = []
        try:
            for source in sources:
                placed = next(ahead) if placing else None
                if placed is None or not self._joined_whole(source, placed, whole):
                    self._enter_whole(whole)
                    self._load_source(source, placed)
                if whole and not ready():
                    self._enter_whole(whole)
        finally:
            close = getattr(ahead, "close", None)
            if close is not None:
                close()
            self._enter_whole(whole)  # (also when the loads failed: every plugin registered is entered)
        failed = [n for n in self.sources if n not in self.registry]
        resolution = resolve(self.registry.declared(), failed)
        # Cycles cannot change while the same plugins are registered: kept to answer every later bring-up.
        self._cycles = {name: reason for name, reason in resolution.unavailable.items()
                        if reason.startswith(UnavailableReason.DEPENDENCY_CYCLE.value)}
        for name, reason in sorted(resolution.unavailable.items()):
            self.manager.trigger(name, "make_unavailable", reason=reason)
        # Plugins that need nothing of another and share a runner are brought up BRING_UP_MANY at a time (their
        # calls sent together); any other goes on its own, after those before it in the order.
        together: list[str] = []
        for name in resolution.order:
            if self.manager.state_of(name) is not PluginLifecycleState.LOADED:
                continue
            if name in self.disabled:
                self.manager.trigger(name, "make_unavailable", reason=str(UnavailableReason.DISABLED))
            elif self._shares_runner(name):
                together.append(name)
                if len(together) >= BRING_UP_MANY:
                    self._bring_up_many(together)
                    together = []
            else:
                self._bring_up_many(together)
                together = []
                self.bring_up(name)
        self._bring_up_many(together)
        self.finished.set()

    def _shares_runner(self, name: str, requires: bool = False) -> bool:
        """Whether ``name``'s calls may be sent with others': it lives in the shared runner and is no singleton,
        and (to be brought up with others, unless ``requires``) requires nothing."""
        entry = self.registry.get_or_none(name)
        return (entry is not None and self.placement is not None and (requires or not entry.spec.requires)
                and not entry.spec.singleton and getattr(entry.handle, "isolation", None) == "inline"
                and not getattr(entry.handle, "lost", True))

    def _bring_up_many(self, names: list[str]) -> None:
        """``bring_up`` of several plugins that share a runner: each phase's calls sent together (every initialize,
        then the start of those initialized), each outcome judged and recorded in order as ``bring_up`` does. A
        plugin whose call did not run (its runner was lost first) is brought up on its own, or recovered."""
        alone: list[str] = []
        for phase in ("initialize", "start"):
            if not names:
                break
            assert self.placement is not None
            entries = [self.registry.get(name) for name in names]
            args = [(self.context_for(entry),) if phase == "initialize" else () for entry in entries]
            results = self.placement.call_many([entry.handle for entry in entries], phase, args)
            passed = []
            for entry, result in zip(entries, results, strict=True):
                if result is None:
                    alone.append(entry.name)
                    continue
                self._observe(entry, phase, result)
                if self._judge(entry.name, phase, result, str):
                    passed.append(entry.name)
            names = passed
        for name in alone:
            if self.manager.state_of(name) is PluginLifecycleState.LOADED:
                self.bring_up(name)
            # INITIALIZED (its start never ran, its runner lost): the supervisor recovers it with the runner's others

    def _judge(self, name: str, phase: str, result: PluginSandboxResult, reason_for: Callable[[str], str]) -> bool:
        """Move ``name`` by the outcome of its ``phase`` (``initialize`` or ``start``): True when it passed."""
        if result.ok and result.result is False:  # as in Home Assistant: False is a failed setup
            result = failed("PluginSetupError", f"{phase} returned False", result.duration_ms)
        if not result.ok:
            self.manager.trigger(
                name, "fail", reason=reason_for(f"{phase} failed"), error_type=result.error_type, error=result.error
            )
            return False
        self.manager.trigger(name, phase)
        return True

    def _load_source(self, source: PluginSource, placed: Placed | None = None) -> PluginEntry | None:
        try:
            spec, handle = self._instantiate(source, placed=placed)
        except _PhaseFailed:
            return None
        try:
            if spec.name in self.manager:
                taken = self.sources[spec.name]
                raise DuplicatePluginError(spec.name, source.label, taken.label)
            entry = self.registry.register(spec, source, handle)
        except DuplicatePluginError as err:
            handle.close()
            self._enter_failed(source, spec.name, "duplicate name", err)
            return None
        self.sources[spec.name] = source
        self.manager.set_state(spec.name, PluginLifecycleState.LOADED)
        if placed is not None and placed.up:
            self._came_up(entry, placed)
        return entry

    def _joined_whole(self, source: PluginSource, placed: Placed, whole: list[tuple[PluginEntry, Placed]]) -> bool:
        """Register ``source``'s plugin, loaded and brought up whole in one step (its ``initialize`` and ``start``
        passed with its load, and the core would have brought it up early), and add it to ``whole``, to be entered
        RUNNING with the others there (``_enter_whole``): what ``_load_source`` does for it, but for the entering.
        False, and nothing done, for any other plugin (one whose declaration is refused, a name taken, another kind
        of plugin, one whose instance is gone since): ``_load_source`` loads it, from the start, and ``_came_up``
        judges its phases one at a time."""
        up, handle = placed.up, placed.handle
        if (handle is None or len(up) < 2 or placed.up_lost is not None or getattr(handle, "lost", False)
                or not (up[0].ok and up[1].ok) or up[0].result is False or up[1].result is False):
            return False
        validated = _validated(placed.declaration or {}, source.name)
        if not validated.ok:
            return False
        spec: PluginSpec = validated.result
        if not self._may_come_up(spec, source) or spec.name in self.manager or spec.name in self.registry:
            return False
        handle.limits = self._limits(spec.timeout, spec.memory_limit_mb)
        handle.name = spec.name
        whole.append((self.registry.register(spec, source, handle), placed))
        self.sources[spec.name] = source
        return True

    def _enter_whole(self, whole: list[tuple[PluginEntry, Placed]]) -> None:
        """Enter every plugin of ``whole`` RUNNING in one step (``enter_many_through``: LOADED, ``initialize``,
        ``start``, each plugin's calls observed first), then hand each one's first check to ``judge_first``; ``whole``
        is emptied first."""
        if not whole:
            return
        taken = whole[:]
        whole.clear()  # (taken once, whatever happens next)
        for entry, placed in taken:
            self._observe_all(entry, tuple(zip(("initialize", "start", "health_check"), placed.up, strict=False)))
        stepped = self.manager.enter_many_through([entry.name for entry, _ in taken], PluginLifecycleState.LOADED,
                                                  ("initialize", "start"))
        for (entry, placed), records in zip(taken, stepped, strict=True):
            self._first_check(entry, placed, observed=True, at=records[-1].at)

    @staticmethod
    def _may_come_up(spec: PluginSpec, source: PluginSource) -> bool:
        """Whether the core would have brought the plugin ``spec`` declares (loaded from ``source``) up with its load
        (a runner that says otherwise is not believed)."""
        return not (spec.requires or spec.singleton or spec.isolation != "inline" or spec.name != source.name)

    def _ups(self, sources: list[PluginSource]) -> list[Mapping[str, Any] | None] | None:
        """What each source may be brought up with in the step that loads it (``Placement.load_many``): its
        configuration and the longest a phase may take. None for a source that must come up the usual way whatever
        it declares: its name is not its own among ``sources`` (a duplicate is refused before anything runs), or an
        operator disabled it. Whether it needs another plugin, runs apart or is known by another name, the runner
        finds out as it loads it, and then only loads it (and a configuration the requests cannot carry, the
        placement finds out as it sends it)."""
        longest = self.settings.default_timeout
        if longest is None:
            return None
        seen = Counter(source.name for source in sources)
        ups: list[Mapping[str, Any] | None] = []
        for source in sources:
            ups.append(None if seen[source.name] > 1 or source.name in self.disabled else {
                "config": dict(self.settings.plugin_config.get(source.name, {})), "timeout": longest,
                "check": self.judge_first is not None})
        return ups

    def _came_up(self, entry: PluginEntry, placed: Placed) -> None:
        """Judge the ``initialize`` and ``start`` that ran with ``entry``'s load, in order, as ``bring_up`` judges
        its own calls, and hand its first health check to ``judge_first``. Unless its instance is
        gone since (its runner was lost after them, and it was not to blame): then it stays LOADED and comes up again
        in a fresh runner, the usual way. And a plugin the core would not have brought up early (a runner that says
        otherwise is not believed) loses that instance and comes up the usual way too."""
        handle = entry.handle
        if getattr(handle, "lost", False) and placed.up_lost is None:
            return
        if not self._may_come_up(entry.spec, entry.source):
            handle.close()
            return
        for phase, result in zip(("initialize", "start"), placed.up, strict=False):
            self._observe(entry, phase, result)
            if not self._judge(entry.name, phase, result, str):
                return
        self._first_check(entry, placed)

    def _first_check(self, entry: PluginEntry, placed: Placed, observed: bool = False,
                     at: datetime | None = None) -> None:
        """Hand the first health check made with ``entry``'s load, if one was, to ``judge_first`` (``observed``: the
        observers were told of it already; ``at``: when the core learned of it, the time of the step that entered the
        plugin RUNNING with it, else now)."""
        if len(placed.up) == 3:
            # Its time is the core's, as its transitions' are: when the core learned of it, not before it was RUNNING.
            if not observed:
                self._observe(entry, "health_check", placed.up[2])
            if self.judge_first is not None:
                self.judge_first(entry.name, FirstCheck(placed.up[2], datetime.now(UTC) if at is None else at,
                                                        placed.up_lost))

    def _limits(self, timeout: float | None, memory_limit_mb: int | None) -> SandboxLimits:
        """The limits of a plugin that declares ``timeout`` and ``memory_limit_mb`` (None: the service's defaults).
        Made once for the plugins that declare neither, most of them (limits are frozen: shared as they are)."""
        if timeout is None and memory_limit_mb is None:
            made = self._default_limits
            if made is None or made[0] is not self.settings:  # (settings replaced since: made again)
                made = self._default_limits = (self.settings, self._made_limits(None, None))
            return made[1]
        return self._made_limits(timeout, memory_limit_mb)

    def _made_limits(self, timeout: float | None, memory_limit_mb: int | None) -> SandboxLimits:
        return SandboxLimits(
            timeout=timeout if timeout is not None else self.settings.default_timeout,
            memory_limit_mb=memory_limit_mb if memory_limit_mb is not None else self.settings.default_memory_limit_mb,
        )

    def _instantiate(self, source: PluginSource, key: str | None = None,
                     placed: Placed | None = None) -> tuple[PluginSpec, PluginHandle]:
        if self.everything_placed or declared_attribute(source, "isolation") == "process":
            return self._instantiate_placed(source, key, placed)
        sandbox = Sandbox(self._limits(None, None))
        module = self._phase(source, "import", sandbox.run(import_source, source), key)
        plugin_class: type[Plugin] = self._phase(
            source, "class lookup", sandbox.run(find_plugin_class, module, source), key
        )
        spec = self._phase(source, "declaration", sandbox.run(PluginSpec.from_class, plugin_class, source.name), key)
        limits = self._limits(spec.timeout, spec.memory_limit_mb)
        if spec.isolation == "process":  # declared in a way the source scan could not read: move it out now
            return self._instantiate_placed(source, key)
        instance = self._phase(source, "instantiation", Sandbox(limits).run(plugin_class), key or spec.name)
        return spec, InlineHandle(instance, limits)

    def _dedicated(self, source: PluginSource) -> bool:
        """Whether the source text asks for a runner of its own: ``isolation = "process"``, or a singleton (when
        its lease is in doubt, its runner can be ended without touching any other plugin)."""
        return self._placing(source)[0]

    @staticmethod
    def _placing(source: PluginSource) -> tuple[bool, bytes | None]:
        """``_dedicated``, and the source's text as read to tell (None: not carried): the shared runner imports those
        very bytes, so that what runs there is what was scanned here."""
        scanned = scan(source, ("isolation", "singleton"))  # the source read once for both
        declared = scanned.declared
        return declared["isolation"] == "process" or declared["singleton"] is True, scanned.text

    def _instantiate_placed(self, source: PluginSource, key: str | None,
                            placed: Placed | None = None) -> tuple[PluginSpec, PluginHandle]:
        """Load the source in a runner (unless ``placed`` there already): the validated declaration comes back as
        plain data, validated again here."""
        if self.placement is None:
            problem = "isolation 'process' needs a placement for plugins (the service's runners)"
            self._phase(source, "declaration", failed("InvalidPluginError", problem, 0.0), key)
        assert self.placement is not None
        if placed is None:
            placed = self.placement.load(source, self._dedicated(source), self._limits(None, None))
        if placed.handle is None:
            outcome = failed(placed.error_type or "PluginLoadError", placed.error or "no detail", 0.0)
            self._phase(source, placed.phase or "import", outcome, key)
        handle = placed.handle
        assert handle is not None
        try:
            spec = self._phase(source, "declaration", _validated(placed.declaration or {}, source.name), key)
            if (spec.isolation == "process" or spec.singleton) and handle.isolation != "process":
                handle.close()  # declared in a way the source scan could not read: move it to a runner of its own
                placed = self.placement.load(source, True, self._limits(None, None))
                if placed.handle is None:
                    outcome = failed(placed.error_type or "PluginLoadError", placed.error or "no detail", 0.0)
                    self._phase(source, placed.phase or "import", outcome, key)
                assert placed.handle is not None
                handle = placed.handle
        except _PhaseFailed:
            handle.close()
            raise
        handle.limits = self._limits(spec.timeout, spec.memory_limit_mb)
        handle.name = key or spec.name
        return spec, handle

    def _phase(self, source: PluginSource, phase: str, result: PluginSandboxResult, name: str | None = None) -> Any:
        if result.ok:
            return result.result
        self._enter_failed(source, name or source.name, f"{phase} failed", result)
        raise _PhaseFailed(phase)

    def _enter_failed(
        self, source: PluginSource, name: str, reason: str, failure: PluginSandboxResult | Exception
    ) -> None:
        """Mark a plugin whose code did not load as FAILED.

        On a reload, ``name`` is its tracked key and it moves LOADED -> FAILED; on a first load it is tracked
        as FAILED from the start under a free name (``name``, else ``name.2``, ``name.3``...).
        """
        error_type: str | None
        error: str | None
        if isinstance(failure, Exception):
            error_type, error = type(failure).__name__, str(failure)
        else:
            error_type, error = failure.error_type, failure.error
        if self.sources.get(name) is source and self.manager.may(name, "fail"):
            self.manager.trigger(name, "fail", reason=reason, error_type=error_type, error=error)
            return
        key, n = name, 1
        while key in self.manager or key in self.registry:
            n += 1
            key = f"{name}.{n}"
        self.sources[key] = source
        self.manager.set_state(key, PluginLifecycleState.FAILED, reason=reason, error_type=error_type, error=error)

    # -- moving one plugin -------------------------------------------------------------------------------

    def context_for(self, entry: PluginEntry) -> PluginContext:
        """The context handed to ``initialize``: config, a named logger, and its dependencies' instances.

        In a runner, a dependency's instance is handed over when it lives in the same runner.
        """
        config = dict(self.settings.plugin_config.get(entry.name, {}))
        logger_ = logging.getLogger(f"plugin_health.plugins.{entry.name}")
        dependencies = [dependency for r in entry.spec.requires if (dependency := self.registry.get_or_none(r.name))]
        plugins: dict[str, Any]
        if isinstance(entry.handle, InlineHandle):
            plugins = {d.name: d.handle.instance for d in dependencies if isinstance(d.handle, InlineHandle)}
        else:
            plugins = {d.name: d.handle for d in dependencies if entry.handle.uses_process_of(d.handle)}
        return PluginContext(
            name=entry.name,
            config=MappingProxyType(config),
            logger=logger_,
            plugins=MappingProxyType(plugins),
            fencing_token=self.singletons.token(entry.name) if self.singletons and entry.spec.singleton else None,
        )

    def bring_up(self, name: str, reason_for: Callable[[str], str] = str) -> PluginLifecycleState:
        """LOADED -> INITIALIZED -> RUNNING, or FAILED with the phase's error, or UNAVAILABLE for a missing dependency.

        ``reason_for`` turns the failure reason (``"start failed"``) into the one recorded; the supervisor
        uses it to record ``restart limit reached`` on the last allowed attempt.
        """
        entry = self.registry.get(name)
        problem = self.dependency_problem(name)
        if problem is None and entry.spec.singleton and self.singletons is not None:
            problem = self.singletons.hold(name)  # another instance runs it (or may, as far as we can tell)
        if problem is not None:  # checked first on every path up: never started against a dependency it refuses
            self.manager.trigger(name, "make_unavailable", reason=problem)
            return UNAVAILABLE
        if getattr(entry.handle, "lost", False) and not self._reinstantiate(entry, reason_for):
            return self.manager.state_of(name)
        for phase, args in (("initialize", (self.context_for(entry),)), ("start", ())):
            if not self._judge(name, phase, self.call(name, phase, args), reason_for):
                return PluginLifecycleState.FAILED
        return RUNNING

    def dependency_problem(self, name: str) -> str | None:
        """Why ``name`` cannot start now (the UNAVAILABLE reason: missing, refused version, cycle, not RUNNING)."""
        entry = self.registry.get(name)
        if not entry.spec.requires:
            return None
        plugins = _DeclaredView(self.registry)
        failed_to_load = [r.name for r in entry.spec.requires if r.name in self.sources and r.name not in self.registry]
        problem = own_problem(entry.spec, plugins, failed_to_load) or self._cycles.get(name)
        if problem is not None:
            return problem
        for requirement in entry.spec.requires:
            if self.manager.get_state(requirement.name) is not RUNNING:
                return UnavailableReason.DEPENDENCY_UNAVAILABLE.with_detail(requirement.name)
        return None

    def take_down(self, name: str, trigger: str, reason: str | None, timeout: float | None = None,
                  **error: str | None) -> None:
        """Stop ``name`` and move it by ``trigger``, its RUNNING dependents first (each UNAVAILABLE, naming the
        dependency it lost), so that no plugin ever runs without what it requires.

        ``timeout``: seconds for all the stops together, when the caller has less time than the plugins' own.
        """
        deadline = None if timeout is None else time.monotonic() + timeout

        def left(of: str) -> float | None:
            return None if deadline is None else max(0.001, min(self._timeout_of(of), deadline - time.monotonic()))

        for dependent, lost in self._dependents_first(name):
            if self.manager.get_state(dependent) in ACTIVE:
                self.stop(dependent, timeout=left(dependent))
                self._try(dependent, "make_unavailable", UnavailableReason.DEPENDENCY_UNAVAILABLE.with_detail(lost))
        self.stop(name, timeout=left(name))
        self.manager.trigger(name, trigger, reason=reason, **error)

    def _dependents_first(self, name: str) -> list[tuple[str, str]]:
        """Every plugin that requires ``name``, directly or not, deepest first, each with the dependency it loses."""
        order: list[tuple[str, str]] = []
        seen = {name}
        stack: list[tuple[str, str, Iterator[str]]] = [(name, "", iter(self.registry.dependents(name)))]
        while stack:
            node, via, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                if node != name:
                    order.append((node, via))
            elif child not in seen:
                seen.add(child)
                stack.append((child, node, iter(self.registry.dependents(child))))
        return order

    def _reinstantiate(self, entry: PluginEntry, reason_for: Callable[[str], str]) -> bool:
        """Load a plugin whose instance was lost with its runner again (it is LOADED); False if it FAILED."""
        try:
            spec, handle = self._instantiate(entry.source, key=entry.name)
        except _PhaseFailed:
            return False
        if spec.name != entry.name:
            handle.close()
            error = f"the plugin now declares the name {spec.name!r}"
            self.manager.trigger(entry.name, "fail", reason=reason_for("declaration failed"),
                                 error_type="InvalidPluginError", error=error)
            return False
        entry.handle = handle
        return True

    def restart(
        self, name: str, reason_for: Callable[[str], str] = str, why: str | None = None
    ) -> PluginLifecycleState:
        """Bring ``name`` back from any state: stop it if active, ``reset`` (recording ``why``), load its code again
        if it never loaded, then ``initialize`` and ``start``."""
        state = self.manager.state_of(name)
        if state in ACTIVE:
            self.take_down(name, "make_unavailable", str(UnavailableReason.STOPPED))
        self.manager.trigger(name, "reset", reason=why)
        if name not in self.registry:
            source = self.sources[name]
            try:
                spec, handle = self._instantiate(source, key=name)
            except _PhaseFailed:
                return self.manager.state_of(name)
            if spec.name != name:
                handle.close()
                error = f"the plugin now declares the name {spec.name!r}"
                self.manager.trigger(name, "fail", reason=reason_for("declaration failed"),
                                     error_type="InvalidPluginError", error=error)
                return PluginLifecycleState.FAILED
            self.registry.register(spec, source, handle)
        return self.bring_up(name, reason_for)

    def call(
        self, name: str, method: str, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None,
        give_up_at: float | None = None, timeout: float | None = None,
    ) -> PluginSandboxResult:
        """Call ``method`` of the loaded plugin ``name`` through its sandbox, and tell the observers.

        ``give_up_at`` (monotonic): when the caller stops waiting; a call still queued then is dropped unrun.
        ``timeout``: shorter than the plugin's own, when the caller has less time.
        """
        entry = self.registry.get(name)
        if give_up_at is None:
            result: PluginSandboxResult = entry.handle.call(method, args, kwargs, timeout)
        else:
            result = entry.handle.call(method, args, kwargs, timeout, give_up_at=give_up_at)
        if result.refused:  # the caller's mistake (arguments that do not fit): nothing ran, nothing to count
            return result
        self._observe(entry, method, result)
        return result

    def call_many(self, names: list[str], method: str) -> list[PluginSandboxResult | None]:
        """``call(name, method)`` of each plugin (no arguments), those that share a runner ``BRING_UP_MANY`` at a
        time, sent together (``Placement.call_many``); None for a call that did not run (its runner was lost first,
        or its plugin runs elsewhere): make it on its own."""
        results: list[PluginSandboxResult | None] = [None] * len(names)
        if self.placement is None:
            return results
        shared = [i for i, name in enumerate(names) if self._shares_runner(name, requires=True)]
        for start in range(0, len(shared), BRING_UP_MANY):
            chunk = shared[start:start + BRING_UP_MANY]
            entries = [self.registry.get(names[i]) for i in chunk]
            found = self.placement.call_many([entry.handle for entry in entries], method, [() for _ in chunk])
            for i, entry, result in zip(chunk, entries, found, strict=True):
                if result is not None:
                    self._observe(entry, method, result)
                    results[i] = result
        return results

    def observe(self, observer: Observer, many: ManyObserver | None = None) -> None:
        """Tell ``observer`` of every call into a loaded plugin (``observers``); ``many``: the same observer for
        several calls into one plugin at once, ``many(name, isolation, [(method, result), ...])``, called instead of
        it once each (a plugin brought up with its load: its three calls, one lock of the metrics' tally, not three)."""
        self.observers.append(observer)
        if many is not None:
            self._many_observers[observer] = many

    def _observe(self, entry: PluginEntry, method: str, result: PluginSandboxResult) -> None:
        """Tell the observers of a call into ``entry``'s plugin."""
        self._observe_all(entry, ((method, result),))

    def _observe_all(self, entry: PluginEntry, calls: Sequence[tuple[str, PluginSandboxResult]]) -> None:
        """Tell the observers of several calls into ``entry``'s plugin, in order (each its ``many`` form, if any)."""
        isolation = entry.spec.isolation
        for observer in self.observers:
            try:
                many = self._many_observers.get(observer) if len(calls) > 1 else None
            except TypeError:  # an observer someone appended that cannot be hashed: it has no many form
                many = None
            if many is not None:
                try:
                    many(entry.name, isolation, calls)
                except Exception:  # an observer's bug must not turn into the plugin's failure
                    logger.exception("call observer %r failed on %s", many, entry.name)
                continue
            for method, result in calls:
                try:
                    observer(entry.name, method, isolation, result)
                except Exception:  # an observer's bug must not turn into the plugin's failure
                    logger.exception("call observer %r failed on %s", observer, entry.name)

    def stop(self, name: str, timeout: float | None = None) -> PluginSandboxResult | None:
        """Call the plugin's ``stop`` if it is RUNNING (no state change here); None if it was not running."""
        if self.manager.state_of(name) is not RUNNING:
            return None
        try:
            result = self.call(name, "stop", timeout=timeout)
        except PluginError:  # its instance is gone with its runner: nothing left to stop
            return None
        if not result.ok:
            logger.warning("plugin %s: stop failed with %s", name, result.error_type)
        return result

    def shutdown(self) -> None:
        """Stop every RUNNING plugin (dependents first) as UNAVAILABLE ``stopped``, and close every handle.

        All the stops share one deadline, the longest stop timeout among them: however many plugins there are and
        whatever each does in ``stop``, shutting down ends within it (plus a runner's grace). A plugin reached after
        the deadline is not asked to stop; closing the handles ends it with its runner.
        """
        order = [name for name in reversed(resolve(self.registry.declared()).order) if name in self.manager]
        running = [name for name in order if self.manager.state_of(name) is RUNNING]
        longest = max((self._timeout_of(name) for name in running), default=0.0)
        deadline = time.monotonic() + longest
        for name in order:
            if self.manager.state_of(name) not in ACTIVE:
                continue
            remaining = deadline - time.monotonic()
            if remaining > 0.001:
                self.stop(name, timeout=min(self._timeout_of(name), remaining))
            self._try(name, "make_unavailable", str(UnavailableReason.STOPPED))
        for entry in self.registry:
            if entry.handle is not None:
                entry.handle.close()
        if self.placement is not None:
            self.placement.close()

    def _timeout_of(self, name: str) -> float:
        handle = self.registry.get(name).handle
        timeout = None if handle is None else handle.limits.timeout
        return timeout if timeout is not None else (self.settings.default_timeout or 10.0)

    # -- the dependency cascade ------------------------------------------------------------------------

    def _on_transitions(self, records: Sequence[TransitionRecord]) -> None:
        """``_on_transition`` of several records, in order: those that enter or leave RUNNING (of a plugin brought up
        in one step, its last)."""
        for record in records:
            if (record.source is RUNNING) != (record.dest is RUNNING):
                self._on_transition(record)

    def _on_transition(self, record: TransitionRecord) -> None:
        if (record.source is RUNNING) == (record.dest is RUNNING):
            return
        self._cascade.append(record)
        if getattr(self._draining, "active", False):
            return  # the outer call drains: a long chain of dependents never deepens the stack
        self._draining.active = True
        try:
            while self._cascade:
                self._propagate(self._cascade.popleft())
        finally:
            self._draining.active = False

    def _propagate(self, record: TransitionRecord) -> None:
        for dependent in self.registry.dependents(record.plugin):
            if dependent not in self.manager:
                continue
            state = self.manager.state_of(dependent)
            if record.dest is not RUNNING and state in ACTIVE:
                self.stop(dependent)
                reason = UnavailableReason.DEPENDENCY_UNAVAILABLE.with_detail(record.plugin)
                self._try(dependent, "make_unavailable", reason)
            elif (
                record.dest is RUNNING
                and state is UNAVAILABLE
                and self._waits_on_dependency(dependent)
                and self._try(dependent, "reset", None)
            ):
                self.bring_up(dependent)

    def _waits_on_dependency(self, name: str) -> bool:
        reason = self.manager.last(name).reason or ""
        if not reason.startswith(UnavailableReason.DEPENDENCY_UNAVAILABLE.value):
            return False
        requires = self.registry.get(name).spec.requires
        return all(r.name in self.manager and self.manager.state_of(r.name) is RUNNING for r in requires)

    def _try(self, name: str, trigger: str, reason: str | None) -> bool:
        """Fire a cascade trigger; another thread may have moved the plugin meanwhile, which is fine."""
        if not self.manager.may(name, trigger):
            return False
        try:
            self.manager.trigger(name, trigger, reason=reason)
        except IllegalTransitionError:
            return False
        return True


def _never() -> bool:
    """``ready`` of a placement's loads that cannot tell whether the next has arrived: never taken to have."""
    return False


def _validated(declaration: Mapping[str, Any], default_name: str) -> PluginSandboxResult:
    """A runner's declaration checked (``PluginSpec.from_mapping``) as an outcome: the spec, or why it is refused.

    The core's own code on plain data (JSON values from the safe codec) needs no sandbox: a try is enough (a
    sandbox's timer and bookkeeping were a tenth of registering a plugin)."""
    try:
        return PluginSandboxResult(True, PluginSpec.from_mapping(declaration, default_name))
    except Exception as err:  # noqa: BLE001 - any refusal of the declaration is its phase's failure
        return failed(type(err).__name__, describe(err), 0.0)


class _DeclaredView(Mapping[str, Requiring]):
    """The registry's declarations as a mapping, read one at a time (no copy of every plugin's)."""

    def __init__(self, registry: PluginRegistry) -> None:
        self._registry = registry

    def __getitem__(self, name: str) -> Requiring:
        entry = self._registry.get_or_none(name)
        if entry is None:
            raise KeyError(name)
        return entry.spec

    def __iter__(self) -> Iterator[str]:
        return (entry.name for entry in self._registry)

    def __len__(self) -> int:
        return len(self._registry)
