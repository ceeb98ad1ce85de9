"""/metrics when ingress runs in worker processes: the queue manager's own
registry plus what the workers counted, merged into one exposition.

Workers run prometheus-client in multiprocess mode (PROMETHEUS_MULTIPROC_DIR,
one memory-mapped file per process); their counters and histograms are
summed by MultiProcessCollector and then added to the manager's samples of
the same name and labels, so `gateway_messages_received_total` is one
series whichever process accepted the mail. Worker gauges are summed too
(their per-process `pid` label dropped). Counters of a worker that exited
stay counted: totals never go down.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

from prometheus_client import REGISTRY, CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.multiprocess import MultiProcessCollector

ENV = "PROMETHEUS_MULTIPROC_DIR"


def reset(directory: Path) -> None:
    """An empty directory for this run's workers (old files would add up)."""
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)


class _Merged:
    def __init__(self, directory: Path) -> None:
        self._directory = directory

    def collect(self) -> Iterator[Metric]:
        families: dict[str, Metric] = {}
        sums: dict[str, dict[tuple[str, tuple[tuple[str, str], ...]], float]] = {}
        collector = MultiProcessCollector(None, path=str(self._directory))  # type: ignore[no-untyped-call]
        workers = collector.collect()  # type: ignore[no-untyped-call]
        for source in (REGISTRY.collect(), workers):
            for family in source:
                if family.name not in families:
                    families[family.name] = Metric(family.name, family.documentation, family.type)
                    sums[family.name] = {}
                values = sums[family.name]
                for sample in family.samples:
                    if sample.name.endswith("_created"):
                        continue  # per-process creation times do not add up
                    labels = tuple(sorted((k, v) for k, v in sample.labels.items() if k != "pid"))
                    key = (sample.name, labels)
                    values[key] = values.get(key, 0.0) + sample.value
        for name, family in families.items():
            for (sample_name, labels), value in sums[name].items():
                family.add_sample(sample_name, dict(labels), value)
            yield family


def exposition(directory: Path) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Merged(directory))
    return generate_latest(registry)
