"""Offline stand-ins for the providers, honestly named: no model runs here.

``LocalCaptioner`` describes the image from its own properties (size, orientation, brightness,
dominant colours). ``LocalVideo`` makes a real MP4 from the still image with a slow zoom and pan,
using Pillow for the frames and the ffmpeg binary that the ``imageio-ffmpeg`` package ships.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
import threading
from pathlib import Path

import imageio_ffmpeg
from PIL import Image, ImageStat

from config import Settings
from jobs.clients.pika import VideoState
from jobs.errors import CaptionFailed, GenerationFailed
from jobs.fetch import FetchError, fetch, open_image
from jobs.heavy import HeavySteps
from jobs.media import MediaStore
from jobs.titles import title_from_prompt

NAMED_COLOURS: dict[str, tuple[int, int, int]] = {
    "black": (15, 15, 15),
    "white": (245, 245, 245),
    "grey": (128, 128, 128),
    "red": (200, 35, 35),
    "orange": (240, 140, 30),
    "yellow": (240, 215, 50),
    "green": (50, 160, 70),
    "olive": (110, 120, 50),
    "teal": (20, 130, 130),
    "sky blue": (125, 185, 235),
    "blue": (40, 80, 200),
    "navy": (20, 30, 85),
    "purple": (125, 55, 165),
    "pink": (240, 135, 185),
    "brown": (120, 75, 40),
    "beige": (225, 205, 170),
}
#: Longest side of a local video, in pixels: enough to look at, quick to encode.
VIDEO_SIDE = 720
#: Seconds an encode may take before the encoder is killed (a few seconds is usual).
RENDER_TIMEOUT = 120.0


def nearest_colour(rgb: tuple[int, int, int]) -> str:
    """The name of the named colour closest to ``rgb``."""
    return min(NAMED_COLOURS, key=lambda name: sum((a - b) ** 2 for a, b in zip(NAMED_COLOURS[name], rgb, strict=True)))


def describe(image: Image.Image) -> str:
    """A prompt from what the pixels show: light, shape, size and the main colours."""
    width, height = image.size
    ratio = width / height
    shape = "landscape" if ratio > 1.1 else "portrait" if ratio < 0.9 else "square"
    brightness = ImageStat.Stat(image.convert("L")).mean[0]
    light = "dark" if brightness < 60 else "dim" if brightness < 110 else "bright" if brightness > 180 else "softly lit"
    small = image.resize((64, 64)).quantize(colors=5)
    palette = small.getpalette() or []
    counts = sorted(small.getcolors() or [], reverse=True)
    names: list[str] = []
    for _, index in counts:
        name = nearest_colour(tuple(palette[index * 3 : index * 3 + 3]))  # type: ignore[arg-type]
        if name not in names:
            names.append(name)
    names = names[:3]
    colours = names[0] if len(names) == 1 else ", ".join(names[:-1]) + f" and {names[-1]}"
    return f"a {light} {shape} image ({width}x{height}) in {colours}, with a slow cinematic zoom"


class ImageSource:
    """Downloads images under the URL rules, ``IMAGE_MAX_BYTES``, the HTTP timeouts and ``DOWNLOAD_DEADLINE``."""

    def __init__(self, settings: Settings, heavy: HeavySteps | None = None) -> None:
        self.settings = settings
        self.heavy = heavy

    def load(self, url: str, failure: type[Exception]) -> Image.Image:
        """Fetch and decode the image at ``url``; ``failure`` is raised with the reason."""
        s = self.settings
        # Download and decode hold the whole picture in memory: one of the process's heavy steps.
        with self.heavy.turn() if self.heavy else contextlib.nullcontext():
            try:
                data = fetch(
                    url,
                    max_bytes=s.image_max_bytes,
                    timeout=(s.http_connect_timeout, s.http_read_timeout),
                    deadline=s.download_deadline,
                    allowlist=s.image_host_allowlist,
                )
                return open_image(data)
            except FetchError as exc:
                raise failure(str(exc)) from None


class LocalCaptioner:
    """Captions from image properties; the offline replacement of the CLIP Interrogator."""

    name = "local"

    def __init__(self, settings: Settings, images: ImageSource) -> None:
        self.images = images

    def describe_url(self, url: str) -> str:
        """Download the image and describe it."""
        return describe(self.images.load(url, CaptionFailed))


class LocalVideo:
    """Renders a zoom-and-pan MP4 of the still image into the media store."""

    name = "local"

    def __init__(self, settings: Settings, images: ImageSource, media: MediaStore) -> None:
        self.settings = settings
        self.images = images
        self.media = media

    def first_poll_after(self) -> float:
        """The video exists once submission returns: look at once."""
        return 0.0

    def submit(self, image_url: str, prompt: str, media_name: str = "") -> str:
        """Make the video now; its job id is the media name."""
        image = self.images.load(image_url, GenerationFailed)
        # Frames, the encoder and the finished video in memory: one of the process's heavy steps.
        with self.images.heavy.turn() if self.images.heavy else contextlib.nullcontext():
            video = render(image, self.settings.local_video_seconds, self.settings.local_video_fps)
            self.media.save(media_name, video)
        return media_name

    def poll(self, job_id: str, media_name: str = "", prompt: str | None = None) -> VideoState:
        """A local video is finished as soon as it is stored."""
        if not self.media.exists(job_id):
            raise GenerationFailed("the local video is gone from the media store")
        return VideoState(
            status="finished", url=self.media.url(job_id), progress=100, title=title_from_prompt(prompt or "")
        )


def render(image: Image.Image, seconds: float, fps: int) -> bytes:
    """An H.264 MP4 of ``image`` with a gentle zoom-in and a pan across, ``seconds`` long."""
    scale = VIDEO_SIDE / max(image.size)
    width = max(2, int(image.width * scale) // 2 * 2)  # H.264 with yuv420p needs even sides
    height = max(2, int(image.height * scale) // 2 * 2)
    # Render from a larger copy so the zoomed frames stay sharp.
    source = image.resize((int(width * 1.25), int(height * 1.25)), Image.Resampling.LANCZOS)
    frames = max(1, round(seconds * fps))
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "video.mp4"
        command = [
            imageio_ffmpeg.get_ffmpeg_exe(),
            *("-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24"),
            *("-s", f"{width}x{height}", "-r", str(fps), "-i", "-", "-an"),
            *("-c:v", "libx264", "-preset", "veryfast", "-pix_fmt", "yuv420p", "-movflags", "+faststart"),
            # Two encoder threads, not one per core: a dyno counts every thread against its task limit.
            *("-threads", "2"),
            str(out),
        ]
        proc = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        assert proc.stdin is not None
        # A stuck encoder must not hold its worker thread (and a heavy-step slot) for ever.
        watchdog = threading.Timer(RENDER_TIMEOUT, proc.kill)
        watchdog.daemon = True
        watchdog.start()
        try:
            for n in range(frames):
                t = n / max(1, frames - 1)
                zoom = 1.0 + 0.2 * t  # 1.0x to 1.2x of the output frame
                crop_w, crop_h = source.width / (1.25 * zoom), source.height / (1.25 * zoom)
                left = (source.width - crop_w) * (0.2 + 0.6 * t)  # pan from left to right
                top = (source.height - crop_h) / 2
                frame = source.resize(
                    (width, height), Image.Resampling.BILINEAR, box=(left, top, left + crop_w, top + crop_h)
                )
                proc.stdin.write(frame.tobytes())
            proc.stdin.close()
            errors = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
            code = proc.wait()
        except BrokenPipeError:
            proc.kill()
            code, errors = proc.wait(), "the encoder stopped reading"
        finally:
            watchdog.cancel()
        if code != 0:
            raise GenerationFailed(f"ffmpeg could not encode the video: {errors[-300:]}")
        return out.read_bytes()
