"""The dashboard routes with pytest-flask: the page, its script and style, their headers, and what they may load."""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugin_health import create_app, palette
from plugin_health.api.dashboard import CONTENT_SECURITY_POLICY
from plugin_health.app import EXTENSION
from plugin_health.lifecycle import PluginLifecycleState

ASSETS = {
    "/": "text/html; charset=utf-8",
    "/dashboard.js": "text/javascript; charset=utf-8",
    "/dashboard.css": "text/css; charset=utf-8",
    "/palette.css": "text/css; charset=utf-8",
}
ASSET_IDS = ["page", "script", "style", "palette"]
COLUMNS = ["name", "state", "reason", "error_type", "check", "since (UTC)", "recent transitions", "restarts"]
STATIC = Path(__file__).parents[1] / "plugin_health" / "api" / "static"


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    (tmp_path / "core.py").write_text("from plugin_health import Plugin\n\nclass P(Plugin):\n    pass\n")
    app = create_app({"plugin_path": str(tmp_path), "store_url": "memory://", "health_interval": 3600})
    yield app
    app.extensions[EXTENSION].shutdown()


class Page(HTMLParser):
    """What the page's markup asks for: the URLs it loads, its inline code and style, its columns and filters."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.inline_scripts = 0
        self.style_elements = 0
        self.style_attributes = 0
        self.handlers: list[str] = []
        self.columns: list[str] = []
        self.filters: list[str] = []
        self._in: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        self.urls += [value for key, value in attrs if key in ("src", "href", "action", "data") and value]
        self.handlers += [key for key, _ in attrs if key.startswith("on")]
        self.style_attributes += "style" in found
        self.inline_scripts += tag == "script" and "src" not in found
        self.style_elements += tag == "style"
        if "data-filter" in found:
            self.filters.append(found["data-filter"] or "")
        self._in = tag

    def handle_data(self, data: str) -> None:
        if self._in == "th" and data.strip():
            self.columns.append(data.strip())

    def handle_endtag(self, tag: str) -> None:
        self._in = None


def parse(client: FlaskClient) -> Page:
    page = Page()
    page.feed(client.get("/").get_data(as_text=True))
    return page


@pytest.mark.parametrize(("path", "media_type"), ASSETS.items(), ids=ASSET_IDS)
def test_each_asset_is_served_with_its_type_and_the_policy(client: FlaskClient, path: str, media_type: str) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == media_type
    assert response.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"


def test_the_policy_allows_only_this_origin() -> None:
    directives = dict(d.strip().split(" ", 1) for d in CONTENT_SECURITY_POLICY.split(";"))
    assert directives["default-src"] == "'self'"
    assert "unsafe" not in CONTENT_SECURITY_POLICY
    assert not {"script-src", "style-src", "connect-src", "img-src"} & set(directives)  # all fall back to 'self'


@pytest.mark.parametrize("path", ASSETS, ids=ASSET_IDS)
def test_no_asset_names_another_origin(client: FlaskClient, path: str) -> None:
    # The SVG namespace is a name, not a place: nothing is loaded from it.
    text = client.get(path).get_data(as_text=True).replace('"http://www.w3.org/2000/svg"', "")
    assert not re.search(r"https?:|//[\w.-]+\.\w", text, re.IGNORECASE)
    assert "@import" not in text


def test_the_page_loads_only_relative_urls_of_this_app(client: FlaskClient) -> None:
    page = parse(client)
    assert sorted(page.urls) == ["dashboard.css", "dashboard.js", "palette.css", "v1/plugins/"]
    for url in page.urls:
        assert client.get("/" + url).status_code == 200, url


def test_the_page_has_no_inline_code_or_style(client: FlaskClient) -> None:
    page = parse(client)
    assert (page.inline_scripts, page.style_elements, page.style_attributes, page.handlers) == (0, 0, 0, [])


def test_the_table_has_the_columns_and_a_filter_for_every_state(client: FlaskClient) -> None:
    page = parse(client)
    assert page.columns == COLUMNS
    assert sorted(page.filters) == sorted(["", *(state.value for state in PluginLifecycleState)])


def test_the_script_writes_no_markup_and_performs_no_action() -> None:
    script = (STATIC / "dashboard.js").read_text()
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "Function(",
                 "setTimeout(\"", "method:", "POST", "importNode", "adoptNode", "createContextualFragment"):
        assert sink not in script, sink
    assert "textContent" in script
    # The diagram's SVG is copied element by element: drawing elements and attributes only (no script, no link,
    # no foreignObject, no style, no on* handler).
    elements = re.search(r"SVG_ELEMENTS = new Set\(\[([^]]*)\]", script)
    attributes = re.search(r"SVG_ATTRIBUTES = new Set\(\[([^]]*)\]", script)
    assert elements is not None
    assert attributes is not None
    kept = set(re.findall(r'"([^"]+)"', elements[1])) | set(re.findall(r'"([^"]+)"', attributes[1]))
    assert not kept & {"script", "a", "foreignObject", "style", "href", "xlink:href", "image", "use"}
    assert not [name for name in kept if name.startswith("on")]


def test_the_token_stays_in_the_tab_and_goes_as_a_bearer_token() -> None:
    script = (STATIC / "dashboard.js").read_text()
    assert "sessionStorage" in script
    assert "localStorage" not in script
    assert "document.cookie" not in script
    assert "Authorization: `Bearer ${value}`" in script


@pytest.mark.parametrize("path", ["v1/plugins/", "v1/health", "v1/cluster", "v1/lifecycle/diagram?format=svg",
                                  "v1/plugins/core/history", "v1/plugins/core/diagram?format=svg"])
def test_the_routes_the_script_reads_answer(client: FlaskClient, path: str) -> None:
    script = client.get("/dashboard.js").get_data(as_text=True)
    assert re.sub(r"core", "${encodeURIComponent(", path.split("?")[0]).split("${")[0] in script
    response = client.get("/" + path)
    assert response.status_code == 200
    assert response.headers["ETag"]


def test_the_script_listens_to_the_event_stream(client: FlaskClient) -> None:
    script = client.get("/dashboard.js").get_data(as_text=True)
    assert 'new EventSource(api("v1/events").href)' in script
    response = client.get("/v1/events", buffered=False)
    try:
        assert (response.status_code, response.mimetype) == (200, "text/event-stream")
    finally:
        response.close()


def test_the_palette_is_the_one_the_diagrams_draw_with(client: FlaskClient) -> None:
    """One source of colours: palette.css is written from plugin_health.palette, and dashboard.css names them only
    through its custom properties."""
    sheet = client.get("/palette.css").get_data(as_text=True)
    assert sheet == palette.style_sheet()
    declared = dict(re.findall(r"(--[\w-]+): (#[0-9a-f]{6});", sheet))
    for state, colours in palette.STATE_COLOURS.items():
        assert declared[f"--{state.value.lower()}"] == colours.strong
        assert declared[f"--{state.value.lower()}-bg"] == colours.light
    assert (declared["--running"], declared["--failed"], declared["--unavailable"], declared["--loaded"]) == (
        "#1a7f37", "#cf222e", "#9a6700", "#0969da")
    style = (STATIC / "dashboard.css").read_text()
    assert not re.findall(r"#[0-9a-fA-F]{3,8}\b", style)  # no colour of its own
    assert set(re.findall(r"var\((--[\w-]+)\)", style)) <= set(declared)


@pytest.mark.parametrize("path", ASSETS, ids=ASSET_IDS)
def test_a_held_asset_is_not_sent_again(client: FlaskClient, path: str) -> None:
    etag = client.get(path).headers["ETag"]
    again = client.get(path, headers={"If-None-Match": etag})
    assert (again.status_code, again.get_data()) == (304, b"")
    assert again.headers["ETag"] == etag


def test_the_page_is_read_only(client: FlaskClient) -> None:
    response = client.post("/")
    assert response.status_code == 405
    assert response.mimetype == "application/problem+json"


def test_an_unknown_asset_is_a_problem(client: FlaskClient) -> None:
    response = client.get("/dashboard.exe")
    assert response.status_code == 404
    assert response.mimetype == "application/problem+json"
