"""Every name of a request stays byte-identical across releases (records and dedupe keys survive a deploy)."""

from __future__ import annotations

import pytest

from jobs.delivery import webhook_id
from jobs.media import legacy_media_name, media_name
from jobs.store import Record, delivery_job_id, job_id_for, record_key, request_digest, target_claim_key

# Computed by the release before names moved into one module; never recompute them.
PINNED = [
    (
        "",
        "game:42.1",
        "3bff0e6f52a10589ab1168df961cde33a456fd5d",
        "b710dcb48417c990452a4bdfd0cf0f2241824977",
        "86760d992918a517630ef98cae0d860fa7b80d1f",
    ),
    (
        "key-abc",
        "r-1",
        "c88a0205ceb44cb35fbd7d44057f8c52729dcff1",
        "207db220b43d1fc0789f8fa5e8d8f9aa4007cd2b",
        "dd8337139f62d53a5bcff4a8d6b7d0ee0d7a7bfe",
    ),
    (
        "ключ",
        "запрос/ü 1",
        "e4dbc283614bb89a164d88578de5ba6e52358dcf",
        "4320cb3f3ea23380f7371cfa2c79c5e5789abafb",
        "e4d2a0691b8457c7a10cb249e479b6b1e15d67cb",
    ),
    (
        "",
        "",
        "6e340b9cffb37a989ca544e6bb780a2c78901d3f",
        "a32321d2f158a258df782bc9d66fea0f855dd445",
        "efdcd0ae750ea68324b00e27864901bbbfb6eb38",
    ),
]
MEDIA_SECRET = "s3cret"


@pytest.mark.parametrize(("owner", "request_id", "digest", "legacy_media", "keyed_media"), PINNED)
def test_request_names_are_pinned(
    owner: str, request_id: str, digest: str, legacy_media: str, keyed_media: str
) -> None:
    key = record_key(owner, request_id)
    assert request_digest(owner, request_id) == digest
    assert key == f"i2v:req:{digest}"
    assert job_id_for(owner, request_id) == f"i2v-{digest}"
    assert delivery_job_id(key, 1) == f"i2v-cb-{digest}-1"
    assert delivery_job_id(key, 3) == f"i2v-cb-{digest}-3"
    assert webhook_id(Record(request_id=request_id, image_url="x", owner=owner)) == f"msg_{digest}"
    assert legacy_media_name(owner, request_id) == legacy_media
    assert media_name(MEDIA_SECRET, owner, request_id) == keyed_media


def test_target_claim_keys_are_pinned() -> None:
    assert (
        target_claim_key("http://127.0.0.1:9/cb", "game:42.1") == "i2v:target:62e5f8fdca43ddea1bdac371ed8d5c2a2d671543"
    )
    assert (
        target_claim_key("https://game.example/r/{request_id}", "запрос")
        == "i2v:target:63af7a94e6663f7035b3cd1d1ac0aa54f3f483ed"
    )
