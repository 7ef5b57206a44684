"""The lifecycle contract of DESIGN.md section 3: the whole table, and nothing around it.

The table is ``plugin_health.testing.oracle``, written out by hand from the README (checked below), not the code's
own; every single move is tried here, and random sequences of them by the Hypothesis state machine at the end.
"""

from __future__ import annotations

import itertools
import re
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import settings

from plugin_health import (
    IllegalTransitionError,
    PluginLifecycleManager,
    PluginLifecycleState,
    UnknownPluginError,
)
from plugin_health.errors import MAX_ERROR_LENGTH
from plugin_health.lifecycle import LEGAL_MOVES, TRIGGERS, TransitionRecord
from plugin_health.lifecycle.machine import _MACHINE
from plugin_health.testing import (
    LifecycleStateMachine,
    assert_illegal,
    drive_to,
    lifecycle_state_machine,
    oracle,
)

S = PluginLifecycleState
LEGAL = oracle.LEGAL
ALL_TRIGGERS = (*TRIGGERS, "to_RUNNING", "to_LOADED", "bogus", "")
README = Path(__file__).resolve().parent.parent / "README.md"


def manager_with(state: S, name: str = "p") -> PluginLifecycleManager:
    manager = PluginLifecycleManager()
    drive_to(manager, name, "LOADED")
    drive_to(manager, name, state)
    assert manager.get_state(name) is state
    return manager


def test_the_oracle_is_the_readme_table_and_the_codes() -> None:
    lifecycle = README.read_text().split("\n## Lifecycle\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` +\| ([A-Z, ]+?) +\| ([A-Z]+) +\|$", lifecycle, re.MULTILINE)
    table = {(source.strip(), trigger): dest for trigger, sources, dest in rows for source in sources.split(",")}
    assert table == dict(oracle.LEGAL)
    assert LEGAL_MOVES == oracle.LEGAL
    assert TRIGGERS == oracle.TRIGGERS
    assert tuple(S) == oracle.STATES


def test_states_have_capital_string_values() -> None:
    assert [s.value for s in S] == ["LOADED", "INITIALIZED", "RUNNING", "FAILED", "UNAVAILABLE"]
    assert S("RUNNING") is S.RUNNING


def test_the_machine_has_exactly_the_five_triggers() -> None:
    assert sorted(_MACHINE.events) == sorted(["initialize", "start", "fail", "make_unavailable", "reset"])
    assert not hasattr(PluginLifecycleManager, "to_RUNNING")


@pytest.mark.parametrize(
    ("state", "trigger"),
    list(itertools.product(S, ALL_TRIGGERS)),
    ids=lambda v: v.value if isinstance(v, S) else (v or "empty"),
)
def test_every_trigger_from_every_state(state: S, trigger: str) -> None:
    manager = manager_with(state)
    before = manager.history("p")
    if (state, trigger) in LEGAL:
        record = manager.trigger("p", trigger, reason="why")
        assert manager.get_state("p") == LEGAL[(state, trigger)]
        assert (record.source, record.dest, record.trigger, record.reason) == (
            state,
            LEGAL[(state, trigger)],
            trigger,
            "why",
        )
        assert manager.history("p") == [*before, record]
    else:
        error = assert_illegal(manager, "p", trigger)  # raised, and nothing changed
        assert (error.plugin, error.state, error.attempted) == ("p", state.value, trigger)
        assert error.allowed == oracle.allowed(state)
        assert str(error) == (f"plugin 'p' in state {state.value}: {trigger} is not allowed "
                              f"(allowed: {', '.join(oracle.allowed(state))})")


@pytest.mark.parametrize(
    ("state", "target"), list(itertools.product(S, S)), ids=lambda v: v.value
)
def test_set_state_follows_only_a_legal_trigger(state: S, target: S) -> None:
    manager = manager_with(state)
    before = manager.history("p")
    trigger = oracle.trigger_between(state, target)
    if trigger is not None:
        record = manager.set_state("p", target)
        assert manager.get_state("p") is target
        assert record.trigger == trigger
        assert manager.history("p") == [*before, record]
    else:
        error = assert_illegal(manager, "p", to=target)
        assert (error.state, error.attempted, error.allowed) == (
            state.value, f"moving to {target.value}", oracle.allowed(state))


