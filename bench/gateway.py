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
--quick: 1 repeat of 0.4 s.

Writes bench/results/gateway-<date>.json and .png (gateway-quick-<date>.* with --quick).
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.common import (
    HOST,
    ClientPool,
    HerdRun,
    LoadSpec,
    console,
    cpu_split,
    errorbar_args,
    finish,
    machine_info,
    parameters_of,
    pin_pid,
    print_table,
    print_targets,
    progress,
    pyplot,
    result_paths,
    save_figure,
    split,
    spread,
    stop_pid,
    summary,
    target,
    wait_port,
    write_results,
)
from zherd.harness import free_ports

TARGETS = ("zherd", "zherd-storage", "zherd-quiet", "baseline", "redis")
QUIET = {"logging": {"dir": "logs", "level": "WARNING"}}
CLIENT_BOUND_SERVER_CPU = 0.85


class Server:
    """One server under test, started by us and stopped by pid."""

    def __init__(self, kind: str, redis_path: str | None) -> None:
        self.kind = kind
        self.redis_path = redis_path
        self.herd: HerdRun | None = None
        self.proc: subprocess.Popen | None = None
        self.port = 0
        self.pid = 0
        self.tmp: Path | None = None

    @property
    def payload(self) -> str:
        return "geoadd" if self.kind == "redis" else "iamat"

    def start(self, cpus: set[int] | None) -> None:
        if self.kind.startswith("zherd"):
            self.herd = HerdRun(
                ("Alford",),
                (),
                storage=self.kind == "zherd-storage",
                sections=QUIET if self.kind == "zherd-quiet" else None,
            )
            self.herd.__enter__()
            self.port, self.pid = self.herd.port("Alford"), self.herd.pid("Alford")
        elif self.kind == "baseline":
            (self.port,) = free_ports(1)
            argv = [sys.executable, "-m", "bench.baseline_server", str(self.port)]
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True)
            line = self.proc.stdout.readline() if self.proc.stdout else ""
            if not line.startswith("ready"):
                stop_pid(self.proc)
                raise RuntimeError("baseline server did not start")
            self.pid = self.proc.pid
        elif self.kind == "redis":
            assert self.redis_path
            (self.port,) = free_ports(1)
            self.tmp = Path(tempfile.mkdtemp(prefix="zherd-bench-redis-"))
            argv = [
                self.redis_path,
                "--port",
                str(self.port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.tmp),
                "--daemonize",
                "no",
            ]
            self.proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            self.pid = self.proc.pid
            wait_port(self.port, timeout=10)
        else:
            raise ValueError(self.kind)
        pin_pid(self.pid, cpus)
        self.check()

    def check(self) -> None:
        """One request by hand: the reply must be the right kind of line."""
        with socket.create_connection((HOST, self.port), timeout=5) as s:
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
        if self.herd is not None:
            self.herd.__exit__(None, None, None)
            self.herd = None
        if self.proc is not None:
            stop_pid(self.proc)
            self.proc = None
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    cpus = len(os.sched_getaffinity(0))
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="smoke test: 1 repeat of 0.4 s per point")
    p.add_argument("--targets", default=",".join(TARGETS))
    p.add_argument("--modes", default="rr,pipeline")
    p.add_argument("--conns", default="1,10,50,100")
    p.add_argument("--procs", type=int, default=max(1, cpus - 1), help="client processes")
    p.add_argument("--window", type=int, default=128, help="pipelined lines in flight per conn")
    p.add_argument("--duration", type=float, default=2.0, help="seconds measured per point")
    p.add_argument("--warmup", type=float, default=0.5, help="seconds of load before measuring")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--no-pin", action="store_true", help="do not pin server and clients to cpus")
    p.add_argument("--redis-server", default=shutil.which("redis-server"), help="redis binary")
    p.add_argument("--max-lines", type=int, default=20_000_000, help="per client process per run")
    p.add_argument("--out", type=Path, default=None, help="results folder (default bench/results)")
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.repeats = 0.4, 0.2, 1
    args.targets = [t for t in args.targets.split(",") if t]
    args.modes = [m for m in args.modes.split(",") if m]
    args.conns = [int(c) for c in args.conns.split(",") if c]
    for t in args.targets:
        if t not in TARGETS:
            p.error(f"unknown target {t!r}")
    for m in args.modes:
        if m not in ("rr", "pipeline"):
            p.error(f"unknown mode {m!r}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    started = time.monotonic()
    machine = machine_info()
    notes: list[str] = []
    targets = list(args.targets)
    if "redis" in targets and not (args.redis_server and Path(args.redis_server).exists()):
        targets.remove("redis")
        notes.append("redis: skipped, no redis-server on PATH (give one with --redis-server)")
    server_cpus, client_cpus = cpu_split(not args.no_pin)
    procs = max(1, args.procs)
    notes.append(
        f"server cpus {sorted(server_cpus) if server_cpus else 'any'}, "
        f"{procs} client process(es) on cpus {sorted(client_cpus) if client_cpus else 'any'}"
    )
    servers = {t: Server(t, args.redis_server) for t in targets}
    points = [(m, c) for m in args.modes for c in args.conns]
    raw: dict[tuple[str, str, int], list[dict[str, Any]]] = {
        (t, m, c): [] for t in targets for m, c in points
    }
    tag_n = 0
    try:
        for kind, server in servers.items():
            console.print(f"starting {kind}")
            server.start(server_cpus)
        with ClientPool(procs) as pool, progress() as bar:
            task = bar.add_task("gateway", total=args.repeats * len(points) * len(targets))
            for rep in range(args.repeats):
                for mode, conns in points:
                    for kind in targets:
                        server = servers[kind]
                        bar.update(task, description=f"{kind} {mode} x{conns} (#{rep + 1})")
                        start_at = time.monotonic() + 0.3 + args.warmup
                        specs = []
                        for n in split(conns, procs):
                            tag_n += 1
                            specs.append(
                                LoadSpec(
                                    ports=(server.port,),
                                    conns=n,
                                    mode=mode,
                                    payload=server.payload,
                                    tag=f"g{tag_n}",
                                    start_at=start_at,
                                    duration=args.duration,
                                    warmup=args.warmup,
                                    window=args.window,
                                    max_lines=args.max_lines,
                                    drain_timeout=5.0,
                                    cpus=tuple(sorted(client_cpus)) if client_cpus else None,
                                )
                            )
                        results, usage = pool.run(
                            specs,
                            timeout=args.warmup + args.duration + 30,
                            meter=[server.pid],
                            window=(start_at, start_at + args.duration),
                        )
                        raw[kind, mode, conns].append(
                            {
                                "rate": sum(r["in_window"] for r in results) / args.duration,
                                "server_cpu": usage.get(server.pid),
                                "client_cpu_max": max((r["cpu_fraction"] or 0) for r in results),
                                "errors": sum(r["errors"] for r in results),
                                "unanswered": sum(r["unanswered"] for r in results),
                                "lost_connections": sum(r["lost_connections"] for r in results),
                            }
                        )
                        bar.advance(task)
    finally:
        for server in servers.values():
            server.stop()

    figures = []
    for mode, conns in points:
        base = raw.get(("baseline", mode, conns))
        for kind in targets:
            runs = raw[kind, mode, conns]
            fig: dict[str, Any] = {
                "target": kind,
                "mode": mode,
                "conns": conns,
                "rate": summary([r["rate"] for r in runs]),
                "server_cpu": summary([r["server_cpu"] for r in runs]),
                "client_cpu_max": summary([r["client_cpu_max"] for r in runs]),
                "errors": sum(r["errors"] for r in runs),
                "unanswered": sum(r["unanswered"] for r in runs),
                "lost_connections": sum(r["lost_connections"] for r in runs),
                "runs": runs,
            }
            if base and kind != "baseline":
                fig["ratio_to_baseline"] = summary(
                    [
                        r["rate"] / b["rate"] if b["rate"] else None
                        for r, b in zip(runs, base, strict=True)
                    ]
                )
            fig["server_us_per_line"] = summary(
                [
                    r["server_cpu"] / r["rate"] * 1e6 if r["server_cpu"] and r["rate"] else None
                    for r in runs
                ]
            )
            scpu = fig["server_cpu"]["median"]
            fig["client_bound"] = scpu is not None and scpu < CLIENT_BOUND_SERVER_CPU
            figures.append(fig)

    goals = goals_of(figures, targets)
    if "redis" not in targets:
        goals.append(
            target(
                "zherd rr@50 >= redis GEOADD",
                None,
                ">= 1.0x",
                None,
                "redis-server not available: skipped",
            )
        )
    json_path, png_path = result_paths("gateway", args.out, args.quick)
    parameters = parameters_of(
        args,
        procs=procs,
        server_cpus=sorted(server_cpus or []),
        client_cpus=sorted(client_cpus or []),
        targets_run=targets,
    )
    write_results(
        "gateway",
        parameters,
        figures,
        targets=goals,
        notes=notes,
        machine=machine,
        started=started,
        path=json_path,
    )
    plot(figures, targets, args, png_path)
    show(figures, goals, notes)
    finish(json_path, png_path)
    return 0


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
                    f"{z} rr@50 >= redis GEOADD rr@50",
                    rr50 / redis,
                    ">= 1.0x",
                    rr50 >= redis,
                    f"{rr50:,.0f} vs {redis:,.0f} lines/s",
                )
            )
        ratio = _median(figures, z, "rr", 50, "ratio_to_baseline")
        if ratio is not None:
            goals.append(target(f"{z} rr@50 vs baseline", ratio, ">= 0.5x", ratio >= 0.5))
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
                    ">= 0.3x",
                    worst >= 0.3,
                    ", ".join(f"x{c}: {r:.2f}" for c, r in pipe),
                )
            )
    return goals


def show(figures: list[dict], goals: list[dict], notes: list[str]) -> None:
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
    print_targets(goals)
    for n in notes:
        console.print(f"note: {n}")


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
    sys.exit(main())
