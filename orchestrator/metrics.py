"""``orchestrator.metrics``, the design document's path to :mod:`orchestrator.observe.metrics`."""

from orchestrator.observe.metrics import (
    ConsoleExporter,
    JSONExporter,
    MetricsError,
    MetricsExporter,
    MetricsFeed,
    MetricsSnapshot,
    ModelMetrics,
    PrometheusExporter,
    RunMetrics,
    collect,
    exporter_for,
    format_table,
    log,
    prometheus_text,
)

__all__ = [
    "ConsoleExporter",
    "JSONExporter",
    "MetricsError",
    "MetricsExporter",
    "MetricsFeed",
    "MetricsSnapshot",
    "ModelMetrics",
    "PrometheusExporter",
    "RunMetrics",
    "collect",
    "exporter_for",
    "format_table",
    "log",
    "prometheus_text",
]
