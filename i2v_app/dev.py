"""Development conveniences (``I2V_ENV=development`` only): a callback receiver and a sample image.

``make run`` points ``CALLBACK_API_URL`` at ``/dev/callbacks/{request_id}`` when no GAME key is set,
so a newcomer sees every callback at ``GET /dev/callbacks`` without any account.
"""

from __future__ import annotations

import io
import json
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file
from PIL import Image, ImageDraw

from i2v_app import services
from jobs.store import now_iso

dev = Blueprint("dev", __name__, url_prefix="/dev")

CALLBACKS_KEY = "i2v:dev:callbacks"
KEEP = 1000
#: Headers worth showing; everything else is transport noise.
SHOWN_HEADERS = ("content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature")


@dev.post("/callbacks/<request_id>")
def receive(request_id: str) -> tuple[Response, int]:
    """Receive a callback, as GAME would, and keep it for ``GET /dev/callbacks``."""
    raw = request.get_data(as_text=True)
    try:
        body: Any = json.loads(raw)
    except ValueError:
        body = raw
    entry = {
        "request_id": request_id,
        "received_at": now_iso(),
        "headers": {k: v for k, v in request.headers.items() if k.lower() in SHOWN_HEADERS},
        "api_key_sent": "x-api-key" in request.headers,
        "body": body,
    }
    with services.redis().pipeline() as pipe:
        pipe.rpush(CALLBACKS_KEY, json.dumps(entry))
        pipe.ltrim(CALLBACKS_KEY, -KEEP, -1)
        pipe.execute()
    return jsonify({"ok": True}), 200


@dev.get("/callbacks")
def deliveries() -> Response:
    """Every callback received so far (the last 1,000), oldest first."""
    return jsonify([json.loads(item) for item in services.redis().lrange(CALLBACKS_KEY, 0, -1)])


@dev.get("/sample.png")
def sample_image() -> Response:
    """A generated picture to try the service with, no internet needed."""
    image = Image.new("RGB", (960, 640))
    draw = ImageDraw.Draw(image)
    for y in range(640):  # a sky from deep blue to warm orange
        t = y / 639
        draw.line([(0, y), (960, y)], fill=(int(30 + 210 * t), int(60 + 90 * t), int(160 - 110 * t)))
    draw.ellipse((600, 120, 760, 280), fill=(255, 220, 120))
    draw.polygon([(0, 640), (260, 380), (520, 640)], fill=(40, 50, 70))
    draw.polygon([(380, 640), (700, 330), (960, 640)], fill=(25, 35, 55))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    buffer.seek(0)
    return send_file(buffer, mimetype="image/png", max_age=3600)
