"""The plugin list in pages (``?limit=``, ``?continue=``) and gzip-compressed, as two workers on one store give it."""

from __future__ import annotations

import gzip
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient

from plugin_health import create_app
from plugin_health.api.cache import GZIP_MIN, ResponseCache
from plugin_health.api.pages import decode_token, encode_token
from plugin_health.app import EXTENSION
from plugin_health.lifecycle import PluginLifecycleState as S
from plugin_health.service import Service
from plugin_health.store import PluginSnapshot, StateStore

GZ = {"Accept-Encoding": "gzip"}
#: 37 plugins, every third FAILED: pages of 1, 2, 5 ... end exactly, short, or past the end.
NAMES = [f"p{i:02d}" for i in range(37)]
LINK = re.compile(r'^<(?P<url>[^>]+)>; rel="next"$')


def snapshot(name: str, state: S = S.RUNNING) -> PluginSnapshot:
    since = datetime.now(UTC) - timedelta(seconds=60)
    if state is S.FAILED:
        return PluginSnapshot(name=name, state=state, since=since, reason="start failed", error_type="OSError",
                              error="disk gone", allowed=("reset",))
    return PluginSnapshot(name=name, state=state, since=since, last_check=since, last_check_ok=True,
                          allowed=("fail", "make_unavailable"))


def worker(tmp_path: Path) -> Flask:
    """An app as a gunicorn worker is one: it reads the SQLite store the core writes, and hosts nothing."""
    plugins = tmp_path / "plugins"
    plugins.mkdir(exist_ok=True)
    return create_app({"plugin_path": str(plugins), "store_url": f"sqlite:///{tmp_path / 'state.sqlite3'}",
                       "health_interval": 3600, "host_mode": "external"})


def store(app: Flask) -> StateStore:
    service: Service = app.extensions[EXTENSION]
    return service.store


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Flask]:
    app = worker(tmp_path)
    store(app).put_many([snapshot(name, S.FAILED if i % 3 == 0 else S.RUNNING) for i, name in enumerate(NAMES)])
    yield app
    app.extensions[EXTENSION].shutdown()


def walk(client: FlaskClient, first: str) -> tuple[list[dict[str, Any]], list[int]]:
    """Every entry of the pages from ``first`` on, following ``Link: rel="next"``; and each page's length."""
    entries: list[dict[str, Any]] = []
    sizes: list[int] = []
    url: str | None = first
    while url is not None:
        response = client.get(url)
        assert response.status_code == 200, response.get_json()
        entries += response.get_json()
        sizes.append(len(response.get_json()))
        link = response.headers.get("Link")
        if link is None:
            assert "X-Continue" not in response.headers
            url = None
        else:
            match = LINK.match(link)
            assert match, link
            url = match["url"]
            assert url.endswith(f"&continue={response.headers['X-Continue']}")
        assert len(sizes) <= len(NAMES) + 1, "the pages never end"
    return entries, sizes


