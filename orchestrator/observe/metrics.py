"""Metrics: the model telemetry and the current run's figures, exported as a table, JSON, or
Prometheus text exposition format.

``orch.set_metrics_exporter(PrometheusExporter(path))`` then ``orch.export_metrics()``; an
orchestrator with an exporter also exports after every finished task and at the end of a run,
so a textfile collector (or a dashboard reading the JSON) follows the run as it goes. Files are
replaced atomically: a reader never sees half of one.

Per model: ``calls_total``, ``success_rate``, ``latency_avg_ms``, ``latency_p95_ms``,
``quality_score``, ``trust_factor``, ``cost_avg_usd``, ``validator_failures_total`` (plus
``failures_total`` and ``evaluations_total``). Per run: spend, budget, elapsed time, status,
and tasks by status.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, TextIO

from orchestrator.errors import ConfigError, OrchestratorError
from orchestrator.files import write_atomically
from orchestrator.money.units import format_usd
from orchestrator.routing.profiles import ModelProfile
from orchestrator.run.tasks import ProjectState, TaskStatus

log = logging.getLogger(__name__)


class MetricsError(OrchestratorError):
    """Metrics could not be written (the file's directory is missing, not writable, ...)."""


@dataclass(frozen=True)
class ModelMetrics:
    model: str  # provider/id
    provider: str
    calls_total: int
    failures_total: int
    success_rate: float
    latency_avg_ms: float | None
    latency_p95_ms: float | None
    quality_score: float
    trust_factor: float
    cost_avg_usd: float | None
    validator_failures_total: int
    evaluations_total: int

    @classmethod
    def of(cls, key: str, profile: ModelProfile) -> ModelMetrics:
        return cls(
            model=key,
            provider=profile.provider,
            calls_total=profile.calls,
            failures_total=profile.failures,
            success_rate=profile.success_rate,
            latency_avg_ms=profile.latency_ms,
            latency_p95_ms=profile.latency_p95_ms,
            quality_score=profile.quality,
            trust_factor=profile.trust,
            cost_avg_usd=profile.cost_avg_usd,
            validator_failures_total=profile.validator_failures,
            evaluations_total=profile.evaluations,
        )


@dataclass(frozen=True)
class RunMetrics:
    project_id: str
    status: str
    spent_usd: float
    max_usd: float
    elapsed_seconds: float
    # Every task of the plan by status; those not started yet are "pending".
    tasks: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, state: ProjectState) -> RunMetrics:
        statuses = Counter(result.status.value for result in state.results.values())
        statuses[TaskStatus.PENDING.value] += sum(1 for t in state.tasks if t not in state.results)
        return cls(
            project_id=state.project_id,
            status=state.status.value,
            spent_usd=state.budget.spent_usd,
            max_usd=state.budget.max_usd,
            elapsed_seconds=state.budget.elapsed_seconds,
            tasks={status.value: statuses[status.value] for status in TaskStatus},
        )


@dataclass(frozen=True)
class MetricsSnapshot:
    models: tuple[ModelMetrics, ...]
    run: RunMetrics | None
    taken_at: float  # seconds since the epoch

    def to_dict(self) -> dict[str, Any]:
        return {
            "taken_at": self.taken_at,
            "models": {m.model: asdict(m) for m in self.models},
            "run": asdict(self.run) if self.run is not None else None,
        }


def collect(
    profiles: Mapping[str, ModelProfile], state: ProjectState | None = None
) -> MetricsSnapshot:
    """The figures of the models something was measured for, and of ``state``'s run."""
    models = tuple(
        ModelMetrics.of(key, profile)
        for key, profile in sorted(profiles.items())
        if profile.measured
    )
    run = RunMetrics.of(state) if state is not None else None
    return MetricsSnapshot(models, run, time.time())


class MetricsExporter(Protocol):
    """Writes a snapshot somewhere. ``follows_run``: the orchestrator also exports after every
    finished task and at the end of each run (file exporters do; the console table does not)."""

    follows_run: bool

    def export(self, snapshot: MetricsSnapshot) -> None: ...


class ConsoleExporter:
    """A table of the model metrics, and a line for the run, on ``stream`` (stdout)."""

    follows_run = False

    def __init__(self, stream: TextIO | None = None) -> None:
        self.stream = stream

    def export(self, snapshot: MetricsSnapshot) -> None:
        stream = self.stream or sys.stdout
        stream.write(format_table(snapshot) + "\n")
        stream.flush()


class JSONExporter:
    """The snapshot as one JSON document in ``path``, replaced atomically at each export."""

    follows_run = True

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def export(self, snapshot: MetricsSnapshot) -> None:
        _write(self.path, json.dumps(snapshot.to_dict(), indent=2) + "\n")


class PrometheusExporter:
    """The snapshot in Prometheus text exposition format, in ``path`` (for node_exporter's
    textfile collector, which reads ``*.prom``), replaced atomically at each export.

    Needs the ``metrics`` extra (``prometheus_client``), which writes the format."""

    follows_run = True

    def __init__(self, path: str | Path) -> None:
        try:
            import prometheus_client  # noqa: F401
        except ImportError:
            raise ConfigError(
                "Prometheus metrics need prometheus_client: in the project's directory, "
                "pip install -e '.[metrics]'"
            ) from None
        self.path = Path(path)

    def export(self, snapshot: MetricsSnapshot) -> None:
        _write(self.path, prometheus_text(snapshot))


