"""The playground at ``/playground``: a page to upload an image, follow a request and play its video.

The page is one template and a few static files from this package (no build step, no CDN). It talks
to the public API from the browser with the visitor's own API key, so it adds no privileges: the web
process fetches nothing for it. Its Content-Security-Policy allows scripts and styles from the
service only, and videos from the service and the providers' video hosts.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from flask import Blueprint, Response, make_response, render_template

from config import Settings
from i2v_app import services

playground = Blueprint(
    "playground",
    __name__,
    template_folder="templates",
    static_folder="static/playground",
    static_url_path="/playground/static",
)

#: Where providers' videos are played from. Pika's ``resultUrl`` lives on its CDN (see the Pika
#: contract); Replicate's outputs are kept by the service and served under ``PUBLIC_BASE_URL``.
PROVIDER_VIDEO_ORIGINS = ("https://cdn.pika.art",)


def origin(url: str) -> str | None:
    """The ``scheme://host[:port]`` of ``url``, or None when it has none."""
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return None
    return f"{parts.scheme}://{parts.netloc}"


def content_security_policy(settings: Settings) -> str:
    """The page's policy: everything from the service, videos also from the providers' hosts.

    Thumbnails of remote images are any ``https:`` image (the browser fetches them, never the web
    process); ``blob:`` is the preview of a file the visitor picked before it is uploaded.
    """
    media = ["'self'"]
    own = origin(settings.public_base_url) if settings.public_base_url else None
    # Behind a proxy the service's public address may differ from the one the page was loaded from.
    for extra in (own, *PROVIDER_VIDEO_ORIGINS):
        if extra and extra not in media:
            media.append(extra)
    images = ["'self'", "https:", "blob:"]
    if own and own not in images:
        images.append(own)
    return "; ".join(
        (
            "default-src 'self'",
            "script-src 'self'",
            "style-src 'self'",
            f"img-src {' '.join(images)}",
            f"media-src {' '.join(media)}",
            "connect-src 'self'",
            "object-src 'none'",
            "base-uri 'none'",
            "form-action 'none'",
            "frame-ancestors 'none'",
        )
    )


@playground.get("/playground")
def page() -> Response:
    """The playground page, with its security headers."""
    settings = services.settings()
    html = render_template(
        "playground.html",
        auth_required=not settings.auth_disabled,
        development=settings.development,
    )
    response = make_response(html)
    response.headers["Content-Security-Policy"] = content_security_policy(settings)
    response.headers["X-Content-Type-Options"] = "nosniff"
    # Request ids and image URLs in the page's address must not leak to image hosts.
    response.headers["Referrer-Policy"] = "no-referrer"
    response.headers["Cache-Control"] = "no-cache"
    return response
