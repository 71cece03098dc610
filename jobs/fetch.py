"""Downloading a user-supplied URL safely: public addresses only, on every hop, with caps.

Only the worker fetches (the web process never does). Each redirect is followed by hand so that
its target passes the same URL rules and its resolved addresses are checked again.
"""

from __future__ import annotations

import io
import socket
import warnings
from urllib.parse import urljoin, urlsplit

import requests
from PIL import Image, UnidentifiedImageError

from jobs.urlpolicy import UnsafeURL, check_image_url, is_public_address, literal_address

MAX_REDIRECTS = 5
#: Largest picture decoded (about 8K x 5K); bigger ones are refused before decoding.
MAX_PIXELS = 40_000_000


class FetchError(Exception):
    """The URL could not be fetched within the rules; the message says why."""


def check_resolved(host: str, allowlist: tuple[str, ...]) -> None:
    """Resolve ``host`` and refuse it if any address it names is not public."""
    if host in allowlist:
        return
    try:
        infos = socket.getaddrinfo(host, None, proto=socket.IPPROTO_TCP)
    except OSError as exc:
        raise FetchError(f"cannot resolve {host}: {exc.strerror or exc}") from None
    for info in infos:
        address = literal_address(str(info[4][0]))
        if address is None or not is_public_address(address):
            raise FetchError(f"{host} resolves to a non-public address")


def fetch(
    url: str,
    *,
    session: requests.Session,
    max_bytes: int,
    timeout: tuple[float, float],
    allowlist: tuple[str, ...] = (),
) -> bytes:
    """GET ``url`` and return its body, following at most five redirects.

    Raises:
        FetchError: unsafe URL or redirect, too large, too slow, or not a 2xx answer.
    """
    for _ in range(MAX_REDIRECTS + 1):
        try:
            check_image_url(url, allowlist)
        except UnsafeURL as exc:
            raise FetchError(f"refused {url!r}: {exc}") from None
        check_resolved((urlsplit(url).hostname or "").lower(), allowlist)
        try:
            with session.get(url, stream=True, timeout=timeout, allow_redirects=False) as resp:
                if resp.is_redirect:
                    url = urljoin(url, resp.headers.get("Location", ""))
                    continue
                if not 200 <= resp.status_code < 300:
                    raise FetchError(f"the image URL answered {resp.status_code}")
                declared = resp.headers.get("Content-Length")
                if declared and declared.isdigit() and int(declared) > max_bytes:
                    raise FetchError(f"the image is larger than {max_bytes} bytes")
                body = io.BytesIO()
                for chunk in resp.iter_content(64 * 1024):
                    body.write(chunk)
                    if body.tell() > max_bytes:
                        raise FetchError(f"the image is larger than {max_bytes} bytes")
                return body.getvalue()
        except requests.RequestException as exc:
            raise FetchError(f"could not download the image: {type(exc).__name__}") from None
    raise FetchError(f"more than {MAX_REDIRECTS} redirects")


def open_image(data: bytes) -> Image.Image:
    """Decode image bytes, refusing anything that is not a real image."""
    try:
        with warnings.catch_warnings():
            # A small file that decodes to a huge picture is refused, not decoded.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
            image.load()
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise FetchError(f"the URL did not return a readable image ({type(exc).__name__})") from None
    return image.convert("RGB")
