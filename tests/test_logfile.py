"""The log file: every record in the file when write returns, rotated by size with
the names `zherd logs` reads, and no more rotated files than retention keeps."""

from __future__ import annotations

from pathlib import Path

import pytest

from zherd.logfile import LogFile, size
from zherd.logview import log_files


@pytest.mark.parametrize(
    ("text", "expected"),
    [("50 MB", 50_000_000), ("1.5 KiB", 1536), ("10", 10), ("2GB", 2_000_000_000)],
)
def test_sizes(text: str, expected: int) -> None:
    assert size(text) == expected


@pytest.mark.parametrize("text", ["", "often", "5 parsecs", "-1 MB"])
def test_not_sizes(text: str) -> None:
    with pytest.raises(ValueError, match="not a size"):
        size(text)


def test_rotation_by_size_keeps_retention_files_and_loses_no_line(tmp_path: Path) -> None:
    log = LogFile(tmp_path / "A.log", rotation=1000, retention=3)
    lines = [f"line {i:04d} " + "x" * 90 + "\n" for i in range(100)]
    for line in lines:
        log.write(line)
        assert (tmp_path / "A.log").read_text().endswith(line)  # unbuffered: there at once
    log.close()
    files = log_files(tmp_path, "A")
    assert files[-1] == tmp_path / "A.log" and len(files) == 4  # 3 rotated + the current
    kept = "".join(p.read_text() for p in files)
    assert kept == "".join(lines[-len(kept.splitlines()) :])  # the newest lines, in order
    assert all(p.stat().st_size <= 1000 for p in files)
