"""The documentation names every setting, status and stage the service has, and its links lead somewhere."""

import re
from enum import StrEnum
from pathlib import Path

import pytest

from config import VARIABLES
from jobs.states import CallbackStatus, Stage, Status

ROOT = Path(__file__).resolve().parents[2]

#: The Markdown a reader follows links through: the README, the reference under docs/, the changelog.
DOCUMENTS = sorted([ROOT / "README.md", ROOT / "CHANGELOG.md", *(ROOT / "docs").glob("*.md")])

#: A Markdown link, inline: [text](target).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")


@pytest.mark.parametrize("document", ["docs/configuration.md", ".env.example"])
def test_every_setting_is_documented(document: str) -> None:
    text = (ROOT / document).read_text()
    missing = sorted(name for name in VARIABLES if f"{name}" not in text)
    assert missing == [], f"{document} does not mention {missing}"


def anchors(path: Path) -> set[str]:
    """The heading anchors GitHub makes for a Markdown file (duplicates get -1, -2, ...)."""
    seen: dict[str, int] = {}
    out = set()
    in_code = False
    for line in path.read_text().splitlines():
        if line.startswith("```"):
            in_code = not in_code
        if in_code or not line.startswith("#"):
            continue
        title = line.lstrip("#").strip().lower()
        slug = re.sub(r"[^\w\- ]", "", title).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def links(path: Path) -> list[str]:
    """Relative link targets in a Markdown file, outside code blocks."""
    text = re.sub(r"```.*?```", "", path.read_text(), flags=re.S)
    return [t for t in LINK.findall(text) if not re.match(r"[a-z]+:", t)]


@pytest.mark.parametrize("document", DOCUMENTS, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_leads_to_a_file_and_heading(document: Path) -> None:
    broken = []
    for target in links(document):
        name, _, anchor = target.partition("#")
        path = (document.parent / name).resolve() if name else document
        missing_heading = anchor and path.suffix == ".md" and path.exists() and anchor not in anchors(path)
        if not path.exists() or missing_heading:
            broken.append(target)
    assert broken == [], f"{document.relative_to(ROOT)} links to what does not exist: {broken}"


@pytest.mark.parametrize(("field", "states"), [("status", Status), ("stage", Stage), ("callback", CallbackStatus)])
def test_the_status_shape_in_the_api_docs_lists_exactly_the_declared_values(field: str, states: type[StrEnum]) -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    line = re.search(rf'^ *"?{field}"?: [{{]?"?(?:status"?: )?((?:"[a-z_]+"(?: \| )?)+)', text, re.MULTILINE)
    assert line, f"the API docs' status shape has no {field} line"
    assert re.findall(r'"([a-z_]+)"', line[1]) == [state.value for state in states]


def test_the_lifecycle_in_the_api_docs_describes_every_stage_and_status() -> None:
    text = (ROOT / "docs" / "api.md").read_text()
    lifecycle = text[text.index("## Lifecycle and failures") :]
    missing = [stage.value for stage in Stage if f"| `{stage}` |" not in lifecycle]
    assert missing == [], f"the lifecycle table does not describe {missing}"
    diagram = lifecycle[: lifecycle.index("| stage |")]
    assert [s for s in Status if s not in diagram] == []
