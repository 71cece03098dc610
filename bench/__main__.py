"""``python -m bench``: run the benchmarks and write the results as markdown.

    python -m bench                   # everything; writes bench/RESULTS.md
    python -m bench --quick           # a smoke run of everything in about five minutes
    python -m bench --only lag        # one part (ingest, lag, capacity or threads)
    python -m bench --only capacity --workers 100   # capacity at chosen pool sizes

A full run of everything writes ``bench/RESULTS.md``; ``--quick``, ``--only`` and ``--workers`` write under
``bench/out/`` unless ``--out`` says otherwise, so they never overwrite the full results. Every results
file starts with a stamp (commit, clean tree or not, digest of the rest; see ``bench/stamp.py``).
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType

from bench import common, sizing, stamp
from bench.common import Section, table, verdict

PARTS = ("ingest", "lag", "capacity", "threads")


def _interrupted(signum: int, _frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_part(name: str, quick: bool, workers: tuple[int, ...] | None = None) -> Section:
    """Run one part; a part that breaks is reported as such instead of stopping the others."""
    started = time.monotonic()
    print(f"bench: {name} ...", flush=True)
    try:
        if name == "ingest":
            from bench import ingest

            section = ingest.run(quick)
        elif name == "lag":
            from bench import lag

            section = lag.run(quick)
        elif name == "capacity":
            from bench import capacity

            section = capacity.run(quick, workers)
        else:
            from bench import threads

            section = threads.run(quick)
    except KeyboardInterrupt:
        raise
    except Exception as exc:
        detail = traceback.format_exc()
        print(detail, file=sys.stderr, flush=True)
        section = Section(
            name,
            f"This part could not be completed: `{type(exc).__name__}: {exc}`. Logs are under `bench/out/{name}/`.",
            [(f"{name}: part completed", "yes", "no", False)],
        )
    finally:
        common.stop_everything()
    section.data["seconds"] = time.monotonic() - started
    print(f"bench: {name} done in {section.data['seconds']:.0f} s", flush=True)
    return section


def render(sections: list[Section], machine: dict[str, str], quick: bool, parts: list[str], seconds: float) -> str:
    """RESULTS.md."""
    targets = [t for s in sections for t in s.targets]
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    mode = "quick smoke run (short rounds, few requests: not the reference numbers)" if quick else "full run"
    lines = [
        "# i2v benchmark results",
        "",
        f"Written by `make bench` (`python -m bench{' --quick' if quick else ''}"
        f"{' --only ' + parts[0] if len(parts) == 1 else ''}`) on {stamp}: {mode}, "
        f"{seconds / 60:.1f} minutes. Parts: {', '.join(parts)}. These are measurements on one machine, "
        "not tests; each target below says whether it was met and, if not, by how much it was missed.",
        "",
        "## Machine",
        "",
        table(["", ""], [[k, v] for k, v in machine.items()]),
        "",
        "The machine is shared: other work running at the same time shows up as noise. The ingest table "
        "reports the CPU that other processes used during each round.",
        "",
        "## Targets",
        "",
        table(["target", "wanted", "measured", "verdict"], [[t, w, m, verdict(ok)] for t, w, m, ok in targets]),
        "",
    ]
    for section in sections:
        lines += [f"## {section.title}", "", section.markdown.rstrip(), ""]
    return "\n".join(lines)


def with_sizing(sections: list[Section], quick: bool) -> list[Section]:
    """The parts' sections with the sizing table (from the capacity and threads measurements) after part 3."""
    data = {s.title.split(".")[0]: s.data for s in sections}
    table_section = sizing.section(data.get("3"), data.get("5"), quick)
    if table_section is None:
        return sections
    before = [s for s in sections if s.title.split(".")[0] <= "3"]
    return [*before, table_section, *(s for s in sections if s not in before)]


def main(argv: list[str] | None = None) -> int:
    """Parse the arguments, run the parts, write the results."""
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=PARTS, help="run one part only")
    parser.add_argument("--quick", action="store_true", help="a smoke run of about five minutes")
    parser.add_argument("--out", type=Path, help="where to write the markdown results")
    parser.add_argument(
        "--workers",
        type=lambda text: tuple(int(n) for n in text.split(",")),
        help="capacity steps, e.g. 100 or 100,250 (default 100,500; a quick run 20)",
    )
    args = parser.parse_args(argv)
    parts = [args.only] if args.only else list(PARTS)
    if args.out is None:
        full = not args.quick and not args.only and not args.workers
        suffix = ("-quick" if args.quick else "") + (f"-{args.only}" if args.only else "")
        args.out = common.BENCH_DIR / "RESULTS.md" if full else common.OUT_DIR / f"RESULTS{suffix}.md"
    signal.signal(signal.SIGTERM, _interrupted)
    common.OUT_DIR.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    # The numbers belong to the code as it was when the run began.
    commit, tree = stamp.git_state()
    machine = common.machine_info()
    sections: list[Section] = []
    try:
        for part in parts:
            sections.append(run_part(part, args.quick, args.workers))
    except KeyboardInterrupt:
        print("bench: interrupted; stopping everything it started", file=sys.stderr)
        return 130
    finally:
        common.stop_everything()
    sections = with_sizing(sections, args.quick)
    text = render(sections, machine, args.quick, parts, time.monotonic() - started)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(stamp.stamped(text, commit, tree))
    raw = {s.title: s.data for s in sections}
    (common.OUT_DIR / f"{args.out.stem}.json").write_text(json.dumps(raw, indent=1, default=str))
    print(f"bench: wrote {args.out.relative_to(common.ROOT) if args.out.is_relative_to(common.ROOT) else args.out}")
    for target, wanted, measured, ok in (t for s in sections for t in s.targets):
        print(f"  {verdict(ok).strip('*'):4}  {target}: {measured} (wanted {wanted})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
