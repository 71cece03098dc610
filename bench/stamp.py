"""The stamp on a results file: the commit it was measured at, whether the tree was clean, a body digest.

The first line of ``bench/RESULTS.md`` is the stamp; everything after it is the body, whose SHA-256
the stamp carries. A test recomputes the digest, so a figure edited by hand (or a file written by
anything but ``python -m bench``) is caught.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
UNKNOWN = "unknown"
_STAMP = re.compile(
    r"^Written by `python -m bench` at commit `(?P<commit>[0-9a-f]{7,40}|unknown)` "
    r"\(tree (?P<tree>clean|dirty|unknown)\); SHA-256 of everything below this line: "
    r"`(?P<digest>[0-9a-f]{64})`\. A test recomputes it: never edit this file by hand\.$"
)


@dataclass(frozen=True)
class Stamp:
    """What a stamp line says."""

    commit: str
    tree: str  # "clean", "dirty" or "unknown"
    digest: str


def digest(body: str) -> str:
    """The SHA-256 (hex) of a body's UTF-8 bytes."""
    return hashlib.sha256(body.encode()).hexdigest()


def git_state(root: Path = ROOT) -> tuple[str, str]:
    """The commit checked out at ``root`` and whether ``git status --porcelain`` is empty.

    Returns:
        ``(commit, tree)`` with ``tree`` ``"clean"`` or ``"dirty"``; both ``"unknown"`` outside git.
    """
    commit = _git(root, "rev-parse", "HEAD")
    if commit is None:
        return UNKNOWN, UNKNOWN
    status = _git(root, "status", "--porcelain")
    if status is None:
        return commit, UNKNOWN
    return commit, "clean" if not status else "dirty"


def stamped(body: str, commit: str, tree: str) -> str:
    """The body with its stamp line on top."""
    line = (
        f"Written by `python -m bench` at commit `{commit}` (tree {tree}); SHA-256 of everything below this "
        f"line: `{digest(body)}`. A test recomputes it: never edit this file by hand."
    )
    if not _STAMP.match(line):
        raise ValueError(f"cannot stamp commit {commit!r} with tree {tree!r}")
    return f"{line}\n{body}"


def read(text: str) -> tuple[Stamp | None, str]:
    """The stamp of a results text (None if its first line is not one) and the body below it."""
    first, _, body = text.partition("\n")
    m = _STAMP.match(first)
    if m is None:
        return None, text
    return Stamp(m["commit"], m["tree"], m["digest"]), body


def problems(text: str) -> list[str]:
    """Why a results text is not what ``python -m bench`` wrote (empty: its stamp checks out)."""
    stamp, body = read(text)
    if stamp is None:
        return ["the first line is not a bench stamp"]
    actual = digest(body)
    if actual != stamp.digest:
        return [f"the body's SHA-256 is {actual}, the stamp says {stamp.digest}: it was edited after the run"]
    return []


def _git(root: Path, *args: str) -> str | None:
    git = shutil.which("git")
    if git is None:
        return None
    try:
        done = subprocess.run([git, *args], cwd=root, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
