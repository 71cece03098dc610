"""The CI dependency audit: which advisories fail the build, and the ignore list's expiry rule."""

from __future__ import annotations

import importlib.util
import sys
from datetime import date
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _audit() -> ModuleType:
    spec = importlib.util.spec_from_file_location("ci_audit", ROOT / ".ci" / "audit.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is made
    spec.loader.exec_module(module)
    return module


audit = _audit()
TODAY = date(2027, 1, 15)
REPORT = {
    "dependencies": [
        {"name": "flask", "version": "3.1.3", "vulns": []},
        {
            "name": "werkzeug",
            "version": "3.1.0",
            "vulns": [{"id": "PYSEC-2027-1", "aliases": ["GHSA-aaaa-bbbb-cccc"], "fix_versions": ["3.1.9"]}],
        },
        {"name": "private-pkg", "skip_reason": "Dependency not found on PyPI and could not be audited"},
    ]
}


def test_an_advisory_not_on_the_ignore_list_fails() -> None:
    failures, notes = audit.evaluate(REPORT, [], TODAY)
    assert len(failures) == 1 and "werkzeug" in failures[0] and "3.1.9" in failures[0]
    assert any("not audited" in note for note in notes)


def test_an_ignored_advisory_passes_until_its_expiry_then_fails_again() -> None:
    """Matched by id or alias; the day after its expiry the entry no longer ignores anything."""
    ignores = audit.load_ignores("GHSA-aaaa-bbbb-cccc 2027-01-15 only the debugger is affected; we never run it\n")
    failures, notes = audit.evaluate(REPORT, ignores, TODAY)
    assert failures == []
    assert any("ignored until 2027-01-15" in note and "debugger" in note for note in notes)
    failures, _ = audit.evaluate(REPORT, ignores, date(2027, 1, 16))
    assert len(failures) == 1 and "expired on 2027-01-15" in failures[0]


@pytest.mark.parametrize(
    "line",
    ["PYSEC-2027-1 2027-02-01", "PYSEC-2027-1 soon because reasons", "PYSEC-2027-1"],
    ids=["no-reason", "bad-date", "id-only"],
)
def test_an_entry_without_reason_or_date_is_an_error(line: str) -> None:
    with pytest.raises(audit.IgnoreListError, match="line 2"):
        audit.load_ignores(f"# comment\n{line}\n")


def test_the_committed_ignore_list_is_valid_and_unexpired() -> None:
    """Every committed entry parses and carries a reason (expired ones fail the audit itself)."""
    entries = audit.load_ignores((ROOT / ".ci" / "audit-ignore").read_text())
    assert all(entry.reason.strip() for entry in entries)
