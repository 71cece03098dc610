"""Dependency audit for CI: pip-audit on requirements.txt, with a committed, expiring ignore list.

Fails (exit 1) on any known vulnerability of a pinned runtime dependency unless ``.ci/audit-ignore``
names it with a reason and an expiry date that has not passed; an expired entry stops ignoring, so a
new advisory on an unchanged pin is a visible decision, not a surprise. A malformed ignore list is an
error of its own (exit 2).
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IGNORE_FILE = ROOT / ".ci" / "audit-ignore"
REQUIREMENTS = ROOT / "requirements.txt"


class IgnoreListError(ValueError):
    """An entry of the ignore list lacks its id, a valid expiry date or a reason."""


@dataclass(frozen=True)
class Ignore:
    """One accepted advisory: its id (or an alias of it), until when, and why."""

    vuln_id: str
    expires: date
    reason: str


def load_ignores(text: str) -> list[Ignore]:
    """Parse the ignore list: ``<advisory id> <YYYY-MM-DD expiry> <reason>`` per line, ``#`` comments.

    Raises:
        IgnoreListError: a line has no reason or no valid date (the line number is named).
    """
    entries = []
    for number, line in enumerate(text.splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 2)
        if len(parts) < 3:
            raise IgnoreListError(f"line {number}: want '<id> <YYYY-MM-DD> <reason>', got {line!r}")
        try:
            expires = date.fromisoformat(parts[1])
        except ValueError:
            raise IgnoreListError(f"line {number}: {parts[1]!r} is not a YYYY-MM-DD expiry date") from None
        entries.append(Ignore(parts[0], expires, parts[2]))
    return entries


def evaluate(report: dict, ignores: list[Ignore], today: date) -> tuple[list[str], list[str]]:
    """Judge a ``pip-audit -f json`` report against the ignore list.

    Returns:
        (failures, notes): each failure is a vulnerability to act on (never ignored, or ignored past
        its expiry); notes say what was ignored, which entries expired, and what could not be audited.
    """
    failures: list[str] = []
    notes: list[str] = []
    by_id = {entry.vuln_id: entry for entry in ignores}
    for dependency in report.get("dependencies", []):
        name, version = dependency.get("name"), dependency.get("version")
        if dependency.get("skip_reason"):
            notes.append(f"WARNING not audited: {dependency['skip_reason']}")
            continue
        for vuln in dependency.get("vulns", []):
            ids = [vuln["id"], *vuln.get("aliases", [])]
            entry = next((by_id[i] for i in ids if i in by_id), None)
            fixed = ", ".join(vuln.get("fix_versions", [])) or "no fix yet"
            found = f"{name} {version}: {' / '.join(ids)} (fixed in: {fixed})"
            if entry is None:
                failures.append(found)
            elif entry.expires < today:
                failures.append(f"{found}; its ignore entry expired on {entry.expires}: decide again")
            else:
                notes.append(f"ignored until {entry.expires}: {found}: {entry.reason}")
    return failures, notes


def run_pip_audit() -> dict:
    """Run pip-audit on the pinned runtime requirements and return its JSON report."""
    # --no-deps: requirements.txt pins every package, so no resolution (and no install) is needed.
    command = [sys.executable, "-m", "pip_audit", "-r", str(REQUIREMENTS), "--no-deps", "-f", "json"]
    done = subprocess.run([*command, "--progress-spinner", "off"], capture_output=True, text=True, check=False)
    try:
        # pip-audit exits 1 when it finds something; the report on stdout says what either way.
        return json.loads(done.stdout)
    except json.JSONDecodeError:
        raise SystemExit(f"audit: pip-audit failed ({done.returncode}):\n{done.stderr[-2000:]}") from None


def main() -> int:
    """Audit, print what was found and ignored, and return the exit status."""
    try:
        ignores = load_ignores(IGNORE_FILE.read_text() if IGNORE_FILE.exists() else "")
    except IgnoreListError as exc:
        print(f"audit: {IGNORE_FILE.name}: {exc}", file=sys.stderr)
        return 2
    failures, notes = evaluate(run_pip_audit(), ignores, datetime.now(UTC).date())
    for note in notes:
        print(f"audit: {note}")
    for failure in failures:
        print(f"audit: VULNERABLE {failure}", file=sys.stderr)
    if failures:
        print(f"audit: {len(failures)} known vulnerabilities; upgrade the pin or add a dated entry to .ci/audit-ignore")
        return 1
    unaudited = sum(note.startswith("WARNING not audited") for note in notes)
    if unaudited:
        # PyPI's advisory data could not be had for these (its JSON API unreachable from here, or the
        # package unknown there): say so plainly rather than report them clean.
        print(f"audit: {unaudited} packages could not be audited; none of the others has an open advisory")
    else:
        print("audit: no known vulnerabilities in requirements.txt that are not accepted in .ci/audit-ignore")
    return 0


if __name__ == "__main__":
    sys.exit(main())
