"""`/metrics`: a server's counts, gauges and latencies in the Prometheus text format.

One custom collector reads `Counters`, `Latencies` and the `/status` snapshot when
Prometheus scrapes, so no prometheus_client object is touched on a hot path and a
server pays for its metrics only when someone reads them. Every field of `Counters`
and `LinkCounters` becomes a counter (`zherd_<field>_total`, per neighbor with a
`neighbor` label), so a count added there is exported without a change here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import fields
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.utils import floatToGoString

from zherd import status
from zherd.counters import LinkCounters
from zherd.latency import HELP as LATENCY_HELP
from zherd.latency import Histogram, Latencies

if TYPE_CHECKING:
    from zherd.node import Node

PREFIX = "zherd_"

COUNTER_HELP = {
    "iamat": "IAMATs answered",
    "iamat_stale": "IAMATs older than the location held (answered, not stored)",
    "whatsat": "WHATSATs answered",
    "foreign_frames": "bus frames dropped: from no neighbor, or not authenticated as one",
}
LINK_HELP = {
    "records_in": "records received from the neighbor",
    "applied": "records from the neighbor newer than the location held: stored",
    "stale": "records from the neighbor already held (or older)",
    "invalid": "records from the neighbor that failed validation: dropped",
    "records_out": "records sent to the neighbor",
    "messages_in": "bus messages received from the neighbor",
    "messages_out": "bus messages sent to the neighbor",
    "malformed": "frames from the neighbor that were not messages",
    "syncs_sent": "catch-up requests (Sync) sent to the neighbor",
    "syncs_served": "catch-ups started for the neighbor",
    "full_resends": "catch-ups for the neighbor from the start of our stream",
    "syncs_deferred": "full resends the neighbor asked for too soon after the last one",
}


def _help(table: dict[str, str], name: str) -> str:
    return table.get(name, name.replace("_", " "))


def families(node: Node) -> Iterator[Metric]:
    """Every metric of one server, read now."""
    snap = status.snapshot(node)
    yield InfoMetricFamily(
        PREFIX + "server",
        "the server: its name, version, boot epoch and places provider",
        value={
            "name": snap["name"],
            "version": snap["version"],
            "epoch": snap["epoch"],
            "places": snap["places"]["provider"],
        },
    )
    yield from _counters(node)
    yield from _gauges(snap)
    yield from _links(node, snap["neighbors"])
    yield from _latencies(node.latency)
    if snap["storage"] is not None:
        yield from _storage(snap["storage"])


def _counters(node: Node) -> Iterator[Metric]:
    counters = node.counters
    for f in fields(counters):
        if f.name == "links":
            continue
        yield CounterMetricFamily(
            PREFIX + f.name, _help(COUNTER_HELP, f.name), value=getattr(counters, f.name)
        )


def _gauge(name: str, help: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(PREFIX + name, help, value=value)


def _gauges(snap: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("healthy", "1 when it answers clients from a loaded store", snap["healthy"])
    yield _gauge("uptime_seconds", "seconds since the server started", snap["uptime_s"])
    yield _gauge("clients_known", "clients whose location the server holds", snap["clients_known"])
    yield _gauge("connections", "client connections open", snap["connections"])
    yield _gauge("stream_head", "position of the server's replication stream", snap["head"])
    yield _gauge("restored_locations", "locations read from storage at start", snap["restored"])
    yield _gauge("restore_seconds", "time the store took to read at start", snap["restore_s"])
    yield CounterMetricFamily(
        PREFIX + "gc_collections", "cyclic garbage collections", value=snap["gc"]["collections"]
    )
    yield _gauge(
        "gc_longest_pause_seconds",
        "longest pause of the cyclic garbage collector",
        snap["gc"]["longest_pause_ms"] / 1000,
    )


def _links(node: Node, neighbors: dict[str, dict[str, Any]]) -> Iterator[Metric]:
    labels = ["neighbor"]
    up = GaugeMetricFamily(PREFIX + "link_up", "1 while the neighbor is heard from", labels=labels)
    lag = GaugeMetricFamily(
        PREFIX + "link_lag_records",
        "records of our stream not yet sent to the neighbor",
        labels=labels,
    )
    heard = GaugeMetricFamily(
        PREFIX + "link_last_heard_seconds",
        "seconds since the neighbor was last heard from",
        labels=labels,
    )
    for peer, link in neighbors.items():
        up.add_metric([peer], 1 if link["state"] == "up" else 0)
        if link["lag"] is not None:
            lag.add_metric([peer], link["lag"])
        if link["last_heard_s"] is not None:
            heard.add_metric([peer], link["last_heard_s"])
    yield from (up, lag, heard)
    for f in fields(LinkCounters):
        family = CounterMetricFamily(
            PREFIX + "link_" + f.name, _help(LINK_HELP, f.name), labels=labels
        )
        for peer, counts in node.counters.links.items():
            family.add_metric([peer], getattr(counts, f.name))
        yield family


def histogram(name: str, help: str, hist: Histogram) -> HistogramMetricFamily:
    """A `Histogram` as Prometheus buckets (cumulative, `le` in seconds)."""
    buckets, total = [], 0
    for bound_ns, count in zip(hist.bounds_ns, hist.counts, strict=False):
        total += count
        buckets.append((floatToGoString(bound_ns / 1e9), total))
    buckets.append(("+Inf", total + hist.counts[-1]))
    return HistogramMetricFamily(name, help, buckets=buckets, sum_value=hist.sum_ns / 1e9)


def _latencies(latency: Latencies) -> Iterator[Metric]:
    for name, help in LATENCY_HELP.items():
        yield histogram(f"{PREFIX}{name}_duration_seconds", help, getattr(latency, name))


def _storage(stats: dict[str, Any]) -> Iterator[Metric]:
    yield _gauge("storage_log_bytes", "bytes in the storage log file", stats["log_bytes"])
    yield CounterMetricFamily(
        PREFIX + "storage_writes",
        "durable writes (one a loop turn with something to write)",
        value=stats["writes"],
    )
    yield CounterMetricFamily(
        PREFIX + "storage_entries", "locations written to storage", value=stats["entries"]
    )
    yield _gauge("storage_failing", "1 while the disk refuses writes", 1 if stats["failing"] else 0)
    yield _gauge("storage_compacting", "1 while a compaction runs", stats["compacting"])


class NodeCollector:
    """The registry's view of one node (prometheus_client's collector protocol)."""

    def __init__(self, node: Node) -> None:
        self.node = node

    def collect(self) -> Iterator[Metric]:
        return families(self.node)


def registry(node: Node) -> CollectorRegistry:
    """The node's metrics, and the process's (CPU, memory, open files) beside them."""
    reg = CollectorRegistry(auto_describe=False)
    reg.register(NodeCollector(node))  # type: ignore[arg-type]  # a collector by protocol
    ProcessCollector(registry=reg)
    return reg


def render(reg: CollectorRegistry, accept: str) -> tuple[bytes, str]:
    """The scrape's body and content type: the Prometheus text format (0.0.4) unless the
    scraper asks for OpenMetrics or a newer text format in its Accept header."""
    encode, content_type = choose_encoder(accept)
    return encode(reg), content_type
