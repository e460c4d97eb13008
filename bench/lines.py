"""What a bench client sends and how it counts replies: pure, no sockets.

Client ids are scrambled: the k-th id of a tag is `<8 hex digits>.<tag>`, the digits a
bijection of k (Fibonacci hashing, mod 2**32), so consecutive clients land far apart
in a server's store and its SQLite index sees inserts in random key order, as it
would from real phones, not in the order a load generator counts.
"""

from __future__ import annotations

from collections.abc import Sequence

# A few fixes around UCLA, ISO 6709 as clients send them.
COORDS = tuple(f"+{34.0 + i * 0.0137:.6f}-{118.0 + i * 0.0211:.6f}" for i in range(16))
_SCRAMBLE = 0x9E3779B1  # odd, so k -> k * _SCRAMBLE mod 2**32 is a permutation
_MASK = 0xFFFFFFFF


def client_id(tag: str, k: int) -> str:
    """The k-th client id of `tag` (0 <= k < 2**32), distinct for every k."""
    return f"{((k + 1) * _SCRAMBLE) & _MASK:08x}.{tag}"


def tag_of(cid: str) -> str:
    """The tag a `client_id` was made with."""
    return cid.split(".", 1)[1]


class IamatLines:
    """IAMATs cycling over `ids` client ids of `tag`, each line a new fix (a later time)."""

    __slots__ = ("coords", "ids", "names", "seq", "t0", "tag")

    def __init__(self, tag: str, ids: int, t0: int) -> None:
        self.tag, self.ids, self.t0, self.seq = tag, ids, t0, 0
        self.coords = COORDS
        self.names: list[str] = []  # the ids, made as first needed

    def make(self, n: int) -> bytes:
        s, ids, t0, c, names = self.seq, self.ids, self.t0, self.coords, self.names
        self.seq = s + n
        if len(names) < min(ids, s + n):
            names += [client_id(self.tag, k) for k in range(len(names), min(ids, s + n))]
        return "".join(
            [f"IAMAT {names[i % ids]} {c[i % 16]} {t0}.{i:09d}\n" for i in range(s, s + n)]
        ).encode()

    def newest(self) -> dict[str, str]:
        """Each client id's last time field sent."""
        last, ids = self.seq - 1, self.ids
        return {
            name: f"{self.t0}.{last - ((last - k) % ids):09d}" for k, name in enumerate(self.names)
        }


class GeoaddLines:
    """RESP `GEOADD zherd <lon> <lat> <member>`: the Redis twin of an IAMAT."""

    __slots__ = ("ids", "pairs", "seq", "tag")

    def __init__(self, tag: str, ids: int) -> None:
        self.tag, self.ids, self.seq = tag, ids, 0
        self.pairs = []
        for c in COORDS:
            lat, lon = f"{float(c[:10]):.6f}", f"{float(c[10:]):.6f}"
            self.pairs.append(f"${len(lon)}\r\n{lon}\r\n${len(lat)}\r\n{lat}\r\n")

    def make(self, n: int) -> bytes:
        s, ids, pairs = self.seq, self.ids, self.pairs
        self.seq = s + n
        out = []
        for i in range(s, s + n):
            m = client_id(self.tag, i % ids)
            out.append(f"*5\r\n$6\r\nGEOADD\r\n$5\r\nzherd\r\n{pairs[i % 16]}${len(m)}\r\n{m}\r\n")
        return "".join(out).encode()


class CycleLines:
    """The same requests over and over, from a given place in the list."""

    __slots__ = ("i", "lines")

    def __init__(self, lines: Sequence[str], start: int) -> None:
        self.lines = [(ln + "\n").encode() for ln in lines]
        self.i = start % max(1, len(self.lines))

    def make(self, n: int) -> bytes:
        lines, i, k = self.lines, self.i, len(self.lines)
        out = [lines[(i + j) % k] for j in range(n)]
        self.i = (i + n) % k
        return b"".join(out)


class LineReplies:
    """Counts one-line replies (an AT line, a Redis integer) and the errors among them."""

    __slots__ = ("error",)

    def __init__(self, error: bytes) -> None:
        self.error = error

    def feed(self, data: bytes) -> tuple[int, int]:
        """(replies, errors) completed by `data`."""
        return data.count(b"\n"), data.count(self.error) if self.error in data else 0


class WhatsatReplies:
    """Counts WHATSAT replies in a byte stream: `? ...\\n` or `AT ...\\n<json>\\n\\n`."""

    __slots__ = ("buf",)

    def __init__(self) -> None:
        self.buf = b""

    def feed(self, data: bytes) -> tuple[int, int]:
        """(replies, errors) completed by `data`."""
        buf = self.buf + data if self.buf else data
        n = err = pos = 0
        end = len(buf)
        while pos < end:
            if buf[pos] == 63:  # "?"
                j = buf.find(b"\n", pos)
                if j < 0:
                    break
                n, err, pos = n + 1, err + 1, j + 1
            else:
                j = buf.find(b"\n\n", pos)
                if j < 0:
                    break
                n, pos = n + 1, j + 2
        self.buf = buf[pos:]
        return n, err
