"""The playground page as the app serves it: its security headers, its assets, its links, its key field.

What the page does in a browser is tested in tests/browser/test_playground_in_browser.py.
"""

from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest
from flask import Flask

from config import settings_from
from i2v_app import create_app
from i2v_app.playground import PROVIDER_VIDEO_ORIGINS

API_KEY = "playground-key-0123456789abcdef"


class Tags(HTMLParser):
    """Every start tag of a page with its attributes, and the text inside <script> and <style>."""

    def __init__(self) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str | None]]] = []
        self.inline: list[str] = []
        self._open: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))
        self._open = tag

    def handle_endtag(self, tag: str) -> None:
        self._open = None

    def handle_data(self, data: str) -> None:
        if self._open in ("script", "style") and data.strip():
            self.inline.append(data)


def parse(html: str) -> Tags:
    tags = Tags()
    tags.feed(html)
    return tags


def policy(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as directive -> sources."""
    directives = {}
    for part in header.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def make_app(service_env: dict[str, str], **overrides: str) -> Flask:
    app = create_app(settings_from({**service_env, **overrides}))
    app.config["TESTING"] = True
    return app


def test_page_allows_only_its_own_scripts_and_styles_and_videos_from_the_providers(client) -> None:
    resp = client.get("/playground")
    assert resp.status_code == 200
    assert resp.mimetype == "text/html"
    csp = policy(resp.headers["Content-Security-Policy"])
    assert csp["default-src"] == ["'self'"]
    assert csp["script-src"] == ["'self'"]
    assert csp["style-src"] == ["'self'"]
    assert csp["connect-src"] == ["'self'"]
    assert csp["object-src"] == ["'none'"]
    assert csp["frame-ancestors"] == ["'none'"]
    assert {"'self'", *PROVIDER_VIDEO_ORIGINS} <= set(csp["media-src"])
    assert "https://cdn.pika.art" in csp["media-src"]
    # Thumbnails of remote images load in the browser, from any https host.
    assert "https:" in csp["img-src"]
    assert not any("unsafe" in source for sources in csp.values() for source in sources)
    assert resp.headers["X-Content-Type-Options"] == "nosniff"
    assert resp.headers["Referrer-Policy"] == "no-referrer"


def test_media_from_the_public_base_url_may_play(service_env: dict[str, str]) -> None:
    """Behind a proxy the service's public address differs from the page's: its videos still play."""
    app = make_app(service_env, PUBLIC_BASE_URL="https://i2v.example.com/base")
    csp = policy(app.test_client().get("/playground").headers["Content-Security-Policy"])
    assert "https://i2v.example.com" in csp["media-src"]


def test_page_has_no_inline_code_and_its_assets_are_served_by_the_app(client) -> None:
    page = client.get("/playground").get_data(as_text=True)
    tags = parse(page)
    assert tags.inline == [], "inline <script> or <style> would need 'unsafe-inline'"
    assert not any(name.startswith("on") or name == "style" for _, attrs in tags.tags for name in attrs)
    scripts = [attrs["src"] for tag, attrs in tags.tags if tag == "script"]
    sheets = [attrs["href"] for tag, attrs in tags.tags if tag == "link" and attrs.get("rel") == "stylesheet"]
    assert scripts and sheets
    for url, kind in [*((s, "text/javascript") for s in scripts), *((s, "text/css") for s in sheets)]:
        assert url.startswith("/playground/static/"), url  # the app's own, never a CDN
        asset = client.get(url)
        assert asset.status_code == 200, url
        assert asset.mimetype == kind, (url, asset.mimetype)


def test_page_script_puts_text_in_as_text_never_as_html(client) -> None:
    """Prompts, titles and callback bodies come from providers: nothing in the page parses them as HTML."""
    page = client.get("/playground").get_data(as_text=True)
    [src] = [attrs["src"] for tag, attrs in parse(page).tags if tag == "script"]
    source = client.get(src).get_data(as_text=True)
    for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"):
        assert sink not in source, sink
    assert "textContent" in source


@pytest.mark.parametrize(("disabled", "shown"), [("1", False), ("0", True)])
def test_api_key_field_only_when_authentication_is_on(service_env: dict[str, str], disabled: str, shown: bool) -> None:
    app = make_app(service_env, I2V_AUTH_DISABLED=disabled, I2V_API_KEYS=API_KEY)
    tags = parse(app.test_client().get("/playground").get_data(as_text=True))
    ids = {attrs.get("id") for _, attrs in tags.tags}
    assert ("api-key" in ids) is shown
    [body] = [attrs for tag, attrs in tags.tags if tag == "body"]
    assert body["data-auth-required"] == ("true" if shown else "false")


def test_every_form_control_has_a_label(client) -> None:
    tags = parse(client.get("/playground").get_data(as_text=True)).tags
    labelled = {attrs.get("for") for tag, attrs in tags if tag == "label"}
    for tag, attrs in tags:
        if tag in ("input", "progress", "select", "textarea"):
            assert attrs.get("id") in labelled or attrs.get("aria-label"), (tag, attrs)
        if tag == "button":
            assert attrs.get("id"), attrs


def test_playground_is_linked_from_the_index_and_the_docs(client) -> None:
    endpoints = client.get("/").get_json()["endpoints"]
    assert {"method": "GET", "path": "/playground"} in [{k: e[k] for k in ("method", "path")} for e in endpoints]
    description = client.get("/openapi.json").get_json()["info"]["description"]
    assert re.search(r"\]\(/playground\)", description), description


def test_api_never_takes_the_key_from_a_cookie(service_env: dict[str, str]) -> None:
    """A page on the same origin cannot be made to act with a key stored in a cookie (no CSRF)."""
    app = make_app(service_env, I2V_AUTH_DISABLED="0", I2V_API_KEYS=API_KEY)
    for value in (API_KEY, f"Bearer {API_KEY}"):
        client = app.test_client()
        for name in ("Authorization", "api_key", "session", "token"):
            client.set_cookie(name, value)
        assert client.get("/api/v1/i2v/some-id").status_code == 401, value
    assert client.get("/api/v1/i2v/some-id", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 404
