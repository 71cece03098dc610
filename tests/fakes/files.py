"""A static file server on 127.0.0.1: images, non-images, oversized and slow bodies, redirects, videos.

It stands in for the image hosts and provider CDNs the worker downloads from. Every path is set up
by the test (``put``, ``redirect``, ``error``); every GET is recorded.
"""

from __future__ import annotations

import io
import re
import subprocess
import tempfile
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

import imageio_ffmpeg
from PIL import Image, ImageDraw


@dataclass
class Entry:
    """What one path answers."""

    body: bytes = b""
    content_type: str = "application/octet-stream"
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    #: Seconds to wait before the status line (a read timeout on the client's side).
    delay: float = 0.0
    #: Send the body with chunked transfer encoding, so no Content-Length announces its size.
    chunked: bool = False
    #: A Content-Length to announce instead of the real one (only the header: the body is sent as is).
    declared_length: int | None = None
    #: Seconds between 100-byte pieces of the body: a slow drip that never trips a read timeout.
    drip: float = 0.0


class FileServer:
    """A real ``ThreadingHTTPServer`` on 127.0.0.1 serving what the test put there."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.entries: dict[str, Entry] = {}
        self.hits: list[str] = []
        #: The request headers of each GET, in order (lower-case names).
        self.headers: list[dict[str, str]] = []
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Self:
        """Serve in a daemon thread on a free port."""
        server = _Server(("127.0.0.1", 0), _Handler)
        server.files = self
        self._server = server
        self._thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def port(self) -> int:
        """The bound port."""
        assert self._server is not None
        return self._server.server_address[1]

    def url(self, path: str, host: str = "127.0.0.1") -> str:
        """The absolute URL of ``path`` on this server."""
        return f"http://{host}:{self.port}{path}"

    def reset(self) -> None:
        """Forget every path and every recorded request."""
        with self.lock:
            self.entries.clear()
            self.hits.clear()
            self.headers.clear()

    def put(self, path: str, body: bytes, content_type: str = "application/octet-stream", **options: Any) -> str:
        """Serve ``body`` at ``path``; returns its URL."""
        with self.lock:
            self.entries[path] = Entry(body=body, content_type=content_type, **options)
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        """Answer ``path`` with a redirect to ``location``; returns its URL."""
        return self.put(path, b"", "text/plain", status=status, headers={"Location": location})

    def error(self, path: str, status: int) -> str:
        """Answer ``path`` with an error status; returns its URL."""
        return self.put(path, f"error {status}".encode(), "text/plain", status=status)

    def hits_for(self, path: str) -> int:
        """How many GETs ``path`` received."""
        with self.lock:
            return self.hits.count(path)

    def _lookup(self, path: str, headers: dict[str, str]) -> Entry | None:
        with self.lock:
            self.hits.append(path)
            self.headers.append(headers)
            return self.entries.get(path)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    files: FileServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Clients that give up early (size caps, timeouts) are part of the tests.
        pass


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        headers = {name.lower(): value for name, value in self.headers.items()}
        entry = self.server.files._lookup(urlsplit(self.path).path, headers)
        if entry is None:
            entry = Entry(body=b"not found", content_type="text/plain", status=404)
        if entry.delay:
            time.sleep(entry.delay)
        try:
            self.send_response(entry.status)
            self.send_header("Content-Type", entry.content_type)
            for key, value in entry.headers.items():
                self.send_header(key, value)
            if entry.chunked:
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()
                view = memoryview(entry.body)
                for start in range(0, len(view), 16 * 1024):
                    chunk = view[start : start + 16 * 1024]
                    self.wfile.write(f"{len(chunk):x}\r\n".encode() + bytes(chunk) + b"\r\n")
                self.wfile.write(b"0\r\n\r\n")
            else:
                length = len(entry.body) if entry.declared_length is None else entry.declared_length
                self.send_header("Content-Length", str(length))
                self.end_headers()
                if entry.drip:
                    for start in range(0, len(entry.body), 100):
                        self.wfile.write(entry.body[start : start + 100])
                        self.wfile.flush()
                        time.sleep(entry.drip)
                else:
                    self.wfile.write(entry.body)
            self.wfile.flush()
        except OSError:
            self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


# -- generated content -----------------------------------------------------------------------------


def image_bytes(
    size: tuple[int, int] = (320, 200), colour: tuple[int, int, int] = (200, 35, 35), fmt: str = "PNG"
) -> bytes:
    """A one-colour image in ``fmt`` (PNG or JPEG)."""
    buffer = io.BytesIO()
    Image.new("RGB", size, colour).save(buffer, format=fmt)
    return buffer.getvalue()


def scene_bytes(size: tuple[int, int] = (320, 200), fmt: str = "PNG") -> bytes:
    """A picture with structure (stripes and a disc), so camera motion shows in the frames."""
    image = Image.new("RGB", size, (40, 80, 200))
    draw = ImageDraw.Draw(image)
    width, height = size
    for x in range(0, width, max(4, width // 10)):
        draw.rectangle((x, 0, x + max(2, width // 20), height), fill=(240, 215, 50))
    draw.ellipse((width // 3, height // 3, width // 3 + height // 3, 2 * height // 3), fill=(200, 35, 35))
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def mp4_bytes(seconds: float = 1.0, fps: int = 8, size: str = "64x48") -> bytes:
    """A small H.264 MP4 of a test pattern, made with the ffmpeg that ships in ``imageio-ffmpeg``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "clip.mp4"
        subprocess.run(
            [
                *(imageio_ffmpeg.get_ffmpeg_exe(), "-loglevel", "error", "-y", "-f", "lavfi"),
                *("-i", f"testsrc=size={size}:rate={fps}", "-t", str(seconds)),
                *("-c:v", "libx264", "-pix_fmt", "yuv420p", str(out)),
            ],
            check=True,
            capture_output=True,
        )
        return out.read_bytes()


