"""Hostile headers, image URLs and bodies: a 4xx problem each, and nothing stored or queued."""

from __future__ import annotations

import json

import pytest

from jobs.store import ACTIVE_KEY
from tests.api import OTHER, PLAIN, SUBMIT, assert_problem
from tests.helpers import queued, records


def wsgi(text: str) -> str:
    """A header value as a WSGI server hands it over: the raw bytes decoded as latin-1."""
    return text.encode("utf-8", "surrogatepass").decode("latin-1")


def header_case(value: str | None, case_id: str, marks=()):
    environ = {} if value is None else {"HTTP_X_REQUEST_ID": wsgi(value)}
    return pytest.param(json.dumps({"image_id": PLAIN}).encode(), environ, id=f"request-id-{case_id}", marks=marks)


def image_case(image: object, case_id: str, marks=()):
    body = json.dumps({"image_id": image}).encode()
    return pytest.param(body, {"HTTP_X_REQUEST_ID": "hostile-1"}, id=f"image-{case_id}", marks=marks)


def body_case(body: bytes | str, case_id: str, marks=()):
    raw = body.encode() if isinstance(body, str) else body
    return pytest.param(raw, {"HTTP_X_REQUEST_ID": "hostile-1"}, id=f"body-{case_id}", marks=marks)


def fullwidth(text: str) -> str:
    return "".join(chr(ord(ch) + 0xFEE0) for ch in text)


