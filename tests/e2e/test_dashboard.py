"""End to end: the dashboard page in headless Debian Chromium, against real gunicorn over a loopback port.

The page must list every plugin with the state the API reports, mark the critical one, print times as ISO 8601
UTC, draw each visible plugin's recent transitions as a timeline, turn a plugin's row red within 2 s of the API
first reporting it FAILED, and at once (well before a poll) when the event stream says so, show error details once
the operator token is entered (and only in that tab), show the richer health fields when the API has them, draw
the lifecycle diagram inline in the same colours as the table (RUNNING green, and green too when it is the
highlighted state), show plugin-provided HTML as text, filter by state, revalidate with ETags, draw the cluster
grid (this instance alone, or several instances as the API answers them), and load nothing from anywhere but the
server. Skipped only where /usr/bin/chromium is missing and ``CI`` is not set; CI installs it (``.ci/run``).

Screenshots go to each test's tmp directory; with ``PLUGIN_HEALTH_SCREENSHOTS=<dir>`` the dashboard's is copied
there too (``docs/screenshots/dashboard.png`` was made that way).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import textwrap
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import BrowserContext, ConsoleMessage, Dialog, Page, Request, Response, sync_playwright

from e2e.server import Server

CHROMIUM = Path("/usr/bin/chromium")
pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not os.environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium); CI installs it and runs this test",
)
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync"]

TOKEN = "dashboard-operator-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
HTML = "<img src=x onerror=alert(1)>"
MESSAGE = "<script>alert(2)</script><b>not bold</b>"
PLUGINS = {
    "core": "version = '2.0'\n",
    "flappy": "critical = True\ndef health_check(self):\n    return not os.path.exists(FLAG)\n",
    "broken": "def initialize(self, context):\n    raise RuntimeError('no database')\n",
    # An exception class may be named anything: its name reaches the API as error_type, and the page.
    "xss": f"def initialize(self, context):\n    raise type({HTML!r}, (Exception,), {{}})({MESSAGE!r})\n",
    "needy": "requires = ('missing>=1',)\n",
    # Healthy but degraded: what its check observed is shown to anyone, its output only with the token.
    "disk": "def health_check(self):\n    return HealthResult(\n"
            "        status='warn', observed_value=0.93, observed_unit='ratio', output='disk 93% full')\n",
}
EXPECTED = {"broken": "FAILED", "core": "RUNNING", "disk": "RUNNING", "flappy": "RUNNING", "needy": "UNAVAILABLE",
            "xss": "FAILED"}
#: Computed row background colours (palette.css): RUNNING green, FAILED red, UNAVAILABLE amber.
BACKGROUNDS = {"RUNNING": "rgb(218, 251, 225)", "FAILED": "rgb(255, 235, 233)", "UNAVAILABLE": "rgb(255, 248, 197)"}
#: The strong colours (badges, the diagram's highlighted state, outlines).
STRONG = {"RUNNING": "rgb(26, 127, 55)", "FAILED": "rgb(207, 34, 46)", "UNAVAILABLE": "rgb(154, 103, 0)",
          "LOADED": "rgb(9, 105, 218)", "INITIALIZED": "rgb(9, 105, 218)"}
COLUMNS = ["name", "state", "reason", "error_type", "check", "since", "timeline", "restarts"]
ISO_UTC = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

ROWS = """() => Object.fromEntries([...document.querySelectorAll('#plugin-rows tr')].map(row => [
    row.dataset.plugin,
    {state: row.dataset.state, id: row.id, className: row.className, hidden: row.hidden,
     background: getComputedStyle(row).backgroundColor, critical: row.dataset.critical,
     cells: [...row.cells].map(cell => cell.textContent), title: row.cells[3].getAttribute('title'),
     name: row.querySelector('.plugin-name').textContent,
     marker: (m => ({visible: m.checkVisibility(), label: m.getAttribute('aria-label'), role: m.getAttribute('role'),
                     text: m.textContent}))(row.querySelector('.critical')),
     error: (d => d.checkVisibility() ? d.textContent : null)(row.querySelector('.error-detail')),
     since: (t => ({text: t.textContent, datetime: t.dateTime, title: t.title}))(row.querySelector('time')),
     timeline: [...row.querySelectorAll('.timeline .step')].map(step => ({
         state: step.dataset.state, title: step.title, background: getComputedStyle(step).backgroundColor}))}]))"""
#: The inline diagram's nodes: each state's shape as drawn (its fill and outline, attributes and computed).
DIAGRAM = """() => Object.fromEntries([...document.querySelectorAll('#diagram svg g.node')].map(node => {
    const shapes = [...node.querySelectorAll('path, polygon')];
    return [node.querySelector('title').textContent, {
        fill: getComputedStyle(shapes[0]).fill, stroke: getComputedStyle(shapes[0]).stroke, outlines: shapes.length,
        text: [...node.querySelectorAll('text')].map(t => t.textContent).join(' ')}];
}))"""


@pytest.fixture(scope="module")
def server(tmp_module: Path, gunicorn_factory: Callable[..., Server]) -> Server:
    plugins = tmp_module / "plugins"
    plugins.mkdir()
    flag = tmp_module / "flappy.flag"
    for name, body in PLUGINS.items():
        (plugins / f"{name}.py").write_text(
            f"import os\nfrom plugin_health import HealthResult, Plugin\n\nFLAG = {str(flag)!r}\n\nclass P(Plugin):\n"
            + textwrap.indent(body, "    ")
        )
    env = {"PLUGIN_HEALTH_HEALTH_INTERVAL": "0.2", "PLUGIN_HEALTH_FAILURE_THRESHOLD": "1",
           "PLUGIN_HEALTH_MAX_RESTARTS": "0", "PLUGIN_HEALTH_SHOW_DETAILS": "when-authorized",
           "PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN, "PLUGIN_HEALTH_EVENTS_HEARTBEAT": "1",
           "PLUGIN_HEALTH_EVENTS_LIFETIME": "20"}
    return gunicorn_factory(plugins, env, workers=2)


class Browser:
    """One headless Chromium with a fresh profile, and everything its pages did that a test must not see."""

    def __init__(self, context: BrowserContext, origin: str) -> None:
        self.context = context
        self.origin = origin
        self.foreign: list[str] = []
        self.errors: list[str] = []
        self.dialogs: list[str] = []
        context.on("request", self._request)

    def _request(self, request: Request) -> None:
        if not request.url.startswith(self.origin):
            self.foreign.append(request.url)

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error" and "Failed to load resource" not in message.text:
            self.errors.append(message.text)  # a CSP violation ("Refused to ...") lands here

    def _dialog(self, dialog: Dialog) -> None:
        self.dialogs.append(dialog.message)  # an alert() that injected markup would have run
        dialog.dismiss()

    def open(self, path: str = "", before: Callable[[Page], None] | None = None) -> Page:
        """A new tab on the dashboard, its rows drawn; ``before`` is called with it before it loads."""
        page = self.context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda error: self.errors.append(str(error)))
        page.on("dialog", self._dialog)
        if before is not None:
            before(page)
        page.goto(self.origin + "/" + path)
        # The whole list drawn (a filtered view draws only the rows that match).
        page.wait_for_function("() => Number(document.getElementById('plugin-rows').dataset.renders) >= 1")
        if "state=" not in path:
            page.wait_for_function(f"() => document.querySelectorAll('#plugin-rows tr').length === {len(PLUGINS)}")
        return page

    @staticmethod
    def enter_token(page: Page, token: str = TOKEN) -> None:
        """Type the operator token into the page, as an operator does."""
        page.fill("#token", token)
        page.click("#token-use")
        page.wait_for_function("() => document.getElementById('token-form').dataset.token === 'set'")


@pytest.fixture(scope="module")
def browser(server: Server, tmp_module: Path) -> Iterator[Browser]:
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_module / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1280, "height": 760},
        )
        try:
            yield Browser(context, f"http://127.0.0.1:{server.port}")
        finally:
            context.close()


@pytest.fixture(scope="module")
def page(browser: Browser) -> Iterator[Page]:
    tab = browser.open()
    yield tab
    tab.close()


def api_states(server: Server) -> dict[str, str]:
    answer = server.get("/v1/plugins/")
    assert answer.status == 200
    return {plugin["name"]: plugin["state"] for plugin in json.loads(answer.body)}


def rows(page: Page) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = page.evaluate(ROWS)
    return found


def api_plugins(server: Server, **headers: str) -> dict[str, dict[str, Any]]:
    answer = server.get("/v1/plugins/", headers=headers)
    assert answer.status == 200
    return {plugin["name"]: plugin for plugin in json.loads(answer.body)}


def test_every_plugin_shows_with_its_state_and_colour(server: Server, page: Page) -> None:
    assert api_states(server) == EXPECTED
    shown = rows(page)
    assert list(shown) == sorted(EXPECTED)  # the API's order, by name
    for name, state in EXPECTED.items():
        row = shown[name]
        assert (row["state"], row["id"], row["background"]) == (state, f"plugin-{name}", BACKGROUNDS[state]), name
        assert f"state-{state.lower()}" in row["className"].split()
        assert (row["name"], row["cells"][1].removesuffix("degraded")) == (name, state)
    assert shown["needy"]["cells"][2].startswith("dependency_missing: missing")
    assert shown["broken"]["cells"][2:4] == ["initialize failed", "RuntimeError"]
    assert shown["core"]["cells"][COLUMNS.index("restarts")] == "0"
    page.wait_for_function("() => document.getElementById('aggregate').dataset.status === 'warn'")
    page.wait_for_function("() => document.querySelector('#diagram svg g.node') !== null")
    assert page.evaluate("() => document.getElementById('diagram').dataset.counts") == (
        "RUNNING:3,FAILED:2,UNAVAILABLE:1,INITIALIZED:0,LOADED:0"
    )


def test_the_critical_plugin_is_marked(page: Page) -> None:
    """A visible marker with an accessible name on flappy's row (critical = True), and on no other."""
    shown = rows(page)
    assert {name for name, row in shown.items() if row["marker"]["visible"]} == {"flappy"}
    assert shown["flappy"]["critical"] == "true"
    assert shown["flappy"]["marker"] == {"visible": True, "label": "critical plugin", "role": "img",
                                         "text": "critical"}
    assert "critical-plugin" in shown["flappy"]["className"].split()
    marker = page.locator("#plugin-rows").get_by_role("img", name="critical plugin")
    assert marker.count() == 1
    assert marker.is_visible()


