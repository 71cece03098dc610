"""Which image URLs the service accepts: public http(s) hosts only.

Pure logic, used by the web process to validate submissions and by anything that downloads, which
re-checks every resolved address (and every redirect) with :func:`is_public_address`. The host is
checked in the one ASCII form that urllib3 connects to (IDNA 2008 with the ``idna`` package), so
the name checked and the name connected to cannot differ.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass
from urllib.parse import quote, urlsplit, urlunsplit

import idna

MAX_URL_LENGTH = 2048
#: Characters left as they are when the path and query of a URL are made ASCII (existing escapes too).
_URL_SAFE = "/?:@!$&'()*+,;=-._~%"
#: Whitespace (every character ``str.isspace`` knows, as ``\s`` does) and control characters: one
#: regular-expression scan instead of a Python loop over the URL's characters.
_UNSAFE_CHARS = re.compile(r"[\x00-\x1f\x7f\s]")
#: Names that mean "this machine" or "this network" without being IP literals.
_LOCAL_NAMES = re.compile(r"(^|\.)(localhost|localdomain|local|internal|intranet|lan|home\.arpa|arpa)$")
# Integer forms a resolver would accept as IPv4: 2130706433, 0x7f000001, 0177.0.0.1, 127.1.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]+|[0-9]+)(\.(0x[0-9a-f]+|[0-9]+)){0,3}$", re.IGNORECASE)


class UnsafeURL(ValueError):
    """The URL must not be fetched; the message says why."""


def is_public_address(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether an address is globally routable (not loopback, private, link-local, multicast...)."""
    if isinstance(address, ipaddress.IPv6Address):
        mapped = address.ipv4_mapped or address.sixtofour or (address.teredo[1] if address.teredo else None)
        if mapped is not None:
            return is_public_address(mapped)
    return bool(
        address.is_global
        and not (address.is_multicast or address.is_reserved or address.is_loopback or address.is_link_local)
        and not address.is_unspecified
        and not address.is_private
    )


def _inet_aton(host: str) -> ipaddress.IPv4Address | None:
    """Parse the legacy numeric IPv4 notations (decimal, octal, hex, short forms) like a resolver."""
    if not _NUMERIC_HOST.match(host):
        return None
    try:
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def literal_address(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The IP address a host names literally, in any notation; None for a DNS name."""
    bare = host.strip("[]").split("%", 1)[0]
    try:
        return ipaddress.ip_address(bare)
    except ValueError:
        return _inet_aton(bare)


@dataclass(frozen=True)
class CheckedURL:
    """A URL that passed the rules, with the host in the form that is checked and connected to."""

    #: The URL as given (what is stored and handed to providers).
    url: str
    #: The same URL in ASCII (host in IDNA 2008, path and query %-encoded as UTF-8), without fragment:
    #: what is downloaded.
    ascii_url: str
    #: The ASCII host, lower-case, without brackets or trailing dot.
    host: str
    #: Whether ``IMAGE_HOST_ALLOWLIST`` lifted the address rules for it.
    allowlisted: bool


def ascii_host(host: str) -> str:
    """The host as urllib3 sends it: lower-case, and IDNA 2008 (``idna``, strict, STD3) when not ASCII.

    Python's own ``"idna"`` codec is IDNA 2003 (``faß`` becomes ``fass``, full-width digits fold to
    ASCII) and differs from what urllib3 connects to; encoding once with urllib3's implementation
    and using that result everywhere leaves nothing for the two to disagree on.

    Raises:
        UnsafeURL: the host is not a valid IDNA 2008 name.
    """
    if host.isascii():
        return host.lower().rstrip(".")
    try:
        return idna.encode(host.lower(), strict=True, std3_rules=True).decode("ascii").rstrip(".")
    except (idna.IDNAError, UnicodeError):
        raise UnsafeURL("has an invalid host name (not IDNA 2008)") from None


def inspect_url(url: str, allowlist: tuple[str, ...] = ()) -> CheckedURL:
    """Check ``url`` against the rules and return it with its ASCII host, else raise.

    Hosts in ``allowlist`` (``IMAGE_HOST_ALLOWLIST``) skip the address rules, for local set-ups.

    Raises:
        UnsafeURL: with the reason.
    """
    if len(url) > MAX_URL_LENGTH:
        raise UnsafeURL(f"longer than {MAX_URL_LENGTH} characters")
    if _UNSAFE_CHARS.search(url):
        raise UnsafeURL("must not contain whitespace or control characters")
    try:
        url.encode("utf-8")
    except UnicodeEncodeError:
        raise UnsafeURL("has a host or path with characters that are not valid text") from None
    try:
        parts = urlsplit(url)
        host = parts.hostname
        port = parts.port  # raises ValueError for a malformed port
    except ValueError as exc:
        raise UnsafeURL(f"not a valid URL ({exc})") from None
    if port == 0:
        raise UnsafeURL("must not use port 0")
    if parts.scheme not in ("http", "https"):
        raise UnsafeURL("must be an http or https URL")
    if not host:
        raise UnsafeURL("must name a host")
    if parts.username is not None or parts.password is not None or "@" in parts.netloc:
        raise UnsafeURL("must not carry a user name or password")
    # urllib3 ends the authority at a backslash where urlsplit does not, and parsers disagree on
    # decoding %-escapes in a host: refusing both leaves one reading of the host.
    if "\\" in parts.netloc or "%" in parts.netloc:
        raise UnsafeURL("must not have a backslash or a %-escape in its host")
    host = ascii_host(host)
    netloc = f"[{host}]" if ":" in host else host
    if port is not None:
        netloc += f":{port}"
    checked = CheckedURL(
        url=url,
        ascii_url=urlunsplit(
            (parts.scheme, netloc, quote(parts.path or "/", safe=_URL_SAFE), quote(parts.query, safe=_URL_SAFE), "")
        ),
        host=host,
        allowlisted=host in allowlist or (port is not None and f"{host}:{port}" in allowlist),
    )
    if checked.allowlisted:
        return checked
    address = literal_address(host)
    if address is not None:
        if not is_public_address(address):
            raise UnsafeURL("must not point at a loopback, private, link-local, multicast or reserved address")
        return checked
    if "." not in host or _LOCAL_NAMES.search(host):
        raise UnsafeURL("must name a public host, not a local one")
    return checked


def check_image_url(url: str, allowlist: tuple[str, ...] = ()) -> str:
    """Return ``url`` if the service may fetch it or hand it to a provider, else raise.

    Raises:
        UnsafeURL: with the reason (see :func:`inspect_url`).
    """
    return inspect_url(url, allowlist).url
