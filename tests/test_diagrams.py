"""Lifecycle diagrams: every format, the palette's colours, the highlighted state, counts of plugins and of
transitions, the title on top, hostile titles and missing renderers."""

from __future__ import annotations

import gc
import html
import json
import shutil
import sys
import threading
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from typing import Any, cast

import pytest
from transitions.extensions.diagrams import GraphMachine

from plugin_health import diagrams
from plugin_health.diagrams import (
    FORMATS,
    MAX_TITLE_LENGTH,
    MEDIA_TYPES,
    DiagramError,
    DiagramInputError,
    RendererUnavailableError,
    UnknownFormatError,
    available_formats,
    render,
)
from plugin_health.errors import PluginError
from plugin_health.lifecycle.states import LEGAL_MOVES, TRIGGERS, PluginLifecycleState
from plugin_health.palette import INK, MUTED, PAPER, STATE_COLOURS

S = PluginLifecycleState
#: transitions' own highlight (red on salmon), which a diagram here never uses.
TRANSITIONS_ACTIVE = cast(dict[str, str], GraphMachine.style_attributes["node"]["active"])  # type: ignore[index]
#: The dashboard's colours (dashboard.css, written from plugin_health.palette): strong, light.
GREEN, RED, AMBER, BLUE = ("#1a7f37", "#dafbe1"), ("#cf222e", "#ffebe9"), ("#9a6700", "#fff8c5"), ("#0969da", "#ddf4ff")
COLOURS = {S.RUNNING: GREEN, S.FAILED: RED, S.UNAVAILABLE: AMBER, S.LOADED: BLUE, S.INITIALIZED: BLUE}
SVG_NS = "{http://www.w3.org/2000/svg}"
HOSTILE_TITLES = [
    pytest.param('say "hi"', 'say "hi"', id="double-quotes"),
    pytest.param("it's", "it's", id="single-quote"),
    pytest.param("x}; evil -> LOADED; {", "x}; evil -> LOADED; {", id="braces"),
    pytest.param("a\nb\r\n---\nstateDiagram-v2", "a b --- stateDiagram-v2", id="newlines"),
    pytest.param("<script>alert(1)</script>", "<script>alert(1)</script>", id="script"),
    pytest.param("<b>bold</b>", "<b>bold</b>", id="html-label"),
    pytest.param("a \\G \\N \\l \\", "a \\G \\N \\l \\", id="backslash-escapes"),
    pytest.param("&amp; &#60;", "&amp; &#60;", id="entities"),
    pytest.param("evil\u202edrowssap\u200b", "evil drowssap", id="bidi-and-zero-width"),
    pytest.param("title: x\n%%{init: {}}%%", "title: x %%{init: {}}%%", id="yaml-and-directive"),
    pytest.param("weather \u2600 caf\u00e9", "weather \u2600 caf\u00e9", id="unicode"),
]

needs_graphviz = pytest.mark.skipif(
    not {"svg", "dot"} <= set(available_formats()),
    reason="no Graphviz renderer here (pip install 'pygraphviz>=2.0')",
)