def test_times_are_iso_8601_utc_with_how_long_ago_on_hover(server: Server, page: Page) -> None:
    api = api_plugins(server)
    for name, row in rows(page).items():
        since = datetime.fromisoformat(api[name]["since"])
        assert ISO_UTC.fullmatch(row["since"]["text"]), row["since"]
        assert row["since"]["text"] == since.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        assert datetime.fromisoformat(row["since"]["datetime"].replace("Z", "+00:00")) == since.replace(
            microsecond=since.microsecond // 1000 * 1000)
        assert row["since"]["title"].startswith(api[name]["since"])
        assert row["since"]["title"].endswith(" ago)")
    assert ISO_UTC.search(page.text_content("#updated") or "")


def test_each_plugin_shows_its_recent_transitions(server: Server, page: Page) -> None:
    """The timeline of every row in view: its history's last transitions, oldest first, each in its state's colour,
    its time (ISO 8601 UTC) and trigger on hover."""
    page.wait_for_function("() => [...document.querySelectorAll('#plugin-rows .timeline')].every("
                           "t => t.children.length > 0)")
    shown = rows(page)
    for name in EXPECTED:
        history = json.loads(server.get(f"/v1/plugins/{name}/history").body)[-8:]
        timeline = shown[name]["timeline"]
        assert [step["state"] for step in timeline] == [entry["to"] for entry in history], name
        for step, entry in zip(timeline, history, strict=True):
            assert step["background"] == STRONG[entry["to"]] or entry["to"] == "INITIALIZED"
            at = datetime.fromisoformat(entry["at"]).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
            assert step["title"].startswith(at)
            assert f"({entry['trigger']})" in step["title"]
    assert [step["state"] for step in shown["broken"]["timeline"]] == ["LOADED", "FAILED"]
    assert shown["broken"]["timeline"][-1]["title"].endswith(
        ": LOADED \u2192 FAILED (fail), initialize failed: RuntimeError")
    assert [step["state"] for step in shown["core"]["timeline"]] == ["LOADED", "INITIALIZED", "RUNNING"]


def test_the_diagram_is_drawn_in_the_tables_colours(page: Page) -> None:
    """The inline SVG's RUNNING node is filled with the RUNNING row's green, FAILED with its red, and so on; a
    plugin's own diagram fills its state with the strong colour: RUNNING green, not red."""
    page.wait_for_function("() => document.querySelector('#diagram svg g.node') !== null")
    nodes = page.evaluate(DIAGRAM)
    assert set(nodes) == {"LOADED", "INITIALIZED", "RUNNING", "FAILED", "UNAVAILABLE"}
    for state, background in BACKGROUNDS.items():
        assert (nodes[state]["fill"], nodes[state]["stroke"], nodes[state]["outlines"]) == (
            background, STRONG[state], 1), state
    assert nodes["RUNNING"]["text"] == "RUNNING (3)"
    assert rows(page)["core"]["background"] == nodes["RUNNING"]["fill"]
    page.click("#plugin-core .plugin-name")  # its own diagram
    try:
        page.wait_for_function("() => document.getElementById('diagram').dataset.plugin === 'core'"
                               " && document.querySelector('#diagram svg text').textContent === 'core'")
        own = page.evaluate(DIAGRAM)
        assert (own["RUNNING"]["fill"], own["RUNNING"]["outlines"]) == (STRONG["RUNNING"], 2)
        assert own["FAILED"]["fill"] == BACKGROUNDS["FAILED"]
        assert page.text_content("#diagram-of") == "of core"
    finally:
        page.click("#diagram-all")
    page.wait_for_function("() => document.getElementById('diagram').dataset.plugin === ''")


GRID = """() => ({
    instances: [...document.querySelectorAll('#cluster-head th.instance')].map(head => ({
        id: head.dataset.instance, status: head.dataset.status, gone: head.dataset.gone,
        parts: [...head.children].map(part => [part.className, part.textContent, getComputedStyle(part).opacity]),
        visible: head.checkVisibility()})),
    rows: Object.fromEntries([...document.querySelectorAll('#cluster-rows tr')].map(row => [
        row.dataset.plugin,
        [...row.cells].slice(1).map(cell => ({
            instance: cell.dataset.instance, state: cell.dataset.state, text: cell.textContent,
            classes: [...cell.classList].sort(), title: cell.getAttribute('title'),
            background: getComputedStyle(cell).backgroundColor}))]))})"""


def grid(page: Page) -> dict[str, Any]:
    found: dict[str, Any] = page.evaluate(GRID)
    return found


def test_the_cluster_grid_is_one_column_for_this_instance_alone(server: Server, page: Page) -> None:
    """One instance (a SQLite store): its column, headed by its id and status, its cells the API's states."""
    cluster = json.loads(server.get("/v1/cluster").body)
    [me] = cluster["instances"]
    page.wait_for_function(f"() => document.querySelectorAll('#cluster-rows tr').length === {len(PLUGINS)}")
    shown = grid(page)
    [head] = shown["instances"]
    assert (head["id"], head["status"], head["gone"], head["visible"]) == (me["id"], me["status"], "false", True)
    texts = [text for _, text, _ in head["parts"]]
    assert texts[:4] == [me["id"], "this one", me["status"], "ready"]
    assert texts[4] == "no heartbeat" or texts[4].startswith("heartbeat "), texts
    assert "gone" not in texts
    assert list(shown["rows"]) == sorted(EXPECTED) == cluster["plugins"]
    for name, state in EXPECTED.items():
        [cell] = shown["rows"][name]
        flagged = state + ("degraded" if name == "disk" else "")  # its check said warn
        assert (cell["instance"], cell["state"], cell["text"]) == (me["id"], state, flagged), name
        assert f"state-{state.lower()}" in cell["classes"]
        assert cell["background"] == BACKGROUNDS[state], name
    assert shown["rows"]["broken"][0]["title"] == "initialize failed: RuntimeError"
    assert page.locator("#cluster-head img, #cluster-rows img, #cluster-rows script, #cluster-rows b").count() == 0


def cluster_of_three(age: float) -> dict[str, Any]:
    """What GET /v1/cluster answers for three instances: a-1 (this one), b-2 (gone), c-3 (a critical plugin
    FAILED), with plugins only some of them have."""
    since = "2026-01-01T00:00:00+00:00"

    def plugin(state: str, healthy: bool, stale: bool = False, reason: str | None = None) -> dict[str, Any]:
        return {"state": state, "healthy": healthy, "stale": stale, "critical": False, "reason": reason,
                "error_type": None, "since": since, "last_check": since}

    def instance(id_: str, status: str, gone: bool, plugins: dict[str, Any], age: float = 0.2) -> dict[str, Any]:
        return {"id": id_, "self": id_ == "a-1", "pid": 1, "started": since, "heartbeat": since, "age": age,
                "gone": gone, "status": status, "ready": status != "fail", "plugins": plugins}

    return {"instance": "a-1", "degraded": None, "plugins": ["constructor", "core", "sick"], "instances": [
        instance("a-1", "warn", False, {
            "core": plugin("RUNNING", True),
            "sick": plugin("RUNNING", False, stale=True, reason="stale: last health check 40 s ago")}),
        instance("b-2", "fail", True, {"core": plugin("RUNNING", True), "sick": plugin("RUNNING", False)}, age),
        instance("c-3", "fail", False, {
            "constructor": plugin("UNAVAILABLE", False, reason=HTML),
            "core": plugin("FAILED", False, reason="start failed")}),
    ]}


def test_the_cluster_grid_draws_every_instance_as_the_api_answers(browser: Browser) -> None:
    """Several instances (the API answer played by the test): gone shown plainly, stale and unhealthy marked,
    absent plugins as a dash, plugin-provided text as text."""
    document = cluster_of_three(age=42.04)

    def serve(page: Page) -> None:
        page.route("**/v1/cluster", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(document), headers={"ETag": '"three"'}))

    page = browser.open(before=serve)
    try:
        page.wait_for_function("() => document.querySelectorAll('#cluster-head th.instance').length === 3")
        shown = grid(page)
        assert page.text_content("#cluster-count") == "3 (1 gone)"
    finally:
        page.close()
    heads = {head["id"]: head for head in shown["instances"]}
    assert list(heads) == ["a-1", "b-2", "c-3"]
    assert [(h["status"], h["gone"]) for h in heads.values()] == [
        ("warn", "false"), ("fail", "true"), ("fail", "false")]
    gone = {name: (text, opacity) for name, text, opacity in heads["b-2"]["parts"]}
    assert gone == {"instance-id": ("b-2", "0.55"), "instance-status": ("fail", "0.55"),  # dimmed, but not its
                    "instance-ready": ("not ready", "0.55"), "instance-age": ("heartbeat 42.0 s ago", "0.55"),
                    "instance-gone": ("gone", "1")}  # label: shown plainly
    assert "instance-gone" not in {part for part, _, _ in heads["c-3"]["parts"]}
    assert [part for part, _, _ in heads["a-1"]["parts"]][:2] == ["instance-id", "instance-self"]
    rows = shown["rows"]
    assert list(rows) == ["constructor", "core", "sick"]
    assert [(c["instance"], c["state"], c["text"]) for c in rows["core"]] == [
        ("a-1", "RUNNING", "RUNNING"), ("b-2", "RUNNING", "RUNNING"), ("c-3", "FAILED", "FAILED")]
    assert "gone" in rows["core"][1]["classes"]
    assert rows["core"][2]["background"] == BACKGROUNDS["FAILED"]
    stale, unhealthy, absent = rows["sick"]
    assert (stale["text"], stale["title"]) == ("RUNNINGstale", "stale: last health check 40 s ago")
    assert {"stale", "unhealthy", "state-running"} <= set(stale["classes"])
    assert unhealthy["text"] == "RUNNINGunhealthy"
    assert "stale" not in unhealthy["classes"]
    assert (absent["state"], absent["text"], absent["classes"]) == ("", "\u2014", ["absent"])
    # "constructor" is only c-3's (not every object's), and its reason, plugin-provided HTML, stays text.
    assert [c["text"] for c in rows["constructor"]] == ["\u2014", "\u2014", "UNAVAILABLE"]
    assert rows["constructor"][2]["title"] == HTML