@dataclass(frozen=True)
class VideoInfo:
    """What ffmpeg reads from a video: codec, pixel format, size, frame rate, duration and the frames."""

    codec: str
    pix_fmt: str
    width: int
    height: int
    fps: float
    duration: float
    frames: list[bytes]


_VIDEO_LINE = re.compile(r"Stream #\S+.*?: Video: (.*)")
_DURATION = re.compile(r"Duration: (\d+):(\d+):([\d.]+)")


def probe(data: bytes) -> VideoInfo:
    """Read an MP4 with ffmpeg: the ``-i`` report for the stream, then every frame decoded as RGB."""
    ffmpeg = imageio_ffmpeg.get_ffmpeg_exe()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "video.mp4"
        path.write_bytes(data)
        report = subprocess.run([ffmpeg, "-hide_banner", "-i", str(path)], capture_output=True, text=True).stderr
        line, duration = _VIDEO_LINE.search(report), _DURATION.search(report)
        assert line and duration, f"ffmpeg could not read the video:\n{report}"
        # e.g. "h264 (High) (avc1 / 0x31637661), yuv420p(progressive), 720x450 [SAR 1:1 DAR 8:5], 8 fps, ..."
        stream = line[1]
        size = re.search(r", (\d+)x(\d+)\b", stream)
        fps = re.search(r"([\d.]+) fps", stream)
        pix_fmt = re.search(r"\), (\w+)[(,]", stream)
        assert size and fps and pix_fmt, f"unexpected stream description: {stream}"
        width, height = int(size[1]), int(size[2])
        raw = subprocess.run(
            [ffmpeg, "-loglevel", "error", "-i", str(path), "-f", "rawvideo", "-pix_fmt", "rgb24", "-"],
            capture_output=True,
            check=True,
        ).stdout
    frame = width * height * 3
    hours, minutes, seconds = duration.groups()
    return VideoInfo(
        codec=stream.split()[0],
        pix_fmt=pix_fmt[1],
        width=width,
        height=height,
        fps=float(fps[1]),
        duration=int(hours) * 3600 + int(minutes) * 60 + float(seconds),
        frames=[raw[i : i + frame] for i in range(0, len(raw), frame)],
    )
