"""Lifecycle state diagrams (SVG, DOT, Mermaid), drawn by ``transitions``' diagram support; no Flask here.

Each call builds a throwaway ``GraphMachine`` from the table in ``plugin_health.lifecycle.states`` with one
model in the state to highlight, asks it for its graph, and lets it go: graph machines are never kept (they
hold a Graphviz graph per model). SVG and DOT come from pygraphviz, whose 2.x wheels bundle the Graphviz
libraries and lay out in-process; the ``graphviz`` package (which shells out to ``dot``) is the fallback.
Mermaid text needs no binary and always works.

The picture is drawn in the dashboard's colours (``plugin_health.palette``): each state in its own colour (RUNNING
green, FAILED red, UNAVAILABLE amber, LOADED and INITIALIZED blue), the highlighted state filled with it and
outlined twice, the title on top; counts of plugins on the states and of transitions on the arrows, where the
caller knows them (an arrow taken more often is drawn heavier, one never taken dashed).
"""

from __future__ import annotations

import functools
import html
import importlib
import json
import logging
import subprocess
import threading
import unicodedata
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from transitions import State
from transitions.extensions.diagrams import GraphMachine

from plugin_health.errors import PluginError, bounded
from plugin_health.lifecycle.states import LEGAL_MOVES, PluginLifecycleState
from plugin_health.palette import INK, MUTED, PAPER, STATE_COLOURS

_LOG = logging.getLogger(__name__)

FORMATS: Final[tuple[str, ...]] = ("svg", "dot", "mermaid")
MEDIA_TYPES: Final[dict[str, str]] = {
    "svg": "image/svg+xml",
    "dot": "text/vnd.graphviz; charset=utf-8",
    "mermaid": "text/plain; charset=utf-8",
}
DEFAULT_TITLE: Final = "plugin lifecycle"
#: Longest title drawn; longer ones are cut with an ellipsis.
MAX_TITLE_LENGTH: Final = 200

_Engine = Literal["pygraphviz", "graphviz", "mermaid"]
_PYGRAPHVIZ: Final = "pygraphviz"
_GRAPHVIZ: Final = "graphviz"
_MERMAID: Final = "mermaid"
#: For SVG and DOT, the engines to try, best first.
_GRAPHVIZ_ENGINES: Final[tuple[_Engine, ...]] = (_PYGRAPHVIZ, _GRAPHVIZ)
#: What a Graphviz engine raises when it cannot draw: pygraphviz ValueError (layout or render error), the
#: graphviz package ExecutableNotFound (a RuntimeError) or CalledProcessError, and OSError from either.
_RENDER_ERRORS: Final = (ValueError, RuntimeError, OSError, subprocess.SubprocessError)
# Graphviz's C library keeps global state (error buffers, the HTML-label lexer): one layout at a time. The lock is
# made at its first use: a gevent worker has patched threading by then, and the master may import this module
# before (for its workers): a thread lock made then would block the whole worker while a greenlet holding it waits
# on `dot`, and another asked for it. _MAKING only guards the making (held for an assignment, never across I/O).
_graphviz_lock: threading.Lock | None = None
_MAKING = threading.Lock()


def _layout_lock() -> threading.Lock:
    global _graphviz_lock
    if _graphviz_lock is None:
        with _MAKING:
            if _graphviz_lock is None:
                _graphviz_lock = threading.Lock()
    return _graphviz_lock


S = PluginLifecycleState
#: A move of the diagram: (from, to). Each has exactly one trigger in the lifecycle table.
Move = tuple[PluginLifecycleState, PluginLifecycleState]
#: Every arrow of the diagram and its trigger, in the table's order.
MOVES: Final[dict[Move, str]] = {(source, dest): trigger for (source, trigger), dest in LEGAL_MOVES.items()}

#: Graphviz's own metrics for Helvetica lay text out the same everywhere; the SVG asks for a sans-serif font.
FONT: Final = "Helvetica"
BOLD_FONT: Final = "Helvetica-Bold"
#: Arrow weights by how often the move was taken: never (dashed), 1-9, 10-99, 100 or more.
_WEIGHTS: Final = ((0, "1", "dashed"), (1, "1.6", "solid"), (10, "2.4", "solid"), (100, "3.2", "solid"))