def test_plugin_provided_html_shows_as_text(page: Page, browser: Browser) -> None:
    xss = rows(page)["xss"]
    assert xss["cells"][3] == "PluginDefinedError"  # no token: a class the plugin named is not shown
    tab = browser.open()
    try:
        browser.enter_token(tab)
        tab.wait_for_function("() => document.querySelector('#plugin-xss .error-detail').checkVisibility()")
        xss = rows(tab)["xss"]
        assert xss["cells"][3] == HTML
        assert (xss["title"], xss["error"]) == (MESSAGE, MESSAGE)  # the error message, with the token, as text
        assert tab.locator("#plugin-rows img, #plugin-rows script, #plugin-rows b").count() == 0
        assert tab.get_by_text(HTML, exact=True).is_visible()
    finally:
        tab.close()
    assert browser.dialogs == []


def test_the_token_shows_error_details_in_its_tab_only(browser: Browser) -> None:
    tab = browser.open()
    try:
        assert rows(tab)["broken"]["error"] is None  # PLUGIN_HEALTH_SHOW_DETAILS=when-authorized
        assert rows(tab)["broken"]["title"] is None
        browser.enter_token(tab)
        tab.wait_for_function("() => document.querySelector('#plugin-broken .error-detail').checkVisibility()")
        broken = rows(tab)["broken"]
        assert (broken["error"], broken["title"]) == ("no database", "no database")
        assert tab.evaluate("() => sessionStorage.getItem('plugin-health-token')") == TOKEN
        assert tab.input_value("#token") == ""  # not left in the page
        assert tab.text_content("#token-state") == "token in use (this tab only)"
        other = browser.open()  # another tab: its own session storage, no token
        try:
            assert other.evaluate("() => sessionStorage.getItem('plugin-health-token')") is None
            assert rows(other)["broken"]["error"] is None
        finally:
            other.close()
        tab.click("#token-forget")
        tab.wait_for_function("() => !document.querySelector('#plugin-broken .error-detail').checkVisibility()")
        assert tab.evaluate("() => sessionStorage.getItem('plugin-health-token')") is None
    finally:
        tab.close()


