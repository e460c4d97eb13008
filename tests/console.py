"""A command of the project run as a child of a test, its output read as it arrives;
killed by pid if the test leaves it running."""

from __future__ import annotations

import contextlib
import os
import re
import select
import subprocess
import time
from pathlib import Path
from typing import Any

START = 60.0  # seconds for a herd to come up on a busy machine
STOP = 30.0


class Console:
    """A `zherd start` (or any command) with its stdout read as lines arrive."""

    def __init__(self, argv: list[str], cwd: Path, **popen: Any) -> None:
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen
        )
        self.out = b""

    def read_until(self, pattern: str, timeout: float = START) -> re.Match[str]:
        """Wait for a regex to match the output so far; its match."""
        fd = self.proc.stdout.fileno()
        deadline = time.monotonic() + timeout
        while (m := re.search(pattern, self.out.decode(), re.M)) is None:
            left = deadline - time.monotonic()
            chunk = os.read(fd, 65536) if select.select([fd], [], [], max(0, left))[0] else None
            if not chunk:
                raise AssertionError(f"no {pattern!r} from zherd: {self.out.decode()}")
            self.out += chunk
        return m

    def finish(self, sig: int | None = None, timeout: float = STOP) -> tuple[int, str, str]:
        """(status, all of stdout, all of stderr), after `sig` if given."""
        if sig is not None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, (self.out + out).decode(), err.decode()

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.communicate(timeout=STOP)
