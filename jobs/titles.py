"""The callback title, derived from the video URL as GAME expects it."""

from __future__ import annotations

import re
from urllib.parse import unquote, urlsplit

DEFAULT_TITLE = "Generated Video"
_SEED_SUFFIX = re.compile(r"_seed\d+$")


def title_from_video_url(url: str) -> str:
    """Turn ``.../Plane_fly_seed3183047765.mp4`` into ``Plane fly``.

    The last path segment loses ``.mp4`` and a trailing ``_seed<digits>``, is percent-decoded, has
    ``_`` turned into spaces, is cut before its first comma and is capitalized. A URL whose path
    does not end in an ``.mp4`` segment gives ``Generated Video``.
    """
    segment = urlsplit(url or "").path.rsplit("/", 1)[-1]
    if not segment.endswith(".mp4"):
        return DEFAULT_TITLE
    stem = _SEED_SUFFIX.sub("", segment[: -len(".mp4")])
    title = unquote(stem).replace("_", " ").split(",", 1)[0]
    return title.capitalize() if title else DEFAULT_TITLE


def title_from_prompt(prompt: str) -> str:
    """A title for a video the service made or keeps itself: the prompt's first words, capitalized."""
    words = re.findall(r"[^\W\d_]+", prompt.split("(")[0])
    words = [w for w in words if w.lower() not in ("a", "an", "the")][:4]
    return " ".join(words).capitalize() or DEFAULT_TITLE
