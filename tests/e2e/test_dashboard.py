"""End to end: the dashboard page in headless Debian Chromium, against real gunicorn over a loopback port.

The page must list every plugin with the state the API reports, turn a plugin's row red within 2 s of the
API first reporting it FAILED (the page polls every second), show plugin-provided HTML as text, filter by
state, revalidate with ETags, draw the cluster grid (this instance alone, or several instances as the API
answers them), and load nothing from anywhere but the server. Skipped only where
/usr/bin/chromium is missing and ``CI`` is not set; CI installs it (``.ci/run``).
"""

from __future__ import annotations

import json
import os
import textwrap
import time
from collections.abc import Callable, Iterator
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

HTML = "<img src=x onerror=alert(1)>"
MESSAGE = "<script>alert(2)</script><b>not bold</b>"
PLUGINS = {
    "core": "version = '2.0'\n",
    "flappy": "critical = True\ndef health_check(self):\n    return not os.path.exists(FLAG)\n",
    "broken": "def initialize(self, context):\n    raise RuntimeError('no database')\n",
    # An exception class may be named anything: its name reaches the API as error_type, and the page.
    "xss": f"def initialize(self, context):\n    raise type({HTML!r}, (Exception,), {{}})({MESSAGE!r})\n",
    "needy": "requires = ('missing>=1',)\n",
}
EXPECTED = {"broken": "FAILED", "core": "RUNNING", "flappy": "RUNNING", "needy": "UNAVAILABLE", "xss": "FAILED"}
#: Computed row background colours (dashboard.css): RUNNING green, FAILED red, UNAVAILABLE amber.
BACKGROUNDS = {"RUNNING": "rgb(218, 251, 225)", "FAILED": "rgb(255, 235, 233)", "UNAVAILABLE": "rgb(255, 248, 197)"}

ROWS = """() => Object.fromEntries([...document.querySelectorAll('#plugin-rows tr')].map(row => [
    row.dataset.plugin,
    {state: row.dataset.state, id: row.id, className: row.className, hidden: row.hidden,
     background: getComputedStyle(row).backgroundColor,
     cells: [...row.cells].map(cell => cell.textContent), title: row.cells[3].getAttribute('title')}]))"""


@pytest.fixture(scope="module")
def server(tmp_module: Path, gunicorn_factory: Callable[..., Server]) -> Server:
    plugins = tmp_module / "plugins"
    plugins.mkdir()
    flag = tmp_module / "flappy.flag"
    for name, body in PLUGINS.items():
        (plugins / f"{name}.py").write_text(
            f"import os\nfrom plugin_health import Plugin\n\nFLAG = {str(flag)!r}\n\nclass P(Plugin):\n"
            + textwrap.indent(body, "    ")
        )
    env = {"PLUGIN_HEALTH_HEALTH_INTERVAL": "0.2", "PLUGIN_HEALTH_FAILURE_THRESHOLD": "1",
           "PLUGIN_HEALTH_MAX_RESTARTS": "0", "PLUGIN_HEALTH_SHOW_DETAILS": "always"}
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
        page.wait_for_function(f"() => document.querySelectorAll('#plugin-rows tr').length === {len(PLUGINS)}")
        return page


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


def test_every_plugin_shows_with_its_state_and_colour(server: Server, page: Page) -> None:
    assert api_states(server) == EXPECTED
    shown = rows(page)
    assert list(shown) == sorted(EXPECTED)  # the API's order, by name
    for name, state in EXPECTED.items():
        row = shown[name]
        assert (row["state"], row["id"], row["background"]) == (state, f"plugin-{name}", BACKGROUNDS[state]), name
        assert f"state-{state.lower()}" in row["className"].split()
        assert row["cells"][:2] == [name, state]
    assert shown["needy"]["cells"][2].startswith("dependency_missing: missing")
    assert shown["broken"]["cells"][2:4] == ["initialize failed", "RuntimeError"]
    assert shown["core"]["cells"][5] == "0"
    page.wait_for_function("() => document.getElementById('aggregate').dataset.status === 'warn'")
    page.wait_for_function("() => document.getElementById('diagram').complete")
    assert page.evaluate("() => document.getElementById('diagram').naturalWidth") > 0
    assert page.evaluate("() => document.getElementById('diagram').dataset.counts") == (
        "RUNNING:2,FAILED:2,UNAVAILABLE:1,INITIALIZED:0,LOADED:0"
    )


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
        assert (cell["instance"], cell["state"], cell["text"]) == (me["id"], state, state), name
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
    assert xss["cells"][3] == HTML
    assert xss["title"] == MESSAGE  # the error message (shown: PLUGIN_HEALTH_SHOW_DETAILS=always) as a tooltip
    assert page.locator("#plugin-rows img, #plugin-rows script, #plugin-rows b").count() == 0
    assert page.get_by_text(HTML, exact=True).is_visible()
    assert browser.dialogs == []


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
        "() => document.getElementById('diagram').dataset.counts.startsWith('RUNNING:1,FAILED:3,')", timeout=3000
    )
    page.wait_for_function(  # the cluster grid too
        "() => document.querySelector('#cluster-rows tr[data-plugin=flappy] td').dataset.state === 'FAILED'"
        " && document.querySelector('#cluster-head th.instance').dataset.status === 'fail'", timeout=3000)
    page.wait_for_function("() => document.getElementById('diagram').complete && !document.querySelector('.changed')")
    page.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    print(f"screenshot: {tmp_path / 'dashboard.png'} ({page_failed - api_failed:.2f} s after the API)")


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
