"""The ``transitions`` machine behind every plugin, wrapped so that only the table can move a plugin.

One ``Machine`` serves every plugin: its states and events are shared, and each plugin is a small
``_LifecycleModel``. Models are never ``add_model``-ed: that call is O(N) per plugin (a list check) and binds
eight methods to each model, including the ``set_state`` shortcut we must keep private. Instead an event is
fired with ``machine.events[trigger].trigger(model)``, the exact path a bound trigger method takes (``_Event``
takes the short way along the table where nothing else could run).
"""

from __future__ import annotations

import threading

from transitions import Event, Machine, MachineError

from plugin_health.lifecycle.states import TRANSITIONS, TRIGGERS, PluginLifecycleState

#: The machine's states are the states' values as plain text, and each model keeps its state so
#: (``machine_state``): given ``Enum`` states, ``transitions`` reads a state's name through the enum and looks its
#: path up at every step of a trigger (``State.name``, ``Machine.get_state``), 30% of a trigger's time. The model
#: gives the state back as the enum.
_STATES = {state.value: state for state in PluginLifecycleState}


class _LifecycleModel:
    """The uniform model of one plugin; ``machine_state`` is only ever written by the machine."""

    __slots__ = ("lock", "machine_state", "name")

    def __init__(self, name: str, state: PluginLifecycleState) -> None:
        self.name = name
        self.machine_state = state._value_
        # One lock per plugin: a slow listener of one plugin never blocks another.
        self.lock = threading.Lock()

    @property
    def state(self) -> PluginLifecycleState:
        """Where the plugin is."""
        return _STATES[self.machine_state]


def _as_text(states: object) -> str | list[str]:
    """A transition's source or destination, as the machine's plain-text states."""
    if isinstance(states, list):
        return [PluginLifecycleState(str(state)).value for state in states]
    return PluginLifecycleState(str(states)).value


class _Event(Event):
    """An event that, where the machine has no callbacks of its own nor a queue and the transition from the model's
    state has none (none of ours has), moves the model as ``Event.trigger`` would, without making its event data,
    handing it to the machine's queue logic and walking empty callback lists and logging at each step (two thirds of
    a trigger's time). Anything else, a move the table has not included (refused there), takes the library's own
    ``Event.trigger``, unchanged."""

    def trigger(self, model: object, *args: object, **kwargs: object) -> bool:
        machine = self.machine
        source = getattr(model, machine.model_attribute)
        found = self.transitions.get(source)
        if found is None or len(found) != 1 or args or kwargs or _has_hooks(machine):
            return bool(super().trigger(model, *args, **kwargs))  # a move the table has not is refused there
        transition = found[0]
        after = machine.states.get(transition.dest) if transition.dest else None
        if (after is None or transition.prepare or transition.conditions or transition.before or transition.after
                or machine.states[source].on_exit or after.on_enter or after.final):
            return bool(super().trigger(model, *args, **kwargs))
        # The state's value (``State.value``, as ``Machine.set_state`` sets it): its name, which is the move's
        # destination, for the plain-text states of this machine.
        setattr(model, machine.model_attribute, transition.dest if type(transition.dest) is str else after.value)
        return True


#: ``Machine``'s properties for the callbacks and queue of the machine itself, which ``_Event.trigger`` asks at every
#: trigger, and the fields they read.
_HOOKS = {"has_queue": "_queued", "prepare_event": "_prepare_event", "finalize_event": "_finalize_event",
          "on_exception": "_on_exception", "before_state_change": "_before_state_change",
          "after_state_change": "_after_state_change", "on_final": "_on_final"}


def _hooks_by_property(machine: Machine) -> bool:
    """Whether ``machine`` has a queue, or callbacks of its own (asked through its properties)."""
    return any(getattr(machine, name) for name in _HOOKS)


def _hooks_by_field(machine: Machine) -> bool:
    """``_hooks_by_property``, read from the fields behind the properties (seven Python calls fewer: a third of a
    trigger's time)."""
    fields = machine.__dict__
    return bool(fields["_queued"] or fields["_prepare_event"] or fields["_finalize_event"] or fields["_on_exception"]
                or fields["_before_state_change"] or fields["_after_state_change"] or fields["_on_final"])


def _reads_fields(machine: Machine) -> bool:
    """Whether each of ``_HOOKS``'s properties reads its field on ``machine`` (``transitions`` 0.9's do), so that the
    fields may be read instead."""
    fields = machine.__dict__
    return all(name in fields and getattr(machine, prop) is fields[name] for prop, name in _HOOKS.items())


class _Machine(Machine):
    event_cls = _Event


def _build_machine() -> Machine:
    return _Machine(
        model=None,
        states=list(_STATES),
        transitions=[{**t, "source": _as_text(t["source"]), "dest": _as_text(t["dest"])} for t in TRANSITIONS],
        initial=None,
        auto_transitions=False,
        ignore_invalid_triggers=False,
        send_event=False,
        queued=False,
        model_attribute="machine_state",
    )


_MACHINE = _build_machine()
#: How ``_Event.trigger`` asks the machine for its queue and callbacks: through the fields where the properties only
#: read them (checked on this machine once), else through the properties.
_has_hooks = _hooks_by_field if _reads_fields(_MACHINE) else _hooks_by_property


def fire(model: _LifecycleModel, trigger: str) -> bool:
    """Run ``trigger`` on ``model`` through the machine; False if the table has no such move.

    The caller holds ``model.lock``.
    """
    event = _MACHINE.events.get(trigger)
    if event is None:
        return False
    try:
        return bool(event.trigger(model))
    except MachineError:
        return False


def allowed_triggers(state: PluginLifecycleState) -> tuple[str, ...]:
    """The triggers legal from ``state``, in table order (the table never changes: worked out once a state, where
    asking the machine each time was a quarter of building a plugin's snapshot)."""
    allowed = _ALLOWED.get(state)
    if allowed is None:
        legal = set(_MACHINE.get_triggers(state.value))
        allowed = _ALLOWED[state] = tuple(t for t in TRIGGERS if t in legal)
    return allowed


_ALLOWED: dict[PluginLifecycleState, tuple[str, ...]] = {}


def new_model(name: str, state: PluginLifecycleState) -> _LifecycleModel:
    """A model entering the machine in ``state`` (the manager checks that it is a legal first state)."""
    return _LifecycleModel(name, state)
