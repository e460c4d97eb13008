"""What a bench run leaves behind: a results JSON with the machine's facts, tables, a PNG.

Every script writes `bench/results/<name>-<YYYY-MM-DD>.json` and a PNG next to it
(`<name>-quick-<date>.*` for a --quick smoke run, so it never overwrites a measuring
run of the same day).
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import importlib.metadata
import json
import os
import platform
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.table import Table

RESULTS = Path(__file__).resolve().parent / "results"
console = Console(width=None if sys.stdout.isatty() else 150)


# -- the results file --------------------------------------------------------------------------


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on."""
    import psutil

    cpu = platform.processor() or ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    versions = {}
    for dist in ("pyzmq", "msgpack", "uvloop", "aiohttp", "loguru", "zherd"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    try:
        import zmq

        versions["libzmq"] = zmq.zmq_version()
    except ImportError:
        versions["libzmq"] = None
    return {
        "cpu_model": cpu,
        "cores_logical": os.cpu_count(),
        "cores_physical": psutil.cpu_count(logical=False),
        "cpus_usable": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "ram_bytes": psutil.virtual_memory().total,
        "os": platform.platform(),
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "versions": versions,
        "load_average_at_start": list(os.getloadavg()),
    }


def today() -> str:
    return _dt.date.today().isoformat()


def result_paths(name: str, out_dir: Path | None = None, quick: bool = False) -> tuple[Path, Path]:
    """`<name>-<date>.json` and `.png` (`<name>-quick-<date>.*` for a smoke run)."""
    folder = out_dir or RESULTS
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"{name}-quick-{today()}" if quick else f"{name}-{today()}"
    return folder / f"{stem}.json", folder / f"{stem}.png"


def write_results(
    path: Path,
    name: str,
    parameters: dict[str, Any],
    figures: Any,
    *,
    machine: dict[str, Any],
    started: float,
    targets: Sequence[dict[str, Any]] = (),
    notes: Sequence[str] = (),
) -> Path:
    data = {
        "bench": name,
        "date": today(),
        "finished_at": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "wall_seconds": round(time.monotonic() - started, 2),
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
        "machine": machine | {"load_average_at_end": list(os.getloadavg())},
        "parameters": parameters,
        "figures": figures,
        "targets": list(targets),
        "notes": list(notes),
    }
    path.write_text(json.dumps(data, indent=2, default=_jsonable) + "\n")
    return path


def _jsonable(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    if hasattr(value, "__dataclass_fields__"):
        return asdict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def target(name: str, value: float | None, goal: str, met: bool | None, note: str = "") -> dict:
    """One row of the targets a script checks its figures against."""
    return {"target": name, "value": value, "goal": goal, "met": met, "note": note}


# -- the console -------------------------------------------------------------------------------


def progress() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed:.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=False,
    )


def print_table(title: str, columns: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    table = Table(title=escape(title), show_lines=False)
    for i, col in enumerate(columns):
        table.add_column(escape(col), justify="left" if i == 0 else "right")
    for row in rows:
        table.add_row(*[escape(fmt(c)) for c in row])
    console.print(table)


def print_targets(goals: Sequence[dict]) -> None:
    """The targets table every script ends with (rows made by `target`)."""
    print_table(
        "targets",
        ["target", "value", "goal", "met", "note"],
        [(g["target"], g["value"], g["goal"], g["met"], g["note"]) for g in goals],
    )


def fmt(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "NO"
    if isinstance(value, float):
        if value == 0:
            return "0"
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        if abs(value) >= 0.01:
            return f"{value:.2f}"
        return f"{value:.3g}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def spread(s: dict[str, Any], scale: float = 1.0, unit: str = "") -> str:
    """`median [min-max]` of a summary, scaled."""
    if not s or s.get("median") is None:
        return "-"
    med, lo, hi = (s[k] * scale for k in ("median", "min", "max"))
    if s["n"] == 1:
        return f"{fmt(float(med))}{unit}"
    return f"{fmt(float(med))}{unit} [{fmt(float(lo))}-{fmt(float(hi))}]"


# -- plots -------------------------------------------------------------------------------------


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def errorbar_args(summaries: Sequence[dict[str, Any]], scale: float = 1.0):
    """(medians, [lower errors, upper errors]) from summaries, for plt.errorbar (min/max)."""
    med = [s["median"] * scale if s.get("median") is not None else float("nan") for s in summaries]
    pairs = list(zip(med, summaries, strict=True))
    lo = [m - s["min"] * scale if s.get("min") is not None else 0 for m, s in pairs]
    hi = [s["max"] * scale - m if s.get("max") is not None else 0 for m, s in pairs]
    return med, [lo, hi]


def save_figure(fig, png_path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(png_path, dpi=120)
    pyplot().close(fig)
    return png_path