@pytest.mark.parametrize("limit", [1, 2, 5, 12, 36, 37, 38, 1000])
@pytest.mark.parametrize("state", [None, "RUNNING", "failed"])
def test_pages_concatenate_to_the_whole_list(client: FlaskClient, limit: int, state: str | None) -> None:
    filtered = "" if state is None else f"state={state}&"
    whole = client.get(f"/v1/plugins/?{filtered}".rstrip("?&")).get_json()
    entries, sizes = walk(client, f"/v1/plugins/?{filtered}limit={limit}")
    assert entries == whole
    assert all(size == limit for size in sizes[:-1])
    assert 0 < sizes[-1] <= limit
    assert len(sizes) == max(1, -(-len(whole) // limit))


def test_the_link_names_the_next_page_with_the_filter(client: FlaskClient) -> None:
    response = client.get("/v1/plugins/?state=failed&limit=5")
    names = [entry["name"] for entry in response.get_json()]
    assert names == NAMES[0:15:3]
    token = response.headers["X-Continue"]
    assert response.headers["Link"] == f'</v1/plugins/?state=FAILED&limit=5&continue={token}>; rel="next"'
    assert decode_token(token) == "p12"


def test_tokens_are_opaque(client: FlaskClient) -> None:
    token = client.get("/v1/plugins/?limit=3").headers["X-Continue"]
    assert "p02" not in token
    assert token == encode_token("p02") == "cDAy"
    assert [e["name"] for e in client.get(f"/v1/plugins/?limit=3&continue={token}").get_json()] == NAMES[3:6]
    # Without a limit, a token gives the rest of the list.
    assert [e["name"] for e in client.get(f"/v1/plugins/?continue={token}").get_json()] == NAMES[3:]


@pytest.mark.parametrize(("token", "after"), [("cDB", "p0"), ("cDAyAA", "p02\0"), ("_w", "\xff"), ("AAA", "\0\0")],
                         ids=["trailing bits", "a NUL", "past every name", "before every name"])
def test_a_well_formed_token_continues_after_what_it_names(client: FlaskClient, token: str, after: str) -> None:
    assert decode_token(token) == after
    response = client.get(f"/v1/plugins/?continue={token}")
    assert [e["name"] for e in response.get_json()] == [name for name in NAMES if name > after]


def test_a_plugin_added_meanwhile_shows_if_it_sorts_after_the_cursor(app: Flask, client: FlaskClient) -> None:
    token = client.get("/v1/plugins/?limit=10").headers["X-Continue"]  # after p09
    store(app).put_many([snapshot("a-before"), snapshot("p09x")])
    page = client.get(f"/v1/plugins/?limit=3&continue={token}").get_json()
    assert [e["name"] for e in page] == ["p09x", "p10", "p11"]


@pytest.mark.parametrize("bad", [
    "", "!!!!", "p0.2", "cDAy=", "c", "cDAyc", encode_token("x" * 102), "é" * 4,
], ids=["empty", "not base64", "a dot", "padded", "one character", "one past a group", "too long", "not ascii"])
def test_a_bad_token_is_a_400(client: FlaskClient, bad: str) -> None:
    response = client.get("/v1/plugins/", query_string={"limit": 2, "continue": bad})
    assert response.status_code == 400
    body = response.get_json()
    assert body["type"].endswith("/invalid-request")
    assert body["errors"] == {"continue": [
        "not a continue token of this list: pass the X-Continue of the page before, as it was given"]}


@pytest.mark.parametrize("bad", ["0", "1001", "-1", "ten", "2.5", ""])
def test_a_limit_outside_1_to_1000_is_a_400(client: FlaskClient, bad: str) -> None:
    response = client.get("/v1/plugins/", query_string={"limit": bad})
    assert response.status_code == 400
    assert set(response.get_json()["errors"]) == {"limit"}


def test_the_list_is_gzipped_when_accepted(client: FlaskClient) -> None:
    plain = client.get("/v1/plugins/")
    packed = client.get("/v1/plugins/", headers=GZ)
    assert len(plain.get_data()) >= GZIP_MIN
    assert "Content-Encoding" not in plain.headers
    assert packed.headers["Content-Encoding"] == "gzip"
    assert plain.headers["Vary"] == packed.headers["Vary"] == "Accept-Encoding"
    assert gzip.decompress(packed.get_data()) == plain.get_data()
    assert len(packed.get_data()) < len(plain.get_data()) / 4
    assert packed.headers["Content-Length"] == str(len(packed.get_data()))
    assert plain.headers["ETag"] != packed.headers["ETag"]
    # A page too: its headers are the same either way.
    page, packed_page = (client.get("/v1/plugins/?limit=20", headers=h) for h in ({}, GZ))
    assert packed_page.headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(packed_page.get_data()) == page.get_data()
    assert (packed_page.headers["Link"], packed_page.headers["X-Continue"]) == (page.headers["Link"],
                                                                              page.headers["X-Continue"])


@pytest.mark.parametrize("accept", ["gzip;q=0", "br", "identity", "deflate, identity;q=0.5"])
def test_identity_unless_gzip_is_accepted(client: FlaskClient, accept: str) -> None:
    response = client.get("/v1/plugins/", headers={"Accept-Encoding": accept})
    assert "Content-Encoding" not in response.headers
    assert response.get_data() == client.get("/v1/plugins/").get_data()


def test_a_short_answer_stays_identity(client: FlaskClient) -> None:
    plain, packed = (client.get("/v1/plugins/?limit=1", headers=h) for h in ({}, GZ))
    assert len(plain.get_data()) < GZIP_MIN
    assert "Content-Encoding" not in packed.headers
    assert packed.headers["ETag"] == plain.headers["ETag"]
    assert packed.headers["Vary"] == "Accept-Encoding"


def test_304_for_the_compressed_representation(app: Flask, client: FlaskClient) -> None:
    packed = client.get("/v1/plugins/", headers=GZ).headers["ETag"]
    plain = client.get("/v1/plugins/").headers["ETag"]
    for fresh_worker in (False, True):
        if fresh_worker:  # one that never built the list answers without building it
            service: Service = app.extensions[EXTENSION]
            service.cache = ResponseCache(service.store)
        again = client.get("/v1/plugins/", headers={**GZ, "If-None-Match": packed})
        assert (again.status_code, again.headers["ETag"], again.get_data()) == (304, packed, b"")
        assert again.headers["Vary"] == "Accept-Encoding"
        # The gzip tag is not the identity answer's: a client that no longer accepts gzip gets the body.
        refused = client.get("/v1/plugins/", headers={"If-None-Match": packed})
        assert (refused.status_code, refused.headers["ETag"]) == (200, plain)
        assert client.get("/v1/plugins/", headers={"If-None-Match": plain}).status_code == 304
    store(app).put_many([snapshot("p00")])  # a change: neither tag holds
    moved = client.get("/v1/plugins/", headers={**GZ, "If-None-Match": packed})
    assert moved.status_code == 200
    assert moved.headers["ETag"] != packed


@pytest.mark.parametrize("path", ["/v1/plugins/", "/v1/plugins/?limit=10", "/v1/plugins/?state=failed&limit=2"])
def test_two_workers_on_one_store_give_the_same_etags(app: Flask, tmp_path: Path, path: str) -> None:
    other = worker(tmp_path)
    try:
        for headers in ({}, GZ):
            here, there = (a.test_client().get(path, headers=headers) for a in (app, other))
            assert here.get_data() == there.get_data()
            assert here.headers["ETag"] == there.headers["ETag"]
            assert here.headers.get("Link") == there.headers.get("Link")
            tagged = {**headers, "If-None-Match": here.headers["ETag"]}
            assert other.test_client().get(path, headers=tagged).status_code == 304
    finally:
        other.extensions[EXTENSION].shutdown()
