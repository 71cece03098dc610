"""The names of a request: its record key, RQ job ids, webhook id, media names and target claim.

Every name of one request is derived here, from one digest of (owner, request id) computed once.
The recipes are part of the service's state: records, RQ jobs and receivers' dedupe keys made by an
earlier release carry these names, so they must never change (a test pins them). This module needs
only the standard library, so the web process may import it.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass, field

#: Prefix of a record's Redis key; the rest is the request's digest.
KEY_PREFIX = "i2v:req:"
#: Prefix of a claim on (callback URL, request id), which holds the key of the record that owns it.
TARGET_PREFIX = "i2v:target:"


def _sha40(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:40]


@dataclass(frozen=True)
class RequestIdentity:
    """One request's identity, (owner, request id), and every name derived from it.

    Attributes:
        owner: the API key that created the request (empty without authentication).
        request_id: the caller's own id.
        digest: a fixed-length, key-safe name for the pair (any id the caller chooses is safe in it).
    """

    owner: str
    request_id: str
    digest: str = field(init=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "digest", _sha40(f"{self.owner}\x00{self.request_id}"))

    @property
    def record_key(self) -> str:
        """The Redis key of the request's record."""
        return KEY_PREFIX + self.digest

    @property
    def job_id(self) -> str:
        """The RQ job id of the request's pipeline job (RQ ids allow only ``[A-Za-z0-9_-]``)."""
        return "i2v-" + self.digest

    def delivery_job_id(self, attempt: int) -> str:
        """The RQ job id of delivery attempt ``attempt`` (1-based) of the request's callback."""
        return f"i2v-cb-{self.digest}-{attempt}"

    @property
    def webhook_id(self) -> str:
        """The Standard Webhooks message id: the same for every attempt, the receiver's dedupe key."""
        return "msg_" + self.digest

    @property
    def legacy_media_name(self) -> str:
        """The video name of a request submitted before names were keyed (and stored in the record)."""
        return _sha40(f"media\x00{self.owner}\x00{self.request_id}")

    def media_name(self, secret: str) -> str:
        """The video's name (without extension): an HMAC under ``secret``, never guessable from the id.

        Owner and request id alone would not do: a key's digest (which configurations hold) and a
        guessable id would give the name away. The pipeline stores the name in the record when it
        makes it, so rotating the secret never changes the URL of a video already announced.
        """
        text = f"media\x00{self.owner}\x00{self.request_id}".encode()
        return hmac.new(secret.encode(), text, hashlib.sha256).hexdigest()[:40]

    def target_claim_key(self, target: str) -> str:
        """The Redis key of the request's claim on (callback URL ``target``, request id).

        Two owners may use one request id, but not at one callback target, so the claim leaves the
        owner out.
        """
        return TARGET_PREFIX + _sha40(f"{target}\x00{self.request_id}")


def delivery_job_id_for_key(key: str, attempt: int) -> str:
    """The RQ job id of a delivery attempt, from a record key alone (the delivery job's argument)."""
    return f"i2v-cb-{key.removeprefix(KEY_PREFIX)}-{attempt}"
