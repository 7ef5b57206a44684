"""Lifecycle state diagrams (SVG, DOT, Mermaid), drawn by ``transitions``' diagram support; no Flask here.

Each call builds a throwaway ``GraphMachine`` from the table in ``plugin_health.lifecycle.states`` with one
model in the state to highlight, asks it for its graph, and lets it go: graph machines are never kept (they
hold a Graphviz graph per model). SVG and DOT come from pygraphviz, whose 2.x wheels bundle the Graphviz
libraries and lay out in-process; the ``graphviz`` package (which shells out to ``dot``) is the fallback.
Mermaid text needs no binary and always works.
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
from plugin_health.lifecycle.states import TRANSITIONS, PluginLifecycleState

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
# Graphviz's C library keeps global state (error buffers, the HTML-label lexer): one layout at a time.
_GRAPHVIZ_LOCK = threading.Lock()


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
) -> bytes:
    """The lifecycle diagram in ``format``, with ``current`` highlighted and ``counts`` in the state labels."""
    fmt = format.lower()
    if fmt not in FORMATS:
        raise UnknownFormatError(format)
    state = _check_current(current)
    labels = _labels(counts)
    text = _clean_title(title)
    probe = _probe()
    engine = probe.engines.get(fmt)
    if engine is None:
        raise RendererUnavailableError(fmt, available_formats(), probe.problems[fmt])
    try:
        return _draw(fmt, engine, state, text, labels)
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


def _draw(
    fmt: str,
    engine: _Engine,
    current: PluginLifecycleState | None,
    title: str,
    labels: Mapping[PluginLifecycleState, str],
) -> bytes:
    if engine == _MERMAID:
        # transitions indents its Mermaid text by each line's last character ("{"), title included: give it a
        # plain placeholder and write the real title into the front matter afterwards.
        graph = _graph(engine, current, "title", labels)
        return _mermaid_front_matter(str(graph.draw(None)), title).encode("utf-8")
    with _GRAPHVIZ_LOCK:
        graph = _graph(engine, current, _graphviz_label(title), labels)
        if fmt == "dot":
            source = graph.string() if engine == _PYGRAPHVIZ else graph.source
            return str(source).encode("utf-8")
        if engine == _PYGRAPHVIZ:
            return bytes(graph.draw(format="svg", prog="dot"))
        return bytes(graph.pipe(format="svg"))


def _graph(
    engine: _Engine,
    current: PluginLifecycleState | None,
    title: str,
    labels: Mapping[PluginLifecycleState, str],
) -> Any:
    """The engine's graph object of a throwaway machine whose one model is in ``current``."""
    machine = GraphMachine(
        model=None,
        states=[_LabelledState(s, labels[s]) for s in PluginLifecycleState],
        transitions=[dict(t) for t in TRANSITIONS],
        initial=PluginLifecycleState.LOADED,  # where a plugin enters: Mermaid draws it as [*] --> LOADED
        auto_transitions=False,
        title=title,
        graph_engine=engine,
    )
    if not machine.graph_cls.__module__.endswith("_" + engine):
        # transitions falls back to another engine with only a log line; a caller asked for this one.
        raise RuntimeError(f"transitions could not load its {engine} diagram engine")
    model = _DiagramModel()
    # GraphMachine styles the model's state as "active"; with nothing to highlight, reset that styling.
    machine.add_model(model, initial=current or PluginLifecycleState.LOADED)
    if current is None:
        machine.model_graphs[id(model)].reset_styling()
    return model.get_graph(title=title)


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
    labels = {s: s.value for s in PluginLifecycleState}
    try:
        _draw(fmt, engine, None, DEFAULT_TITLE, labels)
    except _RENDER_ERRORS as err:
        if engine == _GRAPHVIZ and type(err).__name__ == "ExecutableNotFound":
            return "Graphviz's dot program is not on PATH"
        _LOG.warning("diagram engine %s cannot render %s", engine, fmt, exc_info=True)
        return f"{engine} could not render {fmt}"
    return None