class DiagramError(PluginError):
    """Base of the errors of diagram rendering."""


class UnknownFormatError(DiagramError, ValueError):
    """A diagram format that is not one of ``FORMATS``."""

    def __init__(self, format: str) -> None:
        self.format = format
        self.supported = FORMATS
        super().__init__(f"unknown diagram format {format!r}: supported formats are {', '.join(FORMATS)}")


class RendererUnavailableError(DiagramError):
    """A known format whose renderer is not installed or not working on this machine."""

    def __init__(self, format: str, available: tuple[str, ...], problem: str) -> None:
        self.format = format
        self.available = available
        self.problem = problem
        super().__init__(
            f"diagram format {format!r} cannot be rendered here ({problem}); available formats: {', '.join(available)}"
        )


class DiagramInputError(DiagramError, ValueError):
    """An argument of ``render`` that cannot be drawn (not a state, a negative count, a title that is not text)."""

    def __init__(self, field: str, value: object, problem: str) -> None:
        self.field = field
        self.value = value
        self.problem = problem
        super().__init__(f"diagram {field} {value!r} is invalid: {problem}")


class _LabelledState(State):
    """A state whose diagram label differs from its name (``RUNNING (12)``); ``MarkupMachine`` reads ``label``."""

    def __init__(self, name: PluginLifecycleState, label: str) -> None:
        super().__init__(name)
        self.label = label


class _DiagramModel:
    """The throwaway model whose state the diagram highlights; ``GraphMachine`` binds ``get_graph`` to it."""

    state: PluginLifecycleState
    get_graph: Callable[..., Any]


@dataclass(frozen=True)
class _Probe:
    engines: dict[str, _Engine] = field(default_factory=dict)  # format -> the engine that renders it here
    problems: dict[str, str] = field(default_factory=dict)  # format -> why none does


def available_formats() -> tuple[str, ...]:
    """The formats that render on this machine, in ``FORMATS`` order (probed once, then cached)."""
    engines = _probe().engines
    return tuple(f for f in FORMATS if f in engines)


def render(
    format: str = "svg",
    *,
    current: PluginLifecycleState | None = None,
    title: str | None = None,
    counts: Mapping[PluginLifecycleState, int] | None = None,
    moves: Mapping[Move, int] | None = None,
) -> bytes:
    """The lifecycle diagram in ``format``, with ``current`` highlighted, ``counts`` (plugins in each state) in the
    state labels and ``moves`` (transitions taken, by (from, to)) on the arrows."""
    fmt = format.lower()
    if fmt not in FORMATS:
        raise UnknownFormatError(format)
    picture = _Picture(_check_current(current), _clean_title(title), _labels(counts), _moves(moves))
    probe = _probe()
    engine = probe.engines.get(fmt)
    if engine is None:
        raise RendererUnavailableError(fmt, available_formats(), probe.problems[fmt])
    try:
        return _draw(fmt, engine, picture)
    except _RENDER_ERRORS as err:
        _LOG.warning("rendering a %s diagram with %s failed", fmt, engine, exc_info=True)
        raise RendererUnavailableError(fmt, available_formats(), f"{engine} could not render it") from err


def _as_state(value: object) -> PluginLifecycleState | None:
    """``value`` as a lifecycle state (a member or its name), or None."""
    if isinstance(value, PluginLifecycleState):
        return value
    if isinstance(value, str) and value in PluginLifecycleState.__members__:
        return PluginLifecycleState[value]
    return None


def _check_current(current: object) -> PluginLifecycleState | None:
    if current is None:
        return None
    state = _as_state(current)
    if state is None:
        raise DiagramInputError("current", current, "not a lifecycle state")
    return state