def test_a_degraded_plugin_shows_what_its_check_observed(server: Server, browser: Browser) -> None:
    """disk's check said warn: RUNNING and healthy, flagged degraded, its observed value and unit for anyone, its
    output (free text, a detail) once the token is in; the same flag in the cluster grid."""
    check = COLUMNS.index("check")
    tab = browser.open()
    try:
        tab.wait_for_function("() => document.querySelector('#plugin-disk .check-status').textContent === 'warn'")
        disk = rows(tab)["disk"]
        assert disk["cells"][check] == "warn0.93 ratio"
        assert disk["cells"][1] == "RUNNINGdegraded"
        assert tab.locator("#plugin-disk .degraded-flag").is_visible()
        assert not tab.locator("#plugin-core .degraded-flag").is_visible()
        assert rows(tab)["core"]["cells"][check] == "pass"
        assert rows(tab)["broken"]["cells"][check] == ""  # never checked
        assert tab.locator("#plugins th.check").is_visible()
        assert tab.locator("#plugin-disk .check-status").get_attribute("data-status") == "warn"
        tab.wait_for_function("() => document.querySelector('#cluster-rows tr[data-plugin=disk] td').textContent"
                              " === 'RUNNINGdegraded'")
        browser.enter_token(tab)
        tab.wait_for_function("() => document.querySelector('#plugin-disk .check-output').textContent"
                              " === 'disk 93% full'")
        assert rows(tab)["disk"]["cells"][check] == "warn0.93 ratiodisk 93% full"
    finally:
        tab.close()


