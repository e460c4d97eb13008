"""What the processes we started use: the cores they run on, cpu time, memory, profiles."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import psutil


def cpu_split(pin: bool, server_cpus: int = 1) -> tuple[set[int] | None, set[int] | None]:
    """(server cpus, client cpus) when pinning: servers on the first cpus, clients on the rest.

    With fewer than two usable cpus nothing is pinned.
    """
    cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not pin or len(cpus) < 2:
        return None, None
    n = min(server_cpus, len(cpus) - 1)
    return set(cpus[:n]), set(cpus[n:])


def pin_pid(pid: int, cpus: set[int] | None) -> None:
    """Pin every thread of a process we started (threads started later inherit it)."""
    if not cpus:
        return
    with contextlib.suppress(OSError):
        for tid in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                os.sched_setaffinity(int(tid), cpus)


def cpu_seconds(pid: int) -> float | None:
    """User + system cpu seconds of a process so far (None: it is gone)."""
    try:
        t = psutil.Process(pid).cpu_times()
        return t.user + t.system
    except psutil.Error:
        return None


def memory(pid: int) -> dict[str, int | None]:
    """RSS, and USS and PSS (which tell a shared mapping from private memory), in bytes."""
    try:
        m = psutil.Process(pid).memory_full_info()
        return {"rss": m.rss, "uss": m.uss, "pss": getattr(m, "pss", None)}
    except psutil.Error:
        return {"rss": None, "uss": None, "pss": None}


class Profiler:
    """py-spy (if installed) recording one server we started, as collapsed stacks."""

    def __init__(self, pid: int, seconds: float, out: Path, rate: int = 200) -> None:
        self.out = out
        self.proc: subprocess.Popen | None = None
        exe = shutil.which("py-spy")
        if exe is None:
            return
        argv = [exe, "record", "-p", str(pid), "-d", str(max(1, round(seconds))), "-r", str(rate)]
        argv += ["-f", "raw", "-o", str(out), "--nonblocking"]
        self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def finish(self, timeout: float = 30.0) -> dict[str, Any] | None:
        if self.proc is None:
            return None
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return top_frames(self.out) if self.out.exists() else None


def top_frames(raw: Path, n: int = 25) -> dict[str, Any]:
    """Self and inclusive sample shares of the busiest frames in a py-spy raw profile."""
    own: Counter[str] = Counter()
    incl: Counter[str] = Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        if not line.strip():
            continue
        stack, _, count = line.rpartition(" ")
        k = int(count)
        total += k
        frames = stack.split(";")
        own[frames[-1]] += k
        for f in set(frames):
            incl[f] += k
    pct = (lambda c: round(100 * c / total, 1)) if total else (lambda c: 0.0)
    return {
        "samples": total,
        "self": [(f, pct(c)) for f, c in own.most_common(n)],
        "inclusive": [(f, pct(c)) for f, c in incl.most_common(2 * n)],
    }