def _labels(counts: Mapping[PluginLifecycleState, int] | None) -> dict[PluginLifecycleState, str]:
    """Each state's label: its name, or its name and how many plugins are in it."""
    if counts is None:
        return {s: s.value for s in PluginLifecycleState}
    checked: dict[PluginLifecycleState, int] = {}
    for key, count in counts.items():
        state = _as_state(key)
        if state is None:
            raise DiagramInputError("counts", key, "not a lifecycle state")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise DiagramInputError("counts", count, f"{state.value}: not a non-negative integer")
        checked[state] = count
    return {s: f"{s.value} ({checked.get(s, 0)})" for s in PluginLifecycleState}


def _moves(moves: Mapping[Move, int] | None) -> dict[Move, int] | None:
    """``moves`` checked (each key an arrow of the diagram, each count a non-negative integer), for every arrow
    (0 for one not given)."""
    if moves is None:
        return None
    checked = dict.fromkeys(MOVES, 0)
    for key, count in moves.items():
        move = _as_move(key)
        if move is None:
            raise DiagramInputError("moves", key, "not a (from, to) move of the lifecycle table")
        if not isinstance(count, int) or isinstance(count, bool) or count < 0:
            raise DiagramInputError("moves", count, f"{move[0]} -> {move[1]}: not a non-negative integer")
        checked[move] = count
    return checked


def _as_move(key: object) -> Move | None:
    """``key`` as an arrow of the diagram (a pair of states or their names), or None."""
    if not isinstance(key, tuple) or len(key) != 2:
        return None
    source, dest = _as_state(key[0]), _as_state(key[1])
    if source is None or dest is None or (source, dest) not in MOVES:
        return None
    return source, dest


def count_moves(totals: Mapping[tuple[Any, Any], int]) -> dict[Move, int]:
    """Every arrow of the diagram with how often it was taken, from totals by (from, to) such as a store's
    histories give (states or their names); a pair that is no arrow (a first state, from None) counts nowhere."""
    counted = dict.fromkeys(MOVES, 0)
    for key, total in totals.items():
        move = _as_move(key)
        if move is not None:
            counted[move] += total
    return counted


def _clean_title(title: object) -> str:
    """The title on one line: control, format and separator characters become spaces; bounded; never empty."""
    if title is None:
        return DEFAULT_TITLE
    if not isinstance(title, str):
        raise DiagramInputError("title", title, "must be a string")
    # Category C covers newlines, NUL, bidi overrides and zero-width characters; str.split() takes the rest.
    spaced = "".join(" " if unicodedata.category(ch)[0] == "C" else ch for ch in title)
    cleaned = " ".join(spaced.split())
    return bounded(cleaned, MAX_TITLE_LENGTH) if cleaned else DEFAULT_TITLE


def _graphviz_label(text: str) -> str:
    """``text`` as a Graphviz label that draws exactly ``text``.

    pygraphviz and the graphviz package both take a value in ``<...>`` as an HTML-like label, so a title such as
    ``<script>`` would be parsed as markup: always emit an HTML-like label and entity-escape the text instead.
    Graphviz still expands ``\\G``, ``\\N``, ``\\l`` ... inside it, hence the doubled backslashes.
    """
    return "<" + html.escape(text.replace("\\", "\\\\")) + ">"


def _mermaid_front_matter(source: str, title: str) -> str:
    """Replace transitions' bare title line with YAML that Mermaid reads (``title: "..."``).

    transitions writes the title unquoted between the ``---`` fences, which Mermaid ignores (it is not a
    mapping) and which YAML punctuation could break; a JSON string is a valid YAML double-quoted scalar.
    """
    lines = source.split("\n")
    if lines and lines[0] == "---" and "---" in lines[1:]:
        lines = lines[lines.index("---", 1) + 1 :]
    return "\n".join(["---", f"title: {json.dumps(title)}", "---", *lines]).rstrip("\n") + "\n"