def exporter_for(target: str) -> MetricsExporter:
    """The exporter ``--metrics-out`` names: ``-`` the console, ``*.prom`` Prometheus,
    ``*.json`` JSON."""
    if target == "-":
        return ConsoleExporter()
    suffix = Path(target).suffix.lower()
    if suffix == ".prom":
        return PrometheusExporter(target)
    if suffix == ".json":
        return JSONExporter(target)
    raise ConfigError(
        f"--metrics-out {target!r}: name a .prom or .json file, or - for a table on the console"
    )


def format_table(snapshot: MetricsSnapshot) -> str:
    header = ("model", "calls", "success", "avg ms", "p95 ms", "quality", "trust", "avg cost",
              "validator fails")  # fmt: skip
    rows = [
        (
            m.model,
            str(m.calls_total),
            f"{m.success_rate:.0%}",
            _number(m.latency_avg_ms),
            _number(m.latency_p95_ms),
            f"{m.quality_score:.3f}",
            f"{m.trust_factor:.3f}",
            format_usd(m.cost_avg_usd) if m.cost_avg_usd is not None else "-",
            str(m.validator_failures_total),
        )
        for m in snapshot.models
    ]
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths, strict=True))).rstrip()
             for row in [header, *rows]]  # fmt: skip
    if not rows:
        lines.append("(no model calls measured yet)")
    run = snapshot.run
    if run is not None:
        tasks = ", ".join(f"{n} {status}" for status, n in run.tasks.items() if n)
        lines.append(
            f"run {run.project_id}: {run.status}, spent {format_usd(run.spent_usd)} of "
            f"{format_usd(run.max_usd)} in {run.elapsed_seconds:.1f} s; tasks: {tasks or 'none'}"
        )
    return "\n".join(lines)


def prometheus_text(snapshot: MetricsSnapshot) -> str:
    from prometheus_client import CollectorRegistry, generate_latest

    registry = CollectorRegistry(auto_describe=False)
    registry.register(_SnapshotCollector(snapshot))
    return generate_latest(registry).decode("utf-8")


class _SnapshotCollector:
    def __init__(self, snapshot: MetricsSnapshot) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        labels = ["model", "provider"]
        for name, kind, help_text in _MODEL_METRICS:
            family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            # A counter's exposed name gets its "_total" from the library.
            base = name.removesuffix("_total") if kind == "counter" else name
            family = family_type(f"orchestrator_model_{base}", help_text, labels=labels)
            for m in self.snapshot.models:
                value = getattr(m, name)
                if value is not None:
                    family.add_metric([m.model, m.provider], float(value))
            yield family
        run = self.snapshot.run
        if run is None:
            return
        project = [run.project_id]
        for name, value, help_text in (
            ("spent_usd", run.spent_usd, "What the run has spent, in USD."),
            ("budget_usd", run.max_usd, "The run's hard budget, in USD."),
            ("elapsed_seconds", run.elapsed_seconds, "The run's wall-clock time so far."),
        ):
            family = GaugeMetricFamily(f"orchestrator_run_{name}", help_text, labels=["project"])
            family.add_metric(project, value)
            yield family
        status = GaugeMetricFamily(
            "orchestrator_run_status", "1 for the run's status.", labels=["project", "status"]
        )
        status.add_metric([run.project_id, run.status], 1.0)
        yield status
        tasks = GaugeMetricFamily(
            "orchestrator_run_tasks", "The run's tasks by status.", labels=["project", "status"]
        )
        for name, count in run.tasks.items():
            tasks.add_metric([run.project_id, name], float(count))
        yield tasks


_MODEL_METRICS = (
    ("calls_total", "counter", "Paid calls to the model (cache hits and replays excluded)."),
    ("failures_total", "counter", "Paid calls to the model that failed."),
    ("success_rate", "gauge", "Share of the model's calls that were answered."),
    ("latency_avg_ms", "gauge", "Moving average of the model's answer latency, ms."),
    ("latency_p95_ms", "gauge", "95th percentile latency of the model's last 50 answers, ms."),
    ("quality_score", "gauge", "Moving average of the model's evaluation scores."),
    ("trust_factor", "gauge", "Moving average of the model's call outcomes (1 answered)."),
    ("cost_avg_usd", "gauge", "Moving average of what an answered call cost, USD."),
    ("validator_failures_total", "counter", "Validator failures of the model's answers."),
    ("evaluations_total", "counter", "Evaluation scores given to the model's answers."),
)


def _number(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f}"


def _write(path: Path, content: str) -> None:
    try:
        write_atomically(path, content)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise MetricsError(f"cannot write metrics to {path}: {reason}") from None


class MetricsFeed:
    """The exports that follow a run, off the event loop: one at a time, and a request made
    while one is being written exports again after it with the figures of then. A failing
    export is logged once and the run goes on: metrics never stop paid work."""

    def __init__(self, exporter: MetricsExporter, snapshot: Callable[[], MetricsSnapshot]) -> None:
        self.exporter = exporter
        self.snapshot = snapshot
        self._writing: asyncio.Task[None] | None = None
        self._again = False
        self._reported = False

    def request(self) -> None:
        if self._writing is not None and not self._writing.done():
            self._again = True
        else:
            self._writing = asyncio.get_running_loop().create_task(self._write())

    async def flush(self) -> None:
        """Export the figures of now, and wait until written."""
        self.request()
        assert self._writing is not None
        await asyncio.shield(self._writing)

    async def _write(self) -> None:
        while True:
            self._again = False
            try:
                await asyncio.to_thread(self.exporter.export, self.snapshot())
            except Exception as exc:
                if not self._reported:
                    self._reported = True
                    log.warning("metrics export failed: %s; the run goes on", exc)
            if not self._again:
                return
