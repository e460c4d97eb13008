"""One loguru file per server, rotated so a long run cannot fill the disk.

Every physical line of a log file is one event and says when and where:

    2026-12-02T07:40:01.123456Z | Alford | INFO    | client 127.0.0.1:5555 <- IAMAT ...

even when a loop turn's events are written as one record (`journal.Journal`).
Text from clients and neighbors is escaped (`\\x1b`, `\\r`, ...) and cut when
long, so no input can forge a line, recolour a terminal or bloat the file.
"""

from __future__ import annotations

import re
import sys
import time
import traceback
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loguru import logger

from zherd.config import LoggingConfig
from zherd.logfile import LogFile, size

INFO = 20  # loguru's severity number for INFO
MAX_LOGGED = 512  # characters of one client or neighbor line kept in the log
LEVEL_WIDTH = 7

# Every C0 control, DEL, and what some viewers take for a line break (NEL, LS, PS).
_ESCAPES = {c: f"\\x{c:02x}" for c in [*range(0x20), 0x7F, 0x85]}
_ESCAPES.update({0x2028: "\\u2028", 0x2029: "\\u2029"})


# What `escape` rewrites, less the line feed that joins a batch's lines (logs.needs_care).
_CARE = re.compile("[" + "".join(re.escape(chr(c)) for c in _ESCAPES if c != 0x0A) + "]")


# The ASCII part of it: every control byte but the line feed.
_CARE_ASCII = bytes(c for c in _ESCAPES if c < 0x80 and c != 0x0A)


def needs_care(text: str) -> bool:
    """Whether lines joined by line feeds hold anything to escape (one scan, in C)."""
    return _CARE.search(text) is not None


def bytes_need_care(data: bytes) -> bool:
    """`needs_care` for lines of bytes joined by line feeds, before decoding. ASCII (the
    usual case) is decided by a byte translation, several times faster than the regex."""
    if data.isascii():
        return len(data.translate(None, _CARE_ASCII)) != len(data)
    return needs_care(data.decode("utf-8", "backslashreplace"))


def escape(text: str) -> str:
    """`text` with every control character written out, so it stays one line."""
    if text.isprintable():  # the common case, decided in C: no control character at all
        return text
    return text.translate(_ESCAPES)


def shown(data: bytes) -> str:
    """Client or neighbor bytes for a log line: never raises, never hides a byte,
    never more than MAX_LOGGED characters (a cut line says its length)."""
    if len(data) > MAX_LOGGED:
        return escape(data[:MAX_LOGGED].decode("utf-8", "backslashreplace")) + (
            f"... ({len(data)} bytes)"
        )
    return escape(data.decode("utf-8", "backslashreplace"))


def stamp(when: datetime | None = None) -> str:
    """The time prefix of a line: UTC, microseconds."""
    if when is None:
        return _now()
    return when.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


_second = (-1, "")  # the last whole second stamped, and its text


def _now() -> str:
    """Now, as `stamp` writes it: the seconds formatted once a second (strftime cost
    ~2 us, a turn's whole log record at light load)."""
    global _second
    us = time.time_ns() // 1000
    seconds, fraction = divmod(us, 1_000_000)
    if seconds != _second[0]:
        text = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (seconds, text)
    return f"{_second[1]}.{fraction:06d}Z"


def prefix(server: str, level: str, when: datetime | None = None) -> str:
    return f"{stamp(when)} | {server} | {level:<{LEVEL_WIDTH}} | "


def lines(head: str, body: Sequence[str]) -> str:
    """Event lines that share one prefix, joined for one write. Every line break gets
    the prefix, so an entry may hold several events (`journal.Journal`): one pass in C."""
    if not body:
        return ""
    return head + "\n".join(body).replace("\n", "\n" + head) + "\n"


def _format(record: dict[str, Any]) -> str:
    """Every line of a record gets the prefix (a multi-line message or a traceback from
    anywhere in the code stays greppable, and a control character in it cannot start
    a line of its own); records the journal built are written as they are."""
    extra = record["extra"]
    if "raw" not in extra:
        when = record["time"].astimezone(UTC)
        head = prefix(extra.get("server", "-"), record["level"].name, when)
        text = record["message"]
        if record["exception"] is not None:
            text += "\n" + "".join(traceback.format_exception(*record["exception"])).rstrip("\n")
        extra["raw"] = lines(head, [escape(line) for line in text.split("\n")])
    return "{extra[raw]}"


_file: LogFile | None = None  # this process's log file, once `setup` made it
_file_level = 0  # the least severity written to it


def setup(server: str, config: LoggingConfig, console_level: str = "WARNING") -> Path:
    """Send this process's records to `<dir>/<server>.log` (and warnings to stderr)."""
    global _file, _file_level
    logger.remove()
    logger.configure(extra={"server": server})
    config.dir.mkdir(parents=True, exist_ok=True)
    path = config.dir / f"{server}.log"
    if _file is not None:
        _file.close()
    _file = LogFile(path, size(config.rotation), config.retention)
    _file_level = logger.level(config.level).no
    logger.add(
        _file,
        level=config.level,
        format=_format,
        backtrace=False,
        diagnose=False,  # variable values in tracebacks could include secrets (an API key)
    )
    logger.add(
        sys.stderr,
        level=console_level,
        format=f"<level>{server}: {{message}}</level>",
        backtrace=False,
        diagnose=False,
    )
    return path


def write(server: str, level: str, events: Sequence[str]) -> None:
    """Several events as one record: one write, every line prefixed; through loguru,
    which also shows warnings on the console."""
    text = lines(prefix(server, level), events)
    if text:
        logger.bind(raw=text).log(level, text.rstrip("\n"))


def write_info(record: bytes) -> None:
    """A journal's INFO record, its lines prefixed already: straight to the file."""
    if _file is not None and _file_level <= INFO:
        _file.write_bytes(record)
