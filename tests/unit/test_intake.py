"""The submit path's quick reading agrees with the schemas: same answer, or it defers to them."""

from __future__ import annotations

import json
from typing import Any

import pytest
from flask import Flask
from marshmallow import ValidationError

from config import settings_from
from i2v_app.intake import quick_body
from i2v_app.schemas import SubmitSchema

IMAGE = "https://cdn.example.com/a.jpg"
BODIES: list[Any] = [
    {"image_id": IMAGE},
    {"image_id": f"  {IMAGE}  "},
    {"image_id": "https:&#x2F;&#x2F;cdn.example.com&#x2F;a.jpg?x&#x3D;1&amp;y&#x3D;2"},
    {"image_id": IMAGE, "callback_url": None},
    {"image_id": IMAGE, "callback_url": "https://hooks.example.com/cb"},
    {"image_id": IMAGE, "callback_url": "https://cb.internal/hook"},
    {"image_id": IMAGE, "callback_url": "http://127.0.0.1:9000/cb"},
    {"image_id": IMAGE, "callback_url": 7},
    {"image_id": IMAGE, "unknown": {"nested": [1, 2]}},
    {"image_id": "http://images.internal/a.png"},
    {"image_id": "http://10.0.0.7/a.png"},
    {"image_id": "http://[::ffff:127.0.0.1]/a.png"},
    {"image_id": "http://2130706433/a.png"},
    {"image_id": "https://user:pw@cdn.example.com/a.jpg"},
    {"image_id": "https://cdn.example.com:0/a.jpg"},
    {"image_id": "ftp://cdn.example.com/a.jpg"},
    {"image_id": "https://cdn.example.com/a b.jpg"},
    {"image_id": "https://x/" + "a" * 2050},
    {"image_id": ""},
    {"image_id": "   "},
    {"image_id": None},
    {"image_id": 3},
    {"image_id": [IMAGE]},
    {},
    [IMAGE],
    IMAGE,
    None,
]


def schema_answer(data: Any) -> dict[str, Any] | None:
    """What SubmitSchema loads, None when it refuses."""
    try:
        return SubmitSchema().load(data)
    except ValidationError:
        return None


@pytest.mark.parametrize("data", BODIES, ids=range(len(BODIES)))
def test_quick_reading_matches_the_schema_or_defers(data: Any) -> None:
    expected = schema_answer(data)
    quick = quick_body(json.dumps(data).encode(), (), ())
    if expected is None:
        assert quick is None
    elif quick is not None:
        assert quick == {"callback_url": None, **expected}


def test_an_ordinary_submission_takes_the_quick_path() -> None:
    for data in BODIES[:5]:
        assert quick_body(json.dumps(data).encode(), (), ()) is not None


def test_allowlists_are_honoured_the_same_way() -> None:
    app = Flask(__name__)
    settings = settings_from({"IMAGE_HOST_ALLOWLIST": "images.internal", "CALLBACK_URL_ALLOWLIST": "cb.internal"})
    app.extensions["i2v"] = {"settings": settings}
    data = {"image_id": "http://images.internal/a.png", "callback_url": "https://cb.internal/hook"}
    with app.app_context():
        expected = SubmitSchema().load(data)
    quick = quick_body(json.dumps(data).encode(), settings.image_host_allowlist, settings.callback_url_allowlist)
    assert quick == expected


@pytest.mark.parametrize(
    "raw",
    [b"", b"{", b'{"image_id": "https://cdn.example.com/a.jpg"', "{}".encode("utf-16"), b"\xff\xfe", b"[" * 5000],
)
def test_what_is_not_plain_json_goes_to_the_schema_path(raw: bytes) -> None:
    assert quick_body(raw, (), ()) is None
