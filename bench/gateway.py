"""IAMAT throughput of ONE zherd server, against a bare asyncio line server and Redis GEOADD.

    python -m bench.gateway [--quick]
        [--targets zherd,zherd-storage,zherd-quiet,baseline,redis]
        [--modes rr,pipeline] [--conns 1,10,50,100] [--procs N] [--window 128]
        [--duration 2] [--warmup 0.5] [--repeats 3] [--no-pin] [--redis-server PATH]
        [--out DIR]

What runs (all at once, idle ones cost nothing; runs are interleaved so that a noisy
neighbour hurts every target alike):

- zherd          `zherd serve` with `--no-storage` (gateway + store + log, no SQLite);
- zherd-storage  `zherd serve` as shipped (SQLite WAL storage on, flushed every 50 ms);
- zherd-quiet    as `zherd`, with `[logging] level = "WARNING"` in its topology: not a
                 product setting to recommend (the design logs every line), but it
                 shows what the per-batch log record costs;
- baseline       `python -m bench.baseline_server`: uvloop + Protocol, each line answered
                 with a fixed AT-sized line, all lines of a data_received in one write.
                 The ceiling for a Python asyncio server; zherd is also given as a ratio to it;
- redis          `redis-server --save "" --appendonly no` on a free port, loaded with
                 RESP `GEOADD zherd <lon> <lat> <member>` (skipped, with a note, when
                 no redis-server is found on PATH or given with --redis-server).

Modes: `rr` (request/response: send one line, wait for its reply, per connection) and
`pipeline` (keep up to --window lines in flight per connection, top up at half).
Every IAMAT is a new fix (a fresh time for one of 100 client ids per connection),
so each one is stored; a single server has no neighbours, so nothing floods.

Cores: by default the servers are pinned to the first usable cpu and the client
processes (--procs, default: usable cpus - 1, at least 1) to the others, so the
server under test has one core to itself, like a herd server on its own core. The
table shows the server's cpu use: under 85% means the clients or the round trips,
not the server, were the limit (the row is flagged "server not saturated"), and the
clients' cpu use tells which. --no-pin lets the scheduler place everything.

Figures: lines (replies) per second counted in the measurement window, after a
warm-up, median [min-max] over --repeats; and the server's cpu time per line
(cpu seconds in the window / lines), which is less sensitive to a busy machine.
--profile records the zherd server with py-spy (when installed) in the first run of
each point; collapsed stacks go next to the JSON, the busiest frames into it.
--quick: 1 repeat of 0.4 s.

Writes bench/results/gateway-<date>.json and .png (gateway-quick-<date>.* with --quick).
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench import script
from bench.herds import scratch_herd
from bench.load import ClientPool, Geoadds, Iamats, Pipelined, RequestResponse, split, total
from bench.report import console, errorbar_args, print_table, pyplot, save_figure, spread, target
from bench.script import Result, Run
from bench.stats import summaries, summary
from bench.usage import Profiler, cpu_split, pin_pid
from zherd.harness import accepts, free_ports, wait_until
from zherd.launcher import stop

TARGETS = ("zherd", "zherd-storage", "zherd-quiet", "baseline", "redis")
MODES = ("rr", "pipeline")
QUIET = {"logging": {"dir": "logs", "level": "WARNING"}}
CLIENT_BOUND_SERVER_CPU = 0.85
RR_GOAL = 0.7  # request/response at 50 connections, to the baseline and to Redis
PIPELINE_GOAL = 0.3  # pipelined, to the baseline
QUICK = {"duration": 0.4, "warmup": 0.2, "repeats": 1}


class Server:
    """One server under test, started by us and stopped by pid."""

    def __init__(self, kind: str, redis_path: str | None) -> None:
        self.kind = kind
        self.redis_path = redis_path
        self.running = contextlib.ExitStack()
        self.port = self.pid = 0

    def start(self, cpus: set[int] | None) -> None:
        if self.kind.startswith("zherd"):
            herd = self.running.enter_context(
                scratch_herd(
                    ("Alford",),
                    (),
                    storage=self.kind == "zherd-storage",
                    sections=QUIET if self.kind == "zherd-quiet" else None,
                )
            )
            self.port, self.pid = herd.port("Alford"), herd.pid("Alford")
        elif self.kind == "baseline":
            (self.port,) = free_ports(1)
            argv = [sys.executable, "-m", "bench.baseline_server", str(self.port)]
            proc = self._child(argv, stdout=subprocess.PIPE, text=True)
            if not (proc.stdout and proc.stdout.readline().startswith("ready")):
                raise RuntimeError("baseline server did not start")
        elif self.kind == "redis":
            assert self.redis_path
            (self.port,) = free_ports(1)
            tmp = tempfile.mkdtemp(prefix="zherd-bench-redis-")
            self.running.callback(shutil.rmtree, tmp, ignore_errors=True)
            argv = [self.redis_path, "--port", str(self.port), "--bind", "127.0.0.1"]
            argv += ["--save", "", "--appendonly", "no", "--dir", tmp, "--daemonize", "no"]
            self._child(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            wait_until(lambda: accepts(self.port), 10, 0.01, "redis-server to listen")
        else:
            raise ValueError(self.kind)
        pin_pid(self.pid, cpus)
        self.check()

    def _child(self, argv: list[str], **popen: Any) -> subprocess.Popen:
        proc = subprocess.Popen(argv, **popen)
        self.running.callback(stop, {self.kind: proc})
        self.pid = proc.pid
        return proc

    def lines(self, tag: str) -> Iamats | Geoadds:
        return Geoadds(tag) if self.kind == "redis" else Iamats(tag)

    def check(self) -> None:
        """One request by hand: the reply must be the right kind of line."""
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as s:
            if self.kind == "redis":
                s.sendall(
                    b"*5\r\n$6\r\nGEOADD\r\n$5\r\ncheck\r\n$3\r\n1.0\r\n$3\r\n2.0\r\n$1\r\nx\r\n"
                )
                want = b":"
            else:
                s.sendall(b"IAMAT check.0 +34.068930-118.445127 1400794645.392014450\n")
                want = b"AT "
            reply = s.recv(4096)
        if not reply.startswith(want):
            raise RuntimeError(f"{self.kind}: unexpected reply {reply[:100]!r}")

    def stop(self) -> None:
        self.running.close()


def options(p: argparse.ArgumentParser) -> None:
    cpus = len(os.sched_getaffinity(0))
    p.add_argument("--targets", type=script.choices(TARGETS), default=",".join(TARGETS))
    p.add_argument("--modes", type=script.choices(MODES), default=",".join(MODES))
    p.add_argument("--conns", type=script.numbers, default="1,10,50,100")
    p.add_argument("--procs", type=int, default=max(1, cpus - 1), help="client processes")
    p.add_argument("--window", type=int, default=128, help="pipelined lines in flight per conn")
    p.add_argument("--duration", type=float, default=2.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of load before measuring")
    p.add_argument("--no-pin", action="store_true", help="do not pin server and clients to cpus")
    p.add_argument("--redis-server", default=shutil.which("redis-server"), help="redis binary")
    p.add_argument("--max-lines", type=int, default=20_000_000, help="per client process per run")
    p.add_argument(
        "--profile", action="store_true", help="py-spy the zherd server in each first run"
    )


def measure(run: Run) -> Result:
    args = run.args
    notes: list[str] = []
    targets = list(args.targets)
    redis_missing = "redis" in targets and not (
        args.redis_server and Path(args.redis_server).exists()
    )
    if redis_missing:
        targets.remove("redis")
        notes.append("redis: skipped, no redis-server on PATH (give one with --redis-server)")
    server_cpus, client_cpus = cpu_split(not args.no_pin)
    procs = max(1, args.procs)
    notes.append(
        f"server cpus {sorted(server_cpus) if server_cpus else 'any'}, "
        f"{procs} client process(es) on cpus {sorted(client_cpus) if client_cpus else 'any'}"
    )
    servers = {t: Server(t, args.redis_server) for t in targets}
    tags = itertools.count()
    profiles: dict[str, Any] = {}

    def once(point: tuple[str, int, str], rep: int) -> dict[str, Any]:
        mode, conns, kind = point
        server = servers[kind]
        start_at = time.monotonic() + 0.3 + args.warmup
        common = {
            "ports": (server.port,),
            "start_at": start_at,
            "duration": args.duration,
            "warmup": args.warmup,
            "max_lines": args.max_lines,
            "drain_timeout": 5.0,
            "cpus": tuple(sorted(client_cpus)) if client_cpus else None,
        }
        loads = [
            RequestResponse(conns=n, send=server.lines(f"g{next(tags)}"), **common)
            if mode == "rr"
            else Pipelined(
                conns=n, send=server.lines(f"g{next(tags)}"), window=args.window, **common
            )
            for n in split(conns, procs)
        ]
        prof = None
        if args.profile and kind.startswith("zherd") and rep == 0:
            raw_out = Path(args.out) / f"profile-gateway-{kind}-{mode}-{conns}.raw"
            prof = Profiler(server.pid, args.warmup + args.duration + 0.3, raw_out)
        results, usage = pool.run(
            loads,
            timeout=args.warmup + args.duration + 30,
            meter=[server.pid],
            window=(start_at, start_at + args.duration),
        )
        if prof is not None:
            profiles[f"{kind} {mode} x{conns}"] = prof.finish()
        return {
            "rate": total(results, "in_window") / args.duration,
            "server_cpu": usage.get(server.pid),
            "client_cpu_max": max((r["cpu_fraction"] or 0) for r in results),
            "errors": total(results, "errors"),
            "unanswered": total(results, "unanswered"),
            "lost_connections": total(results, "lost_connections"),
        }

    points = [(m, c, k) for m in args.modes for c in args.conns for k in targets]
    try:
        for kind, server in servers.items():
            console.print(f"starting {kind}")
            server.start(server_cpus)
        with ClientPool(procs) as pool:
            raw = run.repeat(points, once, label=lambda p: f"{p[2]} {p[0]} x{p[1]}")
    finally:
        for server in servers.values():
            server.stop()
    figures = [figure(raw, point) for point in points]
    goals = goals_of(figures, targets)
    if redis_missing:
        goals.append(
            target(
                "zherd rr@50 vs redis GEOADD",
                None,
                f">= {RR_GOAL}x",
                None,
                "redis-server not available: skipped",
            )
        )
    return Result(
        figures,
        goals,
        notes,
        parameters={
            "procs": procs,
            "server_cpus": sorted(server_cpus or []),
            "client_cpus": sorted(client_cpus or []),
            "targets_run": targets,
            "profiles": profiles,
        },
        plot=lambda png: plot(figures, targets, args, png),
        show=lambda: show(figures),
    )


def figure(raw: dict[tuple[str, int, str], list[dict]], point: tuple[str, int, str]) -> dict:
    """One target's figures at one mode and connection count, over the repeats."""
    mode, conns, kind = point
    runs = raw[point]
    base = raw.get((mode, conns, "baseline"))
    fig: dict[str, Any] = {
        "target": kind,
        "mode": mode,
        "conns": conns,
        **summaries(runs, "rate", "server_cpu", "client_cpu_max"),
        **{key: sum(r[key] for r in runs) for key in ("errors", "unanswered", "lost_connections")},
        "runs": runs,
    }
    if base and kind != "baseline":
        fig["ratio_to_baseline"] = summary(
            [r["rate"] / b["rate"] if b["rate"] else None for r, b in zip(runs, base, strict=True)]
        )
    fig["server_us_per_line"] = summary(
        [r["server_cpu"] / r["rate"] * 1e6 if r["server_cpu"] and r["rate"] else None for r in runs]
    )
    scpu = fig["server_cpu"]["median"]
    fig["client_bound"] = scpu is not None and scpu < CLIENT_BOUND_SERVER_CPU
    return fig