def test_without_the_richer_health_fields_the_check_column_stays_hidden(server: Server, browser: Browser) -> None:
    """An API that has no check fields (an older instance, say: the answer played by the test): nothing breaks."""
    fields = ("check_status", "observed_value", "observed_unit", "check_output", "degraded")
    answer = [{k: v for k, v in p.items() if k not in fields} for p in json.loads(server.get("/v1/plugins/").body)]

    def serve(page: Page) -> None:
        page.route("**/v1/plugins/", lambda route: route.fulfill(
            status=200, content_type="application/json", body=json.dumps(answer), headers={"ETag": '"older"'}))

    tab = browser.open(before=serve)
    try:
        assert not tab.locator("#plugins th.check").is_visible()
        assert {row["cells"][COLUMNS.index("check")] for row in rows(tab).values()} == {""}
        assert tab.locator("#plugin-rows .degraded-flag:visible").count() == 0
    finally:
        tab.close()


def test_a_failing_plugin_turns_red_within_2_s_of_the_api_reporting_it(
    server: Server, page: Page, browser: Browser, tmp_module: Path, tmp_path: Path
) -> None:
    """Measured from the first moment the API answers FAILED (the test polls it) to the row turning red."""
    (tmp_module / "flappy.flag").touch()  # flappy's next health check (every 0.2 s) fails it
    touched = time.monotonic()
    api_failed = page_failed = None
    while page_failed is None or api_failed is None:
        now = time.monotonic()
        assert now - touched < 15, "flappy never turned FAILED"
        if api_failed is None and api_states(server)["flappy"] == "FAILED":
            api_failed = now
        flappy = rows(page)["flappy"]
        if flappy["state"] == "FAILED" and "state-failed" in flappy["className"].split():
            page_failed = time.monotonic()
        time.sleep(0.02)
    assert page_failed - api_failed <= 2.0, f"the page showed FAILED {page_failed - api_failed:.2f} s after the API"
    assert rows(page)["flappy"]["background"] == BACKGROUNDS["FAILED"]
    # flappy is critical: the aggregate fails (a 503 the page still reads) and the diagram is drawn anew.
    page.wait_for_function("() => document.getElementById('aggregate').dataset.status === 'fail'", timeout=3000)
    page.wait_for_function(
        "() => document.getElementById('diagram').dataset.counts.startsWith('RUNNING:2,FAILED:3,')", timeout=3000
    )
    page.wait_for_function(  # the cluster grid too
        "() => document.querySelector('#cluster-rows tr[data-plugin=flappy] td').dataset.state === 'FAILED'"
        " && document.querySelector('#cluster-head th.instance').dataset.status === 'fail'", timeout=3000)
    page.wait_for_function("() => [...document.querySelectorAll('#diagram svg text')].some("
                           "t => t.textContent === 'FAILED (3)')", timeout=3000)
    print(f"flappy shown FAILED {page_failed - api_failed:.2f} s after the API")