@pytest.mark.parametrize("first", list(S), ids=lambda s: s.value)
def test_first_state_is_loaded_or_failed(first: S) -> None:
    manager = PluginLifecycleManager()
    if first in (S.LOADED, S.FAILED):
        record = manager.set_state("p", first, error_type="ImportError", error="no module")
        assert record.source is None
        assert record.trigger == "load"
        assert manager.get_state("p") is first
    else:
        with pytest.raises(IllegalTransitionError) as caught:
            manager.set_state("p", first)
        assert caught.value.state is None
        assert "p" not in manager


@pytest.mark.parametrize("bad", ["BOGUS", "running", "", "to_RUNNING"])
def test_unknown_state_is_illegal(bad: str) -> None:
    manager = manager_with(S.LOADED)
    error = assert_illegal(manager, "p", to=bad)
    assert (error.attempted, error.allowed) == (f"moving to unknown state {bad!r}", oracle.allowed("LOADED"))
    assert assert_illegal(manager, "new", to=bad).allowed == ("set_state(LOADED)",)


def test_string_states_are_accepted() -> None:
    manager = PluginLifecycleManager()
    manager.set_state("p", "LOADED")
    manager.set_state("p", "INITIALIZED")
    assert manager.get_state("p") is S.INITIALIZED


def test_unknown_plugin() -> None:
    manager = PluginLifecycleManager()
    assert manager.get_state("ghost") is None  # the original plan's contract: None for an untracked name
    for call in (manager.state_of, manager.history, manager.last, manager.allowed_triggers):
        with pytest.raises(UnknownPluginError, match="unknown plugin 'ghost'"):
            call("ghost")
    with pytest.raises(UnknownPluginError):
        manager.trigger("ghost", "initialize")
    with pytest.raises(KeyError):  # an UnknownPluginError is also a KeyError
        manager.state_of("ghost")


def test_all_states_sorted_by_name() -> None:
    manager = PluginLifecycleManager()
    for name in ("b", "a", "c"):
        manager.set_state(name, S.LOADED)
    manager.trigger("c", "fail")
    assert manager.all_states() == {"a": S.LOADED, "b": S.LOADED, "c": S.FAILED}
    assert list(manager) == ["a", "b", "c"]
    assert len(manager) == 3


def test_allowed_triggers_and_may() -> None:
    manager = manager_with(S.RUNNING)
    assert manager.allowed_triggers("p") == ("fail", "make_unavailable")
    assert manager.may("p", "fail")
    assert not manager.may("p", "start")
    manager.trigger("p", "fail")
    assert manager.allowed_triggers("p") == ("reset",)


def test_history_records_every_field() -> None:
    manager = PluginLifecycleManager()
    manager.set_state("p", S.LOADED)
    record = manager.trigger("p", "fail", reason="initialize failed", error_type="ValueError", error="bad")
    assert record.to_dict()["from"] == "LOADED"
    data = record.to_dict()
    assert data == {
        "plugin": "p",
        "from": "LOADED",
        "to": "FAILED",
        "trigger": "fail",
        "reason": "initialize failed",
        "error_type": "ValueError",
        "error": "bad",
        "at": data["at"],
    }
    at = datetime.fromisoformat(data["at"])
    assert at.tzinfo is not None
    assert abs((datetime.now(UTC) - at).total_seconds()) < 5
    assert manager.history("p")[0].to_dict()["from"] is None
    assert manager.last("p") == record


def test_history_is_bounded_oldest_dropped() -> None:
    manager = PluginLifecycleManager(history_limit=3)
    manager.set_state("p", S.LOADED)
    for _ in range(5):
        manager.trigger("p", "fail")
        manager.trigger("p", "reset")
    history = manager.history("p")
    assert len(history) == 3
    assert [r.trigger for r in history] == ["reset", "fail", "reset"]


def test_error_messages_are_bounded() -> None:
    manager = manager_with(S.LOADED)
    record = manager.trigger("p", "fail", error="x" * 100_000)
    assert record.error is not None
    assert len(record.error) == MAX_ERROR_LENGTH
    assert record.error.endswith("\u2026")


def test_listeners_see_every_transition_and_cannot_break_it() -> None:
    manager = PluginLifecycleManager()
    seen: list[TransitionRecord] = []

    def broken(record: TransitionRecord) -> None:
        raise RuntimeError("listener bug")

    manager.subscribe(broken)
    manager.subscribe(seen.append)
    manager.set_state("p", S.LOADED)
    manager.trigger("p", "initialize")
    assert [(r.source, r.dest) for r in seen] == [(None, S.LOADED), (S.LOADED, S.INITIALIZED)]
    assert manager.get_state("p") is S.INITIALIZED