def _median(figures: list[dict], kind: str, mode: str, conns: int, key: str = "rate") -> Any:
    for f in figures:
        if (f["target"], f["mode"], f["conns"]) == (kind, mode, conns) and key in f:
            return f[key]["median"]
    return None


def goals_of(figures: list[dict], targets: list[str]) -> list[dict]:
    goals = []
    for z in (t for t in targets if t in ("zherd", "zherd-storage")):  # quiet: diagnostic
        rr50 = _median(figures, z, "rr", 50)
        redis = _median(figures, "redis", "rr", 50)
        if rr50 is not None and redis:
            goals.append(
                target(
                    f"{z} rr@50 vs redis GEOADD rr@50",
                    rr50 / redis,
                    f">= {RR_GOAL}x",
                    rr50 >= RR_GOAL * redis,
                    f"{rr50:,.0f} vs {redis:,.0f} lines/s",
                )
            )
        ratio = _median(figures, z, "rr", 50, "ratio_to_baseline")
        if ratio is not None:
            goals.append(
                target(f"{z} rr@50 vs baseline", ratio, f">= {RR_GOAL}x", ratio >= RR_GOAL)
            )
        pipe = [
            (f["conns"], f["ratio_to_baseline"]["median"])
            for f in figures
            if f["target"] == z
            and f["mode"] == "pipeline"
            and "ratio_to_baseline" in f
            and f["ratio_to_baseline"]["median"] is not None
        ]
        if pipe:
            worst = min(r for _, r in pipe)
            goals.append(
                target(
                    f"{z} pipelined vs baseline (worst over conns)",
                    worst,
                    f">= {PIPELINE_GOAL}x",
                    worst >= PIPELINE_GOAL,
                    ", ".join(f"x{c}: {r:.2f}" for c, r in pipe),
                )
            )
    return goals


