"""Read a /metrics page back with prometheus-client's own parser, as Prometheus would."""

from __future__ import annotations

from prometheus_client.parser import text_string_to_metric_families

Labels = tuple[tuple[str, str], ...]


class Scrape:
    """One parsed page: families by name (and type), and every sample's value."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.values: dict[tuple[str, Labels], float] = {}
        for family in text_string_to_metric_families(text):
            assert family.name not in self.types, f"family {family.name} written twice"
            self.types[family.name] = family.type
            for sample in family.samples:
                key = (sample.name, tuple(sorted(sample.labels.items())))
                assert key not in self.values, f"sample {key} written twice"
                self.values[key] = sample.value

    def value(self, name: str, **labels: str) -> float:
        """The sample's value; a KeyError (not 0) when the page lacks it."""
        return self.values[(name, tuple(sorted(labels.items())))]

    def series(self, name: str) -> dict[Labels, float]:
        return {labels: value for (sample, labels), value in self.values.items() if sample == name}
