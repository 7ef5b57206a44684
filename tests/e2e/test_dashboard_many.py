"""End to end: the dashboard over more plugins than it draws at once (450, its window is 200), in headless Chromium.

Every plugin stays reachable (counted, found by the search, drawn by "show more" and by the state filter), and a
change redraws its own row only: the other rows are the same DOM nodes and nothing in them is touched. Skipped like
``test_dashboard.py`` where /usr/bin/chromium is missing and ``CI`` is not set. No timing is asserted (the speed is
``bench/dashboard.py``'s).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from e2e.server import Server
from e2e.test_dashboard import ARGS, CHROMIUM

pytestmark = pytest.mark.skipif(
    not CHROMIUM.exists() and not __import__("os").environ.get("CI"),
    reason="Debian's chromium is not installed (apt-get install chromium); CI installs it and runs this test",
)

PLUGINS = 450
WINDOW = 200  # dashboard.js's WINDOW
TOKEN = "dashboard-many-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
DRAWN = "() => [...document.querySelectorAll('#plugin-rows tr')].map(row => row.dataset.plugin)"


def name(i: int) -> str:
    return f"p{i:03d}"


@pytest.fixture(scope="module")
def server(tmp_module: Path, gunicorn_factory: Callable[..., Server]) -> Server:
    plugins = tmp_module / "plugins"
    plugins.mkdir()
    for i in range(PLUGINS):
        (plugins / f"{name(i)}.py").write_text("from plugin_health import Plugin\n\nclass P(Plugin):\n    pass\n")
    env = {"PLUGIN_HEALTH_HEALTH_INTERVAL": "3600", "PLUGIN_HEALTH_ADMIN_TOKEN": TOKEN,
           "PLUGIN_HEALTH_EVENTS_HEARTBEAT": "1", "PLUGIN_HEALTH_EVENTS_LIFETIME": "20"}
    return gunicorn_factory(plugins, env, workers=2)


@pytest.fixture(scope="module")
def page(server: Server, tmp_module: Path) -> Iterator[Page]:
    errors: list[str] = []
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            str(tmp_module / "chromium-profile"), executable_path=str(CHROMIUM), headless=True, args=ARGS,
            viewport={"width": 1280, "height": 760},
        )
        try:
            tab = context.new_page()
            tab.on("pageerror", lambda error: errors.append(str(error)))
            tab.goto(f"http://127.0.0.1:{server.port}/?interval=30")  # changes come by the event stream
            tab.wait_for_function("() => Number(document.getElementById('plugin-rows').dataset.renders) >= 1")
            tab.wait_for_function("() => document.getElementById('connection').dataset.stream === 'open'")
            yield tab
        finally:
            context.close()
    assert errors == []


def drawn(page: Page) -> list[str]:
    names: list[str] = page.evaluate(DRAWN)
    return names


def test_the_first_rows_are_drawn_and_every_plugin_is_counted(page: Page) -> None:
    assert drawn(page) == [name(i) for i in range(WINDOW)]
    assert page.text_content("#shown") == str(PLUGINS)
    assert page.text_content("#filters button[data-filter=''] .count") == str(PLUGINS)
    assert page.text_content("#filters button[data-filter='RUNNING'] .count") == str(PLUGINS)
    assert page.locator("#more").is_visible()
    assert page.text_content("#more-count") == f"{WINDOW} of {PLUGINS} shown"
    assert page.locator("#cluster-rows tr").count() == WINDOW  # the grid draws the same window
    assert page.text_content("#cluster-shown") == f"{WINDOW} of {PLUGINS} plugins shown (search, or show more above)"


def test_the_search_finds_a_plugin_past_the_window(page: Page) -> None:
    last = name(PLUGINS - 1)
    page.fill("#search", last)
    try:
        page.wait_for_function("() => document.querySelectorAll('#plugin-rows tr').length === 1")
        assert drawn(page) == [last]
        assert page.get_attribute(f"#plugin-{last}", "data-state") == "RUNNING"
        page.wait_for_function(f"() => document.querySelector('#plugin-{last} .timeline').children.length > 0")
        assert page.text_content("#shown") == f"1 of {PLUGINS}"
        assert not page.locator("#more").is_visible()
        assert page.url.endswith(f"?interval=30&q={last}")  # a search can be bookmarked
        assert [row.get_attribute("data-plugin") for row in page.locator("#cluster-rows tr").all()] == [last]
        page.fill("#search", "P4")  # p4xx, in any case: 50 of them
        page.wait_for_function("() => document.querySelectorAll('#plugin-rows tr').length === 50")
        assert drawn(page) == [name(i) for i in range(400, 450)]
        page.fill("#search", "no such plugin")
        page.wait_for_function("() => document.querySelectorAll('#plugin-rows tr').length === 0")
        assert page.locator("#empty").is_visible()
    finally:
        page.fill("#search", "")
    page.wait_for_function(f"() => document.querySelectorAll('#plugin-rows tr').length === {WINDOW}")
    assert not page.url.endswith("q=")
    # Rows back in the window draw their timelines again (from a full answer, not a 304 to a row now gone).
    page.wait_for_function(
        "() => [...document.querySelectorAll('#plugin-rows tr[data-visible=true] .timeline')].every("
        "t => t.children.length > 0)", timeout=10_000)


def test_show_more_draws_every_plugin_in_the_end(page: Page) -> None:
    page.click("#more-show")
    assert len(drawn(page)) == 2 * WINDOW
    assert page.text_content("#more-show") == f"show {PLUGINS - 2 * WINDOW} more"
    page.click("#more-show")
    assert drawn(page) == [name(i) for i in range(PLUGINS)]
    assert not page.locator("#more").is_visible()
    assert page.locator("#cluster-rows tr").count() == PLUGINS
    page.click("#filters button[data-filter='']")  # choosing a filter starts the window again
    assert len(drawn(page)) == WINDOW


def test_a_change_redraws_its_row_only(server: Server, page: Page) -> None:
    """Every drawn row is tagged; a MutationObserver records what changes under the table. After one plugin is
    disabled (then enabled), its row is the only one touched, the others are the same nodes, the counts follow."""
    target = name(150)
    page.wait_for_function(  # the rows in view have their timelines: nothing left to draw
        "() => [...document.querySelectorAll('#plugin-rows tr[data-visible=true] .timeline')].every("
        "t => t.children.length > 0)")
    page.wait_for_timeout(500)
    page.evaluate("""() => {
        window.__rows = new Map([...document.querySelectorAll("#plugin-rows tr")].map(
            row => [row.dataset.plugin, row]));
        window.__touched = new Set();
        window.__watch = new MutationObserver(records => { for (const record of records) {
            const row = (record.target.nodeType === 1 ? record.target : record.target.parentElement).closest('tr');
            if (row) window.__touched.add(row.dataset.plugin);
        }});
        window.__watch.observe(document.getElementById('plugin-rows'),
                               {subtree: true, childList: true, attributes: true, characterData: true});
    }""")
    try:
        for action, state, running in (("disable", "UNAVAILABLE", PLUGINS - 1), ("enable", "RUNNING", PLUGINS)):
            assert server.get(f"/v1/plugins/{target}/{action}", method="POST", headers=AUTH).status == 200
            page.wait_for_function(f"() => document.getElementById('plugin-{target}').dataset.state === '{state}'",
                                   timeout=5000)
            page.wait_for_function(
                f"() => document.querySelector(\"#filters button[data-filter='RUNNING'] .count\").textContent"
                f" === '{running}'", timeout=5000)
        time.sleep(1.5)  # the polls the events set off, answered and drawn
        touched = page.evaluate("() => [...window.__touched]")
        same = page.evaluate("() => [...window.__rows].every(([name, row]) => "
                             "document.getElementById(`plugin-${name}`) === row)")
    finally:
        page.evaluate("() => window.__watch.disconnect()")
    assert touched == [target]
    assert same
    assert drawn(page) == [name(i) for i in range(WINDOW)]


def test_a_change_past_the_window_is_counted_and_found(server: Server, page: Page) -> None:
    target = name(PLUGINS - 2)
    assert server.get(f"/v1/plugins/{target}/disable", method="POST", headers=AUTH).status == 200
    try:
        page.wait_for_function("() => document.querySelector(\"#filters button[data-filter='UNAVAILABLE'] .count\")"
                               ".textContent === '1'", timeout=5000)
        page.click("#filters button[data-filter='UNAVAILABLE']")
        assert drawn(page) == [target]
        assert page.text_content("#shown") == f"1 of {PLUGINS}"
    finally:
        page.click("#filters button[data-filter='']")
        assert server.get(f"/v1/plugins/{target}/enable", method="POST", headers=AUTH).status == 200


def test_the_event_alone_redraws_the_row(server: Server, page: Page) -> None:
    """With the list unreachable (every poll of it refused), a transition still shows at once: its row and the
    counts are drawn from the event; once the list answers again, the row holds the plugin's whole answer."""
    target = name(42)
    page.route("**/v1/plugins/", lambda route: route.abort())
    try:
        assert server.get(f"/v1/plugins/{target}/disable", method="POST", headers=AUTH).status == 200
        page.wait_for_function(f"() => document.getElementById('plugin-{target}').dataset.state === 'UNAVAILABLE'",
                               timeout=5000)
        assert page.text_content(f"#plugin-{target} .reason-text") == "disabled"
        assert page.text_content("#filters button[data-filter='UNAVAILABLE'] .count") == "1"
    finally:
        page.unroute("**/v1/plugins/")
        assert server.get(f"/v1/plugins/{target}/enable", method="POST", headers=AUTH).status == 200
    page.wait_for_function(f"() => document.getElementById('plugin-{target}').dataset.state === 'RUNNING'",
                           timeout=5000)
    page.wait_for_function("() => document.getElementById('connection').dataset.connection === 'live'",
                           timeout=35_000)  # the next poll (?interval=30, or at once after the event) answers
