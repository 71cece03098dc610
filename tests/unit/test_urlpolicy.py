"""Which image URLs the service accepts: public http(s) hosts only, in every notation."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import urllib3

from jobs.urlpolicy import MAX_URL_LENGTH, UnsafeURL, check_image_url, inspect_url

#: The reason given for any special-purpose address.
ADDRESS = "address"


def fullwidth(text: str) -> str:
    """The fullwidth forms of ASCII letters and digits, which NFKC (and so IDNA) maps back."""
    return "".join(chr(ord(ch) + 0xFEE0) for ch in text)


ALLOWED = [
    pytest.param("https://cdn.example.com/images/plane.jpg", id="https"),
    pytest.param("http://cdn.example.com/a.jpg", id="http"),
    pytest.param("HTTPS://CDN.Example.COM/a.jpg", id="upper-case-scheme-and-host"),
    pytest.param("https://cdn.example.com./a.jpg", id="trailing-dot-fqdn"),
    pytest.param("https://cdn.example.com:443/a.jpg?x=1&y=2#frag", id="port-query-fragment"),
    pytest.param("https://cdn.example.com:8443/a.jpg", id="non-default-port"),
    pytest.param("http://8.8.8.8/a.jpg", id="public-ipv4"),
    pytest.param("http://1.1.1.1:8080/a.jpg", id="public-ipv4-port"),
    pytest.param("http://172.32.0.1/a.jpg", id="just-outside-172.16/12"),
    pytest.param("http://134744072/a.jpg", id="public-ipv4-decimal"),
    pytest.param("http://0x08080808/a.jpg", id="public-ipv4-hex"),
    pytest.param("http://[2606:4700:4700::1111]/a.jpg", id="public-ipv6"),
    pytest.param("http://[::ffff:8.8.8.8]/a.jpg", id="public-ipv4-mapped"),
    pytest.param("http://bücher.example/a.jpg", id="idn-host"),
    pytest.param(
        "https://cdn.example.com/" + "a" * (MAX_URL_LENGTH - len("https://cdn.example.com/")), id="max-length"
    ),
]

DENIED = [
    # IPv4 special ranges.
    pytest.param("http://127.0.0.1/a.jpg", ADDRESS, id="v4-loopback"),
    pytest.param("http://127.255.255.254/", ADDRESS, id="v4-loopback-range-end"),
    pytest.param("http://10.0.0.1/", ADDRESS, id="v4-private-10"),
    pytest.param("http://10.255.255.255/", ADDRESS, id="v4-private-10-end"),
    pytest.param("http://172.16.0.1/", ADDRESS, id="v4-private-172.16"),
    pytest.param("http://172.31.255.255/", ADDRESS, id="v4-private-172.31"),
    pytest.param("http://192.168.1.1/", ADDRESS, id="v4-private-192.168"),
    pytest.param("http://169.254.169.254/latest/meta-data/", ADDRESS, id="v4-cloud-metadata"),
    pytest.param("http://169.254.1.1/", ADDRESS, id="v4-link-local"),
    pytest.param("http://224.0.0.1/", ADDRESS, id="v4-multicast"),
    pytest.param("http://239.255.255.250/", ADDRESS, id="v4-multicast-ssdp"),
    pytest.param("http://240.0.0.1/", ADDRESS, id="v4-reserved"),
    pytest.param("http://255.255.255.255/", ADDRESS, id="v4-broadcast"),
    pytest.param("http://0.0.0.0/", ADDRESS, id="v4-unspecified"),
    pytest.param("http://0.1.2.3/", ADDRESS, id="v4-this-network"),
    pytest.param("http://100.64.0.1/", ADDRESS, id="v4-cgnat"),
    pytest.param("http://100.127.255.254/", ADDRESS, id="v4-cgnat-end"),
    pytest.param("http://192.0.2.1/", ADDRESS, id="v4-test-net-1"),
    pytest.param("http://198.18.0.1/", ADDRESS, id="v4-benchmarking"),
    pytest.param("http://198.51.100.7/", ADDRESS, id="v4-test-net-2"),
    pytest.param("http://203.0.113.5/", ADDRESS, id="v4-test-net-3"),
    # IPv6 special ranges.
    pytest.param("http://[::1]/", ADDRESS, id="v6-loopback"),
    pytest.param("http://[0:0:0:0:0:0:0:1]/", ADDRESS, id="v6-loopback-long"),
    pytest.param("http://[::1]:8080/", ADDRESS, id="v6-loopback-port"),
    pytest.param("http://[::]/", ADDRESS, id="v6-unspecified"),
    pytest.param("http://[fe80::1]/", ADDRESS, id="v6-link-local"),
    pytest.param("http://[fe80::1%25eth0]/", "%", id="v6-link-local-zone"),
    pytest.param("http://[fc00::1]/", ADDRESS, id="v6-ula-fc"),
    pytest.param("http://[fd00::1]/", ADDRESS, id="v6-ula-fd"),
    pytest.param("http://[ff02::1]/", ADDRESS, id="v6-multicast"),
    pytest.param("http://[2001:db8::1]/", ADDRESS, id="v6-documentation"),
    # IPv4 inside IPv6.
    pytest.param("http://[::ffff:127.0.0.1]/", ADDRESS, id="v4-mapped-loopback"),
    pytest.param("http://[::ffff:7f00:1]/", ADDRESS, id="v4-mapped-loopback-hex"),
    pytest.param("http://[::ffff:10.0.0.1]/", ADDRESS, id="v4-mapped-private"),
    pytest.param("http://[::ffff:169.254.169.254]/", ADDRESS, id="v4-mapped-metadata"),
    pytest.param("http://[::127.0.0.1]/", ADDRESS, id="v4-compatible"),
    pytest.param("http://[2002:7f00:1::]/", ADDRESS, id="6to4-loopback"),
    pytest.param("http://[2002:a9fe:a9fe::]/", ADDRESS, id="6to4-metadata"),
    pytest.param("http://[64:ff9b::127.0.0.1]/", ADDRESS, id="nat64-loopback"),
    # Legacy numeric IPv4 notations.
    pytest.param("http://2130706433/", ADDRESS, id="decimal-loopback"),
    pytest.param("http://3232235777/", ADDRESS, id="decimal-private"),
    pytest.param("http://0x7f000001/", ADDRESS, id="hex-loopback"),
    pytest.param("http://0X7F000001/", ADDRESS, id="hex-upper-loopback"),
    pytest.param("http://0xa9fea9fe/", ADDRESS, id="hex-metadata"),
    pytest.param("http://0x7F.0x0.0x0.0x1/", ADDRESS, id="dotted-hex-loopback"),
    pytest.param("http://0177.0.0.1/", ADDRESS, id="octal-loopback"),
    pytest.param("http://00000177.0.0.1/", ADDRESS, id="padded-octal-loopback"),
    pytest.param("http://017700000001/", ADDRESS, id="octal-integer-loopback"),
    pytest.param("http://0251.0376.0251.0376/", ADDRESS, id="octal-metadata"),
    pytest.param("http://127.000.000.001/", ADDRESS, id="zero-padded-loopback"),
    pytest.param("http://127.1/", ADDRESS, id="short-loopback"),
    pytest.param("http://127.0.1/", ADDRESS, id="three-part-loopback"),
    pytest.param("http://10.1/", ADDRESS, id="short-private"),
    pytest.param("http://0x7f.1/", ADDRESS, id="short-hex-loopback"),
    pytest.param("http://0/", ADDRESS, id="zero"),
    pytest.param("http://127.0.0.1./", ADDRESS, id="loopback-trailing-dot"),
    # Unicode notations IDNA 2003 (NFKC) folds into addresses and names: not IDNA 2008, so refused.
    pytest.param("http://\u2460\u2461\u2466.0.0.1/", "idna", id="enclosed-digits"),
    pytest.param(
        f"http://{fullwidth('127')}.{fullwidth('0')}.{fullwidth('0')}.{fullwidth('1')}/", "idna", id="fullwidth-digits"
    ),
    pytest.param("http://127.0.0.1\u3002/", "idna", id="ideographic-dot"),
    pytest.param(f"http://metadata.google.{fullwidth('internal')}/", "idna", id="fullwidth-internal"),
    # Names that mean this machine or this network.
    pytest.param("http://localhost/", "local", id="localhost"),
    pytest.param("http://LOCALHOST/", "local", id="localhost-upper"),
    pytest.param("http://localhost./", "local", id="localhost-dot"),
    pytest.param("http://localhost:8000/", "local", id="localhost-port"),
    pytest.param("http://sub.localhost/", "local", id="sub-localhost"),
    pytest.param("http://foo.localdomain/", "local", id="localdomain"),
    pytest.param("http://printer.local/", "local", id="mdns-local"),
    pytest.param("http://metadata.google.internal/", "local", id="internal"),
    pytest.param("http://router.lan/", "local", id="lan"),
    pytest.param("http://nas.home.arpa/", "local", id="home-arpa"),
    pytest.param("http://1.0.0.127.in-addr.arpa/", "local", id="reverse-dns"),
    pytest.param("http://intranet/", "local", id="single-label"),
    # User info.
    pytest.param("http://user@cdn.example.com/a.jpg", "user", id="user"),
    pytest.param("http://user:pw@cdn.example.com/a.jpg", "user", id="user-password"),
    pytest.param("http://:pw@cdn.example.com/a.jpg", "user", id="password-only"),
    pytest.param("http://@cdn.example.com/a.jpg", "user", id="empty-userinfo"),
    pytest.param("http://cdn.example.com@127.0.0.1/", "user", id="host-as-userinfo"),
    pytest.param("http://a%40b@cdn.example.com/", "user", id="encoded-at-userinfo"),
    # Schemes.
    pytest.param("ftp://cdn.example.com/a.jpg", "http", id="ftp"),
    pytest.param("file:///etc/passwd", "http", id="file"),
    pytest.param("gopher://127.0.0.1:6379/_FLUSHALL", "http", id="gopher"),
    pytest.param("dict://cdn.example.com:11211/", "http", id="dict"),
    pytest.param("ws://cdn.example.com/", "http", id="websocket"),
    pytest.param("javascript:alert(1)", "http", id="javascript"),
    pytest.param("data:image/png;base64,iVBORw0KGgo=", "http", id="data"),
    pytest.param("//cdn.example.com/a.jpg", "http", id="scheme-relative"),
    pytest.param("cdn.example.com/a.jpg", "http", id="no-scheme"),
    pytest.param("", "http", id="empty"),
    pytest.param("http://", "host", id="no-host"),
    pytest.param("http:///a.jpg", "host", id="empty-host"),
    # Ports and malformed authorities.
    pytest.param("http://cdn.example.com:65536/", "port", id="port-too-big"),
    pytest.param("http://cdn.example.com:99999/", "port", id="port-far-too-big"),
    pytest.param("http://cdn.example.com:-1/", "port", id="port-negative"),
    pytest.param("http://cdn.example.com:abc/", "port", id="port-not-a-number"),
    pytest.param("http://cdn.example.com:80:80/", "port", id="two-ports"),
    pytest.param("http://[::1/", "valid", id="unclosed-bracket"),
    pytest.param("http://[not-an-ip]/", "valid", id="bracketed-name"),
    pytest.param("http://[127.0.0.1]/", "valid", id="bracketed-ipv4"),
    # Length and characters.
    pytest.param("https://cdn.example.com/" + "a" * MAX_URL_LENGTH, "longer", id="too-long"),
    pytest.param("http://cdn.exa mple.com/", "whitespace", id="space-in-host"),
    pytest.param("http://cdn.example.com/a b.jpg", "whitespace", id="space-in-path"),
    pytest.param(" http://cdn.example.com/a.jpg", "whitespace", id="leading-space"),
    pytest.param("http://cdn.example.com/a.jpg\n", "whitespace", id="trailing-newline"),
    pytest.param("http://cdn.example.com/\t.jpg", "whitespace", id="tab"),
    pytest.param("http://cdn.example.com/a.jpg\r\nX-Injected: 1", "whitespace", id="crlf"),
    pytest.param("http://cdn.example.com/\x00.jpg", "control", id="nul"),
    pytest.param("http://cdn.example.com/\x1b.jpg", "control", id="escape"),
    pytest.param("http://cdn.example.com/\x7f.jpg", "control", id="del"),
    pytest.param("http://cdn.example.com/\u2028.jpg", "whitespace", id="line-separator"),
    pytest.param("http://cdn.example.com/\xa0.jpg", "whitespace", id="nbsp"),
    pytest.param("http://\ud800.example.com/", "host", id="lone-surrogate-host"),
]


@pytest.mark.parametrize("url", ALLOWED)
def test_public_urls_are_allowed(url: str) -> None:
    """A public http(s) URL comes back unchanged."""
    assert check_image_url(url) == url


@pytest.mark.parametrize(("url", "reason"), DENIED)
def test_unsafe_urls_are_denied_with_a_reason(url: str, reason: str) -> None:
    """Every unsafe URL raises UnsafeURL, and the message says what is wrong."""
    with pytest.raises(UnsafeURL) as excinfo:
        check_image_url(url)
    assert reason in str(excinfo.value).lower()


@pytest.mark.parametrize(("url", "reason"), DENIED)
def test_an_unrelated_allowlist_changes_nothing(url: str, reason: str) -> None:
    """Allowlisting some other host never lets an unsafe URL through."""
    with pytest.raises(UnsafeURL):
        check_image_url(url, ("cdn.example.com", "minio"))


@pytest.mark.parametrize(
    ("url", "allowlist"),
    [
        pytest.param("http://localhost:9000/bucket/a.jpg", ("localhost",), id="localhost"),
        pytest.param("http://minio:9000/bucket/a.jpg", ("minio",), id="single-label"),
        pytest.param("http://MINIO./a.jpg", ("minio",), id="case-and-trailing-dot"),
        pytest.param("http://127.0.0.1:8000/a.jpg", ("127.0.0.1",), id="loopback-ipv4"),
        pytest.param("http://10.1.2.3/a.jpg", ("10.1.2.3",), id="private-ipv4"),
        pytest.param("http://[::1]:8000/a.jpg", ("::1",), id="loopback-ipv6"),
        pytest.param("http://images.internal/a.jpg", ("other", "images.internal"), id="one-of-several"),
    ],
)
def test_allowlisted_hosts_skip_the_address_rules(url: str, allowlist: tuple[str, ...]) -> None:
    """A host in IMAGE_HOST_ALLOWLIST is let through although its address is local."""
    with pytest.raises(UnsafeURL):
        check_image_url(url)
    assert check_image_url(url, allowlist) == url


@pytest.mark.parametrize(
    ("url", "allowlist"),
    [
        pytest.param("http://user@localhost/a.jpg", ("localhost",), id="userinfo"),
        pytest.param("file://localhost/etc/passwd", ("localhost",), id="scheme"),
        pytest.param("gopher://localhost:6379/_x", ("localhost",), id="gopher"),
        pytest.param("http://localhost:99999/", ("localhost",), id="bad-port"),
        pytest.param("http://localhost/\r\n", ("localhost",), id="control-chars"),
        pytest.param("http://localhost/" + "a" * MAX_URL_LENGTH, ("localhost",), id="too-long"),
        pytest.param("http://127.0.0.2/", ("127.0.0.1",), id="neighbour-address"),
        pytest.param("http://minio.localhost/", ("minio",), id="subdomain-of-listed-name"),
        pytest.param("http://localhost.evil.localhost/", ("localhost",), id="suffix-trick"),
    ],
)
def test_the_allowlist_lifts_only_the_address_rules(url: str, allowlist: tuple[str, ...]) -> None:
    """Scheme, user info, port, length and character rules still apply to allowlisted hosts; only exact hosts match."""
    with pytest.raises(UnsafeURL):
        check_image_url(url, allowlist)


# -- the checked host is the connected host ---------------------------------------------------------

#: URLs whose host urlsplit, urllib3, IDNA 2003 and IDNA 2008 may read differently.
TRICKY = [
    "http://169.254.169.254\\x.evil.example/a.png",
    "http://cdn.example.com\\@169.254.169.254/",
    "http://cdn.example.com:80\\@127.0.0.1/",
    "http://cdn.example.com\\.evil.example/",
    "http://127.0.0.1%2f.evil.example/",
    "http://%31%32%37.0.0.1/",
    "http://fa%C3%9F.de/",
    "http://faß.de/a.png",
    "http://FASS.de/a.png",
    "http://xn--fa-hia.de/a.png",
    "http://bücher.example/a.png",
    "http://BÜCHER.example/a.png",
    "http://xn--bcher-kva.example/a.png",
    "http://\u212aelvin.example/",  # Kelvin sign: lower-cases to ASCII k
    "http://\u0130stanbul.example/",  # dotted capital I
    "http://ex\u00adample.com/",  # soft hyphen: IDNA 2003 drops it
    "http://e\u0301xample.com/",  # combining accent
    f"http://{fullwidth('example')}.com/",
    "http://example.com\u3002evil.example/",
    "http://cdn.example.com#@127.0.0.1/",
    "http://cdn.example.com?@127.0.0.1/",
    "http://cdn.example.com/@127.0.0.1",
    "http://cdn.example.com;.evil.example/",
    "http://cdn_1.example.com/",
    "http://cdn.example.com./a.png",
    "http://8.8.8.8./a.png",
    "http://[2606:4700:4700::1111]:8080/a.png",
    "HTTP://CDN.EXAMPLE.COM/A.PNG",
    *(param.values[0] for param in ALLOWED),
    *(param.values[0] for param in DENIED),
]


def _bare(host: str | None) -> str:
    return (host or "").strip("[]").rstrip(".").lower()


@pytest.mark.parametrize("url", TRICKY)
def test_an_accepted_url_names_one_host_for_urlsplit_and_urllib3(url: str) -> None:
    """Either the URL is refused, or the host checked is the host urllib3 connects to, read either way."""
    try:
        checked = inspect_url(url)
    except UnsafeURL:
        return  # never fetched, never handed to a provider
    assert checked.ascii_url.isascii()
    assert _bare(urllib3.util.parse_url(url).host) == checked.host
    assert _bare(urllib3.util.parse_url(checked.ascii_url).host) == checked.host
    assert _bare(urlsplit(checked.ascii_url).hostname) == checked.host


@pytest.mark.parametrize(
    ("url", "host"),
    [
        pytest.param("http://faß.de/a.png", "xn--fa-hia.de", id="sharp-s-is-not-ss"),
        pytest.param("http://BÜCHER.example/", "xn--bcher-kva.example", id="idn"),
        pytest.param("http://CDN.Example.com./a.png", "cdn.example.com", id="ascii"),
    ],
)
def test_hosts_are_checked_in_their_idna_2008_form(url: str, host: str) -> None:
    """The host checked (and connected to) is urllib3's IDNA 2008 form, not Python's IDNA 2003 one."""
    assert inspect_url(url).host == host
    assert urlsplit(inspect_url(url).ascii_url).hostname == host


@pytest.mark.parametrize(
    "url",
    [
        "http://169.254.169.254\\x.evil.example/",
        "http://cdn.example.com\\.evil.example/",
        "http://127.0.0.1%2f.evil.example/",
        "http://fa%C3%9F.de/",
        "http://%63dn.example.com/",
    ],
)
def test_a_backslash_or_percent_in_the_authority_is_refused(url: str) -> None:
    """The authority may hold neither, even where the host they hide would be public."""
    with pytest.raises(UnsafeURL, match="backslash or a %"):
        check_image_url(url)
    assert check_image_url("http://cdn.example.com/a%20b\\c.png")  # in the path they are fine


def test_the_url_downloaded_is_ascii_and_keeps_existing_escapes() -> None:
    """Path and query are %-encoded as UTF-8 where needed; escapes already there and the query stay as given."""
    checked = inspect_url("http://bücher.example/bü%20cher.png?q=ü&r=a%2Fb#frag")
    assert checked.ascii_url == "http://xn--bcher-kva.example/b%C3%BC%20cher.png?q=%C3%BC&r=a%2Fb"
    assert inspect_url("https://cdn.example.com:8443").ascii_url == "https://cdn.example.com:8443/"


WHITESPACE_REASON = "must not contain whitespace or control characters"


def refusal(ch: str) -> str | None:
    """Why a URL with ``ch`` in its path is refused, or None."""
    try:
        inspect_url(f"https://cdn.example.com/a{ch}b.jpg")
    except UnsafeURL as exc:
        return str(exc)
    return None


def test_every_whitespace_and_control_character_is_refused_and_no_other() -> None:
    """Whitespace (all that str.isspace knows), C0 controls and DEL are refused as such; other characters are not."""
    unsafe = [chr(n) for n in range(0x110000) if chr(n).isspace() or n < 32 or n == 127]
    assert len(unsafe) > 50
    assert {ch for ch in unsafe if refusal(ch) != WHITESPACE_REASON} == set()
    others = (chr(n) for n in range(0x3100) if chr(n) not in unsafe)
    assert {ch for ch in others if refusal(ch) == WHITESPACE_REASON} == set()
