"""A dyno-sized box for the bench: a cgroup with a memory limit and a task limit, and what it recorded.

Heroku runs a dyno's processes under a memory limit (512 MB on Standard-1X) and a limit of 256
processes plus threads. The bench reproduces both with the kernel's own controllers, so a worker
pool that does not fit is OOM-killed or refused a thread exactly as on the platform. It uses cgroup
v2 where the memory and pids controllers are there (one directory, ``memory.max``, ``pids.max``),
else cgroup v1 (a directory under each of ``memory`` and ``pids``). Creating either needs root.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")


class CgroupUnavailable(RuntimeError):
    """No writable memory and pids controllers here (not root, or not mounted)."""


def _read(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError:
        return ""


def _keyed(path: Path) -> dict[str, int]:
    """A ``key value`` per line file (memory.events, pids.events, memory.oom_control) as a dict."""
    found: dict[str, int] = {}
    for line in _read(path).splitlines():
        key, _, value = line.partition(" ")
        with contextlib.suppress(ValueError):
            found[key] = int(value)
    return found


def _int(path: Path) -> int | None:
    text = _read(path)
    return int(text) if text.isdigit() else None


def v2_root(root: Path = ROOT) -> Path | None:
    """The cgroup v2 hierarchy whose root offers both memory and pids, if any."""
    for candidate in (root, root / "unified"):
        controllers = _read(candidate / "cgroup.controllers").split()
        if "memory" in controllers and "pids" in controllers:
            return candidate
    return None


@dataclass
class Reading:
    """What the controllers recorded for the box."""

    version: int
    memory_limit_bytes: int | None
    memory_now_bytes: int | None
    memory_peak_bytes: int | None
    #: Times the memory limit was hit (v1 failcnt, v2 ``max`` events): reclaim, not yet a kill.
    memory_limit_hits: int
    oom_kills: int
    tasks_limit: int | None
    tasks_now: int | None
    tasks_peak: int | None
    #: Forks and thread starts refused at the task limit (pids.events ``max``).
    tasks_refused: int
    page_cache_bytes: int | None = None


@dataclass
class Box:
    """A cgroup (v1: one per controller) that a command moves itself into before it starts."""

    name: str
    memory_bytes: int
    tasks: int
    version: int = 1
    dirs: dict[str, Path] = field(default_factory=dict)

    @classmethod
    def create(cls, name: str, memory_bytes: int, tasks: int, root: Path = ROOT) -> Box:
        """Make the cgroup(s) and set the limits; CgroupUnavailable where that is not possible."""
        unified = v2_root(root)
        box = cls(name, memory_bytes, tasks, version=2 if unified else 1)
        try:
            if unified is not None:
                # Children get the controllers only once the parent lists them in subtree_control.
                with contextlib.suppress(OSError):
                    (unified / "cgroup.subtree_control").write_text("+memory +pids")
                path = unified / name
                path.mkdir(exist_ok=True)
                box.dirs = {"memory": path, "pids": path}
                (path / "memory.max").write_text(str(memory_bytes))
                with contextlib.suppress(OSError):  # no swap accounting: nothing to limit
                    (path / "memory.swap.max").write_text("0")
                (path / "pids.max").write_text(str(tasks))
            else:
                missing = [c for c in ("memory", "pids") if not (root / c / "cgroup.procs").exists()]
                if missing:  # checked before anything is made, so nothing is left behind
                    raise CgroupUnavailable(f"no cgroup v1 {' or '.join(missing)} controller under {root}")
                for controller in ("memory", "pids"):
                    path = root / controller / name
                    path.mkdir(exist_ok=True)
                    box.dirs[controller] = path
                (box.dirs["memory"] / "memory.limit_in_bytes").write_text(str(memory_bytes))
                (box.dirs["pids"] / "pids.max").write_text(str(tasks))
        except PermissionError as exc:
            box.remove()
            raise CgroupUnavailable(f"cannot create cgroup {name}: {exc}") from exc
        except OSError as exc:
            box.remove()
            raise CgroupUnavailable(f"cannot set up cgroup {name}: {exc}") from exc
        return box

    def wrap(self, command: str) -> str:
        """``command`` run by a shell that first moves itself into the box (its children follow)."""
        procs = dict.fromkeys(str(path / "cgroup.procs") for path in self.dirs.values())
        moves = " && ".join(f"echo $$ > {shlex.quote(p)}" for p in procs)
        return f"/bin/sh -c {shlex.quote(f'{moves} && exec {command}')}"

    def read(self) -> Reading:
        """The limits, current and peak usage, and the events counted so far."""
        memory, tasks = self.dirs["memory"], self.dirs["pids"]
        pids_events = _keyed(tasks / "pids.events")
        tasks_limit = _read(tasks / "pids.max")
        common = {
            "tasks_limit": int(tasks_limit) if tasks_limit.isdigit() else None,
            "tasks_now": _int(tasks / "pids.current"),
            "tasks_peak": _int(tasks / "pids.peak"),
            "tasks_refused": pids_events.get("max", 0),
        }
        if self.version == 2:
            events = _keyed(memory / "memory.events")
            limit = _read(memory / "memory.max")
            return Reading(
                version=2,
                memory_limit_bytes=int(limit) if limit.isdigit() else None,
                memory_now_bytes=_int(memory / "memory.current"),
                memory_peak_bytes=_int(memory / "memory.peak"),
                memory_limit_hits=events.get("max", 0),
                oom_kills=events.get("oom_kill", 0),
                page_cache_bytes=_keyed(memory / "memory.stat").get("file"),
                **common,
            )
        return Reading(
            version=1,
            memory_limit_bytes=_int(memory / "memory.limit_in_bytes"),
            memory_now_bytes=_int(memory / "memory.usage_in_bytes"),
            memory_peak_bytes=_int(memory / "memory.max_usage_in_bytes"),
            memory_limit_hits=_int(memory / "memory.failcnt") or 0,
            oom_kills=_keyed(memory / "memory.oom_control").get("oom_kill", 0),
            page_cache_bytes=_keyed(memory / "memory.stat").get("cache"),
            **common,
        )

    def remove(self, timeout: float = 10.0) -> None:
        """Remove the cgroup(s) once the processes in them are gone (the caller ends them)."""
        deadline = time.monotonic() + timeout
        for path in dict.fromkeys(self.dirs.values()):
            while path.exists():
                try:
                    os.rmdir(path)
                except OSError:
                    if time.monotonic() > deadline:
                        break
                    time.sleep(0.2)
        self.dirs = {}
