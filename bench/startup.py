"""Start-up time: from exec to accepting clients, one server and a whole herd.

    python -m bench.startup [--quick] [--repeats 5] [--poll 0.001] [--out DIR]

Cases (each repeated --repeats times, median [min-max]):

- python      `python -c pass`: the interpreter alone, the floor for everything below;
- serve       `python -m zherd serve Alford --config T` with storage (a fresh SQLite
              file each time): time from just before exec until a TCP connect to its
              client port succeeds (polled every --poll seconds), and until it prints
              its ready line;
- serve --no-storage  the same without SQLite;
- start --all `zherd start --all --config T` (the console script, or `python -m zherd`
              when it is not on PATH): until its table appears on stdout, and until
              all five client ports accept.

Topologies are written to a temp folder with free loopback ports (zherd.harness);
the places index is whatever the machine has cached (it opens in the background
and does not delay accepting clients). Every process started is stopped by pid
(SIGTERM, then SIGKILL after 10 s); for `start --all` the supervisor stops its own
children, and any child still alive afterwards is killed by the pid in its table.
Target: < 0.5 s per server. --quick: 1 repeat.

Writes bench/results/startup-<date>.json and .png (startup-quick-<date>.* with --quick).
"""

from __future__ import annotations

import argparse
import os
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from bench import script
from bench.herds import scratch_herd
from bench.report import console, errorbar_args, print_table, pyplot, save_figure, spread, target
from bench.script import Result, Run
from bench.stats import summaries
from zherd.harness import accepts
from zherd.launcher import READY, spawn, stop

TARGET_S = 0.5
TIMEOUT = 30.0
PREFIX = "zherd-bench-startup-"
QUICK = {"repeats": 1}
CASES = ("python", "serve", "serve --no-storage", "start --all")


def options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--poll", type=float, default=0.001, help="seconds between connect attempts")


def time_python() -> dict[str, float]:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    return {"exit": time.perf_counter() - t0}


def time_serve(poll: float, storage: bool) -> dict[str, Any]:
    with scratch_herd(("Alford",), (), prefix=PREFIX, start=False) as herd:
        port = herd.port("Alford")
        t0 = time.perf_counter()
        proc = spawn(herd.config, "Alford", storage=storage, cwd=herd.root)
        try:
            accept = ready = None
            assert proc.stdout is not None
            while time.perf_counter() - t0 < TIMEOUT and (accept is None or ready is None):
                if proc.poll() is not None:
                    raise RuntimeError(f"zherd serve exited with status {proc.returncode}")
                if accept is None and accepts(port):
                    accept = time.perf_counter() - t0
                if ready is None and select.select([proc.stdout], [], [], 0)[0]:
                    line = proc.stdout.readline()
                    if line.startswith(READY):
                        ready = time.perf_counter() - t0
                if accept is None:
                    time.sleep(poll)
                elif ready is None:
                    select.select([proc.stdout], [], [], poll)
            if accept is None:
                raise RuntimeError("zherd serve did not accept clients in time")
            return {"accept": accept, "ready_line": ready}
        finally:
            stop({"Alford": proc})


def zherd_command() -> list[str]:
    script = Path(sys.executable).parent / "zherd"
    if script.exists():
        return [str(script)]
    found = shutil.which("zherd")
    return [found] if found else [sys.executable, "-m", "zherd"]