HOSTILE = [
    # x-request-id
    header_case(None, "missing"),
    header_case("", "empty"),
    header_case("x" * 129, "129-chars"),
    header_case("x" * 8000, "8000-chars"),
    header_case("a b", "space"),
    header_case("a\tb", "tab"),
    header_case("a\r\nX-Injected: 1", "crlf-injection"),
    header_case("a\nb", "lf"),
    header_case("a\x00b", "nul"),
    header_case("a\x1b[31mred", "ansi-escape"),
    header_case("é", "latin-1"),
    header_case("请求-1", "utf-8"),
    header_case("😀", "emoji"),
    header_case(".", "dot-segment"),
    header_case("..", "dot-dot-segment"),
    header_case("...", "only-dots"),
    header_case("../../etc/passwd", "path-traversal"),
    header_case("..%2F..%2Fetc", "percent-2F"),
    header_case("a/b", "slash"),
    header_case("' OR '1'='1'; --", "sql"),
    header_case("<script>alert(1)</script>", "html"),
    header_case("${jndi:ldap://x.example/a}", "jndi"),
    header_case("{{7*7}}", "template"),
    header_case("*", "redis-glob"),
    header_case("i2v:req:*", "redis-key-glob"),
    # image_id: private and special addresses in every notation
    image_case("http://127.0.0.1/a.jpg", "loopback"),
    image_case("http://10.0.0.1/a.jpg", "private-10"),
    image_case("http://172.16.0.1/a.jpg", "private-172"),
    image_case("http://192.168.0.1/a.jpg", "private-192"),
    image_case("http://169.254.169.254/latest/meta-data/", "cloud-metadata"),
    image_case("http://100.64.0.1/a.jpg", "cgnat"),
    image_case("http://224.0.0.1/a.jpg", "multicast"),
    image_case("http://240.0.0.1/a.jpg", "reserved"),
    image_case("http://0.0.0.0/a.jpg", "unspecified"),
    image_case("http://[::]/a.jpg", "v6-unspecified"),
    image_case("http://[::1]/a.jpg", "v6-loopback"),
    image_case("http://[fe80::1]/a.jpg", "v6-link-local"),
    image_case("http://[fd00::1]/a.jpg", "v6-ula"),
    image_case("http://[::ffff:127.0.0.1]/a.jpg", "v4-mapped"),
    image_case("http://[::ffff:a9fe:a9fe]/a.jpg", "v4-mapped-hex-metadata"),
    image_case("http://[2002:7f00:1::]/a.jpg", "6to4"),
    image_case("http://2130706433/a.jpg", "decimal"),
    image_case("http://0x7f000001/a.jpg", "hex"),
    image_case("http://0177.0.0.1/a.jpg", "octal"),
    image_case("http://127.1/a.jpg", "short"),
    image_case("http://0x7f.1/a.jpg", "short-hex"),
    image_case("http://localhost/a.jpg", "localhost"),
    image_case("http://LocalHost.:8080/a.jpg", "localhost-dot-port"),
    image_case("http://metadata.google.internal/", "internal-name"),
    image_case("http://example.com@127.0.0.1/a.jpg", "userinfo-host-confusion"),
    image_case("http://user:pass@cdn.example.com/a.jpg", "credentials"),
    image_case("http://cdn.example.com:99999/a.jpg", "bad-port"),
    image_case("javascript:alert(document.cookie)", "javascript"),
    image_case("data:image/png;base64,iVBORw0KGgo=", "data"),
    image_case("file:///etc/passwd", "file"),
    image_case("gopher://127.0.0.1:6379/_FLUSHALL", "gopher"),
    image_case("ftp://cdn.example.com/a.jpg", "ftp"),
    image_case("//cdn.example.com/a.jpg", "scheme-relative"),
    image_case(" http://127.0.0.1/a.jpg ", "whitespace-wrapped"),
    image_case("\thttp://10.0.0.1/a.jpg\n", "tab-newline-wrapped"),
    image_case("https://cdn.example.com/a.jpg\r\nX-Injected: 1", "crlf"),
    image_case("https://cdn.example.com/\x00.jpg", "nul"),
    image_case("https://cdn.example.com/" + "a" * 3000, "3000-chars"),
    image_case("http:&#x2F;&#x2F;127.0.0.1&#x2F;", "escaped-loopback"),
    image_case("http:&amp;#x2F;&amp;#x2F;10.0.0.1&amp;#x2F;a.jpg", "double-escaped-private"),
    image_case("http:&#47;&#47;169.254.169.254&#47;", "decimal-escaped-metadata"),
    image_case("http://&#49;&#50;&#55;.0.0.1/a.jpg", "escaped-digits-loopback"),
    image_case("http:&#x2F;&#x2F;localhost&#x2F;", "escaped-localhost"),
    image_case("javascript&#x3A;alert(1)", "escaped-javascript"),
    image_case("&lt;script&gt;alert(1)&lt;/script&gt;", "escaped-html"),
    image_case("http://\u2460\u2461\u2466.0.0.1/a.jpg", "enclosed-digits-loopback"),
    image_case(f"http://{fullwidth('127')}.0.0.1/a.jpg", "fullwidth-loopback"),
    # Authorities that parsers split or decode differently.
    image_case("http://169.254.169.254\\x.evil.example/a.jpg", "backslash-ends-host-for-urllib3"),
    image_case("http://cdn.example.com\\@169.254.169.254/a.jpg", "backslash-before-userinfo"),
    image_case("http://127.0.0.1%2f.evil.example/a.jpg", "percent-slash-in-host"),
    image_case("http://%31%32%37.0.0.1/a.jpg", "percent-digits-in-host"),
    image_case("", "empty"),
    image_case("not a url", "not-a-url"),
    image_case(
        "https://cdn.example.com/\ud800.jpg",
        "lone-surrogate",
    ),
    # image_id of the wrong type
    image_case(42, "number"),
    image_case(True, "boolean"),
    image_case(None, "null"),
    image_case([PLAIN], "list"),
    image_case({"url": PLAIN}, "object"),
    # bodies
    body_case(b"", "empty"),
    body_case(b"   \n", "whitespace-only"),
    body_case(b"[]", "array"),
    body_case(json.dumps([{"image_id": PLAIN}]), "array-of-objects"),
    body_case(json.dumps(PLAIN), "string"),
    body_case(b"42", "number"),
    body_case(b"null", "null"),
    body_case(b"true", "boolean"),
    body_case(b"{not json", "malformed"),
    body_case(b"{'image_id': 'https://cdn.example.com/a.jpg'}", "single-quotes"),
    body_case(json.dumps({"image_id": PLAIN}) + " trailing", "trailing-garbage"),
    body_case(json.dumps({"image_id": PLAIN}) + json.dumps({"image_id": OTHER}), "two-documents"),
    body_case('{"image_id": ' + "[" * 100 + "]" * 100 + "}", "nested-100"),
    body_case(
        '{"image_id": ' + "[" * 20000 + "]" * 20000 + "}",
        "nested-20000",
    ),
    body_case(
        '{"a": ' * 8000 + "1" + "}" * 8000,
        "nested-objects-8000",
    ),
    body_case(b'{"image_id": 1e999999}', "huge-float"),
    body_case(b'{"image_id": -1e999999}', "huge-negative-float"),
    body_case(b'{"image_id": NaN}', "nan"),
    body_case(
        '{"image_id": ' + "9" * 5000 + "}",
        "5000-digit-integer",
    ),
    body_case(b'{"image_id": "https://cdn.example.com/a.jpg", "image_id": "http://127.0.0.1/"}', "duplicate-keys"),
    body_case(b'{"image_id": "https://cdn.example.com/\xff\xfe.jpg"}', "invalid-utf-8"),
    body_case(b'{"image_id": "http:\xc0\xaf\xc0\xaf127.0.0.1/"}', "overlong-utf-8"),
    body_case(b"\xef\xbb\xbf" + json.dumps({"image_id": "http://127.0.0.1/"}).encode(), "bom-loopback"),
    body_case(json.dumps({"image_id": "http://127.0.0.1/"}).encode("utf-16"), "utf-16-loopback"),
    body_case(json.dumps({"image_id": PLAIN, "callback_url": "http://127.0.0.1:6379/"}), "callback-loopback"),
    body_case(json.dumps({"image_id": PLAIN, "callback_url": "https://evil.example/cb"}), "callback-not-allowed"),
    body_case(json.dumps({"image_id": PLAIN, "callback_url": 42}), "callback-number"),
    body_case(json.dumps({"image_id": PLAIN, "callback_url": "javascript:alert(1)"}), "callback-javascript"),
]


@pytest.mark.parametrize(("body", "environ"), HOSTILE)
def test_hostile_input_is_a_4xx_problem_and_leaves_no_trace(app, client, redis, settings, body, environ) -> None:
    """Hostile headers, URLs and bodies get a 4xx problem; no record is written and no job is queued."""
    app.config["PROPAGATE_EXCEPTIONS"] = False
    resp = client.post(SUBMIT, data=body, content_type="application/json", environ_base=environ)
    text = resp.get_data(as_text=True)
    assert 400 <= resp.status_code < 500, f"{resp.status_code}: {text[:300]}"
    problem = assert_problem(resp, resp.status_code)
    if environ.get("HTTP_X_REQUEST_ID") == "hostile-1":
        assert problem["request_id"] == "hostile-1"
    else:
        assert "request_id" not in problem
    assert "X-Injected" not in resp.headers
    assert records(redis) == []
    assert redis.zcard(ACTIVE_KEY) == 0
    assert queued(redis, settings) == 0


def test_the_hostile_table_is_large_enough() -> None:
    """At least 40 hostile inputs are checked."""
    assert len(HOSTILE) >= 40