def _moves(records: list[TransitionRecord]) -> list[tuple[str, S | None, S, str, str | None]]:
    return [(r.plugin, r.source, r.dest, r.trigger, r.reason) for r in records]


def test_entering_through_triggers_is_entering_then_each_trigger_in_one_step() -> None:
    """``enter_through`` makes the records ``set_state`` and each ``trigger`` would, in the same history; a listener
    with a ``many`` is told of them in one call, one without once a record, in order; the version moves once."""
    stepwise, at_once = PluginLifecycleManager(), PluginLifecycleManager()
    stepwise.set_state("p", S.LOADED)
    stepwise.trigger("p", "initialize")
    stepwise.trigger("p", "start")
    one: list[TransitionRecord] = []
    together: list[list[TransitionRecord]] = []
    apart: list[TransitionRecord] = []
    at_once.subscribe(one.append, lambda records: together.append(list(records)))
    at_once.subscribe(apart.append)
    before, before_step = at_once.version, datetime.now(UTC)
    records = at_once.enter_through("p", S.LOADED, ("initialize", "start"))
    assert _moves(records) == _moves(stepwise.history("p")) == [
        ("p", None, S.LOADED, "load", None), ("p", S.LOADED, S.INITIALIZED, "initialize", None),
        ("p", S.INITIALIZED, S.RUNNING, "start", None)]
    assert at_once.history("p") == records
    assert at_once.get_state("p") is S.RUNNING
    assert (one, together, apart) == ([], [records], records)
    assert at_once.version > before
    assert records[0].at == records[1].at == records[2].at  # one step: one time
    assert before_step <= records[0].at <= datetime.now(UTC)


def test_entering_through_a_trigger_the_table_forbids_changes_nothing() -> None:
    manager = PluginLifecycleManager()
    seen: list[TransitionRecord] = []
    manager.subscribe(seen.append, seen.extend)
    before = manager.version
    with pytest.raises(IllegalTransitionError) as raised:
        manager.enter_through("p", S.LOADED, ("initialize", "initialize"))
    assert (raised.value.state, raised.value.attempted) == ("INITIALIZED", "initialize")
    with pytest.raises(IllegalTransitionError):
        manager.enter_through("q", S.RUNNING, ())
    assert ("p" in manager, "q" in manager, seen, manager.version) == (False, False, [], before)


def test_entering_through_a_plugin_entered_already_moves_it_the_usual_way() -> None:
    """Eight threads enter one plugin through its way up at once: it is entered once (the others are told that
    LOADED is no move from where it is by then, as ``set_state`` tells them) and its history has no gap."""
    manager = PluginLifecycleManager()
    errors = eight_at_once(lambda: manager.enter_through("p", S.LOADED, ("initialize", "start")))
    assert [r.dest for r in manager.history("p")] == [S.LOADED, S.INITIALIZED, S.RUNNING]
    assert len(errors) == 7


def test_entering_many_through_triggers_is_each_entered_through_them_in_one_step() -> None:
    """``enter_many_through`` makes for each plugin the records ``enter_through`` would, in its own history; a
    listener with a ``many`` is told of them all in one call (each plugin's together, in the order given), one
    without once a record, in that order; the version moves once, and every record has the step's one time."""
    one_by_one, at_once = PluginLifecycleManager(), PluginLifecycleManager()
    for name in ("p", "q", "r"):
        one_by_one.enter_through(name, S.LOADED, ("initialize", "start"))
    together: list[list[TransitionRecord]] = []
    apart: list[TransitionRecord] = []
    at_once.subscribe(lambda record: None, lambda records: together.append(list(records)))
    at_once.subscribe(apart.append)
    at_once.set_state("a", S.LOADED)
    before, before_step = at_once.version, datetime.now(UTC)
    entered = at_once.enter_many_through(["r", "p", "q"], S.LOADED, ("initialize", "start"))
    assert [_moves(records) for records in entered] == [_moves(one_by_one.history(name)) for name in ("r", "p", "q")]
    assert [at_once.history(name) for name in ("r", "p", "q")] == entered
    assert all(at_once.get_state(name) is S.RUNNING for name in ("r", "p", "q"))
    assert together == [entered[0] + entered[1] + entered[2]]
    assert apart[1:] == entered[0] + entered[1] + entered[2]  # after the record of "a"
    assert at_once.version == before + 1
    assert len({record.at for records in entered for record in records}) == 1
    assert before_step <= entered[0][0].at <= datetime.now(UTC)
    # Each plugin's own model moves on from there, alone.
    assert at_once.trigger("p", "fail").dest is S.FAILED
    assert (at_once.get_state("p"), at_once.get_state("q"), at_once.get_state("r")) == (S.FAILED, S.RUNNING, S.RUNNING)


