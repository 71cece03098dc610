"""The documentation names every setting the service reads."""

from pathlib import Path

import pytest

from config import VARIABLES

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("document", ["README.md", ".env.example"])
def test_every_setting_is_documented(document: str) -> None:
    text = (ROOT / document).read_text()
    missing = sorted(name for name in VARIABLES if f"{name}" not in text)
    assert missing == [], f"{document} does not mention {missing}"
