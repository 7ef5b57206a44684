"""``PluginLifecycleManager``: the state of every plugin, moved only along the transition table."""

from __future__ import annotations

import itertools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime

from plugin_health.errors import IllegalTransitionError, UnknownPluginError
from plugin_health.lifecycle import machine
from plugin_health.lifecycle.records import History, TransitionRecord
from plugin_health.lifecycle.states import ENTER_TRIGGER, FIRST_STATES, LEGAL_MOVES, PluginLifecycleState

logger = logging.getLogger(__name__)

#: The states of the way up: a move there is routine, news only in bulk while thousands of plugins load.
ROUTINE = frozenset({PluginLifecycleState.LOADED, PluginLifecycleState.INITIALIZED, PluginLifecycleState.RUNNING})

Listener = Callable[[TransitionRecord], None]
#: A listener told of several records at once, in order (a plugin that entered and moved on in one step).
ManyListener = Callable[[Sequence[TransitionRecord]], None]

DEFAULT_HISTORY_LIMIT = 100


class _Tracked:
    __slots__ = ("history", "model")

    def __init__(self, model: machine._LifecycleModel, history: History) -> None:
        self.model = model
        self.history = history


#: What an untracked plugin is allowed: entering.
_ENTER_ALLOWED = ("set_state(LOADED)",)


def _as_state(
    plugin: str, current: str | None, value: PluginLifecycleState | str, allowed: tuple[str, ...]
) -> PluginLifecycleState:
    if type(value) is PluginLifecycleState:  # a state already (what the enum's call would give back, in Python)
        return value
    try:
        return PluginLifecycleState(value)
    except ValueError:
        raise IllegalTransitionError(plugin, current, f"moving to unknown state {value!r}", allowed) from None


