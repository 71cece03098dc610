"""bench/RESULTS.md is only ever program output: its stamp's digest must match its body."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from bench import stamp

RESULTS = Path(__file__).resolve().parents[2] / "bench" / "RESULTS.md"
BODY = "# i2v benchmark results\n\n| target | measured |\n|---|---|\n| lag | 1.07 s |\n"


def test_the_committed_results_are_exactly_what_the_bench_wrote() -> None:
    text = RESULTS.read_text()

    assert stamp.problems(text) == [], "bench/RESULTS.md was edited by hand: run `make bench` instead"
    found, _ = stamp.read(text)
    assert found is not None and found.commit != stamp.UNKNOWN


def test_a_stamped_file_checks_out_and_a_hand_edit_does_not(tmp_path: Path) -> None:
    path = tmp_path / "RESULTS.md"
    path.write_text(stamp.stamped(BODY, "8e6b3bd0c0ffee", "clean"))
    text = path.read_text()

    found, body = stamp.read(text)
    assert found == stamp.Stamp("8e6b3bd0c0ffee", "clean", stamp.digest(BODY))
    assert body == BODY
    assert stamp.problems(text) == []

    path.write_text(text.replace("1.07 s", "0.97 s"))
    assert "edited after the run" in stamp.problems(path.read_text())[0]
    assert stamp.problems(BODY) == ["the first line is not a bench stamp"]


def test_a_stamp_cannot_claim_what_the_pattern_does_not_allow() -> None:
    with pytest.raises(ValueError):
        stamp.stamped(BODY, "HEAD", "clean")
    with pytest.raises(ValueError):
        stamp.stamped(BODY, "8e6b3bd", "mostly clean")


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_state_reports_the_commit_and_whether_the_tree_is_clean(tmp_path: Path) -> None:
    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=tmp_path, capture_output=True, text=True, check=True)
        return done.stdout.strip()

    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-q", "-m", "one")
    head = git("rev-parse", "HEAD")

    assert stamp.git_state(tmp_path) == (head, "clean")
    (tmp_path / "new.txt").write_text("untracked\n")
    assert stamp.git_state(tmp_path) == (head, "dirty")
    assert stamp.git_state(tmp_path / "nowhere") == (stamp.UNKNOWN, stamp.UNKNOWN)


def test_python_m_bench_writes_its_results_stamped(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    import bench.__main__ as cli

    def fake_part(name: str, quick: bool, workers: tuple[int, ...] | None = None) -> cli.Section:
        return cli.Section(name, "| measure | value |\n|---|---|\n| lag | 1 s |", [("lag", "≤ 2 s", "1 s", True)])

    monkeypatch.setattr(cli, "run_part", fake_part)
    monkeypatch.setattr(cli.common, "machine_info", lambda: {"cores": "2"})
    monkeypatch.setattr(cli.common, "stop_everything", lambda: None)
    monkeypatch.setattr(cli.common, "OUT_DIR", tmp_path / "out")
    monkeypatch.setattr(cli.signal, "signal", lambda *_args: None)
    out = tmp_path / "RESULTS.md"

    assert cli.main(["--only", "lag", "--out", str(out)]) == 0

    text = out.read_text()
    assert stamp.problems(text) == []
    found, body = stamp.read(text)
    assert found is not None and found.commit == stamp.git_state()[0]
    assert body.startswith("# i2v benchmark results") and "| lag | 1 s |" in body
