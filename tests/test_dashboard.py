"""The live herd page: its view (pure), its event stream and `zherd start`'s page on real
herds, and the page itself end to end in a real headless Chromium.

The browser test needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs
them as root when missing) and selenium (the `test` extra); without them it skips,
saying which is missing. ZHERD_SAVE_SCREENSHOT=1 also saves its screenshot as
docs/herd-page.png, for the README.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import select
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from zherd import config
from zherd.dashboard import READY, Poll, circle_order, crossings, view
from zherd.harness import PAPER_LINKS, PAPER_SERVERS, Client, Herd, free_ports, wait_until
from zherd.harness import topology_toml as make_topology
from zherd.herdstatus import DOWN, UP

REPO = Path(__file__).resolve().parent.parent
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--window-size=1400,850",
)
PAGE_WAIT = 20.0  # seconds for the page to show what the herd does, on a busy machine
ALFORD_NODE = '#graph [data-server="Alford"]'


def link_key(a: str, b: str) -> str:
    return "|".join(sorted((a, b)))


# -- the view (pure) ------------------------------------------------------------------------------


def status_doc(pid: int, iamat: int, neighbors: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "pid": pid,
        "healthy": True,
        "health": "ok",
        "clients_known": 3,
        "connections": 1,
        "uptime_s": 5.0,
        "counters": {"iamat": iamat, "whatsat": 0},
        "neighbors": neighbors,
        "latency": {
            k: {"bounds_s": [0.001, 0.01], "counts": [iamat, 0, 0], "sum_s": 0.0}
            for k in ("iamat", "whatsat", "flush")
        },
    }


def two_servers(tmp_path: Path) -> config.Topology:
    path = tmp_path / "t.toml"
    path.write_text(make_topology({"A": (1, 2, 3), "B": (4, 5, 6)}, [("A", "B")]))
    return config.load(path)


def test_view_rates_states_and_lag(tmp_path: Path) -> None:
    topology = two_servers(tmp_path)
    link = {"state": "up", "lag": 0, "records_out": 10, "applied": 0}
    before = Poll(0.0, 100.0, {"A": status_doc(1, 10, {"B": link}), "B": None})
    sent = {**link, "records_out": 30, "lag": 4}
    now = Poll(0.5, 100.5, {"A": status_doc(1, 60, {"B": sent}), "B": None})
    v = view(topology, now, before)
    a, b = v["servers"]
    assert (a["state"], b["state"]) == (UP, DOWN)
    assert a["rates"]["iamat"] == 100.0  # 50 in half a second
    assert a["p99_s"]["iamat"] == 0.001
    assert b["reason"] == "no answer"
    assert b["rates"]["iamat"] is None
    (ab,) = v["links"]
    assert ab["state"] == DOWN  # B does not answer
    assert ab["rate"]["A->B"] == 40.0
    assert ab["lag"] == {"A->B": 4, "B->A": None}
    assert v["summary"] == {"servers": 2, "up": 1, "links": 1, "links_up": 0}


def test_view_has_no_rate_across_a_restart(tmp_path: Path) -> None:
    topology = two_servers(tmp_path)
    before = Poll(0.0, 1.0, {"A": status_doc(1, 500, {}), "B": status_doc(2, 0, {})})
    now = Poll(0.5, 1.5, {"A": status_doc(9, 3, {}), "B": status_doc(2, 0, {})})
    a, b = view(topology, now, before)["servers"]
    assert a["rates"]["iamat"] is None  # a new pid: its counters started again
    assert a["p99_s"]["iamat"] is None
    assert b["rates"]["iamat"] == 0.0
    assert view(topology, now, None)["servers"][0]["rates"]["iamat"] is None


# -- the dashboard process against a real herd ----------------------------------------------------


class Dashboard:
    """`python -m zherd.dashboard` on a free port, stopped by pid."""

    def __init__(self, herd: Herd) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "zherd.dashboard", "--config", str(herd.config), "--port", "0"],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.proc.stdout is not None
        ready, _, _ = select.select([self.proc.stdout], [], [], 30)
        line = self.proc.stdout.readline() if ready else ""
        assert line.startswith(READY), f"no ready line from the dashboard: {line!r}"
        self.url = line.split()[1]

    def herd(self) -> dict[str, Any]:
        with urllib.request.urlopen(self.url + "herd.json", timeout=10) as reply:
            return json.load(reply)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise


@pytest.fixture
def dashboard() -> Iterator[Any]:
    started: list[Dashboard] = []

    def start(herd: Herd) -> Dashboard:
        started.append(Dashboard(herd))
        return started[-1]

    yield start
    for d in started:
        assert d.stop() == 0, "the dashboard did not stop cleanly"


def events(url: str, count: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The first `count` views of the page's event stream."""
    views = []
    with urllib.request.urlopen(url + "events", timeout=timeout) as stream:
        assert stream.headers["Content-Type"].startswith("text/event-stream")
        while len(views) < count:
            line = stream.readline()
            assert line, "the event stream ended"
            if line.startswith(b"data: "):
                views.append(json.loads(line[6:]))
    return views


