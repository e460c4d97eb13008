"""Chaos: servers of the paper herd killed and restarted at random under steady load.

Several client threads move their clients with IAMATs to random servers (and a
quarter of the updates are the one fix of a new client, so that an update
acknowledged just before a kill is the newest of its client), while a
schedule SIGKILLs (70%) or SIGTERMs (30%) a random server every 0.5-2 s and
restarts it 0.5-4 s later, never more than two down at once. A client whose
server dies reconnects to another; an update counts as acknowledged only once its
`AT` line was read. When the schedule ends (`--chaos-seconds`, 60 by default) every
server is brought back, and every server must hold every client's newest
acknowledged location (or a newer one that client sent): nothing lost. A failure
names the update, the server that acknowledged it, when, and the faults around it.
"""

from __future__ import annotations

import random
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from test_faults import BASE_TIME, CATCH_UP, coords, held_on_disk, known, status

from zherd.harness import PAPER_SERVERS, Client, Herd, wait_until

MOVERS = 4  # client threads
CLIENTS_EACH = 250  # client ids per thread, moved round-robin
NEW_SHARE = 0.25  # of the updates, the first (and only) fix of a new client ...
NEW_MAX = 40_000  # ... up to about this many in a run (each is checked on every server)
RATE_EACH = 600.0  # IAMATs per second per thread, at most
BATCH = 25  # IAMATs pipelined per request
SWITCH_EVERY = 40  # batches before a thread moves to another random server
FAULT_GAP = (0.5, 2.0)  # seconds between faults
DOWN_FOR = (0.5, 4.0)  # seconds a server stays down
MAX_DOWN = 2
KILL_SHARE = 0.7  # the rest are SIGTERM


@dataclass(frozen=True)
class Ack:
    client_id: str
    line: str  # the AT line read
    server: str
    at: float  # seconds since the chaos began


@dataclass(frozen=True)
class Fault:
    at: float
    what: str  # "SIGKILL", "SIGTERM", "restart"
    server: str
    status: int | None = None  # exit status, for a signal