def test_a_transition_shows_at_once_through_the_event_stream(server: Server, browser: Browser) -> None:
    """A page that polls every 30 s shows an operator's disable, and the enable after it, within a second or so of
    the API: the event stream made it poll at once."""
    tab = browser.open("?interval=30")
    try:
        tab.wait_for_function("() => document.getElementById('connection').dataset.stream === 'open'")
        assert tab.text_content("#connection") == "live: events, and polling every 30 s"
        for action, state in (("disable", "UNAVAILABLE"), ("enable", "RUNNING")):
            acted = time.monotonic()
            assert server.get(f"/v1/plugins/core/{action}", method="POST", headers=AUTH).status == 200
            tab.wait_for_function(f"() => document.getElementById('plugin-core').dataset.state === '{state}'",
                                  timeout=5000)
            assert time.monotonic() - acted < 2.5, f"{action}: {time.monotonic() - acted:.2f} s"
        tab.wait_for_function("() => [...document.querySelectorAll('#plugin-core .timeline .step')].map("
                              "s => s.dataset.state).join() === "
                              "'LOADED,INITIALIZED,RUNNING,UNAVAILABLE,LOADED,INITIALIZED,RUNNING'", timeout=5000)
        assert int(tab.evaluate("() => document.getElementById('connection').dataset.lastEvent")) > 0
    finally:
        tab.close()


