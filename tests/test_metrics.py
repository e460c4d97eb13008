"""`/metrics`: the latency histograms (pure), and a real herd's Prometheus text parsed
by prometheus_client's own parser."""

from __future__ import annotations

import time
import urllib.request
from typing import Any

import pytest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from zherd import config, herdstatus
from zherd.harness import Herd, wait_until
from zherd.latency import BOUNDS_S, NS, Histogram, Latencies, quantile
from zherd.metrics import histogram

# -- the histogram --------------------------------------------------------------------------------


def test_a_duration_on_a_bound_counts_in_that_bucket() -> None:
    hist = Histogram((0.001, 0.01))
    hist.observe(NS // 1000)  # exactly 1 ms: le="0.001"
    hist.observe(NS // 1000 + 1)
    hist.observe(NS)  # 1 s: +Inf
    assert hist.counts == [1, 1, 1]
    assert hist.count == 3
    assert hist.sum_ns == NS // 1000 * 2 + 1 + NS


def test_a_batch_is_one_observation_of_many_requests() -> None:
    hist = Histogram()
    hist.observe(30_000, 50)  # 50 IAMATs answered together in 30 us
    assert hist.count == 50
    assert hist.sum_ns == 1_500_000
    assert hist.counts[BOUNDS_S.index(50e-6)] == 50


def test_quantile_is_the_bucket_ceiling() -> None:
    bounds = [0.001, 0.01, 0.1]
    assert quantile(bounds, [0, 0, 0, 0], 0.5) is None
    assert quantile(bounds, [98, 1, 1, 0], 0.5) == 0.001
    assert quantile(bounds, [98, 1, 1, 0], 0.99) == 0.01
    assert quantile(bounds, [0, 0, 0, 5], 0.99) == 0.1  # in +Inf: the last finite bound


def test_histogram_family_is_cumulative_with_inf() -> None:
    hist = Histogram((0.001, 0.01))
    for ns in (500_000, 5_000_000, 5_000_000, 2 * NS):
        hist.observe(ns)
    family = histogram("zherd_x_duration_seconds", "x", hist)
    samples = {(s.name, s.labels.get("le")): s.value for s in family.samples}
    assert samples["zherd_x_duration_seconds_bucket", "0.001"] == 1
    assert samples["zherd_x_duration_seconds_bucket", "0.01"] == 3
    assert samples["zherd_x_duration_seconds_bucket", "+Inf"] == 4
    assert samples["zherd_x_duration_seconds_count", None] == 4
    assert samples["zherd_x_duration_seconds_sum", None] == pytest.approx(2.0105)


def test_latencies_as_json() -> None:
    doc = Latencies().as_dict()
    assert set(doc) == {"iamat", "whatsat", "flush"}
    assert len(doc["iamat"]["counts"]) == len(doc["iamat"]["bounds_s"]) + 1


# -- a real herd ----------------------------------------------------------------------------------


def scrape(herd: Herd, name: str, accept: str = "") -> tuple[str, dict[tuple[str, tuple], float]]:
    """(content type, {(sample name, sorted labels): value}) of a server's /metrics."""
    url = f"http://127.0.0.1:{herd.ports[name][2]}/metrics"
    request = urllib.request.Request(url, headers={"Accept": accept} if accept else {})
    with urllib.request.urlopen(request, timeout=5) as reply:
        kind = reply.headers["Content-Type"]
        text = reply.read().decode()
    parse = openmetrics_families if "openmetrics" in kind else text_string_to_metric_families
    samples = {}
    for family in parse(text):
        for s in family.samples:
            samples[s.name, tuple(sorted(s.labels.items()))] = s.value
    return kind, samples


def value(samples: dict[tuple[str, tuple], float], name: str, **labels: Any) -> float:
    return samples[name, tuple(sorted(labels.items()))]


def every_endpoint_healthy(herd: Herd) -> None:
    """A server's status endpoint starts just after it says it accepts clients."""
    topology = config.load(herd.config)
    wait_until(
        lambda: all(p.healthy for p in herdstatus.probe_all(topology).values()),
        what="every /healthz to answer 200",
    )


def test_metrics_of_a_herd(herd) -> None:
    h = herd(("Ann", "Bo", "Cy"), (("Ann", "Bo"), ("Bo", "Cy")))
    every_endpoint_healthy(h)
    n = 40
    with h.client("Ann") as c:
        now = time.time()
        c.send("".join(f"IAMAT m{i} +34.06-118.44 {now:.6f}\n" for i in range(n)))
        for _ in range(n):
            assert c.line().startswith("AT Ann ")
        assert c.ask("WHATSAT m1 10 2").startswith("AT Ann ")
    wait_until(lambda: h.status("Cy")["clients_known"] == n, what="the flood to reach Cy")

    kind, ann = scrape(h, "Ann")
    assert kind.startswith("text/plain; version=0.0.4")  # what every Prometheus reads
    assert value(ann, "zherd_iamat_total") == n
    assert value(ann, "zherd_whatsat_total") == 1
    assert value(ann, "zherd_healthy") == 1
    assert value(ann, "zherd_clients_known") == n
    assert value(ann, "zherd_uptime_seconds") > 0
    assert value(ann, "zherd_iamat_duration_seconds_count") == n  # one per request
    assert value(ann, "zherd_iamat_duration_seconds_bucket", le="+Inf") == n
    assert 0 < value(ann, "zherd_iamat_duration_seconds_sum") < n  # seconds, not ns
    assert value(ann, "zherd_whatsat_duration_seconds_count") == 1
    assert value(ann, "zherd_flush_duration_seconds_count") >= 1
    assert value(ann, "zherd_link_up", neighbor="Bo") == 1
    assert value(ann, "zherd_link_records_out_total", neighbor="Bo") == n
    assert value(ann, "zherd_link_lag_records", neighbor="Bo") == 0
    assert ("zherd_link_up", (("neighbor", "Cy"),)) not in ann  # not a neighbor of Ann
    assert value(ann, "process_resident_memory_bytes") > 0
    assert value(ann, "zherd_gc_longest_pause_seconds") >= 0
    assert value(ann, "zherd_restore_seconds") >= 0
    info = [k for k in ann if k[0] == "zherd_server_info"]
    assert info and ("name", "Ann") in info[0][1]

    kind, negotiated = scrape(h, "Ann", accept="application/openmetrics-text; version=1.0.0")
    assert kind.startswith("application/openmetrics-text")
    assert value(negotiated, "zherd_iamat_total") == n

    _, bo = scrape(h, "Bo")
    assert value(bo, "zherd_link_applied_total", neighbor="Ann") == n
    assert value(bo, "zherd_link_records_out_total", neighbor="Cy") == n
    assert value(bo, "zherd_iamat_total") == 0
    assert value(bo, "zherd_iamat_duration_seconds_count") == 0

    h.kill("Cy")
    wait_until(
        lambda: value(scrape(h, "Bo")[1], "zherd_link_up", neighbor="Cy") == 0,
        what="Bo to see Cy down",
    )
    assert h.status("Ann")["latency"]["iamat"]["counts"][-1] == 0  # nothing took > 10 s
