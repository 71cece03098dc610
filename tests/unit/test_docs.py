"""The documentation names every setting the service reads, and every status and stage a request has."""

import re
from enum import StrEnum
from pathlib import Path

import pytest

from config import VARIABLES
from jobs.states import CallbackStatus, Stage, Status

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("document", ["README.md", ".env.example"])
def test_every_setting_is_documented(document: str) -> None:
    text = (ROOT / document).read_text()
    missing = sorted(name for name in VARIABLES if f"{name}" not in text)
    assert missing == [], f"{document} does not mention {missing}"


@pytest.mark.parametrize(("field", "states"), [("status", Status), ("stage", Stage), ("callback", CallbackStatus)])
def test_the_status_shape_in_the_readme_lists_exactly_the_declared_values(field: str, states: type[StrEnum]) -> None:
    text = (ROOT / "README.md").read_text()
    line = re.search(rf'^ *"?{field}"?: [{{]?"?(?:status"?: )?((?:"[a-z_]+"(?: \| )?)+)', text, re.MULTILINE)
    assert line, f"the README's status shape has no {field} line"
    assert re.findall(r'"([a-z_]+)"', line[1]) == [state.value for state in states]


def test_the_lifecycle_in_the_readme_describes_every_stage_and_status() -> None:
    text = (ROOT / "README.md").read_text()
    lifecycle = text[text.index("## Lifecycle and failures") :]
    missing = [stage.value for stage in Stage if f"| `{stage}` |" not in lifecycle]
    assert missing == [], f"the lifecycle table does not describe {missing}"
    diagram = lifecycle[: lifecycle.index("| stage |")]
    assert [s for s in Status if s not in diagram] == []
