"""The adapter to aioprometheus: the one module that knows its internals.

aioprometheus stays the design's library (its collectors, its registry). What the service adds
on top, and the private parts of aioprometheus 23.x it relies on (pinned in pyproject.toml;
`tests/unit/test_library_hooks.py` checks each):
- collectors that accept only the label names their family declares (families.py): a typo
  fails at once instead of making a new series;
- `Series`, a fast path that remembers each label set's storage key (`MetricDict.store`,
  `__keytransform__`) so that later observations cost one dict lookup;
- `BucketCounts`, a histogram value with an O(log n) `observe`;
- `stored`, the raw contents of a collector for the exposition.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator
from itertools import accumulate
from typing import TYPE_CHECKING, Any

from aioprometheus.collectors import Counter, Gauge, Histogram, Registry

from service.observability.families import MetricFamily

if TYPE_CHECKING:
    from service.observability import exposition


class _Declared:
    """Refuses a label set whose names are not the family's."""

    label_names: frozenset[str]
    name: str

    def set_value(self, labels: dict[str, str], value: Any) -> None:
        if labels.keys() != self.label_names:
            raise ValueError(
                f"{self.name}: labels {sorted(labels)} are not the declared "
                f"{sorted(self.label_names)}"
            )
        super().set_value(labels, value)  # type: ignore[misc]


class DeclaredCounter(_Declared, Counter):
    pass


class DeclaredGauge(_Declared, Gauge):
    pass


class DeclaredHistogram(_Declared, Histogram):
    pass


Collector = DeclaredCounter | DeclaredGauge | DeclaredHistogram


def collector_for(family: MetricFamily, registry: Registry) -> Collector:
    """The family's collector, registered, with its series at zero."""
    collector: Collector
    if family.kind == "counter":
        collector = DeclaredCounter(family.name, family.help, registry=registry)
    elif family.kind == "gauge":
        collector = DeclaredGauge(family.name, family.help, registry=registry)
    else:
        collector = DeclaredHistogram(
            family.name, family.help, registry=registry, buckets=family.buckets
        )
    collector.label_names = frozenset(family.labels)
    for labels in family.zeros:
        collector.set_value(labels, 0)
    return collector


def stored(collector: Any) -> Iterator[tuple[Any, Any]]:
    """Every (storage key, value) a collector holds, as the exposition reads them."""
    return iter(list(collector.values.store.items()))


class Series:
    """A fast path over one collector for a fixed list of label names.

    The first observation of a label set goes through aioprometheus's public API (which checks
    the labels); its storage key is then remembered, so later observations cost one dict lookup
    instead of re-encoding the labels every time. A histogram's value is then replaced by
    `BucketCounts`. `tests/unit/test_metrics.py` checks the counts it produces.
    """

    __slots__ = ("_collector", "_keys", "_names", "_store")

    def __init__(self, collector: Counter | Gauge | Histogram, *names: str) -> None:
        self._collector = collector
        self._names = names
        self._keys: dict[tuple[str, ...], Any] = {}
        self._store: dict[Any, Any] = collector.values.store

    def add(self, values: tuple[str, ...], amount: float = 1) -> None:
        key = self._keys.get(values)
        if key is None:
            self._collector.add(self._remember(values), amount)
        else:
            self._store[key] += amount

    def observe(
        self, values: tuple[str, ...], amount: float, example: exposition.RawExemplar | None = None
    ) -> None:
        key = self._keys.get(values)
        if key is None:
            self._collector.add(self._remember(values), amount)
            key = self._keys[values]
            self._store[key] = BucketCounts.replacing(self._store[key])
            if example is not None:
                self._store[key].remember(amount, example)
        else:
            self._store[key].observe(amount, example)

    def key(self, values: tuple[str, ...]) -> Any:
        """The storage key of a label set already observed: `store[key]` is its value."""
        return self._keys[values]

    @property
    def store(self) -> dict[Any, Any]:
        return self._store

    def _remember(self, values: tuple[str, ...]) -> dict[str, str]:
        labels = dict(zip(self._names, values, strict=True))
        self._keys[values] = self._collector.values.__keytransform__(labels)  # type: ignore[no-untyped-call]
        return labels


class BucketCounts:
    """One label set's histogram, read like aioprometheus's own (`buckets`, `observations`,
    `sum`), with an O(log n) `observe`.

    aioprometheus's `observe` adds one to every bucket the value falls in: a Python loop over all
    15 buckets on every request, the largest part of the metrics' cost per request. This keeps one
    count per bucket and makes them cumulative only when read (a scrape).
    """

    __slots__ = ("_bounds", "_counts", "exemplars", "observations", "sum")

    def __init__(self, bounds: list[float], counts: list[int], observations: int, total: float):
        self._bounds = bounds  # ascending, +Inf last
        self._counts = counts
        self.observations = observations
        self.sum = total
        # The latest request seen in each bucket; its labels are made only when scraped.
        self.exemplars: list[exposition.RawExemplar | None] = [None] * len(bounds)

    @classmethod
    def replacing(cls, histogram: Any) -> BucketCounts:
        """The same counts as an aioprometheus `histogram.Histogram`."""
        cumulative = list(histogram.buckets.values())
        counts = [now - before for now, before in zip(cumulative, [0, *cumulative], strict=False)]
        return cls(list(histogram.buckets), counts, histogram.observations, histogram.sum)

    def observe(self, value: float, example: exposition.RawExemplar | None = None) -> None:
        # The first bound >= value: Prometheus buckets are "less than or equal".
        index = bisect_left(self._bounds, value)
        self._counts[index] += 1
        self.sum += value
        self.observations += 1
        if example is not None:
            self.exemplars[index] = example

    def remember(self, value: float, example: exposition.RawExemplar) -> None:
        """Keep `example` for the bucket of `value`, already counted."""
        self.exemplars[bisect_left(self._bounds, value)] = example

    @property
    def buckets(self) -> dict[float, int]:
        return dict(zip(self._bounds, accumulate(self._counts), strict=True))
