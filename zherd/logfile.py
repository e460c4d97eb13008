"""A server's log file: appended with one `write()` per record, rotated by size.

loguru formats and routes the server's own records (start-up, warnings) into it as
a sink; the per-turn journal, the hot path, skips loguru's record machinery and
hands the file its text directly (a loguru call cost ~13 us a record, a plain
write ~3.6). Both go through the same descriptor, so they interleave in order.
Rotated files are named as loguru names them (`NAME.<date>_<time>_<us>.log`), which
is what `zherd logs` reads.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path

_UNITS = {"": 1, "B": 1, "KB": 1000, "MB": 1000**2, "GB": 1000**3}
_UNITS |= {"KIB": 1024, "MIB": 1024**2, "GIB": 1024**3}
_SIZE = re.compile(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([A-Za-z]*)\s*")


def size(text: str) -> int:
    """Bytes in a rotation size like `50 MB` or `1.5 GiB`; ValueError if it is none."""
    m = _SIZE.fullmatch(text)
    if m is None or m[2].upper() not in _UNITS:
        raise ValueError(f"not a size: {text!r} (say e.g. '50 MB')")
    return int(float(m[1]) * _UNITS[m[2].upper()])


class LogFile:
    """Append-only, unbuffered: a record is in the kernel once `write` returns, so a
    crash loses no line and `tail -f` sees each turn as it ends."""

    def __init__(self, path: Path, rotation: int, retention: int) -> None:
        self.path = path
        self.rotation = rotation
        self.retention = retention
        self._fd = -1
        self._size = 0
        self._open()

    def _open(self) -> None:
        self._fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        self._size = os.fstat(self._fd).st_size

    def write(self, text: str) -> None:
        self.write_bytes(text.encode("utf-8", "backslashreplace"))

    def write_bytes(self, data: bytes) -> None:
        if self._size and self._size + len(data) > self.rotation:
            self._rotate()
        view = memoryview(data)
        while view:
            view = view[os.write(self._fd, view) :]
        self._size += len(data)

    def _rotate(self) -> None:
        os.close(self._fd)
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S_%f")
        target = self.path.with_name(f"{self.path.stem}.{stamp}.log")
        n = 1
        while target.exists():
            target = self.path.with_name(f"{self.path.stem}.{stamp}.{n}.log")
            n += 1
        os.replace(self.path, target)
        self._open()
        rotated = sorted(
            self.path.parent.glob(f"{self.path.stem}.*.log"), key=lambda p: p.stat().st_mtime
        )
        for old in rotated[: max(0, len(rotated) - self.retention)]:
            old.unlink(missing_ok=True)

    def flush(self) -> None:
        """Nothing is buffered (loguru calls this on its sinks)."""

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
