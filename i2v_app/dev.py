"""Development conveniences (``I2V_ENV=development`` only): a callback receiver and a sample image.

``make run`` points ``CALLBACK_API_URL`` at ``/dev/callbacks/{request_id}`` when no GAME key is set,
so a newcomer sees every callback at ``GET /dev/callbacks`` without any account. The receiver can
be steered: ``POST /dev/callbacks/answers`` with ``{"status": 500, "count": 2}`` answers the next two
deliveries with 500 (retried) and 410 fails a callback at once, so retries and redelivery can be
seen without a misbehaving receiver of one's own.
"""

from __future__ import annotations

import io
import json
from typing import Any

from flask import Blueprint, Response, jsonify, request, send_file
from PIL import Image, ImageDraw

from i2v_app import services
from i2v_app.errors import problem
from jobs.store import now_iso

dev = Blueprint("dev", __name__, url_prefix="/dev")

CALLBACKS_KEY = "i2v:dev:callbacks"
KEEP = 1000
#: The steered answer: a hash of the status to answer with and how many deliveries are left.
ANSWERS_KEY = "i2v:dev:answers"
MAX_STEERED = 1000

# Take one steered answer, atomically: several workers may deliver at once.
_TAKE_ANSWER = """
local status = redis.call('HGET', KEYS[1], 'status')
if not status then return 0 end
if redis.call('HINCRBY', KEYS[1], 'count', -1) <= 0 then redis.call('DEL', KEYS[1]) end
return tonumber(status)
"""
#: Headers worth showing; everything else is transport noise.
SHOWN_HEADERS = ("content-type", "user-agent", "webhook-id", "webhook-timestamp", "webhook-signature")


@dev.post("/callbacks/<request_id>")
def receive(request_id: str) -> tuple[Response, int]:
    """Receive a callback, as GAME would (or as it was told to answer), and keep it for ``GET /dev/callbacks``."""
    steered = int(services.redis().eval(_TAKE_ANSWER, 1, ANSWERS_KEY))
    answer = steered or 200
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
        "answered": answer,
    }
    with services.redis().pipeline() as pipe:
        pipe.rpush(CALLBACKS_KEY, json.dumps(entry))
        pipe.ltrim(CALLBACKS_KEY, -KEEP, -1)
        pipe.execute()
    return jsonify({"ok": not steered, "steered": bool(steered)}), answer


def current_answers() -> dict[str, Any]:
    """What the receiver was told: ``{"status": int | None, "count": int}``."""
    status, count = services.redis().hmget(ANSWERS_KEY, "status", "count")
    return {"status": int(status) if status else None, "count": int(count) if status and count else 0}


@dev.post("/callbacks/answers")
def steer() -> tuple[Response, int] | Response:
    """Answer the next ``count`` deliveries with ``status``: ``{"status": 410, "count": 1}``.

    A callback for the request id ``answers`` arrives here too (the literal route wins); it is
    told apart by its ``webhook-id`` header and received like any other.
    """
    if "webhook-id" in request.headers:
        return receive("answers")
    data = request.get_json(silent=True)
    status = data.get("status") if isinstance(data, dict) else None
    count = data.get("count", 1) if isinstance(data, dict) else None
    if type(status) is not int or not 200 <= status <= 599:
        return problem(422, "status must be an HTTP status code from 200 to 599", errors={"status": ["invalid"]})
    if type(count) is not int or not 1 <= count <= MAX_STEERED:
        return problem(422, f"count must be a whole number from 1 to {MAX_STEERED}", errors={"count": ["invalid"]})
    with services.redis().pipeline() as pipe:
        pipe.delete(ANSWERS_KEY)
        pipe.hset(ANSWERS_KEY, mapping={"status": status, "count": count})
        pipe.execute()
    return jsonify(current_answers())


@dev.get("/callbacks/answers")
def show_answers() -> Response:
    """What the receiver was told to answer, and for how many more deliveries."""
    return jsonify(current_answers())


@dev.delete("/callbacks/answers")
def reset_answers() -> Response:
    """Answer every delivery with 200 again."""
    services.redis().delete(ANSWERS_KEY)
    return jsonify(current_answers())


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