def _draw(fmt: str, engine: _Engine, picture: _Picture) -> bytes:
    if engine == _MERMAID:
        # transitions indents its Mermaid text by each line's last character ("{"), title included: give it a
        # plain placeholder and write the real title into the front matter afterwards.
        graph = _graph(engine, picture, "title")
        return _mermaid_front_matter(str(graph.draw(None)), picture.title).encode("utf-8")
    with _layout_lock():
        graph = _graph(engine, picture, _graphviz_label(picture.title))
        if fmt == "dot":
            source = graph.string() if engine == _PYGRAPHVIZ else graph.source
            return str(source).encode("utf-8")
        if engine == _PYGRAPHVIZ:
            return bytes(graph.draw(format="svg", prog="dot"))
        return bytes(graph.pipe(format="svg"))


@dataclass(frozen=True)
class _Picture:
    """What one diagram shows: the state to highlight, the title, the state labels, the arrows' counts."""

    current: PluginLifecycleState | None
    title: str
    labels: Mapping[PluginLifecycleState, str]
    moves: Mapping[Move, int] | None


def style_name(state: PluginLifecycleState, current: bool = False) -> str:
    """The name of the style a state is drawn with (Mermaid's class ``s_<name>``): ``running``,
    ``running_current`` for the highlighted state."""
    return f"{state.value.lower()}_current" if current else state.value.lower()


def _weight(count: int) -> str:
    """The name of the arrow style for a move taken ``count`` times."""
    return f"moved_{sum(count >= least for least, _, _ in _WEIGHTS) - 1}"


def _graphviz_styles() -> dict[str, dict[str, dict[str, str]]]:
    """``GraphMachine.style_attributes`` in the palette's colours, for Graphviz (node, edge and graph attributes)."""
    nodes: dict[str, dict[str, str]] = {
        "default": {"shape": "box", "style": "rounded,filled", "fillcolor": PAPER, "color": INK,
                    "fontcolor": INK, "fontname": FONT, "fontsize": "14", "penwidth": "1.5", "peripheries": "1",
                    "margin": "0.22,0.12"},
    }
    for state, colours in STATE_COLOURS.items():
        nodes[style_name(state)] = {"fillcolor": colours.light, "color": colours.strong, "fontcolor": INK,
                                    "fontname": FONT, "penwidth": "1.5", "peripheries": "1"}
        nodes[style_name(state, current=True)] = {"fillcolor": colours.strong, "color": colours.strong,
                                                  "fontcolor": PAPER, "fontname": BOLD_FONT, "penwidth": "3",
                                                  "peripheries": "2"}
    edges: dict[str, dict[str, str]] = {
        "default": {"color": MUTED, "fontcolor": MUTED, "fontname": FONT, "fontsize": "12", "arrowsize": "0.8"},
    }
    for index, (_, width, line) in enumerate(_WEIGHTS):
        edges[f"moved_{index}"] = {"color": MUTED if index == 0 else INK, "fontcolor": MUTED if index == 0 else INK,
                                   "penwidth": width, "style": line}
    return {"node": nodes, "edge": edges, "graph": {"default": {}}}


def _mermaid_styles() -> dict[str, dict[str, dict[str, str]]]:
    """The same styles in Mermaid's vocabulary (``classDef s_<name> fill:...,stroke:...``)."""
    nodes: dict[str, dict[str, str]] = {"default": {"fill": PAPER, "stroke": INK, "color": INK}}
    for state, colours in STATE_COLOURS.items():
        nodes[style_name(state)] = {"fill": colours.light, "stroke": colours.strong, "color": INK,
                                    "stroke-width": "1.5px"}
        nodes[style_name(state, current=True)] = {"fill": colours.strong, "stroke": colours.strong,
                                                  "color": PAPER, "stroke-width": "3px", "font-weight": "bold"}
    return {"node": nodes, "edge": {"default": {}}, "graph": {"default": {}}}


#: The graph's own attributes: arrows left to right, the title on top in bold, white paper.
_GRAPHVIZ_GRAPH: Final = {
    "directed": "true", "strict": "false", "rankdir": "LR", "labelloc": "t", "labeljust": "c",
    "fontname": BOLD_FONT, "fontsize": "18", "fontcolor": INK, "bgcolor": PAPER, "pad": "0.3", "nodesep": "0.45",
    "ranksep": "0.8",
}
#: Mermaid takes only the direction (transitions writes each of these as a line of the diagram).
_MERMAID_GRAPH: Final = {"directed": "true", "strict": "false", "rankdir": "LR"}


