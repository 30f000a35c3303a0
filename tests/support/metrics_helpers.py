"""Reading `/metrics` the way Prometheus does."""

from __future__ import annotations

import subprocess
from typing import Any

from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families

from tests.support.tools import require

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def parse(text: str) -> Samples:
    """Every sample, keyed by (sample name, labels); fails on anything Prometheus would reject."""
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def series_count(samples: Samples) -> int:
    return len(samples)


def promtool_check(text: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require("promtool"), "check", "metrics"],
        input=text,
        capture_output=True,
        text=True,
        timeout=60,
    )


OPENMETRICS = "application/openmetrics-text;version=1.0.0,text/plain;version=0.0.4;q=0.5"


def parse_openmetrics(text: str) -> dict[str, Any]:
    """Every sample by name and labels (the parser refuses anything OpenMetrics forbids)."""
    assert text.endswith("# EOF\n")
    return {
        (sample.name, frozenset(sample.labels.items())): sample
        for family in openmetrics_families(text)
        for sample in family.samples
    }
