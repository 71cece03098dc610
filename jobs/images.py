"""Decoding untrusted images: the formats and pixel cap every image the service reads goes through.

Both the worker (downloads, for the local backends) and the web process (uploads) decode images
that anyone may have made, so both use the same rules: only PNG, JPEG, WebP and GIF are ever
handed to Pillow, and a picture over :data:`MAX_PIXELS` is refused before its pixels are decoded.
Only Pillow and the standard library are needed, so the web process may import this module.
"""

from __future__ import annotations

import contextlib
import io
import warnings
from dataclasses import dataclass

from PIL import Image, ImageOps, UnidentifiedImageError

#: Largest picture decoded (about 8K x 5K); bigger ones are refused before decoding.
MAX_PIXELS = 40_000_000
#: The only image formats decoded: Pillow is never asked to open anything else (EPS would run Ghostscript).
IMAGE_FORMATS = ("PNG", "JPEG", "WEBP", "GIF")
#: Content type and file extension of each format, as the service serves them.
CONTENT_TYPES = {"PNG": "image/png", "JPEG": "image/jpeg", "WEBP": "image/webp", "GIF": "image/gif"}
EXTENSIONS = {"PNG": "png", "JPEG": "jpg", "WEBP": "webp", "GIF": "gif"}
#: Encoder quality of the lossy formats: high, since a video model works from the result.
QUALITY = {"JPEG": 92, "WEBP": 90}


class BadImage(ValueError):
    """The bytes are not an image the service reads; the message says why."""


def decode(data: bytes) -> Image.Image:
    """Decode ``data`` as PNG, JPEG, WebP or GIF with its pixels loaded.

    Raises:
        BadImage: another format, a damaged file, or more than :data:`MAX_PIXELS` pixels.
    """
    try:
        with warnings.catch_warnings():
            # A small file that decodes to a huge picture is refused, not decoded.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            if image.width * image.height > MAX_PIXELS:
                raise Image.DecompressionBombError(f"{image.width}x{image.height} pixels")
            image.load()
    except Image.DecompressionBombError as exc:
        raise BadImage(f"the image is larger than {MAX_PIXELS} pixels ({exc})") from None
    except (UnidentifiedImageError, OSError, Image.DecompressionBombWarning, SyntaxError, ValueError) as exc:
        raise BadImage(f"not a readable PNG, JPEG, WebP or GIF image ({type(exc).__name__})") from None
    return image


@dataclass(frozen=True)
class CleanImage:
    """An image re-encoded from its pixels alone: no EXIF, GPS, XMP, comments or ICC profile."""

    data: bytes
    format: str
    width: int
    height: int

    @property
    def content_type(self) -> str:
        """The MIME type it is served with."""
        return CONTENT_TYPES[self.format]

    @property
    def extension(self) -> str:
        """The file extension of its format."""
        return EXTENSIONS[self.format]


def reencode(data: bytes) -> CleanImage:
    """Decode ``data`` and encode its pixels again in the same format, with no metadata at all.

    The EXIF orientation is applied first, so the picture still looks the way its camera meant it
    to once the tag is gone. A GIF keeps its first frame: the service animates still images.

    Raises:
        BadImage: see :func:`decode`.
    """
    image = decode(data)
    kind = image.format or "PNG"
    # A malformed EXIF block leaves the picture as it is: its pixels are fine, and the block goes anyway.
    with contextlib.suppress(OSError, ValueError, SyntaxError):
        image = ImageOps.exif_transpose(image)
    mode = "RGB" if kind == "JPEG" else ("RGBA" if image.mode in ("RGBA", "LA", "PA", "P") else "RGB")
    # Each step replaces the last, so at most two copies of the pixels are held at once (the
    # pixel cap allows 40 million, which is a lot of memory for a web worker).
    image = image.convert(mode)
    # A fresh image holds only pixels: nothing of the original's info (EXIF, XMP, text chunks,
    # ICC profile) can ride along into the encoder.
    fresh = Image.new(mode, image.size)
    fresh.paste(image)
    del image
    out = io.BytesIO()
    fresh.save(out, format=kind, **({"quality": QUALITY[kind]} if kind in QUALITY else {}))
    return CleanImage(out.getvalue(), kind, fresh.width, fresh.height)