def _graph(engine: _Engine, picture: _Picture, title: str) -> Any:
    """The engine's graph object of a throwaway machine whose one model is in the highlighted state."""
    moves = picture.moves
    machine = GraphMachine(
        model=None,
        states=[_LabelledState(s, picture.labels[s]) for s in PluginLifecycleState],
        # One arrow per move, labelled with its trigger (and how often it was taken, when known).
        transitions=[{"trigger": trigger, "source": source, "dest": dest,
                      "label": trigger if moves is None else f"{trigger} ({moves[source, dest]})"}
                     for (source, dest), trigger in MOVES.items()],
        initial=PluginLifecycleState.LOADED,  # where a plugin enters: Mermaid draws it as [*] --> LOADED
        auto_transitions=False,
        title=title,
        graph_engine=engine,
    )
    if not machine.graph_cls.__module__.endswith("_" + engine):
        # transitions falls back to another engine with only a log line; a caller asked for this one.
        raise RuntimeError(f"transitions could not load its {engine} diagram engine")
    # Wrapped, not subclassed: the styles are set on this machine before its first graph is generated.
    styles: Any = _mermaid_styles() if engine == _MERMAID else _graphviz_styles()
    machine.style_attributes = styles
    machine.machine_attributes = dict(_MERMAID_GRAPH if engine == _MERMAID else _GRAPHVIZ_GRAPH)
    model = _DiagramModel()
    machine.add_model(model, initial=picture.current or PluginLifecycleState.LOADED)
    graph = machine.model_graphs[id(model)]
    graph.reset_styling()  # transitions styled the model's state "active" (red): every state gets its own colour
    for state in PluginLifecycleState:
        graph.set_node_style(state, style_name(state, current=state is picture.current))
    drawn = model.get_graph(title=title)
    if moves is not None and engine != _MERMAID:  # Mermaid's state diagrams cannot style one arrow
        for (source, dest), count in moves.items():
            _style_arrow(engine, graph, drawn, (source, dest), _weight(count))
        if engine == _GRAPHVIZ:
            drawn = model.get_graph(title=title)  # this engine builds its graph anew from the styles set
    return drawn


def _style_arrow(engine: _Engine, graph: Any, drawn: Any, move: Move, style: str) -> None:
    """Draw the arrow of ``move`` with the edge style ``style``."""
    if engine == _PYGRAPHVIZ:
        drawn.get_edge(move[0].value, move[1].value).attr.update(graph.machine.style_attributes["edge"][style])
    else:
        graph.custom_styles["edge"][move[0].value][move[1].value] = style


@functools.cache
def _probe() -> _Probe:
    """Which engine renders each format here: the first that imports and draws the lifecycle."""
    probe = _Probe(engines={"mermaid": _MERMAID})
    for fmt in ("svg", "dot"):
        problems = []
        for engine in _GRAPHVIZ_ENGINES:
            problem = _try(engine, fmt)
            if problem is None:
                probe.engines[fmt] = engine
                break
            problems.append(problem)
        else:
            probe.problems[fmt] = "; ".join(problems)
    for fmt, problem in probe.problems.items():
        _LOG.info("diagram format %s is unavailable: %s", fmt, problem)
    return probe


def _try(engine: _Engine, fmt: str) -> str | None:
    """Why ``engine`` cannot render ``fmt`` here, or None when it can."""
    try:
        importlib.import_module(engine)
    except ImportError:
        return f"{engine} is not installed"
    picture = _Picture(None, DEFAULT_TITLE, {s: s.value for s in PluginLifecycleState}, None)
    try:
        _draw(fmt, engine, picture)
    except _RENDER_ERRORS as err:
        if engine == _GRAPHVIZ and type(err).__name__ == "ExecutableNotFound":
            return "Graphviz's dot program is not on PATH"
        _LOG.warning("diagram engine %s cannot render %s", engine, fmt, exc_info=True)
        return f"{engine} could not render {fmt}"
    return None