class PluginLifecycleManager:
    """Tracks plugins by name; every change goes through a legal trigger and is recorded.

    Thread-safe: each plugin has its own lock, so a slow caller on one plugin never blocks the others.
    Listeners are called after each transition, outside the plugin's lock, in the thread that moved it.
    """

    def __init__(self, history_limit: int = DEFAULT_HISTORY_LIMIT) -> None:
        self._history_limit = history_limit
        self._plugins: dict[str, _Tracked] = {}
        self._enter_lock = threading.Lock()
        self._listeners: list[tuple[Listener, ManyListener | None]] = []
        self._versions = itertools.count(1)
        self._version = 0
        #: The level of the line logged for a routine move (to LOADED, INITIALIZED or RUNNING); the core lowers it
        #: to DEBUG while it loads, and says how many there were in a line per batch instead. Every other move
        #: (a failure at WARNING, UNAVAILABLE, ...) always has its own line.
        self.routine_level = logging.INFO

    # -- moving plugins ---------------------------------------------------------------------------

    def set_state(
        self,
        name: str,
        state: PluginLifecycleState | str,
        *,
        reason: str | None = None,
        error_type: str | None = None,
        error: str | None = None,
    ) -> TransitionRecord:
        """Move ``name`` to ``state`` by the one legal trigger that leads there, or enter it if untracked."""
        tracked = self._plugins.get(name)
        if tracked is None:
            return self._enter(name, state, reason, error_type, error)
        with tracked.model.lock:
            current = tracked.model.state
            target = _as_state(name, current.value, state, machine.allowed_triggers(current))
            trigger = next((t for (s, t), d in LEGAL_MOVES.items() if s is current and d is target), None)
            if trigger is None:
                raise IllegalTransitionError(
                    name, current.value, f"moving to {target.value}", machine.allowed_triggers(current)
                )
            record = self._fire(tracked, trigger, reason, error_type, error)
        self._notify(record)
        return record

    def trigger(
        self,
        name: str,
        trigger: str,
        *,
        reason: str | None = None,
        error_type: str | None = None,
        error: str | None = None,
    ) -> TransitionRecord:
        """Fire ``trigger`` on ``name``; ``IllegalTransitionError`` (and no change) if the table forbids it."""
        tracked = self._tracked(name)
        with tracked.model.lock:
            record = self._fire(tracked, trigger, reason, error_type, error)
        self._notify(record)
        return record

    def enter_through(self, name: str, state: PluginLifecycleState, triggers: Sequence[str]) -> list[TransitionRecord]:
        """Enter the untracked ``name`` in ``state`` and fire ``triggers`` on it, in order, in one step: the records
        ``set_state`` and then ``trigger`` for each would make (stamped with one time, the step's), but no one sees
        the plugin between them, and each listener is told of them together (its ``many``, else once a record, in
        order): ``enter_many_through`` of one plugin. ``IllegalTransitionError``, and nothing changed, if the table
        forbids any of them; a plugin another thread entered meanwhile is moved the usual way, one trigger at a
        time."""
        return self.enter_many_through((name,), state, triggers)[0]

    def enter_many_through(self, names: Sequence[str], state: PluginLifecycleState,
                           triggers: Sequence[str]) -> list[list[TransitionRecord]]:
        """``enter_through`` of several untracked plugins, in the order of ``names``, in one step: every record
        stamped with the step's one time, and each listener told once of them all (each plugin's records together,
        in that order: its ``many``, else once a record). The records of each plugin, in order. Plugins loaded and
        brought up with their loads come up so, as many as arrived together (one lock, one version, one call a
        listener for them all). ``IllegalTransitionError``, and nothing changed, if the table forbids any move; a
        plugin another thread entered meanwhile is moved the usual way, after the others, one trigger at a time."""
        entered = self._entered_many(names, state, triggers, None, None, None)
        told = tuple(record for records in entered if records is not None for record in records)
        if told:
            self._notify_many(told)  # listeners share the tuple: none can change another's
        return [list(records) if records is not None
                else [self.set_state(name, state)] + [self.trigger(name, trigger) for trigger in triggers]
                for name, records in zip(names, entered, strict=True)]

    def forget(self, name: str) -> None:
        """Stop tracking ``name`` (its history goes with it)."""
        with self._enter_lock:
            if self._plugins.pop(name, None) is not None:
                self._version = next(self._versions)

    def subscribe(self, listener: Listener, many: ManyListener | None = None) -> None:
        """Call ``listener(record)`` after every transition, including a plugin's first state; ``many``: the same
        listener for several records at once (``enter_through``), called instead of ``listener`` once each."""
        self._listeners.append((listener, many))

    # -- reading --------------------------------------------------------------------------------------

    def get_state(self, name: str) -> PluginLifecycleState | None:
        """The current state of ``name``; None if it is not tracked (the original plan's contract)."""
        tracked = self._plugins.get(name)
        return None if tracked is None else tracked.model.state

    def state_of(self, name: str) -> PluginLifecycleState:
        """The current state of ``name``; ``UnknownPluginError`` if it is not tracked."""
        return self._tracked(name).model.state

    def all_states(self) -> dict[str, PluginLifecycleState]:
        """Every tracked plugin's current state, by name in sorted order."""
        return {name: self._plugins[name].model.state for name in sorted(self._plugins)}

    def last(self, name: str) -> TransitionRecord:
        """The newest transition of ``name``: its state, reason, error and since when."""
        return self._tracked(name).history.last

    def history(self, name: str) -> list[TransitionRecord]:
        """The recorded transitions of ``name``, oldest first (bounded)."""
        return list(self._tracked(name).history)

    def may(self, name: str, trigger: str) -> bool:
        """Whether ``trigger`` is legal for ``name`` now."""
        return (self.state_of(name), trigger) in LEGAL_MOVES

    def allowed_triggers(self, name: str) -> tuple[str, ...]:
        """The triggers legal for ``name`` now."""
        return machine.allowed_triggers(self.state_of(name))

    @property
    def version(self) -> int:
        """A number that changes whenever any plugin moves (for caches and ETags)."""
        return self._version

    def __contains__(self, name: object) -> bool:
        return name in self._plugins

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._plugins))

    def __len__(self) -> int:
        return len(self._plugins)

    # -- internals ------------------------------------------------------------------------------------

    def _tracked(self, name: str) -> _Tracked:
        try:
            return self._plugins[name]
        except KeyError:
            raise UnknownPluginError(name) from None

    def _enter(
        self,
        name: str,
        state: PluginLifecycleState | str,
        reason: str | None,
        error_type: str | None,
        error: str | None,
    ) -> TransitionRecord:
        records = self._entered(name, state, (), reason, error_type, error)
        if records is None:  # another thread entered it first: this is now an ordinary move
            return self.set_state(name, state, reason=reason, error_type=error_type, error=error)
        self._notify(records[0])
        return records[0]

    def _entered(
        self,
        name: str,
        state: PluginLifecycleState | str,
        triggers: Sequence[str],
        reason: str | None,
        error_type: str | None,
        error: str | None,
    ) -> tuple[TransitionRecord, ...] | None:
        """Track the untracked ``name`` in ``state`` (a first state), moved on by ``triggers``, all or nothing: the
        records, none yet told; None if it is tracked already."""
        return self._entered_many((name,), state, triggers, reason, error_type, error)[0]

    def _entered_many(
        self,
        names: Sequence[str],
        state: PluginLifecycleState | str,
        triggers: Sequence[str],
        reason: str | None,
        error_type: str | None,
        error: str | None,
    ) -> list[tuple[TransitionRecord, ...] | None]:
        """``_entered`` of each of ``names``, in one step, all or nothing: every plugin's records are made before any
        is tracked; None for a name tracked already (or given twice: its second time)."""
        target = _as_state(names[0] if names else "", None, state, _ENTER_ALLOWED)
        if target not in FIRST_STATES:
            raise IllegalTransitionError(names[0] if names else "", None, f"entering in {target.value}",
                                         _ENTER_ALLOWED)
        entered: list[tuple[TransitionRecord, ...] | None] = []
        made: dict[str, tuple[machine._LifecycleModel, tuple[TransitionRecord, ...]]] = {}
        moves: list[tuple[PluginLifecycleState, PluginLifecycleState, str]] | None = None  # found at the first name
        with self._enter_lock:
            plugins = self._plugins
            at = datetime.now(UTC)  # the moves of one step share its time
            for name in names:
                if name in plugins or name in made:
                    entered.append(None)
                    continue
                if moves is None:
                    moves = _moves(name, target, triggers)
                records = (TransitionRecord.now(name, None, target, ENTER_TRIGGER, reason, error_type, error, at),
                           *[TransitionRecord.now(name, source, dest, trigger, None, None, None, at)
                             for source, dest, trigger in moves])
                made[name] = machine.new_model(name, moves[-1][1] if moves else target), records
                entered.append(records)
            # The moves logged, alike for every plugin of the step (routine ones unlogged while loading: asked once).
            quiet = not logger.isEnabledFor(self.routine_level)
            dests = [target] + [dest for _, dest, _ in moves or ()]
            logged = [i for i, dest in enumerate(dests) if not (quiet and dest in ROUTINE)]
            for name, (model, steps) in made.items():
                for i in logged:
                    self._log(steps[i])
                plugins[name] = _Tracked(model, History(self._history_limit, steps))
            if made:
                self._version = next(self._versions)
        return entered

    def _fire(
        self,
        tracked: _Tracked,
        trigger: str,
        reason: str | None,
        error_type: str | None,
        error: str | None,
    ) -> TransitionRecord:
        model = tracked.model
        source = model.state
        if not machine.fire(model, trigger):
            raise IllegalTransitionError(model.name, source.value, trigger, machine.allowed_triggers(source))
        record = TransitionRecord.now(model.name, source, model.state, trigger, reason, error_type, error)
        tracked.history.append(record)
        self._version = next(self._versions)
        self._log(record)
        return record

    def _notify(self, record: TransitionRecord) -> None:
        for listener, _ in self._listeners:
            try:
                listener(record)
            except Exception:
                logger.exception("transition listener %r failed on %s", listener, record.plugin)

    def _notify_many(self, records: tuple[TransitionRecord, ...]) -> None:
        for listener, many in self._listeners:
            if many is None:
                for record in records:
                    try:
                        listener(record)
                    except Exception:
                        logger.exception("transition listener %r failed on %s", listener, record.plugin)
                continue
            try:
                many(records)
            except Exception:
                logger.exception("transition listener %r failed on %s", many, records[0].plugin)

    def _log(self, record: TransitionRecord) -> None:
        # A failure is news at WARNING: plugin, what failed (the reason) and the error's type. The error message is
        # never logged: it may hold secrets (the history keeps it for those allowed to read it).
        if record.dest is PluginLifecycleState.FAILED:
            level = logging.WARNING
        else:
            level = self.routine_level if record.dest in ROUTINE else logging.INFO
        if not logger.isEnabledFor(level):
            return
        fields = record.to_dict()
        fields.pop("error", None)
        logger.log(
            level,
            "plugin %s: %s -> %s (%s)%s",
            record.plugin,
            record.source,
            record.dest,
            record.trigger,
            f": {record.reason} ({record.error_type})" if record.dest is PluginLifecycleState.FAILED else "",
            extra={"transition": fields},
        )


def _moves(name: str, state: PluginLifecycleState, triggers: Sequence[str],
           ) -> list[tuple[PluginLifecycleState, PluginLifecycleState, str]]:
    """The moves ``triggers`` make from ``state``, each as (from, to, trigger): fired once on a model of ``name``'s
    that is never tracked. The table has no conditions and no callbacks, so every plugin entered in one step moves so
    (firing each plugin's model, with its history made a record at a time and the logger asked of each record, was a
    tenth of the core's main thread a plugin at start-up). ``IllegalTransitionError``, naming ``name``, if the table
    forbids one."""
    model = machine.new_model(name, state)
    moves = []
    for trigger in triggers:
        source = model.state
        if not machine.fire(model, trigger):
            raise IllegalTransitionError(name, source.value, trigger, machine.allowed_triggers(source))
        moves.append((source, model.state, trigger))
    return moves