def test_entering_many_through_a_trigger_the_table_forbids_changes_nothing_for_any() -> None:
    manager = PluginLifecycleManager()
    seen: list[TransitionRecord] = []
    manager.subscribe(seen.append, seen.extend)
    before = manager.version
    with pytest.raises(IllegalTransitionError) as refused:
        manager.enter_many_through(["p", "q"], S.LOADED, ("initialize", "initialize"))
    assert (refused.value.plugin, refused.value.attempted) == ("p", "initialize")
    with pytest.raises(IllegalTransitionError):
        manager.enter_many_through(["p", "q"], S.RUNNING, ())
    assert ("p" in manager, "q" in manager, seen, manager.version) == (False, False, [], before)


def test_entering_many_through_a_plugin_entered_already_moves_it_the_usual_way_after_the_others() -> None:
    """A name tracked already (another thread entered it, or it is given twice) is not entered again: the others
    are entered, and told of, first; then it is moved the usual way (``set_state``, then each trigger), as far as the
    table lets it from where it is."""
    manager = PluginLifecycleManager()
    manager.set_state("q", S.FAILED)
    seen: list[TransitionRecord] = []
    manager.subscribe(seen.append, seen.extend)
    entered = manager.enter_many_through(["p", "q", "r"], S.LOADED, ("initialize", "start"))
    assert [(r.plugin, r.dest) for r in seen] == [
        ("p", S.LOADED), ("p", S.INITIALIZED), ("p", S.RUNNING), ("r", S.LOADED), ("r", S.INITIALIZED),
        ("r", S.RUNNING), ("q", S.LOADED), ("q", S.INITIALIZED), ("q", S.RUNNING)]
    assert [r.dest for r in manager.history("q")] == [S.FAILED, S.LOADED, S.INITIALIZED, S.RUNNING]
    assert entered[1] == manager.history("q")[1:]
    twice = PluginLifecycleManager()
    with pytest.raises(IllegalTransitionError):  # RUNNING by then: no move to LOADED
        twice.enter_many_through(["p", "p"], S.LOADED, ("initialize", "start"))
    assert [r.dest for r in twice.history("p")] == [S.LOADED, S.INITIALIZED, S.RUNNING]


def test_a_listener_that_fails_on_records_told_together_breaks_nothing(caplog: pytest.LogCaptureFixture) -> None:
    manager = PluginLifecycleManager()
    seen: list[TransitionRecord] = []

    def broken(records: object) -> None:
        raise RuntimeError("listener bug")

    def broken_one(record: TransitionRecord) -> None:
        if record.dest is S.INITIALIZED:
            raise RuntimeError("listener bug")
        seen.append(record)

    manager.subscribe(seen.append, broken)
    manager.subscribe(broken_one)
    records = manager.enter_through("p", S.LOADED, ("initialize", "start"))
    assert seen == [records[0], records[2]]  # the one-at-a-time listener was told of the record after its failure
    assert manager.get_state("p") is S.RUNNING
    assert sum("transition listener" in r.getMessage() for r in caplog.records) == 2


def test_version_changes_on_every_transition() -> None:
    manager = PluginLifecycleManager()
    versions = [manager.version]
    manager.set_state("p", S.LOADED)
    versions.append(manager.version)
    manager.trigger("p", "fail")
    versions.append(manager.version)
    with pytest.raises(IllegalTransitionError):
        manager.trigger("p", "start")
    versions.append(manager.version)
    assert versions[0] < versions[1] < versions[2] == versions[3]


