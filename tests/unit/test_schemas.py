"""Input rules of the API: escaped URLs, request ids."""

import pytest
from marshmallow import ValidationError

from i2v_app.schemas import SubmitSchema, unescape_url, validate_request_id


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("https:&#x2F;&#x2F;cdn.example.com&#x2F;a.jpg", "https://cdn.example.com/a.jpg"),
        ("https://cdn.example.com/a.jpg?x&#x3D;1&amp;y&#x3D;2", "https://cdn.example.com/a.jpg?x=1&y=2"),
        ("https:&amp;#x2F;&amp;#x2F;cdn.example.com&amp;#x2F;a.jpg", "https://cdn.example.com/a.jpg"),
        ("https://cdn.example.com/a.jpg", "https://cdn.example.com/a.jpg"),
    ],
)
def test_unescape_url(given: str, expected: str) -> None:
    assert unescape_url(given) == expected


@pytest.mark.parametrize("value", ["a", "game:42.1", "01J9Z~x_y-z", "x" * 128, "0b5c8a9e-3f0e-4a7b-9f4e-2d1c0b9a8e7f"])
def test_valid_request_ids(value: str) -> None:
    validate_request_id(value)


@pytest.mark.parametrize("value", ["", "x" * 129, "a b", "a/b", "a\nb", "é", "a%2Fb", "<script>"])
def test_invalid_request_ids(value: str) -> None:
    with pytest.raises(ValidationError):
        validate_request_id(value)


@pytest.mark.parametrize(
    "body",
    [
        {},
        {"image_id": ""},
        {"image_id": 3},
        {"image_id": "not a url"},
        {"image_id": "ftp://x/a.jpg"},
        {"image_id": "https://"},
        {"image_id": "https://x/" + "a" * 2050},
    ],
)
def test_bad_image_ids(body: dict) -> None:
    with pytest.raises(ValidationError):
        SubmitSchema().load(body)