def show(figures: list[dict]) -> None:
    rows = []
    for f in figures:
        ratio = f.get("ratio_to_baseline")
        rows.append(
            (
                f["target"],
                f["mode"],
                f["conns"],
                spread(f["rate"]),
                spread(ratio, unit="x") if ratio else "-",
                spread(f["server_cpu"], 100, "%"),
                spread(f["server_us_per_line"], 1, " us"),
                spread(f["client_cpu_max"], 100, "%"),
                f["errors"] + f["unanswered"],
                "server not saturated" if f["client_bound"] else "",
            )
        )
    print_table(
        "IAMAT throughput of one server (lines/s, median [min-max])",
        [
            "target",
            "mode",
            "conns",
            "lines/s",
            "vs baseline",
            "server cpu",
            "server cpu/line",
            "client cpu (max)",
            "errors",
            "",
        ],
        rows,
    )


def plot(figures: list[dict], targets: list[str], args: argparse.Namespace, png: Path) -> None:
    plt = pyplot()
    fig, axes = plt.subplots(1, len(args.modes), figsize=(6 * len(args.modes), 4.5), squeeze=False)
    for ax, mode in zip(axes[0], args.modes, strict=True):
        for kind in targets:
            rows = [f for f in figures if f["target"] == kind and f["mode"] == mode]
            xs = [f["conns"] for f in rows]
            med, err = errorbar_args([f["rate"] for f in rows])
            ax.errorbar(xs, med, yerr=err, marker="o", capsize=3, label=kind)
        ax.set_xscale("log")
        ax.set_xticks(args.conns, [str(c) for c in args.conns])
        ax.set_xlabel("connections")
        ax.set_ylabel("IAMAT (lines) / s")
        ax.set_title(f"{mode}: one server, median and min-max of {args.repeats}")
        ax.grid(alpha=0.3)
        ax.legend()
    save_figure(fig, png)


if __name__ == "__main__":
    sys.exit(script.main("gateway", __doc__, options, measure, quick=QUICK))