def test_concurrent_triggers_keep_a_consistent_history() -> None:
    manager = PluginLifecycleManager(history_limit=10_000)
    manager.set_state("p", S.LOADED)
    illegal = 0
    lock = threading.Lock()

    def hammer() -> None:
        nonlocal illegal
        for _ in range(300):
            for trigger in ("fail", "reset"):
                try:
                    manager.trigger("p", trigger)
                except IllegalTransitionError:
                    with lock:
                        illegal += 1

    threads = [threading.Thread(target=hammer) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    history = manager.history("p")
    assert all(a.dest is b.source for a, b in itertools.pairwise(history))
    assert len(history) - 1 + illegal == 4 * 300 * 2


def eight_at_once(enter: Callable[[], object]) -> list[IllegalTransitionError]:
    """Run ``enter`` in eight threads let go at once; the illegal moves they were told of."""
    barrier = threading.Barrier(8)
    errors: list[IllegalTransitionError] = []

    def one() -> None:
        barrier.wait()
        try:
            enter()
        except IllegalTransitionError as err:
            errors.append(err)

    threads = [threading.Thread(target=one) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_concurrent_first_entry_tracks_once() -> None:
    manager = PluginLifecycleManager()
    errors = eight_at_once(lambda: manager.set_state("p", S.LOADED))
    assert len(manager.history("p")) == 1
    assert len(errors) == 7  # LOADED -> LOADED is no legal move


# Random sequences of moves (legal and not, unknown triggers and states, forgetting and entering again) at two
# plugins, each judged by the table; the second keeps only three records, so the bounded history is judged too.
TestLifecycleStateMachine = LifecycleStateMachine.TestCase
TestBoundedHistoryStateMachine = lifecycle_state_machine(history_limit=3).TestCase
TestBoundedHistoryStateMachine.settings = settings(max_examples=30)


def test_a_model_shows_the_machine_s_state_as_the_enum_and_it_cannot_be_assigned() -> None:
    """The machine keeps each plugin's state as plain text (``transitions`` is a third faster so); what anyone reads
    is the enum, and the attribute read is no way around the table."""
    manager = PluginLifecycleManager()
    manager.set_state("p", S.LOADED)
    manager.trigger("p", "initialize")
    model = manager._plugins["p"].model
    assert model.state is S.INITIALIZED
    assert manager.get_state("p") is S.INITIALIZED
    with pytest.raises(AttributeError):
        model.state = S.RUNNING  # type: ignore[misc]
    assert manager.get_state("p") is S.INITIALIZED


def test_the_machine_runs_callbacks_and_conditions_given_to_its_transitions(monkeypatch: pytest.MonkeyPatch) -> None:
    """Our transitions have no callbacks, and skip ``transitions``' walk of empty lists: one given a callback or a
    condition (by someone extending the machine) takes the library's own way, and both run."""
    from transitions.core import Condition

    from plugin_health.lifecycle import machine

    ran: list[str] = []
    transition = machine._MACHINE.events["initialize"].transitions["LOADED"][0]
    monkeypatch.setattr(transition, "after", [lambda: ran.append("after")])
    model = machine.new_model("p", PluginLifecycleState.LOADED)
    assert machine.fire(model, "initialize")
    assert model.state is PluginLifecycleState.INITIALIZED
    assert ran == ["after"]
    monkeypatch.setattr(transition, "conditions", [Condition(lambda: False)])
    model = machine.new_model("q", PluginLifecycleState.LOADED)
    assert not machine.fire(model, "initialize")
    assert model.state is PluginLifecycleState.LOADED


def test_a_record_stamped_now_is_the_record_its_fields_make_and_stays_frozen() -> None:
    """``TransitionRecord.now`` fills the slots itself (the frozen dataclass's ``__init__`` costs three times as
    much, three times a plugin as thousands load): what it makes must be exactly what the constructor makes."""
    before = datetime.now(UTC)
    record = TransitionRecord.now("p", S.LOADED, S.FAILED, "fail", "initialize failed", "ValueError", "x" * 100_000)
    fields = {name: getattr(record, name) for name in TransitionRecord.__dataclass_fields__}
    assert record == TransitionRecord(**fields)
    assert hash(record) == hash(TransitionRecord(**fields))
    assert repr(record) == repr(TransitionRecord(**fields))
    assert (fields["plugin"], fields["source"], fields["dest"]) == ("p", S.LOADED, S.FAILED)
    assert (fields["trigger"], fields["reason"], fields["error_type"]) == ("fail", "initialize failed", "ValueError")
    assert len(fields["error"]) == MAX_ERROR_LENGTH
    assert before <= fields["at"] <= datetime.now(UTC)
    assert fields["at"].tzinfo is UTC
    entered = TransitionRecord.now("q", None, S.LOADED, "load")
    assert (entered.source, entered.reason, entered.error_type, entered.error) == (None, None, None, None)
    with pytest.raises(AttributeError):
        record.trigger = "start"  # type: ignore[misc]


@pytest.mark.parametrize(("state", "trigger"), list(itertools.product(S, TRIGGERS)))
def test_a_trigger_moves_a_model_as_the_library_s_own_event_does(state: S, trigger: str) -> None:
    """Our events skip ``transitions``' event data, queue and callback walks where the machine has none: for every
    state and trigger, the move (or the refusal, a ``MachineError``) is the one the library's own ``Event`` makes."""
    from transitions import Event, MachineError

    from plugin_health.lifecycle import machine

    def outcome(fire: Callable[[object], object]) -> tuple[object, str]:
        model = machine.new_model("p", state)
        try:
            result: object = fire(model)
        except MachineError as err:
            result = f"MachineError: {err.value}"
        return result, model.machine_state

    event = machine._MACHINE.events[trigger]
    assert outcome(event.trigger) == outcome(lambda model: Event.trigger(event, model))


def test_a_trigger_reads_the_machine_s_hooks_from_the_fields_its_properties_read() -> None:
    """Our events ask the machine for its queue and callbacks at every trigger, through the fields behind
    ``Machine``'s properties (``transitions`` 0.9 reads them so): set through a property, a hook is seen both ways."""
    from plugin_health.lifecycle import machine

    assert machine._has_hooks is machine._hooks_by_field
    fresh = machine._build_machine()
    assert machine._reads_fields(fresh)
    assert not machine._hooks_by_field(fresh)
    assert not machine._hooks_by_property(fresh)
    for hook in machine._HOOKS:
        probe = machine._build_machine()
        if hook == "has_queue":
            probe._queued = True  # set by the constructor's ``queued``: the property has no setter
        else:
            setattr(probe, hook, [lambda *args: None])
        assert machine._hooks_by_field(probe), hook
        assert machine._hooks_by_property(probe), hook


def test_a_machine_whose_properties_read_other_fields_is_asked_through_them() -> None:
    """Should ``transitions`` keep its hooks elsewhere, the fields are not taken for them."""
    from plugin_health.lifecycle import machine

    probe = machine._build_machine()
    del probe.__dict__["_on_final"]
    assert not machine._reads_fields(probe)


def test_a_machine_given_callbacks_of_its_own_runs_them_on_every_trigger(monkeypatch: pytest.MonkeyPatch) -> None:
    """Where the machine itself has callbacks (before and after every change, around every event: someone extending
    it), our events take the library's own way, and every callback runs."""
    from plugin_health.lifecycle import machine

    ran: list[str] = []
    for hook in ("prepare_event", "before_state_change", "after_state_change", "finalize_event"):
        monkeypatch.setattr(machine._MACHINE, hook, [lambda *args, hook=hook: ran.append(hook)])
        model = machine.new_model("p", S.LOADED)
        assert machine.fire(model, "initialize")
        assert model.state is S.INITIALIZED
        assert ran == [hook]
        ran.clear()
        monkeypatch.setattr(machine._MACHINE, hook, [])
    model = machine.new_model("q", S.LOADED)
    monkeypatch.setattr(machine._MACHINE.states["INITIALIZED"], "on_enter", [lambda *args: ran.append("enter")])
    assert machine.fire(model, "initialize")
    assert ran == ["enter"]
    assert not machine.fire(model, "initialize")  # from INITIALIZED: refused, as the library refuses it
    assert model.state is S.INITIALIZED


def test_every_move_of_the_table_goes_one_way_whatever_the_plugin() -> None:
    """``enter_many_through`` works a step's moves out once, on a model no one tracks, and moves every plugin of the
    step so (``manager._moves``): right only while each trigger leads from a state to one place, with no condition
    or callback that could send one plugin elsewhere. A table given one would fail here first."""
    from plugin_health.lifecycle import machine

    for trigger, event in machine._MACHINE.events.items():
        for source, moves in event.transitions.items():
            assert len(moves) == 1, (trigger, source)
            move = moves[0]
            hooks = (move.conditions, move.prepare, move.before, move.after)
            assert hooks == ([], [], [], []), (trigger, source)
    assert not any(state.on_enter or state.on_exit for state in machine._MACHINE.states.values())
