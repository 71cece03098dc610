"""Every name of a request stays byte-identical across releases (records and dedupe keys survive a deploy)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from jobs.identity import RequestIdentity
from jobs.store import Record

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
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(("owner", "request_id", "digest", "legacy_media", "keyed_media"), PINNED)
def test_request_names_are_pinned(
    owner: str, request_id: str, digest: str, legacy_media: str, keyed_media: str
) -> None:
    identity = RequestIdentity(owner, request_id)
    assert identity.digest == digest
    assert identity.record_key == f"i2v:req:{digest}"
    assert identity.job_id == f"i2v-{digest}"
    assert identity.delivery_job_id(1) == f"i2v-cb-{digest}-1"
    assert identity.delivery_job_id(3) == f"i2v-cb-{digest}-3"
    assert identity.webhook_id == f"msg_{digest}"
    assert identity.legacy_media_name == legacy_media
    assert identity.media_name(MEDIA_SECRET) == keyed_media
    record = Record(request_id=request_id, image_url="x", owner=owner)
    assert record.identity == identity
    assert record.key == identity.record_key


def test_target_claim_keys_are_pinned() -> None:
    assert (
        RequestIdentity("key-abc", "game:42.1").target_claim_key("http://127.0.0.1:9/cb")
        == RequestIdentity("", "game:42.1").target_claim_key("http://127.0.0.1:9/cb")
        == "i2v:target:62e5f8fdca43ddea1bdac371ed8d5c2a2d671543"
    )
    assert (
        RequestIdentity("", "запрос").target_claim_key("https://game.example/r/{request_id}")
        == "i2v:target:63af7a94e6663f7035b3cd1d1ac0aa54f3f483ed"
    )


def test_the_identity_is_not_written_into_the_record() -> None:
    record = Record(request_id="r-1", image_url="x")
    assert record.identity.digest
    assert "identity" not in record.to_redis()


def test_the_web_loads_names_and_states_without_worker_code() -> None:
    """The web process imports the identity and the states, never the pipeline, provider clients or requests."""
    code = (
        "import sys, i2v_app, i2v_app.api, i2v_app.cli, i2v_app.lifecycle, i2v_app.playground, i2v_app.uploads\n"
        "print(' '.join(sorted(m for m in sys.modules if m.split('.')[0] in ('jobs', 'requests', 'replicate'))))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT).stdout
    loaded = set(out.split())
    assert {"jobs.identity", "jobs.states", "jobs.store"} <= loaded
    assert loaded <= {
        "jobs",
        "jobs.backends",
        "jobs.identity",
        "jobs.states",
        "jobs.store",
        "jobs.urlpolicy",
        "jobs.metrics",
        "jobs.media",
        "jobs.images",
    }