class Mover(threading.Thread):
    """Moves its own clients: batches of IAMATs to one random server at a time."""

    def __init__(self, herd: Herd, index: int, began: float, seconds: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.herd, self.index, self.began, self.seconds, self.seed = (
            herd,
            index,
            began,
            seconds,
            seed,
        )
        self.acks: list[Ack] = []
        self.sent: dict[tuple[str, str], str] = {}  # (client id, time) -> server sent to
        self.cuts = 0  # connections lost (a server killed or stopped under it)
        self.error: BaseException | None = None
        self.stop = threading.Event()

    def run(self) -> None:
        rng = random.Random(self.seed)
        ids = [f"chaos-{self.index}-{i:03d}" for i in range(CLIENTS_EACH)]
        seq, batches, client, server = 0, 0, None, ""
        t0 = time.monotonic()
        limit = int(RATE_EACH * (self.seconds + 5))
        new_share = min(NEW_SHARE, NEW_MAX / (MOVERS * limit))
        try:
            while seq < limit and not self.stop.is_set():
                if client is None or batches % SWITCH_EVERY == 0:
                    if client is not None:
                        client.close()
                    client, server = self._connect(rng, avoid=server)
                    if client is None:
                        continue
                lines = []
                for _ in range(BATCH):
                    fresh = rng.random() < new_share  # its one fix must be found at the end
                    cid = f"chaos-{self.index}-new-{seq}" if fresh else ids[seq % len(ids)]
                    when = f"{BASE_TIME + seq}.500000000"  # newer at every move
                    lines.append(f"IAMAT {cid} {coords(seq)} {when}")
                    self.sent[(cid, when)] = server
                    seq += 1
                batches += 1
                try:
                    client.send("".join(line + "\n" for line in lines))
                    for line in lines:
                        reply = client.line().rstrip("\n")
                        _, cid, _, _ = line.split()
                        if not (
                            reply.startswith(f"AT {server} ")
                            and reply.split()[3:] == line.split()[1:]
                        ):
                            raise AssertionError(f"{server} answered {line!r} with {reply!r}")
                        self.acks.append(Ack(cid, reply, server, time.monotonic() - self.began))
                except OSError:  # the server died under us: what was not answered is not acked
                    self.cuts += 1
                    client.close()
                    client = None
                ahead = t0 + seq / RATE_EACH - time.monotonic()
                if ahead > 0:
                    self.stop.wait(ahead)  # pacing, not waiting for a condition
                elif ahead < -1.0:  # held up (a server restarting): steady, not a burst
                    t0 -= ahead + 1.0
        except BaseException as e:  # reported by the test
            self.error = e
        finally:
            if client is not None:
                client.close()

    def _connect(self, rng: random.Random, avoid: str) -> tuple[Client | None, str]:
        choices = [s for s in PAPER_SERVERS if s != avoid]
        server = rng.choice(choices)
        try:
            return Client(self.herd.port(server), timeout=15), server
        except OSError:  # down right now: another next time round
            self.stop.wait(0.01)  # pacing the retries, not waiting for a condition
            return None, server


def _time_ns(line: str) -> int:
    whole, _, frac = line.split()[-1].partition(".")
    return int(whole) * 10**9 + int(frac.ljust(9, "0"))


def _acceptable(held: str | None, ack: Ack, sent: dict[tuple[str, str], str]) -> bool:
    """The newest acknowledged line, or a newer update this client sent (its AT may have
    been lost with a killed server) from the server it was sent to."""
    if held == ack.line:
        return True
    if held is None:
        return False
    _, origin, _, cid, _, when = held.split()
    return (
        cid == ack.client_id
        and _time_ns(held) > _time_ns(ack.line)
        and sent.get((cid, when)) == origin
    )


def _story(ack: Ack, faults: Sequence[Fault], held: dict[str, str | None], stored: set[str]) -> str:
    shown = "; ".join(
        f"{f.at:+.3f} s {f.what} {f.server}" + ("" if f.status is None else f" (exit {f.status})")
        for f in faults
        if ack.at - 5 <= f.at <= ack.at + 10
    )
    holding = ", ".join(f"{s}: {line or 'nothing'}" for s, line in held.items())
    return (
        f"{ack.client_id}: newest acknowledged update {ack.line!r} answered by {ack.server} "
        f"at {ack.at:+.3f} s ({'in' if ack.line in stored else 'NOT in'} its storage); "
        f"now held: {holding}; faults from 5 s before to 10 s after: {shown or 'none'}"
    )


def test_random_kills_and_restarts_lose_no_acknowledged_update(
    tmp_path: Path, chaos_seconds: float, chaos_seed: int | None
) -> None:
    seed = chaos_seed if chaos_seed is not None else random.randrange(2**32)
    rng = random.Random(seed)
    faults: list[Fault] = []
    with Herd(tmp_path) as herd:
        herd.start()
        began = time.monotonic()
        movers = [Mover(herd, i, began, chaos_seconds, rng.randrange(2**32)) for i in range(MOVERS)]
        for mover in movers:
            mover.start()
        down: dict[str, float] = {}  # server -> when it comes back
        next_fault = began + rng.uniform(*FAULT_GAP)
        deadline = began + chaos_seconds
        try:
            while time.monotonic() < deadline:
                now = time.monotonic()
                for name, back in sorted(down.items(), key=lambda item: item[1]):
                    if back <= now:
                        herd.start(name)
                        del down[name]
                        faults.append(Fault(time.monotonic() - began, "restart", name))
                if now >= next_fault and len(down) < MAX_DOWN:
                    name = rng.choice([s for s in PAPER_SERVERS if s not in down])
                    sig = signal.SIGKILL if rng.random() < KILL_SHARE else signal.SIGTERM
                    at = time.monotonic() - began
                    code = herd.kill(name, sig)
                    faults.append(Fault(at, sig.name, name, code))
                    down[name] = time.monotonic() + rng.uniform(*DOWN_FOR)
                    next_fault = time.monotonic() + rng.uniform(*FAULT_GAP)
                wake = min([next_fault, deadline, *down.values()])
                time.sleep(max(0.0, min(wake - time.monotonic(), 0.1)))  # the schedule itself
        finally:
            for mover in movers:
                mover.stop.set()
            for mover in movers:
                mover.join(60)
            for name in list(down):
                herd.start(name)
                faults.append(Fault(time.monotonic() - began, "restart", name))
        ended = time.monotonic() - began

        errors = [m.error for m in movers if m.error is not None]
        assert not errors, f"seed {seed}: {errors}"
        terms = [f for f in faults if f.what == "SIGTERM"]
        assert all(f.status == 0 for f in terms), f"seed {seed}: unclean SIGTERM exits: {terms}"
        kills = [f for f in faults if f.what == "SIGKILL"]
        assert all(f.status == -signal.SIGKILL for f in kills), kills

        newest: dict[str, Ack] = {}
        for mover in movers:
            for ack in mover.acks:
                if ack.client_id not in newest or _time_ns(ack.line) > _time_ns(
                    newest[ack.client_id].line
                ):
                    newest[ack.client_id] = ack
        sent = {key: server for m in movers for key, server in m.sent.items()}
        ids = sorted(newest)

        def lost() -> dict[str, tuple[Ack, dict[str, str | None]]]:
            held = {name: known(herd.port(name), ids) for name in PAPER_SERVERS}
            out = {}
            for cid, ack in newest.items():
                views = {name: held[name][cid] for name in PAPER_SERVERS}
                if not all(_acceptable(line, ack, sent) for line in views.values()):
                    out[cid] = (ack, views)
            return out

        last: dict[str, tuple[Ack, dict[str, str | None]]] = {}

        def converged() -> bool:
            nonlocal last
            last = lost()
            return not last

        try:
            wait_until(converged, CATCH_UP, interval=0.5, what="the herd to converge")
        except AssertionError:
            shown = list(last.values())[:5]
            stored = {s: held_on_disk(tmp_path / "var", s) for s in {a.server for a, _ in shown}}
            stories = [_story(ack, faults, views, stored[ack.server]) for ack, views in shown]
            raise AssertionError(
                f"seed {seed}: {len(last)} of {len(newest)} clients lost their newest "
                f"acknowledged update:\n" + "\n".join(stories)
            ) from None
        for name in PAPER_SERVERS:  # and the herd is whole again: every link back up
            wait_until(
                lambda n=name: all(
                    link["state"] == "up" for link in status(herd, n)["neighbors"].values()
                ),
                CATCH_UP,
                what=f"{name}'s links up",
            )
        acked = sum(len(m.acks) for m in movers)
        print(
            f"\nchaos: seed {seed}, {ended:.1f} s, {acked} updates acknowledged of "
            f"{len(sent)} sent, {len(newest)} clients checked, {len(kills)} SIGKILL, {len(terms)} "
            f"SIGTERM, {sum(m.cuts for m in movers)} client connections cut, 0 lost"
        )
        assert len(kills) + len(terms) >= chaos_seconds / FAULT_GAP[1] / 2, faults
        assert acked >= len(newest) > MOVERS * CLIENTS_EACH
