"""One ``/metrics`` page for all workers: each worker's series, labelled ``worker="k"``.

Prometheus sums or breaks down by the label (``sum without (worker) (...)``); every family
keeps its type and help text, and a family appears once however many workers report it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample


class _Merged(Collector):
    def __init__(self, families: list[Metric]) -> None:
        self.families = families

    def collect(self) -> Iterator[Metric]:
        return iter(self.families)


def merge_expositions(pages: Iterable[tuple[int, bytes]]) -> bytes:
    """The exposition of every ``(worker index, exposition)`` page, merged by family."""
    merged: dict[str, Metric] = {}
    for index, page in pages:
        for family in text_string_to_metric_families(page.decode()):
            target = merged.get(family.name)
            if target is None:
                target = merged[family.name] = Metric(
                    family.name, family.documentation, family.type, family.unit
                )
            for sample in family.samples:
                labels = dict(sample.labels, worker=str(index))
                target.samples.append(
                    Sample(sample.name, labels, sample.value, sample.timestamp, sample.exemplar)
                )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(list(merged.values())))
    return bytes(generate_latest(registry))