@pytest.fixture
def without_modules(monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Make named modules unimportable and re-probe the renderers; the real probe comes back afterwards."""
    # Imported first, so that transitions' own engine modules keep the real packages.
    import transitions.extensions.diagrams_graphviz
    import transitions.extensions.diagrams_mermaid
    import transitions.extensions.diagrams_pygraphviz  # noqa: F401

    def hide(*names: str) -> None:
        for name in names:
            monkeypatch.setitem(sys.modules, name, None)
        diagrams._probe.cache_clear()

    yield hide
    monkeypatch.undo()
    diagrams._probe.cache_clear()


def text(format: str, **kwargs: Any) -> str:
    return render(format, **kwargs).decode("utf-8")


def svg_nodes(svg: bytes) -> dict[str, ET.Element]:
    """The node groups of a Graphviz SVG, by state name."""
    root = ET.fromstring(svg)
    nodes = {}
    for group in root.iter(f"{SVG_NS}g"):
        if group.get("class") == "node":
            title = group.find(f"{SVG_NS}title")
            assert title is not None
            nodes[str(title.text)] = group
    return nodes


def svg_shapes(node: ET.Element) -> list[ET.Element]:
    """The outlines of a node (two for a state drawn with peripheries=2), the filled one first."""
    return node.findall(f"{SVG_NS}path") or node.findall(f"{SVG_NS}polygon")


def svg_fill(node: ET.Element) -> str | None:
    return svg_shapes(node)[0].get("fill")


def svg_stroke(node: ET.Element) -> str | None:
    return svg_shapes(node)[0].get("stroke")


def svg_edges(svg: bytes) -> dict[tuple[str, str], ET.Element]:
    """The edge groups of a Graphviz SVG, by (from, to)."""
    edges = {}
    for group in ET.fromstring(svg).iter(f"{SVG_NS}g"):
        if group.get("class") == "edge":
            title = group.find(f"{SVG_NS}title")
            assert title is not None
            assert title.text is not None
            source, _, dest = title.text.partition("->")  # Graphviz writes "LOADED&#45;&gt;INITIALIZED"
            edges[(source, dest)] = group
    return edges


def svg_texts(svg: bytes) -> list[str]:
    return [str(t.text) for t in ET.fromstring(svg).iter(f"{SVG_NS}text")]


def mermaid_classes(source: str) -> dict[str, str]:
    """``Class STATE s_style`` lines: the style class each state is drawn with."""
    return {
        parts[1]: parts[2] for line in source.splitlines() if (parts := line.split()) and parts[0].lower() == "class"
    }


def dot_graph(source: str) -> Any:
    pygraphviz = pytest.importorskip("pygraphviz")
    return pygraphviz.AGraph(string=source)


# --- the surface ---------------------------------------------------------------------------------------------


def test_formats_and_media_types() -> None:
    assert FORMATS == ("svg", "dot", "mermaid")
    assert MEDIA_TYPES == {
        "svg": "image/svg+xml",
        "dot": "text/vnd.graphviz; charset=utf-8",
        "mermaid": "text/plain; charset=utf-8",
    }


def test_error_hierarchy() -> None:
    assert issubclass(DiagramError, PluginError)
    assert issubclass(UnknownFormatError, DiagramError)
    assert issubclass(UnknownFormatError, ValueError)
    assert issubclass(RendererUnavailableError, DiagramError)
    assert issubclass(DiagramInputError, DiagramError)
    assert issubclass(DiagramInputError, ValueError)


@pytest.mark.parametrize("bad", ["png", "", "svg ", "mermaid.js", "dot;"])
def test_unknown_format(bad: str) -> None:
    with pytest.raises(UnknownFormatError) as info:
        render(bad)
    assert info.value.format == bad
    assert info.value.supported == FORMATS
    assert str(info.value) == f"unknown diagram format {bad!r}: supported formats are svg, dot, mermaid"


def test_format_is_case_insensitive() -> None:
    assert render("MERMAID") == render("mermaid")


def test_mermaid_is_always_available() -> None:
    formats = available_formats()
    assert "mermaid" in formats
    assert formats == tuple(f for f in FORMATS if f in formats)


def test_available_formats_is_cached() -> None:
    available_formats()
    probed = diagrams._probe.cache_info().misses
    assert available_formats() == available_formats()
    assert diagrams._probe.cache_info().misses == probed


# --- DOT -----------------------------------------------------------------------------------------------------


@needs_graphviz
def test_dot_has_every_state_and_trigger() -> None:
    source = text("dot")
    graph = dot_graph(source)
    assert sorted(graph.nodes()) == sorted(s.value for s in S)
    labels = {(u, v): graph.get_edge(u, v).attr["label"] for u, v in graph.edges()}
    assert labels == {(str(src), str(dst)): trigger for (src, trigger), dst in LEGAL_MOVES.items()}
    for trigger in TRIGGERS:
        assert trigger in source
    assert graph.graph_attr["label"] == diagrams.DEFAULT_TITLE


@needs_graphviz
@pytest.mark.parametrize("state", list(S), ids=str)
def test_dot_highlights_current_state_in_its_own_colour(state: S) -> None:
    graph = dot_graph(text("dot", current=state))
    for node in graph.nodes():
        strong, light = COLOURS[S(str(node))]
        attrs = (node.attr["fillcolor"], node.attr["color"], node.attr["fontcolor"], node.attr["peripheries"],
                 node.attr["penwidth"])
        if node == state.value:  # filled with its colour, a bold double outline, white bold text
            assert attrs == (strong, strong, PAPER, "2", "3")
            assert node.attr["fontname"] == "Helvetica-Bold"
        else:
            assert attrs == (light, strong, INK, "1", "1.5")
    source = text("dot", current=state)
    assert TRANSITIONS_ACTIVE["fillcolor"] not in source
    assert TRANSITIONS_ACTIVE["color"] not in source


@needs_graphviz
def test_dot_without_current_colours_every_state_lightly() -> None:
    graph = dot_graph(text("dot"))
    assert {str(n): (n.attr["fillcolor"], n.attr["color"]) for n in graph.nodes()} == {
        s.value: (COLOURS[s][1], COLOURS[s][0]) for s in S}
    assert render("dot", current=S.LOADED) != render("dot")


@needs_graphviz
def test_dot_title_on_top_and_legible_fonts() -> None:
    graph = dot_graph(text("dot", title="weather"))
    assert (graph.graph_attr["labelloc"], graph.graph_attr["fontname"], graph.graph_attr["fontsize"]) == (
        "t", "Helvetica-Bold", "18")
    assert (graph.node_attr["fontname"], graph.node_attr["fontsize"]) == ("Helvetica", "14")
    assert (graph.edge_attr["fontname"], graph.edge_attr["fontsize"]) == ("Helvetica", "12")


@needs_graphviz
def test_dot_counts_in_labels() -> None:
    graph = dot_graph(text("dot", counts={S.RUNNING: 12, S.FAILED: 1}))
    labels = {str(n): n.attr["label"] for n in graph.nodes()}
    assert labels == {
        "LOADED": "LOADED (0)\\l",
        "INITIALIZED": "INITIALIZED (0)\\l",
        "RUNNING": "RUNNING (12)\\l",
        "FAILED": "FAILED (1)\\l",
        "UNAVAILABLE": "UNAVAILABLE (0)\\l",
    }


@needs_graphviz
def test_dot_transition_counts_on_arrows() -> None:
    moves = {(S.LOADED, S.INITIALIZED): 4, (S.INITIALIZED, S.RUNNING): 3, (S.RUNNING, S.FAILED): 12,
             (S.LOADED, S.FAILED): 150}
    graph = dot_graph(text("dot", moves=moves))
    edges = {(str(u), str(v)): graph.get_edge(u, v).attr for u, v in graph.edges()}
    assert {pair: attr["label"] for pair, attr in edges.items()} == {
        (str(src), str(dst)): f"{trigger} ({moves.get((src, dst), 0)})" for (src, trigger), dst in LEGAL_MOVES.items()}
    # An arrow never taken is dashed and muted; the others heavier the more often they were taken.
    weights = {pair: (attr["style"], attr["penwidth"], attr["color"]) for pair, attr in edges.items()}
    assert weights[("LOADED", "INITIALIZED")] == ("solid", "1.6", INK)
    assert weights[("RUNNING", "FAILED")] == ("solid", "2.4", INK)
    assert weights[("LOADED", "FAILED")] == ("solid", "3.2", INK)
    assert weights[("FAILED", "LOADED")] == ("dashed", "1", MUTED)


@needs_graphviz
def test_dot_without_transition_counts_labels_triggers_only() -> None:
    graph = dot_graph(text("dot"))
    assert {graph.get_edge(u, v).attr["label"] for u, v in graph.edges()} == set(TRIGGERS)


def test_count_moves_from_a_history() -> None:
    totals = {(None, "LOADED"): 3, ("LOADED", "INITIALIZED"): 2, (S.RUNNING, S.FAILED): 5, ("RUNNING", "LOADED"): 9}
    counted = diagrams.count_moves(totals)
    assert set(counted) == set(diagrams.MOVES)  # every arrow, none invented: a first state and a non-move count nowhere
    assert counted[(S.LOADED, S.INITIALIZED)] == 2
    assert counted[(S.RUNNING, S.FAILED)] == 5
    assert sum(counted.values()) == 7


@pytest.mark.parametrize(
    ("moves", "message"),
    [
        pytest.param({(S.RUNNING, S.LOADED): 1}, "diagram moves (<PluginLifecycleState.RUNNING: 'RUNNING'>, "
                     "<PluginLifecycleState.LOADED: 'LOADED'>) is invalid: not a (from, to) move of the lifecycle "
                     "table", id="not-a-move"),
        pytest.param({("RUNNING", "FAILED"): -2}, "diagram moves -2 is invalid: RUNNING -> FAILED: not a "
                     "non-negative integer", id="negative"),
        pytest.param({"RUNNING": 2}, "diagram moves 'RUNNING' is invalid: not a (from, to) move of the lifecycle "
                     "table", id="not-a-pair"),
    ],
)
def test_bad_moves(moves: dict[Any, Any], message: str) -> None:
    with pytest.raises(DiagramInputError) as info:
        render("mermaid", moves=moves)
    assert info.value.field == "moves"
    assert str(info.value) == message


@needs_graphviz
@pytest.mark.parametrize(("title", "shown"), HOSTILE_TITLES)
def test_dot_title_cannot_break_out(title: str, shown: str) -> None:
    graph = dot_graph(text("dot", title=title, current=S.RUNNING))
    assert sorted(graph.nodes()) == sorted(s.value for s in S)
    assert len(graph.edges()) == len({(src, dst) for (src, _), dst in LEGAL_MOVES.items()})
    # An HTML-like label, entity-escaped, with backslashes doubled against Graphviz's \G, \N, ... escapes.
    assert html.unescape(graph.graph_attr["label"]) == shown.replace("\\", "\\\\")


# --- SVG -----------------------------------------------------------------------------------------------------


@needs_graphviz
def test_svg_is_well_formed_with_every_state_and_trigger() -> None:
    svg = render("svg")
    root = ET.fromstring(svg)
    assert root.tag == f"{SVG_NS}svg"
    assert sorted(svg_nodes(svg)) == sorted(s.value for s in S)
    texts = svg_texts(svg)
    for state in S:
        assert state.value in texts
    for trigger in TRIGGERS:
        assert trigger in texts
    assert diagrams.DEFAULT_TITLE in texts


@needs_graphviz
@pytest.mark.parametrize("state", list(S), ids=str)
def test_svg_highlights_current_state_in_its_own_colour(state: S) -> None:
    nodes = svg_nodes(render("svg", current=state))
    fills = {name: svg_fill(node) for name, node in nodes.items()}
    assert fills == {s.value: COLOURS[s][0] if s is state else COLOURS[s][1] for s in S}
    assert {name: svg_stroke(node) for name, node in nodes.items()} == {s.value: COLOURS[s][0] for s in S}
    # peripheries=2: the active state is drawn with a second outline
    outlines = {name: len(svg_shapes(node)) for name, node in nodes.items()}
    assert outlines[state.value] == 2
    assert all(count == 1 for name, count in outlines.items() if name != state.value)


@needs_graphviz
def test_svg_running_highlighted_is_green_not_red() -> None:
    """The bug this replaces: transitions painted a RUNNING plugin's state red (its "active" style)."""
    running = svg_nodes(render("svg", current=S.RUNNING, title="core"))["RUNNING"]
    assert svg_fill(running) == GREEN[0] == STATE_COLOURS[S.RUNNING].strong
    assert {shape.get("stroke") for shape in svg_shapes(running)} == {GREEN[0]}
    assert svg_shapes(running)[0].get("stroke-width") == "3"
    assert [t.get("fill") for t in running.iter(f"{SVG_NS}text")] == [PAPER]
    assert [t.get("font-weight") for t in running.iter(f"{SVG_NS}text")] == ["bold"]
    svg = render("svg", current=S.RUNNING)
    painted = {value for e in ET.fromstring(svg).iter() for value in (e.get("fill"), e.get("stroke"))}
    assert not painted & {"red", "darksalmon"}  # transitions' "active" style
    # The only red is FAILED's own: a light fill with a red outline.
    reds = {name for name, node in svg_nodes(svg).items() for shape in svg_shapes(node)
            if RED[0] in (shape.get("fill"), shape.get("stroke"))}
    assert reds == {"FAILED"}


@needs_graphviz
@pytest.mark.parametrize("state", list(S), ids=str)
def test_svg_colours_of_each_state(state: S) -> None:
    """Each state in the dashboard's colours: RUNNING green, FAILED red, UNAVAILABLE amber, LOADED and
    INITIALIZED blue."""
    node = svg_nodes(render("svg", counts={state: 1}))[state.value]
    assert (svg_fill(node), svg_stroke(node)) == (COLOURS[state][1], COLOURS[state][0])
    assert (STATE_COLOURS[state].strong, STATE_COLOURS[state].light) == COLOURS[state]


@needs_graphviz
def test_svg_title_is_on_top() -> None:
    svg = render("svg", title="weather")
    root = ET.fromstring(svg)
    [title] = [t for t in root.iter(f"{SVG_NS}text") if t.text == "weather"]
    node_ys = [float(str(t.get("y"))) for node in svg_nodes(svg).values() for t in node.iter(f"{SVG_NS}text")]
    assert float(str(title.get("y"))) < min(node_ys)  # SVG's y grows downwards
    assert (title.get("font-size"), title.get("font-weight")) == ("18.00", "bold")


@needs_graphviz
def test_svg_transition_counts_on_arrows() -> None:
    edges = svg_edges(render("svg", moves={(S.RUNNING, S.FAILED): 7}))
    labels = {pair: [t.text for t in edge.iter(f"{SVG_NS}text")] for pair, edge in edges.items()}
    assert labels[("RUNNING", "FAILED")] == ["fail (7)"]
    assert labels[("FAILED", "LOADED")] == ["reset (0)"]
    assert edges[("RUNNING", "FAILED")].find(f"{SVG_NS}path").get("stroke-dasharray") is None  # type: ignore[union-attr]
    assert edges[("FAILED", "LOADED")].find(f"{SVG_NS}path").get("stroke-dasharray") is not None  # type: ignore[union-attr]


@needs_graphviz
def test_svg_counts_in_labels() -> None:
    texts = svg_texts(render("svg", counts={S.RUNNING: 12}))
    assert "RUNNING (12)" in texts
    assert "LOADED (0)" in texts


@needs_graphviz
@pytest.mark.parametrize(("title", "shown"), HOSTILE_TITLES)
def test_svg_title_is_escaped(title: str, shown: str) -> None:
    svg = render("svg", title=title)
    root = ET.fromstring(svg)  # well-formed whatever the title
    assert not [e for e in root.iter() if e.tag.split("}")[-1] in {"script", "b", "foreignObject"}]
    assert b"<script" not in svg
    texts = svg_texts(svg)
    # Graphviz draws spaces between words as no-break spaces.
    assert shown in [t.replace("\xa0", " ") for t in texts]
    assert sorted(svg_nodes(svg)) == sorted(s.value for s in S)


# --- Mermaid -------------------------------------------------------------------------------------------------


def test_mermaid_header_and_every_transition() -> None:
    source = text("mermaid")
    lines = source.splitlines()
    assert lines[:4] == ["---", f"title: {json.dumps(diagrams.DEFAULT_TITLE)}", "---", "stateDiagram-v2"]
    body = [line.strip() for line in lines[4:]]
    for (src, trigger), dst in LEGAL_MOVES.items():
        assert f"{src} --> {dst}: {trigger}" in body
    for state in S:
        assert f'state "{state}" as {state}' in body
    assert "[*] --> LOADED" in body
    assert source.endswith("\n")


@pytest.mark.parametrize("state", list(S), ids=str)
def test_mermaid_highlights_current_state(state: S) -> None:
    source = text("mermaid", current=state)
    classes = mermaid_classes(source)
    assert classes == {s.value: f"s_{s.value.lower()}_current" if s is state else f"s_{s.value.lower()}" for s in S}
    strong, light = COLOURS[state]
    lines = [line.strip() for line in source.splitlines()]
    assert (f"classDef s_{state.value.lower()}_current fill:{strong},stroke:{strong},color:{PAPER},"
            "stroke-width:3px,font-weight:bold") in lines
    assert f"classDef s_{state.value.lower()} fill:{light},stroke:{strong},color:{INK},stroke-width:1.5px" in lines
    assert TRANSITIONS_ACTIVE["fillcolor"] not in source


def test_mermaid_without_current_colours_every_state() -> None:
    assert mermaid_classes(text("mermaid")) == {s.value: f"s_{s.value.lower()}" for s in S}


def test_mermaid_transition_counts_on_arrows() -> None:
    body = [line.strip() for line in text("mermaid", moves={("INITIALIZED", "RUNNING"): 2}).splitlines()]
    assert "INITIALIZED --> RUNNING: start (2)" in body
    assert "LOADED --> INITIALIZED: initialize (0)" in body


def test_mermaid_counts_in_labels() -> None:
    body = [line.strip() for line in text("mermaid", counts={S.UNAVAILABLE: 3}).splitlines()]
    assert 'state "UNAVAILABLE (3)" as UNAVAILABLE' in body
    assert 'state "RUNNING (0)" as RUNNING' in body


@pytest.mark.parametrize(("title", "shown"), HOSTILE_TITLES)
def test_mermaid_title_cannot_break_out(title: str, shown: str) -> None:
    lines = text("mermaid", title=title, current=S.FAILED).splitlines()
    plain = text("mermaid", title="x", current=S.FAILED).splitlines()
    assert lines[0] == "---"
    assert lines[1].startswith("title: ")
    assert json.loads(lines[1].removeprefix("title: ")) == shown  # a JSON string is a YAML double-quoted scalar
    assert lines[2:] == plain[2:]  # the title changes nothing else


# --- input checks --------------------------------------------------------------------------------------------


def test_title_is_bounded_and_defaulted() -> None:
    lines = text("mermaid", title="x" * 500).splitlines()
    shown = json.loads(lines[1].removeprefix("title: "))
    assert len(shown) == MAX_TITLE_LENGTH
    assert shown.endswith("\u2026")
    for empty in ("", "  \n\t "):
        assert text("mermaid", title=empty) == text("mermaid")


def test_title_must_be_text() -> None:
    with pytest.raises(DiagramInputError) as info:
        render("mermaid", title=42)  # type: ignore[arg-type]
    assert info.value.field == "title"
    assert str(info.value) == "diagram title 42 is invalid: must be a string"


def test_current_accepts_state_values() -> None:
    assert render("mermaid", current="RUNNING") == render("mermaid", current=S.RUNNING)  # type: ignore[arg-type]


@pytest.mark.parametrize("bad", ["BOGUS", "running", 3])
def test_unknown_current_state(bad: object) -> None:
    with pytest.raises(DiagramInputError) as info:
        render("mermaid", current=bad)  # type: ignore[arg-type]
    assert info.value.field == "current"
    assert info.value.value == bad
    assert str(info.value) == f"diagram current {bad!r} is invalid: not a lifecycle state"


@pytest.mark.parametrize(
    ("counts", "message"),
    [
        pytest.param({S.RUNNING: -1}, "diagram counts -1 is invalid: RUNNING: not a non-negative integer", id="neg"),
        pytest.param(
            {S.RUNNING: 1.5}, "diagram counts 1.5 is invalid: RUNNING: not a non-negative integer", id="float"
        ),
        pytest.param(
            {S.RUNNING: True}, "diagram counts True is invalid: RUNNING: not a non-negative integer", id="bool"
        ),
        pytest.param({"BOGUS": 1}, "diagram counts 'BOGUS' is invalid: not a lifecycle state", id="state"),
    ],
)
def test_bad_counts(counts: dict[Any, Any], message: str) -> None:
    with pytest.raises(DiagramInputError) as info:
        render("mermaid", counts=counts)
    assert info.value.field == "counts"
    assert str(info.value) == message


# --- renderers -----------------------------------------------------------------------------------------------


def test_without_graphviz_only_mermaid(without_modules: Any) -> None:
    without_modules("pygraphviz", "graphviz")
    assert available_formats() == ("mermaid",)
    for format in ("svg", "dot"):
        with pytest.raises(RendererUnavailableError) as info:
            render(format)
        assert info.value.format == format
        assert info.value.available == ("mermaid",)
        assert str(info.value) == (
            f"diagram format {format!r} cannot be rendered here "
            "(pygraphviz is not installed; graphviz is not installed); available formats: mermaid"
        )
    assert text("mermaid").startswith("---\n")


def test_graphviz_package_fallback(without_modules: Any) -> None:
    pytest.importorskip("graphviz")
    without_modules("pygraphviz")
    has_dot = shutil.which("dot") is not None
    assert available_formats() == (("svg",) if has_dot else ()) + ("dot", "mermaid")
    source = text("dot", current=S.RUNNING, title="<script>", counts={S.RUNNING: 2})
    for state in S:
        assert state.value in source
    for trigger in TRIGGERS:
        assert trigger in source
    assert "RUNNING (2)" in source
    assert "<script>" not in source
    assert GREEN[0] in source
    if has_dot:
        ET.fromstring(render("svg", title="<script>"))
    else:
        with pytest.raises(RendererUnavailableError, match="Graphviz's dot program"):
            render("svg")


@needs_graphviz
def test_render_failure_is_unavailable(monkeypatch: pytest.MonkeyPatch) -> None:
    import pygraphviz  # type: ignore[import-untyped]

    def broken(*args: object, **kwargs: object) -> bytes:
        raise ValueError("Graphviz raised a layout error.")

    available_formats()  # probed before the renderer breaks
    monkeypatch.setattr(pygraphviz.AGraph, "draw", broken)
    with pytest.raises(RendererUnavailableError) as info:
        render("svg")
    assert info.value.format == "svg"
    assert isinstance(info.value.__cause__, ValueError)


# --- hygiene -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("format", FORMATS)
def test_output_is_deterministic(format: str) -> None:
    if format not in available_formats():
        pytest.skip(f"{format} is not available here")
    kwargs: dict[str, Any] = {"current": S.RUNNING, "title": "weather", "counts": {S.RUNNING: 2}}
    assert render(format, **kwargs) == render(format, **kwargs)


def test_no_graph_machine_outlives_a_render() -> None:
    for format in available_formats():
        render(format, current=S.RUNNING)
    gc.collect()
    assert not [obj for obj in gc.get_objects() if isinstance(obj, GraphMachine)]


@needs_graphviz
def test_concurrent_renders_agree() -> None:
    expected = {s: render("svg", current=s) for s in S}
    results: list[bool] = []

    def work() -> None:
        for state in S:
            results.append(render("svg", current=state) == expected[state])

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * (4 * len(S))