def test_event_stream_follows_the_herd(herd, dashboard) -> None:
    h = herd()
    d = dashboard(h)
    wait_until(lambda: d.herd()["summary"]["links_up"] == 5, what="every link up")
    first, second = events(d.url, 2)
    assert [s["name"] for s in second["servers"]] == list(PAPER_SERVERS)
    assert {link_key(x["a"], x["b"]) for x in second["links"]} == {
        link_key(a, b) for a, b in PAPER_LINKS
    }
    assert second["at"] > first["at"]
    h.kill("Bolden")
    gone = wait_until(
        lambda: (v := d.herd())["summary"]["up"] == 4 and v, what="the page to see Bolden down"
    )
    states = {link_key(x["a"], x["b"]): x["state"] for x in gone["links"]}
    assert states[link_key("Bolden", "Parker")] == DOWN
    assert states[link_key("Bolden", "Powell")] == DOWN
    assert states[link_key("Alford", "Parker")] == UP


def test_zherd_start_serves_the_page_and_stops_it(tmp_path: Path, geonames_index: None) -> None:
    ports = free_ports(3 * len(PAPER_SERVERS))
    layout = {n: tuple(ports[3 * i : 3 * i + 3]) for i, n in enumerate(PAPER_SERVERS)}
    sections = {"logging": {"dir": "logs"}, "storage": {"dir": "var"}, "dashboard": {"port": 0}}
    path = tmp_path / "topology.toml"
    path.write_text(make_topology(layout, PAPER_LINKS, sections))
    argv = [sys.executable, "-m", "zherd", "start", "--all", "--config", str(path)]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
    try:
        assert proc.stdout is not None
        out = ""
        while "Ctrl-C stops the herd." not in out:  # bounded by the test's timeout
            line = proc.stdout.readline()
            assert line, out
            out += line
        found = re.search(r"^page +(http://127\.0\.0\.1:\d+/)", out, re.MULTILINE)
        assert found, out
        url = found[1]

        def summary() -> dict[str, int]:
            with urllib.request.urlopen(url + "herd.json", timeout=10) as reply:
                return json.load(reply)["summary"]

        wait_until(lambda: summary()["links_up"] == 5, what="the page to show every link up")
        proc.send_signal(signal.SIGINT)
        assert proc.wait(30) == 0
        with pytest.raises(OSError):  # the page's process is gone with the herd
            urllib.request.urlopen(url + "herd.json", timeout=5)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_a_taken_page_port_does_not_stop_the_herd(tmp_path: Path, geonames_index: None) -> None:
    import socket

    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        ports = free_ports(4)
        path = tmp_path / "topology.toml"
        layout = {"A": (ports[0], ports[1]), "B": (ports[2], ports[3])}
        sections = {"storage": {"enabled": False}, "dashboard": {"port": port}}
        path.write_text(make_topology(layout, [("A", "B")], sections))
        argv = [sys.executable, "-m", "zherd", "start", "--all", "--config", str(path)]
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, text=True, cwd=tmp_path)
        try:
            assert proc.stdout is not None
            out = ""
            while "Ctrl-C stops the herd." not in out:
                line = proc.stdout.readline()
                assert line, out
                out += line
            assert f"page     none: cannot listen on 127.0.0.1:{port}: " in out
            proc.send_signal(signal.SIGINT)
            assert proc.wait(30) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


# -- the page in a real browser -------------------------------------------------------------------


