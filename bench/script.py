"""What every bench script shares: its command line, its repeats, its results.

A script states what it measures, and hands the rest to `main`:

    def options(p):  p.add_argument("--rates", type=script.numbers, default="100,1000")
    def measure(run: Run) -> Result:  ... run.repeat(run.args.rates, once) ...
    if __name__ == "__main__":
        sys.exit(script.main("name", __doc__, options, measure, quick={"rates": "100"}))

Every script has --quick (the `quick` defaults; flags given explicitly still win),
--repeats and --out. `main` records the machine, calls `measure`, writes
`<name>-<date>.json` (every argument but --out, plus the result's parameters) and
the PNG, and prints the result's tables, the targets and the notes.
"""

from __future__ import annotations

import argparse
import contextlib
import time
from collections.abc import Callable, Hashable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from rich.progress import Progress, TaskID

from bench.report import (
    console,
    machine_info,
    print_targets,
    progress,
    result_paths,
    today,
    write_results,
)

P = TypeVar("P", bound=Hashable)
R = TypeVar("R")


@dataclass
class Result:
    """What a script measured, and how to show it."""

    figures: Any
    targets: Sequence[dict[str, Any]] = ()
    notes: Sequence[str] = ()
    parameters: Mapping[str, Any] = field(default_factory=dict)  # beyond the command line
    plot: Callable[[Path], object] | None = None  # draws the PNG at the path given
    show: Callable[[], None] | None = None  # prints the script's own tables


class Run:
    """One invocation: its arguments, where its files go, its progress bar."""

    def __init__(self, name: str, args: argparse.Namespace) -> None:
        self.name, self.args = name, args
        self.json_path, self.png_path = result_paths(name, args.out, args.quick)
        self._bar: Progress | None = None
        self._task: TaskID | None = None

    def path(self, label: str) -> Path:
        """A side file next to the results, e.g. a profile: `<name>-<label>-<date>.txt`."""
        return self.json_path.parent / f"{self.name}-{label}-{today()}.txt"

    @contextlib.contextmanager
    def progress(self, total: int) -> Iterator[None]:
        """A progress bar of `total` steps for `status` and `advance`."""
        with progress() as bar:
            self._bar, self._task = bar, bar.add_task(self.name, total=total)
            try:
                yield
            finally:
                self._bar = self._task = None

    def status(self, text: str) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.update(self._task, description=text)

    def advance(self) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task)

    def repeat(
        self, points: Sequence[P], once: Callable[[P, int], R], label: Callable[[P], str] = str
    ) -> dict[P, list[R]]:
        """`once(point, repeat)` for every point, --repeats times; the results by point.

        Repeats are the outer loop, so a noisy neighbour hurts every point alike.
        """
        runs: dict[P, list[R]] = {p: [] for p in points}
        with self.progress(self.args.repeats * len(points)):
            for rep in range(self.args.repeats):
                for point in points:
                    self.status(f"{label(point)} #{rep + 1}")
                    runs[point].append(once(point, rep))
                    self.advance()
        return runs


def main(
    name: str,
    doc: str,
    options: Callable[[argparse.ArgumentParser], None],
    measure: Callable[[Run], Result],
    *,
    quick: Mapping[str, Any],
    repeats: int = 3,
    check: Callable[[argparse.ArgumentParser, argparse.Namespace], None] | None = None,
    argv: Sequence[str] | None = None,
) -> int:
    """Parse the command line, measure, write and show the results; the exit status."""
    p = argparse.ArgumentParser(
        prog=f"python -m bench.{name}",
        description=doc,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="a smoke run of seconds (see above)")
    p.add_argument("--repeats", type=int, default=repeats)
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    options(p)
    if p.parse_known_args(argv)[0].quick:
        p.set_defaults(**quick)
    args = p.parse_args(argv)
    if check is not None:
        check(p, args)
    started = time.monotonic()
    machine = machine_info()
    run = Run(name, args)
    result = measure(run)
    parameters = {k: v for k, v in vars(args).items() if k != "out"} | dict(result.parameters)
    write_results(
        run.json_path,
        name,
        parameters,
        result.figures,
        machine=machine,
        started=started,
        targets=result.targets,
        notes=result.notes,
    )
    if result.plot is not None:
        result.plot(run.png_path)
    if result.show is not None:
        result.show()
    if result.targets:
        print_targets(result.targets)
    for note in result.notes:
        console.print(f"note: {note}")
    console.print(f"results: [bold]{run.json_path}[/bold]")
    if result.plot is not None:
        console.print(f"plot:    {run.png_path}")
    return 0


def numbers(text: str) -> list[int]:
    """An argparse type: a comma-separated list of counts or rates (`1e4` allowed)."""
    try:
        return [int(float(n)) for n in text.split(",") if n.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None


def choices(allowed: Iterable[str]) -> Callable[[str], list[str]]:
    """An argparse type: a comma-separated list of names, each one of `allowed`."""
    allowed = tuple(allowed)

    def parse(text: str) -> list[str]:
        names = [n for n in text.split(",") if n]
        if bad := [n for n in names if n not in allowed]:
            raise argparse.ArgumentTypeError(f"unknown {bad[0]!r}, not one of {allowed}")
        return names

    return parse
