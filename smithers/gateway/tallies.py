"""Counters and histograms for the per-request hot path, exported through prometheus_client.

A prometheus_client ``Counter.inc()`` takes a lock and checks its state on every call, about
2 µs; the gateway counts several series per request, all on its event-loop thread. These families
keep plain numbers per label set and hand prometheus_client a snapshot when ``/metrics`` is read
(the exposition format, names and labels stay prometheus_client's).
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from typing import Final

from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

Labels = tuple[str, ...]
INF: Final = float("inf")


class TallyChild:
    """One label set of a :class:`Tally`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1) -> None:
        self.value += amount


class Tally(Collector):
    """A counter family (exported as ``<name>_total``); ``labels(*values).inc()`` as in prometheus_client."""

    def __init__(self, name: str, documentation: str, labelnames: Sequence[str], registry: CollectorRegistry):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._children: dict[Labels, TallyChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> TallyChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = TallyChild()
        return child

    def collect(self) -> Iterator[CounterMetricFamily]:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            family.add_metric(list(values), child.value)
        yield family

    def describe(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)


class SpreadChild:
    """One label set of a :class:`Spread`: counts per bucket (not cumulative) and the sum."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value


class Spread(Collector):
    """A histogram family with fixed bucket bounds (``le`` is inclusive, as Prometheus defines it)."""

    def __init__(
        self,
        name: str,
        documentation: str,
        labelnames: Sequence[str],
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ):
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self.bounds = tuple(float(b) for b in buckets)
        self._children: dict[Labels, SpreadChild] = {}
        registry.register(self)

    def labels(self, *values: str) -> SpreadChild:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = SpreadChild(self.bounds)
        return child

    def collect(self) -> Iterator[HistogramMetricFamily]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)
        for values, child in self._children.items():
            cumulative, buckets = 0, []
            for bound, count in zip((*self.bounds, INF), child.counts, strict=True):
                cumulative += count
                buckets.append((_bound_text(bound), cumulative))
            family.add_metric(list(values), buckets, child.total)
        yield family

    def describe(self) -> Iterator[HistogramMetricFamily]:
        yield HistogramMetricFamily(self.name, self.documentation, labels=self.labelnames)


def _bound_text(bound: float) -> str:
    """``le`` as prometheus_client writes it: ``+Inf``, ``5.0``."""
    return "+Inf" if bound == INF else repr(float(bound))