@pytest.fixture
def browser(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    """Headless Chromium from the OS, driven by selenium; skips where there is none."""
    webdriver = pytest.importorskip(
        "selenium.webdriver", reason="selenium is not installed: pip install -e '.[test]'"
    )
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    driver_path = shutil.which("chromedriver")
    if not chromium or not driver_path:
        pytest.skip(
            "no Chromium here (need `chromium` and `chromedriver` on PATH: "
            "apt-get install chromium chromium-driver, as .ci/run does)"
        )
    monkeypatch.setenv("SE_OFFLINE", "true")  # selenium must never try to download a driver
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    driver = webdriver.Chrome(options=options, service=webdriver.ChromeService(driver_path))
    try:
        yield driver
    finally:
        driver.quit()


def drawn(driver: Any, selector: str) -> dict[str, str]:
    """data-server / data-link -> data-state of the SVG elements matching `selector`."""
    return driver.execute_script(
        """
        const out = {};
        for (const el of document.querySelectorAll(arguments[0]))
          out[el.dataset.server || el.dataset.link] = el.dataset.state;
        return out;
        """,
        selector,
    )


@contextlib.contextmanager
def traffic(herd: Herd, names: tuple[str, ...]) -> Iterator[None]:
    """A little client traffic (bounded: 20 IAMATs a server every 0.1 s, 30 s at most), so
    the page shows rates while it is looked at."""
    stop = threading.Event()

    def run() -> None:
        clients = {n: Client(herd.port(n)) for n in names}
        try:
            for turn in range(300):
                if stop.wait(0.1):
                    return
                for i, client in enumerate(clients.values()):
                    now = time.time()
                    ids = (f"phone-{i}-{k}" for k in range(20))
                    client.send("".join(f"IAMAT {c} +34.0689-118.4452 {now:.6f}\n" for c in ids))
                    for _ in range(20):
                        client.line()
                    if turn % 5 == 0:
                        client.ask(f"WHATSAT phone-{i}-0 10 3")
        except OSError:
            return  # its server was killed: the test goes on
        finally:
            for client in clients.values():
                client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(10)


def test_the_page_draws_the_herd_and_a_killed_server(herd, dashboard, browser, tmp_path) -> None:
    h = herd()
    d = dashboard(h)
    servers, links = "#graph g.server", "#graph g.link"
    every_link = {link_key(a, b) for a, b in PAPER_LINKS}
    with traffic(h, ("Alford", "Bolden", "Powell")):
        browser.get(d.url)
        wait_until(
            lambda: (
                drawn(browser, servers) == dict.fromkeys(PAPER_SERVERS, UP)
                and drawn(browser, links) == dict.fromkeys(every_link, UP)
            ),
            timeout=PAGE_WAIT,
            what="every server and link drawn up",
        )
        assert browser.find_element("id", "servers-badge").text == "5/5 servers up"
        browser.save_screenshot(str(tmp_path / "herd-page-up.png"))

        h.kill("Hamilton", signal.SIGKILL)
        hamilton = link_key("Hamilton", "Parker")
        wait_until(
            lambda: (
                drawn(browser, servers).get("Hamilton") == DOWN
                and drawn(browser, links).get(hamilton) == DOWN
            ),
            timeout=PAGE_WAIT,
            what="Hamilton and its link drawn down",
        )
        wait_until(  # a rate needs two polls of the running servers: let the page fill in
            lambda: "IAMAT/s" in browser.find_element("css selector", ALFORD_NODE).text,
            timeout=PAGE_WAIT,
            what="Alford's rate drawn",
        )
        assert drawn(browser, links) == {**dict.fromkeys(every_link, UP), hamilton: DOWN}
        assert drawn(browser, servers) == {**dict.fromkeys(PAPER_SERVERS, UP), "Hamilton": DOWN}
        assert browser.find_element("id", "links-badge").text == "4/5 links up"
        shot = tmp_path / "herd-page.png"
        assert browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 10_000
    if os.environ.get("ZHERD_SAVE_SCREENSHOT"):
        (REPO / "docs").mkdir(exist_ok=True)
        shutil.copyfile(shot, REPO / "docs" / "herd-page.png")


# -- [dashboard] in the topology ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("table", "error"),
    [
        ("port = 70000", "port must be an integer in 0..65535"),
        ('port = "12290"', "port must be an integer in 0..65535"),
        ("enabled = 1", "enabled must be a bool"),
        ('host = ""', "host must be a non-empty string"),
        ("colour = 1", "unknown key 'colour'"),
    ],
)
def test_dashboard_table_errors(tmp_path: Path, table: str, error: str) -> None:
    path = tmp_path / "t.toml"
    path.write_text(make_topology({"A": (1, 2)}, []) + f"\n[dashboard]\n{table}\n")
    with pytest.raises(config.ConfigError, match=re.escape(error)):
        config.load(path)


def test_dashboard_table_defaults(tmp_path: Path) -> None:
    path = tmp_path / "t.toml"
    path.write_text(make_topology({"A": (1, 2)}, []))
    page = config.load(path).dashboard
    assert (page.enabled, page.host, page.port) == (True, "127.0.0.1", 12290)
    path.write_text(make_topology({"A": (1, 2)}, [], {"dashboard": {"port": 0}}))
    assert config.load(path).dashboard.port == 0  # any free port, said at start


def test_circle_order_uncrosses_the_paper_herd() -> None:
    assert crossings(PAPER_SERVERS, PAPER_LINKS) == 1  # Alford-Parker crosses Bolden-Powell
    order = circle_order(PAPER_SERVERS, PAPER_LINKS)
    assert order[0] == "Alford"  # the first stays at the top
    assert sorted(order) == sorted(PAPER_SERVERS)
    assert crossings(order, PAPER_LINKS) == 0