def test_the_screenshot_shows_the_colours_and_the_critical_marker(
    server: Server, browser: Browser, tmp_path: Path
) -> None:
    """The record of how the dashboard looks: checked first (diagram colours, the critical marker), then saved."""
    tab = browser.open()
    try:
        browser.enter_token(tab)
        tab.wait_for_function("() => document.querySelector('#plugin-broken .error-detail').checkVisibility()"
                              " && [...document.querySelectorAll('#plugin-rows .timeline')].every("
                              "t => t.children.length > 0) && document.querySelector('#diagram svg g.node')")
        nodes = tab.evaluate(DIAGRAM)
        for state in ("RUNNING", "FAILED", "UNAVAILABLE"):
            assert (nodes[state]["fill"], nodes[state]["stroke"]) == (BACKGROUNDS[state], STRONG[state]), state
        marker = tab.locator("#plugin-flappy .critical")
        assert marker.is_visible()
        assert marker.get_attribute("aria-label") == "critical plugin"
        tab.wait_for_function("() => !document.querySelector('.changed')")
        path = tmp_path / "dashboard.png"
        tab.screenshot(path=path, full_page=True)
        assert path.stat().st_size > 10_000
        diagram = tmp_path / "diagram.png"
        tab.locator("#diagram").screenshot(path=diagram)
    finally:
        tab.close()
    keep = os.environ.get("PLUGIN_HEALTH_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, Path(keep) / "dashboard.png")
    print(f"screenshots: {path}, {diagram}")


def visible(page: Page) -> set[str]:
    return {name for name, row in rows(page).items() if not row["hidden"]}


def test_the_state_filter_shows_only_matching_rows(server: Server, page: Page, browser: Browser) -> None:
    states = api_states(server)
    for state in ("FAILED", "RUNNING", "UNAVAILABLE"):
        page.click(f"#filters button[data-filter='{state}']")
        assert visible(page) == {name for name, s in states.items() if s == state}, state
        assert page.locator("#plugin-rows tr:visible").count() == len(visible(page))
        assert page.get_attribute(f"#filters button[data-filter='{state}']", "aria-pressed") == "true"
        assert page.url.endswith(f"?state={state}")
    page.click("#filters button[data-filter='']")
    assert visible(page) == set(states)
    linked = browser.open("?state=UNAVAILABLE")  # a filtered view can be bookmarked
    try:
        assert visible(linked) == {"needy"}
    finally:
        linked.close()


def test_polls_revalidate_with_etags_and_redraw_only_on_200(browser: Browser) -> None:
    polls: list[Response] = []
    page = browser.open("?interval=0.2")
    try:
        page.on("response", lambda r: polls.append(r) if r.url.endswith("/v1/plugins/") else None)
        page.wait_for_timeout(2500)
        renders_before = int(page.evaluate("() => document.getElementById('plugin-rows').dataset.renders"))
    finally:
        page.close()
    statuses = [response.status for response in polls]
    assert len(statuses) >= 8, statuses  # about every 0.2 s
    assert all(response.request.headers.get("if-none-match") for response in polls)
    assert statuses.count(304) >= 1, statuses
    assert set(statuses) <= {200, 304}
    assert renders_before <= 1 + statuses.count(200) < 1 + len(statuses)  # 1: the first draw, before recording


def test_the_page_loaded_nothing_foreign_and_broke_no_rule(browser: Browser) -> None:
    assert browser.foreign == []
    assert browser.errors == []
    assert browser.dialogs == []