def time_start_all(poll: float) -> dict[str, Any]:
    with scratch_herd(prefix=PREFIX, start=False) as herd:
        ports = {name: herd.port(name) for name in herd.ports}
        argv = [*zherd_command(), "start", "--all", "--config", str(herd.config)]
        t0 = time.perf_counter()
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=herd.root)
        pids: list[int] = []
        try:
            table = None
            accept: dict[str, float] = {}
            assert proc.stdout is not None
            while time.perf_counter() - t0 < TIMEOUT and (
                table is None or len(accept) < len(ports)
            ):
                if proc.poll() is not None:
                    raise RuntimeError(f"zherd start exited with status {proc.returncode}")
                for name, port in ports.items():
                    if name not in accept and accepts(port):
                        accept[name] = time.perf_counter() - t0
                while select.select([proc.stdout], [], [], 0)[0]:
                    line = proc.stdout.readline()
                    if not line:
                        break
                    words = line.split()
                    if words[:2] == ["server", "pid"] and table is None:
                        table = time.perf_counter() - t0
                    elif len(words) >= 2 and words[0] in ports and words[1].isdigit():
                        pids.append(int(words[1]))
                time.sleep(poll)
            if table is None or len(accept) < len(ports):
                raise RuntimeError("zherd start --all did not come up in time")
            return {
                "table": table,
                "all_accept": max(accept.values()),
                "first_accept": min(accept.values()),
                "per_server": accept,
            }
        finally:
            stop({"start --all": proc}, timeout=10)
            for pid in pids:  # children the supervisor should have stopped
                try:
                    os.kill(pid, 0)
                except OSError:
                    continue
                console.print(f"[yellow]child {pid} outlived the supervisor: killing it[/]")
                os.kill(pid, signal.SIGKILL)


def measure(run: Run) -> Result:
    args = run.args
    timers = {
        "python": time_python,
        "serve": lambda: time_serve(args.poll, storage=True),
        "serve --no-storage": lambda: time_serve(args.poll, storage=False),
        "start --all": lambda: time_start_all(args.poll),
    }
    runs = run.repeat(CASES, lambda case, rep: timers[case]())
    figures: dict[str, Any] = {}
    for case, rs in runs.items():
        keys = [k for k in rs[0] if k != "per_server"]
        figures[case] = summaries(rs, *keys)
        figures[case]["runs"] = rs
    serve = figures["serve"]["accept"]["median"]
    herd = figures["start --all"]["all_accept"]["median"]
    goals = [
        target("zherd serve: exec to accepting (s)", serve, f"< {TARGET_S} s", serve < TARGET_S),
        target(
            "zherd serve --no-storage: exec to accepting (s)",
            figures["serve --no-storage"]["accept"]["median"],
            f"< {TARGET_S} s",
            figures["serve --no-storage"]["accept"]["median"] < TARGET_S,
        ),
        target(
            "zherd start --all: exec to all five accepting (s)",
            herd,
            f"< {TARGET_S} s per server",
            herd < TARGET_S,
            "five servers start in parallel on this machine's cores",
        ),
    ]

    def show() -> None:
        rows = []
        for case, fig in figures.items():
            for k, s in fig.items():
                if k != "runs":
                    rows.append((case, k, spread(s, 1e3, " ms")))
        print_table("start-up, median [min-max]", ["case", "until", "time"], rows)

    return Result(
        figures,
        goals,
        parameters={"zherd_command": zherd_command()},
        plot=lambda png: plot(figures, png, args),
        show=show,
    )


def plot(figures: dict[str, Any], png: Path, args: argparse.Namespace) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    labels, sums = [], []
    for case, f in figures.items():
        for k, s in f.items():
            if k != "runs" and s.get("median") is not None:
                labels.append(f"{case.replace(' --', chr(10) + '--')}\n{k}")
                sums.append(s)
    med, err = errorbar_args(sums, 1e3)
    ax.bar(range(len(labels)), med, yerr=err, capsize=3)
    ax.axhline(TARGET_S * 1e3, color="r", alpha=0.3, label=f"target {TARGET_S * 1e3:.0f} ms")
    ax.set_xticks(range(len(labels)), labels, fontsize=7)
    ax.set_ylabel("ms from exec")
    ax.set_title(f"start-up (median, min-max of {args.repeats})")
    ax.legend()
    save_figure(fig, png)


if __name__ == "__main__":
    sys.exit(script.main("startup", __doc__, options, measure, quick=QUICK, repeats=5))
